"""Shared by the API tests: a real app on 127.0.0.1 over a test database, a client that checks every response
against the OpenAPI document, a small JSON-schema validator, and the seed's winning experiment.

(Named test_api_* so it sits with the API tests; it holds no tests itself.)
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from tests.conftest import pool_url
from tests.factories import create_experiment, record
from worker.config import load_config, load_settings
from worker.engine import Engine
from worker.events import EventBus
from worker.http.app import CTX, AppContext, Health, create_app
from worker.http.auth import hash_token
from worker.http.openapi import openapi_document

OPERATOR_TOKEN = "ap_test-operator-0123456789abcdef"
VIEWER_TOKEN = "ap_test-viewer-0123456789abcdef"
OTHER_OPERATOR_TOKEN = "ap_test-operator2-0123456789abcdef"
TOKENS = ",".join(
    [
        f"ops-bot:operator:{hash_token(OPERATOR_TOKEN)}",
        f"dashboard:viewer:{hash_token(VIEWER_TOKEN)}",
        f"release-manager:operator:{hash_token(OTHER_OPERATOR_TOKEN)}",
    ]
)
AUTO = "/api/experiments/auto-promote"
WINNER = {"control": (17_500, 1_750), "variant-b": (17_000, 1_904)}  # 10.0% vs 11.2%: about +12%
DOC = openapi_document()


async def seed_winner(conn: asyncpg.Connection, name: str = "homepage-cta-test", **kwargs: Any) -> int:
    """An experiment that is eligible under the balanced preset (the seed's homepage-cta-test)."""
    exp_id = await create_experiment(conn, name, list(WINNER), **kwargs)
    for variant, (n, conv) in WINNER.items():
        await record(conn, name, variant, n, conv)
    return exp_id


# ---------------------------------------------------------------------------------------- JSON schema
class SchemaError(AssertionError):
    pass


def _resolve(schema: Mapping[str, Any], doc: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), ref
        node: Any = doc
        for part in ref[2:].split("/"):
            node = node[part]
        schema = node
    return schema


def _type_ok(value: Any, type_: str) -> bool:
    if type_ == "null":
        return value is None
    if type_ == "boolean":
        return isinstance(value, bool)
    if type_ == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if type_ == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if type_ == "string":
        return isinstance(value, str)
    if type_ == "array":
        return isinstance(value, list)
    if type_ == "object":
        return isinstance(value, dict)
    raise AssertionError(f"unknown type {type_}")


def schema_errors(value: Any, schema: Mapping[str, Any], doc: Mapping[str, Any], path: str = "$") -> list[str]:
    """Problems of ``value`` against a JSON Schema 2020-12 subset (the keywords our document uses)."""
    schema = _resolve(schema, doc)
    errors: list[str] = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(value, t) for t in types):
            return [f"{path}: expected {'/'.join(types)}, got {type(value).__name__} {str(value)[:60]!r}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: expected {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1 << 62):
            errors.append(f"{path}: length {len(value)} out of range")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value[:60]!r} does not match {schema['pattern']}")
        fmt = schema.get("format")
        try:
            if fmt == "date-time":
                datetime.fromisoformat(value)
            elif fmt == "date":
                date.fromisoformat(value)
            elif fmt == "uuid":
                uuid.UUID(value)
        except ValueError:
            errors.append(f"{path}: {value!r} is not a {fmt}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} > maximum {schema['maximum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing required {key!r}")
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                errors.extend(schema_errors(item, props[key], doc, f"{path}.{key}"))
            elif extra is False:
                errors.append(f"{path}: unexpected property {key!r}")
            elif isinstance(extra, dict):
                errors.extend(schema_errors(item, extra, doc, f"{path}.{key}"))
    if isinstance(value, list) and not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", 1 << 62):
        errors.append(f"{path}: {len(value)} items, out of range")
    if "not" in schema and not schema_errors(value, schema["not"], doc, path):
        errors.append(f"{path}: matches the schema under 'not'")
    if "if" in schema:
        branch = "then" if not schema_errors(value, schema["if"], doc, path) else "else"
        errors.extend(schema_errors(value, schema.get(branch, {}), doc, path))
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors.extend(schema_errors(item, schema["items"], doc, f"{path}[{i}]"))
    for sub in schema.get("allOf", []):
        errors.extend(schema_errors(value, sub, doc, path))
    if "anyOf" in schema:
        results = [schema_errors(value, sub, doc, path) for sub in schema["anyOf"]]
        if all(results):
            errors.append(f"{path}: matches none of anyOf: " + " | ".join("; ".join(r[:2]) for r in results))
    if "oneOf" in schema:
        results = [schema_errors(value, sub, doc, path) for sub in schema["oneOf"]]
        matched = sum(1 for r in results if not r)
        if matched != 1:
            detail = " | ".join("; ".join(r[:2]) for r in results)
            errors.append(f"{path}: matches {matched} of oneOf (need exactly 1): {detail}")
    return errors


def _template_pattern(template: str) -> re.Pattern[str]:
    parts = ["[^/]+" if p.startswith("{") and p.endswith("}") else re.escape(p) for p in template.split("/")]
    return re.compile("^" + "/".join(parts) + "$")


_TEMPLATES = [(t, _template_pattern(t)) for t in DOC["paths"]]


