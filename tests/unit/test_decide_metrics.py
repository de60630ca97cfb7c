"""The several-metrics decision rule: a primary metric must win, every guardrail must be shown non-inferior, the
reasons name the metric and its numbers, and an experiment without metric rows decides exactly as before."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker.config import AutoPromotionConfig, load_config
from worker.decide import ExperimentSnapshot, VariantSnapshot, decide
from worker.domain.metrics import MetricDefinition, MetricSnapshot, MetricSums
from worker.stats import LatencySketch

NOW = datetime(2026, 5, 9, 12, 0, tzinfo=UTC)


def config(**overrides: Any) -> AutoPromotionConfig:
    raw: dict[str, Any] = {"thresholds": {"minSampleSize": 1000, "minImprovement": 1.0, "minRuntimeHours": 1}}
    raw.update(overrides)
    return load_config(env={}, overrides=raw).config


def variant(name: str, n: int, conversions: int, *, control: bool = False) -> VariantSnapshot:
    return VariantSnapshot(name, control, 50.0, n, conversions, 0, 0.0, 0.0, LatencySketch())


def snapshot(*metrics: MetricSnapshot, variants: tuple[VariantSnapshot, ...] | None = None) -> ExperimentSnapshot:
    return ExperimentSnapshot(
        id=1,
        name="checkout",
        status="running",
        started_at=NOW - timedelta(days=3),
        metric_type="conversion",
        priority="normal",
        variants=variants or (variant("control", 20_000, 2000, control=True), variant("variant-b", 20_000, 2300)),
        now=NOW,
        metrics=metrics,
    )


def revenue(
    control: tuple[int, float, float], treatment: tuple[int, float, float] | None, *, margin: float = 0.02, **kw: Any
) -> MetricSnapshot:
    sums = {"control": MetricSums(*control)}
    if treatment is not None:
        sums["variant-b"] = MetricSums(*treatment)
    return MetricSnapshot(MetricDefinition("revenue_per_user", "mean", role="guardrail", margin=margin, **kw), sums)


def mean_sums(n: int, mean: float, sd: float) -> tuple[int, float, float]:
    return (n, n * mean, n * (sd * sd + mean * mean))


def test_a_winner_on_conversion_is_blocked_by_its_revenue_guardrail() -> None:
    guard = revenue(mean_sums(20_000, 10.0, 8.0), mean_sums(20_000, 9.6, 8.0))  # -4%
    d = decide(snapshot(guard), config())
    assert not d.eligible and d.winner is None
    assert d.candidate is not None and d.candidate.variant == "variant-b"  # still the one people see numbers for
    (reason,) = [r for r in d.reasons if r.startswith("guardrail")]
    assert re.fullmatch(
        r"guardrail revenue_per_user: variant-b is -4\.0% \(lower bound -\d+\.\d%\), significantly worse"
        r" — not shown within the -2\.0% margin",
        reason,
    ), reason
    data = d.to_check_data()
    by_name = {m["name"]: m for m in data["metrics"]}
    assert by_name["primary"]["treatments"][0]["verdict"] == "better"
    assert by_name["revenue_per_user"]["treatments"][0]["verdict"] == "worse"


def test_a_guardrail_shown_within_its_margin_lets_the_winner_through() -> None:
    guard = revenue(mean_sums(20_000, 10.0, 8.0), mean_sums(20_000, 10.05, 8.0), margin=0.05)
    d = decide(snapshot(guard), config())
    assert d.eligible, d.reasons
    assert d.winner is not None and d.winner.variant == "variant-b"
    (m,) = [m for m in d.to_check_data()["metrics"] if m["name"] == "revenue_per_user"]
    assert m["treatments"][0]["verdict"] == "non_inferior"


def test_a_guardrail_without_data_blocks_and_says_so() -> None:
    guard = revenue(mean_sums(20_000, 10.0, 8.0), None)
    d = decide(snapshot(guard), config())
    assert not d.eligible
    assert any(
        r.startswith("guardrail revenue_per_user: variant-b has no result (treatment has no exposures) — not shown")
        for r in d.reasons
    ), d.reasons
    (m,) = [m for m in d.to_check_data()["metrics"] if m["name"] == "revenue_per_user"]
    assert m["treatments"][0]["verdict"] == "not_shown"
    assert m["treatments"][0]["lift"] is None and m["treatments"][0]["interval"] is None


def test_a_secondary_metric_never_decides() -> None:
    worse = MetricSnapshot(
        MetricDefinition("support_tickets", "mean", role="secondary", direction="decrease"),
        {"control": MetricSums(*mean_sums(20_000, 1.0, 1.0)), "variant-b": MetricSums(*mean_sums(20_000, 1.5, 1.0))},
    )
    d = decide(snapshot(worse), config())
    assert d.eligible, d.reasons
    (m,) = [m for m in d.to_check_data()["metrics"] if m["name"] == "support_tickets"]
    assert m["treatments"][0]["verdict"] == "worse"


@pytest.mark.parametrize("method", ["sequential", "fixed"])
@pytest.mark.parametrize("conversions", [2000, 2030, 2080, 2300, 1700])
def test_a_default_primary_row_decides_exactly_as_no_rows(method: str, conversions: int) -> None:
    """A row named primary with the built-in defaults changes nothing: same eligibility, winner and numbers."""
    vs = (variant("control", 20_000, 2000, control=True), variant("variant-b", 20_000, conversions))
    row = MetricSnapshot(MetricDefinition("primary", "proportion"), {})
    cfg = config(method=method)
    plain, ruled = decide(snapshot(variants=vs), cfg), decide(snapshot(row, variants=vs), cfg)
    assert (plain.eligible, plain.winner, plain.best if plain.winner is None else None) == (
        ruled.eligible,
        ruled.winner,
        ruled.best if ruled.winner is None else None,
    )
    assert (plain.confidence, plain.improvement) == (ruled.confidence, ruled.improvement)
    assert plain.to_check_data()["metrics"] == ruled.to_check_data()["metrics"]


def test_an_experiment_without_rows_reports_its_builtin_metric() -> None:
    d = decide(snapshot(), config())
    (m,) = d.to_check_data()["metrics"]
    assert set(m) == {"name", "role", "kind", "direction", "margin", "control", "treatments"}
    assert (m["name"], m["role"], m["kind"], m["direction"], m["margin"]) == (
        "primary",
        "primary",
        "proportion",
        "increase",
        0.0,
    )
    assert m["control"] == {"variant": "control", "units": 20_000, "mean": 0.1}
    (t,) = m["treatments"]
    # issue 16 adds unadjustedLift and varianceReduction (no covariate here: the plain lift, and null)
    assert set(t) == {"variant", "units", "mean", "lift", "interval", "pValue", "verdict", "unadjustedLift"} | {
        "varianceReduction"
    }
    assert t["unadjustedLift"] == t["lift"] and t["varianceReduction"] is None
    assert t["lift"] == d.improvement and t["verdict"] == "better"
    lo, hi = t["interval"]
    assert lo < t["lift"] < hi


def test_a_primary_row_may_turn_the_builtin_metric_the_other_way() -> None:
    """direction decrease: a lower rate is the better one (e.g. a bounce rate)."""
    row = MetricSnapshot(MetricDefinition("primary", "proportion", direction="decrease"), {})
    vs = (variant("control", 20_000, 2300, control=True), variant("variant-b", 20_000, 2000))
    d = decide(snapshot(row, variants=vs), config())
    assert d.eligible, d.reasons
    assert d.winner is not None and d.winner.improvement is not None and d.winner.improvement < 0
    up = decide(snapshot(variants=vs), config())
    assert not up.eligible


def test_two_primary_metrics_split_alpha_and_either_may_win() -> None:
    # conversion +4.5%: p ~ 0.034 two-sided — a winner alone, not at alpha/2
    vs = (variant("control", 40_000, 4000, control=True), variant("variant-b", 40_000, 4180))
    alone = decide(snapshot(variants=vs), config(method="fixed"))
    assert alone.eligible, alone.reasons
    clicks = MetricSnapshot(
        MetricDefinition("clicks", "mean"),
        {"control": MetricSums(*mean_sums(40_000, 5.0, 3.0)), "variant-b": MetricSums(*mean_sums(40_000, 5.0, 3.0))},
    )
    both = decide(snapshot(clicks, variants=vs), config(method="fixed"))
    assert not both.eligible
    assert any(r.startswith("no treatment beats control on primary metric primary at 95%") for r in both.reasons)
    assert any(r.startswith("no treatment beats control on primary metric clicks at 95%") for r in both.reasons)
    # a strong second primary wins on its own; the top-level numbers are then that metric's
    strong = replace(
        clicks,
        sums={
            "control": MetricSums(*mean_sums(40_000, 5.0, 3.0)),
            "variant-b": MetricSums(*mean_sums(40_000, 5.5, 3.0)),
        },
    )
    d = decide(snapshot(strong, variants=vs), config(method="fixed"))
    assert d.eligible, d.reasons
    assert d.improvement == pytest.approx(10.0, abs=1e-3)


def test_with_several_winners_the_largest_lift_on_the_first_primary_wins() -> None:
    vs = (
        variant("control", 20_000, 2000, control=True),
        variant("variant-b", 20_000, 2400),
        variant("variant-c", 20_000, 2600),
    )
    guard = MetricSnapshot(
        MetricDefinition("revenue_per_user", "mean", role="guardrail", margin=0.05),
        {v.name: MetricSums(*mean_sums(20_000, 10.0, 8.0)) for v in vs},
    )
    d = decide(snapshot(guard, variants=vs), config())
    assert d.eligible and d.winner is not None and d.winner.variant == "variant-c"
    # variant-c fails its guardrail: variant-b is the winner
    sums = dict(guard.sums)
    sums["variant-c"] = MetricSums(*mean_sums(20_000, 9.0, 8.0))
    d2 = decide(snapshot(replace(guard, sums=sums), variants=vs), config())
    assert d2.eligible and d2.winner is not None and d2.winner.variant == "variant-b"


def test_no_primary_metric_means_no_winner() -> None:
    row = MetricSnapshot(MetricDefinition("primary", "proportion", role="guardrail"), {})
    d = decide(snapshot(row), config())
    assert not d.eligible
    assert any(r.startswith("no primary metric") for r in d.reasons)


def test_the_safety_checks_still_apply_to_a_metric_winner() -> None:
    guard = revenue(mean_sums(20_000, 10.0, 8.0), mean_sums(20_000, 10.05, 8.0), margin=0.05)
    vs = (
        VariantSnapshot("control", True, 50.0, 20_000, 2000, 0, 0.0, 0.0, LatencySketch()),
        VariantSnapshot("variant-b", False, 50.0, 20_000, 2300, 2000, 0.0, 0.0, LatencySketch()),  # 10% errors
    )
    d = decide(snapshot(guard, variants=vs), config())
    assert not d.eligible
    assert any("Error Rate Check" in r for r in d.reasons)


def test_the_guardrail_reason_for_a_decrease_metric_names_its_upper_bound() -> None:
    latency = MetricSnapshot(
        MetricDefinition("page_load_ms", "mean", role="guardrail", direction="decrease", margin=0.02),
        {
            "control": MetricSums(*mean_sums(20_000, 800.0, 300.0)),
            "variant-b": MetricSums(*mean_sums(20_000, 830.0, 300.0)),
        },
    )
    d = decide(snapshot(latency), config())
    (r,) = [r for r in d.reasons if r.startswith("guardrail")]
    assert re.fullmatch(
        r"guardrail page_load_ms: variant-b is \+3\.8% \(upper bound \+\d\.\d%\).*"
        r" — not shown within the \+2\.0% margin",
        r,
    ), r


def test_the_cli_table_lists_each_metric_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    from worker.cli_engine import _render_check

    guard = revenue(mean_sums(20_000, 10.0, 8.0), mean_sums(20_000, 9.6, 8.0))
    _render_check(decide(snapshot(guard), config()).to_check_data())
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("revenue_per_user"))
    assert (
        "guardrail (margin 2.0%)" in line
        and "variant-b" in line
        and "-4.00%" in line
        and line.rstrip().endswith("worse")
    )
    assert "guardrail revenue_per_user: variant-b is -4.0%" in out  # and the reason


def test_a_significantly_worse_treatment_of_a_decrease_primary_is_not_called_best() -> None:
    """Review of issue 15: "best: variant-b at 100.00% confidence, +15.00%" named a treatment that raised a
    lower-is-better primary metric significantly."""
    row = MetricSnapshot(MetricDefinition("primary", "proportion", direction="decrease"), {})
    vs = (variant("control", 20_000, 2000, control=True), variant("variant-b", 20_000, 2300))
    d = decide(snapshot(row, variants=vs), config())
    assert not d.eligible
    (reason,) = [r for r in d.reasons if r.startswith("no treatment beats control")]
    assert "best:" not in reason
    assert re.search(r"closest variant-b at \+15\.00%, significantly worse at \d+\.\d\d% confidence", reason), reason
    assert "decrease" in reason


@pytest.mark.parametrize(("direction", "events"), [("decrease", 0), ("increase", 50_000), ("decrease", 50_000)])
def test_a_proportion_guardrail_with_identical_constant_arms_passes(direction: str, events: int) -> None:
    """Review of issue 15: a guardrail with no events in either arm (50000/0 vs 50000/0) was "not shown" forever and
    blocked every promotion; identical constant arms show no difference, whatever the sample size."""
    guard = MetricSnapshot(
        MetricDefinition("refunds", "proportion", role="guardrail", direction=direction),  # type: ignore[arg-type]
        {"control": MetricSums(50_000, events, events), "variant-b": MetricSums(50_000, events, events)},
    )
    d = decide(snapshot(guard), config())
    assert d.eligible, d.reasons
    (m,) = [m for m in d.to_check_data()["metrics"] if m["name"] == "refunds"]
    assert m["treatments"][0]["verdict"] == "non_inferior"


def test_a_proportion_guardrail_whose_control_has_no_events_says_why_it_is_not_shown() -> None:
    guard = MetricSnapshot(
        MetricDefinition("refunds", "proportion", role="guardrail", direction="decrease", margin=0.05),
        {"control": MetricSums(50_000, 0, 0), "variant-b": MetricSums(50_000, 3, 3)},
    )
    d = decide(snapshot(guard), config())
    assert not d.eligible
    (reason,) = [r for r in d.reasons if r.startswith("guardrail refunds")]
    assert "control has no events" in reason and "not shown" in reason and "relative margin" in reason, reason
