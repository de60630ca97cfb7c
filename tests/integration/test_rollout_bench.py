"""The rollout benchmark's smoke run: it runs and prints the JSON it promises (no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_rollout_quick_prints_every_section(admin_url: str) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AUTO_PROMOTION_")}, "DATABASE_URL": admin_url}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_rollout.py"), "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["bench"] == "rollout" and result["quick"] is True
    assert {"cpu", "logical_cpus", "postgresql", "load_average_at_start"} <= set(result["machine"])
    assert len(result["false_rollback"]["scenarios"]) == 2
    assert {"false_rollback_rate", "wilson95", "runs"} <= set(result["false_rollback"]["scenarios"][0])
    assert result["detection"]["caught_in_step"] > 0 and result["detection"]["median_winner_exposures"] > 0
    latency = result["breach_latency"]
    assert latency["rolled_back"] == latency["triggers"] and latency["false_rollbacks"] == 0
    assert {"p50_ms", "p99_ms", "achieved_rate_updates_per_s"} <= set(latency)
