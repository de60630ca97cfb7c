"""A dry-run or disabled experiment that is eligible is reported once per change of eligibility: one
``promotion.eligible`` notification and one ``dry_run`` audit row, whichever path evaluates it (the daemon, the
leader's scan, an API scan, a check). An operator's explicit ``promote`` in dry run is reported at every call.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from tests.daemon_support import running_daemon, wait_for
from tests.factories import create_experiment, record
from tests.support.api import serve_api
from worker.config import load_config, load_settings
from worker.db.fold import fold_pending_updates
from worker.engine import Engine

WINNER = {"control": (17_500, 1_750), "variant-b": (17_000, 1_904)}  # 10.0% vs 11.2%: about +12%, eligible
NOTIFY_ELIGIBLE = {"notifications": {"notifyEligible": True}}
DRY = {"dryRun": True, **NOTIFY_ELIGIBLE}
OFF = {"enabled": False, **NOTIFY_ELIGIBLE}
REPORT_ONLY = [pytest.param(DRY, id="dryRun"), pytest.param(OFF, id="disabled")]


async def seed_winner(conn: asyncpg.Connection, name: str, config: dict[str, Any]) -> int:
    exp_id = await create_experiment(conn, name, list(WINNER), config=config)
    for variant, (n, conv) in WINNER.items():
        await record(conn, name, variant, n, conv)
    return exp_id


async def reports(conn: asyncpg.Connection, name: str) -> tuple[int, int]:
    """(dry_run audit rows, promotion.eligible outbox rows) of experiment ``name``."""
    audits = await conn.fetchval(
        "SELECT count(*) FROM ab_promotion_audit_log WHERE action = 'dry_run' AND experiment_name = $1", name
    )
    notes = await conn.fetchval(
        "SELECT count(*) FROM notification_outbox WHERE event = 'promotion.eligible' "
        "AND payload->>'experimentName' = $1",
        name,
    )
    return int(audits), int(notes)


async def block(conn: asyncpg.Connection, name: str) -> None:
    """Make the experiment ineligible: an open critical alert."""
    await conn.execute("SELECT ab_raise_alert($1, 'critical', 'error budget burning')", name)


async def unblock(conn: asyncpg.Connection) -> None:
    await conn.execute("UPDATE ab_alerts SET resolved_at = now() WHERE resolved_at IS NULL")


def engine_for(pool: asyncpg.Pool) -> Engine:
    settings = load_settings({"SLACK_WEBHOOK_URL": "http://127.0.0.1:9/slack-hook"})
    return Engine(pool, settings, load_config(env={}))


@pytest.mark.parametrize("own", REPORT_ONLY)
async def test_repeated_reconciliation_scans_report_once_per_change(
    pool: asyncpg.Pool, conn: asyncpg.Connection, own: dict[str, Any]
) -> None:
    await seed_winner(conn, "quiet", own)
    engine = engine_for(pool)
    for _ in range(3):
        result = await engine.scan_and_promote_winners(include_results=False)  # the leader's call
        assert result["eligible"] == 1 and result["promoted"] == 0
    assert await reports(conn, "quiet") == (1, 1)
    await block(conn, "quiet")
    await engine.scan_and_promote_winners(include_results=False)
    await engine.scan_and_promote_winners(include_results=False)
    assert await reports(conn, "quiet") == (1, 1)
    await unblock(conn)
    for _ in range(3):
        await engine.scan_and_promote_winners(include_results=False)
    assert await reports(conn, "quiet") == (2, 2)
    assert await conn.fetchval("SELECT count(*) FROM experiment_promotions") == 0


@pytest.mark.parametrize("own", REPORT_ONLY)
async def test_repeated_api_scans_report_once_per_change(
    pool: asyncpg.Pool, conn: asyncpg.Connection, own: dict[str, Any]
) -> None:
    await seed_winner(conn, "quiet", own)
    async with serve_api(pool) as api:
        for _ in range(3):
            reply = await api.post({"action": "scan"})
            assert reply.status == 200 and reply.body["data"]["eligible"] == 1
            assert reply.body["data"]["results"][0]["dryRun"] is True
        assert await reports(conn, "quiet") == (1, 1)
        await block(conn, "quiet")
        await api.post({"action": "scan"})
        await unblock(conn)
        await api.post({"action": "scan"})
        await api.post({"action": "scan"})
    assert await reports(conn, "quiet") == (2, 2)
    # Each scan call is audited as such, once per call.
    assert await conn.fetchval("SELECT count(*) FROM ab_promotion_audit_log WHERE action = 'scan_requested'") == 6


@pytest.mark.parametrize("own", REPORT_ONLY)
async def test_repeated_daemon_evaluations_report_once_per_change(
    pool: asyncpg.Pool, conn: asyncpg.Connection, own: dict[str, Any]
) -> None:
    exp_id = await seed_winner(conn, "quiet", own)
    await fold_pending_updates(conn, batch_size=10_000)  # the daemon evaluates what its folder folded
    engine = engine_for(pool)
    for _ in range(3):
        await engine.evaluate_experiment(exp_id)  # the daemon's step for one experiment
    await engine.evaluate_many([exp_id, exp_id + 1000])  # and its batch step
    assert await reports(conn, "quiet") == (1, 1)
    await block(conn, "quiet")
    await engine.evaluate_experiment(exp_id)
    await unblock(conn)
    await engine.evaluate_experiment(exp_id)
    await engine.evaluate_experiment(exp_id)
    assert await reports(conn, "quiet") == (2, 2)


@pytest.mark.parametrize("own", REPORT_ONLY)
async def test_a_running_daemon_reports_once_while_updates_keep_coming(
    db_url: str, conn: asyncpg.Connection, own: dict[str, Any]
) -> None:
    exp_id = await seed_winner(conn, "quiet", own)
    async with running_daemon(db_url, config_env={"AUTO_PROMOTION_SCAN_INTERVAL": "1"}) as daemon:
        await wait_for(lambda: reports(conn, "quiet"), what="the first report")
        for _ in range(5):
            await record(conn, "quiet", "control", 10, 1)
            await record(conn, "quiet", "variant-b", 10, 1)
            # Folded and evaluated: nothing queued, and the stored decision covers the statistics (one evaluation
            # may cover two folds, so the evaluation count is no measure).
            await wait_for(
                lambda: conn.fetchval(
                    "SELECT NOT ab_evaluation_due($1)"
                    " AND NOT EXISTS (SELECT 1 FROM ab_metric_updates WHERE experiment_id = $1)",
                    exp_id,
                ),
                what="the evaluation of the update",
            )
        start = daemon.scanner.scans

        async def scanned_twice() -> bool:
            return daemon.scanner.scans >= start + 2

        await wait_for(scanned_twice, what="two reconciliation scans")
    assert await reports(conn, "quiet") == (1, 1)
    assert await conn.fetchval("SELECT count(*) FROM experiment_promotions") == 0


async def test_a_check_that_sees_the_change_reports_it_and_the_scan_stays_quiet(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await seed_winner(conn, "quiet", DRY)
    engine = engine_for(pool)
    data = await engine.check_promotion_eligibility("quiet")  # the CLI's check: stores the last decision
    assert data["eligible"] is True
    assert await reports(conn, "quiet") == (1, 1)
    await engine.check_promotion_eligibility("quiet")
    await engine.scan_and_promote_winners(include_results=False)
    await engine.scan_and_promote_winners()
    assert await reports(conn, "quiet") == (1, 1)


async def test_explicit_dry_run_promotes_are_reported_at_every_call(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await seed_winner(conn, "quiet", DRY)
    async with serve_api(pool) as api:
        for _ in range(3):
            reply = await api.post({"action": "promote", "experimentName": "quiet", "dryRun": True})
            assert reply.body["data"]["dryRun"] is True and reply.body["data"]["success"] is True
    assert await reports(conn, "quiet") == (3, 3)
    # The reconciliation scan afterwards adds nothing: the eligibility it finds is the one reported.
    await engine_for(pool).scan_and_promote_winners(include_results=False)
    assert await reports(conn, "quiet") == (3, 3)
