"""Post-promotion guard: watch a promoted variant on what was recorded since its promotion, and roll it back (or,
with ``guard.autoRollback`` off, report it once) when it hurts.

``check_guard`` is pure: the promotion's baseline, the current totals, the alerts raised since and the config in,
the breaches out. ``PostPromotionGuard`` does the I/O around it: one query for every watched promotion, the
engine's transactional rollback, or an audited ``guard.breached`` notification recorded once per promotion and
metric (``ab_guard_breaches``) whichever replica sees it first.

What counts as a breach, in this order:

* a critical alert raised at or after ``promoted_at`` and still open, for the experiment **or global**. A global
  alert counts on purpose: an incident that starts right after a promotion is the moment to return to the state
  that was known to work, and the rollback only restores the experiment's previous traffic split;
* the promoted variant's error rate since the promotion above ``safetyChecks.maxErrorRate``, once it has at least
  ``guard.minSamples`` exposures since the promotion;
* the promoted variant's P95 latency since the promotion more than ``safetyChecks.maxLatencyDegradation`` % above
  the control's P95 *before* the promotion (from ``baseline_stats``; after it the control gets no traffic), once
  at least ``guard.minSamples`` latency samples were recorded since (a P95 of a handful of samples is noise).

"Since the promotion" is the current totals minus the baseline: counts subtract, latency sketches subtract
bucket-wise, so earlier data never dilutes what happened after.
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import asyncpg
import structlog

from worker import metrics
from worker.config import AutoPromotionConfig, ConfigError, EffectiveConfig, Settings, with_experiment_overrides
from worker.db.connect import json_safe
from worker.db.daemon_queries import DQ
from worker.db.queries import Q
from worker.decide import AlertInfo
from worker.engine import AlreadyRolledBack, Engine, PromotionNotFound
from worker.stats import LatencySketch, StatsInputError, latency_degradation

log = structlog.get_logger("worker.guard")

GuardMetric = Literal["error_rate", "latency", "critical_alert"]
GUARD_ACTOR = "autopromote-guard"


# ------------------------------------------------------------------------------------------------ pure core
@dataclass(frozen=True, slots=True)
class VariantTotals:
    """A variant's cumulative sufficient statistics at one moment (or the difference of two moments)."""

    exposures: int = 0
    conversions: int = 0
    errors: int = 0
    value_sum: float = 0.0
    value_sum_sq: float = 0.0
    latency: LatencySketch = field(default_factory=LatencySketch)

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> VariantTotals:
        """Parse the camelCase form of ``baseline_stats``; missing or malformed parts count as zero."""
        if not isinstance(d, Mapping):
            return cls()
        try:
            sketch = LatencySketch.from_json(d.get("latencySketch") or None)
        except StatsInputError:
            sketch = LatencySketch()
        return cls(_int(d.get("exposures")), _int(d.get("conversions")), _int(d.get("errors")),
                   _float(d.get("valueSum")), _float(d.get("valueSumSq")), sketch)

    def since(self, earlier: VariantTotals) -> VariantTotals:
        """What was added after ``earlier`` (clamped at zero, so a reset counter never goes negative)."""
        return VariantTotals(
            max(0, self.exposures - earlier.exposures), max(0, self.conversions - earlier.conversions),
            max(0, self.errors - earlier.errors), self.value_sum - earlier.value_sum,
            self.value_sum_sq - earlier.value_sum_sq, self.latency.subtract(earlier.latency),
        )


@dataclass(frozen=True, slots=True)
class GuardBreach:
    """One breached metric: a reason that names the metric and its numbers, and the numbers as data."""

    metric: GuardMetric
    reason: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WatchedPromotion:
    """What the guard needs to know about one active promotion."""

    promotion_id: str
    experiment_id: int
    experiment_name: str
    promoted_variant: str
    control_variant: str | None
    promoted_at: datetime
    baseline: Mapping[str, VariantTotals]
    current: Mapping[str, VariantTotals]
    new_alerts: tuple[AlertInfo, ...] = ()


