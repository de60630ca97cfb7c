"""The daemon's ops endpoints on its real HTTP server, and scan leadership across replicas."""

from __future__ import annotations

import aiohttp

from tests.daemon_support import db, promotions, running_daemon, seed_winner, wait_for
from worker.db.connect import create_pool
from worker.http.auth import generate_token, token_entry
from worker.scanner import LEADER_APPLICATION_NAME, AdvisoryLockLeadership, LeaseLeadership


async def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}", headers=headers) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def test_healthz_readyz_and_metrics(db_url: str) -> None:
    async with db(db_url) as conn, running_daemon(db_url, serve_http=True) as daemon:
        port = daemon.http_port
        assert port
        status, _, body = await _get(port, "/healthz")
        assert status == 200 and '"ok"' in body
        status, _, body = await _get(port, "/readyz")
        assert status == 200, body
        exp_id = await seed_winner(conn, "metered")
        await wait_for(lambda: promotions(conn, exp_id), what="the promotion")
        status, ctype, text = await _get(port, "/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        for name in (
            "autopromote_updates_folded_total",
            "autopromote_queue_backlog",
            "autopromote_evaluations_total",
            "autopromote_promotions_total",
            "autopromote_rollbacks_total",
            "autopromote_safety_check_failures_total",
            "autopromote_decision_latency_seconds_bucket",
            "autopromote_listener_reconnects_total",
            "autopromote_listener_connected",
            "autopromote_notifications_total",
        ):
            assert name in text, name
        assert 'autopromote_promotions_total{mode="daemon"}' in text

        # Not ready while the listener is down or the catch-up is running, nor once stopping.
        daemon.health.listener_connected = False
        status, _, body = await _get(port, "/readyz")
        assert status == 503 and '"listener": false' in body
        daemon.health.listener_connected = True
        daemon.health.catchup_done = False
        assert (await _get(port, "/readyz"))[0] == 503
        daemon.health.catchup_done = True
        assert (await _get(port, "/readyz"))[0] == 200


async def test_metrics_require_a_token_when_metrics_auth_is_on(db_url: str) -> None:
    token = generate_token()
    async with running_daemon(
        db_url,
        serve_http=True,
        AUTO_PROMOTION_METRICS_AUTH="true",
        AUTO_PROMOTION_API_TOKENS=token_entry("prom", "viewer", token),
    ) as daemon:
        assert daemon.http_port
        assert (await _get(daemon.http_port, "/metrics"))[0] == 401
        assert (await _get(daemon.http_port, "/metrics", {"Authorization": "Bearer ap_wrong"}))[0] == 401
        status, _, text = await _get(daemon.http_port, "/metrics", {"Authorization": f"Bearer {token}"})
        assert status == 200 and "autopromote_updates_folded_total" in text
        assert (await _get(daemon.http_port, "/healthz"))[0] == 200  # probes never need a token


async def test_scan_leadership_is_held_by_one_replica_and_moves_when_its_session_dies(db_url: str) -> None:
    dbname = db_url.rsplit("/", 1)[1]
    a, b = AdvisoryLockLeadership(db_url), AdvisoryLockLeadership(db_url)
    try:
        assert await a.acquire() is True
        assert await b.acquire() is False
        assert await a.acquire() is True  # confirming does not stack or drop it
        assert await b.acquire() is False
        async with db(db_url) as conn:
            pids = await conn.fetch(
                "SELECT pid FROM pg_locks l JOIN pg_stat_activity s USING (pid) "
                "WHERE l.locktype = 'advisory' AND s.application_name = $1 AND s.datname = $2",
                LEADER_APPLICATION_NAME,
                dbname,
            )
            assert len(pids) == 1
            await conn.execute("SELECT pg_terminate_backend($1)", pids[0]["pid"])
        await wait_for(b.acquire, what="the other replica to take over")
        assert await a.acquire() is False
    finally:
        await a.release()
        await b.release()


async def test_scan_lease_is_held_by_one_replica_and_taken_over_once_expired(db_url: str) -> None:
    pool = await create_pool(db_url, max_size=2)
    try:
        a = LeaseLeadership(pool, "replica-a", ttl=0.5)
        b = LeaseLeadership(pool, "replica-b", ttl=0.5)
        assert await a.acquire() is True
        assert await b.acquire() is False
        assert await a.acquire() is True  # renewed
        # a stops renewing (it died): b takes over once the lease expires.
        await wait_for(b.acquire, what="the lease to expire and move")
        assert await a.acquire() is False
        await b.release()
        assert await a.acquire() is True
    finally:
        await pool.close()


async def test_poll_only_replicas_share_the_scan_through_the_lease(db_url: str) -> None:
    env = {"AUTO_PROMOTION_POLL_ONLY": "true", "AUTO_PROMOTION_POLL_INTERVAL": "0.2"}
    scan = {"AUTO_PROMOTION_SCAN_INTERVAL": "1"}
    # mypy cannot tell that **env (all strings) never lands on the bool parameter serve_http.
    async with (
        running_daemon(db_url, config_env=scan, **env) as one,  # type: ignore[arg-type]
        running_daemon(db_url, config_env=scan, **env) as two,  # type: ignore[arg-type]
    ):
        await wait_for(lambda: _true(one.scanner.scans + two.scanner.scans >= 3), what="three scans")
        assert (one.scanner.scans == 0) != (two.scanner.scans == 0), (one.scanner.scans, two.scanner.scans)
        async with db(db_url) as conn:
            holder = await conn.fetchval("SELECT holder FROM ab_worker_leases WHERE name = 'scan'")
        assert holder in (one.identity, two.identity)


async def _true(value: bool) -> bool:
    return value


async def test_a_scan_runs_while_updates_are_evaluated_without_double_promotion(db_url: str) -> None:
    async with (
        db(db_url) as conn,
        running_daemon(
            db_url, config_env={"AUTO_PROMOTION_SCAN_INTERVAL": "1", "AUTO_PROMOTION_MAX_CONCURRENT": "100"}
        ) as d,
    ):
        ids = [await seed_winner(conn, f"race-{i}") for i in range(20)]
        await wait_for(lambda: _true(d.scanner.scans >= 1), within=30, what="a scan")
        for exp_id in ids:
            assert len(await promotions(conn, exp_id)) == 1
