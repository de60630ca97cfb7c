"""Several metrics per experiment, the data layer (schema/0009): ab_metrics definitions, ab_record_metric and the
covariate arguments of ab_record_metrics, the one fold over both kinds of update, and the snapshot's metrics."""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import asyncpg
import pytest

from tests.factories import create_experiment
from worker.db.fold import fold_pending_updates
from worker.db.metric_reads import bulk_metric_snapshots
from worker.db.sql import Q
from worker.decide import ExperimentSnapshot
from worker.domain.metrics import MetricSums


async def add_metric(
    conn: asyncpg.Connection,
    experiment: str,
    name: str,
    kind: str,
    role: str = "guardrail",
    direction: str = "increase",
    margin: float = 0.0,
    cuped: str = "auto",
) -> int:
    """One ab_metrics row, as a user would insert it."""
    metric_id: int = await conn.fetchval(
        """INSERT INTO ab_metrics (experiment_id, name, kind, role, direction, margin, cuped)
           SELECT id, $2, $3, $4, $5, $6, $7 FROM ab_experiments WHERE name = $1 RETURNING id""",
        experiment,
        name,
        kind,
        role,
        direction,
        margin,
        cuped,
    )
    return metric_id


async def queued(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM ab_metric_updates"))


async def metric_stats(conn: asyncpg.Connection, metric: str, variant: str) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(
        """SELECT ms.* FROM ab_metric_stats ms JOIN ab_metrics m ON m.id = ms.metric_id
             JOIN ab_variants v ON v.id = ms.variant_id WHERE m.name = $1 AND v.name = $2""",
        metric,
        variant,
    )
    return row


def sums_of(values: list[float]) -> tuple[float, float]:
    return math.fsum(values), math.fsum(x * x for x in values)


async def snapshot(conn: asyncpg.Connection, experiment_id: int) -> ExperimentSnapshot:
    row = await conn.fetchrow(Q["experiment_snapshot"], experiment_id, 3600.0)
    return ExperimentSnapshot.from_row(row)


# ------------------------------------------------------------------------------------------------ recording


async def test_each_kind_is_recorded_folded_and_read_in_the_snapshot(conn: asyncpg.Connection) -> None:
    exp_id = await create_experiment(conn, "checkout", ["control", "b"])
    await add_metric(conn, "checkout", "clicked", "proportion", role="primary")
    await add_metric(conn, "checkout", "basket", "mean", role="secondary", direction="decrease")
    await add_metric(conn, "checkout", "revenue_per_session", "ratio", margin=0.02)
    rng = random.Random(7)
    expected: dict[tuple[str, str], dict[str, Any]] = {}
    for variant in ("control", "b"):
        for _ in range(3):  # three flushes per variant and metric: the fold adds them up
            n = rng.randint(5, 50)
            clicked = rng.randint(0, n)
            await conn.execute("SELECT ab_record_metric('checkout', $1, 'clicked', $2, $3)", variant, n, clicked)
            e = expected.setdefault(("clicked", variant), {"units": 0, "value_sum": 0.0})
            e["units"] += n
            e["value_sum"] += clicked

            basket = [rng.uniform(0, 100) for _ in range(n)]
            s, ss = sums_of(basket)
            await conn.execute("SELECT ab_record_metric('checkout', $1, 'basket', $2, $3, $4)", variant, n, s, ss)
            e = expected.setdefault(("basket", variant), {"units": 0, "value_sum": 0.0, "value_sum_sq": 0.0})
            e["units"] += n
            e["value_sum"] += s
            e["value_sum_sq"] += ss

            sessions = [rng.randint(1, 5) for _ in range(n)]
            revenue = [k * rng.uniform(0, 30) for k in sessions]
            x, xx = sums_of(revenue)
            y, yy = sums_of([float(k) for k in sessions])
            xy = math.fsum(a * b for a, b in zip(revenue, sessions, strict=True))
            await conn.execute(
                "SELECT ab_record_metric(experiment_name => 'checkout', variant_name => $1,"
                " metric_name => 'revenue_per_session', units => $2, value_sum => $3, value_sum_sq => $4,"
                " denominator_sum => $5, denominator_sum_sq => $6, value_denominator_product_sum => $7)",
                variant,
                n,
                x,
                xx,
                y,
                yy,
                xy,
            )
            e = expected.setdefault(("revenue_per_session", variant), {k: 0.0 for k in ("x", "xx", "y", "yy", "xy")})
            e["units"] = e.get("units", 0) + n
            for k, val in (("x", x), ("xx", xx), ("y", y), ("yy", yy), ("xy", xy)):
                e[k] += val
    assert await queued(conn) == 18
    version_before = await conn.fetchval("SELECT ab_stats_version($1)", exp_id)

    result = await fold_pending_updates(conn)

    assert result.updates == 18 and set(result.experiments) == {exp_id}
    assert await queued(conn) == 0
    # Every metric update raises the statistics version, so an evaluation is due until it has seen them.
    assert await conn.fetchval("SELECT ab_stats_version($1)", exp_id) == version_before + 18
    # The built-in metric got no exposures from them.
    assert await conn.fetchval("SELECT sum(exposures) FROM ab_variant_stats") == 0

    snap = await snapshot(conn, exp_id)
    assert [m.name for m in snap.metrics] == ["clicked", "basket", "revenue_per_session"]
    by_name = {m.name: m for m in snap.metrics}
    assert by_name["clicked"].definition.role == "primary"
    assert by_name["basket"].definition.direction == "decrease"
    assert by_name["revenue_per_session"].definition.margin == 0.02
    assert by_name["revenue_per_session"].definition.kind == "ratio"
    for variant in ("control", "b"):
        p = by_name["clicked"].sums[variant]
        e = expected[("clicked", variant)]
        assert (p.units, p.value_sum, p.value_sum_sq) == (e["units"], e["value_sum"], e["value_sum"])
        assert p.denominator_sum is None and p.pre_sum is None and p.pre_units == 0
        m = by_name["basket"].sums[variant]
        e = expected[("basket", variant)]
        assert m.units == e["units"]
        assert m.value_sum == pytest.approx(e["value_sum"], rel=1e-12)
        assert m.value_sum_sq == pytest.approx(e["value_sum_sq"], rel=1e-12)
        assert m.denominator_sum is None
        r = by_name["revenue_per_session"].sums[variant]
        e = expected[("revenue_per_session", variant)]
        assert r.units == e["units"]
        got = (r.value_sum, r.value_sum_sq, r.denominator_sum, r.denominator_sum_sq, r.value_denominator_product_sum)
        assert got == pytest.approx((e["x"], e["xx"], e["y"], e["yy"], e["xy"]), rel=1e-12)


async def test_a_producer_batches_metric_updates_over_arrays(conn: asyncpg.Connection) -> None:
    await create_experiment(conn, "checkout", ["control", "b"])
    await add_metric(conn, "checkout", "basket", "mean")
    batch = """SELECT ab_record_metric('checkout', v, 'basket', n, s, ss)
                 FROM unnest($1::text[], $2::bigint[], $3::float8[], $4::float8[]) AS u(v, n, s, ss)"""
    assert len(await conn.fetch(batch, ["control", "b", "b"], [2, 3, 1], [4.0, 3.0, 2.0], [10.0, 5.0, 4.0])) == 3
    await fold_pending_updates(conn)
    row = await metric_stats(conn, "basket", "b")
    assert (row["units"], row["value_sum"], row["value_sum_sq"], row["updates_folded"]) == (4, 5.0, 9.0, 2)
    # One impossible row refuses the whole statement.
    with pytest.raises(asyncpg.InvalidParameterValueError):
        await conn.fetch(batch, ["control", "b"], [2, 3], [4.0, 3.0], [10.0, 1.0])
    assert await queued(conn) == 0


async def test_one_wake_up_per_experiment_per_transaction_whichever_function_is_called(
    conn: asyncpg.Connection, db_url: str
) -> None:
    a = await create_experiment(conn, "exp-a", ["control", "b"])
    b = await create_experiment(conn, "exp-b", ["control", "b"])
    for exp in ("exp-a", "exp-b"):
        await add_metric(conn, exp, "basket", "mean")
    received: list[str] = []
    listener = await asyncpg.connect(db_url)
    await listener.add_listener("ab_metrics", lambda *args: received.append(args[3]))
    try:
        await asyncio.sleep(0.05)
        received.clear()  # add_metric's own wake-ups
        async with conn.transaction():
            for _ in range(3):
                for exp in ("exp-a", "exp-b"):
                    await conn.execute("SELECT ab_record_metrics($1, 'b', 10, 2)", exp)
                    await conn.execute("SELECT ab_record_metric($1, 'b', 'basket', 2, 3.0, 5.0)", exp)
        for _ in range(100):
            if len(received) >= 2:
                break
            await listener.execute("SELECT pg_sleep(0.01)")
        await listener.execute("SELECT pg_sleep(0.05)")
        assert sorted(received) == sorted([str(a), str(b)])
    finally:
        await listener.close()


async def test_ab_record_metrics_keeps_its_old_calls_and_takes_a_covariate(conn: asyncpg.Connection) -> None:
    await create_experiment(conn, "exp-c", ["control", "b"])
    await create_experiment(conn, "exp-m", ["control", "b"], metric_type="mean")
    # Every existing call shape resolves to the one function (no ambiguous overload).
    await conn.execute("SELECT ab_record_metrics('exp-c', 'b', 10, 2)")
    await conn.execute("SELECT ab_record_metrics('exp-c', 'b', 10, 2, 1)")
    await conn.execute("SELECT ab_record_metrics('exp-c', 'b', 10, 2, 0, ARRAY[12.5])")
    await conn.execute("SELECT ab_record_metrics($1, $2, $3::bigint, 0, 0)", "exp-c", "b", 5)
    await conn.execute("SELECT ab_record_metrics('exp-m', 'b', 3, 0, 0, NULL, 6.0, 14.0)")
    await conn.execute(
        "SELECT ab_record_metrics(experiment_name => 'exp-m', variant_name => 'b', exposures => 3,"
        " conversions => 0, value_sum => 6.0, value_sum_sq => 14.0)"
    )
    assert await conn.fetchval("SELECT count(*) FROM pg_proc WHERE proname = 'ab_record_metrics'") == 1
    # With a covariate: Σx_pre, Σx_pre², Σx·x_pre over the same exposures.
    await conn.execute(
        "SELECT ab_record_metrics('exp-m', 'b', 3, 0, pre_sum => 3.0, pre_sum_sq => 5.0,"
        " pre_value_product_sum => 8.0, value_sum => 6.0, value_sum_sq => 14.0)"
    )
    await conn.execute(
        "SELECT ab_record_metrics('exp-c', 'b', 4, 1, pre_sum => 2.0, pre_sum_sq => 2.0, pre_value_product_sum => 1.0)"
    )
    await fold_pending_updates(conn)
    rows = {
        r["experiment"]: r
        for r in await conn.fetch(
            """SELECT e.name AS experiment, s.* FROM ab_variant_stats s JOIN ab_experiments e ON e.id = s.experiment_id
                JOIN ab_variants v ON v.id = s.variant_id WHERE v.name = 'b'"""
        )
    }
    m = rows["exp-m"]
    assert (m["exposures"], m["value_sum"], m["value_sum_sq"]) == (9, 18.0, 42.0)
    # pre_units counts the exposures that came with a covariate: CUPED can tell "missing for some updates".
    assert (m["pre_units"], m["pre_sum"], m["pre_sum_sq"], m["pre_value_product_sum"]) == (3, 3.0, 5.0, 8.0)
    c = rows["exp-c"]
    assert (c["exposures"], c["conversions"], c["pre_units"], c["pre_sum"]) == (39, 7, 4, 2.0)
    snap = await snapshot(conn, m["experiment_id"])
    assert snap.metrics == ()
    raw = await conn.fetchrow(Q["experiment_snapshot"], m["experiment_id"], 3600.0)
    treatment = next(v for v in raw["variants"] if v["name"] == "b")
    assert (treatment["pre_units"], treatment["pre_sum"], treatment["pre_value_product_sum"]) == (3, 3.0, 8.0)
    control = next(v for v in raw["variants"] if v["name"] == "control")
    assert (control["pre_units"], control["pre_sum"]) == (0, None)


async def test_metric_covariates_fold_with_their_units(conn: asyncpg.Connection) -> None:
    exp_id = await create_experiment(conn, "exp", ["control", "b"])
    await add_metric(conn, "exp", "spend", "mean", role="primary")
    await conn.execute(
        "SELECT ab_record_metric('exp', 'b', 'spend', 4, 10.0, 30.0, pre_sum => 8.0, pre_sum_sq => 20.0,"
        " pre_value_product_sum => 24.0)"
    )
    await conn.execute("SELECT ab_record_metric('exp', 'b', 'spend', 2, 2.0, 2.0)")  # no covariate this time
    await fold_pending_updates(conn)
    sums = (await snapshot(conn, exp_id)).metrics[0].sums["b"]
    assert sums == MetricSums(
        units=6,
        value_sum=12.0,
        value_sum_sq=32.0,
        pre_units=4,
        pre_sum=8.0,
        pre_sum_sq=20.0,
        pre_value_product_sum=24.0,
    )
    assert not sums.has_covariate  # two of the six units sent none


# ------------------------------------------------------------------------------------------------ rejections

BAD_METRIC_CALLS = [
    # (call, words of the message, words of the hint)
    ("ab_record_metric('nope', 'b', 'basket', 1, 1, 1)", 'unknown experiment "nope"', "ab_experiments"),
    ("ab_record_metric('exp', 'zzz', 'basket', 1, 1, 1)", 'has no variant "zzz"', "known variants: control, b"),
    ("ab_record_metric('exp', 'b', 'nope', 1, 1, 1)", 'has no metric "nope"', "known metrics: clicks, basket, rps"),
    ("ab_record_metric('exp', 'b', 'primary', 1, 1, 1)", "built-in metric", "ab_record_metrics"),
    ("ab_record_metric('exp', 'b', NULL, 1, 1, 1)", "are required", "name the experiment"),
    ("ab_record_metric('exp', 'b', 'basket', NULL, 1, 1)", "units and value_sum are required", "number of new units"),
    ("ab_record_metric('exp', 'b', 'basket', -1, 1, 1)", "units must not be negative", "never go down"),
    ("ab_record_metric('exp', 'b', 'basket', 1, 'NaN', 1)", "value_sum must be a finite number", "NaN"),
    ("ab_record_metric('exp', 'b', 'basket', 1, 1, 'Infinity')", "value_sum_sq must be a finite number", "NaN"),
    ("ab_record_metric('exp', 'b', 'basket', 3, 6, NULL)", "is a mean; value_sum_sq is required", "squares"),
    (
        "ab_record_metric('exp', 'b', 'basket', 3, 6, 11)",
        "value_sum_sq (11) is smaller than value_sum^2 / units",
        "not the square of value_sum",
    ),
    ("ab_record_metric('exp', 'b', 'basket', 3, 6, -1)", "value_sum_sq (-1) must not be negative", "squared"),
    ("ab_record_metric('exp', 'b', 'basket', 0, 1, 1)", "sums recorded with 0 units", "same call"),
    (
        "ab_record_metric('exp', 'b', 'basket', 3, 6, 14, 1, 1, 1)",
        "is a mean; the denominator sums must be NULL",
        "ratio metric",
    ),
    ("ab_record_metric('exp', 'b', 'clicks', 5, 6)", "value_sum (6) must be a whole number", "cannot exceed units"),
    ("ab_record_metric('exp', 'b', 'clicks', 5, -1)", "value_sum (-1) must be a whole number", "cannot exceed"),
    ("ab_record_metric('exp', 'b', 'clicks', 5, 2.5)", "value_sum (2.5) must be a whole number", "cannot exceed"),
    (
        "ab_record_metric('exp', 'b', 'clicks', 5, 2, 3)",
        "value_sum_sq (3) must be NULL or equal value_sum",
        "own square",
    ),
    (
        "ab_record_metric('exp', 'b', 'clicks', 5, 2, NULL, 3)",
        "is a proportion; the denominator sums must be NULL",
        "converted units",
    ),
    (
        "ab_record_metric('exp', 'b', 'rps', 2, 10, 50, 3)",
        "is a ratio; value_sum, value_sum_sq, denominator_sum",
        "Σx, Σx², Σy, Σy² and Σxy",
    ),
    (
        "ab_record_metric('exp', 'b', 'rps', 2, 10, 50, 3, 4, 'NaN')",
        "value_denominator_product_sum must be a finite number",
        "NaN",
    ),
    (
        "ab_record_metric('exp', 'b', 'rps', 2, 10, 50, 4, 7, 20)",
        "denominator_sum_sq (7) is smaller",
        "not the square of denominator_sum",
    ),
    # x = (0, 10), y = (1, 3): Σxy = 30; centred bound |2Σxy - ΣxΣy| <= sqrt((2·100-100)(2·10-16)) = 20 -> Σxy <= 30
    (
        "ab_record_metric('exp', 'b', 'rps', 2, 10, 100, 4, 10, 31)",
        "value_denominator_product_sum (31) is impossible",
        "x1*y1 + x2*y2",
    ),
    (
        "ab_record_metric('exp', 'b', 'rps', 2, 10, 100, 4, 10, 30, 1, 1, 1)",
        "a pre-exposure covariate is for",
        "leave pre_sum",
    ),
    ("ab_record_metric('exp', 'b', 'basket', 3, 6, 14, pre_sum => 1)", "go together", "all three sums"),
    (
        "ab_record_metric('exp', 'b', 'basket', 3, 6, 14, pre_sum => 3, pre_sum_sq => 2, pre_value_product_sum => 6)",
        "pre_sum_sq (2) is smaller than pre_sum^2 / units",
        "not the square of pre_sum",
    ),
    (
        "ab_record_metric('exp', 'b', 'basket', 3, 6, 14, pre_sum => 3, pre_sum_sq => 3, pre_value_product_sum => 9)",
        "pre_value_product_sum (9) is impossible",
        "x1*y1",
    ),
    (
        "ab_record_metric('exp', 'b', 'basket', 3, 6, 14, pre_sum => 3, pre_sum_sq => '-Infinity',"
        " pre_value_product_sum => 6)",
        "pre_sum_sq must be a finite number",
        "NaN",
    ),
    ("ab_record_metrics('exp', 'b', 3, 1, pre_sum => 3, pre_sum_sq => 3)", "go together", "all three sums"),
    (
        "ab_record_metrics('exp', 'b', 3, 1, pre_sum => 3, pre_sum_sq => 1, pre_value_product_sum => 1)",
        "pre_sum_sq (1) is smaller",
        "not the square of pre_sum",
    ),
    (
        "ab_record_metrics('exp', 'b', 0, 0, pre_sum => 3, pre_sum_sq => 9, pre_value_product_sum => 0)",
        "recorded with 0 units",
        "same call",
    ),
    # a conversion (0/1) and a 0/1 covariate over 3 exposures, 1 converted: Σx·x_pre is at most 1
    (
        "ab_record_metrics('exp', 'b', 3, 1, pre_sum => 1, pre_sum_sq => 1, pre_value_product_sum => 2)",
        "pre_value_product_sum (2) is impossible",
        "x1*y1",
    ),
]


async def test_bad_metric_input_is_rejected_with_a_hint_and_nothing_written(conn: asyncpg.Connection) -> None:
    await create_experiment(conn, "exp", ["control", "b"])
    await add_metric(conn, "exp", "clicks", "proportion")
    await add_metric(conn, "exp", "basket", "mean")
    await add_metric(conn, "exp", "rps", "ratio")
    for call, message, hint in BAD_METRIC_CALLS:
        with pytest.raises(asyncpg.PostgresError) as err:
            async with conn.transaction():
                # Good rows first in the same transaction: the failure takes them down too.
                await conn.execute("SELECT ab_record_metric('exp', 'b', 'basket', 3, 6, 14)")
                await conn.execute("SELECT ab_record_metrics('exp', 'b', 3, 1)")
                await conn.execute(f"SELECT {call}")
        assert message in str(err.value), call
        assert hint in (err.value.as_dict().get("hint") or ""), call
        assert err.value.sqlstate in ("22023", "22004"), call
        assert await queued(conn) == 0, call


async def test_moments_on_the_bound_are_accepted_within_float_round_off(conn: asyncpg.Connection) -> None:
    """Perfectly correlated data sit on the Cauchy-Schwarz bound, a constant sample on Σx² = (Σx)²/n: summed in
    floating point they land a few ulps either side. That is round-off, not an impossible sample."""
    await create_experiment(conn, "exp", ["control", "b"])
    await add_metric(conn, "exp", "rps", "ratio")
    sessions = [float(k % 4 + 1) for k in range(999)]
    revenue = [0.1 * k for k in sessions]  # revenue per session is exactly 0.1: x and y perfectly correlated
    x, xx = sums_of(revenue)
    y, yy = sums_of(sessions)
    xy = math.fsum(a * b for a, b in zip(revenue, sessions, strict=True))
    await conn.execute("SELECT ab_record_metric('exp', 'b', 'rps', 999, $1, $2, $3, $4, $5)", x, xx, y, yy, xy)
    # 1e-6 beyond the bound is no round-off.
    with pytest.raises(asyncpg.InvalidParameterValueError, match="is impossible"):
        await conn.execute(
            "SELECT ab_record_metric('exp', 'b', 'rps', 999, $1, $2, $3, $4, $5)", x, xx, y, yy, xy * (1 + 1e-6)
        )
    assert await queued(conn) == 1


# ------------------------------------------------------------------------------------------------ definitions

BAD_DEFINITIONS = [
    ("bad name", "mean", "guardrail", "increase", 0.0, "auto", "invalid metric name", "letters, digits"),
    ("", "mean", "guardrail", "increase", 0.0, "auto", "invalid metric name", "letters, digits"),
    ("m", "median", "guardrail", "increase", 0.0, "auto", 'unknown kind "median"', "proportion"),
    ("m", "mean", "boss", "increase", 0.0, "auto", 'unknown role "boss"', "guardrail (must not lose"),
    ("m", "mean", "guardrail", "up", 0.0, "auto", 'unknown direction "up"', "increase or decrease"),
    ("m", "mean", "guardrail", "increase", -0.01, "auto", "margin -0.01, outside [0, 1)", "at most 2% worse"),
    ("m", "mean", "guardrail", "increase", 1.0, "auto", "margin 1, outside [0, 1)", "at most 2% worse"),
    ("m", "mean", "guardrail", "increase", float("nan"), "auto", "margin NaN", "at most 2% worse"),
    ("m", "mean", "guardrail", "increase", 0.0, "on", 'has cuped "on"', "auto"),
    ("primary", "mean", "primary", "increase", 0.0, "auto", "so its kind is proportion, not mean", "kind proportion"),
]


async def test_bad_definitions_are_refused_with_a_hint(conn: asyncpg.Connection) -> None:
    await create_experiment(conn, "exp", ["control", "b"])
    for name, kind, role, direction, margin, cuped, message, hint in BAD_DEFINITIONS:
        with pytest.raises(asyncpg.InvalidParameterValueError) as err:
            await add_metric(conn, "exp", name, kind, role, direction, margin, cuped)
        assert message in str(err.value), name
        assert hint in (err.value.as_dict().get("hint") or ""), name
    assert await conn.fetchval("SELECT count(*) FROM ab_metrics") == 0


async def test_a_primary_row_keeps_the_built_in_kind(conn: asyncpg.Connection) -> None:
    await create_experiment(conn, "conv", ["control", "b"])
    await create_experiment(conn, "avg", ["control", "b"], metric_type="mean")
    await add_metric(conn, "conv", "primary", "proportion", role="primary", margin=0.01)
    await add_metric(conn, "avg", "primary", "mean", role="guardrail", direction="decrease")
    with pytest.raises(asyncpg.InvalidParameterValueError, match="metric_type mean would contradict"):
        await conn.execute("UPDATE ab_experiments SET metric_type = 'mean' WHERE name = 'conv'")
    with pytest.raises(asyncpg.InvalidParameterValueError, match="cannot change"):
        await conn.execute("UPDATE ab_metrics SET kind = 'ratio' WHERE name = 'primary'")
    with pytest.raises(asyncpg.UniqueViolationError):
        await add_metric(conn, "conv", "primary", "proportion")
    # Changing role, direction or margin is what the row is for.
    await conn.execute("UPDATE ab_metrics SET margin = 0.05 WHERE name = 'primary'")
    assert await conn.fetchval("SELECT count(*) FROM ab_metrics WHERE updated_at > created_at") == 2


async def test_changing_a_definition_makes_the_stored_decision_due_again(conn: asyncpg.Connection, db_url: str) -> None:
    """A guardrail added after the last evaluation changes the decision without a new statistics version: the
    experiment must be evaluated again, and the worker woken for it."""
    exp_id = await create_experiment(conn, "exp", ["control", "b"])
    await conn.execute("SELECT ab_record_metrics('exp', 'b', 10, 2)")
    await fold_pending_updates(conn)
    mark = """INSERT INTO ab_experiment_state (experiment_id, evaluated_version, evaluated_snapshot)
              VALUES ($1, ab_stats_version($1), pg_current_snapshot())
              ON CONFLICT (experiment_id) DO UPDATE SET evaluated_version = EXCLUDED.evaluated_version,
                  evaluated_snapshot = EXCLUDED.evaluated_snapshot"""
    due = "SELECT ab_evaluation_due($1)"
    await conn.execute(mark, exp_id)
    assert not await conn.fetchval(due, exp_id)
    received: list[str] = []
    listener = await asyncpg.connect(db_url)
    await listener.add_listener("ab_metrics", lambda *args: received.append(args[3]))
    try:
        await add_metric(conn, "exp", "revenue", "mean")
        assert await conn.fetchval(due, exp_id)
        await conn.execute(mark, exp_id)
        await conn.execute("UPDATE ab_metrics SET margin = 0.03 WHERE name = 'revenue'")
        assert await conn.fetchval(due, exp_id)
        await conn.execute(mark, exp_id)
        await conn.execute("UPDATE ab_metrics SET description = 'only words' WHERE name = 'revenue'")
        assert not await conn.fetchval(due, exp_id)  # a description decides nothing
        await conn.execute("DELETE FROM ab_metrics WHERE name = 'revenue'")
        assert await conn.fetchval(due, exp_id)
        for _ in range(100):
            if len(received) >= 3:
                break
            await listener.execute("SELECT pg_sleep(0.01)")
        assert received == [str(exp_id)] * 3
    finally:
        await listener.close()


async def test_removing_a_metric_removes_its_queued_updates_and_statistics(conn: asyncpg.Connection) -> None:
    await create_experiment(conn, "exp", ["control", "b"])
    await add_metric(conn, "exp", "basket", "mean")
    await add_metric(conn, "exp", "kept", "mean")
    await conn.execute("SELECT ab_record_metric('exp', 'b', 'basket', 3, 6, 14)")
    await fold_pending_updates(conn)
    await conn.execute("SELECT ab_record_metric('exp', 'b', 'basket', 3, 6, 14)")
    await conn.execute("SELECT ab_record_metric('exp', 'b', 'kept', 3, 6, 14)")
    await conn.execute("DELETE FROM ab_metrics WHERE name = 'basket'")
    assert await queued(conn) == 1
    assert await conn.fetchval("SELECT count(*) FROM ab_metric_stats") == 0
    await fold_pending_updates(conn)
    assert (await metric_stats(conn, "kept", "b"))["units"] == 3


# ------------------------------------------------------------------------------------------------ the fold


async def test_the_fold_is_exactly_once_across_both_kinds_of_update(conn: asyncpg.Connection) -> None:
    """Mixed updates folded in small batches, and by a per-experiment fold beside the whole-queue one: every update
    counted once, in the statistics it belongs to."""
    exp_ids = [await create_experiment(conn, f"exp-{i}", ["control", "b", "c"]) for i in range(3)]
    for i in range(3):
        await add_metric(conn, f"exp-{i}", "basket", "mean")
        await add_metric(conn, f"exp-{i}", "clicks", "proportion")
    calls = []
    for i in range(3):
        for v in ("control", "b", "c"):
            for k in range(20):
                calls.append(f"SELECT ab_record_metrics('exp-{i}', '{v}', 10, {k % 5})")
                calls.append(f"SELECT ab_record_metric('exp-{i}', '{v}', 'basket', 2, 3.0, 5.0)")
                calls.append(f"SELECT ab_record_metric('exp-{i}', '{v}', 'clicks', 4, {k % 3})")
    random.Random(3).shuffle(calls)
    async with conn.transaction():
        for sql in calls:
            await conn.execute(sql)
    total = len(calls)
    first = await fold_pending_updates(conn, batch_size=37, experiment_ids=[exp_ids[0]])
    rest = await fold_pending_updates(conn, batch_size=41)
    assert first.updates == 180 and first.updates + rest.updates == total
    assert await queued(conn) == 0
    assert await conn.fetchval("SELECT sum(updates_folded) FROM ab_variant_stats") == total
    assert await conn.fetchval("SELECT sum(updates_folded) FROM ab_metric_stats") == 2 * total // 3
    builtin = await conn.fetchrow("SELECT sum(exposures) AS e, sum(conversions) AS c FROM ab_variant_stats")
    assert (builtin["e"], builtin["c"]) == (9 * 20 * 10, 9 * 4 * 10)
    per = await conn.fetch(
        """SELECT m.name, sum(ms.units) AS units, sum(ms.value_sum) AS s FROM ab_metric_stats ms
             JOIN ab_metrics m ON m.id = ms.metric_id GROUP BY m.name ORDER BY m.name"""
    )
    assert [(r["name"], r["units"], r["s"]) for r in per] == [
        ("basket", 9 * 20 * 2, 9 * 20 * 3.0),
        ("clicks", 9 * 20 * 4, 9 * (7 * 0 + 7 * 1 + 6 * 2)),
    ]


async def test_a_backend_terminated_mid_fold_leaves_both_kinds_of_update_queued(
    conn: asyncpg.Connection, db_url: str
) -> None:
    """The fold statement is stopped while it holds its claim (another session holds a statistics row it must
    update); its backend is terminated. Nothing it claimed is lost or half-folded: the next fold counts each once."""
    await create_experiment(conn, "exp", ["control", "b"])
    await add_metric(conn, "exp", "basket", "mean")
    await conn.execute("SELECT ab_record_metric('exp', 'b', 'basket', 1, 1.0, 1.0)")
    await conn.execute("SELECT ab_record_metrics('exp', 'b', 1, 1)")
    await fold_pending_updates(conn)  # the statistics rows exist now
    for _ in range(5):
        await conn.execute("SELECT ab_record_metric('exp', 'b', 'basket', 2, 3.0, 5.0)")
        await conn.execute("SELECT ab_record_metrics('exp', 'b', 10, 2)")
    before_builtin = await conn.fetchval("SELECT sum(updates_folded) FROM ab_variant_stats")

    blocker = await asyncpg.connect(db_url)
    folder = await asyncpg.connect(db_url)
    try:
        await blocker.execute("BEGIN")
        await blocker.execute("SELECT 1 FROM ab_metric_stats FOR UPDATE")
        pid = await folder.fetchval("SELECT pg_backend_pid()")
        fold = asyncio.ensure_future(folder.fetch(Q["fold_pending"], 1000))
        for _ in range(200):  # wait until the fold is blocked inside its statement, its claim taken
            waiting = await conn.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid)
            if waiting:
                break
            await asyncio.sleep(0.01)
        assert waiting, "the fold never blocked on the held statistics row"
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises((asyncpg.PostgresError, asyncpg.exceptions.ConnectionDoesNotExistError, OSError)):
            await fold
        await blocker.execute("ROLLBACK")
    finally:
        await blocker.close()
        folder.terminate()
    assert await queued(conn) == 10
    assert await conn.fetchval("SELECT sum(updates_folded) FROM ab_variant_stats") == before_builtin
    result = await fold_pending_updates(conn)
    assert result.updates == 10
    row = await metric_stats(conn, "basket", "b")
    assert (row["units"], row["value_sum"], row["updates_folded"]) == (11, 16.0, 6)
    b = await conn.fetchrow(
        "SELECT s.* FROM ab_variant_stats s JOIN ab_variants v ON v.id = s.variant_id WHERE v.name = 'b'"
    )
    assert (b["exposures"], b["conversions"], b["updates_folded"]) == (51, 11, 12)


