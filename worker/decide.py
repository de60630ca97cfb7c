"""The promotion decision: a snapshot of one experiment + the effective config + the clock -> Decision.

Pure: no database, no network, no global state. ``worker/services`` load snapshots and act on decisions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from worker.config import AutoPromotionConfig
from worker.domain.metric_rule import analyze_metrics, builtin_definition, rule, single_metric_analysis
from worker.domain.metrics import BUILTIN_METRIC, MetricDefinition, MetricSnapshot, MetricSums, metric_snapshots
from worker.domain.tuning import sequential_n_star
from worker.stats import (
    Comparison,
    ExperimentAnalysis,
    LatencySketch,
    StatsInputError,
    VariantStats,
    analyze_experiment,
    error_rate_test,
    latency_degradation,
)
from worker.stats.metrics import MetricAnalysis

Severity = Literal["info", "warning", "critical"]

ERROR_RATE_CHECK = "Error Rate Check"
LATENCY_CHECK = "Latency Check"
TRAFFIC_BALANCE_CHECK = "Traffic Balance Check"
CRITICAL_ALERTS_CHECK = "Critical Alerts Check"


@dataclass(frozen=True, slots=True)
class VariantSnapshot:
    name: str
    is_control: bool
    weight: float
    exposures: int
    conversions: int
    errors: int
    value_sum: float
    value_sum_sq: float
    latency: LatencySketch
    # The built-in metric's CUPED covariate (schema/0009): pre_units of the exposures came with a pre-exposure
    # value; the pre_* sums are over those units (None while none did).
    pre_units: int = 0
    pre_sum: float | None = None
    pre_sum_sq: float | None = None
    pre_value_product_sum: float | None = None

    @classmethod
    def from_row(cls, v: Mapping[str, Any], *, lenient_sketch: bool = False) -> VariantSnapshot:
        """From a variant row or its JSON form (name, is_control, weight, exposures, conversions, errors, value_sum,
        value_sum_sq, latency_sketch). ``lenient_sketch``: a malformed sketch counts as empty instead of raising
        StatsInputError (the bulk reads, where one bad row must not spoil the batch)."""
        try:
            sketch = LatencySketch.from_json(v["latency_sketch"] or None)
        except StatsInputError:
            if not lenient_sketch:
                raise
            sketch = LatencySketch()
        return cls(
            name=v["name"],
            is_control=bool(v["is_control"]),
            weight=float(v["weight"]),
            exposures=int(v["exposures"]),
            conversions=int(v["conversions"]),
            errors=int(v["errors"]),
            value_sum=float(v["value_sum"]),
            value_sum_sq=float(v["value_sum_sq"]),
            latency=sketch,
            pre_units=int(v.get("pre_units") or 0),
            pre_sum=_opt_float(v.get("pre_sum")),
            pre_sum_sq=_opt_float(v.get("pre_sum_sq")),
            pre_value_product_sum=_opt_float(v.get("pre_value_product_sum")),
        )

    def to_stats(self) -> VariantStats:
        return VariantStats(
            name=self.name,
            is_control=self.is_control,
            exposures=self.exposures,
            conversions=self.conversions,
            value_sum=self.value_sum,
            value_sum_sq=self.value_sum_sq,
            errors=self.errors,
            weight=self.weight,
            latency=self.latency if self.latency.count else None,
        )


@dataclass(frozen=True, slots=True)
class AlertInfo:
    id: int
    message: str
    created_at: datetime
    global_alert: bool

    @classmethod
    def from_row(cls, a: Mapping[str, Any], *, global_alert: bool | None = None) -> AlertInfo:
        """From an alert row or its JSON form (id, message, created_at as a datetime or ISO text, and ``global``
        unless ``global_alert`` says it)."""
        created = a["created_at"]
        if not isinstance(created, datetime):
            created = datetime.fromisoformat(str(created))
        scope = bool(a["global"]) if global_alert is None else global_alert
        return cls(int(a["id"]), str(a["message"]), created, scope)


@dataclass(frozen=True, slots=True)
class ExperimentSnapshot:
    """Everything the decision looks at, read in one consistent moment."""

    id: int
    name: str
    status: str
    started_at: datetime | None
    metric_type: Literal["conversion", "mean"]
    priority: str
    variants: tuple[VariantSnapshot, ...]
    now: datetime
    active_promotion_id: str | None = None
    critical_alerts: tuple[AlertInfo, ...] = ()
    promotions_in_guard_window: int = 0
    metrics: tuple[MetricSnapshot, ...] = ()
    """The ``ab_metrics`` rows with their sums (a row named ``primary`` has none: its sums are ``variants``)."""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ExperimentSnapshot:
        """From an ``experiment_snapshot`` row (queries.sql): variants and critical alerts as JSON arrays."""
        active = row["active_promotion_id"]
        return cls(
            id=row["id"],
            name=row["name"],
            status=row["status"],
            started_at=row["started_at"],
            metric_type=row["metric_type"],
            priority=row["priority"],
            variants=tuple(VariantSnapshot.from_row(v) for v in row["variants"]),
            now=row["now"],
            active_promotion_id=str(active) if active is not None else None,
            critical_alerts=tuple(AlertInfo.from_row(a) for a in row["critical_alerts"]),
            promotions_in_guard_window=int(row["promotions_in_guard_window"]),
            metrics=metric_snapshots(row.get("metrics")),
        )


@dataclass(frozen=True, slots=True)
class SafetyCheck:
    name: str
    passed: bool
    message: str
    severity: Severity

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "message": self.message, "severity": self.severity}


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one experiment: eligible or not, and every reason why not, with numbers."""

    experiment_id: int
    experiment_name: str
    eligible: bool
    reasons: tuple[str, ...]
    safety_checks: tuple[SafetyCheck, ...]
    winner: Comparison | None
    best: Comparison | None
    analysis: ExperimentAnalysis | None
    variants: tuple[VariantSnapshot, ...]
    method: str
    metric_type: str
    priority: str
    evaluated_at: datetime
    extra: dict[str, Any] = field(default_factory=dict)
    n_star: float | None = None
    """The confidence sequence's N* the sequential tests used (None for the fixed method or no test)."""
    metrics: tuple[MetricAnalysis, ...] = ()
    """Every metric's analysis, the built-in ``primary`` first (check data ``metrics``)."""

    @property
    def candidate(self) -> Comparison | None:
        """The winner if any, else the best treatment: what a person wants to see numbers for."""
        return self.winner or self.best

    @property
    def confidence(self) -> float:
        c = self.candidate
        return _round(c.confidence) if c is not None else 0.0

    @property
    def improvement(self) -> float:
        c = self.candidate
        return _round(c.improvement) if c is not None and c.improvement is not None else 0.0

    def variant(self, name: str) -> VariantSnapshot | None:
        return next((v for v in self.variants if v.name == name), None)

    def guardrails_json(self, variant: str | None = None) -> list[dict[str, Any]]:
        """Each guardrail's verdict for ``variant`` (default: the winner, else the best treatment), as the
        notifications list them: lift and bound in percent, the bound the one-sided one on the bad side."""
        name = variant if variant is not None else (self.candidate.variant if self.candidate is not None else None)
        out: list[dict[str, Any]] = []
        for m in self.metrics:
            c = m.comparison(name) if m.role == "guardrail" and name is not None else None
            if c is None:
                continue
            ni = c.non_inferiority
            out.append(
                {
                    "name": m.name,
                    "variant": c.variant,
                    "verdict": c.verdict,
                    "direction": m.direction,
                    "margin": m.margin,
                    "lift": _pct_or_none(c.lift),
                    "bound": _pct_or_none(ni.bound if ni is not None else None),
                    "pValue": _round(c.p_value, 8),
                }
            )
        return out

    def variant_stats_json(self) -> list[dict[str, Any]]:
        """Per-variant statistics as the API, audit log and notifications show them."""
        out: list[dict[str, Any]] = []
        comparisons = {c.variant: c for c in (self.analysis.comparisons if self.analysis else ())}
        for v in self.variants:
            rate = _rate(v, self.metric_type)
            p95 = v.latency.p95() if v.latency.count else None
            item: dict[str, Any] = {
                "name": v.name,
                "isControl": v.is_control,
                "weight": v.weight,
                "exposures": v.exposures,
                "conversions": v.conversions,
                "rate": _round(rate, 6),
                "errors": v.errors,
                "errorRate": _round(v.errors / v.exposures, 6) if v.exposures else None,
                "p95LatencyMs": _round(p95, 3) if p95 is not None else None,
                "latencySamples": v.latency.count,
            }
            if self.metric_type == "mean":
                item["valueSum"] = v.value_sum
                item["valueSumSq"] = v.value_sum_sq
            c = comparisons.get(v.name)
            if c is not None:
                item.update(
                    {
                        "lift": _round(c.lift, 6) if c.lift is not None else None,
                        "se": float(f"{c.se:.6g}") if c.se is not None and math.isfinite(c.se) else None,
                        "ciLow": _round(c.ci_low, 6) if c.ci_low is not None else None,
                        "ciHigh": _round(c.ci_high, 6) if c.ci_high is not None else None,
                        "pValue": _round(c.p_value, 8),
                        "adjustedP": _round(c.adjusted_p, 8),
                        "confidence": _round(c.confidence),
                        "improvement": _round(c.improvement) if c.improvement is not None else None,
                        "significant": c.significant,
                        "note": c.reason,
                    }
                )
            out.append(item)
        return out

    def to_check_data(self) -> dict[str, Any]:
        """The seed's ``check`` response ``data``, plus per-variant statistics and the method."""
        winner = self.winner if self.eligible or self.winner is not None else None
        winning_variant = None
        if winner is not None:
            v = self.variant(winner.variant)
            if v is not None:
                winning_variant = {
                    "variantName": v.name,
                    "successRate": _round(_rate(v, self.metric_type), 6),
                    "sampleSize": v.exposures,
                }
        best = self.candidate
        srm = self.analysis.srm if self.analysis is not None else None
        return {
            "eligible": self.eligible,
            "experimentName": self.experiment_name,
            "winningVariant": winning_variant,
            "confidence": self.confidence,
            "improvement": self.improvement,
            "safetyChecks": [c.to_json() for c in self.safety_checks],
            "reasons": list(self.reasons),
            "bestVariant": best.variant if best is not None else None,
            "controlVariant": self.analysis.control if self.analysis is not None else _control_name(self.variants),
            "method": self.method,
            "nStar": None if self.n_star is None else round(self.n_star, 1),
            "metricType": self.metric_type,
            "priority": self.priority,
            "variants": self.variant_stats_json(),
            "srm": None if srm is None else {"pValue": _round(srm.p_value, 10), "flagged": srm.flagged},
            "evaluatedAt": self.evaluated_at.isoformat(),
            "metrics": [metric_json(m) for m in self.metrics],
            "notes": [m.cuped_note for m in self.metrics if m.cuped_note],
        }


