"""The progressive rollout on the real PostgreSQL: a ramp that completes, a breach at step 2 that rolls back, pause
and resume, and a ramp that survives a worker restart mid-step (worker/services/rollout.py, schema/0010)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import asyncpg
import pytest

from tests.browser.demo import VIEWER_TOKEN as DASHBOARD_VIEWER
from tests.browser.demo import make_context as make_dashboard_context
from tests.browser.demo import serve as serve_dashboard
from tests.daemon_support import running_daemon, wait_for
from tests.factories import create_experiment, record
from tests.support.api import VIEWER_TOKEN, serve_api
from tests.support.cli import run_cli
from worker.config import load_config, load_settings
from worker.db.fold import fold_pending_updates
from worker.domain.errors import RolloutConflict, RolloutNotFound
from worker.engine import Engine

NAME = "checkout-ramp"
# The winner is variant-b: 10.0% vs 11.2% on 17,500 / 17,000 exposures (about +12%), eligible.
WINNER = {"control": (17_500, 1_750), "variant-b": (17_000, 1_904)}
RAMP: dict[str, dict[str, Any]] = {
    "rollout": {"mode": "ramp", "steps": [25, 50, 75], "holdback": 5, "stepMinutes": 0, "stepMinExposures": 2000},
    "guard": {"guardHours": 0.0005, "minSamples": 200},  # holding lasts 1.8 s
    "safetyChecks": {"checkTrafficBalance": False},
}


def _engine(pool: asyncpg.Pool) -> Engine:
    return Engine(pool, load_settings({"SLACK_WEBHOOK_URL": "http://127.0.0.1:9/hook"}), load_config(env={}))


async def _seed(conn: asyncpg.Connection, weights: tuple[float, float] = (80, 20), config: Any = None) -> int:
    exp_id = await create_experiment(
        conn, NAME, list(WINNER), weights=list(weights), config=RAMP if config is None else config
    )
    for variant, (n, conv) in WINNER.items():
        await record(conn, NAME, variant, n, conv)
    return exp_id


async def _weights(conn: asyncpg.Connection, exp_id: int) -> dict[str, float]:
    rows = await conn.fetch(
        "SELECT name, traffic_weight::float8 AS w FROM ab_variants WHERE experiment_id = $1", exp_id
    )
    return {r["name"]: r["w"] for r in rows}


async def _rollout(conn: asyncpg.Connection, exp_id: int) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM experiment_rollouts WHERE experiment_id = $1", exp_id)
    assert row is not None
    return row


async def _harmless(conn: asyncpg.Connection, winner_n: int, control_n: int) -> None:
    """Traffic on which the winner is as good as during the test: 11% vs 10%, 1% errors each, same latencies."""
    lat = [20.0 + (i % 40) for i in range(400)]
    await record(conn, NAME, "variant-b", winner_n, winner_n * 11 // 100, winner_n // 100, lat)
    await record(conn, NAME, "control", control_n, control_n // 10, control_n // 100, lat)
    await fold_pending_updates(conn)


async def _record(conn: asyncpg.Connection, variant: str, n: int, conversions: int, errors: int) -> None:
    """One producer call, folded (the daemon's folder does this before every check)."""
    await record(conn, NAME, variant, n, conversions, errors)
    await fold_pending_updates(conn)


async def test_a_ramp_goes_step_by_step_to_holding_and_completes(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    engine = _engine(pool)
    exp_id = await _seed(conn)
    promoted = await engine.promote_winner(NAME)
    assert promoted["success"], promoted
    # The seed's row is there, and the ramp starts at the first step above the test share (20%): 25%.
    assert promoted["rollout"]["steps"] == [25.0, 50.0, 75.0, 95.0, 100.0]
    promotion = await conn.fetchrow("SELECT * FROM experiment_promotions WHERE experiment_id = $1", exp_id)
    assert promotion["promoted_variant_name"] == "variant-b" and promotion["previous_weights"] == {
        "control": 80,
        "variant-b": 20,
    }
    assert await _weights(conn, exp_id) == {"variant-b": 25.0, "control": 75.0}
    r = await _rollout(conn, exp_id)
    assert (r["state"], r["step"], r["test_share"]) == ("ramping", 1, 20.0)
    assert await conn.fetchval("SELECT status FROM ab_experiments WHERE id = $1", exp_id) == "promoted"

    # Not enough exposures since the step began: it stays.
    await _harmless(conn, 500, 1500)
    checked = await engine.rollouts.check()
    assert [o.action for o in checked.outcomes] == [] and checked.watched == 1
    shares = [25.0]
    for expected in (50.0, 75.0, 95.0):
        await _harmless(conn, 2500, 2500)
        checked = await engine.rollouts.check()
        assert [o.action for o in checked.outcomes] == ["advanced"], checked
        shares.append(expected)
        w = await _weights(conn, exp_id)
        assert w == {"variant-b": expected, "control": 100.0 - expected}
    r = await _rollout(conn, exp_id)
    assert (r["state"], r["step"]) == ("holding", 4)
    # Holding completes once guardHours (1.8 s) have passed, without any new data (the clock drives it).
    assert not (await engine.rollouts.check()).outcomes

    async def completed() -> bool:
        return any(o.action == "completed" for o in (await engine.rollouts.check()).outcomes)

    await wait_for(completed, within=10, what="the holding window to end")
    assert await _weights(conn, exp_id) == {"variant-b": 100.0, "control": 0.0}
    r = await _rollout(conn, exp_id)
    assert (r["state"], r["step"]) == ("complete", 5) and r["completed_at"] is not None
    steps = await conn.fetch("SELECT * FROM experiment_rollout_steps WHERE rollout_id = $1 ORDER BY step", r["id"])
    assert [(s["step"], s["share"], s["kind"], s["outcome"]) for s in steps] == [
        (1, 25.0, "ramping", "advanced"),
        (2, 50.0, "ramping", "advanced"),
        (3, 75.0, "ramping", "advanced"),
        (4, 95.0, "holding", "completed"),
        (5, 100.0, "complete", None),
    ]
    # Every step's guard was recorded when it ended, one verdict per metric.
    assert {g["metric"] for g in steps[1]["guard"]} == {"critical_alert", "primary", "error_rate", "latency"}
    assert all(g["verdict"] != "breach" for s in steps for g in s["guard"])
    audit = await conn.fetch("SELECT action FROM ab_promotion_audit_log WHERE experiment_id = $1 ORDER BY id", exp_id)
    assert [a["action"] for a in audit] == ["promoted", *["rollout_advanced"] * 3, "rollout_completed"]
    events = await conn.fetch("SELECT event, payload FROM notification_outbox ORDER BY id")
    assert [e["event"] for e in events] == ["promotion.promoted", *["rollout.advanced"] * 3, "rollout.completed"]
    assert events[1]["payload"]["rollout"]["treatmentShare"] == 50.0
    # Complete: the promotion's guard window is over, and nothing is watched any more.
    assert await conn.fetchval(
        "SELECT guard_until <= now() FROM experiment_promotions WHERE experiment_id = $1", exp_id
    )
    assert (await engine.rollouts.check()).watched == 0
    # check shows where the ramp ended.
    data = await engine.check_promotion_eligibility(NAME)
    assert data["rollout"]["state"] == "complete" and data["rollout"]["treatmentShare"] == 100.0


async def test_a_breach_at_step_2_rolls_back_to_the_weights_before_the_promotion(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    engine = _engine(pool)
    exp_id = await _seed(conn)
    promoted = await engine.promote_winner(NAME)
    assert promoted["success"], promoted
    await _harmless(conn, 2500, 7500)
    assert [o.action for o in (await engine.rollouts.check()).outcomes] == ["advanced"]
    assert await _weights(conn, exp_id) == {"variant-b": 50.0, "control": 50.0}

    # Step 2: the winner's errors jump from 1% to 4% while the control's stay at 1% (the concurrent control).
    await _record(conn, "variant-b", 3000, 330, 120)
    await _record(conn, "control", 3000, 300, 30)
    checked = await engine.rollouts.check()
    assert [(o.action, o.step, o.share) for o in checked.outcomes] == [("rolled_back", 2, 50.0)]
    reason = checked.outcomes[0].reason
    assert "rollout step 2 of 5 (50% on variant-b)" in reason and "error rate of variant-b" in reason
    assert "4.00%" in reason and "1.00%" in reason

    # One transaction restored the weights the promotion replaced and closed the promotion and its rollout.
    assert await _weights(conn, exp_id) == {"variant-b": 20.0, "control": 80.0}
    assert await conn.fetchval("SELECT status FROM ab_experiments WHERE id = $1", exp_id) == "rolled_back"
    promotion = await conn.fetchrow("SELECT * FROM experiment_promotions WHERE experiment_id = $1", exp_id)
    assert promotion["rollback_at"] is not None and promotion["rollback_reason"] == reason
    r = await _rollout(conn, exp_id)
    assert (r["state"], r["step"], r["reason"]) == ("rolled_back", 2, reason)
    step2 = await conn.fetchrow("SELECT * FROM experiment_rollout_steps WHERE rollout_id = $1 AND step = 2", r["id"])
    assert step2["outcome"] == "rolled_back"
    assert {g["metric"]: g["verdict"] for g in step2["guard"]}["error_rate"] == "breach"
    audit = await conn.fetchrow(
        "SELECT * FROM ab_promotion_audit_log WHERE experiment_id = $1 AND action = 'rolled_back'", exp_id
    )
    assert audit["details"]["trigger"] == "rollout_guard" and audit["details"]["rollout"]["step"] == 2
    events = [r["event"] for r in await conn.fetch("SELECT event FROM notification_outbox ORDER BY id")]
    assert events == ["promotion.promoted", "rollout.advanced", "rollout.rolled_back"]
    body = await conn.fetchval("SELECT payload FROM notification_outbox WHERE event = 'rollout.rolled_back'")
    assert body["reason"] == reason and body["trigger"] == "rollout_guard" and body["variant"] == "variant-b"
    assert body["rollout"]["step"] == 2 and body["rollout"]["treatmentShare"] == 50.0
    assert {g["metric"]: g["verdict"] for g in body["rollout"]["guard"]}["error_rate"] == "breach"
    # Exactly once: a second look (another replica) finds nothing to do.
    assert (await engine.rollouts.check()).outcomes == []
    data = await engine.check_promotion_eligibility(NAME)
    assert data["rollout"]["state"] == "rolled_back" and data["rollout"]["treatmentShare"] == 0.0


async def test_a_manual_rollback_at_any_step_closes_the_rollout(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    engine = _engine(pool)
    exp_id = await _seed(conn)
    promoted = await engine.promote_winner(NAME)
    # ab_request_rollback from any SQL client, carried out as every rollback request is.
    await conn.execute(
        "SELECT ab_request_rollback($1, 'support tickets up', 'carol')", uuid.UUID(promoted["promotionId"])
    )
    from worker.rollbacks import carry_out_rollback_requests

    done = await carry_out_rollback_requests(pool, engine)
    assert [d.action for d in done] == ["rolled_back"]
    r = await _rollout(conn, exp_id)
    assert (r["state"], r["reason"]) == ("rolled_back", "support tickets up")
    assert await _weights(conn, exp_id) == {"variant-b": 20.0, "control": 80.0}
    assert [e["event"] for e in await conn.fetch("SELECT event FROM notification_outbox ORDER BY id")] == [
        "promotion.promoted",
        "rollout.rolled_back",
    ]


async def test_pause_holds_a_ramp_where_it_is_and_resume_lets_it_go_on(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    engine = _engine(pool)
    exp_id = await _seed(conn)
    with pytest.raises(RolloutNotFound):
        await engine.rollouts.pause(NAME, actor="alice")
    await engine.promote_winner(NAME)
    paused = await engine.rollouts.pause(NAME, actor="alice", reason="waiting for the marketing launch")
    assert (paused["state"], paused["step"], paused["treatmentShare"]) == ("paused", 1, 25.0)
    with pytest.raises(RolloutConflict, match="paused already"):
        await engine.rollouts.pause(NAME, actor="alice")
    # Minimums met, yet it stays where it is.
    await _harmless(conn, 2500, 7500)
    assert (await engine.rollouts.check()).outcomes == []
    assert await _weights(conn, exp_id) == {"variant-b": 25.0, "control": 75.0}
    resumed = await engine.rollouts.resume(NAME, actor="bob")
    assert resumed["state"] == "ramping"
    with pytest.raises(RolloutConflict, match="not paused"):
        await engine.rollouts.resume(NAME, actor="bob")
    assert [o.action for o in (await engine.rollouts.check()).outcomes] == ["advanced"]
    assert await _weights(conn, exp_id) == {"variant-b": 50.0, "control": 50.0}
    audit = await conn.fetch(
        "SELECT actor, action, details FROM ab_promotion_audit_log WHERE experiment_id = $1 ORDER BY id", exp_id
    )
    assert [(a["actor"], a["action"]) for a in audit][1:] == [
        ("alice", "rollout_paused"),
        ("bob", "rollout_resumed"),
        ("autopromote-guard", "rollout_advanced"),
    ]
    assert audit[1]["details"]["reason"] == "waiting for the marketing launch"


async def test_a_paused_ramp_is_still_guarded(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    engine = _engine(pool)
    exp_id = await _seed(conn)
    await engine.promote_winner(NAME)
    await engine.rollouts.pause(NAME, actor="alice")
    await _record(conn, "variant-b", 3000, 330, 150)
    await _record(conn, "control", 9000, 900, 90)
    assert [o.action for o in (await engine.rollouts.check()).outcomes] == ["rolled_back"]
    assert await _weights(conn, exp_id) == {"variant-b": 20.0, "control": 80.0}


async def test_a_breach_without_auto_rollback_pauses_the_ramp(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    engine = _engine(pool)
    config = {**RAMP, "guard": {"guardHours": 1, "minSamples": 200, "autoRollback": False}}
    exp_id = await _seed(conn, config=config)
    await engine.promote_winner(NAME)
    await _record(conn, "variant-b", 3000, 330, 150)
    await _record(conn, "control", 9000, 900, 90)
    assert [o.action for o in (await engine.rollouts.check()).outcomes] == ["paused"]
    r = await _rollout(conn, exp_id)
    assert r["state"] == "paused" and r["paused_from"] == "ramping" and "error rate" in r["reason"]
    assert await _weights(conn, exp_id) == {"variant-b": 25.0, "control": 75.0}
    assert [e["event"] for e in await conn.fetch("SELECT event FROM notification_outbox ORDER BY id")] == [
        "promotion.promoted",
        "guard.breached",
    ]
    assert (await engine.rollouts.check()).outcomes == []  # reported once


async def test_an_instant_promotion_writes_no_rollout(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    engine = _engine(pool)
    exp_id = await _seed(conn, config={"safetyChecks": {"checkTrafficBalance": False}})
    promoted = await engine.promote_winner(NAME)
    assert promoted["success"] and "rollout" not in promoted
    assert await _weights(conn, exp_id) == {"variant-b": 100.0, "control": 0.0}
    assert await conn.fetchval("SELECT count(*) FROM experiment_rollouts") == 0


@pytest.mark.slow
async def test_a_ramp_survives_a_worker_restart_mid_step(db_url: str) -> None:
    async with running_daemon(db_url, AUTO_PROMOTION_POLL_INTERVAL="0.2") as daemon:
        async with daemon.pool.acquire() as conn:
            exp_id = await _seed(conn, config={**RAMP, "rollout": {**RAMP["rollout"], "stepMinutes": 0.02}})
        async with daemon.pool.acquire() as conn:

            async def ramping() -> bool:
                return bool(
                    await conn.fetchval("SELECT count(*) FROM experiment_rollouts WHERE experiment_id = $1", exp_id)
                )

            await wait_for(ramping, within=20, what="the worker to promote the winner onto its ramp")
            await _harmless(conn, 2500, 7500)

            async def at_step(n: int) -> bool:
                return bool(
                    await conn.fetchval("SELECT step = $2 FROM experiment_rollouts WHERE experiment_id = $1", exp_id, n)
                )

            await wait_for(lambda: at_step(2), within=20, what="the running worker to advance to step 2")
    # The worker is gone mid-step 2; its step began and is remembered in the database alone.
    async with running_daemon(db_url, AUTO_PROMOTION_POLL_INTERVAL="0.2") as daemon:
        async with daemon.pool.acquire() as conn:
            await _harmless(conn, 2500, 2500)
            await wait_for(lambda: at_step(3), within=20, what="the new worker to carry on to step 3")
            await _harmless(conn, 2500, 2500)

            async def complete() -> bool:
                return (
                    await conn.fetchval("SELECT state FROM experiment_rollouts WHERE experiment_id = $1", exp_id)
                    == "complete"
                )

            await wait_for(complete, within=30, what="the new worker to finish the ramp")
            steps = await conn.fetch(
                "SELECT s.step, s.outcome FROM experiment_rollout_steps s "
                "JOIN experiment_rollouts r ON r.id = s.rollout_id WHERE r.experiment_id = $1 ORDER BY s.step",
                exp_id,
            )
            assert [s["step"] for s in steps] == [1, 2, 3, 4, 5]
            transitions = await conn.fetchval(
                "SELECT count(*) FROM ab_promotion_audit_log WHERE experiment_id = $1 AND action LIKE 'rollout_%'",
                exp_id,
            )
            assert transitions == 4
    await anyio.lowlevel.checkpoint()


async def test_the_api_pauses_resumes_and_shows_the_ramp(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    exp_id = await _seed(conn)
    async with serve_api(pool) as api:
        promoted = await api.post({"action": "promote", "experimentName": NAME})
        assert promoted.status == 200 and promoted.body["data"]["rollout"]["treatmentShare"] == 25.0
        await _harmless(conn, 500, 1500)
        shown = await api.get(f"/api/experiments/{NAME}")
        rollout = shown.body["data"]["rollout"]
        assert set(rollout) == {"state", "step", "steps", "treatmentShare", "stepStartedAt", "guard", "nextStepAt"}
        assert rollout["steps"] == [25.0, 50.0, 75.0, 95.0, 100.0] and rollout["state"] == "ramping"
        assert [g["metric"] for g in rollout["guard"]] == ["critical_alert", "primary", "error_rate", "latency"]
        assert all(set(g) == {"metric", "verdict", "lift", "interval"} for g in rollout["guard"])
        assert rollout["nextStepAt"] is not None  # stepMinutes 0: the time minimum is met already
        # A viewer may look, not pause.
        refused = await api.post({"action": "pause", "experimentName": NAME}, token=VIEWER_TOKEN)
        assert refused.status == 403
        paused = await api.post({"action": "pause", "experimentName": NAME, "reason": "launch day"})
        assert paused.status == 200 and paused.body["data"]["rollout"]["state"] == "paused"
        again = await api.post({"action": "pause", "experimentName": NAME})
        assert again.status == 409 and again.error["code"] == "rollout_state_conflict"
        resumed = await api.post({"action": "resume", "experimentName": NAME})
        assert resumed.status == 200 and resumed.body["data"]["rollout"]["state"] == "ramping"
        # The rollback action rolls a ramp back at any step.
        back = await api.post(
            {"action": "rollback", "promotionId": promoted.body["data"]["promotionId"], "reason": "not today"}
        )
        assert back.status == 200
        gone = await api.post({"action": "resume", "experimentName": NAME})
        assert gone.status == 404 and gone.error["code"] == "rollout_not_found"
        checked = await api.post({"action": "check", "experimentName": NAME})
        assert checked.body["data"]["rollout"]["state"] == "rolled_back"
    assert await _weights(conn, exp_id) == {"variant-b": 20.0, "control": 80.0}
    actors = await conn.fetch(
        "SELECT actor, action FROM ab_promotion_audit_log WHERE action LIKE 'rollout_%' ORDER BY id"
    )
    assert [(a["actor"], a["action"]) for a in actors] == [
        ("ops-bot", "rollout_paused"),
        ("ops-bot", "rollout_resumed"),
    ]


async def test_the_cli_pauses_resumes_and_shows_a_ramp(
    pool: asyncpg.Pool, conn: asyncpg.Connection, db_url: str
) -> None:
    await _seed(conn)
    await _engine(pool).promote_winner(NAME)
    paused = run_cli("rollout", "pause", NAME, "--reason", "freeze", "--actor", "dave", db_url=db_url)
    assert paused.returncode == 0, paused.stderr
    assert "rollout: paused, step 1 of 5 at 25%" in paused.stdout
    again = run_cli("rollout", "pause", NAME, db_url=db_url)
    assert again.returncode == 1 and "paused already" in again.stderr
    resumed = run_cli("rollout", "resume", NAME, "--json", db_url=db_url)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["rollout"]["state"] == "ramping"
    shown = run_cli("check", NAME, db_url=db_url)
    assert "rollout: ramping, step 1 of 5 at 25%  ([25%] -> 50% -> 75% -> 95% -> 100%)" in shown.stdout
    missing = run_cli("rollout", "show", "no-such-experiment", db_url=db_url)
    assert missing.returncode == 2 and "has no rollout" in missing.stderr


async def test_the_dashboard_draws_the_ramp_and_each_steps_guard(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    engine_ctx = make_dashboard_context(pool)
    await _seed(conn)
    await engine_ctx.engine.promote_winner(NAME)
    await _harmless(conn, 2500, 7500)
    assert [o.action for o in (await engine_ctx.engine.rollouts.check()).outcomes] == ["advanced"]
    async with (
        serve_dashboard(engine_ctx) as base,
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {DASHBOARD_VIEWER}"}) as s,
        s.get(f"{base}/experiments/{NAME}") as resp,
    ):
        body = await resp.text()
    assert resp.status == 200
    assert "Progressive rollout" in body and "step 2: the winner at <strong>50%</strong>" in body
    assert "25% → 50% → 75% → 95% → 100%" in body
    assert (
        body.count("Winner&#x27;s share of traffic over the ramp")
        + body.count("Winner's share of traffic over the ramp")
        == 2
    )  # the wide and the narrow drawing
    assert 'data-action="pause"' in body and 'data-action="resume"' not in body
    # Step 1's guard as it ended, and step 2's now.
    assert body.count("Error rate (percentage points)") == 2 and "(ramping, advanced)" in body
    assert "(ramping, current)" in body and "waiting for data" in body


@dataclass
class _Approval:
    """The fields of an ab_approvals row the rollout reads (worker/db/approvals.py on the approvals branch)."""

    experiment_id: int
    step: int | None
    subject: dict[str, Any]


async def test_an_approved_step_advances_and_a_declined_one_pauses(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    engine = _engine(pool)
    exp_id = await _seed(conn)
    await engine.promote_winner(NAME)
    await _harmless(conn, 2500, 7500)
    r = await _rollout(conn, exp_id)
    # What the approvals' seam does when a step is ready under approval.require = every_step.
    await conn.execute("UPDATE experiment_rollouts SET state = 'awaiting_approval' WHERE id = $1", r["id"])
    assert (await engine.rollouts.check()).outcomes == []  # it waits, however long
    approval = _Approval(exp_id, 2, {"rolloutId": str(r["id"])})
    async with pool.acquire() as c, c.transaction():
        await c.execute("SELECT 1 FROM ab_experiments WHERE id = $1 FOR NO KEY UPDATE", exp_id)
        done = await engine.rollouts.advance_approved(c, approval, actor="erin")
    assert done.advanced and done.data is not None and done.data["treatmentShare"] == 50.0
    assert await _weights(conn, exp_id) == {"variant-b": 50.0, "control": 50.0}
    async with pool.acquire() as c, c.transaction():
        again = await engine.rollouts.advance_approved(c, approval, actor="erin")
    assert not again.advanced and "ramping now" in (again.reason or "")
    await conn.execute("UPDATE experiment_rollouts SET state = 'awaiting_approval' WHERE id = $1", r["id"])
    async with pool.acquire() as c, c.transaction():
        await engine.rollouts.step_declined(c, _Approval(exp_id, 3, approval.subject), actor="frank", reason="no")
    r = await _rollout(conn, exp_id)
    assert (r["state"], r["paused_from"], r["step"]) == ("paused", "ramping", 2)
    assert r["reason"] == "step 3 not approved (frank): no"
    audit = await conn.fetch(
        "SELECT actor, action FROM ab_promotion_audit_log WHERE action LIKE 'rollout_%' ORDER BY id"
    )
    assert [(a["actor"], a["action"]) for a in audit] == [("erin", "rollout_advanced"), ("frank", "rollout_paused")]


async def _revenue(conn: asyncpg.Connection, variant: str, units: int, mean: float) -> None:
    """Revenue per user for ``units`` users around ``mean`` (a fixed spread: sd = mean / 2)."""
    sd = mean / 2
    await conn.execute(
        "SELECT ab_record_metric($1, $2, 'revenue', $3, $4, $5)",
        NAME,
        variant,
        units,
        units * mean,
        units * (sd * sd + mean * mean),
    )


async def test_a_guardrail_shown_worse_than_its_margin_at_a_step_rolls_back(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    engine = _engine(pool)
    exp_id = await _seed(conn)
    await conn.execute(
        "INSERT INTO ab_metrics (experiment_id, name, kind, role, direction, margin) "
        "VALUES ($1, 'revenue', 'mean', 'guardrail', 'increase', 0.02)",
        exp_id,
    )
    # During the test revenue per user is the same in both arms: the guardrail is non-inferior, it promotes.
    await _revenue(conn, "control", 17_500, 20.0)
    await _revenue(conn, "variant-b", 17_000, 20.0)
    await fold_pending_updates(conn)
    promoted = await engine.promote_winner(NAME)
    assert promoted["success"], promoted
    # Step 1: revenue holds up; the guardrail is judged on this step's data alone and passes.
    await _harmless(conn, 2500, 7500)
    await _revenue(conn, "variant-b", 2500, 20.0)
    await _revenue(conn, "control", 7500, 20.0)
    await fold_pending_updates(conn)
    checked = await engine.rollouts.check()
    assert [o.action for o in checked.outcomes] == ["advanced"]
    described = await engine.rollouts.describe(exp_id)
    assert described is not None and described["step"] == 2
    # Step 2: revenue per user of the winner drops 10% (the margin is 2%).
    await _harmless(conn, 3000, 3000)
    await _revenue(conn, "variant-b", 3000, 18.0)
    await _revenue(conn, "control", 3000, 20.0)
    await fold_pending_updates(conn)
    checked = await engine.rollouts.check()
    assert [o.action for o in checked.outcomes] == ["rolled_back"]
    reason = checked.outcomes[0].reason
    assert "guardrail revenue (higher is better) of variant-b since the step began: -10.00%" in reason
    assert "shown worse than the -2% margin" in reason
    step2 = await conn.fetchrow(
        "SELECT s.guard FROM experiment_rollout_steps s JOIN experiment_rollouts r ON r.id = s.rollout_id "
        "WHERE r.experiment_id = $1 AND s.step = 2",
        exp_id,
    )
    by_metric = {g["metric"]: g for g in step2["guard"]}
    assert by_metric["revenue"]["verdict"] == "breach" and by_metric["revenue"]["margin"] == -2.0
    assert by_metric["error_rate"]["verdict"] == "ok"  # the errors did not move: only the guardrail breached


async def test_a_breach_locks_the_experiment_row_before_the_rollout_row(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """The rollback's locked read is one statement (one round trip fewer on the breach path); it must still take the
    experiment's row before the rollout's, the lock order of promotions and rollbacks, or two sessions deadlock."""
    engine = _engine(pool)
    exp_id = await _seed(conn)
    assert (await engine.promote_winner(NAME))["success"]
    await _harmless(conn, 2500, 7500)
    assert [o.action for o in (await engine.rollouts.check()).outcomes] == ["advanced"]
    await _record(conn, "variant-b", 3000, 330, 120)
    await _record(conn, "control", 3000, 300, 30)

    checked: list[Any] = []
    async with pool.acquire() as holder, anyio.create_task_group() as tg:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT 1 FROM ab_experiments WHERE id = $1 FOR NO KEY UPDATE", exp_id)

        async def check() -> None:
            checked.append(await engine.rollouts.check())

        tg.start_soon(check)
        await wait_for(
            lambda: conn.fetchval(
                "SELECT count(*) > 0 FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ),
            within=10,
            what="the check waiting for the experiment's row",
        )
        # The check waits for the experiment's row and holds nothing of the rollout yet.
        async with conn.transaction():
            rows = await conn.fetch(
                "SELECT id FROM experiment_rollouts WHERE experiment_id = $1 FOR NO KEY UPDATE NOWAIT", exp_id
            )
            assert len(rows) == 1
        assert checked == []
        await held.rollback()
    assert [(o.action, o.step) for o in checked[0].outcomes] == [("rolled_back", 2)]
    assert (await _rollout(conn, exp_id))["state"] == "rolled_back"
