"""Connections: resolve DATABASE_URL or the embedded server, and open pools with our codecs."""

from __future__ import annotations

import json
import math
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from worker.db.embedded import EmbeddedPostgres, start_embedded


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached; the message names the URL (without password) and what to check."""


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def dump_json(value: Any) -> str:
    """The json/jsonb encoder of every connection: strict JSON, sanitising only when a NaN or inf is present."""
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        return json.dumps(json_safe(value), allow_nan=False)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(typename, encoder=dump_json, decoder=json.loads, schema="pg_catalog")


async def connect(url: str, **kwargs: Any) -> asyncpg.Connection:
    """One connection with the JSON codecs; DatabaseUnavailable when the server cannot be reached."""
    try:
        conn = await asyncpg.connect(url, **kwargs)
    except (
        OSError,
        socket.gaierror,
        asyncpg.CannotConnectNowError,
        asyncpg.InvalidCatalogNameError,
        asyncpg.InvalidAuthorizationSpecificationError,
        asyncpg.InvalidPasswordError,
        TimeoutError,
    ) as exc:
        raise DatabaseUnavailable(
            f"cannot connect to {redact_url(url)}: {exc}. Check DATABASE_URL and that PostgreSQL is running."
        ) from exc
    await _init_connection(conn)
    return conn


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 8, **kwargs: Any) -> asyncpg.Pool:
    """A pool whose connections have the JSON codecs; DatabaseUnavailable when unreachable."""
    try:
        pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, init=_init_connection, **kwargs)
    except (
        OSError,
        socket.gaierror,
        asyncpg.CannotConnectNowError,
        asyncpg.InvalidCatalogNameError,
        asyncpg.InvalidAuthorizationSpecificationError,
        asyncpg.InvalidPasswordError,
        TimeoutError,
    ) as exc:
        raise DatabaseUnavailable(
            f"cannot connect to {redact_url(url)}: {exc}. Check DATABASE_URL and that PostgreSQL is running."
        ) from exc
    assert pool is not None
    return pool


@dataclass(slots=True)
class ResolvedDatabase:
    url: str
    embedded: EmbeddedPostgres | None


@asynccontextmanager
async def resolve_database(database_url: str | None) -> AsyncIterator[ResolvedDatabase]:
    """DATABASE_URL if set, else a throw-away embedded server stopped on exit (also on Ctrl-C)."""
    if database_url:
        yield ResolvedDatabase(database_url, None)
        return
    server = start_embedded()
    try:
        yield ResolvedDatabase(server.url, server)
    finally:
        server.cleanup()


# asyncpg is imported only under worker/db (tests/test_layers.py checks it): the rest of the code names connections,
# pools, rows and database errors through these re-exports, so a change of driver touches this package only.
from asyncpg import Connection as Connection  # noqa: E402
from asyncpg import InterfaceError as InterfaceError  # noqa: E402
from asyncpg import InternalClientError as InternalClientError  # noqa: E402
from asyncpg import Pool as Pool  # noqa: E402
from asyncpg import PostgresError as PostgresError  # noqa: E402
from asyncpg import Record as Record  # noqa: E402
from asyncpg.exceptions import UniqueViolationError as UniqueViolationError  # noqa: E402
