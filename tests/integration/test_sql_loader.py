"""The read service's queries (worker/db/reads.sql) prepared against the migrated schema.

The loader itself is tested in tests/unit/test_sql_loader.py."""

from __future__ import annotations

import asyncpg

from worker.db.reads import RQ


async def test_every_read_query_is_valid_sql_for_the_schema(conn: asyncpg.Connection) -> None:
    for name, query in RQ.items():
        try:
            await conn.prepare(query)
        except asyncpg.PostgresError as exc:
            raise AssertionError(f"reads.sql {name}: {exc}") from exc
