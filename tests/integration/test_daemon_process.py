"""`python -m worker run` as a real process: signals, kill -9 and restart, replicas, start-up refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import asyncpg
import pytest

from tests.daemon_support import WINNER, db, seed_winner, wait_for
from tests.factories import create_experiment, record

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


class Worker:
    """One `python -m worker run` process; its JSON log lines go to a file."""

    def __init__(self, tmp: Path, name: str, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        self.log_path = tmp / f"{name}.log"
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AUTO_PROMOTION_", "AUTO_NOTIFY")) and k not in ("DATABASE_URL", "LOG_LEVEL")
        }
        self.env = {
            **base,
            "AUTO_PROMOTION_HTTP_PORT": "0",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "info",
            "AUTO_PROMOTION_SCAN_INTERVAL": "3600",
            **env,
        }
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker", "run", *self.args],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"event": "(text)", "line": line})
        return out

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.logs() if e.get("event") == name]

    @property
    def port(self) -> int | None:
        started = self.events("http.started")
        return int(started[-1]["port"]) if started else None

    async def ready(self, within: float = 60.0) -> None:
        async def check() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            if self.port is None:
                return False
            try:
                async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{self.port}/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(check, within=within, what=f"{self.log_path.name} to be ready")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def exit_code(self, within: float) -> int:
        assert self.proc is not None
        proc = self.proc

        async def exited() -> bool:
            return proc.poll() is not None

        await wait_for(exited, within=within, what=f"{self.log_path.name} to exit")
        return int(proc.returncode)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def workers(tmp_path: Path) -> Any:
    started: list[Worker] = []

    def make(env: dict[str, str], name: str = "worker", args: tuple[str, ...] = ()) -> Worker:
        w = Worker(tmp_path, f"{name}-{len(started)}", env, args)
        started.append(w)
        return w

    yield make
    for w in started:
        w.kill()


async def test_sigterm_exits_zero_within_the_grace_period(db_url: str, workers: Any) -> None:
    grace = 5.0
    w = workers({"DATABASE_URL": db_url, "AUTO_PROMOTION_SHUTDOWN_GRACE": str(grace)}).start()
    await w.ready()
    async with db(db_url) as conn:
        exp_id = await seed_winner(conn, "before-sigterm")
        await wait_for(
            lambda: conn.fetchval("SELECT count(*) FROM experiment_promotions WHERE experiment_id = $1", exp_id),
            what="the promotion",
        )
    w.signal(signal.SIGTERM)
    assert await w.exit_code(within=grace + 5) == 0  # the deadline is the grace period plus process teardown
    assert w.events("shutdown.requested")[0]["signal"] == "SIGTERM"
    assert w.events("daemon.stopped") and not w.events("shutdown.grace_exceeded")


async def _hold_experiment_lock(db_url: str, name: str, held: anyio.Event, release: anyio.Event) -> None:
    from worker.engine import PROMOTION_SLOT_LOCK

    async with db(db_url) as conn, conn.transaction():
        # The promotion slot lock: the daemon's transaction has locked the experiment row and decided to promote,
        # then waits here, in flight, before writing anything.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PROMOTION_SLOT_LOCK)
        held.set()
        await release.wait()


async def _stuck_promotion(db_url: str, workers: Any, grace: float) -> tuple[Any, anyio.Event, Any]:
    """A worker whose promotion transaction waits on a lock the test holds: work that is in flight."""
    async with db(db_url) as conn:
        await create_experiment(conn, "stuck", list(WINNER))
    held, release = anyio.Event(), anyio.Event()
    w = workers({"DATABASE_URL": db_url, "AUTO_PROMOTION_SHUTDOWN_GRACE": str(grace)}).start()
    await w.ready()
    return w, held, release


@pytest.mark.parametrize("second_signal", [None, signal.SIGINT])
async def test_in_flight_work_is_rolled_back_when_grace_runs_out_or_a_second_signal_comes(
    db_url: str, workers: Any, second_signal: int | None
) -> None:
    grace = 2.0 if second_signal is None else 120.0
    w, held, release = await _stuck_promotion(db_url, workers, grace)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_hold_experiment_lock, db_url, "stuck", held, release)
        await held.wait()
        async with db(db_url) as conn:
            for variant, (n, c) in WINNER.items():
                await record(conn, "stuck", variant, n, c)
            # The promotion's transaction is now waiting for the row lock.
            await wait_for(
                lambda: conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                ),
                what="the promotion to wait on the lock",
            )
        w.signal(signal.SIGTERM)
        if second_signal is not None:
            await wait_for(lambda: _true(bool(w.events("shutdown.requested"))), what="the first signal handled")
            w.signal(second_signal)
            code = await w.exit_code(within=10)  # at once: far inside the 120 s grace
            assert code == 128 + second_signal
            assert w.events("shutdown.forced")
        else:
            assert await w.exit_code(within=grace + 5) == 0
            assert w.events("shutdown.grace_exceeded")
        release.set()
    async with db(db_url) as conn:
        # Nothing partial: the promotion transaction was rolled back as a whole.
        assert await conn.fetchval("SELECT count(*) FROM experiment_promotions") == 0
        assert await conn.fetchval("SELECT status FROM ab_experiments WHERE name = 'stuck'") == "running"
        weights = [r[0] for r in await conn.fetch("SELECT traffic_weight::float8 FROM ab_variants")]
        assert weights == [1.0, 1.0]


async def _true(value: bool) -> bool:
    return value


async def test_kill_9_mid_stream_then_restart_loses_nothing_and_duplicates_nothing(db_url: str, workers: Any) -> None:
    n_exp, steps = 12, 14
    # 10% vs 11.2% on equal traffic (an unequal split would, with enough steps, trip the sample-ratio check)
    per_step = {"control": (2_900, 290), "variant-b": (2_900, 325)}
    env = {"DATABASE_URL": db_url, "AUTO_PROMOTION_MAX_CONCURRENT": "100"}
    first = workers(env, "first").start()
    await first.ready()
    recorded = {"exposures": 0, "updates": 0}
    async with db(db_url) as conn, db(db_url) as producer:
        for e in range(n_exp):
            await create_experiment(conn, f"stream-{e}", list(WINNER))

        async def produce() -> None:
            for _ in range(steps):
                for e in range(n_exp):
                    async with producer.transaction():
                        for variant, (n, c) in per_step.items():
                            await record(producer, f"stream-{e}", variant, n, c)
                            recorded["exposures"] += n
                            recorded["updates"] += 1
                    await anyio.sleep(0.02)

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            await wait_for(
                lambda: conn.fetchval("SELECT count(*) > 0 FROM experiment_promotions"),
                within=60,
                what="the first promotions",
            )
            first.kill()  # SIGKILL in the middle of the stream: no shutdown path at all
            assert await conn.fetchval("SELECT count(*) FROM experiment_promotions") < n_exp, "killed too late"
            second = workers(env, "second").start()
            await second.ready()
        await wait_for(
            lambda: conn.fetchval("SELECT count(*) = 0 FROM ab_metric_updates"), within=30, what="the backlog to drain"
        )
        await wait_for(
            lambda: conn.fetchval("SELECT count(*) = $1 FROM experiment_promotions", n_exp),
            within=30,
            what="every experiment promoted",
        )
        assert await conn.fetchval("SELECT sum(exposures) FROM ab_variant_stats") == recorded["exposures"]
        assert await conn.fetchval("SELECT sum(updates_folded) FROM ab_variant_stats") == recorded["updates"]
        per_experiment = await conn.fetch(
            "SELECT experiment_id, count(*) AS n FROM experiment_promotions GROUP BY experiment_id"
        )
        assert len(per_experiment) == n_exp and all(r["n"] == 1 for r in per_experiment)
        # Every promotion is whole: status, weights and its audit row.
        assert await conn.fetchval("SELECT count(*) FROM ab_experiments WHERE status = 'promoted'") == n_exp
        assert await conn.fetchval("SELECT count(*) FROM ab_promotion_audit_log WHERE action = 'promoted'") == n_exp
        assert await conn.fetchval("SELECT count(*) FROM ab_variants WHERE traffic_weight = 100") == n_exp
    second.signal(signal.SIGTERM)
    assert await second.exit_code(within=15) == 0


async def test_three_replicas_promote_each_of_200_experiments_exactly_once(db_url: str, workers: Any) -> None:
    env = {"DATABASE_URL": db_url, "AUTO_PROMOTION_MAX_CONCURRENT": "1000"}
    replicas = [workers(env, f"replica{i}").start() for i in range(3)]
    for r in replicas:
        await r.ready()
    async with db(db_url) as conn:
        for i in range(200):
            await seed_winner(conn, f"exp-{i:03d}")
        await wait_for(
            lambda: conn.fetchval("SELECT count(*) = 200 FROM experiment_promotions"), within=120, what="200 promotions"
        )
        await wait_for(lambda: conn.fetchval("SELECT count(*) = 0 FROM ab_metric_updates"), what="an empty queue")
        await anyio.sleep(0.5)  # let any late duplicate attempt land, so that it would be seen
        assert await conn.fetchval("SELECT count(*) FROM experiment_promotions") == 200
        assert await conn.fetchval("SELECT count(DISTINCT experiment_id) FROM experiment_promotions") == 200
        assert await conn.fetchval("SELECT count(*) FROM ab_promotion_audit_log WHERE action = 'promoted'") == 200
        assert await conn.fetchval("SELECT sum(updates_folded) FROM ab_variant_stats") == 400
        assert await conn.fetchval("SELECT sum(exposures) FROM ab_variant_stats") == 200 * (17_500 + 17_000)
    committed = [len(r.events("promotion.committed")) for r in replicas]
    assert sum(committed) == 200, committed
    for r in replicas:
        r.signal(signal.SIGTERM)
    for r in replicas:
        assert await r.exit_code(within=15) == 0


async def test_pending_migrations_refuse_the_start_unless_migrate_is_passed(empty_db_url: str, workers: Any) -> None:
    refused = workers({"DATABASE_URL": empty_db_url}, "refused").start()
    assert await refused.exit_code(within=60) == 2
    text = refused.log_path.read_text()
    assert "pending migration(s)" in text and "autopromote migrate" in text
    w = workers({"DATABASE_URL": empty_db_url}, "migrating", ("--migrate",)).start()
    await w.ready()
    assert w.events("migrations.applied")
    w.signal(signal.SIGINT)
    assert await w.exit_code(within=15) == 0


async def test_unreachable_database_exits_3(workers: Any) -> None:
    w = workers({"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere"}).start()
    assert await w.exit_code(within=60) == 3
    assert "cannot connect" in w.log_path.read_text()


async def test_bad_configuration_exits_2(db_url: str, workers: Any) -> None:
    w = workers({"DATABASE_URL": db_url, "AUTO_PROMOTION_POLL_INTERVAL": "soon"}).start()
    assert await w.exit_code(within=60) == 2
    assert "AUTO_PROMOTION_POLL_INTERVAL" in w.log_path.read_text()


async def test_without_database_url_the_worker_runs_on_a_migrated_embedded_server(workers: Any) -> None:
    w = workers({}).start()
    await w.ready(within=120)
    [embedded] = w.events("database.embedded")
    conn = await asyncpg.connect(embedded["url"])
    try:
        assert await conn.fetchval("SELECT count(*) FROM ab_schema_migrations") >= 4
    finally:
        await conn.close()
    w.signal(signal.SIGTERM)
    assert await w.exit_code(within=30) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            probe = await asyncpg.connect(embedded["url"], timeout=2)
        except (OSError, asyncpg.PostgresError):
            break  # the embedded server went away with the worker
        await probe.close()
        await anyio.sleep(0.1)
    else:
        raise AssertionError("the embedded server outlived the worker")
