"""The schema contract: producer ingest validation, invariants enforced by the database, seed queries."""

from __future__ import annotations

import asyncpg
import pytest

from tests.factories import create_experiment
from worker.db.fold import fold_pending_updates
from worker.stats import VariantStats, compare_arms


async def test_record_metrics_appends_to_queue_and_notifies(conn: asyncpg.Connection, db_url: str) -> None:
    await create_experiment(conn, "exp-a", ["control", "b"])
    received: list[str] = []
    listener = await asyncpg.connect(db_url)
    await listener.add_listener("ab_metrics", lambda *args: received.append(args[3]))
    try:
        async with conn.transaction():
            for _ in range(5):
                await conn.execute("SELECT ab_record_metrics('exp-a', 'b', 10, 2, 1, ARRAY[1.5, 20.0])")
        row = await conn.fetchrow(
            "SELECT count(*) AS n, sum(exposures) AS e, sum(latency_count) AS l FROM ab_metric_updates"
        )
        assert (row["n"], row["e"], row["l"]) == (5, 50, 10)
        exp_id = await conn.fetchval("SELECT id FROM ab_experiments WHERE name = 'exp-a'")
        for _ in range(50):
            if received:
                break
            await listener.execute("SELECT 1")
        # One notification per experiment per transaction, not one per row.
        assert received == [str(exp_id)]
    finally:
        await listener.close()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("ab_record_metrics('nope', 'b', 1, 0)", 'unknown experiment "nope"'),
        ("ab_record_metrics('exp-a', 'zzz', 1, 0)", 'has no variant "zzz"'),
        ("ab_record_metrics('exp-a', 'b', -1, 0)", "must not be negative"),
        ("ab_record_metrics('exp-a', 'b', 1, -1)", "must not be negative"),
        ("ab_record_metrics('exp-a', 'b', 1, 0, -1)", "must not be negative"),
        ("ab_record_metrics('exp-a', 'b', 5, 6)", "conversions (6) greater than exposures (5)"),
        ("ab_record_metrics('exp-a', 'b', 5, 0, 6)", "errors (6) greater than exposures (5)"),
        ("ab_record_metrics('exp-a', 'b', 5, 0, 0, ARRAY['NaN'::float8])", "invalid latency NaN"),
        ("ab_record_metrics('exp-a', 'b', 5, 0, 0, ARRAY['Infinity'::float8])", "invalid latency Infinity"),
        ("ab_record_metrics('exp-a', 'b', 5, 0, 0, ARRAY[3.0, -2.0])", "invalid latency -2"),
        ("ab_record_metrics('exp-a', 'b', 5, 0, 0, ARRAY[NULL::float8])", "invalid latency NULL"),
        ("ab_record_metrics('exp-a', 'b', 5, 1, 0, NULL, 2.0, 4.0)", "is a conversion experiment"),
        ("ab_record_metrics('exp-m', 'b', 5, 0)", "is a mean experiment"),
        ("ab_record_metrics('exp-m', 'b', 5, 0, 0, NULL, 'NaN', 1.0)", "must be finite"),
        ("ab_record_metrics('exp-m', 'b', 5, 0, 0, NULL, 1.0, -1.0)", "must not be negative"),
        ("ab_record_metrics('exp-a', 'b', NULL, 0)", "must not be NULL"),
    ],
)
async def test_bad_producer_input_is_rejected_and_nothing_written(
    conn: asyncpg.Connection, call: str, message: str
) -> None:
    await create_experiment(conn, "exp-a", ["control", "b"])
    await create_experiment(conn, "exp-m", ["control", "b"], metric_type="mean")
    # A good row first in the same transaction: the failure must take it down too.
    with pytest.raises(asyncpg.PostgresError) as err:
        async with conn.transaction():
            await conn.execute("SELECT ab_record_metrics('exp-a', 'b', 1, 0)")
            await conn.execute(f"SELECT {call}")
    assert message in str(err.value)
    assert await conn.fetchval("SELECT count(*) FROM ab_metric_updates") == 0


