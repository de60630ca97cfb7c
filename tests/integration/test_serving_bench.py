"""The serving benchmark's smoke run: it runs and prints the JSON it promises (no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_serving_quick_prints_every_section(admin_url: str) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AUTO_PROMOTION_")}, "DATABASE_URL": admin_url}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_serving.py"), "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["bench"] == "serving" and result["quick"] is True
    assert {"cpu", "logical_cpus", "python", "postgresql"} <= set(result["machine"])
    assert result["propagation"]["changes"] == 6  # 3 promotions and 3 rollbacks, each seen by the other process
    assert {"p50_ms", "p99_ms", "promotion_p50_ms", "rollback_p50_ms"} <= set(result["propagation"])
    assert {"provider_resolve_median_us", "openfeature_client_median_us"} <= set(result["evaluation"])
    assert result["sql_assign"]["user_n_assignments_per_s"] > 0
    assert result["python_assign"]["user_n_assignments_per_s"] > 0
