"""The notification outbox: enqueue inside the caller's transaction, and the claim and bookkeeping the
dispatcher does around each attempt. The SQL lives in worker/db/notify.sql, loaded by worker.db.sql (NQ)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from worker.config import AutoPromotionConfig, Settings
from worker.db.connect import Connection, Record
from worker.db.sql import NQ as Q
from worker.notify.delivery import AttemptResult, OutboxRow
from worker.notify.events import EVENTS, normalize_priority
from worker.notify.routing import ConfigRow, Route, plan_routes

log = structlog.get_logger("worker.notify")


@dataclass(frozen=True, slots=True)
class PlannedNotifications:
    """The outbox rows one event becomes: routes plus what every row of it shares."""

    event: str
    experiment_name: str | None
    promotion_id: str | None
    priority: str
    body: str
    detailed: bool
    routes: tuple[Route, ...]

    def rows(self) -> list[tuple[Any, ...]]:
        """Arguments of ``insert_outbox``, one tuple per route."""
        return [
            (
                self.event,
                r.channel,
                r.config_id,
                r.target_ref,
                r.target_label,
                self.experiment_name,
                self.promotion_id,
                self.priority,
                self.body,
                r.action,
                self.detailed,
            )
            for r in self.routes
        ]

    def columns(self) -> tuple[list[Any], ...]:
        """The routes as column arrays (channel, config_id, target_ref, target_label, action), for unnest."""
        return (
            [r.channel for r in self.routes],
            [r.config_id for r in self.routes],
            [r.target_ref for r in self.routes],
            [r.target_label for r in self.routes],
            [r.action for r in self.routes],
        )


def _require_known(event: str) -> None:
    if event not in EVENTS:
        raise ValueError(f"unknown notification event {event!r}; expected one of {', '.join(EVENTS)}")


def config_rows(records: Sequence[Mapping[str, Any]]) -> list[ConfigRow]:
    """notification_configs rows (from ``routable_configs`` or the same columns as JSON) for routing."""
    return [
        ConfigRow(int(r["id"]), r["name"], r["channel"], r["target"], tuple(r["events"]), r["min_priority"])
        for r in records
    ]


def plan_notifications(
    *,
    event: str,
    payload: Mapping[str, Any],
    config: AutoPromotionConfig,
    settings: Settings,
    rows: Sequence[ConfigRow],
    breach_triggered_refs: Sequence[str] = (),
) -> PlannedNotifications:
    """Route ``event`` to every matching target (pure; unroutable targets are logged). ValueError for an unknown
    event."""
    _require_known(event)
    priority = normalize_priority(payload.get("priority"))
    experiment = payload.get("experimentName")
    experiment_name = str(experiment) if experiment is not None else None
    routes, unroutable = plan_routes(  # none while notifications are disabled
        event, priority, config=config, settings=settings, rows=rows, breach_triggered_refs=breach_triggered_refs
    )
    for u in unroutable:
        log.warning(
            "notification.unroutable",
            channel=u.channel,
            target=u.target_label,
            reason=u.reason,
            notification_event=event,
            experiment=experiment_name,
        )
    body = json.dumps(payload, default=str, separators=(",", ":")) if routes else ""
    return PlannedNotifications(
        event,
        experiment_name,
        _uuid_or_none(payload.get("promotionId")),
        priority,
        body,
        config.notifications.include_detailed_metrics,
        tuple(routes),
    )


async def enqueue_notifications(
    conn: Connection,
    *,
    event: str,
    payload: Mapping[str, Any],
    config: AutoPromotionConfig,
    settings: Settings,
) -> int:
    """Route ``event`` to every matching target and write one outbox row per target, on ``conn`` (the caller's
    transaction). Returns the number of rows written (the promote result's notificationsQueued).

    Nothing is sent here: a slow or dead channel cannot delay or fail the caller. Rows hold a redacted label and
    a reference to where the secret lives, never the secret. ValueError for an unknown event.
    """
    _require_known(event)
    if not config.notifications.enabled:
        return 0
    rows = config_rows(await conn.fetch(Q["routable_configs"], event))
    breached: list[str] = []
    promotion_id = _uuid_or_none(payload.get("promotionId"))
    if event in ("promotion.rolled_back", "rollout.rolled_back") and promotion_id is not None:
        breached = [r["target_ref"] for r in await conn.fetch(Q["breach_triggered_refs"], promotion_id)]
    planned = plan_notifications(
        event=event, payload=payload, config=config, settings=settings, rows=rows, breach_triggered_refs=breached
    )
    if not planned.routes:
        return 0
    await conn.executemany(Q["insert_outbox"], planned.rows())
    log.debug(
        "notification.queued",
        notification_event=event,
        experiment=planned.experiment_name,
        rows=len(planned.routes),
        targets=[r.target_label for r in planned.routes],
    )
    return len(planned.routes)


async def claim_due(
    conn: Connection, *, limit: int, per_target: int, lease_base: float, rate: float
) -> list[OutboxRow]:
    """Lease due rows (one statement, its own short transaction); see queries.sql ``claim_due``."""
    records = await conn.fetch(Q["claim_due"], limit, per_target, lease_base, rate)
    rows = [
        OutboxRow(
            id=r["id"],
            event=r["event"],
            channel=r["channel"],
            config_id=r["config_id"],
            target_ref=r["target_ref"],
            target_label=r["target_label"],
            experiment_name=r["experiment_name"],
            promotion_id=r["promotion_id"],
            priority=r["priority"],
            payload=_payload(r["payload"]),
            action=r["action"],
            detailed=r["detailed"],
            attempts=r["attempts"],
            lease_seconds=r["lease_seconds"],
        )
        for r in records
    ]
    rows.sort(key=lambda row: row.id)
    return rows


async def fetch_configs(conn: Connection, ids: Sequence[int]) -> dict[int, Record]:
    """The secret-bearing config rows for a batch, read at send time."""
    if not ids:
        return {}
    return {r["id"]: r for r in await conn.fetch(Q["configs_by_id"], list(ids))}


async def record_attempt(
    conn: Connection,
    row: OutboxRow,
    *,
    outcome: str,
    result: AttemptResult,
    retry_in: float,
    duration_ms: float,
) -> bool:
    """Log the attempt and move the row (sent, retry in ``retry_in`` s, or dead) in one transaction.

    Returns False when the row had moved on without us (another worker claimed it after our lease ran out);
    the attempt is logged either way.
    """
    async with conn.transaction():
        if outcome == "sent":
            moved = await conn.fetchval(Q["mark_sent"], row.id)
        elif outcome == "retry":
            moved = await conn.fetchval(Q["mark_retry"], row.id, row.attempts, retry_in, result.error)
        else:
            moved = await conn.fetchval(Q["mark_dead"], row.id, row.attempts, result.error)
        await conn.execute(
            Q["insert_log"],
            row.id,
            row.channel,
            row.target_label,
            row.event,
            outcome,
            row.attempts,
            result.http_status,
            result.smtp_reply,
            result.error,
            duration_ms,
        )
    return moved is not None


async def release(conn: Connection, row: OutboxRow, *, retry_in: float) -> bool:
    """Give a claimed, unattempted row back (its attempt uncounted), due in ``retry_in`` seconds."""
    return await conn.fetchval(Q["release"], row.id, row.attempts, retry_in) is not None


async def next_due_in(conn: Connection) -> float | None:
    """Seconds until the next claimable row is due (negative: overdue), None when nothing is pending."""
    value = await conn.fetchval(Q["next_due_in"])
    return None if value is None else float(value)


async def requeue_dead(conn: Connection, outbox_ids: Sequence[int] | None = None) -> int:
    """Give dead-lettered rows (all, or ``outbox_ids``) a fresh set of attempts; returns how many."""
    ids = None if outbox_ids is None else list(outbox_ids)
    return len(await conn.fetch(Q["requeue_dead"], ids))


def _uuid_or_none(value: object) -> str | None:
    if value is None:
        return None
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        log.warning("notification.bad_promotion_id", promotion_id=str(value))
        return None


def _payload(text: str) -> Mapping[str, Any]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {}
