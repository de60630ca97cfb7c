"""Slack: an incoming-webhook message in Block Kit, with Approve / Decline / Roll back buttons when Slack's
interactivity is set up (SLACK_SIGNING_SECRET; the clicks come back to worker.http.slack), and the message that
replaces one after a click."""

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
    "approval.requested": ":raised_hand:",
    "approval.expired": ":hourglass:",
}
# The buttons' action_ids: worker.http.slack acts on exactly these.
APPROVE_ACTION = "approval.approve"
DECLINE_ACTION = "approval.decline"
ROLLBACK_ACTION = "promotion.rollback"
BUTTON_ACTIONS = (APPROVE_ACTION, DECLINE_ACTION, ROLLBACK_ACTION)
ACTIONS_BLOCK_ID = "autopromote.actions"
_VERDICT = {"pass": ":white_check_mark:", "warn": ":warning:", "FAIL": ":x:"}
# Block Kit limits: header text 150 characters, section text 3000, a field 2000, ten fields per section.
_HEADER_MAX = 150
_SECTION_MAX = 3000
_FIELD_MAX = 2000


def build_slack_message(
    facts: EventFacts, *, include_detailed_metrics: bool = False, interactive: bool = False
) -> dict[str, Any]:
    """The webhook body: Block Kit blocks plus a plain ``text`` fallback for notifications and old clients.

    ``interactive`` (SLACK_SIGNING_SECRET is set, so clicks can be verified): an approval request carries Approve
    and Decline buttons, a promotion and a guard breach a Roll back button (see ``buttons``).

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
    actions = buttons(facts) if interactive else []
    if actions:
        blocks.append({"type": "actions", "block_id": ACTIONS_BLOCK_ID, "elements": actions})
    return {"text": escape(f"{facts.title}: {facts.headline}"), "blocks": blocks}


def buttons(facts: EventFacts) -> list[dict[str, Any]]:
    """The buttons of an event's message: Approve / Decline (value: the approval id) on an approval request (and
    Roll back when it is a rollout step's), Roll back (value: the promotion id) on a promotion and a guard breach;
    none on a dry run or anything else."""
    if facts.dry_run:
        return []
    experiment = escape(facts.experiment)
    rollback = (
        [
            _button(
                "Roll back",
                ROLLBACK_ACTION,
                facts.promotion_id,
                "danger",
                confirm=(f"Roll back the promotion of {experiment} and restore the previous weights?", "Roll back"),
            )
        ]
        if facts.promotion_id
        else []
    )
    if facts.event == "approval.requested" and facts.approval_id:
        # A rollout step's approval names its promotion: it can be rolled back from here too.
        return [
            _button("Approve", APPROVE_ACTION, facts.approval_id, "primary"),
            _button(
                "Decline",
                DECLINE_ACTION,
                facts.approval_id,
                "danger",
                confirm=(f"Decline this approval of {experiment}? Nothing is promoted.", "Decline"),
            ),
            *rollback,
        ]
    if facts.event in ("promotion.promoted", "guard.breached"):
        return rollback
    return []


def _button(
    label: str, action_id: str, value: str, style: str, *, confirm: tuple[str, str] | None = None
) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "text": {"type": "plain_text", "text": label},
        "action_id": action_id,
        "value": value,
        "style": style,
    }
    if confirm is not None:
        text, yes = confirm
        button["confirm"] = {
            "title": {"type": "plain_text", "text": _cut(f"{label}?", 100)},
            "text": {"type": "mrkdwn", "text": _cut(text, 300)},
            "confirm": {"type": "plain_text", "text": yes},
            "deny": {"type": "plain_text", "text": "Cancel"},
        }
    return button


def outcome_message(original: dict[str, Any] | None, outcome: str) -> dict[str, Any]:
    """What replaces a message after a click (through the interaction's response_url): the original message
    without its buttons, then the outcome. ``outcome`` is mrkdwn the caller has escaped."""
    kept = [b for b in (original or {}).get("blocks") or [] if isinstance(b, dict) and b.get("type") != "actions"]
    blocks = [*kept, {"type": "section", "text": {"type": "mrkdwn", "text": _cut(outcome, _SECTION_MAX)}}]
    return {"replace_original": True, "text": _cut(outcome, _SECTION_MAX), "blocks": blocks}


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
