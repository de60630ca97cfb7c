"""Slack buttons, pure: which messages carry which buttons, the replacement after a click, and the signature check
against signatures computed here with hmac (not with the library the server uses)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from worker.http.errors import ApiError
from worker.http.slack import STALE_AFTER_S, parse_interaction, verify
from worker.notify.events import EventFacts
from worker.notify.slack import build_slack_message, outcome_message

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
NOW = 1_700_000_000
APPROVAL = "0b7b3c1e-8f0e-4a55-9a53-54b5e2b7f0a1"
PROMOTION = "5f0c3c1e-1111-4a55-9a53-54b5e2b7f0a1"


def _facts(event: str, **payload: Any) -> EventFacts:
    body = {"experimentName": "homepage <!channel>", "variant": "variant-b", "priority": "normal", **payload}
    return EventFacts.from_payload(event, body, public_url=None)


def _actions(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]


def test_an_approval_request_carries_approve_and_decline_with_the_approval_id() -> None:
    message = build_slack_message(_facts("approval.requested", approvalId=APPROVAL), interactive=True)
    buttons = _actions(message)
    assert [(b["action_id"], b["value"], b["style"]) for b in buttons] == [
        ("approval.approve", APPROVAL, "primary"),
        ("approval.decline", APPROVAL, "danger"),
    ]
    # The confirmation names the experiment escaped, like every other text of the message.
    confirm = buttons[1]["confirm"]["text"]["text"]
    assert "&lt;!channel&gt;" in confirm and "<!channel>" not in confirm
    assert "Approval requested" in message["text"]


def test_a_rollout_steps_approval_can_also_roll_back() -> None:
    facts = _facts("approval.requested", approvalId=APPROVAL, promotionId=PROMOTION, step=2)
    message = build_slack_message(facts, interactive=True)
    assert [(b["action_id"], b["value"]) for b in _actions(message)] == [
        ("approval.approve", APPROVAL),
        ("approval.decline", APPROVAL),
        ("promotion.rollback", PROMOTION),
    ]
    assert "step 2 of the rollout of variant-b waits for an approval" in message["text"]


@pytest.mark.parametrize("event", ["promotion.promoted", "guard.breached"])
def test_a_promotion_and_a_breach_carry_roll_back(event: str) -> None:
    message = build_slack_message(_facts(event, promotionId=PROMOTION), interactive=True)
    [button] = _actions(message)
    assert (button["action_id"], button["value"]) == ("promotion.rollback", PROMOTION)
    assert button["confirm"]["confirm"]["text"] == "Roll back"


@pytest.mark.parametrize(
    ("event", "payload", "interactive"),
    [
        ("approval.requested", {"approvalId": APPROVAL}, False),  # no signing secret: clicks could not be verified
        ("promotion.eligible", {"dryRun": True}, True),  # a dry run changes nothing
        ("promotion.promoted", {"promotionId": PROMOTION, "dryRun": True}, True),
        ("promotion.rolled_back", {"promotionId": PROMOTION}, True),
        ("approval.expired", {"approvalId": APPROVAL}, True),
        ("approval.requested", {}, True),  # no approval id to act on
    ],
)
def test_no_buttons_where_nothing_could_be_done(event: str, payload: dict[str, Any], interactive: bool) -> None:
    assert _actions(build_slack_message(_facts(event, **payload), interactive=interactive)) == []


def test_the_replacement_keeps_the_message_without_its_buttons() -> None:
    original = build_slack_message(_facts("approval.requested", approvalId=APPROVAL), interactive=True)
    out = outcome_message(original, ":x: Declined by <@U1>.")
    assert out["replace_original"] is True and out["text"] == ":x: Declined by <@U1>."
    assert [b["type"] for b in out["blocks"]] == [b["type"] for b in original["blocks"] if b["type"] != "actions"] + [
        "section"
    ]
    assert outcome_message(None, "done")["blocks"] == [{"type": "section", "text": {"type": "mrkdwn", "text": "done"}}]


def _signed(body: bytes, ts: int, secret: str = SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), b"v0:" + str(ts).encode() + b":" + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": f"v0={digest}"}


def test_a_signature_computed_from_slacks_rule_is_accepted() -> None:
    body = b"payload=%7B%22type%22%3A%22block_actions%22%7D"
    headers = _signed(body, NOW)
    assert verify(SECRET, body, headers, now=NOW + STALE_AFTER_S) == headers["X-Slack-Signature"]


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("unsigned", "unsigned"),
        ("no timestamp", "unsigned"),
        ("other secret", "does not match"),
        ("other body", "does not match"),
        ("stale", "stale"),
        ("future", "stale"),
        ("not a number", "Unix time"),
        ("not utf-8", "does not match"),
    ],
)
def test_every_other_request_is_a_401(case: str, words: str) -> None:
    body = b"payload=%7B%7D"
    headers = _signed(body, NOW)
    sent = body
    match case:
        case "unsigned":
            headers = {}
        case "no timestamp":
            del headers["X-Slack-Request-Timestamp"]
        case "other secret":
            headers = _signed(body, NOW, "another-secret")
        case "other body":
            sent = b"payload=%7B%22x%22%7D"
        case "stale":
            headers = _signed(body, NOW - STALE_AFTER_S - 1)
        case "future":
            headers = _signed(body, NOW + STALE_AFTER_S + 1)
        case "not a number":
            headers["X-Slack-Request-Timestamp"] = "1e9"
        case "not utf-8":
            sent = b"payload=\xff"
            headers = _signed(sent, NOW)
    with pytest.raises(ApiError) as caught:
        verify(SECRET, sent, headers, now=NOW)
    assert caught.value.status == 401 and words in caught.value.message


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"payload=not-json",
        b"payload=%7B%22type%22%3A%22view_submission%22%7D",
        b"payload=%7B%22type%22%3A%22block_actions%22%2C%22actions%22%3A%5B%7B%22action_id%22%3A%22x%22%2C%22value%22%3A%22v%22%7D%5D%7D",
    ],
)
def test_signed_bodies_that_are_not_our_buttons_are_a_400(body: bytes) -> None:
    with pytest.raises(ApiError) as caught:
        parse_interaction(body)
    assert caught.value.status == 400