def _pct_or_none(x: float | None) -> float | None:
    return None if x is None else _round(100.0 * x)


def _quick_round(x: float, scale: float) -> float:
    """x rounded to 1/scale for display, without round(x, n)'s exact decimal rounding (the scan writes tens of
    thousands of these); NaN, the infinities and huge values as _round."""
    y = x * scale
    if -9e15 < y < 9e15:
        return round(y) / scale
    return _round(x, 8)


def metric_json(m: MetricAnalysis) -> dict[str, Any]:
    """One ``metrics`` entry of the check data: lift and interval in percent (like ``improvement``, the lift
    rounded exactly as it); pValue the raw two-sided one, or the one-sided non-inferiority p-value for guardrails."""
    return {
        "name": m.name,
        "role": m.role,
        "kind": m.kind,
        "direction": m.direction,
        "margin": m.margin,
        "control": {"variant": m.control, "units": m.control_units, "mean": _quick_round(m.control_mean, 1e6)},
        "treatments": [
            {
                "variant": c.variant,
                "units": c.units,
                "mean": _quick_round(c.mean, 1e6),
                "lift": _pct_or_none(c.lift),
                "interval": None
                if c.effect.ci_low is None or c.effect.ci_high is None
                else [_quick_round(100.0 * c.effect.ci_low, 1e4), _quick_round(100.0 * c.effect.ci_high, 1e4)],
                "pValue": _quick_round(c.p_value, 1e8),
                "verdict": c.verdict,
                "unadjustedLift": _pct_or_none(c.unadjusted_lift),
                "varianceReduction": None if c.variance_reduction is None else _round(c.variance_reduction),
            }
            for c in m.comparisons
        ],
    }


