"""The dashboard's routes: pages and fragments rendered from templates, who may look, the sign-in form, our static
files, and the wiring of ``/events`` and the LISTEN bridge.

Each handler reads through the read service (worker.db.reads, as the API does), turns the result into template
context (views.py) and renders a Jinja2 template (templates/) through aiohttp-jinja2. Autoescape is on, and the
environment's ``finalize`` escapes every ``{{ value }}`` the way ``html.escape`` does (quotes included, so values
are safe in attributes; ``None`` shows as nothing), so no value reaches a page unescaped, whatever a template
forgets. Only ``Markup`` passes through: the SVG charts, which escape their own labels.

With authentication on, every page, fragment and ``/events`` needs a viewer token, like the API's GETs (the
audit details shown here are behind that role there). A script sends it as a bearer header; a browser signs in
once at ``/sign-in``, which checks the token and keeps it in an ``HttpOnly``, ``SameSite=Strict`` cookie (an
EventSource cannot send headers). The cookie is accepted only by these read-only GETs: operator actions go to
the API with the bearer header, so no request a cookie authenticates changes anything.
"""

from __future__ import annotations

import functools
import hashlib
import html
import mimetypes
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web
from markupsafe import Markup

from worker.db.reads import Reads
from worker.http.app import CTX
from worker.http.auth import SESSION_COOKIE, Principal, authenticate_viewer, authenticator
from worker.http.dashboard import bridge, sse, views
from worker.http.errors import ApiError

log = structlog.get_logger("worker.http.dashboard")

TEMPLATES = web.AppKey[jinja2.Environment]("dashboard_templates")
NAV = (("overview", "/", "Experiments"), ("promotions", "/promotions", "Promotions"), ("plan", "/plan", "Plan"))


# ----------------------------------------------------------------------------------------------- static files
def _load_static() -> dict[str, tuple[bytes, str, str]]:
    """Our own CSS and JS, read once: name -> (bytes, content type, short content hash for cache busting)."""
    files: dict[str, tuple[bytes, str, str]] = {}
    folder = resources.files("worker.http.dashboard").joinpath("static")
    for entry in folder.iterdir():
        if entry.is_file() and entry.name.endswith((".css", ".js", ".svg")):
            body = entry.read_bytes()
            ctype = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
            if entry.name.endswith(".js"):
                ctype = "text/javascript"
            files[entry.name] = (body, ctype, hashlib.sha256(body).hexdigest()[:12])
    return files


STATIC = _load_static()

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def static_url(name: str) -> str:
    return f"/static/{name}?v={STATIC[name][2]}"


async def static_file(request: web.Request) -> web.Response:
    """One of our own static files; long-cached because every link carries the content hash."""
    item = STATIC.get(request.match_info["file"])
    if item is None:
        raise web.HTTPNotFound(text="no such file")
    body, ctype, digest = item
    etag = f'"{digest}"'
    headers = {
        "ETag": etag,
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "public, max-age=31536000, immutable" if request.query.get("v") == digest else "no-cache",
    }
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    charset = "utf-8" if ctype.startswith("text/") or ctype.endswith("+xml") else None
    return web.Response(body=body, content_type=ctype, charset=charset, headers=headers)


