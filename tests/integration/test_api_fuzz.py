"""Property-based fuzz of the HTTP API against its own OpenAPI document, with broken input mixed in (hypothesis).

(test_api_schema_fuzz.py runs Schemathesis on the documented-valid requests: none may be refused.)

Requests are generated from the document itself: every operation in ``paths``, its parameters and its
request body schema, mixed with values that break them (wrong types, unknown fields, random JSON, random
bytes, bad or missing tokens). Whatever is sent, the server must answer with a status the operation
documents, below 500, with a body that validates against the schema documented for that status (the
client in test_api_support checks that on every response).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import create_experiment, record
from tests.support.api import AUTO, DOC, OPERATOR_TOKEN, VIEWER_TOKEN, Api, seed_winner, serve_api

NAMES = [
    "homepage-cta-test",
    "checkout-flow",
    "paused-test",
    "x'; drop table ab_experiments;--",
    "team a/checkout 50%",
    "ünïcödé ☃",
]
SETTINGS = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def _resolve(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        node: Any = DOC
        for part in schema["$ref"][2:].split("/"):
            node = node[part]
        schema = node
    return schema


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
any_json = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)


def from_schema(
    schema: Mapping[str, Any], hints: Mapping[str, st.SearchStrategy[Any]], name: str = ""
) -> st.SearchStrategy[Any]:
    """Values that conform to ``schema`` (the keywords our document uses); ``hints`` by property name."""
    if name in hints:
        return hints[name]
    schema = _resolve(schema)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of(*(from_schema(s, hints, name) for s in schema[key]))
    types = schema.get("type", ["object"])
    if isinstance(types, list):
        return st.one_of(*(from_schema({**schema, "type": t}, hints, name) for t in types))
    if types == "null":
        return st.none()
    if types == "boolean":
        return st.booleans()
    if types == "integer":
        return st.integers(schema.get("minimum", -(10**6)), schema.get("maximum", 10**6))
    if types == "number":
        return st.floats(schema.get("minimum", -1e6), schema.get("maximum", 1e6), allow_nan=False)
    if types == "string":
        if schema.get("format") == "uuid":
            return st.uuids().map(str)
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 40))
    if types == "array":
        return st.lists(from_schema(schema.get("items", {}), hints), max_size=4)
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    return st.fixed_dictionaries(
        {k: from_schema(v, hints, k) for k, v in props.items() if k in required},
        optional={k: from_schema(v, hints, k) for k, v in props.items() if k not in required},
    )


def broken(valid: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    """A valid object with one field replaced by anything, or an unknown field added."""

    @st.composite
    def mutate(draw: st.DrawFn) -> Any:
        body = dict(draw(valid))
        key = draw(st.sampled_from([*body, "unknownField"]) if body else st.just("unknownField"))
        body[key] = draw(any_json)
        return body

    return mutate()


tokens = st.sampled_from([OPERATOR_TOKEN] * 6 + [VIEWER_TOKEN] * 3 + [None, "ap_unknown"])


@pytest.fixture
async def fuzz_api(pool: asyncpg.Pool, conn: asyncpg.Connection) -> AsyncIterator[tuple[Api, list[str]]]:
    await seed_winner(conn)
    await seed_winner(conn, "checkout-flow")
    await create_experiment(conn, "paused-test", status="paused")
    await create_experiment(conn, NAMES[4], metric_type="mean")
    await conn.execute("SELECT ab_record_metrics($1, 'control', 10, 0, 0, NULL, 12.5, 40.0)", NAMES[4])
    await record(conn, "paused-test", "control", 100, 3, latencies=[1.0, 2.5, 900.0])
    await conn.execute("SELECT ab_raise_alert(NULL, 'warning', 'a global warning')")
    env = {"AUTO_PROMOTION_RATE_LIMIT": "100000"}
    async with serve_api(pool, env=env) as api:
        promoted = await api.post({"action": "promote", "experimentName": "checkout-flow"})
        promotion_ids = [promoted.body["data"]["promotionId"]]
        yield api, promotion_ids


def _post_bodies(promotion_ids: list[str]) -> st.SearchStrategy[Any]:
    hints = {
        "experimentName": st.one_of(st.sampled_from(NAMES), st.text(max_size=30), st.none()),
        "promotionId": st.one_of(st.sampled_from(promotion_ids), st.uuids().map(str), st.text(max_size=40), st.none()),
        "reason": st.one_of(st.text(max_size=60), st.none(), st.just("regression")),
    }
    schema = DOC["paths"][AUTO]["post"]["requestBody"]["content"]["application/json"]["schema"]
    generic = from_schema(schema, hints)
    # Bodies an action accepts (the generic ones mostly combine fields no single action takes), with a config
    # that is empty, small, or anything the config schema allows.
    config_schema = {"$ref": "#/components/schemas/AutoPromotionConfig"}
    small_config = st.fixed_dictionaries(
        {},
        optional={
            "dryRun": st.booleans(),
            "enabled": st.booleans(),
            "thresholds": st.fixed_dictionaries(
                {},
                optional={
                    "minConfidence": st.floats(50, 99.9),
                    "minSampleSize": st.integers(1, 50_000),
                    "minRuntimeHours": st.floats(0, 100),
                },
            ),
            "excludedExperiments": st.lists(st.sampled_from([*NAMES, "home*"]), max_size=2),
            "maxConcurrentPromotions": st.integers(1, 3),
        },
    )
    config: st.SearchStrategy[Any] = st.one_of(
        st.just({}), small_config, small_config, from_schema(config_schema, hints)
    )
    common = {
        "config": config,
        "preset": st.sampled_from(["aggressive", "conservative", "balanced"]),
        "dryRun": st.booleans(),
    }
    by_action = st.one_of(
        st.fixed_dictionaries({"action": st.just("scan")}, optional=common),
        st.fixed_dictionaries(
            {"action": st.sampled_from(["promote", "check"]), "experimentName": hints["experimentName"]},
            optional=common,
        ),
        st.fixed_dictionaries(
            {"action": st.just("rollback"), "promotionId": hints["promotionId"], "reason": hints["reason"]},
            optional={"config": config},
        ),
    )
    return st.one_of(by_action, by_action, by_action, generic, broken(generic), any_json)


@SETTINGS
@given(data=st.data())
async def test_fuzz_post_auto_promote(fuzz_api: tuple[Api, list[str]], data: st.DataObject) -> None:
    api, promotion_ids = fuzz_api
    body = data.draw(_post_bodies(promotion_ids), label="body")
    token = data.draw(tokens, label="token")
    reply = await api.post(body, token=token)  # checks the status and body against the document
    assert reply.status < 500, reply.body
    if reply.status == 200 and reply.body["action"] == "promote" and reply.body["data"]["promotionId"]:
        promotion_ids.append(reply.body["data"]["promotionId"])


@st.composite
def _raw_posts(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    raw = draw(
        st.one_of(
            st.binary(max_size=200),
            any_json.map(lambda v: json.dumps(v).encode()),
            st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
            st.sampled_from(
                [
                    b'{"action": "check", "experimentName": "homepage-cta-test"',
                    b"{}" * 3,
                    b"\x00",
                    b'{"action": "scan", "dryRun": true, "config": {"thresholds": {"minConfidence": 1e999}}}',
                    b'{"action": "scan", "dryRun": true, "config": {"thresholds": {"minSampleSize": '
                    + b"9" * 5000
                    + b"}}}",
                ]
            ),
        )
    )
    content_type = draw(
        st.sampled_from(
            [
                "application/json",
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "",
            ]
        )
    )
    return raw, ({"Content-Type": content_type} if content_type else {})


@SETTINGS
@given(data=st.data())
async def test_fuzz_raw_bodies(fuzz_api: tuple[Api, list[str]], data: st.DataObject) -> None:
    api, _ = fuzz_api
    raw, headers = data.draw(_raw_posts(), label="raw")
    reply = await api.request("POST", AUTO, data=raw, headers=headers, token=data.draw(tokens, label="token"))
    assert reply.status < 500, reply.body


GET_OPERATIONS = [(path, op) for path, ops in DOC["paths"].items() for method, op in ops.items() if method == "get"]


@st.composite
def _get_requests(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    path, operation = draw(st.sampled_from(GET_OPERATIONS))
    params: dict[str, str] = {}
    for param in operation.get("parameters", []):
        if param["in"] == "path":
            value = draw(st.one_of(st.sampled_from(NAMES), st.text(min_size=1, max_size=30)))
            path = path.replace("{" + param["name"] + "}", quote(value, safe=""))
            continue
        if not draw(st.booleans()):
            continue
        valid = from_schema(param["schema"], {}).map(lambda v: str(v).lower() if isinstance(v, bool) else str(v))
        params[param["name"]] = draw(
            st.one_of(valid, valid, valid, valid, st.text(max_size=20), st.sampled_from(NAMES), st.integers().map(str))
        )
    if draw(st.integers(0, 9)) == 0:
        params[draw(st.text(min_size=1, max_size=10))] = draw(st.text(max_size=10))
    return path, params


@SETTINGS
@given(data=st.data())
async def test_fuzz_reads(fuzz_api: tuple[Api, list[str]], data: st.DataObject) -> None:
    api, _ = fuzz_api
    path, params = data.draw(_get_requests(), label="request")
    token = data.draw(tokens, label="token")
    reply = await api.get(path, params=params, token=token)
    assert reply.status < 500, reply.body


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(data=st.data())
async def test_fuzz_methods_and_unknown_paths(fuzz_api: tuple[Api, list[str]], data: st.DataObject) -> None:
    api, _ = fuzz_api
    method = data.draw(st.sampled_from(["PUT", "PATCH", "DELETE", "GET", "POST"]), label="method")
    path = data.draw(
        st.one_of(
            st.sampled_from(list(DOC["paths"])).map(lambda p: p.replace("{name}", "x").replace("{metric}", "m")),
            st.text(alphabet="abcdefghijklmnopqrstuvwxyz-/", max_size=20).map(lambda p: "/api/" + p),
        ),
        label="path",
    )
    reply = await api.request(method, path, token=OPERATOR_TOKEN, data=b"{}")
    assert reply.status < 500, reply.body
