"""The daemon outlives database faults on the real server: a read-only database, every backend terminated, a
server stopped and started, a guard check that fails mid-batch, a row held by another session. It logs once per
fault, reports not-ready meanwhile, resumes by itself, folds nothing twice and loses nothing. A bug (not a database
error) ends it with exit code 1 after the shutdown path."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import asyncpg
import pytest
import structlog

from tests.daemon_support import db, promotions, running_daemon, seed_winner, settings_env, wait_for
from tests.factories import create_experiment, record
from worker.config import load_config, load_settings
from worker.daemon import EXIT_BUG, Daemon, run_worker
from worker.db.connect import connect
from worker.db.embedded import start_embedded
from worker.db.migrate import migrate
from worker.retry import is_transient


async def _queue_len(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM ab_metric_updates"))


async def _folded(conn: asyncpg.Connection) -> tuple[int, int]:
    """(exposures folded, updates folded): each recorded update must be in both exactly once."""
    row = await conn.fetchrow(
        "SELECT coalesce(sum(exposures), 0) AS e, coalesce(sum(updates_folded), 0) AS u FROM ab_variant_stats"
    )
    return int(row["e"]), int(row["u"])


async def _readyz(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{daemon.http_port}/readyz") as resp:
        return resp.status, await resp.json()


async def _not_ready(daemon: Daemon) -> dict[str, Any] | None:
    status, body = await _readyz(daemon)
    return body if status == 503 else None


async def _ready(daemon: Daemon) -> bool:
    return (await _readyz(daemon))[0] == 200


def _warnings_per_fault(logs: Sequence[Mapping[str, Any]]) -> Counter[tuple[str, str]]:
    """Warning-or-worse log lines by (event, task): one fault must not produce more than one."""
    return Counter(
        (e["event"], str(e.get("task", ""))) for e in logs if e.get("log_level") in ("warning", "error", "critical")
    )


class Producer:
    """Records one update per call on its own session (opened before any fault, so it stays writable)."""

    def __init__(self, conn: asyncpg.Connection, experiment: str) -> None:
        self.conn = conn
        self.experiment = experiment
        self.updates = 0
        self.exposures = 0

    async def once(self) -> None:
        n = 1 + self.updates % 7
        await record(self.conn, self.experiment, "b" if self.updates % 2 else "control", n, 0)
        self.updates += 1
        self.exposures += n

    async def run(self, until: anyio.Event) -> None:
        while not until.is_set():
            await self.once()
            await anyio.sleep(0.02)


async def _terminate_others(conn: asyncpg.Connection, dbname: str, keep: list[asyncpg.Connection]) -> int:
    pids = [c.get_server_pid() for c in keep]
    return int(
        await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1 AND pid <> ALL($2) "
            "AND backend_type = 'client backend'",
            dbname,
            pids,
        )
    )


# ------------------------------------------------------------------------------------------------ read-only
async def test_read_only_for_10_s_then_writable_is_survived_reported_and_resumed(db_url: str, admin_url: str) -> None:
    dbname = db_url.rsplit("/", 1)[1]
    with structlog.testing.capture_logs() as logs:
        async with (
            db(admin_url) as admin,
            db(db_url) as conn,
            db(db_url) as producer_conn,
            running_daemon(db_url, serve_http=True) as daemon,
        ):
            await create_experiment(conn, "steady", ["control", "b"])
            producer = Producer(producer_conn, "steady")
            await producer.once()
            await wait_for(lambda: _ready(daemon), what="ready before the fault")
            logs.clear()
            # A failover to a server that only reads, as seen by every new session; the old ones are cut.
            await admin.execute(f'ALTER DATABASE "{dbname}" SET default_transaction_read_only = on')
            await _terminate_others(admin, dbname, [conn, producer_conn])
            done = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(producer.run, done)
                body = await wait_for(lambda: _not_ready(daemon), what="/readyz to say not ready")
                assert body["checks"]["database"] is False
                await anyio.sleep(10)  # the fault's duration, not a wait for a condition
                assert await _queue_len(conn) > 0  # nothing could be folded meanwhile
                assert daemon.crashed is None and not daemon.stopping
                body = await _not_ready(daemon)
                assert body is not None and "read-only" in body["checks"]["databaseError"], body
                assert body["checks"]["tasks"] != "ok", body  # the folder at least is failing
                await admin.execute(f'ALTER DATABASE "{dbname}" RESET default_transaction_read_only')
                # A winner recorded now is promoted once the worker writes again.
                exp_id = await seed_winner(conn, "after-failover")
                await anyio.sleep(0.5)
                done.set()
            await wait_for(lambda: _ready(daemon), what="/readyz ready again")
            await wait_for(lambda: _drained(conn), what="the queue to drain")
            assert await _folded(conn) == (producer.exposures + 17_500 + 17_000, producer.updates + 2)
            await wait_for(lambda: promotions(conn, exp_id), what="the promotion after the failover")
            assert len(await promotions(conn, exp_id)) == 1
            assert daemon.crashed is None
    per_fault = _warnings_per_fault(logs)
    assert per_fault, "the fault was not logged at all"
    assert max(per_fault.values()) == 1, per_fault  # once per fault, not once per attempt
    assert ("db.fault", "folder") in per_fault
    recovered = {e["task"] for e in logs if e["event"] == "db.recovered"}
    assert "folder" in recovered and "dispatcher" in recovered, recovered


async def _drained(conn: asyncpg.Connection) -> bool:
    return await _queue_len(conn) == 0


# --------------------------------------------------------------------------------------- backends terminated
async def test_every_backend_of_the_worker_terminated_again_and_again_loses_and_duplicates_nothing(
    db_url: str, admin_url: str
) -> None:
    dbname = db_url.rsplit("/", 1)[1]
    async with (
        db(admin_url) as admin,
        db(db_url) as conn,
        db(db_url) as producer_conn,
        running_daemon(db_url, serve_http=True, config_env={"AUTO_PROMOTION_MAX_CONCURRENT": "50"}) as daemon,
    ):
        await create_experiment(conn, "hammered", ["control", "b"])
        producer = Producer(producer_conn, "hammered")
        winners = []
        done = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer.run, done)
            for i in range(6):
                winners.append(await seed_winner(conn, f"winner-{i}"))
                await anyio.sleep(0.05 * i)  # hit different moments: folding, evaluating, promoting, notifying
                assert await _terminate_others(admin, dbname, [conn, producer_conn]) > 0
                await wait_for(lambda: _ready(daemon), what=f"ready again after termination {i + 1}")
            done.set()
        await wait_for(lambda: _drained(conn), what="the queue to drain")
        assert await _folded(conn) == (producer.exposures + 6 * (17_500 + 17_000), producer.updates + 12)
        for exp_id in winners:
            await wait_for(lambda e=exp_id: promotions(conn, e), what="every winner promoted")  # type: ignore[misc]
            assert len(await promotions(conn, exp_id)) == 1
        assert daemon.crashed is None and daemon.listener is not None and daemon.listener.connected


# ------------------------------------------------------------------------------------ server stop and start
@asynccontextmanager
async def _own_server() -> AsyncIterator[Any]:
    """An embedded server of this test's own: the shared one must never be restarted."""
    try:
        server = await anyio.to_thread.run_sync(start_embedded)
    except Exception as exc:  # no PostgreSQL binaries on this machine
        pytest.skip(f"no embedded PostgreSQL: {exc}")
    try:
        async with db(server.url) as conn:
            await migrate(conn)
        yield server
    finally:
        await anyio.to_thread.run_sync(server.cleanup)


