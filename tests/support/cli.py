"""Run the `autopromote` command as a user does: a fresh interpreter, only the environment given."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(*args: str, db_url: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AUTO_PROMOTION_", "DATABASE_URL"))}
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, "DATABASE_URL": db_url, **(env or {})},
    )
