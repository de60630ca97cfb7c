"""Opening an approval: what an eligible promotion (approval.require = promote | every_step) or a rollout step ready
to advance (every_step) does instead of acting.

The seam with the rollout (worker.services.approvals carries out the decisions):

* A caller holds the experiment's row lock and calls ``request_approval`` in its transaction. It writes the pending
  row (at most one per experiment: a second request while one is pending returns that one, ``opened`` false), the
  audit row and the ``approval.requested`` outbox rows, all in that transaction.
* For ``kind="step"`` the rollout passes the step waiting to start and a ``subject`` (its rollout id and whatever
  it needs to act later); it sets its own state to ``awaiting_approval`` in the same transaction.
* Approving a step calls the rollout's ``StepApprovals.advance_approved`` on the locked experiment (it re-checks the
  step's guard and advances, or says why not: the approval is then closed with that reason); declining it, or its
  expiry, calls ``step_declined`` (the rollout holds the ramp where it is).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from worker.config import AutoPromotionConfig
from worker.db import approvals as db
from worker.db import store
from worker.db.approvals import Approval, ApprovalKind, ApprovalRequest
from worker.db.connect import Connection
from worker.decide import Decision
from worker.services.effects import Effects, approval_payload

log = structlog.get_logger("worker.approvals")

EXPIRY_ACTOR = "autopromote-expiry"
ROLLOUT_ACTOR = "autopromote-rollout"


@dataclass(frozen=True, slots=True)
class ApprovalOpened:
    """The pending approval a request waits for; ``opened``: written by this call (else it was pending already)."""

    approval: Approval
    opened: bool
    queued: int = 0


def requires_approval(cfg: AutoPromotionConfig, kind: ApprovalKind) -> bool:
    """Whether ``kind`` waits for an approval under ``cfg``: promote under promote and every_step, step under
    every_step only."""
    require = cfg.approval.require
    return require == "every_step" or (require == "promote" and kind == "promote")


class StepOutcome(Protocol):
    """What the rollout did with an approved step: advanced, or why not (the approval is then closed)."""

    @property
    def advanced(self) -> bool: ...

    @property
    def reason(self) -> str | None: ...

    @property
    def data(self) -> Mapping[str, Any] | None: ...


class StepApprovals(Protocol):
    """What the rollout gives the approvals (worker.services.approvals) for approvals of kind ``step``. Both run in
    the approval's transaction, with the experiment's row locked."""

    async def advance_approved(self, conn: Connection, approval: Approval, *, actor: str) -> StepOutcome:
        """Re-check the step on the locked state and advance it, or say why not."""
        ...

    async def step_declined(self, conn: Connection, approval: Approval, *, actor: str, reason: str) -> None:
        """The step's approval was declined (or expired): hold the ramp where it is."""
        ...


async def request_approval(
    conn: Connection,
    effects: Effects,
    *,
    experiment_id: int,
    experiment_name: str,
    priority: str,
    kind: ApprovalKind,
    cfg: AutoPromotionConfig,
    decision: Decision | None,
    check: Mapping[str, Any],
    variant: str | None,
    actor: str,
    new_eligibility: bool = True,
    step: int | None = None,
    subject: Mapping[str, Any] | None = None,
    control_variant: str | None = None,
) -> ApprovalOpened | None:
    """Open a pending approval (audit row and ``approval.requested`` notification included) in the caller's
    transaction, which holds the experiment's row lock; or the one pending already. None when nothing is pending and
    none was opened: this eligibility (``new_eligibility`` false) was asked about before."""
    opened = await db.open_approval(
        conn,
        ApprovalRequest(
            experiment_id=experiment_id,
            experiment_name=experiment_name,
            kind=kind,
            variant=variant,
            decision=check,
            requested_by=actor,
            timeout_seconds=cfg.approval.timeout_hours * 3600.0,
            step=step,
            subject=subject,
        ),
        new_eligibility=new_eligibility,
    )
    if opened is None:
        pending = await db.pending_approval_for(conn, experiment_id)
        return None if pending is None else ApprovalOpened(pending, opened=False)
    await store.insert_audit(
        conn,
        actor,
        "approval_requested",
        experiment_id,
        experiment_name,
        None,
        {"approvalId": str(opened.id), "kind": kind, "variant": variant, "step": step, "decision": dict(check)},
    )
    body = approval_payload(
        "approval.requested", opened, decision, actor=actor, priority=priority, control_variant=control_variant
    )
    queued = await effects.notify(conn, body, cfg)
    log.info(
        "approval.requested",
        experiment=experiment_name,
        approval_id=str(opened.id),
        kind=kind,
        step=step,
        expires_at=opened.expires_at.isoformat(),
    )
    return ApprovalOpened(opened, opened=True, queued=queued)


StepRequester = Callable[[Connection, Any, Any, AutoPromotionConfig, Mapping[str, Any]], Awaitable[None]]


def step_approval_requester(effects: Effects) -> StepRequester:
    """The rollout's hook (``RolloutService.request_step_approval``) for a step ready to advance under
    approval.require = every_step: called with the rollout's view, its decision, the config and the locked rollout
    row, in the transaction that sets the rollout to awaiting_approval. Opens the ``step`` approval (its subject names
    the rollout, its decision column keeps the guard the step was judged by)."""

    async def request(
        conn: Connection, view: Any, decision: Any, cfg: AutoPromotionConfig, row: Mapping[str, Any]
    ) -> None:
        nxt = decision.next_step if decision.next_step is not None else view.step + 1
        snapshot = {
            "rolloutId": str(view.rollout_id),
            "promotionId": str(view.promotion_id),
            "step": view.step,
            "treatmentShare": view.share,
            "nextStep": nxt,
            "nextShare": view.plan.share(nxt),
            "controlVariant": view.control,
            "guard": [g.to_json() for g in decision.guard],
        }
        await request_approval(
            conn,
            effects,
            experiment_id=view.experiment_id,
            experiment_name=view.experiment_name,
            priority=row["priority"],
            kind="step",
            cfg=cfg,
            decision=None,
            check=snapshot,
            variant=view.winner,
            actor=ROLLOUT_ACTOR,
            step=nxt,
            subject={"rolloutId": str(view.rollout_id), "promotionId": str(view.promotion_id), "fromStep": view.step},
            control_variant=view.control,
        )

    return request


async def notify_expired(
    conn: Connection, effects: Effects, approval: Approval, *, priority: str, cfg: AutoPromotionConfig
) -> int:
    """The ``approval.expired`` notification of ``approval`` (declined by its expiry), in the caller's transaction."""
    body = approval_payload("approval.expired", approval, None, actor=EXPIRY_ACTOR, priority=priority)
    return await effects.notify(conn, body, cfg)


def parse_approval_id(value: str | uuid.UUID | None) -> uuid.UUID | None:
    """The approval id as a UUID, or None when it is not one."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value).strip())
    except ValueError:
        return None
