"""CUPED end to end on the real database: producers send each unit's pre-exposure value with their updates
(ab_record_metrics / ab_record_metric, pre_sum, pre_sum_sq, pre_value_product_sum), the fold adds them up, and
check decides on the adjusted estimate (varianceReduction shown), or falls back, saying so, when some updates
came without one."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from tests.factories import create_experiment
from tests.support.cli import run_cli
from worker.config import load_config, load_settings
from worker.db.fold import fold_pending_updates
from worker.engine import Engine

RHO = 0.8
USERS_PER_CALL = 50
CALLS_PER_ARM = 80  # 4,000 users per arm at +6%: CUPED (rho 0.8) promotes (p 0.001), unadjusted not (p 0.32)


@pytest.fixture
def engine(pool: asyncpg.Pool) -> Engine:
    config = load_config(
        env={}, overrides={"thresholds": {"minSampleSize": 500, "minImprovement": 1.0, "minRuntimeHours": 1}}
    )
    return Engine(pool, load_settings({"SLACK_WEBHOOK_URL": "http://127.0.0.1:9/slack-hook"}), config)


def batches(mean: float, seed: int) -> list[dict[str, float]]:
    """Per flush: the sums over 50 users of their revenue y (sd 10) and last month's revenue x (corr RHO)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(CALLS_PER_ARM):
        z = rng.standard_normal(USERS_PER_CALL)
        y = mean + 10.0 * (RHO * z + math.sqrt(1 - RHO * RHO) * rng.standard_normal(USERS_PER_CALL))
        x = 30.0 + 8.0 * z
        out.append(
            {
                "n": USERS_PER_CALL,
                "s": float(y.sum()),
                "ss": float((y * y).sum()),
                "ps": float(x.sum()),
                "pss": float((x * x).sum()),
                "pxs": float((x * y).sum()),
            }
        )
    return out


DATA = {"control": batches(10.0, seed=11), "variant-b": batches(10.6, seed=12)}

RECORD_WITH = (
    "SELECT ab_record_metrics(experiment_name => $1, variant_name => $2, exposures => $3, conversions => 0, "
    "value_sum => $4, value_sum_sq => $5, pre_sum => $6, pre_sum_sq => $7, pre_value_product_sum => $8)"
)
RECORD_WITHOUT = (
    "SELECT ab_record_metrics(experiment_name => $1, variant_name => $2, exposures => $3, conversions => 0, "
    "value_sum => $4, value_sum_sq => $5)"
)


async def send(conn: asyncpg.Connection, experiment: str, *, covariate: Any = True) -> None:
    """The producers' flushes; covariate: True, False, or a predicate (variant, index) -> send it with this one."""
    with_pre, without = [], []
    for variant, flushes in DATA.items():
        for i, b in enumerate(flushes):
            send_pre = covariate(variant, i) if callable(covariate) else covariate
            if send_pre:
                with_pre.append((experiment, variant, b["n"], b["s"], b["ss"], b["ps"], b["pss"], b["pxs"]))
            else:
                without.append((experiment, variant, b["n"], b["s"], b["ss"]))
    async with conn.transaction():
        if with_pre:
            await conn.executemany(RECORD_WITH, with_pre)
        if without:
            await conn.executemany(RECORD_WITHOUT, without)


async def test_covariates_sent_with_ab_record_metrics_decide_earlier_than_the_same_data_without(
    conn: asyncpg.Connection, engine: Engine
) -> None:
    await create_experiment(conn, "revenue-cuped", metric_type="mean")
    await create_experiment(conn, "revenue-plain", metric_type="mean")
    await send(conn, "revenue-cuped", covariate=True)
    await send(conn, "revenue-plain", covariate=False)
    await fold_pending_updates(conn)
    stats = await conn.fetch(
        """SELECT v.name, s.exposures, s.pre_units, s.pre_sum FROM ab_variant_stats s
             JOIN ab_variants v ON v.id = s.variant_id JOIN ab_experiments e ON e.id = v.experiment_id
            WHERE e.name = 'revenue-cuped' ORDER BY v.name"""
    )
    assert [(r["exposures"], r["pre_units"]) for r in stats] == [(4000, 4000), (4000, 4000)]
    assert stats[0]["pre_sum"] == pytest.approx(sum(b["ps"] for b in DATA["control"]), rel=1e-12)

    cuped = await engine.check_promotion_eligibility("revenue-cuped")
    plain = await engine.check_promotion_eligibility("revenue-plain")
    assert cuped["eligible"] is True, cuped["reasons"]
    assert plain["eligible"] is False
    (t,) = cuped["metrics"][0]["treatments"]
    (tp,) = plain["metrics"][0]["treatments"]
    assert t["varianceReduction"] == pytest.approx(RHO * RHO, abs=0.05)
    assert t["unadjustedLift"] == pytest.approx(tp["lift"], abs=1e-4)  # the twin's lift is the unadjusted one
    assert tp["varianceReduction"] is None
    assert t["verdict"] == "better" and tp["verdict"] == "inconclusive"
    width, width_plain = t["interval"][1] - t["interval"][0], tp["interval"][1] - tp["interval"][0]
    assert width < 0.7 * width_plain  # sqrt(1 - 0.64) = 0.6
    assert cuped["improvement"] == pytest.approx(t["lift"], abs=1e-3)
    assert cuped["notes"] == [] and plain["notes"] == []


