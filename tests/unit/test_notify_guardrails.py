"""Notifications list the guardrails with their verdicts (in words, not only an emoji), on every channel."""

from __future__ import annotations

import json
from typing import Any

from tests.unit.test_decide_metrics import config, mean_sums, revenue, snapshot
from worker.decide import decide
from worker.notify.email import build_email
from worker.notify.events import EventFacts
from worker.notify.pagerduty import build_pagerduty_event
from worker.notify.slack import build_slack_message
from worker.notify.webhook import build_webhook_request
from worker.services.effects import payload


def _payload(margin: float, treatment_mean: float) -> dict[str, Any]:
    guard = revenue(mean_sums(20_000, 10.0, 8.0), mean_sums(20_000, treatment_mean, 8.0), margin=margin)
    d = decide(snapshot(guard), config())
    return dict(
        payload(
            "promotion.eligible",
            d,
            actor="autopromote",
            experiment_name="checkout",
            priority="normal",
            promotion_id=None,
            variant="variant-b",
            dry_run=True,
        )
    )


def test_the_payload_carries_each_guardrail_verdict_for_the_variant() -> None:
    body = _payload(0.05, 10.05)
    (g,) = body["guardrails"]
    assert g["name"] == "revenue_per_user" and g["variant"] == "variant-b"
    assert g["verdict"] == "non_inferior" and g["margin"] == 0.05
    assert g["lift"] == 0.5 and g["bound"] is not None and g["bound"] > -5.0


def test_every_channel_lists_the_guardrails_in_words() -> None:
    ok = EventFacts.from_payload("promotion.eligible", _payload(0.05, 10.05), public_url=None)
    bad = EventFacts.from_payload("promotion.eligible", _payload(0.02, 9.6), public_url=None)
    (g_ok,), (g_bad,) = ok.guardrails, bad.guardrails
    assert g_ok.line.startswith("revenue_per_user: non-inferior — variant-b +0.50% (lower bound ")
    assert g_ok.line.endswith(", margin -5.00%)")
    assert g_bad.line.startswith("revenue_per_user: WORSE — variant-b -4.00% (lower bound ")

    slack = json.dumps(build_slack_message(bad), ensure_ascii=False)
    assert "*Guardrails*" in slack and "revenue_per_user: WORSE" in slack
    message = build_email(bad, sender="a@example.com", recipients=["b@example.com"])
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "Guardrails:\n  [FAIL] revenue_per_user: WORSE" in text
    assert "<h3>Guardrails</h3>" in html and "revenue_per_user: WORSE" in html
    event = build_pagerduty_event(bad, routing_key="k", action="trigger")
    assert event["payload"]["custom_details"]["Guardrails"][0].startswith("[FAIL] revenue_per_user: WORSE")
    body, _ = build_webhook_request(
        "promotion.eligible", _payload(0.02, 9.6), outbox_id=1, secret=None, timestamp=1_700_000_000
    )
    assert json.loads(body)["guardrails"][0]["verdict"] == "worse"


def test_a_payload_without_guardrails_renders_as_before() -> None:
    facts = EventFacts.from_payload("promotion.eligible", _payload(0.05, 10.05) | {"guardrails": []}, public_url=None)
    assert facts.guardrails == ()
    assert "Guardrails" not in json.dumps(build_slack_message(facts))
