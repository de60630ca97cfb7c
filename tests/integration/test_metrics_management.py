"""Managing an experiment's metrics: `autopromote metrics add|list|remove` and /api/experiments/{name}/metrics,
with roles, the audit log, and errors that say what to fix. Every API response is checked against the OpenAPI
document by the test client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tests.factories import create_experiment, record
from tests.support.api import OPERATOR_TOKEN, VIEWER_TOKEN, Api, serve_api
from tests.support.cli import run_cli
from worker.db.fold import fold_pending_updates

METRICS = "/api/experiments/checkout/metrics"
REVENUE = {
    "name": "revenue_per_user",
    "kind": "ratio",
    "role": "guardrail",
    "direction": "increase",
    "margin": 0.02,
    "description": "revenue per session, users as units",
}


@pytest.fixture
async def api(pool: asyncpg.Pool, conn: asyncpg.Connection) -> AsyncIterator[Api]:
    await create_experiment(conn, "checkout", ["control", "variant-b"])
    async with serve_api(pool) as client:
        yield client


async def audit_rows(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT actor, action, experiment_name, details FROM ab_promotion_audit_log"
            " WHERE action LIKE 'metric_%' ORDER BY id"
        )
    )


# ------------------------------------------------------------------------------------------------ API


async def test_an_operator_adds_lists_and_removes_a_metric_and_each_change_is_audited(
    api: Api, conn: asyncpg.Connection
) -> None:
    added = await api.request("POST", METRICS, json_body=REVENUE)
    assert added.status == 201, added.body
    metric = added.body["data"]["metric"]
    assert {k: metric[k] for k in REVENUE} == REVENUE
    assert metric["builtin"] is False and metric["cuped"] == "auto" and metric["units"] == {}
    row = await conn.fetchrow("SELECT kind, role, margin FROM ab_metrics WHERE name = 'revenue_per_user'")
    assert (row["kind"], row["role"], row["margin"]) == ("ratio", "guardrail", 0.02)

    await conn.execute("SELECT ab_record_metric('checkout', 'variant-b', 'revenue_per_user', 2, 10, 100, 4, 10, 30)")
    await record(conn, "checkout", "control", 50, 5)
    await fold_pending_updates(conn)
    listed = await api.get(METRICS)
    assert listed.status == 200
    data = listed.body["data"]
    assert data["experimentName"] == "checkout" and data["metricType"] == "conversion"
    builtin, revenue = data["metrics"]
    assert builtin["name"] == "primary" and builtin["builtin"] is True and builtin["kind"] == "proportion"
    assert builtin["role"] == "primary" and builtin["units"] == {"control": 50, "variant-b": 0}
    assert revenue["name"] == "revenue_per_user" and revenue["units"] == {"variant-b": 2}

    removed = await api.request("DELETE", METRICS + "/revenue_per_user")
    assert removed.status == 200 and removed.body["data"]["metric"]["name"] == "revenue_per_user"
    assert await conn.fetchval("SELECT count(*) FROM ab_metrics") == 0
    assert await conn.fetchval("SELECT count(*) FROM ab_metric_stats") == 0

    audit = await audit_rows(conn)
    assert [(a["actor"], a["action"], a["experiment_name"]) for a in audit] == [
        ("ops-bot", "metric_added", "checkout"),
        ("ops-bot", "metric_removed", "checkout"),
    ]
    assert audit[0]["details"] == {
        **{k: v for k, v in REVENUE.items() if k != "name"},
        "metric": "revenue_per_user",
        "cuped": "auto",
    }


async def test_the_primary_row_changes_the_built_in_metric(api: Api, conn: asyncpg.Connection) -> None:
    # No kind needed: it is the built-in one; the role defaults to primary for it (secondary for any other).
    added = await api.request("POST", METRICS, json_body={"name": "primary", "margin": 0.01, "direction": "increase"})
    assert added.status == 201, added.body
    assert added.body["data"]["metric"]["builtin"] is True
    assert (
        await conn.fetchval("SELECT kind || '/' || role FROM ab_metrics WHERE name = 'primary'") == "proportion/primary"
    )
    other = await api.request("POST", METRICS, json_body={"name": "basket", "kind": "mean"})
    assert other.body["data"]["metric"]["role"] == "secondary"
    listed = (await api.get(METRICS)).body["data"]["metrics"]
    assert [(m["name"], m["builtin"], m["margin"]) for m in listed] == [("primary", True, 0.01), ("basket", False, 0.0)]
    again = await api.request("POST", METRICS, json_body={"name": "primary"})
    assert again.status == 409 and again.error["code"] == "metric_exists"
    await api.request("DELETE", METRICS + "/primary")
    mismatch = await api.request("POST", METRICS, json_body={"name": "primary", "kind": "mean"})
    assert mismatch.status == 400 and mismatch.error["code"] == "invalid_request"
    assert "so its kind is proportion, not mean" in mismatch.error["message"]
    assert "give it kind proportion" in mismatch.error["details"]["hint"]
    assert mismatch.error_paths() == ["kind"]


@pytest.mark.parametrize(
    ("body", "path", "words"),
    [
        ({**REVENUE, "kind": "median"}, "kind", "proportion"),
        ({**REVENUE, "role": "boss"}, "role", "guardrail"),
        ({**REVENUE, "margin": 1.5}, "margin", "less than 1"),
        ({**REVENUE, "margin": -0.1}, "margin", "greater than or equal to 0"),
        ({**REVENUE, "name": "bad name"}, "name", "letters, digits"),
        ({**REVENUE, "colour": "red"}, "colour", "unknown field"),
        ({k: v for k, v in REVENUE.items() if k != "name"}, "name", "required"),
    ],
)
async def test_a_bad_definition_is_a_400_naming_the_field_and_writes_nothing(
    api: Api, conn: asyncpg.Connection, body: dict[str, Any], path: str, words: str
) -> None:
    reply = await api.request("POST", METRICS, json_body=body)
    assert reply.status == 400 and reply.error["code"] == "invalid_request"
    assert reply.error_paths() == [path]
    assert words in json.dumps(reply.error["details"]["errors"])
    assert await conn.fetchval("SELECT count(*) FROM ab_metrics") == 0
    assert await audit_rows(conn) == []


async def test_a_metric_without_a_kind_is_refused_with_a_hint(api: Api, conn: asyncpg.Connection) -> None:
    reply = await api.request("POST", METRICS, json_body={"name": "basket"})
    assert reply.status == 400 and reply.error_paths() == ["kind"]
    assert "proportion" in reply.error["details"]["hint"]
    assert await conn.fetchval("SELECT count(*) FROM ab_metrics") == 0


async def test_unknown_names_and_duplicates_are_answered_with_their_codes(api: Api, conn: asyncpg.Connection) -> None:
    assert (await api.request("POST", METRICS, json_body=REVENUE)).status == 201
    dup = await api.request("POST", METRICS, json_body=REVENUE)
    assert (
        dup.status == 409 and dup.error["code"] == "metric_exists" and "remove it first" in dup.error["details"]["hint"]
    )
    nope = await api.request("POST", "/api/experiments/nope/metrics", json_body=REVENUE)
    assert nope.status == 404 and nope.error["code"] == "experiment_not_found"
    assert (await api.get("/api/experiments/nope/metrics")).error["code"] == "experiment_not_found"
    gone = await api.request("DELETE", METRICS + "/basket")
    assert gone.status == 404 and gone.error["code"] == "metric_not_found"
    assert "revenue_per_user" in gone.error["details"]["hint"]
    assert [a["action"] for a in await audit_rows(conn)] == ["metric_added"]


async def test_changes_need_the_operator_role_and_reads_the_viewer_role(api: Api, conn: asyncpg.Connection) -> None:
    assert (await api.get(METRICS, token=VIEWER_TOKEN)).status == 200
    assert (await api.get(METRICS, token=None)).status == 401
    for token, status in ((None, 401), (VIEWER_TOKEN, 403)):
        add = await api.request("POST", METRICS, json_body=REVENUE, token=token)
        assert add.status == status
        remove = await api.request("DELETE", METRICS + "/revenue_per_user", token=token)
        assert remove.status == status
    assert await conn.fetchval("SELECT count(*) FROM ab_metrics") == 0
    assert await audit_rows(conn) == []
    assert (await api.request("POST", METRICS, json_body=REVENUE, token=OPERATOR_TOKEN)).status == 201


# ------------------------------------------------------------------------------------------------ CLI


async def test_the_cli_adds_lists_and_removes_metrics(conn: asyncpg.Connection, db_url: str) -> None:
    await create_experiment(conn, "checkout", ["control", "variant-b"])
    added = run_cli(
        "metrics",
        "add",
        "checkout",
        "revenue_per_user",
        "--kind",
        "ratio",
        "--role",
        "guardrail",
        "--direction",
        "increase",
        "--margin",
        "0.02",
        "--description",
        "revenue per session",
        db_url=db_url,
    )
    assert added.returncode == 0, added.stderr
    assert "added guardrail revenue_per_user (ratio, higher is better, margin 2.00%) to checkout" in added.stdout
    assert "ab_record_metric('checkout'" in added.stdout
    as_json = run_cli("metrics", "add", "checkout", "basket", "--kind", "mean", "--json", db_url=db_url)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["metric"]["role"] == "secondary"

    listed = run_cli("metrics", "list", "checkout", db_url=db_url)
    assert listed.returncode == 0, listed.stderr
    assert "primary (built-in)" in listed.stdout and "revenue_per_user" in listed.stdout and "2.00%" in listed.stdout
    data = json.loads(run_cli("metrics", "list", "checkout", "--json", db_url=db_url).stdout)
    assert [m["name"] for m in data["metrics"]] == ["primary", "revenue_per_user", "basket"]

    removed = run_cli("metrics", "remove", "checkout", "basket", db_url=db_url)
    assert removed.returncode == 0, removed.stderr
    assert "removed secondary basket" in removed.stdout
    audit = await audit_rows(conn)
    assert [(a["actor"], a["action"]) for a in audit] == [
        ("cli", "metric_added"),
        ("cli", "metric_added"),
        ("cli", "metric_removed"),
    ]


async def test_the_cli_says_what_is_wrong_with_exit_codes_as_the_other_commands(
    conn: asyncpg.Connection, db_url: str
) -> None:
    await create_experiment(conn, "checkout", ["control", "variant-b"])
    assert run_cli("metrics", "add", "checkout", "rps", "--kind", "ratio", db_url=db_url).returncode == 0
    cases = [
        (("add", "nope", "rps", "--kind", "ratio"), 2, "no experiment named 'nope'"),
        (("add", "checkout", "rps", "--kind", "ratio"), 1, "already has a metric named 'rps'"),
        (("add", "checkout", "m", "--kind", "mean", "--margin", "1.5"), 2, "margin 1.5, outside [0, 1)"),
        (("add", "checkout", "bad name", "--kind", "mean"), 2, "invalid metric name"),
        (("add", "checkout", "m"), 2, "needs a kind"),
        (("add", "checkout", "primary", "--kind", "mean"), 2, "its kind is proportion, not mean"),
        (("add", "checkout", "m", "--kind", "median"), 2, "invalid choice"),
        (("remove", "checkout", "nope"), 2, "has no metric named 'nope'"),
        (("list", "nope"), 2, "no experiment named 'nope'"),
    ]
    for args, code, message in cases:
        out = run_cli("metrics", *args, db_url=db_url)
        assert out.returncode == code, (args, out.returncode, out.stderr)
        assert message in out.stderr, (args, out.stderr)
        if code != 2 or args[-1] != "median":
            assert "hint:" in out.stderr or "invalid choice" in out.stderr, (args, out.stderr)
    assert await conn.fetchval("SELECT count(*) FROM ab_metrics") == 1
