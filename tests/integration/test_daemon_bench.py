"""The daemon benchmark's smoke run: it runs and prints the JSON it promises (no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_daemon_quick_prints_every_section(admin_url: str) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AUTO_PROMOTION_")}, "DATABASE_URL": admin_url}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_daemon.py"), "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
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
