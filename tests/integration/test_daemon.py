"""The worker in the test's own event loop, on a real database: wake-ups, folding, evaluation, promotion,
rollback requests, the guard, catch-up, reconnects and the scan."""

from __future__ import annotations

import json
from typing import Any

import anyio
import asyncpg
import pytest
import structlog

from tests.daemon_support import WINNER, db, promotions, running_daemon, seed_winner, wait_for
from tests.factories import create_experiment, record
from worker import metrics
from worker.db.embedded import EmbeddedPostgres, start_embedded
from worker.db.migrate import migrate
from worker.domain.events import BusEvent
from worker.engine import Evaluation
from worker.listener import APPLICATION_NAME


async def _folded_exposures(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT coalesce(sum(exposures), 0) FROM ab_variant_stats"))


async def _queue_len(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM ab_metric_updates"))


# ------------------------------------------------------------------------------------------ wake-up -> promote
async def test_update_that_makes_an_experiment_eligible_is_promoted_without_a_scan_or_poll(db_url: str) -> None:
    async with db(db_url) as conn, running_daemon(db_url) as daemon:
        exp_id = await create_experiment(conn, "checkout-cta", list(WINNER))
        await record(conn, "checkout-cta", "control", *WINNER["control"])
        await wait_for(lambda: _queue_len_is(conn, 0), what="the control's update to be folded")
        assert await promotions(conn, exp_id) == []
        await record(conn, "checkout-cta", "variant-b", *WINNER["variant-b"])  # this one makes it eligible
        [promo] = await wait_for(lambda: promotions(conn, exp_id), what="the promotion")
        assert promo["promoted_variant_name"] == "variant-b"
        assert daemon.scanner.scans == 0
        status = await conn.fetchval("SELECT status FROM ab_experiments WHERE id = $1", exp_id)
        weights = dict(
            await conn.fetch("SELECT name, traffic_weight::float8 FROM ab_variants WHERE experiment_id = $1", exp_id)
        )
        assert status == "promoted" and weights == {"control": 0.0, "variant-b": 100.0}
        outbox = await conn.fetchval("SELECT count(*) FROM notification_outbox WHERE event = 'promotion.promoted'")
        assert outbox == 1


async def _queue_len_is(conn: asyncpg.Connection, n: int) -> bool:
    return await _queue_len(conn) == n


async def test_enabled_dry_run_and_exclusions_are_honoured(db_url: str) -> None:
    async with db(db_url) as conn:
        dry = await seed_winner(conn, "dry-exp", config={"dryRun": True})
        off = await seed_winner(conn, "off-exp", config={"enabled": False})
        excluded = await seed_winner(conn, "legacy-exp")
        normal = await seed_winner(conn, "normal-exp")
        async with running_daemon(db_url, config_env={"AUTO_PROMOTION_EXCLUDED": "legacy-*"}):
            await wait_for(lambda: promotions(conn, normal), what="the normal experiment's promotion")
            await wait_for(
                lambda: conn.fetchval("SELECT count(*) = 4 FROM ab_experiment_state WHERE evaluations > 0"),
                what="four evaluations",
            )
            await wait_for(
                lambda: conn.fetchval("SELECT count(*) FROM ab_promotion_audit_log WHERE action = 'dry_run'"),
                what="the dry run's audit row",
            )
            for exp_id in (dry, off, excluded):
                assert await promotions(conn, exp_id) == []
            audit = await conn.fetch("SELECT experiment_name, action FROM ab_promotion_audit_log ORDER BY id")
            assert ("dry-exp", "dry_run") in [(r["experiment_name"], r["action"]) for r in audit]
            state = dict(
                await conn.fetch(
                    "SELECT e.name, s.eligible FROM ab_experiment_state s "
                    "JOIN ab_experiments e ON e.id = s.experiment_id"
                )
            )
            assert state["legacy-exp"] is False


async def test_concurrency_limit_is_honoured(db_url: str) -> None:
    async with db(db_url) as conn, running_daemon(db_url, config_env={"AUTO_PROMOTION_MAX_CONCURRENT": "1"}):
        a = await seed_winner(conn, "exp-a")
        b = await seed_winner(conn, "exp-b")
        await wait_for(
            lambda: conn.fetchval("SELECT count(*) = 2 FROM ab_experiment_state WHERE evaluations > 0"),
            what="both evaluated",
        )
        await wait_for(lambda: conn.fetchval("SELECT count(*) FROM experiment_promotions"), what="one promotion")
        await record(conn, "exp-a", "control", 10, 1)
        await record(conn, "exp-b", "control", 10, 1)
        await wait_for(lambda: _queue_len_is(conn, 0), what="the queue to drain")
        # The promoted one is the guard's now; the other, still running, is evaluated again.
        await wait_for(
            lambda: conn.fetchval(
                "SELECT s.evaluations > 1 FROM ab_experiment_state s JOIN ab_experiments e"
                " ON e.id = s.experiment_id WHERE e.status = 'running'"
            ),
            what="the running one evaluated again",
        )
        assert len(await promotions(conn, a)) + len(await promotions(conn, b)) == 1
        reasons = await conn.fetchval(
            "SELECT decision->'reasons' FROM ab_experiment_state s "
            "JOIN ab_experiments e ON e.id = s.experiment_id WHERE e.status = 'running'"
        )
        assert any("concurrency limit" in r for r in reasons)


# -------------------------------------------------------------------------------------------------- folding
async def test_a_burst_for_one_experiment_coalesces_and_is_never_evaluated_twice_at_once(db_url: str) -> None:
    async with db(db_url) as conn, running_daemon(db_url) as daemon:
        exp_id = await create_experiment(conn, "bursty", ["control", "b"])
        running: set[int] = set()
        overlaps: list[int] = []
        calls: list[int] = []
        real = daemon.engine.evaluate_many

        async def watched(experiment_ids: list[int], **kwargs: Any) -> list[Evaluation]:
            overlaps.extend(i for i in experiment_ids if i in running)
            running.update(experiment_ids)
            calls.extend(experiment_ids)
            try:
                await anyio.sleep(0.05)  # widen the window in which a second evaluation could start
                return await real(experiment_ids, **kwargs)
            finally:
                running.difference_update(experiment_ids)

        daemon.engine.evaluate_many = watched  # type: ignore[method-assign]
        for _ in range(10):  # 10 transactions of 1,000 updates each, as fast as the database takes them
            async with conn.transaction():
                await conn.executemany(
                    "SELECT ab_record_metrics('bursty', $1, 1, 0)",
                    [("control" if i % 2 else "b",) for i in range(1_000)],
                )
        await wait_for(
            lambda: conn.fetchval("SELECT sum(updates_folded) = 10000 FROM ab_variant_stats"),
            what="10,000 updates folded",
        )
        await wait_for(lambda: _evaluated_after_last_fold(conn, exp_id), what="the last evaluation")
        assert overlaps == []
        assert 1 <= len(calls) <= 10, f"{len(calls)} evaluations for 10,000 updates"
        assert await _folded_exposures(conn) == 10_000


async def _evaluated_after_last_fold(conn: asyncpg.Connection, exp_id: int) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT (SELECT last_evaluated_at FROM ab_experiment_state WHERE experiment_id = $1) >= "
            "(SELECT max(updated_at) FROM ab_variant_stats WHERE experiment_id = $1)",
            exp_id,
        )
    )


