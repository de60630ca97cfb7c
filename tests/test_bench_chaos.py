"""The chaos benchmark's smoke run: it runs on its own embedded server and prints the JSON it promises, with exact
producer accounting (nothing lost, nothing folded twice). Timings and worker exits are reported, not asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_chaos_quick_reports_every_key_and_loses_nothing() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTO_PROMOTION_", "AUTO_NOTIFY"))
           and k != "DATABASE_URL"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_chaos.py"), "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=400, check=False)
    # Exit 1 only says a hard check failed (on a daemon that still dies of some faults: worker_exits); the JSON
    # is printed either way, and a crash of the bench itself prints none.
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["bench"] == "chaos" and result["params"]["quick"] is True
    for key in ("lost_updates", "double_folded_updates", "duplicate_promotions", "promotions_without_notifications",
                "notifications_delivered_twice_by_key", "worker_exits", "recovery", "machine", "faults"):
        assert key in result, key
    assert {f["kind"] for f in result["faults"]} == {"kill9", "terminate", "restart", "read_only"}
    for kind in ("kill9", "terminate", "restart", "read_only"):
        assert {"faults", "p50_s", "max_s"} <= set(result["recovery"][kind])
    updates = result["updates"]
    assert updates["updates_committed"] > 0 and updates["writes_committed"] > 0
    assert result["lost_updates"] == 0 and updates["lost"] == {"updates": 0, "exposures": 0, "conversions": 0,
                                                               "errors": 0}
    assert result["double_folded_updates"] == 0 and sum(updates["double_folded"].values()) == 0
    assert updates["acknowledged_but_not_committed"] == 0 and updates["queue_rows_left"] == 0
    assert result["duplicate_promotions"] == 0
    assert sum(k["promoted"] for k in result["promotions"]["by_kind"].values()) > 0
