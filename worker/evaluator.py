"""Drain the metric queue in big batches, then evaluate each touched experiment once.

Coalescing: a wake-up (NOTIFY, poll tick, catch-up) makes the ``Folder`` fold everything pending, batch after batch,
each batch one transaction (``worker.db.fold``: an update is folded once or not at all). Every experiment a batch
touched goes into the ``Evaluator``'s dirty set. The evaluator runs at most ``concurrency`` evaluations at a time and
at most one per experiment: an experiment that gets dirty again while it is being evaluated is evaluated once more
afterwards, however many updates arrived meanwhile. So 10,000 updates for one experiment arriving together cost a
handful of evaluations, not 10,000.

Across replicas an evaluation holds the experiment's row lock for its whole transaction (the engine takes it with
``FOR NO KEY UPDATE SKIP LOCKED``); a replica that finds it taken gets "busy" back and evaluates a moment later
instead of at the same time: 20 ms, then twice as long each time it is still busy, up to 1 s (a session that keeps
the row locked is logged once, not retried 50 times a second). A transaction-scoped lock works behind PgBouncer in
transaction pooling too.

Database faults (worker.retry): a batch whose transaction fails for a transient reason is retried whole under the
shared policy, and so is the guard check of the promoted experiments it found; one failure is logged once however
long the fault lasts.

A wake-up marks its experiment too (an alert has no fold behind it), and that is where duplicates came from: every
replica hears every NOTIFY, and only one folds the update, so each of the others evaluated the experiment again on
the wake-up alone; even one replica did, for a NOTIFY that arrived after its fold had already taken the update. So
that a change is evaluated once, whichever replica gets to it first, the lock-and-read only takes experiments whose
stored decision does not cover what its snapshot sees (``ab_evaluation_due``, schema/0007: another statistics
version, or a critical alert the last decision could not see); the rest come back "fresh" and cost one read. Two
replicas that both found it due (the second's snapshot taken just before the first committed) are told apart at the
write: a decision on a read the stored one covers is not written (``ab_decision_covered``) and also comes back
"fresh".
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

import anyio
import structlog

from worker import metrics
from worker.config import Settings
from worker.db.connect import Connection, InterfaceError, Pool
from worker.db.fold import fold_batch
from worker.db.sql import DQ
from worker.engine import Engine, Evaluation
from worker.guard import PostPromotionGuard
from worker.retry import FaultLog, Faults, Stopped, retrying, sleep_or_stop

log = structlog.get_logger("worker.evaluator")

# A row locked by another session: retry after 20 ms, doubling while it stays locked, never more than 1 s; after
# _LOCK_LOG_AFTER busy attempts in a row (about 1 s) it is no concurrent evaluation but a held lock: logged once.
_LOCK_RETRY_SECONDS = 0.02
_LOCK_RETRY_MAX_SECONDS = 1.0
_LOCK_LOG_AFTER = 6
# Experiments per evaluation transaction: bulk reads make each one cost a fraction of a lone evaluation.
BATCH_MAX = 256


class Wake:
    """A coalescing wake-up: any number of ``set()`` calls before ``wait()`` returns count as one.

    Built on asyncio directly (asyncpg ties the worker to asyncio anyway): it is on the path of every update, and a
    timer handle costs less than a cancel scope.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._woken = False

    def set(self) -> None:
        self._woken = True
        self._event.set()

    def is_set(self) -> bool:
        return self._woken

    async def wait(self, within: float | None = None) -> bool:
        """Wait for a ``set()`` (at most ``within`` seconds); True when woken. Clears the wake-up. Always yields to
        the event loop, so that a caller looping on it cannot starve other tasks."""
        try:
            if self._woken or (within is not None and within <= 0):
                await asyncio.sleep(0)
            elif within is None:
                await self._event.wait()
            else:
                timer = asyncio.get_running_loop().call_later(within, self._event.set)
                try:
                    await self._event.wait()
                finally:
                    timer.cancel()
        finally:
            self._event.clear()  # a set() is kept in _woken; this drops the timer's, even after a cancellation
        woken, self._woken = self._woken, False
        return woken


