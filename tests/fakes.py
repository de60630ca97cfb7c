"""Local stand-ins for the outside world, on 127.0.0.1: an aiohttp app that plays Slack, PagerDuty and webhook
receivers, an aiosmtpd server, and the engine's side of a promotion (which is written elsewhere in parallel).

The servers speak the real protocols and record what they get; tests script their answers (a 500, a 429 with
Retry-After, an answer slower than the client's timeout) and can stop them and start them again on the same
port to play "down, then back".
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import shutil
import ssl
import subprocess
import time
import uuid
import warnings
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import asyncpg
from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from worker.config import AutoPromotionConfig, Settings
from worker.decide import ERROR_RATE_CHECK, LATENCY_CHECK, TRAFFIC_BALANCE_CHECK, SafetyCheck
from worker.domain.events import EvaluationEvent
from worker.domain.results import NotificationPayload
from worker.notify import enqueue_notifications
from worker.services.effects import NotificationEvent


async def wait_until(predicate: Callable[[], bool], *, within: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; AssertionError naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------------------------------------------------
# HTTP: Slack incoming webhooks, PagerDuty Events API v2, generic webhook receivers
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Reply:
    """A scripted answer. ``delay`` holds the answer back (longer than the client's timeout plays a hang)."""

    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(slots=True)
class ReceivedRequest:
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    received_at: float  # time.monotonic()
    answered: int  # the status the server chose (the client may never have seen it)

    def json(self) -> Any:
        return json.loads(self.body)


PAGERDUTY_ACCEPTED = Reply(
    202, json.dumps({"status": "success", "message": "Event processed"}), {"Content-Type": "application/json"}
)


class FakeHTTPReceiver:
    """Records every POST; answers each path from its script, then from its default (200 ``ok``)."""

    def __init__(self) -> None:
        self.requests: list[ReceivedRequest] = []
        self.defaults: dict[str, Reply] = {}
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._runner: web.AppRunner | None = None
        self._released = asyncio.Event()
        self.port = 0

    async def __aenter__(self) -> FakeHTTPReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen on 127.0.0.1 (the same port as before after a stop)."""
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._released = asyncio.Event()
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop listening (connections are refused until ``start``); held answers are released first."""
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *replies: Reply) -> None:
        """Answer the next requests to ``path`` with ``replies``, in order."""
        self._scripts[path].extend(replies)

    def received(self, path: str | None = None) -> list[ReceivedRequest]:
        return [r for r in self.requests if path is None or r.path == path]

    async def wait_for(self, count: int, path: str | None = None, *, within: float = 10.0) -> list[ReceivedRequest]:
        await wait_until(
            lambda: len(self.received(path)) >= count, within=within, what=f"{count} request(s) to {path or 'any path'}"
        )
        return self.received(path)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        script = self._scripts.get(path)
        reply = script.popleft() if script else self.defaults.get(path, Reply())
        body = await request.read()
        self.requests.append(
            ReceivedRequest(path, request.query_string, dict(request.headers), body, time.monotonic(), reply.status)
        )
        if reply.delay:
            try:
                await asyncio.wait_for(self._released.wait(), reply.delay)
            except TimeoutError:
                pass
        return web.Response(status=reply.status, text=reply.body, headers=reply.headers)


@dataclass(slots=True)
class Incident:
    status: str  # triggered | resolved
    events: list[dict[str, Any]]


def pagerduty_incidents(requests: Sequence[ReceivedRequest]) -> dict[str, list[Incident]]:
    """What PagerDuty makes of the events it accepted: per dedup_key, the incidents opened, in order.

    A trigger on a key with an open incident joins it; a resolve closes it; a trigger after a resolve opens a new
    one. Events the server answered with anything but 2xx were not processed.
    """
    incidents: dict[str, list[Incident]] = defaultdict(list)
    for request in requests:
        if not 200 <= request.answered < 300:
            continue
        event = request.json()
        key = event["dedup_key"]
        open_ = [i for i in incidents[key] if i.status == "triggered"]
        if event["event_action"] == "trigger":
            if open_:
                open_[0].events.append(event)
            else:
                incidents[key].append(Incident("triggered", [event]))
        elif event["event_action"] == "resolve" and open_:
            open_[0].status = "resolved"
            open_[0].events.append(event)
    return dict(incidents)


