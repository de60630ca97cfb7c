"""compare_metrics_many: metric_effect and non_inferiority for many (metric, treatment) pairs at once, on numpy arrays.

The scan decides thousands of experiments with several metrics each; one scalar comparison costs a few
microseconds of Python, this costs a few numpy calls per batch. Same formulas, same order of operations and the
same reason precedence as ``metrics.arm_estimate`` / ``effects.effect_from_moments`` / ``metrics.non_inferiority``,
so the numbers agree to floating-point round-off (tests hold them to 1e-9 relative). Rows whose sums the scalar
path would refuse (StatsInputError) are flagged ``invalid`` rather than raising, so that one bad row cannot spoil a
batch: the caller decides those on the scalar path, which reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special

from . import _validate as check
from . import reasons
from .effects import ONE_SIDED_MAX_TUNING_LEVEL, sequential_rho
from .models import Method
from .vectorized import _welch_df

__all__ = ["KIND_CODES", "ManyMetricComparisons", "compare_metrics_many"]

F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]
I8 = npt.NDArray[np.int8]

KIND_CODES = {"proportion": 0, "mean": 1, "ratio": 2}
_R = {r: np.int8(i) for i, r in enumerate(reasons.CODES) if r is not None}


@dataclass(frozen=True, slots=True)
class ManyMetricComparisons:
    """Per pair: each arm's (n, mean, variance), the two-sided effect and the non-inferiority test.

    Undefined statistics are NaN; reason_code indexes reasons.CODES (0 = computed); p_value and ni_p_value are 1.0
    where undefined. df is NaN under the sequential method.
    """

    n_a: npt.NDArray[np.int64]
    mean_a: F64
    n_b: npt.NDArray[np.int64]
    mean_b: F64
    estimate: F64
    se: F64
    ci_low: F64
    ci_high: F64
    p_value: F64
    df: F64
    ni_p_value: F64
    ni_bound: F64
    reason_code: I8
    invalid: B


def _arm(kind: I8, n: F64, s: F64, ss: F64, d: F64, dd: F64, sd: F64) -> tuple[F64, F64, B]:
    """(mean, per-unit variance, invalid) of arm_estimate for every row."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        pos = n > 0
        safe_n = np.where(pos, n, 1.0)
        prop, mean_k, ratio = kind == 0, kind == 1, kind == 2
        finite = np.isfinite(s) & np.isfinite(ss)
        # proportion
        p = s / safe_n
        bad_prop = prop & ((s < 0) | (s > n) | (s != np.floor(s)) | ~np.isfinite(s))
        # mean
        m = s / safe_n
        centred = ss - s * m
        bad_mean = mean_k & (~finite | (ss < 0) | (pos & ((centred < -1e-9 * ss - 1e-300) | ~np.isfinite(centred))))
        var_mean = np.where(n > 1, np.maximum(centred, 0.0) / np.where(n > 1, n - 1, 1.0), 0.0)
        # ratio
        r_mean = np.where(d != 0, s / np.where(d != 0, d, 1.0), 0.0)
        mx, my = s / safe_n, d / safe_n
        n1 = np.where(n > 1, n - 1, 1.0)
        var_x = (ss - s * s / safe_n) / n1
        var_y = (dd - d * d / safe_n) / n1
        cov = (sd - s * d / safe_n) / n1
        my_safe = np.where(my != 0, my, 1.0)
        var_r = var_x / my_safe**2 - 2.0 * cov * mx / my_safe**3 + mx * mx * var_y / my_safe**4
        var_r = np.where((my != 0) & (n > 1) & np.isfinite(var_r), var_r, 0.0)
        bad_ratio = ratio & ~(finite & np.isfinite(d) & np.isfinite(dd) & np.isfinite(sd))
        mean = np.where(prop, p, np.where(mean_k, m, r_mean))
        var = np.where(prop, p * (1.0 - p), np.where(mean_k, var_mean, var_r))
        mean = np.where(pos, mean, 0.0)
        var = np.where(pos, var, 0.0)
    invalid = bad_prop | bad_mean | bad_ratio | (n < 0) | ((kind < 0) | (kind > 2))
    return mean, var, invalid


