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


def test_the_locking_snapshots_read_what_experiment_snapshot_reads() -> None:
    """try_lock_snapshot and lock_running_snapshots were derived from experiment_snapshot in Python; now each is its
    own statement in queries.sql, so a column added to one select list and not the others would fail here."""
    from worker.db.sql import Q

    def select_list(name: str) -> str:
        return Q[name].split("\n  FROM ab_experiments e WHERE")[0]

    assert select_list("experiment_snapshot").startswith("SELECT e.id, e.name")
    assert select_list("try_lock_snapshot") == select_list("experiment_snapshot")
    assert select_list("lock_running_snapshots") == select_list("experiment_snapshot")
    assert Q["try_lock_snapshot"].endswith("FOR NO KEY UPDATE OF e SKIP LOCKED")


def test_every_sql_file_is_loaded_by_the_one_loader() -> None:
    from worker.db import sql

    assert {"promote_write", "experiment_snapshot"} <= set(sql.Q)
    assert {"listening_channels", "take_lease", "ping"} <= set(sql.DQ)
    assert {"insert_outbox", "claim_due", "requeue_dead"} <= set(sql.NQ)


def test_the_fold_variants_are_one_statement() -> None:
    """fold_pending_for and fold_pending_relaxed were derived from fold_pending in Python; each is now its own
    statement, so they must stay fold_pending with just the experiment filter or the relaxed commit added."""
    from worker.db.sql import Q

    plain = Q["fold_pending"]
    assert Q["fold_pending_for"] == plain.replace(
        "FROM ab_metric_updates ORDER BY", "FROM ab_metric_updates WHERE experiment_id = ANY($2::bigint[]) ORDER BY"
    )
    assert Q["fold_pending_relaxed"] == plain.replace(
        "AS variants", "AS variants, set_config('synchronous_commit', 'off', true) AS relaxed"
    )
    assert plain != Q["fold_pending_for"] and plain != Q["fold_pending_relaxed"]
