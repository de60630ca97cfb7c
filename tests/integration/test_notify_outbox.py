"""The outbox in PostgreSQL: enqueue inside the caller's transaction, routing from notification_configs, the
leased claim and its fencing."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
import structlog

from tests.factories import create_experiment
from tests.fakes import engine_payload, promote_with_notifications, roll_back_with_notifications
from worker.config import AutoPromotionConfig, Notifications, Settings
from worker.notify import EVENTS, enqueue_notifications, requeue_dead
from worker.notify.delivery import AttemptResult
from worker.notify.outbox import claim_due, record_attempt

SLACK = "https://hooks.slack.com/services/T0/B0/SLACKSECRET"


def _settings(**overrides: Any) -> Settings:
    return Settings(**overrides)


def _config(**notifications: Any) -> AutoPromotionConfig:
    return AutoPromotionConfig(notifications=Notifications(**notifications))


async def _add_config(
    conn: asyncpg.Connection,
    channel: str,
    target: str,
    *,
    events: list[str] | None = None,
    min_priority: str = "normal",
    secret: str | None = None,
    enabled: bool = True,
) -> int:
    config_id: int = await conn.fetchval(
        """INSERT INTO notification_configs (name, channel, target, secret, events, min_priority, enabled)
           VALUES ($1, $2, $3, $4, coalesce($5, ARRAY['promotion.promoted', 'promotion.rolled_back',
                                                      'guard.breached', 'promotion.failed']), $6, $7)
           RETURNING id""",
        f"{channel}-cfg",
        channel,
        target,
        secret,
        events,
        min_priority,
        enabled,
    )
    return config_id


async def _outbox(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch("SELECT * FROM notification_outbox ORDER BY id")
    return rows


async def test_enqueue_writes_rows_in_the_callers_transaction(conn: asyncpg.Connection) -> None:
    exp = await create_experiment(conn, "checkout-button")
    settings = _settings(slack_webhook_url=SLACK, webhook_url="https://r.example.com/h?token=T0KEN1234")
    promotion_id, queued = await promote_with_notifications(
        conn, experiment_id=exp, config=_config(), settings=settings
    )
    assert queued == 2
    rows = await _outbox(conn)
    assert [(r["channel"], r["status"], r["event"], str(r["promotion_id"])) for r in rows] == [
        ("slack", "pending", "promotion.promoted", promotion_id),
        ("webhook", "pending", "promotion.promoted", promotion_id),
    ]
    assert rows[0]["target_ref"] == "env:SLACK_WEBHOOK_URL" and rows[0]["config_id"] is None
    assert rows[0]["target_label"] == "slack SLACK_WEBHOOK_URL: https://hooks.slack.com/***"
    assert rows[0]["payload"]["variant"] == "variant-b"

    # A promotion that does not commit leaves no notification behind.
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            await conn.execute("UPDATE experiment_promotions SET rollback_at = now(), rollback_reason = 'x'")
            await enqueue_notifications(
                conn,
                event="promotion.rolled_back",
                payload=engine_payload("promotion.rolled_back"),
                config=_config(),
                settings=settings,
            )
            raise RuntimeError("the promotion failed after enqueueing")
    assert len(await _outbox(conn)) == 2


async def test_secrets_stay_out_of_outbox_rows(conn: asyncpg.Connection) -> None:
    await create_experiment(conn, "checkout-button")
    await _add_config(conn, "webhook", "https://r.example.com/hook/CFGPATHSECRET", secret="CFGSIGNINGSECRET")
    settings = _settings(
        slack_webhook_url=SLACK,
        pagerduty_routing_key="PDKEY00000000001",
        webhook_url="https://r.example.com/h?token=ENVTOKEN99",
        webhook_secret="ENVSIGNINGSECRET",
    )
    queued = await enqueue_notifications(
        conn,
        event="guard.breached",
        payload=engine_payload("guard.breached", reason="errors up"),
        config=_config(),
        settings=settings,
    )
    assert queued == 4
    dump = repr([dict(r) for r in await _outbox(conn)])
    for secret in (
        "SLACKSECRET",
        "PDKEY00000000001",
        "ENVTOKEN99",
        "ENVSIGNINGSECRET",
        "CFGPATHSECRET",
        "CFGSIGNINGSECRET",
    ):
        assert secret not in dump


async def test_config_subscribed_only_to_rollbacks_gets_nothing_on_promotion(conn: asyncpg.Connection) -> None:
    exp = await create_experiment(conn, "checkout-button")
    config_id = await _add_config(conn, "webhook", "https://r.example.com/rollbacks", events=["promotion.rolled_back"])
    promotion_id, queued = await promote_with_notifications(
        conn, experiment_id=exp, config=_config(), settings=_settings()
    )
    assert queued == 0
    assert await _outbox(conn) == []
    queued = await roll_back_with_notifications(
        conn, promotion_id, config=_config(), settings=_settings(), reason="manual", actor="alice", breach_first=True
    )
    assert queued == 1
    [row] = await _outbox(conn)
    assert (row["event"], row["config_id"], row["target_ref"]) == (
        "promotion.rolled_back",
        config_id,
        f"config:{config_id}",
    )


async def test_minimum_priority_disabled_rows_and_channel_filter(conn: asyncpg.Connection) -> None:
    await _add_config(conn, "webhook", "https://r.example.com/critical", min_priority="critical")
    await _add_config(conn, "webhook", "https://r.example.com/off", enabled=False)
    await _add_config(conn, "slack", SLACK)
    payload = engine_payload()
    assert (
        await enqueue_notifications(
            conn, event="promotion.promoted", payload=payload, config=_config(), settings=_settings()
        )
        == 1
    )
    payload["priority"] = "critical"
    assert (
        await enqueue_notifications(
            conn, event="promotion.promoted", payload=payload, config=_config(), settings=_settings()
        )
        == 2
    )
    assert (
        await enqueue_notifications(
            conn, event="promotion.promoted", payload=payload, config=_config(channels=("email",)), settings=_settings()
        )
        == 0
    )
    assert (
        await enqueue_notifications(
            conn, event="promotion.promoted", payload=payload, config=_config(enabled=False), settings=_settings()
        )
        == 0
    )


async def test_eligible_only_when_subscribed_explicitly(conn: asyncpg.Connection) -> None:
    settings = _settings(slack_webhook_url=SLACK)
    await _add_config(conn, "webhook", "https://r.example.com/default-events")
    payload = engine_payload("promotion.eligible", dryRun=True)
    assert (
        await enqueue_notifications(
            conn, event="promotion.eligible", payload=payload, config=_config(), settings=settings
        )
        == 0
    )
    assert (
        await enqueue_notifications(
            conn, event="promotion.eligible", payload=payload, config=_config(notify_eligible=True), settings=settings
        )
        == 1
    )
    await _add_config(conn, "webhook", "https://r.example.com/eligible", events=["promotion.eligible"])
    assert (
        await enqueue_notifications(
            conn, event="promotion.eligible", payload=payload, config=_config(), settings=settings
        )
        == 1
    )
    assert [r["target_ref"] for r in await _outbox(conn)] == ["env:SLACK_WEBHOOK_URL", "config:2"]


async def test_pagerduty_rollback_resolves_only_what_a_breach_triggered(conn: asyncpg.Connection) -> None:
    exp = await create_experiment(conn, "checkout-button")
    settings = _settings(pagerduty_routing_key="PDKEY00000000001")
    promotion_id, queued = await promote_with_notifications(
        conn, experiment_id=exp, config=_config(), settings=settings
    )
    assert queued == 0  # a normal-priority promotion does not page
    assert (
        await roll_back_with_notifications(
            conn, promotion_id, config=_config(), settings=settings, reason="error rate 7% > 5%"
        )
        == 2
    )
    assert [(r["event"], r["action"]) for r in await _outbox(conn)] == [
        ("guard.breached", "trigger"),
        ("promotion.rolled_back", "resolve"),
    ]
    # A manual rollback nobody was paged for opens (or joins) the promotion's incident instead.
    exp2 = await create_experiment(conn, "pricing-page")
    other, _ = await promote_with_notifications(
        conn, experiment_id=exp2, config=_config(), settings=settings, experiment_name="pricing-page"
    )
    await roll_back_with_notifications(
        conn,
        other,
        config=_config(),
        settings=settings,
        reason="manual",
        actor="alice",
        breach_first=False,
        experiment_name="pricing-page",
    )
    assert [(r["event"], r["action"]) for r in await _outbox(conn)][-1] == ("promotion.rolled_back", "trigger")


async def test_unknown_event_is_refused_and_unroutable_email_is_logged(conn: asyncpg.Connection) -> None:
    with pytest.raises(ValueError, match="unknown notification event"):
        await enqueue_notifications(
            conn, event="promotion.exploded", payload={}, config=_config(), settings=_settings()
        )
    assert "promotion.eligible" in EVENTS
    with structlog.testing.capture_logs() as logs:
        queued = await enqueue_notifications(
            conn,
            event="promotion.promoted",
            payload=engine_payload(),
            config=_config(),
            settings=_settings(alert_email_to=("ops@x.io",)),
        )
    assert queued == 0
    assert [(e["event"], e["reason"]) for e in logs if e["event"] == "notification.unroutable"] == [
        ("notification.unroutable", "SMTP_HOST is not set"),
    ]


async def test_claim_is_a_lease_and_stale_workers_are_fenced(conn: asyncpg.Connection) -> None:
    await enqueue_notifications(
        conn,
        event="promotion.promoted",
        payload=engine_payload(),
        config=_config(),
        settings=_settings(slack_webhook_url=SLACK),
    )
    [first] = await claim_due(conn, limit=10, per_target=10, lease_base=60.0, rate=1.0)
    assert first.attempts == 1 and 60.0 < first.lease_seconds <= 61.0
    assert await claim_due(conn, limit=10, per_target=10, lease_base=60.0, rate=1.0) == []  # leased

    await conn.execute("UPDATE notification_outbox SET next_attempt_at = now()")  # the lease runs out
    [second] = await claim_due(conn, limit=10, per_target=10, lease_base=60.0, rate=1.0)
    assert (second.id, second.attempts) == (first.id, 2)

    failed = AttemptResult(ok=False, error="HTTP 500")
    assert not await record_attempt(conn, first, outcome="retry", result=failed, retry_in=1.0, duration_ms=1.0)
    assert await record_attempt(
        conn, second, outcome="sent", result=AttemptResult(ok=True, http_status=200), retry_in=0.0, duration_ms=1.0
    )
    assert not await record_attempt(conn, first, outcome="dead", result=failed, retry_in=0.0, duration_ms=1.0)
    row = await conn.fetchrow("SELECT status, attempts, last_error FROM notification_outbox")
    assert dict(row) == {"status": "sent", "attempts": 2, "last_error": None}
    logs = await conn.fetch("SELECT status, attempt FROM notification_logs ORDER BY id")
    assert [(r["status"], r["attempt"]) for r in logs] == [("retry", 1), ("sent", 2), ("dead", 1)]


async def test_claim_keeps_a_targets_events_of_one_promotion_in_order(conn: asyncpg.Connection) -> None:
    exp = await create_experiment(conn, "checkout-button")
    settings = _settings(slack_webhook_url=SLACK, pagerduty_routing_key="PDKEY00000000001")
    promotion_id, _ = await promote_with_notifications(conn, experiment_id=exp, config=_config(), settings=settings)
    await roll_back_with_notifications(conn, promotion_id, config=_config(), settings=settings, reason="errors")
    rows = await claim_due(conn, limit=50, per_target=50, lease_base=60.0, rate=1.0)
    # One row per (target, promotion) at a time: the Slack promotion message and the PagerDuty trigger.
    assert [(r.channel, r.event) for r in rows] == [("slack", "promotion.promoted"), ("pagerduty", "guard.breached")]
    for row in rows:
        await record_attempt(conn, row, outcome="sent", result=AttemptResult(ok=True), retry_in=0, duration_ms=1)
    rows = await claim_due(conn, limit=50, per_target=50, lease_base=60.0, rate=1.0)
    assert [(r.channel, r.event) for r in rows] == [("slack", "guard.breached"), ("pagerduty", "promotion.rolled_back")]


async def test_claim_takes_at_most_the_per_target_share(conn: asyncpg.Connection) -> None:
    for _ in range(5):
        await enqueue_notifications(
            conn,
            event="promotion.promoted",
            payload=engine_payload(),
            config=_config(),
            settings=_settings(slack_webhook_url=SLACK),
        )
    rows = await claim_due(conn, limit=50, per_target=2, lease_base=10.0, rate=2.0)
    assert len(rows) == 2
    # The second row waits for the rate limit longer, so its lease is longer by one interval.
    assert rows[1].lease_seconds - rows[0].lease_seconds == pytest.approx(0.5, abs=0.05)


async def test_requeue_dead_gives_rows_fresh_attempts(conn: asyncpg.Connection) -> None:
    await enqueue_notifications(
        conn,
        event="promotion.promoted",
        payload=engine_payload(),
        config=_config(),
        settings=_settings(slack_webhook_url=SLACK),
    )
    await conn.execute("UPDATE notification_outbox SET status = 'dead', attempts = 8, last_error = 'HTTP 500'")
    assert await requeue_dead(conn) == 1
    row = await conn.fetchrow("SELECT status, attempts, last_error FROM notification_outbox")
    assert dict(row) == {"status": "pending", "attempts": 0, "last_error": None}
