"""The progressive rollout's rules, pure: the plan of a ramp, each step's guard against the concurrent control, and
the state machine that says what a rollout does next. worker.services.rollout does the I/O around them.

The plan. ``rollout.steps`` are treatment shares in percent; the steps at or below the winner's share during the
test are skipped, and so are those at or above ``100 - rollout.holdback``; then come ``100 - holdback`` (holding)
and 100 (complete). A 50/50 test with the defaults (25, 50, 75; holdback 5) goes 50 -> 75 -> 95 -> 100. With a
holdback of 0 (or a test share already at or above ``100 - holdback``) the rollout holds at 100% and completes
there: there is no concurrent control left, so only critical alerts are judged while it holds.

The guard of a step compares the winner with the control on the data since the step began (the current totals
minus the totals stored at the step's start): one always-valid one-sided test per metric, each at its share of
``alpha`` (Bonferroni over the tested metrics and the steps that have a control: the steps use disjoint data, so
the chance of any false rollback over the whole ramp stays below ``alpha``), plus any critical alert raised after
the promotion:

* ``primary``: the experiment's own metric, relative lift of the winner over the control; a breach when the
  always-valid bound shows it worse than ``-margin`` (margin 0: significantly worse at all);
* ``error_rate``: a breach when the winner's error rate is significantly above the control's (the one-sided
  sequential test of worker.stats.error_rate_test, on the step's data);
* ``latency``: a breach when the share of the winner's latencies above ``(1 + maxLatencyDegradation) x`` the
  control's current P95 is significantly above the share of the control's above its P95 (about 5%): the winner's
  P95 is then shown to be more than ``maxLatencyDegradation`` % above the control's, on both arms' data now;
* ``critical_alert``: an open critical alert (the experiment's or global) that the promotion's decision could not
  see (schema/0007).

Metrics are judged once the winner has ``guard.minSamples`` exposures (latency: samples) since the step began.

The state machine (``decide_rollout``): a breach rolls back (``guard.autoRollback``; else the ramp pauses with the
breach as its reason); a ``ramping`` step whose minimums are met (``rollout.stepMinutes`` elapsed and
``rollout.stepMinExposures`` winner exposures since it began) advances; ``holding`` completes once
``guard.guardHours`` have passed since it began; ``paused`` and ``awaiting_approval`` stay where they are but keep
being guarded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from worker.config import AutoPromotionConfig
from worker.decide import AlertInfo
from worker.domain.guard_rules import VariantTotals
from worker.domain.metrics import BUILTIN_METRIC, MetricDefinition, MetricSums, metric_snapshots
from worker.stats import StatsInputError, VariantStats, compare_arms, latency_degradation
from worker.stats.effects import sequential_one_sided_halfwidth, sequential_one_sided_p_value, sequential_rho
from worker.stats.metrics import metric_effect
from worker.stats.sketch import LatencySketch, bucket_key

RolloutState = Literal["ramping", "holding", "complete", "rolled_back", "paused", "awaiting_approval"]
ROLLOUT_STATES: tuple[RolloutState, ...] = (
    "ramping",
    "holding",
    "complete",
    "rolled_back",
    "paused",
    "awaiting_approval",
)
FINISHED: frozenset[str] = frozenset({"complete", "rolled_back"})
Verdict = Literal["ok", "breach", "waiting"]
RolloutAction = Literal["stay", "advance", "complete", "rollback", "pause", "await_approval"]

# The statistical tests every step with a control runs (critical alerts are a fact, not a test): alpha is split
# over these and over the steps.
TESTED_METRICS: tuple[str, ...] = ("primary", "error_rate", "latency")


@dataclass(frozen=True, slots=True)
class RampSettings:
    """The settings a ramp runs under (from the experiment's effective config)."""

    steps: tuple[float, ...] = (25.0, 50.0, 75.0)
    holdback: float = 5.0
    step_minutes: float = 60.0
    step_min_exposures: int = 1000
    guard_hours: float = 24.0
    min_samples: int = 200
    auto_rollback: bool = True
    alpha: float = 0.05
    n_star: float = 5000.0
    max_latency_degradation: float = 20.0
    primary_margin: float = 0.0  # relative, e.g. 0.02: the winner may be at most 2% worse on its primary metric
    step_approval: bool = False  # a step ready to advance waits for an approval (approval.require = every_step)


# ------------------------------------------------------------------------------------------------------ plan
@dataclass(frozen=True, slots=True)
class RampPlan:
    """Every share the winner goes through (the last is 100) and where holding is (1-based)."""

    shares: tuple[float, ...]
    holdback: float
    test_share: float

    @property
    def holding_step(self) -> int:
        n = len(self.shares)
        if n >= 2 and self.holdback > 0 and self.shares[n - 2] == 100.0 - self.holdback:
            return n - 1
        return n

    @property
    def complete_step(self) -> int:
        return len(self.shares)

    def share(self, step: int) -> float:
        return self.shares[step - 1]

    def kind(self, step: int) -> Literal["ramping", "holding", "complete"]:
        if step < self.holding_step:
            return "ramping"
        return "holding" if step == self.holding_step else "complete"

    def guarded_steps(self) -> int:
        """Steps with control traffic (each runs the statistical tests)."""
        return sum(1 for s in self.shares[: self.holding_step] if s < 100.0)


def share_during_test(weights: Mapping[str, float], winner: str) -> float:
    """The winner's share of traffic during the test, in percent (0 when no variant had weight)."""
    total = sum(max(0.0, float(w)) for w in weights.values())
    return 100.0 * max(0.0, float(weights.get(winner, 0.0))) / total if total > 0 else 0.0


def plan_ramp(share_during_test: float, steps: Sequence[float], holdback: float) -> RampPlan:
    """The plan of a ramp from ``share_during_test`` (see the module docstring)."""
    hold = 100.0 - holdback
    ramp = [float(s) for s in steps if share_during_test < s < hold]
    holds = holdback > 0 and hold > share_during_test
    shares = [*ramp, *([hold] if holds else []), 100.0]
    return RampPlan(tuple(shares), float(holdback) if holds else 0.0, share_during_test)


def ramp_weights(variants: Sequence[str], winner: str, control: str, share: float) -> dict[str, float]:
    """The traffic weights at ``share``: the winner ``share``, the control the rest, other treatments 0."""
    return {v: share if v == winner else (100.0 - share if v == control else 0.0) for v in variants}


# ----------------------------------------------------------------------------------------------------- guard
@dataclass(frozen=True, slots=True)
class GuardResult:
    """One metric of a step's guard: its verdict, the effect (percent) and its always-valid interval."""

    metric: str
    verdict: Verdict
    lift: float | None = None
    interval: tuple[float, float] | None = None
    margin: float = 0.0
    p_value: float | None = None
    alpha: float | None = None
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """The API's form: exactly metric, verdict, lift and interval."""
        return {
            "metric": self.metric,
            "verdict": self.verdict,
            "lift": _finite(self.lift),
            "interval": [_finite(self.interval[0]), _finite(self.interval[1])] if self.interval else None,
        }

    def to_json(self) -> dict[str, Any]:
        """Everything, for the audit log, the step history and the notifications."""
        return {
            **self.public(),
            "margin": self.margin,
            "pValue": _finite(self.p_value),
            "alpha": self.alpha,
            "reason": self.reason,
            **({"details": self.details} if self.details else {}),
        }


@dataclass(frozen=True, slots=True)
class StepData:
    """What one step's guard reads."""

    winner: str
    control: str
    metric_type: Literal["conversion", "mean"]
    share: float  # the winner's share during the step, percent
    since: Mapping[str, VariantTotals]  # per variant, the totals since the step began
    new_alerts: tuple[AlertInfo, ...] = ()
    # ab_metrics guardrails (issue 15): each with the control's and the winner's sums since the step began
    guardrails: tuple[tuple[MetricDefinition, MetricSums, MetricSums], ...] = ()
    primary_direction: Literal["increase", "decrease"] = "increase"


def per_test_alpha(settings: RampSettings, plan: RampPlan, guardrails: int = 0) -> float:
    """alpha over every test (the built-in ones and ``guardrails`` more) of every guarded step (Bonferroni)."""
    return settings.alpha / ((len(TESTED_METRICS) + guardrails) * max(1, plan.guarded_steps()))


def check_step(data: StepData, settings: RampSettings, alpha: float) -> list[GuardResult]:
    """Every metric of one step's guard, alerts first. Pure."""
    results: list[GuardResult] = [_alerts(data)]
    if data.share >= 100.0:
        return results  # no concurrent control: nothing to compare with
    t = data.since.get(data.winner, VariantTotals())
    c = data.since.get(data.control, VariantTotals())
    rho = sequential_rho(min(2.0 * alpha, 0.5), settings.n_star)
    results.append(_primary(data, t, c, settings, alpha, rho))
    results.append(_error_rate(data, t, c, settings, alpha))
    results.append(_latency(data, t, c, settings, alpha))
    results.extend(_guardrail(data, d, cs, ts, settings, alpha, rho) for d, cs, ts in data.guardrails)
    return results


def _alerts(data: StepData) -> GuardResult:
    if not data.new_alerts:
        return GuardResult("critical_alert", "ok")
    a = data.new_alerts[0]
    scope = "global" if a.global_alert else "experiment"
    return GuardResult(
        "critical_alert",
        "breach",
        reason=f"critical {scope} alert #{a.id} raised after the promotion of {data.winner}: {a.message[:200]!r}",
        details={
            "alertId": a.id,
            "scope": scope,
            "message": a.message[:500],
            "alertCreatedAt": a.created_at.isoformat(),
        },
    )


def _waiting(metric: str, why: str, margin: float = 0.0) -> GuardResult:
    return GuardResult(metric, "waiting", margin=margin, reason=why)


def _primary(
    data: StepData, t: VariantTotals, c: VariantTotals, settings: RampSettings, alpha: float, rho: float
) -> GuardResult:
    margin_pct = 100.0 * settings.primary_margin
    if t.exposures < settings.min_samples:
        return _waiting(
            "primary", f"{t.exposures:,} of {settings.min_samples:,} exposures since the step began", margin_pct
        )
    try:
        effect = compare_arms(
            _stats(data.control, c, True),
            _stats(data.winner, t, False),
            metric_type=data.metric_type,
            method="sequential",
            alpha=alpha,
            n_star=settings.n_star,
        )
    except StatsInputError as exc:
        return _waiting("primary", f"not computable: {exc}", margin_pct)
    if effect.estimate is None or effect.se is None:
        return _waiting("primary", f"not computable: {effect.reason}", margin_pct)
    n = float(t.exposures + c.exposures)
    est, se = effect.estimate, effect.se
    hw = sequential_one_sided_halfwidth(se, n, alpha, rho)
    p = harm_p_value(est, se, n, rho, data.primary_direction, settings.primary_margin)
    lift, lo, hi = 100.0 * est, 100.0 * (est - hw), 100.0 * (est + hw)
    breach = p < alpha
    reason = (
        f"primary metric of {data.winner} since the step began: {lift:+.2f}% vs the control "
        f"(interval {lo:+.2f}% to {hi:+.2f}%), "
        + (f"shown worse than the -{margin_pct:g}% margin" if breach else f"not shown worse than -{margin_pct:g}%")
    )
    return GuardResult(
        "primary",
        "breach" if breach else "ok",
        lift,
        (lo, hi),
        -margin_pct,
        p,
        alpha,
        reason,
        {"exposures": t.exposures, "controlExposures": c.exposures},
    )


@dataclass(frozen=True, slots=True)
class RateIncrease:
    """The one-sided always-valid test that the winner's rate of some event is above the control's."""

    control_rate: float
    rate: float
    p_value: float
    interval: tuple[float, float] | None  # the difference, rate - control_rate, +- the one-sided half-width

    def breach(self, alpha: float) -> bool:
        return self.p_value < alpha


def rate_increase(n_c: int, x_c: int, n_t: int, x_t: int, alpha: float, n_star: float) -> RateIncrease:
    """Is ``x_t / n_t`` above ``x_c / n_c``? z uses the pooled variance under "no increase" (the score test), so a
    handful of events against a control that happens to have none is not taken for a jump, as the unpooled
    variance of worker.stats.error_rate_test would; the p-value is the one-sided asymptotic confidence sequence's
    (gbstats, eq. 134), valid however often it is looked at."""
    rc = x_c / n_c if n_c else 0.0
    rt = x_t / n_t if n_t else 0.0
    if n_c == 0 or n_t == 0:
        return RateIncrease(rc, rt, 1.0, None)
    pooled = (x_c + x_t) / (n_c + n_t)
    var0 = pooled * (1.0 - pooled) * (1.0 / n_c + 1.0 / n_t)
    if not var0 > 0.0:
        return RateIncrease(rc, rt, 1.0, None)
    n = float(n_c + n_t)
    rho = sequential_rho(min(2.0 * alpha, 0.5), n_star)
    diff = rt - rc
    p = sequential_one_sided_p_value(diff / math.sqrt(var0), n, rho)
    var = rc * (1.0 - rc) / n_c + rt * (1.0 - rt) / n_t
    hw = sequential_one_sided_halfwidth(math.sqrt(max(var, var0)), n, alpha, rho)
    return RateIncrease(rc, rt, p, (diff - hw, diff + hw))


def harm_p_value(
    estimate: float, se: float, n: float, rho: float, direction: Literal["increase", "decrease"], margin: float
) -> float:
    """The always-valid p-value of "the lift is worse than the margin": below -margin for a metric where higher is
    better, above +margin where lower is. The mirror of issue 15's non-inferiority test (which asks whether it is
    shown *within* the margin): a ramp rolls back on harm shown, not on non-inferiority not shown yet."""
    sign = 1.0 if direction == "increase" else -1.0
    return sequential_one_sided_p_value(-(sign * estimate + margin) / se, n, rho)


def _guardrail(
    data: StepData,
    d: MetricDefinition,
    c: MetricSums,
    t: MetricSums,
    settings: RampSettings,
    alpha: float,
    rho: float,
) -> GuardResult:
    margin_pct = 100.0 * d.margin
    shown_margin = -margin_pct if d.direction == "increase" else margin_pct
    if t.units < settings.min_samples or c.units < settings.min_samples:
        return _waiting(
            d.name,
            f"guardrail {d.name}: {t.units:,} (winner) and {c.units:,} (control) of {settings.min_samples:,} units "
            "since the step began",
            shown_margin,
        )
    try:
        effect = metric_effect(d.kind, c, t, method="sequential", alpha=alpha, n_star=settings.n_star)
    except StatsInputError as exc:
        return _waiting(d.name, f"guardrail {d.name}: not computable: {exc}", shown_margin)
    if effect.estimate is None or effect.se is None or not effect.se > 0.0:
        return _waiting(d.name, f"guardrail {d.name}: not computable: {effect.reason}", shown_margin)
    n = float(t.units + c.units)
    est, se = effect.estimate, effect.se
    hw = sequential_one_sided_halfwidth(se, n, alpha, rho)
    p = harm_p_value(est, se, n, rho, d.direction, d.margin)
    lift, lo, hi = 100.0 * est, 100.0 * (est - hw), 100.0 * (est + hw)
    breach = p < alpha
    better = "higher" if d.direction == "increase" else "lower"
    reason = (
        f"guardrail {d.name} ({better} is better) of {data.winner} since the step began: {lift:+.2f}% vs the control "
        f"(interval {lo:+.2f}% to {hi:+.2f}%), "
        + (f"shown worse than the {shown_margin:+g}% margin" if breach else f"not shown worse than {shown_margin:+g}%")
    )
    return GuardResult(
        d.name,
        "breach" if breach else "ok",
        lift,
        (lo, hi),
        shown_margin,
        p,
        alpha,
        reason,
        {"units": t.units, "controlUnits": c.units, "kind": d.kind, "direction": d.direction, "margin": d.margin},
    )


def _error_rate(
    data: StepData, t: VariantTotals, c: VariantTotals, settings: RampSettings, alpha: float
) -> GuardResult:
    if t.exposures < settings.min_samples or c.exposures < settings.min_samples:
        return _waiting(
            "error_rate",
            f"{t.exposures:,} (winner) and {c.exposures:,} (control) of {settings.min_samples:,} exposures since "
            "the step began",
        )
    errors_t, errors_c = min(t.errors, t.exposures), min(c.errors, c.exposures)
    res = rate_increase(c.exposures, errors_c, t.exposures, errors_t, alpha, settings.n_star)
    breach = res.breach(alpha)
    diff = 100.0 * (res.rate - res.control_rate)
    interval = (100.0 * res.interval[0], 100.0 * res.interval[1]) if res.interval else None
    reason = (
        f"error rate of {data.winner} since the step began is {_pct(res.rate)} "
        f"({t.errors:,} errors in {t.exposures:,} exposures) vs the control's {_pct(res.control_rate)} "
        f"({c.errors:,} in {c.exposures:,}): {diff:+.2f} pp"
        + (f", lower bound {interval[0]:+.2f} pp > 0" if interval and breach else "")
    )
    return GuardResult(
        "error_rate",
        "breach" if breach else "ok",
        diff,
        interval,
        0.0,
        res.p_value,
        alpha,
        reason,
        {
            "errors": t.errors,
            "exposures": t.exposures,
            "controlErrors": c.errors,
            "controlExposures": c.exposures,
            "errorRate": res.rate,
            "controlErrorRate": res.control_rate,
        },
    )


def count_above(sketch: LatencySketch, x: float) -> int:
    """Values of ``sketch`` in buckets above the bucket of ``x`` (x > 0)."""
    key = bucket_key(x)
    return sum(c for k, c in sketch.bins() if k > key)


def _latency(data: StepData, t: VariantTotals, c: VariantTotals, settings: RampSettings, alpha: float) -> GuardResult:
    margin = settings.max_latency_degradation
    if t.latency.count < settings.min_samples or c.latency.count < settings.min_samples:
        return _waiting(
            "latency",
            f"{t.latency.count:,} (winner) and {c.latency.count:,} (control) of {settings.min_samples:,} latency "
            "samples since the step began",
            margin,
        )
    c95 = c.latency.p95() or 0.0
    t95 = t.latency.p95() or 0.0
    degradation = latency_degradation(c95, t95)
    if c95 <= 0.0:
        return _waiting("latency", "the control's P95 since the step began is 0 ms", margin)
    threshold = c95 * (1.0 + margin / 100.0)
    t_above = count_above(t.latency, threshold)
    c_above = count_above(c.latency, c95)
    res = rate_increase(c.latency.count, c_above, t.latency.count, t_above, alpha, settings.n_star)
    breach = res.breach(alpha)
    shown = "unbounded" if math.isinf(degradation) else f"{degradation:+.1f}%"
    reason = (
        f"P95 latency of {data.winner} since the step began is {t95:.1f} ms, {shown} vs the control's {c95:.1f} ms "
        f"now; {t_above:,} of {t.latency.count:,} winner samples above {threshold:.1f} ms "
        f"(control: {c_above:,} of {c.latency.count:,} above its P95)"
        + (f", significantly more than the control's share (max +{margin:g}%)" if breach else "")
    )
    return GuardResult(
        "latency",
        "breach" if breach else "ok",
        None if math.isinf(degradation) else degradation,
        None,
        margin,
        res.p_value,
        alpha,
        reason,
        {
            "p95Ms": t95,
            "controlP95Ms": c95,
            "samples": t.latency.count,
            "controlSamples": c.latency.count,
            "aboveThreshold": t_above,
            "controlAboveP95": c_above,
        },
    )


# ------------------------------------------------------------------------------------------- state machine
@dataclass(frozen=True, slots=True)
class RolloutView:
    """One rollout as the rules see it: its row, the totals at its step's start and now, the alerts since."""

    rollout_id: str
    promotion_id: str
    experiment_id: int
    experiment_name: str
    winner: str
    control: str
    metric_type: Literal["conversion", "mean"]
    plan: RampPlan
    step: int
    state: RolloutState
    paused_from: RolloutState | None
    step_started_at: datetime
    step_stats: Mapping[str, VariantTotals]
    current: Mapping[str, VariantTotals]
    now: datetime
    transitions: int = 0
    new_alerts: tuple[AlertInfo, ...] = ()
    # ab_metrics rows (issue 15) and, per metric and variant, their sums now and at the step's start
    metrics: tuple[MetricDefinition, ...] = ()
    metric_now: Mapping[str, Mapping[str, MetricSums]] = field(default_factory=dict)
    metric_start: Mapping[str, Mapping[str, MetricSums]] = field(default_factory=dict)

    @property
    def share(self) -> float:
        return self.plan.share(self.step)

    @property
    def guardrails(self) -> tuple[MetricDefinition, ...]:
        """The ab_metrics guardrails the step's guard tests (the built-in metric is tested as ``primary``)."""
        return tuple(m for m in self.metrics if m.role == "guardrail" and m.name != BUILTIN_METRIC)

    def primary_definition(self) -> MetricDefinition | None:
        """A row named ``primary`` changes the built-in metric's direction and margin."""
        return next((m for m in self.metrics if m.name == BUILTIN_METRIC), None)

    def guardrails_since(self) -> tuple[tuple[MetricDefinition, MetricSums, MetricSums], ...]:
        """Each guardrail with the control's and the winner's sums since the step began."""
        out = []
        for d in self.guardrails:
            now, start = self.metric_now.get(d.name, {}), self.metric_start.get(d.name, {})
            out.append(
                (
                    d,
                    sums_since(now.get(self.control, MetricSums()), start.get(self.control, MetricSums())),
                    sums_since(now.get(self.winner, MetricSums()), start.get(self.winner, MetricSums())),
                )
            )
        return tuple(out)

    def step_stats_json(self) -> dict[str, Any]:
        """Every variant's totals now (the next step's start), with its metrics' sums under ``metrics``."""
        out: dict[str, Any] = {}
        for name, t in self.current.items():
            entry = totals_json(t)
            sums = {m: by_variant[name] for m, by_variant in self.metric_now.items() if name in by_variant}
            if sums:
                entry["metrics"] = {m: sums_json(x) for m, x in sums.items()}
            out[name] = entry
        return out

    def since_step(self) -> dict[str, VariantTotals]:
        """The winner's and the control's totals since the step began (the only arms a step compares)."""
        return {
            name: self.current.get(name, VariantTotals()).since(self.step_stats.get(name, VariantTotals()))
            for name in (self.winner, self.control)
        }


@dataclass(frozen=True, slots=True)
class RolloutDecision:
    """What a rollout does next, the guard it read, and when time alone will change something."""

    action: RolloutAction
    guard: tuple[GuardResult, ...]
    reason: str = ""
    next_step: int | None = None
    next_state: RolloutState | None = None
    next_step_at: datetime | None = None  # when the time minimum of the current step is (or was) met

    @property
    def breaches(self) -> tuple[GuardResult, ...]:
        return tuple(g for g in self.guard if g.verdict == "breach")


def step_guard(
    view: RolloutView, settings: RampSettings, since: Mapping[str, VariantTotals] | None = None
) -> tuple[GuardResult, ...]:
    """The current step's guard (``since``: view.since_step(), when the caller has it already)."""
    primary = view.primary_definition()
    guardrails = view.guardrails_since()
    if primary is not None:
        settings = replace(settings, primary_margin=primary.margin)
    data = StepData(
        view.winner,
        view.control,
        view.metric_type,
        view.share,
        since or view.since_step(),
        view.new_alerts,
        guardrails,
        primary.direction if primary is not None else "increase",
    )
    return tuple(check_step(data, settings, per_test_alpha(settings, view.plan, len(guardrails))))


def decide_rollout(view: RolloutView, settings: RampSettings) -> RolloutDecision:
    """The next action of one rollout. Pure."""
    if view.state in FINISHED:
        return RolloutDecision("stay", ())
    since = view.since_step()
    guard = step_guard(view, settings, since)
    breaches = [g for g in guard if g.verdict == "breach"]
    if breaches:
        where = f"rollout step {view.step} of {len(view.plan.shares)} ({view.share:g}% on {view.winner})"
        reason = f"{where}: guard: " + "; ".join(b.reason for b in breaches)
        if settings.auto_rollback:
            return RolloutDecision("rollback", guard, reason)
        if view.state != "paused":
            return RolloutDecision("pause", guard, reason, view.step, "paused")
        return RolloutDecision("stay", guard, reason)
    if view.state in ("paused", "awaiting_approval"):
        return RolloutDecision("stay", guard)
    kind = view.plan.kind(view.step)
    if kind == "holding" or view.state == "holding":
        due = view.step_started_at + timedelta(hours=settings.guard_hours)
        if view.now >= due:
            return RolloutDecision("complete", guard, "", view.plan.complete_step, "complete", due)
        return RolloutDecision("stay", guard, "", next_step_at=due)
    due = view.step_started_at + timedelta(minutes=settings.step_minutes)
    exposures = since[view.winner].exposures
    if view.now < due or exposures < settings.step_min_exposures:
        return RolloutDecision("stay", guard, "", next_step_at=due)
    nxt = view.step + 1
    if settings.step_approval:
        return RolloutDecision("await_approval", guard, "", nxt, "awaiting_approval", due)
    return RolloutDecision("advance", guard, "", nxt, view.plan.kind(nxt), due)


# ----------------------------------------------------------------------------------------------- helpers
def _stats(name: str, t: VariantTotals, is_control: bool) -> VariantStats:
    return VariantStats(
        name, is_control, t.exposures, t.conversions, t.value_sum, t.value_sum_sq, min(t.errors, t.exposures)
    )


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def totals_json(t: VariantTotals) -> dict[str, Any]:
    """The camelCase form of experiment_promotions.baseline_stats (VariantTotals.from_json reads it back)."""
    return {
        "exposures": t.exposures,
        "conversions": t.conversions,
        "errors": t.errors,
        "valueSum": t.value_sum,
        "valueSumSq": t.value_sum_sq,
        "latencySketch": t.latency.to_json(),
    }


def ramp_settings(cfg: AutoPromotionConfig) -> RampSettings:
    """The settings a ramp runs under, from an experiment's effective config."""
    r = cfg.rollout
    # approval.require (issue 17's approvals) is read by name, so that the ramp works with or without it.
    approval = getattr(cfg, "approval", None)
    return RampSettings(
        steps=tuple(float(s) for s in r.steps),
        holdback=float(r.holdback),
        step_minutes=float(r.step_minutes),
        step_min_exposures=int(r.step_min_exposures),
        guard_hours=float(cfg.guard.guard_hours),
        min_samples=int(cfg.guard.min_samples),
        auto_rollback=bool(cfg.guard.auto_rollback),
        alpha=cfg.alpha,
        n_star=float(cfg.sequential_tuning),
        max_latency_degradation=float(cfg.safety_checks.max_latency_degradation),
        step_approval=getattr(approval, "require", "none") == "every_step",
    )


def rollout_view_from_row(row: Mapping[str, Any]) -> RolloutView:
    """From an ``active_rollouts`` or ``rollout_locked`` row (rollouts.sql)."""
    step_raw = row["step_stats"] if isinstance(row["step_stats"], Mapping) else {}
    current_raw = row["current_stats"] if isinstance(row["current_stats"], Mapping) else {}
    paused_from = row["paused_from"]
    snapshots = metric_snapshots(row.get("metrics"))
    return RolloutView(
        rollout_id=str(row["id"]),
        promotion_id=str(row["promotion_id"]),
        experiment_id=int(row["experiment_id"]),
        experiment_name=row["experiment_name"],
        winner=row["winner_variant"],
        control=row["control_variant"],
        metric_type="mean" if row["metric_type"] == "mean" else "conversion",
        plan=RampPlan(tuple(float(s) for s in row["steps"]), float(row["holdback"]), float(row["test_share"])),
        step=int(row["step"]),
        state=row["state"],
        paused_from=paused_from,
        step_started_at=row["step_started_at"],
        step_stats={name: VariantTotals.from_json(v) for name, v in step_raw.items()},
        current={name: VariantTotals.from_json(v) for name, v in current_raw.items()},
        now=row["now"],
        transitions=int(row["transitions"]),
        new_alerts=tuple(AlertInfo.from_row(a) for a in (row["new_alerts"] or ())),
        metrics=tuple(m.definition for m in snapshots),
        metric_now={m.name: m.sums for m in snapshots},
        metric_start=_metric_start(step_raw),
    )


def _metric_start(step_raw: Mapping[str, Any]) -> dict[str, dict[str, MetricSums]]:
    """metric -> variant -> sums at the step's start, from step_stats (each variant's ``metrics``)."""
    out: dict[str, dict[str, MetricSums]] = {}
    for variant, entry in step_raw.items():
        metrics = entry.get("metrics") if isinstance(entry, Mapping) else None
        if not isinstance(metrics, Mapping):
            continue
        for name, sums in metrics.items():
            if isinstance(sums, Mapping):
                out.setdefault(str(name), {})[str(variant)] = MetricSums.from_row(sums)
    return out


def sums_since(now: MetricSums, start: MetricSums) -> MetricSums:
    """A metric's sums added after ``start`` (counts clamped at zero; a ratio's denominator sums kept None when
    the metric has none)."""

    def sub(a: float | None, b: float | None) -> float | None:
        return None if a is None else a - (b or 0.0)

    return MetricSums(
        units=max(0, now.units - start.units),
        value_sum=now.value_sum - start.value_sum,
        value_sum_sq=now.value_sum_sq - start.value_sum_sq,
        denominator_sum=sub(now.denominator_sum, start.denominator_sum),
        denominator_sum_sq=sub(now.denominator_sum_sq, start.denominator_sum_sq),
        value_denominator_product_sum=sub(now.value_denominator_product_sum, start.value_denominator_product_sum),
    )


def sums_json(x: MetricSums) -> dict[str, Any]:
    """The ``ab_metric_stats`` column form MetricSums.from_row reads back."""
    return {
        "units": x.units,
        "value_sum": x.value_sum,
        "value_sum_sq": x.value_sum_sq,
        "denominator_sum": x.denominator_sum,
        "denominator_sum_sq": x.denominator_sum_sq,
        "value_denominator_product_sum": x.value_denominator_product_sum,
    }
