"""Deciding approvals: approve, decline, expire. Each locks the experiment's row, then the approval's, and changes
only an approval still pending, in one transaction; so each approval is decided exactly once, by whoever (operator,
Slack, expiry, replica) gets there first.

Approving a promotion decides again on the locked state and promotes in the same transaction through the one
promotion path (PromoteService.promote_approved): an approval never promotes what is no longer eligible; it is then
closed with the reasons. Approving a rollout step hands over to the rollout (approval_gate.StepApprovals).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from worker import metrics
from worker.config import EffectiveConfig, Settings
from worker.db import approvals as db
from worker.db import store
from worker.db.approvals import Approval
from worker.db.connect import Connection, Pool
from worker.db.sql import Q
from worker.domain.errors import ApprovalNotFound, ApprovalNotPending, InvalidRequest
from worker.domain.results import ApprovalResult, Evaluation, PromoteResult
from worker.services.approval_gate import EXPIRY_ACTOR, StepApprovals, notify_expired, parse_approval_id
from worker.services.deciding import Decider
from worker.services.effects import Effects
from worker.services.promote import PromoteService

log = structlog.get_logger("worker.approvals")

EXPIRY_BATCH = 100


@dataclass(frozen=True, slots=True)
class _Decided:
    """One transaction's outcome, acted on after the commit."""

    result: ApprovalResult | None = None
    promoted: Evaluation | None = None
    refusal: ApprovalNotPending | None = None


