"""``/api/experiments/{name}/metrics``: list (viewer), add (operator) and remove (operator) the metrics an
experiment is decided on. Each handler validates, then calls one engine method (worker.services.metric_definitions);
changes are audited with the token's name as the actor.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from worker.http import auth
from worker.http.api.reads import _name_from_path
from worker.http.api.wire import parse_query, plain, read_json_object, validation_errors
from worker.http.app import CTX
from worker.http.errors import invalid_request, json_response
from worker.http.models import (
    METRIC_PATH_NAME,
    MetricChangeResponse,
    MetricDefinitionRequest,
    MetricListResponse,
    Query,
)


def _answer(model: type[BaseModel], data: dict[str, Any], status: int = 200) -> web.Response:
    """``{success: true, data}`` checked against its model (a key that drifts fails loudly, not silently)."""
    body = model.model_validate({"success": True, "data": plain(data)}).model_dump(mode="json")
    return json_response(body, status=status)


def _metric_from_path(request: web.Request) -> str:
    try:
        return METRIC_PATH_NAME.validate_python(request.match_info["metric"])
    except ValidationError as exc:
        raise invalid_request("invalid metric name", validation_errors(exc, "path.metric")) from None


async def list_metrics(request: web.Request) -> web.Response:
    """The experiment's metrics: the built-in one, then its ab_metrics rows."""
    ctx = request.app[CTX]
    await auth.require_role(request, "viewer")
    parse_query(request, Query)
    data = await ctx.engine.list_metrics(_name_from_path(request))
    return _answer(MetricListResponse, data)


async def add_metric(request: web.Request) -> web.Response:
    """Add a metric (201); 409 metric_exists when the name is taken."""
    ctx = request.app[CTX]
    principal = await auth.require_role(request, "operator")
    parse_query(request, Query)
    name = _name_from_path(request)
    body = await read_json_object(request)
    try:
        req = MetricDefinitionRequest.model_validate(body)
    except ValidationError as exc:
        errors = validation_errors(exc)
        raise invalid_request(
            f"invalid metric ({len(errors)} problem{'s' if len(errors) != 1 else ''})", errors
        ) from None
    data = await ctx.engine.add_metric(
        name,
        req.name,
        kind=req.kind,
        role=req.role,
        direction=req.direction,
        margin=req.margin,
        description=req.description,
        cuped=req.cuped,
        actor=principal.name,
    )
    return _answer(MetricChangeResponse, data, status=201)


async def remove_metric(request: web.Request) -> web.Response:
    """Remove a metric with its statistics; 404 metric_not_found when there is none of that name."""
    ctx = request.app[CTX]
    principal = await auth.require_role(request, "operator")
    parse_query(request, Query)
    name = _name_from_path(request)
    data = await ctx.engine.remove_metric(name, _metric_from_path(request), actor=principal.name)
    return _answer(MetricChangeResponse, data)
