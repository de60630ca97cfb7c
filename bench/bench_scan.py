"""Benchmark of the scan as a user runs it: ``autopromote scan --dry-run --json`` from process start to exit, over
10,000 running single-metric experiments (or, with ``--metrics 5``, 5 metrics each); prints one JSON object.

    python bench/bench_scan.py                 # 10,000 experiments, 5 timed runs after a first (cold) one
    python bench/bench_scan.py --metrics 5     # the same with 4 ab_metrics rows beside the built-in metric
    python bench/bench_scan.py --quick         # 300 experiments, 1 timed run (a smoke run)
    python bench/bench_scan.py --experiments 20000 --runs 3

Uses DATABASE_URL (a role that may CREATE DATABASE: the bench creates a scratch database and drops it) or starts the
embedded PostgreSQL. The experiments are two-variant conversion experiments, 48 hours old, with folded statistics
of 10,000-60,000 exposures split 50/50 (seeded, so every run sees the same data); one in fifty has a real lift and
is eligible, so the dry run reports it. ``--metrics N`` adds N - 1 ``ab_metrics`` rows per experiment (a mean
guardrail, a ratio guardrail, a proportion secondary, a mean primary, then more of these kinds) with folded sums for
both variants, seeded too, A/A. The first run is reported apart: it writes every experiment's first
decision (a dry run is reported once per change of eligibility); the timed runs after it are the steady state.

Reported: each run's wall time (process start to exit, as a shell measures it) and the command's CPU time (user +
system: what the load of a shared machine does not inflate much), the command's start-up (``autopromote --help``)
and a bare interpreter's for comparison, and the machine with its load. When the database server runs on this
machine and its processes can be read (``/proc``), the CPU time of the command's server backends too (sampled every
10 ms while they live, so it can miss up to 10 ms per backend); otherwise that is in the wall time only.
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
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_daemon import Server, database_server, machine_info  # noqa: E402

from worker.db.connect import connect  # noqa: E402

TARGET_SECONDS = {1: 2.0, 5: 4.0}  # issue "Several metrics per experiment", numbers to reach: 10,000 experiments

# The rows beside the built-in metric for --metrics N (cycled when N - 1 is more): name, kind, role, margin.
METRIC_ROWS = (
    ("revenue_per_user", "mean", "guardrail", 0.05),
    ("pages_per_session", "ratio", "guardrail", 0.03),
    ("retained", "proportion", "secondary", 0.0),
    ("basket_size", "mean", "primary", 0.0),
)


async def seed(url: str, n: int, seed_value: int = 1, metrics: int = 1) -> int:
    """``n`` running two-variant experiments with folded statistics and ``metrics - 1`` ab_metrics rows each;
    returns how many have a real lift."""
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
        if metrics > 1:
            await seed_metrics(conn, ids, {(r[0], r[1]): r[2] for r in rows}, metrics - 1, rng)
        await conn.execute("ANALYZE")
        return winners
    finally:
        await conn.close()


async def seed_metrics(
    conn: Any, ids: list[int], units: dict[tuple[int, str], int], count: int, rng: random.Random
) -> None:
    """``count`` ab_metrics rows per experiment (METRIC_ROWS, cycled) with each variant's folded sums, A/A."""
    rows = [METRIC_ROWS[i % len(METRIC_ROWS)] for i in range(count)]
    names = [name if i < len(METRIC_ROWS) else f"{name}_{i // len(METRIC_ROWS)}" for i, (name, *_) in enumerate(rows)]
    for name, (_, kind, role, margin) in zip(names, rows, strict=True):
        await conn.execute(
            "INSERT INTO ab_metrics (experiment_id, name, kind, role, margin) "
            "SELECT id, $2, $3, $4, $5 FROM unnest($1::bigint[]) id",
            ids,
            name,
            kind,
            role,
            margin,
        )
    sums: list[tuple[Any, ...]] = []
    for exp_id in ids:
        for name, (_, kind, _, _) in zip(names, rows, strict=True):
            base = rng.uniform(0.2, 0.6) if kind == "proportion" else rng.uniform(5.0, 50.0)
            for variant in ("control", "variant-b"):
                n = units[(exp_id, variant)]
                noise = 1.0 + rng.gauss(0.0, 1.0 / n**0.5)
                if kind == "proportion":
                    x = float(round(n * base * noise))
                    sums.append((exp_id, name, variant, n, x, x, 0.0, 0.0, 0.0))
                elif kind == "mean":  # lognormal-like, coefficient of variation 1
                    mean = base * noise
                    sums.append((exp_id, name, variant, n, n * mean, n * 2.0 * mean * mean, 0.0, 0.0, 0.0))
                else:  # pages per session: ~2 sessions per user (variance 1), ~3 pages per session
                    y = 2.0 * n * noise
                    x = 3.0 * y * (1.0 + rng.gauss(0.0, 0.5 / n**0.5))
                    sums.append((exp_id, name, variant, n, x, n * (48.0 * noise), y, n * 5.0, n * 15.0))
    cols = list(zip(*sums, strict=True))
    await conn.execute(
        """INSERT INTO ab_metric_stats (metric_id, variant_id, experiment_id, units, value_sum, value_sum_sq,
                                        denominator_sum, denominator_sum_sq, value_denominator_product_sum,
                                        updates_folded)
           SELECT m.id, v.id, v.experiment_id, s.units, s.x, s.xx, s.y, s.yy, s.xy, 1
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::float8[], $6::float8[],
                         $7::float8[], $8::float8[], $9::float8[]) s(experiment_id, metric, variant, units, x, xx, y,
                                                                    yy, xy)
             JOIN ab_metrics m ON m.experiment_id = s.experiment_id AND m.name = s.metric
             JOIN ab_variants v ON v.experiment_id = s.experiment_id AND v.name = s.variant""",
        *cols,
    )


