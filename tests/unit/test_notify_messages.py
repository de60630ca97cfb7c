"""Pure parts of notifications: message builders, routing, backoff, Retry-After, the token bucket, redaction."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.fakes import engine_payload
from worker.config import AutoPromotionConfig, Notifications, Settings
from worker.notify.delivery import backoff_delay, classify_http, parse_retry_after
from worker.notify.email import build_email
from worker.notify.events import EVENTS, EventFacts
from worker.notify.pagerduty import build_pagerduty_event, pagerduty_action
from worker.notify.ratelimit import TokenBucket
from worker.notify.redact import scrub, target_label
from worker.notify.routing import ConfigRow, plan_routes
from worker.notify.slack import build_slack_message
from worker.notify.webhook import build_webhook_request, verify_signature
from worker.services.effects import NotificationEvent

PUBLIC = "https://ab.example.com"
PROMOTION_ID = "6f1c2a9e-3b7d-4c2e-9a51-0d8f4b6e2c11"


def _facts(
    event: NotificationEvent = "promotion.promoted", public_url: str | None = PUBLIC, **overrides: Any
) -> EventFacts:
    return EventFacts.from_payload(
        event, engine_payload(event, promotionId=PROMOTION_ID, **overrides), public_url=public_url
    )


def _slack_text(message: dict[str, Any]) -> str:
    return json.dumps(message["blocks"], ensure_ascii=False)


def _texts(node: Any) -> list[dict[str, Any]]:
    """Every Block Kit text object under ``node``."""
    if isinstance(node, list):
        return [t for item in node for t in _texts(item)]
    if isinstance(node, dict):
        own = [node] if node.get("type") in ("mrkdwn", "plain_text") else []
        return own + [t for value in node.values() for t in _texts(value)]
    return []


# --- Slack -----------------------------------------------------------------------------------------------
def test_slack_promotion_message_tells_the_facts_in_block_kit() -> None:
    message = build_slack_message(_facts())
    assert message["text"].startswith("Promoted: checkout-button: promoted variant-b over control")
    blocks = message["blocks"]
    assert blocks[0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": "Promoted: checkout-button", "emoji": True},
    }
    fields = [f["text"] for b in blocks if "fields" in b for f in b["fields"]]
    assert "*Experiment*\ncheckout-button" in fields
    assert "*Winning variant*\nvariant-b (control: control)" in fields
    assert "*Confidence*\n97.30%" in fields
    assert "*Improvement*\n+6.20%" in fields
    assert "*Acted by*\nautopromote" in fields
    text = _slack_text(message)
    assert ":white_check_mark: *Error Rate Check*: 0.40% &lt;= 5.00%" in text
    assert ":warning: *Traffic Balance Check*: SRM p = 0.004" in text
    assert f"<{PUBLIC}/experiments/checkout-button|Open in the dashboard>" in text
    assert "Per-variant statistics" not in text


def test_slack_detailed_metrics_add_per_variant_statistics() -> None:
    text = _slack_text(build_slack_message(_facts(), include_detailed_metrics=True))
    assert "Per-variant statistics" in text
    assert "control (control)" in text and "10,000" in text and "10.00%" in text and "123.7" in text


def test_slack_rollback_message_gives_the_reason_and_who_acted() -> None:
    message = build_slack_message(
        _facts("promotion.rolled_back", actor="guard", reason="error rate 7.10% > 5.00% since promotion")
    )
    assert message["blocks"][0]["text"]["text"] == "Rolled back: checkout-button"
    text = _slack_text(message)
    assert "*Reason*\\nerror rate 7.10% &gt; 5.00% since promotion" in text
    assert "*Promoted variant*\\nvariant-b" in text
    assert "*Acted by*\\nguard" in text


def test_slack_message_without_public_url_has_no_link_and_escapes_user_text() -> None:
    message = build_slack_message(_facts(public_url=None, experimentName="<!channel> & co"))
    assert "Open in the dashboard" not in _slack_text(message)
    # Slack would turn <!channel> into an @channel ping; escaped, it shows the name as typed.
    named = [t["text"] for t in _texts(message["blocks"]) if "channel" in t["text"]]
    assert {t["type"] for t in _texts(message["blocks"]) if "channel" in t["text"]} == {"mrkdwn", "plain_text"}
    assert named and all("&lt;!channel&gt; &amp; co" in t and "<!channel>" not in t for t in named)


HOSTILE = "<!channel> <@U024BE7LH> <https://evil.example|click> & co"
HOSTILE_PAYLOAD = {
    "experimentName": HOSTILE,
    "variant": "<!here>",
    "controlVariant": "<!everyone>",
    "actor": "<@U1>",
    "reason": "<!subteam^S1> said so",
    "method": "<m>",
    "priority": "<p>",
    "safetyChecks": [{"name": "<!channel>", "passed": False, "message": "a > b & c < d", "severity": "error"}],
    "variants": [{"name": "<!channel>", "isControl": True, "exposures": 1}],
}


@pytest.mark.parametrize("event", EVENTS)
def test_slack_escapes_every_text_field_for_every_event(event: str) -> None:
    facts = _facts(event, **HOSTILE_PAYLOAD)  # type: ignore[arg-type]  # hostile values of every shape on purpose
    message = build_slack_message(facts, include_detailed_metrics=True)
    texts = [message["text"], *(t["text"] for t in _texts(message["blocks"]))]
    link = f"<{PUBLIC}/experiments/"
    for text in texts:
        # The only markup left is the dashboard link this code writes itself (its name part percent-encoded).
        rest = text.split(link)[0] + "".join(
            part.split("|Open in the dashboard>", 1)[-1] for part in text.split(link)[1:]
        )
        assert "<" not in rest and ">" not in rest, text
        assert "&" not in rest.replace("&amp;", "").replace("&lt;", "").replace("&gt;", ""), text
    assert "&lt;!channel&gt; &lt;@U024BE7LH&gt;" in message["text"]  # the fallback text is what a phone shows
    assert "&lt;!channel&gt;" in message["blocks"][0]["text"]["text"]


def test_slack_dashboard_link_target_cannot_be_broken_out_of() -> None:
    facts = _facts(public_url="https://ab.example.com/x?a=1&b=<2>|3", experimentName="a|b>c")
    [context] = [b for b in build_slack_message(facts)["blocks"] if b["type"] == "context"]
    assert (
        "<https://ab.example.com/x?a=1&amp;b=&lt;2&gt;%7C3/experiments/a%7Cb%3Ec|Open in the dashboard>"
        in context["elements"][0]["text"]
    )


def test_missing_payload_keys_still_build_every_message() -> None:
    for event in EVENTS:
        facts = EventFacts.from_payload(event, {}, public_url=PUBLIC)
        assert facts.dashboard_url is None
        assert build_slack_message(facts, include_detailed_metrics=True)["blocks"]
        assert build_email(facts, sender="a@b.c", recipients=["x@y.z"]).get_body(("plain",)) is not None
        assert build_pagerduty_event(facts, routing_key="k", action="trigger")["dedup_key"]
    assert (
        "n/a"
        in EventFacts.from_payload("promotion.promoted", {"confidence": "high"}, public_url=None).fact_rows()[2][1]
    )


# --- Email -----------------------------------------------------------------------------------------------
def test_email_has_text_and_html_parts_with_the_same_facts() -> None:
    facts = _facts(reason=None)
    msg = build_email(
        facts,
        sender="autopromote@example.com",
        recipients=["a@example.com", "b@example.com"],
        include_detailed_metrics=True,
        outbox_id=42,
    )
    assert msg["Subject"] == "[autopromote] Promoted: checkout-button (variant-b)"
    assert msg["To"] == "a@example.com, b@example.com"
    assert msg["Message-ID"] == "<autopromote.outbox.42@example.com>"
    plain = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert plain is not None and html is not None
    text, markup = plain.get_content(), html.get_content()
    for _label, value in facts.fact_rows():
        assert value in text
        assert value.replace("&", "&amp;") in markup
    for fragment in (
        "[pass] Error Rate Check",
        "[warn] Traffic Balance Check",
        "10,000",
        f"{PUBLIC}/experiments/checkout-button",
    ):
        assert fragment in text
        assert fragment.split("] ")[-1] in markup


# --- PagerDuty -------------------------------------------------------------------------------------------
def test_pagerduty_trigger_uses_the_promotion_id_as_dedup_key() -> None:
    event = build_pagerduty_event(
        _facts("guard.breached", reason="error rate 7.1% > 5%", actor="guard"),
        routing_key="R0UT1NGKEY",
        action="trigger",
    )
    assert event["routing_key"] == "R0UT1NGKEY"
    assert event["event_action"] == "trigger"
    assert event["dedup_key"] == PROMOTION_ID
    assert event["payload"]["severity"] == "critical"
    assert event["payload"]["summary"].startswith("Guard breached: checkout-button: post-promotion guard breached")
    assert "error rate 7.1% > 5%" in event["payload"]["summary"]
    assert event["payload"]["custom_details"]["Confidence"] == "97.30%"
    assert event["links"] == [
        {"href": f"{PUBLIC}/experiments/checkout-button", "text": "checkout-button in the dashboard"},
    ]


def test_pagerduty_resolve_carries_only_the_keys() -> None:
    event = build_pagerduty_event(_facts("promotion.rolled_back"), routing_key="K", action="resolve")
    assert event == {"routing_key": "K", "event_action": "resolve", "dedup_key": PROMOTION_ID}


@pytest.mark.parametrize(
    ("event", "priority", "breached", "expected"),
    [
        ("guard.breached", "normal", False, "trigger"),
        ("promotion.rolled_back", "normal", True, "resolve"),
        ("promotion.rolled_back", "normal", False, "trigger"),
        ("promotion.promoted", "critical", False, "trigger"),
        ("promotion.promoted", "high", False, None),
        ("promotion.failed", "critical", False, "trigger"),
        ("promotion.failed", "normal", False, None),
        ("promotion.eligible", "critical", False, None),
    ],
)
def test_pagerduty_action_per_event(event: str, priority: str, breached: bool, expected: str | None) -> None:
    assert pagerduty_action(event, priority, guard_breach_triggered=breached) == expected


def test_pagerduty_failure_without_promotion_keeps_one_incident_per_experiment() -> None:
    facts = EventFacts.from_payload("promotion.failed", engine_payload("promotion.failed"), public_url=None)
    event = build_pagerduty_event(facts, routing_key="K", action="trigger")
    assert event["dedup_key"] == "ab-autopromote/checkout-button/promotion.failed"


# --- Webhook ---------------------------------------------------------------------------------------------
def test_webhook_request_is_signed_over_timestamp_and_body() -> None:
    payload = engine_payload(promotionId=PROMOTION_ID)
    body, headers = build_webhook_request(
        "promotion.promoted", payload, outbox_id=17, secret="s3cr3t-signing", timestamp=1_700_000_000
    )
    assert json.loads(body) == payload
    assert headers["Idempotency-Key"] == "17"
    assert headers["X-Timestamp"] == "1700000000"
    assert headers["X-Signature"].startswith("sha256=")
    assert verify_signature("s3cr3t-signing", headers["X-Timestamp"], body, headers["X-Signature"])
    assert not verify_signature("s3cr3t-signing", "1700000001", body, headers["X-Signature"])
    assert not verify_signature("other", headers["X-Timestamp"], body, headers["X-Signature"])
    _, unsigned = build_webhook_request("promotion.promoted", payload, outbox_id=17, secret=None, timestamp=1)
    assert "X-Signature" not in unsigned


# --- Routing ---------------------------------------------------------------------------------------------
def _settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "slack_webhook_url": "https://hooks.slack.com/services/T0/B0/SLACKSECRET",
        "pagerduty_routing_key": "PDROUTINGKEY0001",
        "webhook_url": "https://receiver.example.com/hook?token=HOOKTOKEN",
        "smtp_host": "smtp.example.com",
        "alert_email_to": ("ops@example.com",),
    }
    base.update(overrides)
    return Settings(**base)


def _config(**notifications: Any) -> AutoPromotionConfig:
    return AutoPromotionConfig(notifications=Notifications(**notifications))


def test_env_defaults_route_main_events_and_skip_eligible_unless_asked() -> None:
    routes, _ = plan_routes("promotion.promoted", "normal", config=_config(), settings=_settings(), rows=[])
    assert [r.channel for r in routes] == ["slack", "email", "webhook"]  # PagerDuty pages critical ones only
    assert all(r.config_id is None and r.target_ref.startswith("env:") for r in routes)
    assert plan_routes("promotion.eligible", "normal", config=_config(), settings=_settings(), rows=[])[0] == []
    eligible, _ = plan_routes(
        "promotion.eligible", "normal", config=_config(notify_eligible=True), settings=_settings(), rows=[]
    )
    assert [r.channel for r in eligible] == ["slack", "email", "webhook"]


def test_config_enabled_and_channels_filter_rows_and_defaults() -> None:
    rows = [ConfigRow(1, "team", "slack", "https://hooks.slack.com/services/T1/B1/X", ("guard.breached",), "normal")]
    assert plan_routes("guard.breached", "normal", config=_config(enabled=False), settings=_settings(), rows=rows) == (
        [],
        [],
    )
    routes, _ = plan_routes(
        "guard.breached", "normal", config=_config(channels=("pagerduty",)), settings=_settings(), rows=rows
    )
    assert [(r.channel, r.action) for r in routes] == [("pagerduty", "trigger")]


def test_rows_match_events_and_minimum_priority_and_duplicates_collapse() -> None:
    slack = "https://hooks.slack.com/services/T0/B0/SLACKSECRET"
    rows = [
        ConfigRow(1, "rollbacks", "webhook", "https://a.example.com/x", ("promotion.rolled_back",), "normal"),
        ConfigRow(2, "high only", "webhook", "https://b.example.com/x", ("promotion.promoted",), "high"),
        ConfigRow(3, "same as env", "slack", slack, ("promotion.promoted",), "normal"),
    ]
    routes, _ = plan_routes(
        "promotion.promoted",
        "normal",
        config=_config(channels=("slack", "webhook")),
        settings=_settings(webhook_url=None),
        rows=rows,
    )
    assert [(r.channel, r.target_ref) for r in routes] == [("slack", "config:3")]
    routes, _ = plan_routes(
        "promotion.promoted",
        "critical",
        config=_config(channels=("webhook",)),
        settings=_settings(webhook_url=None),
        rows=rows,
    )
    assert [r.target_ref for r in routes] == ["config:2"]


def test_email_without_smtp_host_is_reported_not_queued() -> None:
    routes, unroutable = plan_routes(
        "promotion.promoted", "normal", config=_config(channels=("email",)), settings=_settings(smtp_host=None), rows=[]
    )
    assert routes == []
    assert [(u.channel, u.reason) for u in unroutable] == [("email", "SMTP_HOST is not set")]


def test_labels_and_routes_carry_no_secret() -> None:
    settings = _settings(webhook_secret="WEBHOOKSIGNINGSECRET")
    routes, _ = plan_routes("guard.breached", "critical", config=_config(), settings=settings, rows=[])
    shown = repr(routes)
    for secret in ("SLACKSECRET", "PDROUTINGKEY0001", "HOOKTOKEN", "WEBHOOKSIGNINGSECRET"):
        assert secret not in shown
    assert target_label("slack", "https://hooks.slack.com/services/T0/B0/X", "SLACK_WEBHOOK_URL") == (
        "slack SLACK_WEBHOOK_URL: https://hooks.slack.com/***"
    )


def test_scrub_masks_secrets_and_their_quoted_forms() -> None:
    text = "failed POST https://h/services/a%2Fb?k=SECRET/1 and SECRET/1"
    assert scrub(text, ["SECRET/1", None]) == "failed POST https://h/services/a%2Fb?k=*** and ***"
    assert scrub("token ab%2Bcd", ["ab+cd"]) == "token ***"


# --- Delivery rules --------------------------------------------------------------------------------------
def test_http_answers_are_classified() -> None:
    assert classify_http(200, {}, "ok").ok
    assert classify_http(202, {}, "").ok
    retry = classify_http(503, {"Retry-After": "7"}, "busy")
    assert not retry.ok and not retry.permanent and retry.retry_after == 7.0 and retry.error == "HTTP 503: busy"
    assert classify_http(429, {}, "").retry_after is None
    assert classify_http(404, {}, "no_service").permanent
    assert classify_http(301, {}, "").permanent


def test_retry_after_accepts_seconds_and_http_dates_and_is_capped() -> None:
    now = datetime(2026, 5, 9, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3", now=now) == 3.0
    assert parse_retry_after("Sat, 09 May 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("999999", now=now) == 3600.0
    assert parse_retry_after("-5", now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None


def test_backoff_doubles_with_jitter_in_the_upper_half() -> None:
    rng = random.Random(7)
    for attempt, full in [(1, 2.0), (2, 4.0), (3, 8.0), (20, 3600.0)]:
        for _ in range(50):
            assert full / 2 <= backoff_delay(attempt, 2.0, rng=rng) <= full


def test_token_bucket_spaces_messages_and_queues_rather_than_drops() -> None:
    now = [100.0]
    bucket = TokenBucket(2.0, clock=lambda: now[0])
    assert [bucket.reserve() for _ in range(4)] == [0.0, 0.5, 1.0, 1.5]
    now[0] += 10.0  # idle: the backlog is gone
    assert bucket.reserve() == 0.0
    bucket.pause(3.0)
    assert bucket.paused_for() == 3.0
    assert bucket.delay() == 3.0
    assert bucket.reserve() == 3.0
    assert bucket.reserve() == 3.5


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(1.0, burst=3, clock=lambda: now[0])
    assert [bucket.reserve() for _ in range(5)] == [0.0, 0.0, 0.0, 1.0, 2.0]
