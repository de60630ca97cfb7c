"""Several metrics per experiment: one metric's sums per arm -> lift, interval, p-value and verdict per treatment.

The three kinds follow GrowthBook's gbstats statistics: ``proportion`` (ProportionStatistic, variance p(1-p)),
``mean`` (SampleMeanStatistic) and ``ratio`` (RatioStatistic: the ratio of means Σx/Σy with the delta-method
variance that carries the covariance of numerator and denominator). The lift is then the relative difference of
the two arms' estimates with the delta method, through the very function the single-metric path uses
(``effects.effect_from_moments``), so ``proportion`` and ``mean`` give bit-identical numbers to
``analyze_experiment``.

Roles decide what a metric's result means:

- ``primary``: two-sided test; p-values adjusted across treatments (Holm/BH as configured) and then Bonferroni
  across the ``primary_count`` primary metrics; ``better`` when the adjusted p-value is below alpha and the lift
  points the metric's good way.
- ``guardrail``: one-sided non-inferiority test of "the treatment is worse than control by more than ``margin``"
  (relative), in the bad direction, always-valid under the sequential method; ``non_inferior`` when it is
  rejected (after the same correction across treatments). ``margin = 0`` is the plain "not significantly worse".
- ``secondary``: reported, never decides; verdict from the raw two-sided p-value.

``not_shown`` is the verdict of a comparison that could not be computed (no data, zero variance, ...).

The seam for adjusted estimators (CUPED) is ``arm_estimates``: everything downstream reads only the
``ArmEstimate`` pair it returns. CUPED (cuped.py) adjusts a ``proportion`` or ``mean`` metric whose every unit sent
its pre-exposure covariate (``cuped: auto``): the comparison's effect is then the adjusted one, and the
unadjusted effect and the variance reduction ride along for reports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from scipy import special

from . import _validate as check
from ._validate import _INT64_MAX
from .cuped import CupedEffect, metric_cuped
from .effects import (
    ONE_SIDED_MAX_TUNING_LEVEL,
    effect_from_moments,
    sequential_one_sided_halfwidth,
    sequential_one_sided_p_value,
    sequential_rho,
)
from .errors import StatsInputError
from .models import Comparison, Correction, Effect, ExperimentAnalysis, Method, MetricType
from .multiple import adjust_pvalues

__all__ = [
    "ArmEstimate",
    "MetricAnalysis",
    "MetricComparison",
    "MetricSumsLike",
    "NonInferiority",
    "analyze_metric",
    "arm_estimate",
    "arm_estimates",
    "assemble_metric",
    "builtin_metric_analysis",
    "metric_effect",
    "non_inferiority",
]

Kind = Literal["proportion", "mean", "ratio"]
Role = Literal["primary", "guardrail", "secondary"]
Direction = Literal["increase", "decrease"]
Verdict = Literal["better", "worse", "inconclusive", "non_inferior", "not_shown"]

KINDS = ("proportion", "mean", "ratio")
ROLES = ("primary", "guardrail", "secondary")
DIRECTIONS = ("increase", "decrease")


class MetricSumsLike(Protocol):
    """One arm's sufficient statistics for one metric (``worker.domain.metrics.MetricSums`` fits)."""

    @property
    def units(self) -> int: ...
    @property
    def value_sum(self) -> float: ...
    @property
    def value_sum_sq(self) -> float: ...
    @property
    def denominator_sum(self) -> float | None: ...
    @property
    def denominator_sum_sq(self) -> float | None: ...
    @property
    def value_denominator_product_sum(self) -> float | None: ...
    # CUPED's covariate (cuped.CovariateSumsLike): pre_units of the units also sent their pre-exposure value.
    @property
    def pre_units(self) -> int: ...
    @property
    def pre_sum(self) -> float | None: ...
    @property
    def pre_sum_sq(self) -> float | None: ...
    @property
    def pre_value_product_sum(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class ArmEstimate:
    """One arm's estimate of a metric: the lift is computed from ``mean``; ``variance`` is per unit (gbstats'
    ``Statistic.variance``), so the estimate's variance is variance/n."""

    n: int
    mean: float
    variance: float


@dataclass(frozen=True, slots=True)
class NonInferiority:
    """A guardrail's one-sided test of "worse than control by more than the margin"."""

    p_value: float  # one-sided, always-valid under the sequential method; 1.0 when undefined
    bound: float | None  # one-sided bound on the lift at alpha, on the bad side (lower for increase metrics)
    shown: bool  # p_value < alpha (before any correction across treatments)


@dataclass(frozen=True, slots=True)
class MetricComparison:
    """One treatment against control on one metric."""

    variant: str
    units: int
    mean: float  # the arm's estimate (ratio: Σx/Σy)
    effect: Effect  # two-sided relative lift, raw p-value, interval at alpha
    adjusted_p: float  # primary: across treatments, then x primary_count; guardrail: the NI p-value across
    #                    treatments; secondary: the raw p-value
    verdict: Verdict
    non_inferiority: NonInferiority | None = None  # guardrails only
    unadjusted: Effect | None = None  # CUPED applied: the estimate without the covariate (effect is adjusted)
    variance_reduction: float | None = None  # CUPED applied: 1 - Var(adjusted lift)/Var(unadjusted lift)

    @property
    def lift(self) -> float | None:
        return self.effect.estimate

    @property
    def unadjusted_lift(self) -> float | None:
        """The lift without CUPED: the lift itself when CUPED did not apply."""
        return (self.unadjusted or self.effect).estimate

    @property
    def p_value(self) -> float:
        """The p-value people see: the raw two-sided one, or the one-sided NI p-value for guardrails."""
        return self.non_inferiority.p_value if self.non_inferiority is not None else self.effect.p_value


@dataclass(frozen=True, slots=True)
class MetricAnalysis:
    """Every treatment against control on one metric."""

    name: str
    kind: Kind
    role: Role
    direction: Direction
    margin: float
    control: str
    control_units: int
    control_mean: float
    comparisons: tuple[MetricComparison, ...]
    alpha: float
    method: Method
    cuped_note: str | None = None  # why CUPED could not adjust this metric (covariates missing for some units)

    def comparison(self, variant: str) -> MetricComparison | None:
        return next((c for c in self.comparisons if c.variant == variant), None)

    def oriented(self, lift: float | None) -> float | None:
        """The lift with the good direction positive (a decrease metric's -3% is +3% better)."""
        if lift is None:
            return None
        return lift if self.direction == "increase" else -lift

    def as_comparison(self, c: MetricComparison) -> Comparison:
        """The single-metric ``Comparison`` of one treatment (what a Decision's winner and best carry)."""
        e = c.effect
        return Comparison(
            variant=c.variant,
            control=self.control,
            mean_control=self.control_mean,
            mean_treatment=c.mean,
            lift=e.estimate,
            se=e.se,
            ci_low=e.ci_low,
            ci_high=e.ci_high,
            p_value=e.p_value,
            adjusted_p=c.adjusted_p,
            confidence=100.0 * (1.0 - c.adjusted_p),
            improvement=None if e.estimate is None else 100.0 * e.estimate,
            significant=c.adjusted_p < self.alpha and e.estimate is not None,
            better=c.verdict == "better",
            method=self.method,
            reason=e.reason,
        )


Label = str | tuple[str, str]
"""Who an arm is, for error messages only: a text, or (metric, variant), formatted when an error is raised."""


def _label(label: Label, field: str) -> str:
    who = label if isinstance(label, str) else f"metric {label[0]!r}: {label[1]}"
    return f"{who}: {field}"


def _count(label: Label, field: str, x: object) -> int:
    # The common case (an int from the data layer) without the general checker's isinstance chain.
    if type(x) is int and 0 <= x <= _INT64_MAX:
        return x
    return check.count(_label(label, field), x)


def _real(label: Label, field: str, x: object) -> float:
    if type(x) is float and math.isfinite(x):
        return x
    return check.real(_label(label, field), x)


def _opt_real(label: Label, field: str, x: float | None) -> float:
    if x is None:
        raise StatsInputError(
            f"{_label(label, field)} is missing: a ratio metric needs all five sums (Σx, Σx², Σy, Σy², Σxy)"
        )
    return _real(label, field, x)


def arm_estimate(kind: Kind, sums: MetricSumsLike, label: Label = "arm") -> ArmEstimate:
    """One arm's (n, mean, per-unit variance) of a metric from its sums, as gbstats' statistics compute them.

    proportion: p = value_sum/units, variance p(1-p). mean: Σx/n, (Σx² - (Σx)²/n)/(n-1) (checked and clamped as
    the single-metric path). ratio: Σx/Σy, and the delta method's per-unit variance
    var_x/μy² - 2 cov μx/μy³ + μx² var_y/μy⁴ (0 when μy = 0 or n <= 1), with the moments as the data give them.
    Raises StatsInputError for negative or non-integer counts, non-finite sums, or a proportion above 1.
    """
    n = _count(label, "units", sums.units)
    s = _real(label, "value_sum", sums.value_sum)
    if kind == "proportion":
        if s < 0.0 or s > n or not float(s).is_integer():
            raise StatsInputError(
                f"{_label(label, 'value_sum')}: a proportion's value_sum ({s!r}) must be a whole count in "
                f"[0, units={n}]"
            )
        if n == 0:
            return ArmEstimate(0, 0.0, 0.0)
        p = s / n
        return ArmEstimate(n, p, p * (1.0 - p))
    ss = _real(label, "value_sum_sq", sums.value_sum_sq)
    if kind == "mean":
        if ss < 0.0:
            raise StatsInputError(f"{_label(label, 'value_sum_sq')} must be >= 0, got {ss!r}")
        if n == 0:
            return ArmEstimate(0, 0.0, 0.0)
        mean = s / n
        centred = ss - s * mean
        if centred < -1e-9 * ss - 1e-300 or not math.isfinite(centred):
            raise StatsInputError(f"{_label(label, 'value_sum_sq')} ({ss!r}) is smaller than value_sum**2/units")
        return ArmEstimate(n, mean, 0.0 if n <= 1 else max(centred, 0.0) / (n - 1))
    if kind != "ratio":
        raise StatsInputError(f"metric kind must be one of {KINDS}, got {kind!r}")
    if n == 0:  # no data yet: nothing to require of the denominator
        return ArmEstimate(0, 0.0, 0.0)
    d = _opt_real(label, "denominator_sum", sums.denominator_sum)
    dd = _opt_real(label, "denominator_sum_sq", sums.denominator_sum_sq)
    sd = _opt_real(label, "value_denominator_product_sum", sums.value_denominator_product_sum)
    mean = 0.0 if d == 0.0 else s / d
    mx, my = s / n, d / n
    if my == 0.0 or n <= 1:
        return ArmEstimate(n, mean, 0.0)
    var_x = (ss - s * s / n) / (n - 1)
    var_y = (dd - d * d / n) / (n - 1)
    cov = (sd - s * d / n) / (n - 1)
    variance = var_x / my**2 - 2.0 * cov * mx / my**3 + mx * mx * var_y / my**4
    return ArmEstimate(n, mean, variance if math.isfinite(variance) else 0.0)


def arm_estimates(
    kind: Kind,
    control: MetricSumsLike,
    treatment: MetricSumsLike,
    labels: tuple[Label, Label] = ("control", "treatment"),
    *,
    control_estimate: ArmEstimate | None = None,
) -> tuple[ArmEstimate, ArmEstimate]:
    """The seam: one metric's sums for two arms -> each arm's estimate. An adjusted estimator (CUPED, which needs
    both arms to pick its coefficient) replaces this function; nothing downstream reads the sums.

    ``control_estimate``: the control's unadjusted estimate when the caller has it already (several treatments
    share one control); an adjusted estimator computes its own."""
    ea = control_estimate if control_estimate is not None else arm_estimate(kind, control, labels[0])
    return ea, arm_estimate(kind, treatment, labels[1])


def _metric_type(kind: Kind) -> MetricType:
    # The undefined-result rules of effect_from_moments: "conversion" (no conversions in either arm) for
    # proportions, "mean" (n >= 2 per arm) for means and ratios.
    return "conversion" if kind == "proportion" else "mean"


def metric_effect(
    kind: Kind,
    control: MetricSumsLike,
    treatment: MetricSumsLike,
    *,
    method: Method = "sequential",
    alpha: float = 0.05,
    n_star: float = 5000,
) -> Effect:
    """The relative lift of treatment over control on one metric: two-sided p-value and 1-alpha interval
    (gbstats TwoSidedTTest / SequentialTwoSidedTTest), no correction."""
    m, a, ns = check.method(method), check.alpha(alpha), check.n_star(n_star)
    ea, eb = arm_estimates(_kind(kind), control, treatment)
    return _effect(kind, ea, eb, m, a, ns)


def _effect(kind: Kind, ea: ArmEstimate, eb: ArmEstimate, method: Method, alpha: float, n_star: float) -> Effect:
    return effect_from_moments(
        ea.n,
        ea.mean,
        ea.variance,
        eb.n,
        eb.mean,
        eb.variance,
        metric_type=_metric_type(kind),
        method=method,
        alpha=alpha,
        n_star=n_star,
    )


def non_inferiority(
    effect: Effect,
    n_total: float,
    *,
    direction: Direction,
    margin: float,
    method: Method,
    alpha: float,
    n_star: float,
) -> NonInferiority:
    """One-sided test of H0 "the lift is worse than -margin" (increase metrics; "+margin" for decrease ones).

    z = (lift + margin)/se for increase metrics, (margin - lift)/se for decrease ones. fixed: one-sided Welch
    t-test (gbstats OneSidedTreatmentGreaterTTest with test_value = -margin); sequential: the one-sided
    asymptotic confidence sequence of the error-rate check (rho tuned at 2*alpha), always valid. ``bound`` is
    the one-sided bound at alpha; shown <=> bound beyond the margin <=> p < alpha.
    """
    est, se = effect.estimate, effect.se
    if est is None or se is None or not se > 0.0:
        return NonInferiority(1.0, None, False)
    sign = 1.0 if direction == "increase" else -1.0
    z = (sign * est + margin) / se
    if method == "fixed":
        df = effect.df if effect.df is not None else max(n_total - 2.0, 1.0)
        p = min(max(float(special.stdtr(df, -z)), 0.0), 1.0)
        hw = float(special.stdtrit(df, 1.0 - alpha)) * se
    else:
        rho = sequential_rho(min(2.0 * alpha, ONE_SIDED_MAX_TUNING_LEVEL), n_star)
        p = sequential_one_sided_p_value(z, n_total, rho)
        hw = sequential_one_sided_halfwidth(se, n_total, alpha, rho)
    return NonInferiority(p, est - sign * hw, p < alpha)


def _settings(
    method: object, alpha: object, n_star: object, correction: object
) -> tuple[Method, float, float, Correction]:
    """The checked settings; the common case (the decision's own, already valid) without the checkers' work."""
    if (
        method in check.METHODS
        and correction in check.CORRECTIONS
        and type(alpha) is float
        and 0.0 < alpha < 1.0
        and type(n_star) is float
        and 1.0 <= n_star <= 1e12
    ):
        return method, alpha, n_star, correction
    return check.method(method), check.alpha(alpha), check.n_star(n_star), check.correction(correction)


def _kind(kind: object) -> Kind:
    if kind not in KINDS:
        raise StatsInputError(f"metric kind must be one of {KINDS}, got {kind!r}")
    return kind  # type: ignore[return-value]


def two_sided_verdict(e: Effect, p: float, alpha: float, direction: Direction) -> Verdict:
    if e.estimate is None:
        return "not_shown"
    if not p < alpha or e.estimate == 0.0:
        return "inconclusive"
    good = e.estimate > 0.0 if direction == "increase" else e.estimate < 0.0
    return "better" if good else "worse"


def analyze_metric(
    name: str,
    kind: Kind,
    control: tuple[str, MetricSumsLike],
    treatments: Sequence[tuple[str, MetricSumsLike | None]],
    *,
    role: Role = "primary",
    direction: Direction = "increase",
    margin: float = 0.0,
    method: Method = "sequential",
    alpha: float = 0.05,
    n_star: float = 5000,
    correction: Correction = "holm",
    primary_count: int = 1,
    cuped: Literal["auto", "off"] = "auto",
) -> MetricAnalysis:
    """Every treatment against control on one metric, with its role's test and verdict (see the module doc).

    A treatment whose sums are None (no data recorded for it) is compared against an empty arm: ``not_shown``.
    ``primary_count`` is the number of primary metrics alpha is split across (Bonferroni). ``cuped``: auto
    adjusts by the covariate when every unit sent one (cuped.metric_cuped), off never. Raises StatsInputError
    for impossible sums or settings only.
    """
    k = _kind(kind)
    m, a, ns, corr = _settings(method, alpha, n_star, correction)
    if role not in ROLES:
        raise StatsInputError(f"metric role must be one of {ROLES}, got {role!r}")
    if direction not in DIRECTIONS:
        raise StatsInputError(f"metric direction must be one of {DIRECTIONS}, got {direction!r}")
    mg = _real("metric", "margin", margin)
    if mg < 0.0:
        raise StatsInputError(f"margin must be >= 0 (a relative margin: 0.02 = at most 2% worse), got {margin!r}")
    if isinstance(primary_count, bool) or not isinstance(primary_count, int) or primary_count < 1:
        raise StatsInputError(f"primary_count must be an integer >= 1, got {primary_count!r}")
    ctrl_name, ctrl_sums = control
    label = (name, ctrl_name)
    ea = arm_estimate(k, ctrl_sums, label)
    arms: list[tuple[str, ArmEstimate, ArmEstimate, Effect]] = []
    for t_name, t_sums in treatments:
        if t_sums is None:
            ea_t, eb = ea, ArmEstimate(0, 0.0, 0.0)
        else:
            ea_t, eb = arm_estimates(k, ctrl_sums, t_sums, (label, (name, t_name)), control_estimate=ea)
        arms.append((t_name, ea_t, eb, _effect(k, ea_t, eb, m, a, ns)))
    by_cuped, cuped_note = metric_cuped(k, name, cuped, control, treatments, method=m, alpha=a, n_star=ns)
    if by_cuped:
        arms = [(t, ea_t, eb, by_cuped[t].adjusted if t in by_cuped else e) for t, ea_t, eb, e in arms]
    nis = (
        [
            non_inferiority(e, float(ea_t.n + eb.n), direction=direction, margin=mg, method=m, alpha=a, n_star=ns)
            for _, ea_t, eb, e in arms
        ]
        if role == "guardrail"
        else None
    )
    result = assemble_metric(
        name,
        k,
        role,
        direction,
        mg,
        (ctrl_name, ea.n, ea.mean),
        [(t_name, eb.n, eb.mean, e) for t_name, _, eb, e in arms],
        nis,
        method=m,
        alpha=a,
        correction=corr,
        primary_count=primary_count,
    )
    if not by_cuped and cuped_note is None:
        return result
    comparisons = tuple(_with_cuped(c, by_cuped.get(c.variant)) for c in result.comparisons)
    return replace(result, comparisons=comparisons, cuped_note=cuped_note)


# A guardrail on a proportion whose arms are identical and constant: no events in either arm, or every unit
# converted in both. The relative lift is 0/0 there (effect_from_moments leaves it undefined), and the one-sided
# test has no variance to work with; yet the data show no difference at all, and no sample of any size could show
# one, so "not shown" would block the promotion forever. Such a guardrail passes: the samples are identical, and
# the difference between the arms' rates is bounded by the exact one-sided bound of a rate with no events in n
# units, 1 - alpha^(1/n) (3/n at alpha = 0.05), which the minimum sample size of the safety checks keeps small. A
# control at 0 with events in the treatment (or a mean or ratio with zero variance) stays "not shown": a relative
# margin of a control at 0 is 0, which no data can show (see the reason, and README "Several metrics").
NI_IDENTICAL_CONSTANT = NonInferiority(0.0, 0.0, True)


def _identical_constant_arms(kind: Kind, control: tuple[str, int, float], units: int, mean: float, e: Effect) -> bool:
    if kind != "proportion" or e.estimate is not None:
        return False
    _, ctrl_units, ctrl_mean = control
    return ctrl_units > 0 and units > 0 and ctrl_mean == mean and mean in (0.0, 1.0)


def assemble_metric(
    name: str,
    kind: Kind,
    role: Role,
    direction: Direction,
    margin: float,
    control: tuple[str, int, float],
    arms: Sequence[tuple[str, int, float, Effect]],
    nis: Sequence[NonInferiority] | None,
    *,
    method: Method,
    alpha: float,
    correction: Correction,
    primary_count: int,
) -> MetricAnalysis:
    """One metric's analysis from its comparisons (variant, units, mean, two-sided effect) and, for a guardrail,
    their non-inferiority tests: the multiplicity adjustment of the role and the verdicts. Shared by the scalar
    and the vectorised paths, so that both conclude alike."""
    comparisons: list[MetricComparison] = []
    if role == "guardrail":
        assert nis is not None
        nis = [
            NI_IDENTICAL_CONSTANT if _identical_constant_arms(kind, control, units, mean, e) else ni
            for (_, units, mean, e), ni in zip(arms, nis, strict=True)
        ]
        adjusted = (nis[0].p_value,) if len(nis) == 1 else adjust_pvalues([ni.p_value for ni in nis], correction)
        for (t_name, units, mean, e), ni, adj in zip(arms, nis, adjusted, strict=True):
            if ni is NI_IDENTICAL_CONSTANT:
                verdict: Verdict = "non_inferior"
            elif e.estimate is None:
                verdict = "not_shown"
            elif adj < alpha:
                verdict = "non_inferior"
            else:
                verdict = "worse" if two_sided_verdict(e, e.p_value, alpha, direction) == "worse" else "inconclusive"
            comparisons.append(MetricComparison(t_name, units, mean, e, adj, verdict, ni))
    else:
        raw = [e.p_value for *_, e in arms]
        if role == "primary":
            # one treatment: nothing to adjust across treatments (adjust_pvalues would return it as it is)
            across = raw if len(raw) == 1 else adjust_pvalues(raw, correction)
            adjusted = tuple(min(1.0, primary_count * p) for p in across)
        else:
            adjusted = tuple(raw)
        for (t_name, units, mean, e), adj in zip(arms, adjusted, strict=True):
            comparisons.append(
                MetricComparison(t_name, units, mean, e, adj, two_sided_verdict(e, adj, alpha, direction))
            )
    ctrl_name, ctrl_units, ctrl_mean = control
    return MetricAnalysis(
        name=name,
        kind=kind,
        role=role,
        direction=direction,
        margin=margin,
        control=ctrl_name,
        control_units=ctrl_units,
        control_mean=ctrl_mean,
        comparisons=tuple(comparisons),
        alpha=alpha,
        method=method,
    )


def _with_cuped(c: MetricComparison, ce: CupedEffect | None) -> MetricComparison:
    if ce is None:
        return c
    return replace(c, unadjusted=ce.unadjusted, variance_reduction=ce.variance_reduction)


def builtin_metric_analysis(
    analysis: ExperimentAnalysis, name: str, kind: Kind, units: Mapping[str, int]
) -> MetricAnalysis:
    """The single-metric analysis as a primary metric's analysis (direction increase, margin 0), with no new
    statistics: the numbers and verdicts are exactly the comparisons the single-metric decision used.
    ``units`` maps variant names to their exposures."""
    comparisons = tuple(_from_comparison(c, units.get(c.variant, 0), analysis.alpha) for c in analysis.comparisons)
    return MetricAnalysis(
        name=name,
        kind=kind,
        role="primary",
        direction="increase",
        margin=0.0,
        control=analysis.control,
        control_units=units.get(analysis.control, 0),
        control_mean=analysis.comparisons[0].mean_control if analysis.comparisons else 0.0,
        comparisons=comparisons,
        alpha=analysis.alpha,
        method=analysis.method,
    )


def _from_comparison(c: Comparison, units: int, alpha: float) -> MetricComparison:
    e = Effect(c.lift, c.se, c.ci_low, c.ci_high, c.p_value, c.method, True, c.reason)
    return MetricComparison(
        c.variant, units, c.mean_treatment, e, c.adjusted_p, two_sided_verdict(e, c.adjusted_p, alpha, "increase")
    )
