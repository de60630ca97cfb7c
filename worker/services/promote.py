"""Check and promote: one experiment decided on its locked row and, when eligible, promoted in the same transaction.

Two ways in, each a plain path:

* ``act_requested`` — an API/CLI promote (``mode="request"``) or a scan (``mode="scan"``): waits for the row lock,
  folds pending updates first, refuses to promote over an active promotion. A request audits refusals and reports
  every dry run; a scan reports a dry run only when eligibility changes.
* ``act_daemon`` — the daemon's evaluation (worker.services.evaluate): skips rows held elsewhere, relies on the
  folder having folded, and reports a dry run only when eligibility changes.

Both end in ``_dry_run``, ``_refuse``, ``_await_approval`` (approval.require: a pending approval instead of a
promotion, worker.services.approval_gate) or ``_promote``; ``promote_approved`` is the way in of an approval
(worker.services.approvals), which promotes what is still eligible without asking again. What follows a commit is
worker.services.effects'.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from worker import metrics
from worker.config import AutoPromotionConfig, EffectiveConfig, Settings
from worker.db import store
from worker.db.connect import Connection, Pool, PostgresError, UniqueViolationError
from worker.db.fold import fold_pending_updates
from worker.db.sql import Q
from worker.db.store import HistoryRows, PromotionWrite, Seen
from worker.decide import Decision, ExperimentSnapshot
from worker.domain.errors import AlreadyPromoted, EngineError, ExperimentNotFound
from worker.domain.eta import EtaRequest, check_eta
from worker.domain.results import CheckResult, Evaluation, PromoteResult
from worker.domain.rollout_rules import plan_ramp, ramp_weights, share_during_test, sums_json
from worker.services.approval_gate import request_approval, requires_approval
from worker.services.deciding import Decider
from worker.services.effects import Effects, outbox_rows, payload
from worker.stats import StatsInputError

log = structlog.get_logger("worker.engine")

RequestMode = Literal["request", "scan"]


@dataclass(frozen=True, slots=True)
class Decided:
    """A decision on a locked experiment, with everything acting on it needs."""

    row: Mapping[str, Any]  # its experiment_snapshot row
    snapshot: ExperimentSnapshot
    decision: Decision
    cfg: AutoPromotionConfig  # with_experiment_overrides: alone says whether this is a dry run
    effective: EffectiveConfig
    actor: str
    check: CheckResult = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "check", self.decision.to_check_data())

    @property
    def seen(self) -> Seen:
        return Seen.of(self.row)

    @property
    def dry(self) -> bool:
        """A dry run: dryRun, or not enabled."""
        return self.cfg.dry_run or not self.cfg.enabled

    def evaluation(
        self,
        action: Literal["evaluated", "fresh", "skipped", "refused", "dry_run", "promoted", "awaiting_approval"],
        result: PromoteResult | None = None,
        decision: Decision | None = None,
    ) -> Evaluation:
        return Evaluation(self.snapshot.id, self.snapshot.name, decision or self.decision, action, result)

    def result(self, *, success: bool, promotion_id: str | None = None, queued: int = 0) -> PromoteResult:
        """The promote ``data`` of this decision; the caller adds what only its path knows."""
        winner = self.decision.winner
        return {
            "success": success,
            "experimentName": self.snapshot.name,
            "promotedVariantName": winner.variant if winner is not None and self.decision.eligible else None,
            "confidence": self.decision.confidence,
            "improvement": self.decision.improvement,
            "promotionId": promotion_id,
            "notificationsQueued": queued,
            "dryRun": False,
            "eligibility": self.check,
        }


class PromoteService:
    """check_promotion_eligibility, promote_winner and the acts they share with the daemon's evaluation."""

    def __init__(
        self, pool: Pool, settings: Settings, config: EffectiveConfig, decider: Decider, effects: Effects
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.config = config
        self.decider = decider
        self.effects = effects

    # --------------------------------------------------------------------------------------------- check
    async def check(self, experiment_name: str, *, config: EffectiveConfig | None = None) -> CheckResult:
        """The seed's check ``data`` for one experiment; ExperimentNotFound if it does not exist."""
        effective = config or self.config
        async with self.pool.acquire() as conn:
            exp = await self.decider.find(conn, experiment_name)
            await fold_pending_updates(conn, experiment_ids=[exp["id"]], batch_size=self.settings.fold_batch_size)
            async with conn.transaction():
                read = await self.decider.snapshot(conn, exp["id"], self.decider.lookback_s(effective, exp["config"]))
                if read is None:
                    raise ExperimentNotFound(f"no experiment named {experiment_name[:200]!r}")
                snapshot, seen = read
                decision, cfg = self.decider.decide(snapshot, effective, exp["config"])
                if config is None:
                    # Only a check under the server's own config is "the last decision"; a caller's what-if is not.
                    await self._store_check(conn, exp["id"], snapshot, decision, cfg, effective, seen)
        metrics.EVALUATIONS.labels("eligible" if decision.eligible else "not_eligible").inc()
        data = decision.to_check_data()
        # At the edge, not in the evaluations: the projection costs about a millisecond.
        data["eta"] = check_eta(EtaRequest(data, cfg, snapshot.status, snapshot.started_at, snapshot.now))
        return data

    async def _store_check(
        self,
        conn: Connection,
        experiment_id: int,
        snapshot: ExperimentSnapshot,
        decision: Decision,
        cfg: AutoPromotionConfig,
        effective: EffectiveConfig,
        seen: Seen,
    ) -> None:
        report = decision.eligible and (cfg.dry_run or not cfg.enabled)
        if report:
            # The daemon and the scans hold the experiment's row lock when they compare and store the eligibility;
            # so does this check, so that one change is reported once.
            await conn.execute(Q["lock_experiment"], experiment_id)
        previous, _ = await store.store_evaluation(conn, decision, seen=seen)
        if report and previous is not True:
            # This check is what saw a dry-run experiment become eligible: it reports the change, as the daemon
            # would have (which now finds the eligibility stored and stays quiet).
            await self.report_dry_run(
                conn, snapshot, decision, cfg, effective, actor="autopromote", check=decision.to_check_data()
            )

    # ------------------------------------------------------------------------------------------- promote
    async def promote(
        self,
        experiment_name: str,
        *,
        config: EffectiveConfig | None = None,
        actor: str = "autopromote",
        dry_run: bool | None = None,
    ) -> PromoteResult:
        """Check and promote in ONE transaction on the locked experiment row; the seed's promote ``data``.

        Raises ExperimentNotFound, or AlreadyPromoted when an active promotion exists. Not eligible is a
        result (``success: false`` with ``reasons``), not an exception. In dry-run only an audit row is written.
        ``dry_run`` is a request-layer value like ``config``'s: it can make the promotion dry, but ``False`` cannot
        lift an experiment's own ``dryRun: true`` or ``enabled: false``.
        """
        effective = self.decider.with_dry_run(config or self.config, dry_run)
        async with self.pool.acquire() as conn:
            exp = await self.decider.find(conn, experiment_name)
            try:
                return await self.promote_locked(conn, exp["id"], effective, actor=actor, mode="request")
            except UniqueViolationError as exc:
                raise AlreadyPromoted(f"experiment {experiment_name!r} already has an active promotion") from exc
            except EngineError:
                raise
            except (PostgresError, StatsInputError, OSError) as exc:
                await self.record_failure(conn, exp, effective, actor, exc)
                raise

    async def promote_locked(
        self, conn: Connection, experiment_id: int, effective: EffectiveConfig, *, actor: str, mode: RequestMode
    ) -> PromoteResult:
        """Check and, when eligible, promote one experiment in one transaction; the promote ``data``."""
        async with conn.transaction():
            outcome = await self._decide_requested(conn, experiment_id, effective, actor=actor, mode=mode)
        assert outcome.promotion is not None
        if outcome.action == "promoted":
            self.effects.promoted(outcome.experiment_name, outcome.promotion, mode)
        return outcome.promotion

    async def _decide_requested(
        self, conn: Connection, experiment_id: int, effective: EffectiveConfig, *, actor: str, mode: RequestMode
    ) -> Evaluation:
        """Lock the experiment (waiting), fold its pending updates, decide and act, in the caller's transaction."""
        exp = await conn.fetchrow(Q["lock_experiment"], experiment_id)
        if exp is None:
            raise ExperimentNotFound(f"experiment {experiment_id} disappeared")
        await fold_pending_updates(conn, experiment_ids=[experiment_id], batch_size=self.settings.fold_batch_size)
        row = await conn.fetchrow(
            Q["experiment_snapshot"], experiment_id, self.decider.lookback_s(effective, exp["config"])
        )
        snapshot = ExperimentSnapshot.from_row(row)
        decision, cfg = self.decider.decide(snapshot, effective, row["config"])
        return await self.act_requested(conn, Decided(row, snapshot, decision, cfg, effective, actor), mode)

    async def act_requested(self, conn: Connection, d: Decided, mode: RequestMode) -> Evaluation:
        """A promote request's or a scan's decision: a dry run, a refusal or a promotion."""
        active = d.snapshot.active_promotion_id
        if active is not None and not d.dry:
            raise AlreadyPromoted(
                f"experiment {d.snapshot.name!r} already has an active promotion ({active})", {"promotionId": active}
            )
        if d.dry:
            previous, _ = await store.store_evaluation(conn, d.decision, d.check, seen=d.seen)
            # A scan evaluates an unchanged experiment again and again: it reports a dry run once per change of
            # eligibility (the stored eligibility, written in this same transaction, is the memory). An operator's
            # explicit promote is reported every time.
            report = mode == "request" or (d.decision.eligible and previous is not True)
            return await self._dry_run(conn, d, report=report)
        if not d.decision.eligible or d.decision.winner is None:
            if mode == "request":
                await store.insert_audit(
                    conn,
                    d.actor,
                    "promotion_refused",
                    d.snapshot.id,
                    d.snapshot.name,
                    None,
                    {**self._audit_details(d), "reasons": list(d.decision.reasons)},
                )
            return await self._refuse(conn, d)
        if requires_approval(d.cfg, "promote"):
            return await self._await_approval(conn, d, mode)
        return await self._promote(conn, d)

    async def act_daemon(self, conn: Connection, d: Decided, *, alone: bool) -> Evaluation:
        """The daemon's decision (on a running experiment): remember it, and report or promote when eligible.
        ``alone``: this evaluation is its transaction's only work."""
        if not d.decision.eligible:
            # The common case: nothing to do but remember the decision. A lone evaluation's transaction holds
            # nothing else, so its commit need not wait for the disk.
            _, stored = await store.store_evaluation(conn, d.decision, d.check, relaxed=alone, seen=d.seen)
            return d.evaluation("evaluated" if stored else "fresh")
        if d.dry:
            previous, stored = await store.store_evaluation(conn, d.decision, d.check, seen=d.seen)
            if not stored:
                # Another replica decided on the same read and acted on it: no second notification or audit row.
                return d.evaluation("fresh")
            if previous is True:
                return d.evaluation("evaluated")  # reported when it became eligible
            return await self._dry_run(conn, d, report=True)
        if d.decision.winner is None:
            return await self._refuse(conn, d)
        if requires_approval(d.cfg, "promote"):
            return await self._await_approval(conn, d, "daemon")
        return await self._promote(conn, d)

    async def promote_approved(
        self, conn: Connection, experiment_id: int, effective: EffectiveConfig, *, actor: str
    ) -> Evaluation:
        """An approved promotion, in the caller's transaction (which holds the experiment's row lock): fold, decide
        again on the locked state and promote what is still eligible, without asking for approval again; else the
        refusal with its reasons (not eligible any more, promoted meanwhile, dry run, the concurrency limit)."""
        exp = await conn.fetchrow(Q["lock_experiment"], experiment_id)
        if exp is None:
            raise ExperimentNotFound(f"experiment {experiment_id} disappeared")
        await fold_pending_updates(conn, experiment_ids=[experiment_id], batch_size=self.settings.fold_batch_size)
        row = await conn.fetchrow(
            Q["experiment_snapshot"], experiment_id, self.decider.lookback_s(effective, exp["config"])
        )
        snapshot = ExperimentSnapshot.from_row(row)
        decision, cfg = self.decider.decide(snapshot, effective, row["config"])
        d = Decided(row, snapshot, decision, cfg, effective, actor)
        why: list[str] = []
        if snapshot.active_promotion_id is not None:
            why = [f"already promoted meanwhile (promotion {snapshot.active_promotion_id})"]
        elif d.dry:
            why = ["dryRun is on or promotion is disabled (enabled: false) for this experiment: nothing is promoted"]
        elif not decision.eligible or decision.winner is None:
            why = list(decision.reasons) or ["no winner"]
        if not why:
            return await self._promote(conn, d)
        await store.insert_audit(
            conn,
            actor,
            "promotion_refused",
            snapshot.id,
            snapshot.name,
            None,
            {**self._audit_details(d), "reasons": why, "approved": True},
        )
        outcome = await self._refuse(conn, d)
        assert outcome.promotion is not None
        outcome.promotion["reasons"] = why
        return outcome

    # ------------------------------------------------------------------------------------ the four ends
    async def _dry_run(self, conn: Connection, d: Decided, *, report: bool) -> Evaluation:
        """A dry run, its decision stored already; ``report``: audit it and, when eligible, notify."""
        queued = 0
        if report:
            queued = await self.report_dry_run(
                conn, d.snapshot, d.decision, d.cfg, d.effective, actor=d.actor, check=d.check
            )
        result = d.result(success=d.decision.eligible, queued=queued)
        result["dryRun"] = True
        result["enabled"] = d.cfg.enabled
        result["reasons"] = list(d.decision.reasons)
        return d.evaluation("dry_run", result)

    async def _refuse(
        self, conn: Connection, d: Decided, decision: Decision | None = None, seen: Seen | None = None
    ) -> Evaluation:
        """Not promoted: store the decision (``decision``, read at ``seen``: a second look) and say why."""
        final = decision or d.decision
        await store.store_evaluation(
            conn, final, d.check if decision is None else None, seen=seen if seen is not None else d.seen
        )
        result = d.result(success=False)
        result["reasons"] = list(final.reasons) or (["concurrency limit reached"] if decision is not None else [])
        return d.evaluation("refused", result, final)

    async def _await_approval(self, conn: Connection, d: Decided, mode: RequestMode | Literal["daemon"]) -> Evaluation:
        """Eligible under approval.require: a pending approval instead of a promotion (worker.services.approval_gate).

        Requested once per eligibility: the stored eligibility, written in this same transaction, is the memory
        (as for a dry run's report); an operator's explicit promote asks again after a decline.
        """
        previous, stored = await store.store_evaluation(conn, d.decision, d.check, seen=d.seen)
        if mode == "daemon" and not stored:
            return d.evaluation("fresh")  # another replica decided on the same read and asked already
        winner = d.decision.winner
        opened = await request_approval(
            conn,
            self.effects,
            experiment_id=d.snapshot.id,
            experiment_name=d.snapshot.name,
            priority=d.snapshot.priority,
            kind="promote",
            cfg=d.cfg,
            decision=d.decision,
            check=d.check,
            variant=winner.variant if winner is not None else None,
            actor=d.actor,
            new_eligibility=mode == "request" or previous is not True,
        )
        result = d.result(success=False, queued=opened.queued if opened else 0)
        if opened is None:
            result["reasons"] = [
                f"waiting for an approval (approval.require = {d.cfg.approval.require}); this eligibility was "
                "declined or has expired: promote explicitly to ask again"
            ]
            return d.evaluation("awaiting_approval", result)
        approval = opened.approval
        result["approvalId"] = str(approval.id)
        result["reasons"] = [
            f"waiting for approval {approval.id} (approval.require = {d.cfg.approval.require}); it expires as "
            f"declined at {approval.expires_at.isoformat()}"
        ]
        return d.evaluation("awaiting_approval", result)

    def _audit_details(self, d: Decided) -> dict[str, Any]:
        return {"decision": d.check, "config": d.cfg.public(), "preset": d.effective.preset, "dryRun": False}

    async def _promote(self, conn: Connection, d: Decided) -> Evaluation:
        """Promote the winner: everything in one statement (store.write_promotion)."""
        winner = d.decision.winner
        assert winner is not None
        snapshot, decision, cfg = d.snapshot, d.decision, d.cfg
        promotion_id = uuid.uuid4()
        previous_weights = {v.name: v.weight for v in snapshot.variants}
        control = decision.analysis.control if decision.analysis else None
        ramp = _ramp(cfg, previous_weights, winner.variant, control)
        planned = self.effects.plan(
            payload(
                "promotion.promoted",
                decision,
                actor=d.actor,
                experiment_name=snapshot.name,
                priority=snapshot.priority,
                promotion_id=promotion_id,
                variant=winner.variant,
            ),
            cfg,
            d.row["promotion_targets"],
        )
        # ab_take_promotion_slot serialises promotions, so that the guard-window count cannot be raced past its
        # limit, and everything the promotion writes (outbox rows included) lands with it.
        written = await store.write_promotion(
            conn,
            PromotionWrite(
                experiment_id=snapshot.id,
                experiment_name=snapshot.name,
                variant=winner.variant,
                control_variant=control,
                confidence=decision.confidence,
                improvement=decision.improvement,
                method=decision.method,
                actor=d.actor,
                previous_weights=previous_weights,
                baseline=_baseline(snapshot),
                guard_seconds=cfg.guard.guard_hours * 3600.0,
                decision=d.check,
                audit_details={
                    **self._audit_details(d),
                    "previousWeights": previous_weights,
                    "promotedVariant": winner.variant,
                    **({"rollout": ramp} if ramp is not None else {}),
                },
                max_concurrent=cfg.max_concurrent_promotions,
                promotion_id=promotion_id,
                outbox=outbox_rows(planned),
                history=HistoryRows.of(decision),
                seen=d.seen,
                ramp=ramp,
            ),
        )
        if written is None:
            # The guard window filled up since the snapshot: decide again to report it with its numbers.
            overrides = d.row["config"]
            read = await self.decider.snapshot(conn, snapshot.id, self.decider.lookback_s(d.effective, overrides))
            assert read is not None
            again, _ = self.decider.decide(read[0], d.effective, overrides)
            return await self._refuse(conn, d, again, read[1])
        self.effects.queued("promotion.promoted", snapshot.name, planned)
        result = d.result(success=True, promotion_id=str(promotion_id), queued=len(planned.routes))
        result["promotedAt"] = written.promoted_at.isoformat()
        if ramp is not None:
            result["rollout"] = {
                "state": ramp["state"],
                "step": 1,
                "steps": ramp["steps"],
                "treatmentShare": ramp["steps"][0],
                "stepStartedAt": written.promoted_at.isoformat(),
                "guard": [],
                "nextStepAt": None,
            }
        return d.evaluation("promoted", result)

    # ----------------------------------------------------------------------------- reports and failures
    async def report_dry_run(
        self,
        conn: Connection,
        snapshot: ExperimentSnapshot,
        decision: Decision,
        cfg: AutoPromotionConfig,
        effective: EffectiveConfig,
        *,
        actor: str,
        check: CheckResult,
    ) -> int:
        """A dry run's audit row and, when eligible, its promotion.eligible notification; rows queued."""
        winner = decision.winner
        queued = 0
        if decision.eligible:
            queued = await self.effects.notify(
                conn,
                payload(
                    "promotion.eligible",
                    decision,
                    actor=actor,
                    experiment_name=snapshot.name,
                    priority=snapshot.priority,
                    promotion_id=None,
                    variant=winner.variant if winner is not None else None,
                    dry_run=True,
                ),
                cfg,
            )
        await store.insert_audit(
            conn,
            actor,
            "dry_run",
            snapshot.id,
            snapshot.name,
            None,
            {
                "decision": check,
                "config": cfg.public(),
                "preset": effective.preset,
                "dryRun": True,
                "enabled": cfg.enabled,
                "wouldPromote": decision.eligible,
                "reasons": list(decision.reasons),
            },
        )
        return queued

    async def record_failure(
        self, conn: Connection, exp: Mapping[str, Any], effective: EffectiveConfig, actor: str, exc: BaseException
    ) -> None:
        """After a failed promotion transaction: audit it and tell people, in a transaction of its own."""
        log.error("promotion.failed", experiment=exp["name"], error=str(exc), error_type=type(exc).__name__)
        try:
            async with conn.transaction():
                await store.insert_audit(
                    conn,
                    actor,
                    "promotion_failed",
                    exp["id"],
                    exp["name"],
                    None,
                    {"error": f"{type(exc).__name__}: {exc}"[:2000]},
                )
                await self.effects.notify(
                    conn,
                    payload(
                        "promotion.failed",
                        None,
                        actor=actor,
                        experiment_name=exp["name"],
                        priority=exp["priority"],
                        promotion_id=None,
                        variant=None,
                        reason=f"{type(exc).__name__}: {exc}"[:500],
                    ),
                    self.decider.cfg_or_base(effective, exp.get("config")),
                )
        except (PostgresError, OSError) as second:
            log.error("promotion.failure_not_recorded", experiment=exp["name"], error=str(second))


def _baseline(snapshot: ExperimentSnapshot) -> dict[str, Any]:
    """Each variant's totals at the promotion: what the guard subtracts to see what happened since (and, under a
    ramp, the first step's start; its ab_metrics sums under ``metrics``, for the step's guardrails)."""
    out: dict[str, Any] = {}
    for v in snapshot.variants:
        entry: dict[str, Any] = {
            "exposures": v.exposures,
            "conversions": v.conversions,
            "errors": v.errors,
            "valueSum": v.value_sum,
            "valueSumSq": v.value_sum_sq,
            "latencySketch": v.latency.to_json(),
        }
        sums = {m.name: sums_json(m.sums[v.name]) for m in snapshot.metrics if v.name in m.sums}
        if sums:
            entry["metrics"] = sums
        out[v.name] = entry
    return out


def _ramp(
    cfg: AutoPromotionConfig, weights: Mapping[str, float], winner: str, control: str | None
) -> dict[str, Any] | None:
    """The first step of a ramp (promote_write's $35) under ``rollout.mode = ramp``; None for an instant promotion
    (and for a test without a control, which has nothing to ramp against)."""
    if cfg.rollout.mode != "ramp" or control is None:
        return None
    plan = plan_ramp(share_during_test(weights, winner), cfg.rollout.steps, cfg.rollout.holdback)
    share = plan.share(1)
    return {
        "steps": list(plan.shares),
        "holdback": plan.holdback,
        "testShare": plan.test_share,
        "control": control,
        "state": plan.kind(1),
        "weights": ramp_weights(list(weights), winner, control, share),
    }
