"""The scan's data is printed by ``autopromote scan --json`` as the engine builds it, without going through the API's
result model (worker/cli_engine.py): it must already be exactly what that model's dump is — the same keys in the same
order, the same types (an int stays an int, a float a float), nothing the model would refuse — for every kind of
result a scan gives: several metrics (a blocking guardrail, a ratio, a secondary, CUPED), the built-in metric alone, a
dry run, a promotion, the concurrency limit, an experiment whose statistics are impossible, and the covered path of
a scan that finds nothing changed."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from tests.factories import create_experiment, record
from tests.integration.test_metrics_data import add_metric
from tests.support.cli import run_cli
from worker.cli_json import dumps_indented
from worker.config import load_config, load_settings
from worker.engine import Engine
from worker.http.models import ScanResult

WINNER = {"control": (17_500, 1_750), "variant-b": (17_000, 1_904)}


def as_the_model_dumps(data: Any) -> str:
    """The data's JSON after the API's result model: what the command printed before it stopped checking."""
    return dumps_indented(ScanResult.model_validate(data).model_dump(mode="json", exclude_unset=True))


async def _seed(conn: asyncpg.Connection) -> None:
    # Several metrics: the conversion winner held back by its revenue guardrail; a ratio guardrail and a secondary.
    await create_experiment(conn, "checkout", list(WINNER))
    await add_metric(conn, "checkout", "revenue_per_user", "mean", role="guardrail", margin=0.02)
    await add_metric(conn, "checkout", "pages_per_session", "ratio", role="guardrail", margin=0.03)
    await add_metric(conn, "checkout", "retained", "proportion", role="secondary")
    for variant, (n, conv) in WINNER.items():
        await record(conn, "checkout", variant, n, conv, latencies=[120.0, 150.0, 180.0])
        mean = 10.0 * (0.96 if variant != "control" else 1.0)
        await conn.execute(
            "SELECT ab_record_metric($1, $2, 'revenue_per_user', $3, $4, $5)", "checkout", variant, n, n * mean,
            n * (64.0 + mean * mean),
        )  # fmt: skip
        await conn.execute(
            "SELECT ab_record_metric($1, $2, 'pages_per_session', $3, $4, $5, $6, $7, $8)", "checkout", variant, n,
            6.0 * n, 48.0 * n, 2.0 * n, 5.0 * n, 15.0 * n,
        )  # fmt: skip
        await conn.execute("SELECT ab_record_metric($1, $2, 'retained', $3, $4)", "checkout", variant, n, 0.4 * n)
    # The built-in metric alone: two winners (a dry run reports both; a real scan promotes one, then the limit).
    for name in ("plain", "plain-2"):
        await create_experiment(conn, name, list(WINNER))
        for variant, (n, conv) in WINNER.items():
            await record(conn, name, variant, n, conv)
    # A mean metric with CUPED covariates on every unit, three variants, one without data.
    await create_experiment(conn, "basket", ["control", "b", "c"], metric_type="mean")
    for variant, lift in (("control", 0.0), ("b", 0.01)):
        n = 4_000
        await conn.execute(
            "SELECT ab_record_metrics($1, $2, $3, 0, value_sum => $4, value_sum_sq => $5, pre_sum => $6,"
            " pre_sum_sq => $7, pre_value_product_sum => $8)",
            "basket",
            variant,
            n,
            n * 20.0 * (1 + lift),
            n * (400.0 + 25.0),
            n * 19.0,
            n * (361.0 + 25.0),
            n * (380.0 + 20.0),
        )
    # Too young, with too little data; and impossible statistics (more conversions than exposures).
    await create_experiment(conn, "young", ["control", "b"], started_hours_ago=1)
    await record(conn, "young", "control", 100, 10)
    await create_experiment(conn, "broken", list(WINNER))
    for variant, (n, conv) in WINNER.items():
        await record(conn, "broken", variant, n, conv)


async def _break(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "UPDATE ab_variant_stats s SET conversions = s.exposures + 5 FROM ab_experiments e "
        "WHERE e.id = s.experiment_id AND e.name = 'broken'"
    )


def _engine(pool: asyncpg.Pool, **overrides: Any) -> Engine:
    settings = load_settings({"SLACK_WEBHOOK_URL": "http://127.0.0.1:9/slack-hook"})
    return Engine(pool, settings, load_config(env={}, overrides=overrides))


def _assert_exact(data: Any) -> None:
    assert dumps_indented(data) == as_the_model_dumps(data)


async def test_every_kind_of_scan_result_is_already_the_models_dump(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await _seed(conn)
    engine = _engine(pool, maxConcurrentPromotions=1)
    first = await engine.scan_and_promote_winners(dry_run=True)  # folds the queue, stores every first decision
    await _break(conn)
    dry = await engine.scan_and_promote_winners(dry_run=True)
    again = await engine.scan_and_promote_winners(dry_run=True)  # nothing changed: the covered path
    real = await engine.scan_and_promote_winners()
    for data in (first, dry, again, real):
        _assert_exact(data)
    items = {i["experimentName"]: i for i in dry["results"]}
    assert [m["name"] for m in items["checkout"]["metrics"]] == [
        "primary",
        "revenue_per_user",
        "pages_per_session",
        "retained",
    ]
    assert not items["checkout"]["eligible"]
    assert items["plain"]["eligible"] and items["plain"]["dryRun"] is True
    assert "error" in items["broken"]
    basket = items["basket"]["metrics"][0]["treatments"]
    assert basket[0]["varianceReduction"] is not None and basket[1]["lift"] is None  # c has no data
    assert again["results"] == dry["results"]
    promoted = [i for i in real["results"] if i["promoted"]]
    limited = [i for i in real["results"] if any(r.startswith("concurrency limit") for r in i["reasons"])]
    assert len(promoted) == 1 and promoted[0]["promotionId"] and len(limited) == 1


async def test_the_command_prints_what_the_model_would(conn: asyncpg.Connection, db_url: str) -> None:
    await _seed(conn)
    for _ in range(2):  # the first scan stores the decisions; the second takes the covered path
        result = run_cli("scan", "--dry-run", "--json", db_url=db_url)
        assert result.returncode == 0, result.stderr
        assert result.stdout == as_the_model_dumps(json.loads(result.stdout)) + "\n"
        assert json.loads(result.stdout)["scanned"] == 6
