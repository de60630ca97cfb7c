"""Slack buttons end to end on 127.0.0.1: the dispatcher posts the approval request to a local Slack stand-in, the
test clicks its button as Slack would (a request signed with the signing secret, computed here: v0 HMAC-SHA256 of
``v0:{timestamp}:{body}``), the server acts through the locked transaction and replaces the message through the
interaction's response_url (the stand-in again). Bad, stale, replayed and unknown-user requests change nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import anyio
import asyncpg
import pytest

from tests.fakes import FakeHTTPReceiver
from tests.support.api import Api, seed_winner, serve_api
from worker.http.app import CTX
from worker.notify import Dispatcher

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
APPROVER = "U0APPROVER1"
STRANGER = "U0STRANGER9"
HOOK = "/services/T0000/B0000/SLACKHOOK"
RESPONSE = "/actions/T0000/1234/RESPONSEURL"
NAME = "homepage-cta-test"


@pytest.fixture
async def receiver() -> AsyncIterator[FakeHTTPReceiver]:
    async with FakeHTTPReceiver() as r:
        yield r


def _env(receiver: FakeHTTPReceiver, **extra: str) -> dict[str, str]:
    return {
        "SLACK_WEBHOOK_URL": receiver.url(HOOK),
        "SLACK_SIGNING_SECRET": SECRET,
        "AUTO_PROMOTION_SLACK_APPROVERS": f"U0OTHER000,{APPROVER}",
        "AUTO_PROMOTION_NOTIFY_RATE": "1000",
        **extra,
    }


def sign(body: str, *, timestamp: int | None = None, secret: str = SECRET) -> dict[str, str]:
    """The headers Slack sends with ``body``."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": f"v0={digest}",
        "Content-Type": "application/x-www-form-urlencoded",
    }


def click_body(message: dict[str, Any], action_id: str, *, user: str, response_url: str) -> str:
    """The form body of a click on the button ``action_id`` of ``message`` (as the webhook posted it)."""
    [actions] = [b for b in message["blocks"] if b["type"] == "actions"]
    [button] = [e for e in actions["elements"] if e["action_id"] == action_id]
    payload = {
        "type": "block_actions",
        "user": {"id": user, "username": "alice", "team_id": "T0000"},
        "api_app_id": "A0000",
        "container": {"type": "message", "message_ts": "1700000000.000100"},
        "trigger_id": "1234.5678.abcd",
        "response_url": response_url,
        "message": {"type": "message", "text": message["text"], "blocks": message["blocks"]},
        "actions": [
            {
                "type": "button",
                "action_id": button["action_id"],
                "block_id": actions["block_id"],
                "value": button["value"],
                "action_ts": "1700000001.000200",
            }
        ],
    }
    return urlencode({"payload": json.dumps(payload)})


async def post_click(api: Api, body: str, headers: dict[str, str]) -> tuple[int, Any]:
    async with api.client.post("/api/slack/interactions", data=body.encode(), headers=headers) as resp:
        return resp.status, await resp.json()


async def deliver(pool: asyncpg.Pool, api: Api, receiver: FakeHTTPReceiver, count: int) -> list[dict[str, Any]]:
    """Run the dispatcher until the Slack stand-in has ``count`` messages; their bodies."""
    dispatcher = Dispatcher(pool, api.app[CTX].settings)
    deadline = time.monotonic() + 15
    while len(receiver.received(HOOK)) < count:
        await dispatcher.dispatch_once()
        assert time.monotonic() < deadline, "the Slack stand-in got no message"
    return [r.json() for r in receiver.received(HOOK)]


async def _state(conn: asyncpg.Connection) -> tuple[str, int, str]:
    status = await conn.fetchval("SELECT status FROM ab_approvals")
    promotions = await conn.fetchval("SELECT count(*) FROM experiment_promotions")
    experiment = await conn.fetchval("SELECT status FROM ab_experiments")
    return status, promotions, experiment