async def test_database_server_stopped_and_started_is_logged_once_and_resumed() -> None:
    async with _own_server() as server:
        with structlog.testing.capture_logs() as logs:
            async with running_daemon(server.url, serve_http=True) as daemon:
                async with db(server.url) as conn:
                    await create_experiment(conn, "restarted", ["control", "b"])
                    for _ in range(20):
                        await record(conn, "restarted", "b", 2, 1)
                    await wait_for(lambda: _drained(conn), what="the first updates folded")
                logs.clear()
                await anyio.to_thread.run_sync(server.stop)
                await wait_for(lambda: _not_ready(daemon), what="/readyz to say not ready")
                await anyio.sleep(4)  # the outage: many retries, each of which must not log
                assert daemon.crashed is None
                await anyio.to_thread.run_sync(server.start)
                async with db(server.url) as conn:
                    for _ in range(20):
                        await record(conn, "restarted", "control", 3, 1)
                    await wait_for(lambda: _ready(daemon), within=30, what="/readyz ready after the restart")
                    await wait_for(lambda: _drained(conn), what="the queue to drain")
                    assert await _folded(conn) == (20 * 2 + 20 * 3, 40)
                    exp_id = await seed_winner(conn, "after-restart")
                    await wait_for(lambda: promotions(conn, exp_id), what="a promotion after the restart")
                assert daemon.crashed is None
    per_fault = _warnings_per_fault(logs)
    assert max(per_fault.values()) == 1, per_fault  # once per fault, not once per reconnect attempt
    assert ("db.fault", "listener") in per_fault, per_fault