def check_guard(watch: WatchedPromotion, config: AutoPromotionConfig) -> list[GuardBreach]:
    """Every breached metric of one promotion, most urgent first; an empty list when all is well.

    Pure. A promotion without a baseline for its variant treats all data as recorded since the promotion; without
    a control baseline latency is not judged.
    """
    breaches: list[GuardBreach] = []
    g, sc = config.guard, config.safety_checks
    variant = watch.promoted_variant

    for alert in watch.new_alerts:
        scope = "global" if alert.global_alert else "experiment"
        breaches.append(GuardBreach(
            "critical_alert",
            f"guard: critical {scope} alert #{alert.id} raised after the promotion of {variant}: "
            f"{alert.message[:200]!r}",
            {"alertId": alert.id, "scope": scope, "message": alert.message[:500],
             "alertCreatedAt": alert.created_at.isoformat(), "promotedAt": watch.promoted_at.isoformat()},
        ))
        break  # one alert is enough to say why; the rest are in the alerts table

    now = watch.current.get(variant, VariantTotals())
    since = now.since(watch.baseline.get(variant, VariantTotals()))
    if since.exposures >= g.min_samples and since.exposures > 0:
        rate = since.errors / since.exposures
        if rate > sc.max_error_rate:
            breaches.append(GuardBreach(
                "error_rate",
                f"guard: error rate of {variant} since the promotion is {_pct(rate)} "
                f"({since.errors:,} errors in {since.exposures:,} exposures), above the "
                f"{_pct(sc.max_error_rate)} maximum",
                {"errorRate": rate, "errors": since.errors, "exposures": since.exposures,
                 "maxErrorRate": sc.max_error_rate, "minSamples": g.min_samples},
            ))

    control = watch.baseline.get(watch.control_variant) if watch.control_variant else None
    if control is not None and control.latency.count and since.latency.count >= g.min_samples:
        c95 = control.latency.p95() or 0.0
        t95 = since.latency.p95() or 0.0
        degradation = latency_degradation(c95, t95)
        if degradation > sc.max_latency_degradation:
            shown = "unbounded" if math.isinf(degradation) else f"{degradation:+.1f}%"
            breaches.append(GuardBreach(
                "latency",
                f"guard: P95 latency of {variant} since the promotion is {t95:.1f} ms, {shown} over the control's "
                f"pre-promotion P95 of {c95:.1f} ms (max +{sc.max_latency_degradation:g}%)",
                {"p95Ms": t95, "controlP95Ms": c95,
                 "degradationPct": None if math.isinf(degradation) else degradation,
                 "maxLatencyDegradationPct": sc.max_latency_degradation, "samples": since.latency.count,
                 "controlSamples": control.latency.count},
            ))
    return breaches


def _int(x: Any) -> int:
    try:
        return max(0, int(x)) if x is not None and not isinstance(x, bool) else 0
    except (TypeError, ValueError):
        return 0


def _float(x: Any) -> float:
    try:
        v = float(x) if x is not None and not isinstance(x, bool) else 0.0
    except (TypeError, ValueError):
        return 0.0
    return v if math.isfinite(v) else 0.0


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


# ---------------------------------------------------------------------------------------------------- I/O
@dataclass(frozen=True, slots=True)
class GuardOutcome:
    """What the guard did about one promotion: rolled_back, notified, or nothing (already handled elsewhere)."""

    promotion_id: str
    experiment_name: str
    action: Literal["rolled_back", "notified", "none"]
    breaches: tuple[GuardBreach, ...]


def _watched(row: Mapping[str, Any]) -> WatchedPromotion:
    baseline_raw = row["baseline_stats"] if isinstance(row["baseline_stats"], Mapping) else {}
    current_raw = row["current_stats"] if isinstance(row["current_stats"], Mapping) else {}
    alerts = tuple(
        AlertInfo(int(a["id"]), str(a["message"]), datetime.fromisoformat(str(a["created_at"])), bool(a["global"]))
        for a in (row["new_alerts"] or ())
    )
    return WatchedPromotion(
        promotion_id=str(row["id"]), experiment_id=int(row["experiment_id"]),
        experiment_name=row["experiment_name"], promoted_variant=row["promoted_variant_name"],
        control_variant=row["control_variant_name"], promoted_at=row["promoted_at"],
        baseline={name: VariantTotals.from_json(v) for name, v in baseline_raw.items()},
        current={name: VariantTotals.from_json(v) for name, v in current_raw.items()},
        new_alerts=alerts,
    )


