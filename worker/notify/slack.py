"""Slack: an incoming-webhook message in Block Kit."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from worker.notify.delivery import AttemptResult
from worker.notify.events import EventFacts, text_table
from worker.notify.transport import post_json

_EMOJI = {
    "promotion.promoted": ":rocket:",
    "promotion.rolled_back": ":rewind:",
    "guard.breached": ":rotating_light:",
    "promotion.failed": ":x:",
    "promotion.eligible": ":mag:",
}
_VERDICT = {"pass": ":white_check_mark:", "warn": ":warning:", "FAIL": ":x:"}
# Block Kit limits: header text 150 characters, section text 3000, a field 2000, ten fields per section.
_HEADER_MAX = 150
_SECTION_MAX = 3000
_FIELD_MAX = 2000


def build_slack_message(facts: EventFacts, *, include_detailed_metrics: bool = False) -> dict[str, Any]:
    """The webhook body: Block Kit blocks plus a plain ``text`` fallback for notifications and old clients.

    Every piece of text that comes from data (experiment, variant and check names, reasons, the actor) is escaped,
    in every field including the plain_text header and the fallback ``text``: Slack parses ``<!channel>``,
    ``<@U123>`` and ``<url|label>`` in message text, so an experiment named ``<!channel>`` would page a channel.
    Slack decodes the three entities for display, so people still read the name as typed.
    """
    fields = [
        {"type": "mrkdwn", "text": _cut(f"*{escape(label)}*\n{escape(value)}", _FIELD_MAX)}
        for label, value in facts.fact_rows()
    ]
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": _cut(escape(f"{facts.title}: {facts.experiment}"), _HEADER_MAX),
                "emoji": True,
            },
        },
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": _cut(f"{_EMOJI.get(facts.event, '')} {escape(facts.headline)}", _SECTION_MAX),
            },
        },
    ]
    for start in range(0, len(fields), 10):
        blocks.append({"type": "section", "fields": fields[start : start + 10]})
    if facts.reason:
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _cut(f"*Reason*\n{escape(facts.reason)}", _SECTION_MAX)},
            }
        )
    if facts.safety_checks:
        lines = [
            f"{_VERDICT[c.verdict]} *{escape(c.name)}*" + (f": {escape(c.message)}" if c.message else "")
            for c in facts.safety_checks
        ]
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _cut("*Safety checks*\n" + "\n".join(lines), _SECTION_MAX)},
            }
        )
    if facts.guardrails:
        lines = [f"{_VERDICT['pass' if g.passed else 'FAIL']} {escape(g.line)}" for g in facts.guardrails]
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _cut("*Guardrails*\n" + "\n".join(lines), _SECTION_MAX)},
            }
        )
    if include_detailed_metrics and facts.variants:
        table = _cut(escape(text_table(facts.variant_table())), _SECTION_MAX - 40)
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Per-variant statistics*\n```{table}```"}}
        )
    context = [f"{escape(facts.actor)} · priority {escape(facts.priority)}"]
    if facts.dry_run:
        context.append("dry run: nothing was changed")
    if facts.dashboard_url:
        context.append(f"<{_link_target(facts.dashboard_url)}|Open in the dashboard>")
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _cut(" · ".join(context), 3000)}]})
    return {"text": escape(f"{facts.title}: {facts.headline}"), "blocks": blocks}


async def send_slack(http: aiohttp.ClientSession, webhook_url: str, message: dict[str, Any]) -> AttemptResult:
    """POST the message to the incoming webhook; Slack answers 200 ``ok``, 429 with Retry-After when limited."""
    return await post_json(http, webhook_url, json.dumps(message).encode())


def escape(text: str) -> str:
    """Slack mrkdwn control characters (&, <, >) as entities, so user text cannot forge links or mentions."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link_target(url: str) -> str:
    """A URL inside ``<url|label>``: its &, <, > escaped like any text, and | (which would end it) percent-encoded."""
    return escape(url).replace("|", "%7C")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
