"""``POST /api/slack/interactions``: Slack's Interactivity request URL, where the Approve / Decline / Roll back
buttons of our messages (worker.notify.slack) come back.

Authenticated by Slack's request signature, not by a bearer token: ``X-Slack-Signature`` is ``v0=`` + the HMAC-SHA256
of ``v0:{X-Slack-Request-Timestamp}:{raw body}`` under SLACK_SIGNING_SECRET, checked by slack-sdk's
``SignatureVerifier`` (constant-time comparison, and timestamps more than five minutes off refused). In order, and
nothing changes when one fails: no or a bad signature, or a stale timestamp: 401; a body that is no interaction we
sent: 400; a Slack user not in AUTO_PROMOTION_SLACK_APPROVERS: 403; a request seen before (its signature is stored
with a unique key, ab_slack_interactions): 401. Then the engine acts, through the same locked transactions as the
CLI and the API, and the outcome replaces the message through the interaction's ``response_url`` when that is
Slack's origin (https://hooks.slack.com) or SLACK_WEBHOOK_URL's (response_url_allowed), never any other server.

Slack shows the user an error unless the answer comes within 3 s. The answer waits for the action and the
replacement for at most ACK_WITHIN_S; an action that takes longer (a row held by another transaction, a slow
database) is answered 200 with ``"pending": true`` and finishes in the background, where its outcome still replaces
the message (the acknowledge-first pattern of Slack's own Bolt, without giving up the outcome in the common case).
A shutdown waits for those for up to DRAIN_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import structlog
from aiohttp import web
from slack_sdk.signature import Clock, SignatureVerifier

from worker.db import approvals as db
from worker.domain.errors import DomainError
from worker.http.app import CTX, AppContext
from worker.http.errors import ApiError, json_response
from worker.notify.slack import (
    APPROVE_ACTION,
    BUTTON_ACTIONS,
    DECLINE_ACTION,
    ROLLBACK_ACTION,
    escape,
    outcome_message,
)

log = structlog.get_logger("worker.http.slack")

STALE_AFTER_S = 5 * 60  # Slack's own rule, and slack-sdk's
TIMESTAMP_DIGITS = 12
# Kept a day: a replay older than STALE_AFTER_S is refused by its timestamp anyway.
REMEMBER_S = 24 * 3600.0
RESPONSE_TIMEOUT_S = 2.5  # posting the replacement to response_url
ACK_WITHIN_S = 2.0  # Slack waits 3 s for our answer: what is not done by then finishes in the background
DRAIN_S = 5.0  # a shutdown waits this long for clicks still being acted on (within the daemon's grace)
TASKS = web.AppKey("slack_interactions", set[asyncio.Task[str]])
SLACK_ORIGIN = ("https", "hooks.slack.com", 443)  # where Slack's response_urls point


def _origin(url: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(url)
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    except ValueError:
        return None
    return (parts.scheme, (parts.hostname or "").lower(), port) if parts.hostname else None


def response_url_allowed(url: str, webhook_url: str | None) -> bool:
    """Whether the replacement may be posted to ``url``: Slack's origin (https://hooks.slack.com), or the origin of
    SLACK_WEBHOOK_URL (a Slack stand-in on 127.0.0.1 in the tests). The URL comes in a signed request, but nothing
    else than Slack is ever asked for, so a leaked signing secret cannot turn the worker against internal servers."""
    origin = _origin(url)
    return origin is not None and (
        origin == SLACK_ORIGIN or (webhook_url is not None and origin == _origin(webhook_url))
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/slack/interactions", post_interaction)
    app[TASKS] = set()
    app.on_cleanup.append(_drain)


async def drain_interactions(app: web.Application) -> None:
    """Wait for the clicks answered early to finish acting and replacing their messages (the daemon calls this
    before it stops serving, bounded by DRAIN_S, while the pool is still open)."""
    tasks: set[asyncio.Task[str]] = app[TASKS]
    pending = set(tasks)
    if pending:
        log.info("slack.draining", interactions=len(pending))
        await asyncio.wait(pending)


async def _drain(app: web.Application) -> None:
    """The same at the app's cleanup, for a server run without the daemon (what the daemon drained is gone)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(drain_interactions(app), DRAIN_S)


@dataclass(frozen=True, slots=True)
class Interaction:
    """One click, as Slack describes it (the parts we use)."""

    user_id: str
    user_name: str
    action_id: str
    value: str
    response_url: str | None
    message: dict[str, Any] | None

    @property
    def actor(self) -> str:
        return f"slack:{self.user_id}" + (f" ({self.user_name})" if self.user_name else "")


class _FixedClock(Clock):
    """The verifier's clock at the instant the timestamp was judged by (one ``now`` for both checks)."""

    def __init__(self, at: float) -> None:
        self.at = at

    def now(self) -> float:
        return self.at


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": 'Slack-Signature realm="autopromote"'})


