"""The seed's operations — check, promote, scan, rollback, evaluate — behind one facade.

The daemon, the CLI and the HTTP API all call ``Engine``; none of them contains decision logic, and neither does
this module: each method hands over to one service of ``worker.services`` (promote, evaluate, scan, rollback), which
share the reading and deciding (``deciding``) and the after-commit effects (``effects``). Every answer first folds
the experiment's pending metric updates, so it never depends on whether a daemon is running.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, cast

from worker.config import AutoPromotionConfig, EffectiveConfig, Settings
from worker.db import store
from worker.db.connect import Connection, Pool
from worker.db.store import (  # re-exported: the old names
    PROMOTION_SLOT_LOCK,
    SNAPSHOT_MAX_ROWS,
    SNAPSHOT_MIN_INTERVAL_S,
    UNKNOWN,
    Seen,
)
from worker.decide import Decision, ExperimentSnapshot

# Re-exported (``as``) under their old home: the daemon, guard, CLI and API import them from here.
from worker.domain.errors import AlreadyPromoted as AlreadyPromoted
from worker.domain.errors import AlreadyRolledBack as AlreadyRolledBack
from worker.domain.errors import ApprovalNotFound as ApprovalNotFound
from worker.domain.errors import ApprovalNotPending as ApprovalNotPending
from worker.domain.errors import EngineError as EngineError
from worker.domain.errors import ExperimentNotFound as ExperimentNotFound
from worker.domain.errors import InvalidRequest as InvalidRequest
from worker.domain.errors import PromotionNotFound as PromotionNotFound
from worker.domain.results import Evaluation, EvaluationAction
from worker.services.approval_gate import step_approval_requester
from worker.services.approvals import ApprovalService
from worker.services.deciding import MAX_ALERT_LOOKBACK_S, Decider
from worker.services.deciding import vectorised_analyses as _vectorised_analyses  # noqa: F401
from worker.services.effects import Effects, OnCommitted
from worker.services.evaluate import EvaluateService, transient_db_error
from worker.services.metric_definitions import MetricDefinitions, NewMetric
from worker.services.promote import PromoteService
from worker.services.rollback import RollbackService
from worker.services.rollout import RolloutService
from worker.services.scan import SCAN_CHUNK, SCAN_STATE_MIN_AGE_S, ScanService
from worker.stats import ExperimentAnalysis

_snapshot_from_row = ExperimentSnapshot.from_row

__all__ = [
    "MAX_ALERT_LOOKBACK_S",
    "PROMOTION_SLOT_LOCK",
    "SCAN_CHUNK",
    "SCAN_STATE_MIN_AGE_S",
    "SNAPSHOT_MAX_ROWS",
    "SNAPSHOT_MIN_INTERVAL_S",
    "UNKNOWN",
    "AlreadyPromoted",
    "AlreadyRolledBack",
    "ApprovalNotFound",
    "ApprovalNotPending",
    "Engine",
    "EngineError",
    "Evaluation",
    "EvaluationAction",
    "ExperimentNotFound",
    "InvalidRequest",
    "PromotionNotFound",
    "Seen",
    "transient_db_error",
]


class Engine:
    """check / promote / scan / rollback / evaluate on one database."""

    def __init__(
        self,
        pool: Pool,
        settings: Settings,
        config: EffectiveConfig,
        *,
        on_committed: OnCommitted | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.config = config
        self.effects = Effects(settings, on_committed)
        self.decider = Decider(settings, config)
        self.promotions = PromoteService(pool, settings, config, self.decider, self.effects)
        self.evaluations = EvaluateService(pool, config, self.decider, self.promotions, self.effects)
        self.scans = ScanService(pool, settings, config, self.decider, self.promotions, self.effects)
        self.rollbacks = RollbackService(pool, config, self.decider, self.effects)
        self.rollouts = RolloutService(pool, config, self.decider, self.effects, self.rollbacks)
        # approval.require = every_step: a ramp's step ready to advance opens an approval (approval_gate), and a
        # decided one is carried out by the rollout, both on the locked experiment.
        self.rollouts.request_step_approval = step_approval_requester(self.effects)
        self.approvals = ApprovalService(
            pool, settings, config, self.decider, self.promotions, self.effects, steps=self.rollouts
        )
        self.metric_definitions = MetricDefinitions(pool)

    @property
    def on_committed(self) -> OnCommitted | None:
        """Called after each committed promotion and rollback (the daemon's event bus and dispatcher)."""
        return self.effects.on_committed

    @on_committed.setter
    def on_committed(self, callback: OnCommitted | None) -> None:
        self.effects.on_committed = callback

    def experiment_config(self, effective: EffectiveConfig, overrides: Mapping[str, Any] | None) -> AutoPromotionConfig:
        """The effective config with the experiment's own ``config`` column applied (ConfigError if invalid)."""
        return self.decider.experiment_config(effective, overrides)

    # The results are typed in worker.domain.results (PromoteResult, ScanResult, RollbackResult); the facade keeps
    # the dict[str, Any] it always returned until the HTTP edge takes the typed ones.
    async def check_promotion_eligibility(
        self, experiment_name: str, *, config: EffectiveConfig | None = None
    ) -> dict[str, Any]:
        """The seed's check ``data`` for one experiment; ExperimentNotFound if it does not exist. An experiment
        promoted by a ramp adds ``rollout`` (where the ramp is, its step's guard)."""
        data = await self.promotions.check(experiment_name, config=config)
        rollout = await self.rollouts.describe_named(experiment_name)
        if rollout is not None:
            data["rollout"] = rollout
        return data

    async def promote_winner(
        self,
        experiment_name: str,
        *,
        config: EffectiveConfig | None = None,
        actor: str = "autopromote",
        dry_run: bool | None = None,
    ) -> dict[str, Any]:
        """Check and promote in ONE transaction on the locked experiment row (worker.services.promote)."""
        result = await self.promotions.promote(experiment_name, config=config, actor=actor, dry_run=dry_run)
        return cast(dict[str, Any], result)

    async def scan_and_promote_winners(
        self,
        *,
        config: EffectiveConfig | None = None,
        actor: str = "autopromote",
        dry_run: bool | None = None,
        include_results: bool = True,
        include_eta: bool = False,
    ) -> dict[str, Any]:
        """Evaluate every running experiment; promote the eligible ones (worker.services.scan). The approvals past
        approval.timeoutHours are declined as expired first (so a deployment that only runs scans from cron expires
        them too; the daemon's reconciliation scan is this call)."""
        await self.approvals.expire_due()
        result = await self.scans.scan(
            config=config, actor=actor, dry_run=dry_run, include_results=include_results, include_eta=include_eta
        )
        return cast(dict[str, Any], result)

    async def rollback_promotion(
        self,
        promotion_id: str | uuid.UUID | None,
        reason: str | None,
        *,
        actor: str = "autopromote",
        trigger: str = "manual",
        config: EffectiveConfig | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Restore the previous weights and mark the promotion rolled back (worker.services.rollback).

        Raises InvalidRequest (no reason, bad id), PromotionNotFound, or AlreadyRolledBack (nothing changed).
        """
        result = await self.rollbacks.rollback_promotion(
            promotion_id, reason, actor=actor, trigger=trigger, config=config, details=details
        )
        return cast(dict[str, Any], result)

    async def approve(
        self, approval_id: str | uuid.UUID | None, *, actor: str = "autopromote", config: EffectiveConfig | None = None
    ) -> dict[str, Any]:
        """Approve a pending approval: decide again on the locked state and promote (or advance the step) in the same
        transaction, or close it with the reasons (worker.services.approvals)."""
        return cast(dict[str, Any], await self.approvals.approve(approval_id, actor=actor, config=config))

    async def decline(
        self, approval_id: str | uuid.UUID | None, reason: str | None, *, actor: str = "autopromote"
    ) -> dict[str, Any]:
        """Decline a pending approval (worker.services.approvals)."""
        return cast(dict[str, Any], await self.approvals.decline(approval_id, reason, actor=actor))

    async def expire_approvals(self) -> int:
        """Decline the pending approvals past approval.timeoutHours, each exactly once; how many this call did."""
        return len(await self.approvals.expire_due())

    async def list_metrics(self, experiment_name: str) -> dict[str, Any]:
        """The experiment's metrics: the built-in one, then its ab_metrics rows (worker.services.metric_definitions)."""
        return await self.metric_definitions.list(experiment_name)

    async def add_metric(
        self,
        experiment_name: str,
        name: str,
        *,
        kind: str | None = None,
        role: str | None = None,
        direction: str = "increase",
        margin: float = 0.0,
        description: str = "",
        cuped: str = "auto",
        actor: str = "autopromote",
    ) -> dict[str, Any]:
        """Add an ab_metrics row, audited (worker.services.metric_definitions.NewMetric says the defaults).

        Raises ExperimentNotFound, InvalidRequest (with a hint) or MetricExists."""
        metric = NewMetric(name, kind, role, direction, margin, description, cuped)
        return await self.metric_definitions.add(experiment_name, metric, actor=actor)

    async def remove_metric(
        self, experiment_name: str, metric_name: str, *, actor: str = "autopromote"
    ) -> dict[str, Any]:
        """Remove an ab_metrics row with its statistics, audited. Raises ExperimentNotFound or MetricNotFound."""
        return await self.metric_definitions.remove(experiment_name, metric_name, actor=actor)

    async def evaluate_experiment(self, experiment_id: int, *, actor: str = "autopromote") -> Evaluation:
        """The daemon's step for one experiment (worker.services.evaluate)."""
        return await self.evaluations.evaluate_experiment(experiment_id, actor=actor)

    async def evaluate_many(self, experiment_ids: list[int], *, actor: str = "autopromote") -> list[Evaluation]:
        """The daemon's batch step (worker.services.evaluate)."""
        return await self.evaluations.evaluate_many(experiment_ids, actor=actor)

    # ------------------------------------------------- the internals tests and benchmarks reach for, by old name
    async def _snapshot(self, conn: Connection, experiment_id: int, lookback_hours: float) -> ExperimentSnapshot | None:
        read = await self.decider.snapshot(conn, experiment_id, lookback_hours * 3600.0)
        return None if read is None else read[0]

    def _decide(
        self,
        snapshot: ExperimentSnapshot,
        effective: EffectiveConfig,
        overrides: Mapping[str, Any] | None,
        analysis: ExperimentAnalysis | None = None,
    ) -> tuple[Decision, AutoPromotionConfig]:
        return self.decider.decide(snapshot, effective, overrides, analysis)

    async def _record_evaluation(
        self,
        conn: Connection,
        decision: Decision,
        check: dict[str, Any] | None = None,
        *,
        relaxed: bool = False,
        seen: Seen = UNKNOWN,
    ) -> bool | None:
        return (await store.store_evaluation(conn, decision, check, relaxed=relaxed, seen=seen))[0]

    async def _store_evaluation(
        self,
        conn: Connection,
        decision: Decision,
        check: dict[str, Any] | None = None,
        *,
        relaxed: bool = False,
        seen: Seen = UNKNOWN,
    ) -> tuple[bool | None, bool]:
        return await store.store_evaluation(conn, decision, check, relaxed=relaxed, seen=seen)

    async def _record_many(
        self,
        conn: Connection,
        decisions: list[Decision],
        *,
        history: bool = True,
        checks: Mapping[int, dict[str, Any]] | None = None,
        relaxed: bool = False,
        seen: Mapping[int, Seen] | None = None,
    ) -> set[int]:
        return await store.record_many(conn, decisions, history=history, checks=checks, relaxed=relaxed, seen=seen)
