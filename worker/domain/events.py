"""The live events the daemon (and the dashboard's LISTEN bridge) put on the in-process EventBus: one union,
``BusEvent``, each member a TypedDict built once by the functions below and turned into JSON only at the edge (the
dashboard's ``/events`` stream encodes each event once for every client).

- ``evaluation``: an experiment was evaluated (the daemon's evaluator, through ``evaluation_event``);
- ``promotion`` / ``rollback``: a promotion or rollback happened, or a rollback was requested. Two sources say so:
  the ``ab_promotion_events`` NOTIFY (the daemon's listener, or the dashboard's bridge under ``serve``:
  ``notified_event``; ``event`` is the NOTIFY's name, e.g. ``promoted``) and, when the daemon does not LISTEN
  (poll-only), the engine's after-commit hook (``committed_event``; ``event`` is the notification event's name,
  e.g. ``promotion.promoted``). The dashboard compares the phase, so the same change reported twice shows once.
- ``rollout``: a ramp (rollout.mode = ramp) entered a state: the ``rollout_<state>`` NOTIFY of schema/0010 and the
  engine's ``rollout.*`` after-commit events (a ramp's rollback is a ``rollback``).
"""

from __future__ import annotations

import time
from typing import Literal, NotRequired, TypedDict, TypeGuard, get_args

from worker.domain.actions import EvaluationAction
from worker.domain.results import Evaluation, PromoteResult, RollbackResult, RolloutTransition

# The name of an ab_promotion_events NOTIFY (notify_promotion_event() in schema/0001_core.sql).
NotifiedEvent = Literal[
    "promoted",
    "rolled_back",
    "rollback_requested",
    # notify_rollout_event() in schema/0010_rollouts.sql: a ramp entered a state
    "rollout_ramping",
    "rollout_holding",
    "rollout_complete",
    "rollout_rolled_back",
    "rollout_paused",
    "rollout_awaiting_approval",
]
NOTIFIED_EVENTS: tuple[str, ...] = get_args(NotifiedEvent)
# The engine's after-commit events (worker.services.effects.Effects.committed).
CommittedEvent = Literal[
    "promotion.promoted",
    "promotion.rolled_back",
    "rollout.advanced",
    "rollout.completed",
    "rollout.paused",
    "rollout.resumed",
    "rollout.awaiting_approval",
]
# A committed rollout transition's event, by the transition (worker.services.effects.Effects.rollout_moved).
ROLLOUT_COMMITTED: dict[str, CommittedEvent] = {
    "advanced": "rollout.advanced",
    "completed": "rollout.completed",
    "paused": "rollout.paused",
    "resumed": "rollout.resumed",
    "awaiting_approval": "rollout.awaiting_approval",
}


class EvaluationEvent(TypedDict):
    """An evaluation (the daemon publishes one only while someone subscribes)."""

    type: Literal["evaluation"]
    experimentId: int
    experimentName: str
    action: EvaluationAction
    eligible: bool | None
    confidence: float | None
    improvement: float | None
    reasons: list[str]
    at: float  # Unix time
    promotionId: NotRequired[str]  # promoted (or dry run) by this evaluation
    decisionLatencySeconds: NotRequired[float]  # from the metric update's commit to the decision


class PromotionBusEvent(TypedDict):
    """A promotion (``type`` promotion), a rollback or its request (``type`` rollback), or a ramp's transition
    (``type`` rollout)."""

    type: Literal["promotion", "rollback", "rollout"]
    event: NotifiedEvent | CommittedEvent
    experimentName: str | None
    promotionId: str | None
    at: NotRequired[float]  # Unix time; set by the daemon
    source: NotRequired[Literal["database"]]  # set by the dashboard's own bridge


BusEvent = EvaluationEvent | PromotionBusEvent
"""Everything published on the EventBus."""

_KINDS: dict[str, Literal["promotion", "rollback", "rollout"]] = {
    "promoted": "promotion",
    "rolled_back": "rollback",
    "rollback_requested": "rollback",
    "promotion.promoted": "promotion",
    "promotion.rolled_back": "rollback",
    "rollout_rolled_back": "rollback",
    **{e: "rollout" for e in NOTIFIED_EVENTS if e.startswith("rollout_") and e != "rollout_rolled_back"},
    **{e: "rollout" for e in ROLLOUT_COMMITTED.values()},
}


def evaluation_event(evaluation: Evaluation, latency: float | None) -> EvaluationEvent:
    """The bus event after an evaluation (the dashboard pushes it live)."""
    decision = evaluation.decision
    event: EvaluationEvent = {
        "type": "evaluation",
        "experimentId": evaluation.experiment_id,
        "experimentName": evaluation.experiment_name,
        "action": evaluation.action,
        "eligible": decision.eligible if decision else None,
        "confidence": decision.confidence if decision else None,
        "improvement": decision.improvement if decision else None,
        "reasons": list(decision.reasons) if decision else [],
        "at": time.time(),
    }
    promotion_id = evaluation.promotion.get("promotionId") if evaluation.promotion else None
    if promotion_id:
        event["promotionId"] = promotion_id
    if latency is not None:
        event["decisionLatencySeconds"] = round(latency, 6)
    return event


def notified_event(
    event: NotifiedEvent, experiment_name: str | None, promotion_id: object, *, from_bridge: bool = False
) -> PromotionBusEvent:
    """The bus event of one ab_promotion_events NOTIFY: with the time when the daemon's listener publishes it,
    with ``source: database`` when the dashboard's own bridge does (under ``serve``)."""
    out: PromotionBusEvent = {
        "type": _KINDS[event],
        "event": event,
        "promotionId": str(promotion_id) if promotion_id else None,
        "experimentName": experiment_name,
    }
    if from_bridge:
        out["source"] = "database"
    else:
        out["at"] = time.time()
    return out


def committed_event(
    event: CommittedEvent, data: PromoteResult | RollbackResult | RolloutTransition
) -> PromotionBusEvent:
    """The bus event of the engine's after-commit hook (published by the daemon when it does not LISTEN)."""
    return {
        "type": _KINDS[event],
        "event": event,
        "promotionId": data.get("promotionId"),
        "experimentName": data.get("experimentName"),
        "at": time.time(),
    }


def is_notified_event(name: object) -> TypeGuard[NotifiedEvent]:
    """Whether ``name`` is an ab_promotion_events NOTIFY the bus reports."""
    return name in NOTIFIED_EVENTS