async def test_catch_up_at_start_folds_the_backlog_and_evaluates_what_a_crash_left_unevaluated(db_url: str) -> None:
    async with db(db_url) as conn:
        queued = await seed_winner(conn, "queued-exp")  # updates still in the queue
        folded = await seed_winner(conn, "folded-not-evaluated")
        # A worker that died between its fold's commit and the evaluation: folded, never evaluated.
        await conn.execute("SELECT * FROM (WITH x AS (SELECT 1) SELECT 1) s")
        from worker.db.fold import fold_pending_updates

        await fold_pending_updates(conn, experiment_ids=[folded])
        assert await conn.fetchval("SELECT count(*) FROM ab_metric_updates WHERE experiment_id = $1", folded) == 0
        async with running_daemon(db_url):
            await wait_for(lambda: promotions(conn, queued), what="the queued experiment's promotion")
            await wait_for(lambda: promotions(conn, folded), what="the folded experiment's promotion")


async def test_malformed_notifications_are_logged_and_ignored(db_url: str) -> None:
    bad = [
        ("ab_metrics", "garbage"),
        ("ab_metrics", ""),
        ("ab_metrics", "-4"),
        ("ab_metrics", "1.5"),
        ("ab_metrics", "99999999999999999999"),
        ("ab_promotion_events", "garbage"),
        ("ab_promotion_events", '{"event": "exploded", "promotion_id": "x"}'),
        ("ab_promotion_events", "[]"),
        (
            "ab_promotion_events",
            json.dumps({"event": "promoted", "promotion_id": "not-a-uuid", "experiment_name": "x"}),
        ),
    ]
    with structlog.testing.capture_logs() as logs:
        async with db(db_url) as conn, running_daemon(db_url) as daemon:
            for channel, payload in bad:
                await conn.execute("SELECT pg_notify($1, $2)", channel, payload)
            await create_experiment(conn, "after-garbage", ["control", "b"])
            await record(conn, "after-garbage", "b", 5, 1)
            await wait_for(lambda: _queue_len_is(conn, 0), what="the good update to be folded")
            assert daemon.listener is not None and daemon.listener.connected
    warnings = [e for e in logs if e["event"] == "listener.bad_payload"]
    assert sorted((e["channel"], e["payload"]) for e in warnings) == sorted(bad)
    assert not [e for e in logs if e["event"] in ("listener.lost", "listener.reconnected")]


