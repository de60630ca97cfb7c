"""The read service: what the HTTP API's GETs and the dashboard show, as typed values.

Each method runs one named query of ``reads.sql`` (or, for a page, a few of them on one connection) and maps its
rows with a ``from_row``; callers never see SQL or an ``asyncpg.Record``. The API turns these values into JSON
(worker.http.api), the dashboard into template context (worker.http.dashboard.views). Read-only: writes go
through the engine.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import Any, Generic, Literal, TypeVar, cast

import asyncpg

from worker.db.approvals import Approval as Approval  # re-exported: the edges read approvals through here
from worker.db.approvals import list_approvals
from worker.db.sql import load_queries
from worker.domain.metric_history import split_history_name
from worker.domain.metrics import BUILTIN_METRIC

RQ: dict[str, str] = load_queries("worker.db", "reads.sql")

T = TypeVar("T")
PromotionStatus = Literal["active", "rollback_requested", "rolled_back"]


def _json(value: Any) -> Any:
    """json/jsonb arrive decoded with the project's pool codecs; tolerate a connection without them."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _object(value: Any) -> dict[str, Any] | None:
    decoded = _json(value)
    return decoded if isinstance(decoded, dict) else None


# ------------------------------------------------------------------------------------------------ values
@dataclass(frozen=True, slots=True)
class VariantStats:
    """One variant's folded statistics (latency only in the API's query)."""

    name: str
    is_control: bool
    weight: float
    exposures: int
    conversions: int
    errors: int
    value_sum: float
    latency_sketch: dict[str, Any] | None = None
    latency_count: int = 0
    updated_at: str | None = None  # as json_build_object wrote it (ISO 8601), passed through unchanged

    @classmethod
    def from_json(cls, v: Mapping[str, Any]) -> VariantStats:
        return cls(
            name=v["name"],
            is_control=bool(v["is_control"]),
            weight=v["weight"],
            exposures=int(v["exposures"] or 0),
            conversions=int(v["conversions"] or 0),
            errors=int(v["errors"] or 0),
            value_sum=v["value_sum"] or 0,
            latency_sketch=_object(v.get("latency_sketch")),
            latency_count=int(v.get("latency_count") or 0),
            updated_at=v.get("updated_at"),
        )


@dataclass(frozen=True, slots=True)
class Experiment:
    """An experiment with its variants' statistics, last decision and active promotion.

    ``config``, ``created_at``, ``updated_at`` and ``pending_updates`` come with the API's query only.
    """

    id: int
    name: str
    status: str
    metric_type: str
    priority: str  # normal | high | critical
    description: str | None
    started_at: datetime | None
    last_evaluated_at: datetime | None
    evaluations: int | None
    eligible: bool | None
    decision: dict[str, Any] | None
    variants: tuple[VariantStats, ...]
    active_promotion_id: uuid.UUID | None
    config: Any = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    pending_updates: int | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Experiment:
        variants = _json(row["variants"]) or []
        return cls(
            id=row["id"],
            name=row["name"],
            status=row["status"],
            metric_type=row["metric_type"],
            priority=row["priority"],
            description=row["description"],
            started_at=row["started_at"],
            last_evaluated_at=row["last_evaluated_at"],
            evaluations=row["evaluations"],
            eligible=row["eligible"],
            decision=_object(row["decision"]),
            variants=tuple(VariantStats.from_json(v) for v in variants),
            active_promotion_id=row["active_promotion_id"],
            config=row.get("config"),
            created_at=row.get("created_at"),
            updated_at=row.get("updated_at"),
            pending_updates=row.get("pending_updates"),
        )


@dataclass(frozen=True, slots=True)
class StatusCount:
    """How many experiments have one status, and how many of them the last decision found eligible."""

    status: str
    experiments: int
    eligible: int

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> StatusCount:
        return cls(status=row["status"], experiments=int(row["experiments"]), eligible=int(row["eligible"]))


@dataclass(frozen=True, slots=True)
class EvaluationSnapshot:
    """One treatment at one kept evaluation on one metric: the points of the lift chart (the built-in metric,
    ``primary``) and of the other metrics' charts (domain/metric_history.py)."""

    created_at: datetime
    variant_name: str
    exposures: int
    control_exposures: int
    lift: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float | None
    eligible: bool
    metric: str = BUILTIN_METRIC

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> EvaluationSnapshot:
        metric, variant = split_history_name(row["variant_name"])
        return cls(
            metric=metric,
            created_at=row["created_at"],
            variant_name=variant,
            exposures=row["exposures"],
            control_exposures=row["control_exposures"],
            lift=row["lift"],
            ci_low=row["ci_low"],
            ci_high=row["ci_high"],
            confidence=row["confidence"],
            eligible=bool(row["eligible"]),
        )