class BackendCpu:
    """The CPU seconds (user + system) of a database's server backends, sampled from /proc every 10 ms while a
    command runs: the server's share of the command's work. Unavailable (None) when the server is not a local
    process whose /proc entries this process can read."""

    def __init__(self, postmaster: int | None, database: str) -> None:
        self.postmaster = postmaster
        self.marker = f" {database} ".encode()
        self.tick = os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _stat(pid: int) -> tuple[int, float] | None:
        """(parent pid, user + system clock ticks) of a process, None when it is gone."""
        try:
            fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            return None
        return int(fields[1]), float(fields[11]) + float(fields[12])

    def _backends(self) -> list[int]:
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            stat = self._stat(int(entry))
            if stat is None or stat[0] != self.postmaster:
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if self.marker in cmdline + b" ":
                out.append(int(entry))
        return out

    def measure(self, run: Any) -> tuple[Any, float | None]:
        """run() while sampling; its result and the backends' CPU seconds."""
        if self.postmaster is None:
            return run(), None
        ticks: dict[int, float] = {}
        done = threading.Event()

        def sample() -> None:
            known: set[int] = set()
            last_scan = 0.0
            while not done.is_set():
                now = time.monotonic()
                if now - last_scan > 0.05:
                    known.update(self._backends())
                    last_scan = now
                for pid in known:
                    stat = self._stat(pid)
                    if stat is not None:
                        ticks[pid] = stat[1]
                done.wait(0.01)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            result = run()
        finally:
            done.set()
            thread.join()
        return result, sum(ticks.values()) / self.tick


async def postmaster_pid(url: str) -> int | None:
    """The server's postmaster process id when it runs on this machine and /proc shows it, else None."""
    conn = await connect(url)
    try:
        stat = BackendCpu._stat(await conn.fetchval("SELECT pg_backend_pid()"))  # while the backend lives
    finally:
        await conn.close()
    return None if stat is None else stat[0]


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


