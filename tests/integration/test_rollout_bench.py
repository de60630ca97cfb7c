"""The rollout benchmark's smoke run: it runs and prints the JSON it promises (no timing is asserted)."""

from __future__ import annotations

import pytest

from tests.support.bench import run_quick_bench


@pytest.mark.slow
def test_bench_rollout_quick_prints_every_section(admin_url: str) -> None:
    result = run_quick_bench("bench_rollout.py", admin_url)
    assert result["bench"] == "rollout" and result["quick"] is True
    assert {"cpu", "logical_cpus", "postgresql", "load_average_at_start"} <= set(result["machine"])
    assert len(result["false_rollback"]["scenarios"]) == 2
    assert {"false_rollback_rate", "wilson95", "runs"} <= set(result["false_rollback"]["scenarios"][0])
    assert result["detection"]["caught_in_step"] > 0 and result["detection"]["median_winner_exposures"] > 0
    latency = result["breach_latency"]
    assert latency["rolled_back"] == latency["triggers"] and latency["false_rollbacks"] == 0
    assert {"p50_ms", "p99_ms", "achieved_rate_updates_per_s"} <= set(latency)
    # The same run's baseline: every promotion trigger promoted, and the ratio is of two measured medians.
    baseline = latency["baseline_promotion"]
    assert baseline["promotions"] == 5 and baseline["p50_ms"] > 0
    assert abs(latency["breach_p50_over_promotion_p50"] - latency["p50_ms"] / baseline["p50_ms"]) < 0.01