async def test_the_dashboards_event_bridge_survives_a_restart_and_logs_it_once() -> None:
    from tests.support.api import make_context
    from worker.db.connect import create_pool
    from worker.http import dashboard

    async with _own_server() as server:
        pool = await create_pool(server.url, min_size=1, max_size=2)
        try:
            ctx = make_context(pool, database_url=server.url)
            async with db(server.url) as conn:
                await create_experiment(conn, "bridged", status="promoted")
            with structlog.testing.capture_logs() as logs:
                async with anyio.create_task_group() as tg, ctx.events.subscribe() as queue:
                    tg.start_soon(dashboard.run_events_bridge, ctx)
                    await wait_for(
                        lambda: _true(ctx.health.details.get(dashboard.BRIDGE_STATE) == "listening"),
                        what="the bridge to listen",
                    )
                    await anyio.to_thread.run_sync(server.stop)
                    await wait_for(
                        lambda: _true(ctx.health.details.get(dashboard.BRIDGE_STATE) == "reconnecting"),
                        what="the bridge to notice",
                    )
                    await anyio.sleep(4)  # the outage: several reconnect attempts, which must not log each
                    await anyio.to_thread.run_sync(server.start)
                    await wait_for(
                        lambda: _true(ctx.health.details.get(dashboard.BRIDGE_STATE) == "listening"),
                        within=30,
                        what="the bridge to listen again",
                    )
                    async with db(server.url) as conn:
                        await conn.execute(
                            "INSERT INTO experiment_promotions (experiment_id, experiment_name, promoted_variant_name,"
                            " confidence, improvement, promoted_by, previous_weights) SELECT id, name, 'variant-b',"
                            " 97, 12, 'dba', '{}' FROM ab_experiments WHERE name = 'bridged'"
                        )
                    with anyio.fail_after(10):
                        event = await queue.get()
                    tg.cancel_scope.cancel()
            assert event["type"] == "promotion" and event["experimentName"] == "bridged"
            per_fault = _warnings_per_fault(logs)
            assert max(per_fault.values()) == 1, per_fault
            assert per_fault[("db.fault", "dashboard.events_bridge")] == 1, per_fault
        finally:
            pool.terminate()