def run_scans(url: str, runs: int, backend: BackendCpu, metrics: int = 1) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTO_PROMOTION_")}
    env["DATABASE_URL"] = url
    scan = [*command(), "scan", "--dry-run", "--json"]
    (first, proc), first_server = backend.measure(lambda: timed(scan, env))
    if proc.returncode not in (0, 1):
        raise SystemExit(f"scan failed ({proc.returncode}): {proc.stderr[-2000:]}")
    data = json.loads(proc.stdout)
    first_cpu = CPU[-1]
    seconds, cpu, server = [], [], []
    for _ in range(runs):
        (elapsed, proc), server_cpu = backend.measure(lambda: timed(scan, env))
        if proc.returncode not in (0, 1):
            raise SystemExit(f"scan failed ({proc.returncode}): {proc.stderr[-2000:]}")
        seconds.append(elapsed)
        cpu.append(CPU[-1])
        if server_cpu is not None:
            server.append(server_cpu)
    help_seconds = [timed([*command(), "--help"], env)[0] for _ in range(max(3, runs))]
    help_cpu = CPU[-max(3, runs) :]
    bare = [timed([sys.executable, "-c", "pass"], env)[0] for _ in range(max(3, runs))]
    return {
        "command": " ".join(["autopromote", *scan[-3:]]),
        "scanned": data["scanned"],
        "eligible": data["eligible"],
        "results": len(data["results"]),
        "first_run_seconds": round(first, 3),
        "metrics_per_experiment": max((len(r.get("metrics") or ()) for r in data["results"]), default=0),
        "first_run_cpu_seconds": round(first_cpu, 3),
        "first_run_server_cpu_seconds": None if first_server is None else round(first_server, 3),
        "runs": runs,
        "seconds": [round(s, 3) for s in seconds],
        "seconds_median": round(statistics.median(seconds), 3),
        "seconds_min": round(min(seconds), 3),
        "cpu_seconds": [round(c, 3) for c in cpu],
        "cpu_seconds_median": round(statistics.median(cpu), 3),
        "server_cpu_seconds_median": round(statistics.median(server), 3) if server else None,
        "target_seconds": TARGET_SECONDS.get(metrics),
        "startup_help_seconds_median": round(statistics.median(help_seconds), 3),
        "startup_help_cpu_seconds_median": round(statistics.median(help_cpu), 3),
        "bare_python_seconds_median": round(statistics.median(bare), 3),
    }


async def main(n: int, runs: int, metrics: int = 1) -> dict[str, Any]:
    admin_url, embedded = database_server()
    server = Server(admin_url, embedded)
    try:
        probe = await connect(admin_url)
        pg_version = await probe.fetchval("SHOW server_version")
        await probe.close()
        result: dict[str, Any] = {
            "bench": "scan",
            "experiments": n,
            "metrics_per_experiment": metrics,
            "machine": machine_info(pg_version, embedded is not None),
        }
        async with server.database("scan") as url:
            t = time.perf_counter()
            result["winners_seeded"] = await seed(url, n, metrics=metrics)
            result["seed_seconds"] = round(time.perf_counter() - t, 1)
            backend = BackendCpu(await postmaster_pid(url), url.rsplit("/", 1)[1].split("?")[0])
            result["scan"] = await asyncio.to_thread(run_scans, url, runs, backend, metrics)
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
    parser.add_argument(
        "--metrics", type=int, default=1, help="metrics per experiment: the built-in one + N - 1 ab_metrics rows"
    )
    args = parser.parse_args()
    if args.metrics < 1:
        parser.error("--metrics counts the built-in metric: 1 or more")
    n = args.experiments or (300 if args.quick else 10_000)
    runs = args.runs or (1 if args.quick else 5)
    print(json.dumps(asyncio.run(main(n, runs, args.metrics)), indent=2))