# ------------------------------------------------------------------------------------------------ the snapshot


async def test_an_experiment_without_metric_rows_reads_as_before(conn: asyncpg.Connection) -> None:
    exp_id = await create_experiment(conn, "plain", ["control", "b"])
    await conn.execute("SELECT ab_record_metrics('plain', 'b', 10, 2)")
    await fold_pending_updates(conn)
    for name, args in (
        ("experiment_snapshot", (exp_id, 3600.0)),
        ("try_lock_snapshot", (exp_id, 3600.0)),
        ("lock_running_snapshots", ([exp_id], 3600.0)),
    ):
        async with conn.transaction():
            row = await conn.fetchrow(Q[name], *args)
        assert row is not None and row["metrics"] is None, name
        assert ExperimentSnapshot.from_row(row).metrics == ()
    rows = await conn.fetch(Q["variants_with_stats_for"], [exp_id])
    assert [(r["metric_defs"], r["metric_sums"]) for r in rows] == [(None, None), (None, None)]


async def test_every_read_of_the_decision_sees_the_same_metrics(conn: asyncpg.Connection) -> None:
    """The per-experiment snapshot, the daemon's locking reads and the scan's bulk read return the same metrics."""
    ids = [await create_experiment(conn, f"exp-{i}", ["control", "b", "c"]) for i in range(3)]
    await add_metric(conn, "exp-0", "basket", "mean", role="primary")
    await add_metric(conn, "exp-0", "primary", "proportion", role="guardrail", margin=0.01)
    await add_metric(conn, "exp-0", "rps", "ratio", role="secondary", direction="decrease", cuped="off")
    await add_metric(conn, "exp-2", "clicks", "proportion")
    await conn.execute("SELECT ab_record_metrics('exp-1', 'b', 3, 1)")  # every experiment has something to decide
    await conn.execute("SELECT ab_record_metric('exp-0', 'b', 'basket', 3, 6, 14)")
    await conn.execute("SELECT ab_record_metric('exp-0', 'c', 'rps', 2, 10, 100, 4, 10, 30)")
    await conn.execute("SELECT ab_record_metric('exp-2', 'control', 'clicks', 9, 4)")
    await fold_pending_updates(conn)

    per_experiment = {i: (await snapshot(conn, i)).metrics for i in ids}
    async with conn.transaction():
        locked = {
            r["id"]: ExperimentSnapshot.from_row(r).metrics
            for r in await conn.fetch(Q["lock_running_snapshots"], ids, 3600.0)
        }
    bulk: dict[int, Any] = {}
    rows = await conn.fetch(Q["variants_with_stats_for"], ids)
    names = {r["variant_id"]: r["name"] for r in rows}
    for r in rows:
        if r["metric_defs"] is not None:
            assert r["is_control"]
            bulk[r["experiment_id"]] = bulk_metric_snapshots(r["metric_defs"], r["metric_sums"], names)
    assert locked == per_experiment
    assert {i: bulk.get(i, ()) for i in ids} == per_experiment

    m = {x.name: x for x in per_experiment[ids[0]]}
    assert list(m) == ["basket", "primary", "rps"]
    assert m["primary"].sums == {}  # the built-in metric's numbers are the variants'
    assert m["primary"].definition.margin == 0.01 and m["primary"].definition.role == "guardrail"
    assert set(m["basket"].sums) == {"b"}  # variants without data are left out
    assert m["rps"].definition.cuped == "off"
    assert m["rps"].sums["c"] == MetricSums(
        units=2,
        value_sum=10.0,
        value_sum_sq=100.0,
        denominator_sum=4.0,
        denominator_sum_sq=10.0,
        value_denominator_product_sum=30.0,
    )
    assert per_experiment[ids[1]] == ()
    assert per_experiment[ids[2]][0].sums["control"].units == 9


