"""Sums and counts that would overflow the folded statistics (review of issue 15, finding 2): refused at the door
with a message and a hint, and a queued update whose totals would pass the caps is parked in
ab_metric_dead_letters by the fold instead of failing every fold of every experiment."""

from __future__ import annotations

import asyncpg
import pytest

from tests.factories import create_experiment
from tests.integration.test_metrics_data import add_metric
from worker import metrics
from worker.db.fold import fold_pending_updates

INT64_MAX = 9223372036854775807
CAP_UNITS = 2**53


@pytest.fixture
async def two(conn: asyncpg.Connection) -> asyncpg.Connection:
    await create_experiment(conn, "e1", ["a", "b"])
    await create_experiment(conn, "e2", ["a", "b"])
    await add_metric(conn, "e1", "rev", "mean")
    await add_metric(conn, "e2", "rev", "mean")
    await add_metric(conn, "e1", "rps", "ratio")
    return conn


@pytest.mark.parametrize(
    ("call", "words"),
    [
        ("SELECT ab_record_metric('e1', 'b', 'rev', 9223372036854775807, 1, 1)", "units"),
        ("SELECT ab_record_metric('e1', 'b', 'rev', 1, 1e154, 1e308)", "value_sum"),
        ("SELECT ab_record_metric('e1', 'b', 'rev', 10, 1e149, 1e300)", "value_sum_sq"),
        ("SELECT ab_record_metric('e1', 'b', 'rps', 2, 1, 1, 1e151, 1e302, 1e151)", "denominator_sum"),
        ("SELECT ab_record_metrics('e1', 'b', 9223372036854775807, 0)", "exposures"),
        ("SELECT ab_record_metrics('e1', 'b', 9007199254740993, 0)", "exposures"),
    ],
)
async def test_counts_and_sums_beyond_the_caps_are_refused_with_a_hint_and_nothing_is_queued(
    two: asyncpg.Connection, call: str, words: str
) -> None:
    with pytest.raises(asyncpg.PostgresError) as err:
        await two.execute(call)
    assert words in str(err.value) and "cap" in str(err.value)
    assert err.value.as_dict().get("hint")
    assert await two.fetchval("SELECT count(*) FROM ab_metric_updates") == 0


async def test_the_caps_themselves_are_accepted(two: asyncpg.Connection) -> None:
    await two.execute(f"SELECT ab_record_metrics('e1', 'b', {CAP_UNITS}, 0)")
    await two.execute("SELECT ab_record_metric('e1', 'b', 'rev', 1, 1e75, 1e150)")
    assert await two.fetchval("SELECT count(*) FROM ab_metric_updates") == 2


async def test_a_negative_denominator_sum_of_a_ratio_metric_is_refused(two: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.PostgresError) as err:
        await two.execute("SELECT ab_record_metric('e1', 'b', 'rps', 2, 4, 10, -3, 5, -6)")
    assert "denominator_sum" in str(err.value) and "negative" in str(err.value)
    assert "sessions" in (err.value.as_dict().get("hint") or "")


