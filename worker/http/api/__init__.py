"""The seed's REST interface: ``POST/GET /api/experiments/auto-promote`` and the read endpoints.

Handlers authenticate, validate, and call the engine or one named query; none contains decision logic.
Every response is JSON: ``{"success": true, ...}`` or the error shape of ``errors.py``.

Response conventions (also in the OpenAPI document):
- POST answers ``{success, action, data, config: {enabled, dryRun, preset}}``, ``data`` being the engine's
  result. For ``promote`` the top-level ``success`` mirrors ``data.success``: a promotion that is not
  eligible is a 200 with ``success: false`` and ``data.reasons`` (the request was fine; the experiment was
  not ready). 409 is only for "already promoted" and "already rolled back".
- GET answers ``{success: true, data}``.

The package: ``wire`` (reading requests, writing answers), ``actions`` (the seed endpoint's POST and GET),
``reads`` (experiments, promotions, stats, audit, the OpenAPI document), ``metrics`` (an experiment's metrics),
``plan`` (the planner), ``approvals`` (the approvals list; ``worker.http.slack`` is the Slack buttons' endpoint,
installed here too). ``add_routes`` installs them all.
"""

from __future__ import annotations

from aiohttp import web

from worker.http import auth, slack
from worker.http.api.actions import (
    LIMITER,
    MUTATING_ACTIONS,
    get_auto_promote,
    post_auto_promote,
    request_config,
    server_layers,
    startup_env,
)
from worker.http.api.approvals import approval_json, list_approvals
from worker.http.api.metrics import add_metric, list_metrics, remove_metric
from worker.http.api.plan import get_plan
from worker.http.api.reads import (
    get_experiment,
    get_openapi,
    list_audit,
    list_experiments,
    list_promotions,
    promotion_stats,
)
from worker.http.api.wire import ok, parse_query, plain, read_json_object
from worker.http.app import CTX
from worker.http.errors import api_error_middleware
from worker.http.models import ActionRequest
from worker.http.ratelimit import SlidingWindowLimiter

__all__ = [
    "LIMITER",
    "MUTATING_ACTIONS",
    "ActionRequest",
    "add_routes",
    "approval_json",
    "get_auto_promote",
    "get_experiment",
    "get_openapi",
    "get_plan",
    "list_approvals",
    "list_audit",
    "list_experiments",
    "list_promotions",
    "ok",
    "parse_query",
    "plain",
    "post_auto_promote",
    "promotion_stats",
    "read_json_object",
    "request_config",
    "server_layers",
    "startup_env",
]


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
    app.router.add_get("/api/experiments/{name}/metrics", list_metrics)
    app.router.add_post("/api/experiments/{name}/metrics", add_metric)
    app.router.add_delete("/api/experiments/{name}/metrics/{metric}", remove_metric)
    app.router.add_get("/api/promotions", list_promotions)
    app.router.add_get("/api/promotions/stats", promotion_stats)
    app.router.add_get("/api/audit", list_audit)
    app.router.add_get("/api/approvals", list_approvals)
    # Authenticated by Slack's signature, not a token: see worker.http.slack.
    slack.add_routes(app)
    app.router.add_get("/api/plan", get_plan)
    app.router.add_get("/api/openapi.json", get_openapi)
