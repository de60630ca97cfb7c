"""analyze_many: analyze_experiment for thousands of experiments at once, on numpy arrays.

Same formulas, same order of operations and the same reason precedence as the scalar path, so the numbers
agree to floating-point round-off (tests hold them to 1e-9 relative).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special

from . import _validate as check
from . import reasons
from .errors import StatsInputError
from .models import Comparison, Correction, ExperimentAnalysis, Method, MetricType, SrmResult

__all__ = ["ManyAnalysis", "analyze_many"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]
B = npt.NDArray[np.bool_]

_R = {r: np.int8(i) for i, r in enumerate(reasons.CODES) if r is not None}


@dataclass(frozen=True, slots=True)
class ManyAnalysis:
    """Results of analyze_many for E experiments of V variants (control in column 0).

    Per-treatment arrays have shape (E, V-1): their column j is input column j+1. Undefined statistics
    are NaN (never in p_value, adjusted_p or confidence); reason_code indexes reasons.CODES (0 = computed).
    best/winner hold an input column index in 1..V-1, or -1 for none.
    """

    metric_type: MetricType
    method: Method
    alpha: float
    correction: Correction
    mean: F64  # (E, V) conversion rate or mean value per variant
    lift: F64
    se: F64
    ci_low: F64
    ci_high: F64
    p_value: F64
    adjusted_p: F64
    confidence: F64
    significant: B
    better: B
    reason_code: I8
    present: B  # (E, V) which variants exist
    observed: I64  # (E, V) exposures
    srm_chi2: F64  # (E,)
    srm_p: F64
    srm_flagged: B
    srm_df: I64
    srm_expected: F64  # (E, V), 0.0 where skipped
    srm_reason_code: I8  # indexes reasons.SRM_CODES
    best: I64  # (E,)
    winner: I64

    def reason(self, e: int, j: int) -> str | None:
        """Return the reason text for experiment e, input column j (1..V-1), or None when computed."""
        return reasons.CODES[int(self.reason_code[e, j - 1])]

    def experiment(self, e: int, names: Sequence[str]) -> ExperimentAnalysis:
        """Return row e as the ExperimentAnalysis analyze_experiment builds; names[0] is the control.

        Absent variants (present=False) are left out, exactly as if they had not been passed.
        """
        if len(names) != self.mean.shape[1]:
            raise StatsInputError(f"need {self.mean.shape[1]} names, got {len(names)}")

        def opt(x: float) -> float | None:
            return None if np.isnan(x) else float(x)

        comps = []
        for j in range(1, len(names)):
            if not self.present[e, j]:
                continue
            k = j - 1
            lift = opt(self.lift[e, k])
            comps.append(
                Comparison(
                    variant=names[j],
                    control=names[0],
                    mean_control=float(self.mean[e, 0]),
                    mean_treatment=float(self.mean[e, j]),
                    lift=lift,
                    se=opt(self.se[e, k]),
                    ci_low=opt(self.ci_low[e, k]),
                    ci_high=opt(self.ci_high[e, k]),
                    p_value=float(self.p_value[e, k]),
                    adjusted_p=float(self.adjusted_p[e, k]),
                    confidence=float(self.confidence[e, k]),
                    improvement=None if lift is None else 100.0 * lift,
                    significant=bool(self.significant[e, k]),
                    better=bool(self.better[e, k]),
                    method=self.method,
                    reason=self.reason(e, j),
                )
            )
        cols = np.flatnonzero(self.present[e])
        srm = SrmResult(
            chi2=float(self.srm_chi2[e]),
            p_value=float(self.srm_p[e]),
            flagged=bool(self.srm_flagged[e]),
            expected=tuple(float(x) for x in self.srm_expected[e, cols]),
            observed=tuple(int(x) for x in self.observed[e, cols]),
            reason=reasons.SRM_CODES[int(self.srm_reason_code[e])],
            df=int(self.srm_df[e]),
        )
        return ExperimentAnalysis(
            metric_type=self.metric_type,
            method=self.method,
            alpha=self.alpha,
            correction=self.correction,
            control=names[0],
            comparisons=tuple(comps),
            srm=srm,
            reason=None if comps else reasons.NO_TREATMENTS,
        )


def _as2d(name: str, x: Any, shape: tuple[int, ...] | None) -> npt.NDArray[Any]:
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:  # ragged nested lists
        raise StatsInputError(f"{name} is not an array: {exc}") from None
    if arr.ndim != 2:
        raise StatsInputError(f"{name} must have shape (experiments, variants), got shape {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise StatsInputError(f"{name} has shape {arr.shape}, expected {shape}")
    if arr.dtype.kind not in "biuf" or (arr.dtype.kind == "b" and name != "present"):
        raise StatsInputError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr


def _counts(name: str, x: Any, shape: tuple[int, ...] | None) -> I64:
    arr = _as2d(name, x, shape)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.floor(arr)):
            raise StatsInputError(f"{name} must hold whole numbers")
        if np.any(arr >= 2.0**63):
            raise StatsInputError(f"{name} must be < 2**63")
    elif arr.dtype.kind == "u" and arr.size and int(arr.max()) > 2**63 - 1:
        raise StatsInputError(f"{name} must be < 2**63")
    out = arr.astype(np.int64)
    if np.any(out < 0):
        raise StatsInputError(f"{name} must be >= 0")
    return out


def _reals(name: str, x: Any, shape: tuple[int, ...]) -> F64:
    arr = _as2d(name, x, shape).astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise StatsInputError(f"{name} must be finite (got NaN or infinity)")
    return arr


def analyze_many(
    exposures: npt.ArrayLike,
    conversions: npt.ArrayLike | None = None,
    *,
    value_sum: npt.ArrayLike | None = None,
    value_sum_sq: npt.ArrayLike | None = None,
    weights: npt.ArrayLike | None = None,
    present: npt.ArrayLike | None = None,
    metric_type: MetricType = "conversion",
    method: Method = "sequential",
    alpha: float = 0.05,
    n_star: float | npt.ArrayLike = 5000,
    correction: Correction = "holm",
    srm_threshold: float = 0.001,
) -> ManyAnalysis:
    """Analyze E experiments of V variants in one call; arrays have shape (E, V), control in column 0.

    Conversion metrics need conversions; mean metrics need value_sum and value_sum_sq. weights has shape
    (V,) or (E, V) (default all 1). present (E, V) bool marks variants that exist, for batching
    experiments with fewer variants: absent ones are excluded from corrections and SRM (column 0 must be
    present). n_star is one number, or one per experiment (E,) (sequentialTuning auto tunes each experiment's).
    Row e equals analyze_experiment on the same data (see ManyAnalysis.experiment). Raises StatsInputError on bad
    shapes or values, as the scalar path would.
    """
    mt = check.metric_type(metric_type)
    m = check.method(method)
    a = check.alpha(alpha)
    corr = check.correction(correction)
    thr = check.threshold(srm_threshold)

    n = _counts("exposures", exposures, None)
    shape = n.shape
    ns = _n_stars(n_star, shape[0])
    if shape[1] < 1:
        raise StatsInputError("need at least one variant (the control) per experiment")
    if present is None:
        pres = np.ones(shape, dtype=np.bool_)
    else:
        pres = _as2d("present", present, shape).astype(np.bool_)
        if not np.all(pres[:, 0]):
            raise StatsInputError("present[:, 0] must be True: column 0 is the control")
    if weights is None:
        w = np.ones(shape, dtype=np.float64)
    else:
        try:
            w = np.broadcast_to(np.asarray(weights, dtype=np.float64), shape)
        except (TypeError, ValueError) as exc:
            raise StatsInputError(f"weights must have shape (V,) or (E, V): {exc}") from None
        if not np.all(np.isfinite(w)) or np.any(w < 0.0):
            raise StatsInputError("weights must be finite and >= 0")

    nf = n.astype(np.float64)
    with np.errstate(all="ignore"):
        if mt == "conversion":
            if conversions is None:
                raise StatsInputError("conversion metrics need conversions")
            c = _counts("conversions", conversions, shape)
            if np.any(c > n):
                raise StatsInputError("conversions exceed exposures")
            mean = np.where(n > 0, c / nf, 0.0)
            var = mean * (1.0 - mean)
        else:
            if value_sum is None or value_sum_sq is None:
                raise StatsInputError("mean metrics need value_sum and value_sum_sq")
            s = _reals("value_sum", value_sum, shape)
            ss = _reals("value_sum_sq", value_sum_sq, shape)
            if np.any(ss < 0.0):
                raise StatsInputError("value_sum_sq must be >= 0")
            if np.any((n == 0) & ((s != 0.0) | (ss != 0.0))):
                raise StatsInputError("value sums must be 0 when exposures is 0")
            mean = np.where(n > 0, s / nf, 0.0)
            centred = ss - s * mean
            bad = (n > 0) & ((centred < -1e-9 * ss - 1e-300) | ~np.isfinite(centred))
            if np.any(bad):
                raise StatsInputError("value_sum_sq is smaller than value_sum**2/exposures")
            var = np.where(n > 1, np.maximum(centred, 0.0) / (nf - 1.0), 0.0)
        mean = np.where(pres, mean, 0.0)
        cols = _compare(n, mean, var, pres[:, 1:], mt, m, a, ns)
    lift, se, lo, hi, p, code = cols
    adj = _adjust(p, pres[:, 1:], corr)
    defined = code == 0
    significant = (adj < a) & defined
    better = significant & (lift > 0.0)
    srm = _srm_many(n, w, pres, thr)
    return ManyAnalysis(
        metric_type=mt,
        method=m,
        alpha=a,
        correction=corr,
        mean=mean,
        lift=lift,
        se=se,
        ci_low=lo,
        ci_high=hi,
        p_value=p,
        adjusted_p=adj,
        confidence=100.0 * (1.0 - adj),
        significant=significant,
        better=better,
        reason_code=code,
        present=pres,
        observed=n,
        srm_chi2=srm[0],
        srm_p=srm[1],
        srm_flagged=srm[2],
        srm_df=srm[3],
        srm_expected=srm[4],
        srm_reason_code=srm[5],
        best=_best(lift, defined, pres[:, 1:]),
        winner=_winner(lift, better),
    )


def _n_stars(x: Any, rows: int) -> float | F64:
    """One N* for every experiment, or one per experiment as an (E, 1) column."""
    if np.ndim(x) == 0:
        return check.n_star(x)
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise StatsInputError("n_star must be a number or one number per experiment") from None
    if arr.shape != (rows,) or not np.all((arr >= 1.0) & (arr <= 1e12)):
        raise StatsInputError(f"n_star must be a number or {rows} numbers (one per experiment), each in [1, 1e12]")
    return arr[:, None]


def _compare(
    n: I64, mean: F64, var: F64, pres_t: B, mt: MetricType, m: Method, a: float, ns: float | F64
) -> tuple[F64, F64, F64, F64, F64, I8]:
    """Per-treatment relative effect with the scalar path's reason precedence; call under errstate."""
    n_a, mu_a, v_a = n[:, :1], mean[:, :1], var[:, :1]
    n_b, mu_b, v_b = n[:, 1:], mean[:, 1:], var[:, 1:]
    nf_a, nf_b = n_a.astype(np.float64), n_b.astype(np.float64)
    inv = 1.0 / mu_a
    r = mu_b * inv
    est = (mu_b - mu_a) / np.abs(mu_a)
    v = (v_b / nf_b + v_a * r * r / nf_a) * inv * inv
    zero_ctrl = reasons.CONTROL_RATE_ZERO if mt == "conversion" else reasons.CONTROL_MEAN_ZERO
    shape = mu_b.shape
    # Highest precedence first, mirroring effect_from_moments; np.select picks the first true condition.
    conds = [
        ~pres_t,
        np.broadcast_to(n_a == 0, shape),
        n_b == 0,
        ((n_a < 2) | (n_b < 2)) if mt == "mean" else np.zeros(shape, np.bool_),
        ((mu_a == 0.0) & (mu_b == 0.0)) if mt == "conversion" else np.zeros(shape, np.bool_),
        np.broadcast_to(mu_a == 0.0, shape),
        (v_a <= 0.0) | (v_b <= 0.0),
        ~(v > 0.0),
        ~(np.isfinite(est) & np.isfinite(v)),
    ]
    choices = [
        _R[reasons.VARIANT_ABSENT],
        _R[reasons.NO_EXPOSURES_CONTROL],
        _R[reasons.NO_EXPOSURES_TREATMENT],
        _R[reasons.TOO_FEW_EXPOSURES],
        _R[reasons.NO_CONVERSIONS],
        _R[zero_ctrl],
        _R[reasons.ZERO_VARIANCE],
        _R[reasons.ZERO_VARIANCE],
        _R[reasons.NOT_FINITE],
    ]
    code: I8 = np.select(conds, choices, default=np.int8(0)).astype(np.int8)
    ok = code == 0
    # Undefined cells get harmless stand-ins so no NaN leaks into the special functions' warnings.
    est = np.where(ok, est, 0.0)
    se = np.sqrt(np.where(ok, v, 1.0))
    z = est / se
    if m == "fixed":
        df = _welch_df(v_a, nf_a, v_b, nf_b, ok)
        p = np.clip(2.0 * special.stdtr(df, -np.abs(z)), 0.0, 1.0)
        hw = special.stdtrit(df, 1.0 - a / 2.0) * se
    else:
        nn = nf_a + nf_b
        la = -2.0 * np.log(a)
        rho = np.sqrt((la + np.log(la + 1.0)) / ns)
        nr2 = nn * rho * rho
        hw = se * np.sqrt(2.0 * (nr2 + 1.0) / (nn * rho * rho) * np.log(np.sqrt(nr2 + 1.0) / a))
        log_p = 0.5 * np.log1p(nr2) - nr2 * z * z / (2.0 * (nr2 + 1.0))
        p = np.where(log_p < 0.0, np.exp(log_p), 1.0)
    nan = np.float64(np.nan)
    return (
        np.where(ok, est, nan),
        np.where(ok, se, nan),
        np.where(ok, est - hw, nan),
        np.where(ok, est + hw, nan),
        np.where(ok, p, 1.0),
        code,
    )


def _welch_df(v_a: F64, n_a: F64, v_b: F64, n_b: F64, ok: B) -> F64:
    """Vector twin of effects.welch_df; rows that are not ok get df 1 (ignored later)."""
    a = np.where(v_a > 0.0, v_a / n_a, 0.0)
    b = np.where(v_b > 0.0, v_b / n_b, 0.0)
    mx = np.maximum(a, b)
    a = a / mx
    b = b / mx
    den = np.where(a > 0.0, a * a / (n_a - 1.0), 0.0) + np.where(b > 0.0, b * b / (n_b - 1.0), 0.0)
    df = (a + b) ** 2 / den
    df = np.where(mx > 0.0, df, n_a + n_b - 2.0)
    return np.where(ok, df, 1.0)


def _adjust(p: F64, pres_t: B, corr: Correction) -> F64:
    """Row-wise Holm / BH over the present treatments; absent ones get 1.0."""
    if corr == "none" or p.shape[1] == 0:
        return np.where(pres_t, p, 1.0)
    k = p.shape[1]
    mrow = pres_t.sum(axis=1, keepdims=True).astype(np.float64)
    keyed = np.where(pres_t, p, np.inf)  # absent sort last
    order = np.argsort(keyed, axis=1, kind="stable")
    ps = np.take_along_axis(keyed, order, axis=1)
    rank = np.arange(k, dtype=np.float64)[None, :]
    valid = np.isfinite(ps)
    with np.errstate(all="ignore"):
        if corr == "holm":
            adj = np.where(valid, np.minimum(1.0, (mrow - rank) * ps), 0.0)
            adj = np.maximum.accumulate(adj, axis=1)
        else:
            adj = np.where(valid, mrow * ps / (rank + 1.0), np.inf)
            adj = np.minimum(np.minimum.accumulate(adj[:, ::-1], axis=1)[:, ::-1], 1.0)
    out = np.empty_like(p)
    np.put_along_axis(out, order, adj, axis=1)
    # m = 1 leaves p unchanged in the scalar path (it skips the arithmetic); match it bit for bit.
    out = np.where(mrow == 1.0, p, out)
    return np.where(pres_t, out, 1.0)


def _srm_many(n: I64, w: F64, pres: B, thr: float) -> tuple[F64, F64, B, I64, F64, I8]:
    active = (w > 0.0) & pres
    k = active.sum(axis=1)
    df = np.maximum(k - 1, 0).astype(np.int64)
    total = np.where(active, n, 0).sum(axis=1).astype(np.float64)
    wsum = np.where(active, w, 0.0).sum(axis=1)
    with np.errstate(all="ignore"):
        e = np.where(active, w / wsum[:, None] * total[:, None], 0.0)
        d = n - e
        chi2 = np.minimum(np.where(active & (e > 0.0), d * d / e, 0.0).sum(axis=1), np.finfo(np.float64).max)
    # Exposures on a present variant with weight 0: a mismatch whatever the other arms do (see srm._srm).
    stray = (pres & ~(w > 0.0) & (n > 0)).any(axis=1)
    code = np.select(
        [stray, k == 0, k == 1, total == 0.0],
        [np.int8(4), np.int8(1), np.int8(2), np.int8(3)],
        default=np.int8(0),
    ).astype(np.int8)
    ok = code == 0
    p = np.where(ok, np.clip(special.chdtrc(np.maximum(df, 1), chi2), 0.0, 1.0), np.where(stray, 0.0, 1.0))
    chi2 = np.where(ok, chi2, np.where(stray, np.finfo(np.float64).max, 0.0))
    e = np.where((ok | (stray & (total > 0.0)))[:, None], e, 0.0)
    df = np.where(k == 0, 0, df)
    return chi2, p, (ok | stray) & (p < thr), df, e, code


def _best(lift: F64, defined: B, pres_t: B) -> I64:
    if lift.shape[1] == 0:
        return np.full(lift.shape[0], -1, dtype=np.int64)
    any_def = defined.any(axis=1)
    idx_def = np.argmax(np.where(defined, lift, -np.inf), axis=1)
    idx_first = np.argmax(pres_t, axis=1)
    idx = np.where(any_def, idx_def, np.where(pres_t.any(axis=1), idx_first, -2))
    return (idx + 1).astype(np.int64)


def _winner(lift: F64, better: B) -> I64:
    if lift.shape[1] == 0:
        return np.full(lift.shape[0], -1, dtype=np.int64)
    idx = np.argmax(np.where(better, lift, -np.inf), axis=1)
    return np.where(better.any(axis=1), idx + 1, -1).astype(np.int64)