def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)


def _round(x: float | None, digits: int = 4) -> float:
    if x is None or not math.isfinite(x):
        return 0.0 if x is None or math.isnan(x) else (1e308 if x > 0 else -1e308)
    return round(x, digits)


def _rate(v: VariantSnapshot, metric_type: str) -> float:
    if v.exposures <= 0:
        return 0.0
    if metric_type == "mean":
        return v.value_sum / v.exposures
    return v.conversions / v.exposures


def _control_name(variants: tuple[VariantSnapshot, ...]) -> str | None:
    return next((v.name for v in variants if v.is_control), None)


def _pct(x: float, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f}%"


def _p(p: float) -> str:
    """A p-value for people: "= 0.0123", "= 4.2e-05", or "< 1e-300" where floating point runs out."""
    return "< 1e-300" if p < 1e-300 else f"= {p:.2g}"


def _fmt_num(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.2f}".rstrip("0").rstrip(".")


def experiment_n_star(snapshot: ExperimentSnapshot, config: AutoPromotionConfig) -> float:
    """The confidence sequence's N* for this experiment: the configured number, or auto's (domain/tuning.py)."""
    if not isinstance(config.sequential_tuning, str):
        return float(config.sequential_tuning)
    control = next((v for v in snapshot.variants if v.is_control), None)
    builtin = builtin_definition(snapshot.metric_type, snapshot.metrics)
    primaries = (builtin.role == "primary") + sum(
        m.definition.role == "primary" for m in snapshot.metrics if m.name != BUILTIN_METRIC
    )
    return sequential_n_star(
        config,
        snapshot.metric_type,
        None if control is None else control.to_stats(),
        sum(not v.is_control for v in snapshot.variants),
        primaries,
    )


