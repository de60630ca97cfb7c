"""Benchmark of serving the decision (schema/0008_serving.sql and clients/openfeature-python); prints one JSON object.

    python bench/bench_serving.py            # the full run (about a minute)
    python bench/bench_serving.py --quick    # a small smoke run (tests/integration/test_serving_bench.py runs it)

Uses DATABASE_URL (a role that may CREATE DATABASE) or starts the embedded PostgreSQL 16; a fresh database.

Sections:
  propagation     commit of a promotion (the engine's promote_winner) or of a rollback -> a provider in ANOTHER
                  process serving the new variant (or the caller's default) to every one of `units` units
  evaluation      one flag evaluation from the provider's cache, in process: the provider's resolve and the
                  OpenFeature client's get_string_details (hooks, context merging) around it
  sql_assign      SELECT ab_assign(...) over `ids` unit ids in one statement
  python_assign   the provider's assignment function over `ids` distinct unit ids
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
from ab_autopromote_openfeature import AutoPromoteProvider, fnv1a32, hash_v2  # noqa: E402
from ab_autopromote_openfeature.provider import ServedExperiment  # noqa: E402
from bench_daemon import database_server, machine_info  # noqa: E402  (one description of the machine for every bench)
from openfeature import api  # noqa: E402
from openfeature.evaluation_context import EvaluationContext  # noqa: E402
from openfeature.flag_evaluation import Reason  # noqa: E402

from worker.db.connect import connect, create_pool, with_database  # noqa: E402
from worker.db.migrate import migrate  # noqa: E402

WINNER = {"control": (17_500, 1_750), "variant-b": (17_000, 1_904)}
FULL = {"experiments": 50, "units": 200, "ids": 100_000, "evaluations": 200_000}
QUICK = {"experiments": 3, "units": 50, "ids": 5_000, "evaluations": 5_000}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ------------------------------------------------------------------------------------ the other process
def serve(dsn: str, units: int) -> None:
    """The application process: a provider, and a loop that reports when every unit sees what it is told."""
    provider = AutoPromoteProvider(dsn, refresh_interval=3600)
    provider.initialize()
    contexts = [EvaluationContext(targeting_key=f"user-{i}") for i in range(units)]
    print("ready", flush=True)
    for line in sys.stdin:
        flag, expect = line.split()
        while True:
            for c in contexts:
                d = provider.resolve_string_details(flag, "default", c)
                if expect == "DISABLED":
                    if d.reason != Reason.DISABLED:
                        break
                elif d.value != expect or d.reason != Reason.SPLIT:
                    break
            else:
                print(f"{flag} {time.monotonic()}", flush=True)
                break
            time.sleep(0.0002)  # let the provider's thread have the GIL between sweeps
    provider.shutdown()


# ------------------------------------------------------------------------------------------------ sections
async def bench_propagation(db_url: str, params: dict[str, Any]) -> dict[str, Any]:
    from worker.config import load_config, load_settings
    from worker.engine import Engine

    conn = await connect(db_url)
    names = [f"served-{i}" for i in range(params["experiments"])]
    for name in names:
        async with conn.transaction():
            exp_id = await conn.fetchval(
                "INSERT INTO ab_experiments (name, status, started_at) "
                "VALUES ($1, 'running', now() - interval '2 days') RETURNING id",
                name,
            )
            for i, (variant, (n, conv)) in enumerate(WINNER.items()):
                await conn.execute(
                    "INSERT INTO ab_variants (experiment_id, name, is_control) VALUES ($1, $2, $3)",
                    exp_id,
                    variant,
                    i == 0,
                )
                await conn.execute("SELECT ab_record_metrics($1, $2, $3, $4)", name, variant, n, conv)
    pool = await create_pool(db_url, min_size=1, max_size=4)
    engine = Engine(pool, load_settings({"SLACK_WEBHOOK_URL": "http://127.0.0.1:9/hook"}), load_config(env={}))
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(THIS),
        "--serve",
        db_url,
        "--units",
        str(params["units"]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert (await asyncio.wait_for(child.stdout.readline(), 60)).strip() == b"ready"
        promote_ms: list[float] = []
        rollback_ms: list[float] = []
        for name in names:
            for action in ("promote", "rollback"):
                child.stdin.write(f"{name} {'variant-b' if action == 'promote' else 'DISABLED'}\n".encode())
                await child.stdin.drain()
                if action == "promote":
                    result = await engine.promote_winner(name, actor="bench")
                    assert result["success"], result
                    promotion_id = result["promotionId"]
                else:
                    await engine.rollback_promotion(promotion_id, "bench", actor="bench")
                committed = time.monotonic()  # the call returns right after its COMMIT
                seen_line = await asyncio.wait_for(child.stdout.readline(), 30)
                seen = float(seen_line.split()[1])
                (promote_ms if action == "promote" else rollback_ms).append((seen - committed) * 1000)
        both = promote_ms + rollback_ms
        return {
            "changes": len(both),
            "units_per_check": params["units"],
            "p50_ms": round(pct(both, 0.5), 2),
            "p99_ms": round(pct(both, 0.99), 2),
            "max_ms": round(max(both), 2),
            "promotion_p50_ms": round(pct(promote_ms, 0.5), 2),
            "rollback_p50_ms": round(pct(rollback_ms, 0.5), 2),
            "note": "commit returned in this process -> every unit served the new variant (or the default after a "
            "rollback) by a provider in another process; negative values would mean the other process "
            "saw the change before this one's commit call returned",
        }
    finally:
        with contextlib.suppress(ProcessLookupError, OSError):
            child.stdin.close()
        try:
            await asyncio.wait_for(child.wait(), 10)
        except TimeoutError:
            child.kill()
        await pool.close()
        await conn.close()


async def bench_evaluation(db_url: str, params: dict[str, Any]) -> dict[str, Any]:
    conn = await connect(db_url)
    async with conn.transaction():
        exp_id = await conn.fetchval(
            "INSERT INTO ab_experiments (name, status) VALUES ('evaluated', 'running') RETURNING id"
        )
        await conn.execute(
            "INSERT INTO ab_variants (experiment_id, name, is_control) VALUES ($1, 'control', true), "
            "($1, 'b', false), ($1, 'c', false)",
            exp_id,
        )
    await conn.close()
    provider = AutoPromoteProvider(db_url, refresh_interval=3600)
    await asyncio.to_thread(provider.initialize)
    api.set_provider(provider)
    client = api.get_client()
    contexts = [EvaluationContext(targeting_key=f"user-{i}") for i in range(params["evaluations"])]
    try:
        out: dict[str, Any] = {}
        for label, fn in (
            ("provider_resolve", provider.resolve_string_details),
            ("openfeature_client", client.get_string_details),
        ):
            per_call: list[float] = []
            batch = 100
            for start in range(0, len(contexts), batch):
                chunk = contexts[start : start + batch]
                t = time.perf_counter_ns()
                for c in chunk:
                    fn("evaluated", "default", c)
                per_call.append((time.perf_counter_ns() - t) / len(chunk) / 1000)
            out[f"{label}_median_us"] = round(statistics.median(per_call), 2)
            out[f"{label}_p99_us"] = round(pct(per_call, 0.99), 2)
        out["evaluations"] = len(contexts)
        out["note"] = "distinct unit ids, so every call hashes; per-call time of batches of 100"
        return out
    finally:
        provider.shutdown()
        api.clear_providers()


async def bench_sql_assign(db_url: str, params: dict[str, Any]) -> dict[str, Any]:
    conn = await connect(db_url)
    try:
        async with conn.transaction():
            exp_id = await conn.fetchval(
                "INSERT INTO ab_experiments (name, status) VALUES ('sql-served', 'running') RETURNING id"
            )
            await conn.execute(
                "INSERT INTO ab_variants (experiment_id, name, is_control) VALUES "
                "($1, 'control', true), ($1, 'b', false)",
                exp_id,
            )
        out: dict[str, Any] = {"ids": params["ids"]}
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        for label, expr in (("user_n", "'user-' || g"), ("uuid", "md5(g::text)::uuid::text")):
            rates, cpu_rates = [], []
            for _ in range(3):
                cpu0 = backend_cpu_seconds(backend)
                t = time.perf_counter()
                n = await conn.fetchval(
                    f"SELECT count(ab_assign('sql-served', {expr})) FROM generate_series(1, $1) g", params["ids"]
                )
                rates.append(n / (time.perf_counter() - t))
                cpu1 = backend_cpu_seconds(backend)
                if cpu0 is not None and cpu1 is not None and cpu1 > cpu0:
                    cpu_rates.append(n / (cpu1 - cpu0))
            out[f"{label}_assignments_per_s"] = round(statistics.median(rates))
            out[f"{label}_best_per_s"] = round(max(rates))
            if cpu_rates:  # what one core would do: the machine is shared, wall-clock rates vary with its load
                out[f"{label}_per_backend_cpu_s"] = round(statistics.median(cpu_rates))
        return out
    finally:
        await conn.close()


def backend_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a PostgreSQL backend on this machine (None when it is not local)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_python_assign(params: dict[str, Any]) -> dict[str, Any]:
    exp = ServedExperiment(
        id=1,
        name="py-served",
        status="running",
        seed_state=fnv1a32("py-served"),
        variants=("control", "b"),
        ends=(0.5, 1.0),
        metric_type="conversion",
        promotion_id=None,
    )
    out: dict[str, Any] = {"ids": params["ids"]}
    for label, ids in (
        ("user_n", [f"user-{i}" for i in range(params["ids"])]),
        ("uuid", [str(uuid.UUID(int=i * 7919 + 1)) for i in range(params["ids"])]),
        ("non_ascii", [f"usér-{i}-😀" for i in range(params["ids"])]),
    ):
        rates, cpu_rates = [], []
        for _ in range(3):
            t, cpu = time.perf_counter(), time.process_time()
            for u in ids:
                exp.assign(u)
            rates.append(len(ids) / (time.perf_counter() - t))
            cpu_rates.append(len(ids) / max(time.process_time() - cpu, 1e-9))
        out[f"{label}_assignments_per_s"] = round(statistics.median(rates))
        out[f"{label}_best_per_s"] = round(max(rates))
        out[f"{label}_per_cpu_s"] = round(statistics.median(cpu_rates))
    t = time.perf_counter()
    for i in range(min(params["ids"], 50_000)):
        hash_v2("py-served", f"user-{i}")
    out["hash_v2_with_seed_per_s"] = round(min(params["ids"], 50_000) / (time.perf_counter() - t))
    return out


# ------------------------------------------------------------------------------------------------ main
async def main(quick: bool, only: list[str] | None) -> dict[str, Any]:
    params = QUICK if quick else FULL
    admin_url, embedded = database_server()
    name = f"bench_serving_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_url)
    try:
        pg_version = await admin.fetchval("SHOW server_version")
        await admin.execute(f'CREATE DATABASE "{name}"')
        db_url = with_database(admin_url, name)
        conn = await connect(db_url)
        await migrate(conn)
        await conn.close()
        result: dict[str, Any] = {
            "bench": "serving",
            "quick": quick,
            "machine": machine_info(pg_version, embedded is not None),
        }
        sections = [
            ("propagation", bench_propagation),
            ("evaluation", bench_evaluation),
            ("sql_assign", bench_sql_assign),
        ]
        for key, fn in sections:
            if only and key not in only:
                continue
            t = time.perf_counter()
            result[key] = await fn(db_url, params)
            result[key]["bench_seconds"] = round(time.perf_counter() - t, 1)
        if not only or "python_assign" in only:
            result["python_assign"] = bench_python_assign(params)
        result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        result["targets"] = {
            "propagation_p50_ms": 100,
            "propagation_p99_ms": 1000,
            "evaluation_median_us": 20,
            "sql_assignments_per_s": 50_000,
            "python_assignments_per_s": 500_000,
        }
        return result
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        if embedded is not None:
            embedded.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--only", nargs="*", help="run only these sections")
    parser.add_argument("--serve", metavar="DSN", help=argparse.SUPPRESS)  # the other process of `propagation`
    parser.add_argument("--units", type=int, default=200, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.units)
        sys.exit(0)
    import logging

    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )
    print(json.dumps(asyncio.run(main(args.quick, args.only)), indent=2, default=str))
