"""Benchmark of the several-metrics rule: error rates by simulation under continuous peeking, and what one
evaluation with 10 metrics x 3 variants costs against today's single-metric evaluation.

Prints ONE JSON object on stdout and asserts nothing. `--quick` runs a small, noisy smoke version.

    .venv/bin/python bench/bench_metrics.py [--quick] [--sims N] [--seed N] [--scan-experiments N]

With DATABASE_URL set it also times the scan as a user runs it, `autopromote scan --dry-run --json` from process
start to exit, over 10,000 running experiments with 5 metrics each (the built-in one and 4 ab_metrics rows: a
guardrail mean, a guardrail ratio, a secondary proportion and a primary mean) and over the same experiments
without rows, in a database of its own on that server (created, migrated and dropped here).

The simulation runs the product's own rule (worker.domain.metric_rule: analyze_metrics + rule, the code decide()
applies) on one control and one treatment with 1 primary metric and 3 guardrails, sequential method, alpha 0.05,
checked after every one of 200 looks; "promote" means the rule names a winner at some look (decide()'s other
conditions, minimum sample size, runtime and the safety checks, only ever remove promotions). Scenarios:

- null:        no effect on the primary, neutral guardrails            -> P(promote) should be <= 5%
- at_margin:   a large primary lift, one guardrail truly worse by exactly its margin -> P(promote) <= 5%
- power:       the planned primary lift, neutral guardrails, 200 looks to the planned sample size -> power >= 80%
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.config import AutoPromotionConfig, load_config
from worker.decide import ExperimentSnapshot, VariantSnapshot, decide
from worker.domain.metric_rule import analyze_metrics, rule
from worker.domain.metrics import MetricDefinition, MetricSnapshot, MetricSums
from worker.stats import LatencySketch
from worker.stats.effects import sequential_halfwidth, sequential_rho

ALPHA = 0.05
LOOKS = 200
BASELINE = 0.10  # primary: conversion rate
PLANNED_LIFT = 0.10  # primary: the planned relative effect
LARGE_LIFT = 0.20  # primary: the "large" lift of the at-margin scenario
REVENUE_MEAN, REVENUE_CV = 20.0, 1.0  # guardrail 1: revenue per user (mean), lognormal
PAGES_PER_SESSION = 3.0  # guardrail 2: pages per session (ratio), sessions per user 1 + Poisson(1)
RETENTION = 0.40  # guardrail 3: retained users (proportion)
MARGINS = {"revenue_per_user": 0.05, "pages_per_session": 0.03, "retained": 0.05}


def planned_sample_size() -> int:
    """Per-arm n at which the sequential test (tuned at that n) has 80% power for the planned lift at one look:
    lift/se = sequential critical value + z_0.8, with the delta-method se of the relative lift."""
    p_a, p_b = BASELINE, BASELINE * (1 + PLANNED_LIFT)
    unit_var = (p_b * (1 - p_b) + p_a * (1 - p_a) * (p_b / p_a) ** 2) / p_a**2  # n * var(lift)
    n = 1000.0
    for _ in range(50):  # the critical value depends on n through N* = 2n: iterate to the fixed point
        rho = sequential_rho(ALPHA, 2 * n)
        crit = sequential_halfwidth(1.0, 2 * n, ALPHA, rho)
        n = unit_var * ((crit + 0.8416) / PLANNED_LIFT) ** 2
    return int(math.ceil(n / LOOKS) * LOOKS)


@dataclass
class Arm:
    """Cumulative sums of one arm over the simulations (arrays of length sims)."""

    units: np.ndarray
    conv: np.ndarray
    rev: np.ndarray
    rev2: np.ndarray
    pages: np.ndarray
    pages2: np.ndarray
    sess: np.ndarray
    sess2: np.ndarray
    pages_sess: np.ndarray
    kept: np.ndarray

    @classmethod
    def zeros(cls, sims: int) -> Arm:
        return cls(*(np.zeros(sims) for _ in range(10)))

    def add(self, rng: np.random.Generator, batch: int, lifts: dict[str, float]) -> None:
        sims = self.units.shape[0]
        self.units += batch
        self.conv += rng.binomial(batch, BASELINE * (1 + lifts["primary"]), size=sims)
        sigma2 = math.log1p(REVENUE_CV**2)
        mu = math.log(REVENUE_MEAN * (1 + lifts["revenue_per_user"])) - sigma2 / 2
        rev = rng.lognormal(mu, math.sqrt(sigma2), size=(sims, batch))
        self.rev += rev.sum(axis=1)
        self.rev2 += (rev * rev).sum(axis=1)
        sess = 1 + rng.poisson(1.0, size=(sims, batch))
        pages = rng.poisson(PAGES_PER_SESSION * (1 + lifts["pages_per_session"]) * sess)
        self.sess += sess.sum(axis=1)
        self.sess2 += (sess * sess).sum(axis=1)
        self.pages += pages.sum(axis=1)
        self.pages2 += (pages * pages).sum(axis=1)
        self.pages_sess += (pages * sess).sum(axis=1)
        self.kept += rng.binomial(batch, RETENTION * (1 + lifts["retained"]), size=sims)

    def sums(self, i: int) -> dict[str, MetricSums]:
        n = int(self.units[i])
        return {
            "primary": MetricSums(n, float(self.conv[i]), float(self.conv[i])),
            "revenue_per_user": MetricSums(n, float(self.rev[i]), float(self.rev2[i])),
            "pages_per_session": MetricSums(
                n,
                float(self.pages[i]),
                float(self.pages2[i]),
                float(self.sess[i]),
                float(self.sess2[i]),
                float(self.pages_sess[i]),
            ),
            "retained": MetricSums(n, float(self.kept[i]), float(self.kept[i])),
        }


DEFINITIONS = (
    MetricDefinition("primary", "proportion"),
    MetricDefinition("revenue_per_user", "mean", role="guardrail", margin=MARGINS["revenue_per_user"]),
    MetricDefinition("pages_per_session", "ratio", role="guardrail", margin=MARGINS["pages_per_session"]),
    MetricDefinition("retained", "proportion", role="guardrail", margin=MARGINS["retained"]),
)


def simulate(name: str, lifts: dict[str, float], sims: int, horizon: int, seed: int) -> dict[str, Any]:
    """P(the rule names the treatment the winner at any of LOOKS looks up to ``horizon`` users per arm)."""
    rng = np.random.default_rng(seed)
    neutral = dict.fromkeys(lifts, 0.0)
    control, treatment = Arm.zeros(sims), Arm.zeros(sims)
    batch = horizon // LOOKS
    promoted_at = np.full(sims, -1)
    blocked_by: dict[str, int] = {}
    t0 = time.perf_counter()
    for look in range(LOOKS):
        control.add(rng, batch, neutral)
        treatment.add(rng, batch, lifts)
        for i in np.flatnonzero(promoted_at < 0):
            c, t = control.sums(int(i)), treatment.sums(int(i))
            metrics = analyze_metrics(
                [(d, {"control": c[d.name], "treatment": t[d.name]}) for d in DEFINITIONS],
                "control",
                ["treatment"],
                method="sequential",
                alpha=ALPHA,
                n_star=2.0 * horizon,
                correction="holm",
            )
            ruling = rule(metrics, ["treatment"], 100 * (1 - ALPHA))
            if ruling.winner is not None:
                promoted_at[i] = look + 1
            elif look == LOOKS - 1:
                for m in metrics:
                    if m.role == "guardrail" and m.comparisons[0].verdict != "non_inferior":
                        blocked_by[m.name] = blocked_by.get(m.name, 0) + 1
    rate = float((promoted_at > 0).mean())
    hits = promoted_at[promoted_at > 0]
    return {
        "scenario": name,
        "true_lifts": lifts,
        "simulations": sims,
        "looks": LOOKS,
        "users_per_arm_at_last_look": horizon,
        "p_promote": round(rate, 4),
        "p_promote_se": round(math.sqrt(rate * (1 - rate) / sims), 4),
        "median_look_of_promotion": float(np.median(hits)) if hits.size else None,
        "not_promoted_guardrail_not_non_inferior_at_last_look": blocked_by,
        "seconds": round(time.perf_counter() - t0, 1),
    }


# ------------------------------------------------------------------------------------------ evaluation time
NOW = datetime(2026, 5, 9, 12, 0, tzinfo=UTC)


def _snapshot(variants: tuple[VariantSnapshot, ...], metrics: tuple[MetricSnapshot, ...]) -> ExperimentSnapshot:
    return ExperimentSnapshot(
        id=1,
        name="checkout",
        status="running",
        started_at=NOW - timedelta(days=3),
        metric_type="conversion",
        priority="normal",
        variants=variants,
        now=NOW,
        metrics=metrics,
    )


def _ten_metric_snapshot() -> tuple[ExperimentSnapshot, ExperimentSnapshot]:
    sketch = LatencySketch.from_values([100.0 + i for i in range(50)])
    variants = tuple(
        VariantSnapshot(name, name == "control", 1.0, 40_000, conv, 100, 0.0, 0.0, sketch)
        for name, conv in (("control", 4000), ("variant-b", 4400), ("variant-c", 4100))
    )
    rng = np.random.default_rng(1)
    rows = []
    kinds = ("mean", "ratio", "proportion")
    roles = ("guardrail", "secondary", "primary")
    for k in range(9):  # the built-in metric + 9 rows = 10 metrics
        kind, role = kinds[k % 3], roles[(k // 3) % 3]
        sums = {}
        for v in variants:
            n = v.exposures
            if kind == "proportion":
                x = float(rng.binomial(n, 0.3))
                sums[v.name] = MetricSums(n, x, x)
            elif kind == "mean":
                sums[v.name] = MetricSums(n, 20.0 * n, 800.0 * n)
            else:
                sums[v.name] = MetricSums(n, 6.0 * n, 60.0 * n, 2.0 * n, 5.0 * n, 15.0 * n)
        rows.append(MetricSnapshot(MetricDefinition(f"metric_{k}", kind, role=role, margin=0.05), sums))
    return _snapshot(variants, ()), _snapshot(variants, tuple(rows))


def _time(fn: Any, number: int, repeats: int) -> float:
    """Best per-call time in microseconds over ``repeats`` runs of ``number`` calls (best: least disturbed by
    the other processes of a shared machine)."""
    best = math.inf
    gc.disable()
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            best = min(best, (time.perf_counter() - t0) / number)
    finally:
        gc.enable()
    return best * 1e6


def bench_evaluation(number: int, repeats: int) -> dict[str, Any]:
    """One evaluation (decide() and the check data the evaluator stores) with 10 metrics x 3 variants against
    the same experiment's single-metric evaluation, in this process."""
    cfg: AutoPromotionConfig = load_config(env={}, overrides={}).config
    single, ten = _ten_metric_snapshot()
    out: dict[str, Any] = {"variants": 3, "metrics": 10, "calls_per_repeat": number, "repeats": repeats}
    for label, work in (
        ("decide", lambda s: decide(s, cfg)),
        ("decide_and_check_data", lambda s: decide(s, cfg).to_check_data()),
    ):
        work(single), work(ten)  # warm up
        # interleaved, so that a burst of load on the shared machine hits both alike
        a, b = [], []
        for _ in range(3):
            a.append(_time(lambda w=work: w(single), number, repeats))
            b.append(_time(lambda w=work: w(ten), number, repeats))
        t1, t10 = min(a), min(b)
        out[label] = {"single_metric_us": round(t1, 1), "ten_metrics_us": round(t10, 1), "ratio": round(t10 / t1, 2)}
    return out


