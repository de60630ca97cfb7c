"""Several metrics on the real database: a winner on conversion blocked by its revenue guardrail, promoted once the
guardrail is shown within its margin, and the metrics in check, promote and scan data, the history and the dashboard."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from tests.factories import create_experiment, record
from tests.integration.test_metrics_data import add_metric
from worker.config import load_config, load_settings
from worker.db.reads import Reads
from worker.engine import Engine
from worker.http.dashboard.views import experiment_page, metric_charts
from worker.http.models import CheckResult, PromoteResult, ScanResult

WINNER = {"control": (17_500, 1_750), "variant-b": (17_000, 1_904)}  # 10.0% vs 11.2%: about +12%


@pytest.fixture
def engine(pool: asyncpg.Pool) -> Engine:
    # A Slack target nobody listens on: the outbox gets its rows (nothing here dispatches them).
    settings = load_settings({"SLACK_WEBHOOK_URL": "http://127.0.0.1:9/slack-hook"})
    return Engine(pool, settings, load_config(env={}, overrides={}))


async def seed(conn: asyncpg.Connection, name: str, revenue_lift: float, *, margin: float = 0.02) -> None:
    """The conversion winner, and revenue per user (mean 10, sd 8) on its guardrail with the given true lift."""
    await create_experiment(conn, name, list(WINNER))
    await add_metric(conn, name, "revenue_per_user", "mean", role="guardrail", margin=margin)
    for variant, (n, conv) in WINNER.items():
        await record(conn, name, variant, n, conv)
        mean = 10.0 * (1 + (revenue_lift if variant != "control" else 0.0))
        await conn.execute(
            "SELECT ab_record_metric($1, $2, 'revenue_per_user', $3, $4, $5)",
            name,
            variant,
            n,
            n * mean,
            n * (64.0 + mean * mean),
        )


def _metric(data: dict[str, Any], name: str) -> dict[str, Any]:
    (m,) = [m for m in data["metrics"] if m["name"] == name]
    return m


async def test_a_winner_on_conversion_is_blocked_by_its_revenue_guardrail(
    engine: Engine, conn: asyncpg.Connection
) -> None:
    await seed(conn, "checkout", -0.04)
    data = await engine.check_promotion_eligibility("checkout")
    CheckResult.model_validate(data)  # the wire model the API answers with
    assert not data["eligible"]
    assert data["bestVariant"] == "variant-b" and data["improvement"] > 10
    (reason,) = [r for r in data["reasons"] if r.startswith("guardrail revenue_per_user")]
    assert reason.startswith("guardrail revenue_per_user: variant-b is -4.0% (lower bound -")
    assert reason.endswith("— not shown within the -2.0% margin")
    assert [m["name"] for m in data["metrics"]] == ["primary", "revenue_per_user"]
    guard = _metric(data, "revenue_per_user")
    assert (guard["role"], guard["kind"], guard["direction"], guard["margin"]) == (
        "guardrail",
        "mean",
        "increase",
        0.02,
    )
    assert guard["control"] == {"variant": "control", "units": 17_500, "mean": 10.0}
    (t,) = guard["treatments"]
    assert t["variant"] == "variant-b" and t["units"] == 17_000 and t["lift"] == pytest.approx(-4.0)
    assert t["verdict"] == "worse" and t["interval"][0] < -4.0 < t["interval"][1]
    assert _metric(data, "primary")["treatments"][0]["verdict"] == "better"

    result = await engine.promote_winner("checkout")
    PromoteResult.model_validate(result)
    assert not result["success"] and any(r.startswith("guardrail revenue_per_user") for r in result["reasons"])
    assert result["eligibility"]["metrics"] == data["metrics"]


async def test_a_guardrail_within_its_margin_lets_the_promotion_through(
    engine: Engine, conn: asyncpg.Connection
) -> None:
    await seed(conn, "checkout", 0.0, margin=0.05)
    data = await engine.check_promotion_eligibility("checkout")
    assert data["eligible"], data["reasons"]
    assert _metric(data, "revenue_per_user")["treatments"][0]["verdict"] == "non_inferior"
    result = await engine.promote_winner("checkout")
    assert result["success"] and result["promotedVariantName"] == "variant-b"
    payload = await conn.fetchval(
        "SELECT payload FROM notification_outbox WHERE event = 'promotion.promoted' ORDER BY id LIMIT 1"
    )
    (guard,) = payload["guardrails"]  # the notification lists the guardrail with its verdict
    assert (guard["name"], guard["variant"], guard["verdict"]) == ("revenue_per_user", "variant-b", "non_inferior")


async def test_scan_data_carries_the_metrics(engine: Engine, conn: asyncpg.Connection) -> None:
    await seed(conn, "checkout", -0.04)
    await create_experiment(conn, "plain", list(WINNER))
    for variant, (n, conv) in WINNER.items():
        await record(conn, "plain", variant, n, conv)
    scan = await engine.scan_and_promote_winners(dry_run=True)
    ScanResult.model_validate(scan)
    items = {i["experimentName"]: i for i in scan["results"]}
    assert [m["name"] for m in items["checkout"]["metrics"]] == ["primary", "revenue_per_user"]
    assert not items["checkout"]["eligible"]
    assert [m["name"] for m in items["plain"]["metrics"]] == ["primary"]  # no rows: its built-in metric only
    assert items["plain"]["eligible"]


async def test_the_history_keeps_each_metric_and_the_dashboard_charts_it(
    engine: Engine, conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await seed(conn, "checkout", -0.04)
    await engine.check_promotion_eligibility("checkout")  # a check stores the decision and a history snapshot
    names = {r["variant_name"] for r in await conn.fetch("SELECT variant_name FROM ab_evaluation_snapshots")}
    assert names == {"variant-b", "revenue_per_user\x1fvariant-b"}
    page = await Reads(pool).experiment_history("checkout", audit=10)
    assert page is not None
    assert {s.metric for s in page.snapshots} == {"primary", "revenue_per_user"}
    body = experiment_page(page, 95.0)
    assert [c["title"] for c in body["charts"]] == ["Lift of variant-b over control"]  # the built-in metric's only
    charts = metric_charts("checkout", page.experiment.decision, page.snapshots, 95.0)
    assert [c["metric"] for c in charts] == ["revenue_per_user"]
    assert [g["name"] for g in body["metrics"]] == ["primary", "revenue_per_user"]
