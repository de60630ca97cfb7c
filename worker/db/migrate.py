"""Apply the ordered SQL files of ``schema/``: each in its own transaction, recorded with its checksum."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from worker.db.sql import MQ

# Session-level advisory lock key ("abmg"): concurrent `migrate` calls queue behind it instead of racing.
MIGRATION_LOCK_KEY = 0x61626D67
_FILE_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    """A migration cannot be applied; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    filename: str
    sql: str
    checksum: str


@dataclass(slots=True)
class MigrateResult:
    applied: list[str] = field(default_factory=list)
    already_applied: list[str] = field(default_factory=list)
    unknown_in_database: list[str] = field(default_factory=list)


def default_schema_dir() -> Path:
    """The repository's ``schema/`` next to the package (an installed image sets AUTO_PROMOTION_SCHEMA_DIR)."""
    return Path(__file__).resolve().parents[2] / "schema"


def load_migrations(schema_dir: Path | None = None) -> list[Migration]:
    """The migration files in version order; MigrationError when the folder is missing or malformed."""
    directory = schema_dir or default_schema_dir()
    if not directory.is_dir():
        raise MigrationError(
            f"schema folder {directory} not found; set AUTO_PROMOTION_SCHEMA_DIR to the folder of migration files"
        )
    migrations: list[Migration] = []
    seen: dict[str, str] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_description.sql")
        version = match.group(1)
        if version in seen:
            raise MigrationError(f"{path.name} and {seen[version]} share version {version}")
        seen[version] = path.name
        sql = path.read_text(encoding="utf-8")
        migrations.append(Migration(version, path.name, sql, hashlib.sha256(sql.encode()).hexdigest()))
    return migrations


async def applied_migrations(conn: asyncpg.Connection) -> dict[str, str]:
    """version -> checksum of the migrations recorded in the database (empty before the first migrate)."""
    exists = await conn.fetchval(MQ["migrations_table_exists"])
    if not exists:
        return {}
    rows = await conn.fetch(MQ["applied_migrations"])
    return {r["version"]: r["checksum"] for r in rows}


async def pending_migrations(conn: asyncpg.Connection, schema_dir: Path | None = None) -> list[str]:
    """Filenames of migrations not yet applied."""
    applied = await applied_migrations(conn)
    return [m.filename for m in load_migrations(schema_dir) if m.version not in applied]


async def migrate(conn: asyncpg.Connection, schema_dir: Path | None = None) -> MigrateResult:
    """Apply every missing migration; refuses (changing nothing) if an applied file was edited."""
    migrations = load_migrations(schema_dir)
    result = MigrateResult()
    await conn.execute(MQ["lock"], MIGRATION_LOCK_KEY)
    try:
        await conn.execute(MQ["create_migrations_table"])
        applied = await applied_migrations(conn)
        edited = [
            f"{m.filename} (recorded checksum {applied[m.version][:12]}…, file now {m.checksum[:12]}…)"
            for m in migrations
            if m.version in applied and applied[m.version] != m.checksum
        ]
        if edited:
            raise MigrationError(
                "refusing to migrate: applied migration files were edited: "
                + "; ".join(edited)
                + ". Restore the original files and put the change in a new migration file."
            )
        known = {m.version for m in migrations}
        result.unknown_in_database = sorted(v for v in applied if v not in known)
        for m in migrations:
            if m.version in applied:
                result.already_applied.append(m.filename)
                continue
            try:
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        MQ["record_migration"],
                        m.version,
                        m.filename,
                        m.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"{m.filename} failed and was rolled back: {exc}") from exc
            result.applied.append(m.filename)
    finally:
        await conn.execute(MQ["unlock"], MIGRATION_LOCK_KEY)
    return result
