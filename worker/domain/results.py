"""What the engine's operations return: typed once here, turned into JSON only at the HTTP and CLI edges.

The keys are the API's (camelCase) so that the edges can serialise a result as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

from worker.decide import Decision

# Every action an evaluation can end in:
#   skipped   not running (gone, paused, or promoted: promoted ones are the guard's)
#   evaluated decided and stored (or, for a dry run already reported, nothing new to say)
#   promoted  promoted in this transaction
#   dry_run   eligible (or asked to promote) under dryRun / enabled: false; reported
#   refused   asked to promote, not eligible (or the concurrency limit was reached)
#   busy      another transaction (another replica) holds the experiment: retry later
#   fresh     nothing new since the stored decision: not evaluated again
#   failed    the evaluation failed (already recorded and reported); the reconciliation scan tries again
from worker.domain.actions import EvaluationAction as EvaluationAction  # one definition

CheckResult = dict[str, Any]
"""The check ``data``: Decision.to_check_data()."""


class PromoteResult(TypedDict):
    """The promote ``data`` (also the promotion.promoted bus event)."""

    success: bool
    experimentName: str
    promotedVariantName: str | None
    confidence: float | None
    improvement: float | None
    promotionId: str | None
    notificationsQueued: int
    dryRun: bool
    eligibility: CheckResult
    reasons: NotRequired[list[str]]  # not promoted: why
    enabled: NotRequired[bool]  # dry run: the experiment's enabled
    promotedAt: NotRequired[str]  # promoted: when (ISO 8601)
    approvalId: NotRequired[str]  # approval.require: the pending approval this promotion waits for
    rollout: NotRequired[dict[str, Any]]  # promoted under rollout.mode = ramp: the ramp's first step


class ScanItem(TypedDict):
    """One experiment of a scan."""

    experimentName: str
    eligible: bool
    confidence: float | None
    improvement: float | None
    winningVariant: str | None
    reasons: list[str]
    promoted: bool
    metrics: list[dict[str, Any]]  # the check data's metrics (Decision.to_check_data)
    error: NotRequired[str]
    dryRun: NotRequired[bool]
    promotionId: NotRequired[str | None]
    approvalId: NotRequired[str]
    eta: NotRequired[dict[str, Any] | None]  # when a decision is expected (results only, domain/eta.py)


class ScanResult(TypedDict):
    """The scan ``data``."""

    scanned: int
    eligible: int
    promoted: int
    dryRun: bool
    results: list[ScanItem]


class RollbackResult(TypedDict):
    """The rollback ``data`` (also the promotion.rolled_back bus event)."""

    success: bool
    promotionId: str
    experimentName: str
    rolledBackVariantName: str
    reason: str
    rolledBackBy: str
    rolledBackAt: str
    restoredWeights: dict[str, Any]
    trigger: str
    notificationsQueued: int


@dataclass(frozen=True, slots=True)
class RollbackRefused:
    """A rollback that changed nothing, as a value (the guard and the SQL requests act on it; the API raises)."""

    why: Literal["invalid_request", "not_found", "already_rolled_back", "moved"]  # moved: see roll_back_locked
    message: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What one evaluation concluded and did."""

    experiment_id: int
    experiment_name: str
    decision: Decision | None
    action: EvaluationAction
    promotion: PromoteResult | None = None


class NotificationPayload(TypedDict):
    """The payload of every notification event (worker/notify renders it); built by worker.services.effects."""

    event: str
    experimentName: str
    priority: str
    promotionId: str | None
    occurredAt: str
    actor: str
    variant: str | None
    controlVariant: str | None
    confidence: float | None
    improvement: float | None
    method: str | None
    safetyChecks: list[dict[str, Any]]
    reason: str | None
    variants: list[dict[str, Any]]
    dryRun: bool
    guardrails: NotRequired[list[dict[str, Any]]]  # from a decision: each guardrail's verdict for the variant
    trigger: NotRequired[str]  # promotion.rolled_back
    metric: NotRequired[str]  # guard.breached: the breached metric
    guard: NotRequired[dict[str, Any]]  # guard.breached: its numbers
    promotedAt: NotRequired[str]  # guard.breached
    approvalId: NotRequired[str]  # approval.requested, approval.expired
    approvalKind: NotRequired[str]  # approval.*: promote | step
    expiresAt: NotRequired[str]  # approval.requested: when it expires as declined
    step: NotRequired[int | None]  # approval.* of kind step: the rollout step waiting to start
    rollout: NotRequired[dict[str, Any]]  # rollout.*, and a ramped promotion's guard.breached: where the ramp is


class ApprovalResult(TypedDict):
    """The approve / decline ``data``: the approval as decided, and what approving it did."""

    approvalId: str
    experimentName: str
    kind: str
    status: str  # approved | declined | closed
    decidedBy: str
    decidedAt: str
    reason: str | None
    expired: bool
    promotion: PromoteResult | None  # kind promote, approved or closed: the promotion (or why not)
    step: dict[str, Any] | None  # kind step: what the rollout did


class RolloutTransition(TypedDict, total=False):
    """A committed rollout transition, for the daemon's event bus (worker.services.rollout)."""

    experimentName: str
    promotionId: str
    rolloutId: str
    step: int
    fromStep: int
    treatmentShare: float
    reason: str
    guard: list[dict[str, Any]]
