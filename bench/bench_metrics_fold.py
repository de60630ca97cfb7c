"""Benchmark of the fold with several metrics per experiment (schema/0009); prints one JSON object.

    python bench/bench_metrics_fold.py            # the full run: 1,000,000-update backlogs (a few minutes)
    python bench/bench_metrics_fold.py --quick    # a smoke run (tests/integration/test_metrics_fold_bench.py)

Uses DATABASE_URL (a role that may CREATE DATABASE) or starts the embedded PostgreSQL; each section gets a fresh
database. The backlog is inserted in bulk (no producer calls, no NOTIFY): what is measured is the fold.

Section "fold" (issue "Several metrics per experiment": >= 150,000 metric updates/s draining 1,000,000):
  metrics       a backlog of ab_record_metric updates only, spread over every experiment x variant x metric
                (proportion, mean with a covariate on half of them, ratio): the fold SQL alone, in batches of
                foldBatchSize (50,000), and the worker process (`python -m worker run`) woken by one NOTIFY, which
                folds and evaluates every experiment touched
  mixed         half built-in updates (ab_record_metrics), half metric updates: the fold SQL alone
  builtin       built-in updates only (experiments without ab_metrics rows, as before schema/0009): the fold SQL
                alone, to compare with bench_daemon.py's fold_backlog
  producer      ab_record_metric itself: calls/s over arrays (unnest), transactions of 1,000 rows, one session
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import asyncpg  # noqa: E402
from bench_daemon import Server, database_server, machine_info, seed_experiments, wait_until, worker  # noqa: E402

from worker.db.connect import connect  # noqa: E402
from worker.db.fold import fold_pending_updates  # noqa: E402

FULL = {"updates": 1_000_000, "experiments": 1_000, "producer_calls": 100_000}
QUICK = {"updates": 20_000, "experiments": 50, "producer_calls": 2_000}
BATCH = 50_000  # the default foldBatchSize

METRICS = (("conversion_rate", "proportion", "primary"), ("basket", "mean", "guardrail"), ("rps", "ratio", "guardrail"))


async def seed_metrics(conn: asyncpg.Connection, experiment_ids: list[int]) -> None:
    """Three metrics per experiment: a proportion, a mean and a ratio."""
    for name, kind, role in METRICS:
        await conn.execute(
            "INSERT INTO ab_metrics (experiment_id, name, kind, role)"
            " SELECT id, $2, $3, $4 FROM unnest($1::bigint[]) id",
            experiment_ids,
            name,
            kind,
            role,
        )


async def preload_metric_updates(conn: asyncpg.Connection, n: int) -> None:
    """n metric updates spread round-robin over every (variant, metric), with the sums their kind needs (10 units
    each); half of the mean updates carry a covariate."""
    await conn.execute(
        """INSERT INTO ab_metric_updates (experiment_id, variant_id, metric_id, exposures, conversions, errors,
                                          value_sum, value_sum_sq, denominator_sum, denominator_sum_sq,
                                          value_denominator_product_sum, pre_sum, pre_sum_sq, pre_value_product_sum)
           SELECT t.experiment_id, t.variant_id, t.metric_id, 10, 0, 0,
                  CASE t.kind WHEN 'proportion' THEN (g % 4)::float8 ELSE 25.0 + g % 7 END,
                  CASE t.kind WHEN 'proportion' THEN (g % 4)::float8 ELSE 400.0 END,
                  CASE WHEN t.kind = 'ratio' THEN 20.0 END, CASE WHEN t.kind = 'ratio' THEN 50.0 END,
                  CASE WHEN t.kind = 'ratio' THEN 60.0 END,
                  CASE WHEN t.kind = 'mean' AND g % 2 = 0 THEN 20.0 END,
                  CASE WHEN t.kind = 'mean' AND g % 2 = 0 THEN 300.0 END,
                  CASE WHEN t.kind = 'mean' AND g % 2 = 0 THEN 320.0 END
             FROM generate_series(1, $1) g
             JOIN (SELECT v.experiment_id, v.id AS variant_id, m.id AS metric_id, m.kind,
                          row_number() OVER (ORDER BY v.id, m.id) - 1 AS k
                     FROM ab_variants v JOIN ab_metrics m ON m.experiment_id = v.experiment_id) t
               ON t.k = g % (SELECT count(*) FROM ab_variants v
                                JOIN ab_metrics m ON m.experiment_id = v.experiment_id)""",
        n,
    )


async def preload_builtin_updates(conn: asyncpg.Connection, n: int) -> None:
    """n ab_record_metrics-shaped updates spread over every variant (as bench_daemon.py's fold_backlog)."""
    await conn.execute(
        "INSERT INTO ab_metric_updates (experiment_id, variant_id, exposures, conversions, errors) "
        "SELECT v.experiment_id, v.id, 10, 1, 0 FROM generate_series(1, $1) g "
        "JOIN (SELECT id, experiment_id, row_number() OVER (ORDER BY id) - 1 AS k FROM ab_variants) v "
        "  ON v.k = g % (SELECT count(*) FROM ab_variants)",
        n,
    )


async def fold_sql_alone(conn: asyncpg.Connection, n: int) -> dict[str, Any]:
    await conn.execute("VACUUM ANALYZE ab_metric_updates")
    t = time.perf_counter()
    result = await fold_pending_updates(conn, batch_size=BATCH)
    seconds = time.perf_counter() - t
    assert result.updates == n, (result.updates, n)
    return {"seconds": round(seconds, 3), "updates_per_s": round(n / seconds)}


async def exactly_once(conn: asyncpg.Connection, builtin: int, metric: int) -> bool:
    """Every update counted once: in its variant's version, and (metric updates) in its metric's statistics."""
    row = await conn.fetchrow(
        """SELECT (SELECT coalesce(sum(updates_folded), 0) FROM ab_variant_stats) AS version,
                  (SELECT coalesce(sum(updates_folded), 0) FROM ab_metric_stats) AS metric,
                  (SELECT coalesce(sum(units), 0) FROM ab_metric_stats) AS units,
                  (SELECT coalesce(sum(exposures), 0) FROM ab_variant_stats) AS exposures,
                  (SELECT count(*) FROM ab_metric_updates) AS left_over"""
    )
    return bool(
        row["version"] == builtin + metric
        and row["metric"] == metric
        and row["units"] == 10 * metric
        and row["exposures"] == 10 * builtin
        and row["left_over"] == 0
    )


async def bench_metrics(server: Server, p: dict[str, Any]) -> dict[str, Any]:
    n, n_exp = p["updates"], p["experiments"]
    out: dict[str, Any] = {"updates": n, "experiments": n_exp, "variants": 2, "metrics_per_experiment": 3}
    async with server.database("mfold") as url:
        conn = await connect(url)
        ids = await seed_experiments(conn, n_exp)
        await seed_metrics(conn, ids)
        t = time.perf_counter()
        await preload_metric_updates(conn, n)
        out["preload_seconds"] = round(time.perf_counter() - t, 2)
        out["sql_only"] = await fold_sql_alone(conn, n)
        out["exactly_once"] = await exactly_once(conn, 0, n)
        await conn.execute("VACUUM ab_metric_updates")
        # The worker process: wakes on one NOTIFY, folds the backlog and evaluates every experiment it touched.
        async with worker(url) as w:
            await preload_metric_updates(conn, n)
            t = time.perf_counter()
            await conn.execute("SELECT pg_notify('ab_metrics', $1)", str(ids[0]))
            drained = await wait_until(
                lambda: conn.fetchval("SELECT NOT EXISTS (SELECT 1 FROM ab_metric_updates)"), 600, 0.01
            )
            out["worker"] = {
                "seconds": round(drained, 3),
                "updates_per_s": round(n / drained),
                "fold_batches_logged": len(w.events("metrics.folded")),
            }
        out["worker"]["exactly_once"] = await exactly_once(conn, 0, 2 * n)
        await conn.close()
    return out


async def bench_mixed(server: Server, p: dict[str, Any]) -> dict[str, Any]:
    n, n_exp = p["updates"], p["experiments"]
    async with server.database("mixed") as url:
        conn = await connect(url)
        ids = await seed_experiments(conn, n_exp)
        await seed_metrics(conn, ids)
        await preload_builtin_updates(conn, n // 2)
        await preload_metric_updates(conn, n - n // 2)
        out: dict[str, Any] = {"updates": n, "builtin": n // 2, "metric": n - n // 2}
        out["sql_only"] = await fold_sql_alone(conn, n)
        out["exactly_once"] = await exactly_once(conn, n // 2, n - n // 2)
        await conn.close()
    return out


async def bench_builtin(server: Server, p: dict[str, Any]) -> dict[str, Any]:
    n, n_exp = p["updates"], p["experiments"]
    async with server.database("builtin") as url:
        conn = await connect(url)
        await seed_experiments(conn, n_exp)
        await preload_builtin_updates(conn, n)
        out: dict[str, Any] = {"updates": n}
        out["sql_only"] = await fold_sql_alone(conn, n)
        out["exactly_once"] = await exactly_once(conn, n, 0)
        await conn.close()
    return out


async def bench_producer(server: Server, p: dict[str, Any]) -> dict[str, Any]:
    calls, n_exp = p["producer_calls"], min(p["experiments"], 100)
    async with server.database("producer") as url:
        conn = await connect(url)
        ids = await seed_experiments(conn, n_exp)
        await seed_metrics(conn, ids)
        names = [r["name"] for r in await conn.fetch("SELECT name FROM ab_experiments ORDER BY id")]
        batch = """SELECT ab_record_metric(e, v, 'rps', n, x, xx, y, yy, xy)
                     FROM unnest($1::text[], $2::text[], $3::bigint[], $4::float8[], $5::float8[], $6::float8[],
                                 $7::float8[], $8::float8[]) AS u(e, v, n, x, xx, y, yy, xy)"""
        size = 1_000
        t = time.perf_counter()
        for start in range(0, calls, size):
            k = min(size, calls - start)
            exps = [names[(start + i) % len(names)] for i in range(k)]
            variants = ["control" if i % 2 else "variant-b" for i in range(k)]
            async with conn.transaction():
                await conn.execute(
                    batch, exps, variants, [10] * k, [100.0] * k, [2_000.0] * k, [20.0] * k, [50.0] * k, [250.0] * k
                )
        seconds = time.perf_counter() - t
        await conn.close()
    return {
        "calls": calls,
        "rows_per_transaction": size,
        "seconds": round(seconds, 3),
        "calls_per_s": round(calls / seconds),
    }


SECTIONS = {"metrics": bench_metrics, "mixed": bench_mixed, "builtin": bench_builtin, "producer": bench_producer}


async def main(quick: bool, only: list[str] | None) -> dict[str, Any]:
    params = QUICK if quick else FULL
    admin_url, embedded = database_server()
    server = Server(admin_url, embedded)
    try:
        probe = await asyncpg.connect(admin_url)
        pg_version = await probe.fetchval("SHOW server_version")
        await probe.close()
        fold: dict[str, Any] = {"batch_size": BATCH}
        result: dict[str, Any] = {
            "bench": "metrics_fold",
            "quick": quick,
            "machine": machine_info(pg_version, embedded is not None),
            "fold": fold,
        }
        for name, fn in SECTIONS.items():
            if only and name not in only:
                continue
            fold[name] = await fn(server, params)
        if "metrics" in fold:
            fold["target_updates_per_s"] = 150_000
            fold["meets_target"] = fold["metrics"]["sql_only"]["updates_per_s"] >= 150_000
        result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        return result
    finally:
        if embedded is not None:
            embedded.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), help="run only these sections")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.quick, args.only)), indent=2))
