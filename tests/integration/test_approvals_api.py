"""Approvals through the API (every answer checked against the OpenAPI document) and the CLI."""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest

from tests.support.api import VIEWER_TOKEN, seed_winner, serve_api
from tests.support.cli import run_cli

NAME = "homepage-cta-test"
APPROVALS = {"approval": {"require": "promote"}}


async def test_list_approve_and_decline_through_the_api(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    await seed_winner(conn)
    await seed_winner(conn, "pricing-page")
    async with serve_api(pool, config=APPROVALS) as api:
        assert (await api.get("/api/approvals")).body["data"]["approvals"] == []
        first = await api.post({"action": "promote", "experimentName": NAME})
        assert first.status == 200 and first.body["success"] is False
        approval_id = first.body["data"]["approvalId"]
        second_id = (await api.post({"action": "promote", "experimentName": "pricing-page"})).body["data"]["approvalId"]

        listed = await api.get("/api/approvals")
        assert listed.status == 200 and listed.body["data"]["total"] == 2
        by_id = {a["approvalId"]: a for a in listed.body["data"]["approvals"]}
        item = by_id[approval_id]
        assert (item["experimentName"], item["kind"], item["status"], item["variant"]) == (
            NAME,
            "promote",
            "pending",
            "variant-b",
        )
        assert item["requestedBy"] == "ops-bot" and item["decision"]["eligible"] is True
        assert item["requestedAt"] < item["expiresAt"]
        only = await api.get("/api/approvals", params={"experiment": "pricing-page"})
        assert [a["approvalId"] for a in only.body["data"]["approvals"]] == [second_id]

        # A viewer may look, not decide.
        denied = await api.post({"action": "approve", "approvalId": approval_id}, token=VIEWER_TOKEN)
        assert denied.status == 403
        missing_reason = await api.post({"action": "decline", "approvalId": approval_id})
        assert missing_reason.status == 400 and "reason" in missing_reason.error_paths()
        bad_id = await api.post({"action": "approve", "approvalId": "not-a-uuid"})
        assert bad_id.status == 400 and "approvalId" in bad_id.error_paths()
        stray = await api.post({"action": "approve", "approvalId": approval_id, "experimentName": NAME})
        assert stray.status == 400
        unknown = await api.post({"action": "approve", "approvalId": str(uuid.uuid4())})
        assert unknown.status == 404 and unknown.error["code"] == "approval_not_found"

        approved = await api.post({"action": "approve", "approvalId": approval_id})
        assert approved.status == 200 and approved.body["success"] is True
        data = approved.body["data"]
        assert data["status"] == "approved" and data["decidedBy"] == "ops-bot"
        assert data["promotion"]["promotedVariantName"] == "variant-b" and data["promotion"]["promotionId"]
        declined = await api.post({"action": "decline", "approvalId": second_id, "reason": "pricing freeze"})
        assert declined.status == 200 and declined.body["data"]["status"] == "declined"
        again = await api.post({"action": "decline", "approvalId": approval_id, "reason": "too late"})
        assert again.status == 409 and again.error["code"] == "approval_not_pending"
        assert again.error["details"]["status"] == "approved"

        assert (await api.get("/api/approvals")).body["data"]["approvals"] == []
        every = await api.get("/api/approvals", params={"status": "all"})
        assert {a["status"] for a in every.body["data"]["approvals"]} == {"approved", "declined"}
        assert (await api.get("/api/approvals", params={"status": "maybe"})).status == 400
        audit = await api.get("/api/audit", params={"action": "approval_approved"})
        assert audit.body["data"]["entries"][0]["actor"] == "ops-bot"


async def test_approve_of_what_stopped_being_eligible_is_200_with_success_false(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await seed_winner(conn)
    async with serve_api(pool, config=APPROVALS) as api:
        approval_id = (await api.post({"action": "promote", "experimentName": NAME})).body["data"]["approvalId"]
        await conn.execute("SELECT ab_raise_alert($1, 'critical', 'payments down')", NAME)
        closed = await api.post({"action": "approve", "approvalId": approval_id})
        assert closed.status == 200 and closed.body["success"] is False
        assert closed.body["data"]["status"] == "closed" and "critical" in closed.body["data"]["reason"].lower()
    assert await conn.fetchval("SELECT count(*) FROM experiment_promotions") == 0


@pytest.mark.slow  # seven fresh interpreters
async def test_cli_lists_approves_and_declines(conn: asyncpg.Connection, db_url: str) -> None:
    await seed_winner(conn)
    await seed_winner(conn, "pricing-page")
    env = {"AUTO_PROMOTION_REQUIRE_APPROVAL": "promote"}
    asked = run_cli("promote", NAME, "--json", db_url=db_url, env=env)
    assert asked.returncode == 1, asked.stderr  # not promoted (yet)
    approval_id = json.loads(asked.stdout)["approvalId"]
    run_cli("promote", "pricing-page", db_url=db_url, env=env)

    table = run_cli("approvals", db_url=db_url, env=env)
    assert table.returncode == 0, table.stderr
    assert approval_id in table.stdout and "pricing-page" in table.stdout and "pending" in table.stdout
    listed = json.loads(run_cli("approvals", "--json", db_url=db_url, env=env).stdout)
    assert listed["total"] == 2 and {a["experimentName"] for a in listed["approvals"]} == {NAME, "pricing-page"}
    other_id = next(a["approvalId"] for a in listed["approvals"] if a["experimentName"] == "pricing-page")

    no_reason = run_cli("decline", other_id, "--reason", " ", db_url=db_url, env=env)
    assert no_reason.returncode == 2 and "reason" in no_reason.stderr
    declined = run_cli("decline", other_id, "--reason", "pricing freeze", "--actor", "bob", db_url=db_url, env=env)
    assert declined.returncode == 0, declined.stderr
    assert f"declined approval {other_id}" in declined.stdout
    approved = run_cli("approve", approval_id, "--actor", "alice", "--json", db_url=db_url, env=env)
    assert approved.returncode == 0, approved.stderr
    data = json.loads(approved.stdout)
    assert data["status"] == "approved" and data["promotion"]["promotedVariantName"] == "variant-b"
    twice = run_cli("approve", approval_id, db_url=db_url, env=env)
    assert twice.returncode == 1 and "not pending: approved" in twice.stderr
    unknown = run_cli("approve", str(uuid.uuid4()), db_url=db_url, env=env)
    assert unknown.returncode == 2 and "no approval with id" in unknown.stderr
    assert "no pending approvals" in run_cli("approvals", db_url=db_url, env=env).stdout
    assert await conn.fetchval("SELECT promoted_by FROM experiment_promotions") == "alice"
    for r in (asked, table, declined, approved, twice, unknown):
        assert "Traceback" not in r.stderr


async def test_the_dashboard_lists_pending_approvals_with_their_buttons(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await seed_winner(conn, "<b>cta</b>")
    async with serve_api(pool, config=APPROVALS, full_app=True) as api:
        approval_id = (await api.post({"action": "promote", "experimentName": "<b>cta</b>"})).body["data"]["approvalId"]
        headers = {"Authorization": f"Bearer {VIEWER_TOKEN}", "Accept": "text/html"}
        async with api.client.get("/promotions", headers=headers) as resp:
            assert resp.status == 200
            page = await resp.text()
        assert "Pending approvals (1)" in page
        assert (
            f'data-action="approve" data-experiment="&lt;b&gt;cta&lt;/b&gt;" data-approval-id="{approval_id}"' in page
        )
        assert (
            f'data-action="decline" data-experiment="&lt;b&gt;cta&lt;/b&gt;" data-approval-id="{approval_id}"' in page
        )
        assert "<b>cta</b>" not in page  # escaped everywhere
        await api.post({"action": "decline", "approvalId": approval_id, "reason": "later"})
        async with api.client.get("/fragments/promotions", headers=headers) as resp:
            fragment = await resp.text()
        assert "Pending approvals (0)" in fragment and "No approvals pending." in fragment
