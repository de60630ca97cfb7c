"""``autopromote run``: one root task group that owns the listener, folder, evaluator, guard, rollback handler,
scanner, notification dispatcher and HTTP server, and one shutdown path.

Shutdown: SIGTERM or SIGINT sets the stop event. Every service stops taking work, finishes the unit in flight (one
transaction) and returns; whatever is still running ``shutdown_grace`` seconds later is cancelled, and its open
transaction is rolled back by PostgreSQL, so nothing is lost either way. A second signal cancels everything at once.
Exit codes: 0 after a signal, 1 a task failed with a bug (after the same shutdown path), 2 bad configuration or
pending migrations, 3 database unreachable at start; a second signal exits with 128 + its number.

Database faults never end the process: every task retries transient database errors under the one policy of
``worker.retry`` (logged once per fault, /readyz not ready meanwhile) and resumes by itself once the database is
writable again. Only a bug (any other exception) ends it: one ``daemon.task_crashed`` line naming the task, then
the shutdown path as for a signal, and exit code 1.

Connections per replica: the pool (``AUTO_PROMOTION_POOL_SIZE``, shared with the HTTP API and the dispatcher; the
folder keeps one and ``pool_size - 4`` evaluations run at once), plus the LISTEN session, the scan-leadership
session, and up to ``pool_size - 4`` evaluation-lock sessions (none in poll-only mode, where only the pool is used).
"""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import structlog
from aiohttp import web

from worker.config import EffectiveConfig, Settings
from worker.db.connect import Pool, connect, create_pool, redact_url, resolve_database
from worker.db.migrate import migrate, pending_migrations
from worker.domain.events import CommittedEvent, committed_event, evaluation_event, notified_event
from worker.domain.results import PromoteResult, RollbackResult, RolloutTransition
from worker.engine import Engine, Evaluation
from worker.evaluator import Evaluator, Folder, Wake, keep_session
from worker.events import EventBus
from worker.guard import PostPromotionGuard, default_identity
from worker.http import slack
from worker.http.app import AppContext, Health, create_app
from worker.listener import Listener, PromotionEvent
from worker.retry import (
    DB_ERRORS,
    FaultLog,
    Faults,
    Stopped,
    describe,
    is_database_error,
    is_read_only,
    retrying,
    sleep_or_stop,
)
from worker.rollbacks import carry_out_rollback_requests
from worker.scanner import AdvisoryLockLeadership, Leadership, LeaseLeadership, Scanner

log = structlog.get_logger("worker.daemon")

EVENTS_BRIDGED = "events_bridged"  # health.details flag read by worker/http/dashboard/bridge.py

EXIT_OK, EXIT_BUG, EXIT_CONFIG, EXIT_DB = 0, 1, 2, 3
_RESTART_FORGOTTEN_AFTER = 60.0  # seconds a restarted task must run before its next failure counts as a new fault
# The rollout timer (_rollouts_loop): at most one full check of every ramp per _RAMP_CHECK_SPACING seconds, however
# many rollout events arrive.
# The events after which a ramp may have a new due time (a rollback, completion, pause or a pending approval has none).
_RAMP_TIMER_EVENTS = frozenset({"promoted", "rollout_ramping", "rollout_holding"})
_RAMP_CHECK_SPACING = 0.2
FAULTS = "faults"  # health.details: task -> database error, while a task cannot use the database


