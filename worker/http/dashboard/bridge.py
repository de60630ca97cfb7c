"""The dashboard's LISTEN bridge: ``ab_promotion_events`` NOTIFYs onto the application's EventBus.

Under ``autopromote run`` the daemon's listener publishes these events itself and sets ``BRIDGED_FLAG``; under
``autopromote serve`` this bridge does, through the same ``worker.listener.Listener`` (its own LISTEN connection
to ``AppContext.database_url``, its liveness probe and the shared retry policy), listening on this one channel.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import anyio
import structlog
from aiohttp import web

from worker.domain.events import PromotionBusEvent, is_notified_event, notified_event
from worker.http.app import CTX, AppContext
from worker.listener import PROMOTION_CHANNEL, Listener, PromotionEvent

log = structlog.get_logger("worker.http.dashboard")

EVENTS_CHANNEL = PROMOTION_CHANNEL
# health.details key with which the daemon says that it already feeds NOTIFYs into ctx.events.
BRIDGED_FLAG = "events_bridged"
# health.details key where this module reports its own bridge ("listening", "reconnecting", "off: ...").
BRIDGE_STATE = "dashboard_events_bridge"
# The FaultLog name of the bridge's Listener (tests/test_faults.py counts its db.fault lines).
FAULT_NAME = "dashboard.events_bridge"
APPLICATION_NAME = "autopromote-dashboard"
HEARTBEAT_S = 15.0  # the Listener's liveness probe interval: a dead socket shows here, not in a silent LISTEN


def _bridge_event(payload: str) -> PromotionBusEvent | None:
    """The bus event for one ab_promotion_events NOTIFY payload; None when it is not one we know."""
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    event, name = data.get("event"), data.get("experiment_name")
    if not is_notified_event(event):
        return None
    return notified_event(event, name if isinstance(name, str) else None, data.get("promotion_id"), from_bridge=True)


class _BridgeHooks:
    """ListenerHooks that publish promotion events to ctx.events and report the bridge's state."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def on_metrics(self, experiment_id: int | None) -> None:
        """Not listened to (the bridge LISTENs on EVENTS_CHANNEL only)."""

    def on_promotion_event(self, event: PromotionEvent) -> None:
        if self.ctx.health.details.get(BRIDGED_FLAG):
            return  # the daemon took over; its copy is already on the bus
        self.ctx.events.publish(
            notified_event(event.event, event.experiment_name, event.promotion_id, from_bridge=True)
        )

    def on_connected(self, reconnected: bool) -> None:
        self.ctx.health.details[BRIDGE_STATE] = "listening"
        log.info("dashboard.events_bridge.listening", channel=EVENTS_CHANNEL, reconnected=reconnected)

    def on_disconnected(self) -> None:
        self.ctx.health.details[BRIDGE_STATE] = "reconnecting"


async def run_events_bridge(ctx: AppContext) -> None:
    """Publish ab_promotion_events NOTIFYs to ctx.events until cancelled; a lost session is logged once and
    reopened under the shared retry policy (worker.retry), by the Listener."""
    listener = Listener(
        ctx.database_url,
        _BridgeHooks(ctx),
        channels=(EVENTS_CHANNEL,),
        fault_name=FAULT_NAME,
        application_name=APPLICATION_NAME,
        liveness_interval=HEARTBEAT_S,
        report_metrics=False,
    )
    never = anyio.Event()  # cancelled by the application's cleanup, never stopped otherwise
    await listener.run(never)


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
