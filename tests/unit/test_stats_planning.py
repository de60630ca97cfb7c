"""The planner against closed forms and simulation, and the first-passage math it rests on.

References: scipy's normal distribution for the fixed-horizon power (solved numerically, both tails), the
worker's own test (compare_arms) for the variance the plan assumes, Bachelier-Levy's exact law for a linear
boundary, and a simulation of the decision's vectorised statistics for the sequential answer.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize
from scipy import stats as sps

from worker.stats import StatsInputError, VariantStats, analyze_many, compare_arms
from worker.stats.effects import sequential_p_value, sequential_rho
from worker.stats.planning import (
    alpha_per_comparison,
    auto_n_star,
    plan_sample_size,
    relative_lift_variance,
    z_diffusion,
)
from worker.stats.stopping import (
    crossing_cdf_grid,
    crossing_quantiles,
    sequential_rho2,
    sequential_z_boundary,
)


def closed_form_n(v: float, mde: float, alpha: float, power: float) -> float:
    """n per arm where a two-sided z-test of an effect mde with variance v/n has ``power`` (both tails counted)."""
    z = sps.norm.ppf(1 - alpha / 2)

    def gap(n: float) -> float:
        shift = mde * math.sqrt(n / v)
        return float(sps.norm.cdf(shift - z) + sps.norm.cdf(-shift - z)) - power

    return float(optimize.brentq(gap, 1.0, 1e12, xtol=1e-6))


@pytest.mark.parametrize(
    ("metric_type", "baseline", "sd", "mde", "alpha", "power", "treatments", "metrics", "rho"),
    [
        ("conversion", 0.10, None, 0.10, 0.05, 0.8, 1, 1, 0.0),
        ("conversion", 0.02, None, 0.05, 0.05, 0.9, 1, 1, 0.0),
        ("conversion", 0.50, None, 0.02, 0.01, 0.8, 3, 1, 0.3),
        ("mean", 50.0, 20.0, 0.05, 0.05, 0.8, 1, 2, 0.5),
        ("mean", -4.0, 9.0, 0.10, 0.10, 0.95, 2, 1, 0.7),
    ],
)
def test_fixed_plan_agrees_with_closed_form_power_within_one_percent(
    metric_type: str,
    baseline: float,
    sd: float | None,
    mde: float,
    alpha: float,
    power: float,
    treatments: int,
    metrics: int,
    rho: float,
) -> None:
    plan = plan_sample_size(
        metric_type,  # type: ignore[arg-type]
        baseline,
        mde,
        sd=sd,
        alpha=alpha,
        power=power,
        treatments=treatments,
        primary_metrics=metrics,
        rho=rho,
        method="fixed",
    )
    v = relative_lift_variance(metric_type, baseline, mde, sd, rho)  # type: ignore[arg-type]
    reference = closed_form_n(v, mde, alpha / metrics / treatments, power)
    assert plan.exposures_per_arm == pytest.approx(reference, rel=0.01)
    assert plan.fixed_horizon_exposures_per_arm == plan.exposures_per_arm
    assert plan.alpha_per_comparison == pytest.approx(alpha / metrics / treatments)


@pytest.mark.parametrize(("metric_type", "baseline", "sd"), [("conversion", 0.1, None), ("mean", 20.0, 7.0)])
def test_the_planned_variance_is_the_one_the_worker_tests_with(
    metric_type: str, baseline: float, sd: float | None
) -> None:
    """The delta-method se compare_arms reports at n per arm, with the arms at their planned means, is sqrt(v/n)."""
    n, mde = 40_000, 0.05
    mean_b = baseline * (1 + mde)
    if metric_type == "conversion":
        a = VariantStats("a", True, n, conversions=round(baseline * n))
        b = VariantStats("b", False, n, conversions=round(mean_b * n))
    else:
        assert sd is not None
        # sums whose sample variance (ss - s^2/n)/(n-1) is exactly sd^2
        a = VariantStats("a", True, n, value_sum=baseline * n, value_sum_sq=sd * sd * (n - 1) + baseline**2 * n)
        b = VariantStats("b", False, n, value_sum=mean_b * n, value_sum_sq=sd * sd * (n - 1) + mean_b**2 * n)
    effect = compare_arms(a, b, metric_type=metric_type, method="fixed")  # type: ignore[arg-type]
    assert effect.se is not None
    v = relative_lift_variance(metric_type, baseline, mde, sd)  # type: ignore[arg-type]
    assert effect.se**2 * n == pytest.approx(v, rel=1e-3)


def test_covariate_adjustment_scales_the_sample_by_one_minus_rho_squared() -> None:
    plain = plan_sample_size("conversion", 0.1, 0.05, method="fixed")
    adjusted = plan_sample_size("conversion", 0.1, 0.05, method="fixed", rho=0.7)
    assert adjusted.exposures_per_arm == pytest.approx(plain.exposures_per_arm * (1 - 0.49), rel=1e-3)
    assert adjusted.variance_factor == pytest.approx(0.51)


def test_alpha_is_split_like_the_decision_splits_it() -> None:
    assert alpha_per_comparison(0.05, 3, 2, "holm") == pytest.approx(0.05 / 6)
    assert alpha_per_comparison(0.05, 3, 2, "bh") == pytest.approx(0.05 / 6)
    assert alpha_per_comparison(0.05, 3, 2, "none") == pytest.approx(0.025)


def test_days_follow_the_daily_exposures() -> None:
    plan = plan_sample_size("conversion", 0.1, 0.1, daily_exposures=1000.0)
    assert plan.days == pytest.approx(plan.exposures_per_arm / 1000.0)
    assert plan.fixed_horizon_days == pytest.approx(plan.fixed_horizon_exposures_per_arm / 1000.0)
    assert plan_sample_size("conversion", 0.1, 0.1).days is None


def test_the_sequential_test_costs_more_than_the_fixed_one_and_auto_tuning_costs_least() -> None:
    auto = plan_sample_size("conversion", 0.1, 0.1)
    mistuned = plan_sample_size("conversion", 0.1, 0.1, n_star=5000)
    assert auto.n_star == pytest.approx(auto_n_star(auto.fixed_horizon_exposures_per_arm), rel=1e-3)
    assert 1.3 < auto.exposures_per_arm / auto.fixed_horizon_exposures_per_arm < 1.9
    assert auto.exposures_per_arm < mistuned.exposures_per_arm
    assert auto.median_exposures_per_arm < auto.exposures_per_arm


@pytest.mark.parametrize("n", [10.0, 1_000.0, 1e6])
def test_the_z_boundary_is_where_the_always_valid_p_value_reaches_alpha(n: float) -> None:
    rho = sequential_rho(0.05, 5000.0)
    z = float(sequential_z_boundary(n, sequential_rho2(0.05, 5000.0), 0.01))
    assert sequential_p_value(z, n, rho) == pytest.approx(0.01, rel=1e-9)


def _linear_boundary_cdf(t: np.ndarray, a: float, slope: float, drift: float) -> np.ndarray:
    """Exact P(first passage of a + slope t by t) for a Brownian motion with drift from 0 (Bachelier-Levy)."""
    nu = drift - slope
    sq = np.sqrt(t)
    return np.asarray(sps.norm.cdf((nu * t - a) / sq) + np.exp(2 * nu * a) * sps.norm.cdf((-nu * t - a) / sq))


def test_the_grid_matches_the_exact_law_of_a_linear_boundary() -> None:
    a, slope, drift = 2.0, 0.3, 1.1
    ts, cdf = crossing_cdf_grid(drift, lambda t: a + slope * t, 6.0, dt=6.0 / 1200, continuous=True)
    exact = _linear_boundary_cdf(ts, a, slope, drift)
    assert np.max(np.abs(cdf - exact)) < 0.005


def test_the_tangent_quantiles_are_exact_for_a_linear_boundary() -> None:
    a, slope, drift, z_now = 2.0, 0.3, 1.1, 0.4
    # From s = 1 at z_now: the process restarted there sees a line a + slope s, at distance a + slope - z_now.
    q = crossing_quantiles([0.1, 0.5, 0.9], [z_now], [drift], lambda s: a + slope * s)[0]
    dist = a + slope - z_now
    for p, s in zip([0.1, 0.5, 0.9], q, strict=True):
        elapsed = np.array([s - 1.0])
        assert float(_linear_boundary_cdf(elapsed, dist, slope, drift)[0]) == pytest.approx(p, abs=1e-6)


def test_quantiles_beyond_the_horizon_are_infinite() -> None:
    q = crossing_quantiles([0.5], [0.0], [-1.0], lambda s: 3.0 + 0 * s, s_max=100.0)
    assert math.isinf(float(q[0, 0]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"baseline": 1.2}, "baseline"),
        ({"mde": -0.05}, "mde"),
        ({"mde": 0.95, "baseline": 0.6}, "not a rate below 1"),
        ({"power": 0.3}, "power"),
        ({"rho": 1.0}, "rho"),
        ({"treatments": 0}, "treatments"),
        ({"metric_type": "mean"}, "sd"),
    ],
)
def test_impossible_plans_are_refused(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"metric_type": "conversion", "baseline": 0.1, "mde": 0.05, **kwargs}
    with pytest.raises(StatsInputError, match=message):
        plan_sample_size(**args)  # type: ignore[arg-type]


def _simulated_stops(p_a: float, lift: float, n_star: float, step: int, sims: int, max_n: int) -> np.ndarray:
    """Per simulated experiment, the exposures per arm at which the worker's sequential test first finds B."""
    rng = np.random.default_rng(16)
    first = np.full(sims, np.inf)
    conversions = np.zeros((sims, 2))
    for look in range(max_n // step):
        conversions += rng.binomial(step, [p_a, p_a * (1 + lift)], size=(sims, 2))
        exposures = np.full((sims, 2), step * (look + 1))
        better = analyze_many(exposures, conversions, method="sequential", alpha=0.05, n_star=n_star).better[:, 0]
        first[better & np.isinf(first)] = step * (look + 1)
    return first


def test_the_sequential_plan_agrees_with_simulation_within_five_percent() -> None:
    """Simulated with the decision's own statistics, checked every 0.5% of the fixed horizon."""
    plan = plan_sample_size("conversion", 0.1, 0.1)
    assert plan.n_star is not None
    step = plan.fixed_horizon_exposures_per_arm // 200
    stops = _simulated_stops(0.1, 0.1, plan.n_star, step, 1000, 3 * plan.fixed_horizon_exposures_per_arm)
    assert float(np.quantile(stops, 0.8)) == pytest.approx(plan.exposures_per_arm, rel=0.05)


def test_analyze_many_takes_one_n_star_per_experiment() -> None:
    exposures = np.array([[10_000, 10_000], [20_000, 20_000], [30_000, 30_000]])
    conversions = np.array([[1_000, 1_080], [2_000, 2_130], [3_000, 3_100]])
    n_stars = [7_000.0, 90_000.0, 1e6]
    many = analyze_many(exposures, conversions, n_star=n_stars)
    for e, ns in enumerate(n_stars):
        variants = [
            VariantStats("c", True, int(exposures[e, 0]), int(conversions[e, 0])),
            VariantStats("b", False, int(exposures[e, 1]), int(conversions[e, 1])),
        ]
        one = compare_arms(*variants, n_star=ns)
        assert float(many.p_value[e, 0]) == pytest.approx(one.p_value, rel=1e-12)
        assert float(many.ci_low[e, 0]) == pytest.approx(one.ci_low, rel=1e-12)
    with pytest.raises(StatsInputError, match="one per experiment"):
        analyze_many(exposures, conversions, n_star=[5000.0, 5000.0])
    with pytest.raises(StatsInputError, match="one per experiment"):
        analyze_many(exposures, conversions, n_star=[5000.0, 0.5, 5000.0])


def test_the_z_statistic_of_a_relative_lift_diffuses_slower_than_one() -> None:
    """kappa by the delta method against the spread of z across simulated experiments at a fixed n."""
    rng = np.random.default_rng(5)
    n, p_a, p_b = 20_000, 0.1, 0.11
    a = rng.binomial(n, p_a, 20_000) / n
    b = rng.binomial(n, p_b, 20_000) / n
    r = b / a
    z = (r - 1) / np.sqrt((b * (1 - b) + a * (1 - a) * r * r) / (n * a * a))
    kappa = float(z_diffusion("conversion", p_a, p_b))
    assert kappa < 0.95
    assert float(np.std(z)) == pytest.approx(kappa, rel=0.03)
    assert float(z_diffusion("mean", 10.0, 10.0, 3.0)) == pytest.approx(1.0, abs=0.05)