# ------------------------------------------------------------------------------------------------- the scan
SCAN_METRICS = (
    ("revenue_per_user", "mean", "guardrail", 0.05),
    ("pages_per_session", "ratio", "guardrail", 0.03),
    ("retained", "proportion", "secondary", 0.0),
    ("basket_size", "mean", "primary", 0.0),
)


async def _seed_scan(conn: Any, n: int, with_metrics: bool) -> None:
    """n running A/A experiments (control + variant-b, folded statistics) and, with_metrics, 4 metric rows each
    with folded sums for both variants."""
    ids = [
        r[0]
        for r in await conn.fetch(
            "INSERT INTO ab_experiments (name, status, started_at) "
            "SELECT 'exp-' || lpad(i::text, 6, '0'), 'running', now() - interval '48 hours' "
            "FROM generate_series(1, $1) i RETURNING id",
            n,
        )
    ]
    await conn.execute(
        "INSERT INTO ab_variants (experiment_id, name, is_control) SELECT id, v.name, v.name = 'control' "
        "FROM unnest($1::bigint[]) id, (VALUES ('control'), ('variant-b')) v(name)",
        ids,
    )
    await conn.execute(
        "INSERT INTO ab_variant_stats (variant_id, experiment_id, exposures, conversions, updates_folded) "
        "SELECT v.id, v.experiment_id, 20000, CASE WHEN v.is_control THEN 2000 ELSE 2010 END, 1 "
        "FROM ab_variants v WHERE v.experiment_id = ANY($1)",
        ids,
    )
    if not with_metrics:
        return
    for name, kind, role, margin in SCAN_METRICS:
        await conn.execute(
            "INSERT INTO ab_metrics (experiment_id, name, kind, role, margin) "
            "SELECT id, $2, $3, $4, $5 FROM unnest($1::bigint[]) id",
            ids,
            name,
            kind,
            role,
            margin,
        )
    await conn.execute(
        """INSERT INTO ab_metric_stats (metric_id, variant_id, experiment_id, units, value_sum, value_sum_sq,
                                        denominator_sum, denominator_sum_sq, value_denominator_product_sum,
                                        updates_folded)
           SELECT m.id, v.id, v.experiment_id, 20000,
                  CASE m.kind WHEN 'proportion' THEN 8000 ELSE 400000 END,
                  CASE m.kind WHEN 'proportion' THEN 8000 ELSE 16000000 END,
                  CASE m.kind WHEN 'ratio' THEN 40000 ELSE 0 END,
                  CASE m.kind WHEN 'ratio' THEN 100000 ELSE 0 END,
                  CASE m.kind WHEN 'ratio' THEN 900000 ELSE 0 END, 1
             FROM ab_metrics m JOIN ab_variants v ON v.experiment_id = m.experiment_id
            WHERE m.experiment_id = ANY($1)""",
        ids,
    )


