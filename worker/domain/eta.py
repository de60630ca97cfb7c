"""When will a running experiment be decided? Exposures and hours remaining, with an 80% interval.

From the experiment's current z-statistic, the information it has, and an effect to project with, the decision's
own test (the confidence sequence, or the fixed test the worker re-checks) is run forward in time: the stopping
point's 10th, 50th and 90th percentiles come from the first-passage law of the z-process
(stats.stopping.crossing_quantiles, vectorised so a scan projects every experiment in one pass). Data grow at
the observed exposure rate (exposures since ``started_at``), so hours are exposures over that rate.

Which effect (``basis``): the planned MDE (``minImprovement``: a smaller true lift is never promoted) while the
data are consistent with it; the observed lift (with its uncertainty: a normal posterior, mixed over) once it is
significantly above the MDE; and no projection when it is significantly below: "will not reach significance".
The gates the statistics do not set, ``minSampleSize`` and ``minRuntimeHours``, move the stopping point too.

Pure and at the edges: check, scan, the API's reads and the dashboard compute it; the daemon's evaluations do not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from scipy import special

from worker.config import AutoPromotionConfig
from worker.stats.planning import z_diffusion
from worker.stats.stopping import FloatArray, crossing_quantiles, sequential_rho2, sequential_z_boundary

Basis = Literal["observed", "planned"]

# The effect is "significantly" above or below the MDE at this z (two-sided 95%): only then is the planned MDE
# set aside for what the data say.
SEPARATION_Z = 1.96
# Quantiles of the stopping point reported: the median and the 80% interval.
QUANTILES = (0.1, 0.5, 0.9)
# No projection beyond this many times the data so far (a lift that small is, in practice, never decided).
MAX_SCALE = 1e4
# Nodes of the normal posterior of the observed lift (Gauss-Hermite, probabilists').
_NODES, _WEIGHTS = (np.asarray(x, dtype=np.float64) for x in hermegauss(9))  # type: ignore[no-untyped-call]
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


@dataclass(frozen=True, slots=True)
class EtaInput:
    """One experiment's numbers at one moment: its candidate's lift, the test, the gates, the exposure rate."""

    lift: float | None  # the candidate treatment's relative lift and its standard error, None when undefined
    se: float | None
    n_control: int
    n_treatment: int
    hours_observed: float | None  # hours from started_at to the moment of these numbers (None: unknown)
    method: str
    alpha: float  # the configured alpha (the confidence sequence is tuned at it)
    alpha_test: float  # the level the candidate's p-value must reach (after the corrections)
    n_star: float
    mde: float | None  # relative (0.05 = +5%); None: none planned
    significant: bool
    eligible: bool
    min_sample_size: int
    min_runtime_hours: float
    blocked: str | None = None  # a reason other than the statistics and the two gates, for the message
    kappa: float = 1.0  # the z-statistic's diffusion (stats.planning.z_diffusion)


@dataclass(frozen=True, slots=True)
class Eta:
    """The projection for one experiment (``to_json`` is the ``eta`` object of check, scan and the API)."""

    exposures_remaining_per_arm: int | None
    hours_remaining: float | None
    interval80: tuple[int, int | None] | None  # exposures per arm remaining: 10th and 90th percentile
    hours_interval80: tuple[float, float | None] | None
    basis: Basis
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "exposuresRemainingPerArm": self.exposures_remaining_per_arm,
            "hoursRemaining": self.hours_remaining,
            "interval80": None if self.interval80 is None else list(self.interval80),
            "hoursInterval80": None if self.hours_interval80 is None else list(self.hours_interval80),
            "basis": self.basis,
            "message": self.message,
        }


def alpha_per_comparison(config: AutoPromotionConfig, treatments: int, primary_metrics: int) -> float:
    """The level a treatment's raw p-value must reach, as the decision adjusts it (Holm/BH's first step)."""
    a = config.alpha / max(primary_metrics, 1)
    return a if config.correction == "none" else a / max(treatments, 1)


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def _duration(hours: float) -> str:
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def _fmt_n(n: float) -> str:
    return f"{n:,.0f}"


def estimate_etas(inputs: Sequence[EtaInput]) -> list[Eta]:
    """Each experiment's ETA; the projections of all of them in one vectorised pass."""
    out: list[Eta | None] = [None] * len(inputs)
    project: list[tuple[int, Basis]] = []
    for i, e in enumerate(inputs):
        done = _without_projection(e)
        if isinstance(done, Eta):
            out[i] = done
        else:
            project.append((i, done))
    if project:
        rows = [inputs[i] for i, _ in project]
        scales = _stopping_scales(rows, [b for _, b in project])
        for (i, basis), s in zip(project, scales, strict=True):
            out[i] = _projected(inputs[i], basis, s)
    return [e for e in out if e is not None]


