"""The reconciliation scan, run by one replica at a time every ``scanInterval`` seconds.

It promotes experiments that became eligible only because time passed (``minRuntimeHours``), and repairs whatever a
lost wake-up missed: ``engine.scan_and_promote_winners`` (which folds first and evaluates every running experiment),
guard checks of every watched promotion, and pending rollback requests.

Leadership: a session-level ``pg_try_advisory_lock`` on a dedicated connection. PostgreSQL releases it when that
session ends, so a replica that dies hands leadership over by itself; the others try again at their next tick.
Behind PgBouncer in transaction pooling (poll-only mode) session locks mean nothing, so leadership is a lease row
(``ab_worker_leases``) renewed at every tick and taken over once expired. Either way leadership is an efficiency
matter only: the engine's row lock already makes a double promotion impossible.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
import structlog

from worker import metrics
from worker.db.connect import Connection, Pool, connect
from worker.db.sql import DQ
from worker.retry import DB_ERRORS, FaultLog, Faults, Stopped, retrying, sleep_or_stop

log = structlog.get_logger("worker.scanner")

SCAN_LEADER_LOCK = 0x61627363  # "absc"
SCAN_LEASE = "scan"
LEADER_APPLICATION_NAME = "autopromote-leader"


class Leadership(Protocol):
    async def acquire(self) -> bool:
        """True when this replica leads (taking or confirming leadership); never raises on database errors."""
        ...

    async def release(self) -> None: ...


class AdvisoryLockLeadership:
    """Leads while its own session holds ``pg_try_advisory_lock(SCAN_LEADER_LOCK)``."""

    def __init__(
        self,
        url: str,
        *,
        application_name: str = LEADER_APPLICATION_NAME,
        key: int = SCAN_LEADER_LOCK,
        timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.application_name = application_name
        self.key = key
        self.timeout = timeout
        self._conn: Connection | None = None
        self.held = False

    async def acquire(self) -> bool:
        try:
            if self._conn is None or self._conn.is_closed():
                self._lose("connection closed")
                self._conn = await connect(
                    self.url, timeout=self.timeout, server_settings={"application_name": self.application_name}
                )
            if self.held:
                # Still our session, so still our lock.
                await self._conn.fetchval(DQ["ping"], timeout=self.timeout)
            else:
                self.held = bool(await self._conn.fetchval(DQ["try_advisory_lock"], self.key, timeout=self.timeout))
                if self.held:
                    log.info("scan.leadership_acquired", backend_pid=self._conn.get_server_pid())
        except DB_ERRORS as exc:
            self._lose(f"{type(exc).__name__}: {exc}")
            if self._conn is not None:
                self._conn.terminate()
                self._conn = None
        return self.held

    def _lose(self, why: str) -> None:
        if self.held:
            log.warning("scan.leadership_lost", reason=why)
        self.held = False

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        self.held = False
        if conn is not None and not conn.is_closed():
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                await conn.close()  # ends the session, which releases the lock
                return
            conn.terminate()


class LeaseLeadership:
    """Leads while it holds the ``scan`` row of ``ab_worker_leases`` (works through transaction pooling)."""

    def __init__(self, pool: Pool, holder: str, *, ttl: float, name: str = SCAN_LEASE) -> None:
        self.pool = pool
        self.holder = holder
        self.ttl = ttl
        self.name = name
        self.held = False
        self.fault = FaultLog("scan.lease")

    async def acquire(self) -> bool:
        try:
            async with self.pool.acquire() as conn:
                got = await conn.fetchval(DQ["take_lease"], self.name, self.holder, self.ttl) is not None
        except DB_ERRORS as exc:
            self.fault.failed(exc)  # logged once per fault; the next tick tries again
            got = False
        else:
            self.fault.recovered()
        if got and not self.held:
            log.info("scan.leadership_acquired", lease=self.name, ttl=self.ttl)
        elif self.held and not got:
            log.warning("scan.leadership_lost", lease=self.name)
        self.held = got
        return got

    async def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                async with self.pool.acquire() as conn:
                    await conn.execute(DQ["release_lease"], self.name, self.holder)
        except DB_ERRORS:
            pass  # it expires by itself


class Scanner:
    """Every ``interval`` seconds: if this replica leads, run ``scan_once``."""

    def __init__(
        self,
        leadership: Leadership,
        scan_once: Callable[[], Awaitable[dict[str, Any]]],
        *,
        interval: float,
        faults: Faults | None = None,
    ) -> None:
        self.leadership = leadership
        self.fault = FaultLog("scanner", faults)
        self.scan_once = scan_once
        self.interval = interval
        self.scans = 0
        self.last_result: dict[str, Any] | None = None

    async def run(self, stop: anyio.Event) -> None:
        try:
            while not stop.is_set():
                await sleep_or_stop(stop, self.interval)
                if stop.is_set():
                    break
                if not await self.leadership.acquire():
                    continue
                started = time.perf_counter()
                try:
                    # A scan cut short by a database fault is retried under the shared policy (each of its steps
                    # is idempotent: promotions lock their row, rollbacks their promotion).
                    self.last_result = await retrying(self.fault, stop, self.scan_once)
                except Stopped:
                    break
                elapsed = time.perf_counter() - started
                metrics.SCAN_DURATION.observe(elapsed)
                self.scans += 1
                log.info(
                    "scan.finished",
                    seconds=round(elapsed, 3),
                    **{k: v for k, v in (self.last_result or {}).items() if not isinstance(v, list | dict)},
                )
        finally:
            await self.leadership.release()
