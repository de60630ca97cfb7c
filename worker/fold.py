"""Claim pending metric updates and fold them into per-variant statistics, exactly once.

One SQL statement deletes a batch from the queue and adds it to ``ab_variant_stats`` in the same transaction:
an update is folded once or not at all, whatever happens to the process. ``FOR UPDATE SKIP LOCKED`` lets any
number of replicas fold side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from worker.db.queries import Q

_FOLD_ALL = Q["fold_pending"]
_FOLD_SOME = _FOLD_ALL.replace("/*filter*/", "WHERE experiment_id = ANY($2::bigint[])")
assert _FOLD_SOME != _FOLD_ALL, "queries.sql: fold_pending lost its /*filter*/ marker"


@dataclass(slots=True)
class FoldResult:
    updates: int = 0
    experiments: dict[int, datetime] = field(default_factory=dict)  # experiment id -> latest recorded_at

    def merge(self, other: FoldResult) -> None:
        self.updates += other.updates
        for exp_id, ts in other.experiments.items():
            if exp_id not in self.experiments or ts > self.experiments[exp_id]:
                self.experiments[exp_id] = ts


async def fold_batch(
    conn: asyncpg.Connection, *, limit: int, experiment_ids: Sequence[int] | None = None
) -> FoldResult:
    """Fold up to ``limit`` pending updates in the caller's transaction (or its own, if none is open)."""
    if experiment_ids is None:
        rows = await conn.fetch(_FOLD_ALL, limit)
    else:
        rows = await conn.fetch(_FOLD_SOME, limit, list(experiment_ids))
    result = FoldResult()
    for row in rows:
        result.updates += int(row["updates"])
        result.experiments[int(row["experiment_id"])] = row["last_recorded_at"]
    return result


async def fold_pending_updates(
    conn: asyncpg.Connection, *, batch_size: int = 50_000, experiment_ids: Sequence[int] | None = None,
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
        if batch.updates < batch_size:
            break
    return total
