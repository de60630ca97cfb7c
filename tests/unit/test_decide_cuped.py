"""CUPED in the decision: a metric whose every unit sent its pre-exposure value is decided on the adjusted estimate
(issue 16), reports its unadjusted lift and variance reduction, and falls back, saying so, when some units did
not send one. The numbers are cuped_effect's, which tests/unit/test_stats_cuped.py checks against gbstats."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from worker.config import AutoPromotionConfig, load_config
from worker.decide import ExperimentSnapshot, VariantSnapshot, decide
from worker.domain.metrics import MetricDefinition, MetricSnapshot, MetricSums
from worker.stats import LatencySketch
from worker.stats.cuped import CovariateSums, cuped_effect
from worker.stats.metrics import analyze_metric

NOW = datetime(2026, 5, 9, 12, 0, tzinfo=UTC)


def config(**overrides: Any) -> AutoPromotionConfig:
    raw: dict[str, Any] = {"thresholds": {"minSampleSize": 500, "minImprovement": 1.0, "minRuntimeHours": 1}}
    raw.update(overrides)
    return load_config(env={}, overrides=raw).config


def units(n: int, mean: float, rho: float, seed: int) -> dict[str, float]:
    """n users' revenue (mean `mean`, sd 10) and last month's revenue, correlated rho: their sums."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    y = mean + 10.0 * (rho * x + math.sqrt(1 - rho * rho) * rng.standard_normal(n))
    x = 20.0 + 5.0 * x  # a pre-period value on its own scale
    return {
        "n": n,
        "value_sum": float(y.sum()),
        "value_sum_sq": float((y * y).sum()),
        "pre_sum": float(x.sum()),
        "pre_sum_sq": float((x * x).sum()),
        "pre_value_product_sum": float((x * y).sum()),
    }


def variant(name: str, s: dict[str, float], *, control: bool = False, pre_units: int | None = None) -> VariantSnapshot:
    n = int(s["n"])
    pre = n if pre_units is None else pre_units
    return VariantSnapshot(
        name,
        control,
        50.0,
        n,
        0,
        0,
        s["value_sum"],
        s["value_sum_sq"],
        LatencySketch(),
        pre_units=pre,
        pre_sum=s["pre_sum"] if pre else None,
        pre_sum_sq=s["pre_sum_sq"] if pre else None,
        pre_value_product_sum=s["pre_value_product_sum"] if pre else None,
    )


def snapshot(variants: tuple[VariantSnapshot, ...], *metrics: MetricSnapshot) -> ExperimentSnapshot:
    return ExperimentSnapshot(
        id=1,
        name="revenue-test",
        status="running",
        started_at=NOW - timedelta(days=3),
        metric_type="mean",
        priority="normal",
        variants=variants,
        now=NOW,
        metrics=metrics,
    )


def without_covariate(v: VariantSnapshot) -> VariantSnapshot:
    return VariantSnapshot(
        v.name, v.is_control, v.weight, v.exposures, 0, 0, v.value_sum, v.value_sum_sq, LatencySketch()
    )


# 3,000 users per arm, +5% true lift, rho 0.8: the adjusted test is clearly significant, the unadjusted one not.
CTRL = units(3000, 10.0, 0.8, seed=1)
TREAT = units(3000, 10.5, 0.8, seed=2)


def test_builtin_metric_with_covariates_is_decided_on_the_adjusted_estimate() -> None:
    vs = (variant("control", CTRL, control=True), variant("variant-b", TREAT))
    d = decide(snapshot(vs), config())
    plain = decide(snapshot(tuple(without_covariate(v) for v in vs)), config())
    expected = cuped_effect(
        CovariateSums(*CTRL.values()),  # type: ignore[arg-type]
        CovariateSums(*TREAT.values()),  # type: ignore[arg-type]
        kind="mean",
        method="sequential",
        alpha=0.05,
        n_star=5000,
    )
    assert d.eligible, d.reasons
    assert not plain.eligible  # the same data without the covariate: not yet
    assert d.winner is not None and expected.adjusted.estimate is not None
    assert d.winner.lift == pytest.approx(expected.adjusted.estimate, rel=1e-12)
    assert d.improvement == pytest.approx(100 * expected.adjusted.estimate, abs=1e-4)
    data = d.to_check_data()
    (m,) = data["metrics"]
    (t,) = m["treatments"]
    assert t["lift"] == pytest.approx(100 * expected.adjusted.estimate, abs=1e-4)
    assert t["unadjustedLift"] == pytest.approx(100 * (expected.unadjusted.estimate or 0.0), abs=1e-4)
    assert t["unadjustedLift"] == plain.to_check_data()["metrics"][0]["treatments"][0]["lift"]
    assert t["varianceReduction"] == pytest.approx(0.64, abs=0.05)  # about rho²
    assert t["pValue"] == pytest.approx(expected.adjusted.p_value, abs=1e-8)
    assert t["interval"] == pytest.approx([100 * expected.adjusted.ci_low, 100 * expected.adjusted.ci_high], abs=1e-4)  # type: ignore[operator]
    assert t["verdict"] == "better"
    assert m["control"]["mean"] == pytest.approx(CTRL["value_sum"] / 3000, abs=1e-6)  # means stay unadjusted
    assert data["notes"] == []


