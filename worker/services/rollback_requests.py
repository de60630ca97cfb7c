"""Carry out rollbacks requested from any SQL client with ``ab_request_rollback(...)``.

The durable truth is ``experiment_promotions`` rows with ``rollback_requested_at`` set and ``rollback_at`` NULL; the
``rollback_requested`` NOTIFY only says "look now". Every replica looks; the rollback locks the experiment and the
promotion, so the first one restores the weights, audits and enqueues the notifications, and the others are told
it is already rolled back, which here means "done by someone else": a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import structlog

from worker.db.connect import Pool
from worker.db.sql import Q
from worker.domain.results import RollbackRefused
from worker.services.rollback import RollbackService

log = structlog.get_logger("worker.rollbacks")

SQL_REQUEST_TRIGGER = "sql_request"


class HasRollbacks(Protocol):
    """What this module uses of worker.engine.Engine."""

    rollbacks: RollbackService


@dataclass(frozen=True, slots=True)
class RollbackRequestOutcome:
    promotion_id: str
    experiment_name: str
    action: Literal["rolled_back", "already_done", "refused"]


async def carry_out_rollback_requests(pool: Pool, engine: HasRollbacks) -> list[RollbackRequestOutcome]:
    """Roll back every promotion whose rollback was requested and not yet carried out; what happened to each."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(Q["pending_rollback_requests"])
    outcomes: list[RollbackRequestOutcome] = []
    for row in rows:
        pid = str(row["id"])
        with structlog.contextvars.bound_contextvars(experiment=row["experiment_name"]):
            done = await engine.rollbacks.roll_back(
                pid,
                row["rollback_request_reason"] or "rollback requested through SQL",
                actor=row["rollback_requested_by"] or "sql",
                trigger=SQL_REQUEST_TRIGGER,
                details={"requestedBy": row["rollback_requested_by"]},
            )
            if isinstance(done, RollbackRefused) and done.why != "invalid_request":
                log.debug("rollback_request.already_handled", promotion_id=pid)
                outcomes.append(RollbackRequestOutcome(pid, row["experiment_name"], "already_done"))
            elif isinstance(done, RollbackRefused):
                log.error("rollback_request.refused", promotion_id=pid, error=done.message)
                outcomes.append(RollbackRequestOutcome(pid, row["experiment_name"], "refused"))
            else:
                log.info("rollback_request.carried_out", promotion_id=pid, requested_by=row["rollback_requested_by"])
                outcomes.append(RollbackRequestOutcome(pid, row["experiment_name"], "rolled_back"))
    return outcomes
