"""The aiohttp application shared by the daemon (`autopromote run`) and `autopromote serve`."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from worker.config import EffectiveConfig, Settings
from worker.db.connect import Pool
from worker.engine import Engine
from worker.events import EventBus


@dataclass(slots=True)
class Health:
    """What /readyz reports; the daemon updates it, `serve` marks listener and catch-up as not applicable."""

    listener_connected: bool = False
    catchup_done: bool = False
    listener_required: bool = True
    started_at: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class AppContext:
    pool: Pool
    settings: Settings
    config: EffectiveConfig
    engine: Engine
    events: EventBus
    health: Health
    # The database the pool connects to: the dashboard's event bridge opens its own LISTEN session (a Listener) to
    # it under `autopromote serve`, so that it holds none of the pool's connections.
    database_url: str


CTX: web.AppKey[AppContext] = web.AppKey("ctx", AppContext)

# Route modules, in registration order; each exposes add_routes(app: web.Application) -> None.
ROUTE_MODULES = ("worker.http.ops", "worker.http.api", "worker.http.dashboard")


def create_app(ctx: AppContext) -> web.Application:
    """The application with every route module that is installed."""
    app = web.Application(client_max_size=ctx.settings.max_body_bytes)
    app[CTX] = ctx
    for name in ROUTE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.add_routes(app)
    return app