async def _engine_scans(url: str, repeats: int) -> list[float]:
    """The same dry-run scan in this process (Engine.scan_and_promote_winners): no start-up, no output."""
    from worker.config import load_settings
    from worker.db.connect import create_pool
    from worker.engine import Engine

    pool = await create_pool(url, max_size=2)
    try:
        engine = Engine(pool, load_settings({"DATABASE_URL": url}), load_config(env={}, overrides={}))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            await engine.scan_and_promote_winners(dry_run=True)
            times.append(time.perf_counter() - t0)
        return times
    finally:
        await pool.close()


def _run_scan(url: str) -> tuple[float, dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTO_PROMOTION_")}
    env["DATABASE_URL"] = url
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "scan", "--dry-run", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"autopromote scan exited {proc.returncode}: {proc.stderr[-2000:]}")
    return elapsed, json.loads(proc.stdout)


async def _seed_evaluation(conn: Any) -> None:
    """Two experiments of 3 variants: 'single' (its built-in metric only) and 'ten' (the built-in one and 9
    ab_metrics rows of every kind and role), with folded statistics."""
    for name in ("single", "ten"):
        exp_id = await conn.fetchval(
            "INSERT INTO ab_experiments (name, status, started_at) VALUES ($1, 'running', now() - interval '2 days') "
            "RETURNING id",
            name,
        )
        await conn.execute(
            "INSERT INTO ab_variants (experiment_id, name, is_control) "
            "SELECT $1, v, v = 'control' FROM unnest(ARRAY['control', 'variant-b', 'variant-c']) v",
            exp_id,
        )
        await conn.execute(
            "INSERT INTO ab_variant_stats (variant_id, experiment_id, exposures, conversions, updates_folded) "
            "SELECT id, experiment_id, 40000, 4000 + 100 * (id % 3), 1 FROM ab_variants WHERE experiment_id = $1",
            exp_id,
        )
        if name == "ten":
            for k in range(9):
                kind = ("mean", "ratio", "proportion")[k % 3]
                role = ("guardrail", "secondary", "primary")[(k // 3) % 3]
                await conn.execute(
                    "INSERT INTO ab_metrics (experiment_id, name, kind, role, margin) VALUES ($1, $2, $3, $4, $5)",
                    exp_id,
                    f"metric_{k}",
                    kind,
                    role,
                    0.05 if role == "guardrail" else 0.0,
                )
            await conn.execute(
                """INSERT INTO ab_metric_stats (metric_id, variant_id, experiment_id, units, value_sum, value_sum_sq,
                                                denominator_sum, denominator_sum_sq, value_denominator_product_sum,
                                                updates_folded)
                   SELECT m.id, v.id, v.experiment_id, 40000,
                          CASE m.kind WHEN 'proportion' THEN 12000 ELSE 800000 END,
                          CASE m.kind WHEN 'proportion' THEN 12000 ELSE 32000000 END,
                          CASE m.kind WHEN 'ratio' THEN 80000 ELSE 0 END,
                          CASE m.kind WHEN 'ratio' THEN 200000 ELSE 0 END,
                          CASE m.kind WHEN 'ratio' THEN 1800000 ELSE 0 END, 1
                     FROM ab_metrics m JOIN ab_variants v ON v.experiment_id = m.experiment_id
                    WHERE m.experiment_id = $1""",
                exp_id,
            )


async def bench_evaluation_db(url: str, rounds: int) -> dict[str, Any]:
    """One evaluation end to end as `check` makes it (fold, the locked one-statement read, decide, the stored
    decision) of the 10-metric experiment against the single-metric one, interleaved in one process."""
    from worker.config import load_settings
    from worker.db.connect import create_pool
    from worker.engine import Engine

    pool = await create_pool(url, max_size=2)
    try:
        engine = Engine(pool, load_settings({"DATABASE_URL": url}), load_config(env={}, overrides={}))
        times: dict[str, list[float]] = {"single": [], "ten": []}
        for name in ("single", "ten"):
            await engine.check_promotion_eligibility(name)  # warm: prepared statements, caches
        for _ in range(rounds):
            for name in ("single", "ten"):
                t0 = time.perf_counter()
                await engine.check_promotion_eligibility(name)
                times[name].append(time.perf_counter() - t0)
    finally:
        await pool.close()
    one, ten = statistics.median(times["single"]), statistics.median(times["ten"])
    return {
        "rounds": rounds,
        "single_metric_ms_median": round(1000 * one, 3),
        "ten_metrics_ms_median": round(1000 * ten, 3),
        "ratio": round(ten / one, 2),
    }


async def bench_scan(admin_url: str, n: int, repeats: int) -> dict[str, Any]:
    import asyncpg

    from worker.db.migrate import migrate

    out: dict[str, Any] = {"experiments": n, "repeats": repeats, "command": "autopromote scan --dry-run --json"}
    admin = await asyncpg.connect(admin_url)
    try:
        db = f"bench_metrics_eval_{os.getpid()}"
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{db}"')
        url = admin_url.rsplit("/", 1)[0] + "/" + db
        try:
            conn = await asyncpg.connect(url)
            try:
                await migrate(conn)
                await _seed_evaluation(conn)
            finally:
                await conn.close()
            out["evaluation_end_to_end_10_metrics_x_3_variants"] = await bench_evaluation_db(url, 20 * repeats)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        for label, with_metrics in (("single_metric", False), ("five_metrics", True)):
            db = f"bench_metrics_scan_{os.getpid()}_{label}"
            await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{db}"')
            url = admin_url.rsplit("/", 1)[0] + "/" + db
            try:
                conn = await asyncpg.connect(url)
                try:
                    await migrate(conn)
                    await _seed_scan(conn, n, with_metrics)
                    await conn.execute("ANALYZE")
                finally:
                    await conn.close()
                engine_times = await _engine_scans(url, repeats)
                times, scanned, metrics = [], 0, 0
                for _ in range(repeats):
                    elapsed, data = await asyncio.to_thread(_run_scan, url)
                    times.append(elapsed)
                    scanned = data["data"]["scanned"] if "data" in data else data["scanned"]
                    results = data["data"]["results"] if "data" in data else data["results"]
                    metrics = max((len(r.get("metrics", [])) for r in results), default=0)
                out[label] = {
                    "engine_scan_seconds_median": round(statistics.median(engine_times), 3),
                    "engine_scan_seconds_min": round(min(engine_times), 3),
                    "seconds_median": round(statistics.median(times), 3),
                    "seconds_min": round(min(times), 3),
                    "seconds_max": round(max(times), 3),
                    "scanned": scanned,
                    "metrics_per_experiment": metrics,
                }
            finally:
                await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    finally:
        await admin.close()
    return out


def machine() -> dict[str, Any]:
    model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    import logging

    import structlog

    # stdout is the one JSON document: the engine's log lines (scan.completed, ...) go to stderr, warnings only.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small and noisy: a smoke run")
    parser.add_argument("--sims", type=int, default=None, help="simulations per scenario (default 1000; quick 40)")
    parser.add_argument("--seed", type=int, default=20260509)
    parser.add_argument("--scan-experiments", type=int, default=None, help="default 10000 (quick 500)")
    parser.add_argument("--only", choices=("simulation", "evaluation", "scan"), action="append", default=None)
    args = parser.parse_args()
    only = set(args.only or ("simulation", "evaluation", "scan"))
    sims = args.sims or (40 if args.quick else 1000)
    info = machine()
    horizon = planned_sample_size()
    neutral = {"primary": 0.0, "revenue_per_user": 0.0, "pages_per_session": 0.0, "retained": 0.0}
    scenarios = [
        ("null", neutral),
        ("at_margin", {**neutral, "primary": LARGE_LIFT, "revenue_per_user": -MARGINS["revenue_per_user"]}),
        ("power", {**neutral, "primary": PLANNED_LIFT}),
    ]
    results = None
    if "simulation" in only:
        results = {
            name: simulate(name, lifts, sims, horizon, args.seed + i) for i, (name, lifts) in enumerate(scenarios)
        }
    timing = None
    if "evaluation" in only:
        timing = bench_evaluation(number=100 if args.quick else 400, repeats=3 if args.quick else 7)
    url = os.environ.get("DATABASE_URL")
    scan: dict[str, Any] | str = "skipped: set DATABASE_URL (a server the bench may create a database on)"
    if url and "scan" in only:
        n = args.scan_experiments or (500 if args.quick else 10_000)
        scan = asyncio.run(bench_scan(url, n, 1 if args.quick else 3))
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = {
        "bench": "metrics",
        "quick": args.quick,
        "machine": info,
        "alpha": ALPHA,
        "method": "sequential",
        "design": {
            "primary": f"conversion, baseline {BASELINE:.0%}, planned relative lift {PLANNED_LIFT:.0%}",
            "guardrails": {
                "revenue_per_user": f"mean, lognormal mean {REVENUE_MEAN:g} CV {REVENUE_CV:g}, margin "
                f"{MARGINS['revenue_per_user']:.0%}",
                "pages_per_session": f"ratio, sessions 1+Poisson(1), pages Poisson({PAGES_PER_SESSION:g}/session), "
                f"margin {MARGINS['pages_per_session']:.0%}",
                "retained": f"proportion {RETENTION:.0%}, margin {MARGINS['retained']:.0%}",
            },
            "planned_users_per_arm": horizon,
            "n_star": 2 * horizon,
        },
        "error_rates": results,
        "targets": {
            "null_p_promote_at_most": 0.05,
            "at_margin_p_promote_at_most": 0.05,
            "power_at_least": 0.80,
            "evaluation_ratio_at_most": 3.0,
            "scan_10k_single_metric_seconds_at_most": 2.0,
            "scan_10k_x_5_metrics_seconds_at_most": 4.0,
        },
        "evaluation_10_metrics_x_3_variants": timing,
        "scan": scan,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
