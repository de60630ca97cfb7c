"""Benchmark of the scan as a user runs it: ``autopromote scan --dry-run --json`` from process start to exit, over
10,000 running single-metric experiments; prints one JSON object.

    python bench/bench_scan.py                 # 10,000 experiments, 5 timed runs after a first (cold) one
    python bench/bench_scan.py --quick         # 300 experiments, 1 timed run (a smoke run)
    python bench/bench_scan.py --experiments 20000 --runs 3

Uses DATABASE_URL (a role that may CREATE DATABASE: the bench creates a scratch database and drops it) or starts the
embedded PostgreSQL. The experiments are two-variant conversion experiments, 48 hours old, with folded statistics
of 10,000-60,000 exposures split 50/50 (seeded, so every run sees the same data); one in fifty has a real lift and
is eligible, so the dry run reports it. The first run is reported apart: it writes every experiment's first
decision (a dry run is reported once per change of eligibility); the timed runs after it are the steady state.

Reported: each run's wall time (process start to exit, as a shell measures it) and the command's CPU time (user +
system: what the load of a shared machine does not inflate much), the command's start-up (``autopromote --help``)
and a bare interpreter's for comparison, and the machine with its load. The database server's own time is in the
wall time only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_daemon import Server, database_server, machine_info  # noqa: E402

from worker.db.connect import connect  # noqa: E402

TARGET_SECONDS = 2.0  # issue "Several metrics per experiment", numbers to reach: 10,000 experiments


async def seed(url: str, n: int, seed_value: int = 1) -> int:
    """``n`` running two-variant experiments with folded statistics; returns how many have a real lift."""
    rng = random.Random(seed_value)
    conn = await connect(url)
    try:
        ids = [
            r[0]
            for r in await conn.fetch(
                "INSERT INTO ab_experiments (name, status, started_at) "
                "SELECT 'scan-' || lpad(i::text, 6, '0'), 'running', now() - interval '48 hours' "
                "FROM generate_series(1, $1) i RETURNING id",
                n,
            )
        ]
        await conn.execute(
            "INSERT INTO ab_variants (experiment_id, name, is_control) "
            "SELECT id, v.name, v.name = 'control' FROM unnest($1::bigint[]) id, "
            "(VALUES ('control'), ('variant-b')) v(name)",
            ids,
        )
        winners = 0
        rows: list[tuple[int, str, int, int]] = []
        for exp_id in ids:
            rate = rng.uniform(0.02, 0.2)
            lift = 0.25 if rng.random() < 0.02 else 0.0
            winners += lift > 0
            total = 2 * rng.randint(5_000, 30_000)
            control_n = round(total / 2 + rng.gauss(0, total**0.5 / 2))  # a 50/50 split, as assignment makes it
            for name, n, r in (("control", control_n, rate), ("variant-b", total - control_n, rate * (1 + lift))):
                conversions = round(n * r + rng.gauss(0, (n * r * (1 - r)) ** 0.5))
                rows.append((exp_id, name, n, max(0, conversions)))
        await conn.execute(
            "INSERT INTO ab_variant_stats (variant_id, experiment_id, exposures, conversions, updates_folded) "
            "SELECT v.id, v.experiment_id, s.exposures, s.conversions, 1 "
            "FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[]) s(experiment_id, name, exposures, "
            "conversions) JOIN ab_variants v ON v.experiment_id = s.experiment_id AND v.name = s.name",
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
        )
        await conn.execute("ANALYZE")
        return winners
    finally:
        await conn.close()


def command() -> list[str]:
    """The ``autopromote`` console script next to this interpreter (what a user runs), else ``python -m worker``."""
    script = shutil.which("autopromote", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "worker"]


CPU: list[float] = []  # the CPU seconds (user + system) of each timed command, in order


def timed(args: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall seconds of one command, from process start to exit; its CPU seconds are appended to CPU."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, check=False)
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return elapsed, proc


def run_scans(url: str, runs: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTO_PROMOTION_")}
    env["DATABASE_URL"] = url
    scan = [*command(), "scan", "--dry-run", "--json"]
    first, proc = timed(scan, env)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"scan failed ({proc.returncode}): {proc.stderr[-2000:]}")
    data = json.loads(proc.stdout)
    first_cpu = CPU[-1]
    seconds, cpu = [], []
    for _ in range(runs):
        elapsed, proc = timed(scan, env)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"scan failed ({proc.returncode}): {proc.stderr[-2000:]}")
        seconds.append(elapsed)
        cpu.append(CPU[-1])
    help_seconds = [timed([*command(), "--help"], env)[0] for _ in range(max(3, runs))]
    help_cpu = CPU[-max(3, runs) :]
    bare = [timed([sys.executable, "-c", "pass"], env)[0] for _ in range(max(3, runs))]
    return {
        "command": " ".join(["autopromote", *scan[-3:]]),
        "scanned": data["scanned"],
        "eligible": data["eligible"],
        "results": len(data["results"]),
        "first_run_seconds": round(first, 3),
        "first_run_cpu_seconds": round(first_cpu, 3),
        "runs": runs,
        "seconds": [round(s, 3) for s in seconds],
        "seconds_median": round(statistics.median(seconds), 3),
        "seconds_min": round(min(seconds), 3),
        "cpu_seconds_median": round(statistics.median(cpu), 3),
        "target_seconds": TARGET_SECONDS,
        "startup_help_seconds_median": round(statistics.median(help_seconds), 3),
        "startup_help_cpu_seconds_median": round(statistics.median(help_cpu), 3),
        "bare_python_seconds_median": round(statistics.median(bare), 3),
    }


async def main(n: int, runs: int) -> dict[str, Any]:
    admin_url, embedded = database_server()
    server = Server(admin_url, embedded)
    try:
        probe = await connect(admin_url)
        pg_version = await probe.fetchval("SHOW server_version")
        await probe.close()
        result: dict[str, Any] = {
            "bench": "scan",
            "experiments": n,
            "machine": machine_info(pg_version, embedded is not None),
        }
        async with server.database("scan") as url:
            t = time.perf_counter()
            result["winners_seeded"] = await seed(url, n)
            result["seed_seconds"] = round(time.perf_counter() - t, 1)
            result["scan"] = await asyncio.to_thread(run_scans, url, runs)
        result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        return result
    finally:
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 experiments, one timed run")
    parser.add_argument("--experiments", type=int, help="running experiments to seed (default 10,000)")
    parser.add_argument("--runs", type=int, help="timed runs after the first (default 5)")
    args = parser.parse_args()
    n = args.experiments or (300 if args.quick else 10_000)
    runs = args.runs or (1 if args.quick else 5)
    print(json.dumps(asyncio.run(main(n, runs)), indent=2))
