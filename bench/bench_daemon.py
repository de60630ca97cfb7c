"""Benchmark of the long-running worker (`autopromote run`); prints one JSON object.

    python bench/bench_daemon.py            # the full run (a few minutes)
    python bench/bench_daemon.py --quick    # a small smoke run (tests/integration/test_daemon_bench.py runs it)

Uses DATABASE_URL (a role that may CREATE DATABASE) or starts the embedded PostgreSQL 16 (fsync and
synchronous_commit off: commits cost what the CPU costs, not what a disk costs). Each section gets a fresh database.
The worker runs as a separate process (`python -m worker run`), like in production.

Sections:
  decision_latency_idle  the same without background updates: the decision path alone
  decision_latency  commit of the update that makes an experiment eligible -> commit of its promotion (seen as the
                    promotion's NOTIFY), while background producers record `rate` updates/s over `experiments`
  fold_backlog      drain a pre-loaded backlog (worker process, and the fold SQL alone)
  fold_keep_up      producers recording in transactions of 1,000 with ab_record_metrics: throughput and backlog
  scan              the reconciliation scan (engine scan + guard + rollback requests) over running experiments
  memory            worker resident memory with `experiments` experiments, after scans and an update to each
  recovery          pg_terminate_backend(listener) -> first update recorded after the kill is folded
  engine_breakdown  where one evaluation / evaluation+promotion spends its time, per SQL statement
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import psutil  # noqa: E402

from worker.db.connect import connect, with_database  # noqa: E402
from worker.db.migrate import migrate  # noqa: E402

WINNER = {"control": (17_500, 1_750), "variant-b": (17_000, 1_904)}

FULL = {
    "latency": {"experiments": 1_000, "rate": 1_000, "seconds": 20.0, "triggers": 200},
    "backlog": {"updates": 1_000_000, "experiments": 1_000},
    "keep_up": {"seconds": 10.0, "producers": 2, "tx_size": 1_000, "experiments": 1_000},
    "scan": {"experiments": 10_000, "repeats": 3},
    "memory": {"experiments": 10_000},
    "recovery": {"kills": 10},
    "breakdown": {"evaluations": 100},
}
QUICK = {
    "latency": {"experiments": 50, "rate": 100, "seconds": 3.0, "triggers": 10},
    "backlog": {"updates": 20_000, "experiments": 50},
    "keep_up": {"seconds": 2.0, "producers": 1, "tx_size": 1_000, "experiments": 50},
    "scan": {"experiments": 300, "repeats": 1},
    "memory": {"experiments": 300},
    "recovery": {"kills": 2},
    "breakdown": {"evaluations": 10},
}


# ------------------------------------------------------------------------------------------------ plumbing
def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def ms(x: float | None) -> float | None:
    return None if x is None else round(1000 * x, 3)


class Server:
    """Where the bench creates its databases."""

    def __init__(self, admin_url: str, embedded: Any) -> None:
        self.admin_url = admin_url
        self.embedded = embedded

    @contextlib.asynccontextmanager
    async def database(self, label: str) -> AsyncIterator[str]:
        name = f"bench_{label}_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(self.admin_url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
            url = with_database(self.admin_url, name)
            conn = await connect(url)
            try:
                await migrate(conn)
            finally:
                await conn.close()
            yield url
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


class WorkerProcess:
    """`python -m worker run` against one database, JSON logs in a temporary file."""

    def __init__(self, url: str, env: dict[str, str] | None = None) -> None:
        self.log = Path(tempfile.mkstemp(prefix="bench-worker-", suffix=".log")[1])
        base = {k: v for k, v in os.environ.items() if not k.startswith("AUTO_PROMOTION_") and k != "DATABASE_URL"}
        self.env = {
            **base,
            "DATABASE_URL": url,
            "AUTO_PROMOTION_HTTP_PORT": "0",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "info",
            "AUTO_PROMOTION_SCAN_INTERVAL": "3600",
            "AUTO_PROMOTION_MAX_CONCURRENT": "10000",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker", "run"], cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if f'"{name}"' in line:
                with contextlib.suppress(json.JSONDecodeError):
                    found.append(json.loads(line))
        return [e for e in found if e.get("event") == name]

    async def wait_for_event(self, name: str, within: float = 60.0, count: int = 1) -> None:
        deadline = time.monotonic() + within
        while len(self.events(name)) < count:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {name} within {within} s:\n{self.log.read_text()[-3000:]}")
            await asyncio.sleep(0.02)

    @property
    def rss_mb(self) -> float:
        assert self.proc is not None
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError):
            self.log.unlink()
        return self.proc.returncode


@contextlib.asynccontextmanager
async def worker(url: str, env: dict[str, str] | None = None) -> AsyncIterator[WorkerProcess]:
    w = WorkerProcess(url, env).start()
    try:
        await w.wait_for_event("daemon.caught_up")
        yield w
    finally:
        w.stop()


async def wait_until(check: Callable[[], Awaitable[Any]], within: float, every: float = 0.005) -> float:
    """Seconds until ``check`` returned something truthy (RuntimeError after ``within``)."""
    t0 = time.perf_counter()
    while not await check():
        if time.perf_counter() - t0 > within:
            raise RuntimeError(f"condition not met within {within} s")
        await asyncio.sleep(every)
    return time.perf_counter() - t0


async def seed_experiments(
    conn: asyncpg.Connection,
    n: int,
    *,
    control: tuple[int, int] | None = None,
    treatment: tuple[int, int] | None = None,
    prefix: str = "exp",
) -> list[int]:
    """n running experiments (control + variant-b) in bulk, with folded statistics when given."""
    ids = [
        r[0]
        for r in await conn.fetch(
            "INSERT INTO ab_experiments (name, status, started_at) "
            "SELECT $1 || '-' || lpad(i::text, 6, '0'), 'running', now() - interval '48 hours' "
            "FROM generate_series(1, $2) i RETURNING id",
            prefix,
            n,
        )
    ]
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO ab_variants (experiment_id, name, is_control) "
            "SELECT id, v.name, v.name = 'control' FROM unnest($1::bigint[]) id, "
            "(VALUES ('control'), ('variant-b')) v(name)",
            ids,
        )
    for name, totals in (("control", control), ("variant-b", treatment)):
        if totals is None:
            continue
        await conn.execute(
            "INSERT INTO ab_variant_stats (variant_id, experiment_id, exposures, conversions, updates_folded) "
            "SELECT v.id, v.experiment_id, $2, $3, 1 FROM ab_variants v WHERE v.experiment_id = ANY($1) "
            "AND v.name = $4",
            ids,
            totals[0],
            totals[1],
            name,
        )
    return ids


# ------------------------------------------------------------------------------------------------ sections
async def bench_decision_latency_idle(server: Server, p: dict[str, Any]) -> dict[str, Any]:
    """The same measurement with no background updates: the decision path alone, without queueing."""
    return await bench_decision_latency(server, {**p, "rate": 0})


async def bench_decision_latency(server: Server, p: dict[str, Any]) -> dict[str, Any]:
    n, rate, seconds, n_triggers = p["experiments"], p["rate"], p["seconds"], p["triggers"]
    async with server.database("latency") as url:
        conn = await connect(url)
        # Control has its full data; the treatment has none until its trigger update, which makes it the winner.
        ids = await seed_experiments(conn, n, control=WINNER["control"])
        names = dict(await conn.fetch("SELECT id, name FROM ab_experiments"))
        triggers = random.Random(1).sample(ids, n_triggers)
        async with worker(url) as w:
            await wait_until(lambda: conn.fetchval("SELECT count(*) >= $1 FROM ab_experiment_state", n), 120, 0.1)
            listener = await connect(url)
            promoted_at: dict[str, float] = {}
            listener_cb = _promotion_listener(promoted_at)
            await listener.add_listener("ab_promotion_events", listener_cb)
            committed_at: dict[str, float] = {}
            noise = [await connect(url) for _ in range(2)]
            trig = await connect(url)
            sent = 0
            start = time.perf_counter()
            rng = random.Random(2)

            async def produce(c: asyncpg.Connection, share: int, offset: int) -> None:
                nonlocal sent
                if rate <= 0:
                    return
                interval = share / rate
                i = 0
                while True:
                    due = start + offset / rate + i * interval
                    if due - start > seconds:
                        return
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    exp = names[rng.choice(ids)]
                    await c.execute("SELECT ab_record_metrics($1, 'control', 1, 0)", exp)
                    sent += 1
                    i += 1

            async def fire_triggers() -> None:
                nonlocal sent
                gap = seconds / (n_triggers + 1)
                for k, exp_id in enumerate(triggers, start=1):
                    delay = start + k * gap - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    exp = names[exp_id]
                    await trig.execute("SELECT ab_record_metrics($1, 'variant-b', $2, $3)", exp, *WINNER["variant-b"])
                    committed_at[exp] = time.perf_counter()
                    sent += 1

            assert w.proc is not None
            proc = psutil.Process(w.proc.pid)
            cpu0 = sum(proc.cpu_times()[:2])
            evaluations0 = int(await conn.fetchval("SELECT coalesce(sum(evaluations), 0) FROM ab_experiment_state"))
            await asyncio.gather(produce(noise[0], 2, 0), produce(noise[1], 2, 1), fire_triggers())
            elapsed = time.perf_counter() - start
            worker_cpu = sum(proc.cpu_times()[:2]) - cpu0
            await wait_until(lambda: _all_seen(promoted_at, committed_at), 60, 0.05)
            latencies = [promoted_at[e] - committed_at[e] for e in committed_at]
            promotions = await conn.fetchval("SELECT count(*) FROM experiment_promotions")
            evaluations = int(await conn.fetchval("SELECT coalesce(sum(evaluations), 0) FROM ab_experiment_state"))
            rss = w.rss_mb
            for c in (*noise, trig, listener):
                await c.close()
        await conn.close()
    return {
        "worker_cpu_percent": round(100 * worker_cpu / elapsed, 1),
        "evaluations_per_s": round((evaluations - evaluations0) / elapsed),
        "experiments": n,
        "target_rate_updates_per_s": rate,
        "achieved_rate_updates_per_s": round(sent / elapsed),
        "seconds": round(elapsed, 2),
        "triggers": n_triggers,
        "promotions": promotions,
        "evaluations_recorded": evaluations,
        "p50_ms": ms(pct(latencies, 50)),
        "p90_ms": ms(pct(latencies, 90)),
        "p99_ms": ms(pct(latencies, 99)),
        "max_ms": ms(max(latencies)),
        "min_ms": ms(min(latencies)),
        "worker_rss_mb": round(rss, 1),
        "measured": "client-side: the trigger's commit returned -> the promotion's NOTIFY arrived",
    }


def _promotion_listener(seen: dict[str, float]) -> Callable[..., None]:
    def on_event(_c: Any, _pid: int, _channel: str, payload: str) -> None:
        event = json.loads(payload)
        if event.get("event") == "promoted":
            seen.setdefault(event["experiment_name"], time.perf_counter())

    return on_event


async def _all_seen(promoted: dict[str, float], committed: dict[str, float]) -> bool:
    return all(e in promoted for e in committed)


async def _preload(conn: asyncpg.Connection, n_updates: int) -> None:
    """n_updates queue rows spread over every variant, inserted in bulk (no NOTIFY)."""
    await conn.execute(
        "INSERT INTO ab_metric_updates (experiment_id, variant_id, exposures, conversions, errors) "
        "SELECT v.experiment_id, v.id, 10, 1, 0 FROM generate_series(1, $1) g "
        "JOIN (SELECT id, experiment_id, row_number() OVER (ORDER BY id) - 1 AS k FROM ab_variants) v "
        "  ON v.k = g % (SELECT count(*) FROM ab_variants)",
        n_updates,
    )


async def bench_fold_backlog(server: Server, p: dict[str, Any]) -> dict[str, Any]:
    from worker.db.fold import fold_pending_updates

    n_updates, n_exp = p["updates"], p["experiments"]
    out: dict[str, Any] = {"updates": n_updates, "experiments": n_exp}
    async with server.database("backlog") as url:
        conn = await connect(url)
        await seed_experiments(conn, n_exp)
        t = time.perf_counter()
        await _preload(conn, n_updates)
        out["preload_seconds"] = round(time.perf_counter() - t, 2)
        # The fold SQL alone, in this process: batches of 50,000 until empty.
        t = time.perf_counter()
        result = await fold_pending_updates(conn, batch_size=50_000)
        sql_seconds = time.perf_counter() - t
        assert result.updates == n_updates
        out["sql_only_seconds"] = round(sql_seconds, 3)
        out["sql_only_updates_per_s"] = round(n_updates / sql_seconds)
        await conn.execute("VACUUM ab_metric_updates")
        # The worker process: wakes on one NOTIFY, folds and evaluates every touched experiment.
        async with worker(url) as w:
            await _preload(conn, n_updates)
            t = time.perf_counter()
            await conn.execute("SELECT pg_notify('ab_metrics', '1')")
            drained = await wait_until(
                lambda: conn.fetchval("SELECT NOT EXISTS (SELECT 1 FROM ab_metric_updates)"), 600, 0.01
            )
            evaluated = await wait_until(lambda: _evaluated_all(conn, n_exp, t), 600, 0.05)
            out["worker_seconds"] = round(drained, 3)
            out["worker_updates_per_s"] = round(n_updates / drained)
            out["worker_seconds_until_all_evaluated"] = round(evaluated + drained, 3)
            out["fold_batches_logged"] = len(w.events("metrics.folded"))
            folded = int(await conn.fetchval("SELECT sum(updates_folded) FROM ab_variant_stats"))
            out["exactly_once"] = folded == 2 * n_updates
        await conn.close()
    return out


async def _evaluated_all(conn: asyncpg.Connection, n: int, since: float) -> bool:
    stale = await conn.fetchval(
        "SELECT count(*) FROM ab_experiments e LEFT JOIN ab_experiment_state s ON s.experiment_id = e.id "
        "WHERE s.last_evaluated_at IS NULL OR s.last_evaluated_at < "
        "(SELECT max(updated_at) FROM ab_variant_stats v WHERE v.experiment_id = e.id)"
    )
    return bool(stale == 0)


async def bench_fold_keep_up(server: Server, p: dict[str, Any]) -> dict[str, Any]:
    seconds, n_prod, tx_size, n_exp = p["seconds"], p["producers"], p["tx_size"], p["experiments"]
    async with server.database("keepup") as url:
        conn = await connect(url)
        await seed_experiments(conn, n_exp)
        names = [r[0] for r in await conn.fetch("SELECT name FROM ab_experiments ORDER BY id")]
        async with worker(url):
            producers = [await connect(url) for _ in range(n_prod)]
            produced = 0
            backlog: list[int] = []
            start = time.perf_counter()
            stop_at = start + seconds

            async def produce(c: asyncpg.Connection, seed: int) -> None:
                nonlocal produced
                rng = random.Random(seed)
                while time.perf_counter() < stop_at:
                    rows = [
                        (names[rng.randrange(n_exp)], "control" if rng.random() < 0.5 else "variant-b")
                        for _ in range(tx_size)
                    ]
                    async with c.transaction():
                        await c.executemany("SELECT ab_record_metrics($1, $2, 10, 1)", rows)
                    produced += tx_size

            async def sample() -> None:
                while time.perf_counter() < stop_at:
                    backlog.append(await conn.fetchval("SELECT count(*) FROM ab_metric_updates"))
                    await asyncio.sleep(0.25)

            await asyncio.gather(*(produce(c, i) for i, c in enumerate(producers)), sample())
            produce_seconds = time.perf_counter() - start
            end_backlog = await conn.fetchval("SELECT count(*) FROM ab_metric_updates")
            drain = await wait_until(
                lambda: conn.fetchval("SELECT NOT EXISTS (SELECT 1 FROM ab_metric_updates)"), 600, 0.01
            )
            total = time.perf_counter() - start
            folded = int(await conn.fetchval("SELECT sum(updates_folded) FROM ab_variant_stats"))
            for c in producers:
                await c.close()
        await conn.close()
    return {
        "producers": n_prod,
        "tx_size": tx_size,
        "experiments": n_exp,
        "seconds": round(produce_seconds, 2),
        "produced": produced,
        "producer_updates_per_s": round(produced / produce_seconds),
        "folded_per_s_overall": round(folded / total),
        "max_backlog": max(backlog, default=0),
        "backlog_when_producers_stopped": end_backlog,
        "drain_seconds_after_producers_stopped": round(drain, 3),
        "exactly_once": folded == produced,
    }


async def _seed_aa(conn: asyncpg.Connection, n: int) -> list[int]:
    """n running A/A experiments with folded statistics: evaluated in full, never eligible."""
    return await seed_experiments(conn, n, control=(20_000, 2_000), treatment=(20_000, 2_010))


async def bench_scan(server: Server, p: dict[str, Any]) -> dict[str, Any]:
    from worker.config import load_config, load_settings
    from worker.daemon import Daemon
    from worker.db.connect import create_pool

    n, repeats = p["experiments"], p["repeats"]
    async with server.database("scan") as url:
        conn = await connect(url)
        await _seed_aa(conn, n)
        settings = load_settings({"DATABASE_URL": url})
        pool = await create_pool(url, max_size=4)
        daemon = Daemon(url=url, pool=pool, settings=settings, config=load_config(env={}), serve_http=False)
        durations, engine_only, stalls = [], [], []
        for _ in range(repeats):
            ticker = LoopLag()
            task = asyncio.create_task(ticker.run())
            await asyncio.sleep(0.05)
            t = time.perf_counter()
            result = await daemon.scan_once()
            durations.append(time.perf_counter() - t)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            stalls.append(ticker.max_lag)
            t = time.perf_counter()
            await daemon.engine.scan_and_promote_winners()
            engine_only.append(time.perf_counter() - t)
        await pool.close()
        await conn.close()
    return {
        "experiments": n,
        "repeats": repeats,
        "seconds_median": round(statistics.median(durations), 3),
        "seconds_max": round(max(durations), 3),
        "engine_scan_seconds_median": round(statistics.median(engine_only), 3),
        "scanned": result["scanned"],
        "event_loop_max_stall_ms": ms(max(stalls)),
        "note": "the stall is how long the worker's event loop (listener, folding, evaluations) cannot run",
    }


class LoopLag:
    """Measures the longest time the event loop did not get back to a 5 ms sleeper."""

    def __init__(self) -> None:
        self.max_lag = 0.0

    async def run(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            self.max_lag = max(self.max_lag, time.perf_counter() - t - 0.005)


async def bench_memory(server: Server, p: dict[str, Any]) -> dict[str, Any]:
    n = p["experiments"]
    async with server.database("memory") as url:
        conn = await connect(url)
        await _seed_aa(conn, n)
        names = [r[0] for r in await conn.fetch("SELECT name FROM ab_experiments ORDER BY id")]
        async with worker(url, {"AUTO_PROMOTION_SCAN_INTERVAL": "2"}) as w:
            samples = [w.rss_mb]

            async def sample_until(done: Callable[[], Awaitable[bool]]) -> None:
                while not await done():
                    samples.append(w.rss_mb)
                    await asyncio.sleep(0.1)

            async def two_scans() -> bool:
                return len(w.events("scan.finished")) >= 2

            await sample_until(two_scans)
            async with conn.transaction():
                await conn.executemany("SELECT ab_record_metrics($1, 'control', 1, 0)", [(x,) for x in names])

            async def folded_and_evaluated() -> bool:
                empty = await conn.fetchval("SELECT NOT EXISTS (SELECT 1 FROM ab_metric_updates)")
                return bool(empty) and await _evaluated_all(conn, n, 0)

            await sample_until(folded_and_evaluated)
            samples.append(w.rss_mb)
            scans = len(w.events("scan.finished"))
        await conn.close()
    return {
        "experiments": n,
        "rss_mb_max": round(max(samples), 1),
        "rss_mb_final": round(samples[-1], 1),
        "rss_mb_at_start": round(samples[0], 1),
        "scans_during": scans,
    }


async def bench_recovery(server: Server, p: dict[str, Any]) -> dict[str, Any]:
    kills = p["kills"]
    async with server.database("recovery") as url:
        conn = await connect(url)
        await seed_experiments(conn, 1)
        name = await conn.fetchval("SELECT name FROM ab_experiments")
        dbname = url.rsplit("/", 1)[1]
        times: list[float] = []
        async with worker(url):
            for _ in range(kills):
                pid = None
                while pid is None:
                    pid = await conn.fetchval(
                        "SELECT pid FROM pg_stat_activity WHERE application_name = "
                        "'autopromote-listener' AND datname = $1",
                        dbname,
                    )
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)
                t0 = time.perf_counter()
                await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
                await conn.execute("SELECT ab_record_metrics($1, 'control', 1, 0)", name)
                await wait_until(
                    lambda: conn.fetchval("SELECT NOT EXISTS (SELECT 1 FROM ab_metric_updates)"), 60, 0.001
                )
                times.append(time.perf_counter() - t0)
        await conn.close()
    return {
        "kills": kills,
        "p50_ms": ms(pct(times, 50)),
        "max_ms": ms(max(times)),
        "min_ms": ms(min(times)),
        "measured": "pg_terminate_backend(listener) issued -> an update committed right after it is folded "
        "(includes the first reconnect backoff of 50-100 ms)",
    }


async def bench_engine_breakdown(server: Server, p: dict[str, Any]) -> dict[str, Any]:
    """Per-statement time of engine.evaluate_experiment, not eligible and eligible (evaluate + promote)."""
    import asyncpg.connection as pgconn

    from worker.config import load_config, load_settings
    from worker.db.connect import create_pool
    from worker.db.sql import Q
    from worker.decide import safe_decide
    from worker.engine import Engine
    from worker.evaluator import keep_session

    n = p["evaluations"]
    names = {v.strip(): k for k, v in Q.items()}
    timings: dict[str, list[float]] = collections.defaultdict(list)
    originals = {m: getattr(pgconn.Connection, m) for m in ("fetch", "fetchrow", "fetchval", "execute", "executemany")}

    def timed(method: str) -> Callable[..., Any]:
        orig = originals[method]

        async def call(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return await orig(self, query, *args, **kwargs)
            finally:
                key = names.get(query.strip(), " ".join(query.split())[:60])
                timings[key].append(time.perf_counter() - t)

        return call

    out: dict[str, Any] = {}
    async with server.database("breakdown") as url:
        conn = await connect(url)
        warm = 10  # first uses of each statement on each pooled connection pay a Parse: kept out of the numbers
        losers = await seed_experiments(
            conn, n + warm, control=(17_500, 1_750), treatment=(17_000, 1_760), prefix="lose"
        )
        winners = await seed_experiments(
            conn, n + warm, control=WINNER["control"], treatment=WINNER["variant-b"], prefix="win"
        )
        pool = await create_pool(url, max_size=4, reset=keep_session)  # as the worker's pool
        engine = Engine(
            pool,
            load_settings({"SLACK_WEBHOOK_URL": "http://127.0.0.1:9/x"}),
            load_config(env={}, overrides={"maxConcurrentPromotions": 10_000}),
        )
        for m in originals:
            setattr(pgconn.Connection, m, timed(m))
        try:
            for label, all_ids in (("not_eligible", losers), ("eligible_promote", winners)):
                for exp_id in all_ids[:warm]:
                    await engine.evaluate_experiment(exp_id)
                ids = all_ids[warm:]
                timings.clear()
                totals = []
                for exp_id in ids:
                    t = time.perf_counter()
                    await engine.evaluate_experiment(exp_id)
                    totals.append(time.perf_counter() - t)
                sql = sum(sum(v) for v in timings.values()) / len(ids)
                statements = sum(len(v) for v in timings.values()) / len(ids)
                top = sorted(timings.items(), key=lambda kv: -sum(kv[1]))
                out[label] = {
                    "mean_ms": ms(statistics.mean(totals)),
                    "median_ms": ms(statistics.median(totals)),
                    "sql_ms_per_evaluation": ms(sql),
                    "round_trips_per_evaluation": round(statements, 1),
                    "python_and_driver_ms": ms(statistics.mean(totals) - sql),
                    "statements": [
                        {
                            "query": k,
                            "calls_per_evaluation": round(len(v) / len(ids), 2),
                            "ms_per_evaluation": ms(sum(v) / len(ids)),
                        }
                        for k, v in top[:14]
                    ],
                }
        finally:
            for m, orig in originals.items():
                setattr(pgconn.Connection, m, orig)
        # The daemon's batch step (what it does when several experiments are dirty at once), per experiment.
        batch = await seed_experiments(conn, 32 * 5, control=(17_500, 1_750), treatment=(17_000, 1_760), prefix="batch")
        per_experiment = []
        for k in range(5):
            ids = batch[32 * k : 32 * (k + 1)]
            t = time.perf_counter()
            await engine.evaluate_many(ids)
            per_experiment.append((time.perf_counter() - t) / len(ids))
        out["not_eligible_in_batches_of_32_ms_per_experiment"] = ms(statistics.median(per_experiment[1:]))
        snapshot = await engine._snapshot(conn, winners[0], 24.0)
        assert snapshot is not None
        t = time.perf_counter()
        for _ in range(200):
            safe_decide(snapshot, engine.config.config)
        out["decide_ms"] = ms((time.perf_counter() - t) / 200)
        t = time.perf_counter()
        for _ in range(200):
            await conn.fetchval("SELECT 1")
        out["bare_round_trip_ms"] = ms((time.perf_counter() - t) / 200)
        t = time.perf_counter()
        for _ in range(200):
            async with conn.transaction():
                await conn.execute("SELECT pg_notify('bench', 'x')")
        out["commit_notify_round_trip_ms"] = ms((time.perf_counter() - t) / 200)
        await pool.close()
        await conn.close()
    return out


# ------------------------------------------------------------------------------------------------ main
def machine_info(pg_version: str, embedded: bool) -> dict[str, Any]:
    model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": pg_version,
        "database": "embedded (fsync=off, synchronous_commit=off), same machine" if embedded else "DATABASE_URL",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def database_server() -> tuple[str, Any]:
    """DATABASE_URL, or an embedded PostgreSQL of the bench's own (returned too, to be cleaned up)."""
    admin_url = os.environ.get("DATABASE_URL")
    if admin_url:
        return admin_url, None
    from worker.db.embedded import start_embedded

    embedded = start_embedded()
    return embedded.url, embedded


