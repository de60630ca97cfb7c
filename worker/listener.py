"""LISTEN on a dedicated connection, reconnect with capped jittered backoff, and probe liveness.

NOTIFY is only a wake-up; the queue table is the truth. After every (re)connect the owner is told to catch up,
because notifications sent while no session was listening are gone for good. A half-open TCP connection delivers
nothing and raises nothing, so every ``liveness_interval`` seconds the listener asks its own session which channels
it listens on, with a timeout; no answer, or the wrong answer, means reconnect.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import anyio
import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from worker import metrics
from worker.db.connect import Connection, connect
from worker.db.sql import DQ
from worker.retry import FaultLog, Faults, Stopped, is_transient, retrying

log = structlog.get_logger("worker.listener")

METRICS_CHANNEL = "ab_metrics"
PROMOTION_CHANNEL = "ab_promotion_events"
CHANNELS = (METRICS_CHANNEL, PROMOTION_CHANNEL)
APPLICATION_NAME = "autopromote-listener"

_EXPERIMENT_ID = re.compile(r"[0-9]{1,19}")


class BadPayload(ValueError):
    """A NOTIFY payload that is not what the schema sends."""


class PromotionEvent(BaseModel):
    """The JSON of an ``ab_promotion_events`` notification (see notify_promotion_event() in 0001_core.sql)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event: Literal[
        "promoted",
        "rolled_back",
        "rollback_requested",
        # schema/0010: a rollout entered a state (rollout_<state>)
        "rollout_ramping",
        "rollout_holding",
        "rollout_complete",
        "rollout_rolled_back",
        "rollout_paused",
        "rollout_awaiting_approval",
    ]
    promotion_id: uuid.UUID
    experiment_name: str


def parse_metrics_payload(payload: str) -> int | None:
    """The experiment id of an ``ab_metrics`` wake-up, or None for ``*`` (a global alert: every experiment).

    Raises BadPayload for anything else.
    """
    text = payload.strip()
    if text == "*":
        return None
    if not _EXPERIMENT_ID.fullmatch(text) or not 0 < int(text) < 2**63:
        raise BadPayload(f"expected an experiment id or '*', got {payload[:80]!r}")
    return int(text)


def parse_promotion_payload(payload: str) -> PromotionEvent:
    """The event of an ``ab_promotion_events`` notification; BadPayload when it is not one."""
    try:
        return PromotionEvent.model_validate_json(payload)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}" for e in exc.errors())
        raise BadPayload(problems[:300]) from None


class ListenerHooks(Protocol):
    """What the listener tells its owner. Called on the event loop; must not block or raise."""

    def on_metrics(self, experiment_id: int | None) -> None: ...

    def on_promotion_event(self, event: PromotionEvent) -> None: ...

    def on_connected(self, reconnected: bool) -> None: ...

    def on_disconnected(self) -> None: ...


class ListenerLost(ConnectionError):
    """The LISTEN session is gone or no longer answers (a connection error: transient, see worker.retry)."""


