"""Migrations: apply in order, idempotent, refuse edited files, safe under concurrency."""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import asyncpg
import pytest

from worker.db.connect import connect
from worker.db.migrate import MigrationError, default_schema_dir, migrate, pending_migrations

CONTRACT_TABLES = {
    "ab_experiments",
    "ab_variants",
    "ab_metric_updates",
    "ab_variant_stats",
    "ab_alerts",
    "experiment_promotions",
    "ab_promotion_audit_log",
    "notification_configs",
    "notification_logs",
    "notification_outbox",
}
CONTRACT_FUNCTIONS = {
    "ab_record_metrics",
    "ab_raise_alert",
    "ab_request_rollback",
    "get_promotion_stats",
    "notify_promotion_event",
}


async def _schema_snapshot(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        """SELECT c.relname, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' UNION ALL
           SELECT p.proname, 'f' FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE n.nspname = 'public' ORDER BY 1, 2"""
    )
    return [(r[0], r[1]) for r in rows]


async def test_migrate_creates_the_contract_and_second_run_is_a_noop(empty_db_url: str) -> None:
    conn = await connect(empty_db_url)
    try:
        first = await migrate(conn)
        assert first.applied and not first.already_applied
        snapshot = await _schema_snapshot(conn)
        names = {name for name, _ in snapshot}
        assert CONTRACT_TABLES <= names
        assert CONTRACT_FUNCTIONS <= names
        second = await migrate(conn)
        assert second.applied == []
        assert second.already_applied == first.applied
        assert await _schema_snapshot(conn) == snapshot
        assert await pending_migrations(conn) == []
    finally:
        await conn.close()


async def test_migrate_refuses_when_an_applied_file_was_edited(empty_db_url: str, tmp_path: Path) -> None:
    schema = tmp_path / "schema"
    shutil.copytree(default_schema_dir(), schema)
    conn = await connect(empty_db_url)
    try:
        await migrate(conn, schema)
        first = sorted(schema.glob("*.sql"))[0]
        first.write_text(first.read_text() + "\n-- edited\n")
        (schema / "9999_new.sql").write_text("CREATE TABLE should_not_exist (id int);")
        with pytest.raises(MigrationError, match="were edited"):
            await migrate(conn, schema)
        assert await conn.fetchval("SELECT to_regclass('should_not_exist')") is None
    finally:
        await conn.close()


async def test_failed_migration_rolls_back_and_names_the_file(empty_db_url: str, tmp_path: Path) -> None:
    schema = tmp_path / "schema"
    shutil.copytree(default_schema_dir(), schema)
    (schema / "9998_broken.sql").write_text("CREATE TABLE half_done (id int);\nSELECT no_such_function();")
    conn = await connect(empty_db_url)
    try:
        with pytest.raises(MigrationError, match=r"9998_broken\.sql failed"):
            await migrate(conn, schema)
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
        assert await pending_migrations(conn, schema) == ["9998_broken.sql"]
    finally:
        await conn.close()


async def test_concurrent_migrate_calls_apply_each_file_once(empty_db_url: str) -> None:
    results = []

    async def one() -> None:
        conn = await connect(empty_db_url)
        try:
            results.append(await migrate(conn))
        finally:
            await conn.close()

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(one)
    applied = [name for r in results for name in r.applied]
    assert sorted(applied) == sorted(p.name for p in default_schema_dir().glob("*.sql"))
    conn = await connect(empty_db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ab_schema_migrations") == len(applied)
    finally:
        await conn.close()


def test_migration_files_are_named_in_order() -> None:
    names = sorted(p.name for p in default_schema_dir().glob("*.sql"))
    assert names and all(name[:4].isdigit() and name[4] == "_" for name in names)