async def test_approve_button_promotes_and_replaces_the_message(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: FakeHTTPReceiver
) -> None:
    await seed_winner(conn)
    async with serve_api(pool, _env(receiver), {"approval": {"require": "promote"}}) as api:
        reply = await api.post({"action": "promote", "experimentName": NAME})
        approval_id = reply.body["data"]["approvalId"]
        [message] = await deliver(pool, api, receiver, 1)
        # The approval request carries Approve and Decline buttons with the approval id.
        [actions] = [b for b in message["blocks"] if b["type"] == "actions"]
        assert [(e["action_id"], e["value"]) for e in actions["elements"]] == [
            ("approval.approve", approval_id),
            ("approval.decline", approval_id),
        ]
        body = click_body(message, "approval.approve", user=APPROVER, response_url=receiver.url(RESPONSE))
        headers = sign(body)
        status, answer = await post_click(api, body, headers)
        assert status == 200, answer
        assert await _state(conn) == ("approved", 1, "promoted")
        promotion_id = await conn.fetchval("SELECT id::text FROM experiment_promotions")
        assert await conn.fetchval("SELECT promoted_by FROM experiment_promotions") == f"slack:{APPROVER} (alice)"
        assert await conn.fetchval("SELECT decided_by FROM ab_approvals") == f"slack:{APPROVER} (alice)"
        # The message is replaced with the outcome, its buttons gone.
        [replaced] = await receiver.wait_for(1, RESPONSE)
        out = replaced.json()
        assert out["replace_original"] is True
        assert out["text"].startswith(f":white_check_mark: Approved by <@{APPROVER}>: promoted variant-b")
        assert promotion_id in out["text"]
        assert not [b for b in out["blocks"] if b["type"] == "actions"]
        assert out["blocks"][0] == message["blocks"][0]  # the original message, then the outcome
        # The same request again (a replay within the five minutes): refused, nothing done twice.
        status, answer = await post_click(api, body, headers)
        assert status == 401 and "replayed" in answer["error"]["message"]
        assert await conn.fetchval("SELECT count(*) FROM experiment_promotions") == 1
        assert len(receiver.received(RESPONSE)) == 1
        # The promotion's own message now carries a Roll back button; clicking it rolls back.
        messages = await deliver(pool, api, receiver, 2)
        promoted = messages[1]
        assert "Promoted" in promoted["text"]
        rollback = click_body(promoted, "promotion.rollback", user=APPROVER, response_url=receiver.url(RESPONSE))
        status, answer = await post_click(api, rollback, sign(rollback))
        assert status == 200, answer
        assert await conn.fetchval("SELECT rolled_back_by FROM experiment_promotions") == f"slack:{APPROVER} (alice)"
        assert await conn.fetchval("SELECT status FROM ab_experiments") == "rolled_back"
        replies = await receiver.wait_for(2, RESPONSE)
        assert replies[1].json()["text"].startswith(f":rewind: Rolled back by <@{APPROVER}>")
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM ab_slack_interactions WHERE slack_user = $1 AND outcome IS NOT NULL", APPROVER
            )
            == 2
        )


async def test_decline_button_declines(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: FakeHTTPReceiver
) -> None:
    await seed_winner(conn)
    async with serve_api(pool, _env(receiver), {"approval": {"require": "promote"}}) as api:
        await api.post({"action": "promote", "experimentName": NAME})
        [message] = await deliver(pool, api, receiver, 1)
        body = click_body(message, "approval.decline", user=APPROVER, response_url=receiver.url(RESPONSE))
        status, _ = await post_click(api, body, sign(body))
        assert status == 200
        assert await _state(conn) == ("declined", 0, "running")
        assert (
            await conn.fetchval("SELECT reason FROM ab_approvals") == f"declined in Slack by slack:{APPROVER} (alice)"
        )
        [replaced] = await receiver.wait_for(1, RESPONSE)
        assert replaced.json()["text"].startswith(f":x: Declined by <@{APPROVER}>")
        # Approving it afterwards (say, from an older copy of the message) changes nothing, and says why.
        again = click_body(message, "approval.approve", user=APPROVER, response_url=receiver.url(RESPONSE))
        status, _ = await post_click(api, again, sign(again))
        assert status == 200
        assert await _state(conn) == ("declined", 0, "running")
        replies = await receiver.wait_for(2, RESPONSE)
        assert replies[1].json()["text"].startswith(":warning: Nothing changed")
        assert "not pending: declined" in replies[1].json()["text"]


