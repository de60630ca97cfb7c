"""The dashboard's LISTEN bridge: ``ab_promotion_events`` NOTIFYs onto the application's EventBus.

Under ``autopromote run`` the daemon's listener publishes these events itself and sets ``BRIDGED_FLAG``; under
``autopromote serve`` this bridge does, with its own LISTEN connection, reopened under the shared retry policy
(worker.retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import structlog
from aiohttp import web

from worker.http.app import CTX, AppContext
from worker.retry import DB_ERRORS, FaultLog, is_transient, retrying

log = structlog.get_logger("worker.http.dashboard")

EVENTS_CHANNEL = "ab_promotion_events"
# health.details key with which the daemon says that it already feeds NOTIFYs into ctx.events.
BRIDGED_FLAG = "events_bridged"
# health.details key where this module reports its own bridge ("listening", "reconnecting", "off: ...").
BRIDGE_STATE = "dashboard_events_bridge"
HEARTBEAT_S = 15.0
# Same shape as the daemon's listener publishes: {"type": promotion|rollback, "event": <NOTIFY event>, ...}.
_BRIDGE_EVENTS = {"promoted": "promotion", "rolled_back": "rollback", "rollback_requested": "rollback"}


def _bridge_event(payload: str) -> dict[str, Any] | None:
    """The bus event for one ab_promotion_events NOTIFY payload; None when it is not one we know."""
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    kind = _BRIDGE_EVENTS.get(str(data.get("event")))
    if kind is None:
        return None
    return {"type": kind, "experimentName": data.get("experiment_name"),
            "promotionId": str(data["promotion_id"]) if data.get("promotion_id") else None,
            "event": data.get("event"), "source": "database"}


@contextlib.asynccontextmanager
async def _listen_session(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own for LISTEN, opened with the pool's connection arguments.

    It is held for the application's lifetime, so it must not take one of the pooled connections the daemon
    sizes its evaluation concurrency by. asyncpg keeps those arguments in ``_connect_args``/``_connect_kwargs``
    (what its public ``set_connect_args`` sets); should a future asyncpg drop them, fall back to the pool.
    """
    args = getattr(pool, "_connect_args", None)
    kwargs = getattr(pool, "_connect_kwargs", None)
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        async with pool.acquire() as pooled:
            yield pooled
        return
    conn: asyncpg.Connection = await asyncpg.connect(*args, **kwargs)
    try:
        yield conn
    finally:
        try:
            await conn.close(timeout=2)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            conn.terminate()


async def _open_bridge(ctx: AppContext) -> tuple[contextlib.AsyncExitStack, asyncpg.Connection, asyncio.Event]:
    """A session LISTENing on EVENTS_CHANNEL that publishes each NOTIFY; the stack closes it."""
    lost = asyncio.Event()

    def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        if ctx.health.details.get(BRIDGED_FLAG):
            return  # the daemon took over; its copy is already on the bus
        event = _bridge_event(payload)
        if event is not None:
            ctx.events.publish(event)

    async with contextlib.AsyncExitStack() as stack:
        conn = await stack.enter_async_context(_listen_session(ctx.pool))
        conn.add_termination_listener(lambda _c: lost.set())
        await conn.add_listener(EVENTS_CHANNEL, on_notify)

        async def unlisten() -> None:
            if not conn.is_closed():
                with contextlib.suppress(*DB_ERRORS):
                    await conn.remove_listener(EVENTS_CHANNEL, on_notify)

        stack.push_async_callback(unlisten)
        return stack.pop_all(), conn, lost
    raise AssertionError("unreachable")  # pragma: no cover (mypy cannot see that the block returns)


async def _watch_bridge(conn: asyncpg.Connection, lost: asyncio.Event) -> None:
    """Return never; raise ConnectionError when the session ends, or a database error when it stops answering."""
    while not lost.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lost.wait(), HEARTBEAT_S)
            break
        await conn.fetchval("SELECT 1", timeout=5)  # a dead socket shows here, not in a silent LISTEN
    raise ConnectionError("the dashboard's LISTEN connection was closed")


async def run_events_bridge(ctx: AppContext) -> None:
    """Publish ab_promotion_events NOTIFYs to ctx.events until cancelled; a lost session is logged once and
    reopened under the shared retry policy (worker.retry)."""
    fault = FaultLog("dashboard.events_bridge")
    never = anyio.Event()  # cancelled by the application's cleanup, never stopped otherwise
    while True:
        session, conn, lost = await retrying(fault, never, lambda: _open_bridge(ctx))
        async with session:
            ctx.health.details[BRIDGE_STATE] = "listening"
            log.info("dashboard.events_bridge.listening", channel=EVENTS_CHANNEL)
            try:
                await _watch_bridge(conn, lost)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                fault.failed(exc)
        ctx.health.details[BRIDGE_STATE] = "reconnecting"


async def _events_bridge_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: run our own LISTEN bridge unless the daemon says it already bridges."""
    ctx = app[CTX]
    if ctx.health.details.get(BRIDGED_FLAG):
        ctx.health.details[BRIDGE_STATE] = "off: the daemon bridges events"
        yield
        return
    task = asyncio.create_task(run_events_bridge(ctx), name="dashboard.events_bridge")
    try:
        yield
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        ctx.health.details[BRIDGE_STATE] = "stopped"
