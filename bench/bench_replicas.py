"""Do replicas share the evaluation work? Prints one JSON object.

    python bench/bench_replicas.py           # 1, 2 and 3 replicas, about a minute
    python bench/bench_replicas.py --quick   # a small smoke run

Every replica hears every NOTIFY, and only one of them folds each update. An experiment a fold touched should be
evaluated about once per fold, whatever the number of replicas: evaluations per folded batch within 1.1x of one
replica's.

For 1, 2 and 3 replicas (worker processes, `python -m worker run`, on a fresh database each):
  steady      a producer commits one update per transaction at `rate` updates/s over `experiments` experiments for
              `seconds` s. folded_batches counts (fold, experiment) pairs from the replicas' `metrics.folded` log
              events; evaluations is the sum of ab_experiment_state.evaluations (every stored decision, whichever
              replica made it). evaluations_per_folded_batch and its ratio to the one-replica run.
  sequential  the issue's case: `updates` updates to one experiment, each committed after the previous one was
              folded and evaluated; evaluations per update.

Uses DATABASE_URL (a role that may CREATE DATABASE) or starts the embedded PostgreSQL 16. The experiments never
become eligible (they started an hour ago), so no promotion changes what is evaluated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import asyncpg  # noqa: E402
from bench_daemon import Server, WorkerProcess, database_server, machine_info, wait_until  # noqa: E402

FULL = {"replicas": [1, 2, 3], "rate": 100, "seconds": 20.0, "experiments": 50, "updates": 20}
QUICK = {"replicas": [1, 2], "rate": 100, "seconds": 2.0, "experiments": 10, "updates": 5}
TARGET_RATIO = 1.1


@contextlib.asynccontextmanager
async def replicas(url: str, n: int) -> AsyncIterator[list[WorkerProcess]]:
    """``n`` worker processes on ``url``, logging every fold (debug), each caught up."""
    workers = [WorkerProcess(url, {"LOG_LEVEL": "debug"}).start() for _ in range(n)]
    try:
        for w in workers:
            await w.wait_for_event("daemon.caught_up")
        yield workers
    finally:
        for w in workers:
            w.stop()


async def seed(conn: asyncpg.Connection, n: int, prefix: str) -> list[str]:
    names = [f"{prefix}-{i:04d}" for i in range(n)]
    ids = [
        r[0]
        for r in await conn.fetch(
            "INSERT INTO ab_experiments (name, status, started_at) "
            "SELECT x, 'running', now() - interval '1 hour' FROM unnest($1::text[]) x RETURNING id",
            names,
        )
    ]
    await conn.execute(
        "INSERT INTO ab_variants (experiment_id, name, is_control) "
        "SELECT id, v.name, v.name = 'control' FROM unnest($1::bigint[]) id, (VALUES ('control'), ('b')) v(name)",
        ids,
    )
    return names


async def all_evaluated(conn: asyncpg.Connection) -> bool:
    """Queue empty and every experiment's stored decision read its current statistics version."""
    try:
        return bool(
            await conn.fetchval(
                "SELECT NOT EXISTS (SELECT 1 FROM ab_metric_updates) AND NOT EXISTS ("
                " SELECT 1 FROM ab_experiments e LEFT JOIN ab_experiment_state st ON st.experiment_id = e.id"
                " WHERE ab_stats_version(e.id) > 0 AND ab_stats_version(e.id) IS DISTINCT FROM st.evaluated_version)"
            )
        )
    except asyncpg.UndefinedFunctionError:
        # A schema before 0007 (to measure the code before the change): evaluated after the last fold, by time,
        # which is good enough once the producer has stopped.
        return bool(
            await conn.fetchval(
                "SELECT NOT EXISTS (SELECT 1 FROM ab_metric_updates) AND NOT EXISTS ("
                " SELECT 1 FROM ab_experiments e LEFT JOIN ab_experiment_state st ON st.experiment_id = e.id"
                " WHERE coalesce(st.last_evaluated_at, '-infinity') <"
                "       (SELECT max(updated_at) FROM ab_variant_stats s WHERE s.experiment_id = e.id))"
            )
        )


