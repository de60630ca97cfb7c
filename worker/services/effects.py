"""What follows a decision, a promotion, a rollback or a guard breach, in one place: the notification payloads and
outbox rows (written in the caller's transaction), and after the commit the metrics, the log events and the
committed callback (the daemon's event bus and dispatcher wake-up).

Every operation (promote, scan, evaluate, rollback, guard, SQL rollback requests) goes through ``Effects``, so a
payload's shape and an event's name are defined once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import structlog

from worker import metrics
from worker.config import AutoPromotionConfig, Settings
from worker.db.approvals import Approval
from worker.db.connect import Connection, json_safe
from worker.db.store import OutboxRows
from worker.decide import Decision
from worker.domain.events import ROLLOUT_COMMITTED, CommittedEvent
from worker.domain.guard_rules import GuardBreach, WatchedPromotion, since_promotion_json
from worker.domain.results import (
    Evaluation,
    NotificationPayload,
    PromoteResult,
    RollbackResult,
    RolloutTransition,
)
from worker.domain.rollout_rules import RolloutDecision, RolloutView
from worker.notify.outbox import PlannedNotifications, config_rows, enqueue_notifications, plan_notifications

log = structlog.get_logger("worker.engine")

GUARD_ACTOR = "autopromote-guard"
NotificationEvent = Literal[
    "promotion.promoted",
    "promotion.eligible",
    "promotion.failed",
    "promotion.rolled_back",
    "guard.breached",
    "approval.requested",
    "approval.expired",
    "rollout.advanced",
    "rollout.completed",
    "rollout.rolled_back",
]
PromotionMode = Literal["request", "scan", "daemon"]
# Called after a promotion, rollback or rollout transition commits, with a copy of its result (the daemon publishes
# committed_event).
OnCommitted = Callable[[CommittedEvent, PromoteResult | RollbackResult | RolloutTransition], None]


def payload(
    event: NotificationEvent,
    decision: Decision | None,
    *,
    actor: str,
    experiment_name: str,
    priority: str,
    promotion_id: uuid.UUID | str | None,
    variant: str | None,
    reason: str | None = None,
    dry_run: bool = False,
    confidence: float | None = None,
    improvement: float | None = None,
    control_variant: str | None = None,
    occurred_at: datetime | None = None,
) -> NotificationPayload:
    """The payload every notification event shares (``guardrails``: from a decision, its guardrails' verdicts for
    the variant)."""
    out: NotificationPayload = {
        "event": event,
        "experimentName": experiment_name,
        "priority": priority,
        "promotionId": str(promotion_id) if promotion_id else None,
        "occurredAt": (occurred_at or datetime.now().astimezone()).isoformat(),
        "actor": actor,
        "variant": variant,
        "controlVariant": control_variant
        if control_variant is not None
        else (decision.analysis.control if decision and decision.analysis else None),
        "confidence": confidence if confidence is not None else (decision.confidence if decision else None),
        "improvement": improvement if improvement is not None else (decision.improvement if decision else None),
        "method": decision.method if decision else None,
        "safetyChecks": [c.to_json() for c in decision.safety_checks] if decision else [],
        "reason": reason,
        "variants": decision.variant_stats_json() if decision else [],
        "dryRun": dry_run,
    }
    if decision is not None:
        out["guardrails"] = decision.guardrails_json(variant)
    return out


def breach_payload(watch: WatchedPromotion, row: Mapping[str, Any], breach: GuardBreach) -> NotificationPayload:
    """guard.breached: the same shape, with the numbers since the promotion and the breached metric."""
    out = payload(
        "guard.breached",
        None,
        actor=GUARD_ACTOR,
        experiment_name=watch.experiment_name,
        priority=row["priority"],
        promotion_id=watch.promotion_id,
        variant=watch.promoted_variant,
        reason=breach.reason,
        confidence=row["confidence"],
        improvement=row["improvement"],
        control_variant=watch.control_variant,
        occurred_at=row["now"],
    )
    out["method"] = row["method"]
    out["variants"] = since_promotion_json(watch)
    out["metric"] = breach.metric
    out["guard"] = breach.details
    out["promotedAt"] = watch.promoted_at.isoformat()
    return out


def approval_payload(
    event: Literal["approval.requested", "approval.expired"],
    approval: Approval,
    decision: Decision | None,
    *,
    actor: str,
    priority: str,
    control_variant: str | None = None,
) -> NotificationPayload:
    """approval.requested and approval.expired: the same shape, with the approval's id, kind, expiry and step; a
    rollout step's approval names its promotion. Without a decision (a step, an expiry) the figures are the ones
    the approval was asked on."""
    asked = approval.decision
    out = payload(
        event,
        decision,
        actor=actor,
        experiment_name=approval.experiment_name,
        priority=priority,
        promotion_id=_text(approval.subject.get("promotionId")),
        variant=approval.variant,
        reason=approval.reason if event == "approval.expired" else None,
        confidence=None if decision else _number(asked.get("confidence")),
        improvement=None if decision else _number(asked.get("improvement")),
        control_variant=control_variant or _text(asked.get("controlVariant")),
    )
    out["approvalId"] = str(approval.id)
    out["approvalKind"] = approval.kind
    out["expiresAt"] = approval.expires_at.isoformat()
    out["step"] = approval.step
    return out


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def rollout_payload(
    event: NotificationEvent,
    view: RolloutView,
    row: Mapping[str, Any],
    step: int,
    share: float,
    state: str,
    decision: RolloutDecision,
) -> NotificationPayload:
    """rollout.advanced, rollout.completed (and a paused ramp's guard.breached): the shared shape, the step's numbers
    since it began, and ``rollout`` = where the ramp is now and the guard of the step it left."""
    out = payload(
        event,
        None,
        actor=GUARD_ACTOR,
        experiment_name=view.experiment_name,
        priority=row["priority"],
        promotion_id=view.promotion_id,
        variant=view.winner,
        reason=decision.reason or None,
        confidence=row.get("promotion_confidence"),
        improvement=row.get("promotion_improvement"),
        control_variant=view.control,
        occurred_at=row["now"],
    )
    out["variants"] = [
        {
            "name": name,
            "isControl": name == view.control,
            "exposures": t.exposures,
            "conversions": t.conversions,
            "rate": t.conversions / t.exposures if t.exposures else None,
            "errors": t.errors,
            "errorRate": t.errors / t.exposures if t.exposures else None,
            "p95LatencyMs": t.latency.p95() if t.latency.count else None,
            "latencySamples": t.latency.count,
            "sinceStepStart": True,
        }
        for name, t in view.since_step().items()
    ]
    out["rollout"] = {
        "state": state,
        "step": step,
        "steps": list(view.plan.shares),
        "treatmentShare": share,
        "fromStep": view.step,
        "fromShare": view.share,
        "stepStartedAt": view.step_started_at.isoformat(),
        "guard": [g.to_json() for g in decision.guard],
    }
    return out


def outbox_rows(planned: PlannedNotifications) -> OutboxRows:
    """Planned notifications as the column arrays of promote_write."""
    channels, config_ids, refs, labels, actions = planned.columns()
    return OutboxRows(channels, config_ids, refs, labels, actions, planned.body, planned.priority, planned.detailed)


class Effects:
    """Notifications (in the caller's transaction) and the after-commit metrics, logs and callback."""

    def __init__(self, settings: Settings, on_committed: OnCommitted | None = None) -> None:
        self.settings = settings
        self.on_committed = on_committed

    # ------------------------------------------------------------------------------ in the transaction
    async def notify(self, conn: Connection, body: NotificationPayload, cfg: AutoPromotionConfig) -> int:
        """Queue ``body`` (its ``event``) on the outbox in the caller's transaction; rows queued."""
        queued: int = await enqueue_notifications(
            conn, event=body["event"], payload=json_safe(body), config=cfg, settings=self.settings
        )
        return queued

    def plan(
        self,
        body: NotificationPayload,
        cfg: AutoPromotionConfig,
        configs: Any,
        breach_triggered_refs: Sequence[str] = (),
    ) -> PlannedNotifications:
        """The outbox rows of ``body``, routed over ``configs`` (routable notification_configs rows as JSON), for a
        statement that writes them itself (promote_write, rollback_write); ``breach_triggered_refs``: the PagerDuty
        targets that got this promotion's guard-breach trigger (a rollback resolves there)."""
        return plan_notifications(
            event=body["event"],
            payload=json_safe(body),
            config=cfg,
            settings=self.settings,
            rows=config_rows(configs or []),
            breach_triggered_refs=breach_triggered_refs,
        )

    # ------------------------------------------------------------------------------ after the commit
    def committed(self, event: CommittedEvent, data: PromoteResult | RollbackResult | RolloutTransition) -> None:
        """Tell the daemon (event bus, dispatcher) about a committed promotion, rollback or rollout transition."""
        if self.on_committed is not None:
            self.on_committed(event, data.copy())

    def evaluated(self, outcome: Evaluation) -> None:
        """Count an evaluation (not one that found nothing new)."""
        decision = outcome.decision
        if decision is None or outcome.action == "fresh":
            return
        count_evaluation(decision)
        log.debug(
            "experiment.evaluated",
            experiment=outcome.experiment_name,
            eligible=decision.eligible,
            confidence=decision.confidence,
            action=outcome.action,
        )

    def promoted(self, experiment_name: str, result: PromoteResult, mode: PromotionMode) -> None:
        """A committed promotion."""
        metrics.PROMOTIONS.labels(mode).inc()
        log.info(
            "promotion.committed",
            experiment=experiment_name,
            variant=result["promotedVariantName"],
            promotion_id=result["promotionId"],
            confidence=result["confidence"],
            improvement=result["improvement"],
        )
        self.committed("promotion.promoted", result)

    def queued(self, event: NotificationEvent, experiment_name: str, planned: PlannedNotifications) -> None:
        if planned.routes:
            log.debug(
                "notification.queued",
                notification_event=event,
                experiment=experiment_name,
                rows=len(planned.routes),
                targets=[r.target_label for r in planned.routes],
            )

    def rolled_back(self, result: RollbackResult) -> None:
        """A committed rollback."""
        metrics.ROLLBACKS.labels(result["trigger"]).inc()
        log.info(
            "promotion.rolled_back",
            experiment=result["experimentName"],
            promotion_id=result["promotionId"],
            reason=result["reason"],
            actor=result["rolledBackBy"],
            trigger=result["trigger"],
        )
        self.committed("promotion.rolled_back", result)

    def guard_breached(self, watch: WatchedPromotion, breaches: list[GuardBreach], *, rolled_back: bool) -> None:
        """Breaches acted on (rolled back, or each notified)."""
        for b in breaches:
            metrics.GUARD_BREACHES.labels(b.metric).inc()
        if rolled_back:
            log.warning(
                "guard.breached",
                promotion_id=watch.promotion_id,
                variant=watch.promoted_variant,
                metrics=[b.metric for b in breaches],
                reason="; ".join(b.reason for b in breaches),
                action="rolled_back",
            )
            return
        for b in breaches:
            log.warning(
                "guard.breached",
                promotion_id=watch.promotion_id,
                variant=watch.promoted_variant,
                metric=b.metric,
                reason=b.reason,
                action="notified",
            )

    def rollout_moved(self, action: str, data: RolloutTransition) -> None:
        """A committed rollout transition (advanced, completed, paused, resumed, awaiting_approval)."""
        metrics.ROLLOUT_TRANSITIONS.labels(action).inc()
        log.info(
            f"rollout.{action}",
            experiment=data.get("experimentName"),
            promotion_id=data.get("promotionId"),
            step=data.get("step"),
            treatment_share=data.get("treatmentShare"),
            reason=data.get("reason") or None,
        )
        event = ROLLOUT_COMMITTED.get(action)
        if event is not None:
            self.committed(event, data)

    def scan_completed(self, scanned: int, eligible: int, promoted: int, dry_run: bool) -> None:
        metrics.SCANS.inc()
        log.info("scan.completed", scanned=scanned, eligible=eligible, promoted=promoted, dry_run=dry_run)


def count_evaluation(decision: Decision) -> None:
    """The evaluation counters of one decision."""
    metrics.EVALUATIONS.labels("eligible" if decision.eligible else "not_eligible").inc()
    for check in decision.safety_checks:
        if not check.passed:
            metrics.SAFETY_CHECK_FAILURES.labels(check.name).inc()
