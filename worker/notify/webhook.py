"""Generic webhook: the event as JSON, signed, with an idempotency key so receivers can drop duplicates.

Headers:
- ``Idempotency-Key``: the outbox row id. Every attempt of a row, including a redelivery after a worker died
  between sending and recording it, carries the same key.
- ``X-Timestamp``: Unix seconds when this attempt was signed (fresh per attempt, so receivers can refuse
  replays older than a few minutes).
- ``X-Signature``: ``sha256=`` + hex HMAC-SHA256 over ``f"{timestamp}.".encode() + body`` with the shared
  secret; absent when no secret is configured.
- ``X-Autopromote-Event``: the event name.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from worker.notify.delivery import AttemptResult
from worker.notify.transport import post_json

SIGNATURE_HEADER = "X-Signature"
TIMESTAMP_HEADER = "X-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
EVENT_HEADER = "X-Autopromote-Event"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Signature value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    try:
        expected = sign(secret, int(timestamp), body)
    except ValueError:
        return False
    return hmac.compare_digest(expected, signature)


def build_webhook_request(
    event: str, payload: Mapping[str, Any], *, outbox_id: int, secret: str | None, timestamp: int
) -> tuple[bytes, dict[str, str]]:
    """The body (the payload as compact JSON, ``event`` always present) and the headers for one attempt."""
    body = json.dumps({**payload, "event": event}, separators=(",", ":"), sort_keys=True).encode()
    headers = {
        IDEMPOTENCY_HEADER: str(outbox_id),
        TIMESTAMP_HEADER: str(timestamp),
        EVENT_HEADER: event,
    }
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
    return body, headers


async def send_webhook(http: aiohttp.ClientSession, url: str, body: bytes, headers: Mapping[str, str]) -> AttemptResult:
    """POST the signed body; any 2xx is delivered."""
    return await post_json(http, url, body, headers)
