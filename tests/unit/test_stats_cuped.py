"""CUPED (worker/stats/cuped.py) against GrowthBook's stats engine: its published vectors and gbstats itself.

The published vectors are gbstats' own tests of RegressionAdjustedStatistic (tests/frequentist/test_tests.py,
test_sequential_test_runs_ra; tests/test_gbstats.py, TestAnalyzeMetricDfRegressionAdjustment), at the digits
GrowthBook publishes. gbstats on PyPI is 0.8.0, older than GrowthBook's "CUPED variance update" (#3610), which
changed only the relative lift's control-arm variance term; everything else is compared with gbstats 0.8 called
directly on random inputs, and that one term through an identity over gbstats' own primitives (see
_CurrentEngineVariance).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from gbstats.frequentist.tests import (
    FrequentistConfig,
    SequentialConfig,
    SequentialTwoSidedTTest,
    TwoSidedTTest,
    frequentist_variance,
)
from gbstats.models.statistics import (
    ProportionStatistic,
    RegressionAdjustedStatistic,
    SampleMeanStatistic,
    compute_theta,
)

from worker.stats import StatsInputError, compare_arms
from worker.stats.cuped import CovariateSums, CupedKind, cuped_effect, pooled_theta
from worker.stats.models import Effect, Method, VariantStats

TOL = 1e-5  # the issue's bar: gbstats' published vectors to 1e-5


def close(x: float | None, want: float, tol: float = TOL) -> bool:
    return x is not None and abs(x - want) <= tol


# --- gbstats' published vectors -------------------------------------------------------------------------------


def test_sequential_regression_adjusted_matches_gbstats_test_sequential_test_runs_ra() -> None:
    # SequentialTwoSidedTTest(stat_a_ra, stat_b_ra) with the default tuning (5000): expected 0.50338,
    # ci (-0.50969, 1.51646), uplift stddev 0.33341, p-value 1.
    a = CovariateSums(3000, 1396.87, 52377.9767, 16.87, 527.9767, 1)
    b = CovariateSums(3461, 2422.7, 134698.29, 22.7, 1348.29, 1)
    e = cuped_effect(a, b, kind="mean", method="sequential", n_star=5000).adjusted
    assert close(e.estimate, 0.50338)
    assert close(e.ci_low, -0.50969) and close(e.ci_high, 1.51646)
    assert close(e.se, 0.33341)
    assert e.p_value == 1.0


# RA_STATISTICS_DF: variation "zero" is the baseline.
RA_ZERO = CovariateSums(3001, 300, 600, 210, 415, -20)
RA_ONE = CovariateSums(3000, 222, 555, 120, 405, -10)


def test_fixed_regression_adjusted_mean_matches_gbstats_test_analyze_metric_df_ra() -> None:
    r = cuped_effect(RA_ZERO, RA_ONE, kind="mean", method="fixed")
    assert close(r.mean_control, 0.099966678) and close(r.mean_treatment, 0.074)  # reported means stay unadjusted
    assert close(r.adjusted.estimate, -0.281707154)
    assert close(r.adjusted.p_value, 0.003732549)
    # GrowthBook publishes nine decimals; the current engine's variance reproduces all of them.
    assert abs(r.adjusted.p_value - 0.003732549) < 5e-10
    # "But difference is not just DIM / control mean, like it used to be"
    assert round(r.adjusted.estimate or 0.0, 3) != round((0.074 - 0.110963012) / 0.110963012, 3)


def test_fixed_regression_adjusted_proportion_matches_gbstats_test_analyze_metric_df_ra_proportion() -> None:
    # binomial metric, binomial covariate (the sums of squares dropped: a 0/1 value's square is itself)
    zero = CovariateSums(3001, 300, 300, 210, 210, -20)
    one = CovariateSums(3000, 222, 222, 120, 120, -10)
    e = cuped_effect(zero, one, kind="proportion", method="fixed").adjusted
    assert close(e.estimate, -0.31620216)
    assert close(e.p_value, 0.000000353)
    assert abs((e.estimate or 0.0) - -0.31620216) < 5e-9


# --- gbstats 0.8 called directly on random inputs ----------------------------------------------------------------


def _random_arms(rng: np.random.Generator, kind: CupedKind) -> tuple[CovariateSums, CovariateSums]:
    """Two arms of real unit-level data with a correlated (non-binary) covariate and a random true effect."""
    rho = rng.uniform(-0.95, 0.95)
    shift = rng.uniform(-0.3, 0.3)
    arms = []
    for i, n in enumerate(rng.integers(30, 4000, size=2)):
        x = rng.gamma(2.0, 3.0, size=n)
        z = (x - 6.0) / math.sqrt(18.0)
        noise = rng.normal(size=n)
        latent = rho * z + math.sqrt(1 - rho * rho) * noise + (shift if i else 0.0)
        y = (latent > 0.8).astype(float) if kind == "proportion" else 20.0 + 4.0 * latent
        arms.append(CovariateSums(int(n), y.sum(), (y * y).sum(), x.sum(), (x * x).sum(), (x * y).sum()))
    return arms[0], arms[1]


def _gb(s: CovariateSums, kind: CupedKind) -> RegressionAdjustedStatistic:
    post: Any = (
        ProportionStatistic(n=s.n, sum=s.value_sum)
        if kind == "proportion"
        else SampleMeanStatistic(n=s.n, sum=s.value_sum, sum_squares=s.value_sum_sq)
    )
    pre = SampleMeanStatistic(n=s.n, sum=s.pre_sum, sum_squares=s.pre_sum_sq)
    return RegressionAdjustedStatistic(
        n=s.n, post_statistic=post, pre_statistic=pre, post_pre_sum_of_products=s.value_pre_product_sum, theta=0
    )


class _CurrentEngineVariance:
    """gbstats 0.8's test with the relative variance of GrowthBook's current engine (after #3610).

    Current: [Var_B,adj(theta)/n_B + (r² Var_A(y) - 2 theta r Cov_A + theta² Var_A(x))/n_A] / mean_A²,
    r = mean_B/mean_A. The control term is r² Var_A,adj(theta/r), so it is gbstats 0.8's own
    frequentist_variance with the control's adjusted variance taken at theta/r. Everything else (estimate,
    degrees of freedom, intervals, p-values) is gbstats 0.8's code.
    """

    stat_a: Any
    stat_b: Any

    @property
    def variance(self) -> float:
        a, b = self.stat_a, self.stat_b
        r = b.unadjusted_mean / a.unadjusted_mean
        a_at = RegressionAdjustedStatistic(
            n=a.n,
            post_statistic=a.post_statistic,
            pre_statistic=a.pre_statistic,
            post_pre_sum_of_products=a.post_pre_sum_of_products,
            theta=a.theta / r,
        )
        return float(
            frequentist_variance(a_at.variance, a.unadjusted_mean, a.n, b.variance, b.unadjusted_mean, b.n, True)
        )


class _CurrentTwoSided(_CurrentEngineVariance, TwoSidedTTest):  # type: ignore[misc]  # gbstats is untyped
    pass


class _CurrentSequential(_CurrentEngineVariance, SequentialTwoSidedTTest):  # type: ignore[misc]  # gbstats is untyped
    pass


def _gbstats_result(a: CovariateSums, b: CovariateSums, kind: CupedKind, method: Method, relative: bool) -> Any:
    sa, sb = _gb(a, kind), _gb(b, kind)
    diff = "relative" if relative else "absolute"
    if method == "fixed":
        cls: Any = _CurrentTwoSided if relative else TwoSidedTTest
        return cls(sa, sb, FrequentistConfig(difference_type=diff)).compute_result()
    cls = _CurrentSequential if relative else SequentialTwoSidedTTest
    return cls(sa, sb, SequentialConfig(difference_type=diff, sequential_tuning_parameter=5000)).compute_result()


def _assert_matches(e: Effect, r: Any) -> None:
    assert e.reason is None and r.error_message is None
    for ours, theirs in ((e.estimate, r.expected), (e.ci_low, r.ci[0]), (e.ci_high, r.ci[1]), (e.se, r.uplift.stddev)):
        assert ours is not None and math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-9), (ours, theirs)
    assert math.isclose(e.p_value, r.p_value, rel_tol=1e-7, abs_tol=1e-9), (e.p_value, r.p_value)


@pytest.mark.parametrize("kind", ["mean", "proportion"])
@pytest.mark.parametrize("method", ["fixed", "sequential"])
@pytest.mark.parametrize("relative", [True, False], ids=["relative", "absolute"])
def test_adjusted_effect_matches_gbstats_on_random_inputs(kind: CupedKind, method: Method, relative: bool) -> None:
    rng = np.random.default_rng([len(kind), len(method), int(relative)])
    for _ in range(60):
        a, b = _random_arms(rng, kind)
        got = cuped_effect(a, b, kind=kind, method=method, relative=relative)
        _assert_matches(got.adjusted, _gbstats_result(a, b, kind, method, relative))


@pytest.mark.parametrize("kind", ["mean", "proportion"])
def test_theta_adjusted_means_and_variances_match_gbstats_on_random_inputs(kind: CupedKind) -> None:
    rng = np.random.default_rng(7 if kind == "mean" else 8)
    for _ in range(100):
        a, b = _random_arms(rng, kind)
        sa, sb = _gb(a, kind), _gb(b, kind)
        theta = compute_theta(sa, sb)
        assert math.isclose(pooled_theta(a, b, kind=kind), theta, rel_tol=1e-9, abs_tol=1e-12)
        sa.theta = sb.theta = theta
        got = cuped_effect(a, b, kind=kind, method="fixed", relative=False)
        assert math.isclose(got.theta, theta, rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(got.adjusted_mean_control, sa.mean, rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(got.adjusted_mean_treatment, sb.mean, rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(got.mean_control, sa.unadjusted_mean, rel_tol=1e-12)
        # The absolute standard error is sqrt(Var_A,adj/n_A + Var_B,adj/n_B): gbstats' per-arm adjusted variances.
        se = math.sqrt(sa.variance / sa.n + sb.variance / sb.n)
        assert got.adjusted.se is not None and math.isclose(got.adjusted.se, se, rel_tol=1e-9)


@pytest.mark.parametrize("kind", ["mean", "proportion"])
@pytest.mark.parametrize("method", ["fixed", "sequential"])
def test_unadjusted_twin_is_the_house_comparison_and_gbstats_without_covariate(kind: CupedKind, method: Method) -> None:
    rng = np.random.default_rng(21)
    for _ in range(20):
        a, b = _random_arms(rng, kind)
        got = cuped_effect(a, b, kind=kind, method=method).unadjusted
        if kind == "proportion":
            va = VariantStats("a", True, a.n, conversions=int(a.value_sum))
            vb = VariantStats("b", False, b.n, conversions=int(b.value_sum))
        else:
            va = VariantStats("a", True, a.n, value_sum=a.value_sum, value_sum_sq=a.value_sum_sq)
            vb = VariantStats("b", False, b.n, value_sum=b.value_sum, value_sum_sq=b.value_sum_sq)
        assert got == compare_arms(va, vb, metric_type="conversion" if kind == "proportion" else "mean", method=method)
        sa, sb = _gb(a, kind).post_statistic, _gb(b, kind).post_statistic
        test = TwoSidedTTest(sa, sb) if method == "fixed" else SequentialTwoSidedTTest(sa, sb)
        _assert_matches(got, test.compute_result())


# --- behaviour ------------------------------------------------------------------------------------------------


def _unit_sums(y: np.ndarray, x: np.ndarray) -> CovariateSums:
    return CovariateSums(
        len(y), float(y.sum()), float((y * y).sum()), float(x.sum()), float((x * x).sum()), float((x * y).sum())
    )


def test_variance_reduction_is_about_rho_squared() -> None:
    rng = np.random.default_rng(3)
    for rho in (0.3, 0.5, 0.7, 0.9):
        arms = []
        for lift in (0.0, 0.05):
            x = rng.normal(size=200_000)
            y = 10.0 * (1 + lift) + 2.0 * (rho * x + math.sqrt(1 - rho * rho) * rng.normal(size=200_000))
            arms.append(_unit_sums(y, x))
        r = cuped_effect(arms[0], arms[1], kind="mean")
        assert r.variance_reduction is not None and abs(r.variance_reduction - rho * rho) < 0.01, (rho, r)
        assert r.adjusted.estimate is not None and abs(r.adjusted.estimate - 0.05) < 0.005


def test_constant_covariate_gives_theta_zero_and_the_unadjusted_result() -> None:
    rng = np.random.default_rng(4)
    y0, y1 = rng.normal(10, 2, 500), rng.normal(10.5, 2, 600)
    a, b = _unit_sums(y0, np.full(500, 3.0)), _unit_sums(y1, np.full(600, 3.0))
    r = cuped_effect(a, b, kind="mean")
    assert r.theta == 0.0 and r.adjusted == r.unadjusted and r.variance_reduction == 0.0


def test_adjusted_result_is_invariant_to_an_affine_change_of_covariate() -> None:
    rng = np.random.default_rng(5)
    x0, x1 = rng.normal(size=800), rng.normal(size=900)
    y0 = 5 + 0.6 * x0 + rng.normal(size=800)
    y1 = 5.4 + 0.6 * x1 + rng.normal(size=900)
    base = cuped_effect(_unit_sums(y0, x0), _unit_sums(y1, x1), kind="mean")
    moved = cuped_effect(_unit_sums(y0, 3 * x0 - 7), _unit_sums(y1, 3 * x1 - 7), kind="mean")
    for f in ("estimate", "se", "ci_low", "ci_high", "p_value"):
        assert math.isclose(getattr(base.adjusted, f), getattr(moved.adjusted, f), rel_tol=1e-9), f
    assert math.isclose(moved.theta, base.theta / 3, rel_tol=1e-9)


def test_uncorrelated_covariate_changes_almost_nothing() -> None:
    rng = np.random.default_rng(6)
    arms = [_unit_sums(rng.normal(10 + i, 3, 50_000), rng.normal(size=50_000)) for i in (0, 1)]
    r = cuped_effect(arms[0], arms[1], kind="mean")
    assert r.variance_reduction is not None and abs(r.variance_reduction) < 0.001


def test_undefined_comparisons_stay_undefined_with_a_reason() -> None:
    empty = CovariateSums(0, 0, 0, 0, 0, 0)
    some = CovariateSums(10, 50, 300, 20, 60, 110)
    r = cuped_effect(empty, some, kind="mean")
    assert r.adjusted.estimate is None and r.adjusted.reason == "control has no exposures"
    assert r.variance_reduction is None and r.adjusted.p_value == 1.0


def test_perfectly_explained_metric_has_zero_adjusted_variance_and_no_result() -> None:
    x0, x1 = np.arange(10.0), np.arange(12.0)
    a, b = _unit_sums(2 * x0 + 1, x0), _unit_sums(2 * x1 + 1, x1)
    r = cuped_effect(a, b, kind="mean")
    assert r.adjusted.estimate is None and r.adjusted.reason is not None and "variance" in r.adjusted.reason
    assert r.unadjusted.estimate is not None and r.variance_reduction is None


@pytest.mark.parametrize(
    ("sums", "message"),
    [
        (CovariateSums(10, 50, 300, 20, 30, 110), "pre_sum_sq is smaller"),
        (CovariateSums(10, 50, 200, 20, 60, 110), "value_sum_sq is smaller"),
        (CovariateSums(10, 50, 300, 20, 60, 1e6), "value_pre_product_sum"),
        (CovariateSums(10, 50, 300, float("nan"), 60, 110), "pre_sum must be finite"),
        (CovariateSums(-1, 0, 0, 0, 0, 0), "n must be in"),
        (CovariateSums(0, 1, 0, 0, 0, 0), "every sum must be 0"),
    ],
)
def test_impossible_sums_are_refused_with_the_arm_and_the_sum_named(sums: CovariateSums, message: str) -> None:
    ok = CovariateSums(10, 50, 300, 20, 60, 110)
    with pytest.raises(StatsInputError, match="treatment: .*" + message):
        cuped_effect(ok, sums, kind="mean")


def test_proportion_value_sum_must_be_a_count_of_units() -> None:
    with pytest.raises(StatsInputError, match="count of converted units"):
        cuped_effect(CovariateSums(10, 11, 11, 3, 3, 3), CovariateSums(10, 5, 5, 3, 3, 3), kind="proportion")


def test_unknown_kind_is_refused() -> None:
    ok = CovariateSums(10, 50, 300, 20, 60, 110)
    with pytest.raises(StatsInputError, match="kind must be one of"):
        cuped_effect(ok, ok, kind="ratio")  # type: ignore[arg-type]


# --- the vectorised path ----------------------------------------------------------------------------------------


def _rows(arms: list[tuple[CovariateSums, CovariateSums]]) -> list[np.ndarray]:
    fields = ("n", "value_sum", "value_sum_sq", "pre_sum", "pre_sum_sq", "value_pre_product_sum")
    return [np.array([[getattr(a, f), getattr(b, f)] for a, b in arms], dtype=float) for f in fields]


def _edge_cases(kind: CupedKind) -> list[tuple[CovariateSums, CovariateSums]]:
    ok = CovariateSums(10, 5, 5 if kind == "proportion" else 300, 20, 60, 12)
    return [
        (CovariateSums(0, 0, 0, 0, 0, 0), ok),  # no control units
        (ok, CovariateSums(0, 0, 0, 0, 0, 0)),
        (CovariateSums(1, 1, 1, 2, 4, 2), ok),  # one unit
        (CovariateSums(10, 0, 0, 20, 60, 0), CovariateSums(10, 0, 0, 15, 40, 0)),  # no conversions / zero mean
        (CovariateSums(10, 5, 5 if kind == "proportion" else 300, 30, 90, 15), ok),  # constant covariate: theta 0
        (ok, ok),
    ]


@pytest.mark.parametrize("kind", ["mean", "proportion"])
@pytest.mark.parametrize("method", ["fixed", "sequential"])
@pytest.mark.parametrize("relative", [True, False], ids=["relative", "absolute"])
def test_cuped_many_rows_equal_cuped_effect(kind: CupedKind, method: Method, relative: bool) -> None:
    from worker.stats.cuped_vectorized import cuped_many

    rng = np.random.default_rng([len(kind), len(method), int(relative), 1])
    arms = [_random_arms(rng, kind) for _ in range(40)] + _edge_cases(kind)
    # binary covariates too (the proportion path's proportion covariate)
    for _ in range(10):
        n0, n1 = rng.integers(20, 500, size=2)
        x0, x1 = (rng.uniform(size=n0) < 0.3).astype(float), (rng.uniform(size=n1) < 0.3).astype(float)
        y0 = np.where(rng.uniform(size=n0) < 0.5, x0, (rng.uniform(size=n0) < 0.4).astype(float))
        y1 = np.where(rng.uniform(size=n1) < 0.5, x1, (rng.uniform(size=n1) < 0.45).astype(float))
        arms.append((_unit_sums(y0, x0), _unit_sums(y1, x1)))
    many = cuped_many(*_rows(arms), kind=kind, method=method, relative=relative)
    for i, (a, b) in enumerate(arms):
        one = cuped_effect(a, b, kind=kind, method=method, relative=relative)
        assert many.theta[i] == pytest.approx(one.theta, rel=1e-9, abs=1e-12), i
        for name in ("adjusted", "unadjusted"):
            e, v = getattr(one, name), getattr(many, name)
            for f in ("estimate", "se", "ci_low", "ci_high"):
                got, want = float(getattr(v, f)[i]), getattr(e, f)
                if want is None:
                    assert math.isnan(got), (i, name, f, got)
                else:
                    assert got == pytest.approx(want, rel=1e-9, abs=1e-12), (i, name, f)
            assert float(v.p_value[i]) == pytest.approx(e.p_value, rel=1e-9, abs=1e-12), (i, name)
        if one.variance_reduction is None:
            assert math.isnan(many.variance_reduction[i])
        else:
            assert many.variance_reduction[i] == pytest.approx(one.variance_reduction, rel=1e-9, abs=1e-12)


def test_cuped_many_refuses_bad_shapes_and_values() -> None:
    from worker.stats.cuped_vectorized import cuped_many

    ok = np.ones((3, 2))
    with pytest.raises(StatsInputError, match="shape"):
        cuped_many(np.ones((3, 3)), ok, ok, ok, ok, ok)
    with pytest.raises(StatsInputError, match="finite"):
        cuped_many(ok, ok, ok, np.full((3, 2), np.nan), ok, ok)
    with pytest.raises(StatsInputError, match="whole numbers"):
        cuped_many(ok * 1.5, ok, ok, ok, ok, ok)