async def test_a_covariate_missing_on_some_updates_falls_back_with_the_message(
    conn: asyncpg.Connection, engine: Engine
) -> None:
    await create_experiment(conn, "revenue-partial", metric_type="mean")
    await create_experiment(conn, "revenue-plain", metric_type="mean")
    await send(conn, "revenue-partial", covariate=lambda variant, i: not (variant == "variant-b" and i % 10 == 0))
    await send(conn, "revenue-plain", covariate=False)
    await fold_pending_updates(conn)
    partial = await engine.check_promotion_eligibility("revenue-partial")
    plain = await engine.check_promotion_eligibility("revenue-plain")
    (note,) = partial["notes"]
    assert note == (
        "metric primary: CUPED not applied — 400 of 8,000 units came without their pre-exposure value "
        "(variant-b: 400 of 4,000); the unadjusted estimate is reported until every update carries pre_sum, "
        "pre_sum_sq and pre_value_product_sum"
    )
    assert partial["metrics"] == plain["metrics"]  # exactly the unadjusted numbers: never mixed
    assert partial["eligible"] is plain["eligible"] is False


async def test_ab_record_metric_covariates_adjust_an_added_metric(conn: asyncpg.Connection, engine: Engine) -> None:
    await create_experiment(conn, "checkout")
    await conn.execute(
        """INSERT INTO ab_metrics (experiment_id, name, kind, role)
           SELECT id, 'order_value', 'mean', 'secondary' FROM ab_experiments WHERE name = 'checkout'"""
    )
    await conn.execute(
        """INSERT INTO ab_metrics (experiment_id, name, kind, role, cuped)
           SELECT id, 'order_value_off', 'mean', 'secondary', 'off' FROM ab_experiments WHERE name = 'checkout'"""
    )
    for variant, flushes in DATA.items():
        await conn.execute("SELECT ab_record_metrics('checkout', $1, 4000, 400)", variant)
        for metric in ("order_value", "order_value_off"):
            await conn.executemany(
                "SELECT ab_record_metric(experiment_name => 'checkout', variant_name => $1, metric_name => $2, "
                "units => $3, value_sum => $4, value_sum_sq => $5, pre_sum => $6, pre_sum_sq => $7, "
                "pre_value_product_sum => $8)",
                [(variant, metric, b["n"], b["s"], b["ss"], b["ps"], b["pss"], b["pxs"]) for b in flushes],
            )
    await fold_pending_updates(conn)
    data = await engine.check_promotion_eligibility("checkout")
    by_name = {m["name"]: m for m in data["metrics"]}
    (on,) = by_name["order_value"]["treatments"]
    (off,) = by_name["order_value_off"]["treatments"]
    assert on["varianceReduction"] == pytest.approx(RHO * RHO, abs=0.05)
    assert on["verdict"] == "better" and on["pValue"] < 0.05
    assert off["varianceReduction"] is None and off["verdict"] == "inconclusive"
    assert on["unadjustedLift"] == pytest.approx(off["lift"], abs=1e-4)
    assert by_name["primary"]["treatments"][0]["varianceReduction"] is None  # no covariate sent for it
    assert data["notes"] == []


README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


async def test_the_readme_covariate_examples_run_as_written(conn: asyncpg.Connection) -> None:
    block = README.split("<!-- cuped-sql:start -->", 1)[1].split("<!-- cuped-sql:end -->", 1)[0]
    sql = block.split("```sql", 1)[1].split("```", 1)[0]
    await create_experiment(conn, "order-value-test", metric_type="mean")
    await create_experiment(conn, "signup-test")
    await conn.execute(
        """INSERT INTO ab_metrics (experiment_id, name, kind, role)
           SELECT id, 'activated', 'proportion', 'secondary' FROM ab_experiments WHERE name = 'signup-test'"""
    )
    await conn.execute(sql)
    await fold_pending_updates(conn)
    rows = await conn.fetch(
        """SELECT e.name, s.exposures, s.pre_units FROM ab_variant_stats s JOIN ab_variants v ON v.id = s.variant_id
             JOIN ab_experiments e ON e.id = v.experiment_id WHERE v.name = 'variant-b' ORDER BY e.name"""
    )
    assert [(r["name"], r["exposures"], r["pre_units"]) for r in rows] == [
        ("order-value-test", 50, 50),
        ("signup-test", 50, 50),
    ]
    assert await conn.fetchval("SELECT pre_units FROM ab_metric_stats") == 50


async def test_check_as_a_user_runs_it_names_cuped_and_the_fallback(conn: asyncpg.Connection, db_url: str) -> None:
    config = {"thresholds": {"minSampleSize": 500, "minImprovement": 1, "minRuntimeHours": 1}}
    await create_experiment(conn, "revenue-cuped", metric_type="mean", config=config)
    await create_experiment(conn, "revenue-partial", metric_type="mean", config=config)
    await send(conn, "revenue-cuped", covariate=True)
    await send(conn, "revenue-partial", covariate=lambda variant, i: not (variant == "variant-b" and i % 10 == 0))
    cuped = run_cli("check", "revenue-cuped", db_url=db_url)
    assert cuped.returncode == 0, cuped.stdout + cuped.stderr  # eligible
    assert re.search(
        r"CUPED on primary: variant-b \+[\d.]+% adjusted \(\+[\d.]+% without\), \d+% less variance", cuped.stdout
    )
    partial = run_cli("check", "revenue-partial", db_url=db_url)
    assert partial.returncode == 1 and "CUPED on" not in partial.stdout
    assert "note: metric primary: CUPED not applied — 400 of 8,000 units" in partial.stdout
