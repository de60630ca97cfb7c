"""The monitoring dashboard: server-rendered pages, the HTML fragments a page re-fetches when a server-sent
event says that something changed, the ``/events`` stream, and a LISTEN bridge from ``ab_promotion_events``
to the application's EventBus.

Every page is a few read-only queries (dashboard.sql) rendered to HTML here; every value that comes from the
database goes through ``h()`` (experiment names are user input). The browser side is one small script of our
own (static/dashboard.js): it listens to ``/events``, re-fetches the affected fragment, keeps the operator's API
token in session storage, and calls the HTTP API after a confirmation.

With authentication on, every page, fragment and ``/events`` needs a viewer token, like the API's GETs (the
audit details shown here are behind that role there). A script sends it as a bearer header; a browser signs in
once at ``/sign-in``, which checks the token and keeps it in an ``HttpOnly``, ``SameSite=Strict`` cookie (an
EventSource cannot send headers). The cookie is accepted only by these read-only GETs: operator actions go to
the API with the bearer header, so no request a cookie authenticates changes anything.

``/events`` encodes each event once for all its clients (the bus calls ``_encode_event``), accepts at most
``AUTO_PROMOTION_SSE_MAX_CLIENTS`` clients (then 503), and drops a client that stops reading once its bounded
queue is full, closing its connection (its EventSource reconnects and the page re-fetches what it shows).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import math
import mimetypes
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from html import escape
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import anyio
import asyncpg
import structlog
from aiohttp import web

from worker.events import StreamClient, TooManyClients
from worker.http.app import CTX, AppContext
from worker.http.auth import SESSION_COOKIE, Principal, authenticate_viewer, authenticator
from worker.http.errors import ApiError
from worker.http.svg import DayCount, LiftPoint, interval_bar, interval_scale, lift_chart, pct, promotions_chart
from worker.retry import DB_ERRORS, FaultLog, is_transient, retrying

log = structlog.get_logger("worker.http.dashboard")

EVENTS_CHANNEL = "ab_promotion_events"
# health.details key with which the daemon says that it already feeds NOTIFYs into ctx.events.
BRIDGED_FLAG = "events_bridged"
# health.details key where this module reports its own bridge ("listening", "reconnecting", "off: ...").
BRIDGE_STATE = "dashboard_events_bridge"
HEARTBEAT_S = 15.0
# How often an idle /events handler checks whether its client has gone (and frees its place under the cap).
GONE_CHECK_S = 1.0
MAX_EXPERIMENTS = 300
AUDIT_ROWS = 100
PROMOTION_ROWS = 100
DEFAULT_DAYS = 30
MAX_EVENT_FIELD = 500

_NAME_RE = re.compile(r"^--\s*name:\s*([a-z_]+)\s*$", re.MULTILINE)
# Same shape as the daemon's listener publishes: {"type": promotion|rollback, "event": <NOTIFY event>, ...}.
_BRIDGE_EVENTS = {"promoted": "promotion", "rolled_back": "rollback", "rollback_requested": "rollback"}

_STREAMS = web.AppKey[set[StreamClient]]("dashboard_streams")
# Non-empty while /events refuses clients for the cap, so that the warning is logged once per spell.
_REFUSING = web.AppKey[set[bool]]("dashboard_refusing")
# How long a client told "too many clients" should wait before trying again (its EventSource backs off too).
RETRY_AFTER_S = 10


def _load_queries() -> dict[str, str]:
    text = resources.files("worker.http").joinpath("dashboard.sql").read_text(encoding="utf-8")
    matches = list(_NAME_RE.finditer(text))
    queries: dict[str, str] = {}
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = "\n".join(line for line in text[match.end():end].splitlines() if not line.startswith("--"))
        queries[match.group(1)] = body.strip().rstrip(";")
    return queries


Q = _load_queries()


# ----------------------------------------------------------------------------------------------- static files
def _load_static() -> dict[str, tuple[bytes, str, str]]:
    """Our own CSS and JS, read once: name -> (bytes, content type, short content hash for cache busting)."""
    files: dict[str, tuple[bytes, str, str]] = {}
    folder = resources.files("worker.http").joinpath("static")
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


def _static_url(name: str) -> str:
    return f"/static/{name}?v={STATIC[name][2]}"


async def static_file(request: web.Request) -> web.Response:
    """One of our own static files; long-cached because every link carries the content hash."""
    item = STATIC.get(request.match_info["file"])
    if item is None:
        raise web.HTTPNotFound(text="no such file")
    body, ctype, digest = item
    etag = f'"{digest}"'
    headers = {"ETag": etag, "X-Content-Type-Options": "nosniff",
               "Cache-Control": "public, max-age=31536000, immutable" if request.query.get("v") == digest
               else "no-cache"}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    charset = "utf-8" if ctype.startswith("text/") or ctype.endswith("+xml") else None
    return web.Response(body=body, content_type=ctype, charset=charset, headers=headers)


# --------------------------------------------------------------------------------------------- formatting
def h(value: object) -> str:
    """HTML-escape anything (quotes included, so it is safe in attribute values too)."""
    return escape("" if value is None else str(value), quote=True)


def _experiment_href(name: str) -> str:
    return "/experiments/" + quote(name, safe="")


def _fragment_href(name: str) -> str:
    return "/fragments/experiment?" + urlencode({"name": name})


def _slug(name: str) -> str:
    """A stable id for an experiment's elements (names may contain anything; ids must not)."""
    return "x" + hashlib.sha1(name.encode("utf-8"), usedforsecurity=False).hexdigest()[:10]


def _time(ts: datetime | None) -> str:
    if ts is None:
        return '<span class="muted">–</span>'
    return f'<time datetime="{h(ts.isoformat())}">{h(ts.strftime("%Y-%m-%d %H:%M:%S"))} UTC</time>'


def _num(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}{suffix}"
    return f"{float(value):,.{digits}f}{suffix}"


def _rate(value: Any, metric_type: str) -> str:
    if value is None:
        return "–"
    return pct(float(value), 2, signed=False) if metric_type == "conversion" else _num(float(value), 4)