async def evaluations(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT coalesce(sum(evaluations), 0) FROM ab_experiment_state"))


async def settle(conn: asyncpg.Connection) -> int:
    """Wait until everything is folded and evaluated and the evaluation count stops moving (late duplicates from
    other replicas count too); the count."""
    await wait_until(lambda: all_evaluated(conn), 120, 0.02)
    count = await evaluations(conn)
    while True:
        await asyncio.sleep(0.5)
        again = await evaluations(conn)
        if again == count:
            return count
        count = again


def folded_batches(workers: list[WorkerProcess]) -> tuple[int, int]:
    """(fold, experiment) pairs and updates, from every replica's metrics.folded events."""
    events = [e for w in workers for e in w.events("metrics.folded")]
    return sum(int(e["experiments"]) for e in events), sum(int(e["updates"]) for e in events)


async def steady(server: Server, n: int, p: dict[str, Any]) -> dict[str, Any]:
    async with server.database(f"replicas{n}") as url:
        conn = await asyncpg.connect(url)
        try:
            names = await seed(conn, p["experiments"], "steady")
            async with replicas(url, n) as workers:
                total = int(p["rate"] * p["seconds"])
                interval = 1.0 / p["rate"]
                start = time.perf_counter()
                for i in range(total):
                    await conn.execute(
                        "SELECT ab_record_metrics($1, $2, 10, 1)",
                        names[i % len(names)],
                        "control" if (i // len(names)) % 2 else "b",
                    )
                    delay = start + (i + 1) * interval - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                achieved = total / (time.perf_counter() - start)
                evaluated = await settle(conn)
                batches, updates = folded_batches(workers)
        finally:
            await conn.close()
    return {
        "replicas": n,
        "updates": total,
        "updates_folded": updates,
        "achieved_rate_updates_per_s": round(achieved),
        "folded_batches": batches,
        "evaluations": evaluated,
        "evaluations_per_folded_batch": round(evaluated / batches, 4) if batches else None,
    }


async def sequential(server: Server, n: int, p: dict[str, Any]) -> dict[str, Any]:
    async with server.database(f"sequential{n}") as url:
        conn = await asyncpg.connect(url)
        try:
            [name] = await seed(conn, 1, "one")
            async with replicas(url, n):
                for i in range(p["updates"]):
                    await conn.execute("SELECT ab_record_metrics($1, $2, 10, 1)", name, "control" if i % 2 else "b")
                    await settle(conn)
                evaluated = await evaluations(conn)
        finally:
            await conn.close()
    return {
        "replicas": n,
        "updates": p["updates"],
        "evaluations": evaluated,
        "evaluations_per_update": round(evaluated / p["updates"], 4),
    }


async def main(quick: bool) -> dict[str, Any]:
    p = QUICK if quick else FULL
    admin_url, embedded = database_server()
    server = Server(admin_url, embedded)
    try:
        probe = await asyncpg.connect(admin_url)
        pg_version = await probe.fetchval("SHOW server_version")
        await probe.close()
        result: dict[str, Any] = {
            "bench": "replicas",
            "quick": quick,
            "params": p,
            "machine": machine_info(pg_version, embedded is not None),
        }
        runs = {n: await steady(server, n, p) for n in p["replicas"]}
        base = runs[p["replicas"][0]]["evaluations_per_folded_batch"]
        for run in runs.values():
            per = run["evaluations_per_folded_batch"]
            run["ratio_to_one_replica"] = round(per / base, 4) if per is not None and base else None
        result["steady"] = {str(n): run for n, run in runs.items()}
        result["sequential"] = {str(n): await sequential(server, n, p) for n in p["replicas"]}
        ratios = [r["ratio_to_one_replica"] for r in runs.values()]
        result["max_ratio_to_one_replica"] = max((r for r in ratios if r is not None), default=None)
        result["target_ratio"] = TARGET_RATIO
        result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        return result
    finally:
        if embedded is not None:
            embedded.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.quick)), indent=2, default=str))
