"""Routing: which targets hear about an event. Pure: config rows, settings and config in, routes out."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from worker.config import AutoPromotionConfig, Settings
from worker.notify.events import ALSO_SUBSCRIBED_AS, ENV_EVENTS, priority_rank
from worker.notify.pagerduty import pagerduty_action
from worker.notify.redact import split_addresses, target_label


@dataclass(frozen=True, slots=True)
class ConfigRow:
    """A notification_configs row as routing sees it (no signing secret)."""

    id: int
    name: str
    channel: str
    target: str = field(repr=False)
    events: tuple[str, ...]
    min_priority: str


@dataclass(frozen=True, slots=True)
class Route:
    """One outbox row to write. Holds no secret: ``target_ref`` says where send time finds it."""

    channel: str
    config_id: int | None
    target_ref: str
    target_label: str
    action: str | None = None


@dataclass(frozen=True, slots=True)
class Unroutable:
    """A subscribed target that cannot be used as configured (logged, not queued)."""

    channel: str
    target_label: str
    reason: str


@dataclass(frozen=True, slots=True)
class _Candidate:
    channel: str
    config_id: int | None
    target_ref: str
    source: str
    target: str = field(repr=False)


def env_targets(settings: Settings) -> list[_Candidate]:
    """The environment's default target per channel, where configured."""
    configured = [
        ("slack", "SLACK_WEBHOOK_URL", settings.slack_webhook_url),
        ("email", "ALERT_EMAIL_TO", ",".join(settings.alert_email_to)),
        ("pagerduty", "PAGERDUTY_ROUTING_KEY", settings.pagerduty_routing_key),
        ("webhook", "WEBHOOK_URL", settings.webhook_url),
    ]
    return [_Candidate(channel, None, f"env:{env}", env, value) for channel, env, value in configured if value]


def plan_routes(
    event: str,
    priority: str,
    *,
    config: AutoPromotionConfig,
    settings: Settings,
    rows: Sequence[ConfigRow],
    breach_triggered_refs: Collection[str] = (),
) -> tuple[list[Route], list[Unroutable]]:
    """Routes for ``event`` of an experiment with ``priority``.

    notification_configs rows match on channel, subscribed events and minimum priority; the environment's
    defaults subscribe to the four main events and the approvals' two, plus ``promotion.eligible`` when
    ``notifyEligible`` is on.
    ``notifications.enabled`` and ``notifications.channels`` filter both. Two routes to the same channel and
    target collapse into one (a row wins over the environment default). ``breach_triggered_refs`` are the
    PagerDuty target_refs that already got this promotion's guard-breach trigger (so a rollback resolves).
    """
    notifications = config.notifications
    if not notifications.enabled:
        return [], []
    candidates: list[_Candidate] = []
    for row in rows:
        if (
            row.channel in notifications.channels
            and (event in row.events or ALSO_SUBSCRIBED_AS.get(event, event) in row.events)
            and (priority_rank(priority) >= priority_rank(row.min_priority))
        ):
            name = f' "{row.name}"' if row.name else ""
            candidates.append(_Candidate(row.channel, row.id, f"config:{row.id}", f"config {row.id}{name}", row.target))
    env_events = (*ENV_EVENTS, "promotion.eligible") if notifications.notify_eligible else ENV_EVENTS
    if event in env_events:
        candidates += [c for c in env_targets(settings) if c.channel in notifications.channels]

    routes: list[Route] = []
    unroutable: list[Unroutable] = []
    seen: set[tuple[str, str]] = set()
    for c in candidates:
        label = target_label(c.channel, c.target, c.source)
        key = (c.channel, _normalized(c.channel, c.target))
        if key in seen:
            continue
        seen.add(key)
        action: str | None = None
        if c.channel == "email" and not settings.smtp_host:
            unroutable.append(Unroutable(c.channel, label, "SMTP_HOST is not set"))
            continue
        if c.channel == "pagerduty":
            action = pagerduty_action(event, priority, guard_breach_triggered=c.target_ref in breach_triggered_refs)
            if action is None:
                continue
        routes.append(Route(c.channel, c.config_id, c.target_ref, label, action))
    return routes, unroutable


def _normalized(channel: str, target: str) -> str:
    if channel == "email":
        return ",".join(sorted({a.strip().lower() for a in split_addresses(target)}))
    return target.strip()
