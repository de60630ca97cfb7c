"""The per-experiment ``config`` is the last layer on every path, and a request can only make it safer.

The rule (worker.config.with_experiment_overrides): defaults <- preset <- environment <- request <- experiment,
later wins; where a request and the experiment's own config both set a safety setting, the safer of the two
holds. So an experiment's ``dryRun: true``, ``enabled: false`` or stricter thresholds are never lifted, whichever
entry point evaluates it: the daemon, the leader's scan, the CLI, the API (and the dashboard's buttons, which call
the API), the guard.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from tests.daemon_support import running_daemon, wait_for
from tests.factories import create_experiment, record
from tests.support.api import serve_api
from tests.support.cli import run_cli
from worker.config import ConfigError, load_config, load_settings, with_experiment_overrides, with_request_overrides
from worker.engine import Engine

WINNER = {"control": (17_500, 1_750), "variant-b": (17_000, 1_904)}  # 10.0% vs 11.2%: about +12%, eligible

DRY = {"dryRun": True}
OFF = {"enabled": False}
STRICT = {"thresholds": {"minSampleSize": 50_000}}  # the winner has 17,000 exposures: never eligible
SAFE_CONFIGS = [
    pytest.param(DRY, id="dryRun"),
    pytest.param(OFF, id="disabled"),
    pytest.param(STRICT, id="stricter-threshold"),
]


async def seed_winner(conn: asyncpg.Connection, name: str, config: dict[str, Any] | None = None) -> int:
    exp_id = await create_experiment(conn, name, list(WINNER), config=config)
    for variant, (n, conv) in WINNER.items():
        await record(conn, name, variant, n, conv)
    return exp_id


async def promotions_of(conn: asyncpg.Connection, name: str) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM experiment_promotions p JOIN ab_experiments e ON e.id = p.experiment_id "
        "WHERE e.name = $1",
        name,
    )
    return count


async def weights_of(conn: asyncpg.Connection, name: str) -> dict[str, float]:
    rows = await conn.fetch(
        "SELECT v.name, v.traffic_weight::float8 AS w FROM ab_variants v "
        "JOIN ab_experiments e ON e.id = v.experiment_id WHERE e.name = $1",
        name,
    )
    return {r["name"]: r["w"] for r in rows}


def _settings() -> Any:
    return load_settings({"SLACK_WEBHOOK_URL": "http://127.0.0.1:9/slack-hook"})


# ------------------------------------------------------------------------------------------ the one function
def test_experiment_values_win_over_preset_and_environment() -> None:
    base = load_config(preset="conservative", env={"AUTO_PROMOTION_MIN_CONFIDENCE": "99.5"})
    cfg = with_experiment_overrides(base, {"thresholds": {"minConfidence": 90, "minSampleSize": 100}})
    # The documented layering: the experiment's owner may relax the thresholds the preset and environment set.
    assert cfg.thresholds.min_confidence == 90 and cfg.thresholds.min_sample_size == 100


@pytest.mark.parametrize(
    ("env", "experiment", "expected"),
    [
        ({"AUTO_PROMOTION_DRY_RUN": "true"}, {"dryRun": False}, {"dry_run": True}),
        ({"AUTO_PROMOTION_ENABLED": "false"}, {"enabled": True}, {"enabled": False}),
        ({"AUTO_PROMOTION_DRY_RUN": "false"}, {"dryRun": True}, {"dry_run": True}),
    ],
)
def test_the_environments_dry_run_and_enabled_are_kill_switches_no_experiment_lifts(
    env: dict[str, str], experiment: dict[str, Any], expected: dict[str, Any]
) -> None:
    cfg = with_experiment_overrides(load_config(env=env), experiment)
    for key, value in expected.items():
        assert getattr(cfg, key) == value, key


def test_a_request_cannot_lift_the_environments_kill_switches_either() -> None:
    env = {"AUTO_PROMOTION_DRY_RUN": "true", "AUTO_PROMOTION_ENABLED": "false"}
    lifted = {"dryRun": False, "enabled": True}
    for base in (load_config(env=env, overrides=lifted), with_request_overrides(load_config(env=env), lifted)):
        assert base.config.dry_run is True and base.config.enabled is False
        assert base.sources["dryRun"].startswith("env:") and base.sources["enabled"].startswith("env:")
        cfg = with_experiment_overrides(base, {"dryRun": False, "enabled": True})
        assert cfg.dry_run is True and cfg.enabled is False
    # Making it safer still is fine, and is the request's.
    safer = load_config(env={"AUTO_PROMOTION_DRY_RUN": "false"}, overrides={"dryRun": True})
    assert safer.config.dry_run is True and safer.sources["dryRun"] == "request"


@pytest.mark.parametrize(
    ("request_layer", "experiment", "expected"),
    [
        ({"dryRun": False}, {"dryRun": True}, {"dry_run": True}),
        ({"dryRun": True}, {"dryRun": False}, {"dry_run": True}),
        ({"enabled": True}, {"enabled": False}, {"enabled": False}),
        ({"enabled": False, "dryRun": True}, {"enabled": True}, {"enabled": False}),
        ({"thresholds": {"minConfidence": 90}}, {"thresholds": {"minConfidence": 99}}, {"min_confidence": 99}),
        ({"thresholds": {"minConfidence": 99.9}}, {"thresholds": {"minConfidence": 99}}, {"min_confidence": 99.9}),
        ({"thresholds": {"minSampleSize": 10}}, {"thresholds": {"minSampleSize": 5000}}, {"min_sample_size": 5000}),
        ({"safetyChecks": {"maxErrorRate": 0.5}}, {"safetyChecks": {"maxErrorRate": 0.01}}, {"max_error_rate": 0.01}),
        (
            {"safetyChecks": {"maxErrorRate": 0.001}},
            {"safetyChecks": {"maxErrorRate": 0.01}},
            {"max_error_rate": 0.001},
        ),
        (
            {"safetyChecks": {"checkCriticalAlerts": False}},
            {"safetyChecks": {"checkCriticalAlerts": True}},
            {"check_critical_alerts": True},
        ),
        ({"excludedExperiments": ["a-*"]}, {"excludedExperiments": ["b"]}, {"excluded_experiments": ("a-*", "b")}),
        ({"guard": {"autoRollback": False}}, {"guard": {"autoRollback": True}}, {"auto_rollback": True}),
    ],
)
def test_a_request_can_make_the_experiments_settings_safer_never_less_safe(
    request_layer: dict[str, Any], experiment: dict[str, Any], expected: dict[str, Any]
) -> None:
    cfg = with_experiment_overrides(load_config(env={}, overrides=request_layer), experiment)
    flat = {
        **cfg.model_dump(),
        **cfg.thresholds.model_dump(),
        **cfg.safety_checks.model_dump(),
        **cfg.guard.model_dump(),
    }
    for key, value in expected.items():
        assert flat[key] == value, key


def test_an_explicit_dry_run_argument_is_a_request_value_too() -> None:
    base = with_request_overrides(load_config(env={}), {"dryRun": False})
    assert base.sources["dryRun"] == "request"
    assert with_experiment_overrides(base, DRY).dry_run is True
    assert (
        with_experiment_overrides(
            with_request_overrides(load_config(env={}), {"dryRun": True}), {"dryRun": False}
        ).dry_run
        is True
    )


def test_an_invalid_experiment_value_is_reported_even_where_the_request_is_stricter() -> None:
    base = load_config(env={}, overrides={"thresholds": {"minConfidence": 99}})
    with pytest.raises(ConfigError) as caught:
        with_experiment_overrides(base, {"thresholds": {"minConfidence": True}})
    assert any("thresholds.minConfidence" in e for e in caught.value.errors)


# ------------------------------------------------------------------------------------------ daemon and scan
@pytest.mark.parametrize("own", SAFE_CONFIGS)
async def test_the_daemon_and_the_leaders_scan_honour_the_experiments_own_config(
    db_url: str, conn: asyncpg.Connection, own: dict[str, Any]
) -> None:
    await seed_winner(conn, "guarded", own)
    await seed_winner(conn, "plain")
    async with running_daemon(db_url, config_env={"AUTO_PROMOTION_SCAN_INTERVAL": "1"}) as daemon:
        await wait_for(lambda: promotions_of(conn, "plain"), what="the plain experiment's promotion")
        start = daemon.scanner.scans

        async def scanned_twice() -> bool:
            return daemon.scanner.scans >= start + 2

        await wait_for(scanned_twice, what="two reconciliation scans")
    assert await promotions_of(conn, "guarded") == 0
    assert await weights_of(conn, "guarded") == {"control": 1.0, "variant-b": 1.0}
    assert await conn.fetchval("SELECT status FROM ab_experiments WHERE name = 'guarded'") == "running"


@pytest.mark.parametrize("own", SAFE_CONFIGS)
async def test_the_engines_scan_under_a_request_that_says_dry_run_false(
    pool: asyncpg.Pool, conn: asyncpg.Connection, own: dict[str, Any]
) -> None:
    await seed_winner(conn, "guarded", own)
    engine = Engine(pool, _settings(), load_config(env={}))
    result = await engine.scan_and_promote_winners(dry_run=False, actor="ops")
    assert result["promoted"] == 0
    assert await promotions_of(conn, "guarded") == 0
    if own is DRY:
        [item] = result["results"]
        assert item["eligible"] is True and item["dryRun"] is True and item["promoted"] is False


# ------------------------------------------------------------------------------------------------------ CLI
async def test_cli_scan_and_promote_never_promote_a_dry_run_experiment(conn: asyncpg.Connection, db_url: str) -> None:
    await seed_winner(conn, "dry-exp", DRY)
    scan = run_cli("scan", "--json", db_url=db_url)
    assert scan.returncode == 0, scan.stderr
    data = json.loads(scan.stdout)
    assert data["promoted"] == 0 and data["results"][0]["dryRun"] is True
    promote = run_cli("promote", "dry-exp", "--json", db_url=db_url)
    assert promote.returncode == 0, promote.stderr
    assert json.loads(promote.stdout)["dryRun"] is True
    assert await promotions_of(conn, "dry-exp") == 0


async def test_cli_dry_run_holds_over_an_experiment_that_says_dry_run_false(
    conn: asyncpg.Connection, db_url: str
) -> None:
    await seed_winner(conn, "eager", {"dryRun": False})
    for args in (("promote", "eager"), ("scan",)):
        result = run_cli(*args, "--dry-run", "--json", db_url=db_url)
        assert result.returncode == 0, result.stderr
    assert await promotions_of(conn, "eager") == 0


async def test_cli_check_uses_the_experiments_stricter_threshold(conn: asyncpg.Connection, db_url: str) -> None:
    await seed_winner(conn, "strict", STRICT)
    result = run_cli("check", "strict", "--json", db_url=db_url, env={"AUTO_PROMOTION_MIN_SAMPLE_SIZE": "100"})
    assert result.returncode == 1
    assert any("50,000" in r for r in json.loads(result.stdout)["reasons"])


# ------------------------------------------------------------------------------------------------------ API
@pytest.mark.parametrize("own", SAFE_CONFIGS)
@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"action": "promote", "experimentName": "guarded", "dryRun": False}, id="promote-dryRun-false"),
        pytest.param(
            {"action": "promote", "experimentName": "guarded", "config": {"dryRun": False, "enabled": True}},
            id="promote-config",
        ),
        pytest.param({"action": "scan"}, id="scan"),
        pytest.param({"action": "scan", "dryRun": False}, id="scan-dryRun-false"),
    ],
)
async def test_api_requests_cannot_lift_the_experiments_own_config(
    pool: asyncpg.Pool, conn: asyncpg.Connection, own: dict[str, Any], body: dict[str, Any]
) -> None:
    await seed_winner(conn, "guarded", own)
    async with serve_api(pool) as api:
        reply = await api.post(body)
    assert reply.status == 200, reply.body
    assert await promotions_of(conn, "guarded") == 0
    data = reply.body["data"]
    if body["action"] == "promote":
        assert data["promotionId"] is None
        assert data["dryRun"] is (own is not STRICT)
    else:
        assert data["promoted"] == 0


async def test_api_request_thresholds_can_be_stricter_than_the_experiments(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await seed_winner(conn, "relaxed", {"thresholds": {"minConfidence": 90}})
    async with serve_api(pool) as api:
        check = await api.post(
            {"action": "check", "experimentName": "relaxed", "config": {"thresholds": {"minConfidence": 99.99}}}
        )
        assert check.body["data"]["eligible"] is False
        assert any("99.99" in r for r in check.body["data"]["reasons"])
        promote = await api.post(
            {"action": "promote", "experimentName": "relaxed", "config": {"thresholds": {"minConfidence": 99.99}}}
        )
        assert promote.body["data"]["success"] is False
    assert await promotions_of(conn, "relaxed") == 0


async def test_api_check_keeps_the_experiments_stricter_threshold(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    await seed_winner(conn, "strict", STRICT)
    async with serve_api(pool) as api:
        reply = await api.post(
            {"action": "check", "experimentName": "strict", "config": {"thresholds": {"minSampleSize": 10}}}
        )
    assert reply.body["data"]["eligible"] is False
    assert any("50,000" in r for r in reply.body["data"]["reasons"])


async def test_api_dry_run_holds_over_an_experiment_that_says_dry_run_false(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await seed_winner(conn, "eager", {"dryRun": False, "enabled": True})
    async with serve_api(pool) as api:
        promote = await api.post({"action": "promote", "experimentName": "eager", "dryRun": True})
        scan = await api.post({"action": "scan", "config": {"enabled": False}})
    assert promote.body["data"]["dryRun"] is True
    assert scan.body["data"]["promoted"] == 0
    assert await promotions_of(conn, "eager") == 0


# ---------------------------------------------------------------------------------------------- dashboard
async def test_the_dashboards_promote_button_honours_the_experiments_dry_run(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """The button posts exactly this body (worker/http/dashboard/static/dashboard.js) to the full application."""
    await seed_winner(conn, "dry-exp", DRY)
    async with serve_api(pool, full_app=True) as api:
        reply = await api.post({"action": "promote", "experimentName": "dry-exp"})
    assert reply.status == 200 and reply.body["data"]["dryRun"] is True
    assert await promotions_of(conn, "dry-exp") == 0


# -------------------------------------------------------------------------------------------------- guard
async def test_the_guard_judges_by_the_experiments_own_stricter_limit(db_url: str, conn: asyncpg.Connection) -> None:
    exp_id = await seed_winner(conn, "picky", {"safetyChecks": {"maxErrorRate": 0.01}})
    async with running_daemon(db_url):
        promo_id = await wait_for(
            lambda: conn.fetchval("SELECT id FROM experiment_promotions WHERE experiment_id = $1", exp_id),
            what="the promotion",
        )
        await record(conn, "picky", "variant-b", 300, 30, 9)  # 3% errors: within the server's 5%, not within 1%
        await wait_for(
            lambda: conn.fetchval("SELECT rollback_at IS NOT NULL FROM experiment_promotions WHERE id = $1", promo_id),
            what="the guard's rollback",
        )
    reason = await conn.fetchval("SELECT rollback_reason FROM experiment_promotions WHERE id = $1", promo_id)
    assert "above the 1.00% maximum" in reason
