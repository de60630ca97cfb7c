"""``sequentialTuning: auto``: N* from the experiment's planned sample size, through the configuration and into
the decision's statistics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker.config import ConfigError, load_config
from worker.decide import ExperimentSnapshot, VariantSnapshot, decide, experiment_n_star
from worker.domain.metrics import MetricDefinition, MetricSnapshot
from worker.domain.tuning import DEFAULT_N_STAR, MIN_CONTROL_EXPOSURES, planned_sample_size, sequential_n_star
from worker.stats import LatencySketch, VariantStats, analyze_experiment
from worker.stats.planning import plan_sample_size

NOW = datetime(2026, 5, 9, 12, 0, tzinfo=UTC)


def cfg(**overrides: Any) -> Any:
    return load_config(env={}, overrides=overrides).config


def snapshot(control: tuple[int, int], treatment: tuple[int, int], *metrics: MetricSnapshot) -> ExperimentSnapshot:
    def v(name: str, n: int, c: int, is_control: bool) -> VariantSnapshot:
        return VariantSnapshot(name, is_control, 50.0, n, c, 0, 0.0, 0.0, LatencySketch())

    return ExperimentSnapshot(
        id=1,
        name="checkout",
        status="running",
        started_at=NOW - timedelta(days=3),
        metric_type="conversion",
        priority="normal",
        variants=(v("control", *control, True), v("b", *treatment, False)),
        now=NOW,
        metrics=metrics,
    )


def test_the_setting_takes_auto_or_a_number_from_the_environment_and_a_config() -> None:
    assert load_config(env={"AUTO_PROMOTION_SEQUENTIAL_TUNING": "auto"}).config.sequential_tuning == "auto"
    assert load_config(env={"AUTO_PROMOTION_SEQUENTIAL_TUNING": "Auto"}).config.sequential_tuning == "auto"
    assert load_config(env={"AUTO_PROMOTION_SEQUENTIAL_TUNING": "12000"}).config.sequential_tuning == 12000.0
    assert cfg(sequentialTuning="auto", plannedSampleSize=15000).planned_sample_size == 15000
    assert cfg().public()["sequentialTuning"] == 5000.0 and cfg().planned_sample_size is None


@pytest.mark.parametrize(
    ("env", "overrides", "message"),
    [
        ({"AUTO_PROMOTION_SEQUENTIAL_TUNING": "fast"}, {}, "expected auto or a number, got 'fast'"),
        ({}, {"sequentialTuning": "fast"}, "sequentialTuning: must be auto or a number between 1 and 1e12"),
        ({}, {"sequentialTuning": 0}, "sequentialTuning: must be between 1 and"),
        ({}, {"plannedSampleSize": 0}, "plannedSampleSize: must be at least 1"),
    ],
)
def test_bad_tuning_is_one_clear_error(env: dict[str, str], overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env=env, overrides=overrides)
    assert any(message in e for e in info.value.errors), info.value.errors
    assert len(info.value.errors) == 1


def test_a_number_is_used_as_it_is() -> None:
    assert sequential_n_star(cfg(sequentialTuning=7000), "conversion", VariantStats("c", True, 10_000, 1000)) == 7000


def test_auto_uses_twice_the_planned_sample_size() -> None:
    config = cfg(sequentialTuning="auto", plannedSampleSize=15000)
    assert sequential_n_star(config, "conversion", None) == 30_000


def test_auto_without_a_plan_plans_from_the_control_and_min_improvement() -> None:
    config = cfg(sequentialTuning="auto", thresholds={"minImprovement": 5.0})
    control = VariantStats("c", True, 10_000, 1_000)
    expected = plan_sample_size("conversion", 0.1, 0.05, method="fixed").fixed_horizon_exposures_per_arm
    assert planned_sample_size(config, "conversion", control) == expected
    assert sequential_n_star(config, "conversion", control) == pytest.approx(2 * expected)
    # two treatments and two primary metrics: alpha / 4 per comparison, a larger plan
    assert planned_sample_size(config, "conversion", control, 2, 2) > expected  # type: ignore[operator]


def test_auto_falls_back_to_the_default_while_there_is_nothing_to_plan_from() -> None:
    config = cfg(sequentialTuning="auto")
    assert sequential_n_star(config, "conversion", VariantStats("c", True, MIN_CONTROL_EXPOSURES - 1, 10)) == (
        DEFAULT_N_STAR
    )
    assert sequential_n_star(config, "conversion", VariantStats("c", True, 10_000, 0)) == DEFAULT_N_STAR
    no_mde = cfg(sequentialTuning="auto", thresholds={"minImprovement": 0.0})
    assert sequential_n_star(no_mde, "conversion", VariantStats("c", True, 10_000, 1000)) == DEFAULT_N_STAR


def test_mean_metrics_plan_with_the_controls_sd() -> None:
    n, mean, sd = 5_000, 20.0, 8.0
    control = VariantStats("c", True, n, value_sum=n * mean, value_sum_sq=sd * sd * (n - 1) + mean * mean * n)
    expected = plan_sample_size("mean", mean, 0.05, sd=sd, method="fixed").fixed_horizon_exposures_per_arm
    assert planned_sample_size(cfg(sequentialTuning="auto"), "mean", control) == pytest.approx(expected, abs=1)


def test_the_decision_tests_with_the_experiments_n_star() -> None:
    snap = snapshot((40_000, 4_000), (40_000, 4_300))
    config = cfg(sequentialTuning="auto", plannedSampleSize=60_000, thresholds={"minRuntimeHours": 1})
    assert experiment_n_star(snap, config) == 120_000
    d = decide(snap, config)
    stats = [v.to_stats() for v in snap.variants]
    tuned = analyze_experiment(stats, n_star=120_000).comparisons[0]
    default = analyze_experiment(stats, n_star=5_000).comparisons[0]
    assert d.analysis is not None
    assert d.analysis.comparisons[0].p_value == pytest.approx(tuned.p_value, rel=1e-12)
    assert tuned.p_value != pytest.approx(default.p_value, rel=1e-3)


def test_auto_counts_the_primary_metrics_that_split_alpha() -> None:
    extra = MetricSnapshot(MetricDefinition("revenue", "mean", role="primary"), {})
    config = cfg(sequentialTuning="auto")
    one = experiment_n_star(snapshot((10_000, 1_000), (10_000, 1_000)), config)
    two = experiment_n_star(snapshot((10_000, 1_000), (10_000, 1_000), extra), config)
    assert two > one
