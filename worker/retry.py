"""One retry policy for every long-running loop: which database errors are transient, how long to wait between
attempts, and how a fault is logged (once when it starts, once when it ends, not once per attempt).

The waiting is stamina's (capped exponential backoff with jitter, no attempt or time limit for a daemon that must
outlive any outage). What counts as transient is one list, here, also used by the engine to tell a fault of the
database from one of the experiment's data: a lost or refused connection, a server shutting down or restarting, a
cancelled statement (``statement_timeout``, ``pg_cancel_backend``), a lock or serialisation conflict, exhausted
resources (``too many connections``, disk full), and a server that only reads (a failover to a hot standby,
``default_transaction_read_only``): for a worker that writes, a read-only server is as unusable as a lost one.
An ``ExceptionGroup`` (a task group's failure) is transient when every member is. Anything else is a bug and
propagates.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import stamina
import stamina.instrumentation
import structlog

from worker import metrics
from worker.db.connect import DatabaseUnavailable, InterfaceError, InternalClientError, PostgresError

log = structlog.get_logger("worker.retry")

T = TypeVar("T")

# The policy (stamina's parameters): 0.1 s, 0.2 s, 0.4 s ... each plus up to 0.5 s of jitter, never more than 2 s,
# forever. The 2 s cap is what lets every loop resume within 5 s of the database coming back; the jitter spreads
# the reconnects of many replicas after a restart (once capped, their phases stay as the jitter left them).
POLICY: dict[str, Any] = {
    "attempts": None,
    "timeout": None,
    "wait_initial": 0.1,
    "wait_max": 2.0,
    "wait_jitter": 0.5,
    "wait_exp_base": 2.0,
}

# SQLSTATE classes and codes that say nothing about the statement or its data, only about the server right now:
# 08 connection exception, 40 transaction rollback (serialisation failure, deadlock), 53 insufficient resources
# (too many connections, disk full, out of memory), 57 operator intervention (query cancelled or timed out, admin
# or crash shutdown, cannot connect now, idle session timeout); 25006 read-only transaction (hot standby,
# default_transaction_read_only), 25P03 idle-in-transaction timeout, 55P03 lock not available (lock_timeout),
# 58030 I/O error.
TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57")
TRANSIENT_SQLSTATES = ("25006", "25P03", "55P03", "58030")
# Errors without an SQLSTATE that mean the connection, not the query, failed. asyncpg's InterfaceError covers a
# connection closed under an operation and a pool being closed; its InternalClientError ("cannot switch to state
# ...; another operation is in progress") is what a query sent just as pg_terminate_backend's FATAL arrives gets;
# OSError and TimeoutError a socket that died or never answered; DatabaseUnavailable our own "cannot connect".
TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    InterfaceError,
    InternalClientError,
    DatabaseUnavailable,
)
# Everything a database call may raise, transient or not: where a caller only needs "the database said no".
DB_ERRORS: tuple[type[BaseException], ...] = (PostgresError, *TRANSIENT_TYPES)


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` says the database is unusable for now (retry as is); False for a bug or bad data."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_transient(e) for e in exc.exceptions)
    if isinstance(exc, PostgresError):
        code = getattr(exc, "sqlstate", None)
        return isinstance(code, str) and (code[:2] in TRANSIENT_SQLSTATE_CLASSES or code in TRANSIENT_SQLSTATES)
    return isinstance(exc, TRANSIENT_TYPES)


def is_database_error(exc: BaseException) -> bool:
    """True for anything the database or the connection to it raised, transient or not (a group: every member).
    Such an error never ends the daemon: a task that lets one escape is restarted (see worker.daemon)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_database_error(e) for e in exc.exceptions)
    return isinstance(exc, DB_ERRORS)


def is_read_only(exc: BaseException) -> bool:
    """The server refused a write because it only reads (a hot standby, default_transaction_read_only): a session
    keeps the read-only default it started with, so it has to be replaced once the server accepts writes again."""
    if isinstance(exc, BaseExceptionGroup):
        return any(is_read_only(e) for e in exc.exceptions)
    return isinstance(exc, PostgresError) and getattr(exc, "sqlstate", None) == "25006"