def path_template(path: str) -> str | None:
    """The documented path a concrete path belongs to (exact paths win over templates)."""
    if path in DOC["paths"]:
        return path
    template: str
    for template, pattern in _TEMPLATES:
        if pattern.match(path):
            return template
    return None


def response_problems(method: str, raw_path: str, status: int, headers: Mapping[str, str], body: Any) -> list[str]:
    """Why a response breaks the document (empty when it conforms)."""
    template = path_template(raw_path.split("?")[0])
    if template is None:
        if raw_path.startswith("/api/") and status in (404, 405):
            return schema_errors(body, {"$ref": "#/components/schemas/Error"}, DOC)
        return [f"{raw_path} is not documented"]
    operation = DOC["paths"][template].get(method.lower())
    if operation is None:
        if status == 405:
            return schema_errors(body, {"$ref": "#/components/schemas/Error"}, DOC)
        return [f"{method} {template} is not documented"]
    response = operation["responses"].get(str(status))
    if response is None:
        return [f"{method} {template}: status {status} is not documented"]
    problems = schema_errors(body, response["content"]["application/json"]["schema"], DOC)
    for name in response.get("headers", {}):
        if name in ("Retry-After", "WWW-Authenticate") and name not in headers:
            problems.append(f"{method} {template} {status}: header {name} missing")
    return problems


# ---------------------------------------------------------------------------------------------- client
@dataclass
class Reply:
    status: int
    body: Any
    headers: Mapping[str, str]

    @property
    def error(self) -> dict[str, Any]:
        assert self.body.get("success") is False and "error" in self.body, self.body
        err: dict[str, Any] = self.body["error"]
        return err

    def error_paths(self) -> list[str]:
        return [e["path"] for e in self.error["details"].get("errors", [])]


_UNSET: Any = object()


@dataclass
class Api:
    client: TestClient[web.Request, web.Application]
    app: web.Application
    seen: list[tuple[str, str, int]] = field(default_factory=list)

    async def request(
        self,
        method: str,
        path: str | URL,
        *,
        token: str | None = OPERATOR_TOKEN,
        json_body: Any = _UNSET,
        data: bytes | str | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> Reply:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs.setdefault("Authorization", f"Bearer {token}")
        if json_body is not _UNSET:
            data = json.dumps(json_body)
            hdrs.setdefault("Content-Type", "application/json")
        async with self.client.request(method, path, data=data, params=params, headers=hdrs) as resp:
            text = await resp.text()
            status, resp_headers = resp.status, dict(resp.headers)
            raw_path = resp.url.raw_path
        try:
            body = json.loads(text)
        except ValueError:
            raise AssertionError(f"{method} {path}: not JSON ({status}): {text[:300]}") from None
        assert "Traceback" not in text, text
        if check:
            problems = response_problems(method, raw_path, status, resp_headers, body)
            assert not problems, (
                f"{method} {path} -> {status} breaks the OpenAPI document:\n"
                + "\n".join(problems[:10])
                + f"\n{json.dumps(body)[:1500]}"
            )
        self.seen.append((method, str(path), status))
        return Reply(status, body, resp_headers)

    async def post(self, body: Any, *, token: str | None = OPERATOR_TOKEN, **kwargs: Any) -> Reply:
        return await self.request("POST", AUTO, token=token, json_body=body, **kwargs)

    async def get(self, path: str, *, token: str | None = VIEWER_TOKEN, **kwargs: Any) -> Reply:
        return await self.request("GET", path, token=token, **kwargs)


def make_context(
    pool: asyncpg.Pool,
    env: Mapping[str, str] | None = None,
    config: Mapping[str, Any] | None = None,
    *,
    database_url: str | None = None,
) -> AppContext:
    settings = load_settings(
        {"AUTO_PROMOTION_API_TOKENS": TOKENS, "SLACK_WEBHOOK_URL": "http://127.0.0.1:9/hook", **(env or {})}
    )
    effective = load_config(env={}, overrides=dict(config or {}))
    return AppContext(
        pool=pool,
        settings=settings,
        config=effective,
        engine=Engine(pool, settings, effective),
        events=EventBus(),
        health=Health(listener_required=False),
        database_url=database_url or pool_url(pool),
    )


def api_only_app(ctx: AppContext) -> web.Application:
    """What create_app builds, with only the API module: these tests do not depend on the ops and dashboard
    modules (test_api_auth checks the full create_app)."""
    from worker.http import api

    app = web.Application(client_max_size=ctx.settings.max_body_bytes)
    app[CTX] = ctx
    api.add_routes(app)
    return app


@asynccontextmanager
async def serve_api(
    pool: asyncpg.Pool,
    env: Mapping[str, str] | None = None,
    config: Mapping[str, Any] | None = None,
    extra_routes: list[web.RouteDef] | None = None,
    full_app: bool = False,
) -> AsyncIterator[Api]:
    """The application on 127.0.0.1 with a client that validates every response."""
    ctx = make_context(pool, env, config)
    app = create_app(ctx) if full_app else api_only_app(ctx)
    if extra_routes:
        app.router.add_routes(extra_routes)
    server = TestServer(app, host="127.0.0.1")
    async with TestClient(server) as client:
        yield Api(client, app)
