"""The several-metrics views in a real headless Chromium: the metrics table (role, lift with its interval against
the margin, the verdict in words) and a metric's chart over time, at 1280 and 390 px."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from tests.browser.conftest import NARROW, WIDE, screenshot_path
from tests.browser.demo import make_context, serve
from tests.factories import create_experiment, record
from tests.integration.test_metrics_data import add_metric

pytestmark = pytest.mark.browser

NAME = "checkout-upsell"


async def test_metrics_table_and_metric_chart_at_both_widths(
    pool: asyncpg.Pool, conn: asyncpg.Connection, new_page: Any
) -> None:
    from playwright.async_api import expect

    ctx = make_context(pool)
    await create_experiment(conn, NAME, ["control", "variant-b"], started_hours_ago=24 * 10)
    await add_metric(conn, NAME, "revenue_per_user", "mean", role="guardrail", margin=0.02)
    done = {"control": 0, "variant-b": 0}
    for n in (2_000, 5_000, 9_000, 17_000):  # a few evaluations, so that the chart has points
        for variant, rate, mean in (("control", 0.10, 10.0), ("variant-b", 0.112, 9.6)):
            k = n - done[variant]
            await record(conn, NAME, variant, k, round(k * rate))
            await conn.execute(
                "SELECT ab_record_metric($1, $2, 'revenue_per_user', $3, $4, $5)",
                NAME,
                variant,
                k,
                k * mean,
                k * (64.0 + mean * mean),
            )
            done[variant] = n
        await ctx.engine.check_promotion_eligibility(NAME)
        await conn.execute("UPDATE ab_evaluation_snapshots SET created_at = created_at - interval '1 hour'")
    async with serve(ctx) as base:
        for width, viewport in (("1280", WIDE), ("390", NARROW)):
            page = await new_page(viewport)
            await page.goto(f"{base}/experiments/{NAME}")
            metrics = page.locator("section", has=page.locator("#metrics-h"))
            guard = metrics.locator("table.metrics", has_text="revenue_per_user")
            await expect(guard.locator("caption")).to_contain_text("guardrail")
            await expect(guard.locator("caption")).to_contain_text("margin -2.0%")
            await expect(guard.locator("tbody tr")).to_contain_text("-4.0%")
            await expect(guard.locator(".badge")).to_have_text("▼ worse")  # in words, not colour alone
            await expect(guard.locator("svg.ibar line.margin")).to_have_count(1)
            primary = metrics.locator("table.metrics", has_text="primary")
            await expect(primary.locator(".badge").first).to_have_text("▲ better")
            reasons = page.locator(".reasons")
            await expect(reasons).to_contain_text("guardrail revenue_per_user: variant-b is -4.0%")
            over_time = page.locator("section", has=page.locator("#metric-charts-h"))
            await expect(over_time.locator("details summary")).to_contain_text(
                "guardrail revenue_per_user: lift of variant-b (margin -2.0%)"
            )
            await expect(over_time.locator("svg.chart:visible")).to_have_count(1)
            sideways = await page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert sideways <= 0, f"the page scrolls sideways by {sideways}px at {width}px"
            await page.screenshot(path=str(screenshot_path(f"experiment-metrics-{width}")), full_page=True)
    assert new_page.errors == []
