"""Ops endpoints: /healthz (the process is alive), /readyz (it can do its job), /metrics (Prometheus text)."""

from __future__ import annotations

import time
from typing import Any

import anyio
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker import metrics
from worker.db.sql import Q
from worker.http.app import CTX
from worker.retry import DB_ERRORS

log = structlog.get_logger("worker.http.ops")

DB_PROBE_SECONDS = 2.0


async def healthz(request: web.Request) -> web.Response:
    """Alive: the event loop answers. Says nothing about the database (that is /readyz)."""
    health = request.app[CTX].health
    return web.json_response(
        {"status": "ok", "uptimeSeconds": round(time.time() - health.started_at, 3) if health.started_at else None}
    )


# A worker writes: a server that only reads (a hot standby after a failover, default_transaction_read_only) is as
# unusable to it as one that does not answer.
_WRITABLE = Q["database_writable"]


async def readyz(request: web.Request) -> web.Response:
    """Ready: the database answers and accepts writes, no task is failing on a database fault, the listener is
    connected (unless poll-only) and the catch-up is done."""
    ctx = request.app[CTX]
    health = ctx.health
    checks: dict[str, Any] = {}
    database_ok = False
    with anyio.move_on_after(DB_PROBE_SECONDS):
        try:
            async with ctx.pool.acquire() as conn:
                database_ok = await conn.fetchval(_WRITABLE) is True
            if not database_ok:
                checks["databaseError"] = "the database is read-only (a standby, or default_transaction_read_only)"
                # A session keeps the read-only default it started with: let the pool open fresh ones, so the
                # next probe sees the server as it is now.
                await ctx.pool.expire_connections()
        except DB_ERRORS as exc:
            checks["databaseError"] = f"{type(exc).__name__}: {exc}"[:300]
    checks["database"] = database_ok
    checks["listener"] = health.listener_connected if health.listener_required else "not required (poll-only)"
    checks["catchUp"] = health.catchup_done
    faults = health.details.get("faults") or {}
    checks["tasks"] = "ok" if not faults else {task: error for task, error in faults.items()}
    stopping = bool(health.details.get("stopping"))
    ready = (
        database_ok
        and not faults
        and (health.listener_connected or not health.listener_required)
        and health.catchup_done
        and not stopping
    )
    body = {
        "status": "ready" if ready else "not ready",
        "checks": checks,
        "stopping": stopping,
        **{k: v for k, v in health.details.items() if k not in ("stopping", "faults")},
    }
    return web.json_response(body, status=200 if ready else 503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus text format; with AUTO_PROMOTION_METRICS_AUTH=true a viewer token is required."""
    await _require_metrics_access(request)
    ctx = request.app[CTX]
    with anyio.move_on_after(DB_PROBE_SECONDS):
        try:
            async with ctx.pool.acquire() as conn:
                metrics.QUEUE_BACKLOG.set(await conn.fetchval(Q["queue_backlog"]))
        except DB_ERRORS:
            pass  # the gauge keeps its last sample; /readyz tells that the database is gone
    body = generate_latest(metrics.REGISTRY)
    resp = web.Response(body=body)
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    resp.charset = "utf-8"
    return resp


async def _require_metrics_access(request: web.Request) -> None:
    try:
        from worker.http.auth import require_metrics_access
    except ModuleNotFoundError as exc:
        if exc.name != "worker.http.auth":
            raise
        if request.app[CTX].settings.metrics_auth:
            # Refuse rather than serve openly what the operator asked to protect.
            raise web.HTTPServiceUnavailable(text="metrics authentication is configured but not available") from None
        return
    await require_metrics_access(request)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
