"""Keep secrets out of what people see: redacted target labels, and scrubbing of error text."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote, urlsplit

MASK = "***"
MAX_ERROR_CHARS = 500


def redact_url(url: str) -> str:
    """Scheme, host and port only: webhook paths and queries carry the credentials (Slack's do)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return MASK
    scheme = parts.scheme or "?"
    return f"{scheme}://{host}{port}/{MASK}"


def target_label(channel: str, target: str, source: str) -> str:
    """A label safe to log and show: where the target came from and a redacted description of it.

    ``source`` names the origin without secrets, e.g. ``SLACK_WEBHOOK_URL`` or ``config 3 "growth"``.
    """
    match channel:
        case "slack" | "webhook":
            shown = redact_url(target)
        case "pagerduty":
            shown = f"routing key {MASK}"
        case "email":
            shown = ", ".join(split_addresses(target))  # addresses are not secrets; the SMTP password is
        case _:
            shown = MASK
    return f"{channel} {source}: {shown}"


def split_addresses(target: str) -> list[str]:
    """Email addresses from a comma- or whitespace-separated list."""
    return [a for a in target.replace(";", ",").replace(" ", ",").split(",") if a.strip()]


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret (and its URL-quoted form) masked, cut to a readable length."""
    for secret in secrets:
        if not secret or len(secret) < 4:
            continue
        for form in {secret, quote(secret, safe=""), quote(secret, safe="/:")}:
            text = text.replace(form, MASK)
    # Stored in notification_logs / the outbox: PostgreSQL text cannot hold NUL (a receiver's error body may).
    text = text.replace("\x00", "")
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 1] + "…"
    return text