class ApprovalService:
    """approve, decline, expire_due."""

    def __init__(
        self,
        pool: Pool,
        settings: Settings,
        config: EffectiveConfig,
        decider: Decider,
        promote: PromoteService,
        effects: Effects,
        steps: StepApprovals | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.config = config
        self.decider = decider
        self.promote = promote
        self.effects = effects
        self.steps = steps

    # -------------------------------------------------------------------------------------------- approve
    async def approve(
        self, approval_id: str | uuid.UUID | None, *, actor: str, config: EffectiveConfig | None = None
    ) -> ApprovalResult:
        """Approve a pending approval and act on it in the same transaction; the outcome.

        ``status`` approved: promoted (or the step advanced); closed: the decision re-checked now refused it
        (``reason``, and ``promotion.reasons``). Raises InvalidRequest, ApprovalNotFound, or ApprovalNotPending
        (decided before, or past its expiry: then declined as expired, here, exactly once).
        """
        aid = _approval_id(approval_id)
        effective = config or self.config
        async with self.pool.acquire() as conn:
            experiment_id = await self._experiment_of(conn, aid)
            async with conn.transaction():
                done = await self._approve_locked(conn, aid, experiment_id, effective, actor)
        if done.refusal is not None:
            _count_refusal(done.refusal)
            raise done.refusal
        assert done.result is not None
        metrics.APPROVALS_DECIDED.labels(done.result["status"]).inc()
        if done.promoted is not None and done.promoted.action == "promoted":
            assert done.promoted.promotion is not None
            self.effects.promoted(done.promoted.experiment_name, done.promoted.promotion, "request")
        assert done.result is not None
        log.info(
            "approval.decided",
            experiment=done.result["experimentName"],
            approval_id=done.result["approvalId"],
            status=done.result["status"],
            actor=actor,
        )
        return done.result

    async def _approve_locked(
        self, conn: Connection, aid: uuid.UUID, experiment_id: int, effective: EffectiveConfig, actor: str
    ) -> _Decided:
        exp = await conn.fetchrow(Q["lock_experiment"], experiment_id)
        approval, due = await self._lock(conn, aid)
        if approval.status != "pending":
            return _Decided(refusal=_not_pending(approval))
        if due:
            expired = await self._expire_locked(conn, approval, exp, effective)
            return _Decided(refusal=_not_pending(expired, expired_now=True))
        if approval.kind == "step":
            return await self._approve_step(conn, approval, actor)
        outcome = await self.promote.promote_approved(conn, experiment_id, effective, actor=actor)
        promotion = outcome.promotion
        assert promotion is not None
        if outcome.action == "promoted":
            decided = await db.decide_approval(
                conn, aid, "approved", by=actor, reason=None, promotion_id=promotion["promotionId"]
            )
        else:
            why = "; ".join(promotion.get("reasons") or []) or "not eligible any more"
            decided = await db.decide_approval(conn, aid, "closed", by=actor, reason=f"not promoted: {why}")
        assert decided is not None  # locked and pending above
        await self._audit(conn, decided, actor, {"promotionId": promotion["promotionId"]})
        return _Decided(result=_result(decided, promotion=promotion), promoted=outcome)

    async def _approve_step(self, conn: Connection, approval: Approval, actor: str) -> _Decided:
        if self.steps is None:
            decided = await db.decide_approval(
                conn, approval.id, "closed", by=actor, reason="no rollout is running in this worker to advance"
            )
            assert decided is not None
            await self._audit(conn, decided, actor, {})
            return _Decided(result=_result(decided))
        step = await self.steps.advance_approved(conn, approval, actor=actor)
        if step.advanced:
            decided = await db.decide_approval(conn, approval.id, "approved", by=actor, reason=None)
        else:
            why = step.reason or "the step may not advance any more"
            decided = await db.decide_approval(conn, approval.id, "closed", by=actor, reason=f"not advanced: {why}")
        assert decided is not None
        await self._audit(conn, decided, actor, {"step": dict(step.data or {})})
        return _Decided(result=_result(decided, step=dict(step.data or {"advanced": step.advanced})))

    # -------------------------------------------------------------------------------------------- decline
    async def decline(self, approval_id: str | uuid.UUID | None, reason: str | None, *, actor: str) -> ApprovalResult:
        """Decline a pending approval (nothing is promoted); raises InvalidRequest (no reason), ApprovalNotFound or
        ApprovalNotPending."""
        if reason is None or not str(reason).strip():
            raise InvalidRequest("a non-empty reason is required to decline", {"field": "reason"})
        aid = _approval_id(approval_id)
        async with self.pool.acquire() as conn:
            experiment_id = await self._experiment_of(conn, aid)
            async with conn.transaction():
                exp = await conn.fetchrow(Q["lock_experiment"], experiment_id)
                approval, due = await self._lock(conn, aid)
                if approval.status != "pending":
                    done = _Decided(refusal=_not_pending(approval))
                elif due:
                    expired = await self._expire_locked(conn, approval, exp, self.config)
                    done = _Decided(refusal=_not_pending(expired, expired_now=True))
                else:
                    decided = await db.decide_approval(conn, aid, "declined", by=actor, reason=str(reason).strip())
                    assert decided is not None
                    if decided.kind == "step" and self.steps is not None:
                        await self.steps.step_declined(conn, decided, actor=actor, reason=decided.reason or "declined")
                    await self._audit(conn, decided, actor, {})
                    done = _Decided(result=_result(decided))
        if done.refusal is not None:
            _count_refusal(done.refusal)
            raise done.refusal
        assert done.result is not None
        metrics.APPROVALS_DECIDED.labels("declined").inc()
        log.info("approval.decided", experiment=done.result["experimentName"], approval_id=str(aid), status="declined")
        return done.result

    # ------------------------------------------------------------------------------------------------ expire
    async def expire_due(self, *, limit: int = EXPIRY_BATCH) -> list[ApprovalResult]:
        """Decline every pending approval past its expiry (``approval.expired`` notified), each in a transaction of
        its own on its locks; the ones this call expired (another replica's are not repeated)."""
        out: list[ApprovalResult] = []
        async with self.pool.acquire() as conn:
            due = await db.due_approvals(conn, limit)
            for aid, experiment_id in due:
                async with conn.transaction():
                    exp = await conn.fetchrow(Q["lock_experiment"], experiment_id)
                    locked = await db.lock_approval(conn, aid)
                    if locked is None or locked[0].status != "pending" or not locked[1]:
                        continue  # decided meanwhile
                    out.append(_result(await self._expire_locked(conn, locked[0], exp, self.config)))
        for r in out:
            metrics.APPROVALS_DECIDED.labels("expired").inc()
            log.info("approval.expired", experiment=r["experimentName"], approval_id=r["approvalId"])
        return out

    async def _expire_locked(
        self, conn: Connection, approval: Approval, exp: Any, effective: EffectiveConfig
    ) -> Approval:
        """Decline a pending, due approval as expired, with its notification and audit row (locks held)."""
        hours = (approval.expires_at - approval.requested_at).total_seconds() / 3600.0
        reason = f"expired: nobody approved or declined it within {hours:g} h (approval.timeoutHours)"
        decided = await db.decide_approval(conn, approval.id, "declined", by=EXPIRY_ACTOR, reason=reason, expired=True)
        assert decided is not None
        if decided.kind == "step" and self.steps is not None:
            await self.steps.step_declined(conn, decided, actor=EXPIRY_ACTOR, reason=reason)
        cfg = self.decider.cfg_or_base(effective, exp["config"] if exp else None)
        await notify_expired(conn, self.effects, decided, priority=exp["priority"] if exp else "normal", cfg=cfg)
        await self._audit(conn, decided, EXPIRY_ACTOR, {})
        return decided

    # ------------------------------------------------------------------------------------------------ shared
    async def _experiment_of(self, conn: Connection, aid: uuid.UUID) -> int:
        approval = await db.approval_by_id(conn, aid)
        if approval is None:
            raise ApprovalNotFound(f"no approval with id {aid}", {"approvalId": str(aid)})
        return approval.experiment_id

    async def _lock(self, conn: Connection, aid: uuid.UUID) -> tuple[Approval, bool]:
        locked = await db.lock_approval(conn, aid)
        if locked is None:  # deleted with its experiment meanwhile
            raise ApprovalNotFound(f"no approval with id {aid}", {"approvalId": str(aid)})
        return locked

    async def _audit(self, conn: Connection, approval: Approval, actor: str, extra: dict[str, Any]) -> None:
        action = {"approved": "approval_approved", "declined": "approval_declined", "closed": "approval_closed"}
        await store.insert_audit(
            conn,
            actor,
            "approval_expired" if approval.expired else action[approval.status],
            approval.experiment_id,
            approval.experiment_name,
            approval.promotion_id,
            {
                "approvalId": str(approval.id),
                "kind": approval.kind,
                "step": approval.step,
                "reason": approval.reason,
                "requestedAt": approval.requested_at.isoformat(),
                **extra,
            },
        )


def _approval_id(value: str | uuid.UUID | None) -> uuid.UUID:
    if value is None or not str(value).strip():
        raise InvalidRequest("approvalId is required", {"field": "approvalId"})
    aid = parse_approval_id(value)
    if aid is None:
        raise InvalidRequest(f"approvalId {str(value)[:80]!r} is not a UUID", {"field": "approvalId"})
    return aid


def _count_refusal(refusal: ApprovalNotPending) -> None:
    """An approve or decline that found its approval past the timeout expired it (exactly once, committed)."""
    if refusal.details.get("expiredNow"):
        metrics.APPROVALS_DECIDED.labels("expired").inc()


def _not_pending(approval: Approval, *, expired_now: bool = False) -> ApprovalNotPending:
    when = approval.decided_at.isoformat() if approval.decided_at else "?"
    what: Literal["expired", "approved", "declined", "closed"] = "expired" if approval.expired else approval.status  # type: ignore[assignment]
    return ApprovalNotPending(
        f"approval {approval.id} is not pending: {what} at {when} by {approval.decided_by}"
        + (f" ({approval.reason})" if approval.reason else ""),
        {
            "approvalId": str(approval.id),
            "status": approval.status,
            "expired": approval.expired,
            "decidedAt": when,
            "decidedBy": approval.decided_by,
            "expiredNow": expired_now,
        },
    )


def _result(
    approval: Approval, *, promotion: PromoteResult | None = None, step: dict[str, Any] | None = None
) -> ApprovalResult:
    return {
        "approvalId": str(approval.id),
        "experimentName": approval.experiment_name,
        "kind": approval.kind,
        "status": approval.status,
        "decidedBy": approval.decided_by or "",
        "decidedAt": approval.decided_at.isoformat() if approval.decided_at else "",
        "reason": approval.reason,
        "expired": approval.expired,
        "promotion": promotion,
        "step": step,
    }
