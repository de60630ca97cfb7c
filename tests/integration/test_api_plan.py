"""``GET /api/plan``: the planner over HTTP, the same answer as ``autopromote plan --json``, viewer role, 400s
that name the parameter. Every reply is checked against the OpenAPI document (tests/support/api.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.support.api import DOC, VIEWER_TOKEN, Api, serve_api
from worker.cli import main

QUERY = {"metricType": "conversion", "baseline": "0.1", "mde": "10", "dailyExposures": "2000", "treatments": "2"}


@pytest.fixture
async def api(pool: asyncpg.Pool) -> AsyncIterator[Api]:
    async with serve_api(pool) as client:
        yield client


async def test_plan_answers_what_the_cli_prints(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    reply = await api.get("/api/plan", params=QUERY)
    assert reply.status == 200 and reply.body["success"] is True
    argv = ["plan", "--metric-type", "conversion", "--baseline", "0.1", "--mde", "10", "--daily-exposures", "2000"]
    assert main([*argv, "--treatments", "2", "--json"]) == 0
    assert reply.body["data"] == json.loads(capsys.readouterr().out)
    data = reply.body["data"]
    assert {
        "exposuresPerArm",
        "fixedHorizonExposuresPerArm",
        "days",
        "fixedHorizonDays",
        "method",
        "assumptions",
    } <= set(data)
    assert data["assumptions"]["alphaPerComparison"] == pytest.approx(0.025)


async def test_plan_needs_a_token_and_the_viewer_role_is_enough(api: Api) -> None:
    assert (await api.get("/api/plan", params=QUERY, token=None)).status == 401
    assert (await api.get("/api/plan", params=QUERY, token=VIEWER_TOKEN)).status == 200


async def test_plan_follows_a_preset_and_the_server_config(pool: asyncpg.Pool) -> None:
    async with serve_api(pool, config={"method": "fixed"}) as client:
        reply = await client.get("/api/plan", params=QUERY)
    assert reply.body["data"]["method"] == "fixed"
    assert reply.body["data"]["exposuresPerArm"] == reply.body["data"]["fixedHorizonExposuresPerArm"]


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({**QUERY, "baseline": "1.5"}, "query.baseline"),
        ({**QUERY, "metricType": "mean"}, "query.sd"),
        ({**QUERY, "baseline": "0.9", "mde": "20"}, "query.mde"),
        ({**QUERY, "mde": "-1"}, "query.mde"),
        ({**QUERY, "power": "nan"}, "query.power"),
        ({**QUERY, "colour": "red"}, "query.colour"),
    ],
)
async def test_bad_parameters_are_400_naming_the_parameter(api: Api, params: dict[str, str], path: str) -> None:
    reply = await api.get("/api/plan", params=params)
    assert reply.status == 400 and reply.error["code"] == "invalid_request"
    assert path in reply.error_paths(), reply.body


def test_the_document_states_the_rules_a_parameter_list_cannot() -> None:
    description = DOC["paths"]["/api/plan"]["get"]["description"]
    assert "sd" in description and "below 1" in description