IMPOSSIBLE_MEAN_UPDATES = [
    # (exposures, value_sum, value_sum_sq, what the message says)
    (3, 6.0, 11.0, "value_sum_sq (11) is smaller than value_sum^2 / exposures (6^2 / 3)"),  # needs >= 12
    (1, -5.0, 24.0, "value_sum_sq (24) is smaller than value_sum^2 / exposures (-5^2 / 1)"),
    (10, 1.0, 0.0, "value_sum_sq (0) is smaller than value_sum^2 / exposures (1^2 / 10)"),
    (2, 1e200, 1e300, "is smaller than value_sum^2 / exposures"),  # value_sum^2 overflows a float8
    (0, 3.0, 9.0, "value_sum (3) and value_sum_sq (9) recorded with 0 exposures"),
    (0, 0.0, 1.0, "value_sum (0) and value_sum_sq (1) recorded with 0 exposures"),
]


@pytest.mark.parametrize(("exposures", "value_sum", "value_sum_sq", "message"), IMPOSSIBLE_MEAN_UPDATES)
async def test_impossible_mean_updates_are_refused_with_a_hint_and_write_nothing(
    conn: asyncpg.Connection, exposures: int, value_sum: float, value_sum_sq: float, message: str
) -> None:
    await create_experiment(conn, "exp-m", ["control", "b"], metric_type="mean")
    good = "SELECT ab_record_metrics('exp-m', 'b', 3, 0, 0, NULL, 6.0, 14.0)"
    # Alone, and after a good call in the same transaction: the transaction writes nothing.
    for before in ([], [good]):
        with pytest.raises(asyncpg.InvalidParameterValueError) as err:
            async with conn.transaction():
                for sql in before:
                    await conn.execute(sql)
                await conn.execute(
                    "SELECT ab_record_metrics('exp-m', 'b', $1, 0, 0, NULL, $2, $3)", exposures, value_sum, value_sum_sq
                )
        assert message in str(err.value)
        hint = err.value.as_dict().get("hint") or ""
        assert "exposures" in hint and "value_sum" in hint
        assert await conn.fetchval("SELECT count(*) FROM ab_metric_updates") == 0


async def test_a_batch_with_one_impossible_row_writes_none_of_it(conn: asyncpg.Connection) -> None:
    """The set-based form producers batch with: one statement over many rows; one bad row refuses all."""
    await create_experiment(conn, "exp-m", ["control", "b"], metric_type="mean")
    batch = """SELECT ab_record_metrics('exp-m', v, n, 0, 0, NULL, s, ss)
                 FROM unnest($1::text[], $2::bigint[], $3::float8[], $4::float8[]) AS u(v, n, s, ss)"""
    rows = (["control", "b", "b", "control"], [3, 4, 5, 0], [6.0, 8.0, 10.0, 0.0], [14.0, 20.0, 7.0, 0.0])
    with pytest.raises(asyncpg.InvalidParameterValueError, match=r"value_sum_sq \(7\) is smaller"):
        await conn.fetch(batch, *rows)
    assert await conn.fetchval("SELECT count(*) FROM ab_metric_updates") == 0
    fixed = (rows[0], rows[1], rows[2], [14.0, 20.0, 25.0, 0.0])
    assert len(await conn.fetch(batch, *fixed)) == 4
    assert await conn.fetchval("SELECT sum(exposures) FROM ab_metric_updates") == 12


async def test_sums_at_the_limit_are_accepted_within_float_round_off(conn: asyncpg.Connection) -> None:
    """A constant sample has value_sum_sq == value_sum^2 / exposures exactly in theory; summed in floating point
    it can land a few ulps either side. That is round-off, not an impossible sample."""
    await create_experiment(conn, "exp-m", ["control", "b"], metric_type="mean")
    values = [0.3] * 1000
    s = 0.0
    ss = 0.0
    for x in values:
        s += x
        ss += x * x
    assert ss * len(values) < s * s  # this sum really is (slightly) below the bound
    await conn.execute("SELECT ab_record_metrics('exp-m', 'b', $1, 0, 0, NULL, $2, $3)", len(values), s, ss)
    # A relative shortfall of 1e-6 is no round-off.
    with pytest.raises(asyncpg.InvalidParameterValueError):
        await conn.execute(
            "SELECT ab_record_metrics('exp-m', 'b', $1, 0, 0, NULL, $2, $3)", len(values), s, ss * (1 - 1e-6)
        )
    # Zero sums with zero exposures (a call that records only latencies) stay fine.
    await conn.execute("SELECT ab_record_metrics('exp-m', 'b', 0, 0, 0, ARRAY[12.5], 0, 0)")
    assert await conn.fetchval("SELECT count(*) FROM ab_metric_updates") == 2
    # What the database accepts, the statistics accept once folded: the experiment stays decidable.
    await fold_pending_updates(conn)
    row = await conn.fetchrow("""SELECT s.exposures, s.value_sum, s.value_sum_sq FROM ab_variant_stats s
                                   JOIN ab_variants v ON v.id = s.variant_id WHERE v.name = 'b'""")
    stats = VariantStats("b", False, row["exposures"], value_sum=row["value_sum"], value_sum_sq=row["value_sum_sq"])
    assert compare_arms(stats, stats, metric_type="mean").reason is not None  # computed (zero variance), no raise


