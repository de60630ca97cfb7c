"""Review of the progressive rollout (issue 17) on the real PostgreSQL: edge cases of the ramp's transitions."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from tests.daemon_support import wait_for
from tests.factories import create_experiment, record
from tests.integration.test_rollout import NAME, WINNER, _engine, _harmless, _rollout, _weights

RAMP0: dict[str, dict[str, Any]] = {
    "rollout": {"mode": "ramp", "steps": [50], "holdback": 0, "stepMinutes": 0, "stepMinExposures": 2000},
    "guard": {"guardHours": 0.0003, "minSamples": 200},
    "safetyChecks": {"checkTrafficBalance": False},
}


async def test_a_ramp_without_holdback_holds_at_100_and_completes(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    engine = _engine(pool)
    exp_id = await create_experiment(conn, NAME, list(WINNER), weights=[80, 20], config=RAMP0)
    for variant, (n, conv) in WINNER.items():
        await record(conn, NAME, variant, n, conv)
    promoted = await engine.promote_winner(NAME)
    assert promoted["success"] and promoted["rollout"]["steps"] == [50.0, 100.0], promoted
    await _harmless(conn, 2500, 2500)
    assert [o.action for o in (await engine.rollouts.check()).outcomes] == ["advanced"]
    r = await _rollout(conn, exp_id)
    assert (r["state"], r["step"]) == ("holding", 2)
    assert await _weights(conn, exp_id) == {"variant-b": 100.0, "control": 0.0}

    async def completed() -> bool:
        return any(o.action == "completed" for o in (await engine.rollouts.check()).outcomes)

    await wait_for(completed, within=10, what="the holding window to end")
    r = await _rollout(conn, exp_id)
    assert (r["state"], r["step"]) == ("complete", 2)
    steps = await conn.fetch("SELECT * FROM experiment_rollout_steps WHERE rollout_id = $1 ORDER BY step", r["id"])
    assert [(s["step"], s["kind"], s["outcome"]) for s in steps] == [(1, "ramping", "advanced"), (2, "complete", None)]
    assert {g["metric"] for g in steps[1]["guard"]} >= {"critical_alert"}  # the holding window's guard


async def test_three_variants_rolled_back_after_complete_get_their_weights_back(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    engine = _engine(pool)
    three = {**WINNER, "variant-c": (17_000, 1_700)}
    exp_id = await create_experiment(conn, NAME, list(three), weights=[50, 30, 20], config=RAMP0)
    for variant, (n, conv) in three.items():
        await record(conn, NAME, variant, n, conv)
    promoted = await engine.promote_winner(NAME)
    assert promoted["success"], promoted
    assert await _weights(conn, exp_id) == {"control": 50.0, "variant-b": 50.0, "variant-c": 0.0}
    await _harmless(conn, 2500, 2500)
    assert [o.action for o in (await engine.rollouts.check()).outcomes] == ["advanced"]

    async def completed() -> bool:
        return any(o.action == "completed" for o in (await engine.rollouts.check()).outcomes)

    await wait_for(completed, within=10, what="the holding window to end")
    await conn.execute("SELECT ab_request_rollback($1, 'late regression', 'carol')", uuid.UUID(promoted["promotionId"]))
    from worker.rollbacks import carry_out_rollback_requests

    assert [d.action for d in await carry_out_rollback_requests(pool, engine)] == ["rolled_back"]
    assert await _weights(conn, exp_id) == {"control": 50.0, "variant-b": 30.0, "variant-c": 20.0}
    r = await _rollout(conn, exp_id)
    assert r["state"] == "rolled_back"


async def test_one_broken_rollout_does_not_hold_up_the_others(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    from tests.integration.test_rollout import RAMP
    from worker.db.fold import fold_pending_updates

    engine = _engine(pool)
    ids = {}
    for name in ("broken-ramp", "healthy-ramp"):
        ids[name] = await create_experiment(conn, name, list(WINNER), weights=[80, 20], config=RAMP)
        for variant, (n, conv) in WINNER.items():
            await record(conn, name, variant, n, conv)
        assert (await engine.promote_winner(name))["success"]
    # Bad data in one rollout (a sketch no worker writes): its check raises, every time.
    await conn.execute(
        "UPDATE experiment_rollouts SET step_stats = step_stats || "
        '\'{"control": {"metrics": {"revenue": {"units": "many"}}}}\' WHERE experiment_id = $1',
        ids["broken-ramp"],
    )
    lat = [20.0 + (i % 40) for i in range(400)]
    for name in ids:
        await record(conn, name, "variant-b", 2500, 275, 25, lat)
        await record(conn, name, "control", 2500, 250, 25, lat)
    await fold_pending_updates(conn)
    checked = await engine.rollouts.check()
    assert [(o.experiment_name, o.action) for o in checked.outcomes] == [("healthy-ramp", "advanced")]
    assert checked.failed == [str((await _rollout(conn, ids["broken-ramp"]))["id"])]
    assert await _weights(conn, ids["healthy-ramp"]) == {"variant-b": 50.0, "control": 50.0}


async def test_a_ramp_still_under_way_counts_against_max_concurrent_promotions(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    # A step can last longer than the promotion's guard window (waiting for stepMinExposures on a quiet experiment,
    # or paused): the ramp is still live, so it still takes one of maxConcurrentPromotions' slots.
    from tests.integration.test_rollout import RAMP

    engine = _engine(pool)
    config = {**RAMP, "maxConcurrentPromotions": 1}
    for name in ("slow-ramp", "next-one"):
        await create_experiment(conn, name, list(WINNER), weights=[80, 20], config=config)
        for variant, (n, conv) in WINNER.items():
            await record(conn, name, variant, n, conv)
    assert (await engine.promote_winner("slow-ramp"))["success"]
    await conn.execute("UPDATE experiment_promotions SET guard_until = now() - interval '1 second'")
    refused = await engine.promote_winner("next-one")
    assert not refused["success"], refused
    assert any("concurrency limit" in r for r in refused["reasons"]), refused

    checked = await engine.check_promotion_eligibility("next-one")
    assert not checked["eligible"], checked
    # Once it completes (or is rolled back) the slot is free again.
    await conn.execute("UPDATE experiment_rollouts SET state = 'complete'")
    assert (await engine.promote_winner("next-one"))["success"]


async def test_a_ramp_paused_while_awaiting_approval_asks_again_after_resume(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    # Paused while its step waited for an approval, then the approval was declined (or expired, or approved: each
    # finds the rollout paused and leaves it): resume must not bring back an awaiting_approval that no approval
    # will ever end. It resumes ramping, and the step, its minimums met, asks again.
    from tests.integration import test_approvals_every_step as every

    engine = every._engine(pool)
    exp_id = await every._seed(conn)
    await engine.approve((await engine.promote_winner(every.NAME))["approvalId"], actor="alice")
    await every._harmless(conn, 2500, 7500)
    await engine.rollouts.check()
    step = await every._pending(conn)
    assert (await _rollout(conn, exp_id))["state"] == "awaiting_approval"
    await engine.rollouts.pause(every.NAME, actor="ops", reason="freeze")
    await engine.decline(step["id"], "not now", actor="carol")
    assert (await _rollout(conn, exp_id))["state"] == "paused"
    resumed = await engine.rollouts.resume(every.NAME, actor="ops")
    assert resumed["state"] == "ramping", resumed
    await engine.rollouts.check()
    assert (await _rollout(conn, exp_id))["state"] == "awaiting_approval"
    again = await every._pending(conn)
    assert again["id"] != step["id"] and again["step"] == 2
    await engine.approve(again["id"], actor="bob")
    r = await _rollout(conn, exp_id)
    assert (r["state"], r["step"]) == ("ramping", 2)


async def test_a_ramp_paused_and_resumed_while_its_approval_is_pending_keeps_that_approval(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    from tests.integration import test_approvals_every_step as every

    engine = every._engine(pool)
    exp_id = await every._seed(conn)
    await engine.approve((await engine.promote_winner(every.NAME))["approvalId"], actor="alice")
    await every._harmless(conn, 2500, 7500)
    await engine.rollouts.check()
    step = await every._pending(conn)
    await engine.rollouts.pause(every.NAME, actor="ops")
    await engine.rollouts.resume(every.NAME, actor="ops")
    await engine.rollouts.check()
    assert (await _rollout(conn, exp_id))["state"] == "awaiting_approval"
    assert await conn.fetchval("SELECT count(*) FROM ab_approvals WHERE kind = 'step'") == 1
    assert await conn.fetchval("SELECT count(*) FROM notification_outbox WHERE event = 'approval.requested'") == 2
    await engine.approve(step["id"], actor="bob")
    assert (await _rollout(conn, exp_id))["step"] == 2
