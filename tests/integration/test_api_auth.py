"""Authentication, roles and the rate limit of the HTTP API, on a real database through aiohttp's test server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from tests.support.api import (
    AUTO,
    DOC,
    OPERATOR_TOKEN,
    OTHER_OPERATOR_TOKEN,
    VIEWER_TOKEN,
    Api,
    make_context,
    seed_winner,
    serve_api,
)
from worker.config import ConfigError, load_settings
from worker.http.app import create_app
from worker.http.auth import (
    Authenticator,
    generate_token,
    hash_token,
    parse_tokens,
    require_metrics_access,
    require_role,
    token_entry,
)
from worker.http.ratelimit import SlidingWindowLimiter

READS = [
    "/api/experiments/auto-promote",
    "/api/experiments",
    "/api/experiments/homepage-cta-test",
    "/api/promotions",
    "/api/promotions/stats",
    "/api/audit",
]
PROMOTION = "00000000-0000-0000-0000-000000000001"
MUTATIONS: list[dict[str, Any]] = [
    {"action": "scan", "dryRun": True},
    {"action": "promote", "experimentName": "homepage-cta-test", "dryRun": True},
    {"action": "rollback", "promotionId": PROMOTION, "reason": "regression"},
]


@pytest.fixture
async def api(pool: asyncpg.Pool, conn: asyncpg.Connection) -> AsyncIterator[Api]:
    await seed_winner(conn)
    async with serve_api(pool) as client:
        yield client


# ------------------------------------------------------------------------------------------------- 401
@pytest.mark.parametrize("path", READS)
async def test_reads_without_a_token_are_401(api: Api, path: str) -> None:
    reply = await api.get(path, token=None)
    assert reply.status == 401 and reply.error["code"] == "unauthorized"
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "body", [*MUTATIONS, {"action": "check", "experimentName": "homepage-cta-test"}, {"not": "even valid"}]
)
async def test_actions_without_a_token_are_401_before_any_validation(
    api: Api, conn: asyncpg.Connection, body: dict[str, Any]
) -> None:
    reply = await api.post(body, token=None)
    assert reply.status == 401
    assert await conn.fetchval("SELECT count(*) FROM ab_promotion_audit_log") == 0


@pytest.mark.parametrize(
    ("header", "error"),
    [
        ("Bearer ap_not-a-known-token", 'error="invalid_token"'),
        (f"Bearer {VIEWER_TOKEN}x", 'error="invalid_token"'),
        (f"Basic {VIEWER_TOKEN}", 'error="invalid_request"'),
        ("Bearer", 'error="invalid_request"'),
        (f"Bearer {VIEWER_TOKEN} extra", 'error="invalid_request"'),
        (VIEWER_TOKEN, 'error="invalid_request"'),
    ],
)
async def test_unknown_tokens_and_malformed_headers_are_401(api: Api, header: str, error: str) -> None:
    reply = await api.get("/api/experiments", token=None, headers={"Authorization": header})
    assert reply.status == 401 and error in reply.headers["WWW-Authenticate"]
    assert VIEWER_TOKEN not in reply.body["error"]["message"]


async def test_the_bearer_scheme_is_case_insensitive(api: Api) -> None:
    reply = await api.get("/api/experiments", token=None, headers={"Authorization": f"bearer {VIEWER_TOKEN}"})
    assert reply.status == 200


# ------------------------------------------------------------------------------------------------- roles
@pytest.mark.parametrize("path", READS)
async def test_viewer_reads_everything(api: Api, path: str) -> None:
    reply = await api.get(path, token=VIEWER_TOKEN)
    assert reply.status == 200 and reply.body["success"] is True


async def test_viewer_may_check(api: Api) -> None:
    reply = await api.post({"action": "check", "experimentName": "homepage-cta-test"}, token=VIEWER_TOKEN)
    assert reply.status == 200 and reply.body["data"]["eligible"] is True


@pytest.mark.parametrize("body", [*MUTATIONS, {"action": "promote"}])
async def test_viewer_may_not_scan_promote_or_rollback(
    api: Api, conn: asyncpg.Connection, body: dict[str, Any]
) -> None:
    reply = await api.post(body, token=VIEWER_TOKEN)
    assert reply.status == 403 and reply.error["code"] == "forbidden"
    assert reply.error["details"] == {"requiredRole": "operator", "role": "viewer"}
    assert await conn.fetchval("SELECT count(*) FROM ab_promotion_audit_log") == 0


async def test_operator_may_do_everything(api: Api) -> None:
    for path in READS:
        assert (await api.get(path, token=OPERATOR_TOKEN)).status == 200
    statuses = [(await api.post(body, token=OPERATOR_TOKEN)).status for body in MUTATIONS]
    assert statuses == [200, 200, 404]  # the rollback's promotion does not exist: past auth, into the engine


async def test_each_token_name_is_the_actor(api: Api, conn: asyncpg.Connection) -> None:
    await api.post({"action": "scan", "dryRun": True}, token=OPERATOR_TOKEN)
    await api.post({"action": "scan", "dryRun": True}, token=OTHER_OPERATOR_TOKEN)
    actors = await conn.fetch("SELECT actor FROM ab_promotion_audit_log WHERE action = 'scan_requested' ORDER BY id")
    assert [a["actor"] for a in actors] == ["ops-bot", "release-manager"]


# ------------------------------------------------------------------------------------- auth configuration
async def test_auth_disabled_explicitly_lets_everyone_in_and_warns(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await seed_winner(conn)
    with capture_logs() as logs:
        async with serve_api(pool, env={"AUTO_PROMOTION_API_AUTH": "disabled"}) as api:
            anonymous = await api.post({"action": "scan", "dryRun": True}, token=None)
            named = await api.post({"action": "scan", "dryRun": True}, token=VIEWER_TOKEN)
            config = await api.get(AUTO, token=None)
    assert anonymous.status == 200 and named.status == 200
    assert [e["log_level"] for e in logs if e["event"] == "api.auth_disabled"] == ["warning"]
    actors = await conn.fetch("SELECT actor FROM ab_promotion_audit_log WHERE action = 'scan_requested' ORDER BY id")
    assert [a["actor"] for a in actors] == ["anonymous", "dashboard"]
    assert config.body["data"]["api"]["auth"] == "disabled" and config.body["data"]["warnings"]


async def test_auth_is_on_by_default_even_without_tokens(pool: asyncpg.Pool) -> None:
    with capture_logs() as logs:
        async with serve_api(pool, env={"AUTO_PROMOTION_API_TOKENS": ""}) as api:
            reply = await api.get("/api/experiments", token=OPERATOR_TOKEN)
    assert reply.status == 401
    assert any(e["event"] == "api.no_tokens" for e in logs)


async def test_malformed_token_entries_stop_the_start_listing_each_without_secrets(pool: asyncpg.Pool) -> None:
    good = hash_token("ap_good")
    raw = ",".join(
        [
            f"alice:admin:{good}",  # unknown role
            "bob:viewer:ap_pasted-the-token-itself",  # not a hash
            "carol",  # not three fields
            "",  # empty entry
            f"dave:viewer:{hash_token('ap_dave')}",
            f"dave:operator:{hash_token('ap_dave2')}",  # duplicate name
            f"erin:viewer:{hash_token('ap_dave')}",  # duplicate token
            f"no spaces:viewer:{hash_token('ap_x')}",  # bad name
        ]
    )
    with pytest.raises(ConfigError) as caught:
        create_app(make_context(pool, env={"AUTO_PROMOTION_API_TOKENS": raw}))
    errors = caught.value.errors
    assert len(errors) == 7, errors
    assert errors[0].startswith("AUTO_PROMOTION_API_TOKENS entry 1 (alice): role must be one of viewer, operator")
    assert "64 hexadecimal characters" in errors[1] and "ap_pasted" not in str(caught.value)
    assert "expected name:role:sha256hex" in errors[2] and "empty" in errors[3]
    assert "names must be unique" in errors[4] and "same token hash as 'dave'" in errors[5]
    assert errors[6].startswith("AUTO_PROMOTION_API_TOKENS entry 8: name must be")
    assert good not in str(caught.value)


def test_token_entries_tolerate_spaces_and_upper_case_hex() -> None:
    token = generate_token()
    entries = parse_tokens(f"  ci :operator: {hash_token(token).upper()} , dash:viewer:{hash_token('ap_d')}")
    assert [(e.name, e.role) for e in entries] == [("ci", "operator"), ("dash", "viewer")]
    assert Authenticator(entries).authenticate(f"Bearer {token}").name == "ci"
    assert parse_tokens("   ") == ()


def test_generated_tokens_round_trip_through_their_entry() -> None:
    token = generate_token()
    assert token.startswith("ap_") and len(token) > 40 and generate_token() != token
    entry = token_entry("ci", "operator", token)
    auth = Authenticator(parse_tokens(entry))
    principal = auth.authenticate(f"Bearer {token}")
    assert (principal.name, principal.role) == ("ci", "operator")
    with pytest.raises(ValueError, match="role must be one of"):
        token_entry("ci", "admin", token)
    with pytest.raises(ValueError, match="name must be"):
        token_entry("a:b", "viewer", token)


# ------------------------------------------------------------------------------ routes outside /api/
async def _metrics_like(request: web.Request) -> web.Response:
    await require_metrics_access(request)
    return web.Response(text="# metrics\n")


async def _operator_page(request: web.Request) -> web.Response:
    principal = await require_role(request, "operator")
    return web.Response(text=f"hello {principal.name}")


@pytest.mark.parametrize("protected", [False, True])
async def test_require_metrics_access_follows_the_setting(pool: asyncpg.Pool, protected: bool) -> None:
    env = {"AUTO_PROMOTION_METRICS_AUTH": "true" if protected else "false"}
    routes = [web.get("/metrics-test", _metrics_like), web.get("/operator-test", _operator_page)]
    async with serve_api(pool, env=env, extra_routes=routes) as api:
        async with api.client.get("/metrics-test") as resp:
            assert resp.status == (401 if protected else 200)
            if protected:
                body = await resp.json()
                assert body["error"]["code"] == "unauthorized" and "WWW-Authenticate" in resp.headers
        async with api.client.get("/metrics-test", headers={"Authorization": f"Bearer {VIEWER_TOKEN}"}) as resp:
            assert resp.status == 200
        async with api.client.get("/operator-test", headers={"Authorization": f"Bearer {VIEWER_TOKEN}"}) as resp:
            assert resp.status == 403 and (await resp.json())["error"]["details"]["requiredRole"] == "operator"
        async with api.client.get("/operator-test", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as resp:
            assert resp.status == 200 and await resp.text() == "hello ops-bot"


async def test_the_full_application_serves_the_api_and_documents_it(pool: asyncpg.Pool) -> None:
    async with serve_api(pool, full_app=True) as api:
        reply = await api.get("/api/experiments")
        assert reply.status == 200
        routes = {
            (r.method.lower(), r.resource.canonical)
            for r in api.app.router.routes()
            if r.resource is not None and r.resource.canonical.startswith("/api/") and r.method != "HEAD"
        }
        documented = {(m, p) for p, ops in DOC["paths"].items() for m in ops}
        assert routes == documented


# -------------------------------------------------------------------------------------------- rate limit
async def test_rate_limit_per_token_counts_scan_promote_rollback_and_dry_runs(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await seed_winner(conn)
    async with serve_api(pool, env={"AUTO_PROMOTION_RATE_LIMIT": "3"}) as api:
        remaining = []
        for body in MUTATIONS:
            reply = await api.post(body)
            remaining.append(reply.headers["X-RateLimit-Remaining"])
        assert remaining == ["2", "1", "0"]
        limited = await api.post({"action": "scan", "dryRun": True})
        assert limited.status == 429 and limited.error["code"] == "rate_limited"
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert limited.error["details"]["limit"] == 3
        for body in MUTATIONS:
            assert (await api.post(body)).status == 429
        # check is not limited, reads are not limited, and another token has its own budget
        assert (await api.post({"action": "check", "experimentName": "homepage-cta-test"})).status == 200
        assert (await api.get("/api/audit", token=OPERATOR_TOKEN)).status == 200
        assert (await api.post({"action": "scan", "dryRun": True}, token=OTHER_OPERATOR_TOKEN)).status == 200
        # invalid requests are refused before the limiter and never reach the engine
        assert (await api.post({"action": "promote"})).status == 400
    scans = await conn.fetchval("SELECT count(*) FROM ab_promotion_audit_log WHERE action = 'scan_requested'")
    assert scans == 2  # one from ops-bot before the limit, one from release-manager


def test_sliding_window_holds_over_any_60_seconds() -> None:
    now = [1000.0]
    limiter = SlidingWindowLimiter(3, clock=lambda: now[0])
    for t in (0.0, 10.0, 20.0):
        now[0] = 1000.0 + t
        assert limiter.hit("a").allowed
    now[0] = 1059.0
    refused = limiter.hit("a")
    assert not refused.allowed and refused.retry_after == pytest.approx(1.0) and refused.retry_after_header == "1"
    assert limiter.hit("b").allowed  # keys are independent
    now[0] = 1060.0  # the call at t=0 has left the window
    assert limiter.hit("a").allowed
    assert not limiter.hit("a").allowed
    now[0] = 1069.5
    refused = limiter.hit("a")
    assert refused.retry_after == pytest.approx(0.5) and refused.retry_after_header == "1"


def test_idle_keys_are_forgotten() -> None:
    now = [0.0]
    limiter = SlidingWindowLimiter(1, clock=lambda: now[0])
    for i in range(100):
        limiter.hit(f"token-{i}")
    now[0] = 120.0
    limiter.hit("fresh")
    assert len(limiter._calls) <= 2


def test_settings_reject_a_zero_rate_limit() -> None:
    with pytest.raises(ConfigError, match="rateLimitPerMinute: must be between 1"):
        load_settings({"AUTO_PROMOTION_RATE_LIMIT": "0"})


def test_principal_lookup_checks_every_entry() -> None:
    tokens = [generate_token() for _ in range(5)]
    auth = Authenticator(parse_tokens(",".join(token_entry(f"t{i}", "viewer", t) for i, t in enumerate(tokens))))
    assert [auth.authenticate(f"Bearer {t}").name for t in tokens] == [f"t{i}" for i in range(5)]