def decide(
    snapshot: ExperimentSnapshot,
    config: AutoPromotionConfig,
    analysis: ExperimentAnalysis | None = None,
    metrics: tuple[MetricAnalysis, ...] | None = None,
) -> Decision:
    """Evaluate every eligibility criterion; each one that fails adds a reason that names its numbers.

    ``analysis`` and ``metrics`` may pass the statistics already computed for this snapshot and config (the scan's
    vectorised path: ``metrics`` is analyze_metrics of the snapshot's definitions); otherwise they are computed
    here. Raises StatsInputError only when the recorded statistics are
    impossible (e.g. conversions > exposures).
    """
    precomputed = analysis
    reasons: list[str] = []
    t = config.thresholds
    if snapshot.status != "running":
        reasons.append(f"status is '{snapshot.status}', not 'running'")
    pattern = config.is_excluded(snapshot.name)
    if pattern is not None:
        reasons.append(
            "excluded by configuration"
            + (f" (pattern '{pattern}')" if pattern != snapshot.name else " (excludedExperiments)")
        )
    control = next((v for v in snapshot.variants if v.is_control), None)
    treatments = [v for v in snapshot.variants if not v.is_control]
    analysis = None
    winner: Comparison | None = None
    best: Comparison | None = None
    judged: tuple[MetricAnalysis, ...] = ()
    oriented: float | None = None  # the winner's improvement in its deciding metric's good direction
    if control is None or not treatments:
        reasons.append(
            "experiment has no control variant" if control is None else "experiment has no treatment variant"
        )
    else:
        analysis = precomputed or analyze_experiment(
            [control.to_stats(), *(v.to_stats() for v in treatments)],
            metric_type=snapshot.metric_type,
            method=config.method,
            alpha=config.alpha,
            n_star=experiment_n_star(snapshot, config),
            correction=config.correction,
            srm_threshold=config.safety_checks.srm_threshold,
        )
        winner, best, judged, oriented = _judge(snapshot, config, analysis, control, treatments, reasons, metrics)
    candidate = winner or best
    cand_snap = next((v for v in treatments if candidate is not None and v.name == candidate.variant), None)
    if cand_snap is not None and control is not None:
        for v in (cand_snap, control):
            if v.exposures < t.min_sample_size:
                reasons.append(f"sample size {v.exposures:,} < {t.min_sample_size:,} for {v.name}")
    if snapshot.started_at is None:
        reasons.append("experiment has no started_at; runtime unknown")
    else:
        hours = (snapshot.now - snapshot.started_at).total_seconds() / 3600.0
        if hours < t.min_runtime_hours:
            reasons.append(f"runtime {hours:.1f} h < {_fmt_num(t.min_runtime_hours)} h minimum")
    if snapshot.active_promotion_id is not None:
        reasons.append(f"experiment already has an active promotion ({snapshot.active_promotion_id})")
    if oriented is not None and oriented < t.min_improvement:
        reasons.append(f"improvement {oriented:.2f}% < {_fmt_num(t.min_improvement)}% minimum")
    if snapshot.promotions_in_guard_window >= config.max_concurrent_promotions:
        reasons.append(
            f"concurrency limit: {snapshot.promotions_in_guard_window} promotion(s) inside their guard window "
            f"(maxConcurrentPromotions {config.max_concurrent_promotions})"
        )
    checks = run_safety_checks(snapshot, config, analysis, cand_snap, control)
    for check in checks:
        if not check.passed:
            reasons.append(f"safety check failed: {check.name}: {check.message}")
    eligible = not reasons and winner is not None
    return Decision(
        experiment_id=snapshot.id,
        experiment_name=snapshot.name,
        eligible=eligible,
        reasons=tuple(reasons),
        safety_checks=tuple(checks),
        winner=winner,
        best=best,
        analysis=analysis,
        variants=snapshot.variants,
        method=config.method,
        metric_type=snapshot.metric_type,
        priority=snapshot.priority,
        evaluated_at=snapshot.now,
        metrics=judged,
        n_star=experiment_n_star(snapshot, config) if analysis is not None and config.method == "sequential" else None,
    )


