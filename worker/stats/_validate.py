"""Input checks shared by the public functions; every failure is a StatsInputError with a precise message."""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np

from .errors import StatsInputError
from .models import Correction, Method, MetricType, VariantStats

METHODS: Final = ("sequential", "fixed")
METRIC_TYPES: Final = ("conversion", "mean")
CORRECTIONS: Final = ("holm", "bh", "none")

_INTS: Final = (int, np.integer)
_INT64_MAX: Final = 2**63 - 1  # PostgreSQL bigint; also keeps every count convertible to float
_REALS: Final = (int, float, np.integer, np.floating)


def count(name: str, x: Any) -> int:
    """Return x as a non-negative int; bools, fractions and non-numbers are rejected."""
    if isinstance(x, bool) or not isinstance(x, _REALS):
        raise StatsInputError(f"{name} must be an integer count, got {x!r}")
    if not isinstance(x, _INTS):
        xf = float(x)
        if not (math.isfinite(xf) and xf.is_integer()):
            raise StatsInputError(f"{name} must be a whole number, got {x!r}")
    xi = int(x)
    if not 0 <= xi <= _INT64_MAX:
        raise StatsInputError(f"{name} must be in [0, 2**63 - 1], got {xi}")
    return xi


def real(name: str, x: Any) -> float:
    """Return x as a finite float."""
    if isinstance(x, bool) or not isinstance(x, _REALS):
        raise StatsInputError(f"{name} must be a number, got {x!r}")
    xf = float(x)
    if not math.isfinite(xf):
        raise StatsInputError(f"{name} must be finite, got {x!r}")
    return xf


def alpha(a: Any) -> float:
    """Return a significance level strictly inside (0, 1)."""
    if isinstance(a, bool) or not isinstance(a, _REALS) or not 0.0 < float(a) < 1.0:
        raise StatsInputError(f"alpha must be in (0, 1), got {a!r}")
    return float(a)


def n_star(n: Any) -> float:
    """Return the sequential tuning parameter (expected total sample size) in [1, 1e12].

    The bounds keep rho**2 * N away from overflow and underflow; no real experiment is outside them.
    """
    if isinstance(n, bool) or not isinstance(n, _REALS) or not 1.0 <= float(n) <= 1e12:
        raise StatsInputError(f"n_star must be a number in [1, 1e12], got {n!r}")
    return float(n)


def threshold(t: Any) -> float:
    """Return an SRM p-value threshold in [0, 1] (0 never flags)."""
    if isinstance(t, bool) or not isinstance(t, _REALS) or not 0.0 <= float(t) <= 1.0:
        raise StatsInputError(f"srm_threshold must be in [0, 1], got {t!r}")
    return float(t)


def method(m: Any) -> Method:
    """Return m if it names a known inference method."""
    if m not in METHODS:
        raise StatsInputError(f"method must be one of {METHODS}, got {m!r}")
    return m  # type: ignore[no-any-return]


def metric_type(m: Any) -> MetricType:
    """Return m if it names a known metric type."""
    if m not in METRIC_TYPES:
        raise StatsInputError(f"metric_type must be one of {METRIC_TYPES}, got {m!r}")
    return m  # type: ignore[no-any-return]


def correction(c: Any) -> Correction:
    """Return c if it names a known multiple-comparison correction."""
    if c not in CORRECTIONS:
        raise StatsInputError(f"correction must be one of {CORRECTIONS}, got {c!r}")
    return c  # type: ignore[no-any-return]


def variant(v: Any, metric: MetricType) -> tuple[int, float, float]:
    """Check one VariantStats and return (n, mean, variance) of its primary metric.

    Variance follows gbstats: p(1-p) for proportions, (ss - s^2/n)/(n-1) for means (0 when n <= 1).
    """
    if not isinstance(v, VariantStats):
        raise StatsInputError(f"expected VariantStats, got {type(v).__name__}")
    if not isinstance(v.name, str):
        raise StatsInputError(f"variant name must be a str, got {v.name!r}")
    if not isinstance(v.is_control, bool | np.bool_):
        raise StatsInputError(f"variant {v.name!r}: is_control must be a bool, got {v.is_control!r}")
    label = f"variant {v.name!r}"
    n = count(f"{label}: exposures", v.exposures)
    count(f"{label}: errors", v.errors)
    w = real(f"{label}: weight", v.weight)
    if w < 0.0:
        raise StatsInputError(f"{label}: weight must be >= 0, got {w!r}")
    if metric == "conversion":
        c = count(f"{label}: conversions", v.conversions)
        if c > n:
            raise StatsInputError(f"{label}: conversions ({c}) exceed exposures ({n})")
        if n == 0:
            return 0, 0.0, 0.0
        p = c / n
        return n, p, p * (1.0 - p)
    s = real(f"{label}: value_sum", v.value_sum)
    ss = real(f"{label}: value_sum_sq", v.value_sum_sq)
    if ss < 0.0:
        raise StatsInputError(f"{label}: value_sum_sq must be >= 0, got {ss!r}")
    if n == 0:
        if s != 0.0 or ss != 0.0:
            raise StatsInputError(f"{label}: value sums must be 0 when exposures is 0")
        return 0, 0.0, 0.0
    mean = s / n
    # s*mean rather than s*s/n: s*s overflows for |s| > 1e154 even when the data are fine.
    centred = ss - s * mean
    # Cauchy-Schwarz says ss >= s^2/n; allow float round-off (SQL sums), reject anything beyond it.
    if centred < -1e-9 * ss - 1e-300 or not math.isfinite(centred):
        raise StatsInputError(f"{label}: value_sum_sq ({ss!r}) is smaller than value_sum**2/exposures")
    if n <= 1:
        return n, mean, 0.0
    return n, mean, max(centred, 0.0) / (n - 1)