# --------------------------------------------------------------------------------- guard raises mid-batch
async def test_a_guard_check_that_fails_mid_batch_is_retried_and_the_evaluator_survives(db_url: str) -> None:
    dbname = db_url.rsplit("/", 1)[1]
    with structlog.testing.capture_logs() as logs:
        async with db(db_url) as conn, db(db_url) as locker, running_daemon(db_url) as daemon:
            exp_id = await seed_winner(conn, "guarded")
            [promo] = await wait_for(lambda: promotions(conn, exp_id), what="the promotion")
            await record(conn, "guarded", "variant-b", 150, 15, 3)  # 2%: fine
            await wait_for(lambda: _drained(conn), what="the healthy update to be folded")
            # The guard's read needs ab_guard_breaches; the evaluation of the batch does not.
            tx = locker.transaction()
            await tx.start()
            await locker.execute("LOCK TABLE ab_guard_breaches IN ACCESS EXCLUSIVE MODE")
            await record(conn, "guarded", "variant-b", 150, 15, 27)  # 10% since the promotion: a breach
            other = await seed_winner(conn, "same-batch")  # evaluated while the guard check is stuck
            blocked = await wait_for(lambda: _blocked_by(conn, dbname, locker), what="the guard check to wait")
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", blocked)  # it fails mid-batch
            await wait_for(lambda: promotions(conn, other), what="the rest of the work to go on")
            await wait_for(lambda: _true(daemon.evaluator.guard_fault.failing), what="the guard check to fail")
            await wait_for(lambda: _blocked_by(conn, dbname, locker), what="the guard check retried")
            await tx.rollback()
            await wait_for(
                lambda: conn.fetchval(
                    "SELECT rollback_at IS NOT NULL FROM experiment_promotions WHERE id = $1", promo["id"]
                ),
                what="the guard's rollback",
            )
            assert daemon.crashed is None
    faults = [e for e in logs if e["event"] == "db.fault"]
    assert [e["task"] for e in faults] == ["evaluator.guard"], faults
    assert any(e["event"] == "db.recovered" and e["task"] == "evaluator.guard" for e in logs)


async def _blocked_by(conn: asyncpg.Connection, dbname: str, locker: asyncpg.Connection) -> int | None:
    """The backend of this database that waits for ``locker``'s lock (the guard's read, the only one that needs
    ab_guard_breaches)."""
    pid: int | None = await conn.fetchval(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND $2 = ANY(pg_blocking_pids(pid))",
        dbname,
        locker.get_server_pid(),
    )
    return pid


async def test_a_database_error_that_is_not_transient_restarts_the_task_instead_of_ending_the_worker(
    db_url: str,
) -> None:
    with structlog.testing.capture_logs() as logs:
        async with db(db_url) as conn, running_daemon(db_url) as daemon:
            exp_id = await seed_winner(conn, "renamed")
            [promo] = await wait_for(lambda: promotions(conn, exp_id), what="the promotion")
            await record(conn, "renamed", "variant-b", 150, 15, 3)
            await wait_for(lambda: _drained(conn), what="the healthy update to be folded")
            # An operator's mistake: the guard's query now fails with "relation does not exist" (42P01).
            await conn.execute("ALTER TABLE ab_guard_breaches RENAME TO ab_guard_breaches_moved")
            await record(conn, "renamed", "variant-b", 150, 15, 27)  # a breach the guard cannot check yet
            await wait_for(
                lambda: _true(any(e["event"] == "db.fault" and e["task"].endswith(".restart") for e in logs)),
                what="the failing task to be restarted",
            )
            assert daemon.crashed is None and not daemon.stopping
            await conn.execute("ALTER TABLE ab_guard_breaches_moved RENAME TO ab_guard_breaches")
            await record(conn, "renamed", "variant-b", 1, 0, 0)  # wakes the evaluator, and so the guard, again
            await wait_for(
                lambda: conn.fetchval(
                    "SELECT rollback_at IS NOT NULL FROM experiment_promotions WHERE id = $1", promo["id"]
                ),
                what="the guard's rollback",
            )
            assert daemon.crashed is None
    restarts = [e for e in logs if e["event"] == "db.fault" and e["task"].endswith(".restart")]
    assert restarts and "UndefinedTableError" in restarts[0]["error"], restarts


