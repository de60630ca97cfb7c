"""Benchmark of the statistics core: speed, sequential power cost, A/A false-positive rates under peeking, and the
planner, sequentialTuning auto and the ETA against simulations.

Prints ONE JSON object on stdout and asserts nothing. `--quick` runs a seconds-long smoke version with
small simulation sizes (its numbers are noisy; use the full run for reporting).

    .venv/bin/python bench/bench_stats.py [--quick] [--seed N]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy
from scipy import optimize
from scipy import stats as sps

# Runnable as a script from anywhere: make the repository importable without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.config import load_config
from worker.domain.eta import EtaInput, estimate_etas
from worker.domain.tuning import sequential_n_star
from worker.stats import VariantStats, analyze_experiment, analyze_many
from worker.stats.cuped_vectorized import cuped_many
from worker.stats.models import Method
from worker.stats.planning import auto_n_star, plan_sample_size, relative_lift_variance, z_diffusion

ALPHA = 0.05
N_STAR = 5000.0
METHODS: tuple[Method, ...] = ("sequential", "fixed")


def percentile_us(samples_ns: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(samples_ns, dtype=np.float64), q)) / 1000.0


def bench_scalar(iterations: int) -> dict[str, Any]:
    """Wall time of one 2-variant analyze_experiment call (conversion metric, realistic counts)."""
    variants = [VariantStats("control", True, 10_000, 1_000), VariantStats("b", False, 10_050, 1_090)]
    out: dict[str, Any] = {"iterations": iterations}
    for method in METHODS:
        for _ in range(min(1000, iterations)):  # warm caches and scipy's ufunc dispatch
            analyze_experiment(variants, method=method)
        samples: list[int] = []
        gc.disable()
        try:
            for _ in range(iterations):
                t0 = time.perf_counter_ns()
                analyze_experiment(variants, method=method)
                samples.append(time.perf_counter_ns() - t0)
        finally:
            gc.enable()
        out[method] = {
            "median_us": round(percentile_us(samples, 50), 2),
            "p99_us": round(percentile_us(samples, 99), 2),
        }
    return out


def bench_vectorised(repeats: int, seed: int) -> dict[str, Any]:
    """Wall time of analyze_many on 10,000 experiments x 3 variants."""
    rng = np.random.default_rng(seed)
    n = rng.integers(1_000, 200_000, size=(10_000, 3))
    c = rng.binomial(n, 0.1)
    out: dict[str, Any] = {"experiments": 10_000, "variants": 3, "repeats": repeats}
    for method in METHODS:
        analyze_many(n, c, method=method)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            analyze_many(n, c, method=method)
            times.append(time.perf_counter() - t0)
        out[method] = {"median_ms": round(1000 * float(np.median(times)), 2), "max_ms": round(1000 * max(times), 2)}
    return out


def fixed_sample_size(p_a: float, p_b: float, power: float, alpha: float) -> dict[str, float]:
    """Per-arm n for a two-sided fixed-horizon test at `power`: textbook and relative-scale versions."""
    z = float(sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power))
    var_a, var_b = p_a * (1 - p_a), p_b * (1 - p_b)
    lift = (p_b - p_a) / p_a
    # Delta-method variance of the relative lift, times n: the test analyze_experiment actually runs. It
    # needs ~10% more users than the textbook two-proportion z-test because r**2 inflates the control term.
    rel_var = (var_b + var_a * (p_b / p_a) ** 2) / p_a**2
    return {
        "two_proportion_z": z * z * (var_a + var_b) / (p_b - p_a) ** 2,
        "relative_delta_method": z * z * rel_var / lift**2,
    }


def bench_power(sims: int, seed: int) -> dict[str, Any]:
    """True +10% relative lift at a 10% baseline: when does the sequential test first find the winner?"""
    p_a, p_b, step = 0.10, 0.11, 500
    n_fixed = fixed_sample_size(p_a, p_b, 0.8, ALPHA)
    n_z, n_rel = n_fixed["two_proportion_z"], n_fixed["relative_delta_method"]
    max_looks = int(np.ceil(5 * n_rel / step))
    rng = np.random.default_rng(seed)
    conv = np.cumsum(rng.binomial(step, [p_a, p_b], size=(max_looks, sims, 2)), axis=0)
    first = np.full(sims, np.inf)
    fixed_power = 0.0
    # The first look at or beyond the relative-scale horizon, where the fixed test's power is read off.
    horizon_look = int(np.ceil(n_rel / step)) - 1
    for look in range(max_looks):
        exposures = np.full((sims, 2), step * (look + 1))
        res = analyze_many(exposures, conv[look], method="sequential", alpha=ALPHA, n_star=N_STAR)
        hit = res.better[:, 0] & np.isinf(first)
        first[hit] = step * (look + 1)
        if look == horizon_look:
            fixed = analyze_many(exposures, conv[look], method="fixed", alpha=ALPHA)
            fixed_power = float(fixed.better[:, 0].mean())
    found = np.isfinite(first)
    median = float(np.median(first)) if found.mean() > 0.5 else None
    return {
        "baseline_rate": p_a,
        "true_relative_lift": round((p_b - p_a) / p_a, 6),
        "look_every_per_arm": step,
        "n_star": N_STAR,
        "simulations": sims,
        "fixed_n_per_arm_80pct_power": round(n_z, 1),
        "fixed_n_per_arm_80pct_power_relative_test": round(n_rel, 1),
        "fixed_power_observed_at_relative_test_n": round(fixed_power, 4),
        "fixed_power_observed_at_n": step * (horizon_look + 1),
        "sequential_median_n_per_arm_to_winner": median,
        "sequential_found_winner_fraction": round(float(found.mean()), 4),
        "sequential_found_by_relative_test_n_fraction": round(float((first <= step * (horizon_look + 1)).mean()), 4),
        "ratio_sequential_median_to_fixed_n": None if median is None else round(median / n_z, 4),
        "ratio_sequential_median_to_fixed_n_relative_test": None if median is None else round(median / n_rel, 4),
        "max_n_per_arm_simulated": step * max_looks,
    }


def bench_aa(sims: int, seed: int) -> dict[str, Any]:
    """A/A false-positive rates (ever significant) with 10, 50 and 200 equally spaced looks to one horizon."""
    horizon, looks_max = 20_000, 200
    step = horizon // looks_max
    rng = np.random.default_rng(seed)
    conv = np.cumsum(rng.binomial(step, 0.1, size=(looks_max, sims, 2)), axis=0)
    sig = {m: np.zeros((looks_max, sims), dtype=bool) for m in METHODS}
    for look in range(looks_max):
        exposures = np.full((sims, 2), step * (look + 1))
        for m in METHODS:
            sig[m][look] = analyze_many(exposures, conv[look], method=m, alpha=ALPHA, n_star=N_STAR).significant[:, 0]
    out: dict[str, Any] = {"alpha": ALPHA, "simulations": sims, "horizon_per_arm": horizon, "baseline_rate": 0.1}
    for looks in (10, 50, 200):
        # Nested grids: 10 looks use every 20th of the 200 batches, so all three see the same data.
        idx = np.arange(looks_max // looks - 1, looks_max, looks_max // looks)
        out[f"looks_{looks}"] = {m: round(float(sig[m][idx].any(axis=0).mean()), 4) for m in METHODS}
    return out


# ------------------------------------------------------------------------------- planning, tuning, ETA
def _first_stops(
    p_a: float,
    lift: float,
    step: int,
    looks: int,
    sims: int,
    rng: np.random.Generator,
    n_star: Any,
    min_lift: float = 0.0,
) -> np.ndarray:
    """Exposures per arm at which each simulated experiment first has a winner (and, with min_lift, a lift at least
    that: minImprovement), checked every `step` per arm with the decision's statistics; inf when never.
    n_star may be a callable of (exposures, conversions) giving one N* per experiment (sequentialTuning auto)."""
    first = np.full(sims, np.inf)
    conv = np.zeros((sims, 2))
    for look in range(looks):
        conv += rng.binomial(step, [p_a, p_a * (1 + lift)], size=(sims, 2))
        exposures = np.full((sims, 2), step * (look + 1))
        ns = n_star(exposures, conv) if callable(n_star) else n_star
        res = analyze_many(exposures, conv, method="sequential", alpha=ALPHA, n_star=ns)
        hit = res.better[:, 0] & (res.lift[:, 0] >= min_lift) & np.isinf(first)
        first[hit] = step * (look + 1)
    return first


def bench_planner(sims: int, seed: int) -> dict[str, Any]:
    """The planner against a closed form (fixed) and against simulations of the decision's statistics (sequential)."""
    fixed_errors = []
    for metric, base, sd, mde, alpha, power, k in (
        ("conversion", 0.10, None, 0.10, 0.05, 0.8, 1),
        ("conversion", 0.02, None, 0.05, 0.05, 0.9, 1),
        ("conversion", 0.50, None, 0.02, 0.01, 0.8, 3),
        ("mean", 50.0, 20.0, 0.05, 0.05, 0.8, 1),
    ):
        plan = plan_sample_size(metric, base, mde, sd=sd, alpha=alpha, power=power, treatments=k, method="fixed")  # type: ignore[arg-type]
        v = relative_lift_variance(metric, base, mde, sd)  # type: ignore[arg-type]
        z = sps.norm.ppf(1 - alpha / k / 2)

        def gap(n: float, v: float = v, mde: float = mde, z: float = z, power: float = power) -> float:
            shift = mde * np.sqrt(n / v)
            return float(sps.norm.cdf(shift - z) + sps.norm.cdf(-shift - z)) - power

        reference = optimize.brentq(gap, 1.0, 1e12)
        fixed_errors.append(abs(plan.exposures_per_arm / reference - 1.0))
    rng = np.random.default_rng(seed)
    sequential = []
    for p_a, lift in ((0.10, 0.10), (0.05, 0.05)):
        plan = plan_sample_size("conversion", p_a, lift)
        nf = plan.fixed_horizon_exposures_per_arm
        step = max(1, nf // 200)
        stops = _first_stops(p_a, lift, step, 3 * 200, sims, rng, plan.n_star)
        q = float(np.quantile(stops, 0.8))
        batched = plan_sample_size("conversion", p_a, lift, look_every=step)
        sequential.append(
            {
                "baseline_rate": p_a,
                "mde": lift,
                "fixed_horizon_per_arm": nf,
                "planned_per_arm_80pct_power": plan.exposures_per_arm,
                "planned_per_arm_checked_every_step": batched.exposures_per_arm,
                "simulated_80pct_stopping_point": q,
                "look_every_per_arm": step,
                "relative_error_continuous_plan": round(abs(plan.exposures_per_arm / q - 1.0), 4),
                "relative_error_batched_plan": round(abs(batched.exposures_per_arm / q - 1.0), 4),
            }
        )
    return {
        "fixed_max_relative_error_vs_closed_form": round(max(fixed_errors), 6),
        "sequential_simulations": sims,
        "sequential": sequential,
        # Like for like: the plan for a test checked every `look_every_per_arm`, as the simulation checks it.
        "sequential_max_relative_error_vs_simulation": max(r["relative_error_batched_plan"] for r in sequential),
        "sequential_max_relative_error_continuous_plan": max(r["relative_error_continuous_plan"] for r in sequential),
    }


def bench_tuning(sims: int, seed: int) -> dict[str, Any]:
    """Median stopping point for a true lift equal to the MDE (+10% at 10%): N* = 5,000 against auto."""
    p_a, lift = 0.10, 0.10
    plan = plan_sample_size("conversion", p_a, lift, method="fixed")
    n_rel = plan.fixed_horizon_exposures_per_arm
    n_z = fixed_sample_size(p_a, p_a * (1 + lift), 0.8, ALPHA)["two_proportion_z"]
    out: dict[str, Any] = {
        "baseline_rate": p_a,
        "true_lift_equals_mde": lift,
        "simulations": sims,
        "fixed_n_per_arm_80pct_power": round(n_z, 1),
        "fixed_n_per_arm_80pct_power_relative_test": n_rel,
    }
    auto_cfg = load_config(
        env={}, overrides={"sequentialTuning": "auto", "thresholds": {"minImprovement": 10.0}}
    ).config

    def observed(exposures: np.ndarray, conv: np.ndarray) -> np.ndarray:
        # auto without plannedSampleSize: each experiment plans from its own control, as the decision does.
        return np.array(
            [
                sequential_n_star(auto_cfg, "conversion", VariantStats("c", True, int(n), int(c)))
                for n, c in zip(exposures[:, 0], conv[:, 0], strict=True)
            ]
        )

    # Checked every 100 exposures per arm (near the worker's checking after every fold), and every 500 (the look
    # step of "power" above, where N* = 5,000 gave the historic 1.22x).
    for step in (100, 500):
        looks = int(np.ceil(5 * n_rel / step))
        for name, n_star in (
            ("n_star_5000", N_STAR),
            ("auto_planned_sample_size", auto_n_star(n_rel)),
            ("auto_from_observed_control", observed),
        ):
            stops = _first_stops(p_a, lift, step, looks, sims, np.random.default_rng(seed), n_star)
            median = float(np.median(stops))
            out[f"look_every_{step}"] = out.get(f"look_every_{step}", {})
            out[f"look_every_{step}"][name] = {
                "n_star": n_star if not callable(n_star) else "per experiment",
                "median_n_per_arm": median,
                "ratio_to_fixed_n": round(median / n_z, 4),
                "ratio_to_fixed_n_relative_test": round(median / n_rel, 4),
                "found_fraction": round(float(np.isfinite(stops).mean()), 4),
            }
    # A/A with auto planned from the observed control at every look (N* moves with the data): still <= alpha?
    horizon, looks_aa = 20_000, 200
    aa_step = horizon // looks_aa
    aa_cfg = load_config(env={}, overrides={"sequentialTuning": "auto"}).config
    rng = np.random.default_rng(seed + 1)
    conv = np.zeros((sims, 2))
    ever = np.zeros(sims, dtype=bool)
    for look in range(looks_aa):
        conv += rng.binomial(aa_step, 0.1, size=(sims, 2))
        exposures = np.full((sims, 2), aa_step * (look + 1))
        ns = np.array(
            [
                sequential_n_star(aa_cfg, "conversion", VariantStats("c", True, int(exposures[0, 0]), int(c)))
                for c in conv[:, 0]
            ]
        )
        ever |= analyze_many(exposures, conv, method="sequential", alpha=ALPHA, n_star=ns).significant[:, 0]
    out["aa_auto_from_observed_control_200_looks"] = {
        "false_positive_rate": round(float(ever.mean()), 4),
        "simulations": sims,
        "horizon_per_arm": horizon,
        "min_improvement_pct": aa_cfg.thresholds.min_improvement,
    }
    return out


def bench_eta(sims: int, seed: int) -> dict[str, Any]:
    """ETA calibration: predicted stopping point (median, 80% interval) at a checkpoint against the simulated one.

    True lift = the MDE (= minImprovement; basis "planned"), and 1.5x the MDE (for information: the planned basis
    is then pessimistic); N* tuned by plannedSampleSize; 1,000 exposures per arm per hour; the decision's
    statistics and its minImprovement condition checked every 20 exposures per arm up to twice the fixed horizon,
    then every 500 up to 24 times it (with the true lift at minImprovement a tenth of the runs wander above and
    below it for long: those go on in steps of 5,000 to 300 times it); the checkpoint at a quarter of the fixed
    horizon, over the runs not yet stopped there. A run still going at the end is covered when the interval reaches
    past the end and missed otherwise ("interval80_coverage_runs_ended" leaves such runs out).
    """
    p_a, mde, rate = 0.10, 0.10, 1000.0
    plan = plan_sample_size("conversion", p_a, mde, method="fixed")
    nf = plan.fixed_horizon_exposures_per_arm
    n_star = auto_n_star(nf)
    fine, coarse = 20, 500
    checkpoint = fine * int(0.25 * nf / fine)
    schedule = list(range(fine, 2 * nf, fine))
    schedule += list(range(schedule[-1] + coarse, 24 * nf, coarse))
    out: dict[str, Any] = {"fixed_horizon_per_arm": nf, "checkpoint_per_arm": checkpoint, "simulations": sims}
    for name, lift in (("true_lift_is_mde", mde), ("true_lift_is_1_5x_mde", 1.5 * mde)):
        rng = np.random.default_rng(seed)
        conv = np.zeros((sims, 2))
        first = np.full(sims, np.inf)
        inputs: list[EtaInput] = []
        n_prev = 0
        horizon = schedule[-1]
        for n in schedule:
            conv += rng.binomial(n - n_prev, [p_a, p_a * (1 + lift)], size=(sims, 2))
            n_prev = n
            res = analyze_many(np.full((sims, 2), n), conv, method="sequential", alpha=ALPHA, n_star=n_star)
            if n == checkpoint:
                inputs = [
                    EtaInput(
                        lift=float(res.lift[e, 0]),
                        se=float(res.se[e, 0]),
                        n_control=n,
                        n_treatment=n,
                        hours_observed=n / rate,
                        method="sequential",
                        alpha=ALPHA,
                        alpha_test=ALPHA,
                        n_star=n_star,
                        mde=mde,
                        significant=False,
                        eligible=False,
                        min_sample_size=1,
                        min_runtime_hours=0.0,
                        # as eta_input_from_check computes it: at the control's observed rate and the MDE
                        kappa=float(z_diffusion("conversion", conv[e, 0] / n, conv[e, 0] / n * (1 + mde))),
                    )
                    for e in range(sims)
                ]
            hit = res.better[:, 0] & (res.lift[:, 0] >= mde) & np.isinf(first)
            first[hit] = n
        # The runs still going (the lift hovering at minImprovement): on, in steps of 5,000, to 300 times the fixed
        # horizon, so that few stay undecided about the interval.
        rest = np.flatnonzero(np.isinf(first))
        sub = conv[rest]
        for n in range(schedule[-1] + 5000, 300 * nf, 5000):
            sub = sub + rng.binomial(5000, [p_a, p_a * (1 + lift)], size=(len(rest), 2))
            res = analyze_many(np.full((len(rest), 2), n), sub, method="sequential", alpha=ALPHA, n_star=n_star)
            hit = res.better[:, 0] & (res.lift[:, 0] >= mde) & np.isinf(first[rest])
            first[rest[hit]] = n
            horizon = n
        open_runs = [e for e in range(sims) if first[e] > checkpoint]
        etas = estimate_etas([inputs[e] for e in open_runs])
        projected = [(first[e], eta) for e, eta in zip(open_runs, etas, strict=True) if eta.interval80 is not None]
        actual = np.array([a for a, _ in projected])
        predicted = np.array([checkpoint + (eta.exposures_remaining_per_arm or 0) for _, eta in projected], dtype=float)
        bounds = [eta.interval80 for _, eta in projected if eta.interval80 is not None]
        lo = np.array([checkpoint + b[0] for b in bounds], dtype=float)
        hi = np.array([np.inf if b[1] is None else checkpoint + b[1] for b in bounds], dtype=float)
        ended = np.isfinite(actual)
        covered = np.where(ended, (actual >= lo) & (actual <= hi), hi > horizon)
        bases = [eta.basis for _, eta in projected]
        out[name] = {
            "true_lift": lift,
            "runs_open_at_checkpoint": len(open_runs),
            "runs_projected": len(projected),
            "basis_planned_fraction": round(bases.count("planned") / max(len(bases), 1), 4),
            "median_predicted_stopping_per_arm": float(np.median(predicted)),
            "median_actual_stopping_per_arm": float(np.median(actual)),
            "ratio_median_predicted_to_actual": round(float(np.median(predicted) / np.median(actual)), 4),
            "interval80_coverage": round(float(covered.mean()), 4),
            "interval80_coverage_runs_ended": round(float(covered[ended].mean()), 4),
            "below_interval": round(float((ended & (actual < lo)).mean()), 4),
            "above_interval": round(float(np.where(ended, actual > hi, hi <= horizon).mean()), 4),
            "still_running_at_end": int((~ended).sum()),
            "simulated_until_per_arm": horizon,
        }
    return out


# --- CUPED (issue "Decide with fewer users", part 1) ---------------------------------------------------------------

CUPED_MEAN, CUPED_SD, CUPED_BATCH = 10.0, 10.0, 100  # normal outcomes, coefficient of variation 1; looks every 100/arm


class _CupedSums:
    """Running per-unit sums of `sims` two-arm experiments: y = mean·(1 + lift) + sd·(rho·x + sqrt(1 - rho²)·e)."""

    def __init__(self, sims: int, rho: float, lift: float, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.rho, self.sims = rho, sims
        self.means = np.array([CUPED_MEAN, CUPED_MEAN * (1.0 + lift)])
        self.sums = np.zeros((6, sims, 2))  # n, Σy, Σy², Σx, Σx², Σxy per arm

    def add_batch(self) -> None:
        x = self.rng.standard_normal((self.sims, 2, CUPED_BATCH))
        e = self.rng.standard_normal((self.sims, 2, CUPED_BATCH))
        y = self.means[None, :, None] + CUPED_SD * (self.rho * x + np.sqrt(1.0 - self.rho**2) * e)
        self.sums[0] += CUPED_BATCH
        for j, v in enumerate((y, y * y, x, x * x, x * y), start=1):
            self.sums[j] += v.sum(axis=2)

    def analyze(self) -> Any:
        return cuped_many(*self.sums, kind="mean", method="sequential", alpha=ALPHA, n_star=N_STAR)


def _promotes(e: Any) -> Any:
    return (e.p_value < ALPHA) & (e.estimate > 0.0)  # NaN estimates compare False


def _median_ratio_interval(a: np.ndarray, b: np.ndarray, seed: int, draws: int = 400) -> list[float]:
    """95% bootstrap interval (over simulated experiments) of 1 - median(a)/median(b), paired."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(draws, len(a)))
    ratios = 1.0 - np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
    return [round(float(q), 4) for q in np.percentile(ratios, [2.5, 97.5])]


def _cuped_time_to_promote(rho: float, sims: int, max_looks: int, seed: int) -> dict[str, Any]:
    """Exposures per arm at the first look where each estimator promotes a true +5% lift (the same units for both)."""
    data = _CupedSums(sims, rho, 0.05, seed)
    first = {"cuped": np.full(sims, np.inf), "unadjusted": np.full(sims, np.inf)}
    reduction = np.full(sims, np.nan)
    for look in range(max_looks):
        data.add_batch()
        res = data.analyze()
        for name, e in (("cuped", res.adjusted), ("unadjusted", res.unadjusted)):
            hit = _promotes(e) & np.isinf(first[name])
            first[name][hit] = CUPED_BATCH * (look + 1)
            if name == "cuped":
                reduction[hit] = res.variance_reduction[hit]
        if not (np.isinf(first["cuped"]).any() or np.isinf(first["unadjusted"]).any()):
            break
    med = {k: float(np.median(v)) for k, v in first.items()}
    fewer = 1.0 - med["cuped"] / med["unadjusted"] if np.isfinite(med["unadjusted"]) else None
    return {
        "rho": rho,
        "median_exposures_per_arm_to_promote": {k: (v if np.isfinite(v) else None) for k, v in med.items()},
        "not_promoted_within_max_fraction": {k: round(float(np.isinf(v).mean()), 4) for k, v in first.items()},
        "fewer_exposures_with_cuped": None if fewer is None else round(fewer, 4),
        "fewer_exposures_with_cuped_95pct_bootstrap": _median_ratio_interval(first["cuped"], first["unadjusted"], seed),
        "rho_squared": round(rho * rho, 4),  # what it saves a fixed-horizon test (n scales with the variance)
        "median_variance_reduction_at_promotion": round(float(np.nanmedian(reduction)), 4),
    }


def _cuped_aa(rho: float, sims: int, looks: int, seed: int) -> dict[str, Any]:
    """A/A: how often each estimator ever promotes (p < alpha and lift > 0), or is ever significant either way."""
    data = _CupedSums(sims, rho, 0.0, seed)
    promoted = {"cuped": np.zeros(sims, dtype=bool), "unadjusted": np.zeros(sims, dtype=bool)}
    significant = {"cuped": np.zeros(sims, dtype=bool), "unadjusted": np.zeros(sims, dtype=bool)}
    for _ in range(looks):
        data.add_batch()
        res = data.analyze()
        for name, e in (("cuped", res.adjusted), ("unadjusted", res.unadjusted)):
            significant[name] |= e.p_value < ALPHA
            promoted[name] |= _promotes(e)
    return {
        "rho": rho,
        "looks": looks,
        "false_promotion_rate": {k: round(float(v.mean()), 4) for k, v in promoted.items()},
        "ever_significant_either_way": {k: round(float(v.mean()), 4) for k, v in significant.items()},
    }


def bench_cuped(sims: int, aa_sims: int, seed: int) -> dict[str, Any]:
    """CUPED vs the unadjusted estimate on the same simulated units: exposures to promote, and A/A at 200 looks."""
    z = float(sps.norm.ppf(1 - ALPHA / 2) + sps.norm.ppf(0.8))
    fixed_n = 2 * z * z * (CUPED_SD / (0.05 * CUPED_MEAN)) ** 2
    max_looks = int(np.ceil(4 * fixed_n / CUPED_BATCH))
    return {
        "design": {
            "outcome": f"normal, mean {CUPED_MEAN:g}, sd {CUPED_SD:g}; covariate standard normal, correlation rho",
            "true_relative_lift": 0.05,
            "alpha": ALPHA,
            "method": "sequential",
            "n_star": N_STAR,
            "look_every_per_arm": CUPED_BATCH,
            "promote_when": "two-sided always-valid p < alpha and lift > 0",
            "simulations": sims,
            "aa_simulations": aa_sims,
            "max_exposures_per_arm": CUPED_BATCH * max_looks,
            "fixed_horizon_n_per_arm_80pct_power_unadjusted": round(fixed_n, 1),
        },
        "time_to_promote": [_cuped_time_to_promote(rho, sims, max_looks, seed + k) for k, rho in enumerate((0.5, 0.7))],
        "aa_200_looks": [_cuped_aa(rho, aa_sims, 200, seed + 10 + k) for k, rho in enumerate((0.0, 0.5, 0.7))],
    }


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="seconds-long smoke run with small sizes")
    ap.add_argument("--seed", type=int, default=20240611)
    args = ap.parse_args(argv)
    quick: bool = args.quick
    t0 = time.perf_counter()
    result = {
        "benchmark": "bench_stats",
        "quick": quick,
        "machine": machine(),
        "analyze_experiment_2_variants": bench_scalar(500 if quick else 20_000),
        "analyze_many_10000x3": bench_vectorised(2 if quick else 15, args.seed),
        "power": bench_power(100 if quick else 2_000, args.seed + 1),
        "aa_false_positive_rate": bench_aa(200 if quick else 4_000, args.seed + 2),
        "planner": bench_planner(100 if quick else 4_000, args.seed + 13),
        "sequential_tuning": bench_tuning(100 if quick else 2_000, args.seed + 14),
        "eta_calibration": bench_eta(100 if quick else 2_000, args.seed + 15),
        "cuped": bench_cuped(200 if quick else 20_000, 200 if quick else 10_000, args.seed + 3),
    }
    result["targets"] = {
        "analyze_experiment_median_us_max": 50,
        "analyze_many_ms_max": 200,
        "power_ratio_max": 1.5,
        "auto_tuning_median_to_fixed_n_max": 1.15,
        "eta_median_ratio_range": [0.8, 1.2],
        "eta_interval80_coverage_range": [0.75, 0.85],
        "planner_fixed_relative_error_max": 0.01,
        "planner_sequential_relative_error_max": 0.05,
        "cuped_fewer_exposures_min": {"rho_0.5": 0.25, "rho_0.7": 0.45},
        "cuped_aa_false_promotion_rate_max": ALPHA,
    }
    result["elapsed_s"] = round(time.perf_counter() - t0, 2)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