# ---------------------------------------------------------------------------------------------------------
# SMTP
# ---------------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    login: str | None
    tls: bool


class FakeSMTPServer:
    """aiosmtpd in the test's event loop. ``credentials`` turns on AUTH; ``tls_context`` offers STARTTLS (and
    then requires it), or with ``implicit_tls`` wraps the whole connection in TLS. ``replies`` scripts the answers
    to DATA (e.g. ``"451 4.3.0 try again later"``)."""

    def __init__(
        self,
        *,
        credentials: tuple[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
    ):
        self.messages: list[ReceivedMail] = []
        self.replies: deque[str] = deque()
        self.failed_logins: list[str] = []
        self._credentials = credentials
        self._tls_context = tls_context
        self._implicit_tls = implicit_tls
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    async def __aenter__(self) -> FakeSMTPServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        starttls = self._tls_context is not None and not self._implicit_tls

        def protocol() -> SMTP:
            with warnings.catch_warnings():
                # "Requiring AUTH while not requiring TLS": plain-text AUTH on 127.0.0.1 is what the plain tests
                # want. (aiosmtpd cannot tell an implicit-TLS connection is encrypted, so it only checks STARTTLS.)
                warnings.simplefilter("ignore", UserWarning)
                return SMTP(
                    self,
                    hostname="fake-smtp.test",
                    tls_context=self._tls_context if starttls else None,
                    require_starttls=starttls,
                    authenticator=self._authenticate if self._credentials else None,
                    auth_required=self._credentials is not None,
                    auth_require_tls=starttls,
                    loop=loop,
                )

        server = await loop.create_server(
            protocol, "127.0.0.1", self.port, reuse_address=True, ssl=self._tls_context if self._implicit_tls else None
        )
        self._server = server
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def wait_for(self, count: int, *, within: float = 10.0) -> list[ReceivedMail]:
        await wait_until(lambda: len(self.messages) >= count, within=within, what=f"{count} mail(s)")
        return self.messages

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: object
    ) -> AuthResult:
        assert self._credentials is not None
        if isinstance(auth_data, LoginPassword):
            login, password = auth_data.login.decode(), auth_data.password.decode()
            if (login, password) == self._credentials:
                return AuthResult(success=True, auth_data=login)
            self.failed_logins.append(login)
        return AuthResult(success=False, handled=False)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.replies:
            return self.replies.popleft()
        content = envelope.original_content or b""
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        login = session.auth_data if isinstance(session.auth_data, str) else None
        tls = self._implicit_tls or session.ssl is not None
        self.messages.append(ReceivedMail(envelope.mail_from or "", list(envelope.rcpt_tos), message, login, tls))
        return "250 2.0.0 Message accepted for delivery"


# ---------------------------------------------------------------------------------------------------------
# The engine's side: a payload as it builds one, and "the promotion transaction"
# ---------------------------------------------------------------------------------------------------------
def engine_payload(event: NotificationEvent = "promotion.promoted", **overrides: Any) -> NotificationPayload:
    """A payload as worker.services.effects builds one: a NotificationPayload with safety checks from decide.py's
    SafetyCheck (its names and severities), so a change of the payload's shape fails type checking here too."""
    checks = [
        SafetyCheck(ERROR_RATE_CHECK, True, "0.40% <= 5.00%", "info"),
        SafetyCheck(LATENCY_CHECK, True, "p95 +3.1% <= +20%", "info"),
        SafetyCheck(TRAFFIC_BALANCE_CHECK, False, "SRM p = 0.004 (threshold 0.001)", "warning"),
    ]
    payload: NotificationPayload = {
        "event": event,
        "experimentName": "checkout-button",
        "priority": "normal",
        "promotionId": None,
        "occurredAt": "2026-05-09T12:00:00+00:00",
        "actor": "autopromote",
        "variant": "variant-b",
        "controlVariant": "control",
        "confidence": 97.3,
        "improvement": 6.2,
        "method": "sequential",
        "safetyChecks": [c.to_json() for c in checks],
        "reason": None,
        "variants": [
            {
                "name": "control",
                "isControl": True,
                "weight": 50.0,
                "exposures": 10000,
                "conversions": 1000,
                "rate": 0.1,
                "errors": 40,
                "errorRate": 0.004,
                "p95LatencyMs": 120.0,
            },
            {
                "name": "variant-b",
                "isControl": False,
                "weight": 50.0,
                "exposures": 10020,
                "conversions": 1064,
                "rate": 0.1062,
                "errors": 41,
                "errorRate": 0.0041,
                "p95LatencyMs": 123.7,
            },
        ],
        "dryRun": False,
    }
    unknown = set(overrides) - set(NotificationPayload.__annotations__)
    assert not unknown, f"engine_payload: {sorted(unknown)} are not NotificationPayload keys"
    return cast(NotificationPayload, {**payload, **overrides})


