"""The engine's writes: decisions, their history, audit rows and the one-statement promotion.

Each function runs one named query of ``queries.sql``; the order of a query's parameters is defined here once, next
to the call (``PromotionWrite.params``, ``history_args``), never at the callers.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio.lowlevel
import asyncpg

from worker.db.sql import Q
from worker.decide import Decision
from worker.domain.metric_history import metric_points

SNAPSHOT_MIN_INTERVAL_S = 5.0
SNAPSHOT_MAX_ROWS = 400
# Transaction-level advisory lock taken by every promotion (ab_take_promotion_slot, schema/0005), so that concurrent
# promotions of different experiments cannot both slip under maxConcurrentPromotions.
PROMOTION_SLOT_LOCK = 0x61627073  # "abps"


@dataclass(frozen=True, slots=True)
class Seen:
    """What a decision was read at (schema/0007): the experiment's statistics version and the snapshot (text) of the
    statement that read it. Stored with the decision, they say exactly what the decision could not have seen: a
    later fold (another version) and any alert whose transaction is not visible in the snapshot, whatever the
    start times and commit order of the transactions involved."""

    version: int | None = None
    snapshot: str | None = None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Seen:
        """From an experiment_snapshot row (its stats_version and read_snapshot columns)."""
        return cls(row["stats_version"], row["read_snapshot"])


UNKNOWN = Seen()


def finite(x: float | None) -> float | None:
    """``x``, or None for NaN and the infinities (JSON and the chart history have no place for them)."""
    return x if x is not None and math.isfinite(x) else None


@dataclass(frozen=True, slots=True)
class HistoryRows:
    """A decision's history snapshot: one array element per treatment, then the control's exposures."""

    names: list[str]
    exposures: list[int]
    control_exposures: list[int]
    lift: list[float | None]
    ci_low: list[float | None]
    ci_high: list[float | None]
    confidence: list[float | None]
    control_n: int

    @classmethod
    def of(cls, decision: Decision) -> HistoryRows:
        comps = decision.analysis.comparisons if decision.analysis is not None else ()
        control = next((v for v in decision.variants if v.is_control), None)
        control_n = control.exposures if control is not None and comps else 0
        by_name = {v.name: v for v in decision.variants}
        rows = cls(
            [c.variant for c in comps],
            [by_name[c.variant].exposures if c.variant in by_name else 0 for c in comps],
            [control_n for _ in comps],
            [finite(c.lift) for c in comps],
            [finite(c.ci_low) for c in comps],
            [finite(c.ci_high) for c in comps],
            [finite(c.confidence) for c in comps],
            control_n,
        )
        # Every other metric's points ride along (domain/metric_history.py); their control_exposures is the built-in
        # control's, so that when a snapshot is due stays decided by the built-in metric alone.
        for name, units, lift, lo, hi, conf in metric_points(decision.metrics) if comps else ():
            rows.names.append(name)
            rows.exposures.append(units)
            rows.control_exposures.append(control_n)
            rows.lift.append(finite(lift))
            rows.ci_low.append(finite(lo))
            rows.ci_high.append(finite(hi))
            rows.confidence.append(finite(conf))
        return rows

    def params(self) -> tuple[Any, ...]:
        """In the order of record_evaluation's $4..$11 and promote_write's $24..$31."""
        return (
            self.names,
            self.exposures,
            self.control_exposures,
            self.lift,
            self.ci_low,
            self.ci_high,
            self.confidence,
            self.control_n,
        )


@dataclass(frozen=True, slots=True)
class OutboxRows:
    """The outbox rows of one event, as promote_write takes them ($16..$23)."""

    channels: list[str]
    config_ids: list[int | None]
    target_refs: list[str | None]
    target_labels: list[str | None]
    actions: list[str | None]
    body: str
    priority: str
    detailed: bool


@dataclass(frozen=True, slots=True)
class PromotionWrite:
    """Everything one promotion writes (queries.sql ``promote_write``): one typed row, turned into the statement's
    35 parameters in one place, ``params``."""

    experiment_id: int
    experiment_name: str
    variant: str
    control_variant: str | None
    confidence: float | None
    improvement: float | None
    method: str | None
    actor: str
    previous_weights: dict[str, float]
    baseline: dict[str, Any]
    guard_seconds: float
    decision: dict[str, Any]
    audit_details: dict[str, Any]
    max_concurrent: int
    promotion_id: uuid.UUID
    outbox: OutboxRows
    history: HistoryRows
    seen: Seen
    ramp: Mapping[str, Any] | None = None  # the first step of a ramp (rollout.mode = ramp); None: instant

    def params(self) -> tuple[Any, ...]:
        """$1..$35 of promote_write, in order."""
        o = self.outbox
        return (
            self.experiment_id,
            self.experiment_name,
            self.variant,
            self.control_variant,  # $1..$4
            self.confidence,
            self.improvement,
            self.method,
            self.actor,  # $5..$8
            self.previous_weights,
            self.baseline,
            self.guard_seconds,
            self.decision,  # $9..$12
            self.audit_details,
            self.max_concurrent,
            self.promotion_id,  # $13..$15
            o.channels,
            o.config_ids,
            o.target_refs,
            o.target_labels,
            o.actions,  # $16..$20
            o.body or "{}",
            o.priority,
            o.detailed,  # $21..$23
            *self.history.params(),  # $24..$31
            PROMOTION_SLOT_LOCK,
            self.seen.snapshot,
            self.seen.version,  # $32..$34
            json.dumps(dict(self.ramp)) if self.ramp is not None else None,  # $35
        )


@dataclass(frozen=True, slots=True)
class Promoted:
    """What promote_write wrote: the promotion's time and the counters that say whether to thin the history."""

    promoted_at: datetime
    evaluations: int | None
    snapshots: int
    rollout_id: uuid.UUID | None = None


