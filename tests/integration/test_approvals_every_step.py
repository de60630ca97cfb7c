"""approval.require = every_step with a progressive rollout (rollout.mode = ramp) on a real database: the promotion
waits for its approval, then each step ready to advance waits as an approval of kind ``step``; approving one
advances the ramp on the locked state (never over a breach), declining it or letting it expire holds the ramp
(paused)."""

from __future__ import annotations

from typing import Any

import asyncpg

from tests.factories import create_experiment, record
from worker.config import load_config, load_settings
from worker.db.fold import fold_pending_updates
from worker.engine import Engine

NAME = "checkout-ramp"
WINNER = {"control": (17_500, 1_750), "variant-b": (17_000, 1_904)}  # about +12%, eligible
CONFIG: dict[str, Any] = {
    "rollout": {"mode": "ramp", "steps": [25, 50, 75], "holdback": 5, "stepMinutes": 0, "stepMinExposures": 2000},
    "guard": {"guardHours": 24, "minSamples": 200},
    "safetyChecks": {"checkTrafficBalance": False},
    "approval": {"require": "every_step"},
}


def _engine(pool: asyncpg.Pool) -> Engine:
    return Engine(pool, load_settings({"SLACK_WEBHOOK_URL": "http://127.0.0.1:9/hook"}), load_config(env={}))


async def _seed(conn: asyncpg.Connection) -> int:
    exp_id = await create_experiment(conn, NAME, list(WINNER), weights=[80, 20], config=CONFIG)
    for variant, (n, conv) in WINNER.items():
        await record(conn, NAME, variant, n, conv)
    return exp_id


async def _harmless(conn: asyncpg.Connection, winner_n: int, control_n: int) -> None:
    """Traffic on which the winner is as good as during the test (11% vs 10%, 1% errors each), folded."""
    lat = [20.0 + (i % 40) for i in range(400)]
    await record(conn, NAME, "variant-b", winner_n, winner_n * 11 // 100, winner_n // 100, lat)
    await record(conn, NAME, "control", control_n, control_n // 10, control_n // 100, lat)
    await fold_pending_updates(conn)


async def _weights(conn: asyncpg.Connection, exp_id: int) -> dict[str, float]:
    rows = await conn.fetch(
        "SELECT name, traffic_weight::float8 AS w FROM ab_variants WHERE experiment_id = $1", exp_id
    )
    return {r["name"]: r["w"] for r in rows}


async def _rollout(conn: asyncpg.Connection, exp_id: int) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM experiment_rollouts WHERE experiment_id = $1", exp_id)
    assert row is not None
    return row


async def _pending(conn: asyncpg.Connection) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM ab_approvals WHERE status = 'pending'")
    assert row is not None, "no pending approval"
    return row


async def test_every_step_waits_for_its_approval(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    engine = _engine(pool)
    exp_id = await _seed(conn)
    # The promotion itself waits first.
    asked = await engine.promote_winner(NAME, actor="ops")
    assert asked["success"] is False and "approvalId" in asked
    assert await conn.fetchval("SELECT count(*) FROM experiment_rollouts") == 0
    approved = await engine.approve(asked["approvalId"], actor="alice")
    assert approved["status"] == "approved" and approved["promotion"]["success"] is True
    assert (await _rollout(conn, exp_id))["step"] == 1
    assert await _weights(conn, exp_id) == {"control": 75.0, "variant-b": 25.0}

    # The first step has its minimums: it does not advance, it asks.
    await _harmless(conn, 2500, 7500)
    await engine.rollouts.check()
    r = await _rollout(conn, exp_id)
    assert (r["state"], r["step"]) == ("awaiting_approval", 1)
    step = await _pending(conn)
    assert (step["kind"], step["step"], step["variant"]) == ("step", 2, "variant-b")
    assert step["subject"]["rolloutId"] == str(r["id"]) and step["requested_by"] == "autopromote-rollout"
    assert step["decision"]["nextShare"] == 50.0 and step["decision"]["treatmentShare"] == 25.0
    body = await conn.fetchval(
        "SELECT payload FROM notification_outbox WHERE event = 'approval.requested' ORDER BY id DESC LIMIT 1"
    )
    assert body["approvalId"] == str(step["id"]) and body["step"] == 2 and body["promotionId"] == str(r["promotion_id"])
    # Checked again and again, it waits and asks once.
    await engine.rollouts.check()
    assert await conn.fetchval("SELECT count(*) FROM ab_approvals WHERE kind = 'step'") == 1
    assert await _weights(conn, exp_id) == {"control": 75.0, "variant-b": 25.0}

    # Approving it advances the ramp in the approval's transaction.
    done = await engine.approve(step["id"], actor="bob")
    assert done["status"] == "approved" and done["kind"] == "step"
    assert done["step"]["treatmentShare"] == 50.0
    assert await _weights(conn, exp_id) == {"control": 50.0, "variant-b": 50.0}
    r = await _rollout(conn, exp_id)
    assert (r["state"], r["step"]) == ("ramping", 2)

    # The next step asks again; declining it holds the ramp where it is.
    await _harmless(conn, 5000, 5000)
    await engine.rollouts.check()
    nxt = await _pending(conn)
    assert nxt["step"] == 3
    declined = await engine.decline(nxt["id"], "wait for Monday's traffic", actor="carol")
    assert declined["status"] == "declined"
    r = await _rollout(conn, exp_id)
    assert (r["state"], r["step"]) == ("paused", 2) and "wait for Monday's traffic" in r["reason"]
    assert await _weights(conn, exp_id) == {"control": 50.0, "variant-b": 50.0}


async def test_a_step_approved_after_a_breach_is_closed_and_one_left_unanswered_expires(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    engine = _engine(pool)
    exp_id = await _seed(conn)
    await engine.approve((await engine.promote_winner(NAME))["approvalId"], actor="alice")
    await _harmless(conn, 2500, 7500)
    await engine.rollouts.check()
    step = await _pending(conn)
    # The winner's errors jump before anyone approves: the approval re-checks the step's guard and refuses.
    await record(conn, NAME, "variant-b", 3000, 330, 600)
    await record(conn, NAME, "control", 9000, 900, 90)
    await fold_pending_updates(conn)
    closed = await engine.approve(step["id"], actor="bob")
    assert closed["status"] == "closed" and "breach" in closed["reason"]
    assert (await _weights(conn, exp_id))["variant-b"] == 25.0  # never advanced over a breach

    # Another ramp's step left unanswered: declined by its expiry, the ramp held, approval.expired notified.
    await conn.execute("DELETE FROM ab_experiments")
    exp_id = await _seed(conn)
    await engine.approve((await engine.promote_winner(NAME))["approvalId"], actor="alice")
    await _harmless(conn, 2500, 7500)
    await engine.rollouts.check()
    step = await _pending(conn)
    await conn.execute(
        """UPDATE ab_approvals SET requested_at = requested_at - interval '25 hours',
                                   expires_at = expires_at - interval '25 hours' WHERE id = $1""",
        step["id"],
    )
    assert await engine.expire_approvals() == 1
    row = await conn.fetchrow("SELECT status, expired FROM ab_approvals WHERE id = $1", step["id"])
    assert (row["status"], row["expired"]) == ("declined", True)
    r = await _rollout(conn, exp_id)
    assert (r["state"], r["step"]) == ("paused", 1) and "expired" in r["reason"]
    events = [x["event"] for x in await conn.fetch("SELECT event FROM notification_outbox ORDER BY id")]
    assert events[-1] == "approval.expired"
