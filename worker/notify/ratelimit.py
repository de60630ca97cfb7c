"""A per-target token bucket that queues (callers wait their turn) rather than drops."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` messages per second with bursts of up to ``burst``; reservations are served in call order.

    Pure bookkeeping over an injectable clock: ``reserve`` says how long the caller must wait before it sends,
    and the caller sleeps. ``pause`` holds the whole target back (a 429's Retry-After).
    """

    def __init__(self, rate: float, *, burst: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        self._interval = 1.0 / rate
        self._burst = burst
        self._clock = clock
        # The theoretical time the next message may go if no burst is left (generic cell rate algorithm).
        self._next = clock()
        self._paused_until = 0.0

    def delay(self) -> float:
        """Seconds the next reservation would have to wait (without reserving)."""
        now = self._clock()
        start = max(now, self._next - (self._burst - 1) * self._interval, self._paused_until)
        return start - now

    def reserve(self) -> float:
        """Take the next slot; returns the seconds to wait before sending in it."""
        now = self._clock()
        wait = self.delay()
        self._next = max(self._next, now + wait) + self._interval
        return wait

    def paused_for(self) -> float:
        """Seconds left of a pause (0 when not paused)."""
        return max(0.0, self._paused_until - self._clock())

    def pause(self, seconds: float) -> None:
        """No slot starts before ``seconds`` from now."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)