def _json(value: Any) -> Any:
    """jsonb arrives decoded with the project's pool codecs; tolerate a pool without them."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


STATUS_LABELS = {
    "running": ("▶", "running"),
    "promoted": ("★", "promoted"),
    "rolled_back": ("↩", "rolled back"),
    "paused": ("⏸", "paused"),
    "draft": ("✎", "draft"),
    "stopped": ("■", "stopped"),
}


def _status_badge(status: str) -> str:
    icon, label = STATUS_LABELS.get(status, ("•", status))
    return (f'<span class="badge status-{h(status)}"><span aria-hidden="true">{icon}</span> '
            f'<span class="visually-hidden">status: </span>{h(label)}</span>')


def _decision_badge(decision: Mapping[str, Any] | None, status: str = "running") -> str:
    if not decision:
        return '<span class="badge neutral"><span aria-hidden="true">…</span> not evaluated yet</span>'
    if status != "running":  # evaluations stop with the run: the last decision is history, not a verdict
        last = "eligible" if decision.get("eligible") else "blocked"
        return f'<span class="badge neutral">last decision: {last}</span>'
    if decision.get("eligible"):
        return '<span class="badge ok"><span aria-hidden="true">✓</span> eligible</span>'
    return '<span class="badge bad"><span aria-hidden="true">✗</span> blocked</span>'


# ------------------------------------------------------------------------------------------------- views
def _variant_rows(row: Mapping[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """Variants as of the last decision when there is one (consistent figures), else the folded statistics."""
    decision = _json(row["decision"]) or {}
    evaluated = decision.get("variants") or []
    if evaluated:
        return [dict(v) for v in evaluated], True
    out = []
    for v in _json(row["variants"]) or []:
        n = int(v.get("exposures") or 0)
        rate_num = v.get("conversions") if row["metric_type"] == "conversion" else v.get("valueSum")
        out.append({**v, "rate": (float(rate_num or 0) / n) if n else None,
                    "errorRate": (int(v.get("errors") or 0) / n) if n else None})
    return out, False


def _variants_table(row: Mapping[str, Any], *, detailed: bool = False) -> str:
    variants, evaluated = _variant_rows(row)
    if not variants:
        return '<p class="muted">No variants defined.</p>'
    metric = row["metric_type"]
    scale = interval_scale([(v.get("lift"), v.get("ciLow"), v.get("ciHigh")) for v in variants
                            if not v.get("isControl")])
    rate_head = "Conversion rate" if metric == "conversion" else "Mean"
    heads = ["Variant", "Exposures", rate_head, "Lift (interval)", "Confidence"]
    if detailed:
        heads += ["Error rate", "p95 latency"]
    caption = ("Variants at the last evaluation" if evaluated
               else "Variants (folded statistics; not evaluated yet)")
    out = [f'<div class="table-wrap"><table class="stack variants"><caption>{h(caption)}</caption><thead><tr>']
    out += [f'<th scope="col">{h(c)}</th>' for c in heads]
    out.append("</tr></thead><tbody>")
    for v in variants:
        control = bool(v.get("isControl"))
        tagged = control and str(v.get("name")).strip().lower() != "control"
        name = f'{h(v.get("name"))}' + (' <span class="tag">control</span>' if tagged else "")
        if control:
            lift = '<span class="muted">baseline</span>'
            conf = '<span class="muted">–</span>'
        elif v.get("lift") is None:
            lift = '<span class="muted">not computed</span>'
            conf = '<span class="muted">–</span>'
        else:
            bar = interval_bar(v.get("lift"), v.get("ciLow"), v.get("ciHigh"), lo=scale[0], hi=scale[1])
            lift = (f'<span class="lift">{h(pct(v.get("lift")))}</span> '
                    f'<span class="ci">[{h(pct(v.get("ciLow")))}, {h(pct(v.get("ciHigh")))}]</span>{bar}')
            conf = h(_num(v.get("confidence"), 1, "%"))
        cells = [
            ("Variant", name, "variant"),
            ("Exposures", h(_num(int(v.get("exposures") or 0))), "num"),
            (rate_head, h(_rate(v.get("rate"), metric)), "num"),
            ("Lift (interval)", lift, "lift-cell"),
            ("Confidence", conf, "num"),
        ]
        if detailed:
            p95 = v.get("p95LatencyMs")
            cells += [("Error rate", h(_rate(v.get("errorRate"), "conversion")), "num"),
                      ("p95 latency", h(_num(p95, 1, " ms")) if p95 is not None else '<span class="muted">–</span>',
                       "num")]
        out.append("<tr>")
        for i, (label, content, cls) in enumerate(cells):
            tag = "th scope=\"row\"" if i == 0 else "td"
            out.append(f'<{tag} class="{cls}" data-label="{h(label)}">{content}</{tag.split()[0]}>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _reasons(decision: Mapping[str, Any] | None, status: str) -> str:
    if not decision:
        return ('<p class="reasons muted">No decision stored yet: the daemon evaluates on new metrics, '
                "or run a dry-run check.</p>")
    reasons = decision.get("reasons") or []
    when = "" if status == "running" else "At the last evaluation: "
    if decision.get("eligible"):
        winner = (decision.get("winningVariant") or {}).get("variantName") or decision.get("bestVariant")
        return (f'<p class="reasons">{when}winner <strong>{h(winner)}</strong> at '
                f'{h(_num(decision.get("confidence"), 1))}% confidence, improvement '
                f'{h(_num(decision.get("improvement"), 2))}%.</p>')
    if not reasons:
        return '<p class="reasons muted">Not eligible (no reason recorded).</p>'
    items = "".join(f"<li>{h(r)}</li>" for r in reasons)
    title = "Why not yet eligible:" if status == "running" else "Why it was not eligible at the last evaluation:"
    return f'<div class="reasons"><p>{title}</p><ul>{items}</ul></div>'


def _actions(name: str, status: str, active_promotion_id: Any, eligible: bool) -> str:
    buttons = [f'<button type="button" class="btn" data-action="check" data-experiment="{h(name)}">'
               f'Dry-run check<span class="visually-hidden"> of {h(name)}</span></button>']
    if status == "running" and active_promotion_id is None:
        style = "btn primary" if eligible else "btn"  # the API refuses a blocked one; do not invite the click
        buttons.append(f'<button type="button" class="{style}" data-action="promote" data-experiment="{h(name)}">'
                       f'Promote<span class="visually-hidden"> the winner of {h(name)}</span></button>')
    if active_promotion_id is not None:
        buttons.append(_rollback_button(name, active_promotion_id))
    return f'<div class="actions" role="group" aria-label="Operator actions for {h(name)}">{"".join(buttons)}</div>'


def _rollback_button(name: str, promotion_id: Any) -> str:
    return (f'<button type="button" class="btn danger" data-action="rollback" data-experiment="{h(name)}" '
            f'data-promotion-id="{h(promotion_id)}">Roll back<span class="visually-hidden"> the promotion of '
            f"{h(name)}</span></button>")


def _experiment_card(row: Mapping[str, Any]) -> str:
    name: str = row["name"]
    decision = _json(row["decision"]) or None
    active = row["active_promotion_id"]
    evaluated = (f'Last evaluated {_time(row["last_evaluated_at"])} ({h(_num(row["evaluations"]))} evaluations)'
                 if row["last_evaluated_at"] else "Not evaluated yet")
    promo = ' · <span class="tag">active promotion</span>' if active is not None else ""
    return (
        f'<article class="card exp" id="{_slug(name)}" data-experiment="{h(name)}" '
        f'data-status="{h(row["status"])}" aria-labelledby="{_slug(name)}-h">'
        f'<header class="card-head"><h2 id="{_slug(name)}-h"><a href="{h(_experiment_href(name))}">{h(name)}</a></h2>'
        f'<p class="badges">{_status_badge(row["status"])} {_decision_badge(decision, row["status"])}</p></header>'
        f'<p class="meta">{evaluated}{promo}</p>'
        f'{_variants_table(row)}{_reasons(decision, row["status"])}'
        f'{_actions(name, row["status"], active, bool((decision or {}).get("eligible")))}</article>'
    )


def _card_region(row: Mapping[str, Any]) -> str:
    """One experiment's card as a region of its own: an evaluation re-fetches this card, not the whole list."""
    name: str = row["name"]
    return _region(f"card-{_slug(name)}", "/fragments/experiment-card?" + urlencode({"name": name}), "evaluation",
                   _experiment_card(row), experiment=name)


