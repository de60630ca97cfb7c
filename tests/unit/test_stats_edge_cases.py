"""Data conditions give results with a reason (never an exception, never NaN); bad input is StatsInputError."""

from __future__ import annotations

import math
from typing import Any

import pytest

from worker.stats import (
    Comparison,
    ExperimentAnalysis,
    LatencySketch,
    StatsInputError,
    VariantStats,
    adjust_pvalues,
    analyze_experiment,
    compare_arms,
    error_rate_test,
    reasons,
    srm_test,
)
from worker.stats.models import Method


def ctrl(n: int, c: int = 0, **kw: Any) -> VariantStats:
    return VariantStats("control", True, n, c, **kw)


def trt(n: int, c: int = 0, name: str = "b", **kw: Any) -> VariantStats:
    return VariantStats(name, False, n, c, **kw)


def only(res: ExperimentAnalysis) -> Comparison:
    (c,) = res.comparisons
    return c


def assert_undefined(c: Comparison, reason: str) -> None:
    assert c.reason == reason
    assert c.lift is None and c.se is None and c.ci_low is None and c.ci_high is None
    assert c.improvement is None
    assert c.p_value == 1.0 and c.adjusted_p == 1.0 and c.confidence == 0.0
    assert not c.significant and not c.better


@pytest.mark.parametrize("method", ["sequential", "fixed"])
def test_zero_exposures_in_control_gives_reason(method: Any) -> None:
    c = only(analyze_experiment([ctrl(0), trt(100, 10)], method=method))
    assert_undefined(c, reasons.NO_EXPOSURES_CONTROL)
    assert c.mean_control == 0.0 and c.mean_treatment == 0.1


@pytest.mark.parametrize("method", ["sequential", "fixed"])
def test_zero_exposures_in_treatment_gives_reason(method: Any) -> None:
    assert_undefined(only(analyze_experiment([ctrl(100, 10), trt(0)], method=method)), reasons.NO_EXPOSURES_TREATMENT)


def test_zero_exposures_everywhere_gives_reasons_and_no_srm() -> None:
    res = analyze_experiment([ctrl(0), trt(0), trt(0, name="c")])
    assert all(c.reason == reasons.NO_EXPOSURES_CONTROL for c in res.comparisons)
    assert res.srm.reason == reasons.SRM_NO_EXPOSURES and res.srm.p_value == 1.0 and not res.srm.flagged
    assert res.winner() is None
    best = res.best()
    assert best is not None and best.variant == "b"  # undefined lifts: first treatment


def test_no_conversions_in_either_arm_gives_reason() -> None:
    assert_undefined(only(analyze_experiment([ctrl(1000), trt(1000)])), reasons.NO_CONVERSIONS)


def test_control_rate_zero_makes_relative_lift_undefined() -> None:
    c = only(analyze_experiment([ctrl(1000, 0), trt(1000, 50)]))
    assert_undefined(c, "control conversion rate is 0: relative lift undefined")
    assert c.mean_treatment == 0.05


def test_control_mean_zero_makes_relative_lift_undefined() -> None:
    res = analyze_experiment(
        [
            VariantStats("control", True, 10, value_sum=0.0, value_sum_sq=10.0),
            VariantStats("b", False, 10, value_sum=5.0, value_sum_sq=10.0),
        ],
        metric_type="mean",
    )
    assert_undefined(only(res), reasons.CONTROL_MEAN_ZERO)


def test_treatment_with_no_conversions_has_zero_variance_reason_like_gbstats() -> None:
    assert_undefined(only(analyze_experiment([ctrl(1000, 100), trt(1000, 0)])), reasons.ZERO_VARIANCE)


def test_single_exposure_mean_arm_has_no_variance() -> None:
    res = analyze_experiment(
        [
            VariantStats("control", True, 1, value_sum=3.0, value_sum_sq=9.0),
            VariantStats("b", False, 50, value_sum=100.0, value_sum_sq=400.0),
        ],
        metric_type="mean",
    )
    assert_undefined(only(res), reasons.TOO_FEW_EXPOSURES)