def verify(secret: str, body: bytes, headers: Mapping[str, str], *, now: float | None = None) -> str:
    """The request's signature when Slack signed ``body`` under ``secret`` within five minutes; ApiError 401."""
    timestamp = headers.get("X-Slack-Request-Timestamp")
    signature = headers.get("X-Slack-Signature")
    if not timestamp or not signature:
        raise _unauthorized("unsigned: X-Slack-Request-Timestamp and X-Slack-Signature are required")
    if not timestamp.isascii() or not timestamp.isdigit():
        raise _unauthorized("X-Slack-Request-Timestamp must be a Unix time in seconds")
    current = time.time() if now is None else now
    # Longer than any Unix time in seconds for millennia: stale, before int() (ValueError past 4300 digits) or the
    # subtraction from a float (OverflowError) could turn it into a 500.
    if len(timestamp) > TIMESTAMP_DIGITS or abs(current - int(timestamp)) > STALE_AFTER_S:
        raise _unauthorized("stale: the request's timestamp is more than five minutes away from now")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise _unauthorized("the signature does not match the body") from None
    if not SignatureVerifier(secret, clock=_FixedClock(current)).is_valid(body, timestamp, signature):
        raise _unauthorized("the signature does not match the body (check SLACK_SIGNING_SECRET)")
    return signature


def parse_interaction(body: bytes) -> Interaction:
    """The click in a signed body (``payload=<JSON>``, form-encoded); ApiError 400 for anything else."""
    form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
    raw = form.get("payload")
    if not raw:
        raise ApiError(400, "invalid_request", "no payload: this endpoint takes Slack's interaction payloads")
    try:
        payload = json.loads(raw[0])
    except (ValueError, RecursionError):  # RecursionError: nested too deep to be an interaction
        raise ApiError(400, "invalid_request", "the payload is not JSON") from None
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        raise ApiError(400, "invalid_request", "only block_actions interactions (our buttons) are handled")
    user: dict[str, Any] = payload["user"] if isinstance(payload.get("user"), dict) else {}
    actions = payload.get("actions")
    action = actions[0] if isinstance(actions, list) and actions and isinstance(actions[0], dict) else {}
    action_id, value = action.get("action_id"), action.get("value")
    if action_id not in BUTTON_ACTIONS or not isinstance(value, str) or not value:
        raise ApiError(400, "invalid_request", "not one of our buttons", {"actionId": str(action_id)[:100]})
    if "\x00" in value:  # PostgreSQL stores no NUL: recording the click would fail
        raise ApiError(400, "invalid_request", "the button's value contains a NUL character")
    user_id = user.get("id")
    if not isinstance(user_id, str) or not user_id or "\x00" in user_id:
        raise ApiError(400, "invalid_request", "the payload names no Slack user")
    response_url = payload.get("response_url")
    message = payload.get("message")
    return Interaction(
        user_id=user_id,
        user_name=str(user.get("username") or user.get("name") or "").replace("\x00", "")[:100],
        action_id=action_id,
        value=value[:200],
        response_url=response_url if isinstance(response_url, str) and response_url else None,
        message=message if isinstance(message, dict) else None,
    )


async def post_interaction(request: web.Request) -> web.Response:
    """Verify, authorise, act once, and replace the message with the outcome."""
    answer_by = asyncio.get_running_loop().time() + ACK_WITHIN_S
    ctx = request.app[CTX]
    secret = ctx.settings.slack_signing_secret
    if not secret:
        raise ApiError(404, "not_found", "Slack buttons are off: SLACK_SIGNING_SECRET is not set")
    body = await request.read()
    signature = verify(secret, body, request.headers)
    click = parse_interaction(body)
    if click.user_id not in ctx.settings.slack_approvers:
        log.warning("slack.unknown_user", slack_user=click.user_id, action=click.action_id)
        raise ApiError(
            403,
            "forbidden",
            f"Slack user {click.user_id} may not approve, decline or roll back: not in AUTO_PROMOTION_SLACK_APPROVERS",
            {"slackUser": click.user_id},
        )
    async with ctx.pool.acquire() as conn:
        first = await db.record_slack_interaction(conn, signature, click.user_id, click.action_id, click.value)
    if not first:
        log.warning("slack.replayed", slack_user=click.user_id, action=click.action_id)
        raise _unauthorized("replayed: this request was acted on before")
    tasks = request.app[TASKS]
    task = asyncio.get_running_loop().create_task(_carry_out(ctx, click, signature))
    tasks.add(task)
    task.add_done_callback(functools.partial(_finished, tasks, click))
    done, _ = await asyncio.wait({task}, timeout=max(0.05, answer_by - asyncio.get_running_loop().time()))
    if not done:
        log.info("slack.answered_early", slack_user=click.user_id, action=click.action_id, within_s=ACK_WITHIN_S)
        return json_response({"success": True, "data": {"outcome": None, "pending": True}})
    return json_response({"success": True, "data": {"outcome": task.result(), "pending": False}})