class Evaluator:
    """The dirty set and the bounded pool of evaluations; ``run`` returns after ``stop`` once in-flight ones end."""

    def __init__(
        self,
        pool: Pool,
        engine: Engine,
        guard: PostPromotionGuard,
        *,
        concurrency: int,
        on_evaluated: Callable[[Evaluation, float | None], None] | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.pool = pool
        self.engine = engine
        self.guard = guard
        self.concurrency = max(1, concurrency)
        self.on_evaluated = on_evaluated
        self.wake = Wake()
        # experiment id -> newest recorded_at folded since its last evaluation started (None: not from a fold)
        self._dirty: dict[int, datetime | None] = {}
        self._inflight: set[int] = set()
        self._batches_inflight = 0
        self.evaluations = 0
        self.deferred = 0
        self.fresh = 0  # marked, but the stored decision already covered everything (see ab_evaluation_due)
        self.fault = FaultLog("evaluator", faults)
        self.guard_fault = FaultLog("evaluator.guard", faults)
        self.ramp_fault = FaultLog("evaluator.rollouts", faults)
        self._busy_streak: dict[int, int] = {}  # experiment id -> busy answers in a row
        # Experiments whose ramp was in progress at their last check: checked, not evaluated (see _evaluate_now).
        self._ramped: set[int] = set()
        self._ramp_generation = 0
        self._tg: anyio.abc.TaskGroup | None = None

    @property
    def pending(self) -> int:
        return len(self._dirty)

    @property
    def busy(self) -> bool:
        return bool(self._dirty or self._inflight)

    @property
    def ramp_generation(self) -> int:
        """Raised whenever a batch's ramp check changes what ``_ramped`` knows (see ramps_seen)."""
        return self._ramp_generation

    def ramps_seen(self, experiment_ids: Iterable[int], generation: int) -> None:
        """Every experiment with a ramp in progress, as a full check found it (the rollout timer); ``generation``:
        ramp_generation when that check began. If a batch learnt something since, the two are merged (a ramp ended
        meanwhile costs one evaluation and check more, found ended then); otherwise the full check's list wins."""
        if generation == self._ramp_generation:
            self._ramped = set(experiment_ids)
        else:
            self._ramped.update(experiment_ids)

    def ramps_found(self, experiment_ids: Iterable[int]) -> None:
        """Experiments with a ramp in progress, as a check of some of them found it (the timer, after an event)."""
        self._ramped.update(experiment_ids)

    def mark(self, experiment_ids: Iterable[int]) -> None:
        """Evaluate these experiments (again) soon."""
        added = False
        for exp_id in experiment_ids:
            if exp_id not in self._dirty:
                self._dirty[exp_id] = None
            added = True
        if added:
            self.wake.set()

    def mark_folded(self, experiments: Mapping[int, datetime]) -> None:
        """Evaluate the experiments a fold touched; remembers the newest update's time for the latency metric."""
        for exp_id, recorded_at in experiments.items():
            self._put(exp_id, recorded_at)
        if experiments:
            self.wake.set()

    def _put(self, exp_id: int, recorded_at: datetime | None) -> None:
        if exp_id not in self._dirty:
            self._dirty[exp_id] = recorded_at
            return
        current = self._dirty[exp_id]
        if recorded_at is not None and (current is None or recorded_at > current):
            self._dirty[exp_id] = recorded_at

    async def run(self, stop: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            while True:
                await self.wake.wait()
                if stop.is_set():
                    break  # the task group waits for the evaluations in flight
                while self._dirty and self._batches_inflight < self.concurrency:
                    batch: dict[int, datetime | None] = {}
                    for exp_id in list(self._dirty):
                        if exp_id in self._inflight:
                            continue
                        batch[exp_id] = self._dirty.pop(exp_id)
                        if len(batch) >= BATCH_MAX:
                            break
                    if not batch:
                        break
                    self._inflight.update(batch)
                    self._batches_inflight += 1
                    tg.start_soon(self._evaluate_batch, batch, stop)

    async def _evaluate_batch(self, batch: dict[int, datetime | None], stop: anyio.Event) -> None:
        busy: list[int] = []
        try:
            busy = await self._evaluate_now(batch, stop)
        finally:
            self._batches_inflight -= 1
            self._inflight.difference_update(i for i in batch if i not in busy)
            if busy and not stop.is_set() and self._tg is not None:
                # The busy ones stay "in flight" (not picked again) while they wait, without holding a batch slot.
                self._tg.start_soon(self._retry_busy, {i: batch.get(i) for i in busy}, stop)
            else:
                self._inflight.difference_update(busy)
            self.wake.set()

    async def _retry_busy(self, busy: dict[int, datetime | None], stop: anyio.Event) -> None:
        streak = max(self._busy_streak.get(i, 1) for i in busy)
        delay = min(_LOCK_RETRY_MAX_SECONDS, _LOCK_RETRY_SECONDS * 2.0 ** (streak - 1)) * random.uniform(0.75, 1.0)
        try:
            await sleep_or_stop(stop, delay)
        finally:
            self._inflight.difference_update(busy)
            if not stop.is_set():
                for exp_id, recorded_at in busy.items():
                    self._put(exp_id, recorded_at)
            self.wake.set()

    async def _evaluate_now(self, batch: dict[int, datetime | None], stop: anyio.Event) -> list[int]:
        """Evaluate a batch in one transaction (retried whole while the database is unusable); the busy ids.

        The ramps come first. An experiment whose ramp was in progress at its last check (``_ramped``) is not
        evaluated (a promoted experiment is not running): its ramp is checked at once, beside the evaluation of the
        rest, on a connection of its own, so the update that shows a breach rolls the ramp back without waiting for
        an evaluation or its row lock. The others are evaluated; those that come back "skipped" (promoted, paused,
        gone) go to the post-promotion guard and to the ramp check together (a ramp this worker has not seen yet:
        another replica promoted it, or it began before a restart). A ramp found in progress is remembered, one
        found finished (complete, rolled back) is forgotten and its experiment evaluated like any other. A batch
        of running experiments, the common case, costs no ramp check at all."""
        ramped = [i for i in batch if i in self._ramped]
        rest = [i for i in batch if i not in self._ramped]
        evaluations: list[Evaluation] = []
        checked: set[int] = set()  # checked for a ramp in this batch already
        stopped = False

        async def evaluate(ids: list[int]) -> None:
            nonlocal stopped
            try:
                evaluations.extend(await retrying(self.fault, stop, lambda: self.engine.evaluate_many(ids)))
            except Stopped:
                stopped = True

        async def check_ramped() -> None:
            nonlocal stopped
            if not await self._check_ramps(ramped, stop):
                stopped = True
                return
            checked.update(ramped)
            ended = [i for i in ramped if i not in self._ramped]
            if ended:
                await evaluate(ended)  # their ramp is over: evaluated like any other experiment

        try:
            async with anyio.create_task_group() as tg:
                if ramped:
                    tg.start_soon(check_ramped)
                if rest:
                    tg.start_soon(evaluate, rest)
        except Exception as group:
            exc = _single(group)
            # A batch's bug must not stop the worker; the scan retries what it missed.
            metrics.EVALUATIONS.labels("error").inc()
            log.exception("evaluation.crashed", error=f"{type(exc).__name__}: {exc}", experiments=len(batch))
            return []
        if stopped:
            return []  # shutting down: the catch-up at the next start evaluates what was left
        self._report(evaluations, batch)
        skipped = [e.experiment_id for e in evaluations if e.action == "skipped"]
        if skipped:
            await self._check_skipped(skipped, [i for i in skipped if i not in checked], stop)
        return [e.experiment_id for e in evaluations if e.action == "busy"]

    def _report(self, evaluations: list[Evaluation], batch: Mapping[int, datetime | None]) -> None:
        self.fresh += sum(1 for e in evaluations if e.action == "fresh")
        busy = [e.experiment_id for e in evaluations if e.action == "busy"]
        self._note_busy(busy, [e.experiment_id for e in evaluations if e.action != "busy"])
        now = time.time()
        for evaluation in evaluations:
            if evaluation.action in ("busy", "fresh"):
                continue  # busy: retried by the caller; fresh: another replica evaluated this change already
            self.evaluations += 1
            recorded_at = batch.get(evaluation.experiment_id)
            latency = None
            if recorded_at is not None:
                latency = max(0.0, now - recorded_at.timestamp())
                metrics.DECISION_LATENCY.observe(latency)
            if self.on_evaluated is not None:
                self.on_evaluated(evaluation, latency)

    async def _check_skipped(self, skipped: list[int], unchecked: list[int], stop: anyio.Event) -> None:
        """Not running: promoted ones are the guard's, ramped ones the ramp check's (``unchecked``: not checked for a
        ramp in this batch yet). The update that shows a breach acts now; a database fault in either check is retried
        like the batch (the evaluations are committed and reported already); an error that is not transient restarts
        the evaluator (worker.daemon's supervisor)."""
        if not unchecked:
            await self._check_guard(skipped, stop)
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._check_guard, skipped, stop)
            tg.start_soon(self._check_new_ramps, unchecked, stop)

    async def _check_new_ramps(self, experiment_ids: list[int], stop: anyio.Event) -> None:
        try:
            await self._check_ramps(experiment_ids, stop)
        except Exception as exc:
            # As in a batch: a bug (or an error that is not transient) in one ramp check must not stop the worker or
            # cancel the batches in flight; the rollout timer and the next update look again.
            error = f"{type(exc).__name__}: {exc}"
            log.exception("rollout.check_crashed", error=error, experiments=len(experiment_ids))

    async def _check_guard(self, experiment_ids: list[int], stop: anyio.Event) -> None:
        try:
            await retrying(self.guard_fault, stop, lambda: self.guard.check(experiment_ids))
        except Stopped:
            pass  # the guard's own loop checks every watched promotion at the next start

    async def _check_ramps(self, experiment_ids: list[int], stop: anyio.Event) -> bool:
        """The ramps among ``experiment_ids``: each step's guard, and what is due (worker.services.rollout); keeps
        ``_ramped`` up to date. False when stopped first."""
        try:
            done = await retrying(self.ramp_fault, stop, lambda: self.engine.rollouts.check(experiment_ids))
        except Stopped:
            return False  # the rollout timer checks every ramp at the next start
        self._ramped.difference_update(experiment_ids)
        self._ramped.update(done.ramping)
        self._ramp_generation += 1
        return True

    def _note_busy(self, busy: list[int], done: list[int]) -> None:
        for exp_id in done:
            if self._busy_streak.pop(exp_id, 0) >= _LOCK_LOG_AFTER:
                log.info("evaluation.row_released", experiment_id=exp_id)
        if not busy:
            return
        self.deferred += len(busy)
        log.debug("evaluation.deferred", reason="another session holds the experiment's row", experiments=len(busy))
        for exp_id in busy:
            streak = self._busy_streak[exp_id] = self._busy_streak.get(exp_id, 0) + 1
            if streak == _LOCK_LOG_AFTER:
                log.warning(
                    "evaluation.row_busy",
                    experiment_id=exp_id,
                    attempts=streak,
                    retry_every=_LOCK_RETRY_MAX_SECONDS,
                    reason="another session has held the experiment's row for about a second",
                )


class Folder:
    """Folds the queue whenever woken, and at least every ``poll_interval`` seconds."""

    def __init__(
        self,
        pool: Pool,
        settings: Settings,
        evaluator: Evaluator,
        *,
        on_tick: Callable[[bool], None] | None = None,
        on_caught_up: Callable[[], None] | None = None,
        catch_up_at_start: bool = True,
        faults: Faults | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.evaluator = evaluator
        self.on_tick = on_tick
        self.on_caught_up = on_caught_up
        self.wake = Wake()
        self._hints: set[int] = set()
        # With a listener, its first connect asks for the catch-up (after LISTEN, so nothing slips between).
        self._catch_up = catch_up_at_start
        self.folded_total = 0
        self._conn: Connection | None = None  # kept between folds: one wake-up per update at high rates
        self.fault = FaultLog("folder", faults)

    def hint(self, experiment_id: int | None) -> None:
        """A NOTIFY said this experiment changed (an alert may have no metric update behind it)."""
        if experiment_id is not None:
            self._hints.add(experiment_id)
        self.wake.set()

    def request_catch_up(self) -> None:
        """Fold everything, re-evaluate what was left unevaluated, then report caught up."""
        self._catch_up = True
        self.wake.set()

    async def run(self, stop: anyio.Event) -> None:
        try:
            await self._run(stop)
        finally:
            await self._release()

    async def _connection(self) -> Connection:
        if self._conn is not None and _gone(self._conn):
            self._conn = None  # its backend died: the pool took it back already (asyncpg releases closed ones)
        if self._conn is None:
            self._conn = await self.pool.acquire()
        return self._conn

    async def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                await self.pool.release(conn)

    async def _run(self, stop: anyio.Event) -> None:
        next_tick = anyio.current_time()
        while not stop.is_set():
            await self.wake.wait(max(0.0, next_tick - anyio.current_time()))
            if stop.is_set():
                break
            catch_up, self._catch_up = self._catch_up, False
            hints, self._hints = self._hints, set()
            try:
                # Each batch is one statement (folded once or not at all), so a retried drain folds nothing twice.
                stale = await retrying(self.fault, stop, functools.partial(self._fold, stop, catch_up))
            except Stopped:
                self._hints |= hints
                self._catch_up = self._catch_up or catch_up
                break
            self.evaluator.mark(hints)
            if catch_up:
                self.evaluator.mark(stale)
                log.info("daemon.caught_up", stale_experiments=len(stale))
                if self.on_caught_up is not None:
                    self.on_caught_up()
            now = anyio.current_time()
            if catch_up or now >= next_tick:
                next_tick = now + self.settings.poll_interval
                if self.on_tick is not None:
                    self.on_tick(catch_up)

    async def _fold(self, stop: anyio.Event, catch_up: bool) -> list[int]:
        """Drain the queue; after a catch-up, the experiments whose statistics are newer than their evaluation."""
        try:
            await self.drain(stop, catch_up=catch_up)
            if not catch_up:
                return []
            conn = await self._connection()
            return [r["id"] for r in await conn.fetch(DQ["stale_experiments"])]
        except Exception:
            await self._release()  # a broken connection goes back to the pool, which replaces it
            raise

    async def drain(self, stop: anyio.Event | None = None, *, catch_up: bool = False) -> int:
        """Fold batches until the queue is empty (or ``stop`` is set between two batches)."""
        total = 0
        limit = self.settings.fold_batch_size
        while True:
            started = time.perf_counter()
            conn = await self._connection()
            # One statement (DELETE ... RETURNING feeding the upsert) is its own transaction: atomic without a
            # BEGIN/COMMIT pair, which would cost two more round trips on the decision path.
            result = await fold_batch(conn, limit=limit, relaxed=True)
            if result.updates:
                total += result.updates
                self.folded_total += result.updates
                metrics.UPDATES_FOLDED.inc(result.updates)
                self.evaluator.mark_folded(result.experiments)
                (log.info if catch_up or result.updates >= limit else log.debug)(
                    "metrics.folded",
                    updates=result.updates,
                    experiments=len(result.experiments),
                    ms=round(1000 * (time.perf_counter() - started), 2),
                    catch_up=catch_up,
                )
            if result.claimed < limit or (stop is not None and stop.is_set()):
                return total


def _single(exc: Exception) -> BaseException:
    """The one exception a task group raised, or the group."""
    return exc.exceptions[0] if isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1 else exc


def _gone(conn: Connection) -> bool:
    try:
        return bool(conn.is_closed())
    except InterfaceError:  # a pool proxy detached from its closed connection
        return True


async def keep_session(_conn: Connection) -> None:
    """A pool ``reset`` that keeps session state: asyncpg still rolls back an open transaction on release; the
    reset query it would otherwise send on every release (unlock all, close cursors, unlisten, reset settings)
    clears state nothing here leaves behind, and costs a round trip per pooled operation."""
    return None
