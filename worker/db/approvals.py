"""The approvals' data access (schema/0011, worker/db/approvals.sql): one typed row, and one function per statement.

The callers hold the locks: an approval is opened, decided or expired inside a transaction that has locked the
experiment's row first (worker.services.approvals), so each approval is decided exactly once.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from worker.db.connect import Connection
from worker.db.sql import AQ

ApprovalKind = Literal["promote", "step"]
ApprovalStatus = Literal["pending", "approved", "declined", "closed"]
APPROVAL_STATUSES: tuple[str, ...] = ("pending", "approved", "declined", "closed")


@dataclass(frozen=True, slots=True)
class Approval:
    """One ab_approvals row."""

    id: uuid.UUID
    experiment_id: int
    experiment_name: str
    kind: ApprovalKind
    status: ApprovalStatus
    variant: str | None
    step: int | None
    subject: dict[str, Any]
    decision: dict[str, Any]
    requested_at: datetime
    requested_by: str
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    reason: str | None
    expired: bool
    promotion_id: uuid.UUID | None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Approval:
        return cls(
            id=row["id"],
            experiment_id=row["experiment_id"],
            experiment_name=row["experiment_name"],
            kind=row["kind"],
            status=row["status"],
            variant=row["variant"],
            step=row["step"],
            subject=dict(row["subject"] or {}),
            decision=dict(row["decision"] or {}),
            requested_at=row["requested_at"],
            requested_by=row["requested_by"],
            expires_at=row["expires_at"],
            decided_at=row["decided_at"],
            decided_by=row["decided_by"],
            reason=row["reason"],
            expired=row["expired"],
            promotion_id=row["promotion_id"],
        )


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """What opening an approval writes."""

    experiment_id: int
    experiment_name: str
    kind: ApprovalKind
    variant: str | None
    decision: Mapping[str, Any]
    requested_by: str
    timeout_seconds: float
    step: int | None = None
    subject: Mapping[str, Any] | None = None


async def open_approval(conn: Connection, request: ApprovalRequest, *, new_eligibility: bool) -> Approval | None:
    """A new pending approval, or None: one is pending already, or (unless ``new_eligibility``) this experiment
    had one of this kind and step before. The caller holds the experiment's row lock."""
    row = await conn.fetchrow(
        AQ["open_approval"],
        request.experiment_id,
        request.experiment_name,
        request.kind,
        request.variant,
        request.step,
        dict(request.subject or {}),
        dict(request.decision),
        request.requested_by,
        request.timeout_seconds,
        new_eligibility,
    )
    return None if row is None else Approval.of(row)


async def pending_approval_for(conn: Connection, experiment_id: int) -> Approval | None:
    row = await conn.fetchrow(AQ["pending_approval_for"], experiment_id)
    return None if row is None else Approval.of(row)


async def approval_by_id(conn: Connection, approval_id: uuid.UUID) -> Approval | None:
    row = await conn.fetchrow(AQ["approval_by_id"], approval_id)
    return None if row is None else Approval.of(row)


async def lock_approval(conn: Connection, approval_id: uuid.UUID) -> tuple[Approval, bool] | None:
    """The approval, locked (after its experiment), and whether it is past its expiry now."""
    row = await conn.fetchrow(AQ["lock_approval"], approval_id)
    return None if row is None else (Approval.of(row), bool(row["due"]))


async def decide_approval(
    conn: Connection,
    approval_id: uuid.UUID,
    status: ApprovalStatus,
    *,
    by: str,
    reason: str | None,
    promotion_id: uuid.UUID | str | None = None,
    expired: bool = False,
) -> Approval | None:
    """Move a pending approval to ``status``; None when it was not pending any more."""
    pid = uuid.UUID(str(promotion_id)) if promotion_id is not None else None
    row = await conn.fetchrow(AQ["decide_approval"], approval_id, status, by, reason, pid, expired)
    return None if row is None else Approval.of(row)


async def due_approvals(conn: Connection, limit: int) -> list[tuple[uuid.UUID, int]]:
    """(approval id, experiment id) of pending approvals past their expiry, oldest first."""
    return [(r["id"], r["experiment_id"]) for r in await conn.fetch(AQ["due_approvals"], limit)]


async def list_approvals(
    conn: Connection, status: str | None, experiment: str | None, limit: int, offset: int
) -> tuple[list[Approval], int]:
    """A page of approvals, newest first, and the total that match."""
    rows = await conn.fetch(AQ["list_approvals"], status, experiment, limit, offset)
    total = int(rows[0]["total"]) if rows else 0
    if not rows and offset:
        # Past the end: the total still says how many match.
        everything = await conn.fetch(AQ["list_approvals"], status, experiment, 1, 0)
        total = int(everything[0]["total"]) if everything else 0
    return [Approval.of(r) for r in rows], total


async def record_slack_interaction(conn: Connection, request_key: str, user: str, action: str, value: str) -> bool:
    """Remember one Slack interaction; False when it was seen before (a replay)."""
    return await conn.fetchval(AQ["record_slack_interaction"], request_key, user, action, value) is not None


async def slack_interaction_outcome(conn: Connection, request_key: str, outcome: str) -> None:
    await conn.execute(AQ["slack_interaction_outcome"], request_key, outcome[:2000])


async def prune_slack_interactions(conn: Connection, older_than_seconds: float) -> None:
    await conn.execute(AQ["prune_slack_interactions"], older_than_seconds)
