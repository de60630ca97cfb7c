"""The ETA: what it says in each situation, that its numbers hang together, and its calibration by simulation
(the decision's own statistics, checked every 50 exposures per arm; bench/bench_stats.py runs the full version)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from worker.config import load_config
from worker.decide import ExperimentSnapshot, VariantSnapshot, decide
from worker.domain.eta import EtaInput, EtaRequest, check_eta, check_etas, estimate_etas
from worker.stats import LatencySketch, analyze_many
from worker.stats.planning import auto_n_star, plan_sample_size, z_diffusion

NOW = datetime(2026, 5, 9, 12, 0, tzinfo=UTC)


def cfg(**overrides: Any) -> Any:
    base: dict[str, Any] = {"thresholds": {"minSampleSize": 100, "minRuntimeHours": 1, "minImprovement": 5.0}}
    base.update(overrides)
    return load_config(env={}, overrides=base).config


def snapshot(control: tuple[int, int], treatment: tuple[int, int], *, hours: float | None = 24.0) -> ExperimentSnapshot:
    def v(name: str, n: int, c: int, is_control: bool) -> VariantSnapshot:
        return VariantSnapshot(name, is_control, 50.0, n, c, 0, 0.0, 0.0, LatencySketch())

    return ExperimentSnapshot(
        id=1,
        name="checkout",
        status="running",
        started_at=None if hours is None else NOW - timedelta(hours=hours),
        metric_type="conversion",
        priority="normal",
        variants=(v("control", *control, True), v("b", *treatment, False)),
        now=NOW,
    )


def eta_of(snap: ExperimentSnapshot, config: Any) -> dict[str, Any] | None:
    data = decide(snap, config).to_check_data()
    return check_eta(EtaRequest(data, config, snap.status, snap.started_at, snap.now))


def test_an_eligible_experiment_is_decided_now() -> None:
    eta = eta_of(snapshot((40_000, 4_000), (40_000, 4_600)), cfg())
    assert eta is not None
    assert eta["message"] == "eligible now" and eta["exposuresRemainingPerArm"] == 0 and eta["hoursRemaining"] == 0


def test_a_lift_consistent_with_the_mde_is_projected_with_the_mde() -> None:
    eta = eta_of(snapshot((10_000, 1_000), (10_000, 1_040)), cfg())
    assert eta is not None and eta["basis"] == "planned"
    lo, hi = eta["interval80"]
    assert 0 < lo <= eta["exposuresRemainingPerArm"] <= hi
    # 10,000 per arm in 24 h: the hours are the exposures at that rate
    assert eta["hoursRemaining"] == pytest.approx(eta["exposuresRemainingPerArm"] / (10_000 / 24), rel=1e-3)
    h_lo, h_hi = eta["hoursInterval80"]
    assert h_lo <= eta["hoursRemaining"] <= h_hi
    assert "if the true lift is the MDE (+5.0%" in eta["message"]


def test_an_effect_clearly_below_the_mde_will_not_reach_significance() -> None:
    eta = eta_of(snapshot((100_000, 10_000), (100_000, 9_800)), cfg())
    assert eta is not None
    assert eta["message"].startswith("will not reach significance: the effect is below the MDE")
    assert eta["exposuresRemainingPerArm"] is None and eta["hoursRemaining"] is None and eta["interval80"] is None


def test_an_effect_clearly_above_the_mde_is_projected_with_the_observed_lift() -> None:
    eta = eta_of(snapshot((20_000, 2_000), (20_000, 2_330)), cfg(sequentialTuning=1e6))
    assert eta is not None and eta["basis"] == "observed" and eta["exposuresRemainingPerArm"] > 0


def test_without_started_at_the_hours_are_unknown() -> None:
    eta = eta_of(snapshot((10_000, 1_000), (10_000, 1_040), hours=None), cfg())
    assert eta is not None
    assert eta["hoursRemaining"] is None and eta["exposuresRemainingPerArm"] > 0
    assert "exposure rate unknown" in eta["message"]


def test_a_significant_winner_waits_for_min_sample_size() -> None:
    config = cfg(thresholds={"minSampleSize": 60_000, "minRuntimeHours": 1, "minImprovement": 5.0})
    eta = eta_of(snapshot((40_000, 4_000), (40_000, 4_600)), config)
    assert eta is not None
    assert eta["exposuresRemainingPerArm"] == 20_000 and eta["hoursRemaining"] == pytest.approx(12.0)
    assert eta["message"].startswith("significant; waiting for minSampleSize")


def test_experiments_that_are_not_running_have_no_eta() -> None:
    snap = snapshot((10_000, 1_000), (10_000, 1_040))
    data = decide(snap, cfg()).to_check_data()
    assert check_etas([EtaRequest(data, cfg(), "paused", snap.started_at, NOW)]) == [None]


def test_more_traffic_per_hour_means_fewer_hours() -> None:
    slow = eta_of(snapshot((10_000, 1_000), (10_000, 1_040), hours=48), cfg())
    fast = eta_of(snapshot((10_000, 1_000), (10_000, 1_040), hours=12), cfg())
    assert slow is not None and fast is not None
    assert slow["exposuresRemainingPerArm"] == fast["exposuresRemainingPerArm"]
    assert slow["hoursRemaining"] == pytest.approx(4 * fast["hoursRemaining"], rel=1e-3)


@pytest.mark.slow
def test_the_eta_is_calibrated_by_simulation() -> None:
    """True lift = MDE = minImprovement (+10% at 10%), N* auto-tuned; at a quarter of the fixed horizon the
    predicted median and 80% interval against where 600 simulated runs really stopped (looser bounds than the
    bench's 2,000 runs: the check is that the projection is not off by much, not its third digit)."""
    p_a, mde, step, sims = 0.10, 0.10, 50, 600
    nf = plan_sample_size("conversion", p_a, mde, method="fixed").fixed_horizon_exposures_per_arm
    n_star = auto_n_star(nf)
    rng = np.random.default_rng(16)
    conv = np.zeros((sims, 2))
    first = np.full(sims, np.inf)
    checkpoint = int(0.25 * nf / step)
    inputs: list[EtaInput] = []
    for look in range(int(6 * nf / step)):
        conv += rng.binomial(step, [p_a, p_a * (1 + mde)], size=(sims, 2))
        n = step * (look + 1)
        res = analyze_many(np.full((sims, 2), n), conv, alpha=0.05, n_star=n_star)
        if look + 1 == checkpoint:
            inputs = [
                EtaInput(
                    float(res.lift[e, 0]),
                    float(res.se[e, 0]),
                    n,
                    n,
                    n / 1000.0,
                    "sequential",
                    0.05,
                    0.05,
                    n_star,
                    mde,
                    False,
                    False,
                    1,
                    0.0,
                    kappa=float(z_diffusion("conversion", conv[e, 0] / n, conv[e, 0] / n * (1 + mde))),
                )
                for e in range(sims)
            ]
        first[np.isinf(first) & res.better[:, 0] & (res.lift[:, 0] >= mde)] = n
    cp = step * checkpoint
    runs = [e for e in range(sims) if first[e] > cp]
    etas = estimate_etas([inputs[e] for e in runs])
    pairs = [(first[e], eta) for e, eta in zip(runs, etas, strict=True) if eta.interval80 is not None]
    assert len(pairs) > 0.9 * len(runs)
    predicted = np.array([cp + (eta.exposures_remaining_per_arm or 0) for _, eta in pairs], dtype=float)
    actual = np.array([a for a, _ in pairs])
    bounds = [eta.interval80 for _, eta in pairs if eta.interval80 is not None]
    lo = np.array([cp + b[0] for b in bounds], dtype=float)
    hi = np.array([np.inf if b[1] is None else cp + b[1] for b in bounds], dtype=float)
    horizon = step * int(6 * nf / step)
    covered = np.where(np.isinf(actual), hi >= horizon, (actual >= lo) & (actual <= hi))
    assert 0.8 <= np.median(predicted) / np.median(actual) <= 1.25
    assert 0.7 <= covered.mean() <= 0.9
