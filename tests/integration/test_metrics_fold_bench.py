"""The metrics fold benchmark's smoke run: it runs, drains every backlog and counts each update once (no timing is
asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_metrics_fold_quick_folds_every_update_once(admin_url: str) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AUTO_PROMOTION_")}, "DATABASE_URL": admin_url}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_metrics_fold.py"), "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["bench"] == "metrics_fold" and result["quick"] is True
    fold = result["fold"]
    assert fold["metrics"]["exactly_once"] and fold["metrics"]["worker"]["exactly_once"]
    assert fold["mixed"]["exactly_once"] and fold["builtin"]["exactly_once"]
    assert fold["metrics"]["sql_only"]["updates_per_s"] > 0 and fold["producer"]["calls_per_s"] > 0
