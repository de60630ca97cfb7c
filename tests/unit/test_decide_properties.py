"""Every configuration that validates yields a decision for every possible set of statistics (hypothesis).

A configuration is only as good as the decisions it allows: a value the validators accept must never make the
decision raise, through the scalar path (decide) or the scan's vectorised statistics (analyze_many + decide).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from worker.config import AutoPromotionConfig, load_config
from worker.decide import AlertInfo, Decision, ExperimentSnapshot, VariantSnapshot, decide
from worker.engine import _vectorised_analyses  # type: ignore[attr-defined]
from worker.stats import LatencySketch

NOW = datetime(2026, 5, 9, 12, 0, tzinfo=UTC)
BIGINT = 2**63 - 1


def _bounded(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Floats in [lo, hi] that hit both ends often: the ends are where validation and statistics disagree."""
    return st.one_of(st.sampled_from([lo, hi]), st.floats(lo, hi, allow_nan=False, allow_infinity=False))


@st.composite
def valid_configs(draw: st.DrawFn) -> AutoPromotionConfig:
    """Any configuration the validators accept (each range below is the one worker/config/models.py enforces)."""
    enabled = draw(st.booleans())
    dry_run = draw(st.booleans())
    auto_rollback = draw(st.booleans())
    guard_hours = draw(_bounded(0, 24 * 90))
    if auto_rollback and guard_hours == 0:
        guard_hours = 1.0
    min_concurrent = 1 if enabled and not dry_run else 0
    raw: dict[str, Any] = {
        "enabled": enabled,
        "dryRun": dry_run,
        "thresholds": {
            "minConfidence": draw(_bounded(50, 99.999)),
            "minSampleSize": draw(st.one_of(st.integers(1, 10_000), st.integers(1, BIGINT))),
            "minImprovement": draw(_bounded(0, 10_000)),
            "minRuntimeHours": draw(_bounded(0, 24 * 365)),
        },
        "safetyChecks": {
            "maxErrorRate": draw(_bounded(0, 1)),
            "maxLatencyDegradation": draw(_bounded(0, 1000)),
            "checkTrafficBalance": draw(st.booleans()),
            "srmThreshold": draw(_bounded(1e-12, 0.5)),
            "checkCriticalAlerts": draw(st.booleans()),
            "alertLookbackHours": draw(_bounded(0, 24 * 90)),
            "failOnMissingData": draw(st.booleans()),
        },
        "excludedExperiments": draw(st.lists(st.sampled_from(["exp-*", "other", "*"]), max_size=2)),
        "maxConcurrentPromotions": draw(st.integers(min_concurrent, 10_000)),
        "method": draw(st.sampled_from(["sequential", "fixed"])),
        "sequentialTuning": draw(st.one_of(_bounded(1, 1e12), st.just("auto"))),
        "plannedSampleSize": draw(st.one_of(st.none(), st.integers(1, 10**9))),
        "correction": draw(st.sampled_from(["holm", "bh", "none"])),
        "scanIntervalSeconds": draw(_bounded(1, 86_400)),
        "guard": {"guardHours": guard_hours, "autoRollback": auto_rollback, "minSamples": draw(st.integers(1, 10**6))},
    }
    # Through the same layering and validation as a request or an experiment's own config.
    return load_config(env={}, overrides=raw).config


_counts = st.one_of(st.integers(0, 3), st.integers(0, 50_000), st.integers(0, 2 * 10**9), st.integers(0, BIGINT))
_latencies = st.one_of(
    st.just(LatencySketch()),
    st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=30).map(LatencySketch.from_values),
)


@st.composite
def variants(draw: st.DrawFn, name: str, is_control: bool, metric_type: str) -> VariantSnapshot:
    """Statistics that could really have been recorded: counts within exposures, sums a real sample could give."""
    n = draw(_counts)
    value_sum = value_sum_sq = 0.0
    if metric_type == "mean" and n > 0:
        mean = draw(st.one_of(st.just(0.0), st.floats(-1e6, 1e6, allow_nan=False)))
        var = draw(st.one_of(st.just(0.0), st.floats(0, 1e6, allow_nan=False)))
        value_sum = n * mean
        value_sum_sq = n * (var + mean * mean)
        if n == 1:
            value_sum_sq = value_sum * value_sum
    return VariantSnapshot(
        name=name,
        is_control=is_control,
        weight=draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0, 1e6))),
        exposures=n,
        conversions=draw(st.integers(0, n)) if metric_type == "conversion" else 0,
        errors=draw(st.integers(0, n)),
        value_sum=value_sum,
        value_sum_sq=value_sum_sq,
        latency=draw(_latencies),
    )


