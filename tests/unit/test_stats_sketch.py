"""LatencySketch: accuracy, exact mergeability (as SQL merges jsonb), subtraction and the JSON form."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from worker.stats import GAMMA, LatencySketch, StatsInputError, latency_degradation
from worker.stats.sketch import bucket_key


def test_p95_of_a_million_lognormal_samples_is_within_one_percent_of_exact() -> None:
    x = np.random.default_rng(42).lognormal(mean=3.0, sigma=1.0, size=1_000_000)
    sk = LatencySketch.from_values(x)
    exact = float(np.quantile(x, 0.95))
    p95 = sk.p95()
    assert p95 is not None and abs(p95 / exact - 1) <= 0.01
    assert sk.count == 1_000_000


@pytest.mark.parametrize("q", [0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0])
def test_every_quantile_is_within_one_percent_of_exact(q: float) -> None:
    x = np.random.default_rng(1).pareto(1.5, size=50_000) + 0.001
    est = LatencySketch.from_values(x).quantile(q)
    # Rank-based: the estimate matches the order statistic at rank q*(n-1) to 1%.
    exact = float(np.sort(x)[math.floor(q * (x.size - 1))])
    assert est is not None and abs(est / exact - 1) <= 0.01 + 1e-12


def test_merge_equals_sketch_of_the_union_exactly() -> None:
    rng = np.random.default_rng(7)
    a = np.concatenate([rng.lognormal(2, 1.5, 10_000), np.zeros(17)])
    b = rng.exponential(30.0, 5_000)
    merged = LatencySketch.from_values(a).merge(LatencySketch.from_values(b))
    union = LatencySketch.from_values(np.concatenate([a, b]))
    assert merged.to_json() == union.to_json()
    assert merged == union and hash(merged) == hash(union)


def test_merge_of_json_forms_summed_per_key_equals_merge() -> None:
    # What the SQL merge does: add counts per jsonb key.
    rng = np.random.default_rng(8)
    ja = LatencySketch.from_values(rng.exponential(5, 1000)).to_json()
    jb = LatencySketch.from_values(np.append(rng.exponential(50, 1000), 0.0)).to_json()
    summed = {k: ja.get(k, 0) + jb.get(k, 0) for k in set(ja) | set(jb)}
    assert LatencySketch.from_json(summed) == LatencySketch.from_json(ja).merge(LatencySketch.from_json(jb))


def test_subtract_recovers_the_data_since_a_baseline() -> None:
    rng = np.random.default_rng(9)
    before = np.append(rng.lognormal(1, 1, 3000), [0.0, 0.0])
    after = np.append(rng.lognormal(2, 1, 2000), [0.0])
    baseline = LatencySketch.from_values(before)
    now = baseline.merge(LatencySketch.from_values(after))
    assert now.subtract(baseline) == LatencySketch.from_values(after)
    assert now.subtract(baseline).count == 2001


def test_subtract_clamps_each_bucket_at_zero() -> None:
    small = LatencySketch.from_values([1.0, 0.0])
    big = LatencySketch.from_values([1.0, 1.0, 5.0, 0.0, 0.0])
    diff = small.subtract(big)
    assert diff.count == 0 and diff.to_json() == {} and diff.p95() is None


def test_json_round_trip_is_exact_and_json_serialisable() -> None:
    sk = LatencySketch.from_values([0.0, 0.0, 0.5, 1.0, 1.0, 250.0, 1e6])
    j = sk.to_json()
    assert j["z"] == 2
    assert all(isinstance(v, int) for v in j.values())
    assert LatencySketch.from_json(json.loads(json.dumps(j))) == sk


def test_zero_bucket_key_is_omitted_when_there_are_no_zeros() -> None:
    assert "z" not in LatencySketch.from_values([1.0, 2.0]).to_json()


def test_bucket_key_and_representative_follow_the_documented_formula() -> None:
    for x in (0.001, 0.5, 1.0, 1.5, 123.456, 1e9):
        k = bucket_key(x)
        assert k == math.ceil(math.log(x) / math.log(GAMMA))
        rep = 2 * GAMMA**k / (GAMMA + 1)
        assert abs(rep / x - 1) <= 0.01 + 1e-12
        q = LatencySketch.from_values([x]).quantile(0.5)
        assert q is not None and math.isclose(q, rep, rel_tol=1e-12)
        assert LatencySketch.from_values([x]).to_json() == {str(k): 1}


def test_add_returns_a_new_sketch_and_leaves_the_original_alone() -> None:
    sk = LatencySketch.from_values([1.0, 2.0])
    sk2 = sk.add(3.0).add(0.0, count=2)
    assert sk.count == 2 and sk2.count == 5 and sk2.zero_count == 2
    assert sk2 == LatencySketch.from_values([1.0, 2.0, 3.0, 0.0, 0.0])


def test_empty_sketch_has_no_quantiles() -> None:
    for sk in (
        LatencySketch(),
        LatencySketch.from_values([]),
        LatencySketch.from_json(None),
        LatencySketch.from_json({}),
    ):
        assert sk.count == 0 and sk.is_empty and sk.p95() is None and sk.quantile(0.5) is None
        assert sk.to_json() == {}


def test_sketch_of_only_zeros_reports_zero_latency() -> None:
    sk = LatencySketch.from_values([0.0] * 10)
    assert sk.p95() == 0.0 and sk.to_json() == {"z": 10}


def test_extreme_values_round_trip_without_overflow() -> None:
    sk = LatencySketch.from_values([5e-324, 1e-300, 1.7976931348623157e308])
    assert LatencySketch.from_json(sk.to_json()) == sk
    top = sk.quantile(1.0)
    assert top is not None and math.isfinite(top)


@pytest.mark.parametrize("bad", [[-1.0], [float("nan")], [float("inf")], ["x"], np.array(["x"]), np.array([1.0, -2.0])])
def test_from_values_rejects_negative_nan_infinite_and_non_numeric(bad: list[object]) -> None:
    with pytest.raises(StatsInputError):
        LatencySketch.from_values(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [{"a": 1}, {"1": -1}, {"z": -2}, {"1": 1.5}, {"1": "3"}, {"1": True}, {"10000000": 1}, [("1", 1)]],
)
def test_from_json_rejects_malformed_forms(bad: object) -> None:
    with pytest.raises(StatsInputError):
        LatencySketch.from_json(bad)  # type: ignore[arg-type]


def test_from_json_accepts_whole_number_floats_from_jsonb() -> None:
    from_jsonb: dict[str, Any] = {"5": 3.0, "z": 1.0}
    assert LatencySketch.from_json(from_jsonb).to_json() == {"5": 3, "z": 1}


@pytest.mark.parametrize("q", [-0.1, 1.1, float("nan")])
def test_quantile_outside_unit_interval_is_rejected(q: float) -> None:
    with pytest.raises(StatsInputError):
        LatencySketch.from_values([1.0]).quantile(q)


def test_add_rejects_negative_latency() -> None:
    with pytest.raises(StatsInputError):
        LatencySketch().add(-0.5)


def test_latency_degradation_is_percent_increase_of_treatment_over_control() -> None:
    assert latency_degradation(100.0, 150.0) == pytest.approx(50.0)
    assert latency_degradation(200.0, 100.0) == pytest.approx(-50.0)
    assert latency_degradation(80.0, 80.0) == 0.0


def test_latency_degradation_with_zero_control_is_zero_or_unbounded() -> None:
    assert latency_degradation(0.0, 0.0) == 0.0
    assert latency_degradation(0.0, 5.0) == math.inf


@pytest.mark.parametrize(("c", "t"), [(-1.0, 1.0), (1.0, -1.0), (float("nan"), 1.0), (1.0, float("inf"))])
def test_latency_degradation_rejects_negative_nan_and_infinite(c: float, t: float) -> None:
    with pytest.raises(StatsInputError):
        latency_degradation(c, t)
