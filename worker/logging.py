"""structlog, configured once: JSON lines for containers, readable lines on a terminal.

Logs go to stderr so that stdout carries only command output (tables, --json, the demo's screen).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

_SECRET_KEYS = ("password", "secret", "token", "routing_key", "webhook_url", "authorization", "api_key")


def redact_secrets(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Mask values whose key names a secret, wherever a caller forgot to."""
    for key in list(event_dict):
        if any(part in key.lower() for part in _SECRET_KEYS) and event_dict[key] not in (None, ""):
            event_dict[key] = "***"
    return event_dict


def use_colour() -> bool:
    """Colour console logs only for a person at a terminal: never into a file or pipe (``make demo > file 2>&1``),
    and never when ``NO_COLOR`` is set to anything but the empty string (https://no-color.org)."""
    if os.environ.get("NO_COLOR", ""):
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog and the stdlib root logger; ``fmt`` is auto, json or console."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=use_colour())
    )
    numeric = getattr(logging, level.upper(), logging.INFO)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
        structlog.processors.StackInfoRenderer(),
    ]
    if use_json:
        processors.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # Looked up at each call: tests and embedders may swap sys.stderr after configuration.
        logger_factory=lambda *_: structlog.PrintLogger(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)
