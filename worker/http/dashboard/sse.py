"""The dashboard's ``/events``: the EventBus as server-sent events.

Each event is encoded once for all clients (the bus calls ``_encode_event``); at most
``AUTO_PROMOTION_SSE_MAX_CLIENTS`` clients are accepted (then 503), and a client that stops reading is dropped once
its bounded queue is full, its connection closed (its EventSource reconnects and the page re-fetches what it shows).
Who may open the stream is decided in routes.py (viewer role).
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import structlog
from aiohttp import web

from worker.domain.events import BusEvent
from worker.events import StreamClient, TooManyClients
from worker.http.app import CTX
from worker.http.errors import ApiError

log = structlog.get_logger("worker.http.dashboard")

HEARTBEAT_S = 15.0
# How often an idle /events handler checks whether its client has gone (and frees its place under the cap).
GONE_CHECK_S = 1.0
MAX_EVENT_FIELD = 500
# How long a client told "too many clients" should wait before trying again (its EventSource backs off too).
RETRY_AFTER_S = 10

STREAMS = web.AppKey[set[StreamClient]]("dashboard_streams")
# Non-empty while /events refuses clients for the cap, so that the warning is logged once per spell.
REFUSING = web.AppKey[set[bool]]("dashboard_refusing")


def _public_event(event: BusEvent) -> dict[str, Any] | None:
    """The scalar fields of a bus event, strings cut short: enough for the page to know what to re-fetch."""
    if not isinstance(event.get("type"), str):
        return None
    out: dict[str, Any] = {}
    for key, value in event.items():
        if not isinstance(key, str):
            continue
        if isinstance(value, str):
            out[key] = value[:MAX_EVENT_FIELD]
        elif value is None or isinstance(value, bool | int):
            out[key] = value
        elif isinstance(value, float):
            out[key] = value if math.isfinite(value) else None
    return out


def _encode_event(event: BusEvent) -> bytes | None:
    """One bus event as a server-sent event; the bus calls this once per event for every /events client."""
    public = _public_event(event)
    if public is None:
        return None
    return b"data: " + json.dumps(public, separators=(",", ":"), default=str).encode() + b"\n\n"


async def events_stream(request: web.Request) -> web.StreamResponse:
    """``text/event-stream`` of the EventBus: one ``data:`` JSON line per event, a comment as heartbeat."""
    ctx = request.app[CTX]
    transport = request.transport

    def drop() -> None:
        # The client stopped reading: a write to it may be waiting for buffer space that never comes. Aborting
        # the connection ends that wait and frees the buffer (abort, not close: close would wait to flush).
        if transport is not None:
            transport.abort()

    refusing = request.app[REFUSING]
    try:
        client = ctx.events.open_stream(_encode_event, limit=ctx.settings.sse_max_clients, on_drop=drop)
    except TooManyClients as exc:
        if not refusing:  # once per spell of refusals, not once per retrying browser
            log.warning(
                "dashboard.events.too_many_clients",
                limit=exc.limit,
                message="live-update clients are refused with 503; raise AUTO_PROMOTION_SSE_MAX_CLIENTS "
                "if this many dashboards are expected",
            )
        refusing.add(True)
        raise ApiError(
            503,
            "too_many_clients",
            f"{exc.limit} live-update streams are already open, the most AUTO_PROMOTION_SSE_MAX_CLIENTS "
            f"allows; try again in {RETRY_AFTER_S} s, or raise the setting",
            {"limit": exc.limit},
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ).http_exception() from None
    refusing.clear()
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # a reverse proxy must not buffer the stream
            "X-Content-Type-Options": "nosniff",
        }
    )
    streams = request.app[STREAMS]
    streams.add(client)
    try:
        await response.prepare(request)
        await response.write(b"retry: 2000\n: connected\n\n")
        loop = asyncio.get_running_loop()
        heartbeat_at = loop.time() + HEARTBEAT_S
        while True:
            try:
                data = await asyncio.wait_for(client.get(), GONE_CHECK_S)
            except TimeoutError:
                # aiohttp does not cancel a handler whose client left: look, so that its slot comes free.
                if request.transport is None or request.transport.is_closing():
                    break
                if loop.time() >= heartbeat_at:
                    heartbeat_at = loop.time() + HEARTBEAT_S
                    await response.write(b": heartbeat\n\n")
                continue
            if data is None:  # shut down, or dropped for falling behind
                break
            await response.write(data)
    except (ConnectionResetError, ConnectionError):
        pass  # the browser went away; EventSource reconnects by itself when it comes back
    finally:
        streams.discard(client)
        ctx.events.close_stream(_encode_event, client)
    return response


async def close_streams(app: web.Application) -> None:
    """On shutdown, end every open event stream so that the server does not wait for them."""
    for client in app[STREAMS].copy():
        client.close()