async def test_unsigned_bad_stale_and_unknown_user_requests_change_nothing(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: FakeHTTPReceiver
) -> None:
    await seed_winner(conn)
    async with serve_api(pool, _env(receiver), {"approval": {"require": "promote"}}) as api:
        await api.post({"action": "promote", "experimentName": NAME})
        [message] = await deliver(pool, api, receiver, 1)
        body = click_body(message, "approval.approve", user=APPROVER, response_url=receiver.url(RESPONSE))
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        cases: list[tuple[str, str, dict[str, str], int, str]] = [
            ("unsigned", body, form, 401, "unsigned"),
            ("wrong secret", body, sign(body, secret="not-the-secret"), 401, "does not match"),
            ("stale", body, sign(body, timestamp=int(time.time()) - 301), 401, "stale"),
            ("from the future", body, sign(body, timestamp=int(time.time()) + 301), 401, "stale"),
            ("body changed after signing", body.replace("approve", "decline"), sign(body), 401, "does not match"),
            ("bad timestamp", body, {**sign(body), "X-Slack-Request-Timestamp": "soon"}, 401, "Unix time"),
        ]
        stranger = click_body(message, "approval.approve", user=STRANGER, response_url=receiver.url(RESPONSE))
        cases.append(("unknown user", stranger, sign(stranger), 403, "AUTO_PROMOTION_SLACK_APPROVERS"))
        for label, sent, headers, expected, words in cases:
            status, answer = await post_click(api, sent, headers)
            assert status == expected, (label, answer)
            assert words in answer["error"]["message"], (label, answer)
        assert await _state(conn) == ("pending", 0, "running")
        assert await conn.fetchval("SELECT count(*) FROM ab_slack_interactions") == 0
        assert receiver.received(RESPONSE) == []
        # A signed body that is not one of our buttons: 400, nothing done.
        other = urlencode({"payload": json.dumps({"type": "view_submission", "user": {"id": APPROVER}})})
        status, _ = await post_click(api, other, sign(other))
        assert status == 400
        assert await _state(conn) == ("pending", 0, "running")


async def test_buttons_are_off_without_a_signing_secret(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: FakeHTTPReceiver
) -> None:
    await seed_winner(conn)
    env = {"SLACK_WEBHOOK_URL": receiver.url(HOOK), "AUTO_PROMOTION_NOTIFY_RATE": "1000"}
    async with serve_api(pool, env, {"approval": {"require": "promote"}}) as api:
        await api.post({"action": "promote", "experimentName": NAME})
        [message] = await deliver(pool, api, receiver, 1)
        assert message["text"].startswith("Approval requested")
        assert not [b for b in message["blocks"] if b["type"] == "actions"]
        body = urlencode({"payload": "{}"})
        status, answer = await post_click(api, body, sign(body))
        assert status == 404 and "SLACK_SIGNING_SECRET" in answer["error"]["message"]


async def test_the_outcome_goes_only_to_slacks_origin(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: FakeHTTPReceiver
) -> None:
    # The response_url is only ever Slack's (https://hooks.slack.com) or the origin of SLACK_WEBHOOK_URL (here the
    # stand-in): a click naming another server (an internal service, say) is acted on, but nothing is posted there.
    await seed_winner(conn)
    async with (
        FakeHTTPReceiver() as elsewhere,
        serve_api(pool, _env(receiver), {"approval": {"require": "promote"}}) as api,
    ):
        await api.post({"action": "promote", "experimentName": NAME})
        [message] = await deliver(pool, api, receiver, 1)
        body = click_body(message, "approval.decline", user=APPROVER, response_url=elsewhere.url(RESPONSE))
        status, answer = await post_click(api, body, sign(body))
        assert status == 200, answer
        assert await _state(conn) == ("declined", 0, "running")
        assert elsewhere.received(RESPONSE) == []


