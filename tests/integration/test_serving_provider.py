"""The OpenFeature provider against a real PostgreSQL: it serves what ab_assign says, a promotion and a rollback
by the engine change what it serves, hand edits are seen, a database that goes away and comes back is
survived, and the exposure hook's counts equal the assignments made."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator

import anyio
import asyncpg
import pytest
from ab_autopromote_openfeature import AutoPromoteProvider
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from tests.daemon_support import wait_for
from tests.factories import create_experiment, record
from worker.config import load_config, load_settings
from worker.db.connect import connect, with_database
from worker.db.embedded import EmbeddedPostgres, find_binaries, start_embedded
from worker.db.migrate import migrate
from worker.engine import Engine

WINNER = {"control": (17_500, 1_750), "variant-b": (17_000, 1_904)}  # the engine promotes variant-b
UNITS = [f"user-{i}" for i in range(300)]


def ctx(unit: str) -> EvaluationContext:
    return EvaluationContext(targeting_key=unit)


@pytest.fixture
def provider_factory() -> Iterator[list[AutoPromoteProvider]]:
    made: list[AutoPromoteProvider] = []
    yield made
    for p in made:
        p.shutdown()
    api.clear_providers()


async def start_provider(made: list[AutoPromoteProvider], dsn: str, **kwargs: object) -> AutoPromoteProvider:
    provider = AutoPromoteProvider(dsn, **kwargs)  # type: ignore[arg-type]
    made.append(provider)
    await anyio.to_thread.run_sync(provider.initialize)
    return provider


async def served(client: OpenFeatureClient, flag: str, units: list[str] = UNITS) -> dict[str, str]:
    return {u: client.get_string_value(flag, "default", ctx(u)) for u in units}


async def sql_served(conn: asyncpg.Connection, flag: str, units: list[str] = UNITS) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT u, coalesce(ab_assign($1, u), 'default') AS v FROM unnest($2::text[]) u", flag, units
    )
    return {r["u"]: r["v"] for r in rows}


async def test_serves_what_ab_assign_says_with_reasons_and_metadata(
    db_url: str,
    conn: asyncpg.Connection,
    provider_factory: list[AutoPromoteProvider],
) -> None:
    await create_experiment(conn, "checkout", ["control", "b", "c"], weights=[2, 1, 1])
    await create_experiment(conn, "paused-one", ["control", "b"], status="paused")
    provider = await start_provider(provider_factory, db_url)
    api.set_provider(provider)
    client = api.get_client()
    assert await served(client, "checkout") == await sql_served(conn, "checkout")
    details = client.get_string_details("checkout", "default", ctx("user-1"))
    assert details.reason == Reason.SPLIT and details.variant == details.value
    assert details.flag_metadata["status"] == "running"
    unknown = client.get_string_details("no-such-experiment", "fallback", ctx("user-1"))
    assert (unknown.value, unknown.reason, unknown.error_code) == ("fallback", Reason.DEFAULT, None)
    paused = client.get_string_details("paused-one", "fallback", ctx("user-1"))
    assert (paused.value, paused.reason) == ("fallback", Reason.DISABLED)
    no_key = client.get_string_details("checkout", "fallback", EvaluationContext())
    assert (no_key.value, no_key.error_code) == ("fallback", ErrorCode.TARGETING_KEY_MISSING)
    wrong_type = client.get_boolean_details("checkout", False, ctx("user-1"))
    assert (wrong_type.value, wrong_type.error_code) == (False, ErrorCode.TYPE_MISMATCH)
    # asyncio applications use the same cache: nothing waits on the network inside their loop.
    async_details = await client.get_string_details_async("checkout", "default", ctx("user-1"))
    assert async_details.value == details.value and async_details.reason == Reason.SPLIT


async def test_promotion_and_rollback_by_the_engine_change_what_is_served(
    db_url: str,
    pool: asyncpg.Pool,
    conn: asyncpg.Connection,
    provider_factory: list[AutoPromoteProvider],
) -> None:
    await create_experiment(conn, "homepage-cta-test", list(WINNER))
    for variant, (n, conv) in WINNER.items():
        await record(conn, "homepage-cta-test", variant, n, conv)
    provider = await start_provider(provider_factory, db_url, refresh_interval=3600)
    api.set_provider(provider)
    client = api.get_client()
    before = await served(client, "homepage-cta-test")
    assert set(before.values()) == {"control", "variant-b"}

    engine = Engine(pool, load_settings({"SLACK_WEBHOOK_URL": "http://127.0.0.1:9/hook"}), load_config(env={}))
    promoted = await engine.promote_winner("homepage-cta-test", actor="test")
    assert promoted["success"], promoted

    async def all_winner() -> bool:
        return set((await served(client, "homepage-cta-test")).values()) == {"variant-b"}

    # The periodic refresh is an hour away: only the notifications can have told the provider.
    await wait_for(all_winner, within=10, what="every unit to be served the promoted variant")
    details = client.get_string_details("homepage-cta-test", "control", ctx("user-7"))
    assert details.flag_metadata["promotionId"] == promoted["promotionId"]
    assert details.flag_metadata["status"] == "promoted" and details.reason == Reason.SPLIT

    await engine.rollback_promotion(promoted["promotionId"], "conversion drop", actor="test")

    async def all_default() -> bool:
        got = [client.get_string_details("homepage-cta-test", "control", ctx(u)) for u in UNITS]
        return all(d.reason == Reason.DISABLED and d.value == "control" for d in got)

    await wait_for(all_default, within=10, what="the rolled-back experiment to serve the caller's default")
    assert provider.loads == 1


async def test_a_hand_edit_of_the_weights_is_served(
    db_url: str,
    conn: asyncpg.Connection,
    provider_factory: list[AutoPromoteProvider],
) -> None:
    await create_experiment(conn, "by-hand", ["control", "b"])
    provider = await start_provider(provider_factory, db_url, refresh_interval=3600)
    api.set_provider(provider)
    client = api.get_client()
    await conn.execute("""UPDATE ab_variants SET traffic_weight = CASE WHEN name = 'b' THEN 0 ELSE 1 END""")

    async def all_control() -> bool:
        return set((await served(client, "by-hand")).values()) == {"control"}

    await wait_for(all_control, within=10, what="the hand edit to reach the provider")
    await conn.execute("INSERT INTO ab_experiments (name, status) VALUES ('created-later', 'running')")
    await wait_for(
        lambda: _ready(provider.experiment("created-later") is not None), within=10, what="a new experiment to appear"
    )
    await conn.execute("DELETE FROM ab_experiments WHERE name = 'created-later'")
    await wait_for(
        lambda: _ready(provider.experiment("created-later") is None),
        within=10,
        what="a deleted experiment to disappear",
    )


async def test_the_periodic_refresh_catches_what_no_notification_said(
    db_url: str,
    conn: asyncpg.Connection,
    provider_factory: list[AutoPromoteProvider],
) -> None:
    await create_experiment(conn, "quiet", ["control", "b"])
    provider = await start_provider(provider_factory, db_url, refresh_interval=0.3)
    api.set_provider(provider)
    client = api.get_client()
    # Written behind the triggers' back, as a lost notification would leave it: only a full reload sees it.
    await conn.execute("UPDATE ab_serving SET status = 'paused'")
    await wait_for(
        lambda: _ready(client.get_string_details("quiet", "d", ctx("u")).reason == Reason.DISABLED),
        within=10,
        what="the periodic full refresh",
    )
    assert provider.loads >= 2


async def test_without_a_database_it_serves_defaults_and_never_raises(
    provider_factory: list[AutoPromoteProvider],
) -> None:
    provider = AutoPromoteProvider("postgresql://postgres@127.0.0.1:9/none", init_timeout=0.2, connect_timeout=0.5)
    provider_factory.append(provider)
    api.set_provider(provider)  # initialize fails in the SDK's thread: the provider goes to ERROR, keeps trying
    client = api.get_client()
    details = client.get_string_details("anything", "fallback", ctx("user-1"))
    assert details.value == "fallback" and details.reason == Reason.ERROR
    assert details.error_code == ErrorCode.PROVIDER_NOT_READY


@pytest.fixture
async def own_server() -> AsyncIterator[EmbeddedPostgres]:
    """A server of this test's own: it is stopped and started, which the shared one must never be."""
    bin_dir = find_binaries()
    if bin_dir is None:
        pytest.skip("no PostgreSQL binaries for an embedded server")
    server = await anyio.to_thread.run_sync(start_embedded, bin_dir)
    try:
        yield server
    finally:
        await anyio.to_thread.run_sync(server.cleanup)


