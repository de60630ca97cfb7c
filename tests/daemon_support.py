"""Helpers for the daemon tests: run a Daemon in the test's event loop, wait for database conditions."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import asyncpg

from tests.factories import create_experiment, record
from worker.config import load_config, load_settings
from worker.daemon import Daemon
from worker.db.connect import connect, create_pool

WINNER = {"control": (17_500, 1_750), "variant-b": (17_000, 1_904)}  # 10.0% vs 11.2%: about +12%, eligible
# Decision settings every daemon test starts from: no scan unless a test asks for one.
QUIET = {"AUTO_PROMOTION_SCAN_INTERVAL": "3600"}


async def wait_for(check: Callable[[], Awaitable[Any]], *, within: float = 20.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; AssertionError naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what} (last value {value!r})")
        await anyio.sleep(0.02)


def settings_env(db_url: str, **env: str) -> dict[str, str]:
    return {
        "DATABASE_URL": db_url,
        "AUTO_PROMOTION_HTTP_PORT": "0",
        "SLACK_WEBHOOK_URL": "http://127.0.0.1:9/hook",
        "AUTO_PROMOTION_POLL_INTERVAL": "3600",
        **env,
    }


@asynccontextmanager
async def running_daemon(
    db_url: str, *, config_env: dict[str, str] | None = None, serve_http: bool = False, **env: str
) -> AsyncIterator[Daemon]:
    """A daemon on ``db_url`` until the block ends; entered once its start-up catch-up is done."""
    settings = load_settings(settings_env(db_url, **env))
    config = load_config(env={**QUIET, **(config_env or {})})
    pool = await create_pool(db_url, min_size=1, max_size=settings.pool_size)
    daemon = Daemon(url=db_url, pool=pool, settings=settings, config=config, serve_http=serve_http)
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run, stop)
            with anyio.fail_after(30):
                await daemon.caught_up.wait()
                await daemon.http_ready.wait()
            try:
                yield daemon
            finally:
                stop.set()
    finally:
        await pool.close()


@asynccontextmanager
async def db(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(db_url)
    try:
        yield conn
    finally:
        await conn.close()


async def seed_winner(conn: asyncpg.Connection, name: str, **kwargs: Any) -> int:
    """An experiment whose recorded data makes it eligible (variant-b wins)."""
    exp_id = await create_experiment(conn, name, list(WINNER), **kwargs)
    for variant, (n, conv) in WINNER.items():
        await record(conn, name, variant, n, conv)
    return exp_id


async def promotions(conn: asyncpg.Connection, experiment_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM experiment_promotions WHERE experiment_id = $1 ORDER BY promoted_at", experiment_id
    )
