"""CUPED: the effect of B over A adjusted by a pre-exposure covariate (regression adjustment), scalar path.

GrowthBook's ``RegressionAdjustedStatistic`` as its stats engine computes it today (gbstats after its "CUPED
variance update", #3610): for every unit the metric value y and its pre-exposure value x (the same metric
before exposure, or any covariate the treatment cannot move).

- theta is fitted on both arms pooled: theta = Cov(y, x) / Var(x) over the union of the two arms' units, so
  it does not depend on the assignment (a per-arm theta would). theta = 0 when either pooled variance is 0,
  and then the comparison is exactly the unadjusted one.
- Each arm's adjusted mean is mean(y) - theta * mean(x); its variance Var(y) + theta^2 Var(x) - 2 theta Cov(y, x).
- Absolute effect: the difference of adjusted means, variance Var_A/n_A + Var_B/n_B.
- Relative effect: (adjusted B - adjusted A) / |mean_A(y)| (unadjusted control mean in the denominator). Its
  delta-method variance, with r = mean_B(y)/mean_A(y):
      [Var_B,adj / n_B + (r^2 Var_A(y) - 2 theta r Cov_A(y, x) + theta^2 Var_A(x)) / n_A] / mean_A(y)^2
  (gbstats 0.8 scaled the whole adjusted control variance by r^2; the two agree when r = 1.)
- Fixed: Welch t with the adjusted variances; sequential: the house's asymptotic confidence sequence
  (effects.py) on the adjusted estimate and standard error, n = n_A + n_B. theta is refitted at every look,
  as GrowthBook does; the A/A simulations in bench/bench_stats.py check that peeking stays within alpha.

Kinds: ``mean`` (y has sample variance, n - 1) and ``proportion`` (y is 0/1, variance p(1 - p)). The covariate is
a sample mean (n - 1) unless the metric is a proportion and the covariate is 0/1 in every arm (sum of squares =
sum), then a proportion as well, with gbstats' n-denominator covariance for two proportions.

``variance_reduction`` is 1 - Var(adjusted estimate) / Var(unadjusted estimate) on the same scale; it tends to
rho^2, the squared correlation of y and x.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from . import _validate as check
from . import reasons
from .effects import (
    _t_crit,
    _t_two_sided,
    effect_from_moments,
    sequential_halfwidth,
    sequential_p_value,
    sequential_rho,
    welch_df,
)
from .errors import StatsInputError
from .models import Effect, Method

__all__ = [
    "CovariateCoverage",
    "CovariateSums",
    "CovariateSumsLike",
    "CupedEffect",
    "CupedKind",
    "covariate_coverage",
    "covariate_sums",
    "cuped_effect",
    "metric_cuped",
    "pooled_theta",
]

CupedKind = Literal["mean", "proportion"]
_KINDS = ("mean", "proportion")


@dataclass(frozen=True, slots=True)
class CovariateSums:
    """One arm's sums over its n units: the metric y and the pre-exposure covariate x of the same units.

    value_sum = Σy, value_sum_sq = Σy² (a proportion's is its value_sum: ignored), pre_sum = Σx, pre_sum_sq = Σx²,
    value_pre_product_sum = Σxy.
    """

    n: int
    value_sum: float
    value_sum_sq: float
    pre_sum: float
    pre_sum_sq: float
    value_pre_product_sum: float


@dataclass(frozen=True, slots=True)
class CupedEffect:
    """A treatment's effect with and without the covariate, from the same units."""

    adjusted: Effect  # the regression-adjusted estimate; equals unadjusted when theta is 0
    unadjusted: Effect  # what the house reports without CUPED (effects.effect_from_moments)
    theta: float  # the coefficient used: 0 when the comparison is undefined or a pooled variance is 0
    variance_reduction: float | None  # 1 - Var(adjusted)/Var(unadjusted); None when either is undefined
    mean_control: float  # unadjusted means (what each arm's units did)
    mean_treatment: float
    adjusted_mean_control: float
    adjusted_mean_treatment: float


@dataclass(frozen=True, slots=True)
class _Arm:
    n: int
    mean_y: float
    var_y: float
    mean_x: float
    var_x: float
    cov: float

    def adjusted_mean(self, theta: float) -> float:
        return self.mean_y - theta * self.mean_x

    def adjusted_var(self, theta: float) -> float:
        if self.n <= 1:
            return 0.0
        return self.var_y + theta * theta * self.var_x - 2.0 * theta * self.cov


def _sample_var(n: int, s: float, ss: float) -> float:
    if n <= 1:
        return 0.0
    return max(ss - s * (s / n), 0.0) / (n - 1)


def _prop_var(n: int, s: float) -> float:
    if n == 0:
        return 0.0
    p = s / n
    return p * (1.0 - p)


def _moments(n: int, y: float, yy: float, x: float, xx: float, xy: float, y_prop: bool, x_prop: bool) -> _Arm:
    """(mean, variance) of y and x and their covariance, by gbstats' conventions for each statistic type."""
    if n == 0:
        return _Arm(0, 0.0, 0.0, 0.0, 0.0, 0.0)
    var_y = _prop_var(n, y) if y_prop else _sample_var(n, y, yy)
    var_x = _prop_var(n, x) if x_prop else _sample_var(n, x, xx)
    if n <= 1:
        cov = 0.0
    elif y_prop and x_prop:
        cov = xy / n - (y / n) * (x / n)
    else:
        cov = (xy - y * (x / n)) / (n - 1)
    return _Arm(n, y / n, var_y, x / n, var_x, cov)


def _validated(label: str, s: Any, kind: CupedKind) -> CovariateSums:
    if not isinstance(s, CovariateSums):
        raise StatsInputError(f"{label}: expected CovariateSums, got {type(s).__name__}")
    n = check.count(f"{label}: n", s.n)
    y = check.real(f"{label}: value_sum", s.value_sum)
    yy = y if kind == "proportion" else check.real(f"{label}: value_sum_sq", s.value_sum_sq)
    x = check.real(f"{label}: pre_sum", s.pre_sum)
    xx = check.real(f"{label}: pre_sum_sq", s.pre_sum_sq)
    xy = check.real(f"{label}: value_pre_product_sum", s.value_pre_product_sum)
    if kind == "proportion" and not 0.0 <= y <= n:
        raise StatsInputError(f"{label}: value_sum ({y!r}) must be a count of converted units in [0, {n}]")
    if n == 0:
        if any(v != 0.0 for v in (y, yy, x, xx, xy)):
            raise StatsInputError(f"{label}: every sum must be 0 when n is 0")
        return CovariateSums(0, 0.0, 0.0, 0.0, 0.0, 0.0)
    # Cauchy-Schwarz on the centred sums, with room for float round-off in SQL sums.
    syy, sxx = yy - y * (y / n), xx - x * (x / n)
    for name, centred, raw in (("value_sum_sq", syy, yy), ("pre_sum_sq", sxx, xx)):
        if centred < -1e-9 * abs(raw) - 1e-300:
            raise StatsInputError(f"{label}: {name} is smaller than its sum squared over n: not a sum of squares")
    sxy = xy - y * (x / n)
    bound = math.sqrt(max(syy, 0.0) * max(sxx, 0.0))
    if abs(sxy) > bound * (1.0 + 1e-9) + 1e-9 * (abs(xy) + abs(y * x / n)) + 1e-300:
        raise StatsInputError(
            f"{label}: value_pre_product_sum ({xy!r}) is impossible for these sums (|Σxy - ΣxΣy/n| exceeds "
            "sqrt of the centred sums of squares): send Σ x·x_pre over the same units as the other sums"
        )
    return CovariateSums(n, y, yy, x, xx, xy)


def _binary_covariate(kind: CupedKind, *arms: CovariateSums) -> bool:
    return kind == "proportion" and all(a.pre_sum_sq == a.pre_sum and 0.0 <= a.pre_sum <= a.n for a in arms)


def pooled_theta(a: CovariateSums, b: CovariateSums, *, kind: CupedKind = "mean") -> float:
    """theta = Cov(y, x) / Var(x) over both arms' units pooled; 0 when either pooled variance is 0."""
    k = _kind(kind)
    a, b = _validated("control", a, k), _validated("treatment", b, k)
    return _theta(a, b, k, _binary_covariate(k, a, b))


def _theta(a: CovariateSums, b: CovariateSums, kind: CupedKind, x_prop: bool) -> float:
    n = a.n + b.n
    joint = _moments(
        n,
        a.value_sum + b.value_sum,
        a.value_sum_sq + b.value_sum_sq,
        a.pre_sum + b.pre_sum,
        a.pre_sum_sq + b.pre_sum_sq,
        a.value_pre_product_sum + b.value_pre_product_sum,
        kind == "proportion",
        x_prop,
    )
    if joint.var_x == 0.0 or joint.var_y == 0.0:
        return 0.0
    return joint.cov / joint.var_x


def _kind(kind: Any) -> CupedKind:
    if kind not in _KINDS:
        raise StatsInputError(f"kind must be one of {_KINDS} for CUPED, got {kind!r}")
    return kind  # type: ignore[no-any-return]


def cuped_effect(
    control: CovariateSums,
    treatment: CovariateSums,
    *,
    kind: CupedKind = "mean",
    method: Method = "sequential",
    alpha: float = 0.05,
    n_star: float = 5000,
    relative: bool = True,
) -> CupedEffect:
    """Estimate one treatment's effect over control with and without its pre-exposure covariate.

    Both results come from the same units, so a caller can report either; no multiplicity correction.
    Undefined results carry p 1.0 and a reason, never an exception; impossible sums raise StatsInputError.
    """
    k = _kind(kind)
    m = check.method(method)
    a_ = check.alpha(alpha)
    ns = check.n_star(n_star)
    a, b = _validated("control", control, k), _validated("treatment", treatment, k)
    x_prop = _binary_covariate(k, a, b)
    y_prop = k == "proportion"
    arm_a = _moments(a.n, a.value_sum, a.value_sum_sq, a.pre_sum, a.pre_sum_sq, a.value_pre_product_sum, y_prop, x_prop)
    arm_b = _moments(b.n, b.value_sum, b.value_sum_sq, b.pre_sum, b.pre_sum_sq, b.value_pre_product_sum, y_prop, x_prop)
    unadjusted = effect_from_moments(
        arm_a.n,
        arm_a.mean_y,
        arm_a.var_y,
        arm_b.n,
        arm_b.mean_y,
        arm_b.var_y,
        metric_type="conversion" if y_prop else "mean",
        method=m,
        alpha=a_,
        n_star=ns,
        relative=bool(relative),
    )
    theta = _theta(a, b, k, x_prop) if unadjusted.estimate is not None else 0.0
    if theta == 0.0 or unadjusted.estimate is None:
        # gbstats reverts to the unadjusted statistics when theta is 0; an undefined comparison stays undefined.
        adjusted = unadjusted
    else:
        adjusted = _adjusted_effect(arm_a, arm_b, theta, m, a_, ns, bool(relative))
    reduction = None
    if adjusted.se is not None and unadjusted.se is not None and unadjusted.se > 0.0:
        reduction = 1.0 - (adjusted.se / unadjusted.se) ** 2
    return CupedEffect(
        adjusted=adjusted,
        unadjusted=unadjusted,
        theta=theta,
        variance_reduction=reduction,
        mean_control=arm_a.mean_y,
        mean_treatment=arm_b.mean_y,
        adjusted_mean_control=arm_a.adjusted_mean(theta),
        adjusted_mean_treatment=arm_b.adjusted_mean(theta),
    )


def _adjusted_effect(a: _Arm, b: _Arm, theta: float, method: Method, alpha: float, n_star: float, rel: bool) -> Effect:
    """The regression-adjusted effect; a and b have defined unadjusted statistics (n >= 1, means checked)."""
    mean_a, mean_b = a.adjusted_mean(theta), b.adjusted_mean(theta)
    var_a, var_b = a.adjusted_var(theta), b.adjusted_var(theta)
    if var_a <= 0.0 or var_b <= 0.0:
        return Effect(None, None, None, None, 1.0, method, rel, reasons.ZERO_VARIANCE)
    if rel:
        if mean_a == 0.0:
            return Effect(None, None, None, None, 1.0, method, rel, reasons.CONTROL_MEAN_ZERO)
        base = a.mean_y
        r = b.mean_y / base
        est = (mean_b - mean_a) / abs(base)
        v_ctrl = r * r * a.var_y - 2.0 * theta * r * a.cov + theta * theta * a.var_x
        var = (var_b / b.n + v_ctrl / a.n) / (base * base)
    else:
        est = mean_b - mean_a
        var = var_a / a.n + var_b / b.n
    if not var > 0.0:
        return Effect(None, None, None, None, 1.0, method, rel, reasons.ZERO_VARIANCE)
    if not (math.isfinite(est) and math.isfinite(var)):
        return Effect(None, None, None, None, 1.0, method, rel, reasons.NOT_FINITE)
    se = math.sqrt(var)
    z = est / se
    if method == "fixed":
        df = welch_df(var_a, a.n, var_b, b.n)
        hw = _t_crit(1.0 - alpha / 2.0, df) * se
        return Effect(est, se, est - hw, est + hw, _t_two_sided(z, df), method, rel, None, df)
    n = float(a.n + b.n)
    rho = sequential_rho(alpha, n_star)
    hw = sequential_halfwidth(se, n, alpha, rho)
    return Effect(est, se, est - hw, est + hw, sequential_p_value(z, n, rho), method, rel, None)


class CovariateSumsLike(Protocol):
    """One arm's sums of a metric with its covariate's (``worker.domain.metrics.MetricSums`` fits)."""

    @property
    def units(self) -> int: ...
    @property
    def value_sum(self) -> float: ...
    @property
    def value_sum_sq(self) -> float: ...
    @property
    def pre_units(self) -> int: ...
    @property
    def pre_sum(self) -> float | None: ...
    @property
    def pre_sum_sq(self) -> float | None: ...
    @property
    def pre_value_product_sum(self) -> float | None: ...


def covariate_sums(s: CovariateSumsLike) -> CovariateSums:
    """The CUPED input of an arm whose every unit sent its covariate (covariate_coverage says when)."""
    return CovariateSums(
        n=s.units,
        value_sum=s.value_sum,
        value_sum_sq=s.value_sum_sq,
        pre_sum=s.pre_sum or 0.0,
        pre_sum_sq=s.pre_sum_sq or 0.0,
        value_pre_product_sum=s.pre_value_product_sum or 0.0,
    )


@dataclass(frozen=True, slots=True)
class CovariateCoverage:
    """Whether CUPED may adjust a metric, and what to tell people when some covariates are missing."""

    applies: bool
    note: str | None  # set when covariates came for some units but not all: CUPED is off for now, say so


def covariate_coverage(metric: str, arms: Sequence[tuple[str, CovariateSumsLike | None]]) -> CovariateCoverage:
    """CUPED applies when every unit of every arm with data sent its pre-exposure value (pre_units = units).

    Mixing adjusted and unadjusted units would bias the estimate, so a partial covariate means no CUPED for the
    metric (every treatment alike) and a note naming the metric, the arms and how many units lack it. Arms
    without units are left out (nothing to adjust); no covariate at all is the plain case: no note.
    """
    with_units = [(v, s) for v, s in arms if s is not None and s.units > 0]
    if not with_units:
        return CovariateCoverage(False, None)
    sent = sum(min(max(s.pre_units, 0), s.units) for _, s in with_units)
    if sent == 0:
        return CovariateCoverage(False, None)
    short = [(v, s.units - min(max(s.pre_units, 0), s.units), s.units) for v, s in with_units]
    missing = [x for x in short if x[1] > 0]
    if not missing:
        return CovariateCoverage(True, None)
    total = sum(s.units for _, s in with_units)
    lacking = sum(m for _, m, _ in missing)
    where = ", ".join(f"{v}: {m:,} of {n:,}" for v, m, n in missing)
    return CovariateCoverage(
        False,
        f"metric {metric}: CUPED not applied — {lacking:,} of {total:,} units came without their pre-exposure "
        f"value ({where}); the unadjusted estimate is reported until every update carries pre_sum, pre_sum_sq "
        "and pre_value_product_sum",
    )


def metric_cuped(
    kind: str,
    metric: str,
    setting: str,
    control: tuple[str, CovariateSumsLike],
    treatments: Sequence[tuple[str, CovariateSumsLike | None]],
    *,
    method: Method,
    alpha: float,
    n_star: float,
) -> tuple[dict[str, CupedEffect], str | None]:
    """A metric's CUPED effects per treatment (variant -> CupedEffect) when its setting and data allow, else {}.

    ``setting`` is the metric's ``cuped`` (auto | off); ``kind`` proportion or mean (ratio metrics have no
    covariate). The note is covariate_coverage's: set when covariates are missing for some units.
    """
    if setting != "auto" or kind not in _KINDS:
        return {}, None
    k = _kind(kind)
    coverage = covariate_coverage(metric, [control, *treatments])
    if not coverage.applies:
        return {}, coverage.note
    ctrl = covariate_sums(control[1])
    effects = {
        name: cuped_effect(ctrl, covariate_sums(sums), kind=k, method=method, alpha=alpha, n_star=n_star)
        for name, sums in treatments
        if sums is not None and sums.units > 0
    }
    lost = [name for name, e in effects.items() if e.adjusted.estimate is None and e.unadjusted.estimate is not None]
    if lost:
        # The covariate explains the metric exactly (adjusted variance 0): no test is possible on the adjusted
        # scale, and adjusting only the other treatments would mix; the unadjusted estimate still tests.
        return {}, (
            f"metric {metric}: CUPED not applied — the pre-exposure value explains the metric exactly for "
            f"{', '.join(lost)} (no variance left to test); the unadjusted estimate is reported"
        )
    return effects, None