async def write_promotion(conn: asyncpg.Connection, write: PromotionWrite) -> Promoted | None:
    """Run promote_write; None when the concurrency limit was reached (nothing written). Thins the history when
    due."""
    row = await conn.fetchrow(Q["promote_write"], *write.params())
    if row is None:
        return None
    await thin_if_due(conn, write.experiment_id, row["evaluations"], row["snapshots"])
    return Promoted(row["promoted_at"], row["evaluations"], row["snapshots"], row["rollout_id"])


async def insert_audit(
    conn: asyncpg.Connection,
    actor: str,
    action: str,
    experiment_id: int | None,
    experiment_name: str | None,
    promotion_id: uuid.UUID | None,
    details: dict[str, Any],
) -> None:
    """One row of ab_promotion_audit_log."""
    await conn.execute(Q["insert_audit"], actor, action, experiment_id, experiment_name, promotion_id, details)


async def store_evaluation(
    conn: asyncpg.Connection,
    decision: Decision,
    check: dict[str, Any] | None = None,
    *,
    relaxed: bool = False,
    seen: Seen = UNKNOWN,
) -> tuple[bool | None, bool]:
    """Store the last decision (``check``: its check data, if built already) and, when due, a history snapshot
    (one statement); the previous eligibility and whether it was written (not when the stored decision already
    covers ``seen``: another replica decided on the same read, see ab_decision_covered in schema/0007).

    ``relaxed``: the transaction writes nothing else, so it may commit without waiting for the WAL flush
    (worker.db.fold.RELAXED_COMMIT). ``seen``: what the decision was read at (unknown: the experiment stays due for
    the daemon's next evaluation and the catch-up)."""
    row = await conn.fetchrow(
        Q["record_evaluation"],
        decision.experiment_id,
        decision.eligible,
        check if check is not None else decision.to_check_data(),
        *HistoryRows.of(decision).params(),
        SNAPSHOT_MIN_INTERVAL_S,
        relaxed,
        seen.version,
        seen.snapshot,
    )
    await thin_if_due(conn, decision.experiment_id, row["evaluations"], row["snapshots"])
    previous = row["previous"]
    return (None if previous is None else bool(previous)), row["evaluations"] is not None