# ------------------------------------------------------------------------------------------- connections
async def test_listener_killed_while_updates_flow_reconnects_and_every_update_is_folded_once(db_url: str) -> None:
    dbname = db_url.rsplit("/", 1)[1]
    reconnects_before = metrics.LISTENER_RECONNECTS._value.get()
    async with db(db_url) as conn, db(db_url) as producer, running_daemon(db_url) as daemon:
        await create_experiment(conn, "flowing", ["control", "b"])
        recorded = 0

        async def produce() -> None:
            nonlocal recorded
            for i in range(400):
                await producer.execute(
                    "SELECT ab_record_metrics('flowing', $1, $2, 0)", "b" if i % 2 else "control", i + 1
                )
                recorded += i + 1
                if i % 20 == 0:
                    await anyio.sleep(0.005)

        async def kill_listener(times: int) -> None:
            for _ in range(times):
                pid = await wait_for(
                    lambda: conn.fetchval(
                        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = $2",
                        APPLICATION_NAME,
                        dbname,
                    ),
                    what="the listener's session",
                )
                assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
                await wait_for(
                    lambda old=pid: conn.fetchval(  # type: ignore[misc]
                        "SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = $1 AND datname = $2 "
                        "AND pid <> $3",
                        APPLICATION_NAME,
                        dbname,
                        old,
                    ),
                    what="a new listener session",
                )
                await anyio.sleep(0.05)

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            tg.start_soon(kill_listener, 3)
        await wait_for(lambda: _queue_len_is(conn, 0), what="the queue to drain")
        assert await _folded_exposures(conn) == recorded == sum(range(1, 401))
        assert await conn.fetchval("SELECT sum(updates_folded) FROM ab_variant_stats") == 400
        assert metrics.LISTENER_RECONNECTS._value.get() - reconnects_before >= 3
        assert daemon.listener is not None and daemon.listener.connected


async def test_poll_only_mode_never_listens_and_still_promotes(db_url: str) -> None:
    dbname = db_url.rsplit("/", 1)[1]
    async with (
        db(db_url) as conn,
        running_daemon(db_url, AUTO_PROMOTION_POLL_ONLY="true", AUTO_PROMOTION_POLL_INTERVAL="0.1") as daemon,
    ):
        assert daemon.listener is None and daemon.health.listener_required is False
        exp_id = await seed_winner(conn, "behind-pgbouncer")
        await wait_for(lambda: promotions(conn, exp_id), what="the promotion")
        listening = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = $2",
            APPLICATION_NAME,
            dbname,
        )
        assert listening == 0


async def test_postgres_stopped_and_started_again_is_recovered_from(pg_server: EmbeddedPostgres | None) -> None:
    if pg_server is None:
        pytest.skip("needs the embedded server (TEST_DATABASE_URL is set)")
    # A server of its own: the session's admin connections (conftest) would not survive a restart of pg_server.
    server = await anyio.to_thread.run_sync(start_embedded, pg_server.bin_dir)
    try:
        async with db(server.url) as conn:
            await migrate(conn)
        await _survive_a_restart(server)
    finally:
        await anyio.to_thread.run_sync(server.cleanup)