def _without_projection(e: EtaInput) -> Eta | Basis:
    """The ETA when there is nothing to project (decided, no data, effect below the MDE), else the basis to use."""
    if e.eligible:
        return Eta(0, 0.0, (0, 0), (0.0, 0.0), "observed", "eligible now")
    if e.significant:
        s = _gate_scale(e)
        npa = (e.n_control + e.n_treatment) / 2.0
        n = round((s - 1.0) * npa)
        hours = None if e.hours_observed is None else (s - 1.0) * e.hours_observed
        why = f"; blocked: {e.blocked}" if e.blocked else ""
        if s > 1.0:
            gate = f"waiting for minSampleSize / minRuntimeHours: {_fmt_n(n)} more exposures per arm"
            gate += "" if hours is None else f", {_duration(hours)}"
            return Eta(
                n, hours, (n, n), None if hours is None else (hours, hours), "observed", "significant; " + gate + why
            )
        return Eta(0, 0.0, (0, 0), (0.0, 0.0), "observed", "significant now" + why)
    if e.lift is None or e.se is None or not e.se > 0.0 or not math.isfinite(e.lift):
        return Eta(None, None, None, None, "planned", "not enough data to project yet (the lift is not defined)")
    if e.mde is None:
        if e.lift > 0.0:
            return "observed"
        return Eta(
            None,
            None,
            None,
            None,
            "observed",
            f"no MDE planned (minImprovement is 0) and no positive lift observed ({_pct(e.lift)}); nothing to project",
        )
    z_mde = (e.lift - e.mde) / e.se
    if z_mde < -SEPARATION_Z:
        upper = e.lift + SEPARATION_Z * e.se
        return Eta(
            None,
            None,
            None,
            None,
            "observed",
            f"will not reach significance: the effect is below the MDE ({_pct(e.mde)}): observed {_pct(e.lift)}, "
            f"at most {_pct(upper)} (95%)",
        )
    return "observed" if z_mde > SEPARATION_Z else "planned"


def _gate_scale(e: EtaInput) -> float:
    """How many times the data so far the two gates (minSampleSize, minRuntimeHours) need."""
    s = 1.0
    smaller = min(e.n_control, e.n_treatment)
    if smaller > 0 and e.min_sample_size > smaller:
        s = max(s, e.min_sample_size / smaller)
    if e.hours_observed is not None and e.hours_observed > 0 and e.min_runtime_hours > e.hours_observed:
        s = max(s, e.min_runtime_hours / e.hours_observed)
    return s


def _stopping_scales(rows: Sequence[EtaInput], bases: Sequence[Basis]) -> FloatArray:
    """(E, 3) scale factors of the data at the 10th, 50th and 90th percentile of the stopping point."""
    se = np.array([r.se for r in rows], dtype=np.float64)
    lift = np.array([r.lift for r in rows], dtype=np.float64)
    mde = np.array([r.mde if r.mde is not None else 0.0 for r in rows], dtype=np.float64)
    observed = np.array([b == "observed" for b in bases])
    # Effect hypotheses: the posterior nodes around the observed lift, or the MDE at every node.
    effects = np.where(observed[:, None], lift[:, None] + se[:, None] * _NODES[None, :], mde[:, None])
    drift = effects / se[:, None]
    z_now = lift / se
    n_now = np.array([r.n_control + r.n_treatment for r in rows], dtype=np.float64)[:, None, None]
    fixed = np.array([r.method == "fixed" for r in rows])[:, None, None]
    a_test = np.array([r.alpha_test for r in rows], dtype=np.float64)[:, None, None]
    rho2 = sequential_rho2([r.alpha for r in rows], [r.n_star for r in rows])[:, None, None]
    z_fixed = -special.ndtri(a_test / 2.0)
    # On the scale of the z-process's own diffusion (kappa): the start, the drift and both boundaries.
    kappa = np.array([r.kappa for r in rows], dtype=np.float64)
    k3 = kappa[:, None, None]
    # minImprovement: the decision also needs the lift at or above it, i.e. z >= mde / se(s), a line in s on the
    # S scale (S = z sqrt(s) >= (mde / se_now) s).
    has_mde = np.array([r.mde is not None for r in rows])
    slope = np.where(has_mde, mde / se, 0.0) / kappa

    def boundary(s: FloatArray) -> FloatArray:
        seq = sequential_z_boundary(n_now * s, rho2, a_test)
        return np.asarray(np.sqrt(s) * np.where(fixed, z_fixed, seq) / k3, dtype=np.float64)

    return crossing_quantiles(
        QUANTILES,
        z_now / kappa,
        drift / kappa[:, None],
        boundary,
        slope=slope,
        weights=_WEIGHTS,
        s_max=MAX_SCALE,
        iterations=30,
    )


