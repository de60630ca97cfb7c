"""The vectorised per-metric path concludes exactly as the scalar one: numbers to 1e-9, verdicts and reasons equal."""

from __future__ import annotations

import math
import random

import pytest

from worker.domain.metric_rule import analyze_metrics, analyze_metrics_many
from worker.domain.metrics import Direction, MetricDefinition, MetricKind, MetricRole, MetricSums
from worker.stats.metrics import MetricAnalysis


def _close(x: float | None, y: float | None) -> bool:
    if x is None or y is None:
        return x is None and y is None
    return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)


def _sums(rng: random.Random, kind: str) -> MetricSums | None:
    roll = rng.random()
    if roll < 0.05:
        return None  # no data for this variant
    n = rng.choice([0, 1, 2, 5, 100, 5000, 200_000]) if roll < 0.3 else rng.randint(50, 50_000)
    if kind == "proportion":
        c = float(rng.choice([0, n, rng.randint(0, n)]))
        return MetricSums(n, c, c)
    mean, sd = rng.choice([0.0, 1.0, 10.0]), rng.choice([0.0, 1.0, 5.0])
    if n == 0:
        return MetricSums(
            0,
            0.0,
            0.0,
            0.0 if kind == "ratio" else None,
            0.0 if kind == "ratio" else None,
            0.0 if kind == "ratio" else None,
        )
    s, ss = n * mean, n * (sd * sd + mean * mean)
    if kind == "mean":
        return MetricSums(n, s, ss)
    dmean = rng.choice([0.0, 2.0])
    d, dd = n * dmean, n * (dmean * dmean + 1.0) if dmean else 0.0
    return MetricSums(n, s, ss, d, dd, n * mean * dmean + rng.uniform(-0.3, 0.3) * n * sd)


def _definitions(rng: random.Random) -> list[tuple[MetricDefinition, dict[str, MetricSums]]]:
    out = []
    for k in range(rng.randint(1, 5)):
        kinds: list[MetricKind] = ["proportion", "mean", "ratio"]
        roles: list[MetricRole] = ["primary", "guardrail", "secondary"]
        directions: list[Direction] = ["increase", "decrease"]
        kind = rng.choice(kinds)
        d = MetricDefinition(
            f"m{k}",
            kind,
            role=rng.choice(roles),
            direction=rng.choice(directions),
            margin=rng.choice([0.0, 0.02, 0.1]),
        )
        sums = {v: s for v in ("control", "b", "c") if (s := _sums(rng, kind)) is not None}
        out.append((d, sums))
    return out


def _same(a: MetricAnalysis, b: MetricAnalysis) -> None:
    assert (a.name, a.kind, a.role, a.direction, a.margin, a.control) == (
        b.name,
        b.kind,
        b.role,
        b.direction,
        b.margin,
        b.control,
    )
    assert a.control_units == b.control_units and _close(a.control_mean, b.control_mean)
    for x, y in zip(a.comparisons, b.comparisons, strict=True):
        assert (x.variant, x.units, x.verdict, x.effect.reason) == (y.variant, y.units, y.verdict, y.effect.reason)
        assert _close(x.mean, y.mean)
        ex, ey = x.effect, y.effect
        for u, v in (
            (ex.estimate, ey.estimate),
            (ex.se, ey.se),
            (ex.ci_low, ey.ci_low),
            (ex.ci_high, ey.ci_high),
            (ex.p_value, ey.p_value),
            (ex.df, ey.df),
            (x.adjusted_p, y.adjusted_p),
        ):
            assert _close(u, v), (u, v, x, y)
        if x.non_inferiority is not None or y.non_inferiority is not None:
            assert x.non_inferiority is not None and y.non_inferiority is not None
            assert _close(x.non_inferiority.p_value, y.non_inferiority.p_value)
            assert _close(x.non_inferiority.bound, y.non_inferiority.bound)


@pytest.mark.parametrize("method", ["sequential", "fixed"])
@pytest.mark.parametrize("correction", ["holm", "bh"])
def test_vectorised_metrics_agree_with_the_scalar_path(method: str, correction: str) -> None:
    rng = random.Random(f"{method}{correction}")
    items = []
    for e in range(300):
        treatments = ["b"] if rng.random() < 0.6 else ["b", "c"]
        items.append((e, _definitions(rng), "control", treatments))
    many = analyze_metrics_many(items, method=method, alpha=0.05, n_star=5000.0, correction=correction)
    assert len(many) == len(items)  # every sample above is possible: none falls back
    for key, definitions, control, treatments in items:
        scalar = analyze_metrics(
            definitions, control, treatments, method=method, alpha=0.05, n_star=5000.0, correction=correction
        )
        for a, b in zip(scalar, many[key], strict=True):
            _same(a, b)


def test_impossible_sums_fall_back_to_the_scalar_path() -> None:
    good = (MetricDefinition("m", "mean"), {"control": MetricSums(10, 10.0, 20.0), "b": MetricSums(10, 12.0, 30.0)})
    bad = (MetricDefinition("m", "mean"), {"control": MetricSums(10, 10.0, 1.0), "b": MetricSums(10, 12.0, 30.0)})
    out = analyze_metrics_many(
        [("good", [good], "control", ["b"]), ("bad", [bad], "control", ["b"])],
        method="sequential",
        alpha=0.05,
        n_star=5000.0,
        correction="holm",
    )
    assert set(out) == {"good"}


def test_metrics_with_covariates_are_left_to_the_scalar_seam() -> None:
    cov = MetricSums(10, 10.0, 20.0, pre_units=10, pre_sum=9.0, pre_sum_sq=18.0, pre_value_product_sum=18.0)
    plain = MetricSums(10, 12.0, 30.0)
    auto = (MetricDefinition("m", "mean"), {"control": cov, "b": plain})
    off = (MetricDefinition("m", "mean", cuped="off"), {"control": cov, "b": plain})
    out = analyze_metrics_many(
        [("auto", [auto], "control", ["b"]), ("off", [off], "control", ["b"])],
        method="sequential",
        alpha=0.05,
        n_star=5000.0,
        correction="holm",
    )
    assert set(out) == {"off"}


def test_the_scan_pauses_garbage_collection_only_for_its_chunk() -> None:
    import gc

    from worker.services.scan import collections_paused

    assert gc.isenabled()
    with collections_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collections_paused():
            pass
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()