@dataclass(frozen=True, slots=True)
class Promotion:
    """A promotion and, when it has one, its rollback (request). ``previous_weights`` comes with pages only."""

    id: uuid.UUID
    experiment_id: int | None
    experiment_name: str
    promoted_variant_name: str
    control_variant_name: str | None
    confidence: float | None
    improvement: float | None
    method: str | None
    promoted_at: datetime
    promoted_by: str | None
    previous_weights: Any = None
    guard_until: datetime | None = None
    rollback_requested_at: datetime | None = None
    rollback_requested_by: str | None = None
    rollback_request_reason: str | None = None
    rollback_at: datetime | None = None
    rollback_reason: str | None = None
    rolled_back_by: str | None = None

    @property
    def status(self) -> PromotionStatus:
        if self.rollback_at is not None:
            return "rolled_back"
        if self.rollback_requested_at is not None:
            return "rollback_requested"
        return "active"

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Promotion:
        return cls(
            id=row["id"],
            experiment_id=row["experiment_id"],
            experiment_name=row["experiment_name"],
            promoted_variant_name=row["promoted_variant_name"],
            control_variant_name=row["control_variant_name"],
            confidence=row["confidence"],
            improvement=row["improvement"],
            method=row["method"],
            promoted_at=row["promoted_at"],
            promoted_by=row["promoted_by"],
            previous_weights=row.get("previous_weights"),
            guard_until=row.get("guard_until"),
            rollback_requested_at=row.get("rollback_requested_at"),
            rollback_requested_by=row.get("rollback_requested_by"),
            rollback_request_reason=row.get("rollback_request_reason"),
            rollback_at=row.get("rollback_at"),
            rollback_reason=row.get("rollback_reason"),
            rolled_back_by=row.get("rolled_back_by"),
        )


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of the audit log."""

    id: int
    created_at: datetime
    actor: str
    action: str
    experiment_id: int | None
    experiment_name: str | None
    promotion_id: uuid.UUID | None
    details: Any

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AuditEntry:
        return cls(
            id=row["id"],
            created_at=row["created_at"],
            actor=row["actor"],
            action=row["action"],
            experiment_id=row["experiment_id"],
            experiment_name=row["experiment_name"],
            promotion_id=row["promotion_id"],
            details=row["details"],
        )


@dataclass(frozen=True, slots=True)
class Alert:
    """An unresolved alert of one experiment, or a global one."""

    id: int
    global_: bool
    severity: str
    message: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Alert:
        return cls(
            id=row["id"],
            global_=bool(row["global"]),
            severity=row["severity"],
            message=row["message"],
            created_at=row["created_at"],
        )


@dataclass(frozen=True, slots=True)
class PromotionStats:
    """get_promotion_stats() for a period."""

    period_days: int
    total_promotions: int
    promotions_per_day: float | None
    successful_promotions: int
    failed_promotions: int
    avg_confidence: float | None
    avg_improvement: float | None
    avg_hours_to_promotion: float | None
    rollback_count: int
    rollback_rate: float | None
    active_promotions: int

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> PromotionStats:
        return cls(**{f.name: row[f.name] for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class DayCount:
    """Promotions and rollbacks on one calendar day."""

    day: date
    promotions: int
    rollbacks: int

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> DayCount:
        return cls(day=row["day"], promotions=int(row["promotions"]), rollbacks=int(row["rollbacks"]))


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """A page of rows and how many match in all."""

    items: list[T]
    total: int


@dataclass(frozen=True, slots=True)
class ExperimentDetail:
    """The API's one-experiment view."""

    experiment: Experiment
    history: list[EvaluationSnapshot]
    promotions: list[Promotion]
    audit: list[AuditEntry]
    alerts: list[Alert]


@dataclass(frozen=True, slots=True)
class ExperimentHistory:
    """The dashboard's experiment page: the experiment with all kept snapshots, its promotions and audit rows."""

    experiment: Experiment
    snapshots: list[EvaluationSnapshot]
    promotions: list[Promotion]
    audit: list[AuditEntry]


@dataclass(frozen=True, slots=True)
class PromotionReport:
    """Promotion statistics and promotions per day for a period; the dashboard adds both lists."""

    days: int
    stats: PromotionStats
    per_day: list[DayCount]
    active: list[Promotion]
    rolled_back: list[Promotion]