def test_a_covariate_missing_for_some_units_falls_back_and_says_so() -> None:
    vs = (variant("control", CTRL, control=True), variant("variant-b", TREAT, pre_units=2400))
    d = decide(snapshot(vs), config())
    plain = decide(snapshot(tuple(without_covariate(v) for v in vs)), config())
    data = d.to_check_data()
    (note,) = data["notes"]
    assert note.startswith("metric primary: CUPED not applied — 600 of 6,000 units came without their pre-exposure")
    assert "variant-b: 600 of 3,000" in note and "control" not in note
    (t,) = data["metrics"][0]["treatments"]
    assert t["varianceReduction"] is None and t["unadjustedLift"] == t["lift"]
    assert t == plain.to_check_data()["metrics"][0]["treatments"][0]  # never mixed: exactly the unadjusted numbers
    assert d.eligible == plain.eligible and d.improvement == plain.improvement
    assert note not in d.reasons  # a note, not a reason: it does not block by itself


def test_cuped_off_on_the_primary_row_keeps_the_unadjusted_estimate_without_a_note() -> None:
    vs = (variant("control", CTRL, control=True), variant("variant-b", TREAT))
    row = MetricSnapshot(MetricDefinition("primary", "mean", cuped="off"), {})
    d = decide(snapshot(vs, row), config())
    data = d.to_check_data()
    (t,) = data["metrics"][0]["treatments"]
    assert t["varianceReduction"] is None and t["unadjustedLift"] == t["lift"]
    assert not d.eligible and data["notes"] == []


def test_an_added_metric_with_covariates_gets_cuped_and_a_guardrail_uses_the_adjusted_bound() -> None:
    vs = (variant("control", CTRL, control=True), variant("variant-b", TREAT))
    c, t = units(3000, 50.0, 0.9, seed=3), units(3000, 49.0, 0.9, seed=4)  # -2% on a guardrail, 3% margin

    def sums(s: dict[str, float]) -> MetricSums:
        return MetricSums(
            units=int(s["n"]),
            value_sum=s["value_sum"],
            value_sum_sq=s["value_sum_sq"],
            pre_units=int(s["n"]),
            pre_sum=s["pre_sum"],
            pre_sum_sq=s["pre_sum_sq"],
            pre_value_product_sum=s["pre_value_product_sum"],
        )

    guard = MetricDefinition("order_value", "mean", role="guardrail", margin=0.03)
    d = decide(snapshot(vs, MetricSnapshot(guard, {"control": sums(c), "variant-b": sums(t)})), config())
    off = decide(
        snapshot(vs, MetricSnapshot(MetricDefinition("order_value", "mean", role="guardrail", margin=0.03, cuped="off"),
                                    {"control": sums(c), "variant-b": sums(t)})),
        config(),
    )  # fmt: skip
    g = next(m for m in d.to_check_data()["metrics"] if m["name"] == "order_value")["treatments"][0]
    g_off = next(m for m in off.to_check_data()["metrics"] if m["name"] == "order_value")["treatments"][0]
    assert g["varianceReduction"] == pytest.approx(0.81, abs=0.05)
    assert g["verdict"] == "non_inferior" and g_off["verdict"] != "non_inferior"  # CUPED shows it within the margin
    assert d.eligible, d.reasons


