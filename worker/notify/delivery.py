"""Values passed between the outbox, the dispatcher and the channels, and the pure rules of a delivery attempt:
what an HTTP answer means, how long to back off, how long a 429 asks us to wait."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit

Outcome = Literal["sent", "retry", "dead"]

MAX_RETRY_AFTER = 3600.0  # a Retry-After beyond an hour is treated as an hour
MAX_BACKOFF = 3600.0
USER_AGENT = "ab-autopromote"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A claimed outbox row. ``attempts`` counts this attempt and fences the row's later updates."""

    id: int
    event: str
    channel: str
    config_id: int | None
    target_ref: str
    target_label: str
    experiment_name: str | None
    promotion_id: str | None
    priority: str
    payload: Mapping[str, Any]
    action: str | None
    detailed: bool  # the config's notifications.includeDetailedMetrics when the row was written
    attempts: int
    lease_seconds: float


@dataclass(frozen=True, slots=True)
class ResolvedTarget:
    """Where one row goes, with its secrets, resolved at send time only. Never log or store it."""

    channel: str
    address: str = field(repr=False)  # URL, routing key, or comma-separated email addresses
    secret: str | None = field(default=None, repr=False)  # webhook signing secret

    def secrets(self) -> list[str]:
        """Strings to mask in any error text about this target."""
        found = [self.secret] if self.secret else []
        if self.channel in ("slack", "webhook"):
            found.append(self.address)
            parts = urlsplit(self.address)
            tail = parts.path + (f"?{parts.query}" if parts.query else "")
            if len(tail) > 1:
                found.append(tail)
            if parts.password:
                found.append(parts.password)
        elif self.channel == "pagerduty":
            found.append(self.address)
        return found


class TargetUnavailable(Exception):
    """The row's target cannot be resolved any more (config deleted or disabled, setting unset): permanent."""


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt came to. ``permanent`` failures are dead-lettered without further attempts."""

    ok: bool
    http_status: int | None = None
    smtp_reply: str | None = None
    error: str | None = None
    retry_after: float | None = None
    permanent: bool = False


def classify_http(status: int, headers: Mapping[str, str], body: str, *, now: datetime | None = None) -> AttemptResult:
    """2xx delivered; 408, 425, 429 and 5xx worth retrying (honouring Retry-After); other answers permanent."""
    if 200 <= status < 300:
        return AttemptResult(ok=True, http_status=status)
    excerpt = " ".join(body.split())[:200]
    error = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
    if status in (408, 425, 429) or status >= 500:
        retry_after = parse_retry_after(headers.get("Retry-After"), now=now)
        return AttemptResult(ok=False, http_status=status, error=error, retry_after=retry_after)
    if 300 <= status < 400:
        error = f"HTTP {status}: redirects are not followed; configure the final URL"
    return AttemptResult(ok=False, http_status=status, error=error, permanent=True)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), capped at an hour; None if absent."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def backoff_delay(attempt: int, base: float, *, rng: random.Random | None = None) -> float:
    """Delay after failed attempt ``attempt`` (1-based): base * 2^(attempt-1) with equal jitter, capped at an hour.

    Equal jitter keeps at least half the exponential delay (a flapping receiver is not hammered) and spreads
    the rest, so replicas that failed together do not retry together.
    """
    exponential = min(base * 2.0 ** max(attempt - 1, 0), MAX_BACKOFF)
    return exponential / 2 + (rng or random).uniform(0, exponential / 2)