def _summary(counts: Sequence[Mapping[str, Any]]) -> str:
    total = sum(int(c["experiments"]) for c in counts)
    parts = ", ".join(f"{c['experiments']} {STATUS_LABELS.get(c['status'], ('', c['status']))[1]}" for c in counts)
    eligible = sum(int(c["eligible"]) for c in counts if c["status"] == "running")
    return f'<p class="summary">{h(total)} experiment(s): {h(parts)}; {h(eligible)} running and eligible.</p>'


async def render_summary(ctx: AppContext) -> str:
    """The one-line count above the experiment cards."""
    async with ctx.pool.acquire() as conn:
        return _summary(await conn.fetch(Q["experiment_summary"]))


async def render_overview(ctx: AppContext) -> str:
    """The experiments list (the body of ``/`` and of ``/fragments/experiments``)."""
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(Q["experiments_overview"], MAX_EXPERIMENTS, None)
        counts = await conn.fetch(Q["experiment_summary"])
    if not rows:
        return ('<p class="empty">No experiments yet. Create one in <code>ab_experiments</code> with its '
                "<code>ab_variants</code>, then record metrics with <code>ab_record_metrics()</code>.</p>")
    total = sum(int(c["experiments"]) for c in counts)
    more = (f'<p class="summary">Showing the first {len(rows)} of {total}.</p>' if total > len(rows) else "")
    summary = _region("experiments-summary", "/fragments/experiments-summary", REFRESH_ALL, _summary(counts))
    return summary + more + "".join(_card_region(r) for r in rows)


async def render_card(ctx: AppContext, name: str) -> str | None:
    """One experiment's card for the overview; None when there is no such experiment."""
    async with ctx.pool.acquire() as conn:
        row = await conn.fetchrow(Q["experiments_overview"], 1, name)
    return None if row is None else _experiment_card(row)


def _safety_checks(decision: Mapping[str, Any] | None) -> str:
    checks = (decision or {}).get("safetyChecks") or []
    if not checks:
        return '<p class="muted">No safety checks recorded yet.</p>'
    out = ['<ul class="checks">']
    for c in checks:
        passed = bool(c.get("passed"))
        severity = str(c.get("severity") or "")
        if passed and severity == "warning":
            icon, label, cls = "⚠", "passed with a warning", "warn"
        elif passed:
            icon, label, cls = "✓", "passed", "ok"
        else:
            icon, label, cls = "✗", "failed", "bad"
        out.append(f'<li class="check {cls}"><span class="check-state"><span aria-hidden="true">{icon}</span> '
                   f'{h(label)}</span> <strong>{h(c.get("name"))}</strong>: {h(c.get("message"))}</li>')
    out.append("</ul>")
    return "".join(out)


def _promotion_state(p: Mapping[str, Any]) -> str:
    if p["rollback_at"] is not None:
        return (f'<span class="badge bad"><span aria-hidden="true">↩</span> rolled back</span> '
                f'{_time(p["rollback_at"])} by {h(p["rolled_back_by"])}: {h(p["rollback_reason"])}')
    if p.get("rollback_requested_at") is not None:
        return (f'<span class="badge warn"><span aria-hidden="true">⏳</span> rollback requested</span> '
                f'by {h(p["rollback_requested_by"])}: {h(p["rollback_request_reason"])}')
    guard = p.get("guard_until")
    watched = f" · guarded until {_time(guard)}" if guard is not None else ""
    return f'<span class="badge ok"><span aria-hidden="true">★</span> active</span>{watched}'


def _history_table(name: str, promotions: Sequence[Mapping[str, Any]]) -> str:
    if not promotions:
        return '<p class="muted">Never promoted.</p>'
    out = ['<div class="table-wrap"><table class="stack"><caption>Promotions, newest first</caption><thead><tr>'
           '<th scope="col">Promoted</th><th scope="col">Variant</th><th scope="col">Confidence</th>'
           '<th scope="col">Improvement</th><th scope="col">By</th><th scope="col">State</th>'
           '<th scope="col"><span class="visually-hidden">Action</span></th></tr></thead><tbody>']
    for p in promotions:
        action = _rollback_button(name, p["id"]) if p["rollback_at"] is None else ""
        out.append(
            f'<tr data-promotion-id="{h(p["id"])}"><th scope="row" data-label="Promoted">{_time(p["promoted_at"])}</th>'
            f'<td data-label="Variant">{h(p["promoted_variant_name"])}</td>'
            f'<td data-label="Confidence" class="num">{h(_num(p["confidence"], 1, "%"))}</td>'
            f'<td data-label="Improvement" class="num">{h(_num(p["improvement"], 2, "%"))}</td>'
            f'<td data-label="By">{h(p["promoted_by"])}</td>'
            f'<td class="wide" data-label="State">{_promotion_state(p)}</td>'
            f'<td class="wide act" data-label="Action">{action}</td></tr>'
        )
    out.append("</tbody></table></div>")
    return "".join(out)


