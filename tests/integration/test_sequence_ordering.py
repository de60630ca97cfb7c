"""What a transaction saw, not when it started (schema/0007), and replicas that share the evaluation work.

The first tests interleave two real sessions with explicit transactions: a write whose transaction began before a
decision and committed after the decision's snapshot is invisible to the decision, yet carries the older now().
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from tests.daemon_support import db, running_daemon, wait_for
from tests.factories import create_experiment, record
from worker.config import EffectiveConfig, Settings, load_config, load_settings
from worker.db.connect import connect
from worker.db.fold import fold_batch, fold_pending_updates
from worker.db.sql import DQ, Q
from worker.engine import MAX_ALERT_LOOKBACK_S, Engine, Seen, _snapshot_from_row
from worker.guard import PostPromotionGuard

WINNER = {"control": (17_500, 1_750), "variant-b": (17_000, 1_904)}  # about +12%: eligible


def _settings() -> Settings:
    return load_settings({"SLACK_WEBHOOK_URL": "http://127.0.0.1:9/slack-hook"})


def _config(**overrides: Any) -> EffectiveConfig:
    return load_config(env={}, overrides=overrides)


async def _seed_winner(conn: asyncpg.Connection, name: str, **kwargs: Any) -> int:
    exp_id = await create_experiment(conn, name, list(WINNER), **kwargs)
    for variant, (n, conv) in WINNER.items():
        await record(conn, name, variant, n, conv)
    await fold_pending_updates(conn)
    return exp_id


# ------------------------------------------------------------------------ alerts: "raised after the promotion"
@pytest.mark.parametrize(("path", "scope"), [("daemon", "experiment"), ("request", "global")])
async def test_a_critical_alert_committed_after_the_promotions_snapshot_is_seen_by_the_guard(
    db_url: str, conn: asyncpg.Connection, pool: asyncpg.Pool, path: str, scope: str
) -> None:
    # The alert's transaction starts first (its created_at is older than the promotion's promoted_at) and commits
    # only after the promotion: the pre-promotion check cannot see it, so the guard must.
    exp_id = await _seed_winner(conn, "late-alert")
    engine = Engine(pool, _settings(), _config())
    alerting = await connect(db_url)
    try:
        tx = alerting.transaction()
        await tx.start()
        await alerting.execute(
            "SELECT ab_raise_alert($1, 'critical', 'checkout 500s')", "late-alert" if scope == "experiment" else None
        )
        if path == "daemon":
            outcome = await engine.evaluate_experiment(exp_id)
            assert outcome.action == "promoted"
        else:
            assert (await engine.promote_winner("late-alert"))["success"] is True
        await tx.commit()
    finally:
        await alerting.close()
    promo = await conn.fetchrow("SELECT * FROM experiment_promotions WHERE experiment_id = $1", exp_id)
    alert = await conn.fetchrow("SELECT * FROM ab_alerts")
    assert alert["created_at"] < promo["promoted_at"]  # what a timestamp comparison got wrong
    guard = PostPromotionGuard(pool, engine, _settings(), _config())
    [guarded] = await guard.check([exp_id])
    assert guarded.action == "rolled_back"
    reason = await conn.fetchval("SELECT rollback_reason FROM experiment_promotions WHERE id = $1", promo["id"])
    assert reason.startswith(f"guard: critical {scope} alert #{alert['id']} raised after the promotion")


async def test_an_alert_the_promotions_decision_saw_is_not_new_to_the_guard(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    # With the critical-alerts check off, a promotion may go ahead with an alert open: that alert was there before,
    # so it is no breach. One raised afterwards is.
    exp_id = await _seed_winner(conn, "known-alert")
    await conn.execute("SELECT ab_raise_alert('known-alert', 'critical', 'known before')")
    engine = Engine(pool, _settings(), _config(safetyChecks={"checkCriticalAlerts": False}))
    assert (await engine.evaluate_experiment(exp_id)).action == "promoted"
    guard = PostPromotionGuard(pool, engine, _settings(), engine.config)
    assert await guard.check([exp_id]) == []
    await conn.execute("SELECT ab_raise_alert('known-alert', 'critical', 'raised after')")
    [outcome] = await guard.check([exp_id])
    assert outcome.action == "rolled_back" and "'raised after'" in outcome.breaches[0].reason


# -------------------------------------------------------------- statistics: "newer than the last evaluation"
async def test_a_fold_committed_after_an_evaluations_snapshot_leaves_the_experiment_stale(
    db_url: str, conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    # The fold's transaction starts first (its updated_at is older than the evaluation's last_evaluated_at) and
    # commits after the evaluation read the statistics: the catch-up must still evaluate the experiment again.
    exp_id = await _seed_winner(conn, "late-fold", started_hours_ago=1)  # not eligible: stays running
    engine = Engine(pool, _settings(), _config())
    await record(conn, "late-fold", "control", 100, 10)
    folding = await connect(db_url)
    try:
        tx = folding.transaction()
        await tx.start()
        assert (await fold_batch(folding, limit=100)).updates == 1
        outcome = await engine.evaluate_experiment(exp_id)
        assert outcome.action == "evaluated"
        assert outcome.decision is not None and outcome.decision.variants[0].exposures == 17_500  # the fold unseen
        await tx.commit()
    finally:
        await folding.close()
    evaluated_at = await conn.fetchval(
        "SELECT last_evaluated_at FROM ab_experiment_state WHERE experiment_id = $1", exp_id
    )
    folded_at = await conn.fetchval("SELECT max(updated_at) FROM ab_variant_stats WHERE experiment_id = $1", exp_id)
    assert folded_at < evaluated_at  # what a timestamp comparison got wrong
    assert [r["id"] for r in await conn.fetch(DQ["stale_experiments"])] == [exp_id]
    outcome = await engine.evaluate_experiment(exp_id)
    assert outcome.action == "evaluated" and outcome.decision is not None
    assert outcome.decision.variants[0].exposures == 17_600
    assert await conn.fetch(DQ["stale_experiments"]) == []


# ------------------------------------------------------------------------------- one evaluation per change
async def test_the_daemon_evaluates_a_change_once_and_an_unchanged_experiment_not_again(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    exp_id = await _seed_winner(conn, "once", started_hours_ago=1)
    other = await _seed_winner(conn, "other", started_hours_ago=1)
    engine = Engine(pool, _settings(), _config())

    async def actions() -> dict[int, str]:
        return {e.experiment_id: e.action for e in await engine.evaluate_many([exp_id, other])}

    async def evaluations() -> int:
        return int(await conn.fetchval("SELECT evaluations FROM ab_experiment_state WHERE experiment_id = $1", exp_id))

    assert await actions() == {exp_id: "evaluated", other: "evaluated"}
    # What another replica that heard the same NOTIFY would do next: nothing changed, nothing to evaluate.
    assert await actions() == {exp_id: "fresh", other: "fresh"}
    assert (await engine.evaluate_experiment(exp_id)).action == "fresh"
    assert await evaluations() == 1
    await record(conn, "once", "control", 10, 1)
    await fold_pending_updates(conn)
    assert await actions() == {exp_id: "evaluated", other: "fresh"}
    assert await evaluations() == 2
    await conn.execute("SELECT ab_raise_alert('once', 'warning', 'not a reason to look again')")
    assert await actions() == {exp_id: "fresh", other: "fresh"}
    await conn.execute("SELECT ab_raise_alert('once', 'critical', 'a reason to look again')")
    assert await actions() == {exp_id: "evaluated", other: "fresh"}
    decision = await conn.fetchval("SELECT decision FROM ab_experiment_state WHERE experiment_id = $1", exp_id)
    assert any("a reason to look again" in r for r in decision["reasons"]), decision["reasons"]
    await conn.execute("SELECT ab_raise_alert(NULL, 'critical', 'global')")
    assert await actions() == {exp_id: "evaluated", other: "evaluated"}
    assert await evaluations() == 4
    # An explicit check and the scan always decide; the daemon then finds the experiment fresh.
    await engine.check_promotion_eligibility("once")
    assert (await engine.evaluate_experiment(exp_id)).action == "fresh"


async def test_two_replicas_evaluate_each_folded_update_about_once(db_url: str) -> None:
    # Every replica hears every NOTIFY; only one folds each update. Before, each replica also evaluated the
    # experiment on the wake-up alone: 2 replicas, 20 updates, 40 evaluations.
    updates = 20
    async with db(db_url) as conn:
        exp_id = await create_experiment(conn, "shared", ["control", "b"], started_hours_ago=1)  # never eligible
        async with running_daemon(db_url) as first, running_daemon(db_url) as second:
            replicas = (first, second)

            async def settled(version: int) -> bool:
                # Folded, evaluated since (one session at a time here, so timestamps do order them), both idle.
                evaluated = await conn.fetchval(
                    "SELECT (SELECT last_evaluated_at FROM ab_experiment_state WHERE experiment_id = $1) >= "
                    "(SELECT max(updated_at) FROM ab_variant_stats WHERE experiment_id = $1)",
                    exp_id,
                )
                return (
                    sum(r.folder.folded_total for r in replicas) == version
                    and bool(evaluated)
                    and not any(r.evaluator.busy for r in replicas)
                )

            for i in range(1, updates + 1):
                await record(conn, "shared", "control" if i % 2 else "b", 100, 10)
                await wait_for(
                    lambda i=i: settled(i),  # type: ignore[misc]
                    what=f"update {i} folded and evaluated, both replicas idle",
                )
            folded = sum(r.folder.folded_total for r in replicas)
            evaluated = sum(r.evaluator.evaluations for r in replicas)
            stored = await conn.fetchval("SELECT evaluations FROM ab_experiment_state WHERE experiment_id = $1", exp_id)
    assert folded == updates
    assert stored == evaluated
    # One per folded update (the issue allows up to 1.1x; sharing makes it exact here).
    assert evaluated == updates, f"{evaluated} evaluations for {updates} folded updates"


async def test_a_decision_on_a_read_the_stored_decision_covers_is_not_stored_again(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    # Two replicas can both find an experiment due: the second's statement takes its snapshot just before the
    # first commits and its row lock just after. Its write must then see the first one's decision and add nothing,
    # unless its read saw more (a critical alert the stored decision could not see).
    exp_id = await _seed_winner(conn, "covered", started_hours_ago=1)
    engine = Engine(pool, _settings(), _config())

    async def read() -> tuple[Any, Seen]:
        row = await conn.fetchrow(Q["experiment_snapshot"], exp_id, MAX_ALERT_LOOKBACK_S)
        return engine._decide(_snapshot_from_row(row), engine.config, row["config"])[0], Seen.of(row)

    first, first_seen = await read()
    second, second_seen = await read()  # the same statistics and alerts, a later snapshot
    async with pool.acquire() as c, c.transaction():
        assert (await engine._store_evaluation(c, first, seen=first_seen))[1] is True
    async with pool.acquire() as c, c.transaction():
        assert (await engine._store_evaluation(c, second, seen=second_seen))[1] is False
        assert (await engine._record_many(c, [second], seen={exp_id: second_seen})) == set()
    await conn.execute("SELECT ab_raise_alert(NULL, 'critical', 'seen by the later read only')")
    third, third_seen = await read()
    async with pool.acquire() as c, c.transaction():
        assert (await engine._record_many(c, [third], seen={exp_id: third_seen})) == {exp_id}
    async with pool.acquire() as c, c.transaction():
        assert (await engine._store_evaluation(c, second, seen=second_seen))[1] is False  # older: covered too
    state = await conn.fetchrow(
        "SELECT evaluations, decision FROM ab_experiment_state WHERE experiment_id = $1", exp_id
    )
    assert state["evaluations"] == 2
    assert any("seen by the later read only" in r for r in state["decision"]["reasons"])


# ------------------------------------------------------------------- alerts that stop (or start) blocking
async def _due(conn: asyncpg.Connection, exp_id: int) -> bool:
    return bool(await conn.fetchval("SELECT ab_evaluation_due($1)", exp_id))


async def test_resolving_an_alert_while_an_evaluation_holds_the_row_leaves_the_experiment_due(
    db_url: str, conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    # The evaluation read the alert as open (blocked); the alert is resolved before the evaluation stores its
    # decision. The resolution must win: the experiment stays due, or the blocked decision would stand.
    exp_id = await _seed_winner(conn, "unblocked", started_hours_ago=1)
    alert_id = await conn.fetchval("SELECT ab_raise_alert('unblocked', 'critical', 'checkout 500s')")
    engine = Engine(pool, _settings(), _config())
    assert (await engine.evaluate_experiment(exp_id)).action == "evaluated"
    assert not await _due(conn, exp_id)
    evaluating = await connect(db_url)
    resolving = await connect(db_url)
    try:
        tx = evaluating.transaction()
        await tx.start()
        # What the daemon's lock-and-read holds while it decides: the experiment's row.
        await evaluating.execute("SELECT 1 FROM ab_experiments WHERE id = $1 FOR NO KEY UPDATE", exp_id)
        resolution = asyncio.ensure_future(
            resolving.execute("UPDATE ab_alerts SET resolved_at = now() WHERE id = $1", alert_id)
        )
        pid = resolving.get_server_pid()

        async def ran_ahead_or_waits() -> bool:  # the resolution either finished first or waits for the row
            return resolution.done() or bool(
                await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND NOT granted)", pid)
            )

        await wait_for(ran_ahead_or_waits, what="the resolution to run or to wait for the row")
        # The evaluation stores the decision it made on the open alert, as record_evaluation does.
        await evaluating.execute(
            "UPDATE ab_experiment_state SET evaluations = evaluations + 1, evaluated_version = ab_stats_version($1),"
            " evaluated_snapshot = pg_current_snapshot() WHERE experiment_id = $1",
            exp_id,
        )
        await tx.commit()
        await asyncio.wait_for(resolution, 10)
    finally:
        await evaluating.close()
        await resolving.close()
    assert await _due(conn, exp_id)
    assert (await engine.evaluate_experiment(exp_id)).action == "evaluated"
    decision = await conn.fetchval("SELECT decision FROM ab_experiment_state WHERE experiment_id = $1", exp_id)
    assert not any("checkout 500s" in r for r in decision["reasons"]), decision["reasons"]


async def test_deleting_an_open_alert_or_escalating_one_makes_the_experiment_due(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    exp_id = await _seed_winner(conn, "edits", started_hours_ago=1)
    engine = Engine(pool, _settings(), _config())
    critical = await conn.fetchval("SELECT ab_raise_alert('edits', 'critical', 'gone soon')")
    assert (await engine.evaluate_experiment(exp_id)).action == "evaluated"
    await conn.execute("DELETE FROM ab_alerts WHERE id = $1", critical)
    assert await _due(conn, exp_id)
    assert (await engine.evaluate_experiment(exp_id)).action == "evaluated"
    warning = await conn.fetchval("SELECT ab_raise_alert('edits', 'warning', 'getting worse')")
    assert not await _due(conn, exp_id)
    await conn.execute("UPDATE ab_alerts SET severity = 'critical' WHERE id = $1", warning)
    assert await _due(conn, exp_id)
    outcome = await engine.evaluate_experiment(exp_id)
    assert outcome.action == "evaluated" and outcome.decision is not None and not outcome.decision.eligible