async def test_a_body_over_the_limit_is_a_413_and_nothing_is_recorded(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: FakeHTTPReceiver
) -> None:
    async with serve_api(pool, _env(receiver, AUTO_PROMOTION_MAX_BODY_BYTES="4096")) as api:
        body = urlencode({"payload": json.dumps({"type": "block_actions", "pad": "x" * 8192})})
        status, answer = await post_click(api, body, sign(body))
        assert status == 413, answer
        assert await conn.fetchval("SELECT count(*) FROM ab_slack_interactions") == 0


async def test_a_slow_click_is_answered_in_time_and_still_replaces_the_message(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: FakeHTTPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slack shows an error unless the answer comes within 3 s: an action held up (here by a row another session
    holds) is answered "pending" and carried out when it can, its outcome still replacing the message."""
    from worker.http import slack

    monkeypatch.setattr(slack, "ACK_WITHIN_S", 0.3)
    exp_id = await seed_winner(conn)
    async with serve_api(pool, _env(receiver), {"approval": {"require": "promote"}}) as api:
        reply = await api.post({"action": "promote", "experimentName": NAME})
        assert reply.body["data"]["approvalId"]
        [message] = await deliver(pool, api, receiver, 1)
        body = click_body(message, "approval.approve", user=APPROVER, response_url=receiver.url(RESPONSE))
        async with pool.acquire() as holder:
            held = holder.transaction()
            await held.start()
            await holder.execute("SELECT 1 FROM ab_experiments WHERE id = $1 FOR NO KEY UPDATE", exp_id)
            started = time.monotonic()
            status, answer = await post_click(api, body, sign(body))
            assert status == 200 and answer["data"] == {"outcome": None, "pending": True}, answer
            assert time.monotonic() - started < 2.0
            assert await _state(conn) == ("pending", 0, "running")  # waiting for the row, nothing done yet
            await held.rollback()
        [replaced] = await receiver.wait_for(1, RESPONSE)
        assert replaced.json()["text"].startswith(f":white_check_mark: Approved by <@{APPROVER}>: promoted variant-b")
        assert await _state(conn) == ("approved", 1, "promoted")
        assert await conn.fetchval("SELECT outcome IS NOT NULL FROM ab_slack_interactions") is True


async def test_a_click_that_fails_after_its_early_answer_says_so_in_the_message(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: FakeHTTPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user saw no error (the answer went out early): the message itself tells them the click did not work."""
    from worker.http import slack

    monkeypatch.setattr(slack, "ACK_WITHIN_S", 0.1)

    async def broken(ctx: Any, click: Any) -> str:
        await anyio.sleep(0.5)
        raise RuntimeError("a bug in the action")

    monkeypatch.setattr(slack, "act", broken)
    await seed_winner(conn)
    async with serve_api(pool, _env(receiver), {"approval": {"require": "promote"}}) as api:
        await api.post({"action": "promote", "experimentName": NAME})
        [message] = await deliver(pool, api, receiver, 1)
        body = click_body(message, "approval.approve", user=APPROVER, response_url=receiver.url(RESPONSE))
        status, answer = await post_click(api, body, sign(body))
        assert status == 200 and answer["data"]["pending"] is True, answer
        [replaced] = await receiver.wait_for(1, RESPONSE)
        text = replaced.json()["text"]
        assert text.startswith(f":warning: <@{APPROVER}>, your click could not be carried out (RuntimeError)"), text
        assert await _state(conn) == ("pending", 0, "running")
        assert await conn.fetchval("SELECT outcome FROM ab_slack_interactions") is None