async def _survive_a_restart(server: EmbeddedPostgres) -> None:
    db_url = server.url
    async with running_daemon(db_url) as daemon:
        async with db(db_url) as conn:
            await create_experiment(conn, "survivor", ["control", "b"])
            for _ in range(50):
                await record(conn, "survivor", "b", 2, 1)
        await anyio.to_thread.run_sync(server.stop)
        await wait_for(lambda: _false(daemon.health.listener_connected), what="the worker to notice")
        await anyio.to_thread.run_sync(server.start)  # same port
        async with db(db_url) as conn:
            for _ in range(50):
                await record(conn, "survivor", "control", 3, 1)
            await wait_for(
                lambda: _true(daemon.health.listener_connected and daemon.health.catchup_done),
                within=60,
                what="the listener to reconnect and catch up",
            )
            await wait_for(lambda: _queue_len_is(conn, 0), within=30, what="the queue to drain")
            assert await _folded_exposures(conn) == 50 * 2 + 50 * 3
            assert await conn.fetchval("SELECT sum(updates_folded) FROM ab_variant_stats") == 100
            # and it still decides: a winner recorded now is promoted
            exp_id = await seed_winner(conn, "after-restart")
            await wait_for(lambda: promotions(conn, exp_id), within=30, what="a promotion after the restart")


async def _true(value: bool) -> bool:
    return value


async def _false(value: bool) -> bool:
    return not value


# --------------------------------------------------------------------------------------------- rollbacks
async def test_rollback_requested_through_sql_is_carried_out_with_audit_and_notifications(db_url: str) -> None:
    async with db(db_url) as conn, running_daemon(db_url):
        exp_id = await seed_winner(conn, "to-revert")
        [promo] = await wait_for(lambda: promotions(conn, exp_id), what="the promotion")
        await conn.execute("SELECT ab_request_rollback($1, 'conversions dropped in EU', 'alice')", promo["id"])
        await wait_for(
            lambda: conn.fetchval(
                "SELECT rollback_at IS NOT NULL FROM experiment_promotions WHERE id = $1", promo["id"]
            ),
            what="the rollback",
        )
        row = await conn.fetchrow("SELECT * FROM experiment_promotions WHERE id = $1", promo["id"])
        assert (row["rollback_reason"], row["rolled_back_by"]) == ("conversions dropped in EU", "alice")
        weights = dict(
            await conn.fetch("SELECT name, traffic_weight::float8 FROM ab_variants WHERE experiment_id = $1", exp_id)
        )
        assert weights == {"control": 1.0, "variant-b": 1.0}
        audit = await conn.fetchrow("SELECT actor, details FROM ab_promotion_audit_log WHERE action = 'rolled_back'")
        assert audit["actor"] == "alice" and audit["details"]["trigger"] == "sql_request"
        events = [r["event"] for r in await conn.fetch("SELECT event FROM notification_outbox ORDER BY id")]
        assert events == ["promotion.promoted", "promotion.rolled_back"]


async def test_a_rollback_request_seen_by_two_replicas_is_carried_out_once(db_url: str) -> None:
    async with db(db_url) as conn, running_daemon(db_url), running_daemon(db_url):
        exp_id = await seed_winner(conn, "two-replicas")
        [promo] = await wait_for(lambda: promotions(conn, exp_id), what="the promotion")
        await conn.execute("SELECT ab_request_rollback($1, 'bad', 'bob')", promo["id"])
        await wait_for(
            lambda: conn.fetchval(
                "SELECT rollback_at IS NOT NULL FROM experiment_promotions WHERE id = $1", promo["id"]
            ),
            what="the rollback",
        )
        await anyio.sleep(0.3)  # give the slower replica time to try (and find it done)
        assert await conn.fetchval("SELECT count(*) FROM ab_promotion_audit_log WHERE action = 'rolled_back'") == 1
        assert (
            await conn.fetchval("SELECT count(*) FROM notification_outbox WHERE event = 'promotion.rolled_back'") == 1
        )
        assert len(await promotions(conn, exp_id)) == 1


