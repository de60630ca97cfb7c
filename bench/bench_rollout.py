"""Benchmark of the progressive rollout (rollout.mode = ramp); prints one JSON object.

    python bench/bench_rollout.py            # the full run (a few minutes)
    python bench/bench_rollout.py --quick    # a small smoke run (tests/integration/test_rollout_bench.py runs it)

Sections:
  false_rollback   by simulation, checked after every update: how often a harmless winner (the same error rate and
                   latencies as the control, a better conversion rate) is rolled back anywhere over a whole ramp, at
                   alpha = 0.05 (minConfidence 95), for the default steps from a 50/50 test and from a 20/80 test
  detection        by simulation, checked after every update: an error rate that doubles (1% -> 2%) at a 10% step;
                   the winner's exposures in that step when the guard rolls it back
  breach_latency   on the real database, a worker process (`python -m worker run`) guarding `experiments` ramps
                   while producers record `rate` updates/s: commit of the update that shows a breach -> commit of the
                   restored weights (seen as the rollback's NOTIFY); and, as the same run's baseline, commit of the
                   update that makes a running experiment's winner -> commit of its promotion (`promotions` of them,
                   between the breaches: the path bench_daemon.py's decision_latency measures)

Uses DATABASE_URL (a role that may CREATE DATABASE) or starts an embedded PostgreSQL (as bench_daemon.py does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import asyncpg  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
from bench_daemon import Server, database_server, machine_info, ms, pct, wait_until, worker  # noqa: E402

from worker.db.connect import connect  # noqa: E402
from worker.domain.guard_rules import VariantTotals  # noqa: E402
from worker.domain.rollout_rules import (  # noqa: E402
    RampPlan,
    RampSettings,
    StepData,
    check_step,
    per_test_alpha,
    plan_ramp,
)
from worker.stats import LatencySketch  # noqa: E402

FULL = {
    "false_rollback": {"runs": 2000, "updates_per_step": 50, "exposures_per_update": 400},
    "detection": {"runs": 500, "exposures_per_update": 100, "max_updates": 400},
    "breach_latency": {"experiments": 200, "rate": 1000, "seconds": 20.0, "triggers": 100, "promotions": 100},
}
QUICK = {
    "false_rollback": {"runs": 40, "updates_per_step": 20, "exposures_per_update": 400},
    "detection": {"runs": 20, "exposures_per_update": 100, "max_updates": 400},
    "breach_latency": {"experiments": 20, "rate": 100, "seconds": 3.0, "triggers": 5, "promotions": 5},
}
TARGETS = {
    "false_rollback_rate_max": 0.05,
    "detection_median_exposures_max": 3000,
    "breach_latency_p50_ms_max": 5.0,
    "breach_latency_p99_ms_max": 25.0,
}
WINNER = {"control": (17_500, 1_750), "variant-b": (17_000, 1_904)}


# ------------------------------------------------------------------------------------------------ simulation
def _add(t: VariantTotals, n: int, conv: int, err: int, lat: LatencySketch | None) -> VariantTotals:
    return VariantTotals(
        t.exposures + n,
        t.conversions + conv,
        t.errors + err,
        latency=t.latency.merge(lat) if lat is not None else t.latency,
    )


def _sketch(rng: np.random.Generator, n: int, scale: float) -> LatencySketch:
    return LatencySketch.from_values(rng.lognormal(3.0, 0.5, n) * scale)


def simulate_ramp(
    rng: np.random.Generator,
    rs: RampSettings,
    plan: RampPlan,
    *,
    winner_err: float,
    control_err: float = 0.01,
    winner_conv: float = 0.11,
    control_conv: float = 0.10,
    updates_per_step: int,
    exposures_per_update: int,
    latency_every: int = 0,
    only_first_step: bool = False,
) -> tuple[int | None, int | None, list[str]]:
    """One ramp, its guard checked after every update: (the step it was rolled back at or None, the winner's
    exposures in that step by then, the metrics that breached)."""
    alpha = per_test_alpha(rs, plan)
    for step in range(1, plan.holding_step + 1):
        share = plan.share(step)
        if share >= 100.0:
            break
        t = c = VariantTotals()
        for u in range(updates_per_step):
            nt = int(rng.binomial(exposures_per_update, share / 100.0))
            nc = exposures_per_update - nt
            lat_t = lat_c = None
            if latency_every and u % latency_every == 0:
                lat_t, lat_c = _sketch(rng, max(nt // 4, 1), 1.0), _sketch(rng, max(nc // 4, 1), 1.0)
            t = _add(t, nt, int(rng.binomial(nt, winner_conv)), int(rng.binomial(nt, winner_err)), lat_t)
            c = _add(c, nc, int(rng.binomial(nc, control_conv)), int(rng.binomial(nc, control_err)), lat_c)
            data = StepData("variant-b", "control", "conversion", share, {"variant-b": t, "control": c})
            breaches = [g.metric for g in check_step(data, rs, alpha) if g.verdict == "breach"]
            if breaches:
                return step, t.exposures, breaches
        if only_first_step:
            break
    return None, None, []


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(max(0.0, c - h), 4), round(min(1.0, c + h), 4)]


def bench_false_rollback(p: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"alpha": 0.05, "checked": "after every update", "scenarios": []}
    rs = RampSettings()
    for label, share in (
        ("50/50 test: 50 -> 75 -> 95 -> 100", 50.0),
        ("20/80 test: 20 -> 25 -> 50 -> 75 -> 95 -> 100", 20.0),
    ):
        rng = np.random.default_rng(int(share))
        plan = plan_ramp(share, rs.steps, rs.holdback)
        t0 = time.perf_counter()
        rolled = 0
        metrics: Counter[str] = Counter()
        for _ in range(p["runs"]):
            step, _, breached = simulate_ramp(
                rng,
                rs,
                plan,
                winner_err=0.01,
                updates_per_step=p["updates_per_step"],
                exposures_per_update=p["exposures_per_update"],
                latency_every=1,
            )
            if step is not None:
                rolled += 1
                metrics.update(breached)
        out["scenarios"].append(
            {
                "ramp": label,
                "guarded_steps": plan.guarded_steps(),
                "per_test_alpha": round(per_test_alpha(rs, plan), 5),
                "runs": p["runs"],
                "updates_per_step": p["updates_per_step"],
                "exposures_per_update": p["exposures_per_update"],
                "false_rollbacks": rolled,
                "false_rollback_rate": round(rolled / p["runs"], 4),
                "wilson95": wilson(rolled, p["runs"]),
                "by_metric": dict(metrics),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    out["false_rollback_rate_max"] = max(s["false_rollback_rate"] for s in out["scenarios"])
    return out


def bench_detection(p: dict[str, Any]) -> dict[str, Any]:
    rs = RampSettings(steps=(10.0, 50.0))
    plan = plan_ramp(5.0, rs.steps, rs.holdback)  # a 5/95 test: 5 -> 10 -> 50 -> 95 -> 100
    rng = np.random.default_rng(10)
    caught: list[int] = []
    missed = 0
    by_metric: Counter[str] = Counter()
    t0 = time.perf_counter()
    for _ in range(p["runs"]):
        step, n, breached = simulate_ramp(
            rng,
            rs,
            plan,
            winner_err=0.02,
            updates_per_step=p["max_updates"],
            exposures_per_update=p["exposures_per_update"],
            only_first_step=True,
        )
        if step == 1 and n is not None:
            caught.append(n)
            by_metric.update(breached)
        else:
            missed += 1
    budget = p["max_updates"] * p["exposures_per_update"] // 10
    ordered = sorted(caught) + [10**9] * missed
    return {
        "scenario": "10% step (a 5/95 test, steps 10,50), control 1% errors, winner 2%; the step ends after "
        f"about {budget:,} winner exposures",
        "per_test_alpha": round(per_test_alpha(rs, plan), 5),
        "runs": p["runs"],
        "exposures_per_update": p["exposures_per_update"],
        "caught_in_step": len(caught),
        "median_winner_exposures": ordered[len(ordered) // 2] if ordered else None,
        "p90_winner_exposures": ordered[int(0.9 * (len(ordered) - 1))] if ordered else None,
        "by_metric": dict(by_metric),
        "seconds": round(time.perf_counter() - t0, 1),
    }


# -------------------------------------------------------------------------------------------- real database
async def bench_breach_latency(server: Server, p: dict[str, Any]) -> dict[str, Any]:
    n, rate, seconds, n_triggers = p["experiments"], p["rate"], p["seconds"], p["triggers"]
    env = {
        "AUTO_PROMOTION_ROLLOUT_MODE": "ramp",
        "AUTO_PROMOTION_ROLLOUT_STEP_MINUTES": "600",  # no step ends during the bench: only breaches move ramps
        "AUTO_PROMOTION_CHECK_TRAFFIC_BALANCE": "false",
        "AUTO_PROMOTION_POLL_INTERVAL": "1",
    }
    async with server.database("rollout") as url:
        conn = await connect(url)
        names = await _seed_two_arms(conn, "ramp", n)
        # The baseline: running experiments whose control has its data and whose treatment has none until its
        # trigger, which makes it the winner (bench_daemon.py's decision_latency).
        promos = await _seed_two_arms(conn, "promo", p["promotions"])
        async with worker(url, env) as w:
            for name in names:
                for variant, (ex, conv) in WINNER.items():
                    await conn.execute("SELECT ab_record_metrics($1, $2, $3, $4)", name, variant, ex, conv)
            for name in promos:
                await conn.execute("SELECT ab_record_metrics($1, 'control', $2, $3)", name, *WINNER["control"])
            await wait_until(lambda: conn.fetchval("SELECT count(*) = $1 FROM experiment_rollouts", n), 180, 0.1)
            # Each ramp's first step gets harmless data on both arms (past guard.minSamples), folded and checked.
            for name in names:
                await conn.execute("SELECT ab_record_metrics($1, 'variant-b', 3000, 330, 30)", name)
                await conn.execute("SELECT ab_record_metrics($1, 'control', 3000, 300, 30)", name)
            await wait_until(lambda: conn.fetchval("SELECT count(*) = 0 FROM ab_metric_updates"), 120, 0.1)
            await asyncio.sleep(1.0)
            listener = await connect(url)
            rolled_at: dict[str, float] = {}
            promoted_at: dict[str, float] = {}

            def on_event(_c: Any, _pid: int, _channel: str, payload: str) -> None:
                event = json.loads(payload)
                if event.get("event") == "rolled_back":
                    rolled_at.setdefault(event["experiment_name"], time.perf_counter())
                elif event.get("event") == "promoted":
                    promoted_at.setdefault(event["experiment_name"], time.perf_counter())

            await listener.add_listener("ab_promotion_events", on_event)
            committed_at: dict[str, float] = {}
            noise = [await connect(url) for _ in range(2)]
            trig = await connect(url)
            promo = await connect(url)
            triggers = random.Random(1).sample(names, n_triggers)
            quiet = [x for x in names if x not in set(triggers)] or names
            sent = 0
            start = time.perf_counter()
            rng = random.Random(2)

            async def produce(c: asyncpg.Connection, share: int, offset: int) -> None:
                nonlocal sent
                interval = share / rate
                i = 0
                while True:
                    due = start + offset / rate + i * interval
                    if due - start > seconds:
                        return
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    exp = rng.choice(quiet)
                    variant = "variant-b" if i % 2 else "control"
                    await c.execute("SELECT ab_record_metrics($1, $2, 1, 0)", exp, variant)
                    sent += 1
                    i += 1

            promo_committed_at: dict[str, float] = {}
            assert w.proc is not None
            proc = psutil.Process(w.proc.pid)
            cpu0 = sum(proc.cpu_times()[:2])
            # The winner's errors jump from 1% to 10% in one update: the breach shows at once. The promotions' triggers
            # fall between the breaches'.
            breach_sql = "SELECT ab_record_metrics($1, 'variant-b', 3000, 330, 300)"
            promote_sql = "SELECT ab_record_metrics($1, 'variant-b', $2, $3)"
            fired = await asyncio.gather(
                produce(noise[0], 2, 0),
                produce(noise[1], 2, 1),
                _fire(trig, triggers, start, seconds, breach_sql, (), committed_at),
                _fire(promo, promos, start, seconds, promote_sql, WINNER["variant-b"], promo_committed_at, 0.5),
            )
            sent += fired[2] + fired[3]
            elapsed = time.perf_counter() - start
            worker_cpu = sum(proc.cpu_times()[:2]) - cpu0
            await wait_until(lambda: _all_seen(rolled_at, committed_at), 60, 0.05)
            await wait_until(lambda: _all_seen(promoted_at, promo_committed_at), 60, 0.05)
            latencies = [rolled_at[e] - committed_at[e] for e in committed_at]
            promotion = [promoted_at[e] - promo_committed_at[e] for e in promo_committed_at]
            rollbacks = await conn.fetchval("SELECT count(*) FROM experiment_rollouts WHERE state = 'rolled_back'")
            advanced = await conn.fetchval("SELECT count(*) FROM experiment_rollouts WHERE step > 1")
            for c in (*noise, trig, promo, listener):
                await c.close()
        await conn.close()
    return {
        "experiments_ramping": n,
        "target_rate_updates_per_s": rate,
        "achieved_rate_updates_per_s": round(sent / elapsed),
        "seconds": round(elapsed, 2),
        "triggers": n_triggers,
        "rolled_back": rollbacks,
        "false_rollbacks": rollbacks - n_triggers,
        "advanced": advanced,
        "worker_cpu_percent": round(100 * worker_cpu / elapsed, 1),
        "p50_ms": ms(pct(latencies, 50)),
        "p90_ms": ms(pct(latencies, 90)),
        "p99_ms": ms(pct(latencies, 99)),
        "max_ms": ms(max(latencies)),
        "mean_ms": ms(statistics.fmean(latencies)),
        "measured": "client-side: the breaching update's commit returned -> the rollback's NOTIFY arrived",
        "baseline_promotion": {
            "promotions": len(promotion),
            "p50_ms": ms(pct(promotion, 50)),
            "p99_ms": ms(pct(promotion, 99)),
            "measured": "the same run: the update that makes a winner's commit returned -> the promotion's NOTIFY",
        },
        "breach_p50_over_promotion_p50": round(pct(latencies, 50) / pct(promotion, 50), 3),
        "breach_p99_over_promotion_p99": round(pct(latencies, 99) / pct(promotion, 99), 3),
    }


async def _fire(
    c: asyncpg.Connection,
    names: list[str],
    start: float,
    seconds: float,
    sql: str,
    args: tuple[Any, ...],
    committed: dict[str, float],
    offset: float = 0.0,
) -> int:
    """One update per experiment of ``names``, spread evenly over ``seconds``; when each commit returned."""
    gap = seconds / (len(names) + 1)
    for k, exp in enumerate(names, start=1):
        delay = start + (k + offset) * gap - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await c.execute(sql, exp, *args)
        committed[exp] = time.perf_counter()
    return len(names)


async def _seed_two_arms(conn: asyncpg.Connection, prefix: str, n: int) -> list[str]:
    """n running experiments named prefix-00001..., each with a control and a variant-b; their names."""
    rows = await conn.fetch(
        "INSERT INTO ab_experiments (name, status, started_at) "
        "SELECT $1 || '-' || lpad(i::text, 5, '0'), 'running', now() - interval '48 hours' "
        "FROM generate_series(1, $2) i RETURNING id, name",
        prefix,
        n,
    )
    await conn.execute(
        "INSERT INTO ab_variants (experiment_id, name, is_control) "
        "SELECT e, v.name, v.name = 'control' FROM unnest($1::bigint[]) e, (VALUES ('control'), ('variant-b')) v(name)",
        [r["id"] for r in rows],
    )
    return sorted(r["name"] for r in rows)


async def _all_seen(seen: dict[str, float], committed: dict[str, float]) -> bool:
    return all(e in seen for e in committed)


async def main(quick: bool, only: list[str] | None, rate: int | None = None) -> dict[str, Any]:
    params = QUICK if quick else FULL
    if rate is not None:
        params = {**params, "breach_latency": {**params["breach_latency"], "rate": rate}}
    admin_url, embedded = database_server()
    server = Server(admin_url, embedded)
    try:
        probe = await asyncpg.connect(admin_url)
        pg_version = await probe.fetchval("SHOW server_version")
        await probe.close()
        result: dict[str, Any] = {
            "bench": "rollout",
            "quick": quick,
            "machine": machine_info(pg_version, embedded is not None),
        }
        if only is None or "false_rollback" in only:
            result["false_rollback"] = bench_false_rollback(params["false_rollback"])
        if only is None or "detection" in only:
            result["detection"] = bench_detection(params["detection"])
        if only is None or "breach_latency" in only:
            result["breach_latency"] = await bench_breach_latency(server, params["breach_latency"])
        result["targets"] = TARGETS
        result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        return result
    finally:
        if embedded is not None:
            embedded.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--only", nargs="+", choices=["false_rollback", "detection", "breach_latency"])
    parser.add_argument("--rate", type=int, help="updates/s of breach_latency (default 1000; a slower machine's share)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.quick, args.only, args.rate)), indent=2))
