"""Two-arm effect estimation: Welch t-tests and asymptotic confidence sequences, scalar (math module) path.

Formulas follow GrowthBook's gbstats (frequentist/tests.py) so results agree where the methods coincide:
relative lift (muB-muA)/|muA| with the delta-method variance, Welch-Satterthwaite df for the fixed test,
and the Waudby-Smith et al. (arXiv 2103.06476) asymptotic confidence sequence for the sequential one.
"""

from __future__ import annotations

import math
from typing import Any

from scipy import special

from . import _validate as check
from . import reasons
from .errors import StatsInputError
from .models import Effect, ErrorRateResult, Method, MetricType, VariantStats

__all__ = [
    "compare_arms",
    "error_rate_test",
    "sequential_halfwidth",
    "sequential_one_sided_halfwidth",
    "sequential_one_sided_p_value",
    "sequential_p_value",
    "sequential_rho",
    "welch_df",
]


# gbstats tunes the one-sided sequence's rho at level 2*alpha and so refuses alpha >= 0.5, where that level
# reaches 1 and the tuning has no solution; just below it rho tends to 0 and the bound to infinity, so the
# error-rate check could never fire. rho is a free choice (any rho > 0 keeps the sequence valid), so alpha above
# 0.25 (minConfidence below 75) tunes at this level instead: every alpha the configuration allows still tests.
ONE_SIDED_MAX_TUNING_LEVEL = 0.5


def sequential_rho(alpha: float, n_star: float) -> float:
    """Return the mixing parameter rho that makes the two-sided sequence tightest at N = n_star (eq. 161).

    For the one-sided sequence pass 2*alpha, as gbstats does. No validation: callers pass checked values.
    """
    la = -2.0 * math.log(alpha)
    return math.sqrt((la + math.log(la + 1.0)) / n_star)


def sequential_halfwidth(se: float, n: float, alpha: float, rho: float) -> float:
    """Return the half-width of the two-sided asymptotic confidence sequence at total sample size n (eq. 9).

    se is the standard error of the estimate; n is n_control + n_treatment (gbstats uses the sum).
    """
    nr2 = n * rho * rho
    return se * math.sqrt(2.0 * (nr2 + 1.0) / (n * rho * rho) * math.log(math.sqrt(nr2 + 1.0) / alpha))


def sequential_p_value(z: float, n: float, rho: float) -> float:
    """Return the always-valid two-sided p-value for z = estimate/se: the smallest alpha whose sequence excludes 0.

    Closed form of gbstats' e-value (eq. 155) with rho held fixed: min(1, sqrt(n rho^2 + 1) *
    exp(-rho^2 n z^2 / (2 (n rho^2 + 1)))). Computed in log space so huge z underflows to 0, never NaN.
    """
    nr2 = n * rho * rho
    log_p = 0.5 * math.log1p(nr2) - nr2 * z * z / (2.0 * (nr2 + 1.0))
    return math.exp(log_p) if log_p < 0.0 else 1.0


def sequential_one_sided_halfwidth(se: float, n: float, alpha: float, rho: float) -> float:
    """Return the one-sided sequence's distance from estimate to bound (eq. 134; rho tuned at 2*alpha)."""
    nr2 = n * rho * rho
    return se * math.sqrt(2.0 * (nr2 + 1.0) / nr2 * math.log1p(math.sqrt(nr2 + 1.0) / (2.0 * alpha)))


def sequential_one_sided_p_value(z: float, n: float, rho: float) -> float:
    """Return the always-valid p-value for "effect > 0": smallest alpha whose one-sided bound exceeds 0.

    Inverting eq. 134 with rho fixed gives sqrt(n rho^2 + 1) / (2 expm1(rho^2 n z^2 / (2 (n rho^2 + 1)))),
    capped at 1; z <= 0 gives 1. gbstats finds the same number by bisection.
    """
    if not z > 0.0:
        return 1.0
    nr2 = n * rho * rho
    lam = nr2 * z * z / (2.0 * (nr2 + 1.0))
    if lam > 700.0:  # expm1 would overflow; p is far below any alpha anyone uses
        return math.exp(0.5 * math.log1p(nr2) - math.log(2.0) - lam)
    em = math.expm1(lam)
    if em <= 0.0:
        return 1.0
    return min(1.0, math.sqrt(nr2 + 1.0) / (2.0 * em))


