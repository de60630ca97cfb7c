"""Sample-size planning for the test the worker runs: exposures per arm for a relative lift, fixed and sequential.

The worker tests the relative lift (muB - muA)/|muA| with the delta-method variance (effects.effect_from_moments),
so the plan does too: per exposure in each arm, Var(lift) * n = (varB + varA (1 + delta)^2) / muA^2, times
1 - rho^2 when a covariate with correlation rho adjusts the estimate (CUPED). The fixed-horizon answer is the
closed form n = v (z(1-alpha/2) + z(power))^2 / delta^2. The sequential answer is computed, not assumed: the n at
which the confidence sequence, checked continuously, has stopped with a winner in ``power`` of the runs
(stopping.crossing_cdf_grid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

from . import _validate as check
from .errors import StatsInputError
from .models import Correction, Method, MetricType
from .stopping import FloatArray, crossing_cdf_grid, sequential_rho2, sequential_z_boundary

__all__ = [
    "SamplePlan",
    "alpha_per_comparison",
    "auto_n_star",
    "plan_sample_size",
    "relative_lift_variance",
    "z_diffusion",
]

# Time steps of the grid over its horizon (4 fixed-horizon samples at first: 0.5% of n each, so the
# continuous-monitoring correction is small and the answer stable to well under 1%); a longer horizon, for a
# badly tuned N*, keeps the count and takes longer steps.
_GRID_STEPS = 800
# No plan beyond this many exposures per arm (the statistics take counts up to 2**63; no experiment is this big).
_MAX_EXPOSURES = 1e13


@dataclass(frozen=True, slots=True)
class SamplePlan:
    """What an experiment needs: exposures per arm and days, for the chosen method and a fixed-horizon test."""

    method: Method
    exposures_per_arm: int
    """Per arm, for ``method``: fixed, the closed form; sequential, where it has found the winner in ``power``."""
    fixed_horizon_exposures_per_arm: int
    median_exposures_per_arm: int
    """The median stopping point (sequential) or the fixed horizon itself (fixed)."""
    days: float | None
    fixed_horizon_days: float | None
    alpha_per_comparison: float
    """The significance level one comparison is held to after the multiplicity split."""
    n_star: float | None
    """The sequential tuning N* (total over both arms) the plan assumed; None for fixed."""
    variance_per_exposure: float
    """Var(relative lift) x exposures per arm, after the covariate adjustment."""
    variance_factor: float
    """1 - rho^2: the variance left after the covariate adjustment."""


def alpha_per_comparison(alpha: float, treatments: int, primary_metrics: int, correction: Correction) -> float:
    """The level one treatment-vs-control comparison must reach, as the decision splits alpha.

    Primary metrics: Bonferroni (alpha / m). Treatments: holm's first step is alpha / k, the level the best treatment
    meets when all k are tested, and bh's is no stricter; a plan holds each treatment to alpha / k so it is safe for
    both; ``none`` keeps alpha.
    """
    per_metric = alpha / primary_metrics
    return per_metric if correction == "none" else per_metric / treatments


def relative_lift_variance(
    metric_type: MetricType, baseline: float, mde: float, sd: float | None, rho: float = 0.0
) -> float:
    """Var(relative lift) x exposures per arm at true lift ``mde``: the delta method the test uses, x (1 - rho^2)."""
    r = 1.0 + mde
    if metric_type == "conversion":
        p_b = baseline * r
        v = (p_b * (1.0 - p_b) + baseline * (1.0 - baseline) * r * r) / baseline / baseline
    else:
        assert sd is not None
        v = (sd / baseline) * (sd / baseline) * (1.0 + r * r)
    return v * (1.0 - rho * rho)


def z_diffusion(metric_type: MetricType, mean_a: ArrayLike, mean_b: ArrayLike, sd: ArrayLike = 1.0) -> FloatArray:
    """How fast the test's z-statistic diffuses, per unit of information: kappa, 1 for a plain mean difference.

    The relative lift's standard error moves with the estimate (it holds muB/muA, and a rate's variance holds the
    rate), so z = lift / se rises less than the data do: its variance is kappa^2 = |grad z|^2 . (varA, varB) < 1
    (delta method over both arms' means, per exposure). The sequential plan and the ETA run the z-process with
    it; ~0.91 at a 10% rate and +10%, which moves the planned stopping quantiles by a few percent toward the
    simulated ones.
    """
    ma = np.asarray(mean_a, dtype=np.float64)
    mb = np.asarray(mean_b, dtype=np.float64)
    sd2 = np.asarray(sd, dtype=np.float64) ** 2

    def var(m: FloatArray) -> FloatArray:
        return np.asarray(m * (1.0 - m) if metric_type == "conversion" else sd2 + 0.0 * m, dtype=np.float64)

    def z(a: FloatArray, b: FloatArray) -> FloatArray:
        r = b / a
        with np.errstate(all="ignore"):
            return np.asarray((r - 1.0) / np.sqrt((var(b) + var(a) * r * r) / (a * a)), dtype=np.float64)

    ha = 1e-6 * np.maximum(np.abs(ma), 1e-12)
    hb = 1e-6 * np.maximum(np.abs(mb), 1e-12)
    ga = (z(ma + ha, mb) - z(ma - ha, mb)) / (2.0 * ha)
    gb = (z(ma, mb + hb) - z(ma, mb - hb)) / (2.0 * hb)
    kappa = np.sqrt(ga * ga * var(ma) + gb * gb * var(mb))
    # Outside [0.5, 1.5] the linearisation is not to be trusted (a rate near 0 or 1): fall back to 1.
    return np.asarray(np.where(np.isfinite(kappa) & (kappa > 0.5) & (kappa < 1.5), kappa, 1.0), dtype=np.float64)


def auto_n_star(fixed_horizon_per_arm: float) -> float:
    """The tuning N* that ``sequentialTuning: auto`` sets: the planned total over both arms, 2 x n per arm.

    The confidence sequence is tightest at N*; at the planned size it stops a true effect of the MDE soonest
    (bench/bench_stats.py measures the median stopping point against the fixed horizon).
    """
    return min(max(2.0 * fixed_horizon_per_arm, 1.0), 1e12)


def plan_sample_size(
    metric_type: MetricType,
    baseline: float,
    mde: float,
    *,
    sd: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    treatments: int = 1,
    primary_metrics: int = 1,
    correction: Correction = "holm",
    rho: float = 0.0,
    method: Method = "sequential",
    n_star: float | None = None,
    daily_exposures: float | None = None,
    look_every: float | None = None,
) -> SamplePlan:
    """Exposures per arm (and days) to find a true relative lift of ``mde`` (0.05 = +5%) with ``power``.

    ``n_star`` is the sequential tuning (total over both arms); None is ``auto`` (twice the fixed-horizon n per
    arm). ``look_every`` (exposures per arm between evaluations) plans for a test checked in batches; None plans
    for the worker's continuous checking. Raises StatsInputError for impossible inputs.
    """
    mt = check.metric_type(metric_type)
    m = check.method(method)
    c = check.correction(correction)
    a = check.alpha(alpha)
    b = check.real("baseline", baseline)
    d = check.real("mde", mde)
    pw = check.real("power", power)
    r = check.real("rho", rho)
    k = check.count("treatments", treatments)
    pm = check.count("primary_metrics", primary_metrics)
    if not d > 0.0:
        raise StatsInputError(f"mde must be a positive relative lift, got {d!r}")
    if not 0.5 <= pw < 1.0:
        raise StatsInputError(f"power must be in [0.5, 1), got {pw!r}")
    if not -1.0 < r < 1.0:
        raise StatsInputError(f"rho must be in (-1, 1), got {r!r}")
    if k < 1 or pm < 1:
        raise StatsInputError("treatments and primary_metrics must be at least 1")
    s = _checked_spread(mt, b, d, sd)
    daily = None if daily_exposures is None else check.real("daily_exposures", daily_exposures)
    if daily is not None and not daily > 0.0:
        raise StatsInputError(f"daily_exposures must be positive, got {daily!r}")
    ns = None if n_star is None else check.n_star(n_star)
    if look_every is not None and not check.real("look_every", look_every) > 0.0:
        raise StatsInputError(f"look_every must be positive, got {look_every!r}")

    at = alpha_per_comparison(a, k, pm, c)
    v = relative_lift_variance(mt, b, d, s, r)
    # -ndtri(a/2), not ndtri(1 - a/2): 1 - a/2 rounds to 1 (and z to infinity) for a below ~1e-16.
    drift = float(-special.ndtri(at / 2.0) + special.ndtri(pw))
    n_fixed = v * (drift / d) * (drift / d)  # products overflow to inf (caught below); d * d underflows to 0
    if not (math.isfinite(n_fixed) and n_fixed <= _MAX_EXPOSURES):
        raise StatsInputError(
            f"that needs more than {_MAX_EXPOSURES:.0e} exposures per arm; plan a larger mde (or a larger baseline "
            "rate, or a smaller sd)"
        )

    def days(n: float) -> float | None:
        return None if daily is None else n / daily

    if m == "fixed":
        n = math.ceil(n_fixed)
        return SamplePlan(m, n, n, n, days(n), days(n), at, None, v, 1.0 - r * r)
    tuning = auto_n_star(n_fixed) if ns is None else ns
    kappa = float(z_diffusion(mt, b, b * (1.0 + d), 1.0 if s is None else s))
    t_power, t_median = _sequential_stopping(drift / kappa, n_fixed, a, at, tuning, pw, look_every, kappa)
    n_seq = math.ceil(t_power * n_fixed)
    nf = math.ceil(n_fixed)
    return SamplePlan(m, n_seq, nf, math.ceil(t_median * n_fixed), days(n_seq), days(nf), at, tuning, v, 1.0 - r * r)


def _checked_spread(metric_type: MetricType, baseline: float, mde: float, sd: float | None) -> float | None:
    """The sd of a mean metric (None for a conversion rate), once the baseline and mde make a plannable pair."""
    if metric_type == "conversion":
        if not 0.0 < baseline < 1.0:
            raise StatsInputError(f"a conversion baseline must be a rate in (0, 1), got {baseline!r}")
        if not baseline * (1.0 + mde) < 1.0:
            raise StatsInputError(f"baseline x (1 + mde) = {baseline * (1.0 + mde):.4g} is not a rate below 1")
        return None
    if baseline == 0.0:
        raise StatsInputError("a mean baseline of 0 has no relative lift")
    if sd is None:
        raise StatsInputError("a mean metric needs its standard deviation (sd)")
    s = check.real("sd", sd)
    if not s > 0.0:
        raise StatsInputError(f"sd must be positive, got {s!r}")
    return s


def _sequential_stopping(
    drift: float,
    n_fixed: float,
    alpha: float,
    alpha_test: float,
    n_star: float,
    power: float,
    look: float | None,
    kappa: float = 1.0,
) -> tuple[float, float]:
    """(t at which P(stopped) = power, median stopping t), t in units of the fixed-horizon n per arm.

    In those units the z-process has drift z(1-alpha/2) + z_power per unit t, and the total sample size is 2 n t;
    on the scale of its diffusion kappa (z_diffusion) both the drift and the boundary are divided by kappa.
    """
    rho2 = float(sequential_rho2(alpha, n_star))

    def boundary(t: FloatArray) -> FloatArray:
        return np.sqrt(t) * sequential_z_boundary(2.0 * n_fixed * t, rho2, alpha_test) / kappa

    t_max = 4.0
    while True:
        dt, continuous = t_max / _GRID_STEPS, True
        if look is not None and t_max * n_fixed / look <= 50 * _GRID_STEPS:
            # Checked in batches of `look` exposures per arm (batches smaller than a grid step are continuous
            # checking in all but name).
            dt, continuous = look / n_fixed, False
        ts, cdf = crossing_cdf_grid(drift, boundary, t_max, dt=dt, continuous=continuous)
        if cdf[-1] >= power or t_max >= 1024.0:
            break
        t_max *= 4.0
    if cdf[-1] < power:
        raise StatsInputError(
            f"with N* = {n_star:g} the sequential test does not reach that power within 1,000 times the "
            "fixed-horizon sample; set sequentialTuning to auto, or near twice the planned exposures per arm"
        )
    return _first_at(ts, cdf, power), _first_at(ts, cdf, 0.5)


def _first_at(ts: FloatArray, cdf: FloatArray, q: float) -> float:
    i = int(np.searchsorted(cdf, q))
    if i == 0:
        return float(ts[0]) * q / max(float(cdf[0]), 1e-300)
    t0, t1, c0, c1 = float(ts[i - 1]), float(ts[i]), float(cdf[i - 1]), float(cdf[i])
    return t0 + (t1 - t0) * (q - c0) / (c1 - c0) if c1 > c0 else t1
