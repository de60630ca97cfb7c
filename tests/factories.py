"""Test data builders that go through the same SQL a user would write."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg


async def create_experiment(
    conn: asyncpg.Connection,
    name: str,
    variants: Sequence[str] = ("control", "variant-b"),
    *,
    status: str = "running",
    metric_type: str = "conversion",
    priority: str = "normal",
    weights: Sequence[float] | None = None,
    config: dict[str, Any] | None = None,
    started_hours_ago: float = 48.0,
) -> int:
    """Insert an experiment whose first variant is the control; returns its id."""
    async with conn.transaction():
        exp_id: int = await conn.fetchval(
            """INSERT INTO ab_experiments (name, status, metric_type, priority, config, started_at)
               VALUES ($1, $2, $3, $4, $5, now() - make_interval(secs => $6))
               RETURNING id""",
            name,
            status,
            metric_type,
            priority,
            config or {},
            started_hours_ago * 3600.0,
        )
        for i, variant in enumerate(variants):
            weight = 1.0 if weights is None else weights[i]
            await conn.execute(
                "INSERT INTO ab_variants (experiment_id, name, is_control, traffic_weight) VALUES ($1, $2, $3, $4)",
                exp_id,
                variant,
                i == 0,
                weight,
            )
    return exp_id


async def record(
    conn: asyncpg.Connection,
    experiment: str,
    variant: str,
    exposures: int,
    conversions: int,
    errors: int = 0,
    latencies: Sequence[float] | None = None,
) -> None:
    """One producer call."""
    await conn.execute(
        "SELECT ab_record_metrics($1, $2, $3, $4, $5, $6)",
        experiment,
        variant,
        exposures,
        conversions,
        errors,
        list(latencies) if latencies is not None else None,
    )
