"""The seed's operations — check, promote, scan, rollback — as transactions around ``decide.py``.

The daemon, the CLI and the HTTP API all call these methods; none of them contains decision logic.
Every answer first folds the experiment's pending metric updates, so it never depends on whether a daemon
is running.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import asyncpg
import structlog

from worker import metrics
from worker.config import (
    AutoPromotionConfig,
    ConfigError,
    EffectiveConfig,
    Settings,
    with_experiment_overrides,
    with_request_overrides,
)
from worker.db.connect import json_safe
from worker.db.queries import Q
from worker.decide import (
    AlertInfo,
    Decision,
    ExperimentSnapshot,
    VariantSnapshot,
    failed_decision,
    safe_decide,
)

# Re-exported (``as``) under their old home: the daemon, guard, CLI and API import them from here.
from worker.domain.actions import EvaluationAction
from worker.domain.errors import AlreadyPromoted as AlreadyPromoted
from worker.domain.errors import AlreadyRolledBack as AlreadyRolledBack
from worker.domain.errors import EngineError as EngineError
from worker.domain.errors import ExperimentNotFound as ExperimentNotFound
from worker.domain.errors import InvalidRequest as InvalidRequest
from worker.domain.errors import PromotionNotFound as PromotionNotFound
from worker.fold import fold_pending_updates
from worker.retry import is_transient
from worker.stats import ExperimentAnalysis, LatencySketch, StatsInputError, analyze_many

if TYPE_CHECKING:
    from worker.notify.outbox import PlannedNotifications

log = structlog.get_logger("worker.engine")

# Transaction-level advisory lock taken by every promotion (ab_take_promotion_slot, schema/0005), so that concurrent
# promotions of different experiments cannot both slip under maxConcurrentPromotions.
PROMOTION_SLOT_LOCK = 0x61627073  # "abps"
SNAPSHOT_MIN_INTERVAL_S = 5.0
SNAPSHOT_MAX_ROWS = 400
SCAN_CHUNK = 1000
SCAN_STATE_MIN_AGE_S = 30.0
# The longest alert lookback a config may set (config.py validates alertLookbackHours up to 90 days).
MAX_ALERT_LOOKBACK_S = 24 * 90 * 3600.0


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What one daemon evaluation concluded and did."""

    experiment_id: int
    experiment_name: str
    decision: Decision | None
    action: EvaluationAction
    promotion: dict[str, Any] | None = None


def _snapshot_from_row(row: Mapping[str, Any]) -> ExperimentSnapshot:
    variants = tuple(
        VariantSnapshot(
            name=v["name"], is_control=bool(v["is_control"]), weight=float(v["weight"]),
            exposures=int(v["exposures"]), conversions=int(v["conversions"]), errors=int(v["errors"]),
            value_sum=float(v["value_sum"]), value_sum_sq=float(v["value_sum_sq"]),
            latency=LatencySketch.from_json(v["latency_sketch"] or None),
        )
        for v in row["variants"]
    )
    alerts = tuple(
        AlertInfo(id=int(a["id"]), message=a["message"], created_at=_parse_ts(a["created_at"]),
                  global_alert=bool(a["global"]))
        for a in row["critical_alerts"]
    )
    active = row["active_promotion_id"]
    return ExperimentSnapshot(
        id=row["id"], name=row["name"], status=row["status"], started_at=row["started_at"],
        metric_type=row["metric_type"], priority=row["priority"], variants=variants, now=row["now"],
        active_promotion_id=str(active) if active is not None else None, critical_alerts=alerts,
        promotions_in_guard_window=int(row["promotions_in_guard_window"]),
    )


def _history_args(decision: Decision) -> tuple[Any, ...]:
    """The history-snapshot arguments of record_evaluation / promote_write: one array element per treatment
    (name, exposures, control exposures, lift, CI low, CI high, confidence), then the control's exposures."""
    comps = decision.analysis.comparisons if decision.analysis is not None else ()
    control = next((v for v in decision.variants if v.is_control), None)
    control_n = control.exposures if control is not None and comps else 0
    by_name = {v.name: v for v in decision.variants}
    return (
        [c.variant for c in comps],
        [by_name[c.variant].exposures if c.variant in by_name else 0 for c in comps],
        [control_n for _ in comps],
        [_finite(c.lift) for c in comps], [_finite(c.ci_low) for c in comps],
        [_finite(c.ci_high) for c in comps], [_finite(c.confidence) for c in comps],
        control_n,
    )


@dataclass(frozen=True, slots=True)
class Seen:
    """What a decision was read at (schema/0007): the experiment's statistics version and the snapshot (text) of the
    statement that read it. Stored with the decision, they say exactly what the decision could not have seen: a
    later fold (another version) and any alert whose transaction is not visible in the snapshot, whatever the
    start times and commit order of the transactions involved."""

    version: int | None = None
    snapshot: str | None = None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Seen:
        """From an experiment_snapshot row (its stats_version and read_snapshot columns)."""
        return cls(row["stats_version"], row["read_snapshot"])


UNKNOWN = Seen()