async def wait_any(*events: anyio.Event) -> None:
    """Return as soon as one of ``events`` is set."""
    if any(e.is_set() for e in events):
        return
    async with anyio.create_task_group() as tg:

        async def one(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        for event in events:
            tg.start_soon(one, event)


class Listener:
    """Owns the LISTEN connection for the life of the worker; ``run`` returns once ``stop`` is set."""

    def __init__(
        self,
        url: str,
        hooks: ListenerHooks,
        *,
        liveness_interval: float = 3.0,
        application_name: str = APPLICATION_NAME,
        connect_timeout: float = 10.0,
        faults: Faults | None = None,
        channels: Sequence[str] = CHANNELS,
        fault_name: str = "listener",
        report_metrics: bool = True,
    ) -> None:
        # channels/fault_name/report_metrics let the dashboard's event bridge (under `autopromote serve`) use this
        # class for ab_promotion_events alone, under its own FaultLog name, without moving the daemon's gauges.
        self.url = url
        self.channels = tuple(channels)
        self.report_metrics = report_metrics
        self.hooks = hooks
        self.liveness_interval = liveness_interval
        self.application_name = application_name
        self.connect_timeout = connect_timeout
        self.connected = False
        self.backend_pid: int | None = None
        self.fault = FaultLog(fault_name, faults)

    async def run(self, stop: anyio.Event) -> None:
        """Listen until ``stop``: a lost session is logged once, then reopened under the shared retry policy
        (worker.retry) for as long as the database stays unusable; a bug propagates."""
        ever_connected = False
        while not stop.is_set():
            try:
                conn, lost = await retrying(self.fault, stop, self._open)
            except Stopped:
                return
            healthy_exit = False
            try:
                self.backend_pid = conn.get_server_pid()
                self._set_connected(True)
                if ever_connected:
                    if self.report_metrics:
                        metrics.LISTENER_RECONNECTS.inc()
                    log.info("listener.reconnected", backend_pid=self.backend_pid)
                else:
                    log.info("listener.connected", backend_pid=self.backend_pid, channels=list(self.channels))
                self.hooks.on_connected(ever_connected)
                ever_connected = True
                await self._watch(conn, stop, lost)
                healthy_exit = True
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # Logged once here; the reconnect attempts that follow log only when the fault ends.
                self.fault.failed(exc, backend_pid=self.backend_pid)
            finally:
                was_connected = self.connected
                self._set_connected(False)
                if was_connected:
                    self.hooks.on_disconnected()
                await _close(conn, graceful=healthy_exit)

    async def _open(self) -> tuple[Connection, anyio.Event]:
        """A new session that LISTENs on every channel (a hot standby refuses LISTEN: a transient error)."""
        conn = await connect(
            self.url, timeout=self.connect_timeout, server_settings={"application_name": self.application_name}
        )
        lost = anyio.Event()
        try:
            conn.add_termination_listener(_setter(lost))
            for channel in self.channels:
                await conn.add_listener(channel, self._on_notification)
        except BaseException:
            conn.terminate()
            raise
        return conn, lost

    async def _watch(self, conn: Connection, stop: anyio.Event, lost: anyio.Event) -> None:
        """Return when ``stop`` is set; raise ListenerLost when the session dies or stops answering."""
        probe_timeout = max(1.0, min(5.0, self.liveness_interval))
        while True:
            with anyio.move_on_after(self.liveness_interval):
                await wait_any(stop, lost)
            if stop.is_set():
                return
            if lost.is_set() or conn.is_closed():
                raise ListenerLost("the LISTEN connection was closed")
            channels: list[str] | None = None
            with anyio.move_on_after(probe_timeout):
                channels = await conn.fetchval(DQ["listening_channels"])
            if channels is None:
                raise ListenerLost(f"liveness probe got no answer within {probe_timeout:g} s")
            if sorted(channels) != sorted(self.channels):
                raise ListenerLost(f"session listens on {channels}, expected {list(self.channels)}")

    def _on_notification(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        try:
            if channel == METRICS_CHANNEL:
                self.hooks.on_metrics(parse_metrics_payload(payload))
            elif channel == PROMOTION_CHANNEL:
                self.hooks.on_promotion_event(parse_promotion_payload(payload))
        except BadPayload as exc:
            log.warning("listener.bad_payload", channel=channel, payload=payload[:200], error=str(exc))

    def _set_connected(self, up: bool) -> None:
        self.connected = up
        if self.report_metrics:
            metrics.LISTENER_CONNECTED.set(1 if up else 0)


def _setter(event: anyio.Event) -> Callable[[Any], None]:
    def set_event(_conn: Any) -> None:
        event.set()

    return set_event


async def _close(conn: Connection, *, graceful: bool) -> None:
    if conn.is_closed():
        return
    if graceful:
        with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
            await conn.close()
            return
    conn.terminate()
