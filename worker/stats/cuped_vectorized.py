"""cuped_many: cuped_effect for thousands of two-arm comparisons at once, on numpy arrays.

The same formulas and the same undefined-result rules as the scalar path (cuped.py), so the numbers agree to
floating-point round-off (tests hold them to 1e-9 relative). Simulations (bench/bench_stats.py) use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special

from . import _validate as check
from .cuped import CupedKind, _kind
from .effects import sequential_rho
from .errors import StatsInputError
from .models import Method

__all__ = ["ManyCuped", "ManyEffects", "cuped_many"]

F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class ManyEffects:
    """One estimator's results for E comparisons, shape (E,): NaN where undefined (p_value is then 1.0)."""

    estimate: F64
    se: F64
    ci_low: F64
    ci_high: F64
    p_value: F64

    @property
    def defined(self) -> B:
        return np.isfinite(self.estimate)


@dataclass(frozen=True, slots=True)
class ManyCuped:
    """cuped_many's results: the adjusted and unadjusted effects, theta and the variance reduction, shape (E,)."""

    adjusted: ManyEffects
    unadjusted: ManyEffects
    theta: F64
    variance_reduction: F64  # NaN where either estimate is undefined


def _arr(name: str, x: Any, shape: tuple[int, ...] | None) -> F64:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise StatsInputError(f"{name} must have shape (comparisons, 2): control in column 0, got {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise StatsInputError(f"{name} has shape {arr.shape}, expected {shape}")
    if not np.all(np.isfinite(arr)):
        raise StatsInputError(f"{name} must be finite (got NaN or infinity)")
    return arr


def _t_effects(
    est: F64, var: F64, df: F64 | None, n_total: F64, ok: B, method: Method, alpha: float, n_star: float
) -> ManyEffects:
    nan = np.full(est.shape, np.nan)
    with np.errstate(all="ignore"):
        se = np.sqrt(var)
        z = est / se
        if method == "fixed":
            assert df is not None
            p = np.clip(2.0 * special.stdtr(df, -np.abs(z)), 0.0, 1.0)
            hw = special.stdtrit(df, 1.0 - alpha / 2.0) * se
        else:
            rho = sequential_rho(alpha, n_star)
            nr2 = n_total * rho * rho
            hw = se * np.sqrt(2.0 * (nr2 + 1.0) / nr2 * np.log(np.sqrt(nr2 + 1.0) / alpha))
            log_p = 0.5 * np.log1p(nr2) - nr2 * z * z / (2.0 * (nr2 + 1.0))
            p = np.where(log_p < 0.0, np.exp(np.minimum(log_p, 0.0)), 1.0)
    return ManyEffects(
        estimate=np.where(ok, est, nan),
        se=np.where(ok, se, nan),
        ci_low=np.where(ok, est - hw, nan),
        ci_high=np.where(ok, est + hw, nan),
        p_value=np.where(ok, p, 1.0),
    )


def _welch(var_a: F64, n_a: F64, var_b: F64, n_b: F64) -> F64:
    with np.errstate(all="ignore"):
        a = np.where(var_a > 0.0, var_a / n_a, 0.0)
        b = np.where(var_b > 0.0, var_b / n_b, 0.0)
        m = np.maximum(a, b)
        a, b = a / m, b / m
        den = np.where(a > 0.0, a * a / (n_a - 1.0), 0.0) + np.where(b > 0.0, b * b / (n_b - 1.0), 0.0)
        df = (a + b) ** 2 / den
    return np.where(m > 0.0, df, n_a + n_b - 2.0)


def cuped_many(
    n: npt.ArrayLike,
    value_sum: npt.ArrayLike,
    value_sum_sq: npt.ArrayLike,
    pre_sum: npt.ArrayLike,
    pre_sum_sq: npt.ArrayLike,
    value_pre_product_sum: npt.ArrayLike,
    *,
    kind: CupedKind = "mean",
    method: Method = "sequential",
    alpha: float = 0.05,
    n_star: float = 5000,
    relative: bool = True,
) -> ManyCuped:
    """Row e equals cuped_effect on row e's sums (column 0 control, column 1 treatment); arrays of shape (E, 2).

    Checks shapes, finiteness and non-negative whole counts; the scalar path's Cauchy-Schwarz checks on the sums
    are left to callers that take sums from outside (simulated sums satisfy them by construction).
    """
    k = _kind(kind)
    m = check.method(method)
    a_ = check.alpha(alpha)
    ns = check.n_star(n_star)
    nn = _arr("n", n, None)
    if np.any(nn < 0) or np.any(nn != np.floor(nn)):
        raise StatsInputError("n must hold whole numbers >= 0")
    shape = nn.shape
    y = _arr("value_sum", value_sum, shape)
    yy = y if k == "proportion" else _arr("value_sum_sq", value_sum_sq, shape)
    x = _arr("pre_sum", pre_sum, shape)
    xx = _arr("pre_sum_sq", pre_sum_sq, shape)
    xy = _arr("value_pre_product_sum", value_pre_product_sum, shape)
    y_prop = k == "proportion"
    # Per row: the covariate is a proportion when the metric is and every arm's covariate is 0/1.
    x_prop = np.all((xx == x) & (x >= 0.0) & (x <= nn), axis=1) if y_prop else np.zeros(shape[0], dtype=bool)
    with np.errstate(all="ignore"):
        my, vy, mx, vx, cov = _moments(nn, y, yy, x, xx, xy, y_prop, x_prop[:, None])
        pn, py, pyy, px, pxx, pxy = (v.sum(axis=1, keepdims=True) for v in (nn, y, yy, x, xx, xy))  # arms pooled
        _, jvy, _, jvx, jcov = _moments(pn, py, pyy, px, pxx, pxy, y_prop, x_prop[:, None])
        theta = np.where((jvx[:, 0] == 0.0) | (jvy[:, 0] == 0.0), 0.0, jcov[:, 0] / jvx[:, 0])
    na, nb = nn[:, 0], nn[:, 1]
    unadj_ok = (na > 0) & (nb > 0)
    if y_prop:
        unadj_ok &= ~((my[:, 0] == 0.0) & (my[:, 1] == 0.0))
    else:
        unadj_ok &= (na >= 2) & (nb >= 2)
    unadjusted = _effects(my, vy, mx, vx, cov, nn, np.zeros_like(theta), unadj_ok, m, a_, ns, relative)
    theta = np.where(unadjusted.defined, theta, 0.0)  # the scalar path's "theta used"
    adjusted = _effects(my, vy, mx, vx, cov, nn, theta, unadj_ok, m, a_, ns, relative)
    use_plain = (theta == 0.0) | ~unadjusted.defined
    adjusted = ManyEffects(
        *(np.where(use_plain, getattr(unadjusted, f), getattr(adjusted, f)) for f in ManyEffects.__slots__)
    )
    with np.errstate(all="ignore"):
        reduction = 1.0 - (adjusted.se / unadjusted.se) ** 2
    reduction = np.where(adjusted.defined & unadjusted.defined & (unadjusted.se > 0.0), reduction, np.nan)
    return ManyCuped(adjusted, unadjusted, theta, reduction)


def _moments(
    n: F64, y: F64, yy: F64, x: F64, xx: F64, xy: F64, y_prop: bool, x_prop: B
) -> tuple[F64, F64, F64, F64, F64]:
    """Per arm: mean and variance of y and x and their covariance, by the scalar path's conventions."""
    my = np.where(n > 0, y / n, 0.0)
    mx = np.where(n > 0, x / n, 0.0)
    big = n > 1
    sample_vy = np.where(big, np.maximum(yy - y * my, 0.0) / (n - 1.0), 0.0)
    vy = my * (1.0 - my) if y_prop else sample_vy
    sample_vx = np.where(big, np.maximum(xx - x * mx, 0.0) / (n - 1.0), 0.0)
    vx = np.where(x_prop, mx * (1.0 - mx), sample_vx)
    both_prop = x_prop if y_prop else np.zeros_like(x_prop)
    cov = np.where(big, np.where(both_prop, xy / n - my * mx, (xy - y * mx) / (n - 1.0)), 0.0)
    return my, vy, mx, vx, cov


def _effects(
    my: F64,
    vy: F64,
    mx: F64,
    vx: F64,
    cov: F64,
    n: F64,
    theta: F64,
    ok: B,
    method: Method,
    alpha: float,
    n_star: float,
    relative: bool,
) -> ManyEffects:
    t = theta[:, None]
    with np.errstate(all="ignore"):
        adj = my - t * mx
        var_arm = np.where(n > 1, vy + t * t * vx - 2.0 * t * cov, 0.0)
        va, vb = var_arm[:, 0], var_arm[:, 1]
        na, nb = n[:, 0], n[:, 1]
        if relative:
            base = my[:, 0]
            r = my[:, 1] / base
            est = (adj[:, 1] - adj[:, 0]) / np.abs(base)
            v_ctrl = r * r * vy[:, 0] - 2.0 * theta * r * cov[:, 0] + theta * theta * vx[:, 0]
            var = (vb / nb + v_ctrl / na) / (base * base)
            ok = ok & (base != 0.0) & (adj[:, 0] != 0.0) & (va > 0.0) & (vb > 0.0)
        else:
            est = adj[:, 1] - adj[:, 0]
            var = va / na + vb / nb
            # The unadjusted absolute test needs only a positive total variance; the adjusted one both arms'.
            ok = ok & np.where(theta == 0.0, True, (va > 0.0) & (vb > 0.0))
        ok = ok & (var > 0.0) & np.isfinite(est) & np.isfinite(var)
    df = _welch(va, na, vb, nb) if method == "fixed" else None
    return _t_effects(est, var, df, na + nb, ok, method, alpha, n_star)
