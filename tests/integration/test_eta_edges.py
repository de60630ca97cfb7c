"""The ETA where people read it: check --json and its text, the scan's table (not its JSON), the API's experiment
data and the dashboard's progress bar; on a real database."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from urllib.parse import quote

import aiohttp
import asyncpg
import pytest

from tests.browser.demo import AA, VIEWER_TOKEN, WINNER, make_context, seed_demo, serve
from tests.factories import create_experiment, record
from tests.support.api import serve_api
from tests.support.cli import run_cli
from worker.http.app import AppContext

ETA_KEYS = {"exposuresRemainingPerArm", "hoursRemaining", "interval80", "basis", "message"}


async def _running(conn: asyncpg.Connection) -> None:
    """A test 24 h old, 10,000 per arm, +3% (consistent with the +5% MDE: projected with the MDE)."""
    await create_experiment(conn, "slow-burn", ["control", "variant-b"], started_hours_ago=24)
    await record(conn, "slow-burn", "control", 10_000, 1_000)
    await record(conn, "slow-burn", "variant-b", 10_000, 1_030)


async def test_check_json_and_text_carry_the_eta(conn: asyncpg.Connection, db_url: str) -> None:
    await _running(conn)
    result = run_cli("check", "slow-burn", "--json", db_url=db_url)
    assert result.returncode == 1, result.stderr
    eta = json.loads(result.stdout)["eta"]
    assert ETA_KEYS <= set(eta) and eta["basis"] == "planned"
    lo, hi = eta["interval80"]
    assert 0 < lo <= eta["exposuresRemainingPerArm"] <= hi
    # 10,000 exposures per arm in 24 hours: the hours follow from that rate
    assert eta["hoursRemaining"] == pytest.approx(eta["exposuresRemainingPerArm"] * 24 / 10_000, rel=0.01)
    text = run_cli("check", "slow-burn", db_url=db_url).stdout
    assert "eta (planned): decision expected in" in text


async def test_the_scan_table_shows_the_eta_and_its_json_leaves_it_out(conn: asyncpg.Connection, db_url: str) -> None:
    await _running(conn)
    table = run_cli("scan", "--dry-run", db_url=db_url)
    assert table.returncode == 0, table.stderr
    assert "eta (days, 80%)" in table.stdout
    row = next(line for line in table.stdout.splitlines() if line.startswith("slow-burn"))
    assert re.search(r"\d+\.\d d \(\d+\.\d-(\d+\.\d|\?)\)", row), row
    data = json.loads(run_cli("scan", "--dry-run", "--json", db_url=db_url).stdout)
    assert all("eta" not in r for r in data["results"])


async def test_the_api_check_and_experiment_data_carry_the_eta(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    await _running(conn)
    async with serve_api(pool) as api:
        check = await api.post({"action": "check", "experimentName": "slow-burn"})
        assert check.status == 200 and ETA_KEYS <= set(check.body["data"]["eta"])
        assert (await api.get("/api/experiments/slow-burn")).body["data"]["experiment"]["eta"] is None  # no decision
        assert (await api.post({"action": "scan", "dryRun": True})).status == 200  # stores the last decisions
        detail = await api.get("/api/experiments/slow-burn")
        assert detail.status == 200
        eta = detail.body["data"]["experiment"]["eta"]
        assert eta is not None and eta["basis"] == "planned" and eta["asOf"]
        assert eta["exposuresRemainingPerArm"] == check.body["data"]["eta"]["exposuresRemainingPerArm"]


@pytest.fixture
async def demo(pool: asyncpg.Pool, conn: asyncpg.Connection) -> AsyncIterator[tuple[AppContext, str]]:
    ctx = make_context(pool)
    await seed_demo(conn, ctx.engine)
    async with serve(ctx) as base:
        yield ctx, base


async def test_the_dashboard_shows_a_progress_bar_with_the_time_left(demo: tuple[AppContext, str]) -> None:
    _, base = demo
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {VIEWER_TOKEN}"}) as s:
        async with s.get(base + "/") as r:
            overview = await r.text()
        async with s.get(base + "/experiments/" + quote(AA, safe="")) as r:
            page = await r.text()
    for body in (overview, page):
        assert "Decision expected:" in body
        assert re.search(r'<progress class="eta-progress" max="100" value="\d+"', body)
        assert "% of the expected exposures" in body  # in words too, not only the bar
    card = overview.split(f'data-experiment="{WINNER}"', 1)[1].split("</article>", 1)[0]
    assert "Decision expected:</strong> eligible now" in card
