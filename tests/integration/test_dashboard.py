"""The dashboard without a browser: pages and fragments over real HTTP, escaping, the event stream, the LISTEN
bridge (including a reconnect), shutdown with open streams, static files, and the SVG drawing."""

from __future__ import annotations

import asyncio
import html
import json
import re
import socket
import time
import tracemalloc
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from tests.browser.demo import (
    AA,
    BLOCKED,
    NASTY,
    OPERATOR_TOKEN,
    PROMOTED,
    ROLLED_BACK,
    VIEWER_TOKEN,
    WINNER,
    make_context,
    seed_demo,
    serve,
)
from tests.factories import create_experiment, record
from tests.fakes import evaluation_bus_event
from worker.config import ConfigError, load_settings
from worker.domain.events import BusEvent
from worker.events import EventBus
from worker.http import dashboard, svg
from worker.http.app import AppContext, create_app

STATIC_DIR = Path(dashboard.__file__).with_name("static")
SVG_NS = "{http://www.w3.org/2000/svg}"


def _viewer_session(**kwargs: Any) -> aiohttp.ClientSession:
    """A client that authenticates like a script: the viewer token as a bearer header."""
    return aiohttp.ClientSession(headers={"Authorization": f"Bearer {VIEWER_TOKEN}"}, **kwargs)


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str, Any]:
    async with session.get(url) as response:
        return response.status, await response.text(), response.headers


