"""Sample-ratio-mismatch check: do observed exposures match the configured traffic weights?"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from scipy import special

from . import _validate as check
from . import reasons
from .errors import StatsInputError
from .models import SrmResult

__all__ = ["srm_test"]


def srm_test(observed: Sequence[int], weights: Sequence[float], threshold: float = 0.001) -> SrmResult:
    """Pearson chi-squared test of exposures against weights; flagged when p < threshold.

    Weights are relative (any scale); df = (variants with weight > 0) - 1. A variant with weight 0 should
    receive nothing, so any exposure recorded for one is a mismatch however the other arms split: chi2 is
    infinite (capped at the largest float), p 0, flagged, reason SRM_ZERO_WEIGHT_TRAFFIC. Otherwise no
    exposures, all-zero weights or fewer than two weighted variants give p 1.0, not flagged, with a reason.
    Raises StatsInputError on mismatched lengths, negative or fractional counts, negative/NaN weights or a
    threshold outside [0, 1].
    """
    thr = check.threshold(threshold)
    obs = tuple(check.count(f"observed[{i}]", o) for i, o in enumerate(observed))
    ws = tuple(check.real(f"weights[{i}]", w) for i, w in enumerate(weights))
    if len(obs) != len(ws):
        raise StatsInputError(f"observed has {len(obs)} entries but weights has {len(ws)}")
    for i, w in enumerate(ws):
        if w < 0.0:
            raise StatsInputError(f"weights[{i}] must be >= 0, got {w!r}")
    return _srm(obs, ws, thr)


def _srm(obs: tuple[int, ...], ws: tuple[float, ...], thr: float) -> SrmResult:
    active = [i for i, w in enumerate(ws) if w > 0.0]
    zero_expected = (0.0,) * len(obs)
    if any(o > 0 and not w > 0.0 for o, w in zip(obs, ws, strict=True)):
        # Expected 0, observed > 0: the chi-square term is infinite. Traffic is going where it must not.
        total = sum(obs[i] for i in active)
        wsum = sum(ws[i] for i in active)
        stray_expected = tuple(ws[i] / wsum * total if i in active and total else 0.0 for i in range(len(obs)))
        return SrmResult(
            sys.float_info.max,
            0.0,
            0.0 < thr,
            stray_expected,
            obs,
            reasons.SRM_ZERO_WEIGHT_TRAFFIC,
            max(len(active) - 1, 0),
        )
    if not active:
        return SrmResult(0.0, 1.0, False, zero_expected, obs, reasons.SRM_ALL_WEIGHTS_ZERO, 0)
    df = len(active) - 1
    if df < 1:
        return SrmResult(0.0, 1.0, False, zero_expected, obs, reasons.SRM_SINGLE_ARM, 0)
    total = sum(obs[i] for i in active)
    if total == 0:
        return SrmResult(0.0, 1.0, False, zero_expected, obs, reasons.SRM_NO_EXPOSURES, df)
    wsum = sum(ws[i] for i in active)
    expected = [0.0] * len(obs)
    chi2 = 0.0
    for i in active:
        e = ws[i] / wsum * total
        expected[i] = e
        # A weight far below the others can make e underflow to 0; such an arm carries no information.
        if e > 0.0:
            d = obs[i] - e
            chi2 += d * d / e
    # A weight tiny next to the others can push chi2 to inf; cap it so results stay JSON-safe.
    chi2 = min(chi2, sys.float_info.max)
    p = min(max(float(special.chdtrc(df, chi2)), 0.0), 1.0)
    return SrmResult(chi2, p, p < thr, tuple(expected), obs, None, df)
