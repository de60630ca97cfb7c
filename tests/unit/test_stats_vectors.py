"""Reference vectors: the numbers must agree with GrowthBook's gbstats test suite (to 1e-5) and R/scipy."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sps

from worker.stats import (
    VariantStats,
    adjust_pvalues,
    analyze_experiment,
    compare_arms,
    error_rate_test,
    srm_test,
)
from worker.stats.effects import sequential_one_sided_halfwidth, sequential_rho

TOL = 1e-5

# gbstats tests/frequentist/test_tests.py: SampleMeanStatistic(sum, sum_squares, n)
MEAN_A = VariantStats("control", True, 3407, value_sum=1396.87, value_sum_sq=52377.9767)
MEAN_B = VariantStats("treatment", False, 3461, value_sum=2422.7, value_sum_sq=134698.29)
MEAN_A_3000 = VariantStats("control", True, 3000, value_sum=1396.87, value_sum_sq=52377.9767)


def close(x: float | None, want: float, tol: float = TOL) -> bool:
    return x is not None and abs(x - want) <= tol


def test_fixed_relative_mean_matches_gbstats_two_sided_ttest() -> None:
    e = compare_arms(MEAN_A, MEAN_B, metric_type="mean", method="fixed")
    assert close(e.estimate, 0.70732)
    assert close(e.se, 0.37879)
    assert close(e.ci_low, -0.03526) and close(e.ci_high, 1.44989)
    assert close(e.p_value, 0.06191)


def test_fixed_absolute_mean_matches_gbstats_two_sided_ttest_absolute() -> None:
    e = compare_arms(MEAN_A, MEAN_B, metric_type="mean", method="fixed", relative=False)
    assert close(e.estimate, 0.29)
    assert close(e.se, 0.12478)
    assert close(e.ci_low, 0.04538) and close(e.ci_high, 0.53462)
    assert close(e.p_value, 0.02016)


def test_fixed_relative_proportion_matches_gbstats_binom() -> None:
    e = compare_arms(VariantStats("a", True, 28, 14), VariantStats("b", False, 30, 16), method="fixed")
    assert close(e.estimate, 0.06667)
    assert close(e.se, 0.2717)
    assert close(e.ci_low, -0.47767) and close(e.ci_high, 0.61101)
    assert close(e.p_value, 0.80707)


def test_analyze_experiment_reports_the_gbstats_fixed_vector() -> None:
    res = analyze_experiment([MEAN_A, MEAN_B], metric_type="mean", method="fixed")
    (c,) = res.comparisons
    assert close(c.lift, 0.70732) and close(c.se, 0.37879) and close(c.p_value, 0.06191)
    assert c.adjusted_p == c.p_value  # one treatment: nothing to correct
    assert math.isclose(c.confidence, 100 * (1 - c.p_value))
    assert c.improvement is not None and math.isclose(c.improvement, 100 * 0.7073170731707317)
    assert not c.significant and not c.better


def test_sequential_mean_matches_gbstats_sequential_test_runs() -> None:
    # gbstats: SequentialConfig(sequential_tuning_parameter=1000), n_A=3000
    e = compare_arms(MEAN_A_3000, MEAN_B, metric_type="mean", method="sequential", n_star=1000)
    assert close(e.estimate, 0.50336)
    assert close(e.se, 0.33341)
    assert close(e.ci_low, -0.55844) and close(e.ci_high, 1.56516)
    assert e.p_value == 1.0


def test_sequential_proportion_matches_gbstats_sequential_test_runs_prop() -> None:
    e = compare_arms(VariantStats("a", True, 3000, 1396), VariantStats("b", False, 3461, 2422))
    assert close(e.estimate, 0.50386)
    assert close(e.se, 0.03386)
    assert close(e.ci_low, 0.40098) and close(e.ci_high, 0.60675)
    assert close(e.p_value, 0.0)


def test_sequential_one_sided_bound_matches_gbstats_one_sided_greater_absolute() -> None:
    # gbstats SequentialOneSidedTreatmentGreaterTTest, absolute: lower bound -0.12656844172804982 and a
    # bisection p-value of 0.46316 (its tolerance is on the bound, ~1e-4 on alpha). Ours is the exact
    # inverse, so the bound computed at alpha = p must sit on 0.
    n_a, n_b = 3000, 3461
    mu_a, mu_b = 1396.87 / n_a, 2422.7 / n_b
    var_a = (52377.9767 - 1396.87**2 / n_a) / (n_a - 1)
    var_b = (134698.29 - 2422.7**2 / n_b) / (n_b - 1)
    se = math.sqrt(var_a / n_a + var_b / n_b)
    rho = sequential_rho(2 * 0.05, 5000)
    lower = (mu_b - mu_a) - sequential_one_sided_halfwidth(se, n_a + n_b, 0.05, rho)
    assert abs(lower - -0.12656844172804982) < 1e-12
    from worker.stats.effects import sequential_one_sided_p_value

    p = sequential_one_sided_p_value((mu_b - mu_a) / se, n_a + n_b, rho)
    assert abs(p - 0.46316491943359384) < 5e-4
    assert abs((mu_b - mu_a) - sequential_one_sided_halfwidth(se, n_a + n_b, p, rho)) < 1e-12


def test_error_rate_fixed_equals_one_sided_welch_on_absolute_difference() -> None:
    c = VariantStats("a", True, 3000, errors=1396)
    t = VariantStats("b", False, 3461, errors=2422)
    res = error_rate_test(c, t, method="fixed")
    two = compare_arms(
        VariantStats("a", True, 3000, 1396), VariantStats("b", False, 3461, 2422), method="fixed", relative=False
    )
    assert two.p_value is not None
    assert math.isclose(res.p_value, two.p_value / 2, rel_tol=1e-9, abs_tol=1e-300)
    assert res.significant_increase


@pytest.mark.parametrize(
    ("observed", "weights", "p"),
    [
        ([1000, 1200], [0.5, 0.5], 0.000020079),
        ([135, 115], [0.5, 0.5], 0.205903211),
        ([310, 98], [0.75, 0.25], 0.647434186),
        ([0, 10, 10], [0.34, 0.33, 0.33], 0.005790624),
    ],
)
def test_srm_p_value_matches_gbstats_check_srm(observed: list[int], weights: list[float], p: float) -> None:
    res = srm_test(observed, weights)
    assert abs(res.p_value - p) < 1e-9
    assert res.flagged == (p < 0.001)
    assert res.reason is None


def test_srm_weights_are_relative_and_need_not_sum_to_one() -> None:
    a = srm_test([310, 98], [0.75, 0.25])
    b = srm_test([310, 98], [75, 25])
    assert math.isclose(a.p_value, b.p_value, rel_tol=1e-12)
    assert b.expected == (306.0, 102.0)


def test_holm_matches_reference_vector() -> None:
    got = adjust_pvalues([0.01, 0.04, 0.03, 0.005, 0.55, 0.6], "holm")
    assert got == pytest.approx([0.05, 0.12, 0.12, 0.03, 1.0, 1.0], abs=1e-12)


def test_bh_matches_reference_vector_and_scipy() -> None:
    p = [0.01, 0.04, 0.03, 0.005, 0.55, 0.6]
    got = adjust_pvalues(p, "bh")
    # R: p.adjust(c(.01,.04,.03,.005,.55,.6), "BH")
    assert got == pytest.approx([0.03, 0.06, 0.06, 0.03, 0.6, 0.6], abs=1e-12)
    assert got == pytest.approx(list(sps.false_discovery_control(p, method="bh")), abs=1e-12)


def test_no_correction_returns_raw_p_values() -> None:
    assert adjust_pvalues([0.2, 0.01], "none") == (0.2, 0.01)
