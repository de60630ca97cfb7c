"""The breach path of a ramp on the real PostgreSQL (worker/evaluator.py, worker/services/rollout.py): a breach rolls
back in one statement decided on the check's read, and a stale read writes nothing; the evaluator checks the ramps of
ramped experiments without evaluating them, and never checks ramps for a batch of running experiments."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from tests.daemon_support import running_daemon, wait_for
from tests.factories import create_experiment, record
from tests.integration.test_rollout import NAME, RAMP, WINNER, _engine, _harmless, _record, _rollout, _seed, _weights
from worker.db.fold import fold_pending_updates
from worker.db.sql import RLQ
from worker.domain.rollout_rules import decide_rollout, rollout_view_from_row


async def _breach_at_step_2(conn: asyncpg.Connection) -> None:
    # The control first: a daemon checks after each update, and the winner's alone would meet the step's minimums.
    await _record(conn, "control", 3000, 300, 30)
    await _record(conn, "variant-b", 3000, 330, 120)


async def test_a_breach_rolls_back_in_one_statement_on_the_checks_read(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    engine = _engine(pool)
    exp_id = await _seed(conn)
    assert (await engine.promote_winner(NAME))["success"]
    await _harmless(conn, 2500, 7500)
    assert [o.action for o in (await engine.rollouts.check()).outcomes] == ["advanced"]
    await _breach_at_step_2(conn)
    locked: list[uuid.UUID] = []
    real_transition = engine.rollouts.transition

    async def transition(rollout_id: uuid.UUID) -> Any:
        locked.append(rollout_id)
        return await real_transition(rollout_id)

    engine.rollouts.transition = transition  # type: ignore[method-assign]
    checked = await engine.rollouts.check([exp_id])
    assert [(o.action, o.step) for o in checked.outcomes] == [("rolled_back", 2)]
    assert locked == []  # the one statement did it: no transaction that locks and reads the rollout again
    assert checked.ramping == set()  # the rollback ended the ramp: the evaluator forgets it
    assert await _weights(conn, exp_id) == {"variant-b": 20.0, "control": 80.0}
    r = await _rollout(conn, exp_id)
    assert (r["state"], r["step"]) == ("rolled_back", 2)
    audit = await conn.fetch("SELECT action FROM ab_promotion_audit_log WHERE experiment_id = $1", exp_id)
    assert sum(1 for a in audit if a["action"] == "rolled_back") == 1
    events = [r["event"] for r in await conn.fetch("SELECT event FROM notification_outbox ORDER BY id")]
    assert events == ["promotion.promoted", "rollout.advanced", "rollout.rolled_back"]


async def test_the_fast_rollback_routes_over_notification_configs_and_resolves_the_breach_incident(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """The routes and the PagerDuty triggers come with the check's read (active_rollouts), not a read of their own."""
    engine = _engine(pool)
    exp_id = await _seed(conn)
    webhook = await conn.fetchval(
        "INSERT INTO notification_configs (name, channel, target, events) "
        "VALUES ('ops hook', 'webhook', 'http://127.0.0.1:9/ops', ARRAY['rollout.rolled_back']) RETURNING id"
    )
    pager = await conn.fetchval(
        "INSERT INTO notification_configs (name, channel, target, events) "
        "VALUES ('on call', 'pagerduty', 'R0UTINGKEY0000000000000000000000', "
        "ARRAY['guard.breached', 'rollout.rolled_back']) RETURNING id"
    )
    promoted = await engine.promote_winner(NAME)
    assert promoted["success"]
    await _harmless(conn, 2500, 7500)
    assert [o.action for o in (await engine.rollouts.check()).outcomes] == ["advanced"]
    # An earlier guard breach paged on-call for this promotion (the incident a rollback resolves).
    await conn.execute(
        "INSERT INTO notification_outbox (event, channel, config_id, target_ref, experiment_name, promotion_id, "
        "payload, action, status) VALUES ('guard.breached', 'pagerduty', $1, $2, $3, $4, '{}', 'trigger', 'sent')",
        pager,
        f"config:{pager}",
        NAME,
        uuid.UUID(promoted["promotionId"]),
    )
    await _breach_at_step_2(conn)
    locked: list[uuid.UUID] = []
    real_transition = engine.rollouts.transition

    async def transition(rollout_id: uuid.UUID) -> Any:
        locked.append(rollout_id)
        return await real_transition(rollout_id)

    engine.rollouts.transition = transition  # type: ignore[method-assign]
    checked = await engine.rollouts.check([exp_id])
    assert [o.action for o in checked.outcomes] == ["rolled_back"] and locked == []
    rows = await conn.fetch(
        "SELECT channel, config_id, action FROM notification_outbox WHERE event = 'rollout.rolled_back' ORDER BY id"
    )
    by_channel = {(r["channel"], r["config_id"]): r["action"] for r in rows}
    assert by_channel[("webhook", webhook)] is None
    assert by_channel[("pagerduty", pager)] == "resolve"  # the incident the breach opened, not a new page


