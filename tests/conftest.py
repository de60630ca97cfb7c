"""Test harness: a real PostgreSQL (TEST_DATABASE_URL or an embedded server), a template database built
once from the migrations, and a fresh copy of it for every test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from worker.db.connect import connect, create_pool, with_database
from worker.db.embedded import EmbeddedPostgres, start_embedded
from worker.db.migrate import migrate


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres | None]:
    """The embedded server when TEST_DATABASE_URL is unset, else None."""
    if os.environ.get("TEST_DATABASE_URL"):
        yield None
        return
    server = start_embedded()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def admin_url(pg_server: EmbeddedPostgres | None) -> str:
    """A URL to the server's maintenance database, used to create and drop test databases."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url
    assert pg_server is not None
    return pg_server.url


@pytest.fixture(scope="session")
async def template_db(admin_url: str) -> AsyncIterator[str]:
    """Name of a database migrated once, cloned for each test."""
    name = f"ap_tmpl_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await connect(with_database(admin_url, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@asynccontextmanager
async def fresh_database(admin_url: str, prefix: str, template: str | None = None) -> AsyncIterator[str]:
    """A database of its own (a copy of ``template`` if given), dropped afterwards; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    clone = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"{clone}')
        yield with_database(admin_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def db_url(admin_url: str, template_db: str) -> AsyncIterator[str]:
    """URL of a fresh, migrated database of this test's own."""
    async with fresh_database(admin_url, "ap_test", template_db) as url:
        yield url


@pytest.fixture
async def empty_db_url(admin_url: str) -> AsyncIterator[str]:
    """URL of a fresh database with no schema at all (for migration tests)."""
    async with fresh_database(admin_url, "ap_empty") as url:
        yield url


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await connect(db_url)
    try:
        yield c
    finally:
        await c.close()


# The URL each `pool` fixture connects to, by id(pool): an AppContext needs it (its dashboard bridge opens a LISTEN
# session of its own) and asyncpg keeps it only in private attributes. See pool_url().
POOL_URLS: dict[int, str] = {}


def pool_url(pool: asyncpg.Pool) -> str:
    """The database URL of a pool made by the ``pool`` fixture."""
    try:
        return POOL_URLS[id(pool)]
    except KeyError:
        raise AssertionError("pool_url() knows only pools of the `pool` fixture; pass database_url=") from None


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(db_url, min_size=1, max_size=10)
    POOL_URLS[id(p)] = db_url
    try:
        yield p
    finally:
        POOL_URLS.pop(id(p), None)
        await p.close()