@pytest.mark.parametrize("method", ["sequential", "fixed"])
def test_identical_arms_give_zero_lift_and_p_value_one(method: Any) -> None:
    c = only(analyze_experiment([ctrl(5000, 500), trt(5000, 500)], method=method))
    assert c.reason is None
    assert c.lift == 0.0 and c.improvement == 0.0
    assert c.p_value == 1.0 and c.confidence == 0.0
    assert c.ci_low is not None and c.ci_high is not None and c.ci_low < 0.0 < c.ci_high
    assert not c.significant and not c.better


def test_single_variant_returns_no_comparisons_with_reason() -> None:
    res = analyze_experiment([ctrl(1000, 10)])
    assert res.comparisons == () and res.reason == reasons.NO_TREATMENTS
    assert res.best() is None and res.winner() is None
    assert res.srm.reason == reasons.SRM_SINGLE_ARM and res.srm.p_value == 1.0 and not res.srm.flagged
    assert res.control == "control"


@pytest.mark.parametrize("method", ["sequential", "fixed"])
def test_counts_near_a_billion_are_finite_and_decisive(method: Any) -> None:
    n = 999_999_937
    res = analyze_experiment([ctrl(n, n // 10), trt(n, n // 10 + n // 1000)], method=method)
    c = only(res)
    assert c.reason is None and c.lift is not None and c.se is not None
    assert math.isfinite(c.lift) and math.isfinite(c.se) and c.se > 0
    assert 0.0 <= c.p_value < 1e-12 and c.better
    assert res.winner() == c
    assert not res.srm.flagged


def test_counts_near_a_billion_with_identical_rates_are_not_significant() -> None:
    n = 1_000_000_000
    c = only(analyze_experiment([ctrl(n, 123_456_789), trt(n + 1, 123_456_789)]))
    assert c.reason is None and not c.significant and 0.0 <= c.p_value <= 1.0


def test_all_zero_weights_give_srm_reason_not_a_crash() -> None:
    res = analyze_experiment([ctrl(0, 0, weight=0.0), trt(0, 0, weight=0.0)])
    assert res.srm.reason == reasons.SRM_ALL_WEIGHTS_ZERO
    assert res.srm.p_value == 1.0 and not res.srm.flagged and res.srm.expected == (0.0, 0.0)


def test_traffic_with_all_weights_zero_is_a_mismatch_not_a_crash() -> None:
    res = analyze_experiment([ctrl(100, 10, weight=0.0), trt(100, 12, weight=0.0)])
    assert res.srm.reason == reasons.SRM_ZERO_WEIGHT_TRAFFIC
    assert res.srm.p_value == 0.0 and res.srm.flagged and res.srm.expected == (0.0, 0.0)
    assert only(res).reason is None  # the comparison itself is unaffected


def test_srm_flags_traffic_to_a_weight_zero_variant() -> None:
    # The weighted arms split perfectly; the third should get nothing and got 5000.
    res = srm_test([1000, 1000, 5000], [1, 1, 0])
    assert res.reason == reasons.SRM_ZERO_WEIGHT_TRAFFIC and res.flagged
    assert res.df == 1 and res.p_value == 0.0 and math.isfinite(res.chi2)
    assert res.expected == (1000.0, 1000.0, 0.0) and res.observed == (1000, 1000, 5000)
    # A single exposure is enough: the arm should receive none at all.
    assert srm_test([1000, 1000, 1], [1, 1, 0]).flagged
    # Without traffic the weight-0 arm is simply left out, as before.
    quiet = srm_test([1000, 1000, 0], [1, 1, 0])
    assert quiet.reason is None and not quiet.flagged and quiet.p_value == 1.0


def test_srm_with_one_weighted_variant_has_reason() -> None:
    res = srm_test([10, 0], [1, 0])
    assert res.reason == reasons.SRM_SINGLE_ARM and not res.flagged
    stray = srm_test([10, 10], [1, 0])
    assert stray.reason == reasons.SRM_ZERO_WEIGHT_TRAFFIC and stray.flagged and stray.expected == (10.0, 0.0)


def test_srm_flags_a_mismatch_through_analyze_experiment() -> None:
    res = analyze_experiment([ctrl(10_000, 1000), trt(11_000, 1100)])
    assert res.srm.flagged and res.srm.p_value < 0.001
    assert res.srm.observed == (10_000, 11_000)


def test_winner_is_highest_lift_among_better_and_ignores_non_significant_higher_lift() -> None:
    res = analyze_experiment(
        [ctrl(20_000, 2000), trt(20_000, 2600, "big"), trt(20_000, 2400, "mid"), trt(50, 10, "noisy")]
    )
    best, winner = res.best(), res.winner()
    assert best is not None and best.variant == "noisy"  # highest lift, far from significant
    assert winner is not None and winner.variant == "big"
    assert [c.variant for c in res.comparisons] == ["big", "mid", "noisy"]


def test_holm_correction_is_applied_across_treatments() -> None:
    variants = [ctrl(10_000, 1000), trt(10_000, 1100, "b"), trt(10_000, 1000, "c")]
    holm = analyze_experiment(variants, method="fixed")
    none = analyze_experiment(variants, method="fixed", correction="none")
    assert holm.comparisons[0].adjusted_p == pytest.approx(min(1.0, 2 * none.comparisons[0].p_value))
    assert none.comparisons[0].adjusted_p == none.comparisons[0].p_value
    assert holm.comparisons[0].confidence == pytest.approx(100 * (1 - holm.comparisons[0].adjusted_p))


def test_control_may_be_listed_anywhere() -> None:
    res = analyze_experiment([trt(1000, 100, "b"), ctrl(1000, 90), trt(1000, 80, "c")])
    assert res.control == "control"
    assert [c.variant for c in res.comparisons] == ["b", "c"]
    assert res.srm.observed == (1000, 1000, 1000)


def test_negative_mean_control_uses_absolute_value_in_lift() -> None:
    res = analyze_experiment(
        [
            VariantStats("control", True, 100, value_sum=-1000.0, value_sum_sq=10_100.0),
            VariantStats("b", False, 100, value_sum=-500.0, value_sum_sq=2_600.0),
        ],
        metric_type="mean",
        method="fixed",
    )
    c = only(res)
    assert c.lift == pytest.approx(0.5)  # -10 -> -5 is an increase, as gbstats


def test_error_rate_increase_is_detected_even_when_control_has_no_errors() -> None:
    res = error_rate_test(ctrl(5000, errors=0), trt(5000, errors=60))
    assert res.reason is None and res.significant_increase
    assert res.control_rate == 0.0 and res.treatment_rate == pytest.approx(0.012)
    assert res.ci_low is not None and res.ci_low > 0


def test_error_rate_decrease_is_never_a_significant_increase() -> None:
    methods: tuple[Method, ...] = ("sequential", "fixed")
    for method in methods:
        res = error_rate_test(ctrl(5000, errors=100), trt(5000, errors=10), method=method)
        assert not res.significant_increase and res.p_value > 0.5


def test_error_rate_with_no_errors_anywhere_has_reason() -> None:
    res = error_rate_test(ctrl(100), trt(100))
    assert res.reason == reasons.NO_ERRORS and res.p_value == 1.0 and not res.significant_increase


def test_error_rate_all_failing_treatment_vs_clean_control_uses_pooled_variance() -> None:
    res = error_rate_test(ctrl(1000, errors=0), trt(1000, errors=1000))
    assert res.reason is None and res.significant_increase and res.p_value < 1e-6


def test_error_rate_zero_exposures_has_reason() -> None:
    assert error_rate_test(ctrl(0), trt(10, errors=1)).reason == reasons.NO_EXPOSURES_CONTROL
    assert error_rate_test(ctrl(10, errors=1), trt(0)).reason == reasons.NO_EXPOSURES_TREATMENT


def test_sequential_error_rate_is_more_conservative_than_fixed() -> None:
    seq = error_rate_test(ctrl(5000, errors=50), trt(5000, errors=75), method="sequential")
    fix = error_rate_test(ctrl(5000, errors=50), trt(5000, errors=75), method="fixed")
    assert fix.p_value < seq.p_value
    assert fix.ci_low is not None and seq.ci_low is not None and seq.ci_low < fix.ci_low


def test_latency_field_is_carried_but_not_needed() -> None:
    sk = LatencySketch.from_values([1.0, 2.0])
    res = analyze_experiment([ctrl(100, 10, latency=sk), trt(100, 12, latency=None)])
    assert only(res).reason is None


# ---- invalid input: StatsInputError and nothing else ---------------------------------------------------


@pytest.mark.parametrize(
    ("variants", "kwargs", "match"),
    [
        ([ctrl(-1), trt(10, 1)], {}, "exposures"),
        ([ctrl(10, -1), trt(10, 1)], {}, "conversions"),
        ([ctrl(10, 11), trt(10, 1)], {}, "exceed"),
        ([ctrl(10, 1, errors=-2), trt(10, 1)], {}, "errors"),
        ([ctrl(10, 1, weight=float("nan")), trt(10, 1)], {}, "weight"),
        ([ctrl(10, 1, weight=-1.0), trt(10, 1)], {}, "weight"),
        ([ctrl(10, 1), trt(10, 1)], {"alpha": 0.0}, "alpha"),
        ([ctrl(10, 1), trt(10, 1)], {"alpha": 1.0}, "alpha"),
        ([ctrl(10, 1), trt(10, 1)], {"alpha": float("nan")}, "alpha"),
        ([ctrl(10, 1), trt(10, 1)], {"method": "bayesian"}, "method"),
        ([ctrl(10, 1), trt(10, 1)], {"metric_type": "ratio"}, "metric_type"),
        ([ctrl(10, 1), trt(10, 1)], {"correction": "bonferroni"}, "correction"),
        ([ctrl(10, 1), trt(10, 1)], {"n_star": 0}, "n_star"),
        ([ctrl(10, 1), trt(10, 1)], {"srm_threshold": 2.0}, "srm_threshold"),
        ([], {}, "empty"),
        ([trt(10, 1), trt(10, 1, "c")], {}, "is_control"),
        ([ctrl(10, 1), ctrl(10, 1)], {}, "is_control"),
        ([ctrl(10, 1), trt(10, 1, "control")], {}, "unique"),
        ([ctrl(10, 1), trt(10, 1)], {"metric_type": "mean"}, None),  # fine: sums default to 0
        (
            [VariantStats("control", True, 10, value_sum=float("nan")), trt(10)],
            {"metric_type": "mean"},
            "value_sum",
        ),
        (
            [VariantStats("control", True, 10, value_sum=10.0, value_sum_sq=1.0), trt(10)],
            {"metric_type": "mean"},
            "value_sum_sq",
        ),
        ([ctrl(10.5, 1), trt(10, 1)], {}, "whole"),  # type: ignore[arg-type]
    ],
)
def test_invalid_input_raises_stats_input_error(
    variants: list[VariantStats], kwargs: dict[str, Any], match: str | None
) -> None:
    if match is None:
        analyze_experiment(variants, **kwargs)
        return
    with pytest.raises(StatsInputError, match=match):
        analyze_experiment(variants, **kwargs)


def test_stats_input_error_is_a_value_error() -> None:
    assert issubclass(StatsInputError, ValueError)


@pytest.mark.parametrize(
    ("observed", "weights", "threshold"),
    [([1, 2], [1.0], 0.001), ([1, -2], [1.0, 1.0], 0.001), ([1, 2], [1.0, float("nan")], 0.001), ([1, 2], [1, 1], -1)],
)
def test_srm_invalid_input_raises(observed: list[int], weights: list[float], threshold: float) -> None:
    with pytest.raises(StatsInputError):
        srm_test(observed, weights, threshold)


@pytest.mark.parametrize(("p", "corr"), [([0.1, float("nan")], "holm"), ([1.5], "bh"), ([-0.1], "none"), ([0.1], "x")])
def test_adjust_pvalues_invalid_input_raises(p: list[float], corr: Any) -> None:
    with pytest.raises(StatsInputError):
        adjust_pvalues(p, corr)


def test_adjust_pvalues_of_nothing_is_nothing() -> None:
    assert adjust_pvalues([], "holm") == () and adjust_pvalues([], "bh") == ()


def test_error_rate_invalid_input_raises() -> None:
    with pytest.raises(StatsInputError, match="exceed"):
        error_rate_test(ctrl(10, errors=11), trt(10))
    with pytest.raises(StatsInputError, match="alpha"):
        error_rate_test(ctrl(10, errors=1), trt(10), alpha=1.0)
    with pytest.raises(StatsInputError, match="method"):
        error_rate_test(ctrl(10, errors=1), trt(10), method="nope")  # type: ignore[arg-type]


def test_compare_arms_rejects_non_variant_input() -> None:
    with pytest.raises(StatsInputError):
        compare_arms("control", trt(10))  # type: ignore[arg-type]
