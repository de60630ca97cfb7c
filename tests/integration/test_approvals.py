"""Approvals on a real database: an eligible promotion under approval.require waits as a pending approval; approve
re-checks on the locked state and promotes in the same transaction (or closes it), decline, expiry as declined with
its notification, and replicas that open one approval between them and decide it once."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import asyncpg
import pytest

from tests.conftest import pool_url
from tests.factories import create_experiment, record
from worker.config import EffectiveConfig, Settings, load_config, load_settings
from worker.db.connect import create_pool
from worker.db.fold import fold_pending_updates
from worker.domain.results import Evaluation
from worker.engine import ApprovalNotFound, ApprovalNotPending, Engine, InvalidRequest
from worker.metrics import REGISTRY

WINNER = {"control": (17_500, 1_750), "variant-b": (17_000, 1_904)}  # 10.0% vs 11.2%: about +12%, eligible
NAME = "homepage-cta-test"


def _settings() -> Settings:
    return load_settings({"SLACK_WEBHOOK_URL": "http://127.0.0.1:9/slack-hook"})


def _config(require: str = "promote", **overrides: Any) -> EffectiveConfig:
    return load_config(env={}, overrides={"approval": {"require": require}, **overrides})


@pytest.fixture
def engine(pool: asyncpg.Pool) -> Engine:
    return Engine(pool, _settings(), _config())


async def seed_winner(conn: asyncpg.Connection, name: str = NAME, **kwargs: Any) -> int:
    exp_id = await create_experiment(conn, name, list(WINNER), **kwargs)
    for variant, (n, conv) in WINNER.items():
        await record(conn, name, variant, n, conv)
    return exp_id


async def daemon_step(engine: Engine, conn: asyncpg.Connection, exp_id: int) -> Evaluation:
    """What the daemon does on a metrics wake-up: its folder folds, then its evaluator evaluates."""
    await fold_pending_updates(conn, batch_size=10_000)
    return await engine.evaluate_experiment(exp_id)


async def more_data(conn: asyncpg.Connection) -> None:
    """More exposures for both variants (balanced: no sample-ratio mismatch), the winner still winning."""
    await record(conn, NAME, "control", 100, 10)
    await record(conn, NAME, "variant-b", 100, 12)


def _decided(outcome: str) -> float:
    return REGISTRY.get_sample_value("autopromote_approvals_decided_total", {"outcome": outcome}) or 0.0


async def _approvals(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await conn.fetch("SELECT * FROM ab_approvals ORDER BY requested_at, id"))


async def _outbox_events(conn: asyncpg.Connection) -> list[str]:
    return [r["event"] for r in await conn.fetch("SELECT event FROM notification_outbox ORDER BY id")]


async def _weights(conn: asyncpg.Connection, exp_id: int) -> dict[str, float]:
    rows = await conn.fetch(
        "SELECT name, traffic_weight::float8 AS w FROM ab_variants WHERE experiment_id = $1", exp_id
    )
    return {r["name"]: r["w"] for r in rows}


async def _audit_actions(conn: asyncpg.Connection) -> list[str]:
    return [r["action"] for r in await conn.fetch("SELECT action FROM ab_promotion_audit_log ORDER BY id")]


# ------------------------------------------------------------------------------------------- requesting
async def test_eligible_promotion_waits_as_a_pending_approval(engine: Engine, conn: asyncpg.Connection) -> None:
    exp_id = await seed_winner(conn)
    result = await engine.promote_winner(NAME, actor="ops-bot")
    assert result["success"] is False and result["promotionId"] is None
    assert result["eligibility"]["eligible"] is True
    approval_id = result["approvalId"]
    assert "waiting for approval" in result["reasons"][0] and approval_id in result["reasons"][0]
    [row] = await _approvals(conn)
    assert str(row["id"]) == approval_id
    assert (row["experiment_name"], row["kind"], row["status"], row["variant"]) == (
        NAME,
        "promote",
        "pending",
        "variant-b",
    )
    assert row["requested_by"] == "ops-bot" and row["decision"]["eligible"] is True
    hours = (row["expires_at"] - row["requested_at"]).total_seconds() / 3600
    assert hours == pytest.approx(24.0)
    # Nothing promoted: status, weights and promotions as before.
    assert await conn.fetchval("SELECT status FROM ab_experiments WHERE id = $1", exp_id) == "running"
    assert await _weights(conn, exp_id) == {"control": 1.0, "variant-b": 1.0}
    assert await conn.fetchval("SELECT count(*) FROM experiment_promotions") == 0
    assert await _outbox_events(conn) == ["approval.requested"]
    body = await conn.fetchval("SELECT payload FROM notification_outbox")
    assert body["approvalId"] == approval_id and body["approvalKind"] == "promote" and body["variant"] == "variant-b"
    assert "approval_requested" in await _audit_actions(conn)


async def test_the_daemon_asks_once_per_eligibility(engine: Engine, conn: asyncpg.Connection) -> None:
    exp_id = await seed_winner(conn)
    first = await daemon_step(engine, conn, exp_id)
    assert first.action == "awaiting_approval"
    # More data, still eligible: evaluated again, no second approval and no second notification.
    await more_data(conn)
    again = await daemon_step(engine, conn, exp_id)
    assert again.action == "awaiting_approval" and again.decision is not None and again.decision.eligible
    assert len(await _approvals(conn)) == 1
    assert await _outbox_events(conn) == ["approval.requested"]
    # The scan sees the pending one too.
    scan = await engine.scan_and_promote_winners()
    assert scan["promoted"] == 0 and scan["results"][0]["approvalId"] == str((await _approvals(conn))[0]["id"])
    assert len(await _approvals(conn)) == 1


async def test_without_approval_require_the_promotion_is_immediate(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await seed_winner(conn)
    result = await Engine(pool, _settings(), _config("none")).promote_winner(NAME)
    assert result["success"] is True and "approvalId" not in result
    assert await _approvals(conn) == []


async def test_an_experiments_own_config_can_ask_for_approval(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    await seed_winner(conn, config={"approval": {"require": "promote", "timeoutHours": 2}})
    result = await Engine(pool, _settings(), _config("none")).promote_winner(NAME)
    assert result["success"] is False and "approvalId" in result
    [row] = await _approvals(conn)
    assert (row["expires_at"] - row["requested_at"]).total_seconds() == pytest.approx(7200)


async def test_a_dry_run_asks_for_no_approval(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    await seed_winner(conn)
    result = await Engine(pool, _settings(), _config(dryRun=True)).promote_winner(NAME)
    assert result["dryRun"] is True and result["success"] is True
    assert await _approvals(conn) == []


# ------------------------------------------------------------------------------------------- approving
async def test_approve_promotes_in_the_same_transaction(engine: Engine, conn: asyncpg.Connection) -> None:
    exp_id = await seed_winner(conn)
    approval_id = (await engine.promote_winner(NAME))["approvalId"]
    # Data arrives after the request: the approval decides on what is there at approval time.
    await record(conn, NAME, "variant-b", 1_000, 120)
    data = await engine.approve(approval_id, actor="alice")
    assert data["status"] == "approved" and data["decidedBy"] == "alice" and data["reason"] is None
    promotion = data["promotion"]
    assert promotion["success"] is True and promotion["promotedVariantName"] == "variant-b"
    assert promotion["eligibility"]["variants"][1]["exposures"] == 18_000  # folded and re-decided at approval
    row = await conn.fetchrow("SELECT * FROM experiment_promotions")
    assert str(row["id"]) == promotion["promotionId"] and row["promoted_by"] == "alice"
    assert await conn.fetchval("SELECT status FROM ab_experiments WHERE id = $1", exp_id) == "promoted"
    assert await _weights(conn, exp_id) == {"control": 0.0, "variant-b": 100.0}
    [approval] = await _approvals(conn)
    assert approval["status"] == "approved" and str(approval["promotion_id"]) == promotion["promotionId"]
    actions = await _audit_actions(conn)
    assert actions[-2:] == ["promoted", "approval_approved"]
    assert await _outbox_events(conn) == ["approval.requested", "promotion.promoted"]
    with pytest.raises(ApprovalNotPending, match="approved at"):
        await engine.approve(approval_id, actor="bob")
    assert await conn.fetchval("SELECT count(*) FROM experiment_promotions") == 1


async def test_approve_of_what_is_no_longer_eligible_closes_it(engine: Engine, conn: asyncpg.Connection) -> None:
    exp_id = await seed_winner(conn)
    approval_id = (await engine.promote_winner(NAME))["approvalId"]
    await conn.execute("SELECT ab_raise_alert($1, 'critical', 'checkout is down')", NAME)
    data = await engine.approve(approval_id, actor="alice")
    assert data["status"] == "closed" and data["reason"].startswith("not promoted: ")
    assert "critical" in data["reason"].lower()
    assert data["promotion"]["success"] is False and data["promotion"]["promotionId"] is None
    assert await conn.fetchval("SELECT count(*) FROM experiment_promotions") == 0
    assert await conn.fetchval("SELECT status FROM ab_experiments WHERE id = $1", exp_id) == "running"
    assert await _weights(conn, exp_id) == {"control": 1.0, "variant-b": 1.0}
    [approval] = await _approvals(conn)
    assert approval["status"] == "closed" and approval["decided_by"] == "alice"
    assert (await _audit_actions(conn))[-2:] == ["promotion_refused", "approval_closed"]


async def test_approve_of_a_paused_experiment_closes_it(engine: Engine, conn: asyncpg.Connection) -> None:
    exp_id = await seed_winner(conn)
    approval_id = (await engine.promote_winner(NAME))["approvalId"]
    await conn.execute("UPDATE ab_experiments SET status = 'paused' WHERE id = $1", exp_id)
    data = await engine.approve(approval_id, actor="alice")
    assert data["status"] == "closed" and "status is 'paused'" in data["reason"]
    assert await conn.fetchval("SELECT count(*) FROM experiment_promotions") == 0


async def test_approve_and_decline_refuse_bad_and_unknown_ids(engine: Engine) -> None:
    with pytest.raises(InvalidRequest, match="not a UUID"):
        await engine.approve("nope", actor="alice")
    with pytest.raises(InvalidRequest, match="required"):
        await engine.approve(" ", actor="alice")
    with pytest.raises(ApprovalNotFound):
        await engine.approve(str(uuid.uuid4()), actor="alice")
    with pytest.raises(InvalidRequest, match="reason"):
        await engine.decline(str(uuid.uuid4()), "  ", actor="alice")


# ------------------------------------------------------------------------------------------- declining
async def test_decline_promotes_nothing_and_the_same_eligibility_is_not_asked_again(
    engine: Engine, conn: asyncpg.Connection
) -> None:
    exp_id = await seed_winner(conn)
    approval_id = (await engine.promote_winner(NAME))["approvalId"]
    data = await engine.decline(approval_id, "not before the holiday freeze", actor="bob")
    assert data["status"] == "declined" and data["reason"] == "not before the holiday freeze"
    assert data["promotion"] is None and data["expired"] is False
    with pytest.raises(ApprovalNotPending, match="declined"):
        await engine.approve(approval_id, actor="alice")
    assert await conn.fetchval("SELECT count(*) FROM experiment_promotions") == 0
    # The daemon and the scan see the same eligibility: no new approval.
    await more_data(conn)
    assert (await daemon_step(engine, conn, exp_id)).action == "awaiting_approval"
    await engine.scan_and_promote_winners()
    assert len(await _approvals(conn)) == 1
    # Not eligible, then eligible again: a new eligibility, a new approval.
    await conn.execute("SELECT ab_raise_alert($1, 'critical', 'db slow')", NAME)
    assert (await daemon_step(engine, conn, exp_id)).action == "evaluated"
    await conn.execute("UPDATE ab_alerts SET resolved_at = now()")
    await more_data(conn)
    assert (await daemon_step(engine, conn, exp_id)).action == "awaiting_approval"
    rows = await _approvals(conn)
    assert [r["status"] for r in rows] == ["declined", "pending"]
    assert "approval_declined" in await _audit_actions(conn)


async def test_an_explicit_promote_asks_again_after_a_decline(engine: Engine, conn: asyncpg.Connection) -> None:
    await seed_winner(conn)
    first = (await engine.promote_winner(NAME))["approvalId"]
    await engine.decline(first, "wait for the EU numbers", actor="bob")
    second = (await engine.promote_winner(NAME))["approvalId"]
    assert second != first
    # While one is pending, another promote returns the same one.
    assert (await engine.promote_winner(NAME))["approvalId"] == second


# ------------------------------------------------------------------------------------------- expiring
async def _make_due(conn: asyncpg.Connection) -> None:
    """Time passes: the pending approvals were requested a timeout and a second ago."""
    await conn.execute(
        """UPDATE ab_approvals SET requested_at = requested_at - (expires_at - now()) - interval '1 second',
                                   expires_at = now() - interval '1 second'
            WHERE status = 'pending'"""
    )


async def test_expiry_declines_once_and_notifies(pool: asyncpg.Pool, engine: Engine, conn: asyncpg.Connection) -> None:
    await seed_winner(conn)
    approval_id = (await engine.promote_winner(NAME))["approvalId"]
    assert await engine.expire_approvals() == 0  # not due yet
    await _make_due(conn)
    expired_before = _decided("expired")
    # Two replicas expire at once: one of them does it.
    other_pool = await create_pool(pool_url(pool), min_size=1, max_size=2)
    try:
        other = Engine(other_pool, _settings(), _config())
        counts: list[int] = []

        async def expire(e: Engine) -> None:
            counts.append(await e.expire_approvals())

        async with anyio.create_task_group() as tg:
            tg.start_soon(expire, engine)
            tg.start_soon(expire, other)
    finally:
        await other_pool.close()
    assert sorted(counts) == [0, 1]
    assert _decided("expired") == expired_before + 1
    [row] = await _approvals(conn)
    assert row["status"] == "declined" and row["expired"] is True and row["decided_by"] == "autopromote-expiry"
    assert row["reason"].startswith("expired: nobody approved or declined it within 24 h")
    assert await _outbox_events(conn) == ["approval.requested", "approval.expired"]
    body = await conn.fetchval("SELECT payload FROM notification_outbox WHERE event = 'approval.expired'")
    assert body["approvalId"] == approval_id and body["reason"] == row["reason"]
    assert (await _audit_actions(conn)).count("approval_expired") == 1
    with pytest.raises(ApprovalNotPending, match="expired"):
        await engine.approve(approval_id, actor="alice")
    assert await conn.fetchval("SELECT count(*) FROM experiment_promotions") == 0


async def test_approve_after_the_timeout_expires_it_instead(engine: Engine, conn: asyncpg.Connection) -> None:
    await seed_winner(conn)
    approval_id = (await engine.promote_winner(NAME))["approvalId"]
    await _make_due(conn)
    with pytest.raises(ApprovalNotPending, match="expired") as caught:
        await engine.approve(approval_id, actor="alice")
    assert caught.value.details["expired"] is True
    assert await conn.fetchval("SELECT count(*) FROM experiment_promotions") == 0
    assert await _outbox_events(conn) == ["approval.requested", "approval.expired"]
    assert await engine.expire_approvals() == 0


async def test_the_scan_expires_overdue_approvals(engine: Engine, conn: asyncpg.Connection) -> None:
    await seed_winner(conn)
    await engine.promote_winner(NAME)
    await _make_due(conn)
    await engine.scan_and_promote_winners()
    [row] = await _approvals(conn)
    assert row["status"] == "declined" and row["expired"]


# ------------------------------------------------------------------------------------------- replicas
@pytest.mark.slow
async def test_replicas_open_one_approval_and_decide_it_once(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    exp_id = await seed_winner(conn)
    url = pool_url(pool)
    pools = [await create_pool(url, min_size=1, max_size=3) for _ in range(3)]
    try:
        engines = [Engine(p, _settings(), _config()) for p in pools]

        await fold_pending_updates(conn, batch_size=10_000)

        async def evaluate(e: Engine) -> None:
            await e.evaluate_experiment(exp_id)

        async def scan(e: Engine) -> None:
            await e.scan_and_promote_winners()

        async with anyio.create_task_group() as tg:
            for e in engines:
                tg.start_soon(evaluate, e)
                tg.start_soon(scan, e)
        [row] = await _approvals(conn)
        assert row["status"] == "pending"
        assert await _outbox_events(conn) == ["approval.requested"]

        outcomes: list[str] = []

        async def approve(e: Engine, who: str) -> None:
            try:
                outcomes.append((await e.approve(row["id"], actor=who))["status"])
            except ApprovalNotPending:
                outcomes.append("refused")

        async def decline(e: Engine, who: str) -> None:
            try:
                outcomes.append((await e.decline(row["id"], "no", actor=who))["status"])
            except ApprovalNotPending:
                outcomes.append("refused")

        async with anyio.create_task_group() as tg:
            tg.start_soon(approve, engines[0], "alice")
            tg.start_soon(approve, engines[1], "bob")
            tg.start_soon(decline, engines[2], "carol")
        assert sorted(outcomes).count("refused") == 2, outcomes
        promotions = await conn.fetchval("SELECT count(*) FROM experiment_promotions")
        assert promotions == (1 if "approved" in outcomes else 0)
    finally:
        for p in pools:
            await p.close()
