"""analyze_many must reproduce analyze_experiment row for row."""

from __future__ import annotations

import math
import pickle
from typing import Any

import numpy as np
import pytest

from worker.stats import (
    Comparison,
    ExperimentAnalysis,
    StatsInputError,
    VariantStats,
    analyze_experiment,
    analyze_many,
)
from worker.stats.models import Correction, Method

NAMES = ("control", "b", "c", "d")


def assert_same_number(x: float | None, y: float | None, what: str) -> None:
    if x is None or y is None:
        assert x is None and y is None, f"{what}: {x!r} vs {y!r}"
        return
    assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12), f"{what}: {x!r} vs {y!r}"


def assert_same_analysis(got: ExperimentAnalysis, want: ExperimentAnalysis) -> None:
    assert (got.control, got.method, got.metric_type, got.correction) == (
        want.control,
        want.method,
        want.metric_type,
        want.correction,
    )
    assert got.reason == want.reason
    assert len(got.comparisons) == len(want.comparisons)
    for g, w in zip(got.comparisons, want.comparisons, strict=True):
        assert (g.variant, g.control, g.reason, g.method) == (w.variant, w.control, w.reason, w.method)
        for f in Comparison.__slots__:
            gv, wv = getattr(g, f), getattr(w, f)
            if isinstance(wv, float) or isinstance(gv, float):
                assert_same_number(gv, wv, f"{w.variant}.{f}")
            elif f in ("significant", "better"):
                # A p-value sitting on alpha could flip on round-off; the random inputs never do.
                assert gv == wv, f"{w.variant}.{f}"
    gs, ws = got.srm, want.srm
    assert gs.observed == ws.observed and gs.reason == ws.reason and gs.df == ws.df
    assert_same_number(gs.chi2, ws.chi2, "srm.chi2")
    assert_same_number(gs.p_value, ws.p_value, "srm.p")
    assert gs.flagged == ws.flagged
    assert len(gs.expected) == len(ws.expected)
    for a, b in zip(gs.expected, ws.expected, strict=True):
        assert_same_number(a, b, "srm.expected")
    assert (got.best() is None) == (want.best() is None)
    gb, wb = got.best(), want.best()
    if gb is not None and wb is not None:
        assert gb.variant == wb.variant
    gw, ww = got.winner(), want.winner()
    assert (gw and gw.variant) == (ww and ww.variant)


def random_conversion_data(rng: np.random.Generator, e: int, v: int) -> tuple[Any, Any, Any]:
    n = rng.integers(0, 5000, size=(e, v))
    # Mix in the edge cases: empty arms, tiny arms, zero and saturated rates.
    n[rng.random((e, v)) < 0.05] = 0
    n[rng.random((e, v)) < 0.05] = 1
    rate = rng.choice([0.0, 0.01, 0.05, 0.1, 0.3, 1.0], size=(e, v), p=[0.1, 0.2, 0.3, 0.3, 0.05, 0.05])
    rate = np.where(rng.random((e, v)) < 0.5, rate * rng.uniform(0.8, 1.25, size=(e, v)), rate)
    c = rng.binomial(n, np.clip(rate, 0.0, 1.0))
    w = rng.choice([1.0, 2.0, 0.0], size=(e, v), p=[0.8, 0.15, 0.05])
    return n, c, w


@pytest.mark.parametrize("method", ["sequential", "fixed"])
@pytest.mark.parametrize("correction", ["holm", "bh", "none"])
def test_analyze_many_equals_analyze_experiment_on_random_conversion_data(
    method: Method, correction: Correction
) -> None:
    rng = np.random.default_rng(20240611)
    e, v = 400, 4
    n, c, w = random_conversion_data(rng, e, v)
    many = analyze_many(n, c, weights=w, method=method, correction=correction, alpha=0.05)
    for i in range(e):
        variants = [VariantStats(NAMES[j], j == 0, int(n[i, j]), int(c[i, j]), weight=float(w[i, j])) for j in range(v)]
        want = analyze_experiment(variants, method=method, correction=correction)
        assert_same_analysis(many.experiment(i, NAMES[:v]), want)


@pytest.mark.parametrize("method", ["sequential", "fixed"])
def test_analyze_many_equals_analyze_experiment_on_random_mean_data(method: Method) -> None:
    rng = np.random.default_rng(7)
    e, v = 300, 3
    n = rng.integers(0, 3000, size=(e, v))
    n[rng.random((e, v)) < 0.05] = 1
    n[rng.random((e, v)) < 0.05] = 0
    mu = rng.choice([0.0, 1.0, -2.0, 50.0], size=(e, 1)) * rng.uniform(0.9, 1.1, size=(e, v))
    sd = rng.choice([0.0, 1.0, 10.0], size=(e, v), p=[0.05, 0.5, 0.45])
    s = np.zeros((e, v))
    ss = np.zeros((e, v))
    for i in range(e):
        for j in range(v):
            x = rng.normal(mu[i, j], sd[i, j], size=int(n[i, j]))
            s[i, j] = x.sum()
            ss[i, j] = (x * x).sum()
    many = analyze_many(n, value_sum=s, value_sum_sq=ss, metric_type="mean", method=method)
    for i in range(e):
        variants = [
            VariantStats(NAMES[j], j == 0, int(n[i, j]), value_sum=float(s[i, j]), value_sum_sq=float(ss[i, j]))
            for j in range(v)
        ]
        want = analyze_experiment(variants, metric_type="mean", method=method)
        assert_same_analysis(many.experiment(i, NAMES[:v]), want)