# ------------------------------------------------------------------------------------------------- guard
async def test_guard_rolls_back_a_promoted_variant_whose_error_rate_jumps(db_url: str) -> None:
    async with db(db_url) as conn, running_daemon(db_url):
        exp_id = await seed_winner(conn, "guarded")
        [promo] = await wait_for(lambda: promotions(conn, exp_id), what="the promotion")
        await record(conn, "guarded", "variant-b", 150, 15, 3)  # 2%: fine
        await wait_for(lambda: _queue_len_is(conn, 0), what="the healthy update to be folded")
        await record(conn, "guarded", "variant-b", 150, 15, 27)  # now 30 errors in 300 since promotion: 10%
        await wait_for(
            lambda: conn.fetchval(
                "SELECT rollback_at IS NOT NULL FROM experiment_promotions WHERE id = $1", promo["id"]
            ),
            what="the guard's rollback",
        )
        row = await conn.fetchrow("SELECT * FROM experiment_promotions WHERE id = $1", promo["id"])
        assert row["rolled_back_by"] == "autopromote-guard"
        assert row["rollback_reason"] == (
            "guard: error rate of variant-b since the promotion is 10.00% "
            "(30 errors in 300 exposures), above the 5.00% maximum"
        )
        audit = await conn.fetchrow("SELECT details FROM ab_promotion_audit_log WHERE action = 'rolled_back'")
        assert audit["details"]["trigger"] == "guard"
        assert audit["details"]["guard"][0]["metric"] == "error_rate"
        events = [r["event"] for r in await conn.fetch("SELECT event FROM notification_outbox ORDER BY id")]
        assert events == ["promotion.promoted", "promotion.rolled_back"]


@pytest.mark.parametrize("alert_scope", ["experiment", "global"])
async def test_guard_rolls_back_on_a_critical_alert_raised_after_the_promotion(db_url: str, alert_scope: str) -> None:
    async with db(db_url) as conn, running_daemon(db_url):
        exp_id = await seed_winner(conn, "alerted")
        [promo] = await wait_for(lambda: promotions(conn, exp_id), what="the promotion")
        await conn.execute(
            "SELECT ab_raise_alert($1, 'warning', 'disk 80%')", "alerted" if alert_scope == "experiment" else None
        )
        await conn.execute(
            "SELECT ab_raise_alert($1, 'critical', 'checkout 500s')", "alerted" if alert_scope == "experiment" else None
        )
        await wait_for(
            lambda: conn.fetchval(
                "SELECT rollback_at IS NOT NULL FROM experiment_promotions WHERE id = $1", promo["id"]
            ),
            what="the guard's rollback",
        )
        reason = await conn.fetchval("SELECT rollback_reason FROM experiment_promotions WHERE id = $1", promo["id"])
        assert reason.startswith(f"guard: critical {alert_scope} alert #")
        assert reason.endswith("raised after the promotion of variant-b: 'checkout 500s'")


async def test_guard_with_auto_rollback_off_notifies_once_per_metric_and_keeps_the_promotion(db_url: str) -> None:
    config = {"AUTO_PROMOTION_AUTO_ROLLBACK": "false"}
    async with (
        db(db_url) as conn,
        running_daemon(db_url, config_env=config),
        running_daemon(db_url, config_env=config, AUTO_PROMOTION_POLL_INTERVAL="0.1"),
    ):
        exp_id = await seed_winner(conn, "watched")
        [promo] = await wait_for(lambda: promotions(conn, exp_id), what="the promotion")
        for _ in range(3):
            await record(conn, "watched", "variant-b", 300, 30, 60)  # 20% errors each time
            await wait_for(lambda: _queue_len_is(conn, 0), what="the update to be folded")
        await wait_for(lambda: conn.fetchval("SELECT count(*) FROM ab_guard_breaches"), what="the breach record")
        await anyio.sleep(0.5)  # several more guard rounds on both replicas
        assert await conn.fetchval("SELECT rollback_at FROM experiment_promotions WHERE id = $1", promo["id"]) is None
        breaches = await conn.fetch("SELECT metric, reason FROM ab_guard_breaches")
        assert [b["metric"] for b in breaches] == ["error_rate"]
        assert breaches[0]["reason"].startswith("guard: error rate of variant-b since the promotion is 20.00%")
        audit = await conn.fetch("SELECT actor, details FROM ab_promotion_audit_log WHERE action = 'guard_breached'")
        assert len(audit) == 1 and audit[0]["actor"] == "autopromote-guard"
        outbox = await conn.fetch("SELECT payload FROM notification_outbox WHERE event = 'guard.breached'")
        assert len(outbox) == 1
        payload = outbox[0]["payload"]
        payload = json.loads(payload) if isinstance(payload, str) else payload
        assert payload["metric"] == "error_rate" and payload["promotionId"] == str(promo["id"])
        assert payload["reason"] == breaches[0]["reason"]


