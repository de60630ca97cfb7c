"""Roll a promotion back: restore the previous weights, mark it rolled back, audit and notify, in one transaction.

``roll_back`` answers a rollback that changes nothing (no such promotion, already rolled back, a bad request) with
a ``RollbackRefused`` value: the guard and the SQL rollback requests act on it. ``rollback_promotion`` (the API and
CLI) raises the matching EngineError instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worker.config import EffectiveConfig
from worker.db.connect import Connection, Pool, json_safe
from worker.db.sql import RLQ, Q
from worker.domain.errors import AlreadyRolledBack, EngineError, InvalidRequest, PromotionNotFound
from worker.domain.results import NotificationPayload, RollbackRefused, RollbackResult
from worker.services.deciding import Decider
from worker.services.effects import Effects, NotificationEvent, outbox_rows, payload


def parse_promotion_id(promotion_id: str | uuid.UUID | None) -> uuid.UUID | RollbackRefused:
    """The promotion id as a UUID, or why it is not one."""
    if isinstance(promotion_id, uuid.UUID):
        return promotion_id
    if not promotion_id or not str(promotion_id).strip():
        return RollbackRefused("invalid_request", "promotionId is required", {"field": "promotionId"})
    try:
        return uuid.UUID(str(promotion_id).strip())
    except ValueError:
        return RollbackRefused(
            "invalid_request", f"promotionId {str(promotion_id)[:80]!r} is not a UUID", {"field": "promotionId"}
        )


def refusal_error(refused: RollbackRefused) -> EngineError:
    """The EngineError an API or CLI caller gets for ``refused``."""
    kind = {
        "invalid_request": InvalidRequest,
        "not_found": PromotionNotFound,
        "already_rolled_back": AlreadyRolledBack,
        "moved": AlreadyRolledBack,  # only a ramp's guard asks with ``expect``; no API caller gets it
    }[refused.why]
    return kind(refused.message, refused.details)


class RollbackService:
    """rollback_promotion, and roll_back for callers that act on a refusal."""

    def __init__(self, pool: Pool, config: EffectiveConfig, decider: Decider, effects: Effects) -> None:
        self.pool = pool
        self.config = config
        self.decider = decider
        self.effects = effects

    async def rollback_promotion(
        self,
        promotion_id: str | uuid.UUID | None,
        reason: str | None,
        *,
        actor: str = "autopromote",
        trigger: str = "manual",
        config: EffectiveConfig | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> RollbackResult:
        """Restore the previous weights and mark the promotion rolled back, in one transaction.

        Raises InvalidRequest (no reason, bad id), PromotionNotFound, or AlreadyRolledBack (nothing changed).
        """
        outcome = await self.roll_back(
            promotion_id, reason, actor=actor, trigger=trigger, config=config, details=details
        )
        if isinstance(outcome, RollbackRefused):
            raise refusal_error(outcome)
        return outcome

    async def roll_back(
        self,
        promotion_id: str | uuid.UUID | None,
        reason: str | None,
        *,
        actor: str = "autopromote",
        trigger: str = "manual",
        config: EffectiveConfig | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> RollbackResult | RollbackRefused:
        """rollback_promotion, answering a rollback that changes nothing with why."""
        if reason is None or not str(reason).strip():
            return RollbackRefused(
                "invalid_request", "a non-empty reason is required to roll back", {"field": "reason"}
            )
        pid = parse_promotion_id(promotion_id)
        if isinstance(pid, RollbackRefused):
            return pid
        effective = config or self.config
        async with self.pool.acquire() as conn, conn.transaction():
            promo = await conn.fetchrow(Q["promotion_by_id"], pid)
            if promo is None:
                return RollbackRefused("not_found", f"no promotion with id {pid}", {"promotionId": str(pid)})
            # Same lock order as promote (experiment first), so the two cannot deadlock.
            exp = await conn.fetchrow(Q["lock_experiment"], promo["experiment_id"])
            result = await self.roll_back_locked(
                conn,
                pid,
                reason,
                actor=actor,
                trigger=trigger,
                details=details,
                config=effective,
                overrides=exp["config"] if exp else None,
                priority=exp["priority"] if exp else "normal",
            )
        if isinstance(result, RollbackRefused):
            return result
        self.effects.rolled_back(result)
        return result

    async def roll_back_locked(
        self,
        conn: Connection,
        pid: uuid.UUID,
        reason: str,
        *,
        actor: str,
        trigger: str,
        details: Mapping[str, Any] | None = None,
        config: EffectiveConfig | None = None,
        overrides: Mapping[str, Any] | None = None,
        priority: str = "normal",
        rollout_guard: list[dict[str, Any]] | None = None,
        known: KnownRollback | None = None,
        expect: tuple[uuid.UUID, int] | None = None,
    ) -> RollbackResult | RollbackRefused:
        """The rollback itself, in the caller's transaction, the experiment row locked already: restore the previous
        weights, mark the promotion (and its rollout, if it ramped) rolled back, audit, queue the notifications.
        The caller runs ``effects.rolled_back`` after its commit.

        ``known``: what the caller read already (a ramp's: the promotion's figures, its routable targets and breach
        triggers); the notifications then go into the same statement (one round trip, not four).

        ``expect``: (rollout id, transitions) for a ramp's guard that decided on an unlocked read, with no
        transaction around this call: the one statement locks the experiment, then the rollout, and rolls back only
        if the rollout is still at that transition and the experiment's config still ``overrides`` (what the guard
        decided with); otherwise RollbackRefused("moved") and nothing is written."""
        cfg = self.decider.cfg_or_base(config or self.config, overrides)
        planned = None
        if known is not None:
            body = _body(
                known.event, actor, priority, pid, reason, trigger, known.promotion, known.rollout, rollout_guard
            )
            planned = self.effects.plan(body, cfg, known.targets, known.breach_refs)
        o = outbox_rows(planned) if planned is not None else None
        written = await conn.fetchrow(
            RLQ["rollback_write"],
            pid,
            reason,
            actor,
            json_safe({"reason": reason, "trigger": trigger, **(details or {})}),
            rollout_guard or [],
            o.channels if o else [],
            o.config_ids if o else [],
            o.target_refs if o else [],
            o.target_labels if o else [],
            o.actions if o else [],
            (o.body or "{}") if o else "{}",
            o.priority if o else priority,
            o.detailed if o else False,
            known.event if known is not None else "promotion.rolled_back",
            expect[0] if expect is not None else None,
            expect[1] if expect is not None else None,
            json_safe(dict(overrides or {})) if expect is not None else None,
        )
        if written is None and expect is not None:
            return RollbackRefused("moved", "the rollout moved on before its rollback", {"promotionId": str(pid)})
        if written is None:
            promo = await conn.fetchrow(Q["promotion_by_id"], pid)
            if promo is None:
                return RollbackRefused("not_found", f"no promotion with id {pid}", {"promotionId": str(pid)})
            return RollbackRefused(
                "already_rolled_back",
                f"promotion {pid} was already rolled back at {promo['rollback_at'].isoformat()} "
                f"by {promo['rolled_back_by']}: {promo['rollback_reason']}",
                {"promotionId": str(pid), "rolledBackAt": promo["rollback_at"].isoformat()},
            )
        previous: dict[str, Any] = written["previous_weights"] or {}
        if planned is not None:
            queued = len(planned.routes)
            self.effects.queued(planned.event, written["experiment_name"], planned)  # type: ignore[arg-type]
        else:
            ramp: dict[str, Any] | None = None
            if written["rollout_id"] is not None:
                steps = [float(x) for x in written["rollout_steps"]]
                step = int(written["rollout_step"])
                ramp = {"step": step, "steps": steps, "treatmentShare": steps[step - 1]}
            promotion = {
                "experimentName": written["experiment_name"],
                "variant": written["promoted_variant_name"],
                "controlVariant": written["control_variant_name"],
                "confidence": written["confidence"],
                "improvement": written["improvement"],
            }
            event: NotificationEvent = "rollout.rolled_back" if ramp is not None else "promotion.rolled_back"
            body = _body(event, actor, priority, pid, reason, trigger, promotion, ramp, rollout_guard)
            queued = await self.effects.notify(conn, body, cfg)
        result: RollbackResult = {
            "success": True,
            "promotionId": str(pid),
            "experimentName": written["experiment_name"],
            "rolledBackVariantName": written["promoted_variant_name"],
            "reason": reason,
            "rolledBackBy": actor,
            "rolledBackAt": written["rollback_at"].isoformat(),
            "restoredWeights": previous,
            "trigger": trigger,
            "notificationsQueued": queued,
        }
        return result


@dataclass(frozen=True, slots=True)
class KnownRollback:
    """What a caller that locked the rollout read already: the event, the promotion's figures (experimentName,
    variant, controlVariant, confidence, improvement), where the ramp is, and where the notification goes."""

    event: NotificationEvent
    promotion: Mapping[str, Any]
    rollout: Mapping[str, Any] | None
    targets: Any  # routable notification_configs rows, as JSON
    breach_refs: Sequence[str]


def _body(
    event: NotificationEvent,
    actor: str,
    priority: str,
    pid: uuid.UUID,
    reason: str,
    trigger: str,
    promotion: Mapping[str, Any],
    ramp: Mapping[str, Any] | None,
    rollout_guard: list[dict[str, Any]] | None,
) -> NotificationPayload:
    """The rolled-back notification: the shared shape, the trigger, and where a ramp was."""
    body = payload(
        event,
        None,
        actor=actor,
        experiment_name=promotion["experimentName"],
        priority=priority,
        promotion_id=pid,
        variant=promotion["variant"],
        reason=reason,
        confidence=promotion["confidence"],
        improvement=promotion["improvement"],
        control_variant=promotion["controlVariant"],
    )
    body["trigger"] = trigger
    if ramp is not None:
        body["rollout"] = {**ramp, "state": "rolled_back", "guard": rollout_guard or []}
    return body