def test_analyze_metric_proportion_with_a_binary_covariate_matches_cuped_effect() -> None:
    rng = np.random.default_rng(5)
    arms = {}
    for name, p in (("control", 0.3), ("b", 0.33)):
        x = (rng.uniform(size=5000) < 0.3).astype(float)
        y = np.where(rng.uniform(size=5000) < 0.6, x, (rng.uniform(size=5000) < p).astype(float))
        arms[name] = MetricSums(5000, float(y.sum()), float(y.sum()), pre_units=5000, pre_sum=float(x.sum()),
                                pre_sum_sq=float(x.sum()), pre_value_product_sum=float((x * y).sum()))  # fmt: skip
    m = analyze_metric("signup", "proportion", ("control", arms["control"]), [("b", arms["b"])], method="fixed")
    want = cuped_effect(
        CovariateSums(5000, arms["control"].value_sum, arms["control"].value_sum, arms["control"].pre_sum or 0.0,
                      arms["control"].pre_sum or 0.0, arms["control"].pre_value_product_sum or 0.0),
        CovariateSums(5000, arms["b"].value_sum, arms["b"].value_sum, arms["b"].pre_sum or 0.0,
                      arms["b"].pre_sum or 0.0, arms["b"].pre_value_product_sum or 0.0),
        kind="proportion", method="fixed",
    )  # fmt: skip
    (c,) = m.comparisons
    assert c.effect == want.adjusted and c.unadjusted == want.unadjusted
    assert c.variance_reduction == want.variance_reduction and m.cuped_note is None


def test_ratio_metrics_are_never_adjusted() -> None:
    s = MetricSums(100, 50.0, 60.0, 200.0, 500.0, 120.0)
    m = analyze_metric("rps", "ratio", ("control", s), [("b", s)])
    assert m.comparisons[0].variance_reduction is None and m.cuped_note is None


def test_the_dashboard_shows_what_cuped_did_and_the_fallback_note() -> None:
    from worker.http.dashboard.views import metrics_table

    vs = (variant("control", CTRL, control=True), variant("variant-b", TREAT))
    data = decide(snapshot(vs), config()).to_check_data()
    (group,) = metrics_table(data)
    (row,) = group["rows"]
    t = data["metrics"][0]["treatments"][0]
    assert row["cuped"] == (
        f"CUPED: {100 * t['varianceReduction']:.0f}% less variance; without it {t['unadjustedLift']:+.1f}%"
    )
    partial = (variant("control", CTRL, control=True), variant("variant-b", TREAT, pre_units=2400))
    (group,) = metrics_table(decide(snapshot(partial), config()).to_check_data())
    assert group["rows"][0]["cuped"] is None


def test_a_covariate_that_explains_the_metric_exactly_falls_back_with_a_note() -> None:
    x0, x1 = np.arange(40.0), np.arange(45.0) + 1.0

    def exact(x: np.ndarray, lift: float) -> MetricSums:
        y = 2.0 * x + 3.0 + lift
        return MetricSums(len(x), float(y.sum()), float((y * y).sum()), pre_units=len(x), pre_sum=float(x.sum()),
                          pre_sum_sq=float((x * x).sum()), pre_value_product_sum=float((x * y).sum()))  # fmt: skip

    m = analyze_metric("spend", "mean", ("control", exact(x0, 0.0)), [("b", exact(x1, 0.0))])
    assert m.cuped_note == (
        "metric spend: CUPED not applied — the pre-exposure value explains the metric exactly for b "
        "(no variance left to test); the unadjusted estimate is reported"
    )
    (c,) = m.comparisons
    assert c.variance_reduction is None and c.effect.estimate is not None and c.unadjusted is None


def test_covariate_coverage_ignores_empty_arms_and_is_silent_without_any_covariate() -> None:
    from worker.stats.cuped import covariate_coverage

    full = MetricSums(10, 5.0, 5.0, pre_units=10, pre_sum=3.0, pre_sum_sq=3.0, pre_value_product_sum=2.0)
    none = MetricSums(10, 5.0, 5.0)
    assert covariate_coverage("m", [("a", full), ("b", full), ("c", MetricSums()), ("d", None)]).applies
    plain = covariate_coverage("m", [("a", none), ("b", none)])
    assert not plain.applies and plain.note is None
    mixed = covariate_coverage("m", [("a", full), ("b", none)])
    assert not mixed.applies and mixed.note is not None and "b: 10 of 10" in mixed.note
    assert not covariate_coverage("m", [("a", MetricSums()), ("b", None)]).applies