# -------------------------------------------------------------------------------------------------- scan
async def test_scan_promotes_an_experiment_that_became_eligible_only_because_time_passed(db_url: str) -> None:
    async with db(db_url) as conn:
        exp_id = await seed_winner(conn, "slow-burner", started_hours_ago=1.0)
        async with running_daemon(db_url, config_env={"AUTO_PROMOTION_SCAN_INTERVAL": "1"}) as daemon:
            await wait_for(
                lambda: conn.fetchval(
                    "SELECT evaluations > 0 FROM ab_experiment_state WHERE experiment_id = $1", exp_id
                ),
                what="the first evaluation",
            )
            assert await promotions(conn, exp_id) == []
            # A day passes: nothing is recorded, nothing is notified.
            await conn.execute(
                "UPDATE ab_experiments SET started_at = now() - interval '30 hours' WHERE id = $1", exp_id
            )
            [promo] = await wait_for(lambda: promotions(conn, exp_id), within=30, what="the scan's promotion")
            assert promo["promoted_variant_name"] == "variant-b"
            await wait_for(lambda: _true(daemon.scanner.scans >= 1), what="the scan to finish")


async def test_scan_repairs_a_rollback_request_whose_notification_was_lost(db_url: str) -> None:
    async with db(db_url) as conn:
        exp_id = await seed_winner(conn, "lost-wakeup")
        async with running_daemon(db_url):
            [promo] = await wait_for(lambda: promotions(conn, exp_id), what="the promotion")
        # Requested while no worker ran: the NOTIFY went nowhere.
        await conn.execute("SELECT ab_request_rollback($1, 'while nobody listened', 'carol')", promo["id"])
        async with running_daemon(db_url):
            await wait_for(
                lambda: conn.fetchval(
                    "SELECT rollback_at IS NOT NULL FROM experiment_promotions WHERE id = $1", promo["id"]
                ),
                what="the rollback",
            )


async def test_evaluations_and_promotion_events_are_published_to_the_event_bus(db_url: str) -> None:
    async with db(db_url) as conn, running_daemon(db_url) as daemon, daemon.events.subscribe() as queue:
        await seed_winner(conn, "live")
        seen: list[BusEvent] = []
        with anyio.fail_after(20):
            while {"promotion", "evaluation"} - {e["type"] for e in seen}:
                seen.append(await queue.get())
        evaluation = next(e for e in seen if e["type"] == "evaluation")
        assert evaluation["experimentName"] == "live"
        promotion = next(e for e in seen if e["type"] == "promotion")
        assert promotion["event"] == "promoted" and promotion["experimentName"] == "live"


# ------------------------------------------------------------------------------------------- notifications
async def test_a_channel_that_never_answers_does_not_delay_promotions(db_url: str) -> None:
    from aiohttp import web

    received: list[str] = []
    release = anyio.Event()

    async def hang(request: web.Request) -> web.Response:
        received.append((await request.json())["text"] if request.can_read_body else "")
        await release.wait()  # a Slack that accepts the connection and never answers
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hang)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with (
            db(db_url) as conn,
            running_daemon(
                db_url, SLACK_WEBHOOK_URL=f"http://127.0.0.1:{port}/hook", AUTO_PROMOTION_NOTIFY_TIMEOUT="120"
            ),
        ):
            first = await seed_winner(conn, "first-winner")
            await wait_for(lambda: promotions(conn, first), what="the first promotion")
            await wait_for(lambda: _true(bool(received)), what="its notification to reach the hanging channel")
            second = await seed_winner(conn, "second-winner")
            await wait_for(lambda: promotions(conn, second), what="the second promotion")
            assert not release.is_set()  # the first notification is still in flight
            assert await conn.fetchval("SELECT count(*) FROM notification_outbox WHERE status = 'sent'") == 0
            release.set()
    finally:
        release.set()
        await runner.cleanup()


# ------------------------------------------------------------------------------------------------- Wake
async def test_wake_coalesces_sets_and_times_out_without_one() -> None:
    from worker.evaluator import Wake

    wake = Wake()
    wake.set()
    wake.set()
    assert wake.is_set()
    assert await wake.wait() is True  # two sets, one wake-up
    assert not wake.is_set()
    with anyio.fail_after(5):
        assert await wake.wait(0.05) is False  # nothing set: the timeout ends the wait
        assert await wake.wait(0) is False

    async def set_later() -> None:
        await anyio.sleep(0.02)
        wake.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(set_later)
            assert await wake.wait(30) is True  # a set from another task ends a long wait at once
    assert await wake.wait(0) is False


async def test_wake_wait_is_cancellable() -> None:
    from worker.evaluator import Wake

    wake = Wake()
    with anyio.move_on_after(0.05) as scope:
        await wake.wait()
    assert scope.cancelled_caught
    wake.set()
    assert await wake.wait(0) is True