def _parse_ts(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _parse_promotion_id(promotion_id: str | uuid.UUID | None) -> uuid.UUID:
    if isinstance(promotion_id, uuid.UUID):
        return promotion_id
    if not promotion_id or not str(promotion_id).strip():
        raise InvalidRequest("promotionId is required", {"field": "promotionId"})
    try:
        return uuid.UUID(str(promotion_id).strip())
    except ValueError:
        raise InvalidRequest(
            f"promotionId {str(promotion_id)[:80]!r} is not a UUID", {"field": "promotionId"}
        ) from None


class Engine:
    """check / promote / scan / rollback / evaluate on one database."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        config: EffectiveConfig,
        *,
        on_committed: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.config = config
        self.on_committed = on_committed

    # ------------------------------------------------------------------------------------------- helpers
    def experiment_config(
        self, effective: EffectiveConfig, overrides: Mapping[str, Any] | None
    ) -> AutoPromotionConfig:
        """The effective config with the experiment's own ``config`` column applied (ConfigError if invalid).

        Every decision and action takes its config from here alone (worker.config.with_experiment_overrides): no
        caller passes a value, such as dryRun, that could beat the experiment's own.
        """
        return with_experiment_overrides(effective, overrides)

    def _cfg_or_base(self, effective: EffectiveConfig, overrides: Mapping[str, Any] | None) -> AutoPromotionConfig:
        try:
            return self.experiment_config(effective, overrides)
        except ConfigError:
            return effective.config

    async def _snapshot(
        self, conn: asyncpg.Connection, experiment_id: int, lookback_hours: float
    ) -> ExperimentSnapshot | None:
        row = await conn.fetchrow(Q["experiment_snapshot"], experiment_id, lookback_hours * 3600.0)
        return None if row is None else _snapshot_from_row(row)

    async def _snapshot_row(
        self, conn: asyncpg.Connection, experiment_id: int, lookback_hours: float
    ) -> tuple[ExperimentSnapshot, Seen] | None:
        """The snapshot and what it was read at."""
        row = await conn.fetchrow(Q["experiment_snapshot"], experiment_id, lookback_hours * 3600.0)
        return None if row is None else (_snapshot_from_row(row), Seen.of(row))

    async def _find(self, conn: asyncpg.Connection, name: str) -> asyncpg.Record:
        if not isinstance(name, str) or not name.strip():
            raise InvalidRequest("experimentName is required", {"field": "experimentName"})
        row = await conn.fetchrow(Q["experiment_by_name"], name)
        if row is None:
            raise ExperimentNotFound(f"no experiment named {name[:200]!r}", {"experimentName": name[:200]})
        return row

    def _decide(self, snapshot: ExperimentSnapshot, effective: EffectiveConfig,
                overrides: Mapping[str, Any] | None,
                analysis: ExperimentAnalysis | None = None) -> tuple[Decision, AutoPromotionConfig]:
        try:
            cfg = self.experiment_config(effective, overrides)
        except ConfigError as exc:
            cfg = effective.config
            return failed_decision(snapshot, cfg, "invalid per-experiment config: " + "; ".join(exc.errors)), cfg
        return safe_decide(snapshot, cfg, analysis if not overrides else None), cfg

    async def _audit(self, conn: asyncpg.Connection, actor: str, action: str, experiment_id: int | None,
                     experiment_name: str | None, promotion_id: uuid.UUID | None, details: dict[str, Any]) -> None:
        await conn.execute(Q["insert_audit"], actor, action, experiment_id, experiment_name, promotion_id, details)

    async def _notify(self, conn: asyncpg.Connection, event: str, payload: dict[str, Any],
                      cfg: AutoPromotionConfig) -> int:
        from worker.notify import enqueue_notifications

        queued: int = await enqueue_notifications(conn, event=event, payload=json_safe(payload), config=cfg,
                                                  settings=self.settings)
        return queued

    def _plan_notifications(self, event: str, payload: dict[str, Any], cfg: AutoPromotionConfig,
                            configs: Any) -> PlannedNotifications:
        """The outbox rows of ``event``, routed over ``configs`` (routable notification_configs rows as JSON)."""
        from worker.notify.outbox import config_rows, plan_notifications

        return plan_notifications(event=event, payload=json_safe(payload), config=cfg, settings=self.settings,
                                  rows=config_rows(configs or []))

    def _committed(self, event: str, data: dict[str, Any]) -> None:
        if self.on_committed is not None:
            self.on_committed(event, data)

    def _payload(self, event: str, decision: Decision | None, *, actor: str, experiment_name: str,
                 priority: str, promotion_id: uuid.UUID | None, variant: str | None, reason: str | None = None,
                 dry_run: bool = False, confidence: float | None = None,
                 improvement: float | None = None) -> dict[str, Any]:
        return {
            "event": event,
            "experimentName": experiment_name,
            "priority": priority,
            "promotionId": str(promotion_id) if promotion_id else None,
            "occurredAt": datetime.now().astimezone().isoformat(),
            "actor": actor,
            "variant": variant,
            "controlVariant": decision.analysis.control if decision and decision.analysis else None,
            "confidence": confidence if confidence is not None else (decision.confidence if decision else None),
            "improvement": improvement if improvement is not None else (decision.improvement if decision else None),
            "method": decision.method if decision else None,
            "safetyChecks": [c.to_json() for c in decision.safety_checks] if decision else [],
            "reason": reason,
            "variants": decision.variant_stats_json() if decision else [],
            "dryRun": dry_run,
        }

    async def _record_evaluation(self, conn: asyncpg.Connection, decision: Decision,
                                 check: dict[str, Any] | None = None, *, relaxed: bool = False,
                                 seen: Seen = UNKNOWN) -> bool | None:
        """Store the last decision (``check``: its check data, if built already) and, when due, a history snapshot
        (one statement); the previous eligibility. ``relaxed``: the transaction writes nothing else, so it may
        commit without waiting for the WAL flush (worker.fold.RELAXED_COMMIT). ``seen``: what the decision was read
        at (unknown: the experiment stays due for the daemon's next evaluation and the catch-up)."""
        return (await self._store_evaluation(conn, decision, check, relaxed=relaxed, seen=seen))[0]

    async def _store_evaluation(self, conn: asyncpg.Connection, decision: Decision,
                                check: dict[str, Any] | None = None, *, relaxed: bool = False,
                                seen: Seen = UNKNOWN) -> tuple[bool | None, bool]:
        """_record_evaluation; also whether it was written (not when the stored decision already covers ``seen``:
        another replica decided on the same read, see ab_decision_covered in schema/0007)."""
        row = await conn.fetchrow(Q["record_evaluation"], decision.experiment_id, decision.eligible,
                                  check if check is not None else decision.to_check_data(), *_history_args(decision),
                                  SNAPSHOT_MIN_INTERVAL_S, relaxed, seen.version, seen.snapshot)
        await self._thin_if_due(conn, decision.experiment_id, row["evaluations"], row["snapshots"])
        previous = row["previous"]
        return (None if previous is None else bool(previous)), row["evaluations"] is not None

    async def _thin_if_due(self, conn: asyncpg.Connection, experiment_id: int, evaluations: int | None,
                           snapshots: int) -> None:
        if snapshots and evaluations is not None and evaluations % 25 == 0:
            await conn.execute(Q["thin_snapshots"], experiment_id, SNAPSHOT_MAX_ROWS)

    # --------------------------------------------------------------------------------------------- check
    async def check_promotion_eligibility(
        self, experiment_name: str, *, config: EffectiveConfig | None = None
    ) -> dict[str, Any]:
        """The seed's check ``data`` for one experiment; ExperimentNotFound if it does not exist."""
        effective = config or self.config
        async with self.pool.acquire() as conn:
            exp = await self._find(conn, experiment_name)
            await fold_pending_updates(conn, experiment_ids=[exp["id"]], batch_size=self.settings.fold_batch_size)
            async with conn.transaction():
                read = await self._snapshot_row(conn, exp["id"], self._lookback(effective, exp["config"]))
                if read is None:
                    raise ExperimentNotFound(f"no experiment named {experiment_name[:200]!r}")
                snapshot, seen = read
                decision, cfg = self._decide(snapshot, effective, exp["config"])
                if config is None:
                    # Only a check under the server's own config is "the last decision"; a caller's what-if is not.
                    report = decision.eligible and (cfg.dry_run or not cfg.enabled)
                    if report:
                        # The daemon and the scans hold the experiment's row lock when they compare and store the
                        # eligibility; so does this check, so that one change is reported once.
                        await conn.execute(Q["lock_experiment"], exp["id"])
                    previous = await self._record_evaluation(conn, decision, seen=seen)
                    if report and previous is not True:
                        # This check is what saw a dry-run experiment become eligible: it reports the change, as
                        # the daemon would have (which now finds the eligibility stored and stays quiet).
                        await self._report_dry_run(conn, snapshot, decision, cfg, effective, actor="autopromote",
                                                   check=decision.to_check_data())
        metrics.EVALUATIONS.labels("eligible" if decision.eligible else "not_eligible").inc()
        return decision.to_check_data()

    def _lookback(self, effective: EffectiveConfig, overrides: Mapping[str, Any] | None) -> float:
        return self._cfg_or_base(effective, overrides).safety_checks.alert_lookback_hours

    @staticmethod
    def _with_dry_run(effective: EffectiveConfig, dry_run: bool | None) -> EffectiveConfig:
        """A caller's explicit dry_run as what it is, one more request-layer value: it cannot beat an experiment's
        own dryRun: true (worker.config.with_experiment_overrides)."""
        if dry_run is None:
            return effective
        try:
            return with_request_overrides(effective, {"dryRun": dry_run})
        except ConfigError as exc:
            raise InvalidRequest("invalid configuration: " + "; ".join(exc.errors), {"field": "dryRun"}) from None

    # ------------------------------------------------------------------------------------------- promote
    async def promote_winner(
        self,
        experiment_name: str,
        *,
        config: EffectiveConfig | None = None,
        actor: str = "autopromote",
        dry_run: bool | None = None,
    ) -> dict[str, Any]:
        """Check and promote in ONE transaction on the locked experiment row; the seed's promote ``data``.

        Raises ExperimentNotFound, or AlreadyPromoted when an active promotion exists. Not eligible is a
        result (``success: false`` with ``reasons``), not an exception. In dry-run only an audit row is written.
        ``dry_run`` is a request-layer value like ``config``'s: it can make the promotion dry, but ``False`` cannot
        lift an experiment's own ``dryRun: true`` or ``enabled: false``.
        """
        effective = self._with_dry_run(config or self.config, dry_run)
        async with self.pool.acquire() as conn:
            exp = await self._find(conn, experiment_name)
            try:
                return await self._promote_locked(conn, exp["id"], effective, actor=actor)
            except (EngineError, asyncpg.exceptions.UniqueViolationError) as exc:
                if isinstance(exc, asyncpg.exceptions.UniqueViolationError):
                    raise AlreadyPromoted(f"experiment {experiment_name!r} already has an active promotion") from exc
                raise
            except (asyncpg.PostgresError, StatsInputError, OSError) as exc:
                await self._record_failure(conn, exp, effective, actor, exc)
                raise

    async def _promote_locked(self, conn: asyncpg.Connection, experiment_id: int, effective: EffectiveConfig, *,
                              actor: str, mode: str = "request") -> dict[str, Any]:
        """Check and, when eligible, promote one experiment in one transaction; the promote ``data``."""
        async with conn.transaction():
            outcome = await self._decide_and_act(conn, experiment_id, effective, actor=actor, mode=mode)
        assert outcome.promotion is not None
        if outcome.action == "promoted":
            self._after_promotion(outcome, mode)
        return outcome.promotion

    def _after_promotion(self, outcome: Evaluation, mode: str) -> None:
        result = outcome.promotion
        assert result is not None
        metrics.PROMOTIONS.labels(mode).inc()
        log.info("promotion.committed", experiment=outcome.experiment_name, variant=result["promotedVariantName"],
                 promotion_id=result["promotionId"], confidence=result["confidence"],
                 improvement=result["improvement"])
        self._committed("promotion.promoted", result)

    async def _decide_and_act(self, conn: asyncpg.Connection, experiment_id: int, effective: EffectiveConfig, *,
                              actor: str, mode: str, alone: bool = False) -> Evaluation:
        """The one evaluation path, inside the caller's transaction, on the locked experiment row.

        ``mode``: "request" (API/CLI promote: waits for the row lock, folds pending updates, audits refusals),
        "scan" (like request, refusals not audited, a dry run reported only when eligibility changes), "daemon"
        (skips a row another transaction holds, relies on the folder having folded, skips experiments that are
        not running, reports a dry run only when eligibility changes).
        """
        daemon = mode == "daemon"
        if daemon:
            # Lock and read in one round trip. Alerts over the longest lookback a config may set: decide() keeps
            # those inside the experiment's own.
            row = await conn.fetchrow(Q["try_lock_snapshot"], experiment_id, MAX_ALERT_LOOKBACK_S)
            if row is None:
                [outcome] = await self._unlocked(conn, [experiment_id])
                return outcome
            if row["status"] != "running":
                return Evaluation(experiment_id, row["name"], None, "skipped")
        else:
            exp = await conn.fetchrow(Q["lock_experiment"], experiment_id)
            if exp is None:
                raise ExperimentNotFound(f"experiment {experiment_id} disappeared")
            await fold_pending_updates(conn, experiment_ids=[experiment_id], batch_size=self.settings.fold_batch_size)
            row = await conn.fetchrow(Q["experiment_snapshot"], experiment_id,
                                      self._lookback(effective, exp["config"]) * 3600.0)
        snapshot = _snapshot_from_row(row)
        decision, cfg = self._decide(snapshot, effective, row["config"])
        return await self._act(conn, row, snapshot, decision, cfg, effective, actor=actor, mode=mode, alone=alone)

    async def _act(self, conn: asyncpg.Connection, row: Mapping[str, Any], snapshot: ExperimentSnapshot,
                   decision: Decision, cfg: AutoPromotionConfig, effective: EffectiveConfig, *, actor: str,
                   mode: str, alone: bool = False) -> Evaluation:
        """What a decision on a locked experiment (``row``: its experiment_snapshot row) leads to: record it, and
        promote, refuse or report a dry run. ``cfg`` (with_experiment_overrides) alone says whether it is a dry run:
        dryRun, or not enabled. ``alone``: this evaluation is its transaction's only work."""
        daemon = mode == "daemon"
        experiment_id = snapshot.id
        overrides = row["config"]
        dry = cfg.dry_run or not cfg.enabled
        if snapshot.active_promotion_id is not None and not dry and not daemon:
            raise AlreadyPromoted(
                f"experiment {snapshot.name!r} already has an active promotion ({snapshot.active_promotion_id})",
                {"promotionId": snapshot.active_promotion_id},
            )
        check = decision.to_check_data()
        seen = Seen.of(row)
        if daemon and not decision.eligible:
            # The daemon's common case: nothing to do but remember the decision. A lone evaluation's transaction
            # holds nothing else, so its commit need not wait for the disk.
            _, stored = await self._store_evaluation(conn, decision, check, relaxed=alone, seen=seen)
            return Evaluation(experiment_id, snapshot.name, decision, "evaluated" if stored else "fresh")
        winner = decision.winner
        promoted_name = winner.variant if winner is not None and decision.eligible else None
        base: dict[str, Any] = {
            "experimentName": snapshot.name,
            "promotedVariantName": promoted_name,
            "confidence": decision.confidence,
            "improvement": decision.improvement,
        }
        if dry:
            previous, stored = await self._store_evaluation(conn, decision, check, seen=seen)
            if daemon and not stored:
                # Another replica decided on the same read and acted on it: no second notification or audit row.
                return Evaluation(experiment_id, snapshot.name, decision, "fresh")
            queued = 0
            # The daemon and the scans evaluate an unchanged experiment again and again: they report a dry run once
            # per change of eligibility (the stored eligibility, written in this same transaction, is the memory).
            # An operator's explicit promote is reported every time.
            if mode == "request" or (decision.eligible and previous is not True):
                queued = await self._report_dry_run(conn, snapshot, decision, cfg, effective, actor=actor,
                                                    check=check)
            elif daemon:
                return Evaluation(experiment_id, snapshot.name, decision, "evaluated")
            return Evaluation(experiment_id, snapshot.name, decision, "dry_run", {
                "success": decision.eligible, **base, "promotionId": None, "notificationsQueued": queued,
                "dryRun": True, "enabled": cfg.enabled, "reasons": list(decision.reasons), "eligibility": check})
        audit_details = {"decision": check, "config": cfg.public(), "preset": effective.preset, "dryRun": False}
        refused = {"success": False, **base, "promotionId": None, "notificationsQueued": 0, "dryRun": False,
                   "reasons": list(decision.reasons), "eligibility": check}
        if not decision.eligible or winner is None:
            if mode == "request":
                await self._audit(conn, actor, "promotion_refused", snapshot.id, snapshot.name, None,
                                  {**audit_details, "reasons": list(decision.reasons)})
            await self._record_evaluation(conn, decision, check, seen=seen)
            return Evaluation(experiment_id, snapshot.name, decision, "refused", refused)
        promotion_id = uuid.uuid4()
        previous_weights = {v.name: v.weight for v in snapshot.variants}
        baseline = {
            v.name: {"exposures": v.exposures, "conversions": v.conversions, "errors": v.errors,
                     "valueSum": v.value_sum, "valueSumSq": v.value_sum_sq, "latencySketch": v.latency.to_json()}
            for v in snapshot.variants
        }
        planned = self._plan_notifications("promotion.promoted", self._payload(
            "promotion.promoted", decision, actor=actor, experiment_name=snapshot.name,
            priority=snapshot.priority, promotion_id=promotion_id, variant=winner.variant), cfg,
            row["promotion_targets"])
        # One statement: ab_take_promotion_slot serialises promotions, so that the guard-window count cannot be
        # raced past its limit, and everything the promotion writes (outbox rows included) lands with it.
        written = await conn.fetchrow(
            Q["promote_write"], snapshot.id, snapshot.name, winner.variant,
            decision.analysis.control if decision.analysis else None,
            decision.confidence, decision.improvement, decision.method, actor, previous_weights, baseline,
            cfg.guard.guard_hours * 3600.0, check,
            {**audit_details, "previousWeights": previous_weights, "promotedVariant": winner.variant},
            cfg.max_concurrent_promotions, promotion_id,
            *planned.columns(), planned.body or "{}", planned.priority, planned.detailed,
            *_history_args(decision), PROMOTION_SLOT_LOCK, seen.snapshot, seen.version,
        )
        if written is None:
            # The guard window filled up since the snapshot: decide again to report it with its numbers.
            read = await self._snapshot_row(conn, experiment_id, self._lookback(effective, overrides))
            assert read is not None
            decision, cfg = self._decide(read[0], effective, overrides)
            await self._record_evaluation(conn, decision, seen=read[1])
            refused["reasons"] = list(decision.reasons) or ["concurrency limit reached"]
            return Evaluation(experiment_id, snapshot.name, decision, "refused", refused)
        await self._thin_if_due(conn, experiment_id, written["evaluations"], written["snapshots"])
        queued = len(planned.routes)
        if queued:
            log.debug("notification.queued", notification_event="promotion.promoted", experiment=snapshot.name,
                      rows=queued, targets=[r.target_label for r in planned.routes])
        result = {"success": True, **base, "promotionId": str(promotion_id), "notificationsQueued": queued,
                  "dryRun": False, "promotedAt": written["promoted_at"].isoformat(), "eligibility": check}
        return Evaluation(experiment_id, snapshot.name, decision, "promoted", result)

    async def _report_dry_run(self, conn: asyncpg.Connection, snapshot: ExperimentSnapshot, decision: Decision,
                              cfg: AutoPromotionConfig, effective: EffectiveConfig, *, actor: str,
                              check: dict[str, Any]) -> int:
        """A dry run's audit row and, when eligible, its promotion.eligible notification; rows queued."""
        winner = decision.winner
        promoted_name = winner.variant if winner is not None and decision.eligible else None
        queued = 0
        if decision.eligible:
            queued = await self._notify(conn, "promotion.eligible", self._payload(
                "promotion.eligible", decision, actor=actor, experiment_name=snapshot.name,
                priority=snapshot.priority, promotion_id=None, variant=promoted_name, dry_run=True), cfg)
        await self._audit(conn, actor, "dry_run", snapshot.id, snapshot.name, None,
                          {"decision": check, "config": cfg.public(), "preset": effective.preset, "dryRun": True,
                           "enabled": cfg.enabled, "wouldPromote": decision.eligible,
                           "reasons": list(decision.reasons)})
        return queued

    async def _record_failure(self, conn: asyncpg.Connection, exp: Mapping[str, Any], effective: EffectiveConfig,
                              actor: str, exc: BaseException) -> None:
        """After a failed promotion transaction: audit it and tell people, in a transaction of its own."""
        log.error("promotion.failed", experiment=exp["name"], error=str(exc), error_type=type(exc).__name__)
        try:
            async with conn.transaction():
                await self._audit(conn, actor, "promotion_failed", exp["id"], exp["name"], None,
                                  {"error": f"{type(exc).__name__}: {exc}"[:2000]})
                await self._notify(conn, "promotion.failed", self._payload(
                    "promotion.failed", None, actor=actor, experiment_name=exp["name"], priority=exp["priority"],
                    promotion_id=None, variant=None, reason=f"{type(exc).__name__}: {exc}"[:500]),
                    self._cfg_or_base(effective, exp.get("config")))
        except (asyncpg.PostgresError, OSError) as second:
            log.error("promotion.failure_not_recorded", experiment=exp["name"], error=str(second))

    # ------------------------------------------------------------------------------------------ rollback
    async def rollback_promotion(
        self,
        promotion_id: str | uuid.UUID | None,
        reason: str | None,
        *,
        actor: str = "autopromote",
        trigger: str = "manual",
        config: EffectiveConfig | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Restore the previous weights and mark the promotion rolled back, in one transaction.

        Raises InvalidRequest (no reason, bad id), PromotionNotFound, or AlreadyRolledBack (nothing changed).
        """
        if reason is None or not str(reason).strip():
            raise InvalidRequest("a non-empty reason is required to roll back", {"field": "reason"})
        pid = _parse_promotion_id(promotion_id)
        effective = config or self.config
        async with self.pool.acquire() as conn, conn.transaction():
            promo = await conn.fetchrow(Q["promotion_by_id"], pid)
            if promo is None:
                raise PromotionNotFound(f"no promotion with id {pid}", {"promotionId": str(pid)})
            # Same lock order as promote (experiment first), so the two cannot deadlock.
            exp = await conn.fetchrow(Q["lock_experiment"], promo["experiment_id"])
            promo = await conn.fetchrow(Q["lock_promotion"], pid)
            if promo["rollback_at"] is not None:
                raise AlreadyRolledBack(
                    f"promotion {pid} was already rolled back at {promo['rollback_at'].isoformat()} "
                    f"by {promo['rolled_back_by']}: {promo['rollback_reason']}",
                    {"promotionId": str(pid), "rolledBackAt": promo["rollback_at"].isoformat()},
                )
            previous: dict[str, Any] = promo["previous_weights"] or {}
            for name, weight in previous.items():
                await conn.execute(Q["restore_weight"], promo["experiment_id"], name, weight)
            await conn.execute(Q["set_status"], promo["experiment_id"], "rolled_back")
            rolled_at = await conn.fetchval(Q["mark_rolled_back"], pid, reason, actor)
            cfg = self._cfg_or_base(effective, exp["config"] if exp else None)
            await self._audit(conn, actor, "rolled_back", promo["experiment_id"], promo["experiment_name"], pid,
                              {"reason": reason, "trigger": trigger, "restoredWeights": previous,
                               "promotedVariant": promo["promoted_variant_name"], **(details or {})})
            payload = self._payload(
                "promotion.rolled_back", None, actor=actor, experiment_name=promo["experiment_name"],
                priority=exp["priority"] if exp else "normal", promotion_id=pid,
                variant=promo["promoted_variant_name"], reason=reason,
                confidence=promo["confidence"], improvement=promo["improvement"],
            )
            payload["controlVariant"] = promo["control_variant_name"]
            payload["trigger"] = trigger
            queued = await self._notify(conn, "promotion.rolled_back", payload, cfg)
        metrics.ROLLBACKS.labels(trigger).inc()
        result = {
            "success": True,
            "promotionId": str(pid),
            "experimentName": promo["experiment_name"],
            "rolledBackVariantName": promo["promoted_variant_name"],
            "reason": reason,
            "rolledBackBy": actor,
            "rolledBackAt": rolled_at.isoformat(),
            "restoredWeights": previous,
            "trigger": trigger,
            "notificationsQueued": queued,
        }
        log.info("promotion.rolled_back", experiment=promo["experiment_name"], promotion_id=str(pid),
                 reason=reason, actor=actor, trigger=trigger)
        self._committed("promotion.rolled_back", result)
        return result

    # ------------------------------------------------------------------------------------------ evaluate
    async def evaluate_experiment(self, experiment_id: int, *, actor: str = "autopromote") -> Evaluation:
        """The daemon's step: decide on the folded statistics and, when eligible, promote — one transaction.

        Returns action "busy" when another transaction (another replica) holds the experiment: retry later;
        "skipped" when it is not running (promoted ones are the guard's).
        """
        effective = self.config
        async with self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    outcome = await self._decide_and_act(conn, experiment_id, effective, actor=actor, mode="daemon",
                                                         alone=True)
            except (asyncpg.PostgresError, StatsInputError) as exc:
                if not transient_db_error(exc):  # a database that is restarting etc. is retried, not reported
                    exp = await conn.fetchrow(Q["experiment_by_id"], experiment_id)
                    if exp is not None:
                        await self._record_failure(conn, exp, effective, actor, exc)
                raise
        decision = outcome.decision
        if decision is not None and outcome.action != "fresh":
            _count_evaluation(decision)
            log.debug("experiment.evaluated", experiment=outcome.experiment_name, eligible=decision.eligible,
                      confidence=decision.confidence, action=outcome.action)
        if outcome.action == "promoted":
            self._after_promotion(outcome, "daemon")
        return outcome

    async def _record_many(self, conn: asyncpg.Connection, decisions: list[Decision], *, history: bool = True,
                           checks: Mapping[int, dict[str, Any]] | None = None, relaxed: bool = False,
                           seen: Mapping[int, Seen] | None = None) -> set[int]:
        """_record_evaluation for many decisions in one statement (plus thinning where due); the experiments
        written (not those whose stored decision covers what they were read at).

        ``history=False`` (the scan) stores the last decisions only: the chart history is the evaluations'.
        ``checks`` may pass check data already built, by experiment id; ``seen``: what each was read at.
        """
        if not decisions:
            return set()
        ids, eligible, check_data = [], [], []
        versions: list[int | None] = []
        snapshots: list[str | None] = []
        s_ids, s_names, s_n, s_ctl, s_lift, s_lo, s_hi, s_conf, s_el = ([] for _ in range(9))
        for i, d in enumerate(decisions):
            if i % 500 == 499:
                await anyio.lowlevel.checkpoint()
            ids.append(d.experiment_id)
            eligible.append(d.eligible)
            read = seen.get(d.experiment_id, UNKNOWN) if seen is not None else UNKNOWN
            versions.append(read.version)
            snapshots.append(read.snapshot)
            built = checks.get(d.experiment_id) if checks is not None else None
            check_data.append(built if built is not None else d.to_check_data())
            if not history:
                continue
            comps = d.analysis.comparisons if d.analysis is not None else ()
            control = next((v for v in d.variants if v.is_control), None)
            by_name = {v.name: v for v in d.variants}
            for c in comps:
                s_ids.append(d.experiment_id)
                s_names.append(c.variant)
                s_n.append(by_name[c.variant].exposures if c.variant in by_name else 0)
                s_ctl.append(control.exposures if control is not None else 0)
                s_lift.append(_finite(c.lift))
                s_lo.append(_finite(c.ci_low))
                s_hi.append(_finite(c.ci_high))
                s_conf.append(_finite(c.confidence))
                s_el.append(d.eligible)
        rows = await conn.fetch(Q["record_evaluations_bulk"], ids, eligible, check_data, s_ids, s_names, s_n, s_ctl,
                                s_lift, s_lo, s_hi, s_conf, s_el, SNAPSHOT_MIN_INTERVAL_S, relaxed, versions,
                                snapshots)
        stored: set[int] = set()
        for row in rows:
            if row["experiment_id"] is None:
                continue  # the row that only switched the commit to relaxed
            stored.add(row["experiment_id"])
            if row["thin"]:
                await conn.execute(Q["thin_snapshots"], row["experiment_id"], SNAPSHOT_MAX_ROWS)
        return stored

    async def evaluate_many(self, experiment_ids: list[int], *, actor: str = "autopromote") -> list[Evaluation]:
        """The daemon's batch step: evaluate many experiments in one transaction.

        One statement locks the running ones (``SKIP LOCKED``: one held elsewhere comes back "busy") and reads their
        snapshots; the not-eligible ones are recorded in one statement; an eligible one is promoted on its locked
        row in the same transaction. Experiments that are not running come back "skipped" (promoted ones are the
        guard's). Should the database refuse the batch for a reason that may be one experiment's (not a transient
        one: those propagate, and the caller retries the batch), each experiment is evaluated again in a
        transaction of its own, so that one experiment's failure never holds the others back.
        """
        if len(experiment_ids) == 1:
            return [await self.evaluate_experiment(experiment_ids[0], actor=actor)]  # a failure is recorded at once
        try:
            out, promoted = await self._evaluate_batch(experiment_ids, actor)
        except (asyncpg.PostgresError, StatsInputError) as exc:
            if transient_db_error(exc):
                raise
            log.warning("evaluation.batch_failed", error=f"{type(exc).__name__}: {exc}",
                        experiments=len(experiment_ids), retry="one transaction per experiment")
            return [await self._evaluate_alone(exp_id, actor) for exp_id in experiment_ids]
        for e in out:
            if e.decision is not None and e.action != "fresh":
                _count_evaluation(e.decision)
        for outcome in promoted:
            self._after_promotion(outcome, "daemon")
        return out

    async def _evaluate_alone(self, experiment_id: int, actor: str) -> Evaluation:
        """evaluate_experiment; its own failure (already recorded and reported) comes back as "failed", for the
        reconciliation scan to try again; a transient one propagates."""
        try:
            return await self.evaluate_experiment(experiment_id, actor=actor)
        except (asyncpg.PostgresError, StatsInputError) as exc:
            if transient_db_error(exc):
                raise
            return Evaluation(experiment_id, "?", None, "failed")

    async def _unlocked(self, conn: asyncpg.Connection, experiment_ids: list[int]) -> list[Evaluation]:
        """The outcome for experiments the daemon's lock-and-read did not return: "skipped" (gone or not running:
        promoted ones are the guard's), "fresh" (running, and its stored decision covers everything this statement
        sees: another replica evaluated it already, or nothing changed), or "busy" (held by another transaction:
        retry). A fold that commits after this statement is marked by its folder, so "fresh" loses nothing."""
        found = {r["id"]: r for r in await conn.fetch(Q["unlocked_experiments"], experiment_ids)}
        out: list[Evaluation] = []
        for exp_id in experiment_ids:
            r = found.get(exp_id)
            if r is None or r["status"] != "running":
                out.append(Evaluation(exp_id, r["name"] if r else "?", None, "skipped"))
            else:
                out.append(Evaluation(exp_id, r["name"], None, "busy" if r["due"] else "fresh"))
        return out

    async def _evaluate_batch(self, experiment_ids: list[int], actor: str) -> tuple[list[Evaluation],
                                                                                    list[Evaluation]]:
        effective = self.config
        out: list[Evaluation] = []
        promoted: list[Evaluation] = []
        async with self.pool.acquire() as conn, conn.transaction():
            locked = list(await conn.fetch(Q["lock_running_snapshots"], experiment_ids, MAX_ALERT_LOOKBACK_S))
            locked_ids = {r["id"] for r in locked}
            others = [i for i in experiment_ids if i not in locked_ids]
            if others:
                out.extend(await self._unlocked(conn, others))
            pairs = [(row, _snapshot_from_row(row)) for row in locked]
            decided = await self._decide_snapshots(effective, pairs)
            plain: list[Decision] = []
            for (row, snapshot), (decision, cfg) in zip(pairs, decided, strict=True):
                if not decision.eligible:
                    plain.append(decision)
                    continue
                outcome = await self._act(conn, row, snapshot, decision, cfg, effective, actor=actor, mode="daemon")
                out.append(outcome)
                if outcome.action == "promoted":
                    promoted.append(outcome)
            # Only decisions in this transaction (nothing was promoted or audited): its commit need not wait for the
            # disk (worker.fold.RELAXED_COMMIT).
            stored = await self._record_many(conn, plain, relaxed=len(plain) == len(pairs),
                                             seen={row["id"]: Seen.of(row) for row, _ in pairs})
            out.extend(Evaluation(d.experiment_id, d.experiment_name, d,
                                  "evaluated" if d.experiment_id in stored else "fresh") for d in plain)
        return out, promoted

    # ---------------------------------------------------------------------------------------------- scan
    async def scan_and_promote_winners(
        self,
        *,
        config: EffectiveConfig | None = None,
        actor: str = "autopromote",
        dry_run: bool | None = None,
        include_results: bool = True,
    ) -> dict[str, Any]:
        """Evaluate every running experiment; promote the eligible ones (at most maxConcurrentPromotions).

        One experiment's failure is reported in its result and never stops the scan. ``include_results=False``
        (the daemon's reconciliation) keeps only the counts, so memory does not grow with the experiment count.
        Each experiment is decided and acted on under its own config (with_experiment_overrides): ``dry_run`` and
        ``config`` are request-layer values that cannot lift an experiment's own ``dryRun: true``. A dry run is
        reported (audit row, promotion.eligible) once per change of eligibility, not at every scan.
        """
        effective = self._with_dry_run(config or self.config, dry_run)
        base_cfg = effective.config
        dry = base_cfg.dry_run
        results: list[dict[str, Any]] = []
        promoted = 0
        eligible = 0
        scanned = 0
        async with self.pool.acquire() as conn:
            await fold_pending_updates(conn, batch_size=self.settings.fold_batch_size)
            running = await conn.fetch(Q["running_experiments"])
            # In chunks: memory and event-loop stalls stay bounded however many experiments there are.
            for start in range(0, len(running), SCAN_CHUNK):
                chunk = list(running[start:start + SCAN_CHUNK])
                decided, seen = await self._decide_all(conn, effective, chunk)
                # The daemon's evaluations keep last decisions current; its reconciliation scan rewrites only those
                # that are missing, stale, or whose eligibility changed (building them is most of a scan's cost).
                fresh: dict[int, bool] = {} if include_results else {
                    r["experiment_id"]: r["eligible"] for r in await conn.fetch(
                        Q["fresh_states"], [e["id"] for e in chunk], SCAN_STATE_MIN_AGE_S)}
                checks: dict[int, dict[str, Any]] = {}
                to_record: list[Decision] = []
                for i, (decision, cfg) in enumerate(decided):
                    if i % 500 == 499:
                        await anyio.lowlevel.checkpoint()  # let the listener and HTTP server run
                    if fresh.get(decision.experiment_id) is decision.eligible and not decision.eligible:
                        scanned += 1
                        continue
                    check = checks[decision.experiment_id] = decision.to_check_data()
                    if not decision.eligible:
                        to_record.append(decision)
                    item: dict[str, Any] = {
                        "experimentName": decision.experiment_name,
                        "eligible": decision.eligible,
                        "confidence": decision.confidence,
                        "improvement": decision.improvement,
                        "winningVariant": check["winningVariant"],
                        "reasons": list(decision.reasons),
                        "promoted": False,
                    }
                    if "error" in decision.extra:
                        item["error"] = decision.extra["error"]
                    if decision.eligible:
                        eligible += 1
                        limit = base_cfg.max_concurrent_promotions
                        if cfg.enabled and not cfg.dry_run and promoted >= limit:
                            item["reasons"] = [f"concurrency limit: {limit} promotion(s) already made in this scan"]
                            item["eligible"] = False
                        else:
                            try:
                                outcome = await self._promote_locked(conn, decision.experiment_id, effective,
                                                                     actor=actor, mode="scan")
                            except EngineError as exc:
                                item["error"] = exc.message
                            except (asyncpg.PostgresError, StatsInputError) as exc:
                                item["error"] = f"{type(exc).__name__}: {exc}"
                                exp = await conn.fetchrow(Q["experiment_by_id"], decision.experiment_id)
                                if exp is not None:
                                    await self._record_failure(conn, exp, effective, actor, exc)
                            else:
                                item["dryRun"] = bool(outcome.get("dryRun"))
                                if outcome["success"] and not outcome.get("dryRun"):
                                    promoted += 1
                                    item["promoted"] = True
                                    item["promotionId"] = outcome["promotionId"]
                                elif not outcome["success"]:
                                    item["reasons"] = outcome["reasons"]
                    if include_results or item.get("error") or item["promoted"]:
                        results.append(item)
                    scanned += 1
                await self._record_many(conn, to_record, history=False, checks=checks, seen=seen)
        metrics.SCANS.inc()
        log.info("scan.completed", scanned=scanned, eligible=eligible, promoted=promoted, dry_run=dry)
        return {"scanned": scanned, "eligible": eligible, "promoted": promoted, "dryRun": dry, "results": results}

    async def _decide_all(self, conn: asyncpg.Connection, effective: EffectiveConfig,
                          experiments: list[asyncpg.Record]
                          ) -> tuple[list[tuple[Decision, AutoPromotionConfig]], dict[int, Seen]]:
        """Decisions for ``experiments`` (rows of ab_experiments) with the config of each, from three bulk reads;
        what each was read at.

        The snapshot is taken before the reads: every alert visible in it is visible to the alert read too, so the
        stored snapshot never claims an alert the decision did not see. The version is the one the statistics were
        read at."""
        first = await conn.fetchrow(Q["current_snapshot"])
        now, read_snapshot = first["now"], first["snapshot"]
        variant_rows = await conn.fetch(Q["variants_with_stats_for"], [e["id"] for e in experiments])
        alert_rows = await conn.fetch(Q["all_open_critical_alerts"], MAX_ALERT_LOOKBACK_S)
        promo_rows = await conn.fetch(Q["all_active_promotions"])
        versions: dict[int, int] = {e["id"]: 0 for e in experiments}
        variants: dict[int, list[VariantSnapshot]] = {}
        for v in variant_rows:
            versions[v["experiment_id"]] += v["updates_folded"]
            variants.setdefault(v["experiment_id"], []).append(VariantSnapshot(
                name=v["name"], is_control=v["is_control"], weight=v["weight"], exposures=v["exposures"],
                conversions=v["conversions"], errors=v["errors"], value_sum=v["value_sum"],
                value_sum_sq=v["value_sum_sq"], latency=_sketch(v["latency_sketch"])))
        global_alerts = tuple(AlertInfo(a["id"], a["message"], a["created_at"], True)
                              for a in alert_rows if a["experiment_id"] is None)
        alerts: dict[int, list[AlertInfo]] = {}
        for a in alert_rows:
            if a["experiment_id"] is not None:
                info = AlertInfo(a["id"], a["message"], a["created_at"], False)
                alerts.setdefault(a["experiment_id"], []).append(info)
        active = {p["experiment_id"]: str(p["id"]) for p in promo_rows}
        in_guard = sum(1 for p in promo_rows if p["in_guard"])
        pairs = [(exp, ExperimentSnapshot(
            id=exp["id"], name=exp["name"], status=exp["status"], started_at=exp["started_at"],
            metric_type=exp["metric_type"], priority=exp["priority"],
            variants=tuple(variants.get(exp["id"], ())), now=now,
            active_promotion_id=active.get(exp["id"]),
            critical_alerts=tuple(sorted((*alerts.get(exp["id"], ()), *global_alerts),
                                         key=lambda a: a.created_at, reverse=True)),
            promotions_in_guard_window=in_guard,
        )) for exp in experiments]
        decided = await self._decide_snapshots(effective, pairs)
        return decided, {exp_id: Seen(version, read_snapshot) for exp_id, version in versions.items()}

    async def _decide_snapshots(
        self, effective: EffectiveConfig, pairs: list[tuple[Mapping[str, Any], ExperimentSnapshot]]
    ) -> list[tuple[Decision, AutoPromotionConfig]]:
        """Decide each (experiment row, snapshot); many at once share vectorised statistics."""
        analyses = _vectorised_analyses([e for e, _ in pairs], {s.id: list(s.variants) for _, s in pairs},
                                        effective.config) if len(pairs) > 50 else {}
        out: list[tuple[Decision, AutoPromotionConfig]] = []
        for i, (exp, snapshot) in enumerate(pairs):
            if i % 250 == 249:
                await anyio.lowlevel.checkpoint()  # thousands of decisions must not stall the event loop
            try:
                out.append(self._decide(snapshot, effective, exp["config"], analyses.get(snapshot.id)))
            except Exception as exc:
                why = f"evaluation failed: {type(exc).__name__}: {exc}"
                out.append((failed_decision(snapshot, effective.config, why), effective.config))
        return out


def _vectorised_analyses(experiments: list[Mapping[str, Any]], variants: Mapping[int, list[VariantSnapshot]],
                         cfg: AutoPromotionConfig) -> dict[int, ExperimentAnalysis]:
    """Statistics of many experiments in a few numpy calls (grouped by variant count and metric type).

    Only experiments under the base config with a control first and at least one treatment; any group the
    vectorised path refuses falls back to the scalar path (decide computes it), so results never differ.
    """
    groups: dict[tuple[int, str], list[tuple[int, list[VariantSnapshot]]]] = {}
    for exp in experiments:
        vs = variants.get(exp["id"], [])
        if exp["config"] or len(vs) < 2 or not vs[0].is_control or sum(v.is_control for v in vs) != 1:
            continue
        groups.setdefault((len(vs), exp["metric_type"]), []).append((exp["id"], vs))
    out: dict[int, ExperimentAnalysis] = {}
    for (_, metric_type), members in groups.items():
        exposures = [[v.exposures for v in vs] for _, vs in members]
        mean_metric = metric_type == "mean"
        try:
            many = analyze_many(
                exposures,
                None if mean_metric else [[v.conversions for v in vs] for _, vs in members],
                value_sum=[[v.value_sum for v in vs] for _, vs in members] if mean_metric else None,
                value_sum_sq=[[v.value_sum_sq for v in vs] for _, vs in members] if mean_metric else None,
                weights=[[v.weight for v in vs] for _, vs in members],
                metric_type="mean" if mean_metric else "conversion", method=cfg.method, alpha=cfg.alpha,
                n_star=cfg.sequential_tuning, correction=cfg.correction,
                srm_threshold=cfg.safety_checks.srm_threshold,
            )
        except StatsInputError:
            continue  # one impossible row spoils the batch: decide() reports each on its own
        for e, (exp_id, vs) in enumerate(members):
            out[exp_id] = many.experiment(e, [v.name for v in vs])
    return out


def _sketch(raw: Any) -> LatencySketch:
    try:
        return LatencySketch.from_json(raw or None)
    except StatsInputError:
        return LatencySketch()


def transient_db_error(exc: BaseException) -> bool:
    """True for a database error worth retrying as it is (worker.retry's one list), false for one that may be the
    data's."""
    return isinstance(exc, asyncpg.PostgresError) and is_transient(exc)


def _count_evaluation(decision: Decision) -> None:
    metrics.EVALUATIONS.labels("eligible" if decision.eligible else "not_eligible").inc()
    for check in decision.safety_checks:
        if not check.passed:
            metrics.SAFETY_CHECK_FAILURES.labels(check.name).inc()


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None

