"""The statistics benchmark runs and prints one JSON object with the keys reports rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_stats.py"


@pytest.mark.slow
def test_bench_stats_quick_prints_one_json_object_with_expected_keys() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # the whole of stdout is one JSON document
    assert out["quick"] is True
    assert {"platform", "cpu_count", "python"} <= out["machine"].keys()
    for method in ("sequential", "fixed"):
        assert {"median_us", "p99_us"} <= out["analyze_experiment_2_variants"][method].keys()
        assert "median_ms" in out["analyze_many_10000x3"][method]
    power = out["power"]
    assert {
        "sequential_median_n_per_arm_to_winner",
        "fixed_n_per_arm_80pct_power",
        "ratio_sequential_median_to_fixed_n",
    } <= power.keys()
    aa = out["aa_false_positive_rate"]
    for looks in (10, 50, 200):
        assert set(aa[f"looks_{looks}"]) == {"sequential", "fixed"}
        assert all(0.0 <= r <= 1.0 for r in aa[f"looks_{looks}"].values())
    assert out["planner"]["fixed_max_relative_error_vs_closed_form"] < 0.01  # exact, not simulated
    assert "sequential_max_relative_error_vs_simulation" in out["planner"]
    for step in ("look_every_100", "look_every_500"):
        assert {"n_star_5000", "auto_planned_sample_size", "auto_from_observed_control"} <= set(
            out["sequential_tuning"][step]
        )
    eta = out["eta_calibration"]["true_lift_is_mde"]
    assert {"ratio_median_predicted_to_actual", "interval80_coverage"} <= eta.keys()


@pytest.mark.slow
def test_bench_stats_quick_reports_cuped_against_its_unadjusted_twin() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    cuped = json.loads(proc.stdout)["cuped"]
    assert [r["rho"] for r in cuped["time_to_promote"]] == [0.5, 0.7]
    for r in cuped["time_to_promote"]:
        med = r["median_exposures_per_arm_to_promote"]
        assert med["cuped"] < med["unadjusted"]  # noisy at --quick sizes, but never the other way round
        assert 0.0 < r["fewer_exposures_with_cuped"] < 1.0
        assert abs(r["median_variance_reduction_at_promotion"] - r["rho_squared"]) < 0.05
    for r in cuped["aa_200_looks"]:
        assert r["looks"] == 200
        assert 0.0 <= r["false_promotion_rate"]["cuped"] <= 0.1