async def test_mean_metrics_accept_sums(conn: asyncpg.Connection) -> None:
    await create_experiment(conn, "exp-m", ["control", "b"], metric_type="mean")
    await conn.execute("SELECT ab_record_metrics('exp-m', 'b', 3, 0, 0, NULL, 6.0, 14.0)")
    assert await conn.fetchval("SELECT value_sum FROM ab_metric_updates") == 6.0


async def test_exactly_one_control_is_enforced(conn: asyncpg.Connection) -> None:
    exp_id = await conn.fetchval("INSERT INTO ab_experiments (name) VALUES ('x') RETURNING id")
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(
            "INSERT INTO ab_variants (experiment_id, name, is_control) VALUES ($1, 'a', true), ($1, 'b', true)",
            exp_id,
        )
    with pytest.raises(asyncpg.CheckViolationError, match="exactly one control"):
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO ab_variants (experiment_id, name, is_control) VALUES ($1, 'a', false)", exp_id
            )
    assert await conn.fetchval("SELECT count(*) FROM ab_variants") == 0


async def test_traffic_weight_must_not_be_negative(conn: asyncpg.Connection) -> None:
    exp_id = await conn.fetchval("INSERT INTO ab_experiments (name) VALUES ('x') RETURNING id")
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute(
            "INSERT INTO ab_variants (experiment_id, name, is_control, traffic_weight) VALUES ($1, 'a', true, -1)",
            exp_id,
        )


@pytest.mark.parametrize("weight", ["NaN", "Infinity"])
async def test_traffic_weight_must_be_finite(conn: asyncpg.Connection, weight: str) -> None:
    exp_id = await conn.fetchval("INSERT INTO ab_experiments (name) VALUES ('x') RETURNING id")
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute(
            "INSERT INTO ab_variants (experiment_id, name, is_control, traffic_weight)"
            " VALUES ($1, 'a', true, $2::numeric)",
            exp_id,
            weight,
        )
    await conn.execute("INSERT INTO ab_variants (experiment_id, name, is_control) VALUES ($1, 'a', true)", exp_id)
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("UPDATE ab_variants SET traffic_weight = $1::numeric", weight)


async def test_audit_log_is_append_only(conn: asyncpg.Connection) -> None:
    await conn.execute("INSERT INTO ab_promotion_audit_log (actor, action) VALUES ('me', 'test')")
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await conn.execute("UPDATE ab_promotion_audit_log SET actor = 'you'")
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await conn.execute("DELETE FROM ab_promotion_audit_log")
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await conn.execute("TRUNCATE ab_promotion_audit_log")
    assert await conn.fetchval("SELECT actor FROM ab_promotion_audit_log") == "me"


async def test_one_active_promotion_per_experiment(conn: asyncpg.Connection) -> None:
    exp_id = await create_experiment(conn, "exp-a", ["control", "b"])
    insert = (
        "INSERT INTO experiment_promotions (experiment_id, experiment_name, promoted_variant_name, confidence,"
        " improvement, promoted_by, previous_weights) VALUES ($1, 'exp-a', 'b', 97, 12, 'test', '{}')"
    )
    await conn.execute(insert, exp_id)
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(insert, exp_id)


