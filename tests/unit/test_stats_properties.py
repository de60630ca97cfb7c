"""Property tests (hypothesis): invariants that must hold for every input, valid or not."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from worker.stats import (
    LatencySketch,
    StatsInputError,
    VariantStats,
    adjust_pvalues,
    analyze_experiment,
    analyze_many,
    compare_arms,
    error_rate_test,
    reasons,
    srm_test,
)
from worker.stats.effects import sequential_one_sided_p_value, sequential_p_value, sequential_rho

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

methods = st.sampled_from(["sequential", "fixed"])
alphas = st.floats(min_value=1e-6, max_value=0.999, allow_nan=False)
n_stars = st.floats(min_value=1.0, max_value=1e9, allow_nan=False)


@st.composite
def conversion_arm(draw: st.DrawFn, name: str, is_control: bool) -> VariantStats:
    n = draw(st.one_of(st.integers(0, 50), st.integers(0, 10**6), st.integers(10**8, 2 * 10**9)))
    c = draw(st.integers(0, n))
    e = draw(st.integers(0, n))
    return VariantStats(name, is_control, n, c, errors=e, weight=draw(st.floats(0, 100)))


@st.composite
def mean_arm(draw: st.DrawFn, name: str, is_control: bool) -> VariantStats:
    n = draw(st.integers(0, 10**7))
    if n == 0:
        return VariantStats(name, is_control, 0)
    mu = draw(st.floats(-1e6, 1e6, allow_nan=False))
    sd = draw(st.floats(0, 1e6, allow_nan=False))
    s = mu * n
    # A consistent sum of squares: n*sd^2 + s^2/n >= s^2/n.
    ss = n * sd * sd + s * mu
    return VariantStats(name, is_control, n, value_sum=s, value_sum_sq=ss)


def check_probability(p: float) -> None:
    assert isinstance(p, float) and 0.0 <= p <= 1.0, p


@SETTINGS
@given(
    a=conversion_arm("control", True),
    b=conversion_arm("b", False),
    c=conversion_arm("c", False),
    method=methods,
    alpha=alphas,
    n_star=n_stars,
    corr=st.sampled_from(["holm", "bh", "none"]),
)
def test_p_values_and_confidence_are_always_valid_numbers(
    a: VariantStats, b: VariantStats, c: VariantStats, method: Any, alpha: float, n_star: float, corr: Any
) -> None:
    res = analyze_experiment([a, b, c], method=method, alpha=alpha, n_star=n_star, correction=corr)
    for cmp in res.comparisons:
        check_probability(cmp.p_value)
        check_probability(cmp.adjusted_p)
        assert cmp.adjusted_p >= cmp.p_value or corr == "bh"
        assert 0.0 <= cmp.confidence <= 100.0
        assert cmp.better <= cmp.significant
        for x in (cmp.lift, cmp.se, cmp.ci_low, cmp.ci_high, cmp.improvement):
            assert x is None or math.isfinite(x)
        assert (cmp.reason is None) == (cmp.lift is not None)
    check_probability(res.srm.p_value)
    assert math.isfinite(res.srm.chi2)


@SETTINGS
@given(a=conversion_arm("control", True), b=conversion_arm("b", False), method=methods, alpha=alphas)
def test_interval_contains_the_estimate(a: VariantStats, b: VariantStats, method: Any, alpha: float) -> None:
    for relative in (True, False):
        e = compare_arms(a, b, method=method, alpha=alpha, relative=relative)
        if e.estimate is None:
            assert e.p_value == 1.0 and e.reason is not None
            continue
        assert e.ci_low is not None and e.ci_high is not None
        assert e.ci_low <= e.estimate <= e.ci_high
        # Interval and p-value are two views of one test: 0 excluded exactly when p < alpha.
        if min(abs(e.ci_low), abs(e.ci_high)) > 1e-9 * max(1.0, abs(e.estimate)):
            assert (e.p_value < alpha) == (e.ci_low > 0 or e.ci_high < 0)


@SETTINGS
@given(a=mean_arm("control", True), b=mean_arm("b", False), method=methods)
def test_interval_contains_the_estimate_for_mean_metrics(a: VariantStats, b: VariantStats, method: Any) -> None:
    e = compare_arms(a, b, metric_type="mean", method=method)
    check_probability(e.p_value)
    if e.estimate is not None:
        assert e.ci_low is not None and e.ci_high is not None and e.ci_low <= e.estimate <= e.ci_high


@SETTINGS
@given(a=conversion_arm("control", True), b=conversion_arm("b", False), method=methods)
def test_swapping_arms_flips_the_sign_of_the_absolute_difference(a: VariantStats, b: VariantStats, method: Any) -> None:
    ab = compare_arms(a, b, method=method, relative=False)
    ba = compare_arms(VariantStats("b", True, b.exposures, b.conversions), a, method=method, relative=False)
    if ab.estimate is None:
        assert ba.estimate is None
        return
    assert ba.estimate is not None and ab.ci_low is not None and ba.ci_high is not None
    assert ba.estimate == -ab.estimate
    assert math.isclose(ab.p_value, ba.p_value, rel_tol=1e-9, abs_tol=1e-300)
    assert math.isclose(ab.ci_low, -ba.ci_high, rel_tol=1e-9, abs_tol=1e-15)


@SETTINGS
@given(
    z1=st.floats(0, 1e6),
    z2=st.floats(0, 1e6),
    n=st.floats(2, 1e12),
    alpha=st.floats(1e-6, 0.49),
    n_star=n_stars,
)
def test_sequential_p_values_are_monotone_in_the_z_score(
    z1: float, z2: float, n: float, alpha: float, n_star: float
) -> None:
    lo, hi = sorted((z1, z2))
    rho = sequential_rho(alpha, n_star)
    p_lo, p_hi = sequential_p_value(lo, n, rho), sequential_p_value(hi, n, rho)
    check_probability(p_lo)
    check_probability(p_hi)
    assert p_hi <= p_lo
    rho1 = sequential_rho(2 * alpha, n_star)
    q_lo, q_hi = sequential_one_sided_p_value(lo, n, rho1), sequential_one_sided_p_value(hi, n, rho1)
    check_probability(q_lo)
    check_probability(q_hi)
    assert q_hi <= q_lo


@SETTINGS
@given(a=conversion_arm("control", True), b=conversion_arm("b", False), method=methods, alpha=st.floats(1e-6, 0.49))
def test_error_rate_test_returns_valid_probabilities(
    a: VariantStats, b: VariantStats, method: Any, alpha: float
) -> None:
    res = error_rate_test(a, b, method=method, alpha=alpha)
    check_probability(res.p_value)
    assert res.significant_increase <= (res.treatment_rate > res.control_rate)


@SETTINGS
@given(p=st.lists(st.floats(0, 1), max_size=12), corr=st.sampled_from(["holm", "bh", "none"]))
def test_adjusted_p_values_are_probabilities_that_preserve_order(p: list[float], corr: Any) -> None:
    adj = adjust_pvalues(p, corr)
    assert len(adj) == len(p)
    for x, y in zip(p, adj, strict=True):
        check_probability(y)
        assert y >= x - 1e-15
    order = sorted(range(len(p)), key=p.__getitem__)
    assert all(adj[i] <= adj[j] for i, j in itertools.pairwise(order))


@SETTINGS
@given(obs=st.lists(st.integers(0, 10**12), min_size=1, max_size=6), data=st.data())
def test_srm_p_value_is_a_probability(obs: list[int], data: st.DataObject) -> None:
    w = data.draw(st.lists(st.floats(0, 1e6), min_size=len(obs), max_size=len(obs)))
    res = srm_test(obs, w)
    check_probability(res.p_value)
    stray = any(o > 0 and not x > 0 for o, x in zip(obs, w, strict=True))
    assert (res.reason == reasons.SRM_ZERO_WEIGHT_TRAFFIC) == stray
    assert res.flagged == ((res.reason is None or stray) and res.p_value < 0.001)


# ---- anything thrown at the API raises StatsInputError or nothing ---------------------------------------

wild_ints = st.one_of(
    st.integers(-10, 10**3), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.booleans(), st.none()
)
wild_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70), st.text(max_size=2)
)


@st.composite
def wild_variant(draw: st.DrawFn) -> Any:
    make: Any = VariantStats  # deliberately called with ill-typed fields
    return make(
        draw(st.one_of(st.sampled_from(["control", "b", "c"]), st.integers())),
        draw(st.one_of(st.booleans(), st.none())),
        draw(wild_ints),
        draw(wild_ints),
        draw(wild_floats),
        draw(wild_floats),
        draw(wild_ints),
        draw(wild_floats),
    )


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    variants=st.lists(wild_variant(), max_size=4),
    method=st.one_of(methods, st.text(max_size=3)),
    metric=st.sampled_from(["conversion", "mean", "x"]),
    alpha=wild_floats,
    n_star=wild_floats,
    thr=wild_floats,
)
def test_no_input_raises_anything_but_stats_input_error(
    variants: list[Any], method: Any, metric: Any, alpha: Any, n_star: Any, thr: Any
) -> None:
    calls: list[Callable[[], object]] = [
        lambda: analyze_experiment(
            variants, metric_type=metric, method=method, alpha=alpha, n_star=n_star, srm_threshold=thr
        ),
        lambda: srm_test([v.exposures for v in variants], [v.weight for v in variants], thr),
        lambda: adjust_pvalues([v.value_sum for v in variants], "holm"),
    ]
    if len(variants) >= 2:
        calls.append(lambda: error_rate_test(variants[0], variants[1], method=method, alpha=alpha, n_star=n_star))
        calls.append(lambda: compare_arms(variants[0], variants[1], metric_type=metric, method=method))
    for call in calls:
        try:
            call()
        except StatsInputError:
            pass


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 10**6)), max_size=20),
    q=st.one_of(st.floats(allow_nan=True), st.integers(-2, 2)),
)
def test_sketch_never_raises_anything_but_stats_input_error(values: list[Any], q: Any) -> None:
    try:
        sk = LatencySketch.from_values(values)
    except StatsInputError:
        assume(False)
        return
    assert sk.count == len(values)
    assert LatencySketch.from_json(sk.to_json()) == sk
    try:
        v = sk.quantile(q)
    except StatsInputError:
        return
    assert v is None or (math.isfinite(v) and v >= 0.0)


@settings(max_examples=200, deadline=None)
@given(
    d=st.dictionaries(
        st.one_of(st.text(max_size=6), st.integers().map(str), st.just("z")),
        st.one_of(st.integers(-3, 10**9), st.floats(allow_nan=True), st.text(max_size=2), st.booleans()),
        max_size=6,
    )
)
def test_sketch_from_json_never_raises_anything_but_stats_input_error(d: dict[str, Any]) -> None:
    try:
        sk = LatencySketch.from_json(d)
    except StatsInputError:
        return
    assert LatencySketch.from_json(sk.to_json()) == sk
    p = sk.p95()
    assert p is None or math.isfinite(p)


@settings(max_examples=150, deadline=None)
@given(
    n=st.lists(st.lists(st.integers(-2, 10**6), min_size=3, max_size=3), min_size=1, max_size=4),
    frac=st.floats(-0.5, 1.5),
    alpha=wild_floats,
)
def test_analyze_many_never_raises_anything_but_stats_input_error(n: list[list[int]], frac: float, alpha: Any) -> None:
    arr = np.array(n)
    try:
        res = analyze_many(arr, np.floor(arr * frac), alpha=alpha)
    except StatsInputError:
        return
    assert ((res.p_value >= 0) & (res.p_value <= 1)).all()
    assert not np.isnan(res.adjusted_p).any() and not np.isnan(res.srm_p).any()
