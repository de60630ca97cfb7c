"""The replicas benchmark's smoke run: it runs and prints the counts it promises (no timing is asserted)."""

from __future__ import annotations

import pytest

from tests.support.bench import run_quick_bench


@pytest.mark.slow
def test_bench_replicas_quick_reports_evaluations_per_folded_batch(admin_url: str) -> None:
    result = run_quick_bench("bench_replicas.py", admin_url)
    assert result["bench"] == "replicas" and result["quick"] is True
    assert set(result["steady"]) == set(result["sequential"]) == {"1", "2"}
    for run in result["steady"].values():
        assert run["updates_folded"] == run["updates"]  # every update folded once, whatever the replicas
        assert run["folded_batches"] > 0 and run["evaluations"] > 0
    for run in result["sequential"].values():
        assert run["evaluations"] == run["updates"]  # one evaluation per update, with 1 and with 2 replicas
    assert result["max_ratio_to_one_replica"] is not None
