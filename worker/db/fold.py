"""Claim pending metric updates and fold them into per-variant statistics, exactly once.

One SQL statement deletes a batch from the queue and adds it to ``ab_variant_stats`` in the same transaction:
an update is folded once or not at all, whatever happens to the process. ``FOR UPDATE SKIP LOCKED`` lets any
number of replicas fold side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from worker import metrics
from worker.db.connect import Connection
from worker.db.sql import Q

log = structlog.get_logger("worker.fold")

# RELAXED_COMMIT: a relaxed commit does not wait for the WAL flush. Used only for transactions whose loss in a
# database crash loses
# nothing: a fold (the claimed updates come back into the queue with it and are folded again; a later synchronous
# commit, such as a promotion decided on the folded numbers, flushes it first, since WAL is written in order) and a
# transaction that only stores decisions that keep their experiment's stored eligibility (a lost one leaves the
# statistics newer than the last evaluation, so the catch-up evaluates it again, and no eligibility change, which
# the dry-run notifications key on, is ever lost). It saves a disk flush on the decision path.
# queries.sql's fold_pending_relaxed (and the decision writes of worker/db/store.py) select
# set_config('synchronous_commit', 'off', true) for it.

_FOLD_ALL = Q["fold_pending"]
_FOLD_SOME = Q["fold_pending_for"]
_FOLD_RELAXED = Q["fold_pending_relaxed"]


@dataclass(slots=True)
class FoldResult:
    updates: int = 0
    experiments: dict[int, datetime] = field(default_factory=dict)  # experiment id -> latest recorded_at
    # updates moved to ab_metric_dead_letters instead (their totals would overflow), per experiment id
    parked: dict[int, int] = field(default_factory=dict)

    @property
    def claimed(self) -> int:
        """Updates taken off the queue: folded or parked (a batch is full when this reaches its limit)."""
        return self.updates + sum(self.parked.values())

    def merge(self, other: FoldResult) -> None:
        self.updates += other.updates
        for exp_id, n in other.parked.items():
            self.parked[exp_id] = self.parked.get(exp_id, 0) + n
        for exp_id, ts in other.experiments.items():
            if exp_id not in self.experiments or ts > self.experiments[exp_id]:
                self.experiments[exp_id] = ts


async def fold_batch(
    conn: Connection, *, limit: int, experiment_ids: Sequence[int] | None = None, relaxed: bool = False
) -> FoldResult:
    """Fold up to ``limit`` pending updates in the caller's transaction (or its own, if none is open).

    ``relaxed`` (the daemon's folder: the whole queue, never inside a caller's transaction): commit without
    waiting for the WAL flush, see RELAXED_COMMIT.
    """
    if relaxed:
        if conn.is_in_transaction() or experiment_ids is not None:
            raise RuntimeError("a relaxed fold must be a transaction of its own, over the whole queue")
        rows = await conn.fetch(_FOLD_RELAXED, limit)
    elif experiment_ids is None:
        rows = await conn.fetch(_FOLD_ALL, limit)
    else:
        rows = await conn.fetch(_FOLD_SOME, limit, list(experiment_ids))
    result = FoldResult()
    for row in rows:
        exp_id = int(row["experiment_id"])
        result.updates += int(row["updates"])
        if row["updates"]:
            result.experiments[exp_id] = row["last_recorded_at"]
        if row["parked"]:
            result.parked[exp_id] = int(row["parked"])
    if result.parked:
        metrics.FOLD_PARKED.inc(sum(result.parked.values()))
        log.error(
            "fold.parked",
            updates=sum(result.parked.values()),
            experiments=sorted(result.parked),
            hint="their totals would overflow; see ab_metric_dead_letters (reason column)",
        )
    return result


async def fold_pending_updates(
    conn: Connection,
    *,
    batch_size: int = 50_000,
    experiment_ids: Sequence[int] | None = None,
    max_batches: int | None = None,
) -> FoldResult:
    """Fold batches until the (selected part of the) queue is drained; each batch commits on its own
    unless the caller holds a transaction open, in which case everything lands in it."""
    total = FoldResult()
    batches = 0
    while max_batches is None or batches < max_batches:
        if conn.is_in_transaction():
            batch = await fold_batch(conn, limit=batch_size, experiment_ids=experiment_ids)
        else:
            async with conn.transaction():
                batch = await fold_batch(conn, limit=batch_size, experiment_ids=experiment_ids)
        total.merge(batch)
        batches += 1
        if batch.claimed < batch_size:
            break
    return total
