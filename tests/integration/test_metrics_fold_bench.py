"""The metrics fold benchmark's smoke run: it runs, drains every backlog and counts each update once (no timing is
asserted)."""

from __future__ import annotations

import pytest

from tests.support.bench import run_quick_bench


@pytest.mark.slow
def test_bench_metrics_fold_quick_folds_every_update_once(admin_url: str) -> None:
    result = run_quick_bench("bench_metrics_fold.py", admin_url)
    assert result["bench"] == "metrics_fold" and result["quick"] is True
    fold = result["fold"]
    assert fold["metrics"]["exactly_once"] and fold["metrics"]["worker"]["exactly_once"]
    assert fold["mixed"]["exactly_once"] and fold["builtin"]["exactly_once"]
    assert fold["metrics"]["sql_only"]["updates_per_s"] > 0 and fold["producer"]["calls_per_s"] > 0