@st.composite
def snapshots(draw: st.DrawFn) -> ExperimentSnapshot:
    metric_type = draw(st.sampled_from(["conversion", "mean"]))
    count = draw(st.integers(1, 4))
    controls = draw(st.sampled_from(["first", "none", "two"]))
    vs = tuple(
        draw(variants(f"v{i}", (i == 0 and controls != "none") or (i == 1 and controls == "two"), metric_type))
        for i in range(count)
    )
    started = draw(st.one_of(st.none(), st.floats(0, 24 * 400).map(lambda h: NOW - timedelta(hours=h))))
    alerts = tuple(
        AlertInfo(i, "payments are down", NOW - timedelta(hours=h), g)
        for i, (h, g) in enumerate(draw(st.lists(st.tuples(st.floats(0, 24 * 100), st.booleans()), max_size=2)))
    )
    return ExperimentSnapshot(
        id=1,
        name=draw(st.sampled_from(["exp-1", "checkout"])),
        status=draw(st.sampled_from(["running", "running", "paused"])),
        started_at=started,
        metric_type=metric_type,  # type: ignore[arg-type]
        priority="normal",
        variants=vs,
        now=NOW,
        active_promotion_id=draw(st.sampled_from([None, None, "6f1c2a9e"])),
        critical_alerts=alerts,
        promotions_in_guard_window=draw(st.integers(0, 20)),
    )


def _assert_sound(decision: Decision) -> None:
    assert decision.eligible == (not decision.reasons and decision.winner is not None)
    assert all(r for r in decision.reasons)
    assert math.isfinite(decision.confidence) and math.isfinite(decision.improvement)
    data = decision.to_check_data()  # what the API, audit log and notifications serialise
    assert data["experimentName"] == decision.experiment_name


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=valid_configs(), snapshot=snapshots())
@example(  # the configuration from the issue: minConfidence 50 on the default (sequential) method
    config=load_config(env={}, overrides={"thresholds": {"minConfidence": 50}}).config,
    snapshot=ExperimentSnapshot(
        id=1,
        name="checkout",
        status="running",
        started_at=NOW - timedelta(days=3),
        metric_type="conversion",
        priority="normal",
        now=NOW,
        variants=(
            VariantSnapshot("control", True, 1.0, 10_000, 1_000, 40, 0.0, 0.0, LatencySketch()),
            VariantSnapshot("variant-b", False, 1.0, 10_000, 1_150, 45, 0.0, 0.0, LatencySketch()),
        ),
    ),
)
def test_every_valid_config_decides_every_possible_snapshot(
    config: AutoPromotionConfig, snapshot: ExperimentSnapshot
) -> None:
    _assert_sound(decide(snapshot, config))
    # The scan's path: statistics of many experiments computed together, then the same decision.
    analyses = _vectorised_analyses(
        [{"id": snapshot.id, "config": {}, "metric_type": snapshot.metric_type}],
        {snapshot.id: list(snapshot.variants)},
        config,
    )
    if snapshot.id in analyses:
        _assert_sound(decide(snapshot, config, analyses[snapshot.id]))


@pytest.mark.parametrize("method", ["sequential", "fixed"])
@pytest.mark.parametrize("confidence", [50.0, 50.0001, 60.0, 75.0])
def test_a_low_min_confidence_still_runs_every_safety_check(method: str, confidence: float) -> None:
    """At minConfidence 50 the error-rate check still compares the arms: a doubled error rate blocks."""
    config = load_config(env={}, overrides={"method": method, "thresholds": {"minConfidence": confidence}}).config
    snapshot = ExperimentSnapshot(
        id=1,
        name="checkout",
        status="running",
        started_at=NOW - timedelta(days=3),
        metric_type="conversion",
        priority="normal",
        now=NOW,
        variants=(
            VariantSnapshot("control", True, 1.0, 20_000, 2_000, 100, 0.0, 0.0, LatencySketch()),
            VariantSnapshot("variant-b", False, 1.0, 20_000, 2_400, 200, 0.0, 0.0, LatencySketch()),
        ),
    )
    decision = decide(snapshot, config)
    check = next(c for c in decision.safety_checks if c.name == "Error Rate Check")
    assert decision.winner is not None and decision.winner.variant == "variant-b"
    assert not check.passed and "significantly above control" in check.message
    assert decision.eligible is False
