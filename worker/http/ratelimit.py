"""Per-token rate limit for the API's changing actions: at most N calls in any 60-second window.

A sliding-window log: each key keeps the times of its accepted calls within the last window, so the limit
holds over *any* 60 seconds (a fixed per-minute counter would let 2N through around a minute boundary).
Memory is at most N timestamps per token. The state is per process: with several replicas behind a load
balancer each replica enforces the limit on its own.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: float  # seconds until the next call would be accepted (0 when allowed)

    @property
    def retry_after_header(self) -> str:
        """Retry-After is whole seconds (RFC 9110); never 0 for a refusal."""
        return str(max(1, math.ceil(self.retry_after)))


class SlidingWindowLimiter:
    """``hit(key)`` records and allows a call, or refuses it without recording it."""

    def __init__(self, limit: int, window_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.window = window_seconds
        self._clock = clock
        self._calls: dict[str, deque[float]] = {}

    def _prune(self, key: str, now: float) -> deque[float]:
        calls = self._calls.setdefault(key, deque())
        while calls and calls[0] <= now - self.window:
            calls.popleft()
        return calls

    def hit(self, key: str) -> RateDecision:
        now = self._clock()
        calls = self._prune(key, now)
        if len(calls) >= self.limit:
            return RateDecision(False, self.limit, 0, calls[0] + self.window - now)
        calls.append(now)
        self._forget_idle(now)
        return RateDecision(True, self.limit, self.limit - len(calls), 0.0)

    def _forget_idle(self, now: float) -> None:
        # Keys of tokens that went quiet would otherwise stay forever; sweeping is cheap at API call rates.
        if len(self._calls) <= 64:
            return
        for key in [k for k, calls in self._calls.items() if not calls or calls[-1] <= now - self.window]:
            del self._calls[key]
