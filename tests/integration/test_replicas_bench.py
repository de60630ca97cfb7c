"""The replicas benchmark's smoke run: it runs and prints the counts it promises (no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_replicas_quick_reports_evaluations_per_folded_batch(admin_url: str) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AUTO_PROMOTION_")}, "DATABASE_URL": admin_url}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_replicas.py"), "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["bench"] == "replicas" and result["quick"] is True
    assert set(result["steady"]) == set(result["sequential"]) == {"1", "2"}
    for run in result["steady"].values():
        assert run["updates_folded"] == run["updates"]  # every update folded once, whatever the replicas
        assert run["folded_batches"] > 0 and run["evaluations"] > 0
    for run in result["sequential"].values():
        assert run["evaluations"] == run["updates"]  # one evaluation per update, with 1 and with 2 replicas
    assert result["max_ratio_to_one_replica"] is not None