def _projected(e: EtaInput, basis: Basis, scales: FloatArray) -> Eta:
    gate = _gate_scale(e)
    s10, s50, s90 = (max(float(s), gate) for s in scales)
    npa = (e.n_control + e.n_treatment) / 2.0

    def remaining(s: float) -> int | None:
        return None if math.isinf(s) else round((s - 1.0) * npa)

    def hours(s: float) -> float | None:
        if e.hours_observed is None or not e.hours_observed > 0 or math.isinf(s):
            return None
        return round((s - 1.0) * e.hours_observed, 2)

    assert e.lift is not None and e.se is not None
    effect = (
        f"if the true lift is the MDE ({_pct(e.mde or 0.0)}; observed {_pct(e.lift)} ± {100 * 1.96 * e.se:.1f}%)"
        if basis == "planned"
        else f"at the observed lift ({_pct(e.lift)} ± {100 * 1.96 * e.se:.1f}%)"
    )
    lo, mid, hi = remaining(s10), remaining(s50), remaining(s90)
    if mid is None:
        message = f"unlikely to be decided within {MAX_SCALE:,.0f} times the data so far {effect}"
        return Eta(None, None, None if lo is None else (lo, None), None, basis, message)
    h_lo, h_mid, h_hi = hours(s10), hours(s50), hours(s90)
    when = f"{_fmt_n(mid)} more exposures per arm"
    if h_mid is not None and h_lo is not None:
        upper = "more" if h_hi is None else _duration(h_hi)
        when += f", about {_duration(h_mid)} (80%: {_duration(h_lo)} to {upper})"
    elif e.hours_observed is None:
        when += " (exposure rate unknown: no started_at)"
    message = f"decision expected in {when}, {effect}"
    if e.blocked:
        message += f"; also blocked: {e.blocked}"
    return Eta(
        mid,
        h_mid,
        (lo if lo is not None else 0, hi),
        None if h_lo is None else (h_lo, h_hi),
        basis,
        message,
    )


# ----------------------------------------------------------------------------------------- building inputs
def hours_between(start: datetime | None, end: datetime) -> float | None:
    """Hours from ``start`` to ``end`` (None without a start, or when it is not before ``end``)."""
    if start is None:
        return None
    h = (end - start).total_seconds() / 3600.0
    return h if h > 0 else None


def eta_input_from_check(
    check: Mapping[str, Any],
    config: AutoPromotionConfig,
    *,
    n_star: float,
    started_at: datetime | None,
    evaluated_at: datetime,
) -> EtaInput | None:
    """The ETA's numbers from a check ``data`` object (Decision.to_check_data(), live or stored); None when it
    names no candidate treatment with its control."""
    variants = {v["name"]: v for v in check.get("variants") or []}
    control = variants.get(check.get("controlVariant") or "")
    best = variants.get(check.get("bestVariant") or "")
    if control is None or best is None:
        return None
    treatments = sum(1 for v in variants.values() if not v.get("isControl"))
    primaries = sum(1 for m in check.get("metrics") or [] if m.get("role") == "primary") or 1
    reasons = [r for r in check.get("reasons") or [] if not _statistical(r)]
    t = config.thresholds
    mde = t.min_improvement / 100.0 if t.min_improvement > 0 else None
    return EtaInput(
        lift=best.get("lift"),
        se=best.get("se"),
        n_control=int(control.get("exposures") or 0),
        n_treatment=int(best.get("exposures") or 0),
        hours_observed=hours_between(started_at, evaluated_at),
        method=str(check.get("method") or config.method),
        alpha=config.alpha,
        alpha_test=alpha_per_comparison(config, treatments, primaries),
        n_star=n_star,
        mde=mde,
        # Decided statistically: a winner whose improvement also clears minImprovement.
        significant=check.get("winningVariant") is not None
        and not any(r.startswith("improvement ") for r in check.get("reasons") or []),
        eligible=bool(check.get("eligible")),
        min_sample_size=t.min_sample_size,
        min_runtime_hours=t.min_runtime_hours,
        blocked=reasons[0] if reasons else None,
        kappa=_kappa(check, control, best, mde),
    )