def _audit_summary(action: str, details: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for key in ("reason", "trigger", "promotedVariant", "wouldPromote", "error"):
        if key in details and details[key] not in (None, ""):
            parts.append(f"{key}: {details[key]}")
    reasons = details.get("reasons")
    if isinstance(reasons, list) and reasons:
        parts.append("reasons: " + "; ".join(str(r) for r in reasons[:3]) + (" …" if len(reasons) > 3 else ""))
    return " · ".join(parts)[:600]


def _audit_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return '<p class="muted">No audit entries.</p>'
    out = ['<div class="table-wrap"><table class="stack audit"><caption>Newest first</caption><thead><tr>'
           '<th scope="col">When</th><th scope="col">Actor</th><th scope="col">Action</th>'
           '<th scope="col">Summary</th></tr></thead><tbody>']
    for r in rows:
        details = _json(r["details"]) or {}
        text = json.dumps(details, indent=1, sort_keys=True, default=str)
        if len(text) > 6000:
            text = text[:6000] + "\n… (truncated)"
        summary = _audit_summary(r["action"], details if isinstance(details, dict) else {})
        out.append(
            f'<tr><th scope="row" data-label="When">{_time(r["created_at"])}</th>'
            f'<td data-label="Actor">{h(r["actor"])}</td>'
            f'<td data-label="Action"><code>{h(r["action"])}</code></td>'
            f'<td class="wide" data-label="Summary">{h(summary) or "<span class=muted>–</span>"}'
            f'<details><summary>Details<span class="visually-hidden"> of audit entry {h(r["id"])}</span></summary>'
            f"<pre>{h(text)}</pre></details></td></tr>"
        )
    out.append("</tbody></table></div>")
    return "".join(out)


def _both_widths(wide: str, narrow: str) -> str:
    """A chart drawn twice; the stylesheet shows one (SVG text scales with the drawing, so a phone needs its own)."""
    return f'<div class="chart-wide">{wide}</div><div class="chart-narrow">{narrow}</div>'


def _lift_section(ctx: AppContext, name: str, control: str | None, snapshots: Sequence[Mapping[str, Any]],
                  promotions: Sequence[Mapping[str, Any]]) -> str:
    level = ctx.config.config.thresholds.min_confidence
    marks: list[tuple[datetime, str]] = []
    for p in promotions:
        marks.append((p["promoted_at"], f"promoted {p['promoted_variant_name']}"))
        if p["rollback_at"] is not None:
            marks.append((p["rollback_at"], "rolled back"))
    by_variant: dict[str, list[LiftPoint]] = {}
    raw: dict[str, list[Mapping[str, Any]]] = {}
    for s in snapshots:
        by_variant.setdefault(s["variant_name"], []).append(
            LiftPoint(s["created_at"], s["lift"], s["ci_low"], s["ci_high"], bool(s["eligible"])))
        raw.setdefault(s["variant_name"], []).append(s)
    if not by_variant:
        return ('<p class="muted">No evaluation history yet. Each evaluation stores a snapshot of lift and '
                "interval per treatment (thinned so that storage stays bounded).</p>")
    out = []
    for i, (variant, points) in enumerate(sorted(by_variant.items())):
        title = f"Lift of {variant} over {control or 'control'}"
        out.append(f'<figure class="chart-box"><figcaption><h3>{h(title)}</h3></figcaption>')
        out.append(_both_widths(
            lift_chart(points, chart_id=f"lift-{_slug(name)}-{i}", title=title, level=level, marks=marks),
            lift_chart(points, chart_id=f"lift-{_slug(name)}-{i}-n", title=title, level=level, compact=True,
                       marks=marks)))
        rows = raw[variant][-25:]
        out.append(f'<details class="chart-data"><summary>Chart data ({len(raw[variant])} kept evaluations'
                   f'{", last 25 shown" if len(raw[variant]) > 25 else ""})</summary>'
                   '<div class="table-wrap"><table class="stack"><thead><tr><th scope="col">When</th>'
                   '<th scope="col">Exposures</th><th scope="col">Control exposures</th><th scope="col">Lift</th>'
                   '<th scope="col">Interval</th><th scope="col">Confidence</th><th scope="col">Eligible</th>'
                   "</tr></thead><tbody>")
        for s in reversed(rows):
            out.append(
                f'<tr><th scope="row" data-label="When">{_time(s["created_at"])}</th>'
                f'<td data-label="Exposures" class="num">{h(_num(s["exposures"]))}</td>'
                f'<td data-label="Control exposures" class="num">{h(_num(s["control_exposures"]))}</td>'
                f'<td data-label="Lift" class="num">{h(pct(s["lift"]))}</td>'
                f'<td class="wide" data-label="Interval">[{h(pct(s["ci_low"]))}, {h(pct(s["ci_high"]))}]</td>'
                f'<td data-label="Confidence" class="num">{h(_num(s["confidence"], 1, "%"))}</td>'
                f'<td data-label="Eligible">{"✓ yes" if s["eligible"] else "✗ no"}</td></tr>'
            )
        out.append("</tbody></table></div></details></figure>")
    return "".join(out)


async def render_experiment(ctx: AppContext, name: str) -> str | None:
    """The body of ``/experiments/{name}``; None when there is no such experiment."""
    async with ctx.pool.acquire() as conn:
        row = await conn.fetchrow(Q["experiments_overview"], 1, name)
        if row is None:
            return None
        snapshots = await conn.fetch(Q["evaluation_snapshots"], row["id"])
        promotions = await conn.fetch(Q["experiment_promotions"], row["id"])
        audit = await conn.fetch(Q["experiment_audit"], name, AUDIT_ROWS)
    decision = _json(row["decision"]) or None
    control = (decision or {}).get("controlVariant") or next(
        (v["name"] for v in (_json(row["variants"]) or []) if v.get("isControl")), None)
    started = f'started {_time(row["started_at"])}' if row["started_at"] else "not started"
    evaluated = (f'last evaluated {_time(row["last_evaluated_at"])} ({h(_num(row["evaluations"]))} evaluations)'
                 if row["last_evaluated_at"] else "not evaluated yet")
    figures = ""
    if decision:
        figures = (f'<dl class="figures"><div><dt>Confidence</dt><dd>{h(_num(decision.get("confidence"), 2, "%"))}'
                   f'</dd></div><div><dt>Improvement</dt><dd>{h(_num(decision.get("improvement"), 2, "%"))}</dd></div>'
                   f'<div><dt>Best variant</dt><dd>{h(decision.get("bestVariant") or "–")}</dd></div>'
                   f'<div><dt>Method</dt><dd>{h(decision.get("method") or "–")}</dd></div></dl>')
    description = f'<p class="description">{h(row["description"])}</p>' if row["description"] else ""
    return (
        f'<section class="card" aria-labelledby="state-h"><h2 id="state-h">Current state</h2>'
        f'<p class="badges">{_status_badge(row["status"])} {_decision_badge(decision, row["status"])} '
        f'<span class="tag">{h(row["metric_type"])}</span> <span class="tag">priority {h(row["priority"])}</span></p>'
        f'{description}<p class="meta">{started}; {evaluated}</p>{figures}{_reasons(decision, row["status"])}'
        f'{_actions(name, row["status"], row["active_promotion_id"], bool((decision or {}).get("eligible")))}'
        "</section>"
        f'<section class="card" aria-labelledby="lift-h"><h2 id="lift-h">Lift and confidence sequence over time</h2>'
        f"{_lift_section(ctx, name, control, snapshots, promotions)}</section>"
        f'<section class="card" aria-labelledby="variants-h"><h2 id="variants-h">Variants</h2>'
        f"{_variants_table(row, detailed=True)}</section>"
        f'<section class="card" aria-labelledby="checks-h"><h2 id="checks-h">Safety checks</h2>'
        f"{_safety_checks(decision)}</section>"
        f'<section class="card" aria-labelledby="history-h"><h2 id="history-h">Promotion and rollback history</h2>'
        f"{_history_table(name, promotions)}</section>"
        f'<section class="card" aria-labelledby="audit-h"><h2 id="audit-h">Audit log</h2>'
        f"{_audit_table(audit)}</section>"
    )


def _days(request: web.Request) -> int:
    try:
        days = int(request.query.get("days", DEFAULT_DAYS))
    except ValueError:
        raise web.HTTPBadRequest(text="days must be a whole number from 1 to 365") from None
    if not 1 <= days <= 365:
        raise web.HTTPBadRequest(text="days must be a whole number from 1 to 365")
    return days


async def render_promotions(ctx: AppContext, days: int) -> str:
    """The body of ``/promotions``: get_promotion_stats(), promotions per day, active and rolled back."""
    async with ctx.pool.acquire() as conn:
        stats = await conn.fetchrow(Q["promotion_stats"], days)
        per_day = await conn.fetch(Q["promotions_per_day"], days)
        active = await conn.fetch(Q["active_promotions"], PROMOTION_ROWS)
        rolled = await conn.fetch(Q["rolled_back_promotions"], PROMOTION_ROWS)
    assert stats is not None
    hours = stats["avg_hours_to_promotion"]
    figures = [
        ("Promotions", _num(stats["total_promotions"])),
        ("Per day", _num(stats["promotions_per_day"], 2)),
        ("Still active", _num(stats["successful_promotions"])),
        ("Failed attempts", _num(stats["failed_promotions"])),
        ("Rolled back", _num(stats["rollback_count"])),
        ("Rollback rate", pct(stats["rollback_rate"], 1, signed=False)),
        ("Avg confidence", _num(stats["avg_confidence"], 1, "%")),
        ("Avg improvement", _num(stats["avg_improvement"], 2, "%")),
        ("Avg time to promotion", _num(hours, 1, " h")),
        ("Active now (all time)", _num(stats["active_promotions"])),
    ]
    fig_html = "".join(f"<div><dt>{h(k)}</dt><dd>{h(v)}</dd></div>" for k, v in figures)
    counts = [DayCount(d["day"], int(d["promotions"]), int(d["rollbacks"])) for d in per_day]
    chart = _both_widths(promotions_chart(counts, chart_id="per-day"),
                         promotions_chart(counts, chart_id="per-day-n", compact=True))
    return (
        f'<section class="card" aria-labelledby="stats-h"><h2 id="stats-h">Last {h(days)} days</h2>'
        f'<dl class="figures">{fig_html}</dl>'
        f'<figure class="chart-box"><figcaption><h3>Promotions per day</h3></figcaption>{chart}</figure></section>'
        f'<section class="card" aria-labelledby="active-h"><h2 id="active-h">Active promotions ({len(active)})</h2>'
        f"{_promotions_table(active, rolled_back=False)}</section>"
        f'<section class="card" aria-labelledby="rolled-h"><h2 id="rolled-h">Rolled back ({len(rolled)})</h2>'
        f"{_promotions_table(rolled, rolled_back=True)}</section>"
    )


def _promotions_table(rows: Sequence[Mapping[str, Any]], *, rolled_back: bool) -> str:
    if not rows:
        return f'<p class="muted">{"No rollbacks." if rolled_back else "No active promotions."}</p>'
    last = ("Rolled back", "Reason") if rolled_back else ("State", "Action")
    out = ['<div class="table-wrap"><table class="stack promotions"><thead><tr>'
           '<th scope="col">Experiment</th><th scope="col">Variant</th><th scope="col">Promoted</th>'
           '<th scope="col">Confidence</th><th scope="col">Improvement</th>'
           f'<th scope="col">{h(last[0])}</th><th scope="col">{h(last[1])}</th></tr></thead><tbody>']
    for p in rows:
        name = p["experiment_name"]
        if rolled_back:
            tail = (f'<td class="wide" data-label="Rolled back">{_time(p["rollback_at"])} '
                    f'by {h(p["rolled_back_by"])}</td>'
                    f'<td class="wide" data-label="Reason">{h(p["rollback_reason"])}</td>')
        else:
            state = ({**p, "rollback_at": None})
            tail = (f'<td class="wide" data-label="State">{_promotion_state(state)}</td>'
                    f'<td class="wide act" data-label="Action">{_rollback_button(name, p["id"])}</td>')
        out.append(
            f'<tr data-promotion-id="{h(p["id"])}" data-experiment="{h(name)}">'
            f'<th scope="row" data-label="Experiment"><a href="{h(_experiment_href(name))}">{h(name)}</a></th>'
            f'<td data-label="Variant">{h(p["promoted_variant_name"])}</td>'
            f'<td class="wide" data-label="Promoted">{_time(p["promoted_at"])} by {h(p["promoted_by"])}</td>'
            f'<td data-label="Confidence" class="num">{h(_num(p["confidence"], 1, "%"))}</td>'
            f'<td data-label="Improvement" class="num">{h(_num(p["improvement"], 2, "%"))}</td>{tail}</tr>'
        )
    out.append("</tbody></table></div>")
    return "".join(out)


# ------------------------------------------------------------------------------------------------ layout
NAV = (("overview", "/", "Experiments"), ("promotions", "/promotions", "Promotions"))


def _region(region_id: str, fragment: str, refresh_on: str, body: str, experiment: str | None = None) -> str:
    scope = f' data-experiment="{h(experiment)}"' if experiment is not None else ""
    return (f'<div id="{h(region_id)}" class="region" data-fragment="{h(fragment)}" data-refresh-on="{h(refresh_on)}"'
            f"{scope}>{body}</div>")


def _signed_in(who: Principal | None) -> str:
    """Who is viewing, and the way out; nothing when authentication is off."""
    if who is None or not who.authenticated:
        return ""
    return (f'<form class="who" method="post" action="/sign-out"><span>Signed in as <strong>{h(who.name)}</strong>'
            f' ({h(who.role)})</span> <button type="submit" class="btn">Sign out</button></form>')


def _layout(*, title: str, page: str, heading: str, body: str, lead: str = "", who: Principal | None = None) -> str:
    current = ' aria-current="page"'
    nav = "".join(f'<a href="{href}"{current if key == page else ""}>{label}</a>' for key, href, label in NAV)
    lead_html = f'<p class="lead">{lead}</p>' if lead else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{h(title)} · ab-autopromote</title>
<link rel="icon" href="{_static_url("favicon.svg")}" type="image/svg+xml">
<link rel="stylesheet" href="{_static_url("dashboard.css")}">
<script src="{_static_url("dashboard.js")}" defer></script>
</head>
<body data-page="{h(page)}">
<a class="skip" href="#main">Skip to content</a>
<header class="top">
<div class="top-inner">
<p class="brand">ab-autopromote</p>
<nav aria-label="Main">{nav}</nav>
<p class="live" id="live-status" data-state="connecting"><span class="live-dot" aria-hidden="true"></span>
<span class="live-text">Live updates: connecting…</span></p>
{_signed_in(who)}
</div>
</header>
<div class="page">
<details class="operator card" id="operator">
<summary>Operator token: <span id="token-state">not set</span></summary>
<form id="token-form" class="token-form" autocomplete="off">
<label for="api-token">API token for actions (operator role to promote or roll back; viewer role for dry-run
checks)</label>
<div class="token-row">
<input id="api-token" type="password" autocomplete="off" spellcheck="false" aria-describedby="token-hint">
<button type="submit" class="btn primary">Use token</button>
<button type="button" class="btn" id="token-forget">Forget token</button>
</div>
<p id="token-hint" class="hint">Kept in this browser tab's session storage only and sent in an Authorization
header; never put in a URL. Closing the tab forgets it. Signing in lets you view; actions need the token here,
because the sign-in cookie never authorises a change.</p>
</form>
</details>
<main id="main" tabindex="-1">
<h1>{heading}</h1>
{lead_html}
{body}
</main>
<aside class="card activity" aria-labelledby="activity-h">
<h2 id="activity-h">Live activity</h2>
<ol id="activity" class="activity-list"><li class="muted" data-placeholder="1">Nothing yet: evaluations, promotions
and rollbacks appear here as they happen.</li></ol>
</aside>
</div>
<div id="action-status" class="toast" hidden></div>
<div id="announcer" class="visually-hidden" role="status" aria-live="polite"></div>
<dialog id="confirm-dialog" aria-labelledby="confirm-title" aria-describedby="confirm-text">
<form method="dialog" id="confirm-form">
<h2 id="confirm-title">Confirm</h2>
<p id="confirm-text"></p>
<div id="reason-field" class="field" hidden>
<label for="confirm-reason">Reason for the rollback (required, recorded in the audit log)</label>
<textarea id="confirm-reason" rows="3" maxlength="1000"></textarea>
</div>
<div class="dialog-buttons">
<button type="submit" value="cancel" class="btn" formnovalidate id="confirm-cancel">Cancel</button>
<button type="submit" value="confirm" class="btn primary" id="confirm-ok">Confirm</button>
</div>
</form>
</dialog>
</body>
</html>
"""


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8",
                        headers=_PAGE_HEADERS)


REFRESH_ALL = "evaluation promotion rollback"
REFRESH_PROMOTIONS = "promotion rollback"

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
            response = _sign_in_response(request, status=401, next_path=request.path_qs,
                                         error=exc.message if _presented_credentials(request) else None,
                                         reload=_arrived_from_another_site(request))
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
    return (request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site"
            and request.headers.get("Sec-Fetch-Mode", "").lower() == "navigate"
            and SESSION_COOKIE not in request.cookies)


def _sign_in_response(request: web.Request, *, status: int, next_path: str, error: str | None,
                      reload: bool = False) -> web.Response:
    refresh = '<meta http-equiv="refresh" content="0">\n' if reload else ""
    message = (f'<p class="sign-in-error" role="alert" id="sign-in-error">{h(error)}</p>' if error else "")
    described = ' aria-describedby="sign-in-error"' if error else ""
    body = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{refresh}<title>Sign in · ab-autopromote</title>
<link rel="icon" href="{_static_url("favicon.svg")}" type="image/svg+xml">
<link rel="stylesheet" href="{_static_url("dashboard.css")}">
</head>
<body data-page="sign-in">
<header class="top"><div class="top-inner"><p class="brand">ab-autopromote</p></div></header>
<div class="page">
<main id="main" class="card sign-in">
<h1>Sign in</h1>
<p>The dashboard shows experiment results and the audit log: it needs an API token with the viewer or the operator
role (<code>autopromote token create --name NAME --role viewer</code>).</p>
{message}
<form method="post" action="/sign-in" class="token-form">
<input type="hidden" name="next" value="{h(_local_path(next_path))}">
<label for="sign-in-token">API token</label>
<div class="token-row">
<input id="sign-in-token" name="token" type="password" required autocomplete="off" spellcheck="false"
 autofocus aria-describedby="sign-in-hint"{described}>
<button type="submit" class="btn primary">Sign in</button>
</div>
<p id="sign-in-hint" class="hint">The server checks the token and keeps it in a cookie of this browser that scripts
cannot read and that is sent to this site only, until the browser is closed or you sign out. It lets you view;
operator actions still ask for a token.</p>
</form>
</main>
</div>
</body>
</html>
"""
    return _html(body, status=status)


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
        return _sign_in_response(request, status=403, next_path="/",
                                 error="This sign-in came from another site and was refused; sign in here.")
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
        return _sign_in_response(request, status=401, next_path=next_path,
                                 error="That token is unknown or was revoked. Check it and try again.")
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
@_viewer_page
async def overview_page(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    # The list as a whole changes on promotions, rollbacks and experiments it has not shown yet; each card
    # and the summary line refresh themselves on evaluations.
    body = _region("experiments", "/fragments/experiments", "promotion rollback evaluation:new",
                   await render_overview(ctx))
    return _html(_layout(title="Experiments", page="overview", heading="Experiments", body=body,
                         lead="Status, exposures, rates and lift with its interval per variant, and the current "
                              "decision with its reasons. Updates arrive live.", who=_who(request)))


@_viewer_data
async def overview_fragment(request: web.Request) -> web.Response:
    return _html(await render_overview(request.app[CTX]))


@_viewer_data
async def summary_fragment(request: web.Request) -> web.Response:
    return _html(await render_summary(request.app[CTX]))


def _fragment_or_gone(name: str, body: str | None) -> web.Response:
    if body is None:
        return _html(f'<p class="empty">The experiment <code>{h(name)}</code> no longer exists.</p>', status=404)
    return _html(body)


@_viewer_data
async def card_fragment(request: web.Request) -> web.Response:
    name = request.query.get("name", "")
    return _fragment_or_gone(name, await render_card(request.app[CTX], name))


@_viewer_page
async def experiment_page(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    name = request.match_info["name"]
    body = await render_experiment(ctx, name)
    if body is None:
        return _html(_layout(title="Not found", page="experiment", heading="No such experiment",
                             body=f'<p>There is no experiment named <code>{h(name)}</code>. '
                                  '<a href="/">Back to the experiments</a>.</p>', who=_who(request)), status=404)
    region = _region("experiment", _fragment_href(name), REFRESH_ALL, body, experiment=name)
    return _html(_layout(title=name, page="experiment", heading=f'Experiment <span class="name">{h(name)}</span>',
                         body=f'<p class="crumbs"><a href="/">← All experiments</a></p>{region}', who=_who(request)))


@_viewer_data
async def experiment_fragment(request: web.Request) -> web.Response:
    name = request.query.get("name", "")
    return _fragment_or_gone(name, await render_experiment(request.app[CTX], name))


@_viewer_page
async def promotions_page(request: web.Request) -> web.Response:
    days = _days(request)
    body = _region("promotions", f"/fragments/promotions?days={days}", REFRESH_PROMOTIONS,
                   await render_promotions(request.app[CTX], days))
    return _html(_layout(title="Promotions", page="promotions", heading="Promotions", body=body,
                         lead="Active and rolled-back promotions, the promotion statistics and the rollback rate.",
                         who=_who(request)))


@_viewer_data
async def promotions_fragment(request: web.Request) -> web.Response:
    return _html(await render_promotions(request.app[CTX], _days(request)))


# ---------------------------------------------------------------------------------------------- live events
def _public_event(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """The scalar fields of a bus event, strings cut short: enough for the page to know what to re-fetch."""
    if not isinstance(event.get("type"), str):
        return None
    out: dict[str, Any] = {}
    for key, value in event.items():
        if not isinstance(key, str):
            continue
        if isinstance(value, str):
            out[key] = value[:MAX_EVENT_FIELD]
        elif value is None or isinstance(value, bool | int):
            out[key] = value
        elif isinstance(value, float):
            out[key] = value if math.isfinite(value) else None
    return out


def _encode_event(event: Mapping[str, Any]) -> bytes | None:
    """One bus event as a server-sent event; the bus calls this once per event for every /events client."""
    public = _public_event(event)
    if public is None:
        return None
    return b"data: " + json.dumps(public, separators=(",", ":"), default=str).encode() + b"\n\n"


@_viewer_data
async def events_stream(request: web.Request) -> web.StreamResponse:
    """``text/event-stream`` of the EventBus: one ``data:`` JSON line per event, a comment as heartbeat."""
    ctx = request.app[CTX]
    transport = request.transport

    def drop() -> None:
        # The client stopped reading: a write to it may be waiting for buffer space that never comes. Aborting
        # the connection ends that wait and frees the buffer (abort, not close: close would wait to flush).
        if transport is not None:
            transport.abort()

    refusing = request.app[_REFUSING]
    try:
        client = ctx.events.open_stream(_encode_event, limit=ctx.settings.sse_max_clients, on_drop=drop)
    except TooManyClients as exc:
        if not refusing:  # once per spell of refusals, not once per retrying browser
            log.warning("dashboard.events.too_many_clients", limit=exc.limit,
                        message="live-update clients are refused with 503; raise AUTO_PROMOTION_SSE_MAX_CLIENTS "
                                "if this many dashboards are expected")
        refusing.add(True)
        raise ApiError(503, "too_many_clients",
                       f"{exc.limit} live-update streams are already open, the most AUTO_PROMOTION_SSE_MAX_CLIENTS "
                       f"allows; try again in {RETRY_AFTER_S} s, or raise the setting",
                       {"limit": exc.limit}, headers={"Retry-After": str(RETRY_AFTER_S)}).http_exception() from None
    refusing.clear()
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",  # a reverse proxy must not buffer the stream
        "X-Content-Type-Options": "nosniff",
    })
    streams = request.app[_STREAMS]
    streams.add(client)
    try:
        await response.prepare(request)
        await response.write(b"retry: 2000\n: connected\n\n")
        loop = asyncio.get_running_loop()
        heartbeat_at = loop.time() + HEARTBEAT_S
        while True:
            try:
                data = await asyncio.wait_for(client.get(), GONE_CHECK_S)
            except TimeoutError:
                # aiohttp does not cancel a handler whose client left: look, so that its slot comes free.
                if request.transport is None or request.transport.is_closing():
                    break
                if loop.time() >= heartbeat_at:
                    heartbeat_at = loop.time() + HEARTBEAT_S
                    await response.write(b": heartbeat\n\n")
                continue
            if data is None:  # shut down, or dropped for falling behind
                break
            await response.write(data)
    except (ConnectionResetError, ConnectionError):
        pass  # the browser went away; EventSource reconnects by itself when it comes back
    finally:
        streams.discard(client)
        ctx.events.close_stream(_encode_event, client)
    return response


async def _close_streams(app: web.Application) -> None:
    """On shutdown, end every open event stream so that the server does not wait for them."""
    for client in app[_STREAMS].copy():
        client.close()


def _bridge_event(payload: str) -> dict[str, Any] | None:
    """The bus event for one ab_promotion_events NOTIFY payload; None when it is not one we know."""
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    kind = _BRIDGE_EVENTS.get(str(data.get("event")))
    if kind is None:
        return None
    return {"type": kind, "experimentName": data.get("experiment_name"),
            "promotionId": str(data["promotion_id"]) if data.get("promotion_id") else None,
            "event": data.get("event"), "source": "database"}


@contextlib.asynccontextmanager
async def _listen_session(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own for LISTEN, opened with the pool's connection arguments.

    It is held for the application's lifetime, so it must not take one of the pooled connections the daemon
    sizes its evaluation concurrency by. asyncpg keeps those arguments in ``_connect_args``/``_connect_kwargs``
    (what its public ``set_connect_args`` sets); should a future asyncpg drop them, fall back to the pool.
    """
    args = getattr(pool, "_connect_args", None)
    kwargs = getattr(pool, "_connect_kwargs", None)
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        async with pool.acquire() as pooled:
            yield pooled
        return
    conn: asyncpg.Connection = await asyncpg.connect(*args, **kwargs)
    try:
        yield conn
    finally:
        try:
            await conn.close(timeout=2)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            conn.terminate()


async def _open_bridge(ctx: AppContext) -> tuple[contextlib.AsyncExitStack, asyncpg.Connection, asyncio.Event]:
    """A session LISTENing on EVENTS_CHANNEL that publishes each NOTIFY; the stack closes it."""
    lost = asyncio.Event()

    def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        if ctx.health.details.get(BRIDGED_FLAG):
            return  # the daemon took over; its copy is already on the bus
        event = _bridge_event(payload)
        if event is not None:
            ctx.events.publish(event)

    async with contextlib.AsyncExitStack() as stack:
        conn = await stack.enter_async_context(_listen_session(ctx.pool))
        conn.add_termination_listener(lambda _c: lost.set())
        await conn.add_listener(EVENTS_CHANNEL, on_notify)

        async def unlisten() -> None:
            if not conn.is_closed():
                with contextlib.suppress(*DB_ERRORS):
                    await conn.remove_listener(EVENTS_CHANNEL, on_notify)

        stack.push_async_callback(unlisten)
        return stack.pop_all(), conn, lost
    raise AssertionError("unreachable")  # pragma: no cover (mypy cannot see that the block returns)


async def _watch_bridge(conn: asyncpg.Connection, lost: asyncio.Event) -> None:
    """Return never; raise ConnectionError when the session ends, or a database error when it stops answering."""
    while not lost.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lost.wait(), HEARTBEAT_S)
            break
        await conn.fetchval("SELECT 1", timeout=5)  # a dead socket shows here, not in a silent LISTEN
    raise ConnectionError("the dashboard's LISTEN connection was closed")


async def run_events_bridge(ctx: AppContext) -> None:
    """Publish ab_promotion_events NOTIFYs to ctx.events until cancelled; a lost session is logged once and
    reopened under the shared retry policy (worker.retry)."""
    fault = FaultLog("dashboard.events_bridge")
    never = anyio.Event()  # cancelled by the application's cleanup, never stopped otherwise
    while True:
        session, conn, lost = await retrying(fault, never, lambda: _open_bridge(ctx))
        async with session:
            ctx.health.details[BRIDGE_STATE] = "listening"
            log.info("dashboard.events_bridge.listening", channel=EVENTS_CHANNEL)
            try:
                await _watch_bridge(conn, lost)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                fault.failed(exc)
        ctx.health.details[BRIDGE_STATE] = "reconnecting"


async def _events_bridge_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: run our own LISTEN bridge unless the daemon says it already bridges."""
    ctx = app[CTX]
    if ctx.health.details.get(BRIDGED_FLAG):
        ctx.health.details[BRIDGE_STATE] = "off: the daemon bridges events"
        yield
        return
    task = asyncio.create_task(run_events_bridge(ctx), name="dashboard.events_bridge")
    try:
        yield
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        ctx.health.details[BRIDGE_STATE] = "stopped"


# ------------------------------------------------------------------------------------------------- routes
def add_routes(app: web.Application) -> None:
    """Register the dashboard's pages, fragments, event stream, static files and LISTEN bridge."""
    app[_STREAMS] = set()
    app[_REFUSING] = set()
    app.router.add_get("/", overview_page, name="dashboard")
    app.router.add_get("/experiments/{name:.+}", experiment_page, name="dashboard_experiment")
    app.router.add_get("/promotions", promotions_page, name="dashboard_promotions")
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
    app.on_shutdown.append(_close_streams)
    app.cleanup_ctx.append(_events_bridge_ctx)


__all__ = ["BRIDGED_FLAG", "EVENTS_CHANNEL", "add_routes", "h", "render_card", "render_experiment",
           "render_overview", "render_promotions", "render_summary", "run_events_bridge"]