async def test_the_database_going_away_and_coming_back(
    own_server: EmbeddedPostgres,
    provider_factory: list[AutoPromoteProvider],
) -> None:
    url = with_database(own_server.url, "postgres")
    conn = await connect(url)
    try:
        await migrate(conn)
        await create_experiment(conn, "resilient", ["control", "b"])
    finally:
        await conn.close()
    provider = await start_provider(provider_factory, url, refresh_interval=3600, max_backoff=0.5)
    api.set_provider(provider)
    client = api.get_client()
    before = await served(client, "resilient")
    assert set(before.values()) == {"control", "b"}

    await anyio.to_thread.run_sync(own_server.stop)
    await wait_for(lambda: _ready(not provider.live), within=20, what="the provider to notice")
    during = [client.get_string_details("resilient", "default", ctx(u)) for u in UNITS]
    assert {d.reason for d in during} == {Reason.CACHED}
    assert {u: d.value for u, d in zip(UNITS, during, strict=True)} == before  # the same units, the same variants

    await anyio.to_thread.run_sync(own_server.start)  # same port
    conn = await connect(url)
    try:
        await conn.execute("UPDATE ab_variants SET traffic_weight = CASE WHEN name = 'b' THEN 1 ELSE 0 END")
    finally:
        await conn.close()

    async def all_b_live() -> bool:
        got = [client.get_string_details("resilient", "default", ctx(u)) for u in UNITS]
        return all(d.value == "b" and d.reason == Reason.SPLIT for d in got)

    await wait_for(all_b_live, within=30, what="the provider to reconnect and serve the change made meanwhile")
    assert provider.connects >= 2


