"""The one HTTP POST the Slack, PagerDuty and webhook channels share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from worker.notify.delivery import USER_AGENT, AttemptResult, classify_http

if TYPE_CHECKING:  # a type only: routing (which the engine imports) must not load the HTTP client
    import aiohttp

_MAX_BODY = 4096  # enough of an error answer to explain it; receivers' bodies are not stored whole


async def post_json(
    http: aiohttp.ClientSession, url: str, body: bytes, headers: Mapping[str, str] | None = None
) -> AttemptResult:
    """POST ``body`` as JSON; redirects are not followed (a redirect would carry the body and its signature
    somewhere nobody configured). Network errors propagate to the dispatcher, which retries them."""
    all_headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **(headers or {})}
    async with http.post(url, data=body, headers=all_headers, allow_redirects=False) as response:
        raw = await response.content.read(_MAX_BODY)
        text = raw.decode("utf-8", errors="replace")
        return classify_http(response.status, response.headers, text)
