"""The engine split by operation (worker/services): the one place that orders promote_write's parameters, a
rollback that changes nothing answered as a value, and the notification payloads built by worker.services.effects."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from tests.integration.test_engine import _config, _settings, seed_winner
from worker.db.sql import Q
from worker.db.store import PROMOTION_SLOT_LOCK, HistoryRows, OutboxRows, PromotionWrite, Seen
from worker.domain.guard_rules import GuardBreach, VariantTotals, WatchedPromotion
from worker.domain.results import RollbackRefused
from worker.engine import Engine
from worker.services.effects import GUARD_ACTOR, breach_payload, payload


def _write() -> PromotionWrite:
    """A PromotionWrite whose every field is a distinct value, so each parameter's position is checked."""
    return PromotionWrite(
        experiment_id=101,
        experiment_name="exp-name",
        variant="winner",
        control_variant="ctl",
        confidence=0.97,
        improvement=12.5,
        method="sequential",
        actor="actor-x",
        previous_weights={"ctl": 50.0, "winner": 50.0},
        baseline={"ctl": {"exposures": 1}},
        guard_seconds=3600.0,
        decision={"eligible": True},
        audit_details={"dryRun": False},
        max_concurrent=7,
        promotion_id=uuid.UUID(int=42),
        outbox=OutboxRows(["slack"], [5], ["ref"], ["label"], ["trigger"], "", "high", True),
        history=HistoryRows(["winner"], [900], [1000], [0.1], [0.05], [0.15], [0.97], 1000),
        seen=Seen(version=33, snapshot="10:20:"),
    )


def test_promotion_write_gives_every_parameter_of_the_statement_once_in_its_place() -> None:
    params = _write().params()
    used = {int(n) for n in re.findall(r"\$(\d+)", Q["promote_write"])}
    assert used == set(range(1, len(params) + 1)), "promote_write and PromotionWrite.params disagree on the count"
    by_position = dict(enumerate(params, start=1))
    # The positions the statement's header documents.
    assert by_position[1] == 101 and by_position[2] == "exp-name" and by_position[3] == "winner"
    assert by_position[4] == "ctl" and by_position[8] == "actor-x" and by_position[11] == 3600.0
    assert by_position[12] == {"eligible": True} and by_position[13] == {"dryRun": False}
    assert by_position[14] == 7 and by_position[15] == uuid.UUID(int=42)
    assert by_position[16] == ["slack"] and by_position[20] == ["trigger"]
    assert by_position[21] == "{}"  # an empty body is still valid JSON for $21::text::jsonb
    assert by_position[22] == "high" and by_position[23] is True
    assert by_position[24] == ["winner"] and by_position[30] == [0.97] and by_position[31] == 1000
    assert by_position[32] == PROMOTION_SLOT_LOCK and by_position[33] == "10:20:" and by_position[34] == 33


async def test_a_rollback_that_changes_nothing_is_a_value_not_an_exception(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    engine = Engine(pool, _settings(), _config())
    missing = uuid.uuid4()
    refused = await engine.rollbacks.roll_back(str(missing), "why")
    assert isinstance(refused, RollbackRefused) and refused.why == "not_found"
    assert refused.message == f"no promotion with id {missing}" and refused.details == {"promotionId": str(missing)}
    malformed = await engine.rollbacks.roll_back("not-a-uuid", "why")
    assert isinstance(malformed, RollbackRefused) and malformed.why == "invalid_request"

    await seed_winner(conn, config={"safetyChecks": {"checkTrafficBalance": False}})
    promoted = await engine.promote_winner("homepage-cta-test")
    assert promoted["success"], promoted
    done = await engine.rollbacks.roll_back(promoted["promotionId"], "checkout errors", actor="bob")
    assert not isinstance(done, RollbackRefused) and done["restoredWeights"]
    again = await engine.rollbacks.roll_back(promoted["promotionId"], "again", actor="bob")
    assert isinstance(again, RollbackRefused) and again.why == "already_rolled_back"
    # Nothing was written by the refusal: one rollback audit row, one set of rolled_back notifications.
    assert await conn.fetchval("SELECT count(*) FROM ab_promotion_audit_log WHERE action = 'rolled_back'") == 1
    queued = await conn.fetchval("SELECT count(*) FROM notification_outbox WHERE event = 'promotion.rolled_back'")
    assert queued == done["notificationsQueued"]


def test_guard_breach_payload_has_the_shape_of_every_other_event() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    watch = WatchedPromotion(
        promotion_id=str(uuid.UUID(int=7)),
        experiment_id=1,
        experiment_name="exp",
        promoted_variant="b",
        control_variant="a",
        promoted_at=at,
        baseline={"b": VariantTotals(exposures=100, errors=1)},
        current={"a": VariantTotals(), "b": VariantTotals(exposures=400, errors=31)},
    )
    breach = GuardBreach("error_rate", "guard: error rate too high", {"errorRate": 0.1})
    row: dict[str, Any] = {
        "priority": "high",
        "now": at,
        "confidence": 0.98,
        "improvement": 4.0,
        "method": "sequential",
    }
    body = breach_payload(watch, row, breach)
    common = payload(
        "promotion.rolled_back",
        None,
        actor="x",
        experiment_name="exp",
        priority="high",
        promotion_id=None,
        variant=None,
    )
    # Every key every event carries, in the same order, then the breach's own.
    assert list(body)[: len(common)] == list(common)
    assert body["event"] == "guard.breached" and body["actor"] == GUARD_ACTOR
    assert body["occurredAt"] == at.isoformat() and body["promotedAt"] == at.isoformat()
    assert body["controlVariant"] == "a" and body["variant"] == "b" and body["method"] == "sequential"
    assert body["metric"] == "error_rate" and body["guard"] == {"errorRate": 0.1}
    b = next(v for v in body["variants"] if v["name"] == "b")
    assert b["exposures"] == 300 and b["errors"] == 30 and b["sincePromotion"] is True


@pytest.mark.parametrize(
    "module",
    [
        "worker.services.deciding",
        "worker.services.effects",
        "worker.services.evaluate",
        "worker.services.guard",
        "worker.services.promote",
        "worker.services.rollback",
        "worker.services.rollback_requests",
        "worker.services.rollout",
        "worker.services.scan",
        "worker.guard",
        "worker.rollbacks",
        "worker.engine",
    ],
)
def test_every_service_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    # The error classes still live in worker.engine, which imports the services: whichever module a program
    # imports first must not meet a partially initialised one.
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