def _judge(
    snapshot: ExperimentSnapshot,
    config: AutoPromotionConfig,
    analysis: ExperimentAnalysis,
    control: VariantSnapshot,
    treatments: list[VariantSnapshot],
    reasons: list[str],
    precomputed: tuple[MetricAnalysis, ...] | None = None,
) -> tuple[Comparison | None, Comparison | None, tuple[MetricAnalysis, ...], float | None]:
    """The winner and the best treatment, every metric's analysis, and the winner's improvement in its deciding
    metric's good direction; appends why there is no winner to ``reasons``.

    Without ``ab_metrics`` rows: the single-metric rule on ``analysis``, exactly as before. With them, or when the
    built-in metric got CUPED covariates (so that its analysis is the adjusted one, or says why not): the
    several-metrics rule (domain/metric_rule.py), the built-in metric analysed beside the rows' metrics."""
    t = config.thresholds
    if not snapshot.metrics and not any(v.pre_units for v in snapshot.variants):
        winner = analysis.winner()
        best = analysis.best()
        metrics: tuple[MetricAnalysis, ...] = (
            single_metric_analysis(analysis, {v.name: v.exposures for v in snapshot.variants}),
        )
        if winner is None:
            if best is not None and best.lift is None:
                reasons.append(f"no winner: {best.reason or 'lift undefined'}")
            elif best is not None:
                imp = best.improvement if best.improvement is not None else 0.0
                reasons.append(
                    f"no treatment beats control at {t.min_confidence:g}% confidence "
                    f"(best: {best.variant} at {best.confidence:.2f}% confidence, {imp:+.2f}%)"
                )
        return winner, best, metrics, winner.improvement if winner is not None else None
    names = [v.name for v in treatments]
    metrics = precomputed or analyze_metrics(
        metric_definitions(snapshot),
        control.name,
        names,
        method=config.method,
        alpha=config.alpha,
        n_star=experiment_n_star(snapshot, config),
        correction=config.correction,
    )
    ruling = rule(metrics, names, t.min_confidence)
    reasons.extend(ruling.reasons)
    oriented = None
    if ruling.winner is not None and ruling.deciding is not None and ruling.winner.improvement is not None:
        oriented = ruling.winner.improvement * (1.0 if ruling.deciding.direction == "increase" else -1.0)
    return ruling.winner, ruling.candidate, metrics, oriented


