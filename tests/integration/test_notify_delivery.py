"""The dispatcher against real local servers: an aiohttp app playing Slack, PagerDuty and a webhook receiver, and
aiosmtpd receiving mail. Every test waits for a condition with a deadline."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
import structlog

from tests.factories import create_experiment
from tests.fakes import (
    PAGERDUTY_ACCEPTED,
    FakeHTTPReceiver,
    FakeSMTPServer,
    Reply,
    engine_payload,
    pagerduty_incidents,
    promote_with_notifications,
    roll_back_with_notifications,
    self_signed_certificate,
)
from worker.config import AutoPromotionConfig, Notifications, Settings
from worker.metrics import REGISTRY
from worker.notify import Dispatcher, enqueue_notifications
from worker.notify.webhook import verify_signature

SLACK_PATH = "/services/T0000/B0000/SLACKPATHSECRET"
PD_PATH = "/v2/enqueue"
HOOK_PATH = "/hooks/autopromote"
PD_KEY = "PDROUTINGKEY00000000000000000001"
HOOK_TOKEN = "HOOKQUERYTOKEN77"
HOOK_SECRET = "WEBHOOKSIGNINGSECRET"
SMTP_PASSWORD = "SMTPPASSWORD-42"
PUBLIC = "https://ab.example.com"
SECRETS = ("SLACKPATHSECRET", PD_KEY, HOOK_TOKEN, HOOK_SECRET, SMTP_PASSWORD)


@pytest.fixture
async def http() -> AsyncIterator[FakeHTTPReceiver]:
    async with FakeHTTPReceiver() as receiver:
        receiver.defaults[PD_PATH] = PAGERDUTY_ACCEPTED
        yield receiver


@pytest.fixture
async def smtp() -> AsyncIterator[FakeSMTPServer]:
    async with FakeSMTPServer(credentials=("autopromote", SMTP_PASSWORD)) as server:
        yield server


def _settings(http: FakeHTTPReceiver, smtp: FakeSMTPServer | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "slack_webhook_url": http.url(SLACK_PATH),
        "pagerduty_routing_key": PD_KEY,
        "pagerduty_events_url": http.url(PD_PATH),
        "webhook_url": http.url(f"{HOOK_PATH}?token={HOOK_TOKEN}"),
        "webhook_secret": HOOK_SECRET,
        "public_url": PUBLIC,
        "notify_timeout": 2.0,
        "notify_backoff_base": 0.01,
        "notify_max_attempts": 5,
        "notify_rate_per_second": 1000.0,
    }
    if smtp is not None:
        values.update(
            smtp_host="127.0.0.1",
            smtp_port=smtp.port,
            smtp_security="none",
            smtp_username="autopromote",
            smtp_password=SMTP_PASSWORD,
            smtp_from="autopromote@example.com",
            alert_email_to=("ops@example.com", "growth@example.com"),
        )
    values.update(overrides)
    return Settings(**values)


def _config(**notifications: Any) -> AutoPromotionConfig:
    return AutoPromotionConfig(notifications=Notifications(**notifications))


async def _statuses(conn: asyncpg.Connection) -> list[str]:
    return [r["status"] for r in await conn.fetch("SELECT status FROM notification_outbox ORDER BY id")]


async def _drive(dispatcher: Dispatcher, done: Callable[[], Awaitable[bool]], *, within: float = 15.0) -> None:
    """Run dispatch_once until ``done`` holds (the test's stand-in for Dispatcher.run's loop)."""
    deadline = time.monotonic() + within
    while True:
        await dispatcher.dispatch_once()
        if await done():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"outbox not done after {within} s")
        await asyncio.sleep(0.01)


def _all(conn: asyncpg.Connection, status: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        statuses = await _statuses(conn)
        return bool(statuses) and all(s == status for s in statuses)

    return check


async def _logs(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch("SELECT * FROM notification_logs ORDER BY id")
    return rows


# ---------------------------------------------------------------------------------------------------------
async def test_promotion_reaches_every_channel_with_its_facts(
    conn: asyncpg.Connection, pool: asyncpg.Pool, http: FakeHTTPReceiver, smtp: FakeSMTPServer
) -> None:
    exp = await create_experiment(conn, "checkout-button", priority="critical")
    settings = _settings(http, smtp)
    config = _config(include_detailed_metrics=True)
    promotion_id, queued = await promote_with_notifications(
        conn, experiment_id=exp, config=config, settings=settings, priority="critical"
    )
    assert queued == 4
    delivered: list[dict[str, Any]] = []
    dispatcher = Dispatcher(pool, settings, on_delivered=delivered.append)
    assert await dispatcher.dispatch_once() == 4
    assert await _statuses(conn) == ["sent"] * 4
    assert sorted(d["channel"] for d in delivered) == ["email", "pagerduty", "slack", "webhook"]

    [slack] = http.received(SLACK_PATH)
    body = slack.json()
    assert body["text"] == "Promoted: checkout-button: promoted variant-b over control"
    fields = [f["text"] for b in body["blocks"] if "fields" in b for f in b["fields"]]
    assert {
        "*Experiment*\ncheckout-button",
        "*Winning variant*\nvariant-b (control: control)",
        "*Confidence*\n97.30%",
        "*Improvement*\n+6.20%",
        "*Acted by*\nautopromote",
    } <= set(fields)
    text = str(body["blocks"])
    assert "Safety checks" in text and "Per-variant statistics" in text
    assert f"<{PUBLIC}/experiments/checkout-button|Open in the dashboard>" in text

    [pd] = http.received(PD_PATH)
    event = pd.json()
    assert (event["routing_key"], event["event_action"], event["dedup_key"]) == (PD_KEY, "trigger", promotion_id)
    assert event["payload"]["severity"] == "warning"
    assert event["payload"]["component"] == "checkout-button"

    [hook] = http.received(HOOK_PATH)
    webhook_row = await conn.fetchval("SELECT id FROM notification_outbox WHERE channel = 'webhook'")
    assert hook.query == f"token={HOOK_TOKEN}"
    assert hook.headers["Idempotency-Key"] == str(webhook_row)
    assert verify_signature(HOOK_SECRET, hook.headers["X-Timestamp"], hook.body, hook.headers["X-Signature"])
    assert abs(int(hook.headers["X-Timestamp"]) - time.time()) < 60
    assert hook.json() == engine_payload(
        experimentName="checkout-button", priority="critical", promotionId=promotion_id
    )

    [mail] = smtp.messages
    assert mail.login == "autopromote"
    assert mail.rcpt_tos == ["ops@example.com", "growth@example.com"]
    assert mail.message["Subject"] == "[autopromote] Promoted: checkout-button (variant-b)"
    plain, html = mail.message.get_body(("plain",)), mail.message.get_body(("html",))
    assert plain is not None and html is not None
    for fact in (
        "checkout-button",
        "variant-b",
        "97.30%",
        "+6.20%",
        "[pass] Error Rate Check",
        "variant-b",
        f"{PUBLIC}/experiments/checkout-button",
    ):
        assert fact in plain.get_content()
        assert fact.split("] ")[-1] in html.get_content()

    logs = await _logs(conn)
    assert sorted((r["channel"], r["status"], r["http_status"]) for r in logs) == [
        ("email", "sent", None),
        ("pagerduty", "sent", 202),
        ("slack", "sent", 200),
        ("webhook", "sent", 200),
    ]
    email_log = next(r for r in logs if r["channel"] == "email")
    assert email_log["smtp_reply"].startswith("250 ") and email_log["duration_ms"] > 0


async def test_an_experiment_named_channel_pings_nobody_on_any_channel(
    conn: asyncpg.Connection, pool: asyncpg.Pool, http: FakeHTTPReceiver, smtp: FakeSMTPServer
) -> None:
    """A name that is markup somewhere arrives as text everywhere: escaped where a channel parses markup (Slack's
    mrkdwn and plain text, the email's HTML part), exactly as typed where it is data (JSON, plain text)."""
    name = "<!channel> & <@U024BE7LH>"
    exp = await create_experiment(conn, name, priority="critical")
    settings = _settings(http, smtp)
    await promote_with_notifications(
        conn,
        experiment_id=exp,
        config=_config(include_detailed_metrics=True),
        settings=settings,
        experiment_name=name,
        priority="critical",
    )
    dispatcher = Dispatcher(pool, settings)
    await _drive(dispatcher, _all(conn, "sent"))
    assert sorted(r["channel"] for r in await _logs(conn)) == ["email", "pagerduty", "slack", "webhook"]

    [slack] = http.received(SLACK_PATH)
    raw = slack.body.decode()
    assert "<!channel>" not in raw and "<@U024BE7LH>" not in raw  # anywhere in the body Slack received
    body = slack.json()
    escaped = "&lt;!channel&gt; &amp; &lt;@U024BE7LH&gt;"
    assert body["text"] == f"Promoted: {escaped}: promoted variant-b over control"
    assert body["blocks"][0]["text"] == {"type": "plain_text", "text": f"Promoted: {escaped}", "emoji": True}
    fields = [f["text"] for b in body["blocks"] if "fields" in b for f in b["fields"]]
    assert f"*Experiment*\n{escaped}" in fields

    [mail] = smtp.messages
    plain, html = mail.message.get_body(("plain",)), mail.message.get_body(("html",))
    assert plain is not None and html is not None
    assert name in mail.message["Subject"] and name in plain.get_content()  # text, not markup
    assert "<!channel>" not in html.get_content() and "&lt;!channel&gt; &amp; &lt;@U024BE7LH&gt;" in html.get_content()

    [pd] = http.received(PD_PATH)
    payload = pd.json()["payload"]
    assert payload["component"] == name and payload["summary"].startswith(f"Promoted: {name}: promoted")

    [hook] = http.received(HOOK_PATH)
    assert hook.json()["experimentName"] == name
    assert verify_signature(HOOK_SECRET, hook.headers["X-Timestamp"], hook.body, hook.headers["X-Signature"])


async def test_automatic_rollback_is_told_everywhere_and_resolves_the_breach_incident(
    conn: asyncpg.Connection, pool: asyncpg.Pool, http: FakeHTTPReceiver, smtp: FakeSMTPServer
) -> None:
    exp = await create_experiment(conn, "checkout-button")
    settings = _settings(http, smtp)
    promotion_id, _ = await promote_with_notifications(conn, experiment_id=exp, config=_config(), settings=settings)
    reason = "error rate 7.10% > 5.00% since promotion"
    queued = await roll_back_with_notifications(
        conn, promotion_id, config=_config(), settings=settings, reason=reason, actor="guard"
    )
    assert queued == 8  # guard.breached and promotion.rolled_back on each of the four channels
    dispatcher = Dispatcher(pool, settings)
    await _drive(dispatcher, _all(conn, "sent"))

    slack = [r.json() for r in http.received(SLACK_PATH)]
    assert [m["blocks"][0]["text"]["text"] for m in slack] == [
        "Promoted: checkout-button",
        "Guard breached: checkout-button",
        "Rolled back: checkout-button",
    ]
    rollback_text = str(slack[2]["blocks"])
    assert "error rate 7.10% &gt; 5.00% since promotion" in rollback_text
    assert "*Acted by*\\nguard" in rollback_text

    pd = [r.json() for r in http.received(PD_PATH)]
    assert [(e["event_action"], e["dedup_key"]) for e in pd] == [("trigger", promotion_id), ("resolve", promotion_id)]
    assert reason in pd[0]["payload"]["summary"]
    incidents = pagerduty_incidents(http.received(PD_PATH))
    assert [i.status for i in incidents[promotion_id]] == ["resolved"]

    hooks = http.received(HOOK_PATH)
    assert [h.json()["event"] for h in hooks] == ["promotion.promoted", "guard.breached", "promotion.rolled_back"]
    assert hooks[2].json()["reason"] == reason and hooks[2].json()["actor"] == "guard"
    assert len({h.headers["Idempotency-Key"] for h in hooks}) == 3

    subjects = [m.message["Subject"] for m in smtp.messages]
    assert subjects == [
        "[autopromote] Promoted: checkout-button (variant-b)",
        "[autopromote] Guard breached: checkout-button (variant-b)",
        "[autopromote] Rolled back: checkout-button (variant-b)",
    ]
    rollback_mail = smtp.messages[2].message.get_body(("plain",))
    assert rollback_mail is not None and f"Reason: {reason}" in rollback_mail.get_content()


async def test_retries_after_500_and_timeout_then_succeeds(
    conn: asyncpg.Connection, pool: asyncpg.Pool, http: FakeHTTPReceiver
) -> None:
    settings = _settings(http, pagerduty_routing_key=None, webhook_url=None, notify_timeout=0.5)
    http.script(SLACK_PATH, Reply(500, "internal_error"), Reply(200, "ok", delay=5.0), Reply(200, "ok"))
    await enqueue_notifications(
        conn, event="promotion.promoted", payload=engine_payload(), config=_config(), settings=settings
    )
    with structlog.testing.capture_logs() as captured:
        await _drive(Dispatcher(pool, settings), _all(conn, "sent"))
    assert len(http.received(SLACK_PATH)) == 3
    logs = await _logs(conn)
    assert [(r["status"], r["attempt"], r["http_status"], r["error"]) for r in logs] == [
        ("retry", 1, 500, "HTTP 500: internal_error"),
        ("retry", 2, None, "timed out after 0.5 s"),
        ("sent", 3, 200, None),
    ]
    row = await conn.fetchrow("SELECT attempts, sent_at, last_error FROM notification_outbox")
    assert row["attempts"] == 3 and row["sent_at"] is not None and row["last_error"] is None
    assert [e["event"] for e in captured if e["event"].startswith("notification.")] == [
        "notification.retry",
        "notification.retry",
        "notification.sent",
    ]


async def test_dead_letter_after_the_last_attempt(
    conn: asyncpg.Connection, pool: asyncpg.Pool, http: FakeHTTPReceiver
) -> None:
    settings = _settings(http, slack_webhook_url=None, pagerduty_routing_key=None, notify_max_attempts=3)
    http.defaults[HOOK_PATH] = Reply(503, "unavailable")
    await enqueue_notifications(
        conn, event="promotion.promoted", payload=engine_payload(), config=_config(), settings=settings
    )
    dead_before = REGISTRY.get_sample_value("autopromote_notifications_dead_total", {"channel": "webhook"}) or 0.0
    with structlog.testing.capture_logs() as captured:
        await _drive(Dispatcher(pool, settings), _all(conn, "dead"))
    assert len(http.received(HOOK_PATH)) == 3
    assert [(r["status"], r["attempt"]) for r in await _logs(conn)] == [("retry", 1), ("retry", 2), ("dead", 3)]
    assert await conn.fetchval("SELECT last_error FROM notification_outbox") == "HTTP 503: unavailable"
    [dead] = [e for e in captured if e["event"] == "notification.dead"]
    assert dead["log_level"] == "error" and dead["channel"] == "webhook" and dead["attempt"] == 3
    assert dead["target"] == f"webhook WEBHOOK_URL: http://127.0.0.1:{http.port}/***"
    dead_after = REGISTRY.get_sample_value("autopromote_notifications_dead_total", {"channel": "webhook"})
    assert dead_after == dead_before + 1


async def test_a_permanent_answer_is_dead_at_once(
    conn: asyncpg.Connection, pool: asyncpg.Pool, http: FakeHTTPReceiver
) -> None:
    settings = _settings(http, pagerduty_routing_key=None, webhook_url=None)
    http.defaults[SLACK_PATH] = Reply(404, "no_service")
    await enqueue_notifications(
        conn, event="promotion.promoted", payload=engine_payload(), config=_config(), settings=settings
    )
    await _drive(Dispatcher(pool, settings), _all(conn, "dead"))
    assert [(r["status"], r["http_status"]) for r in await _logs(conn)] == [("dead", 404)]


async def test_429_retry_after_is_honoured(
    conn: asyncpg.Connection, pool: asyncpg.Pool, http: FakeHTTPReceiver
) -> None:
    settings = _settings(http, pagerduty_routing_key=None, webhook_url=None)
    http.script(SLACK_PATH, Reply(429, "rate_limited", {"Retry-After": "1"}))
    await enqueue_notifications(
        conn, event="promotion.promoted", payload=engine_payload(), config=_config(), settings=settings
    )
    dispatcher = Dispatcher(pool, settings)
    assert await dispatcher.dispatch_once() == 1
    wait = await conn.fetchval("SELECT extract(epoch FROM next_attempt_at - now())::float8 FROM notification_outbox")
    assert 0.5 < wait <= 1.0  # Retry-After, not the 10 ms backoff
    assert await dispatcher.dispatch_once() == 0
    await _drive(dispatcher, _all(conn, "sent"))
    first, second = http.received(SLACK_PATH)
    assert second.received_at - first.received_at >= 0.95
    assert [(r["status"], r["http_status"]) for r in await _logs(conn)] == [("retry", 429), ("sent", 200)]


async def test_pagerduty_retry_never_opens_a_second_incident(
    conn: asyncpg.Connection, pool: asyncpg.Pool, http: FakeHTTPReceiver
) -> None:
    exp = await create_experiment(conn, "checkout-button", priority="critical")
    settings = _settings(http, slack_webhook_url=None, webhook_url=None, notify_timeout=0.5)
    # PagerDuty processes the first event but its answer is lost (slower than our timeout): we must retry.
    http.script(PD_PATH, Reply(202, PAGERDUTY_ACCEPTED.body, delay=5.0))
    promotion_id, _ = await promote_with_notifications(
        conn, experiment_id=exp, config=_config(), settings=settings, priority="critical"
    )
    await _drive(Dispatcher(pool, settings), _all(conn, "sent"))
    sent = http.received(PD_PATH)
    assert [r.json()["dedup_key"] for r in sent] == [promotion_id, promotion_id]
    incidents = pagerduty_incidents(sent)
    assert list(incidents) == [promotion_id]
    assert len(incidents[promotion_id]) == 1 and len(incidents[promotion_id][0].events) == 2


async def test_pagerduty_resolve_never_overtakes_a_trigger_being_retried(
    conn: asyncpg.Connection, pool: asyncpg.Pool, http: FakeHTTPReceiver
) -> None:
    exp = await create_experiment(conn, "checkout-button")
    settings = _settings(http, slack_webhook_url=None, webhook_url=None)
    http.script(PD_PATH, Reply(500, "oops"), Reply(500, "oops"))
    promotion_id, _ = await promote_with_notifications(conn, experiment_id=exp, config=_config(), settings=settings)
    await roll_back_with_notifications(conn, promotion_id, config=_config(), settings=settings, reason="errors up")
    await _drive(Dispatcher(pool, settings), _all(conn, "sent"))
    assert [r.json()["event_action"] for r in http.received(PD_PATH)] == ["trigger", "trigger", "trigger", "resolve"]
    assert [i.status for i in pagerduty_incidents(http.received(PD_PATH))[promotion_id]] == ["resolved"]


async def test_promotion_commits_when_every_channel_is_down_and_notifications_follow(
    conn: asyncpg.Connection, pool: asyncpg.Pool, http: FakeHTTPReceiver, smtp: FakeSMTPServer
) -> None:
    exp = await create_experiment(conn, "checkout-button", priority="critical")
    settings = _settings(http, smtp)
    await http.stop()
    await smtp.stop()

    promotion_id, queued = await promote_with_notifications(
        conn, experiment_id=exp, config=_config(), settings=settings, priority="critical"
    )
    assert queued == 4
    assert await conn.fetchval("SELECT count(*) FROM experiment_promotions WHERE id = $1::uuid", promotion_id) == 1

    dispatcher = Dispatcher(pool, settings, poll_interval=0.05)
    assert await dispatcher.dispatch_once() == 4
    assert await _statuses(conn) == ["pending"] * 4
    assert {r["status"] for r in await _logs(conn)} == {"retry"}

    await http.start()
    await smtp.start()
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher.run, stop)
        await _wait_db(conn, lambda: _all(conn, "sent")())
        stop.set()
    assert len(http.received(SLACK_PATH)) == len(http.received(PD_PATH)) == len(http.received(HOOK_PATH)) == 1
    assert len(smtp.messages) == 1


