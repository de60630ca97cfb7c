"""Multiple-comparison corrections of treatment-vs-control p-values."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _validate as check
from .errors import StatsInputError
from .models import Correction

__all__ = ["adjust_pvalues"]

_REALS = (int, float, np.integer, np.floating)


def adjust_pvalues(p: Sequence[float], correction: Correction) -> tuple[float, ...]:
    """Return p-values adjusted for multiple comparisons, in input order, each in [0, 1].

    "holm": Holm-Bonferroni step-down (controls the family-wise error rate; valid for always-valid
    sequential p-values too). "bh": Benjamini-Hochberg step-up (controls the false discovery rate under
    independence or positive dependence). "none": unchanged. Raises StatsInputError for NaN or values
    outside [0, 1].
    """
    c = check.correction(correction)
    ps: list[float] = []
    for i, x in enumerate(p):
        if isinstance(x, bool) or not isinstance(x, _REALS) or not 0.0 <= float(x) <= 1.0:
            raise StatsInputError(f"p-value #{i} must be a number in [0, 1], got {x!r}")
        ps.append(float(x))
    m = len(ps)
    if c == "none" or m <= 1:
        return tuple(ps)
    order = sorted(range(m), key=ps.__getitem__)
    out = [0.0] * m
    if c == "holm":
        running = 0.0
        for rank, i in enumerate(order):
            # The running max keeps the adjusted p-values in the same order as the raw ones.
            running = max(running, min(1.0, (m - rank) * ps[i]))
            out[i] = running
    else:
        running = 1.0
        for rank in range(m - 1, -1, -1):
            i = order[rank]
            running = min(running, m * ps[i] / (rank + 1))
            out[i] = running
    return tuple(out)
