"""``GET /api/plan``: the experiment planner (``autopromote plan``) over HTTP, for viewers."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from worker.config import ConfigError
from worker.domain.errors import InvalidRequest
from worker.domain.planning import PlanRequest, plan_experiment
from worker.http import auth
from worker.http.api.actions import request_config
from worker.http.api.wire import parse_query
from worker.http.app import CTX, AppContext
from worker.http.errors import config_error, field_error, invalid_request, json_response
from worker.http.models import PlanQuery, PlanResponse


def plan_request(query: PlanQuery) -> PlanRequest:
    """The query's values as the planner takes them."""
    return PlanRequest(
        metric_type=query.metricType,
        baseline=query.baseline,
        mde=query.mde,
        sd=query.sd,
        alpha=query.alpha,
        power=query.power,
        treatments=query.treatments,
        primary_metrics=query.primaryMetrics,
        rho=query.rho,
        daily_exposures=query.dailyExposures,
    )


def plan_data(ctx: AppContext, query: PlanQuery) -> dict[str, Any]:
    """The plan under the server's configuration (or the query's preset); ApiError 400 for what cannot be planned."""
    try:
        effective = request_config(ctx, query.preset, None)
    except ConfigError as exc:
        raise config_error(exc) from None
    try:
        data = plan_experiment(plan_request(query), effective.config)
    except InvalidRequest as exc:
        errors = [
            field_error("query." + e["field"] if e["field"] else "query", e["message"])
            for e in exc.details.get("errors", [])
        ]
        raise invalid_request("cannot plan with these parameters", errors) from None
    checked: dict[str, Any] = PlanResponse.model_validate({"success": True, "data": data}).model_dump(mode="json")
    return checked


async def get_plan(request: web.Request) -> web.Response:
    """Exposures per arm and days for the configured method and a fixed horizon (``autopromote plan``)."""
    ctx = request.app[CTX]
    await auth.require_role(request, "viewer")
    query = parse_query(request, PlanQuery)
    return json_response(plan_data(ctx, query))