async def _wait_db(conn: asyncpg.Connection, check: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met after {within} s: {await _statuses(conn)}")
        await asyncio.sleep(0.02)


async def test_crash_between_send_and_mark_gives_one_duplicate_with_the_same_key(
    conn: asyncpg.Connection, pool: asyncpg.Pool, http: FakeHTTPReceiver
) -> None:
    settings = _settings(http, slack_webhook_url=None, pagerduty_routing_key=None, notify_timeout=2.0)
    http.script(HOOK_PATH, Reply(200, "ok", delay=30.0))  # the receiver has it; the sender never hears back
    await enqueue_notifications(
        conn, event="promotion.promoted", payload=engine_payload(), config=_config(), settings=settings
    )
    outbox_id = await conn.fetchval("SELECT id FROM notification_outbox")

    crashed = asyncio.create_task(Dispatcher(pool, settings, lease_margin=0.3).dispatch_once())
    await http.wait_for(1, HOOK_PATH)
    crashed.cancel()  # the worker dies between sending and recording
    with pytest.raises(asyncio.CancelledError):
        await crashed
    row = await conn.fetchrow("SELECT status, attempts FROM notification_outbox")
    assert dict(row) == {"status": "pending", "attempts": 1}
    assert await _logs(conn) == []

    survivor = Dispatcher(pool, settings, lease_margin=0.3)
    assert await survivor.dispatch_once() == 0  # the dead worker's lease still holds the row
    await _drive(survivor, _all(conn, "sent"))
    first, second = http.received(HOOK_PATH)
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"] == str(outbox_id)
    assert first.body == second.body
    assert [(r["status"], r["attempt"]) for r in await _logs(conn)] == [("sent", 2)]


async def test_rate_limit_queues_messages_to_one_target_rather_than_dropping(
    conn: asyncpg.Connection, pool: asyncpg.Pool, http: FakeHTTPReceiver
) -> None:
    settings = _settings(http, pagerduty_routing_key=None, webhook_url=None, notify_rate_per_second=5.0)
    for i in range(4):
        await enqueue_notifications(
            conn,
            event="promotion.promoted",
            payload=engine_payload(experimentName=f"exp-{i}"),
            config=_config(),
            settings=settings,
        )
    assert await Dispatcher(pool, settings).dispatch_once() == 4
    assert await _statuses(conn) == ["sent"] * 4
    arrivals = [r.received_at for r in http.received(SLACK_PATH)]
    assert len(arrivals) == 4
    # Four sends at 5 per second start 0.2 s apart: at least 0.6 s from first to last, less some network jitter.
    assert arrivals[-1] - arrivals[0] >= 0.5


async def test_no_secret_appears_in_logs_or_rows(
    conn: asyncpg.Connection, pool: asyncpg.Pool, http: FakeHTTPReceiver, smtp: FakeSMTPServer
) -> None:
    exp = await create_experiment(conn, "checkout-button", priority="critical")
    settings = _settings(http, smtp)
    # Receivers that echo what they got back into their error answers, and a mail server that defers once.
    http.script(SLACK_PATH, Reply(500, f"no hook at {SLACK_PATH}"))
    http.script(PD_PATH, Reply(500, f'{{"errors": ["routing_key {PD_KEY} unknown"]}}'))
    http.script(HOOK_PATH, Reply(502, f"bad gateway for {HOOK_PATH}?token={HOOK_TOKEN}"))
    smtp.replies.append("451 4.3.0 try again later")
    await conn.execute(
        "INSERT INTO notification_configs (name, channel, target, secret) VALUES ('cfg', 'webhook', $1, $2)",
        http.url(f"{HOOK_PATH}/cfg?key=CFGURLSECRET"),
        "CFGSIGNINGSECRET",
    )
    with structlog.testing.capture_logs() as captured:
        _, queued = await promote_with_notifications(
            conn, experiment_id=exp, config=_config(), settings=settings, priority="critical"
        )
        assert queued == 5
        await _drive(Dispatcher(pool, settings), _all(conn, "sent"))
    assert sum(1 for r in await _logs(conn) if r["status"] == "retry") == 4
    assert any("***" in (r["error"] or "") for r in await _logs(conn))
    shown = repr(captured) + repr([dict(r) for r in await conn.fetch("SELECT * FROM notification_outbox")])
    shown += repr([dict(r) for r in await _logs(conn)])
    for secret in (*SECRETS, "CFGURLSECRET", "CFGSIGNINGSECRET"):
        assert secret not in shown, secret


async def test_email_4xx_is_retried_and_5xx_is_dead(
    conn: asyncpg.Connection, pool: asyncpg.Pool, http: FakeHTTPReceiver, smtp: FakeSMTPServer
) -> None:
    settings = _settings(http, smtp, slack_webhook_url=None, pagerduty_routing_key=None, webhook_url=None)
    smtp.replies.extend(["451 4.3.0 try again later", "554 5.7.1 message rejected"])
    await enqueue_notifications(
        conn, event="promotion.promoted", payload=engine_payload(), config=_config(), settings=settings
    )
    await _drive(Dispatcher(pool, settings), _all(conn, "dead"))
    assert [(r["status"], r["smtp_reply"]) for r in await _logs(conn)] == [
        ("retry", "451 4.3.0 try again later"),
        ("dead", "554 5.7.1 message rejected"),
    ]


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_email_over_tls_with_login(
    conn: asyncpg.Connection,
    pool: asyncpg.Pool,
    http: FakeHTTPReceiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    security: str,
) -> None:
    made = self_signed_certificate(tmp_path)
    if made is None:
        pytest.skip("the openssl command is not installed")
    cert, key = made
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # how an operator trusts a private CA, too
    async with FakeSMTPServer(
        credentials=("autopromote", SMTP_PASSWORD), tls_context=server_tls, implicit_tls=security == "tls"
    ) as tls_smtp:
        settings = _settings(
            http, tls_smtp, smtp_security=security, slack_webhook_url=None, pagerduty_routing_key=None, webhook_url=None
        )
        await enqueue_notifications(
            conn, event="promotion.promoted", payload=engine_payload(), config=_config(), settings=settings
        )
        await _drive(Dispatcher(pool, settings), _all(conn, "sent"))
        [mail] = tls_smtp.messages
    assert mail.tls and mail.login == "autopromote"


async def test_deleted_or_disabled_config_is_dead_and_never_falls_back_to_env(
    conn: asyncpg.Connection, pool: asyncpg.Pool, http: FakeHTTPReceiver
) -> None:
    settings = _settings(http, slack_webhook_url=None, pagerduty_routing_key=None)
    first = await conn.fetchval(
        "INSERT INTO notification_configs (channel, target) VALUES ('webhook', $1) RETURNING id", http.url("/cfg-one")
    )
    second = await conn.fetchval(
        "INSERT INTO notification_configs (channel, target) VALUES ('webhook', $1) RETURNING id", http.url("/cfg-two")
    )
    assert (
        await enqueue_notifications(
            conn, event="promotion.promoted", payload=engine_payload(), config=_config(), settings=settings
        )
        == 3
    )
    await conn.execute("DELETE FROM notification_configs WHERE id = $1", first)
    await conn.execute("UPDATE notification_configs SET enabled = false WHERE id = $1", second)
    await _drive(Dispatcher(pool, settings), _settled(conn))
    rows = await conn.fetch("SELECT target_ref, status, last_error FROM notification_outbox ORDER BY id")
    assert [(r["target_ref"], r["status"], r["last_error"]) for r in rows] == [
        (f"config:{first}", "dead", f"notification config {first} was deleted"),
        (f"config:{second}", "dead", f"notification config {second} is disabled"),
        ("env:WEBHOOK_URL", "sent", None),
    ]
    assert [r.path for r in http.requests] == [HOOK_PATH]


def _settled(conn: asyncpg.Connection) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return "pending" not in await _statuses(conn)

    return check


async def test_run_delivers_on_wake_and_stops_when_asked(
    conn: asyncpg.Connection, pool: asyncpg.Pool, http: FakeHTTPReceiver
) -> None:
    settings = _settings(http, pagerduty_routing_key=None, webhook_url=None)
    dispatcher = Dispatcher(pool, settings, poll_interval=60.0)  # without a wake-up it would sleep for a minute
    stop = anyio.Event()
    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            tg.start_soon(dispatcher.run, stop)
            for n in (1, 2):  # the second arrives while run() sleeps with nothing pending
                await enqueue_notifications(
                    conn, event="promotion.promoted", payload=engine_payload(), config=_config(), settings=settings
                )
                dispatcher.wake()
                await http.wait_for(n, SLACK_PATH)
                await _wait_db(conn, _all(conn, "sent"))
            stop.set()
    assert await _statuses(conn) == ["sent", "sent"]


async def test_429_holds_back_the_targets_queued_rows_without_counting_an_attempt(
    conn: asyncpg.Connection, pool: asyncpg.Pool, http: FakeHTTPReceiver
) -> None:
    settings = _settings(http, pagerduty_routing_key=None, webhook_url=None, notify_rate_per_second=2.0)
    # Slots at 0, 0.5 and 1.0 s; the 429 on the first asks for 2 s, so the other two are still held back.
    http.script(SLACK_PATH, Reply(429, "rate_limited", {"Retry-After": "2"}))
    for i in range(3):
        await enqueue_notifications(
            conn,
            event="promotion.promoted",
            payload=engine_payload(experimentName=f"exp-{i}"),
            config=_config(),
            settings=settings,
        )
    dispatcher = Dispatcher(pool, settings)
    assert await dispatcher.dispatch_once() == 1  # the other two were waiting for their slot when the 429 came
    assert len(http.received(SLACK_PATH)) == 1
    await _drive(dispatcher, _all(conn, "sent"))
    first, *rest = http.received(SLACK_PATH)
    assert len(rest) == 3 and all(r.received_at - first.received_at >= 1.95 for r in rest)
    rows = await conn.fetch("SELECT attempts FROM notification_outbox ORDER BY id")
    assert [r["attempts"] for r in rows] == [2, 1, 1]
    assert [(r["status"], r["http_status"]) for r in await _logs(conn)].count(("retry", 429)) == 1
