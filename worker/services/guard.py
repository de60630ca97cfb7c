"""Post-promotion guard, the I/O around worker.domain.guard_rules.check_guard: one query for every watched
promotion, then for each breached one the transactional rollback, or (with ``guard.autoRollback`` off) an audited
``guard.breached`` notification recorded once per promotion and metric (``ab_guard_breaches``) whichever replica
sees it first. Safe to run on every replica at once."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import structlog

from worker.config import AutoPromotionConfig, EffectiveConfig, Settings
from worker.db import store
from worker.db.connect import Pool, json_safe
from worker.db.sql import DQ
from worker.domain.guard_rules import GuardBreach, WatchedPromotion, check_guard, watched_from_row
from worker.domain.results import RollbackRefused
from worker.services.deciding import Decider
from worker.services.effects import GUARD_ACTOR, Effects, breach_payload
from worker.services.rollback import RollbackService

log = structlog.get_logger("worker.guard")


@dataclass(frozen=True, slots=True)
class GuardOutcome:
    """What the guard did about one promotion: rolled_back, notified, or nothing (already handled elsewhere)."""

    promotion_id: str
    experiment_name: str
    action: Literal["rolled_back", "notified", "none"]
    breaches: tuple[GuardBreach, ...]


def default_identity() -> str:
    """host:pid:random: names this process in leases and breach records."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class EngineParts(Protocol):
    """What the guard uses of worker.engine.Engine (typed here, so that services never import the facade)."""

    rollbacks: RollbackService
    decider: Decider
    effects: Effects


class PostPromotionGuard:
    """Checks watched promotions and acts on breaches; safe to run on every replica at once."""

    def __init__(
        self,
        pool: Pool,
        engine: EngineParts,
        settings: Settings,
        config: EffectiveConfig,
        *,
        identity: str | None = None,
    ) -> None:
        self.pool = pool
        self.rollbacks = engine.rollbacks
        self.decider = engine.decider
        self.effects = engine.effects
        self.settings = settings
        self.config = config
        self.identity = identity or default_identity()

    async def check(self, experiment_ids: Sequence[int] | None = None) -> list[GuardOutcome]:
        """Check every promotion inside its guard window (or only those of ``experiment_ids``) and act."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(DQ["guarded_promotions"], None if experiment_ids is None else list(experiment_ids))
        outcomes: list[GuardOutcome] = []
        for row in rows:
            watch = watched_from_row(row)
            cfg = self.decider.cfg_or_base(self.config, row["config"])
            breaches = check_guard(watch, cfg)
            if not breaches:
                continue
            with structlog.contextvars.bound_contextvars(experiment=watch.experiment_name):
                if cfg.guard.auto_rollback:
                    outcomes.append(await self._roll_back(watch, breaches))
                else:
                    reported = set(row["reported_metrics"] or ())
                    fresh = [b for b in breaches if b.metric not in reported]
                    if fresh:
                        outcomes.append(await self._report(watch, row, fresh, cfg))
        return outcomes

    async def _roll_back(self, watch: WatchedPromotion, breaches: list[GuardBreach]) -> GuardOutcome:
        done = await self.rollbacks.roll_back(
            watch.promotion_id,
            "; ".join(b.reason for b in breaches),
            actor=GUARD_ACTOR,
            trigger="guard",
            details={"guard": [{"metric": b.metric, **b.details} for b in breaches]},
        )
        if isinstance(done, RollbackRefused):
            # Another replica (or a person) got there first: nothing left to do.
            return GuardOutcome(watch.promotion_id, watch.experiment_name, "none", tuple(breaches))
        self.effects.guard_breached(watch, breaches, rolled_back=True)
        return GuardOutcome(watch.promotion_id, watch.experiment_name, "rolled_back", tuple(breaches))

    async def _report(
        self, watch: WatchedPromotion, row: Mapping[str, Any], breaches: list[GuardBreach], cfg: AutoPromotionConfig
    ) -> GuardOutcome:
        reported: list[GuardBreach] = []
        pid = uuid.UUID(watch.promotion_id)
        async with self.pool.acquire() as conn, conn.transaction():
            for b in breaches:
                first = await conn.fetchval(
                    DQ["record_guard_breach"], pid, b.metric, self.identity, b.reason, json_safe(b.details)
                )
                if first is None:
                    continue  # another replica reported this one
                await store.insert_audit(
                    conn,
                    GUARD_ACTOR,
                    "guard_breached",
                    watch.experiment_id,
                    watch.experiment_name,
                    pid,
                    json_safe({"metric": b.metric, "reason": b.reason, **b.details, "autoRollback": False}),
                )
                await self.effects.notify(conn, breach_payload(watch, row, b), cfg)
                reported.append(b)
        self.effects.guard_breached(watch, reported, rolled_back=False)
        return GuardOutcome(
            watch.promotion_id, watch.experiment_name, "notified" if reported else "none", tuple(reported)
        )