def default_identity() -> str:
    """host:pid:random: names this process in leases and breach records."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class PostPromotionGuard:
    """Checks watched promotions and acts on breaches; safe to run on every replica at once."""

    def __init__(self, pool: asyncpg.Pool, engine: Engine, settings: Settings, config: EffectiveConfig,
                 *, identity: str | None = None) -> None:
        self.pool = pool
        self.engine = engine
        self.settings = settings
        self.config = config
        self.identity = identity or default_identity()

    async def check(self, experiment_ids: Sequence[int] | None = None) -> list[GuardOutcome]:
        """Check every promotion inside its guard window (or only those of ``experiment_ids``) and act."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(DQ["guarded_promotions"],
                                    None if experiment_ids is None else list(experiment_ids))
        outcomes: list[GuardOutcome] = []
        for row in rows:
            watch = _watched(row)
            cfg = self._config_for(row["config"])
            breaches = check_guard(watch, cfg)
            if not breaches:
                continue
            with structlog.contextvars.bound_contextvars(experiment=watch.experiment_name):
                if cfg.guard.auto_rollback:
                    outcomes.append(await self._roll_back(watch, breaches))
                else:
                    reported = set(row["reported_metrics"] or ())
                    fresh = [b for b in breaches if b.metric not in reported]
                    if fresh:
                        outcomes.append(await self._report(watch, row, fresh, cfg))
        return outcomes

    def _config_for(self, experiment_config: Mapping[str, Any] | None) -> AutoPromotionConfig:
        try:
            return with_experiment_overrides(self.config, experiment_config)
        except ConfigError:
            return self.config.config

    async def _roll_back(self, watch: WatchedPromotion, breaches: list[GuardBreach]) -> GuardOutcome:
        reason = "; ".join(b.reason for b in breaches)
        try:
            await self.engine.rollback_promotion(
                watch.promotion_id, reason, actor=GUARD_ACTOR, trigger="guard",
                details={"guard": [{"metric": b.metric, **b.details} for b in breaches]},
            )
        except (AlreadyRolledBack, PromotionNotFound):
            # Another replica (or a person) got there first: nothing left to do.
            return GuardOutcome(watch.promotion_id, watch.experiment_name, "none", tuple(breaches))
        for b in breaches:
            metrics.GUARD_BREACHES.labels(b.metric).inc()
        log.warning("guard.breached", promotion_id=watch.promotion_id, variant=watch.promoted_variant,
                    metrics=[b.metric for b in breaches], reason=reason, action="rolled_back")
        return GuardOutcome(watch.promotion_id, watch.experiment_name, "rolled_back", tuple(breaches))

    async def _report(self, watch: WatchedPromotion, row: Mapping[str, Any], breaches: list[GuardBreach],
                      cfg: AutoPromotionConfig) -> GuardOutcome:
        from worker.notify import enqueue_notifications

        reported: list[GuardBreach] = []
        pid = uuid.UUID(watch.promotion_id)
        async with self.pool.acquire() as conn, conn.transaction():
            for b in breaches:
                first = await conn.fetchval(DQ["record_guard_breach"], pid, b.metric, self.identity, b.reason,
                                            json_safe(b.details))
                if first is None:
                    continue  # another replica reported this one
                await conn.execute(Q["insert_audit"], GUARD_ACTOR, "guard_breached", watch.experiment_id,
                                   watch.experiment_name, pid,
                                   json_safe({"metric": b.metric, "reason": b.reason, **b.details,
                                               "autoRollback": False}))
                await enqueue_notifications(conn, event="guard.breached",
                                            payload=self._payload(watch, row, b), config=cfg,
                                            settings=self.settings)
                reported.append(b)
        for b in reported:
            metrics.GUARD_BREACHES.labels(b.metric).inc()
            log.warning("guard.breached", promotion_id=watch.promotion_id, variant=watch.promoted_variant,
                        metric=b.metric, reason=b.reason, action="notified")
        return GuardOutcome(watch.promotion_id, watch.experiment_name, "notified" if reported else "none",
                            tuple(reported))

    def _payload(self, watch: WatchedPromotion, row: Mapping[str, Any], breach: GuardBreach) -> dict[str, Any]:
        """The same payload shape the engine writes for its events, plus the breached metric."""
        variants = []
        for name, now in watch.current.items():
            since = now.since(watch.baseline.get(name, VariantTotals()))
            p95 = since.latency.p95() if since.latency.count else None
            variants.append({
                "name": name, "isControl": name == watch.control_variant, "exposures": since.exposures,
                "conversions": since.conversions,
                "rate": since.conversions / since.exposures if since.exposures else None,
                "errors": since.errors, "errorRate": since.errors / since.exposures if since.exposures else None,
                "p95LatencyMs": p95, "latencySamples": since.latency.count, "sincePromotion": True,
            })
        payload: dict[str, Any] = json_safe({
            "event": "guard.breached",
            "experimentName": watch.experiment_name,
            "priority": row["priority"],
            "promotionId": watch.promotion_id,
            "occurredAt": row["now"].isoformat(),
            "actor": GUARD_ACTOR,
            "variant": watch.promoted_variant,
            "controlVariant": watch.control_variant,
            "confidence": row["confidence"],
            "improvement": row["improvement"],
            "method": row["method"],
            "safetyChecks": [],
            "reason": breach.reason,
            "variants": variants,
            "dryRun": False,
            "metric": breach.metric,
            "guard": breach.details,
            "promotedAt": watch.promoted_at.isoformat(),
        })
        return payload


