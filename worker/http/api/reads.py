"""The read endpoints: experiments (list and detail), promotions, promotion statistics, the audit log and the
OpenAPI document, each with its JSON shape. Reads go through ``worker.db.reads.Reads``, as the dashboard's do.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from worker.config import ConfigError, EffectiveConfig, with_experiment_overrides
from worker.db.reads import AuditEntry, EvaluationSnapshot, Experiment, Promotion, Reads, VariantStats
from worker.domain.errors import ExperimentNotFound
from worker.domain.eta import EtaRequest, stored_etas
from worker.http import auth
from worker.http.api.wire import ok, parse_query, validation_errors
from worker.http.app import CTX
from worker.http.errors import (
    invalid_request,
    json_response,
)
from worker.http.models import (
    EXPERIMENT_PATH_NAME,
    AuditQuery,
    ExperimentsQuery,
    PromotionsQuery,
    Query,
    StatsQuery,
)
from worker.http.openapi import openapi_document
from worker.stats import LatencySketch, StatsInputError

HISTORY_ROWS = 5000
DETAIL_PROMOTIONS = 100
DETAIL_AUDIT = 50
DETAIL_ALERTS = 50


# ------------------------------------------------------------------------------------------- experiments
def _variant_json(v: VariantStats, metric_type: str) -> dict[str, Any]:
    exposures = v.exposures
    numerator = float(v.value_sum) if metric_type == "mean" else float(v.conversions)
    try:
        sketch = LatencySketch.from_json(v.latency_sketch or None)
        p95 = sketch.p95() if sketch.count else None
    except StatsInputError:
        p95 = None
    return {
        "name": v.name,
        "isControl": v.is_control,
        "weight": v.weight,
        "exposures": exposures,
        "conversions": v.conversions,
        "rate": numerator / exposures if exposures else None,
        "errors": v.errors,
        "errorRate": v.errors / exposures if exposures else None,
        "p95LatencyMs": round(p95, 3) if p95 is not None else None,
        "latencySamples": v.latency_count,
        "updatedAt": v.updated_at,
    }


_DECISION_SUMMARY = (
    "eligible",
    "confidence",
    "improvement",
    "winningVariant",
    "bestVariant",
    "controlVariant",
    "method",
    "reasons",
)


def _experiment_json(row: Experiment, *, full_decision: bool) -> dict[str, Any]:
    last: dict[str, Any] | None = None
    if row.last_evaluated_at is not None:
        decision = row.decision or {}
        shown = decision if full_decision else {k: decision.get(k) for k in _DECISION_SUMMARY}
        last = {
            **shown,
            "eligible": bool(row.eligible),
            "lastEvaluatedAt": row.last_evaluated_at,
            "evaluations": row.evaluations,
        }
        last.setdefault("reasons", [])
        if last.get("reasons") is None:
            last["reasons"] = []
    return {
        "id": row.id,
        "name": row.name,
        "status": row.status,
        "metricType": row.metric_type,
        "priority": row.priority,
        "description": row.description,
        "config": row.config,
        "startedAt": row.started_at,
        "createdAt": row.created_at,
        "updatedAt": row.updated_at,
        "activePromotionId": row.active_promotion_id,
        "pendingUpdates": row.pending_updates,
        "variants": [_variant_json(v, row.metric_type) for v in row.variants],
        "lastDecision": last,
    }


async def list_experiments(request: web.Request) -> web.Response:
    """Every experiment with live per-variant statistics and the last decision."""
    ctx = request.app[CTX]
    await auth.require_role(request, "viewer")
    query = parse_query(request, ExperimentsQuery)
    page = await Reads(ctx.pool).experiments_page(query.status, query.limit, query.offset)
    return ok(
        {
            "experiments": [_experiment_json(r, full_decision=False) for r in page.items],
            "total": page.total,
            "limit": query.limit,
            "offset": query.offset,
        }
    )


def _eta(base: EffectiveConfig, row: Experiment) -> dict[str, Any] | None:
    """The experiment's ETA from its last decision (domain/eta.py), under its own config; None when there is none
    to give (not running, not evaluated, or a config that no longer validates)."""
    if row.status != "running" or not row.decision or row.last_evaluated_at is None:
        return None
    try:
        config = with_experiment_overrides(base, row.config if isinstance(row.config, dict) else None)
    except ConfigError:
        return None
    request = EtaRequest(row.decision, config, row.status, row.started_at, row.last_evaluated_at)
    return stored_etas([request], datetime.now(UTC))[0]


def _name_from_path(request: web.Request) -> str:
    name = request.match_info["name"]
    try:
        return EXPERIMENT_PATH_NAME.validate_python(name)
    except ValidationError as exc:
        raise invalid_request("invalid experiment name", validation_errors(exc, "path.name")) from None


async def get_experiment(request: web.Request) -> web.Response:
    """One experiment with its evaluation history, promotions, recent audit rows and open alerts."""
    ctx = request.app[CTX]
    await auth.require_role(request, "viewer")
    parse_query(request, Query)
    name = _name_from_path(request)
    detail = await Reads(ctx.pool).experiment_detail(
        name, history=HISTORY_ROWS, promotions=DETAIL_PROMOTIONS, audit=DETAIL_AUDIT, alerts=DETAIL_ALERTS
    )
    if detail is None:
        raise ExperimentNotFound(f"no experiment named {name[:200]!r}", {"experimentName": name[:200]})
    row = detail.experiment
    experiment = _experiment_json(row, full_decision=True)
    experiment["eta"] = _eta(ctx.config, row)
    rollout = await ctx.engine.rollouts.describe(detail.experiment.id)
    return ok(
        {
            "experiment": experiment,
            "history": [_history_json(h) for h in detail.history],
            "promotions": [_promotion_json(p) for p in detail.promotions],
            "audit": [_audit_json(a) for a in detail.audit],
            "alerts": [
                {
                    "id": a.id,
                    "global": a.global_,
                    "severity": a.severity,
                    "message": a.message,
                    "createdAt": a.created_at,
                }
                for a in detail.alerts
            ],
            "rollout": rollout,
        }
    )


def _history_json(h: EvaluationSnapshot) -> dict[str, Any]:
    return {
        "createdAt": h.created_at,
        "variantName": h.variant_name,
        "exposures": h.exposures,
        "controlExposures": h.control_exposures,
        "lift": h.lift,
        "ciLow": h.ci_low,
        "ciHigh": h.ci_high,
        "confidence": h.confidence,
        "eligible": h.eligible,
    }


# -------------------------------------------------------------------------------------------- promotions
def _promotion_json(p: Promotion) -> dict[str, Any]:
    return {
        "id": p.id,
        "status": p.status,
        "experimentName": p.experiment_name,
        "promotedVariantName": p.promoted_variant_name,
        "controlVariantName": p.control_variant_name,
        "confidence": p.confidence,
        "improvement": p.improvement,
        "method": p.method,
        "promotedAt": p.promoted_at,
        "promotedBy": p.promoted_by,
        "previousWeights": p.previous_weights,
        "guardUntil": p.guard_until,
        "rollbackRequestedAt": p.rollback_requested_at,
        "rollbackRequestedBy": p.rollback_requested_by,
        "rollbackRequestReason": p.rollback_request_reason,
        "rollbackAt": p.rollback_at,
        "rollbackReason": p.rollback_reason,
        "rolledBackBy": p.rolled_back_by,
    }


async def list_promotions(request: web.Request) -> web.Response:
    """Promotions, newest first; ``status`` active | rolled_back | all, optional ``experiment``, paginated."""
    ctx = request.app[CTX]
    await auth.require_role(request, "viewer")
    query = parse_query(request, PromotionsQuery)
    status = None if query.status == "all" else query.status
    page = await Reads(ctx.pool).promotions_page(status, query.experiment, query.limit, query.offset)
    return ok(
        {
            "promotions": [_promotion_json(r) for r in page.items],
            "total": page.total,
            "limit": query.limit,
            "offset": query.offset,
        }
    )


_STATS_FIELDS = {  # PromotionStats attribute -> JSON key
    "period_days": "periodDays",
    "total_promotions": "totalPromotions",
    "promotions_per_day": "promotionsPerDay",
    "successful_promotions": "successfulPromotions",
    "failed_promotions": "failedPromotions",
    "avg_confidence": "avgConfidence",
    "avg_improvement": "avgImprovement",
    "avg_hours_to_promotion": "avgHoursToPromotion",
    "rollback_count": "rollbackCount",
    "rollback_rate": "rollbackRate",
    "active_promotions": "activePromotions",
}


async def promotion_stats(request: web.Request) -> web.Response:
    """get_promotion_stats() and get_promotions_per_day() for the last ``days`` days."""
    ctx = request.app[CTX]
    await auth.require_role(request, "viewer")
    query = parse_query(request, StatsQuery)
    report = await Reads(ctx.pool).promotion_report(query.days)
    return ok(
        {
            "days": query.days,
            "stats": {camel: getattr(report.stats, col) for col, camel in _STATS_FIELDS.items()},
            "perDay": [{"day": r.day, "promotions": r.promotions, "rollbacks": r.rollbacks} for r in report.per_day],
        }
    )


# ------------------------------------------------------------------------------------------------- audit
def _audit_json(a: AuditEntry) -> dict[str, Any]:
    return {
        "id": a.id,
        "createdAt": a.created_at,
        "actor": a.actor,
        "action": a.action,
        "experimentId": a.experiment_id,
        "experimentName": a.experiment_name,
        "promotionId": a.promotion_id,
        "details": a.details,
    }


async def list_audit(request: web.Request) -> web.Response:
    """The audit log, newest first; optional ``experiment`` and ``action`` filters, paginated."""
    ctx = request.app[CTX]
    await auth.require_role(request, "viewer")
    query = parse_query(request, AuditQuery)
    page = await Reads(ctx.pool).audit_page(query.experiment, query.action, query.limit, query.offset)
    return ok(
        {
            "entries": [_audit_json(r) for r in page.items],
            "total": page.total,
            "limit": query.limit,
            "offset": query.offset,
        }
    )


# ----------------------------------------------------------------------------------------------- openapi
async def get_openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document. Public: it describes the API and holds no data."""
    parse_query(request, Query)
    return json_response(openapi_document())