def compare_metrics_many(
    kind: npt.ArrayLike,
    control: tuple[npt.ArrayLike, ...],
    treatment: tuple[npt.ArrayLike, ...],
    direction_sign: npt.ArrayLike,
    margin: npt.ArrayLike,
    *,
    method: Method = "sequential",
    alpha: float = 0.05,
    n_star: float = 5000,
) -> ManyMetricComparisons:
    """Compare treatment with control for every row (one metric of one treatment of one experiment).

    ``control`` and ``treatment`` are six arrays each: units, Σx, Σx², Σy, Σy², Σxy (the denominator sums are
    ignored, and may be 0, for proportion and mean rows). ``kind``: KIND_CODES. ``direction_sign``: +1 where higher
    is better, -1 where lower is. ``margin``: the relative non-inferiority margin (0 where not a guardrail).
    """
    m, a, ns = check.method(method), check.alpha(alpha), check.n_star(n_star)
    k = np.asarray(kind, dtype=np.int8)
    ca = [np.asarray(x, dtype=np.float64) for x in control]
    tb = [np.asarray(x, dtype=np.float64) for x in treatment]
    sign = np.asarray(direction_sign, dtype=np.float64)
    mg = np.asarray(margin, dtype=np.float64)
    n_a, n_b = ca[0], tb[0]
    mean_a, var_a, bad_a = _arm(k, *ca)
    mean_b, var_b, bad_b = _arm(k, *tb)
    nan = np.full(k.shape, np.nan)
    code = np.zeros(k.shape, dtype=np.int8)

    def mark(cond: B, reason: str) -> None:
        code[(code == 0) & cond] = _R[reason]

    is_prop = k == 0
    mark(n_a == 0, reasons.NO_EXPOSURES_CONTROL)
    mark(n_b == 0, reasons.NO_EXPOSURES_TREATMENT)
    mark(~is_prop & ((n_a < 2) | (n_b < 2)), reasons.TOO_FEW_EXPOSURES)
    mark(is_prop & (mean_a == 0.0) & (mean_b == 0.0), reasons.NO_CONVERSIONS)
    mark(is_prop & (mean_a == 0.0), reasons.CONTROL_RATE_ZERO)
    mark(~is_prop & (mean_a == 0.0), reasons.CONTROL_MEAN_ZERO)
    mark((var_a <= 0.0) | (var_b <= 0.0), reasons.ZERO_VARIANCE)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = 1.0 / np.where(mean_a != 0.0, mean_a, 1.0)
        r = mean_b * inv
        est = (mean_b - mean_a) / np.abs(np.where(mean_a != 0.0, mean_a, 1.0))
        var = (var_b / np.where(n_b > 0, n_b, 1.0) + var_a * r * r / np.where(n_a > 0, n_a, 1.0)) * inv * inv
        mark(~(var > 0.0), reasons.ZERO_VARIANCE)
        mark(~(np.isfinite(est) & np.isfinite(var)), reasons.NOT_FINITE)
        ok = code == 0
        se = np.sqrt(np.where(ok, var, 1.0))
        z = est / se
        total = n_a + n_b
        if m == "fixed":
            df = _welch_df(var_a, np.where(ok, n_a, 2.0), var_b, np.where(ok, n_b, 2.0), ok)
            df = np.where(ok, df, 1.0)
            p = np.clip(2.0 * special.stdtr(df, -np.abs(z)), 0.0, 1.0)
            hw = special.stdtrit(df, 1.0 - a / 2.0) * se
            z_ni = (sign * est + mg) / se
            p_ni = np.clip(special.stdtr(df, -z_ni), 0.0, 1.0)
            hw1 = special.stdtrit(df, 1.0 - a) * se
        else:
            df = nan
            rho = sequential_rho(a, ns)
            nr2 = total * rho * rho
            hw = se * np.sqrt(2.0 * (nr2 + 1.0) / (total * rho * rho) * np.log(np.sqrt(nr2 + 1.0) / a))
            log_p = 0.5 * np.log1p(nr2) - nr2 * z * z / (2.0 * (nr2 + 1.0))
            p = np.where(log_p < 0.0, np.exp(np.minimum(log_p, 0.0)), 1.0)
            rho1 = sequential_rho(min(2.0 * a, ONE_SIDED_MAX_TUNING_LEVEL), ns)
            nr1 = total * rho1 * rho1
            z_ni = (sign * est + mg) / se
            lam = nr1 * z_ni * z_ni / (2.0 * (nr1 + 1.0))
            big = lam > 700.0
            em = np.expm1(np.where(big, 0.0, lam))
            p_small = np.where(em > 0.0, np.minimum(1.0, np.sqrt(nr1 + 1.0) / (2.0 * np.where(em > 0, em, 1.0))), 1.0)
            p_big = np.exp(0.5 * np.log1p(nr1) - np.log(2.0) - lam)
            p_ni = np.where(z_ni > 0.0, np.where(big, p_big, p_small), 1.0)
            hw1 = se * np.sqrt(2.0 * (nr1 + 1.0) / nr1 * np.log1p(np.sqrt(nr1 + 1.0) / (2.0 * a)))
    return ManyMetricComparisons(
        n_a=n_a.astype(np.int64),
        mean_a=mean_a,
        n_b=n_b.astype(np.int64),
        mean_b=mean_b,
        estimate=np.where(ok, est, nan),
        se=np.where(ok, se, nan),
        ci_low=np.where(ok, est - hw, nan),
        ci_high=np.where(ok, est + hw, nan),
        p_value=np.where(ok, p, 1.0),
        df=np.where(ok, df, nan),
        ni_p_value=np.where(ok, p_ni, 1.0),
        ni_bound=np.where(ok, est - sign * hw1, nan),
        reason_code=code,
        invalid=bad_a | bad_b,
    )
