"""The dispatcher: claim due outbox rows, send them outside any transaction, record what happened.

Delivery is at-least-once. A claim is a lease: one short statement counts the attempt and pushes the row's
``next_attempt_at`` past the time the attempt can take (send timeout + a margin + the row's wait for its
target's rate limit). The send happens with no transaction open; then the outcome is written. A worker that dies
in between leaves the row pending with its lease running; when the lease ends any replica claims it again and
sends it with the same outbox id (the webhook's Idempotency-Key, the email's Message-ID, PagerDuty's dedup_key
per promotion), so the receiver sees at most one duplicate per lost worker and can recognise it. Later writes
about an attempt are fenced by the attempt number, so a worker that outlived its lease cannot undo the newer
attempt's result.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import anyio
import structlog

from worker.config import Settings
from worker.db.connect import Pool
from worker.metrics import NOTIFICATIONS, NOTIFICATIONS_DEAD
from worker.notify import outbox
from worker.notify.delivery import (
    USER_AGENT,
    AttemptResult,
    OutboxRow,
    ResolvedTarget,
    TargetUnavailable,
    backoff_delay,
)
from worker.notify.email import build_email, send_email
from worker.notify.events import EventFacts
from worker.notify.pagerduty import build_pagerduty_event, send_pagerduty
from worker.notify.ratelimit import TokenBucket
from worker.notify.redact import scrub, split_addresses
from worker.notify.slack import build_slack_message, send_slack
from worker.notify.webhook import build_webhook_request, send_webhook
from worker.retry import FaultLog, Faults, Stopped, is_database_error, is_transient, retrying

log = structlog.get_logger("worker.notify")

# Extra lease beyond the send timeout: claim, config lookup and the outcome write must fit in it. It is also
# how long a row whose worker died waits before another replica retries it.
DEFAULT_LEASE_MARGIN = 15.0
# A batch takes at most this many seconds of one target's rate limit, so the lease stays short.
TARGET_BATCH_SECONDS = 10.0

_ENV_ADDRESS: dict[str, Callable[[Settings], str | None]] = {
    "env:SLACK_WEBHOOK_URL": lambda s: s.slack_webhook_url,
    "env:ALERT_EMAIL_TO": lambda s: ",".join(s.alert_email_to) or None,
    "env:PAGERDUTY_ROUTING_KEY": lambda s: s.pagerduty_routing_key,
    "env:WEBHOOK_URL": lambda s: s.webhook_url,
}


class Dispatcher:
    """Delivers the outbox. Safe to run on any number of replicas against one database."""

    def __init__(
        self,
        pool: Pool,
        settings: Settings,
        *,
        on_delivered: Callable[[dict[str, Any]], None] | None = None,
        poll_interval: float = 0.5,
        lease_margin: float = DEFAULT_LEASE_MARGIN,
        faults: Faults | None = None,
    ) -> None:
        """``on_delivered`` is called with a summary of each row once it is recorded as sent. ``poll_interval``
        is the longest ``run`` sleeps without a wake-up; ``lease_margin`` is added to the send timeout to make
        the lease (and is how long a dead worker's rows wait before another replica retries them)."""
        self._pool = pool
        self._settings = settings
        self._on_delivered = on_delivered
        self._poll_interval = poll_interval
        self._lease_base = settings.notify_timeout + lease_margin
        self._per_target = max(1, math.ceil(settings.notify_rate_per_second * TARGET_BATCH_SECONDS))
        self._buckets: dict[str, TokenBucket] = {}
        self._wakeup = anyio.Event()
        self._fault = FaultLog("dispatcher", faults)

    def wake(self) -> None:
        """Look at the outbox now (call right after a transaction that enqueued notifications commits)."""
        self._wakeup.set()

    async def run(self, stop: anyio.Event) -> None:
        """Deliver until ``stop`` is set: a batch, then sleep until the next row is due, a wake-up or the poll
        interval. A database fault is logged once and retried (worker.retry); other errors propagate."""
        async with anyio.create_task_group() as tg:

            async def wake_on_stop() -> None:
                await stop.wait()
                self.wake()

            tg.start_soon(wake_on_stop)
            while not stop.is_set():
                try:
                    # A database fault anywhere in a round (claim, outcome write, even inside the concurrent sends'
                    # task group) is retried under the shared policy and logged once. A row whose outcome was not
                    # written stays leased and is sent again with the same idempotency key when the lease ends.
                    delay = await retrying(self._fault, stop, self._round)
                except Stopped:
                    break
                if delay <= 0:
                    continue  # more may be due right away
                if stop.is_set():
                    break
                with anyio.move_on_after(delay):
                    await self._wakeup.wait()
                self._wakeup = anyio.Event()
            tg.cancel_scope.cancel()

    async def _round(self) -> float:
        """One batch; then how long to sleep before the next (0: go on at once)."""
        if await self.dispatch_once():
            return 0.0
        async with self._pool.acquire() as conn:
            due_in = await outbox.next_due_in(conn)
        return self._poll_interval if due_in is None else min(max(due_in, 0.01), self._poll_interval)

    async def dispatch_once(self, limit: int = 50) -> int:
        """Claim due rows, send them (concurrently across targets), record each outcome; returns how many were
        attempted."""
        async with self._pool.acquire() as conn:
            rows = await outbox.claim_due(
                conn,
                limit=limit,
                per_target=self._per_target,
                lease_base=self._lease_base,
                rate=self._settings.notify_rate_per_second,
            )
            if not rows:
                return 0
            configs = await outbox.fetch_configs(conn, sorted({r.config_id for r in rows if r.config_id}))
        claimed_at = time.monotonic()
        attempted = 0
        timeout = aiohttp.ClientTimeout(total=self._settings.notify_timeout)
        faults: list[Exception] = []
        async with aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": USER_AGENT}) as http:
            async with anyio.create_task_group() as tg:

                async def deliver(row: OutboxRow) -> None:
                    nonlocal attempted
                    try:
                        if await self._deliver(row, configs.get(row.config_id or 0), http, claimed_at):
                            attempted += 1
                    except Exception as exc:
                        # A database fault while recording one row's outcome must not cancel the other sends in
                        # flight: that row stays leased and is sent again (same idempotency key) after its lease.
                        if is_transient(exc):
                            faults.append(exc)
                        elif is_database_error(exc):
                            # Not a fault that passes (the database refused the record itself): logged, and the
                            # other rows go on; this one is tried again after its lease.
                            log.error(
                                "notification.record_failed",
                                outbox_id=row.id,
                                channel=row.channel,
                                error=f"{type(exc).__name__}: {exc}",
                            )
                        else:
                            raise

                for row in rows:
                    tg.start_soon(deliver, row)
        if faults:
            raise ExceptionGroup("recording notification outcomes failed", faults)  # retried by run()
        return attempted

    # ------------------------------------------------------------------------------------------------------
    async def _deliver(
        self, row: OutboxRow, config: Mapping[str, Any] | None, http: aiohttp.ClientSession, claimed_at: float
    ) -> bool:
        """One attempt of one row, rate-limited per target; False when the row was released unattempted."""
        bound = log.bind(
            channel=row.channel,
            outbox_id=row.id,
            target=row.target_label,
            notification_event=row.event,
            experiment=row.experiment_name,
            attempt=row.attempts,
        )
        try:
            target = self._resolve(row, config)
        except TargetUnavailable as exc:
            await self._finish(row, AttemptResult(ok=False, error=str(exc), permanent=True), 0.0, [], bound)
            return True

        bucket = self._bucket(target)
        wait = bucket.delay()
        lease_left = claimed_at + row.lease_seconds - time.monotonic()
        if wait + self._settings.notify_timeout > lease_left:
            # The target is paused (a 429) or backed up beyond this lease: hand the row back uncounted.
            await self._release(row, wait, bound)
            return False
        await anyio.sleep(bucket.reserve())
        if (paused := bucket.paused_for()) > 0:
            # The target answered 429 while this row waited for its slot: honour Retry-After for it too.
            await self._release(row, paused, bound)
            return False

        secrets = [*target.secrets(), self._settings.smtp_password]
        started = time.monotonic()
        try:
            with anyio.fail_after(self._settings.notify_timeout):
                result = await self._send(row, target, http)
        except TimeoutError:
            result = AttemptResult(ok=False, error=f"timed out after {self._settings.notify_timeout:g} s")
        except Exception as exc:  # any failure of one attempt is retried; the error text is scrubbed below
            result = AttemptResult(ok=False, error=f"{type(exc).__name__}: {exc}")
        duration_ms = (time.monotonic() - started) * 1000.0
        if result.retry_after is not None:
            bucket.pause(result.retry_after)
        await self._finish(row, result, duration_ms, secrets, bound)
        return True

    async def _release(self, row: OutboxRow, retry_in: float, bound: Any) -> None:
        async with self._pool.acquire() as conn:
            await outbox.release(conn, row, retry_in=retry_in)
        bound.info("notification.deferred", retry_in=round(retry_in, 3))

    async def _finish(
        self,
        row: OutboxRow,
        result: AttemptResult,
        duration_ms: float,
        secrets: list[str | None],
        bound: Any,
    ) -> None:
        if result.error:
            result = AttemptResult(
                ok=result.ok,
                http_status=result.http_status,
                smtp_reply=scrub(result.smtp_reply, secrets) if result.smtp_reply else None,
                error=scrub(result.error, secrets),
                retry_after=result.retry_after,
                permanent=result.permanent,
            )
        if result.ok:
            outcome, retry_in = "sent", 0.0
        elif result.permanent or row.attempts >= self._settings.notify_max_attempts:
            outcome, retry_in = "dead", 0.0
        else:
            outcome = "retry"
            retry_in = backoff_delay(row.attempts, self._settings.notify_backoff_base)
            if result.retry_after is not None:
                retry_in = max(result.retry_after, 0.0)
        async with self._pool.acquire() as conn:
            moved = await outbox.record_attempt(
                conn, row, outcome=outcome, result=result, retry_in=retry_in, duration_ms=duration_ms
            )
        fields = {
            "http_status": result.http_status,
            "smtp_reply": result.smtp_reply,
            "duration_ms": round(duration_ms, 1),
        }
        if not moved:
            bound.info("notification.superseded", outcome=outcome, error=result.error, **fields)
            return
        NOTIFICATIONS.labels(row.channel, outcome).inc()
        if outcome == "sent":
            bound.info("notification.sent", **fields)
            self._delivered(row)
        elif outcome == "retry":
            bound.warning("notification.retry", error=result.error, retry_in=round(retry_in, 3), **fields)
        else:
            NOTIFICATIONS_DEAD.labels(row.channel).inc()
            bound.error("notification.dead", error=result.error, permanent=result.permanent, **fields)

    def _delivered(self, row: OutboxRow) -> None:
        if self._on_delivered is None:
            return
        summary = {
            "id": row.id,
            "event": row.event,
            "channel": row.channel,
            "target": row.target_label,
            "experimentName": row.experiment_name,
            "promotionId": row.promotion_id,
            "attempts": row.attempts,
        }
        try:
            self._on_delivered(summary)
        except Exception:  # a listener's bug must not turn a delivered row into a retry
            log.exception("notification.on_delivered_failed", outbox_id=row.id)

    def _resolve(self, row: OutboxRow, config: Mapping[str, Any] | None) -> ResolvedTarget:
        """The row's target with its secrets, from its config row or the environment, as they are now."""
        kind, _, ref = row.target_ref.partition(":")
        if kind == "config":
            if config is None:
                raise TargetUnavailable(f"notification config {ref} was deleted")
            if not config["enabled"]:
                raise TargetUnavailable(f"notification config {ref} is disabled")
            if config["channel"] != row.channel:
                raise TargetUnavailable(f"notification config {ref} is now a {config['channel']} config")
            return ResolvedTarget(row.channel, config["target"], config["secret"])
        resolve = _ENV_ADDRESS.get(row.target_ref)
        address = resolve(self._settings) if resolve else None
        if not address:
            raise TargetUnavailable(f"{ref or row.target_ref} is not set")
        secret = self._settings.webhook_secret if row.channel == "webhook" else None
        return ResolvedTarget(row.channel, address, secret)

    def _bucket(self, target: ResolvedTarget) -> TokenBucket:
        # Keyed by the resolved address (hashed, so the key is no secret): two configs naming one Slack webhook
        # share its limit.
        key = hashlib.sha256(f"{target.channel}\0{target.address}".encode()).hexdigest()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._settings.notify_rate_per_second)
        return bucket

    async def _send(self, row: OutboxRow, target: ResolvedTarget, http: aiohttp.ClientSession) -> AttemptResult:
        detailed = row.detailed
        facts = EventFacts.from_payload(row.event, row.payload, public_url=self._settings.public_url)
        match row.channel:
            case "slack":
                slack_message = build_slack_message(
                    facts,
                    include_detailed_metrics=detailed,
                    interactive=bool(self._settings.slack_signing_secret),
                )
                return await send_slack(http, target.address, slack_message)
            case "pagerduty":
                event = build_pagerduty_event(
                    facts, routing_key=target.address, action="resolve" if row.action == "resolve" else "trigger"
                )
                return await send_pagerduty(http, self._settings.pagerduty_events_url, event)
            case "webhook":
                body, headers = build_webhook_request(
                    row.event, row.payload, outbox_id=row.id, secret=target.secret, timestamp=int(time.time())
                )
                return await send_webhook(http, target.address, body, headers)
            case "email":
                message = build_email(
                    facts,
                    sender=self._settings.smtp_from,
                    recipients=split_addresses(target.address),
                    include_detailed_metrics=detailed,
                    outbox_id=row.id,
                )
                return await send_email(message, self._settings)
        raise TargetUnavailable(f"unknown channel {row.channel!r}")