async def _stale_breach(engine: Any, conn: asyncpg.Connection, exp_id: int) -> tuple[Any, Any, Any]:
    """A ramp at step 2 with a breach, and the check's read of it (view, decision, row)."""
    assert (await engine.promote_winner(NAME))["success"]
    await _harmless(conn, 2500, 7500)
    assert [o.action for o in (await engine.rollouts.check()).outcomes] == ["advanced"]
    await _breach_at_step_2(conn)
    await fold_pending_updates(conn)
    [row] = await conn.fetch(RLQ["active_rollouts"], [exp_id], None)
    view = rollout_view_from_row(row)
    _, settings = engine.rollouts.settings_for(row["config"])
    decision = decide_rollout(view, settings)
    assert decision.action == "rollback"
    return view, decision, row


async def _nothing_rolled_back(conn: asyncpg.Connection, exp_id: int) -> None:
    promotion = await conn.fetchrow("SELECT rollback_at FROM experiment_promotions WHERE experiment_id = $1", exp_id)
    assert promotion["rollback_at"] is None
    assert await _weights(conn, exp_id) == {"variant-b": 50.0, "control": 50.0}
    assert await conn.fetchval("SELECT count(*) FROM notification_outbox WHERE event LIKE '%rolled_back'") == 0
    assert await conn.fetchval("SELECT count(*) FROM ab_promotion_audit_log WHERE action = 'rolled_back'") == 0


