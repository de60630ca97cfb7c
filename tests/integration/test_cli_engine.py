"""The engine commands as a user runs them: output, --json, exit codes."""

from __future__ import annotations

import json

import asyncpg

from tests.factories import create_experiment, record
from tests.support.cli import run_cli


async def _seed(conn: asyncpg.Connection) -> None:
    await create_experiment(conn, "homepage-cta-test", ["control", "variant-b"])
    await record(conn, "homepage-cta-test", "control", 17_500, 1_750)
    await record(conn, "homepage-cta-test", "variant-b", 17_000, 1_904)
    await create_experiment(conn, "too-young", ["control", "b"], started_hours_ago=1)
    await record(conn, "too-young", "control", 100, 10)


async def test_check_prints_a_table_and_exits_by_eligibility(conn: asyncpg.Connection, db_url: str) -> None:
    await _seed(conn)
    ok = run_cli("check", "homepage-cta-test", db_url=db_url)
    assert ok.returncode == 0, ok.stderr
    assert "ELIGIBLE" in ok.stdout and "variant-b" in ok.stdout and "Error Rate Check" in ok.stdout
    blocked = run_cli("check", "too-young", db_url=db_url)
    assert blocked.returncode == 1
    assert "runtime 1.0 h < 24 h minimum" in blocked.stdout
    data = json.loads(run_cli("check", "homepage-cta-test", "--json", db_url=db_url).stdout)
    assert data["eligible"] is True and data["winningVariant"]["variantName"] == "variant-b"


async def test_promote_and_rollback_round_trip(conn: asyncpg.Connection, db_url: str) -> None:
    await _seed(conn)
    dry = run_cli("promote", "homepage-cta-test", "--dry-run", "--json", db_url=db_url)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["dryRun"] is True
    assert await conn.fetchval("SELECT count(*) FROM experiment_promotions") == 0
    done = run_cli("promote", "homepage-cta-test", "--json", db_url=db_url)
    assert done.returncode == 0, done.stderr
    promotion_id = json.loads(done.stdout)["promotionId"]
    again = run_cli("promote", "homepage-cta-test", db_url=db_url)
    assert again.returncode == 1 and "already has an active promotion" in again.stderr
    no_reason = run_cli("rollback", promotion_id, "--reason", " ", db_url=db_url)
    assert no_reason.returncode == 2 and "reason" in no_reason.stderr
    back = run_cli("rollback", promotion_id, "--reason", "conversion drop in EU", db_url=db_url)
    assert back.returncode == 0, back.stderr
    assert "restored weights" in back.stdout
    twice = run_cli("rollback", promotion_id, "--reason", "again", db_url=db_url)
    assert twice.returncode == 1 and "already rolled back" in twice.stderr
    assert await conn.fetchval("SELECT rolled_back_by FROM experiment_promotions") == "cli"


async def test_scan_json_is_the_api_data(conn: asyncpg.Connection, db_url: str) -> None:
    await _seed(conn)
    result = run_cli("scan", "--dry-run", "--json", db_url=db_url)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) >= {"scanned", "eligible", "promoted", "results"}
    assert data["scanned"] == 2 and data["eligible"] == 1 and data["promoted"] == 0


async def test_usage_errors_and_unreachable_database(db_url: str) -> None:
    missing = run_cli("check", "no-such-experiment", db_url=db_url)
    assert missing.returncode == 2 and "no experiment named 'no-such-experiment'" in missing.stderr
    bad_id = run_cli("rollback", "not-a-uuid", "--reason", "x", db_url=db_url)
    assert bad_id.returncode == 2 and "not a UUID" in bad_id.stderr
    bad_env = run_cli("check", "x", db_url=db_url, env={"AUTO_PROMOTION_MIN_CONFIDENCE": "lots"})
    assert bad_env.returncode == 2 and "AUTO_PROMOTION_MIN_CONFIDENCE" in bad_env.stderr
    down = run_cli("check", "x", db_url="postgresql://postgres@127.0.0.1:1/nothing")
    assert down.returncode == 3 and "cannot connect" in down.stderr
    for r in (missing, bad_id, bad_env, down):
        assert "Traceback" not in r.stderr