def test_analyze_many_absent_variants_behave_as_if_not_passed() -> None:
    rng = np.random.default_rng(3)
    e, v = 200, 4
    n, c, w = random_conversion_data(rng, e, v)
    present = rng.random((e, v)) < 0.7
    present[:, 0] = True
    many = analyze_many(n, c, weights=w, present=present)
    for i in range(e):
        variants = [
            VariantStats(NAMES[j], j == 0, int(n[i, j]), int(c[i, j]), weight=float(w[i, j]))
            for j in range(v)
            if present[i, j]
        ]
        names = tuple(NAMES[j] for j in range(v))
        assert_same_analysis(many.experiment(i, names), analyze_experiment(variants))
        assert all(many.reason(i, j) == "variant not present" for j in range(1, v) if not present[i, j])


def test_analyze_many_best_and_winner_are_input_column_indices() -> None:
    n = np.array([[10000, 10000, 10000], [10000, 10000, 10000], [0, 0, 0]])
    c = np.array([[1000, 1300, 1500], [1000, 1000, 1000], [0, 0, 0]])
    many = analyze_many(n, c)
    assert many.winner.tolist() == [2, -1, -1]
    assert many.best[0] == 2 and many.best[2] == 1  # all lifts undefined: first treatment, as best()
    assert many.lift.shape == (3, 2) and np.isnan(many.lift[2]).all()
    assert not np.isnan(many.p_value).any() and not np.isnan(many.confidence).any()


def test_analyze_many_single_variant_has_no_comparisons() -> None:
    many = analyze_many(np.array([[100], [0]]), np.array([[10], [0]]))
    assert many.lift.shape == (2, 0)
    assert many.best.tolist() == [-1, -1] and many.winner.tolist() == [-1, -1]
    a = many.experiment(0, ["control"])
    assert a.comparisons == () and a.reason is not None and a.srm.reason is not None


def test_analyze_many_handles_ten_thousand_experiments_in_one_call() -> None:
    rng = np.random.default_rng(1)
    n = rng.integers(1000, 100000, size=(10_000, 3))
    c = rng.binomial(n, 0.1)
    many = analyze_many(n, c)
    assert many.p_value.shape == (10_000, 2)
    assert ((many.p_value >= 0) & (many.p_value <= 1)).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"exposures": [[10, 10]], "conversions": [[11, 1]]}, "exceed"),
        ({"exposures": [[10, -1]], "conversions": [[1, 0]]}, ">= 0"),
        ({"exposures": [[10, 10]], "conversions": [[1, 1, 1]]}, "shape"),
        ({"exposures": [10, 10], "conversions": [1, 1]}, "shape"),
        ({"exposures": [[10, 10.5]], "conversions": [[1, 1]]}, "whole"),
        ({"exposures": [[10, 10]], "conversions": None}, "conversions"),
        ({"exposures": [[10, 10]], "conversions": [[1, 1]], "weights": [1, float("nan")]}, "weights"),
        ({"exposures": [[10, 10]], "conversions": [[1, 1]], "alpha": 1.0}, "alpha"),
        ({"exposures": [[10, 10]], "conversions": [[1, 1]], "method": "bayes"}, "method"),
        ({"exposures": [[10, 10]], "conversions": [[1, 1]], "present": [[False, True]]}, "control"),
        (
            {"exposures": [[10, 10]], "value_sum": [[1.0, float("nan")]], "value_sum_sq": [[1.0, 1.0]]},
            "finite",
        ),
    ],
)
def test_analyze_many_rejects_invalid_input_with_stats_input_error(kwargs: dict[str, Any], match: str) -> None:
    if "value_sum" in kwargs:
        kwargs["metric_type"] = "mean"
    with pytest.raises(StatsInputError, match=match):
        analyze_many(**kwargs)


@pytest.mark.parametrize("metric_type", ["conversion", "mean"])
def test_experiments_is_experiment_for_every_row_with_the_same_types(metric_type: str) -> None:
    """ManyAnalysis.experiments (the scan's path) builds exactly what experiment() does, row by row: the same values
    of the same Python types (pickled alike: a numpy scalar would not be), absent variants and undefined lifts
    included."""
    rng = np.random.default_rng(11)
    e, v = 300, 4
    n, c, w = random_conversion_data(rng, e, v)
    present = rng.random((e, v)) < 0.8
    present[:, 0] = True
    if metric_type == "mean":
        s = n * rng.uniform(-1.0, 5.0, size=(e, v))
        many = analyze_many(n, value_sum=s, value_sum_sq=s * s / np.maximum(n, 1) + n, metric_type="mean")
    else:
        many = analyze_many(n, c, weights=w, present=present)
    names = [NAMES[:v] if i % 2 else tuple(f"{x}-{i}" for x in NAMES[:v]) for i in range(e)]
    got = many.experiments(names)
    assert len(got) == e
    for i in range(e):
        assert pickle.dumps(got[i]) == pickle.dumps(many.experiment(i, names[i]))
    with pytest.raises(StatsInputError):
        many.experiments(names[:-1])
