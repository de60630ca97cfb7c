"""The post-promotion guard's pure core: baseline + current totals + alerts + config -> breaches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker.config import load_config
from worker.decide import AlertInfo
from worker.guard import VariantTotals, WatchedPromotion, check_guard
from worker.stats import LatencySketch

PROMOTED_AT = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _config(**overrides: Any) -> Any:
    return load_config(env={}, overrides=overrides).config


def _totals(exposures: int, errors: int = 0, latencies: list[float] | None = None) -> VariantTotals:
    return VariantTotals(
        exposures=exposures,
        conversions=exposures // 10,
        errors=errors,
        latency=LatencySketch.from_values(latencies or []),
    )


def _watch(
    *,
    baseline_b: VariantTotals,
    current_b: VariantTotals,
    control: VariantTotals | None = None,
    alerts: tuple[AlertInfo, ...] = (),
) -> WatchedPromotion:
    control = control or _totals(10_000, 10, [100.0] * 1000)
    return WatchedPromotion(
        promotion_id="p1",
        experiment_id=1,
        experiment_name="checkout",
        promoted_variant="b",
        control_variant="control",
        promoted_at=PROMOTED_AT,
        baseline={"control": control, "b": baseline_b},
        current={"control": control, "b": current_b},
        new_alerts=alerts,
    )


def test_error_rate_is_judged_on_data_since_the_promotion_only() -> None:
    # 1% before the promotion over 100k exposures; 10% of the 1,000 since. Cumulative would read 1.09%.
    watch = _watch(baseline_b=_totals(100_000, 1_000), current_b=_totals(101_000, 1_100))
    [breach] = check_guard(watch, _config())
    assert breach.metric == "error_rate"
    assert breach.details["errors"] == 100 and breach.details["exposures"] == 1_000
    assert breach.reason == (
        "guard: error rate of b since the promotion is 10.00% (100 errors in 1,000 exposures), above the 5.00% maximum"
    )


def test_error_rate_waits_for_min_samples() -> None:
    watch = _watch(baseline_b=_totals(100_000, 0), current_b=_totals(100_199, 199))
    assert check_guard(watch, _config()) == []
    watch = _watch(baseline_b=_totals(100_000, 0), current_b=_totals(100_200, 199))
    assert [b.metric for b in check_guard(watch, _config())] == ["error_rate"]
    watch = _watch(baseline_b=_totals(100_000, 0), current_b=_totals(100_050, 50))
    assert [b.metric for b in check_guard(watch, _config(guard={"minSamples": 50}))] == ["error_rate"]


def test_error_rate_at_the_maximum_is_not_a_breach() -> None:
    watch = _watch(baseline_b=_totals(0), current_b=_totals(1_000, 50))
    assert check_guard(watch, _config()) == []


def test_latency_compares_with_the_controls_pre_promotion_p95() -> None:
    before = [100.0] * 1000
    slow_since = [150.0] * 300  # +50% against control's 100 ms
    watch = _watch(baseline_b=_totals(1_000, 0, before), current_b=_totals(1_300, 0, before + slow_since))
    [breach] = check_guard(watch, _config())
    assert breach.metric == "latency"
    assert breach.details["p95Ms"] == pytest.approx(150.0, rel=0.02)
    assert breach.details["controlP95Ms"] == pytest.approx(100.0, rel=0.02)
    assert breach.details["degradationPct"] == pytest.approx(50.0, abs=3)
    assert breach.reason == (
        "guard: P95 latency of b since the promotion is 149.9 ms, +49.2% over the control's "
        "pre-promotion P95 of 100.5 ms (max +20%)"
    )


def test_latency_before_the_promotion_does_not_dilute_the_latency_since() -> None:
    fast_before = [50.0] * 100_000
    slow_since = [130.0] * 250
    watch = _watch(baseline_b=_totals(100_000, 0, fast_before), current_b=_totals(100_250, 0, fast_before + slow_since))
    assert [b.metric for b in check_guard(watch, _config())] == ["latency"]


def test_latency_within_the_allowed_degradation_or_with_few_samples_passes() -> None:
    watch = _watch(baseline_b=_totals(0), current_b=_totals(500, 0, [115.0] * 500))
    assert check_guard(watch, _config()) == []
    watch = _watch(baseline_b=_totals(0), current_b=_totals(500, 0, [500.0] * 199))
    assert check_guard(watch, _config()) == []


def test_latency_without_a_control_baseline_is_not_judged() -> None:
    watch = _watch(baseline_b=_totals(0), current_b=_totals(500, 0, [500.0] * 500), control=_totals(10_000))
    assert check_guard(watch, _config()) == []


@pytest.mark.parametrize("global_alert", [False, True])
def test_a_critical_alert_raised_after_the_promotion_is_a_breach(global_alert: bool) -> None:
    alert = AlertInfo(7, "checkout 500s", PROMOTED_AT + timedelta(minutes=3), global_alert)
    watch = _watch(baseline_b=_totals(0), current_b=_totals(10), alerts=(alert,))
    [breach] = check_guard(watch, _config())
    scope = "global" if global_alert else "experiment"
    assert breach.metric == "critical_alert"
    assert breach.reason == f"guard: critical {scope} alert #7 raised after the promotion of b: 'checkout 500s'"
    assert breach.details["scope"] == scope


def test_every_breached_metric_is_reported_most_urgent_first() -> None:
    alert = AlertInfo(1, "down", PROMOTED_AT + timedelta(seconds=1), False)
    watch = _watch(baseline_b=_totals(0), current_b=_totals(1_000, 500, [400.0] * 1000), alerts=(alert,))
    assert [b.metric for b in check_guard(watch, _config())] == ["critical_alert", "error_rate", "latency"]


def test_a_missing_baseline_counts_everything_as_since_the_promotion() -> None:
    watch = WatchedPromotion("p", 1, "e", "b", "control", PROMOTED_AT, baseline={}, current={"b": _totals(1_000, 100)})
    assert [b.metric for b in check_guard(watch, _config())] == ["error_rate"]


def test_baseline_json_round_trip_and_malformed_parts_count_as_zero() -> None:
    sketch = LatencySketch.from_values([1.0, 2.0, 0.0])
    parsed = VariantTotals.from_json(
        {
            "exposures": 10,
            "conversions": 2,
            "errors": 1,
            "valueSum": 3.5,
            "valueSumSq": 7.25,
            "latencySketch": sketch.to_json(),
        }
    )
    assert parsed == VariantTotals(10, 2, 1, 3.5, 7.25, sketch)
    assert VariantTotals.from_json({"exposures": "x", "errors": None, "latencySketch": {"bad": 1}}) == VariantTotals()
    assert VariantTotals.from_json(None) == VariantTotals()


def test_since_subtracts_counts_and_sketches_bucket_wise() -> None:
    before = VariantTotals(100, 10, 1, latency=LatencySketch.from_values([10.0] * 5))
    after = VariantTotals(150, 12, 4, latency=LatencySketch.from_values([10.0] * 5 + [20.0] * 3))
    since = after.since(before)
    assert (since.exposures, since.conversions, since.errors) == (50, 2, 3)
    assert since.latency == LatencySketch.from_values([20.0] * 3)
