"""The engine on a real database: every eligibility criterion, promote, dry-run, rollback, races, scan."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import anyio
import asyncpg
import pytest

from tests.daemon_support import wait_for
from tests.factories import create_experiment, record
from worker.config import EffectiveConfig, Settings, load_config, load_settings
from worker.engine import (
    AlreadyPromoted,
    AlreadyRolledBack,
    Engine,
    ExperimentNotFound,
    InvalidRequest,
    PromotionNotFound,
)

WINNER = {"control": (17_500, 1_750), "variant-b": (17_000, 1_904)}  # 10.0% vs 11.2%: about +12%


def _settings(**env: str) -> Settings:
    return load_settings({"SLACK_WEBHOOK_URL": "http://127.0.0.1:9/slack-hook", **env})


def _config(**overrides: Any) -> EffectiveConfig:
    return load_config(env={}, overrides=overrides)


@pytest.fixture
def engine(pool: asyncpg.Pool) -> Engine:
    return Engine(pool, _settings(), _config())


async def seed_winner(
    conn: asyncpg.Connection,
    name: str = "homepage-cta-test",
    *,
    errors: tuple[int, int] = (0, 0),
    latencies: tuple[list[float] | None, list[float] | None] = (None, None),
    **kwargs: Any,
) -> int:
    exp_id = await create_experiment(conn, name, list(WINNER), **kwargs)
    for i, (variant, (n, conv)) in enumerate(WINNER.items()):
        await record(conn, name, variant, n, conv, errors[i], latencies[i])
    return exp_id


async def test_homepage_cta_test_is_eligible_with_seed_shape(engine: Engine, conn: asyncpg.Connection) -> None:
    await seed_winner(conn)
    data = await engine.check_promotion_eligibility("homepage-cta-test")
    assert data["eligible"] is True, data["reasons"]
    assert data["reasons"] == []
    assert data["experimentName"] == "homepage-cta-test"
    assert data["winningVariant"]["variantName"] == "variant-b"
    assert data["winningVariant"]["sampleSize"] == 17_000
    assert data["winningVariant"]["successRate"] == pytest.approx(0.112)
    assert 95 <= data["confidence"] < 100
    assert data["improvement"] == pytest.approx(12.0, abs=0.01)
    assert {c["name"] for c in data["safetyChecks"]} == {
        "Error Rate Check",
        "Latency Check",
        "Traffic Balance Check",
        "Critical Alerts Check",
    }
    for check in data["safetyChecks"]:
        assert set(check) == {"name", "passed", "message", "severity"}
    latency = next(c for c in data["safetyChecks"] if c["name"] == "Latency Check")
    assert latency["passed"] is True and latency["severity"] == "warning" and "no latency samples" in latency["message"]
    assert data["method"] == "sequential"
    assert [v["name"] for v in data["variants"]] == ["control", "variant-b"]


async def test_check_sees_updates_no_daemon_has_folded(engine: Engine, conn: asyncpg.Connection) -> None:
    await seed_winner(conn)
    assert await conn.fetchval("SELECT count(*) FROM ab_metric_updates") == 2
    data = await engine.check_promotion_eligibility("homepage-cta-test")
    assert data["variants"][0]["exposures"] == 17_500
    assert await conn.fetchval("SELECT count(*) FROM ab_metric_updates") == 0


@pytest.mark.parametrize(
    ("setup", "overrides", "expected"),
    [
        ({"status": "paused"}, {}, "status is 'paused', not 'running'"),
        ({}, {"excludedExperiments": ["homepage-*"]}, "excluded by configuration (pattern 'homepage-*')"),
        ({}, {"thresholds": {"minSampleSize": 17_200}}, "sample size 17,000 < 17,200 for variant-b"),
        ({"started_hours_ago": 2.0}, {}, "runtime 2.0 h < 24 h minimum"),
        ({}, {"thresholds": {"minImprovement": 15}}, "improvement 12.00% < 15% minimum"),
        (
            {},
            {"thresholds": {"minConfidence": 99.9}},
            "no treatment beats control at 99.9% confidence (best: variant-b",
        ),
    ],
)
async def test_each_failing_criterion_yields_exactly_its_reason(
    pool: asyncpg.Pool, conn: asyncpg.Connection, setup: dict[str, Any], overrides: dict[str, Any], expected: str
) -> None:
    await seed_winner(conn, **setup)
    data = await Engine(pool, _settings(), _config(**overrides)).check_promotion_eligibility("homepage-cta-test")
    assert data["eligible"] is False
    assert len(data["reasons"]) == 1, data["reasons"]
    assert data["reasons"][0].startswith(expected), data["reasons"]


async def test_no_winner_still_reports_best_treatment_figures(engine: Engine, conn: asyncpg.Connection) -> None:
    await create_experiment(conn, "aa", ["control", "b", "c"])
    await record(conn, "aa", "control", 20_000, 2_000)
    await record(conn, "aa", "b", 20_000, 2_010)
    await record(conn, "aa", "c", 20_000, 2_030)
    data = await engine.check_promotion_eligibility("aa")
    assert data["eligible"] is False and data["winningVariant"] is None
    assert data["bestVariant"] == "c"
    assert data["improvement"] == pytest.approx(1.5, abs=0.01)
    assert 0 <= data["confidence"] < 95
    assert data["reasons"][0].startswith("no treatment beats control at 95% confidence (best: c at")


async def test_active_promotion_blocks(engine: Engine, conn: asyncpg.Connection) -> None:
    exp_id = await seed_winner(conn)
    await conn.execute(
        "INSERT INTO experiment_promotions (experiment_id, experiment_name, promoted_variant_name, confidence,"
        " improvement, promoted_by, previous_weights) VALUES ($1, 'homepage-cta-test', 'variant-b', 97, 12, 'x', '{}')",
        exp_id,
    )
    data = await engine.check_promotion_eligibility("homepage-cta-test")
    assert len(data["reasons"]) == 1 and data["reasons"][0].startswith("experiment already has an active promotion")


async def test_error_rate_check_blocks_with_numbers(engine: Engine, conn: asyncpg.Connection) -> None:
    await seed_winner(conn, errors=(170, 1_190))  # 0.97% vs 7.00%
    data = await engine.check_promotion_eligibility("homepage-cta-test")
    check = next(c for c in data["safetyChecks"] if c["name"] == "Error Rate Check")
    assert check["passed"] is False and check["severity"] == "critical"
    assert "7.00%" in check["message"] and "5.00% maximum" in check["message"]
    assert data["reasons"] == [f"safety check failed: Error Rate Check: {check['message']}"]


async def test_error_rate_significantly_above_control_blocks(engine: Engine, conn: asyncpg.Connection) -> None:
    await seed_winner(conn, errors=(35, 510))  # 0.2% vs 3.0%: under the maximum but clearly worse
    data = await engine.check_promotion_eligibility("homepage-cta-test")
    check = next(c for c in data["safetyChecks"] if c["name"] == "Error Rate Check")
    assert check["passed"] is False and "significantly above control" in check["message"]


async def test_latency_check_blocks_on_p95_degradation(engine: Engine, conn: asyncpg.Connection) -> None:
    control = [50.0 + (i % 100) for i in range(1000)]
    slow = [80.0 + 1.5 * (i % 100) for i in range(1000)]
    await seed_winner(conn, latencies=(control, slow))
    data = await engine.check_promotion_eligibility("homepage-cta-test")
    check = next(c for c in data["safetyChecks"] if c["name"] == "Latency Check")
    assert check["passed"] is False and "max +20%" in check["message"]
    assert len(data["reasons"]) == 1 and "Latency Check" in data["reasons"][0]


async def test_missing_latency_fails_when_configured(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    await seed_winner(conn)
    engine = Engine(pool, _settings(), _config(safetyChecks={"failOnMissingData": True}))
    data = await engine.check_promotion_eligibility("homepage-cta-test")
    check = next(c for c in data["safetyChecks"] if c["name"] == "Latency Check")
    assert check["passed"] is False and check["severity"] == "critical"
    assert data["eligible"] is False


async def test_sample_ratio_mismatch_blocks(engine: Engine, conn: asyncpg.Connection) -> None:
    await seed_winner(conn, weights=[0.7, 0.3])
    data = await engine.check_promotion_eligibility("homepage-cta-test")
    check = next(c for c in data["safetyChecks"] if c["name"] == "Traffic Balance Check")
    assert check["passed"] is False and "sample-ratio mismatch" in check["message"]
    assert len(data["reasons"]) == 1


async def test_traffic_to_a_weight_zero_variant_is_a_sample_ratio_mismatch(
    engine: Engine, conn: asyncpg.Connection
) -> None:
    # control and variant-b split 50/50 as weighted and variant-b wins; variant-c is switched off (weight 0)
    # yet receives traffic: the assignment is broken, so nothing the experiment measured can be trusted.
    await create_experiment(conn, "homepage-cta-test", ["control", "variant-b", "variant-c"], weights=[1, 1, 0])
    for variant, (n, conv) in WINNER.items():
        await record(conn, "homepage-cta-test", variant, n, conv)
    await record(conn, "homepage-cta-test", "variant-c", 300, 30)
    expected = "sample-ratio mismatch: exposures recorded for variant(s) with weight 0: variant-c (300)"
    single = await engine.check_promotion_eligibility("homepage-cta-test")
    check = next(c for c in single["safetyChecks"] if c["name"] == "Traffic Balance Check")
    assert check["passed"] is False and check["severity"] == "critical"
    assert check["message"].startswith(expected), check["message"]
    assert single["eligible"] is False and single["srm"]["flagged"] is True
    assert single["reasons"] == [f"safety check failed: Traffic Balance Check: {check['message']}"]
    # The scan's vectorised statistics say the same.
    scan = await engine.scan_and_promote_winners(dry_run=True)
    [row] = [r for r in scan["results"] if r["experimentName"] == "homepage-cta-test"]
    assert row["reasons"] == single["reasons"]


async def test_a_promoted_experiment_is_not_called_mismatched_by_its_own_promotion(
    engine: Engine, conn: asyncpg.Connection
) -> None:
    # The promotion sets control's weight to 0; control's earlier exposures are not traffic to a weight-0 variant.
    await seed_winner(conn)
    promoted = await engine.promote_winner("homepage-cta-test")
    assert promoted["success"], promoted
    data = await engine.check_promotion_eligibility("homepage-cta-test")
    check = next(c for c in data["safetyChecks"] if c["name"] == "Traffic Balance Check")
    assert check["message"] == f"not checked: the weights are those of promotion {promoted['promotionId']}"
    assert not any("Traffic Balance" in r for r in data["reasons"]), data["reasons"]


async def test_critical_alert_blocks_and_global_alert_too(engine: Engine, conn: asyncpg.Connection) -> None:
    await seed_winner(conn)
    alert_id = await conn.fetchval("SELECT ab_raise_alert(NULL, 'critical', 'payments are down')")
    data = await engine.check_promotion_eligibility("homepage-cta-test")
    check = next(c for c in data["safetyChecks"] if c["name"] == "Critical Alerts Check")
    assert check["passed"] is False and "payments are down" in check["message"]
    await conn.execute("UPDATE ab_alerts SET resolved_at = now() WHERE id = $1", alert_id)
    await conn.execute("SELECT ab_raise_alert('homepage-cta-test', 'warning', 'only a warning')")
    assert (await engine.check_promotion_eligibility("homepage-cta-test"))["eligible"] is True


async def test_unknown_experiment_and_hostile_names(engine: Engine) -> None:
    with pytest.raises(ExperimentNotFound):
        await engine.check_promotion_eligibility("x'; drop table ab_experiments;--")
    with pytest.raises(InvalidRequest):
        await engine.check_promotion_eligibility("")


async def test_promote_commits_everything_in_one_transaction(engine: Engine, conn: asyncpg.Connection) -> None:
    exp_id = await seed_winner(conn)
    data = await engine.promote_winner("homepage-cta-test", actor="alice")
    assert data["success"] is True
    assert set(data) >= {
        "success",
        "experimentName",
        "promotedVariantName",
        "confidence",
        "improvement",
        "promotionId",
        "notificationsQueued",
    }
    assert data["promotedVariantName"] == "variant-b"
    promo = await conn.fetchrow("SELECT * FROM experiment_promotions WHERE id = $1", uuid.UUID(data["promotionId"]))
    assert promo["promoted_by"] == "alice" and promo["rollback_at"] is None
    assert promo["previous_weights"] == {"control": 1.0, "variant-b": 1.0}
    assert promo["confidence"] == pytest.approx(data["confidence"])
    assert promo["baseline_stats"]["variant-b"]["exposures"] == 17_000
    weights = dict(
        await conn.fetch("SELECT name, traffic_weight::float8 FROM ab_variants WHERE experiment_id = $1", exp_id)
    )
    assert weights == {"control": 0.0, "variant-b": 100.0}
    assert await conn.fetchval("SELECT status FROM ab_experiments WHERE id = $1", exp_id) == "promoted"
    audit = await conn.fetchrow("SELECT * FROM ab_promotion_audit_log WHERE action = 'promoted'")
    assert audit["actor"] == "alice" and str(audit["promotion_id"]) == data["promotionId"]
    assert audit["details"]["decision"]["eligible"] is True
    assert audit["details"]["config"]["thresholds"]["minConfidence"] == 95.0
    outbox = await conn.fetch("SELECT * FROM notification_outbox WHERE promotion_id = $1", promo["id"])
    assert len(outbox) == data["notificationsQueued"] >= 1
    assert {r["event"] for r in outbox} == {"promotion.promoted"}


async def test_second_promote_is_a_clear_refusal(engine: Engine, conn: asyncpg.Connection) -> None:
    await seed_winner(conn)
    await engine.promote_winner("homepage-cta-test")
    with pytest.raises(AlreadyPromoted, match="already has an active promotion"):
        await engine.promote_winner("homepage-cta-test")


async def test_not_eligible_promote_changes_nothing_but_audit(engine: Engine, conn: asyncpg.Connection) -> None:
    await seed_winner(conn, started_hours_ago=1)
    data = await engine.promote_winner("homepage-cta-test")
    assert data["success"] is False and data["reasons"][0].startswith("runtime 1.0 h")
    assert await conn.fetchval("SELECT count(*) FROM experiment_promotions") == 0
    assert await conn.fetchval("SELECT status FROM ab_experiments") == "running"
    assert await conn.fetchval("SELECT count(*) FROM notification_outbox") == 0
    assert await conn.fetchval("SELECT action FROM ab_promotion_audit_log") == "promotion_refused"


async def test_dry_run_writes_only_its_audit_row(engine: Engine, conn: asyncpg.Connection) -> None:
    exp_id = await seed_winner(conn)
    data = await engine.promote_winner("homepage-cta-test", dry_run=True)
    assert data["success"] is True and data["dryRun"] is True and data["promotionId"] is None
    assert await conn.fetchval("SELECT count(*) FROM experiment_promotions") == 0
    assert await conn.fetchval("SELECT count(*) FROM notification_outbox") == 0
    assert await conn.fetchval("SELECT status FROM ab_experiments") == "running"
    weights = [
        r[0]
        for r in await conn.fetch("SELECT traffic_weight::float8 FROM ab_variants WHERE experiment_id = $1", exp_id)
    ]
    assert weights == [1.0, 1.0]
    audit = await conn.fetch("SELECT action, details FROM ab_promotion_audit_log")
    assert [a["action"] for a in audit] == ["dry_run"]
    assert audit[0]["details"]["wouldPromote"] is True


async def test_rollback_restores_previous_weights(engine: Engine, conn: asyncpg.Connection) -> None:
    exp_id = await seed_winner(conn, weights=[3.0, 1.0], config={"safetyChecks": {"checkTrafficBalance": False}})
    promoted = await engine.promote_winner("homepage-cta-test")
    assert promoted["success"], promoted
    with pytest.raises(InvalidRequest, match="reason"):
        await engine.rollback_promotion(promoted["promotionId"], "  ", actor="bob")
    result = await engine.rollback_promotion(promoted["promotionId"], "checkout errors", actor="bob")
    assert result["success"] is True and result["restoredWeights"] == {"control": 3.0, "variant-b": 1.0}
    weights = dict(
        await conn.fetch("SELECT name, traffic_weight::float8 FROM ab_variants WHERE experiment_id = $1", exp_id)
    )
    assert weights == {"control": 3.0, "variant-b": 1.0}
    promo = await conn.fetchrow("SELECT * FROM experiment_promotions")
    assert promo["rollback_reason"] == "checkout errors" and promo["rolled_back_by"] == "bob"
    assert promo["rollback_at"] is not None
    assert await conn.fetchval("SELECT status FROM ab_experiments") == "rolled_back"
    assert await conn.fetchval("SELECT count(*) FROM ab_promotion_audit_log WHERE action = 'rolled_back'") == 1
    queued = await conn.fetchval("SELECT count(*) FROM notification_outbox WHERE event = 'promotion.rolled_back'")
    assert queued == result["notificationsQueued"]
    with pytest.raises(AlreadyRolledBack, match="already rolled back"):
        await engine.rollback_promotion(promoted["promotionId"], "again", actor="bob")
    assert await conn.fetchval("SELECT count(*) FROM ab_promotion_audit_log WHERE action = 'rolled_back'") == 1
    # A rolled-back experiment is not promoted again until a person sets it running.
    again = await engine.check_promotion_eligibility("homepage-cta-test")
    assert again["eligible"] is False and again["reasons"][0] == "status is 'rolled_back', not 'running'"


async def test_rollback_of_unknown_or_malformed_promotion(engine: Engine) -> None:
    with pytest.raises(PromotionNotFound):
        await engine.rollback_promotion(str(uuid.uuid4()), "why")
    with pytest.raises(InvalidRequest, match="not a UUID"):
        await engine.rollback_promotion("not-a-uuid", "why")


async def test_racing_promotes_yield_one_promotion_and_one_refusal(db_url: str, conn: asyncpg.Connection) -> None:
    await seed_winner(conn)
    from worker.db.connect import create_pool

    outcomes: list[Any] = []
    pools = [await create_pool(db_url, min_size=1, max_size=2) for _ in range(2)]
    try:
        engines = [Engine(p, _settings(), _config()) for p in pools]

        async def attempt(e: Engine) -> None:
            try:
                outcomes.append(await e.promote_winner("homepage-cta-test"))
            except AlreadyPromoted as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as tg:
            for e in engines:
                tg.start_soon(attempt, e)
    finally:
        for p in pools:
            await p.close()
    successes = [o for o in outcomes if isinstance(o, dict) and o["success"]]
    refusals = [o for o in outcomes if isinstance(o, AlreadyPromoted)]
    assert len(successes) == 1 and len(refusals) == 1
    assert await conn.fetchval("SELECT count(*) FROM experiment_promotions") == 1
    assert await conn.fetchval("SELECT count(*) FROM ab_promotion_audit_log WHERE action = 'promoted'") == 1


async def test_promote_racing_rollback_leaves_a_consistent_state(db_url: str, conn: asyncpg.Connection) -> None:
    from worker.db.connect import create_pool

    await seed_winner(conn)
    pools = [await create_pool(db_url, min_size=1, max_size=2) for _ in range(2)]
    try:
        first = Engine(pools[0], _settings(), _config())
        promoted = await first.promote_winner("homepage-cta-test")
        await conn.execute("UPDATE ab_experiments SET status = 'running'")  # a person restarts it
        second = Engine(pools[1], _settings(), _config())
        results: list[Any] = []

        async def do_rollback() -> None:
            results.append(await first.rollback_promotion(promoted["promotionId"], "regression"))

        async def do_promote() -> None:
            try:
                results.append(await second.promote_winner("homepage-cta-test"))
            except AlreadyPromoted as exc:
                results.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(do_rollback)
            tg.start_soon(do_promote)
    finally:
        for p in pools:
            await p.close()
    active = await conn.fetch("SELECT * FROM experiment_promotions WHERE rollback_at IS NULL")
    status = await conn.fetchval("SELECT status FROM ab_experiments")
    weights = dict(await conn.fetch("SELECT name, traffic_weight::float8 FROM ab_variants"))
    if active:  # the promote ran after the rollback: a new, complete promotion
        assert len(active) == 1 and status == "promoted" and weights == {"control": 0.0, "variant-b": 100.0}
    else:  # the promote was refused: the rollback's state stands
        assert status == "rolled_back" and weights == {"control": 1.0, "variant-b": 1.0}
    assert await conn.fetchval("SELECT count(*) FROM experiment_promotions WHERE rollback_at IS NOT NULL") == 1


async def test_scan_over_1000_experiments_reports_every_one(engine: Engine, conn: asyncpg.Connection) -> None:
    await conn.execute(
        """WITH e AS (INSERT INTO ab_experiments (name, status, started_at)
                      SELECT 'exp-' || g, 'running', now() - interval '2 days' FROM generate_series(1, 999) g
                      RETURNING id)
           INSERT INTO ab_variants (experiment_id, name, is_control)
           SELECT id, v.name, v.ctl FROM e, (VALUES ('control', true), ('b', false)) AS v(name, ctl)"""
    )
    await conn.execute(
        """INSERT INTO ab_variant_stats (variant_id, experiment_id, exposures, conversions)
           SELECT v.id, v.experiment_id, 5000, CASE WHEN v.is_control THEN 500 ELSE 505 END FROM ab_variants v"""
    )
    # One experiment whose recorded statistics are impossible (conversions > exposures, written around the API).
    await conn.execute(
        "UPDATE ab_variant_stats SET conversions = 9999 WHERE variant_id = "
        "(SELECT v.id FROM ab_variants v JOIN ab_experiments e ON e.id = v.experiment_id "
        " WHERE e.name = 'exp-7' AND v.name = 'b')"
    )
    await seed_winner(conn)
    data = await engine.scan_and_promote_winners()
    assert data["scanned"] == 1000
    assert len(data["results"]) == 1000
    assert data["eligible"] == 1 and data["promoted"] == 1
    by_name = {r["experimentName"]: r for r in data["results"]}
    assert by_name["homepage-cta-test"]["promoted"] is True
    assert "statistics cannot be computed" in by_name["exp-7"]["reasons"][0]
    assert by_name["exp-8"]["eligible"] is False and by_name["exp-8"]["reasons"]


async def test_scan_honours_max_concurrent_promotions_and_dry_run(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    for i in range(3):
        await seed_winner(conn, f"winner-{i}")
    dry = await Engine(pool, _settings(), _config()).scan_and_promote_winners(dry_run=True)
    assert dry["eligible"] == 3 and dry["promoted"] == 0
    assert await conn.fetchval("SELECT count(*) FROM experiment_promotions") == 0
    engine = Engine(pool, _settings(), _config(maxConcurrentPromotions=2))
    data = await engine.scan_and_promote_winners()
    assert data["promoted"] == 2
    assert await conn.fetchval("SELECT count(*) FROM experiment_promotions") == 2
    # The third stays blocked while two promotions are inside their guard window.
    third = await engine.check_promotion_eligibility("winner-2")
    assert any(r.startswith("concurrency limit: 2 promotion(s) inside their guard window") for r in third["reasons"])


async def test_scan_vectorised_statistics_agree_with_a_single_check(engine: Engine, conn: asyncpg.Connection) -> None:
    # Over 50 experiments the scan computes statistics in a few numpy calls; each must equal the scalar path.
    await conn.execute(
        """WITH e AS (INSERT INTO ab_experiments (name, status, started_at)
                      SELECT 'vec-' || g, 'running', now() - interval '2 days' FROM generate_series(1, 80) g
                      RETURNING id)
           INSERT INTO ab_variants (experiment_id, name, is_control)
           SELECT id, v.name, v.ctl FROM e, (VALUES ('control', true), ('b', false), ('c', false)) AS v(name, ctl)"""
    )
    await conn.execute(
        """INSERT INTO ab_variant_stats (variant_id, experiment_id, exposures, conversions, errors)
           SELECT v.id, v.experiment_id, 3000 + (v.id * 37) % 4000, 300 + (v.id * 53) % 180, (v.id * 7) % 40
             FROM ab_variants v"""
    )
    data = await engine.scan_and_promote_winners(dry_run=True)
    by_name = {r["experimentName"]: r for r in data["results"]}
    for i in (1, 17, 42, 80):
        name = f"vec-{i}"
        single = await engine.check_promotion_eligibility(name)
        assert by_name[name]["confidence"] == single["confidence"]
        assert by_name[name]["improvement"] == single["improvement"]
        assert by_name[name]["reasons"] == single["reasons"]


async def test_a_repeated_scan_answers_the_same_and_stores_only_what_changed(
    engine: Engine, conn: asyncpg.Connection
) -> None:
    # A scan of experiments whose stored decisions already cover what it reads neither builds nor sends their
    # decisions again; its answer must not change for that, and a change must still be stored.
    await conn.execute(
        """WITH e AS (INSERT INTO ab_experiments (name, status, started_at)
                      SELECT 'same-' || g, 'running', now() - interval '2 days' FROM generate_series(1, 60) g
                      RETURNING id)
           INSERT INTO ab_variants (experiment_id, name, is_control)
           SELECT id, v.name, v.ctl FROM e, (VALUES ('control', true), ('b', false)) AS v(name, ctl)"""
    )
    await conn.execute(
        """INSERT INTO ab_variant_stats (variant_id, experiment_id, exposures, conversions)
           SELECT v.id, v.experiment_id, 5000, CASE WHEN v.is_control THEN 500 ELSE 510 END FROM ab_variants v"""
    )
    await seed_winner(conn)
    states = "SELECT experiment_id, evaluations, last_evaluated_at, decision FROM ab_experiment_state ORDER BY 1"
    first = await engine.scan_and_promote_winners(dry_run=True)
    stored = await conn.fetch(states)
    assert first["scanned"] == 61 and first["eligible"] == 1 and len(stored) == 61
    second = await engine.scan_and_promote_winners(dry_run=True)
    assert second == first
    assert await conn.fetch(states) == stored  # nothing written again
    await record(conn, "same-7", "b", 1000, 400)
    third = await engine.scan_and_promote_winners(dry_run=True)
    changed = {r["experiment_id"] for r, old in zip(await conn.fetch(states), stored, strict=True) if r != old}
    same_7 = await conn.fetchval("SELECT id FROM ab_experiments WHERE name = 'same-7'")
    assert changed == {same_7}
    by_name = {r["experimentName"]: r for r in third["results"]}
    assert by_name["same-7"] != {r["experimentName"]: r for r in first["results"]}["same-7"]
    assert [r for r in third["results"] if r["experimentName"] != "same-7"] == [
        r for r in first["results"] if r["experimentName"] != "same-7"
    ]


async def test_batch_evaluation_promotes_records_and_skips_in_one_pass(
    engine: Engine, conn: asyncpg.Connection, db_url: str
) -> None:
    # The daemon's batch: one eligible, one too young, one paused, one held by another transaction.
    from worker.db.fold import fold_pending_updates

    winner = await seed_winner(conn, "batch-winner")
    young = await seed_winner(conn, "batch-young", started_hours_ago=1)
    paused = await seed_winner(conn, "batch-paused", status="paused")
    held = await seed_winner(conn, "batch-held")
    await fold_pending_updates(conn)
    other = await asyncpg.connect(db_url)
    try:
        async with other.transaction():
            await other.execute("SELECT 1 FROM ab_experiments WHERE id = $1 FOR NO KEY UPDATE", held)
            out = {e.experiment_id: e for e in await engine.evaluate_many([winner, young, paused, held])}
    finally:
        await other.close()
    assert {k: e.action for k, e in out.items()} == {
        winner: "promoted",
        young: "evaluated",
        paused: "skipped",
        held: "busy",
    }
    promotion = out[winner].promotion
    assert promotion is not None and promotion["notificationsQueued"] >= 1
    promo = await conn.fetchrow("SELECT * FROM experiment_promotions WHERE experiment_id = $1", winner)
    assert str(promo["id"]) == promotion["promotionId"] and promo["promoted_variant_name"] == "variant-b"
    outbox = await conn.fetch("SELECT event, experiment_name, promotion_id, payload FROM notification_outbox")
    assert len(outbox) == promotion["notificationsQueued"]
    for row in outbox:
        assert (row["event"], row["experiment_name"], row["promotion_id"]) == (
            "promotion.promoted",
            "batch-winner",
            promo["id"],
        )
        assert row["payload"]["promotionId"] == promotion["promotionId"]
    states = {r["experiment_id"]: r for r in await conn.fetch("SELECT * FROM ab_experiment_state")}
    assert set(states) == {winner, young}
    assert states[winner]["eligible"] is True and states[young]["eligible"] is False
    assert states[young]["decision"]["reasons"][0].startswith("runtime 1.0 h")
    history = await conn.fetch("SELECT experiment_id, eligible FROM ab_evaluation_snapshots")
    assert {(r["experiment_id"], r["eligible"]) for r in history} == {(winner, True), (young, False)}
    assert await conn.fetchval("SELECT status FROM ab_experiments WHERE id = $1", held) == "running"


async def test_batch_that_fails_in_the_database_is_evaluated_one_by_one(
    engine: Engine, conn: asyncpg.Connection
) -> None:
    # One promotion the database refuses must not keep the rest of its batch from being evaluated and promoted.
    from worker.db.fold import fold_pending_updates

    bad = await seed_winner(conn, "refused-by-trigger")
    good = await seed_winner(conn, "fine-winner")
    young = await seed_winner(conn, "fine-young", started_hours_ago=1)
    await fold_pending_updates(conn)
    await conn.execute("""
        CREATE FUNCTION refuse_for_test() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.experiment_name = 'refused-by-trigger' THEN RAISE EXCEPTION 'refused for the test'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse BEFORE INSERT ON experiment_promotions FOR EACH ROW EXECUTE FUNCTION refuse_for_test();
    """)
    out = {e.experiment_id: e.action for e in await engine.evaluate_many([bad, good, young])}
    assert out == {bad: "failed", good: "promoted", young: "evaluated"}
    assert await conn.fetchval("SELECT experiment_id FROM experiment_promotions") == good
    failure = await conn.fetchrow("SELECT * FROM ab_promotion_audit_log WHERE action = 'promotion_failed'")
    assert failure["experiment_id"] == bad and "refused for the test" in failure["details"]["error"]
    assert await conn.fetchval("SELECT eligible FROM ab_experiment_state WHERE experiment_id = $1", young) is False


async def test_racing_promotions_of_different_experiments_respect_the_concurrency_limit(
    db_url: str, conn: asyncpg.Connection
) -> None:
    # maxConcurrentPromotions=1 and eight winners, each decided while no promotion exists yet, then released into
    # their promotion writes at the same moment: exactly one is written.
    from worker.db.connect import create_pool
    from worker.engine import PROMOTION_SLOT_LOCK

    names = [f"race-{i}" for i in range(8)]
    for name in names:
        await seed_winner(conn, name)
    pools = [await create_pool(db_url, min_size=2, max_size=2) for _ in range(4)]
    outcomes: list[dict[str, Any]] = []
    gate = await asyncpg.connect(db_url)
    try:
        engines = [Engine(p, _settings(), _config(maxConcurrentPromotions=1)) for p in pools]

        async def attempt(e: Engine, name: str) -> None:
            outcomes.append(await e.promote_winner(name))

        async def waiting_for_the_slot() -> bool:
            return bool(
                await conn.fetchval("SELECT count(*) = 8 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            )

        tx = gate.transaction()
        await tx.start()
        await gate.execute("SELECT pg_advisory_xact_lock($1)", PROMOTION_SLOT_LOCK)
        async with anyio.create_task_group() as tg:
            for i, name in enumerate(names):
                tg.start_soon(attempt, engines[i % len(engines)], name)
            await wait_for(waiting_for_the_slot, what="all eight promotions to wait for the promotion slot")
            await tx.commit()
    finally:
        await gate.close()
        for p in pools:
            await p.close()
    assert [o["success"] for o in outcomes].count(True) == 1
    assert await conn.fetchval("SELECT count(*) FROM experiment_promotions") == 1
    for refused in (o for o in outcomes if not o["success"]):
        assert any("concurrency limit" in r for r in refused["reasons"]), refused["reasons"]
    assert await conn.fetchval("SELECT count(*) FROM ab_experiments WHERE status = 'promoted'") == 1


async def test_only_transactions_that_store_decisions_alone_commit_relaxed(
    engine: Engine, conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    # A relaxed commit (synchronous_commit off for that transaction only) is for work whose loss in a database crash
    # loses nothing: a fold, or a transaction that only stores decisions. Never a promotion or an audit row.
    from worker.db.fold import fold_batch

    exp_id = await seed_winner(conn, "relaxed", started_hours_ago=1)  # not eligible: runtime too short
    async with pool.acquire() as c:
        await c.execute("SET synchronous_commit = on")  # whatever the server's default, for this session
        with pytest.raises(RuntimeError, match="transaction of its own"):
            async with c.transaction():
                await fold_batch(c, limit=100, relaxed=True)
        assert (await fold_batch(c, limit=100, relaxed=True)).updates == 2
        assert await c.fetchval("SHOW synchronous_commit") == "on"  # it ended with the fold's own transaction
        decision = (await engine.evaluate_many([exp_id]))[0].decision
        assert decision is not None and not decision.eligible
        async with c.transaction():
            await engine._record_evaluation(c, decision)
            assert await c.fetchval("SHOW synchronous_commit") == "on"
        async with c.transaction():
            await engine._record_evaluation(c, decision, relaxed=True)
            assert await c.fetchval("SHOW synchronous_commit") == "off"
        assert await c.fetchval("SHOW synchronous_commit") == "on"
        async with c.transaction():
            await engine._record_many(c, [decision], relaxed=True)
            assert await c.fetchval("SHOW synchronous_commit") == "off"
        async with c.transaction():
            await engine._record_many(c, [decision])
            assert await c.fetchval("SHOW synchronous_commit") == "on"
        # A decision that changes the stored eligibility always commits synchronously.
        flipped = dataclasses.replace(decision, eligible=True)
        async with c.transaction():
            await engine._record_evaluation(c, flipped, relaxed=True)
            assert await c.fetchval("SHOW synchronous_commit") == "on"
        async with c.transaction():
            await engine._record_many(c, [decision], relaxed=True)
            assert await c.fetchval("SHOW synchronous_commit") == "on"
    assert await conn.fetchval("SELECT evaluations FROM ab_experiment_state WHERE experiment_id = $1", exp_id) == 7


def test_transient_database_errors_are_told_apart_from_the_datas() -> None:
    from worker.engine import transient_db_error

    for transient in (
        asyncpg.exceptions.DeadlockDetectedError("x"),
        asyncpg.exceptions.SerializationError("x"),
        asyncpg.exceptions.ReadOnlySQLTransactionError("x"),
        asyncpg.exceptions.AdminShutdownError("x"),
        asyncpg.exceptions.QueryCanceledError("x"),
        asyncpg.exceptions.TooManyConnectionsError("x"),
        asyncpg.exceptions.LockNotAvailableError("x"),
    ):
        assert transient_db_error(transient), type(transient).__name__
    for own in (
        asyncpg.exceptions.RaiseError("x"),
        asyncpg.exceptions.UniqueViolationError("x"),
        asyncpg.exceptions.CheckViolationError("x"),
        ValueError("x"),
    ):
        assert not transient_db_error(own), type(own).__name__


async def test_batch_that_fails_transiently_is_retried_whole_and_reported_nowhere(
    engine: Engine, conn: asyncpg.Connection
) -> None:
    # A serialisation failure says nothing about the experiments: the batch propagates it (the evaluator retries
    # it a moment later) instead of splitting it up and reporting each experiment as failed.
    from worker.db.fold import fold_pending_updates

    winner = await seed_winner(conn, "transient-winner")
    young = await seed_winner(conn, "transient-young", started_hours_ago=1)
    await fold_pending_updates(conn)
    await conn.execute("""
        CREATE FUNCTION fail_transiently_for_test() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'try again' USING ERRCODE = '40001'; END $$;
        CREATE TRIGGER fail_transiently BEFORE INSERT ON experiment_promotions
            FOR EACH ROW EXECUTE FUNCTION fail_transiently_for_test();
    """)
    with pytest.raises(asyncpg.exceptions.SerializationError):
        await engine.evaluate_many([winner, young])
    assert await conn.fetchval("SELECT count(*) FROM ab_promotion_audit_log") == 0
    assert await conn.fetchval("SELECT count(*) FROM notification_outbox") == 0
    assert await conn.fetchval("SELECT count(*) FROM ab_experiment_state") == 0  # the batch rolled back whole
    await conn.execute("DROP TRIGGER fail_transiently ON experiment_promotions")
    out = {e.experiment_id: e.action for e in await engine.evaluate_many([winner, young])}
    assert out == {winner: "promoted", young: "evaluated"}
