"""Assignment in SQL (schema/0008_serving.sql) and in Python (the OpenFeature client) on a real PostgreSQL:
GrowthBook's published vectors, agreement on random ids of every plane, the serving rules, the trigger."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import asyncpg
import pytest
from ab_autopromote_openfeature import assign, fnv1a32, hash_v2, hashing, range_ends
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.daemon_support import wait_for
from tests.factories import create_experiment
from worker.db.connect import connect

# Verbatim from GrowthBook's SDK test suite, growthbook/growthbook packages/sdk-js/test/cases.json ("hash"
# section, commit 021bf498f75c8491c156184ca1b3a1fbafa1d64e): [seed, value, version, expected bucket].
GROWTHBOOK_HASH_V2 = [
    ["seed", "a", 2, 0.0505],
    ["seed", "b", 2, 0.2696],
    ["foo", "ab", 2, 0.2575],
    ["foo", "def", 2, 0.2019],
    ["89123klj", "8952klfjas09ujkasdf", 2, 0.124],
    ["90850943850283058242805", "123", 2, 0.7516],
    ["()**(%$##$%#$#", '___)((*":&', 2, 0.0128],
]
# Same file, "feature" case "creates experiments properly": seed "feature", hashVersion 2, anonId "123".
GROWTHBOOK_FEATURE_BUCKET = ("feature", "123", 0.5231)
# Same file, "getBucketRange" cases whose weights already sum to 1 (we normalise any weights; GrowthBook falls
# back to equal weights when they do not sum to 1, so those cases do not apply): weights -> range ends.
GROWTHBOOK_RANGES = [
    ([0.5, 0.5], [0.5, 1.0]),
    ([0.4, 0.6], [0.4, 1.0]),
    ([0.2, 0.3, 0.5], [0.2, 0.5, 1.0]),
    ([0.25, 0.25, 0.25, 0.25], [0.25, 0.5, 0.75, 1.0]),
]
# FNV-1a 32 reference values (the FNV authors' test suite): the function under the hash.
FNV_REFERENCE = {"": 0x811C9DC5, "a": 0xE40C292C, "foobar": 0xBF9CF968}

# Any text PostgreSQL can store: no NUL, no lone surrogates; astral-plane characters (emoji, CJK extension B)
# and the BMP outside ASCII are the cases where UTF-8 bytes, code points and UTF-16 units differ.
UNIT_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),  # type: ignore[arg-type]
    max_size=40,
)
MIXED = st.one_of(
    UNIT_TEXT, st.text("ab1-_😀𠀀é漢\U0010fffd", max_size=12), st.from_regex(r"user-[0-9]{1,9}", fullmatch=True)
)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


async def test_growthbook_published_vectors_in_sql_and_python(conn: asyncpg.Connection) -> None:
    for seed, value, _version, expected in GROWTHBOOK_HASH_V2:
        assert hash_v2(seed, value) == expected, (seed, value)  # type: ignore[arg-type]
        assert await conn.fetchval("SELECT ab_hash_v2($1, $2)", seed, value) == expected, (seed, value)
    seed, value, expected = GROWTHBOOK_FEATURE_BUCKET
    assert hash_v2(seed, value) == expected
    assert await conn.fetchval("SELECT ab_hash_v2($1, $2)", seed, value) == expected
    for seed, value, _version, expected in GROWTHBOOK_HASH_V2:
        state = hashing.py_fnv1a32(seed)  # type: ignore[arg-type]
        assert hashing.py_bucket_from_state(state, value) == expected, (seed, value)  # type: ignore[arg-type]
    for text, expected_fnv in FNV_REFERENCE.items():
        assert fnv1a32(text) == expected_fnv
        assert hashing.py_fnv1a32(text) == expected_fnv
        assert await conn.fetchval("SELECT ab_fnv1a32($1)", text) == expected_fnv
    for weights, ends in GROWTHBOOK_RANGES:
        assert list(range_ends(weights)) == pytest.approx(ends)


@pytest.fixture
def sync_conn(db_url: str) -> Iterator[tuple[asyncio.AbstractEventLoop, asyncpg.Connection]]:
    """A connection on a loop of its own, for hypothesis (which drives plain functions)."""
    loop = asyncio.new_event_loop()
    c = loop.run_until_complete(connect(db_url))
    try:
        yield loop, c
    finally:
        loop.run_until_complete(c.close())
        loop.close()


def test_sql_and_python_hash_agree_on_any_text(sync_conn: tuple[asyncio.AbstractEventLoop, asyncpg.Connection]) -> None:
    loop, c = sync_conn

    @SETTINGS
    @given(st.lists(st.tuples(MIXED, MIXED), min_size=1, max_size=30))
    def check(pairs: list[tuple[str, str]]) -> None:
        rows = loop.run_until_complete(
            c.fetch(
                "SELECT ab_fnv1a32(s || u) AS f, ab_hash_v2(s, u) AS h FROM unnest($1::text[], $2::text[]) AS x(s, u)",
                [p[0] for p in pairs],
                [p[1] for p in pairs],
            )
        )
        for (seed, unit), row in zip(pairs, rows, strict=True):
            assert row["f"] == fnv1a32(seed + unit), (seed, unit)
            assert row["h"] == hash_v2(seed, unit), (seed, unit)
            # The pure-Python twins of the C accelerator, which an install without a compiler uses.
            assert row["f"] == hashing.py_fnv1a32(seed + unit), (seed, unit)
            assert row["h"] == hashing.py_bucket_from_state(hashing.py_fnv1a32(seed), unit), (seed, unit)

    check()


def test_ab_assign_agrees_with_python_for_random_weights(
    sync_conn: tuple[asyncio.AbstractEventLoop, asyncpg.Connection],
) -> None:
    loop, c = sync_conn
    loop.run_until_complete(create_experiment(c, "prop", ["control", "b", "c"]))

    weight = st.one_of(st.just(0.0), st.integers(0, 100).map(float), st.floats(0, 1e6, allow_nan=False))

    @SETTINGS
    @given(
        st.lists(weight, min_size=3, max_size=3),
        st.one_of(st.none(), MIXED.filter(bool)),
        st.lists(MIXED, min_size=1, max_size=25),
    )
    def check(weights: list[float], seed: str | None, units: list[str]) -> None:
        async def run() -> list[str | None]:
            async with c.transaction():
                for name, w in zip(["control", "b", "c"], weights, strict=True):
                    await c.execute("UPDATE ab_variants SET traffic_weight = $1 WHERE name = $2", w, name)
                await c.execute("UPDATE ab_experiments SET hash_seed = $1", seed)
            rows = await c.fetch(
                "SELECT ab_assign('prop', u) AS v FROM unnest($1::text[]) WITH ORDINALITY AS x(u, i) ORDER BY i", units
            )
            return [r["v"] for r in rows]

        served = loop.run_until_complete(run())
        stored = loop.run_until_complete(c.fetchval("SELECT weights FROM ab_serving"))  # what the provider reads
        for unit, got in zip(units, served, strict=True):
            assert got == assign(seed or "prop", unit, ["control", "b", "c"], stored), (unit, weights, seed)

    check()


async def test_serves_only_running_or_promoted_experiments(conn: asyncpg.Connection) -> None:
    await create_experiment(conn, "exp", ["control", "b"])
    assert await conn.fetchval("SELECT ab_assign('exp', 'u1')") in {"control", "b"}
    assert await conn.fetchval("SELECT ab_assign('no-such-experiment', 'u1')") is None
    for status, served in [
        ("paused", False),
        ("promoted", True),
        ("stopped", False),
        ("rolled_back", False),
        ("draft", False),
        ("running", True),
    ]:
        await conn.execute("UPDATE ab_experiments SET status = $1", status)
        got = await conn.fetchval("SELECT ab_assign('exp', 'u1')")
        assert (got is not None) is served, status


async def test_control_comes_first_whatever_its_id_and_zero_weights_are_never_served(
    conn: asyncpg.Connection,
) -> None:
    async with conn.transaction():
        exp_id = await conn.fetchval(
            "INSERT INTO ab_experiments (name, status) VALUES ('order', 'running') RETURNING id"
        )
        # The treatment is inserted first (lower id); the control must still own [0, 0.25).
        await conn.execute(
            "INSERT INTO ab_variants (experiment_id, name, is_control, traffic_weight) "
            "VALUES ($1, 'treatment', false, 3), ($1, 'control', true, 1)",
            exp_id,
        )
    units = [f"user-{i}" for i in range(400)]
    got = await conn.fetch("SELECT u, ab_assign('order', u) AS v FROM unnest($1::text[]) AS u", units)
    for r in got:
        assert r["v"] == ("control" if hash_v2("order", r["u"]) < 0.25 else "treatment")
    await conn.execute("UPDATE ab_variants SET traffic_weight = 0 WHERE name = 'treatment'")
    assert {
        r["v"] for r in await conn.fetch("SELECT ab_assign('order', u) AS v FROM unnest($1::text[]) AS u", units)
    } == {"control"}
    await conn.execute("UPDATE ab_variants SET traffic_weight = 0")
    assert await conn.fetchval("SELECT ab_assign('order', 'user-1')") is None  # no traffic at all


async def test_hash_seed_defaults_to_the_name_and_reshuffles_when_set(conn: asyncpg.Connection) -> None:
    await create_experiment(conn, "seeded", ["control", "b"])
    units = [f"u{i}" for i in range(300)]

    async def served() -> list[str]:
        return [
            r["v"]
            for r in await conn.fetch(
                "SELECT ab_assign('seeded', u) AS v FROM unnest($1::text[]) WITH ORDINALITY AS x(u, i) ORDER BY i",
                units,
            )
        ]

    before = await served()
    assert before == [assign("seeded", u, ["control", "b"], [1, 1]) for u in units]
    await conn.execute("UPDATE ab_experiments SET hash_seed = 'another-seed'")
    after = await served()
    assert after == [assign("another-seed", u, ["control", "b"], [1, 1]) for u in units]
    assert after != before
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("UPDATE ab_experiments SET hash_seed = ''")


async def test_ramping_the_winner_up_only_moves_units_into_it(conn: asyncpg.Connection) -> None:
    await create_experiment(conn, "ramp", ["control", "winner"], weights=[99, 1])
    units = [f"member-{i}" for i in range(2000)]
    previous: set[str] = set()
    for share in (1, 5, 10, 25, 50, 80, 100):
        async with conn.transaction():
            await conn.execute("UPDATE ab_variants SET traffic_weight = $1 WHERE name = 'winner'", float(share))
            await conn.execute("UPDATE ab_variants SET traffic_weight = $1 WHERE name = 'control'", float(100 - share))
        rows = await conn.fetch("SELECT u FROM unnest($1::text[]) AS u WHERE ab_assign('ramp', u) = 'winner'", units)
        in_winner = {r["u"] for r in rows}
        assert previous <= in_winner, f"units left the winner at {share}%"
        previous = in_winner
    assert len(previous) == len(units)


async def test_every_change_to_what_is_served_is_notified_even_by_hand(db_url: str, conn: asyncpg.Connection) -> None:
    exp_id = await create_experiment(conn, "watched", ["control", "b"])
    listener = await asyncpg.connect(db_url)
    got: list[dict[str, object]] = []
    try:
        await listener.add_listener("ab_serving_changed", lambda *a: got.append(json.loads(a[3])))
        await conn.execute("UPDATE ab_variants SET traffic_weight = 5 WHERE name = 'b'")  # as psql would
        await wait_for(lambda: _ready(len(got) == 1), what="the weight change notification")
        assert got[0] == {"experiment_id": exp_id, "experiment_name": "watched", "status": "running"}
        await conn.execute("UPDATE ab_experiments SET status = 'paused'")
        await wait_for(lambda: _ready(len(got) == 2), what="the status change notification")
        assert got[1]["status"] == "paused"
        # Nothing a server serves changes: no notification (the next one must be the delete).
        await conn.execute("UPDATE ab_experiments SET description = 'new words', config = '{\"a\": 1}'")
        await conn.execute("UPDATE ab_variants SET traffic_weight = 5 WHERE name = 'b'")
        await conn.execute("DELETE FROM ab_experiments WHERE id = $1", exp_id)
        await wait_for(lambda: _ready(len(got) >= 3), what="the delete notification")
        assert got[2] == {"experiment_id": exp_id, "experiment_name": None, "status": "deleted"}
        assert await conn.fetchval("SELECT count(*) FROM ab_serving") == 0
    finally:
        await listener.close()


async def test_a_rename_and_a_swap_of_names_serve_under_the_new_names(conn: asyncpg.Connection) -> None:
    await create_experiment(conn, "left", ["control", "b"])
    await create_experiment(conn, "right", ["control", "c"])
    async with conn.transaction():
        await conn.execute("UPDATE ab_experiments SET name = 'tmp' WHERE name = 'left'")
        await conn.execute("UPDATE ab_experiments SET name = 'left' WHERE name = 'right'")
        await conn.execute("UPDATE ab_experiments SET name = 'right' WHERE name = 'tmp'")
    units = [f"u{i}" for i in range(200)]
    left = {r["v"] for r in await conn.fetch("SELECT ab_assign('left', u) AS v FROM unnest($1::text[]) u", units)}
    right = {r["v"] for r in await conn.fetch("SELECT ab_assign('right', u) AS v FROM unnest($1::text[]) u", units)}
    assert left == {"control", "c"} and right == {"control", "b"}
    assert await conn.fetchval("SELECT count(*) FROM ab_serving") == 2


async def _ready(value: bool) -> bool:
    return value


async def test_weights_beyond_double_precision_do_not_fail_the_commit(conn: asyncpg.Connection) -> None:
    await create_experiment(conn, "extreme", ["control", "b"])
    # numeric takes both; a plain ::float8 would raise underflow/overflow in the commit's trigger.
    await conn.execute("UPDATE ab_variants SET traffic_weight = CASE WHEN name = 'b' THEN 1e-400 ELSE 1e400 END")
    assert await conn.fetchval("SELECT weights FROM ab_serving") == [1e300, 0.0]
    assert {
        r["v"] for r in await conn.fetch("SELECT ab_assign('extreme', 'u' || g) AS v FROM generate_series(1, 200) g")
    } == {"control"}


async def test_concurrent_weight_changes_both_reach_what_is_served(db_url: str, conn: asyncpg.Connection) -> None:
    await create_experiment(conn, "raced", ["control", "b"])
    first, second = await connect(db_url), await connect(db_url)
    try:
        # first has refreshed ab_serving (forced now, not at commit) but not committed; second commits meanwhile.
        await first.execute("BEGIN")
        await first.execute("UPDATE ab_variants SET traffic_weight = 3 WHERE name = 'control'")
        await first.execute("SET CONSTRAINTS ab_variants_serving IMMEDIATE")
        await second.execute("BEGIN")
        await second.execute("UPDATE ab_variants SET traffic_weight = 5 WHERE name = 'b'")
        committing = asyncio.ensure_future(second.execute("COMMIT"))  # its refresh waits for first's
        await wait_for(lambda: _waiting_for_a_lock(conn), what="the second refresh to wait for the first")
        await first.execute("COMMIT")
        await committing
    finally:
        await first.close()
        await second.close()
    # Without the per-experiment lock the second refresh would have written what it read before the first
    # committed (control still 1) over the first's row.
    assert await conn.fetchval("SELECT weights FROM ab_serving") == [3.0, 5.0]


async def _waiting_for_a_lock(conn: asyncpg.Connection) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    )


def test_the_c_accelerator_is_built_by_make_install() -> None:
    # make install compiles it (gcc is part of the supported setup); the pure-Python twins are checked above.
    assert hashing.ACCELERATED, "ab_autopromote_openfeature._fnv was not built: is a C compiler installed?"
