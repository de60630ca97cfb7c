"""The API's models: the document and the server agree on every request, and the response models carry the
engine's results through unchanged (every key and value), refusing a drift. The document alone (patterns, one
branch per action) is tested in tests/unit/test_api_models.py."""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import pytest
from pydantic import ValidationError

from tests.factories import create_experiment, record
from tests.support.api import AUTO, DOC, Api, make_context, schema_errors, seed_winner, serve_api
from worker.http.api import plain
from worker.http.models import action_response

UUID = "00000000-0000-0000-0000-000000000001"


def _as_python(pattern: str) -> re.Pattern[str]:
    # The document's \\uXXXX escapes read the same in Python's re.
    return re.compile(pattern)


# Requests at the edges of what the document allows; for each, the document and the server must agree.
AGREEMENT: list[dict[str, Any]] = [
    {"action": "scan", "dryRun": True},
    {"action": "scan", "experimentName": "homepage-cta-test"},
    {"action": "scan", "promotionId": UUID},
    {"action": "check", "experimentName": "homepage-cta-test", "reason": "why"},
    {"action": "check", "experimentName": "   "},
    {"action": "check", "experimentName": "\u3000"},
    {"action": "check", "experimentName": "a\x00b"},
    {"action": "check"},
    {"action": "promote", "experimentName": "homepage-cta-test", "dryRun": True, "config": {"dryRun": False}},
    {"action": "promote", "experimentName": "homepage-cta-test", "dryRun": True, "config": {"dryRun": True}},
    {"action": "rollback", "promotionId": UUID, "reason": "r", "experimentName": "x"},
    {"action": "rollback", "promotionId": UUID, "reason": "r", "dryRun": True},
    {"action": "rollback", "promotionId": UUID, "reason": "r", "dryRun": False},
    {"action": "rollback", "promotionId": UUID, "reason": "r", "config": {"dryRun": True}},
    {"action": "rollback", "promotionId": UUID, "reason": "\t"},
    {"action": "rollback", "promotionId": UUID, "reason": "r" * 2001},
    {"action": "rollback", "promotionId": "nope", "reason": "r"},
    {"action": "scan", "dryRun": True, "config": {"thresholds": {"minConfidence": 40}}},
    {"action": "scan", "dryRun": True, "config": {"thresholds": {"minSampleSize": 100.0}}},
    {"action": "scan", "dryRun": True, "config": {"thresholds": {"minSampleSize": 100.5}}},
    {"action": "scan", "config": {"maxConcurrentPromotions": 0}},
    {"action": "scan", "config": {"maxConcurrentPromotions": 0, "enabled": False}},
    {"action": "scan", "dryRun": True, "config": {"guard": {"guardHours": 0}}},
    {"action": "scan", "dryRun": True, "config": {"guard": {"guardHours": 0, "autoRollback": False}}},
    {"action": "scan", "dryRun": True, "config": {"notifications": {"channels": []}}},
    {"action": "scan", "dryRun": True, "config": {"notifications": {"channels": [], "enabled": False}}},
    {"action": "scan", "dryRun": True, "config": {"excludedExperiments": [" "]}},
    {"action": "scan", "dryRun": True, "config": {"excludedExperiments": ["home*"]}},
]


@pytest.mark.parametrize("body", AGREEMENT)
async def test_the_document_and_the_server_agree(
    pool: asyncpg.Pool, conn: asyncpg.Connection, body: dict[str, Any]
) -> None:
    await seed_winner(conn)
    documented = not schema_errors(
        body, DOC["paths"][AUTO]["post"]["requestBody"]["content"]["application/json"]["schema"], DOC
    )
    async with serve_api(pool) as api:
        reply = await api.post(body)
    accepted = reply.status != 400
    assert documented == accepted, (documented, reply.status, reply.body)


GET_AGREEMENT = [
    ("/api/audit", {"action": "\x00"}),
    ("/api/audit", {"experiment": "a\x00"}),
    ("/api/promotions", {"experiment": "x"}),
    ("/api/experiments/a%00b", {}),
]