async def test_the_readme_producer_examples_are_accepted(conn: asyncpg.Connection) -> None:
    await create_experiment(conn, "checkout-test", ["control", "variant-b"])
    await add_metric(conn, "checkout-test", "added_to_cart", "proportion")
    await add_metric(conn, "checkout-test", "basket_value", "mean")
    await add_metric(conn, "checkout-test", "revenue_per_session", "ratio")
    await conn.execute(
        "SELECT ab_record_metric('checkout-test', 'variant-b', 'added_to_cart', units => 120, value_sum => 31)"
    )
    await conn.execute(
        "SELECT ab_record_metric('checkout-test', 'variant-b', 'basket_value', 120, value_sum => 5310.5,"
        " value_sum_sq => 402133.25)"
    )
    await conn.execute(
        "SELECT ab_record_metric('checkout-test', 'variant-b', 'revenue_per_session', 120, value_sum => 5310.5,"
        " value_sum_sq => 402133.25, denominator_sum => 171, denominator_sum_sq => 305,"
        " value_denominator_product_sum => 9120.0)"
    )
    rows = await conn.fetch(
        """SELECT ab_record_metric(e, v, m, n, s, ss)
             FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::float8[], $6::float8[])
                  AS t(e, v, m, n, s, ss)""",
        ["checkout-test"] * 2,
        ["control", "variant-b"],
        ["basket_value"] * 2,
        [10, 20],
        [400.0, 900.0],
        [20000.0, 50000.0],
    )
    assert len(rows) == 2 and await queued(conn) == 5


