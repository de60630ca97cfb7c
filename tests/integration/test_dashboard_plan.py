"""The dashboard's planner form (/plan): empty form, a plan beside its fixed-horizon twin, errors inline."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlencode

import aiohttp
import asyncpg
import pytest

from tests.browser.demo import VIEWER_TOKEN, make_context, serve
from worker.config import load_config
from worker.domain.planning import PlanRequest, plan_experiment


@pytest.fixture
async def base(pool: asyncpg.Pool) -> AsyncIterator[str]:
    async with serve(make_context(pool)) as url:
        yield url


async def _page(base: str, query: dict[str, str] | None = None, token: str | None = VIEWER_TOKEN) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(headers=headers) as s:
        async with s.get(base + "/plan" + ("?" + urlencode(query) if query else "")) as r:
            return r.status, await r.text()


async def test_the_empty_form_has_labelled_inputs_and_defaults(base: str) -> None:
    status, body = await _page(base)
    assert status == 200
    assert '<label for="plan-mde">' in body and 'name="alpha" value="0.05"' in body
    assert 'aria-current="page">Plan</a>' in body
    assert "The plan</h2>" not in body


async def test_a_filled_form_shows_the_plan_beside_the_fixed_horizon(base: str) -> None:
    query = {"metricType": "conversion", "baseline": "0.1", "mde": "10", "dailyExposures": "2000"}
    status, body = await _page(base, query)
    assert status == 200
    expected = plan_experiment(PlanRequest("conversion", 0.1, 10.0, daily_exposures=2000.0), load_config().config)
    assert f"{expected['exposuresPerArm']:,}" in body and f"{expected['fixedHorizonExposuresPerArm']:,}" in body
    assert "sequential (configured)" in body and "fixed horizon" in body and '<th scope="row">Days</th>' in body


async def test_bad_values_are_listed_and_kept_in_the_form(base: str) -> None:
    status, body = await _page(base, {"metricType": "mean", "baseline": "10", "mde": "5"})
    assert status == 400
    assert "Cannot plan with these values" in body and "sd is required for a mean metric" in body
    assert 'name="baseline" value="10"' in body
    status, body = await _page(base, {"metricType": "conversion", "baseline": "x", "mde": "5"})
    assert status == 400 and "baseline" in body


async def test_the_plan_page_needs_a_viewer(base: str) -> None:
    status, body = await _page(base, token=None)
    assert status == 401 and "sign-in" in body.lower()
