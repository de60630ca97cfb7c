"""The experiment planner as people ask for it: percent in, exposures and days out, for the configured method.

``autopromote plan``, ``GET /api/plan`` and the dashboard's form all call ``plan_experiment``; the math is
``worker.stats.planning``. Inputs are checked here, with messages that say what to send instead, because the CLI
has no schema to do it (the API's query model states the same ranges for the OpenAPI document).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from worker.config import AutoPromotionConfig
from worker.domain.errors import InvalidRequest
from worker.stats import StatsInputError
from worker.stats.planning import SamplePlan, plan_sample_size

PlanMetricType = Literal["conversion", "mean"]
Problem = tuple[str, str]
"""(the input's name as the API spells it, what is wrong and what to send instead)"""


@dataclass(frozen=True, slots=True)
class PlanRequest:
    """What the planner is asked: ``mde`` is a relative lift in percent (5 = +5%), ``baseline`` a rate or a mean."""

    metric_type: PlanMetricType
    baseline: float
    mde: float
    sd: float | None = None
    alpha: float = 0.05
    power: float = 0.8
    treatments: int = 1
    primary_metrics: int = 1
    rho: float = 0.0
    daily_exposures: float | None = None


def _finite(out: list[Problem], name: str, value: float | None) -> bool:
    """True when ``value`` is a number to check further; a NaN or an infinity is a problem of its own."""
    if value is not None and not math.isfinite(value):
        out.append((name, f"{name} must be a finite number, got {value}"))
        return False
    return value is not None


def _metric_problems(req: PlanRequest) -> list[Problem]:
    """The metric's kind, baseline, sd and the MDE against them."""
    out: list[Problem] = []
    if req.metric_type not in ("conversion", "mean"):
        out.append(("metricType", f"metric type must be conversion or mean, got {req.metric_type!r}"))
    base_ok = _finite(out, "baseline", req.baseline)
    if base_ok and req.metric_type == "conversion" and not 0.0 < req.baseline < 1.0:
        out.append(
            (
                "baseline",
                f"baseline must be a conversion rate between 0 and 1 for a conversion metric, got {req.baseline:g} "
                "(e.g. 0.1 for 10%)",
            )
        )
        base_ok = False
    elif base_ok and req.metric_type == "mean" and req.baseline == 0.0:
        out.append(("baseline", "baseline must not be 0 for a mean metric: a lift relative to 0 is undefined"))
    if _finite(out, "mde", req.mde) and not 0.0 < req.mde <= 10_000.0:
        out.append(
            ("mde", f"mde must be a relative lift in percent above 0, got {req.mde:g} (5 means +5% over the baseline)")
        )
    elif base_ok and req.metric_type == "conversion" and req.baseline * (1.0 + req.mde / 100.0) >= 1.0:
        out.append(
            (
                "mde",
                f"baseline {req.baseline:g} raised by the mde ({req.mde:g}%) is a rate of "
                f"{req.baseline * (1.0 + req.mde / 100.0):.4g}, not below 1; plan a smaller mde",
            )
        )
    if req.metric_type == "mean":
        if req.sd is None:
            out.append(("sd", "sd is required for a mean metric: the standard deviation of the value per exposure"))
        elif _finite(out, "sd", req.sd) and not req.sd > 0.0:
            out.append(("sd", f"sd must be above 0, got {req.sd:g}"))
    elif req.sd is not None:
        out.append(
            ("sd", "sd is only used by mean metrics (a conversion rate's spread follows from the rate); leave it out")
        )
    return out


def _test_problems(req: PlanRequest) -> list[Problem]:
    """alpha, power, the multiplicity counts, rho and the traffic."""
    out: list[Problem] = []
    if _finite(out, "alpha", req.alpha) and not 0.0 < req.alpha <= 0.5:
        out.append(("alpha", f"alpha must be above 0 and at most 0.5, got {req.alpha:g} (0.05 is 95% confidence)"))
    if _finite(out, "power", req.power) and not 0.5 <= req.power < 1.0:
        out.append(
            ("power", f"power must be at least 0.5 and below 1, got {req.power:g} (0.8 finds a true MDE 4 times in 5)")
        )
    if not 1 <= req.treatments <= 100:
        out.append(
            ("treatments", f"treatments must be between 1 and 100, got {req.treatments} (variants besides the control)")
        )
    if not 1 <= req.primary_metrics <= 100:
        out.append(("primaryMetrics", f"primary metrics must be between 1 and 100, got {req.primary_metrics}"))
    if _finite(out, "rho", req.rho) and not -1.0 < req.rho < 1.0:
        out.append(
            (
                "rho",
                f"rho must be a correlation strictly between -1 and 1, got {req.rho:g} "
                "(the covariate's correlation with the metric; 0 without CUPED)",
            )
        )
    if _finite(out, "dailyExposures", req.daily_exposures) and not (req.daily_exposures or 0.0) > 0.0:
        out.append(
            (
                "dailyExposures",
                f"daily exposures must be above 0 (per arm), got {req.daily_exposures:g}; or leave it out",
            )
        )
    return out


def _problems(req: PlanRequest) -> list[Problem]:
    """Every input that cannot be planned, each with what to send instead."""
    return _metric_problems(req) + _test_problems(req)


def _days(x: float | None) -> float | None:
    # Rounded up to a tenth: a plan that says 2.0 days must not need 2.04.
    return None if x is None else math.ceil(x * 10.0 - 1e-9) / 10.0


def sequential_tuning_of(config: AutoPromotionConfig) -> float | None:
    """The configured N*, or None for ``auto`` (the planner's N* for the planned size)."""
    tuning: Any = config.sequential_tuning
    return None if tuning == "auto" else float(tuning)


def plan_experiment(req: PlanRequest, config: AutoPromotionConfig) -> dict[str, Any]:
    """The plan for ``req`` under ``config``'s method, tuning and correction, as the API and ``--json`` show it.

    Raises InvalidRequest listing every unusable input (``details.errors``).
    """
    problems = _problems(req)
    if problems:
        raise InvalidRequest(
            "cannot plan: " + "; ".join(m for _, m in problems),
            {"errors": [{"field": f, "message": m} for f, m in problems]},
        )
    common: dict[str, Any] = {
        "sd": req.sd,
        "alpha": req.alpha,
        "power": req.power,
        "treatments": req.treatments,
        "primary_metrics": req.primary_metrics,
        "correction": config.correction,
        "rho": req.rho,
        "daily_exposures": req.daily_exposures,
    }
    n_star = sequential_tuning_of(config)
    try:
        plan = plan_sample_size(
            req.metric_type, req.baseline, req.mde / 100.0, method=config.method, n_star=n_star, **common
        )
    except StatsInputError as exc:
        raise InvalidRequest(f"cannot plan: {exc}", {"errors": [{"field": "", "message": str(exc)}]}) from None
    return plan_json(req, config, plan)


def plan_json(req: PlanRequest, config: AutoPromotionConfig, plan: SamplePlan) -> dict[str, Any]:
    """The wire form: the two answers side by side and every assumption they rest on."""
    t = config.thresholds
    notes: list[str] = []
    if plan.exposures_per_arm < t.min_sample_size:
        notes.append(
            f"minSampleSize is {t.min_sample_size:,}: no promotion before each arm has that many exposures, "
            f"more than the {plan.exposures_per_arm:,} planned"
        )
    if req.mde < t.min_improvement:
        notes.append(
            f"minImprovement is {t.min_improvement:g}%: a true lift of {req.mde:g}% can be significant but is "
            "never promoted; plan an mde of at least minImprovement"
        )
    if plan.days is not None and plan.days * 24.0 < t.min_runtime_hours:
        notes.append(f"minRuntimeHours is {t.min_runtime_hours:g}: no promotion before that, whatever the data")
    if plan.method == "sequential":
        test = (
            "always-valid confidence sequence on the relative lift (delta method), checked after every update; "
            "exposuresPerArm is where it has found a true lift of the mde in `power` of runs, "
            "medianExposuresPerArm where it has in half of them"
        )
    else:
        test = (
            "two-sided Welch test of the relative lift (delta method), read once at the planned size "
            "(the worker checks after every update, so a fixed test peeks: prefer method sequential)"
        )
    tuning: Any = config.sequential_tuning
    return {
        "exposuresPerArm": plan.exposures_per_arm,
        "fixedHorizonExposuresPerArm": plan.fixed_horizon_exposures_per_arm,
        "medianExposuresPerArm": plan.median_exposures_per_arm,
        "days": _days(plan.days),
        "fixedHorizonDays": _days(plan.fixed_horizon_days),
        "method": plan.method,
        "assumptions": {
            "metricType": req.metric_type,
            "baseline": req.baseline,
            "sd": req.sd,
            "mde": req.mde,
            "alpha": req.alpha,
            "power": req.power,
            "treatments": req.treatments,
            "primaryMetrics": req.primary_metrics,
            "rho": req.rho,
            "dailyExposuresPerArm": req.daily_exposures,
            "correction": config.correction,
            "alphaPerComparison": round(plan.alpha_per_comparison, 10),
            "varianceFactor": round(plan.variance_factor, 6),
            "sequentialTuning": tuning if tuning == "auto" else float(tuning),
            "nStar": None if plan.n_star is None else round(plan.n_star, 1),
            "test": test,
            "notes": notes,
        },
    }
