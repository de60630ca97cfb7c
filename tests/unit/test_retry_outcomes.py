"""worker.retry.retrying raises what its callers catch: Stopped itself, or the error itself, never wrapped in the
task group's ExceptionGroup (which `except Stopped` would not match, and which the daemon would take for a bug)."""

from __future__ import annotations

import anyio
import pytest

from worker.retry import FaultLog, Stopped, retrying


async def test_stop_during_a_failing_retry_raises_stopped_itself() -> None:
    stop = anyio.Event()
    attempts = 0

    async def fails_then_stop_is_set() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 2:
            stop.set()  # the shutdown arrives while the second attempt is failing
        raise ConnectionResetError("the database went away")

    with pytest.raises(Stopped):
        await retrying(FaultLog("test.stop"), stop, fails_then_stop_is_set)
    assert attempts == 2


async def test_a_bug_after_a_transient_fault_is_raised_as_itself() -> None:
    stop = anyio.Event()
    attempts = 0

    async def transient_then_bug() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionResetError("the database went away")
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        await retrying(FaultLog("test.bug"), stop, transient_then_bug)


async def test_stop_set_before_the_next_attempt_raises_stopped_itself() -> None:
    stop = anyio.Event()

    async def fails() -> None:
        stop.set()
        raise ConnectionResetError("the database went away")

    with pytest.raises(Stopped):
        await retrying(FaultLog("test.stopped"), stop, fails)


def test_an_error_text_with_nul_can_be_stored() -> None:
    # A receiver's error body may hold NUL, which a PostgreSQL text column refuses: recording the attempt would fail
    # for good and the row be sent again and again.
    from worker.notify.redact import scrub

    assert scrub("HTTP 500: bad\x00body", ["secret-token"]) == "HTTP 500: badbody"
