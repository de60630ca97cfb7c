"""Managing an experiment's metrics (``ab_metrics``): list, add, remove; each change audited.

The CLI (``autopromote metrics``) and the HTTP API call these. What a valid definition is lives in one place, the
table's trigger (schema/0009), which refuses a bad one with a message and a hint; this module turns its answers into
domain errors and writes the audit row in the same transaction as the change.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import anyio

from worker.db import metric_definitions as db
from worker.db import store
from worker.db.connect import Connection, Pool, PostgresError, Record
from worker.db.sql import Q
from worker.domain.errors import ExperimentNotFound, InvalidRequest, MetricExists, MetricNotFound
from worker.domain.metrics import BUILTIN_METRIC
from worker.retry import FaultLog, retrying

BUILTIN_KIND = {"conversion": "proportion", "mean": "mean"}
BUILTIN_DESCRIPTION = "the experiment's own metric_type metric, recorded with ab_record_metrics"
# Which field a refusal of the trigger is about (its message names it), for the API's {path, message} list.
_FIELDS = (
    ("metric name", "name"),
    ("kind", "kind"),
    ("role", "role"),
    ("direction", "direction"),
    ("margin", "margin"),
    ("cuped", "cuped"),
    ("description", "description"),
)


def _rolled_back(exc: BaseException) -> bool:
    """A transaction rollback (SQLSTATE class 40: deadlock detected, serialisation failure): worth running again."""
    return isinstance(exc, PostgresError) and str(getattr(exc, "sqlstate", "") or "").startswith("40")


@dataclass(frozen=True, slots=True)
class NewMetric:
    """A definition to add. ``kind`` None: the built-in kind (only for the row named "primary"); ``role`` None:
    primary for the row named "primary", secondary (reported, never decides) for any other."""

    name: str
    kind: str | None = None
    role: str | None = None
    direction: str = "increase"
    margin: float = 0.0
    description: str = ""
    cuped: str = "auto"


def _metric_json(row: db.MetricRow | None, *, builtin: bool, units: dict[str, int], **fallback: Any) -> dict[str, Any]:
    if row is None:
        return {
            "name": BUILTIN_METRIC,
            "kind": fallback["kind"],
            "role": "primary",
            "direction": "increase",
            "margin": 0.0,
            "description": BUILTIN_DESCRIPTION,
            "cuped": "auto",
            "builtin": True,
            "units": units,
            "createdAt": None,
            "updatedAt": None,
        }
    return {
        "name": row.name,
        "kind": row.kind,
        "role": row.role,
        "direction": row.direction,
        "margin": row.margin,
        "description": row.description,
        "cuped": row.cuped,
        "builtin": builtin,
        "units": units,
        "createdAt": row.created_at,
        "updatedAt": row.updated_at,
    }


def _audit_details(row: db.MetricRow) -> dict[str, Any]:
    return {
        "metric": row.name,
        "kind": row.kind,
        "role": row.role,
        "direction": row.direction,
        "margin": row.margin,
        "description": row.description,
        "cuped": row.cuped,
    }


class MetricDefinitions:
    """list / add / remove the metrics of one experiment."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    @staticmethod
    async def _experiment(conn: Connection, name: str) -> Record:
        if not isinstance(name, str) or not name:  # a blank name is a name: looked up, not found
            raise InvalidRequest("the experiment name is required", {"field": "experimentName"})
        row = await conn.fetchrow(Q["experiment_by_name"], name)
        if row is None:
            raise ExperimentNotFound(
                f"no experiment named {name[:200]!r}",
                {
                    "experimentName": name[:200],
                    "hint": "check the name with `autopromote scan --dry-run` or GET /api/experiments",
                },
            )
        return row

    async def list(self, experiment_name: str) -> dict[str, Any]:
        """Every metric the experiment is decided on or reports: the built-in one first, then ab_metrics rows."""
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            exp = await self._experiment(conn, experiment_name)
            rows = await db.list_metrics(conn, exp["id"])
            builtin_units = await db.builtin_units(conn, exp["id"])
        kind = BUILTIN_KIND[exp["metric_type"]]
        primary_row = next((r for r in rows if r.name == BUILTIN_METRIC), None)
        metrics = [_metric_json(primary_row, builtin=True, units=builtin_units, kind=kind)]
        metrics += [_metric_json(r, builtin=False, units=r.units) for r in rows if r.name != BUILTIN_METRIC]
        return {"experimentName": exp["name"], "metricType": exp["metric_type"], "metrics": metrics}

    async def add(self, experiment_name: str, metric: NewMetric, *, actor: str) -> dict[str, Any]:
        """Add a metric (MetricExists if the name is taken, InvalidRequest with a hint if the definition is bad)."""
        async with self.pool.acquire() as conn, conn.transaction():
            exp = await self._experiment(conn, experiment_name)
            builtin = metric.name == BUILTIN_METRIC
            kind = metric.kind or (BUILTIN_KIND[exp["metric_type"]] if builtin else None)
            if kind is None:
                raise InvalidRequest(
                    f"metric {metric.name!r} needs a kind",
                    {
                        "field": "kind",
                        "hint": "give kind proportion (converted units / units), mean (a value per unit) or ratio "
                        "(a sum per unit over another, e.g. revenue per session)",
                        "errors": [{"path": "kind", "message": "is required"}],
                    },
                )
            role = metric.role or ("primary" if builtin else "secondary")
            try:
                row = await db.insert_metric(
                    conn,
                    exp["id"],
                    name=metric.name,
                    kind=kind,
                    role=role,
                    direction=metric.direction,
                    margin=metric.margin,
                    description=metric.description,
                    cuped=metric.cuped,
                )
            except db.MetricNameTaken:
                raise MetricExists(
                    f"experiment {exp['name']!r} already has a metric named {metric.name!r}",
                    {
                        "experimentName": exp["name"],
                        "metricName": metric.name,
                        "hint": "remove it first (autopromote metrics remove), or choose another name",
                    },
                ) from None
            except db.MetricRefused as exc:
                message = exc.message.removeprefix("ab_metrics: ")
                field = next((f for words, f in _FIELDS if words in message), "metric")
                raise InvalidRequest(
                    message,
                    {"field": field, "hint": exc.hint, "errors": [{"path": field, "message": message}]},
                ) from None
            await store.insert_audit(conn, actor, "metric_added", exp["id"], exp["name"], None, _audit_details(row))
        return {"experimentName": exp["name"], "metric": _metric_json(row, builtin=builtin, units={})}

    async def remove(self, experiment_name: str, metric_name: str, *, actor: str) -> dict[str, Any]:
        """Remove a metric with its statistics and queued updates (MetricNotFound if there is none).

        The removal takes its locks in the fold's order (see delete_metric_updates in queries.sql); a transaction
        rollback it still meets (a deadlock or serialisation failure with a writer outside the worker, SQLSTATE
        class 40) is retried as a whole through worker/retry.py, and nothing else."""
        return await retrying(
            FaultLog("metrics.remove"),
            anyio.Event(),
            functools.partial(self._remove, experiment_name, metric_name, actor=actor),
            retry_if=_rolled_back,
        )

    async def _remove(self, experiment_name: str, metric_name: str, *, actor: str) -> dict[str, Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            exp = await self._experiment(conn, experiment_name)
            row = await db.delete_metric(conn, exp["id"], metric_name)
            if row is None:
                known = [r.name for r in await db.list_metrics(conn, exp["id"])]
                raise MetricNotFound(
                    f"experiment {exp['name']!r} has no metric named {metric_name[:200]!r}",
                    {
                        "experimentName": exp["name"],
                        "metricName": metric_name[:200],
                        "hint": "its metrics: " + (", ".join(known) if known else "none besides the built-in one"),
                    },
                )
            await store.insert_audit(conn, actor, "metric_removed", exp["id"], exp["name"], None, _audit_details(row))
        return {
            "experimentName": exp["name"],
            "metric": _metric_json(row, builtin=row.name == BUILTIN_METRIC, units={}),
        }