async def test_request_rollback_validates_and_notifies(conn: asyncpg.Connection, db_url: str) -> None:
    exp_id = await create_experiment(conn, "exp-a", ["control", "b"])
    promotion_id = await conn.fetchval(
        "INSERT INTO experiment_promotions (experiment_id, experiment_name, promoted_variant_name, confidence,"
        " improvement, promoted_by, previous_weights) VALUES ($1, 'exp-a', 'b', 97, 12, 'test', '{}') RETURNING id",
        exp_id,
    )
    with pytest.raises(asyncpg.PostgresError, match="a reason is required"):
        await conn.execute("SELECT ab_request_rollback($1, '  ')", promotion_id)
    with pytest.raises(asyncpg.PostgresError, match="no promotion with id"):
        await conn.execute("SELECT ab_request_rollback(gen_random_uuid(), 'why')")
    events: list[str] = []
    listener = await asyncpg.connect(db_url)
    await listener.add_listener("ab_promotion_events", lambda *args: events.append(args[3]))
    try:
        await conn.execute("SELECT ab_request_rollback($1, 'errors up', 'alice')", promotion_id)
        for _ in range(50):
            if events:
                break
            await listener.execute("SELECT 1")
    finally:
        await listener.close()
    row = await conn.fetchrow("SELECT * FROM experiment_promotions WHERE id = $1", promotion_id)
    assert row["rollback_requested_by"] == "alice"
    assert row["rollback_request_reason"] == "errors up"
    assert '"event" : "rollback_requested"' in events[0]
    assert str(promotion_id) in events[0]
    audit = await conn.fetchrow("SELECT * FROM ab_promotion_audit_log WHERE action = 'rollback_requested'")
    assert audit["actor"] == "alice"


async def test_raise_alert_validates(conn: asyncpg.Connection) -> None:
    await create_experiment(conn, "exp-a", ["control", "b"])
    assert await conn.fetchval("SELECT ab_raise_alert('exp-a', 'critical', 'db down')") > 0
    assert await conn.fetchval("SELECT ab_raise_alert(NULL, 'warning', 'global')") > 0
    with pytest.raises(asyncpg.PostgresError, match="severity must be"):
        await conn.execute("SELECT ab_raise_alert('exp-a', 'fatal', 'x')")
    with pytest.raises(asyncpg.PostgresError, match="unknown experiment"):
        await conn.execute("SELECT ab_raise_alert('nope', 'info', 'x')")
    assert await conn.fetchval("SELECT count(*) FROM ab_alerts WHERE experiment_id IS NULL") == 1


async def test_latency_sketch_in_sql_matches_python(conn: asyncpg.Connection) -> None:
    from worker.stats import LatencySketch

    values = [0.0, 0.5, 1.0, 1.0, 3.7, 12.25, 99.9, 250.0, 1234.5]
    sql_sketch = await conn.fetchval("SELECT ab_latency_sketch($1::float8[])", values)
    assert sql_sketch == LatencySketch.from_values(values).to_json()
    merged = await conn.fetchval(
        "SELECT ab_sketch_merge(ab_latency_sketch($1), ab_latency_sketch($2))", values[:4], values[4:]
    )
    assert merged == sql_sketch


async def test_seed_queries_run(conn: asyncpg.Connection) -> None:
    exp_id = await create_experiment(conn, "exp-a", ["control", "b"], status="running")
    await conn.execute(
        "INSERT INTO experiment_promotions (experiment_id, experiment_name, promoted_variant_name, confidence,"
        " improvement, promoted_by, previous_weights) VALUES ($1, 'exp-a', 'b', 97.5, 12.3, 'test', '{}')",
        exp_id,
    )
    active = await conn.fetch(
        """SELECT
  experiment_name,
  promoted_variant_name,
  confidence,
  improvement,
  promoted_at
FROM experiment_promotions
WHERE rollback_at IS NULL
ORDER BY promoted_at DESC;"""
    )
    assert [r["experiment_name"] for r in active] == ["exp-a"]
    stats = await conn.fetchrow("SELECT * FROM get_promotion_stats();")
    assert stats["total_promotions"] == 1
    assert stats["avg_confidence"] == pytest.approx(97.5)
    assert stats["rollback_rate"] == 0.0
    rollbacks = await conn.fetch(
        """SELECT
  experiment_name,
  promoted_variant_name,
  rollback_reason,
  rollback_at
FROM experiment_promotions
WHERE rollback_at IS NOT NULL
ORDER BY rollback_at DESC
LIMIT 10;"""
    )
    assert rollbacks == []