async def _carry_out(ctx: AppContext, click: Interaction, signature: str) -> str:
    """Act, record the outcome, replace the message; the outcome. A failure that is not the domain's (the database
    unreachable, a bug) replaces the message too, saying so: the click may have been answered already."""
    try:
        outcome = await act(ctx, click)
        async with ctx.pool.acquire() as conn:
            await db.slack_interaction_outcome(conn, signature, outcome)
            await db.prune_slack_interactions(conn, REMEMBER_S)
    except Exception as exc:
        if click.response_url:
            failed = (
                f":warning: <@{click.user_id}>, your click could not be carried out ({escape(type(exc).__name__)}); "
                "check the dashboard before you click again."
            )
            with contextlib.suppress(Exception):
                await replace_message(ctx, click, failed)
        raise
    log.info("slack.interaction", slack_user=click.user_id, action=click.action_id, value=click.value)
    if click.response_url:
        await replace_message(ctx, click, outcome)
    return outcome


def _finished(tasks: set[asyncio.Task[str]], click: Interaction, task: asyncio.Task[str]) -> None:
    tasks.discard(task)
    if task.cancelled():
        log.warning("slack.interaction_cancelled", slack_user=click.user_id, action=click.action_id)
    elif task.exception() is not None:
        # Logged here so that a failure after the early answer is seen (in time, the handler reports it as well).
        exc = task.exception()
        log.error(
            "slack.interaction_failed",
            slack_user=click.user_id,
            action=click.action_id,
            error=f"{type(exc).__name__}: {exc}",
        )


async def act(ctx: AppContext, click: Interaction) -> str:
    """Carry out the click through the engine; the outcome as mrkdwn (what the replaced message says)."""
    who = f"<@{click.user_id}>"
    engine = ctx.engine
    try:
        if click.action_id == APPROVE_ACTION:
            data = await engine.approve(click.value, actor=click.actor)
            promotion = data.get("promotion") or {}
            if data["status"] == "approved" and promotion.get("promotionId"):
                return (
                    f":white_check_mark: Approved by {who}: promoted {escape(str(promotion['promotedVariantName']))}"
                    f" of {escape(data['experimentName'])} (promotion {promotion['promotionId']})."
                )
            if data["status"] == "approved":
                step = data.get("step") or {}
                where = f"step {step['step']}" if "step" in step else "the next step"
                share = (
                    f" ({step['treatmentShare']:g}% of traffic)"
                    if isinstance(step.get("treatmentShare"), float | int)
                    else ""
                )
                return (
                    f":white_check_mark: Approved by {who}: {escape(data['experimentName'])} moved to {where}{share}."
                )
            return (
                f":no_entry: Approved by {who}, but nothing changed: {escape(data['reason'] or 'not eligible')}. "
                f"The approval is closed."
            )
        if click.action_id == DECLINE_ACTION:
            data = await engine.decline(click.value, f"declined in Slack by {click.actor}", actor=click.actor)
            return f":x: Declined by {who}: {escape(data['experimentName'])} is not promoted."
        assert click.action_id == ROLLBACK_ACTION
        data = await engine.rollback_promotion(
            click.value, f"rolled back in Slack by {click.actor}", actor=click.actor, trigger="slack"
        )
        weights = ", ".join(f"{escape(str(k))} {v:g}" for k, v in (data.get("restoredWeights") or {}).items())
        return f":rewind: Rolled back by {who}: {escape(data['experimentName'])} is back on its previous weights" + (
            f" ({weights})." if weights else "."
        )
    except DomainError as exc:
        return f":warning: Nothing changed ({who}): {escape(exc.message)}"


async def replace_message(ctx: AppContext, click: Interaction, outcome: str) -> None:
    """POST the replacement to the interaction's response_url (signed by Slack, so Slack's); failures are logged:
    the action itself is done and audited."""
    assert click.response_url is not None
    if not response_url_allowed(click.response_url, ctx.settings.slack_webhook_url):
        log.warning("slack.response_url_refused", reason="not Slack's origin", url=click.response_url[:200])
        return
    timeout = aiohttp.ClientTimeout(total=min(RESPONSE_TIMEOUT_S, ctx.settings.notify_timeout))
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.post(click.response_url, json=outcome_message(click.message, outcome)) as resp,
        ):
            if resp.status >= 300:
                log.warning("slack.response_url_refused", status=resp.status, body=(await resp.text())[:200])
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("slack.response_url_failed", error=f"{type(exc).__name__}: {exc}")