def _kappa(check: Mapping[str, Any], control: Mapping[str, Any], best: Mapping[str, Any], mde: float | None) -> float:
    """The z-process's diffusion at the control's mean and the effect projected with (the MDE, else the lift)."""
    rate = control.get("rate")
    lift = mde if mde is not None else best.get("lift")
    if rate is None or lift is None or not rate:
        return 1.0
    mean_type = check.get("metricType") == "mean"
    sd = 1.0
    n = int(control.get("exposures") or 0)
    if mean_type:
        s, ss = control.get("valueSum"), control.get("valueSumSq")
        if s is None or ss is None or n < 2:
            return 1.0
        sd = max(float(ss) / n - (float(s) / n) ** 2, 0.0) ** 0.5
        if not sd > 0.0:
            return 1.0
    kind: Literal["conversion", "mean"] = "mean" if mean_type else "conversion"
    return float(z_diffusion(kind, float(rate), float(rate) * (1.0 + float(lift)), sd))


def _statistical(reason: str) -> bool:
    """A reason the projection itself accounts for (the test, the two gates, the improvement)."""
    return reason.startswith(("no treatment beats control", "sample size ", "runtime ", "improvement ", "no winner"))


@dataclass(frozen=True, slots=True)
class EtaRequest:
    """One experiment to project: its check data (live or stored), its config, status and start."""

    check: Mapping[str, Any]
    config: AutoPromotionConfig
    status: str
    started_at: datetime | None
    evaluated_at: datetime


def check_etas(requests: Sequence[EtaRequest]) -> list[dict[str, Any] | None]:
    """The ``eta`` object of each check (None for an experiment that is not running or names no candidate)."""
    inputs: list[EtaInput] = []
    where: list[int] = []
    for i, r in enumerate(requests):
        if r.status != "running":
            continue
        n_star = r.check.get("nStar")
        e = eta_input_from_check(
            r.check,
            r.config,
            n_star=float(n_star) if n_star else 5000.0,
            started_at=r.started_at,
            evaluated_at=r.evaluated_at,
        )
        if e is not None:
            inputs.append(e)
            where.append(i)
    out: list[dict[str, Any] | None] = [None] * len(requests)
    for i, eta in zip(where, estimate_etas(inputs), strict=True):
        out[i] = eta.to_json()
    return out


def check_eta(request: EtaRequest) -> dict[str, Any] | None:
    """``check_etas`` for one experiment."""
    return check_etas([request])[0]


def stored_etas(requests: Sequence[EtaRequest], now: datetime) -> list[dict[str, Any] | None]:
    """ETAs from stored last decisions (the API's reads, the dashboard): projected as of each evaluation, then the
    hours since taken off (the exposures are those of the evaluation; the next one brings them up to date)."""
    out = check_etas(requests)
    for r, eta in zip(requests, out, strict=True):
        if eta is None:
            continue
        elapsed = max((now - r.evaluated_at).total_seconds() / 3600.0, 0.0)
        if eta.get("hoursRemaining") is not None:
            eta["hoursRemaining"] = round(max(eta["hoursRemaining"] - elapsed, 0.0), 2)
        if eta.get("hoursInterval80") is not None:
            lo, hi = eta["hoursInterval80"]
            eta["hoursInterval80"] = [
                round(max(lo - elapsed, 0.0), 2),
                None if hi is None else round(max(hi - elapsed, 0.0), 2),
            ]
        eta["asOf"] = r.evaluated_at.isoformat()
    return out
