"""The confidence sequence's N* for one experiment: the configured number, or ``sequentialTuning: auto``.

auto tunes N* to the experiment's planned sample size (the sequence is tightest there, so a true effect of the
planned size is found soonest): twice its ``plannedSampleSize`` (N* counts both arms), or, without one, twice the
planner's fixed-horizon answer from its own settings: the control's observed rate (or mean and sd) as the
baseline, ``minImprovement`` as the minimum detectable effect (a smaller true lift is never promoted anyway),
the configured alpha and correction, its treatments and primary metrics, power 0.8. Until the control has
``MIN_CONTROL_EXPOSURES`` exposures the baseline is too rough to plan from and the default N* holds (no test is
near significance that early). bench/bench_stats.py measures what auto buys and checks that the false-promotion
rate stays within alpha.
"""

from __future__ import annotations

from worker.config import AutoPromotionConfig
from worker.stats import StatsInputError, VariantStats

# worker.stats.planning is imported where it is used: it loads scipy.signal (with scipy.stats, optimize and
# interpolate, about 0.4 s), which only an experiment with sequentialTuning auto needs, and every command that
# decides would otherwise pay for at start-up (tests/unit/test_cli_startup.py).

DEFAULT_N_STAR = 5000.0
"""The N* auto falls back to (the default sequentialTuning) while there is nothing to plan from."""
MIN_CONTROL_EXPOSURES = 200
PLANNING_POWER = 0.8


def planned_sample_size(
    config: AutoPromotionConfig,
    metric_type: str,
    control: VariantStats | None,
    treatments: int = 1,
    primary_metrics: int = 1,
) -> float | None:
    """Exposures per arm the experiment is planned for: its ``plannedSampleSize``, else the planner's fixed-horizon
    answer from its settings and the control's data (None while there is too little to plan from)."""
    if config.planned_sample_size is not None:
        return float(config.planned_sample_size)
    mde = config.thresholds.min_improvement / 100.0
    if control is None or not mde > 0.0 or control.exposures < MIN_CONTROL_EXPOSURES:
        return None
    n = control.exposures
    sd: float | None = None
    if metric_type == "conversion":
        baseline = control.conversions / n
    else:
        baseline = control.value_sum / n
        sd = max(control.value_sum_sq / n - baseline * baseline, 0.0) ** 0.5 * (n / (n - 1)) ** 0.5
    from worker.stats.planning import plan_sample_size

    try:
        plan = plan_sample_size(
            "conversion" if metric_type == "conversion" else "mean",
            baseline,
            mde,
            sd=sd,
            alpha=config.alpha,
            power=PLANNING_POWER,
            treatments=max(treatments, 1),
            primary_metrics=max(primary_metrics, 1),
            correction=config.correction,
            method="fixed",
        )
    except StatsInputError:
        return None  # no conversions yet, a zero mean, a rate the mde would push past 1: nothing to plan from
    return float(plan.fixed_horizon_exposures_per_arm)


def sequential_n_star(
    config: AutoPromotionConfig,
    metric_type: str,
    control: VariantStats | None,
    treatments: int = 1,
    primary_metrics: int = 1,
) -> float:
    """The N* the decision's sequential tests use for this experiment under ``config``."""
    tuning = config.sequential_tuning
    if not isinstance(tuning, str):
        return float(tuning)
    planned = planned_sample_size(config, metric_type, control, treatments, primary_metrics)
    if planned is None:
        return DEFAULT_N_STAR
    from worker.stats.planning import auto_n_star

    return auto_n_star(planned)
