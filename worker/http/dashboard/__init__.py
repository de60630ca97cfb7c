"""The monitoring dashboard: server-rendered pages, the HTML fragments a page re-fetches when a server-sent event
says that something changed, the ``/events`` stream, and a LISTEN bridge from ``ab_promotion_events`` to the
application's EventBus.

- routes.py: the handlers, who may look, the sign-in form, static files, and ``add_routes``;
- views.py: read results (worker.db.reads, the API's read service too) turned into template context;
- templates/: the Jinja2 templates (autoescape on), rendered through aiohttp-jinja2;
- sse.py: ``/events``; bridge.py: the LISTEN bridge used under ``autopromote serve``;
- static/: our own CSS and script (dashboard.js listens to ``/events``, re-fetches the affected fragment, keeps
  the operator's API token in session storage, and calls the HTTP API after a confirmation).
"""

from __future__ import annotations

from worker.http.auth import SESSION_COOKIE
from worker.http.dashboard.bridge import BRIDGE_STATE, BRIDGED_FLAG, EVENTS_CHANNEL, _bridge_event, run_events_bridge
from worker.http.dashboard.routes import add_routes
from worker.http.dashboard.sse import MAX_EVENT_FIELD, RETRY_AFTER_S, _encode_event

__all__ = [
    "BRIDGED_FLAG",
    "BRIDGE_STATE",
    "EVENTS_CHANNEL",
    "MAX_EVENT_FIELD",
    "RETRY_AFTER_S",
    "SESSION_COOKIE",
    "_bridge_event",
    "_encode_event",
    "add_routes",
    "run_events_bridge",
]
