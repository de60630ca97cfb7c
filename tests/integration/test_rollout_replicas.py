"""Ramps under 3 replicas of `python -m worker run`, one of them killed with SIGKILL and restarted again and again:
every transition happens exactly once (one audit row, one step row, one notification each), and the ramps finish."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.daemon_support import db
from tests.factories import create_experiment, record
from tests.integration.test_daemon_process import Worker

pytestmark = pytest.mark.slow

WINNER = {"control": (17_500, 1_750), "variant-b": (17_000, 1_904)}
CONFIG = {
    "rollout": {"mode": "ramp", "steps": [25, 50, 75], "holdback": 5, "stepMinutes": 0.01, "stepMinExposures": 1500},
    "guard": {"guardHours": 0.001, "minSamples": 200},  # holding: 3.6 s
    "safetyChecks": {"checkTrafficBalance": False},
}
HEALTHY = [f"ramp-{i}" for i in range(5)]
BREACHED = "ramp-breach"  # its winner's errors jump at step 2
STEPS = 5  # 20% test share: 25, 50, 75, 95 (holding), 100


@pytest.fixture
def replicas(tmp_path: Path) -> Any:
    started: list[Worker] = []

    def make(env: dict[str, str], name: str) -> Worker:
        w = Worker(tmp_path, name, env)
        started.append(w)
        return w

    yield make
    for w in started:
        w.kill()


async def _feed(url: str, stop: anyio.Event) -> None:
    """Producers: harmless traffic on every ramp, and on BREACHED a jump of its winner's errors once at step 2."""
    async with db(url) as conn:
        while not stop.is_set():
            for name in [*HEALTHY, BREACHED]:
                step = await conn.fetchval(
                    "SELECT step FROM experiment_rollouts r JOIN ab_experiments e ON e.id = r.experiment_id "
                    "WHERE e.name = $1 AND r.state NOT IN ('complete', 'rolled_back')",
                    name,
                )
                if step is None:
                    continue
                bad = name == BREACHED and step == 2
                await record(conn, name, "variant-b", 600, 66, 60 if bad else 6)
                await record(conn, name, "control", 600, 60, 6)
            await anyio.sleep(0.05)


async def test_three_replicas_under_kill_9_make_every_transition_exactly_once(db_url: str, replicas: Any) -> None:
    async with db(db_url) as conn:
        for name in [*HEALTHY, BREACHED]:
            await create_experiment(conn, name, list(WINNER), weights=[80, 20], config=CONFIG)
    env = {
        "DATABASE_URL": db_url,
        "AUTO_PROMOTION_POLL_INTERVAL": "0.3",
        "SLACK_WEBHOOK_URL": "http://127.0.0.1:9/hook",
        "AUTO_PROMOTION_MAX_CONCURRENT": "20",
    }
    workers = [replicas(env, f"replica-{i}").start() for i in range(3)]
    for w in workers:
        await w.ready()
    async with db(db_url) as conn:
        for name in [*HEALTHY, BREACHED]:
            for variant, (n, conv) in WINNER.items():
                await record(conn, name, variant, n, conv)

    stop = anyio.Event()
    rng = random.Random(11)
    kills = 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(_feed, db_url, stop)
        async with db(db_url) as conn:

            async def finished() -> bool:
                n = await conn.fetchval(
                    "SELECT count(*) FROM experiment_rollouts WHERE state IN ('complete', 'rolled_back')"
                )
                return n == len(HEALTHY) + 1

            deadline = time.monotonic() + 150
            while not await finished():
                assert time.monotonic() < deadline, "the ramps did not finish"
                # kill -9 one replica mid-flight, start a new one in its place
                i = rng.randrange(3)
                workers[i].kill()
                kills += 1
                workers[i] = replicas(env, f"replica-{i}-{kills}").start()
                await anyio.sleep(rng.uniform(0.5, 1.5))
            stop.set()

            states = dict(
                await conn.fetch(
                    "SELECT e.name, r.state FROM experiment_rollouts r JOIN ab_experiments e ON e.id = r.experiment_id"
                )
            )
            assert states == {**dict.fromkeys(HEALTHY, "complete"), BREACHED: "rolled_back"}
            for name in HEALTHY:
                audit = await conn.fetch(
                    "SELECT action, details FROM ab_promotion_audit_log WHERE experiment_name = $1 ORDER BY id", name
                )
                actions = [a["action"] for a in audit]
                assert actions == ["promoted", *["rollout_advanced"] * (STEPS - 2), "rollout_completed"], (
                    name,
                    actions,
                )
                assert [a["details"]["toStep"] for a in audit[1:]] == list(range(2, STEPS + 1))
                steps = await conn.fetch(
                    "SELECT s.step, s.outcome FROM experiment_rollout_steps s JOIN experiment_rollouts r "
                    "ON r.id = s.rollout_id JOIN ab_experiments e ON e.id = r.experiment_id WHERE e.name = $1 "
                    "ORDER BY s.step",
                    name,
                )
                assert [(s["step"], s["outcome"]) for s in steps] == [
                    *[(i, "advanced") for i in range(1, STEPS - 1)],
                    (STEPS - 1, "completed"),
                    (STEPS, None),
                ]
                events = [
                    r["event"]
                    for r in await conn.fetch(
                        "SELECT event FROM notification_outbox WHERE experiment_name = $1 ORDER BY id", name
                    )
                ]
                assert events == ["promotion.promoted", *["rollout.advanced"] * (STEPS - 2), "rollout.completed"]
            audit = [
                r["action"]
                for r in await conn.fetch(
                    "SELECT action FROM ab_promotion_audit_log WHERE experiment_name = $1 ORDER BY id", BREACHED
                )
            ]
            assert audit == ["promoted", "rollout_advanced", "rolled_back"], audit
            r = await conn.fetchrow(
                "SELECT r.step, r.reason FROM experiment_rollouts r JOIN ab_experiments e ON e.id = r.experiment_id "
                "WHERE e.name = $1",
                BREACHED,
            )
            assert r["step"] == 2 and "error rate" in r["reason"]
            outbox = await conn.fetchval(
                "SELECT count(*) FROM notification_outbox WHERE experiment_name = $1 AND event = 'rollout.rolled_back'",
                BREACHED,
            )
            assert outbox == 1
    assert kills >= 3
