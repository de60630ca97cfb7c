"""worker/db/sql.py, the one loader of named SQL, and the read service's queries (worker/db/reads.sql).

The queries against a real schema are in tests/integration/test_sql_loader.py."""

from __future__ import annotations

import re

import pytest

from worker.db.reads import RQ
from worker.db.sql import load_queries, parse_queries


def test_sections_lose_their_description_and_final_semicolon() -> None:
    text = "-- file comment\n\n-- name: first\n-- What it does.\nSELECT 1;\n\n-- name: second_2\nSELECT 2\n  FROM t;\n"
    assert parse_queries(text) == {"first": "SELECT 1", "second_2": "SELECT 2\n  FROM t"}


def test_a_name_used_twice_is_refused_with_the_name() -> None:
    with pytest.raises(RuntimeError, match=r"x\.sql: the query name 'dup' is used twice; rename one"):
        parse_queries("-- name: dup\nSELECT 1;\n-- name: dup\nSELECT 2;\n", source="x.sql")


def test_a_header_without_sql_is_refused() -> None:
    with pytest.raises(RuntimeError, match="'empty' has no SQL"):
        parse_queries("-- name: empty\n-- only a description\n-- name: full\nSELECT 1;\n")


def test_a_file_missing_from_the_package_says_how_to_fix_it() -> None:
    with pytest.raises(RuntimeError, match=r"worker/db/nope\.sql is missing.*package-data"):
        load_queries("worker.db", "nope.sql")


def test_the_read_queries_are_each_written_once() -> None:
    # The API and the dashboard used to keep copies of the same statements in two files.
    normalised = [re.sub(r"\s+", " ", q) for q in RQ.values()]
    assert len(set(normalised)) == len(normalised)
