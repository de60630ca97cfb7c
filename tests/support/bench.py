"""Running a bench program's smoke run (``--quick``) from a test: its JSON, or the test fails with its stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_quick_bench(script: str, database_url: str, *, timeout: float = 280) -> dict[str, Any]:
    """``python bench/<script> --quick`` against ``database_url`` (no AUTO_PROMOTION_* of the test run's own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTO_PROMOTION_")}
    env["DATABASE_URL"] = database_url
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    return result