async def test_the_exposure_hook_records_exactly_the_assignments_made(
    db_url: str,
    conn: asyncpg.Connection,
    provider_factory: list[AutoPromoteProvider],
) -> None:
    await create_experiment(conn, "measured", ["control", "b"])
    await create_experiment(conn, "also-measured", ["control", "x", "y"])
    provider = await start_provider(provider_factory, db_url, record_exposures=True, exposure_flush_interval=0.2)
    api.set_provider(provider)
    client = api.get_client()
    made: Counter[tuple[str, str]] = Counter()
    for round_ in range(3):
        for flag in ("measured", "also-measured"):
            for unit in UNITS[: 100 + 50 * round_]:
                made[(flag, client.get_string_value(flag, "default", ctx(unit)))] += 1
        client.get_string_value("no-such-experiment", "default", ctx("u"))  # a default: not an exposure
        await anyio.sleep(0.1)

    async def recorded() -> Counter[tuple[str, str]]:
        rows = await conn.fetch("""SELECT e.name AS e, v.name AS v, sum(u.exposures)::bigint AS n
                                     FROM ab_metric_updates u JOIN ab_experiments e ON e.id = u.experiment_id
                                     JOIN ab_variants v ON v.id = u.variant_id GROUP BY 1, 2""")
        return Counter({(r["e"], r["v"]): r["n"] for r in rows})

    await wait_for(lambda: _ready_counter(recorded, made), within=15, what="the exposures to be flushed")
    provider.shutdown()  # a final flush must not write anything twice
    assert await recorded() == made
    assert await conn.fetchval("SELECT sum(conversions) FROM ab_metric_updates") == 0


async def _ready_counter(recorded: object, made: Counter[tuple[str, str]]) -> bool:
    return await recorded() == made  # type: ignore[operator]


async def _ready(value: bool) -> bool:
    return value
