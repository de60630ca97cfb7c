"""``POST /api/experiments/auto-promote`` (the seed's four actions: check, promote, scan, rollback) and
``GET /api/experiments/auto-promote`` (the effective configuration), with how a request's preset and overrides are
laid over the configuration the server runs with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from worker.config import PRESET_NAMES, PRESETS, ConfigError, EffectiveConfig, deep_merge, load_config
from worker.db.sql import Q
from worker.domain.errors import DomainError
from worker.http import auth
from worker.http.api.wire import ok, parse_query, plain, read_json_object, validation_errors
from worker.http.app import CTX, AppContext
from worker.http.errors import (
    ApiError,
    config_error,
    domain_error_response,
    field_error,
    invalid_request,
    json_response,
)
from worker.http.models import (
    AUTO_PROMOTE_REQUEST,
    ActionRequest,
    ApproveRequest,
    CheckRequest,
    ConfigQuery,
    DeclineRequest,
    PauseRequest,
    PromoteRequest,
    ResumeRequest,
    RollbackRequest,
    ScanRequest,
    action_response,
)
from worker.http.ratelimit import SlidingWindowLimiter

MUTATING_ACTIONS = frozenset({"scan", "promote", "rollback", "pause", "resume", "approve", "decline"})

LIMITER: web.AppKey[SlidingWindowLimiter] = web.AppKey("rate_limiter", SlidingWindowLimiter)


def _action_problems(req: ActionRequest) -> list[dict[str, str]]:
    """The rules that span two fields (the document states them too: models.py)."""
    errors: list[dict[str, str]] = []
    if isinstance(req, PauseRequest | ResumeRequest | ApproveRequest | DeclineRequest):
        return errors  # neither config nor dryRun: no decision of theirs to make drier
    nested = (req.config or {}).get("dryRun")
    if isinstance(req, RollbackRequest):
        if nested is True:
            errors.append(field_error("config.dryRun", "rollback has no dry run; it always changes the weights back"))
    elif req.dry_run is not None and isinstance(nested, bool) and nested != req.dry_run:
        errors.append(
            field_error("dryRun", f"is {str(req.dry_run).lower()} but config.dryRun is {str(nested).lower()}; give one")
        )
    return errors


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


# ------------------------------------------------------------------------------------------ POST action
async def post_auto_promote(request: web.Request) -> web.Response:
    """The seed's POST: scan | promote | check | rollback, pause | resume of a ramp, approve | decline."""
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
        errors = validation_errors(exc, tagged=True)
        raise invalid_request(
            f"invalid request ({len(errors)} problem{'s' if len(errors) != 1 else ''})", errors
        ) from None
    problems = _action_problems(req)
    if problems:
        raise invalid_request(f"invalid request for action '{req.action}'", problems)
    # dryRun is one more request-layer value: the engine lays each experiment's own config over the request's,
    # so a request's dryRun: false cannot lift an experiment's dryRun: true (worker.config.with_experiment_overrides).
    overrides: dict[str, Any] = {}
    if isinstance(req, CheckRequest | PromoteRequest | ScanRequest | RollbackRequest):
        overrides = dict(req.config or {})
        if req.dry_run is not None:
            overrides["dryRun"] = req.dry_run
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
    elif isinstance(req, PauseRequest):
        rollout = await engine.rollouts.pause(req.experiment_name, actor=actor, reason=req.reason)
        data, success = {"experimentName": req.experiment_name, "rollout": rollout}, True
    elif isinstance(req, ResumeRequest):
        rollout = await engine.rollouts.resume(req.experiment_name, actor=actor)
        data, success = {"experimentName": req.experiment_name, "rollout": rollout}, True
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