async def _wait_for(predicate: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met after {within} s")
        await asyncio.sleep(0.02)


async def _next_event(queue: asyncio.Queue[BusEvent]) -> BusEvent:
    async with asyncio.timeout(10):
        return await queue.get()


def _raw(event: dict[str, Any]) -> BusEvent:
    """An event the daemon never publishes (no type, extra or nested fields): the bus and the stream must cope."""
    return cast(BusEvent, event)


@pytest.fixture
async def demo(pool: asyncpg.Pool, conn: asyncpg.Connection) -> AsyncIterator[tuple[AppContext, str, dict[str, str]]]:
    ctx = make_context(pool)
    ids = await seed_demo(conn, ctx.engine)
    async with serve(ctx) as base:
        yield ctx, base, ids


# ----------------------------------------------------------------------------------------------- pages
async def test_overview_shows_each_experiment_with_its_figures_and_reasons(
    demo: tuple[AppContext, str, dict[str, str]],
) -> None:
    _, base, _ = demo
    async with _viewer_session() as s:
        status, body, headers = await _get(s, base + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    for name in (WINNER, AA, BLOCKED, PROMOTED, ROLLED_BACK):
        assert f'data-experiment="{name}"' in body
    assert body.count('<article class="card exp"') == 5
    assert body.count('data-fragment="/fragments/experiment-card?name=') == 5
    assert "17,500" in body and "10.00%" in body and "+12.0%" in body
    assert "safety check failed: Error Rate Check: Winner error rate: 7.00%" in body
    assert "no treatment beats control at 95% confidence" in body
    assert "✓</span> eligible" in body and "✗</span> blocked" in body
    assert '↩</span> <span class="visually-hidden">status: </span>rolled back' in body
    assert "5 experiment(s): 3 running, 1 promoted, 1 rolled back; 1 running and eligible." in body


async def test_pages_carry_a_strict_content_security_policy(demo: tuple[AppContext, str, dict[str, str]]) -> None:
    _, base, _ = demo
    async with _viewer_session() as s:
        for path in ("/", "/promotions", f"/experiments/{WINNER}", "/fragments/experiments"):
            status, body, headers = await _get(s, base + path)
            assert status == 200, path
            assert "script-src 'self'" in headers["Content-Security-Policy"]
            assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert headers["Cache-Control"] == "no-store"
            assert "<script>" not in body and " style=" not in body and "onclick" not in body.lower()


async def test_experiment_page_has_chart_checks_history_and_audit(
    demo: tuple[AppContext, str, dict[str, str]],
) -> None:
    _, base, ids = demo
    async with _viewer_session() as s:
        status, body, _ = await _get(s, base + f"/experiments/{ROLLED_BACK}")
    assert status == 200
    assert body.count('class="lift-line"') == 2  # the wide and the narrow drawing
    assert "95% confidence sequence" in body
    assert "promoted variant-b" in body and ">rolled back</text>" in body  # marks on the chart
    assert "Error Rate Check" in body and "passed with a warning" in body
    assert f'data-promotion-id="{ids[ROLLED_BACK]}"' in body
    assert "checkout errors up since the promotion" in body
    assert "<code>rolled_back</code>" in body and "<code>promoted</code>" in body
    assert "Chart data (8 kept evaluations)" in body


async def test_promotions_page_has_stats_chart_and_both_lists(demo: tuple[AppContext, str, dict[str, str]]) -> None:
    _, base, ids = demo
    async with _viewer_session() as s:
        status, body, _ = await _get(s, base + "/promotions")
        bad, _, _ = await _get(s, base + "/promotions?days=0")
        week_status, week, _ = await _get(s, base + "/fragments/promotions?days=7")
    assert status == 200 and bad == 400 and week_status == 200
    assert "<dt>Rollback rate</dt><dd>50.0%</dd>" in body
    assert "<dt>Promotions</dt><dd>2</dd>" in body
    assert "2 promotion(s) and 1 rollback(s)" in body
    assert body.count(f'<tr data-promotion-id="{ids[PROMOTED]}"') == 1
    assert f'data-action="rollback" data-experiment="{PROMOTED}" data-promotion-id="{ids[PROMOTED]}"' in body
    assert "Active promotions (1)" in body and "Rolled back (1)" in body
    assert week.startswith('<section class="card"') and "Last 7 days" in week and "<html" not in week


async def test_unknown_experiment_is_a_404_page(demo: tuple[AppContext, str, dict[str, str]]) -> None:
    _, base, _ = demo
    async with _viewer_session() as s:
        status, body, _ = await _get(s, base + "/experiments/" + quote("<nope>", safe=""))
        frag_status, frag, _ = await _get(s, base + "/fragments/experiment?name=%3Cnope%3E")
    assert status == 404 and "There is no experiment named <code>&lt;nope&gt;</code>" in body
    assert frag_status == 404 and "&lt;nope&gt;" in frag and "<nope>" not in frag


async def test_every_database_value_is_escaped(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    ctx = make_context(pool)
    await create_experiment(conn, NASTY, ["control", "<b>v</b>"])
    await conn.execute("UPDATE ab_experiments SET description = '<script>x()</script>' WHERE name = $1", NASTY)
    await record(conn, NASTY, "control", 3_000, 300)
    await record(conn, NASTY, "<b>v</b>", 3_000, 360)
    await ctx.engine.check_promotion_eligibility(NASTY)
    exp_id = await conn.fetchval("SELECT id FROM ab_experiments WHERE name = $1", NASTY)
    await conn.execute(
        "INSERT INTO experiment_promotions (experiment_id, experiment_name, promoted_variant_name, confidence,"
        " improvement, promoted_by, previous_weights) VALUES ($1, $2, '<b>v</b>', 97, 12, '<i>who</i>', '{}')",
        exp_id,
        NASTY,
    )
    await conn.execute(
        "INSERT INTO ab_promotion_audit_log (actor, action, experiment_name, details) "
        "VALUES ('<i>me</i>', '<u>act</u>', $1, '{\"reason\": \"<em>why</em>\"}')",
        NASTY,
    )
    async with serve(ctx) as base, _viewer_session() as s:
        pages = [
            await _get(s, base + "/"),
            await _get(s, base + "/experiments/" + quote(NASTY, safe="")),
            await _get(s, base + "/fragments/experiment?name=" + quote(NASTY, safe="")),
            await _get(s, base + "/promotions"),
        ]
    for status, body, _ in pages:
        assert status == 200
        for raw in ("<img", "<b>", "<i>", "<u>", "<em>", "<script>x", '</td>"', "onerror=alert(1)>"):
            assert raw not in body, raw
        assert "&lt;img src=x onerror=alert(1)&gt; &amp; &quot;quoted&quot; &#x27;name&#x27;" in body
    detail = pages[1][1]
    assert "&lt;script&gt;x()&lt;/script&gt;" in detail and "&lt;em&gt;why&lt;/em&gt;" in detail
    assert "Lift of &lt;b&gt;v&lt;/b&gt; over control" in detail  # inside the SVG title too
    assert "&lt;i&gt;who&lt;/i&gt;" in pages[3][1]


HOSTILE = "<script>alert(1)</script> <!channel> \"dq\" 'sq' &amp;"


async def test_a_hostile_name_is_escaped_by_the_templates_on_every_page(
    pool: asyncpg.Pool,
    conn: asyncpg.Connection,
) -> None:
    """Every page and fragment, including the 404s and the sign-in form, shows hostile values as text.

    The value is in the experiment and variant names, the description, a rolled-back and a rollback-requested
    promotion, the audit log and the sign-in form's ``next``: autoescape (with the environment's finalize) must
    escape each, whatever template it passes through.
    """
    ctx = make_context(pool)
    exp_id = await create_experiment(conn, HOSTILE, ["control", HOSTILE])
    await conn.execute("UPDATE ab_experiments SET description = $2 WHERE id = $1", exp_id, HOSTILE)
    await record(conn, HOSTILE, "control", 3_000, 300)
    await record(conn, HOSTILE, HOSTILE, 3_000, 360)
    await ctx.engine.check_promotion_eligibility(HOSTILE)
    await conn.execute(
        "INSERT INTO experiment_promotions (experiment_id, experiment_name, promoted_variant_name, confidence,"
        " improvement, promoted_by, previous_weights, promoted_at, rollback_at, rollback_reason, rolled_back_by)"
        " VALUES ($1, $2, $2, 97, 12, $2, '{}', now() - interval '2 days', now() - interval '1 day', $2, $2)",
        exp_id,
        HOSTILE,
    )
    await conn.execute(
        "INSERT INTO experiment_promotions (experiment_id, experiment_name, promoted_variant_name, confidence,"
        " improvement, promoted_by, previous_weights, rollback_requested_at, rollback_requested_by,"
        " rollback_request_reason) VALUES ($1, $2, $2, 97, 12, $2, '{}', now(), $2, $2)",
        exp_id,
        HOSTILE,
    )
    await conn.execute(
        "INSERT INTO ab_promotion_audit_log (actor, action, experiment_name, details) "
        "VALUES ($1, $1, $1, jsonb_build_object('reason', $1::text))",
        HOSTILE,
    )
    name = quote(HOSTILE, safe="")
    missing = quote(HOSTILE + " (gone)", safe="")
    viewer = [
        ("/", 200),
        (f"/experiments/{name}", 200),
        (f"/fragments/experiment?name={name}", 200),
        (f"/fragments/experiment-card?name={name}", 200),
        ("/fragments/experiments", 200),
        ("/promotions", 200),
        ("/fragments/promotions", 200),
        (f"/experiments/{missing}", 404),
        (f"/fragments/experiment?name={missing}", 404),
        (f"/fragments/experiment-card?name={missing}", 404),
    ]
    escaped = html.escape(HOSTILE, quote=True)
    async with serve(ctx) as base:
        async with _viewer_session() as s:
            pages = [(path, *await _get(s, base + path)) for path, _ in viewer]
        async with aiohttp.ClientSession() as anonymous:  # the sign-in form, its next= carrying the name
            pages.append(("sign-in", *await _get(anonymous, base + "/sign-in?next=/" + name)))
            pages.append(("401", *await _get(anonymous, base + f"/experiments/{name}")))
    assert [status for _, status, _, _ in pages] == [code for _, code in viewer] + [200, 401]
    for path, _, body, _ in pages:
        for raw in ("<script>alert", "<!channel>", '"dq"', "'sq'"):
            assert raw not in body, (path, raw)
        if path not in ("sign-in", "401"):
            assert escaped in body or html.escape(HOSTILE + " (gone)", quote=True) in body, path
    assert 'name="next" value="/' + html.escape(HOSTILE, quote=True) in pages[-2][2]
    detail = pages[1][2]
    assert f'<p class="description">{escaped}</p>' in detail  # the description
    # the audit row, the rolled-back promotion (by whom: why) and the requested rollback (by whom: why)
    assert f'data-label="Actor">{escaped}</td>' in detail and f"<code>{escaped}</code>" in detail
    assert detail.count(f"by {escaped}: {escaped}") == 2
    assert f'data-experiment="{escaped}"' in detail and f"Lift of {escaped} over control" in detail
    promotions = pages[5][2]
    assert f'data-label="Reason">{escaped}</td>' in promotions and f"by {escaped}</td>" in promotions


async def test_names_with_slashes_and_percent_signs_have_working_links(
    pool: asyncpg.Pool,
    conn: asyncpg.Connection,
) -> None:
    ctx = make_context(pool)
    name = "team/a%20b?x=1#frag"
    await create_experiment(conn, name)
    async with serve(ctx) as base, _viewer_session() as s:
        _, overview, _ = await _get(s, base + "/")
        href = re.search(r'<h2 id="x[0-9a-f]+-h"><a href="([^"]+)"', overview)
        assert href is not None
        assert href.group(1) == "/experiments/team%2Fa%2520b%3Fx%3D1%23frag"
        async with s.get(base + href.group(1)) as response:
            assert response.status == 200
            assert "team/a%20b?x=1#frag" in await response.text()


# ------------------------------------------------------------------------------------- authentication
DASHBOARD_GETS = (
    "/",
    f"/experiments/{WINNER}",
    "/promotions",
    "/fragments/experiments",
    "/fragments/experiments-summary",
    f"/fragments/experiment-card?name={WINNER}",
    f"/fragments/experiment?name={WINNER}",
    "/fragments/promotions",
    "/events",
)


async def test_anonymous_requests_are_refused_and_show_no_data(demo: tuple[AppContext, str, dict[str, str]]) -> None:
    _, base, _ = demo
    async with aiohttp.ClientSession() as s:
        for path in DASHBOARD_GETS:
            async with s.get(base + path, allow_redirects=False) as r:
                body = await r.text()
                assert r.status == 401, path
                assert r.headers["WWW-Authenticate"].startswith("Bearer"), path
                for shown in ("variant-b", "17,500", "<article", "eligible", "Error Rate Check"):
                    assert shown not in body, (path, shown)  # no figures, decisions or audit details leak
                if path.startswith(("/fragments/", "/events")):
                    error = json.loads(body)
                    assert error["success"] is False and error["error"]["code"] == "unauthorized", path
                    assert "/sign-in" in error["error"]["message"]
                else:  # a page: the sign-in form, which brings the browser back here
                    assert 'form method="post" action="/sign-in"' in body, path
                    assert f'name="next" value="{path}"' in body, path
        async with s.get(base + "/", headers={"Authorization": "Bearer not-a-token"}) as r:
            assert r.status == 401 and "unknown or revoked token" in await r.text()
        async with s.get(base + "/static/dashboard.css") as r:
            assert r.status == 200  # the sign-in page needs its style


def _browser_session() -> aiohttp.ClientSession:
    """A client that keeps cookies like a browser (also for 127.0.0.1, which aiohttp skips by default)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def _set_cookie(response: aiohttp.ClientResponse) -> str:
    values = response.headers.getall("Set-Cookie", [])
    assert len(values) == 1, values
    return values[0]


async def test_signing_in_sets_an_httponly_strict_cookie_that_lets_the_browser_view(
    demo: tuple[AppContext, str, dict[str, str]],
) -> None:
    ctx, base, _ = demo
    async with _browser_session() as s:
        async with s.get(base + "/sign-in?next=/promotions") as r:
            assert r.status == 200 and 'name="next" value="/promotions"' in await r.text()
        async with s.post(
            base + "/sign-in", data={"token": VIEWER_TOKEN, "next": "/promotions"}, allow_redirects=False
        ) as r:
            assert r.status == 303 and r.headers["Location"] == "/promotions"
            cookie = _set_cookie(r)
        attrs = [a.strip().lower() for a in cookie.split(";")]
        assert attrs[0].startswith(f"{dashboard.SESSION_COOKIE}=")
        assert "httponly" in attrs and "samesite=strict" in attrs and "path=/" in attrs
        assert "secure" not in attrs  # plain http: a Secure cookie would never come back
        status, page, _ = await _get(s, base + "/")
        assert status == 200 and "Signed in as <strong>watcher</strong> (viewer)" in page
        assert (await _get(s, base + f"/experiments/{WINNER}"))[0] == 200
        assert (await _get(s, base + "/fragments/experiments"))[0] == 200
        async with s.get(base + "/events") as stream:
            assert stream.status == 200
            assert (await stream.content.readline()).startswith(b"retry:")
        # Signing out forgets the cookie.
        async with s.post(base + "/sign-out", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/sign-in"
            assert "max-age=0" in _set_cookie(r).lower()
        assert (await _get(s, base + "/"))[0] == 401
    await _wait_for(lambda: ctx.events.client_count == 0)  # the stream's handler saw its client leave


async def test_sign_in_behind_https_marks_the_cookie_secure(demo: tuple[AppContext, str, dict[str, str]]) -> None:
    _, base, _ = demo
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            base + "/sign-in",
            data={"token": VIEWER_TOKEN},
            headers={"X-Forwarded-Proto": "https"},
            allow_redirects=False,
        ) as r,
    ):
        assert r.status == 303 and r.headers["Location"] == "/"
        assert "secure" in [a.strip().lower() for a in _set_cookie(r).split(";")]


async def test_sign_in_refuses_bad_tokens_foreign_forms_and_foreign_redirects(
    demo: tuple[AppContext, str, dict[str, str]],
) -> None:
    _, base, _ = demo
    async with aiohttp.ClientSession() as s:
        for data, status, message in (
            ({"token": "nope"}, 401, "unknown or was revoked"),
            ({"token": "  "}, 400, "Enter a token first"),
        ):
            async with s.post(base + "/sign-in", data=data, allow_redirects=False) as r:
                assert r.status == status and message in await r.text()
                assert "Set-Cookie" not in r.headers
        # A form on another site must not sign this browser in as someone else (login CSRF).
        for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
            async with s.post(
                base + "/sign-in", data={"token": VIEWER_TOKEN}, headers=headers, allow_redirects=False
            ) as r:
                assert r.status == 403 and "Set-Cookie" not in r.headers
        # After signing in, only a path on this site.
        for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"):
            async with s.post(
                base + "/sign-in", data={"token": VIEWER_TOKEN, "next": target}, allow_redirects=False
            ) as r:
                assert r.status == 303 and r.headers["Location"] == "/", target
        async with s.post(
            base + "/sign-in", data={"token": VIEWER_TOKEN, "next": f"/experiments/{WINNER}?a=1"}, allow_redirects=False
        ) as r:
            assert r.headers["Location"] == f"/experiments/{WINNER}?a=1"


async def test_a_revoked_token_ends_the_sign_in(pool: asyncpg.Pool) -> None:
    ctx = make_context(pool)
    jar = aiohttp.CookieJar(unsafe=True)
    async with serve(ctx) as base, aiohttp.ClientSession(cookie_jar=jar) as s:
        async with s.post(base + "/sign-in", data={"token": VIEWER_TOKEN}, allow_redirects=False) as r:
            assert r.status == 303
        assert (await _get(s, base + "/"))[0] == 200
    # The same cookie against a server whose configuration no longer has that token.
    revoked = make_context(pool, env={"AUTO_PROMOTION_API_TOKENS": ""})
    async with serve(revoked) as base2, aiohttp.ClientSession(cookie_jar=jar) as s:
        # cookies are per host, not per port: the jar sends it to the second server too
        status, body, headers = await _get(s, base2 + "/")
        assert status == 401 and "unknown or was revoked" in body
        assert "max-age=0" in headers["Set-Cookie"].lower()  # and the useless cookie is cleared
        async with s.get(base2 + "/fragments/experiments") as r:
            assert r.status == 401


async def test_the_sign_in_cookie_never_authorises_the_api(demo: tuple[AppContext, str, dict[str, str]]) -> None:
    _, base, _ = demo
    # Even an operator token, once in the cookie, changes nothing: writes need the bearer header (no CSRF).
    async with _browser_session() as s:
        async with s.post(base + "/sign-in", data={"token": OPERATOR_TOKEN}, allow_redirects=False) as r:
            assert r.status == 303
        assert (await _get(s, base + "/"))[0] == 200
        for method, path, body in (
            ("POST", "/api/experiments/auto-promote", {"action": "promote", "experimentName": WINNER}),
            ("POST", "/api/experiments/auto-promote", {"action": "check", "experimentName": WINNER}),
            ("GET", "/api/audit", None),
        ):
            async with s.request(method, base + path, json=body) as r:
                assert r.status == 401, path
                assert (await r.json())["error"]["code"] == "unauthorized"
        async with s.post(
            base + "/api/experiments/auto-promote",
            json={"action": "check", "experimentName": WINNER},
            headers={"Authorization": f"Bearer {VIEWER_TOKEN}"},
        ) as r:
            assert r.status == 200


async def test_with_authentication_disabled_the_dashboard_is_open(pool: asyncpg.Pool) -> None:
    ctx = make_context(pool, env={"AUTO_PROMOTION_API_AUTH": "disabled"})
    async with serve(ctx) as base, aiohttp.ClientSession() as s:
        status, page, _ = await _get(s, base + "/")
        assert status == 200 and "Signed in as" not in page
        async with s.get(base + "/sign-in?next=/promotions", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/promotions"
        async with s.get(base + "/events") as stream:
            assert stream.status == 200


# ---------------------------------------------------------------------------------------- event stream
async def _sse_events(response: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while len(events) < count:
        line = (await asyncio.wait_for(response.content.readline(), 10)).decode()
        assert line != "", "the stream ended early"
        if line.startswith("data: "):
            events.append(json.loads(line[6:]))
    return events


async def test_event_stream_forwards_bus_events_as_server_sent_events(
    pool: asyncpg.Pool,
) -> None:
    ctx = make_context(pool)
    async with serve(ctx) as base, _viewer_session() as s, s.get(base + "/events") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-store"
        assert (await response.content.readline()).startswith(b"retry:")
        await _wait_for(lambda: ctx.events.subscriber_count >= 1)
        ctx.events.publish(
            _raw(
                {
                    "type": "evaluation",
                    "experimentName": "a",
                    "eligible": True,
                    "confidence": 97.5,
                    "reasons": ["big", "list"],
                    "decision": {"nested": 1},
                    "nan": float("nan"),
                }
            )
        )
        ctx.events.publish(_raw({"no": "type"}))
        ctx.events.publish(_raw({"type": "promotion", "experimentName": "b" * 2000, "promotionId": "p1"}))
        first, second = await _sse_events(response, 2)
    assert first == {"type": "evaluation", "experimentName": "a", "eligible": True, "confidence": 97.5, "nan": None}
    assert second["type"] == "promotion" and len(second["experimentName"]) == dashboard.MAX_EVENT_FIELD


async def test_shutdown_ends_open_event_streams(pool: asyncpg.Pool) -> None:
    ctx = make_context(pool)
    runner = web.AppRunner(create_app(ctx), shutdown_timeout=60)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    async with _viewer_session() as s, s.get(f"http://{host}:{port}/events") as response:
        await response.content.readline()
        await _wait_for(lambda: ctx.events.subscriber_count >= 1)
        # Without the on_shutdown hook this would wait for the 60 s shutdown timeout (the guard fails first).
        await asyncio.wait_for(runner.cleanup(), 10)
        rest = await asyncio.wait_for(response.content.read(), 10)
    assert b"data:" not in rest
    assert ctx.events.subscriber_count == 0


async def _open_stream(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
    response = await session.get(url)
    assert response.status == 200, await response.text()
    assert (await asyncio.wait_for(response.content.readline(), 10)).startswith(b"retry:")
    return response


async def test_event_stream_clients_are_capped_with_a_json_503(pool: asyncpg.Pool) -> None:
    ctx = make_context(pool, env={"AUTO_PROMOTION_SSE_MAX_CLIENTS": "2"})
    async with serve(ctx) as base, _viewer_session() as s:
        first = await _open_stream(s, base + "/events")
        second = await _open_stream(s, base + "/events")
        with capture_logs() as logs:
            for _ in range(3):  # browsers retrying
                async with s.get(base + "/events") as third:
                    assert third.status == 503
                    assert third.headers["Content-Type"].startswith("application/json")
                    assert third.headers["Retry-After"] == str(dashboard.RETRY_AFTER_S)
                    body = await third.json()
        assert [e["event"] for e in logs].count("dashboard.events.too_many_clients") == 1  # not once per retry
        assert body["success"] is False and body["error"]["code"] == "too_many_clients"
        assert "AUTO_PROMOTION_SSE_MAX_CLIENTS" in body["error"]["message"]
        assert body["error"]["details"] == {"limit": 2}
        assert ctx.events.client_count == 2
        first.close()  # a slot comes free when a client leaves
        await _wait_for(lambda: ctx.events.client_count == 1)
        again = await _open_stream(s, base + "/events")
        ctx.events.publish(evaluation_bus_event("after"))
        assert (await _sse_events(again, 1))[0]["experimentName"] == "after"
        assert (await _sse_events(second, 1))[0]["experimentName"] == "after"
        again.close()
        second.close()


@pytest.mark.parametrize(
    ("value", "message"), [("0", "must be at least 1, got 0"), ("many", "expected a whole number, got 'many'")]
)
def test_the_client_cap_is_validated(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match="sseMaxClients") as caught:
        load_settings({"AUTO_PROMOTION_SSE_MAX_CLIENTS": value})
    assert message in str(caught.value)
    assert load_settings({}).sse_max_clients == 100


async def test_each_event_is_encoded_once_whatever_the_number_of_clients(
    pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encoded: list[dict[str, Any]] = []
    original = dashboard.sse._encode_event

    def counting(event: Any) -> bytes | None:
        encoded.append(dict(event))
        return original(event)

    monkeypatch.setattr(dashboard.sse, "_encode_event", counting)  # the stream looks it up there
    ctx = make_context(pool)
    async with serve(ctx) as base, _viewer_session() as s:
        clients = [await _open_stream(s, base + "/events") for _ in range(4)]
        await _wait_for(lambda: ctx.events.client_count == 4)
        for i in range(5):
            ctx.events.publish(evaluation_bus_event(f"e{i}", reasons=["not", "sent"]))
        received = [await _sse_events(client, 5) for client in clients]
        for client in clients:
            client.close()
    assert all([e["experimentName"] for e in events] == [f"e{i}" for i in range(5)] for events in received)
    assert len(encoded) == 5  # not 5 x 4
    assert [e["experimentName"] for e in encoded] == [f"e{i}" for i in range(5)]


async def test_a_client_that_stops_reading_is_dropped_and_memory_stays_bounded(pool: asyncpg.Pool) -> None:
    ctx = make_context(pool, env={"AUTO_PROMOTION_SSE_MAX_CLIENTS": "1"})
    async with serve(ctx) as base:
        host, port = base.removeprefix("http://").split(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fill up soon
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(
            f"GET /events HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {VIEWER_TOKEN}\r\n\r\n".encode()
        )
        async with asyncio.timeout(10):
            while b"retry:" not in await reader.readline():
                pass
        await _wait_for(lambda: ctx.events.client_count == 1)
        # From here on the client reads nothing. Each event is about 4 KiB on the wire.
        payload = {f"field{i}": str(i) * 480 for i in range(8)}
        tracemalloc.start()
        try:
            base_memory = tracemalloc.get_traced_memory()[0]
            published = 0
            deadline = time.monotonic() + 60
            while ctx.events.client_count and published < 20_000:
                assert time.monotonic() < deadline, "the client was never dropped"
                ctx.events.publish(_raw({"type": "evaluation", "experimentName": f"e{published}", **payload}))
                published += 1
                await asyncio.sleep(0)  # let the stream's writer run
            peak = tracemalloc.get_traced_memory()[1] - base_memory
        finally:
            tracemalloc.stop()
        assert ctx.events.client_count == 0, f"still subscribed after {published} events (~{published * 4} KiB)"
        assert ctx.events.dropped_clients == 1
        # Held at most: the client's queue (256 events, ~1 MiB) and one transport buffer (64 KiB), not the
        # ~{published * 4} KiB published to it.
        assert peak < 3 * 2**20, f"peak {peak} bytes after {published} events"
        # Its connection is closed (what the kernel had buffered arrives, then the end) ...
        async with asyncio.timeout(15):
            while await reader.read(65536):
                pass
        writer.close()
        # ... and its slot is free for a client that reads.
        async with _viewer_session() as s:
            healthy = await _open_stream(s, base + "/events")
            ctx.events.publish(evaluation_bus_event("next"))
            assert (await _sse_events(healthy, 1))[0]["experimentName"] == "next"
            healthy.close()
    print(f"dropped after {published} events of ~4 KiB; peak traced memory {peak / 2**20:.2f} MiB")


async def test_an_event_that_cannot_be_encoded_does_not_fail_its_publisher() -> None:
    bus = EventBus()

    def encode(event: Any) -> bytes:
        if event.get("bad"):
            raise ValueError("cannot encode")
        return b"data: ok\n\n"

    client = bus.open_stream(encode)
    bus.publish(_raw({"type": "evaluation", "bad": True}))  # the daemon's evaluation must not see this error
    bus.publish(_raw({"type": "evaluation"}))
    assert await asyncio.wait_for(client.get(), 5) == b"data: ok\n\n"
    bus.close_stream(encode, client)
    assert bus.client_count == 0 and await client.get() is None


# --------------------------------------------------------------------------------------- LISTEN bridge
async def test_bridge_publishes_promotion_events_made_in_sql(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    ctx = make_context(pool, publish_commits=False)
    exp_id = await create_experiment(conn, "sql-made", status="promoted")
    async with serve(ctx) as _, ctx.events.subscribe() as queue:
        await _wait_for(lambda: ctx.health.details.get(dashboard.BRIDGE_STATE) == "listening")
        assert pool.get_idle_size() == pool.get_size(), "the LISTEN session must not hold a pooled connection"
        pid = await conn.fetchval(
            "INSERT INTO experiment_promotions (experiment_id, experiment_name, promoted_variant_name, confidence,"
            " improvement, promoted_by, previous_weights) VALUES ($1, 'sql-made', 'variant-b', 97, 12, 'dba', '{}')"
            " RETURNING id",
            exp_id,
        )
        promoted = await _next_event(queue)
        await conn.execute("SELECT ab_request_rollback($1, 'looks wrong', 'dba')", pid)
        requested = await _next_event(queue)
    assert promoted == {
        "type": "promotion",
        "event": "promoted",
        "experimentName": "sql-made",
        "promotionId": str(pid),
        "source": "database",
    }
    assert requested["type"] == "rollback" and requested["event"] == "rollback_requested"


async def test_bridge_reconnects_after_its_connection_is_killed(
    pool: asyncpg.Pool,
    conn: asyncpg.Connection,
) -> None:
    ctx = make_context(pool, publish_commits=False)
    exp_id = await create_experiment(conn, "killed", status="promoted")
    listening = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND query LIKE 'LISTEN%ab_promotion_events%' AND pid <> pg_backend_pid()"
    )
    async with serve(ctx) as _, ctx.events.subscribe() as queue:
        await _wait_for(lambda: ctx.health.details.get(dashboard.BRIDGE_STATE) == "listening")
        first = await conn.fetchval(listening)
        assert first is not None
        await conn.execute("SELECT pg_terminate_backend($1)", first)
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            again = await conn.fetchval(listening)
            if again is not None and again != first and ctx.health.details.get(dashboard.BRIDGE_STATE) == "listening":
                break
            assert asyncio.get_running_loop().time() < deadline, "the bridge did not come back"
            await asyncio.sleep(0.05)
        await conn.execute(
            "INSERT INTO experiment_promotions (experiment_id, experiment_name, promoted_variant_name, confidence,"
            " improvement, promoted_by, previous_weights) VALUES ($1, 'killed', 'variant-b', 97, 12, 'dba', '{}')",
            exp_id,
        )
        event = await _next_event(queue)
    assert event["type"] == "promotion" and event["experimentName"] == "killed"


async def test_no_bridge_when_the_daemon_already_bridges(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    ctx = make_context(pool, publish_commits=False, events_bridged=True)
    exp_id = await create_experiment(conn, "bridged", status="promoted")
    async with serve(ctx) as _, ctx.events.subscribe() as queue:
        assert ctx.health.details[dashboard.BRIDGE_STATE].startswith("off")
        listeners = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' "
            "AND datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert listeners == 0
        await conn.execute(
            "INSERT INTO experiment_promotions (experiment_id, experiment_name, promoted_variant_name, confidence,"
            " improvement, promoted_by, previous_weights) VALUES ($1, 'bridged', 'variant-b', 97, 12, 'dba', '{}')",
            exp_id,
        )
        ctx.events.publish(_raw({"type": "marker"}))  # anything from a bridge would have been queued before this
        assert (await _next_event(queue)) == {"type": "marker"}


def test_bridge_ignores_unknown_payloads() -> None:
    assert dashboard._bridge_event("not json") is None
    assert dashboard._bridge_event("[1]") is None
    assert dashboard._bridge_event('{"event": "exploded"}') is None
    assert dashboard._bridge_event('{"event": "rolled_back", "promotion_id": "p", "experiment_name": "e"}') == {
        "type": "rollback",
        "event": "rolled_back",
        "experimentName": "e",
        "promotionId": "p",
        "source": "database",
    }


# --------------------------------------------------------------------------------------------- static
async def test_static_files_are_ours_and_cached_by_content_hash(pool: asyncpg.Pool) -> None:
    ctx = make_context(pool)
    async with serve(ctx) as base, _viewer_session() as s:
        _, page, _ = await _get(s, base + "/promotions")
        js_url = re.search(r'<script src="(/static/dashboard\.js\?v=[0-9a-f]{12})" defer>', page)
        assert js_url is not None
        async with s.get(base + js_url.group(1)) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/javascript")
            assert "immutable" in r.headers["Cache-Control"]
            etag = r.headers["ETag"]
        async with s.get(base + "/static/dashboard.js", headers={"If-None-Match": etag}) as r:
            assert r.status == 304
        assert (await _get(s, base + "/static/dashboard.css"))[2]["Content-Type"].startswith("text/css")
        assert (await _get(s, base + "/static/nope.js"))[0] == 404
        assert (await _get(s, base + "/static/..%2Fdashboard.py"))[0] == 404


def test_static_files_fetch_nothing_from_elsewhere() -> None:
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        urls = set(re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}[^\s\"')]*", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, (path.name, urls)
        assert "@import" not in text and "sourceMappingURL" not in text


def test_the_script_never_builds_html_from_data() -> None:
    script = (STATIC_DIR / "dashboard.js").read_text(encoding="utf-8")
    # The one innerHTML assignment is the same-origin fragment rendered (and escaped) by the server.
    assert re.findall(r"\.innerHTML\s*=\s*([^;]+);", script) == ["r.text"]
    assert "insertAdjacentHTML" not in script and "document.write" not in script and "eval(" not in script
    assert "localStorage" not in script  # the token lives in sessionStorage only


# ------------------------------------------------------------------------------------------------ svg
def _parse(markup: str) -> ET.Element:
    """The <svg> element of a chart (the legend after it is plain HTML)."""
    end = markup.index("</svg>") + len("</svg>")
    return ET.fromstring(markup[:end])


def _points(n: int, *, start: datetime | None = None) -> list[svg.LiftPoint]:
    t0 = start or datetime(2026, 1, 1, tzinfo=UTC)
    return [
        svg.LiftPoint(
            t0 + timedelta(hours=i), 0.1 + 0.001 * i, 0.1 - 1.0 / (i + 1), 0.1 + 1.0 / (i + 1), eligible=i == n - 1
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("compact", [False, True])
def test_lift_chart_is_valid_svg_with_band_line_zero_and_marks(compact: bool) -> None:
    points = _points(12)
    marks = [(points[-1].at + timedelta(hours=1), "promoted <b>"), (points[0].at - timedelta(days=1), "too early")]
    markup = svg.lift_chart(points, chart_id="c1", title="Lift of <b> over control", compact=compact, marks=marks)
    root = _parse(markup)
    assert root.get("role") == "img" and root.get("aria-labelledby") == "c1-title c1-desc"
    assert root.find(f"{SVG_NS}title").text == "Lift of <b> over control"  # type: ignore[union-attr]
    desc = root.find(f"{SVG_NS}desc").text  # type: ignore[union-attr]
    assert desc is not None
    assert "Latest lift +11.1% with interval" in desc and "promoted <b> at" in desc and "too early" not in desc
    assert root.find(f".//{SVG_NS}polygon") is not None
    assert root.find(f".//{SVG_NS}polyline[@class='lift-line']") is not None
    assert len(root.findall(f".//{SVG_NS}path")) == 1  # one eligible diamond
    texts = [t.text for t in root.iter(f"{SVG_NS}text")]
    assert "no difference" in texts and "0%" in texts and "promoted <b>" in texts
    assert "Wide early intervals are cut at the chart edge." in markup
    assert root.get("viewBox") == ("0 0 360 250" if compact else "0 0 960 320")


def test_lift_chart_copes_with_undefined_values() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    assert "No evaluations with a defined lift yet" in svg.lift_chart([], chart_id="e", title="t")
    only_none = [svg.LiftPoint(t0, None, None, None)]
    assert "chart-empty" in svg.lift_chart(only_none, chart_id="e", title="t")
    single = svg.lift_chart([svg.LiftPoint(t0, 0.05, None, float("inf"))], chart_id="s", title="t")
    root = _parse(single)
    assert root.find(f".//{SVG_NS}circle") is not None  # a lone point, with an error bar instead of a band
    assert "nan" not in single.lower() and "inf" not in single.lower()
    mixed = [
        svg.LiftPoint(t0 + timedelta(minutes=i), v, None if v is None else v - 0.1, None)
        for i, v in enumerate([0.02, None, float("nan"), 0.04])
    ]
    root = _parse(svg.lift_chart(mixed, chart_id="m", title="t"))
    assert len(root.find(f".//{SVG_NS}polyline[@class='lift-line']").get("points").split()) == 2  # type: ignore[union-attr]


def test_promotions_chart_draws_solid_and_hatched_bars() -> None:
    today = date(2026, 3, 31)
    days = [svg.DayCount(today - timedelta(days=29 - i), i % 7 == 0, int(i == 10) * 2) for i in range(30)]
    markup = svg.promotions_chart(days, chart_id="pd")
    root = _parse(markup)
    rects = root.findall(f".//{SVG_NS}g/{SVG_NS}rect")
    assert sum(1 for r in rects if r.get("fill") == svg.BAR) == 5
    assert sum(1 for r in rects if r.get("fill") == "url(#pd-hatch)") == 1
    desc = root.find(f"{SVG_NS}desc").text  # type: ignore[union-attr]
    assert desc.startswith("5 promotion(s) and 2 rollback(s) between 2026-03-02 and 2026-03-31.")  # type: ignore[union-attr]
    labels = [t.text for t in root.iter(f"{SVG_NS}text")]
    assert "31 Mar" in labels and "rollbacks (hatched)" in markup
    assert "No days to show." in svg.promotions_chart([], chart_id="x")
    _parse(svg.promotions_chart(days, chart_id="pd-n", compact=True))


def test_nice_ticks_and_percentages() -> None:
    assert svg.nice_ticks(0, 1, 5) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert svg.nice_ticks(-0.23, 0.41, 5) == [-0.2, 0.0, 0.2, 0.4]
    assert svg.nice_ticks(3, 3) == [3.0, 3.2, 3.4, 3.6, 3.8, 4.0]  # an empty range widens to one unit
    assert svg.nice_ticks(float("nan"), 1) == []
    assert svg.pct(0.1234) == "+12.3%" and svg.pct(-0.05, 2) == "-5.00%" and svg.pct(None) == "–"
    assert svg.pct(float("inf")) == "–" and svg.pct(0.5, 0, signed=False) == "50%"
    assert svg._tick_pct(0.0) == "0%" and svg._tick_pct(0.05) == "+5%" and svg._tick_pct(-0.025) == "-2.5%"


def test_interval_bar_is_decorative_and_clamped() -> None:
    lo, hi = svg.interval_scale([(0.12, 0.01, 0.23), (None, None, None), (0.05, -5.0, 5.0)])
    assert lo < 0 < 0.23 < hi < 1
    bar = svg.interval_bar(0.12, 0.01, 0.23, lo=lo, hi=hi)
    root = ET.fromstring(bar)
    assert root.get("aria-hidden") == "true"
    assert all(0 <= float(c.get("cx", 0)) <= 140 for c in root.iter(f"{SVG_NS}circle"))
    assert svg.interval_bar(None, None, None, lo=lo, hi=hi) == ""
    wide = ET.fromstring(svg.interval_bar(0.05, -5.0, 5.0, lo=lo, hi=hi))
    xs = [
        float(v)  # type: ignore[arg-type]
        for line in wide.iter(f"{SVG_NS}line")
        for v in (line.get("x1"), line.get("x2"))
    ]
    assert min(xs) >= 0 and max(xs) <= 140
