"""The progressive rollout, the I/O around worker.domain.rollout_rules: read every unfinished rollout with its
statistics in one query, decide each (pure), and carry out what is due in one transaction on the locked rows.

Exactly once: a transition locks the experiment row, then the rollout row (the lock order of promotions and
rollbacks), reads the rollout again under those locks, decides again on what it read, and writes only if the
rollout is still at the transition it read (``transitions``, a compare-and-set). A replica that raced it re-decides
on the new state and finds nothing to do; a worker killed mid-transaction leaves nothing half-written, and the next
worker to look finds every rollout where it was (the rows are the state; nothing is kept in memory).

Entry points: ``check`` (the daemon's evaluator after every fold, the guard loop on every poll tick and the
rollout timer, the reconciliation scan), ``pause`` / ``resume`` (API and CLI), ``describe`` (check, the API and
the dashboard). A rollback (a breach, ``ab_request_rollback``, the API, the CLI, the dashboard) goes through
worker.services.rollback, which closes the rollout in the same transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import anyio
import structlog

from worker.config import AutoPromotionConfig, EffectiveConfig
from worker.db.connect import Connection, Pool, json_safe
from worker.db.sql import RLQ, Q
from worker.domain.errors import RolloutConflict, RolloutNotFound
from worker.domain.results import RollbackRefused, RollbackResult, RolloutTransition
from worker.domain.rollout_rules import (
    FINISHED,
    RampSettings,
    RolloutDecision,
    RolloutView,
    decide_rollout,
    ramp_settings,
    ramp_weights,
    rollout_view_from_row,
    step_guard,
)
from worker.retry import is_transient
from worker.services.deciding import Decider
from worker.services.effects import GUARD_ACTOR, Effects, NotificationEvent, rollout_payload
from worker.services.rollback import KnownRollback, RollbackService

log = structlog.get_logger("worker.rollout")

ROLLOUT_GUARD_TRIGGER = "rollout_guard"
_YIELD_EVERY = 16  # rollouts decided between two turns of the event loop in one check (each is ~0.1-0.3 ms)
OutcomeAction = Literal["advanced", "completed", "rolled_back", "paused", "awaiting_approval", "none"]


@dataclass(frozen=True, slots=True)
class RolloutOutcome:
    """What one transition did (``none``: another replica or a person got there first)."""

    rollout_id: str
    promotion_id: str
    experiment_name: str
    action: OutcomeAction
    step: int
    share: float
    reason: str = ""


@dataclass(slots=True)
class RolloutCheck:
    """What a check did, and when time alone next changes something (the timer sleeps until then)."""

    outcomes: list[RolloutOutcome] = field(default_factory=list)
    next_due: datetime | None = None
    now: datetime | None = None
    watched: int = 0
    failed: list[str] = field(default_factory=list)  # rollouts whose check raised (a bug or bad data), by id
    ramping: set[int] = field(default_factory=set)  # experiments (ids) whose rollout is still in progress after it

    def seconds_to_next(self) -> float | None:
        if self.next_due is None or self.now is None:
            return None
        return max(0.0, (self.next_due - self.now).total_seconds())


class StepApproval(Protocol):
    """What the rollout reads of a pending approval of kind ``step`` (worker.db.approvals.Approval)."""

    @property
    def experiment_id(self) -> int: ...

    @property
    def step(self) -> int | None: ...

    @property
    def subject(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class ApprovedStep:
    """What the rollout did with an approved step (worker.services.approval_gate.StepOutcome's shape)."""

    advanced: bool
    reason: str | None = None
    data: Mapping[str, Any] | None = None


# Opens the pending approval of a step ready to advance (worker.services.approval_gate.request_approval with
# kind="step", step=decision.next_step, subject={"rolloutId": view.rollout_id}), in the transaction that sets the
# rollout to awaiting_approval, the experiment's row locked. Set by whoever wires approvals in (the Engine).
StepApprovalRequester = Callable[
    [Connection, RolloutView, RolloutDecision, AutoPromotionConfig, Mapping[str, Any]], Awaitable[None]
]


class RolloutService:
    """Checks and moves ramped promotions; pause, resume and describe them; advances or holds a step whose approval
    was decided (approval.require = every_step: ``advance_approved`` / ``step_declined``)."""

    def __init__(
        self, pool: Pool, config: EffectiveConfig, decider: Decider, effects: Effects, rollbacks: RollbackService
    ) -> None:
        self.pool = pool
        self.config = config
        self.decider = decider
        self.effects = effects
        self.rollbacks = rollbacks
        self.request_step_approval: StepApprovalRequester | None = None

    def settings_for(self, overrides: Mapping[str, Any] | None) -> tuple[AutoPromotionConfig, RampSettings]:
        cfg = self.decider.cfg_or_base(self.config, overrides)
        return cfg, ramp_settings(cfg)

    # ------------------------------------------------------------------------------------------- the check
    async def check(
        self, experiment_ids: Sequence[int] | None = None, *, experiment_names: Sequence[str] | None = None
    ) -> RolloutCheck:
        """Decide every unfinished rollout (or those of ``experiment_ids``, or of ``experiment_names``) and carry out
        what is due: every rollout is decided first (no I/O), then the rollbacks are carried out, then the rest
        (advances, pauses, approvals), so a breach never waits behind another ramp's transition."""
        ids = None if experiment_ids is None else list(experiment_ids)
        names = None if experiment_names is None else list(experiment_names)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(RLQ["active_rollouts"], ids, names)
        out = RolloutCheck(watched=len(rows), ramping={row["experiment_id"] for row in rows})
        due: list[tuple[Mapping[str, Any], RolloutView, RampSettings, RolloutDecision]] = []
        for k, row in enumerate(rows):
            out.now = row["now"]
            if k and k % _YIELD_EVERY == 0:
                await anyio.lowlevel.checkpoint()  # a check of many ramps lets the loop's other work run in between
            try:
                decided = self._decide_one(row, out)
            except Exception as exc:
                self._failed(row, exc, out)
                continue
            if decided is not None:
                due.append(decided)
        due.sort(key=lambda d: d[3].action != "rollback")
        for row, view, rs, decision in due:
            try:
                await self._carry_out(row, view, rs, decision, out)
            except Exception as exc:
                if is_transient(exc):
                    raise  # the database is unusable for now: the caller retries the whole check
                self._failed(row, exc, out)
        return out

    def _failed(self, row: Mapping[str, Any], exc: Exception, out: RolloutCheck) -> None:
        # A bug or bad data in one rollout must not hold up every other ramp (nor the evaluator's batch that checks
        # it): it is logged and counted, and looked at again at the next check.
        out.failed.append(str(row["id"]))
        log.exception(
            "rollout.check_failed",
            experiment=row["experiment_name"],
            rollout_id=str(row["id"]),
            error=f"{type(exc).__name__}: {exc}"[:500],
        )

    def _decide_one(
        self, row: Mapping[str, Any], out: RolloutCheck
    ) -> tuple[Mapping[str, Any], RolloutView, RampSettings, RolloutDecision] | None:
        """One rollout's decision on the check's read; None when it stays (its time minimum noted for the timer)."""
        view = rollout_view_from_row(row)
        _, rs = self.settings_for(row["config"])
        decision = decide_rollout(view, rs)
        if decision.action != "stay":
            return row, view, rs, decision
        due = decision.next_step_at
        # A due time already past waits on exposures (each update checks again), not on the clock.
        if due is not None and due > view.now and (out.next_due is None or due < out.next_due):
            out.next_due = due
        return None

    async def _carry_out(
        self,
        row: Mapping[str, Any],
        view: RolloutView,
        rs: RampSettings,
        decision: RolloutDecision,
        out: RolloutCheck,
    ) -> None:
        with structlog.contextvars.bound_contextvars(experiment=view.experiment_name):
            fast = await self._roll_back_now(view, decision, row) if decision.action == "rollback" else None
            outcome = fast if fast is not None else await self.transition(uuid.UUID(view.rollout_id))
        out.outcomes.append(outcome)
        if outcome.action in ("rolled_back", "completed"):
            out.ramping.discard(view.experiment_id)
        elif outcome.action == "advanced":
            # The new step's time minimum (a holding step: its window), for the timer's sleep.
            holding = decision.next_state == "holding"
            due = view.now + (timedelta(hours=rs.guard_hours) if holding else timedelta(minutes=rs.step_minutes))
            if out.next_due is None or due < out.next_due:
                out.next_due = due

    async def _roll_back_now(
        self, view: RolloutView, decision: RolloutDecision, row: Mapping[str, Any]
    ) -> RolloutOutcome | None:
        """A breach, decided on the check's read (active_rollouts: it carries the notification routes too): roll
        back in one statement, no transaction around it (one round trip from the check's read to the restored
        weights, not five). It locks the experiment, then the rollout, and writes only if the rollout is still at
        the transition the check read and the config is the one it decided with (rollback_write); None when either
        had moved on, and the caller decides again under the locks (``transition``)."""
        async with self.pool.acquire() as conn:
            outcome, rolled = await self._roll_back(
                conn, view, decision, row, expect=(uuid.UUID(view.rollout_id), view.transitions)
            )
        if rolled is None:
            return None
        self.effects.rolled_back(rolled)
        return outcome

    async def transition(self, rollout_id: uuid.UUID) -> RolloutOutcome:
        """Decide one rollout again on its locked rows and carry out the decision, in one transaction."""
        rolled: RollbackResult | None = None
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                row = await _locked_read(conn, rollout_id)
                if row is None or row["state"] in FINISHED:
                    return _nothing(row, rollout_id)
                view = rollout_view_from_row(row)
                cfg, rs = self.settings_for(row["config"])
                decision = decide_rollout(view, rs)
                if decision.action == "stay":
                    return _nothing(row, rollout_id)
                if decision.action == "rollback":
                    outcome, rolled = await self._roll_back(conn, view, decision, row)
                elif decision.action in ("pause", "await_approval"):
                    outcome = await self._hold(conn, view, decision, cfg, row)
                else:
                    outcome = await self._step(conn, view, decision, cfg, rs, row)
        if rolled is not None:
            self.effects.rolled_back(rolled)
        elif outcome.action != "none":
            self.effects.rollout_moved(outcome.action, _committed(view, outcome, decision))
        return outcome

    async def _roll_back(
        self,
        conn: Connection,
        view: RolloutView,
        decision: RolloutDecision,
        row: Mapping[str, Any],
        *,
        expect: tuple[uuid.UUID, int] | None = None,
    ) -> tuple[RolloutOutcome, RollbackResult | None]:
        """``row``: the rollout's active_rollouts row (with the rollback's routes); ``expect``: see roll_back_locked."""
        guard = [g.to_json() for g in decision.guard]
        done = await self.rollbacks.roll_back_locked(
            conn,
            uuid.UUID(view.promotion_id),
            decision.reason,
            actor=GUARD_ACTOR,
            trigger=ROLLOUT_GUARD_TRIGGER,
            details={"guard": guard, "rolloutStep": view.step, "treatmentShare": view.share},
            overrides=row["config"],
            priority=row["priority"],
            rollout_guard=guard,
            known=KnownRollback(
                "rollout.rolled_back",
                {
                    "experimentName": view.experiment_name,
                    "variant": view.winner,
                    "controlVariant": view.control,
                    "confidence": row["promotion_confidence"],
                    "improvement": row["promotion_improvement"],
                },
                {"step": view.step, "steps": list(view.plan.shares), "treatmentShare": view.share},
                row["rollback_targets"],
                list(row["breach_refs"] or ()),
            ),
            expect=expect,
        )
        if isinstance(done, RollbackRefused):
            return _nothing(row, uuid.UUID(view.rollout_id)), None
        outcome = RolloutOutcome(
            view.rollout_id,
            view.promotion_id,
            view.experiment_name,
            "rolled_back",
            view.step,
            view.share,
            decision.reason,
        )
        return outcome, done

    async def _step(
        self,
        conn: Connection,
        view: RolloutView,
        decision: RolloutDecision,
        cfg: AutoPromotionConfig,
        rs: RampSettings,
        row: Mapping[str, Any],
        *,
        actor: str = GUARD_ACTOR,
    ) -> RolloutOutcome:
        """Advance to the next step, or complete."""
        assert decision.next_step is not None and decision.next_state is not None
        nxt, state = decision.next_step, decision.next_state
        share = view.plan.share(nxt)
        weights = ramp_weights(list(view.current), view.winner, view.control, share)
        completing = decision.action == "complete"
        outcome: OutcomeAction = "completed" if completing else "advanced"
        guard = [g.to_json() for g in decision.guard]
        details = {
            "fromStep": view.step,
            "toStep": nxt,
            "fromShare": view.share,
            "treatmentShare": share,
            "steps": list(view.plan.shares),
            "weights": weights,
            "guard": guard,
        }
        written = await conn.fetchrow(
            RLQ["rollout_step_write"],
            uuid.UUID(view.rollout_id),
            view.transitions,
            nxt,
            state,
            view.step_stats_json(),
            list(weights),
            list(weights.values()),
            outcome,
            guard,
            share,
            "complete" if completing else view.plan.kind(nxt),  # holdback 0: completes on its holding step
            rs.guard_hours * 3600.0 + rs.step_minutes * 60.0,
            actor,
            "rollout_completed" if completing else "rollout_advanced",
            json_safe(details),
        )
        if written is None:
            return _nothing(row, uuid.UUID(view.rollout_id))
        event: NotificationEvent = "rollout.completed" if completing else "rollout.advanced"
        await self.effects.notify(conn, rollout_payload(event, view, row, nxt, share, state, decision), cfg)
        return RolloutOutcome(view.rollout_id, view.promotion_id, view.experiment_name, outcome, nxt, share)

    async def _hold(
        self,
        conn: Connection,
        view: RolloutView,
        decision: RolloutDecision,
        cfg: AutoPromotionConfig,
        row: Mapping[str, Any],
    ) -> RolloutOutcome:
        """Pause on a breach (guard.autoRollback off), or wait for an approval of the next step."""
        pausing = decision.action == "pause"
        guard = [g.to_json() for g in decision.guard]
        written = await conn.fetchrow(
            RLQ["rollout_set_state"],
            uuid.UUID(view.rollout_id),
            view.transitions,
            "paused" if pausing else "awaiting_approval",
            view.state if pausing else None,
            decision.reason or None,
            GUARD_ACTOR,
            "rollout_paused" if pausing else "rollout_awaiting_approval",
            json_safe(
                {
                    "step": view.step,
                    "treatmentShare": view.share,
                    "guard": guard,
                    "reason": decision.reason,
                    "nextStep": decision.next_step,
                }
            ),
        )
        if written is None:
            return _nothing(row, uuid.UUID(view.rollout_id))
        if not pausing and self.request_step_approval is not None:
            await self.request_step_approval(conn, view, decision, cfg, row)
        if pausing:
            for breach in decision.breaches:
                body = rollout_payload("guard.breached", view, row, view.step, view.share, "paused", decision)
                body["metric"] = breach.metric
                body["guard"] = breach.to_json()
                await self.effects.notify(conn, body, cfg)
        return RolloutOutcome(
            view.rollout_id,
            view.promotion_id,
            view.experiment_name,
            "paused" if pausing else "awaiting_approval",
            view.step,
            view.share,
            decision.reason,
        )

    # -------------------------------------------------------------------------------------- step approvals
    async def advance_approved(self, conn: Connection, approval: StepApproval, *, actor: str) -> ApprovedStep:
        """An approved step, in the approval's transaction (the experiment's row locked by the caller): re-check the
        step's guard on the locked rollout and advance it, or say why not."""
        rollout_id = _uuid(approval.subject.get("rolloutId"))
        row = None if rollout_id is None else await _locked_read(conn, rollout_id)
        if row is None:
            return ApprovedStep(False, "the approval names no rollout of this experiment")
        if row["state"] != "awaiting_approval":
            return ApprovedStep(False, f"the rollout is {row['state']} now, not waiting for this step")
        view = rollout_view_from_row(row)
        cfg, rs = self.settings_for(row["config"])
        guard = step_guard(view, rs)
        breaches = [g for g in guard if g.verdict == "breach"]
        if breaches:
            # The next check rolls it back (or pauses it); an approval never advances over a breach.
            return ApprovedStep(False, "the step's guard shows a breach: " + "; ".join(b.reason for b in breaches))
        nxt = approval.step if approval.step is not None else view.step + 1
        if not view.step < nxt <= view.plan.complete_step:
            return ApprovedStep(False, f"step {nxt} is not the next step of the ramp (it is on step {view.step})")
        state = view.plan.kind(nxt)
        decision = RolloutDecision("advance", guard, "", nxt, state)
        outcome = await self._step(conn, view, decision, cfg, rs, row, actor=actor)
        if outcome.action == "none":
            return ApprovedStep(False, "the rollout moved on meanwhile")
        log.info("rollout.advanced", experiment=view.experiment_name, step=nxt, approved_by=actor)
        return ApprovedStep(True, None, {"step": nxt, "treatmentShare": outcome.share, "state": state})

    async def step_declined(self, conn: Connection, approval: StepApproval, *, actor: str, reason: str) -> None:
        """A step's approval was declined (or expired): the ramp holds where it is, paused, until an operator
        resumes it (and the step, its minimums met, asks again)."""
        rollout_id = _uuid(approval.subject.get("rolloutId"))
        row = None if rollout_id is None else await conn.fetchrow(RLQ["rollout_locked"], rollout_id)
        if row is None or row["state"] != "awaiting_approval":
            return
        why = f"step {approval.step} not approved ({actor}): {reason}"
        await conn.fetchrow(
            RLQ["rollout_set_state"],
            row["id"],
            row["transitions"],
            "paused",
            "ramping",
            why,
            actor,
            "rollout_paused",
            json_safe({"step": row["step"], "state": row["state"], "reason": why}),
        )

    # ------------------------------------------------------------------------------------ pause and resume
    async def pause(self, experiment_name: str, *, actor: str, reason: str | None = None) -> dict[str, Any]:
        """Hold a ramp where it is (still guarded); RolloutNotFound, or RolloutConflict when already paused."""
        return await self._pause_or_resume(experiment_name, pause=True, actor=actor, reason=reason)

    async def resume(self, experiment_name: str, *, actor: str) -> dict[str, Any]:
        """Let a paused ramp go on from where it was; RolloutNotFound, or RolloutConflict when not paused."""
        return await self._pause_or_resume(experiment_name, pause=False, actor=actor, reason=None)

    async def _pause_or_resume(
        self, experiment_name: str, *, pause: bool, actor: str, reason: str | None
    ) -> dict[str, Any]:
        verb = "pause" if pause else "resume"
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                exp = await self.decider.find(conn, experiment_name)
                await conn.execute(Q["lock_experiment"], exp["id"])
                latest = await conn.fetchrow(RLQ["rollout_of_experiment"], exp["id"])
                if latest is None or latest["state"] in FINISHED:
                    raise RolloutNotFound(
                        f"experiment {experiment_name!r} has no rollout in progress to {verb}"
                        + (f" (its last one is {latest['state']})" if latest is not None else ""),
                        {"experimentName": experiment_name, "state": latest["state"] if latest else None},
                    )
                row = await conn.fetchrow(RLQ["rollout_locked"], latest["id"])
                state = row["state"]
                if pause and state == "paused":
                    raise RolloutConflict(
                        f"the rollout of {experiment_name!r} is paused already",
                        {"state": state, "reason": row["reason"]},
                    )
                if not pause and state != "paused":
                    raise RolloutConflict(
                        f"the rollout of {experiment_name!r} is not paused (it is {state})", {"state": state}
                    )
                why = (reason or "").strip() or None
                # A ramp paused while its step waited for an approval resumes ramping: the approval may have been
                # declined, expired or closed meanwhile (each leaves a paused rollout as it is), and nothing would end
                # an awaiting_approval without one. The step, its minimums met, asks again (a still pending approval
                # is kept: one per experiment).
                back = "ramping" if row["paused_from"] == "awaiting_approval" else row["paused_from"]
                await conn.fetchrow(
                    RLQ["rollout_set_state"],
                    row["id"],
                    row["transitions"],
                    "paused" if pause else back,
                    state if pause else None,
                    f"paused by {actor}" + (f": {why}" if why else "") if pause else None,
                    actor,
                    "rollout_paused" if pause else "rollout_resumed",
                    json_safe({"step": row["step"], "state": state, "reason": why}),
                )
                described = await self._describe(conn, exp["id"])
        self.effects.rollout_moved(
            "paused" if pause else "resumed",
            {"experimentName": experiment_name, "promotionId": str(row["promotion_id"])},
        )
        assert described is not None
        return described

    # --------------------------------------------------------------------------------------------- describe
    async def describe_named(self, experiment_name: str) -> dict[str, Any] | None:
        """describe, by the experiment's name (None also when there is no such experiment)."""
        async with self.pool.acquire() as conn:
            exp_id = await conn.fetchval(RLQ["experiment_id_by_name"], experiment_name)
            return None if exp_id is None else await self._describe(conn, exp_id)

    async def timeline(self, experiment_id: int) -> dict[str, Any] | None:
        """describe plus every step entered so far (the dashboard's timeline): share, when it began and ended, how
        it ended and the guard's verdicts then (the current step: its guard now)."""
        async with self.pool.acquire() as conn:
            described = await self._describe(conn, experiment_id)
            if described is None:
                return None
            latest = await conn.fetchrow(RLQ["rollout_of_experiment"], experiment_id)
            steps = await conn.fetch(RLQ["rollout_steps"], latest["id"])
        out = []
        for st in steps:
            current = st["ended_at"] is None and latest["state"] not in FINISHED
            out.append(
                {
                    "step": st["step"],
                    "share": st["share"],
                    "kind": st["kind"],
                    "startedAt": st["started_at"],
                    "endedAt": st["ended_at"],
                    "outcome": st["outcome"],
                    "guard": described["guard"] if current else list(st["guard"] or []),
                }
            )
        return {
            **described,
            "rolloutId": str(latest["id"]),
            "reason": latest["reason"],
            "createdAt": latest["created_at"],
            "history": out,
        }

    async def describe(self, experiment_id: int) -> dict[str, Any] | None:
        """The ``rollout`` of check and GET /api/experiments/{name}; None when the experiment never ramped."""
        async with self.pool.acquire() as conn:
            return await self._describe(conn, experiment_id)

    async def _describe(self, conn: Connection, experiment_id: int) -> dict[str, Any] | None:
        latest = await conn.fetchrow(RLQ["rollout_of_experiment"], experiment_id)
        if latest is None:
            return None
        if latest["state"] in FINISHED:
            steps = await conn.fetch(RLQ["rollout_steps"], latest["id"])
            last = steps[-1]["guard"] if steps else []
            return describe_rollout(latest, [_public_guard(g) for g in (last or [])], None)
        [row] = await conn.fetch(RLQ["active_rollouts"], [experiment_id], None) or [None]
        if row is None:
            return describe_rollout(latest, [], None)
        view = rollout_view_from_row(row)
        _, rs = self.settings_for(row["config"])
        decision = decide_rollout(view, rs)
        guard = [g.public() for g in step_guard(view, rs)]
        nxt = decision.next_step_at if view.state in ("ramping", "holding") else None
        return describe_rollout(row, guard, nxt)


def describe_rollout(
    row: Mapping[str, Any], guard: list[dict[str, Any]], next_step_at: datetime | None
) -> dict[str, Any]:
    """The API's ``rollout`` object from a rollout row."""
    steps = [float(s) for s in row["steps"]]
    step = int(row["step"])
    return {
        "state": row["state"],
        "step": step,
        "steps": steps,
        "treatmentShare": 0.0 if row["state"] == "rolled_back" else steps[step - 1],
        "stepStartedAt": row["step_started_at"].isoformat(),
        "guard": guard,
        "nextStepAt": next_step_at.isoformat() if next_step_at is not None else None,
    }


def _public_guard(g: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "metric": g.get("metric"),
        "verdict": g.get("verdict"),
        "lift": g.get("lift"),
        "interval": g.get("interval"),
    }


def _uuid(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


async def _locked_read(conn: Connection, rollout_id: uuid.UUID) -> Mapping[str, Any] | None:
    """Lock the rollout (after its experiment: rollout_locked) and read it as a check does (active_rollouts, in the
    caller's transaction, after the lock: what a concurrent transition committed is seen). A finished rollout comes
    back as its locked row alone (its guard is not read); None: no such rollout."""
    locked: Mapping[str, Any] | None = await conn.fetchrow(RLQ["rollout_locked"], rollout_id)
    if locked is None or locked["state"] in FINISHED:
        return locked
    rows: list[Mapping[str, Any]] = await conn.fetch(RLQ["active_rollouts"], [locked["experiment_id"]], None)
    [row] = [r for r in rows if r["id"] == rollout_id]  # locked and unfinished: active_rollouts has it
    return row


def _nothing(row: Mapping[str, Any] | None, rollout_id: uuid.UUID) -> RolloutOutcome:
    if row is None:
        return RolloutOutcome(str(rollout_id), "", "?", "none", 0, 0.0)
    steps = row["steps"]
    return RolloutOutcome(
        str(rollout_id),
        str(row["promotion_id"]),
        row["experiment_name"],
        "none",
        int(row["step"]),
        float(steps[int(row["step"]) - 1]),
    )


def _committed(view: RolloutView, outcome: RolloutOutcome, decision: RolloutDecision) -> RolloutTransition:
    return {
        "experimentName": view.experiment_name,
        "promotionId": view.promotion_id,
        "rolloutId": view.rollout_id,
        "step": outcome.step,
        "treatmentShare": outcome.share,
        "fromStep": view.step,
        "reason": outcome.reason,
        "guard": [g.public() for g in decision.guard],
    }