def evaluation_bus_event(experiment_name: str, **overrides: Any) -> EvaluationEvent:
    """An evaluation as the daemon puts it on the EventBus (worker.domain.events.evaluation_event): a whole
    EvaluationEvent, so a change of the event's shape fails type checking here too."""
    event: EvaluationEvent = {
        "type": "evaluation",
        "experimentId": 1,
        "experimentName": experiment_name,
        "action": "evaluated",
        "eligible": None,
        "confidence": None,
        "improvement": None,
        "reasons": [],
        "at": time.time(),
    }
    unknown = set(overrides) - set(EvaluationEvent.__annotations__)
    assert not unknown, f"evaluation_bus_event: {sorted(unknown)} are not EvaluationEvent keys"
    return cast(EvaluationEvent, {**event, **overrides})


async def promote_with_notifications(
    conn: asyncpg.Connection,
    *,
    experiment_id: int,
    config: AutoPromotionConfig,
    settings: Settings,
    experiment_name: str = "checkout-button",
    priority: str = "normal",
    **payload_overrides: Any,
) -> tuple[str, int]:
    """What the engine does: insert the promotion and enqueue its notification in one transaction.
    Returns (promotion id, notificationsQueued)."""
    async with conn.transaction():
        promotion_id: uuid.UUID = await conn.fetchval(
            """INSERT INTO experiment_promotions (experiment_id, experiment_name, promoted_variant_name,
                                                  control_variant_name, confidence, improvement, promoted_by,
                                                  previous_weights)
               VALUES ($1, $2, 'variant-b', 'control', 97.3, 6.2, 'autopromote', '{"control": 1, "variant-b": 1}')
               RETURNING id""",
            experiment_id,
            experiment_name,
        )
        queued = await enqueue_notifications(
            conn,
            event="promotion.promoted",
            payload=engine_payload(
                experimentName=experiment_name, priority=priority, promotionId=str(promotion_id), **payload_overrides
            ),
            config=config,
            settings=settings,
        )
    return str(promotion_id), queued


async def roll_back_with_notifications(
    conn: asyncpg.Connection,
    promotion_id: str,
    *,
    config: AutoPromotionConfig,
    settings: Settings,
    reason: str,
    actor: str = "guard",
    breach_first: bool = True,
    experiment_name: str = "checkout-button",
    priority: str = "normal",
) -> int:
    """What the guard does on a breach with autoRollback: record the rollback and enqueue guard.breached (when
    ``breach_first``) and promotion.rolled_back in one transaction. Returns the rows queued."""
    queued = 0
    async with conn.transaction():
        await conn.execute(
            "UPDATE experiment_promotions SET rollback_at = now(), rollback_reason = $2, rolled_back_by = $3 "
            "WHERE id = $1",
            uuid.UUID(promotion_id),
            reason,
            actor,
        )
        common = {
            "experimentName": experiment_name,
            "priority": priority,
            "promotionId": promotion_id,
            "actor": actor,
            "reason": reason,
        }
        if breach_first:
            queued += await enqueue_notifications(
                conn,
                event="guard.breached",
                payload=engine_payload("guard.breached", **common),
                config=config,
                settings=settings,
            )
        queued += await enqueue_notifications(
            conn,
            event="promotion.rolled_back",
            payload=engine_payload("promotion.rolled_back", **common),
            config=config,
            settings=settings,
        )
    return queued


def self_signed_certificate(directory: Path) -> tuple[Path, Path] | None:
    """A certificate and key for 127.0.0.1 made with the openssl command; None when openssl is missing."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