def describe(exc: BaseException) -> str:
    """``Type: message`` (the first member's, for a group), short enough for one log line."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip()
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:300]


# The retries are logged by FaultLog (once per fault) and counted in our own registry; stamina's default hooks
# would log every attempt and count into the global Prometheus registry.
stamina.instrumentation.set_on_retry_hooks([])


class Faults:
    """The loops that cannot use the database right now, and why (task -> first error); /readyz reports them.

    ``on_fault`` is told of every failed attempt (the daemon uses it to replace read-only pooled sessions)."""

    def __init__(self, on_fault: Callable[[BaseException], None] | None = None) -> None:
        self.active: dict[str, str] = {}
        self.on_fault = on_fault

    def __bool__(self) -> bool:
        return bool(self.active)


class FaultLog:
    """Logs a fault once when it starts and once when it ends, however many attempts fail in between."""

    def __init__(self, task: str, faults: Faults | None = None) -> None:
        self.task = task
        self.faults = faults
        self.failures = 0
        self.since: float | None = None

    @property
    def failing(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException, **fields: Any) -> None:
        self.failures += 1
        metrics.DB_RETRIES.labels(self.task).inc()
        if self.faults is not None and self.faults.on_fault is not None:
            self.faults.on_fault(exc)
        if self.since is None:
            self.since = time.monotonic()
            if self.faults is not None:
                self.faults.active[self.task] = describe(exc)
            log.warning("db.fault", task=self.task, error=describe(exc), **fields)
        else:
            log.debug("db.retry", task=self.task, error=describe(exc), attempt=self.failures, **fields)

    def recovered(self, **fields: Any) -> None:
        if self.since is None:
            return
        log.info(
            "db.recovered",
            task=self.task,
            attempts=self.failures,
            seconds=round(time.monotonic() - self.since, 3),
            **fields,
        )
        self.since = None
        self.failures = 0
        if self.faults is not None:
            self.faults.active.pop(self.task, None)


class Stopped(Exception):
    """``stop`` was set while retrying: the caller returns instead of trying again."""


async def retrying(
    fault: FaultLog,
    stop: anyio.Event,
    fn: Callable[[], Awaitable[T]],
    *,
    retry_if: Callable[[BaseException], bool] = is_transient,
) -> T:
    """``await fn()``, retried under POLICY while it raises a transient database error (or what ``retry_if``
    accepts); Stopped if ``stop`` is set while waiting to retry. Other exceptions propagate. The first failure is
    logged, the others are not, and the success that ends the fault is logged once."""
    try:
        result = await fn()
    except Exception as exc:
        if not retry_if(exc):
            raise
        fault.failed(exc)
    else:
        fault.recovered()
        return result
    return await _retry_after_failure(fault, stop, fn, retry_if)


async def _retry_after_failure(
    fault: FaultLog, stop: anyio.Event, fn: Callable[[], Awaitable[T]], retry_if: Callable[[BaseException], bool]
) -> T:
    # Only the wait between two attempts is cut short by ``stop``: an attempt in flight finishes (or is cancelled
    # by the shutdown's grace deadline) like any other unit of work.
    sleeping = False

    def retry_on(exc: Exception) -> bool:
        nonlocal sleeping
        if stop.is_set() or not retry_if(exc):
            return False
        fault.failed(exc)
        sleeping = True
        return True

    async def cancel_sleep_on_stop(scope: anyio.CancelScope) -> None:
        await stop.wait()
        if sleeping:
            scope.cancel()

    # The outcome is raised after the task group has exited: raised inside it, anyio would wrap it in an
    # ExceptionGroup, which the callers' ``except Stopped`` (and the error classification) would not match.
    error: Exception | None = None
    done = False
    async with anyio.create_task_group() as tg:
        tg.start_soon(cancel_sleep_on_stop, tg.cancel_scope)
        try:
            async for attempt in stamina.retry_context(on=retry_on, **POLICY):
                with attempt:
                    sleeping = False
                    if stop.is_set():
                        raise Stopped
                    result = await fn()
        except Exception as exc:
            error = exc
        else:
            done = True
        tg.cancel_scope.cancel()
    if error is not None:
        if isinstance(error, Stopped):
            raise Stopped
        if stop.is_set() and retry_if(error):
            raise Stopped from error
        raise error
    if done:
        fault.recovered()
        return result
    raise Stopped  # ``stop`` cancelled the wait


async def sleep_or_stop(stop: anyio.Event, seconds: float) -> None:
    """Sleep ``seconds`` unless ``stop`` is set first."""
    with anyio.move_on_after(seconds):
        await stop.wait()