async def test_a_breach_read_before_auto_rollback_was_turned_off_pauses_instead(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    engine = _engine(pool)
    exp_id = await _seed(conn)
    view, decision, row = await _stale_breach(engine, conn, exp_id)
    # Meanwhile an operator turns the automatic rollback off (no transition: only the config says so).
    await conn.execute(
        "UPDATE ab_experiments SET config = jsonb_set(config, '{guard,autoRollback}', 'false') WHERE id = $1", exp_id
    )
    assert await engine.rollouts._roll_back_now(view, decision, row) is None
    await _nothing_rolled_back(conn, exp_id)
    # Decided again under the locks, on the config now: paused, not rolled back.
    checked = await engine.rollouts.check()
    assert [(o.action, o.step) for o in checked.outcomes] == [("paused", 2)]
    await _nothing_rolled_back(conn, exp_id)


async def test_a_breach_read_before_the_ramp_moved_writes_nothing_and_is_decided_again_under_the_locks(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    engine = _engine(pool)
    exp_id = await _seed(conn)
    view, decision, row = await _stale_breach(engine, conn, exp_id)

    # Meanwhile an operator pauses the ramp (a transition: the read above is stale now).
    await engine.rollouts.pause(NAME, actor="alice", reason="looking into it")
    assert await engine.rollouts._roll_back_now(view, decision, row) is None
    await _nothing_rolled_back(conn, exp_id)
    assert (await _rollout(conn, exp_id))["state"] == "paused"

    # The next check decides on the paused ramp (still guarded) and rolls it back, once.
    checked = await engine.rollouts.check()
    assert [(o.action, o.step) for o in checked.outcomes] == [("rolled_back", 2)]
    assert (await _rollout(conn, exp_id))["state"] == "rolled_back"
    assert await _weights(conn, exp_id) == {"variant-b": 20.0, "control": 80.0}
    assert (await engine.rollouts.check()).outcomes == []
    assert await conn.fetchval("SELECT count(*) FROM notification_outbox WHERE event = 'rollout.rolled_back'") == 1


async def test_the_evaluator_checks_ramps_only_for_experiments_that_are_not_running(db_url: str) -> None:
    async with running_daemon(db_url, AUTO_PROMOTION_POLL_INTERVAL="0.2") as daemon:
        engine = daemon.engine
        checked: list[list[int] | None] = []
        evaluated: list[list[int]] = []
        real_check, real_evaluate = engine.rollouts.check, engine.evaluate_many

        async def check(experiment_ids: Sequence[int] | None = None, **kw: Any) -> Any:
            checked.append(None if experiment_ids is None else list(experiment_ids))
            return await real_check(experiment_ids, **kw)

        async def evaluate_many(experiment_ids: list[int], **kw: Any) -> Any:
            evaluated.append(list(experiment_ids))
            return await real_evaluate(experiment_ids, **kw)

        engine.rollouts.check = check  # type: ignore[method-assign]
        engine.evaluate_many = evaluate_many  # type: ignore[method-assign]
        async with daemon.pool.acquire() as conn:
            # A running experiment with no winner: evaluated after each update, its ramp never looked for.
            running = await create_experiment(conn, "still-running", ["control", "variant-b"], weights=[50, 50])
            for _ in range(3):
                await record(conn, "still-running", "variant-b", 100, 10)
                await wait_for(
                    lambda: _has(evaluated, running), within=10, what="the running experiment to be evaluated"
                )
                evaluated.clear()
            assert not _seen(checked, running)

            # A ramp: the update after the promotion finds it (evaluated: not running; then its ramp checked); from
            # then on each update checks the ramp and evaluates nothing.
            ramp = await create_experiment(conn, NAME, list(WINNER), weights=[80, 20], config=RAMP)
            for variant, (n, conv) in WINNER.items():
                await record(conn, NAME, variant, n, conv)
            await wait_for(
                lambda: conn.fetchval("SELECT count(*) FROM experiment_rollouts WHERE experiment_id = $1", ramp),
                within=10,
                what="the ramp to start",
            )
            await _harmless(conn, 50, 50)
            await wait_for(lambda: _has(checked, ramp), within=10, what="the ramp to be checked after an update")
            evaluated.clear()
            checked.clear()
            for _ in range(3):
                await _harmless(conn, 50, 50)
                await wait_for(lambda: _has(checked, ramp), within=10, what="the ramp to be checked")
                checked.clear()
            assert not _seen(evaluated, ramp)
            # A breach found by the evaluator's check rolls the ramp back; the experiment is evaluated again after.
            await _harmless(conn, 2500, 7500)
            await wait_for(
                lambda: conn.fetchval("SELECT step = 2 FROM experiment_rollouts WHERE experiment_id = $1", ramp),
                within=10,
                what="step 2",
            )
            await _breach_at_step_2(conn)
            await wait_for(
                lambda: conn.fetchval(
                    "SELECT state = 'rolled_back' FROM experiment_rollouts WHERE experiment_id = $1", ramp
                ),
                within=10,
                what="the breach to roll the ramp back",
            )
            evaluated.clear()
            await _record(conn, "control", 10, 1, 0)
            await wait_for(lambda: _has(evaluated, ramp), within=10, what="the ended ramp's experiment to be evaluated")


def _seen(calls: list[Any], exp_id: int) -> bool:
    return any(ids is not None and exp_id in ids for ids in calls)


async def _has(calls: list[Any], exp_id: int) -> bool:
    return _seen(calls, exp_id)


async def test_a_global_critical_alert_rolls_a_ramp_back_in_poll_only_mode(db_url: str) -> None:
    """No NOTIFY reaches a poll-only worker: the rollout timer's poll-interval check is what finds the alert."""
    async with running_daemon(db_url, AUTO_PROMOTION_POLL_INTERVAL="0.2", AUTO_PROMOTION_POLL_ONLY="true") as daemon:
        async with daemon.pool.acquire() as conn:
            exp_id = await create_experiment(conn, NAME, list(WINNER), weights=[80, 20], config=RAMP)
            for variant, (n, conv) in WINNER.items():
                await record(conn, NAME, variant, n, conv)
            await wait_for(
                lambda: conn.fetchval("SELECT count(*) FROM experiment_rollouts WHERE experiment_id = $1", exp_id),
                within=10,
                what="the ramp to start",
            )
            await conn.execute("SELECT ab_raise_alert(NULL, 'critical', 'payments are down')")
            await wait_for(
                lambda: conn.fetchval(
                    "SELECT state = 'rolled_back' FROM experiment_rollouts WHERE experiment_id = $1", exp_id
                ),
                within=10,
                what="the alert to roll the ramp back",
            )
            assert await _weights(conn, exp_id) == {"variant-b": 20.0, "control": 80.0}


async def test_a_rollout_event_wakes_the_timer_for_that_ramp_alone(db_url: str) -> None:
    """A promotion (or a step begun) on any replica may bring a ramp's due time forward: the timer checks that ramp,
    not every ramp (a full check costs a decision per ramp), and wakes again at the due time it found, long before
    its next poll-interval check (30 s here)."""
    async with running_daemon(db_url, AUTO_PROMOTION_POLL_INTERVAL="30") as daemon:
        engine = daemon.engine
        calls: list[tuple[Any, Any, float]] = []
        real_check = engine.rollouts.check

        async def check(experiment_ids: Sequence[int] | None = None, **kw: Any) -> Any:
            calls.append((experiment_ids, kw.get("experiment_names"), time.monotonic()))
            return await real_check(experiment_ids, **kw)

        engine.rollouts.check = check  # type: ignore[method-assign]
        quick = {**RAMP, "rollout": {**RAMP["rollout"], "stepMinutes": 0.05, "stepMinExposures": 0}}
        async with daemon.pool.acquire() as conn:
            exp_id = await create_experiment(conn, NAME, list(WINNER), weights=[80, 20], config=quick)
            for variant, (n, conv) in WINNER.items():
                await record(conn, NAME, variant, n, conv)

            async def timer_checked() -> bool:
                return any(c[:2] == (None, [NAME]) for c in calls)

            await wait_for(timer_checked, within=10, what="the timer's check of the new ramp alone")
            targeted = next(c[2] for c in calls if c[:2] == (None, [NAME]))
            # No update reaches the ramp: only the timer can move it, at the step's 3 s minimum.
            await wait_for(
                lambda: conn.fetchval("SELECT step > 1 FROM experiment_rollouts WHERE experiment_id = $1", exp_id),
                within=15,
                what="the timer to advance the quiet ramp at its due time",
            )
            assert time.monotonic() - targeted < 15
        full_after = [c for c in calls if c[:2] == (None, None) and c[2] > targeted]
        assert len(full_after) <= 2, calls  # the due time's check (and the next step's), no poll-interval ones
