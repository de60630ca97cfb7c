"""The data access of ``ab_metrics`` (schema/0009): list, add and remove an experiment's metric definitions.

Each function runs named queries of ``queries.sql`` on the caller's connection (and transaction). A definition the
database refuses raises ``MetricRefused`` with PostgreSQL's message and hint (the table's trigger writes both),
a duplicate name ``MetricNameTaken``: the service turns them into domain errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from worker.db.connect import Connection, PostgresError, Record, UniqueViolationError
from worker.db.sql import Q

INVALID_PARAMETER_VALUE = "22023"


class MetricRefused(Exception):
    """The database refused a definition: ``message`` and ``hint`` as it wrote them."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class MetricNameTaken(Exception):
    """The experiment already has a metric of that name."""


@dataclass(frozen=True, slots=True)
class MetricRow:
    """One ``ab_metrics`` row, with its units per variant where read."""

    id: int
    name: str
    kind: str
    role: str
    direction: str
    margin: float
    description: str
    cuped: str
    created_at: datetime
    updated_at: datetime
    units: dict[str, int]

    @classmethod
    def of(cls, r: Record) -> MetricRow:
        units = r["units"] if "units" in r else {}
        if isinstance(units, str):
            units = json.loads(units)
        return cls(
            id=int(r["id"]),
            name=r["name"],
            kind=r["kind"],
            role=r["role"],
            direction=r["direction"],
            margin=float(r["margin"]),
            description=r["description"],
            cuped=r["cuped"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
            units={str(k): int(v) for k, v in (units or {}).items()},
        )


async def list_metrics(conn: Connection, experiment_id: int) -> list[MetricRow]:
    """The experiment's ab_metrics rows in creation order."""
    return [MetricRow.of(r) for r in await conn.fetch(Q["metric_definitions"], experiment_id)]


async def builtin_units(conn: Connection, experiment_id: int) -> dict[str, int]:
    """The built-in metric's units (exposures) per variant."""
    raw: Any = await conn.fetchval(Q["builtin_metric_units"], experiment_id)
    if isinstance(raw, str):
        raw = json.loads(raw)
    return {str(k): int(v) for k, v in (raw or {}).items()}


async def insert_metric(
    conn: Connection,
    experiment_id: int,
    *,
    name: str,
    kind: str,
    role: str,
    direction: str,
    margin: float,
    description: str,
    cuped: str,
) -> MetricRow:
    """Add one definition; MetricRefused (message and hint) or MetricNameTaken when the database says no."""
    try:
        async with conn.transaction():  # a savepoint inside the caller's: its transaction stays usable
            row = await conn.fetchrow(
                Q["insert_metric"], experiment_id, name, kind, role, direction, margin, description, cuped
            )
    except UniqueViolationError:
        raise MetricNameTaken(name) from None
    except PostgresError as exc:
        if getattr(exc, "sqlstate", None) != INVALID_PARAMETER_VALUE:
            raise
        raise MetricRefused(str(exc), str(exc.as_dict().get("hint") or "")) from None
    assert row is not None
    return MetricRow.of(row)


async def delete_metric(conn: Connection, experiment_id: int, name: str) -> MetricRow | None:
    """Remove one definition with its statistics and queued updates; None when there is none of that name."""
    await conn.execute(Q["delete_metric_updates"], experiment_id, name)
    row = await conn.fetchrow(Q["delete_metric"], experiment_id, name)
    return None if row is None else MetricRow.of(row)