class StartupError(Exception):
    """The worker refuses to start; ``code`` is the process exit code."""

    def __init__(self, message: str, code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class ShutdownState:
    forced_by: int | None = None  # the signal that forced an immediate exit
    requested_at: float | None = None
    grace_exceeded: bool = False
    signals: list[str] = field(default_factory=list)


class Daemon:
    """The worker on one database. ``run(stop)`` returns once ``stop`` is set and the work in flight has ended."""

    def __init__(
        self,
        *,
        url: str,
        pool: Pool,
        settings: Settings,
        config: EffectiveConfig,
        events: EventBus | None = None,
        health: Health | None = None,
        identity: str | None = None,
        serve_http: bool = True,
    ) -> None:
        self.url = url
        self.pool = pool
        self.settings = settings
        self.config = config
        self.events = events or EventBus()
        self.health = health or Health(listener_required=not settings.poll_only)
        self.health.listener_required = not settings.poll_only
        # The dashboard runs its own LISTEN bridge to the EventBus unless told that the daemon publishes already.
        self.health.details[EVENTS_BRIDGED] = True
        self.identity = identity or default_identity()
        self.serve_http = serve_http
        self.faults = Faults(on_fault=self._on_fault)
        self.health.details[FAULTS] = self.faults.active  # live: /readyz is not ready while any task is failing
        self.crashed: str | None = None  # the task that failed with a bug
        self._background: set[asyncio.Task[None]] = set()
        self.engine = Engine(pool, settings, config, on_committed=self._on_committed)
        self.guard = PostPromotionGuard(pool, self.engine, settings, config, identity=self.identity)
        self.evaluator = Evaluator(
            pool,
            self.engine,
            self.guard,
            concurrency=evaluation_concurrency(settings),
            on_evaluated=self._on_evaluated,
            faults=self.faults,
        )
        self.folder = Folder(
            pool,
            settings,
            self.evaluator,
            on_tick=self._on_tick,
            on_caught_up=self._caught_up,
            catch_up_at_start=settings.poll_only,
            faults=self.faults,
        )
        self.rollback_wake = Wake()
        self.guard_wake = Wake()
        self.rollout_wake = Wake()
        self._ramp_events: set[str] = set()  # experiments (names) of rollout events since the timer's last check
        self._ramp_full = False  # a full check asked for (a global critical alert)
        self._ramp_poll_at = 0.0  # when the timer's next full check is due at the latest (anyio time)
        interval = config.config.scan_interval_seconds
        leadership: Leadership = (
            LeaseLeadership(pool, self.identity, ttl=max(3 * interval, 10.0))
            if settings.poll_only
            else AdvisoryLockLeadership(url)
        )
        self.scanner = Scanner(leadership, self.scan_once, interval=interval, faults=self.faults)
        self.listener = (
            None
            if settings.poll_only
            else Listener(url, self, liveness_interval=settings.liveness_interval, faults=self.faults)
        )
        self.dispatcher = _dispatcher(pool, settings, self.faults)
        self.http_port: int | None = None
        self.http_ready = anyio.Event()
        self.caught_up = anyio.Event()
        self.stopping = False

    # ---------------------------------------------------------------------------------------------- running
    async def run(self, stop: anyio.Event) -> None:
        """Run every service until ``stop``; then give the work in flight ``shutdown_grace`` seconds."""
        self.health.started_at = time.time()
        grace = self.settings.shutdown_grace
        log.info(
            "daemon.starting",
            identity=self.identity,
            poll_only=self.settings.poll_only,
            scan_interval=self.scanner.interval,
            poll_interval=self.settings.poll_interval,
            evaluation_concurrency=self.evaluator.concurrency,
            grace_seconds=grace,
            dispatcher=self.dispatcher is not None,
        )
        http_stop = anyio.Event()
        await self._run(stop, http_stop, grace)
        log.info("daemon.stopped", folded=self.folder.folded_total, evaluations=self.evaluator.evaluations)

    async def _run(self, stop: anyio.Event, http_stop: anyio.Event, grace: float) -> None:
        async with anyio.create_task_group() as outer:
            if self.serve_http:
                await outer.start(self._serve_http, http_stop)
            else:
                self.http_ready.set()
            async with anyio.create_task_group() as work:
                work.start_soon(self._fan_out_stop, stop)
                tasks: list[tuple[str, Callable[[anyio.Event], Awaitable[None]]]] = [
                    ("folder", self.folder.run),
                    ("evaluator", self.evaluator.run),
                    ("rollback_requests", self._rollbacks_loop),
                    ("guard", self._guard_loop),
                    ("rollouts", self._rollouts_loop),
                    ("scanner", self.scanner.run),
                ]
                if self.listener is not None:
                    tasks.append(("listener", self.listener.run))
                if self.dispatcher is not None:
                    tasks.append(("dispatcher", self.dispatcher.run))
                for name, task in tasks:
                    work.start_soon(self._supervise, name, task, stop)
                await stop.wait()
                self.stopping = True
                self.health.details["stopping"] = True
                # Everything still running once the work budget is spent is cancelled (and rolled back).
                work.cancel_scope.deadline = anyio.current_time() + _work_budget(grace)
            if work.cancel_scope.cancelled_caught:
                log.warning("shutdown.grace_exceeded", grace_seconds=grace)
            http_stop.set()

    async def _fan_out_stop(self, stop: anyio.Event) -> None:
        await stop.wait()
        for wake in (self.folder.wake, self.evaluator.wake, self.rollback_wake, self.guard_wake, self.rollout_wake):
            wake.set()

    async def _supervise(self, name: str, task: Callable[[anyio.Event], Awaitable[None]], stop: anyio.Event) -> None:
        """Run one long-running task until ``stop``. Each task retries its own transient database faults; a
        database error that still escapes (one that is not transient, or a group of them) restarts the task under
        the same policy, since no database error may end the worker. Anything else is a bug: logged once naming the
        task, then ``stop`` is set, so the shutdown path runs, and the exit code says so."""
        # Not on the Faults board: a restarted task reports its own faults; this one only paces and logs restarts.
        fault = FaultLog(f"{name}.restart")

        async def run_task() -> None:
            started = time.monotonic()
            try:
                await task(stop)
            except Exception:
                if time.monotonic() - started > _RESTART_FORGOTTEN_AFTER:
                    fault.recovered()  # it ran fine for a while: this is a new fault, logged as such
                raise

        try:
            await retrying(fault, stop, run_task, retry_if=is_database_error)
        except Stopped:
            return
        except Exception as exc:
            if self.crashed is None:
                self.crashed = name
            log.critical("daemon.task_crashed", task=name, error=describe(exc), exc_info=exc)
            self.health.details["crashed"] = name
            stop.set()

    def _on_fault(self, exc: BaseException) -> None:
        if is_read_only(exc):
            # Pooled sessions opened while the database was read-only stay read-only: have the pool replace them
            # (busy ones when released), so that the first attempt after the database is writable again succeeds.
            # (expire_connections only bumps a generation number, but it is a coroutine.)
            task = asyncio.get_running_loop().create_task(self.pool.expire_connections())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _rollbacks_loop(self, stop: anyio.Event) -> None:
        await self._run_on_wake("rollback_requests", self.rollback_wake, stop, self._carry_out_rollbacks)

    async def _guard_loop(self, stop: anyio.Event) -> None:
        await self._run_on_wake("guard", self.guard_wake, stop, self._check_guard)

    async def _rollouts_loop(self, stop: anyio.Event) -> None:
        """The ramps' clock: check every unfinished rollout, then sleep until the soonest step's time minimum (or the
        end of a holding window) is met, at most a poll interval (the fallback for a lost NOTIFY, poll-only mode, an
        alert or a config written without one): each of those is a full check. A rollout event from any replica that
        may have moved a due time (a promotion, a step begun) wakes it early for a check of those experiments alone,
        whose due times join the soonest; a global critical alert wakes it for a full check. Updates drive the rest
        (the evaluator checks a ramp after every fold), so a quiet experiment still advances on time and a worker that
        starts picks every rollout up where it was. However many events arrive, it checks at most once per
        _RAMP_CHECK_SPACING seconds."""
        fault = FaultLog("rollouts", self.faults)
        due: float | None = None  # anyio time of the soonest due time known
        full = True
        while not stop.is_set():
            started, generation = anyio.current_time(), self.evaluator.ramp_generation
            if full:
                self._ramp_full = False  # this check covers it (an alert during the check asks again)
            names = None if full else sorted(self._ramp_events)
            self._ramp_events.clear()
            try:
                check = functools.partial(self.engine.rollouts.check, experiment_names=names)
                checked = await retrying(fault, stop, check)
            except Stopped:
                return
            wait = checked.seconds_to_next()
            found = None if wait is None else anyio.current_time() + wait
            if full:
                self.evaluator.ramps_seen(checked.ramping, generation)
                due = found
                self._ramp_poll_at = started + self.settings.poll_interval
            else:
                self.evaluator.ramps_found(checked.ramping)
                due = found if due is None or (found is not None and found < due) else due
            full = await self._ramp_timer_wait(stop, due)
            spacing = started + _RAMP_CHECK_SPACING - anyio.current_time()
            if spacing > 0 and not stop.is_set():
                await sleep_or_stop(stop, spacing)
            full = full or self._ramp_full  # a global alert during the spacing

    async def _ramp_timer_wait(self, stop: anyio.Event, due: float | None) -> bool:
        """Sleep until the soonest due time or the next poll (True: a full check is due then), a global critical
        alert (True), or a rollout event (False: check those ramps). A wake-up whose events a check has taken
        already is slept through."""
        wake_at = self._ramp_poll_at if due is None else min(due + 0.005, self._ramp_poll_at)
        while not stop.is_set():
            woken = await self.rollout_wake.wait(max(0.0, wake_at - anyio.current_time()))
            if not woken or anyio.current_time() >= wake_at or self._ramp_full:
                return True
            if self._ramp_events:
                return False
        return True

    async def _run_on_wake(self, name: str, wake: Wake, stop: anyio.Event, fn: Callable[[], Awaitable[object]]) -> None:
        """Run ``fn`` whenever ``wake`` is set (coalescing), retrying database faults under the shared policy."""
        fault = FaultLog(name, self.faults)
        while True:
            await wake.wait()
            if stop.is_set():
                return
            try:
                await retrying(fault, stop, fn)
            except Stopped:
                return

    async def _carry_out_rollbacks(self) -> None:
        await carry_out_rollback_requests(self.pool, self.engine)

    async def _check_guard(self) -> None:
        await self.guard.check(None)

    async def scan_once(self) -> dict[str, Any]:
        """The reconciliation scan: expire overdue approvals and promote what became eligible (or ask for its
        approval), then guard checks and rollback requests."""
        result = await self.engine.scan_and_promote_winners(include_results=False)
        ramps = await self.engine.rollouts.check(None)
        outcomes = await self.guard.check(None)
        rollbacks = await carry_out_rollback_requests(self.pool, self.engine)
        return {
            "scanned": result["scanned"],
            "eligible": result["eligible"],
            "promoted": result["promoted"],
            "guard_actions": sum(1 for o in outcomes if o.action != "none"),
            "rollout_transitions": sum(1 for o in ramps.outcomes if o.action != "none"),
            "rollback_requests": sum(1 for r in rollbacks if r.action == "rolled_back"),
        }

    # ------------------------------------------------------------------------------------------------- HTTP
    async def _serve_http(self, http_stop: anyio.Event, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        ctx = AppContext(
            pool=self.pool,
            settings=self.settings,
            config=self.config,
            engine=self.engine,
            events=self.events,
            health=self.health,
            database_url=self.url,
        )
        runner = web.AppRunner(create_app(ctx), handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.settings.http_host, self.settings.http_port)
            await site.start()
            sockets = [a for a in runner.addresses if isinstance(a, tuple)]
            self.http_port = int(sockets[0][1]) if sockets else self.settings.http_port
            log.info("http.started", host=self.settings.http_host, port=self.http_port)
            self.http_ready.set()
            task_status.started()
            await http_stop.wait()
        finally:
            with anyio.CancelScope(shield=True):
                # Slack clicks answered early still act and replace their messages (the pool is open until after).
                with anyio.move_on_after(slack.DRAIN_S):
                    await slack.drain_interactions(runner.app)
                with anyio.move_on_after(1.0):
                    await runner.cleanup()

    # ------------------------------------------------------------------------------------- listener hooks
    def on_metrics(self, experiment_id: int | None) -> None:
        self.folder.hint(experiment_id)
        if experiment_id is None:
            self.guard_wake.set()  # a global critical alert: every watched promotion
            self._ramp_full = True  # and every ramp
            self.rollout_wake.set()

    def on_promotion_event(self, event: PromotionEvent) -> None:
        if event.event == "rollback_requested":
            self.rollback_wake.set()
        if event.event in _RAMP_TIMER_EVENTS:
            # A ramp started or moved on (on any replica): the timer looks at that ramp's due time.
            self._ramp_events.add(event.experiment_name)
            self.rollout_wake.set()
        self.events.publish(notified_event(event.event, event.experiment_name, event.promotion_id))

    def on_connected(self, reconnected: bool) -> None:
        self.health.listener_connected = True
        self.health.catchup_done = False
        self.folder.request_catch_up()

    def on_disconnected(self) -> None:
        self.health.listener_connected = False

    # --------------------------------------------------------------------------------------- other hooks
    def _caught_up(self) -> None:
        self.health.catchup_done = True
        self.caught_up.set()

    def _on_tick(self, catch_up: bool) -> None:
        """Each poll interval (and after each catch-up): look for what a lost NOTIFY would have said."""
        self.rollback_wake.set()
        self.guard_wake.set()

    def _on_evaluated(self, evaluation: Evaluation, latency: float | None) -> None:
        if self.events.subscriber_count:
            self.events.publish(evaluation_event(evaluation, latency))

    def _on_committed(self, event: CommittedEvent, data: PromoteResult | RollbackResult | RolloutTransition) -> None:
        if self.dispatcher is not None:
            self.dispatcher.wake()
        if self.settings.poll_only:
            # No ab_promotion_events to tell the dashboard, so tell it from here.
            self.events.publish(committed_event(event, data))


def evaluation_concurrency(settings: Settings) -> int:
    """Evaluations at once: each holds one pooled connection at a time; the folder keeps one, and three stay for
    the guard, rollbacks, scan, dispatcher and HTTP."""
    return max(1, min(16, settings.pool_size - 4))


def _work_budget(grace: float) -> float:
    """The part of the grace period the services get; the rest is for closing the HTTP server and the pool."""
    return max(0.0, grace - min(1.5, grace * 0.2))


def _dispatcher(pool: Pool, settings: Settings, faults: Faults) -> Any:
    try:
        from worker.notify import Dispatcher
    except ImportError as exc:  # notifications are optional for the decision path
        log.warning("notify.unavailable", error=str(exc))
        return None
    return Dispatcher(pool, settings, faults=faults)


# ------------------------------------------------------------------------------------------------ process
async def check_migrations(url: str, *, apply: bool, schema_dir: Path | None) -> list[str]:
    """Apply pending migrations when ``apply``, else StartupError naming them; the files applied."""
    try:
        conn = await connect(url, timeout=10)
    except DB_ERRORS as exc:
        raise StartupError(str(exc), EXIT_DB) from exc
    try:
        pending = await pending_migrations(conn, schema_dir)
        if pending and not apply:
            raise StartupError(
                f"the database at {redact_url(url)} has {len(pending)} pending migration(s): {', '.join(pending)}. "
                "Run `autopromote migrate` first (or start with `autopromote run --migrate`).",
                EXIT_CONFIG,
            )
        if pending:
            result = await migrate(conn, schema_dir)
            log.info("migrations.applied", applied=result.applied)
            return result.applied
        return []
    finally:
        await conn.close()


async def run_worker(
    settings: Settings,
    config: EffectiveConfig,
    *,
    apply_migrations: bool = False,
    handle_signals: bool = True,
    stop: anyio.Event | None = None,
    on_started: Callable[[Daemon], None] | None = None,
) -> int:
    """The whole process: database (embedded when DATABASE_URL is unset), migrations, pool, daemon, signals.

    Returns the exit code; StartupError (with its code) when it cannot start.
    """
    stop = stop or anyio.Event()
    state = ShutdownState()
    schema_dir = Path(settings.schema_dir) if settings.schema_dir else None
    async with resolve_database(settings.database_url) as db:
        if db.embedded is not None:
            log.warning(
                "database.embedded",
                url=redact_url(db.url),
                note="DATABASE_URL is not set: a throw-away embedded PostgreSQL, gone when the worker exits",
            )
        await check_migrations(db.url, apply=apply_migrations or db.embedded is not None, schema_dir=schema_dir)
        try:
            pool = await create_pool(db.url, min_size=2, max_size=settings.pool_size, timeout=10, reset=keep_session)
        except DB_ERRORS as exc:
            raise StartupError(str(exc), EXIT_DB) from exc
        try:
            daemon = Daemon(url=db.url, pool=pool, settings=settings, config=config)
            async with anyio.create_task_group() as root:
                if handle_signals:
                    root.start_soon(_watch_signals, stop, root.cancel_scope, state, settings.shutdown_grace)
                if on_started is not None:
                    root.start_soon(_notify_started, daemon, on_started)
                await daemon.run(stop)
                root.cancel_scope.cancel()
        finally:
            await _close_pool(pool, force=state.forced_by is not None)
    if state.forced_by is not None:
        return 128 + state.forced_by
    if daemon.crashed is not None:
        return EXIT_BUG  # daemon.task_crashed said which task and why
    return EXIT_OK


async def _close_pool(pool: Pool, *, force: bool) -> None:
    if not force:
        with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
            await pool.close()
            return
    pool.terminate()


async def _notify_started(daemon: Daemon, on_started: Callable[[Daemon], None]) -> None:
    await daemon.http_ready.wait()
    on_started(daemon)


async def _watch_signals(stop: anyio.Event, scope: anyio.CancelScope, state: ShutdownState, grace: float) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            state.signals.append(name)
            if not stop.is_set():
                state.requested_at = time.monotonic()
                log.info("shutdown.requested", signal=name, grace_seconds=grace)
                stop.set()
                continue
            log.warning("shutdown.forced", signal=name)
            state.forced_by = int(signum)
            scope.cancel()
            return