@pytest.mark.parametrize(("path", "params"), GET_AGREEMENT)
async def test_query_strings_and_paths_agree(pool: asyncpg.Pool, path: str, params: dict[str, str]) -> None:
    async with serve_api(pool) as api:
        reply = await api.get(path, params=params)
    documented = "\x00" not in "".join(params.values()) and "%00" not in path
    assert (reply.status != 400) == documented, reply.body
    op = DOC["paths"]["/api/experiments/{name}" if "%" in path else path]["get"]
    for param in op["parameters"]:
        value = params.get(param["name"], "a\x00b" if param["in"] == "path" else None)
        if value is not None and param["schema"].get("type") == "string" and "enum" not in param["schema"]:
            assert bool(_as_python(param["schema"]["pattern"]).match(value)) is documented


# ------------------------------------------------------------------------------------------------ results
async def _engine_results(pool: asyncpg.Pool, conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """One POST body per kind of result, with the engine's data as the API would send it."""
    await seed_winner(conn)
    await seed_winner(conn, "checkout-flow")
    await create_experiment(conn, "mean-test", metric_type="mean")
    await conn.execute("SELECT ab_record_metrics($1, 'control', 10, 0, 0, NULL, 12.5, 40.0)", "mean-test")
    await create_experiment(conn, "thin-test")
    await record(conn, "thin-test", "control", 10, 1, latencies=[1.0, 2.5])
    ctx = make_context(pool)
    engine, dry = ctx.engine, {"enabled": True, "dryRun": True, "preset": "balanced"}
    summary = {"enabled": True, "dryRun": False, "preset": "balanced"}
    out: list[dict[str, Any]] = []
    for name in ("homepage-cta-test", "mean-test", "thin-test"):
        out.append(
            {
                "success": True,
                "action": "check",
                "config": summary,
                "data": await engine.check_promotion_eligibility(name),
            }
        )
    out.append(
        {"success": True, "action": "scan", "config": dry, "data": await engine.scan_and_promote_winners(dry_run=True)}
    )
    out.append(
        {
            "success": True,
            "action": "promote",
            "config": dry,
            "data": await engine.promote_winner("homepage-cta-test", dry_run=True),
        }
    )
    refused = await engine.promote_winner("thin-test")
    out.append({"success": refused["success"], "action": "promote", "config": summary, "data": refused})
    promoted = await engine.promote_winner("homepage-cta-test")
    out.append({"success": True, "action": "promote", "config": summary, "data": promoted})
    out.append({"success": True, "action": "scan", "config": summary, "data": await engine.scan_and_promote_winners()})
    out.append(
        {
            "success": True,
            "action": "rollback",
            "config": summary,
            "data": await engine.rollback_promotion(promoted["promotionId"], "regression", actor="alice"),
        }
    )
    return [plain(b) for b in out]


async def test_response_models_carry_every_key_and_value_unchanged(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    bodies = await _engine_results(pool, conn)
    assert {b["action"] for b in bodies} == {"check", "scan", "promote", "rollback"}
    assert any("valueSum" in v for b in bodies if b["action"] == "check" for v in b["data"]["variants"])
    for body in bodies:
        served = action_response(body)
        assert served == body, body["action"]
        assert not schema_errors(served, {"$ref": "#/components/schemas/ActionResponse"}, DOC)


async def test_response_models_refuse_a_drift(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    check = next(b for b in await _engine_results(pool, conn) if b["action"] == "check")
    with pytest.raises(ValidationError):
        action_response({**check, "data": {**check["data"], "errorRate": 0.1}})  # a key the engine does not send
    without = {k: v for k, v in check["data"].items() if k != "reasons"}
    with pytest.raises(ValidationError):
        action_response({**check, "data": without})
    with pytest.raises(ValidationError):
        action_response({**check, "action": "promote"})  # check data is not a promote result


async def test_the_api_answers_through_the_models(api_client: Api) -> None:
    reply = await api_client.post({"action": "check", "experimentName": "homepage-cta-test"})
    assert reply.status == 200 and reply.body["action"] == "check"
    assert action_response(reply.body) == reply.body


@pytest.fixture
async def api_client(pool: asyncpg.Pool, conn: asyncpg.Connection) -> Any:
    await seed_winner(conn)
    async with serve_api(pool) as api:
        yield api


@pytest.mark.parametrize("action", [[], {}, ["scan"], 1.5])
async def test_an_action_of_the_wrong_type_is_a_400(api_client: Api, action: Any) -> None:
    reply = await api_client.post({"action": action})
    assert reply.status == 400 and reply.error_paths() == ["action"], reply.body
