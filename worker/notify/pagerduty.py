"""PagerDuty Events API v2: which events open or close an incident, and the event body.

One incident per promotion: every event about a promotion uses the promotion id as ``dedup_key``, so a retried
or duplicated delivery, and later events of the same promotion, land on the same incident instead of a new one.

- ``guard.breached`` triggers (severity critical).
- ``promotion.rolled_back`` resolves when this target already got the guard-breach trigger for the promotion:
  the rollback, automatic or manual, is the remedy for the breach. Otherwise it triggers (severity error), so
  on-call hears about a rollback nobody was paged for; with the same dedup_key it joins an incident already
  open for the promotion (for example the one a critical promotion opened).
- ``promotion.promoted`` triggers (severity warning) for critical-priority experiments only.
- ``promotion.failed`` triggers (severity error) for critical-priority experiments only; without a promotion id
  its dedup_key is per experiment, so a promotion that keeps failing on every scan stays one incident.
- ``promotion.eligible`` never pages.

The dispatcher delivers a target's events of one promotion in order, so a resolve never overtakes its trigger.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

from worker.notify.delivery import AttemptResult
from worker.notify.events import EventFacts, format_percent
from worker.notify.transport import post_json

if TYPE_CHECKING:  # a type only: routing (which the engine imports) must not load the HTTP client
    import aiohttp

Action = Literal["trigger", "resolve"]
SOURCE = "ab-autopromote"
_SEVERITY = {
    "guard.breached": "critical",
    "promotion.rolled_back": "error",
    "rollout.rolled_back": "error",
    "promotion.failed": "error",
    "promotion.promoted": "warning",
}
_SUMMARY_MAX = 1024


def pagerduty_action(event: str, priority: str, *, guard_breach_triggered: bool = False) -> Action | None:
    """The Events API action for ``event``, or None when it does not page (see the module docstring)."""
    match event:
        case "guard.breached":
            return "trigger"
        case "promotion.rolled_back" | "rollout.rolled_back":
            return "resolve" if guard_breach_triggered else "trigger"
        case "promotion.promoted" | "promotion.failed":
            return "trigger" if priority == "critical" else None
    return None


def dedup_key(facts: EventFacts) -> str:
    """The promotion id; without one (a failure before the promotion row exists), one key per experiment+event."""
    if facts.promotion_id:
        return facts.promotion_id
    return f"{SOURCE}/{facts.experiment}/{facts.event}"


def build_pagerduty_event(facts: EventFacts, *, routing_key: str, action: Action) -> dict[str, Any]:
    """The request body; ``resolve`` carries only the routing and dedup keys, as the API expects."""
    body: dict[str, Any] = {"routing_key": routing_key, "event_action": action, "dedup_key": dedup_key(facts)}
    if action == "resolve":
        return body
    summary = f"{facts.title}: {facts.headline}"
    if facts.reason:
        summary += f" ({facts.reason})"
    elif facts.event == "promotion.promoted":
        summary += f" ({format_percent(facts.improvement, signed=True)}, {format_percent(facts.confidence)} confidence)"
    details: dict[str, Any] = {label: value for label, value in facts.fact_rows()}
    if facts.reason:
        details["Reason"] = facts.reason
    if facts.safety_checks:
        details["Safety checks"] = [
            f"[{c.verdict}] {c.name}" + (f": {c.message}" if c.message else "") for c in facts.safety_checks
        ]
    if facts.guardrails:
        details["Guardrails"] = [f"[{'pass' if g.passed else 'FAIL'}] {g.line}" for g in facts.guardrails]
    body["payload"] = {
        "summary": summary if len(summary) <= _SUMMARY_MAX else summary[: _SUMMARY_MAX - 1] + "…",
        "source": SOURCE,
        "severity": _SEVERITY.get(facts.event, "info"),
        "component": facts.experiment,
        "group": "experiments",
        "class": facts.event,
        "custom_details": details,
    }
    if facts.occurred_at:
        body["payload"]["timestamp"] = facts.occurred_at
    body["client"] = SOURCE
    if facts.dashboard_url:
        body["client_url"] = facts.dashboard_url
        body["links"] = [{"href": facts.dashboard_url, "text": f"{facts.experiment} in the dashboard"}]
    return body


async def send_pagerduty(http: aiohttp.ClientSession, events_url: str, event: dict[str, Any]) -> AttemptResult:
    """POST to the Events API; it answers 202 when accepted, 400 for an invalid event, 429 when throttled."""
    return await post_json(http, events_url, json.dumps(event).encode())