async def thin_if_due(conn: asyncpg.Connection, experiment_id: int, evaluations: int | None, snapshots: int) -> None:
    """Keep the snapshot history bounded: thin it every 25th evaluation that added a snapshot."""
    if snapshots and evaluations is not None and evaluations % 25 == 0:
        await conn.execute(Q["thin_snapshots"], experiment_id, SNAPSHOT_MAX_ROWS)


async def record_many(
    conn: asyncpg.Connection,
    decisions: Sequence[Decision],
    *,
    history: bool = True,
    checks: Mapping[int, dict[str, Any]] | None = None,
    relaxed: bool = False,
    seen: Mapping[int, Seen] | None = None,
) -> set[int]:
    """store_evaluation for many decisions in one statement (plus thinning where due); the experiments written
    (not those whose stored decision covers what they were read at).

    ``history=False`` (the scan) stores the last decisions only: the chart history is the evaluations'.
    ``checks`` may pass check data already built, by experiment id; ``seen``: what each was read at.
    """
    if not decisions:
        return set()
    ids, eligible, check_data = [], [], []
    versions: list[int | None] = []
    snapshots: list[str | None] = []
    s_ids, s_names, s_n, s_ctl, s_lift, s_lo, s_hi, s_conf, s_el = ([] for _ in range(9))
    for i, d in enumerate(decisions):
        if i % 500 == 499:
            await anyio.lowlevel.checkpoint()
        ids.append(d.experiment_id)
        eligible.append(d.eligible)
        read = seen.get(d.experiment_id, UNKNOWN) if seen is not None else UNKNOWN
        versions.append(read.version)
        snapshots.append(read.snapshot)
        built = checks.get(d.experiment_id) if checks is not None else None
        check_data.append(built if built is not None else d.to_check_data())
        if not history:
            continue
        comps = d.analysis.comparisons if d.analysis is not None else ()
        control = next((v for v in d.variants if v.is_control), None)
        by_name = {v.name: v for v in d.variants}
        for c in comps:
            s_ids.append(d.experiment_id)
            s_names.append(c.variant)
            s_n.append(by_name[c.variant].exposures if c.variant in by_name else 0)
            s_ctl.append(control.exposures if control is not None else 0)
            s_lift.append(finite(c.lift))
            s_lo.append(finite(c.ci_low))
            s_hi.append(finite(c.ci_high))
            s_conf.append(finite(c.confidence))
            s_el.append(d.eligible)
        for name, units, lift, lo, hi, conf in metric_points(d.metrics) if comps else ():
            s_ids.append(d.experiment_id)
            s_names.append(name)
            s_n.append(units)
            s_ctl.append(control.exposures if control is not None else 0)
            s_lift.append(finite(lift))
            s_lo.append(finite(lo))
            s_hi.append(finite(hi))
            s_conf.append(finite(conf))
            s_el.append(d.eligible)
    rows = await conn.fetch(
        Q["record_evaluations_bulk"],
        ids,
        eligible,
        check_data,
        s_ids,
        s_names,
        s_n,
        s_ctl,
        s_lift,
        s_lo,
        s_hi,
        s_conf,
        s_el,
        SNAPSHOT_MIN_INTERVAL_S,
        relaxed,
        versions,
        snapshots,
    )
    stored: set[int] = set()
    for row in rows:
        if row["experiment_id"] is None:
            continue  # the row that only switched the commit to relaxed
        stored.add(row["experiment_id"])
        if row["thin"]:
            await conn.execute(Q["thin_snapshots"], row["experiment_id"], SNAPSHOT_MAX_ROWS)
    return stored
