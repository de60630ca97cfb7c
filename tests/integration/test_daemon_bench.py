"""The daemon benchmark's smoke run: it runs and prints the JSON it promises (no timing is asserted)."""

from __future__ import annotations

import pytest

from tests.support.bench import run_quick_bench


@pytest.mark.slow
def test_bench_daemon_quick_prints_every_section(admin_url: str) -> None:
    result = run_quick_bench("bench_daemon.py", admin_url)
    assert result["bench"] == "daemon" and result["quick"] is True
    assert {"cpu", "logical_cpus", "memory_gb", "python", "postgresql"} <= set(result["machine"])
    assert {"p50_ms", "p99_ms", "achieved_rate_updates_per_s", "promotions"} <= set(result["decision_latency"])
    assert result["decision_latency"]["promotions"] == result["decision_latency"]["triggers"]
    assert {"worker_updates_per_s", "sql_only_updates_per_s"} <= set(result["fold_backlog"])
    assert result["fold_backlog"]["exactly_once"] is True
    assert {"producer_updates_per_s", "max_backlog"} <= set(result["fold_keep_up"])
    assert result["fold_keep_up"]["exactly_once"] is True
    assert {"seconds_median", "scanned"} <= set(result["scan"])
    assert {"rss_mb_max", "rss_mb_final"} <= set(result["memory"])
    assert {"p50_ms", "max_ms"} <= set(result["recovery"])
    assert {"not_eligible", "eligible_promote", "decide_ms"} <= set(result["engine_breakdown"])
    assert set(result["targets"]) == {
        "decision_latency_p50_ms",
        "decision_latency_p99_ms",
        "fold_updates_per_s",
        "scan_10k_seconds",
        "rss_10k_mb",
    }