# ------------------------------------------------------------------------------------- a held row backs off
async def test_a_row_held_by_another_session_is_retried_with_backoff_and_logged_once(db_url: str) -> None:
    with structlog.testing.capture_logs() as logs:
        async with db(db_url) as conn, db(db_url) as holder, running_daemon(db_url) as daemon:
            exp_id = await create_experiment(conn, "held", ["control", "variant-b"])
            tx = holder.transaction()
            await tx.start()
            await holder.execute("SELECT 1 FROM ab_experiments WHERE id = $1 FOR NO KEY UPDATE", exp_id)
            for variant, (n, c) in {"control": (17_500, 1_750), "variant-b": (17_000, 1_904)}.items():
                await record(conn, "held", variant, n, c)
            await wait_for(lambda: _true(daemon.evaluator.deferred > 0), what="the evaluator to find the row busy")
            before = daemon.evaluator.deferred
            await anyio.sleep(3)  # how long the other session holds the row
            attempts = daemon.evaluator.deferred - before
            # 20 ms without backoff would be ~150 attempts in 3 s; backing off to 1 s it is fewer than 10.
            assert attempts <= 12, attempts
            await tx.rollback()
            await wait_for(lambda: promotions(conn, exp_id), what="the promotion once the row is free")
    busy = [e for e in logs if e["event"] == "evaluation.row_busy"]
    assert len(busy) == 1 and busy[0]["experiment_id"] == exp_id, busy


async def _true(value: bool) -> bool:
    return value


# --------------------------------------------------------------------------------------------------- a bug
async def test_a_bug_in_a_task_ends_the_worker_with_exit_1_one_log_line_and_the_shutdown_path(db_url: str) -> None:
    settings = load_settings(settings_env(db_url))
    config = load_config(env={"AUTO_PROMOTION_SCAN_INTERVAL": "3600"})
    seen: list[Daemon] = []

    def break_the_guard(daemon: Daemon) -> None:
        async def buggy(_experiment_ids: Any = None) -> Any:
            raise ZeroDivisionError("a bug in the guard")

        daemon.guard.check = buggy  # type: ignore[method-assign, assignment]
        seen.append(daemon)
        daemon.guard_wake.set()

    with structlog.testing.capture_logs() as logs:
        with anyio.fail_after(60):
            code = await run_worker(settings, config, handle_signals=False, on_started=break_the_guard)
    assert code == EXIT_BUG
    crashed = [e for e in logs if e["event"] == "daemon.task_crashed"]
    assert len(crashed) == 1 and crashed[0]["task"] == "guard" and "ZeroDivisionError" in crashed[0]["error"]
    assert seen and seen[0].stopping  # the shutdown path ran
    assert any(e["event"] == "daemon.stopped" for e in logs)


# ------------------------------------------------------------------------------------------ classification
async def test_transient_errors_are_the_ones_the_real_server_raises_for_a_fault(db_url: str, admin_url: str) -> None:
    async with db(db_url) as conn, db(admin_url) as admin:
        caught: list[BaseException] = []
        for setup, sql in (
            ("SET statement_timeout = '10ms'", "SELECT pg_sleep(1)"),
            ("SET default_transaction_read_only = on", "CREATE TABLE t_ro (x int)"),
            ("SET lock_timeout = '10ms'", "LOCK TABLE ab_experiments"),
        ):
            async with db(db_url) as other:
                tx = other.transaction()
                await tx.start()
                await other.execute("LOCK TABLE ab_experiments IN ACCESS SHARE MODE")
                await conn.execute(setup)
                try:
                    async with conn.transaction():
                        await conn.execute(sql)
                except asyncpg.PostgresError as exc:
                    caught.append(exc)
                await conn.execute("RESET ALL")
                await tx.rollback()
        victim = await connect(db_url)
        await admin.execute("SELECT pg_terminate_backend($1)", victim.get_server_pid())
        try:
            await victim.fetchval("SELECT 1")
        except Exception as exc:
            caught.append(exc)
        finally:
            victim.terminate()
        assert len(caught) == 4, caught
        assert all(is_transient(e) for e in caught), [type(e).__name__ for e in caught]
        assert is_transient(ExceptionGroup("group", [caught[0], caught[1]]))  # type: ignore[type-var]
        try:
            await conn.execute("SELECT no_such_column FROM ab_experiments")
        except asyncpg.PostgresError as exc:
            assert not is_transient(exc)
            assert not is_transient(ExceptionGroup("group", [caught[0], exc]))
        assert not is_transient(ZeroDivisionError())