async def test_rows_written_around_the_functions_are_held_to_the_caps_too(two: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await two.execute(
            """INSERT INTO ab_metric_updates (experiment_id, variant_id, exposures, conversions, errors, value_sum,
                                              value_sum_sq)
               SELECT v.experiment_id, v.id, 1, 0, 0, 1e200, 1e300 FROM ab_variants v WHERE v.name = 'b' LIMIT 1"""
        )


async def test_an_update_whose_totals_would_overflow_is_parked_and_every_other_update_is_folded(
    two: asyncpg.Connection,
) -> None:
    # Within the caps one by one, past them together: units 2^53 + 1, value_sum_sq 1e150 twice, exposures 2^53 twice.
    await two.execute(f"SELECT ab_record_metric('e1', 'b', 'rev', {CAP_UNITS}, 0, 0)")
    await two.execute("SELECT ab_record_metric('e1', 'a', 'rev', 1, 1e75, 1e150)")
    await fold_pending_updates(two)
    before = metrics.FOLD_PARKED._value.get()
    await two.execute("SELECT ab_record_metric('e1', 'b', 'rev', 1, 0, 0)")  # units: 2^53 + 1
    await two.execute("SELECT ab_record_metric('e1', 'a', 'rev', 1, 1e75, 1e150)")  # value_sum_sq: 2e150
    await two.execute(f"SELECT ab_record_metrics('e1', 'a', {CAP_UNITS}, 0)")
    await two.execute(f"SELECT ab_record_metrics('e1', 'a', {CAP_UNITS}, 0)")  # exposures in one batch: 2^54
    await two.execute("SELECT ab_record_metric('e2', 'b', 'rev', 10, 30, 100)")
    await two.execute("SELECT ab_record_metrics('e2', 'a', 100, 7)")

    result = await fold_pending_updates(two)  # raised "bigint out of range" before, and kept failing

    assert await two.fetchval("SELECT count(*) FROM ab_metric_updates") == 0
    assert result.updates == 2 and result.parked == {await exp_id(two, "e1"): 4}
    assert metrics.FOLD_PARKED._value.get() == before + 4
    parked = await two.fetch("SELECT exposures, value_sum, reason FROM ab_metric_dead_letters ORDER BY id")
    assert [(r["exposures"], r["value_sum"]) for r in parked] == [
        (1, 0.0),
        (1, 1e75),
        (CAP_UNITS, None),
        (CAP_UNITS, None),
    ]
    reasons = [r["reason"] for r in parked]
    assert "units" in reasons[0] and "value_sum_sq" in reasons[1] and "exposures" in reasons[2]
    # The other experiment's updates were folded, and e1's totals are those before the parked ones.
    e2 = await two.fetchrow(
        """SELECT ms.units, ms.value_sum FROM ab_metric_stats ms JOIN ab_variants v ON v.id = ms.variant_id
            WHERE v.experiment_id = $1""",
        await exp_id(two, "e2"),
    )
    assert (e2["units"], e2["value_sum"]) == (10, 30.0)
    assert (
        await two.fetchval(
            "SELECT exposures FROM ab_variant_stats s JOIN ab_variants v ON v.id = s.variant_id"
            " WHERE v.experiment_id = $1 AND v.name = 'a'",
            await exp_id(two, "e2"),
        )
        == 100
    )
    units = await two.fetchval(
        "SELECT sum(units) FROM ab_metric_stats WHERE experiment_id = $1", await exp_id(two, "e1")
    )
    assert units == CAP_UNITS + 1
    # Nothing stays queued to fail the next fold, and the next fold of a good update works.
    await two.execute("SELECT ab_record_metric('e2', 'b', 'rev', 1, 1, 1)")
    assert (await fold_pending_updates(two)).updates == 1


async def exp_id(conn: asyncpg.Connection, name: str) -> int:
    return int(await conn.fetchval("SELECT id FROM ab_experiments WHERE name = $1", name))


async def test_a_metric_with_data_cannot_be_renamed_primary_where_its_statistics_would_be_hidden(
    two: asyncpg.Connection,
) -> None:
    # e1 is a conversion experiment: a "primary" row there is a proportion, so only a proportion could be renamed.
    await add_metric(two, "e1", "signup", "proportion")
    await two.execute("SELECT ab_record_metric('e1', 'b', 'signup', 10, 3)")
    rename = "UPDATE ab_metrics SET name = 'primary' WHERE name = 'signup'"
    with pytest.raises(asyncpg.PostgresError) as err:  # queued only
        await two.execute(rename)
    assert "cannot be renamed" in str(err.value) and "role" in (err.value.as_dict().get("hint") or "")
    await fold_pending_updates(two)
    with pytest.raises(asyncpg.PostgresError, match="cannot be renamed"):  # folded
        await two.execute(rename)
    # Without data it may.
    await add_metric(two, "e2", "bounce", "proportion")
    await two.execute("UPDATE ab_metrics SET name = 'primary' WHERE name = 'bounce'")
    assert await two.fetchval("SELECT count(*) FROM ab_metrics WHERE name = 'primary'") == 1