# ------------------------------------------------------------------------------------------------ templates
def _escape(value: Any) -> Any:
    """Every ``{{ value }}``: escaped as ``html.escape`` does (``&#x27;`` and ``&quot;``, as the pages always had),
    ``None`` as nothing. ``Markup`` (the SVG charts, the macros' own output) passes as it is."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))  # noqa: S704 - this is the escaping


def setup_templates(app: web.Application) -> jinja2.Environment:
    """The app's Jinja2 environment (autoescape on, templates from the package, undefined names are errors)."""
    env = aiohttp_jinja2.setup(
        app,
        app_key=TEMPLATES,
        default_helpers=False,
        loader=jinja2.PackageLoader("worker.http.dashboard", "templates"),
        autoescape=True,
        finalize=_escape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters.update(views.FILTERS)
    env.globals.update(
        static_url=static_url, nav=NAV, refresh_all=views.REFRESH_ALL, refresh_promotions=views.REFRESH_PROMOTIONS
    )
    return env


def _render(request: web.Request, template: str, context: Mapping[str, Any], status: int = 200) -> web.Response:
    response = aiohttp_jinja2.render_template(template, request, context, app_key=TEMPLATES, status=status)
    response.headers.update(_PAGE_HEADERS)
    return response


def _page(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    return _render(request, template, {"who": _who(request), "lead": "", **context}, status)


# ------------------------------------------------------------------------------------------ who may look
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _who(request: web.Request) -> Principal | None:
    """The viewer of a page already let in by ``_viewer_page`` (None when authentication is off)."""
    return authenticate_viewer(request) if authenticator(request).enabled else None


def _viewer_page(handler: Handler) -> Handler:
    """A page for viewers: without a valid token, a 401 that is the sign-in form (a browser can act on it)."""

    @functools.wraps(handler)
    async def page(request: web.Request) -> web.StreamResponse:
        try:
            authenticate_viewer(request)
        except ApiError as exc:
            response = _sign_in_response(
                request,
                status=401,
                next_path=request.path_qs,
                error=exc.message if _presented_credentials(request) else None,
                reload=_arrived_from_another_site(request),
            )
            response.headers.update(exc.headers)
            if SESSION_COOKIE in request.cookies:
                _forget_cookie(request, response)  # it did not work: do not send it again
            return response
        return await handler(request)

    return page


def _viewer_data(handler: Handler) -> Handler:
    """A fragment or the event stream: without a valid token, the API's JSON 401 (the script sends to /sign-in)."""

    @functools.wraps(handler)
    async def data(request: web.Request) -> web.StreamResponse:
        try:
            authenticate_viewer(request)
        except ApiError as exc:
            raise exc.http_exception() from None
        return await handler(request)

    return data


def _presented_credentials(request: web.Request) -> bool:
    return bool(request.headers.get("Authorization", "").strip() or request.cookies.get(SESSION_COOKIE))


# -------------------------------------------------------------------------------------------- sign-in
def _local_path(value: str | None) -> str:
    """Where to go after signing in: a path on this site only (never ``//host`` or a URL), else ``/``."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")) or len(value) > 2000:
        return "/"
    if any(ord(c) < 0x20 or c == "\\" for c in value) or urlsplit(value).netloc:
        return "/"
    return "/" if value.split("?", 1)[0] in ("/sign-in", "/sign-out") else value


def _https(request: web.Request) -> bool:
    # X-Forwarded-Proto from a TLS-terminating proxy; trusting it can only add Secure, never remove it.
    return request.secure or request.headers.get("X-Forwarded-Proto", "").strip().lower() == "https"


def _cross_site(request: web.Request) -> bool:
    """A form posted from another site (login CSRF: signing the victim in as someone else).

    Browsers that send Sec-Fetch-Site say it outright. Otherwise compare the Origin's host; ``Origin: null``
    is what our own pages send (their Referrer-Policy is no-referrer), so it tells nothing.
    """
    fetch_site = request.headers.get("Sec-Fetch-Site", "").lower()
    if fetch_site:
        return fetch_site in ("cross-site", "same-site")
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return False
    hosts = {request.host, request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()}
    return urlsplit(origin).netloc not in hosts


def _arrived_from_another_site(request: web.Request) -> bool:
    """A link followed from another site (a Slack message, say): a SameSite=Strict cookie is withheld then.

    Reloading from our own page sends it, so the sign-in page reloads once in that case; the reload is a
    same-origin navigation, so it cannot loop.
    """
    return (
        request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site"
        and request.headers.get("Sec-Fetch-Mode", "").lower() == "navigate"
        and SESSION_COOKIE not in request.cookies
    )


def _sign_in_response(
    request: web.Request, *, status: int, next_path: str, error: str | None, reload: bool = False
) -> web.Response:
    return _render(
        request, "sign_in.html", {"error": error, "reload": reload, "next_path": _local_path(next_path)}, status
    )


def _cookie_attrs(request: web.Request) -> dict[str, Any]:
    return {"path": "/", "httponly": True, "samesite": "Strict", "secure": _https(request)}


def _forget_cookie(request: web.Request, response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, **_cookie_attrs(request))


async def sign_in_page(request: web.Request) -> web.Response:
    next_path = _local_path(request.query.get("next"))
    if not authenticator(request).enabled:
        raise web.HTTPSeeOther(next_path)  # nothing to sign in to
    return _sign_in_response(request, status=200, next_path=next_path, error=None)


async def sign_in(request: web.Request) -> web.Response:
    """Check the posted token and keep it in the sign-in cookie; the form again, with the reason, when refused."""
    if _cross_site(request):
        return _sign_in_response(
            request,
            status=403,
            next_path="/",
            error="This sign-in came from another site and was refused; sign in here.",
        )
    form = await request.post()
    next_path = _local_path(str(form.get("next") or "/"))
    auth = authenticator(request)
    if not auth.enabled:
        raise web.HTTPSeeOther(next_path)
    token = str(form.get("token") or "").strip()
    if not token:
        return _sign_in_response(request, status=400, next_path=next_path, error="Enter a token first.")
    who = auth.verify(token)
    if who is None:
        log.info("dashboard.sign_in_refused")
        return _sign_in_response(
            request,
            status=401,
            next_path=next_path,
            error="That token is unknown or was revoked. Check it and try again.",
        )
    log.info("dashboard.signed_in", token_name=who.name, role=who.role)
    response = web.HTTPSeeOther(next_path, headers={"Cache-Control": "no-store"})
    response.set_cookie(SESSION_COOKIE, token, **_cookie_attrs(request))
    raise response


async def sign_out(request: web.Request) -> web.Response:
    """Forget the sign-in cookie (the token itself stays valid: revoke it in AUTO_PROMOTION_API_TOKENS)."""
    if _cross_site(request):
        raise web.HTTPForbidden(text="cross-site sign-out refused")
    response = web.HTTPSeeOther("/sign-in", headers={"Cache-Control": "no-store"})
    _forget_cookie(request, response)
    raise response


# ------------------------------------------------------------------------------------------------- pages
def _reads(request: web.Request) -> Reads:
    return Reads(request.app[CTX].pool)


async def _overview(request: web.Request) -> dict[str, Any]:
    experiments, counts = await _reads(request).experiments_overview(views.MAX_EXPERIMENTS)
    return views.overview(experiments, counts, request.app[CTX].config)


@_viewer_page
async def overview_page(request: web.Request) -> web.Response:
    # The list as a whole changes on promotions, rollbacks and experiments it has not shown yet; each card
    # and the summary line refresh themselves on evaluations.
    return _page(
        request,
        "overview.html",
        title="Experiments",
        page="overview",
        o=await _overview(request),
        lead="Status, exposures, rates and lift with its interval per variant, and the current decision "
        "with its reasons. Updates arrive live.",
    )


@_viewer_data
async def overview_fragment(request: web.Request) -> web.Response:
    return _render(request, "_overview.html", {"o": await _overview(request)})


@_viewer_data
async def summary_fragment(request: web.Request) -> web.Response:
    return _render(request, "_summary.html", {"s": views.summary(await _reads(request).experiment_summary())})


def _gone(request: web.Request, name: str) -> web.Response:
    return _render(request, "_gone.html", {"name": name}, status=404)


@_viewer_data
async def card_fragment(request: web.Request) -> web.Response:
    name = request.query.get("name", "")
    experiment = await _reads(request).experiment_card(name)
    if experiment is None:
        return _gone(request, name)
    eta = views.etas([experiment], request.app[CTX].config, datetime.now(UTC))[0]
    return _render(request, "_card.html", {"c": views.card(experiment, eta)})


async def _experiment(request: web.Request, name: str) -> dict[str, Any] | None:
    page = await _reads(request).experiment_history(name, audit=views.AUDIT_ROWS)
    if page is None:
        return None
    ctx = request.app[CTX]
    body = views.experiment_page(page, ctx.config.config.thresholds.min_confidence, ctx.config)
    timeline = await ctx.engine.rollouts.timeline(page.experiment.id)
    body["rollout"] = views.rollout_section(timeline, name, datetime.now(UTC))
    return body


@_viewer_page
async def experiment_page(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await _experiment(request, name)
    if body is None:
        return _page(request, "experiment.html", status=404, title="Not found", page="experiment", name=name, e=None)
    return _page(request, "experiment.html", title=name, page="experiment", name=name, e=body)


@_viewer_data
async def experiment_fragment(request: web.Request) -> web.Response:
    name = request.query.get("name", "")
    body = await _experiment(request, name)
    if body is None:
        return _gone(request, name)
    return _render(request, "_experiment.html", {"e": body})


def _days(request: web.Request) -> int:
    try:
        days = int(request.query.get("days", views.DEFAULT_DAYS))
    except ValueError:
        raise web.HTTPBadRequest(text="days must be a whole number from 1 to 365") from None
    if not 1 <= days <= 365:
        raise web.HTTPBadRequest(text="days must be a whole number from 1 to 365")
    return days


async def _promotions(request: web.Request) -> dict[str, Any]:
    reads = _reads(request)
    report = await reads.promotion_report(_days(request), lists=views.PROMOTION_ROWS)
    approvals, _ = await reads.approvals_page("pending", None, views.PROMOTION_ROWS, 0)
    return views.promotions_page(report, approvals)


@_viewer_page
async def promotions_page(request: web.Request) -> web.Response:
    return _page(
        request,
        "promotions.html",
        title="Promotions",
        page="promotions",
        r=await _promotions(request),
        lead="Approvals waiting for an operator, active and rolled-back promotions, the promotion statistics and "
        "the rollback rate.",
    )


@_viewer_data
async def promotions_fragment(request: web.Request) -> web.Response:
    return _render(request, "_promotions.html", {"r": await _promotions(request)})


@_viewer_page
async def plan_page(request: web.Request) -> web.Response:
    """The planner's form (a GET form: the plan is a link one can share) and, once filled in, its answer."""
    plan = views.plan_form(request.query, request.app[CTX].config.config)
    return _page(
        request,
        "plan.html",
        status=400 if plan["errors"] else 200,
        title="Plan an experiment",
        page="plan",
        p=plan,
        lead="Exposures per arm and days to find a true lift of the minimum detectable effect, for the configured "
        "method and for a fixed-horizon test (autopromote plan, GET /api/plan).",
    )


@_viewer_data
async def events_stream(request: web.Request) -> web.StreamResponse:
    """``text/event-stream`` of the EventBus (sse.py), for viewers."""
    return await sse.events_stream(request)


# ------------------------------------------------------------------------------------------------- routes
def add_routes(app: web.Application) -> None:
    """Register the dashboard's pages, fragments, event stream, static files and LISTEN bridge."""
    setup_templates(app)
    app[sse.STREAMS] = set()
    app[sse.REFUSING] = set()
    app.router.add_get("/", overview_page, name="dashboard")
    app.router.add_get("/experiments/{name:.+}", experiment_page, name="dashboard_experiment")
    app.router.add_get("/promotions", promotions_page, name="dashboard_promotions")
    app.router.add_get("/plan", plan_page, name="dashboard_plan")
    app.router.add_get("/fragments/experiments", overview_fragment)
    app.router.add_get("/fragments/experiments-summary", summary_fragment)
    app.router.add_get("/fragments/experiment-card", card_fragment)
    app.router.add_get("/fragments/experiment", experiment_fragment)
    app.router.add_get("/fragments/promotions", promotions_fragment)
    app.router.add_get("/events", events_stream, name="dashboard_events")
    app.router.add_get("/sign-in", sign_in_page, name="dashboard_sign_in")
    app.router.add_post("/sign-in", sign_in)
    app.router.add_post("/sign-out", sign_out)
    app.router.add_get("/static/{file}", static_file)
    app.on_shutdown.append(sse.close_streams)
    app.cleanup_ctx.append(bridge._events_bridge_ctx)
