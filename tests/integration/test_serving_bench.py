"""The serving benchmark's smoke run: it runs and prints the JSON it promises (no timing is asserted)."""

from __future__ import annotations

import pytest

from tests.support.bench import run_quick_bench


@pytest.mark.slow
def test_bench_serving_quick_prints_every_section(admin_url: str) -> None:
    result = run_quick_bench("bench_serving.py", admin_url)
    assert result["bench"] == "serving" and result["quick"] is True
    assert {"cpu", "logical_cpus", "python", "postgresql"} <= set(result["machine"])
    assert result["propagation"]["changes"] == 6  # 3 promotions and 3 rollbacks, each seen by the other process
    assert {"p50_ms", "p99_ms", "promotion_p50_ms", "rollback_p50_ms"} <= set(result["propagation"])
    assert {"provider_resolve_median_us", "openfeature_client_median_us"} <= set(result["evaluation"])
    assert result["sql_assign"]["user_n_assignments_per_s"] > 0
    assert result["python_assign"]["user_n_assignments_per_s"] > 0