async def test_the_scan_decides_on_the_metrics_it_read(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    """The scan's bulk path hands each experiment's metrics to the decision, as the per-experiment read does."""
    from worker.config import load_config, load_settings
    from worker.engine import Engine

    ids = [await create_experiment(conn, f"exp-{i}", ["control", "b"]) for i in range(3)]
    await add_metric(conn, "exp-0", "basket", "mean", role="primary")
    await add_metric(conn, "exp-2", "rps", "ratio")
    await conn.execute("SELECT ab_record_metric('exp-0', 'b', 'basket', 3, 6, 14)")
    await conn.execute("SELECT ab_record_metric('exp-2', 'control', 'rps', 2, 10, 100, 4, 10, 30)")
    await conn.execute("SELECT ab_record_metrics('exp-1', 'b', 3, 1)")
    await fold_pending_updates(conn)
    engine = Engine(pool, load_settings({}), load_config(env={}))
    seen: dict[int, ExperimentSnapshot] = {}
    decide = engine.decider.decide_snapshots

    async def capture(effective: Any, pairs: list[tuple[Any, ExperimentSnapshot]]) -> Any:
        seen.update({s.id: s for _, s in pairs})
        return await decide(effective, pairs)

    engine.decider.decide_snapshots = capture  # type: ignore[method-assign]
    experiments = list(await conn.fetch(Q["running_experiments"]))
    decided, read_at = await engine.scans.decide_all(conn, engine.config, experiments)
    assert len(decided) == 3 and set(seen) == set(ids)
    for i in ids:
        assert seen[i].metrics == (await snapshot(conn, i)).metrics
        assert read_at[i].version == await conn.fetchval("SELECT ab_stats_version($1)", i)
    assert seen[ids[0]].metrics[0].sums["b"].units == 3 and seen[ids[1]].metrics == ()
