"""The guard's rule, pure: a promotion's baseline, the current totals, the alerts raised since and the config in,
the breaches out. worker.services.guard does the I/O around it.

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from worker.config import AutoPromotionConfig
from worker.decide import AlertInfo
from worker.stats import LatencySketch, StatsInputError, latency_degradation

GuardMetric = Literal["error_rate", "latency", "critical_alert"]


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
        return cls(
            _int(d.get("exposures")),
            _int(d.get("conversions")),
            _int(d.get("errors")),
            _float(d.get("valueSum")),
            _float(d.get("valueSumSq")),
            sketch,
        )

    def since(self, earlier: VariantTotals) -> VariantTotals:
        """What was added after ``earlier`` (clamped at zero, so a reset counter never goes negative)."""
        return VariantTotals(
            max(0, self.exposures - earlier.exposures),
            max(0, self.conversions - earlier.conversions),
            max(0, self.errors - earlier.errors),
            self.value_sum - earlier.value_sum,
            self.value_sum_sq - earlier.value_sum_sq,
            self.latency.subtract(earlier.latency),
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
        breaches.append(
            GuardBreach(
                "critical_alert",
                f"guard: critical {scope} alert #{alert.id} raised after the promotion of {variant}: "
                f"{alert.message[:200]!r}",
                {
                    "alertId": alert.id,
                    "scope": scope,
                    "message": alert.message[:500],
                    "alertCreatedAt": alert.created_at.isoformat(),
                    "promotedAt": watch.promoted_at.isoformat(),
                },
            )
        )
        break  # one alert is enough to say why; the rest are in the alerts table

    now = watch.current.get(variant, VariantTotals())
    since = now.since(watch.baseline.get(variant, VariantTotals()))
    if since.exposures >= g.min_samples and since.exposures > 0:
        rate = since.errors / since.exposures
        if rate > sc.max_error_rate:
            breaches.append(
                GuardBreach(
                    "error_rate",
                    f"guard: error rate of {variant} since the promotion is {_pct(rate)} "
                    f"({since.errors:,} errors in {since.exposures:,} exposures), above the "
                    f"{_pct(sc.max_error_rate)} maximum",
                    {
                        "errorRate": rate,
                        "errors": since.errors,
                        "exposures": since.exposures,
                        "maxErrorRate": sc.max_error_rate,
                        "minSamples": g.min_samples,
                    },
                )
            )

    control = watch.baseline.get(watch.control_variant) if watch.control_variant else None
    if control is not None and control.latency.count and since.latency.count >= g.min_samples:
        c95 = control.latency.p95() or 0.0
        t95 = since.latency.p95() or 0.0
        degradation = latency_degradation(c95, t95)
        if degradation > sc.max_latency_degradation:
            shown = "unbounded" if math.isinf(degradation) else f"{degradation:+.1f}%"
            breaches.append(
                GuardBreach(
                    "latency",
                    f"guard: P95 latency of {variant} since the promotion is {t95:.1f} ms, {shown} over the control's "
                    f"pre-promotion P95 of {c95:.1f} ms (max +{sc.max_latency_degradation:g}%)",
                    {
                        "p95Ms": t95,
                        "controlP95Ms": c95,
                        "degradationPct": None if math.isinf(degradation) else degradation,
                        "maxLatencyDegradationPct": sc.max_latency_degradation,
                        "samples": since.latency.count,
                        "controlSamples": control.latency.count,
                    },
                )
            )
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


def watched_from_row(row: Mapping[str, Any]) -> WatchedPromotion:
    """From a ``guarded_promotions`` row (daemon.sql)."""
    baseline_raw = row["baseline_stats"] if isinstance(row["baseline_stats"], Mapping) else {}
    current_raw = row["current_stats"] if isinstance(row["current_stats"], Mapping) else {}
    return WatchedPromotion(
        promotion_id=str(row["id"]),
        experiment_id=int(row["experiment_id"]),
        experiment_name=row["experiment_name"],
        promoted_variant=row["promoted_variant_name"],
        control_variant=row["control_variant_name"],
        promoted_at=row["promoted_at"],
        baseline={name: VariantTotals.from_json(v) for name, v in baseline_raw.items()},
        current={name: VariantTotals.from_json(v) for name, v in current_raw.items()},
        new_alerts=tuple(AlertInfo.from_row(a) for a in (row["new_alerts"] or ())),
    )


def since_promotion_json(watch: WatchedPromotion) -> list[dict[str, Any]]:
    """Each variant's numbers since the promotion, in the shape of a notification's ``variants``."""
    variants = []
    for name, now in watch.current.items():
        since = now.since(watch.baseline.get(name, VariantTotals()))
        p95 = since.latency.p95() if since.latency.count else None
        variants.append(
            {
                "name": name,
                "isControl": name == watch.control_variant,
                "exposures": since.exposures,
                "conversions": since.conversions,
                "rate": since.conversions / since.exposures if since.exposures else None,
                "errors": since.errors,
                "errorRate": since.errors / since.exposures if since.exposures else None,
                "p95LatencyMs": p95,
                "latencySamples": since.latency.count,
                "sincePromotion": True,
            }
        )
    return variants