def metric_definitions(snapshot: ExperimentSnapshot) -> list[tuple[MetricDefinition, Mapping[str, MetricSums]]]:
    """The built-in metric (its sums from the variants' statistics) first, then each ``ab_metrics`` row's."""
    builtin = builtin_definition(snapshot.metric_type, snapshot.metrics)
    conversion = snapshot.metric_type == "conversion"
    sums = {
        v.name: MetricSums(
            units=v.exposures,
            value_sum=float(v.conversions) if conversion else v.value_sum,
            value_sum_sq=float(v.conversions) if conversion else v.value_sum_sq,
            pre_units=v.pre_units,
            pre_sum=v.pre_sum,
            pre_sum_sq=v.pre_sum_sq,
            pre_value_product_sum=v.pre_value_product_sum,
        )
        for v in snapshot.variants
    }
    out: list[tuple[MetricDefinition, Mapping[str, MetricSums]]] = [(builtin, sums)]
    out.extend((m.definition, m.sums) for m in snapshot.metrics if m.name != BUILTIN_METRIC)
    return out


def run_safety_checks(
    snapshot: ExperimentSnapshot,
    config: AutoPromotionConfig,
    analysis: ExperimentAnalysis | None,
    candidate: VariantSnapshot | None,
    control: VariantSnapshot | None,
) -> list[SafetyCheck]:
    """The four safety checks of the seed, against the candidate (winner, else best treatment)."""
    sc = config.safety_checks
    missing: Severity = "critical" if sc.fail_on_missing_data else "warning"
    missing_passes = not sc.fail_on_missing_data
    checks: list[SafetyCheck] = []

    # Error Rate Check
    if candidate is None or control is None:
        checks.append(SafetyCheck(ERROR_RATE_CHECK, missing_passes, "no treatment to check", missing))
    elif candidate.exposures == 0:
        checks.append(
            SafetyCheck(ERROR_RATE_CHECK, missing_passes, f"no exposures recorded for {candidate.name}", missing)
        )
    else:
        rate = candidate.errors / candidate.exposures
        result = error_rate_test(
            control.to_stats(),
            candidate.to_stats(),
            method=config.method,
            alpha=config.alpha,
            n_star=experiment_n_star(snapshot, config),
        )
        base = f"Winner error rate: {_pct(rate)} (control {_pct(result.control_rate)})"
        if rate > sc.max_error_rate:
            checks.append(
                SafetyCheck(
                    ERROR_RATE_CHECK, False, f"{base} exceeds the {_pct(sc.max_error_rate)} maximum", "critical"
                )
            )
        elif result.significant_increase:
            checks.append(
                SafetyCheck(
                    ERROR_RATE_CHECK,
                    False,
                    f"{base} is significantly above control (p = {result.p_value:.2g})",
                    "critical",
                )
            )
        else:
            checks.append(SafetyCheck(ERROR_RATE_CHECK, True, base, "info"))

    # Latency Check
    if candidate is None or control is None or not candidate.latency.count or not control.latency.count:
        who = "winner" if candidate is not None and not candidate.latency.count else "control"
        checks.append(
            SafetyCheck(
                LATENCY_CHECK,
                missing_passes,
                f"no latency samples recorded for the {who}; latency not checked",
                missing,
            )
        )
    else:
        c95 = control.latency.p95() or 0.0
        t95 = candidate.latency.p95() or 0.0
        degradation = latency_degradation(c95, t95)
        msg = (
            f"Winner P95 {t95:.1f} ms vs control {c95:.1f} ms ({degradation:+.1f}%, "
            f"max +{_fmt_num(sc.max_latency_degradation)}%)"
        )
        passed = degradation <= sc.max_latency_degradation
        checks.append(SafetyCheck(LATENCY_CHECK, passed, msg, "info" if passed else "critical"))

    # Traffic Balance Check
    if not sc.check_traffic_balance:
        checks.append(SafetyCheck(TRAFFIC_BALANCE_CHECK, True, "disabled by configuration", "info"))
    elif snapshot.active_promotion_id is not None:
        # The promotion rewrote the weights (winner 100, the others 0): they no longer describe the assignment
        # the recorded exposures came from, and every loser would count as traffic to a weight-0 variant.
        checks.append(
            SafetyCheck(
                TRAFFIC_BALANCE_CHECK,
                missing_passes,
                f"not checked: the weights are those of promotion {snapshot.active_promotion_id}",
                missing,
            )
        )
    elif analysis is None or (analysis.srm.reason is not None and analysis.srm.p_value >= 1.0):
        why = analysis.srm.reason if analysis is not None and analysis.srm.reason else "not enough variants"
        checks.append(SafetyCheck(TRAFFIC_BALANCE_CHECK, missing_passes, f"not checked: {why}", missing))
    else:
        srm = analysis.srm
        observed = "/".join(f"{o:,}" for o in srm.observed)
        expected = "/".join(f"{e:,.0f}" for e in srm.expected)
        stray = [v for v in snapshot.variants if v.exposures > 0 and not v.weight > 0]
        if srm.flagged and stray:
            names = ", ".join(f"{v.name} ({v.exposures:,})" for v in stray)
            checks.append(
                SafetyCheck(
                    TRAFFIC_BALANCE_CHECK,
                    False,
                    f"sample-ratio mismatch: exposures recorded for variant(s) with weight 0: {names}; "
                    f"observed {observed}, expected {expected}",
                    "critical",
                )
            )
        elif srm.flagged:
            checks.append(
                SafetyCheck(
                    TRAFFIC_BALANCE_CHECK,
                    False,
                    f"sample-ratio mismatch (chi-square p {_p(srm.p_value)}, threshold {sc.srm_threshold:g}): "
                    f"observed {observed}, expected {expected}",
                    "critical",
                )
            )
        else:
            checks.append(
                SafetyCheck(TRAFFIC_BALANCE_CHECK, True, f"traffic matches the weights (p = {srm.p_value:.3g})", "info")
            )

    # Critical Alerts Check
    if not sc.check_critical_alerts:
        checks.append(SafetyCheck(CRITICAL_ALERTS_CHECK, True, "disabled by configuration", "info"))
    else:
        lookback = sc.alert_lookback_hours * 3600.0
        alerts = [a for a in snapshot.critical_alerts if (snapshot.now - a.created_at).total_seconds() <= lookback]
        if alerts:
            first = alerts[0]
            scope = "global" if first.global_alert else "experiment"
            checks.append(
                SafetyCheck(
                    CRITICAL_ALERTS_CHECK,
                    False,
                    f"{len(alerts)} unresolved critical alert(s) in the last {_fmt_num(sc.alert_lookback_hours)} h "
                    f"(latest, {scope}: {first.message[:120]!r})",
                    "critical",
                )
            )
        else:
            checks.append(
                SafetyCheck(
                    CRITICAL_ALERTS_CHECK,
                    True,
                    f"no unresolved critical alerts in the last {_fmt_num(sc.alert_lookback_hours)} h",
                    "info",
                )
            )
    return checks


def failed_decision(snapshot: ExperimentSnapshot, config: AutoPromotionConfig, error: str) -> Decision:
    """A not-eligible decision for an experiment whose statistics or config could not be evaluated."""
    return Decision(
        experiment_id=snapshot.id,
        experiment_name=snapshot.name,
        eligible=False,
        reasons=(error,),
        safety_checks=(),
        winner=None,
        best=None,
        analysis=None,
        variants=snapshot.variants,
        method=config.method,
        metric_type=snapshot.metric_type,
        priority=snapshot.priority,
        evaluated_at=snapshot.now,
        extra={"error": error},
    )


def safe_decide(
    snapshot: ExperimentSnapshot,
    config: AutoPromotionConfig,
    analysis: ExperimentAnalysis | None = None,
    metrics: tuple[MetricAnalysis, ...] | None = None,
) -> Decision:
    """decide(), with impossible statistics turned into a not-eligible decision that says what is wrong."""
    try:
        return decide(snapshot, config, analysis, metrics)
    except StatsInputError as exc:
        return failed_decision(snapshot, config, f"statistics cannot be computed: {exc}")
