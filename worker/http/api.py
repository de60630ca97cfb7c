"""The seed's REST interface: ``POST/GET /api/experiments/auto-promote`` and the read endpoints.

Handlers authenticate, validate, and call the engine or one named query; none contains decision logic.
Every response is JSON: ``{"success": true, ...}`` or the error shape of ``errors.py``.

Response conventions (also in the OpenAPI document):
- POST answers ``{success, action, data, config: {enabled, dryRun, preset}}``, ``data`` being the engine's
  result. For ``promote`` the top-level ``success`` mirrors ``data.success``: a promotion that is not
  eligible is a 200 with ``success: false`` and ``data.reasons`` (the request was fine; the experiment was
  not ready). 409 is only for "already promoted" and "already rolled back".
- GET answers ``{success: true, data}``.

Over 500 lines: the seed endpoint's four actions and the ten read endpoints with their JSON shapes live together
so that the wire format can be read in one place; the read endpoints are to move to a module of their own.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator, Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from worker.config import PRESET_NAMES, PRESETS, ConfigError, EffectiveConfig, deep_merge, load_config
from worker.db.reads import (
    Approval,
    AuditEntry,
    EvaluationSnapshot,
    Experiment,
    Promotion,
    Reads,
    VariantStats,
)
from worker.db.sql import Q
from worker.domain.errors import DomainError, ExperimentNotFound
from worker.http import auth, slack
from worker.http.app import CTX, AppContext
from worker.http.errors import (
    ApiError,
    api_error_middleware,
    config_error,
    domain_error_response,
    field_error,
    invalid_request,
    json_response,
)
from worker.http.models import (
    ACTION_FIELDS,
    ACTIONS,
    AUTO_PROMOTE_REQUEST,
    EXPERIMENT_PATH_NAME,
    PATTERN_MESSAGES,
    AnyActionRequest,
    ApprovalsQuery,
    ApproveRequest,
    AuditQuery,
    CheckRequest,
    ConfigQuery,
    DeclineRequest,
    ExperimentsQuery,
    PromoteRequest,
    PromotionsQuery,
    Query,
    RollbackRequest,
    ScanRequest,
    StatsQuery,
    action_response,
)
from worker.http.openapi import openapi_document
from worker.http.ratelimit import SlidingWindowLimiter
from worker.stats import LatencySketch, StatsInputError

ActionRequest = AnyActionRequest
MUTATING_ACTIONS = frozenset({"scan", "promote", "rollback", "approve", "decline"})
HISTORY_ROWS = 5000
DETAIL_PROMOTIONS = 100
DETAIL_AUDIT = 50
DETAIL_ALERTS = 50

LIMITER: web.AppKey[SlidingWindowLimiter] = web.AppKey("rate_limiter", SlidingWindowLimiter)


# ------------------------------------------------------------------------------------------------ routes
def add_routes(app: web.Application) -> None:
    """Install auth (ConfigError on malformed tokens), the rate limiter, the error middleware and the routes."""
    ctx = app[CTX]
    auth.install(app, ctx.settings)
    app[LIMITER] = SlidingWindowLimiter(ctx.settings.rate_limit_per_minute)
    app.middlewares.append(api_error_middleware)
    # auto-promote before {name}: aiohttp matches in registration order.
    app.router.add_post("/api/experiments/auto-promote", post_auto_promote)
    app.router.add_get("/api/experiments/auto-promote", get_auto_promote)
    app.router.add_get("/api/experiments", list_experiments)
    app.router.add_get("/api/experiments/{name}", get_experiment)
    app.router.add_get("/api/promotions", list_promotions)
    app.router.add_get("/api/promotions/stats", promotion_stats)
    app.router.add_get("/api/audit", list_audit)
    app.router.add_get("/api/approvals", list_approvals)
    # Authenticated by Slack's signature, not a token: see worker.http.slack.
    slack.add_routes(app)
    app.router.add_get("/api/openapi.json", get_openapi)


# ------------------------------------------------------------------------------------------- validation
def _text_problem(value: str) -> str | None:
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_HINTS = {
    ("scan", "experimentName"): "scan covers every running experiment; use 'check' or 'promote' for one",
    ("rollback", "experimentName"): "rollback is identified by promotionId alone",
}


def _error_message(err: Mapping[str, Any], action: str | None, field: str) -> str:
    """One pydantic error in words that say what is wrong and how to fix it."""
    kind = err["type"]
    given = err.get("input")
    if kind in ("union_tag_invalid", "literal_error") and field == "action":
        return f"unknown action {_describe(given)}; use one of {', '.join(ACTIONS)}"
    if kind == "missing":
        why = ": say why" if (action, field) == ("rollback", "reason") else ""
        return f"is required for action '{action}'{why}" if action else "is required"
    if kind == "extra_forbidden" and action is not None and any(field in f for f in ACTION_FIELDS.values()):
        hint = _HINTS.get((action, field))
        if hint:
            return f"is not used by action '{action}': {hint}"
        users = [a for a, fields in ACTION_FIELDS.items() if field in fields]
        return f"is only used by action {' and '.join(repr(u) for u in users)}, not '{action}'"
    if kind == "extra_forbidden":
        return "unknown field; check the spelling (fields are camelCase)"
    if (kind, action, field) == ("literal_error", "rollback", "dryRun"):
        return "rollback has no dry run; it always changes the weights back"
    if kind == "string_pattern_mismatch":
        return PATTERN_MESSAGES.get(str((err.get("ctx") or {}).get("pattern")), "has the wrong form")
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    return f"{err['msg']}, got {_describe(given)}"


def _validation_errors(exc: ValidationError, prefix: str = "", *, tagged: bool = False) -> list[dict[str, str]]:
    """Each error as ``{path, message}``. ``tagged``: the model is the action union, whose error locations
    start with the action (dropped from the path)."""
    out: list[dict[str, str]] = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        action = loc.pop(0) if tagged and loc else None
        if err["type"] in ("union_tag_not_found", "union_tag_invalid"):
            loc = ["action"]
        path = ".".join(loc)
        if err["type"] == "union_tag_not_found":
            out.append(field_error("action", "is required"))
            continue
        out.append(
            field_error(
                prefix + path if path else prefix.rstrip(".") or "body",
                _error_message(err, action, loc[-1] if loc else ""),
            )
        )
    return out


def _walk_strings(node: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string (keys included) in a JSON tree with its path, for the NUL / surrogate check."""
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            sub = f"{path}.{key}" if path else str(key)
            yield sub, key
            yield from _walk_strings(value, sub)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk_strings(value, f"{path}[{i}]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, whatever the Content-Type (the seed's curl examples send none)."""
    raw = await request.read()  # over client_max_size: aiohttp raises 413, the middleware shapes it
    if not raw.strip():
        raise ApiError(400, "malformed_json", "the request body is empty; send a JSON object")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_json", "the request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ApiError(
            400,
            "malformed_json",
            f"the request body is not valid JSON: {exc.msg}",
            {"line": exc.lineno, "column": exc.colno},
        ) from None
    except (ValueError, RecursionError) as exc:
        message = str(exc)[:200] if isinstance(exc, ValueError) else "nested too deeply"
        raise ApiError(400, "malformed_json", f"the request body is not valid JSON: {message}") from None
    if not isinstance(data, dict):
        raise invalid_request(
            "the request body must be a JSON object",
            [field_error("body", f"must be a JSON object, got {type(data).__name__}")],
        )
    problems = [field_error(p or "body", why) for p, s in _walk_strings(data, "") if (why := _text_problem(s))]
    if problems:
        raise invalid_request("the request body contains text PostgreSQL cannot store", problems[:20])
    return data


def _action_problems(req: ActionRequest) -> list[dict[str, str]]:
    """The rules that span two fields (the document states them too: models.py)."""
    errors: list[dict[str, str]] = []
    if isinstance(req, ApproveRequest | DeclineRequest):
        return errors
    nested = (req.config or {}).get("dryRun")
    if isinstance(req, RollbackRequest):
        if nested is True:
            errors.append(field_error("config.dryRun", "rollback has no dry run; it always changes the weights back"))
    elif req.dry_run is not None and isinstance(nested, bool) and nested != req.dry_run:
        errors.append(
            field_error("dryRun", f"is {str(req.dry_run).lower()} but config.dryRun is {str(nested).lower()}; give one")
        )
    return errors


_Q = TypeVar("_Q", bound=BaseModel)


def parse_query(request: web.Request, model: type[_Q]) -> _Q:
    """Query parameters through ``model``; unknown or repeated parameters are errors."""
    values: dict[str, str] = {}
    errors: list[dict[str, str]] = []
    for key in request.query:
        if key in values:
            continue
        all_values = request.query.getall(key)
        if len(all_values) > 1:
            errors.append(field_error(f"query.{key}", "is given more than once"))
        values[key] = all_values[0]
    try:
        parsed = model.model_validate(values)
    except ValidationError as exc:
        errors.extend(_validation_errors(exc, "query."))
        parsed = None
    if errors or parsed is None:
        raise invalid_request("invalid query parameters", errors)
    return parsed


# ------------------------------------------------------------------------------------------------ config
def _env_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def server_layers(effective: EffectiveConfig) -> tuple[dict[str, str], dict[str, Any]]:
    """The layers above the preset that the server started with, rebuilt from the config's sources.

    Returns the environment (as variables) and any other overrides (as a camelCase tree). A request's preset
    and overrides are layered over exactly the configuration the server runs with, and the process
    environment is not read again at request time.
    """
    env: dict[str, str] = {}
    tree: dict[str, Any] = {}
    public = effective.config.public()
    for path, source in effective.sources.items():
        if source == "default" or source.startswith("preset:"):
            continue
        parts = path.split(".")
        node: Any = public
        for part in parts:
            node = node[part]
        if source.startswith("env:"):
            env[source.removeprefix("env:")] = _env_string(node)
        else:
            branch = tree
            for part in parts[:-1]:
                branch = branch.setdefault(part, {})
            branch[parts[-1]] = node
    return env, tree


def startup_env(effective: EffectiveConfig) -> dict[str, str]:
    """The environment layer of ``server_layers``."""
    return server_layers(effective)[0]


def request_config(ctx: AppContext, preset: str | None, overrides: Mapping[str, Any] | None) -> EffectiveConfig:
    """The server's config with the request's preset and overrides; ConfigError lists every problem."""
    if preset is None and not overrides:
        return ctx.config
    env, server_tree = server_layers(ctx.config)
    return load_config(preset=preset or ctx.config.preset, env=env, overrides=deep_merge(server_tree, overrides or {}))


def _config_summary(effective: EffectiveConfig) -> dict[str, Any]:
    return {"enabled": effective.config.enabled, "dryRun": effective.config.dry_run, "preset": effective.preset}


# ------------------------------------------------------------------------------------------------ output
def plain(x: Any) -> Any:
    """JSON-ready: datetimes as ISO 8601, UUIDs as strings, non-finite numbers as null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [plain(v) for v in x]
    if isinstance(x, datetime | date):
        return x.isoformat()
    if isinstance(x, uuid.UUID):
        return str(x)
    if isinstance(x, Decimal):
        return plain(float(x))
    return x


def ok(data: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return json_response({"success": True, "data": plain(data)}, headers=headers)


# ------------------------------------------------------------------------------------------ POST action
async def post_auto_promote(request: web.Request) -> web.Response:
    """The seed's POST: scan | promote | check | rollback | approve | decline."""
    ctx = request.app[CTX]
    principal = await auth.require_role(request, "viewer")
    body = await read_json_object(request)
    action = body.get("action")
    if isinstance(action, str) and action in MUTATING_ACTIONS:
        # The role first: a viewer learns that it may not, before what else is wrong with the request.
        await auth.require_role(request, "operator")
    try:
        req = AUTO_PROMOTE_REQUEST.validate_python(body)
    except ValidationError as exc:
        errors = _validation_errors(exc, tagged=True)
        raise invalid_request(
            f"invalid request ({len(errors)} problem{'s' if len(errors) != 1 else ''})", errors
        ) from None
    problems = _action_problems(req)
    if problems:
        raise invalid_request(f"invalid request for action '{req.action}'", problems)
    # dryRun is one more request-layer value: the engine lays each experiment's own config over the request's,
    # so a request's dryRun: false cannot lift an experiment's dryRun: true (worker.config.with_experiment_overrides).
    overrides = dict(getattr(req, "config", None) or {})
    dry_run = getattr(req, "dry_run", None)
    if dry_run is not None:
        overrides["dryRun"] = dry_run
    try:
        effective = request_config(ctx, req.preset, overrides)
    except ConfigError as exc:
        raise config_error(exc) from None

    headers: dict[str, str] = {}
    if req.action in MUTATING_ACTIONS:
        decision = request.app[LIMITER].hit(principal.name)
        headers = {"X-RateLimit-Limit": str(decision.limit), "X-RateLimit-Remaining": str(decision.remaining)}
        if not decision.allowed:
            raise ApiError(
                429,
                "rate_limited",
                f"rate limit reached: {decision.limit} scan/promote/rollback/approve/decline calls per minute for "
                f"token {principal.name!r}; retry in {decision.retry_after_header} s",
                {"limit": decision.limit, "windowSeconds": 60, "retryAfterSeconds": int(decision.retry_after_header)},
                headers={**headers, "Retry-After": decision.retry_after_header},
            )

    try:
        success, data = await _run_action(ctx, req, effective, overrides, principal.name)
    except DomainError as exc:  # keep the rate-limit headers on refusals too
        return domain_error_response(exc, headers)
    body_out = {"success": success, "action": req.action, "data": plain(data), "config": _config_summary(effective)}
    return json_response(action_response(body_out), headers=headers)


async def _run_action(
    ctx: AppContext, req: ActionRequest, effective: EffectiveConfig, overrides: Mapping[str, Any], actor: str
) -> tuple[bool, Any]:
    """One engine call; returns the top-level ``success`` and the engine's data."""
    engine = ctx.engine
    data: dict[str, Any]
    if isinstance(req, CheckRequest):
        data = await engine.check_promotion_eligibility(req.experiment_name, config=effective)
        success = True
    elif isinstance(req, PromoteRequest):
        data = await engine.promote_winner(req.experiment_name, config=effective, actor=actor)
        success = bool(data.get("success"))
    elif isinstance(req, ScanRequest):
        await _audit_scan(ctx, actor, effective, overrides)
        data = await engine.scan_and_promote_winners(config=effective, actor=actor)
        success = True
    elif isinstance(req, RollbackRequest):
        data = await engine.rollback_promotion(req.promotion_id.strip(), req.reason, actor=actor, config=effective)
        success = True
    elif isinstance(req, ApproveRequest):
        data = await engine.approve(req.approval_id.strip(), actor=actor, config=effective)
        success = data["status"] == "approved"
    else:
        data = await engine.decline(req.approval_id.strip(), req.reason, actor=actor)
        success = True
    return success, data


async def _audit_scan(ctx: AppContext, actor: str, effective: EffectiveConfig, overrides: Mapping[str, Any]) -> None:
    """The scan itself leaves a row (the engine audits what it does to each experiment)."""
    details = {
        "dryRun": effective.config.dry_run,
        "enabled": effective.config.enabled,
        "preset": effective.preset,
        "overrides": plain(overrides),
        "via": "api",
    }
    async with ctx.pool.acquire() as conn:
        await conn.execute(Q["insert_audit"], actor, "scan_requested", None, None, None, details)


# --------------------------------------------------------------------------------------------- GET config
async def get_auto_promote(request: web.Request) -> web.Response:
    """The effective configuration, where each value came from, its validation, and the presets."""
    ctx = request.app[CTX]
    await auth.require_role(request, "viewer")
    query = parse_query(request, ConfigQuery)
    effective: EffectiveConfig | None = ctx.config
    errors: list[str] = []
    if query.preset is not None:
        try:
            effective = request_config(ctx, query.preset, None)
        except ConfigError as exc:
            effective, errors = None, list(exc.errors)
    presets = {query.preset: PRESETS[query.preset]} if query.preset else dict(PRESETS)
    authenticator = request.app[auth.AUTH]
    warnings: list[str] = []
    if not authenticator.enabled:
        warnings.append("API authentication is disabled (AUTO_PROMOTION_API_AUTH=disabled)")
    return ok(
        {
            "preset": effective.preset if effective else query.preset,
            "config": effective.config.public() if effective else None,
            "sources": effective.sources if effective else {},
            "validation": {"valid": not errors, "errors": errors},
            "presets": presets,
            "presetNames": list(PRESET_NAMES),
            "api": {
                "auth": "enabled" if authenticator.enabled else "disabled",
                "rateLimitPerMinute": ctx.settings.rate_limit_per_minute,
                "maxBodyBytes": ctx.settings.max_body_bytes,
            },
            "warnings": warnings,
        }
    )


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


def _name_from_path(request: web.Request) -> str:
    name = request.match_info["name"]
    try:
        return EXPERIMENT_PATH_NAME.validate_python(name)
    except ValidationError as exc:
        raise invalid_request("invalid experiment name", _validation_errors(exc, "path.name")) from None


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
    return ok(
        {
            "experiment": _experiment_json(detail.experiment, full_decision=True),
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


# --------------------------------------------------------------------------------------------- approvals
def approval_json(a: Approval) -> dict[str, Any]:
    """One approval as the API, the CLI's --json and the dashboard show it."""
    return {
        "approvalId": str(a.id),
        "experimentName": a.experiment_name,
        "kind": a.kind,
        "status": a.status,
        "requestedAt": a.requested_at,
        "requestedBy": a.requested_by,
        "expiresAt": a.expires_at,
        "variant": a.variant,
        "step": a.step,
        "decision": a.decision,
        "decidedAt": a.decided_at,
        "decidedBy": a.decided_by,
        "reason": a.reason,
        "expired": a.expired,
        "promotionId": a.promotion_id,
    }


async def list_approvals(request: web.Request) -> web.Response:
    """Approvals, newest first: pending ones by default (``status``), optional ``experiment``, paginated."""
    ctx = request.app[CTX]
    await auth.require_role(request, "viewer")
    query = parse_query(request, ApprovalsQuery)
    status = None if query.status == "all" else query.status
    items, total = await Reads(ctx.pool).approvals_page(status, query.experiment, query.limit, query.offset)
    return ok(
        {
            "approvals": [approval_json(a) for a in items],
            "total": total,
            "limit": query.limit,
            "offset": query.offset,
        }
    )


# ----------------------------------------------------------------------------------------------- openapi
async def get_openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document. Public: it describes the API and holds no data."""
    parse_query(request, Query)
    return json_response(openapi_document())
