"""Demo-like experiments for the dashboard tests, and the app served on a real socket.

Everything goes through the producer function (ab_record_metrics) and the Engine, as in production; the only
shaping done by hand is moving timestamps into the past, so that charts span days instead of milliseconds.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from aiohttp import web

from tests.conftest import pool_url
from tests.factories import create_experiment, record
from worker.config import load_config, load_settings
from worker.domain.events import committed_event
from worker.engine import Engine
from worker.events import EventBus
from worker.http.app import AppContext, Health, create_app

OPERATOR_TOKEN = "op-" + "7" * 29
VIEWER_TOKEN = "view-" + "3" * 27

WINNER = "homepage-cta-test"
AA = "checkout-aa-test"
BLOCKED = "pricing-error-test"
PROMOTED = "search-ranking-v2"
ROLLED_BACK = "onboarding-flow"
NASTY = "<img src=x onerror=alert(1)> & \"quoted\" 'name' </td>"


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def make_context(
    pool: asyncpg.Pool,
    *,
    publish_commits: bool = True,
    env: dict[str, str] | None = None,
    database_url: str | None = None,
    **health: Any,
) -> AppContext:
    """An AppContext as the daemon builds one; with publish_commits the Engine reports to the bus like it does.

    Authentication is on (the default) with an operator token named "ops" and a viewer token named "watcher";
    ``env`` adds or overrides settings.
    """
    settings = load_settings(
        {
            "AUTO_PROMOTION_API_TOKENS": f"ops:operator:{_sha(OPERATOR_TOKEN)},watcher:viewer:{_sha(VIEWER_TOKEN)}",
            **(env or {}),
        }
    )
    config = load_config(env={}, overrides={"maxConcurrentPromotions": 50})
    bus = EventBus()
    engine = Engine(pool, settings, config)
    if publish_commits:
        # What the daemon publishes when it does not LISTEN (Daemon._on_committed).
        engine.on_committed = lambda event, data: bus.publish(committed_event(event, data))
    return AppContext(pool, settings, config, engine, bus, Health(details=dict(health)), database_url or pool_url(pool))


@asynccontextmanager
async def serve(ctx: AppContext) -> AsyncIterator[str]:
    """The application on 127.0.0.1 with a free port; yields its base URL."""
    runner = web.AppRunner(create_app(ctx), shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


# Cumulative (control, treatment) exposures at each evaluation; conversions follow the given rates.
STEPS = (1_200, 2_000, 3_200, 5_000, 7_500, 11_000, 17_500)


async def _grow(
    conn: asyncpg.Connection,
    engine: Engine,
    name: str,
    rates: tuple[float, float],
    *,
    errors: tuple[float, float] = (0.0, 0.0),
    hours_between: float = 5.0,
) -> None:
    """Record metrics in growing steps with a check after each, then spread the snapshots over time."""
    done = [0, 0]
    conv = [0, 0]
    err = [0, 0]
    for n in STEPS:
        for i, variant in enumerate(("control", "variant-b")):
            target_n = n if i == 0 else int(n * 0.99)
            target_c = round(target_n * rates[i])
            target_e = round(target_n * errors[i])
            await record(conn, name, variant, target_n - done[i], target_c - conv[i], target_e - err[i])
            done[i], conv[i], err[i] = target_n, target_c, target_e
        await engine.check_promotion_eligibility(name)
    await conn.execute(
        """UPDATE ab_evaluation_snapshots s SET created_at = now() - make_interval(secs => $2 * 3600.0 * r.back)
             FROM (SELECT id, (count(*) OVER () - row_number() OVER (ORDER BY created_at, id))::float8 AS back
                     FROM ab_evaluation_snapshots WHERE experiment_id = (SELECT id FROM ab_experiments WHERE name = $1)
                  ) r
            WHERE s.id = r.id""",
        name,
        hours_between,
    )


async def seed_demo(conn: asyncpg.Connection, engine: Engine) -> dict[str, str]:
    """A winner, an A/A test, one blocked by its error rate, one promoted and one rolled back.

    Returns the promotion ids by experiment name.
    """
    for name in (WINNER, AA, BLOCKED, PROMOTED, ROLLED_BACK):
        await create_experiment(conn, name, ["control", "variant-b"], started_hours_ago=24 * 10)
    await conn.execute(
        "UPDATE ab_experiments SET description = $2 WHERE name = $1",
        WINNER,
        "Bigger call-to-action button on the home page.",
    )
    await _grow(conn, engine, WINNER, (0.100, 0.112))
    await _grow(conn, engine, AA, (0.100, 0.1007))
    await _grow(conn, engine, BLOCKED, (0.100, 0.115), errors=(0.01, 0.07))
    await _grow(conn, engine, PROMOTED, (0.080, 0.092))
    await _grow(conn, engine, ROLLED_BACK, (0.050, 0.060))
    promoted = await engine.promote_winner(PROMOTED, actor="ops")
    rolled = await engine.promote_winner(ROLLED_BACK, actor="autopromote")
    assert promoted["success"] and rolled["success"], (promoted, rolled)
    await engine.rollback_promotion(rolled["promotionId"], "checkout errors up since the promotion", actor="ops")
    # Spread the promotions over the last week so that the per-day chart has some shape.
    await conn.execute(
        "UPDATE experiment_promotions SET promoted_at = now() - interval '3 days' WHERE experiment_name = $1", PROMOTED
    )
    await conn.execute(
        "UPDATE experiment_promotions SET promoted_at = now() - interval '6 days', "
        "rollback_at = now() - interval '5 days' WHERE experiment_name = $1",
        ROLLED_BACK,
    )
    # Their evaluations stopped when they were promoted: end each history there.
    await conn.execute(
        """UPDATE ab_evaluation_snapshots s
              SET created_at = s.created_at - (now() - p.promoted_at) - interval '10 minutes'
             FROM experiment_promotions p
            WHERE p.experiment_id = s.experiment_id AND p.experiment_name = ANY($1::text[])""",
        [PROMOTED, ROLLED_BACK],
    )
    return {PROMOTED: promoted["promotionId"], ROLLED_BACK: rolled["promotionId"]}