async def main(quick: bool, only: list[str] | None, rate: int | None = None) -> dict[str, Any]:
    params = QUICK if quick else FULL
    if rate is not None:
        params = {**params, "latency": {**params["latency"], "rate": rate}}
    admin_url, embedded = database_server()
    server = Server(admin_url, embedded)
    try:
        probe = await asyncpg.connect(admin_url)
        pg_version = await probe.fetchval("SHOW server_version")
        await probe.close()
        result: dict[str, Any] = {
            "bench": "daemon",
            "quick": quick,
            "machine": machine_info(pg_version, embedded is not None),
        }
        sections: list[tuple[str, Callable[[Server, dict[str, Any]], Awaitable[dict[str, Any]]], str]] = [
            ("engine_breakdown", bench_engine_breakdown, "breakdown"),
            ("decision_latency_idle", bench_decision_latency_idle, "latency"),
            ("decision_latency", bench_decision_latency, "latency"),
            ("fold_backlog", bench_fold_backlog, "backlog"),
            ("fold_keep_up", bench_fold_keep_up, "keep_up"),
            ("scan", bench_scan, "scan"),
            ("memory", bench_memory, "memory"),
            ("recovery", bench_recovery, "recovery"),
        ]
        for key, fn, param in sections:
            if only and key not in only:
                continue
            t = time.perf_counter()
            result[key] = await fn(server, params[param])
            result[key]["bench_seconds"] = round(time.perf_counter() - t, 1)
        result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        result["targets"] = {
            "decision_latency_p50_ms": 5,
            "decision_latency_p99_ms": 25,
            "fold_updates_per_s": 100_000,
            "scan_10k_seconds": 2,
            "rss_10k_mb": 200,
        }
        return result
    finally:
        if embedded is not None:
            embedded.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--only", nargs="*", help="run only these sections")
    parser.add_argument("--rate", type=int, help="updates/s of decision_latency (default 1000)")
    args = parser.parse_args()
    import logging

    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )
    print(json.dumps(asyncio.run(main(args.quick, args.only, args.rate)), indent=2, default=str))