# ------------------------------------------------------------------------------------------------ service
class Reads:
    """Named reads over a pool (each call takes a connection) or over one connection."""

    def __init__(self, db: asyncpg.Pool | asyncpg.Connection) -> None:
        self._db = db

    @contextlib.asynccontextmanager
    async def _one_connection(self) -> AsyncIterator[Reads]:
        """The reads of one page on one connection (one pool checkout, not one per query)."""
        if isinstance(self._db, asyncpg.Pool):
            async with self._db.acquire() as conn:
                yield Reads(conn)
        else:
            yield self

    # experiments
    async def experiments_page(self, status: str | None, limit: int, offset: int) -> Page[Experiment]:
        async with self._one_connection() as r:
            rows = await r._db.fetch(RQ["experiments_page"], status, None, limit, offset)
            total = await r._db.fetchval(RQ["experiments_count"], status)
        return Page([Experiment.from_row(row) for row in rows], int(total))

    async def experiment_detail(
        self, name: str, *, history: int, promotions: int, audit: int, alerts: int
    ) -> ExperimentDetail | None:
        """One experiment for the API, with at most so many rows of each kind; None when there is no such one."""
        async with self._one_connection() as r:
            row = await r._db.fetchrow(RQ["experiments_page"], None, name, 1, 0)
            if row is None:
                return None
            experiment = Experiment.from_row(row)
            return ExperimentDetail(
                experiment=experiment,
                history=await r._evaluation_history(experiment.id, history),
                promotions=(await r.promotions_page(None, name, promotions, 0, count=False)).items,
                audit=(await r.audit_page(name, None, audit, 0, count=False)).items,
                alerts=[Alert.from_row(a) for a in await r._db.fetch(RQ["experiment_alerts"], experiment.id, alerts)],
            )

    async def experiments_overview(self, limit: int) -> tuple[list[Experiment], list[StatusCount]]:
        """The dashboard's list (running first, then by name) and the count per status."""
        async with self._one_connection() as r:
            rows = await r._db.fetch(RQ["experiments_overview"], limit, None)
            counts = await r.experiment_summary()
        return [Experiment.from_row(row) for row in rows], counts

    async def experiment_summary(self) -> list[StatusCount]:
        return [StatusCount.from_row(row) for row in await self._db.fetch(RQ["experiment_summary"])]

    async def experiment_card(self, name: str) -> Experiment | None:
        """One experiment as the dashboard's list shows it; None when there is no such one."""
        row = await self._db.fetchrow(RQ["experiments_overview"], 1, name)
        return None if row is None else Experiment.from_row(row)

    async def experiment_history(self, name: str, *, audit: int) -> ExperimentHistory | None:
        """The dashboard's experiment page; None when there is no such experiment."""
        async with self._one_connection() as r:
            row = await r._db.fetchrow(RQ["experiments_overview"], 1, name)
            if row is None:
                return None
            experiment = Experiment.from_row(row)
            promotions = await r._db.fetch(RQ["experiment_promotions"], experiment.id)
            return ExperimentHistory(
                experiment=experiment,
                snapshots=await r._evaluation_history(experiment.id, None, every_metric=True),
                promotions=[Promotion.from_row(p) for p in promotions],
                audit=(await r.audit_page(name, None, audit, 0, count=False)).items,
            )

    async def _evaluation_history(
        self, experiment_id: int, limit: int | None, *, every_metric: bool = False
    ) -> list[EvaluationSnapshot]:
        """The built-in metric's history (at most ``limit`` rows, oldest first), or with ``every_metric`` every
        metric's. The other metrics' rows are thinned per metric, so all of them stay bounded."""
        rows = await self._db.fetch(RQ["evaluation_history"], experiment_id, None)
        out = [EvaluationSnapshot.from_row(row) for row in rows]
        if not every_metric:
            out = [s for s in out if s.metric == BUILTIN_METRIC]
        return out if limit is None else out[:limit]

    # promotions
    async def promotions_page(
        self,
        status: Literal["active", "rolled_back"] | None,
        experiment: str | None,
        limit: int,
        offset: int,
        *,
        count: bool = True,
    ) -> Page[Promotion]:
        """Promotions, newest first; ``total`` is -1 when ``count`` is off."""
        async with self._one_connection() as r:
            rows = await r._db.fetch(RQ["promotions_page"], status, experiment, limit, offset)
            total = await r._db.fetchval(RQ["promotions_count"], status, experiment) if count else -1
        return Page([Promotion.from_row(row) for row in rows], int(total))

    async def promotion_report(self, days: int, *, lists: int = 0) -> PromotionReport:
        """Statistics and promotions per day over ``days``; with ``lists``, that many active and rolled-back ones."""
        async with self._one_connection() as r:
            stats = await r._db.fetchrow(RQ["promotion_stats"], days)
            per_day = await r._db.fetch(RQ["promotions_per_day"], days)
            active: list[Promotion] = []
            rolled: list[Promotion] = []
            if lists:
                active = (await r.promotions_page("active", None, lists, 0, count=False)).items
                rolled = [Promotion.from_row(p) for p in await r._db.fetch(RQ["rolled_back_promotions"], lists)]
        assert stats is not None  # an aggregate always returns one row
        return PromotionReport(
            days=days,
            stats=PromotionStats.from_row(stats),
            per_day=[DayCount.from_row(d) for d in per_day],
            active=active,
            rolled_back=rolled,
        )

    # audit
    async def audit_page(
        self, experiment: str | None, action: str | None, limit: int, offset: int, *, count: bool = True
    ) -> Page[AuditEntry]:
        """Audit rows, newest first; ``total`` is -1 when ``count`` is off."""
        async with self._one_connection() as r:
            rows = await r._db.fetch(RQ["audit_page"], experiment, action, limit, offset)
            total = await r._db.fetchval(RQ["audit_count"], experiment, action) if count else -1
        return Page([AuditEntry.from_row(row) for row in rows], int(total))

    # approvals
    async def approvals_page(
        self, status: str | None, experiment: str | None, limit: int, offset: int
    ) -> tuple[list[Approval], int]:
        """Approvals with ``status`` (None: all), newest first, and how many match."""
        async with self._one_connection() as r:
            return await list_approvals(cast(asyncpg.Connection, r._db), status, experiment, limit, offset)
