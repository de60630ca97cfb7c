"""When does a test stop? First-passage distributions of the z-statistic through the decision's boundary.

The z-statistic of a lift estimate, watched as data arrives, is a Brownian motion in information time: with
information I = 1/se^2, S(I) = estimate * I has drift (true effect) and variance I, and z = S/sqrt I. The test stops
(a winner) the first time z reaches its boundary: a constant z for the fixed-horizon test that the worker
re-checks after every update, or the confidence sequence's growing one (``sequential_z_boundary``). Time is
measured by a scale factor s on the data (both arms grow together), so information and the total sample size N
are proportional to s.

Two ways to compute P(stopped by s): ``crossing_cdf_grid`` propagates the density on a grid with absorption
(accurate to a fraction of a percent; tens of milliseconds: the planner), ``crossing_quantiles`` uses the
tangent-line (Bachelier-Levy) approximation, vectorised over many experiments at once (a few percent; the ETA of
every running experiment in one numpy pass).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special

__all__ = [
    "SIEGMUND_SHIFT",
    "crossing_cdf_grid",
    "crossing_quantiles",
    "sequential_rho2",
    "sequential_z_boundary",
]

FloatArray = NDArray[np.float64]

# Siegmund's correction: a boundary checked every dt (in information units) is crossed as often as one
# checked continuously and raised by 0.5826 * sqrt(dt) (the expected overshoot of a Gaussian random walk,
# -zeta(1/2)/sqrt(2 pi)).
SIEGMUND_SHIFT = 0.5826


def sequential_rho2(alpha: ArrayLike, n_star: ArrayLike) -> FloatArray:
    """rho^2 of the two-sided confidence sequence tuned at total sample size n_star (effects.sequential_rho)."""
    la = -2.0 * np.log(np.asarray(alpha, dtype=np.float64))
    return np.asarray((la + np.log(la + 1.0)) / np.asarray(n_star, dtype=np.float64), dtype=np.float64)


def sequential_z_boundary(n_total: ArrayLike, rho2: ArrayLike, alpha_test: ArrayLike) -> FloatArray:
    """The |z| at which the always-valid p-value (effects.sequential_p_value) falls to alpha_test at total n.

    Solves sqrt(n rho^2 + 1) * exp(-n rho^2 z^2 / (2 (n rho^2 + 1))) = alpha_test for z.
    """
    nr2 = np.asarray(n_total, dtype=np.float64) * np.asarray(rho2, dtype=np.float64)
    a = np.asarray(alpha_test, dtype=np.float64)
    return np.asarray(np.sqrt(2.0 * (nr2 + 1.0) / nr2 * (0.5 * np.log1p(nr2) - np.log(a))), dtype=np.float64)


def crossing_cdf_grid(
    drift: float,
    boundary: Callable[[FloatArray], FloatArray],
    t_max: float,
    *,
    dt: float,
    continuous: bool = True,
    t0: float = 0.0,
    s0: float = 0.0,
    nx: int | None = None,
) -> tuple[FloatArray, FloatArray]:
    """P(S has reached boundary(t) by t) for S(t0) = s0, S a Brownian motion with ``drift`` and variance t - t0.

    Returns (times, cdf) at t0 + dt, t0 + 2 dt, ... <= t_max. The boundary is on the S scale (sqrt t * z-boundary) and
    checked at each time; ``continuous`` lowers it by Siegmund's shift so the result is that of a test checked
    continuously (the worker re-evaluates after every folded batch). Only the upper boundary stops the test.
    """
    steps = max(1, math.floor((t_max - t0) / dt + 1e-9))
    ts = t0 + dt * np.arange(1, steps + 1, dtype=np.float64)
    # A boundary that is not a finite number (too early to be reached at all) stops nothing.
    c = np.nan_to_num(np.asarray(boundary(ts), dtype=np.float64), nan=np.inf, neginf=np.inf)
    if continuous:
        c = c - SIEGMUND_SHIFT * math.sqrt(dt)
    finite = c[np.isfinite(c)]
    span = math.sqrt(t_max - t0)
    # The grid spans where the mass can be (10 sd beyond the drift): a boundary above it absorbs nothing anyway.
    reach = s0 + max(drift, 0.0) * (t_max - t0) + 10.0 * span
    top = min(float(finite.max()), reach) if finite.size else reach
    lo = s0 + min(drift, 0.0) * (t_max - t0) - 10.0 * span - 1.0
    hi = max(s0, top) + 1.0
    sd = math.sqrt(dt)
    if nx is None:  # a quarter of a step's standard deviation per cell, within sane bounds
        nx = min(max(int((hi - lo) / (0.25 * sd)), 2000), 40_000)
    x = np.linspace(lo, hi, nx)
    dx = float(x[1] - x[0])
    half = math.ceil((8.0 * sd + abs(drift) * dt) / dx) + 1
    kx = np.arange(-half, half + 1, dtype=np.float64) * dx
    # The transition density over one step, normalised on the grid so mass is conserved exactly.
    from scipy import signal  # here, not at the top: it loads scipy.stats and optimize (~0.4 s) for this only

    kernel = np.exp(-0.5 * ((kx - drift * dt) / sd) ** 2)
    kernel /= kernel.sum()
    density = np.zeros(nx)
    density[int(np.argmin(np.abs(x - s0)))] = 1.0
    cdf = np.empty(steps)
    absorbed = 0.0
    for i in range(steps):
        density = signal.fftconvolve(density, kernel, mode="same") if 2 * half + 1 < nx else density
        np.maximum(density, 0.0, out=density)  # FFT round-off
        above = x >= c[i]
        absorbed += float(density[above].sum())
        density[above] = 0.0
        cdf[i] = absorbed
    return ts, cdf


def _tangent_cdf(
    s: FloatArray,
    z_now: FloatArray,
    drift: FloatArray,
    boundary: Callable[[FloatArray], FloatArray],
) -> FloatArray:
    """P(stopped by s) from (1, z_now): the tangent line to the boundary at s, crossed by Bachelier-Levy."""
    h = 1e-4
    c = boundary(s)
    slope = (boundary(s * (1.0 + h)) - boundary(s * (1.0 - h))) / (2.0 * h * s)
    a = np.maximum(c + slope * (1.0 - s) - z_now, 1e-12)
    nu = drift - slope
    tau = np.maximum(s - 1.0, 1e-300)
    sq = np.sqrt(tau)
    first = special.ndtr((nu * tau - a) / sq)
    # exp(2 nu a) Phi(...) in log space: the exponent alone overflows when nu a is large.
    second = np.exp(np.minimum(2.0 * nu * a + special.log_ndtr((-nu * tau - a) / sq), 0.0))
    return np.asarray(np.clip(first + second, 0.0, 1.0), dtype=np.float64)


def _line_cdf(t: FloatArray, a: FloatArray, nu: FloatArray) -> FloatArray:
    """P(a Brownian motion with drift nu has risen by a > 0 within time t) (Bachelier-Levy); 0 for t <= 0."""
    tt = np.maximum(t, 1e-300)
    sq = np.sqrt(tt)
    aa = np.maximum(a, 0.0)
    first = special.ndtr((nu * tt - aa) / sq)
    second = np.exp(np.minimum(2.0 * nu * aa + special.log_ndtr((-nu * tt - aa) / sq), 0.0))
    return np.asarray(np.where(t > 0.0, np.clip(first + second, 0.0, 1.0), 0.0), dtype=np.float64)


def crossing_quantiles(
    quantiles: ArrayLike,
    z_now: ArrayLike,
    drift: ArrayLike,
    boundary: Callable[[FloatArray], FloatArray],
    *,
    slope: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    s_max: float = 1e4,
    iterations: int = 40,
    grid: int = 96,
) -> FloatArray:
    """Scale factors s >= 1 of the data at which P(stopped by s) reaches each quantile (inf beyond s_max).

    Vectorised: z_now has shape (E,) (one per experiment), drift (E,) or (E, K) for K effect hypotheses mixed
    with ``weights`` (K,) (a posterior over the effect); ``boundary`` maps an array of s shaped (E, ..., n) to the
    S-scale boundary sqrt s * z-boundary (its per-experiment parameters shaped (E, 1, 1)); it must be concave.

    ``slope`` (E,) adds a second condition, S >= slope * s (a lift of at least the MDE: minImprovement), which
    the test boundary alone cannot carry (the maximum of the two is not concave): past the point where the line
    overtakes the boundary, a crossing of the boundary at u is followed by the first passage to the line from
    there (Bachelier-Levy), summed over u on a geometric grid of ``grid`` points. Returns shape (E, Q).
    """
    q = np.asarray(quantiles, dtype=np.float64)
    z = np.asarray(z_now, dtype=np.float64)
    d = np.asarray(drift, dtype=np.float64)
    if d.ndim == 1:
        d = d[:, None]
    w = np.ones(1) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    e = z.shape[0]
    zz, dd = z[:, None, None], d[:, None, :]  # (E, 1, 1), (E, 1, K)

    if slope is None:

        def mixture(s: FloatArray) -> FloatArray:  # s: (E, Q) -> (E, Q)
            cdf = _tangent_cdf(s[:, :, None], zz, dd, boundary)
            return np.asarray((cdf * w).sum(axis=2), dtype=np.float64)

    else:
        b = np.asarray(slope, dtype=np.float64)[:, None, None]  # (E, 1, 1)
        u = np.geomspace(1.0, s_max, grid + 1)
        ug = np.broadcast_to(u, (e, 1, grid + 1))
        dominates = b * ug > boundary(ug)  # (E, 1, U+1): the line above the test boundary
        kink = np.where(dominates.any(axis=2), u[np.argmax(dominates, axis=2)], np.inf)[:, :, None]  # (E, 1, 1)
        f1 = _tangent_cdf(ug, zz, d[:, :, None], boundary)  # (E, K, U+1): the test boundary alone
        f1[:, :, 0] = 0.0
        df = np.diff(f1, axis=2)[:, None, :, :]  # (E, 1, K, U)
        mid = np.sqrt(u[:-1] * u[1:])
        mg = np.broadcast_to(mid, (e, 1, grid))
        gap = (b * mg - boundary(mg))[:, :, None, :]  # (E, 1, 1, U): from the boundary up to the line
        after = (mg > kink)[:, :, None, :]
        nu = (d - b[:, :, 0])[:, None, :, None]  # (E, 1, K, 1)

        def mixture(s: FloatArray) -> FloatArray:
            first = _tangent_cdf(np.minimum(s, kink[:, :, 0])[:, :, None], zz, dd, boundary)  # (E, Q, K)
            later = _line_cdf(s[:, :, None, None] - mid, gap, nu)  # (E, Q, K, U)
            cdf = first + (df * after * later).sum(axis=3)
            return np.asarray((np.clip(cdf, 0.0, 1.0) * w).sum(axis=2), dtype=np.float64)

    lo = np.zeros((e, q.size))  # log s
    hi = np.full((e, q.size), math.log(s_max))
    reached = mixture(np.exp(hi)) >= q
    for _ in range(iterations):
        mid_s = 0.5 * (lo + hi)
        ok = mixture(np.exp(mid_s)) >= q
        hi = np.where(ok, mid_s, hi)
        lo = np.where(ok, lo, mid_s)
    return np.asarray(np.where(reached, np.exp(hi), np.inf), dtype=np.float64)
