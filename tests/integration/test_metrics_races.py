"""Metric definitions and removals racing the worker (review of issue 15, findings 3 and 4), with real sessions:
a decision read under the old definitions and stored after a definition change committed leaves the experiment
due, and removing a metric while a large fold and a producer run neither deadlocks nor leaves anything behind."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from tests.factories import create_experiment, record
from tests.integration.test_sequence_ordering import _config, _seed_winner, _settings
from worker.db import metric_definitions as db
from worker.db.connect import connect
from worker.db.fold import fold_pending_updates
from worker.db.sql import DQ, Q
from worker.engine import MAX_ALERT_LOOKBACK_S, Engine, Seen, _snapshot_from_row


async def _due(conn: asyncpg.Connection, exp_id: int) -> bool:
    return bool(await conn.fetchval("SELECT ab_evaluation_due($1)", exp_id))


@pytest.mark.parametrize("evaluated_before", [False, True])
async def test_a_decision_read_before_a_guardrail_was_added_and_stored_after_leaves_the_experiment_due(
    db_url: str, conn: asyncpg.Connection, pool: asyncpg.Pool, evaluated_before: bool
) -> None:
    exp_id = await _seed_winner(conn, "stale-defs", started_hours_ago=1)  # not eligible yet: only recorded
    engine = Engine(pool, _settings(), _config())

    async def read() -> tuple[Any, Seen]:
        row = await conn.fetchrow(Q["experiment_snapshot"], exp_id, MAX_ALERT_LOOKBACK_S)
        return engine._decide(_snapshot_from_row(row), engine.config, row["config"])[0], Seen.of(row)

    if evaluated_before:
        decision, seen = await read()
        async with pool.acquire() as c, c.transaction():
            assert await engine._record_many(c, [decision], seen={exp_id: seen}) == {exp_id}
        assert not await _due(conn, exp_id)

    # The scan's unlocked read under the old definitions ...
    stale, stale_seen = await read()
    # ... another session adds a guardrail and commits (its trigger forgets the stored decision) ...
    other = await connect(db_url)
    try:
        await other.execute(
            "INSERT INTO ab_metrics (experiment_id, name, kind, role)"
            " VALUES ($1, 'refunds', 'proportion', 'guardrail')",
            exp_id,
        )
    finally:
        await other.close()
    # ... and the scan stores the decision it made without the guardrail.
    async with pool.acquire() as c, c.transaction():
        await engine._record_many(c, [stale], seen={exp_id: stale_seen})
    assert await _due(conn, exp_id)  # was False: the guardrail would never have been applied
    assert exp_id in [r["id"] for r in await conn.fetch(DQ["stale_experiments"])]  # the daemon's catch-up too

    # A read that sees the guardrail is not covered by the stale decision: it is stored, and then nothing is due.
    fresh, fresh_seen = await read()
    assert any("refunds" in r for r in fresh.reasons)
    async with pool.acquire() as c, c.transaction():
        assert await engine._record_many(c, [fresh], seen={exp_id: fresh_seen}) == {exp_id}
    assert not await _due(conn, exp_id)
    stored = await conn.fetchval("SELECT decision FROM ab_experiment_state WHERE experiment_id = $1", exp_id)
    assert any("refunds" in r for r in stored["reasons"])


@pytest.mark.slow
async def test_removing_a_metric_while_a_large_fold_and_a_producer_run_neither_deadlocks_nor_leaves_rows(
    db_url: str, conn: asyncpg.Connection
) -> None:
    exp_id = await create_experiment(conn, "busy", ["a", "b"])
    metric_id = await conn.fetchval(
        "INSERT INTO ab_metrics (experiment_id, name, kind) VALUES ($1, 'rev', 'mean') RETURNING id", exp_id
    )
    await conn.execute("INSERT INTO ab_metrics (experiment_id, name, kind) VALUES ($1, 'other', 'mean')", exp_id)
    # A large backlog of the built-in metric and of another metric (what makes the fold's statement long), and an
    # update of "rev" to remove.
    await conn.execute(
        """INSERT INTO ab_metric_updates (experiment_id, variant_id, metric_id, exposures, conversions, errors,
                                          value_sum, value_sum_sq)
           SELECT $1, v.id, CASE WHEN g % 2 = 0 THEN m.id END, 1, 0, 0, 1, 1
             FROM generate_series(1, 300000) g
             JOIN ab_variants v ON v.experiment_id = $1 AND v.name = CASE WHEN g % 3 = 0 THEN 'a' ELSE 'b' END
             JOIN ab_metrics m ON m.experiment_id = $1 AND m.name = 'other'""",
        exp_id,
    )
    await conn.execute("SELECT ab_record_metric('busy', 'a', 'rev', 2, 3, 5)")

    removing = await connect(db_url)
    folding = await connect(db_url)
    producing = await connect(db_url)
    try:
        await removing.execute("SET deadlock_timeout = '100ms'")
        tx = removing.transaction()
        await tx.start()
        # The removal's first step: its queued updates, after locking the metric (waits for nothing here).
        await removing.execute(Q["delete_metric_updates"], exp_id, "rev")
        # A producer sends an update of the metric being removed ...
        produce = asyncio.create_task(producing.execute("SELECT ab_record_metric('busy', 'b', 'rev', 4, 8, 20)"))
        await asyncio.sleep(0.3)
        # ... and a large fold starts, which claims whatever is queued at its start.
        fold = asyncio.create_task(fold_pending_updates(folding, batch_size=1_000_000))
        await asyncio.sleep(0.3)
        assert not fold.done()  # the removal's next step meets the fold in flight
        removed = await db.delete_metric(conn=removing, experiment_id=exp_id, name="rev")
        await tx.commit()
        assert removed is not None and removed.id == metric_id
        result = await asyncio.wait_for(fold, 60)
        assert result.updates == 300_000 and not result.parked
        with pytest.raises(asyncpg.PostgresError, match='has no metric "rev"'):
            await asyncio.wait_for(produce, 60)  # it waited for the removal, which it cannot write behind
    finally:
        for c in (removing, folding, producing):
            await c.close()
    assert await conn.fetchval("SELECT count(*) FROM ab_metric_updates") == 0
    assert await conn.fetchval("SELECT count(*) FROM ab_metric_stats WHERE metric_id = $1", metric_id) == 0
    assert await conn.fetchval("SELECT count(*) FROM ab_metrics WHERE experiment_id = $1", exp_id) == 1
    assert await conn.fetchval("SELECT sum(exposures) FROM ab_variant_stats WHERE experiment_id = $1", exp_id) == (
        150_000
    )
    await record(conn, "busy", "a", 1, 0)  # the experiment still takes updates