def welch_df(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    """Return the Welch-Satterthwaite degrees of freedom for the unpooled difference of two means.

    Rescaled by the larger of var/n so tiny variances cannot underflow to 0/0; arms with zero variance
    contribute nothing (so n = 1 there is harmless). Caller guarantees at least one positive variance.
    """
    a = var_a / n_a if var_a > 0.0 else 0.0
    b = var_b / n_b if var_b > 0.0 else 0.0
    m = max(a, b)
    if not m > 0.0:  # both var/n underflowed (only reachable via the relative path's extreme ratios)
        return float(n_a + n_b - 2)
    a /= m
    b /= m
    den = (a * a / (n_a - 1) if a > 0.0 else 0.0) + (b * b / (n_b - 1) if b > 0.0 else 0.0)
    return (a + b) ** 2 / den


def _t_two_sided(z: float, df: float) -> float:
    p = 2.0 * float(special.stdtr(df, -abs(z)))
    return min(max(p, 0.0), 1.0)


def _t_crit(q: float, df: float) -> float:
    return float(special.stdtrit(df, q))


def _undefined(method: Method, relative: bool, reason: str) -> Effect:
    return Effect(None, None, None, None, 1.0, method, relative, reason)


def effect_from_moments(
    n_a: int,
    mean_a: float,
    var_a: float,
    n_b: int,
    mean_b: float,
    var_b: float,
    *,
    metric_type: MetricType,
    method: Method,
    alpha: float,
    n_star: float,
    relative: bool = True,
) -> Effect:
    """Return the effect of B over A from per-arm (n, mean, variance); inputs are assumed validated.

    Undefined results (see reasons) carry p_value 1.0 and None statistics. Relative mode needs both arm
    variances > 0 (as gbstats); absolute mode only needs the total variance > 0.
    """
    if n_a == 0:
        return _undefined(method, relative, reasons.NO_EXPOSURES_CONTROL)
    if n_b == 0:
        return _undefined(method, relative, reasons.NO_EXPOSURES_TREATMENT)
    if metric_type == "mean" and (n_a < 2 or n_b < 2):
        return _undefined(method, relative, reasons.TOO_FEW_EXPOSURES)
    if metric_type == "conversion" and mean_a == 0.0 and mean_b == 0.0:
        return _undefined(method, relative, reasons.NO_CONVERSIONS)
    if relative:
        if mean_a == 0.0:
            why = reasons.CONTROL_RATE_ZERO if metric_type == "conversion" else reasons.CONTROL_MEAN_ZERO
            return _undefined(method, relative, why)
        if var_a <= 0.0 or var_b <= 0.0:
            return _undefined(method, relative, reasons.ZERO_VARIANCE)
        # Delta method on muB/muA; written with the ratio r so muA**4 cannot underflow to 0.
        inv = 1.0 / mean_a
        r = mean_b * inv
        est = (mean_b - mean_a) / abs(mean_a)
        var = (var_b / n_b + var_a * r * r / n_a) * inv * inv
    else:
        est = mean_b - mean_a
        var = var_a / n_a + var_b / n_b
    if not var > 0.0:
        return _undefined(method, relative, reasons.ZERO_VARIANCE)
    if not (math.isfinite(est) and math.isfinite(var)):
        return _undefined(method, relative, reasons.NOT_FINITE)
    se = math.sqrt(var)
    z = est / se
    if method == "fixed":
        df = welch_df(var_a, n_a, var_b, n_b)
        p = _t_two_sided(z, df)
        hw = _t_crit(1.0 - alpha / 2.0, df) * se
        return Effect(est, se, est - hw, est + hw, p, method, relative, None, df)
    n = float(n_a + n_b)
    rho = sequential_rho(alpha, n_star)
    hw = sequential_halfwidth(se, n, alpha, rho)
    p = sequential_p_value(z, n, rho)
    return Effect(est, se, est - hw, est + hw, p, method, relative, None)


def compare_arms(
    control: VariantStats,
    treatment: VariantStats,
    *,
    metric_type: MetricType = "conversion",
    method: Method = "sequential",
    alpha: float = 0.05,
    n_star: float = 5000,
    relative: bool = True,
) -> Effect:
    """Estimate one treatment's effect over control: two-sided p-value and 1-alpha interval, no correction.

    relative=True gives the lift (muB-muA)/|muA| that analyze_experiment reports; relative=False the plain
    difference muB-muA (swapping arms flips its sign and keeps its p-value). Raises StatsInputError only.
    """
    mt = check.metric_type(metric_type)
    m = check.method(method)
    a = check.alpha(alpha)
    ns = check.n_star(n_star)
    n_a, mu_a, v_a = check.variant(control, mt)
    n_b, mu_b, v_b = check.variant(treatment, mt)
    return effect_from_moments(
        n_a, mu_a, v_a, n_b, mu_b, v_b, metric_type=mt, method=m, alpha=a, n_star=ns, relative=bool(relative)
    )


def error_rate_test(
    control: VariantStats,
    treatment: VariantStats,
    *,
    method: Method = "sequential",
    alpha: float = 0.05,
    n_star: float = 5000,
) -> ErrorRateResult:
    """One-sided test that the treatment's error rate (errors/exposures) is significantly ABOVE control's.

    Works on the absolute difference, so a control with 0 errors is fine. fixed: one-sided Welch t-test.
    sequential: gbstats' one-sided asymptotic confidence sequence (Waudby-Smith et al. eq. 134, rho tuned at
    2*alpha, at most ONE_SIDED_MAX_TUNING_LEVEL), safe to re-run after every batch; p-value is its closed-form
    inverse. When both arms have zero unpooled variance (e.g. 0% vs 100%) the pooled variance is used instead.
    errors must not exceed exposures (StatsInputError otherwise).
    """
    m = check.method(method)
    a = check.alpha(alpha)
    ns = check.n_star(n_star)
    n_a, e_a = _error_counts(control)
    n_b, e_b = _error_counts(treatment)
    ra = e_a / n_a if n_a else 0.0
    rb = e_b / n_b if n_b else 0.0
    diff = rb - ra

    def undefined(why: str) -> ErrorRateResult:
        return ErrorRateResult(ra, rb, 1.0, False, m, why, diff, None)

    if n_a == 0:
        return undefined(reasons.NO_EXPOSURES_CONTROL)
    if n_b == 0:
        return undefined(reasons.NO_EXPOSURES_TREATMENT)
    if e_a == 0 and e_b == 0:
        return undefined(reasons.NO_ERRORS)
    va, vb = ra * (1.0 - ra), rb * (1.0 - rb)
    var = va / n_a + vb / n_b
    if var > 0.0:
        df = welch_df(va, n_a, vb, n_b)
    else:
        # Both arms degenerate (each rate 0 or 1) yet different: the unpooled se of 0 would make any gap
        # infinitely significant, so fall back to the pooled (null-hypothesis) variance.
        pooled = (e_a + e_b) / (n_a + n_b)
        var = pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b)
        df = float(n_a + n_b - 2)
        if not var > 0.0 or df <= 0.0:
            return undefined(reasons.ERROR_RATES_DEGENERATE)
    se = math.sqrt(var)
    z = diff / se
    if m == "fixed":
        p = min(max(float(special.stdtr(df, -z)), 0.0), 1.0)
        lo = diff - _t_crit(1.0 - a, df) * se
    else:
        n = float(n_a + n_b)
        rho = sequential_rho(min(2.0 * a, ONE_SIDED_MAX_TUNING_LEVEL), ns)
        p = sequential_one_sided_p_value(z, n, rho)
        lo = diff - sequential_one_sided_halfwidth(se, n, a, rho)
    return ErrorRateResult(ra, rb, p, p < a, m, None, diff, lo)


def _error_counts(v: Any) -> tuple[int, int]:
    if not isinstance(v, VariantStats):
        raise StatsInputError(f"expected VariantStats, got {type(v).__name__}")
    n = check.count(f"variant {v.name!r}: exposures", v.exposures)
    e = check.count(f"variant {v.name!r}: errors", v.errors)
    if e > n:
        raise StatsInputError(f"variant {v.name!r}: errors ({e}) exceed exposures ({n})")
    return n, e
