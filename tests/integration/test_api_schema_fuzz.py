"""Schemathesis against the real app and a real PostgreSQL: the OpenAPI document, as the app serves it, promises
what the server accepts and what it answers.

Every request is generated from the document (positive mode: requests the document allows), for every
operation, and sent over HTTP to the app on 127.0.0.1. A documented-valid request must never be refused as
invalid (400) and never fail (5xx); it may be answered 404 or 409 (an experiment or promotion that does not
exist, or is already promoted / rolled back: the state of the database, not the form of the request). Every
response must conform to the document (status documented, body and headers valid against the schema).

The server runs in a thread with an event loop of its own, because schemathesis calls it synchronously.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.conftest import fresh_database
from tests.factories import create_experiment, record
from tests.support.api import OPERATOR_TOKEN, api_only_app, make_context, seed_winner
from worker.db.connect import connect, create_pool

pytestmark = pytest.mark.slow
EXAMPLES_PER_OPERATION = 60  # 12 operations: about 720 requests
# Statuses a documented-valid request may get: the database's state, not the request's form.
STATE_STATUSES = {
    404: {
        "experiment_not_found",
        "promotion_not_found",
        "approval_not_found",
        "rollout_not_found",
        "not_found",
        "metric_not_found",
    },
    409: {"already_promoted", "already_rolled_back", "approval_not_pending", "rollout_state_conflict", "metric_exists"},
}


@dataclass
class ServedApp:
    """The API on 127.0.0.1 in a thread of its own (own loop, own pool)."""

    db_url: str
    port: int = 0
    ready: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the test through start()
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        pool = await create_pool(self.db_url, min_size=1, max_size=4)
        runner: web.AppRunner | None = None
        try:
            app = api_only_app(
                make_context(pool, env={"AUTO_PROMOTION_RATE_LIMIT": "100000"}, database_url=self.db_url)
            )
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
            self.ready.set()
            await self._stop.wait()
        finally:
            if runner is not None:
                await runner.cleanup()
            await pool.close()

    def start(self) -> None:
        threading.Thread(target=self.run, name="schema-fuzz-app", daemon=True).start()
        assert self.ready.wait(30), "the app did not start within 30 s"
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
async def fuzz_db_url(admin_url: str, template_db: str) -> AsyncIterator[str]:
    async with fresh_database(admin_url, "ap_sfuzz", template_db) as url:
        conn = await connect(url)
        try:
            await seed_winner(conn)
            await seed_winner(conn, "checkout-flow")
            await create_experiment(conn, "paused-test", status="paused")
            await record(conn, "paused-test", "control", 100, 3, latencies=[1.0, 2.5, 900.0])
        finally:
            await conn.close()
        yield url


@pytest.fixture(scope="module")
def served(fuzz_db_url: str) -> Iterator[ServedApp]:
    app = ServedApp(fuzz_db_url)
    app.start()
    try:
        yield app
    finally:
        app.stop()


def _schema(served: ServedApp) -> Any:
    """The document as the app serves it (not as the tests import it)."""
    raw = requests.get(served.base_url + "/api/openapi.json", timeout=10).json()
    return schemathesis.openapi.from_dict(raw)


def _operations(served: ServedApp) -> list[Any]:
    return [result.ok() for result in _schema(served).get_all_operations()]


def test_the_document_has_every_operation(served: ServedApp) -> None:
    labels = {op.label for op in _operations(served)}
    assert labels == {
        "POST /api/experiments/auto-promote",
        "GET /api/experiments/auto-promote",
        "GET /api/experiments",
        "GET /api/experiments/{name}",
        "GET /api/experiments/{name}/metrics",
        "POST /api/experiments/{name}/metrics",
        "DELETE /api/experiments/{name}/metrics/{metric}",
        "GET /api/promotions",
        "GET /api/promotions/stats",
        "GET /api/audit",
        "GET /api/approvals",
        "POST /api/slack/interactions",
        "GET /api/plan",
        "GET /api/openapi.json",
    }


# GET /api/plan is left out: its parameters have rules between them that a parameter list cannot state (a
# conversion baseline below 1 once raised by the mde, sd only with mean metrics; the document says so in words);
# tests/integration/test_api_plan.py checks its refusals.
OPERATIONS = [
    "POST /api/experiments/auto-promote",
    "GET /api/experiments/auto-promote",
    "GET /api/experiments",
    "GET /api/experiments/{name}",
    "GET /api/experiments/{name}/metrics",
    "POST /api/experiments/{name}/metrics",
    "DELETE /api/experiments/{name}/metrics/{metric}",
    "GET /api/promotions",
    "GET /api/promotions/stats",
    "GET /api/audit",
    "GET /api/approvals",
    # Without SLACK_SIGNING_SECRET (as here) every click is a documented 404.
    "POST /api/slack/interactions",
]


@pytest.mark.parametrize("label", OPERATIONS)
def test_documented_requests_are_accepted_and_answered_as_documented(served: ServedApp, label: str) -> None:
    operation = next(op for op in _operations(served) if op.label == label)
    strategy = operation.as_strategy(generation_mode=GenerationMode.POSITIVE)
    session = requests.Session()
    headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    seen: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=strategy)
    def check(case: Any) -> None:
        response = case.call(base_url=served.base_url, session=session, headers=headers, timeout=30)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        body = response.json()
        assert response.status_code < 500, (case.as_curl_command(headers), body)
        if response.status_code >= 400:
            code = body["error"]["code"]
            assert code in STATE_STATUSES.get(response.status_code, ()), (
                f"a request the document allows was refused: {response.status_code} {body}\n"
                f"{case.as_curl_command(headers)}"
            )
        # Status documented, content type, headers and body valid against the document.
        case.validate_response(response, headers=headers)

    check()
    assert sum(seen.values()) >= 10, seen  # the strategy produced requests, the check ran on them


def test_the_fuzzer_would_catch_a_refusal(served: ServedApp) -> None:
    # The check above is not vacuous: a request the server refuses (a field of another action) is a 400 that
    # its assertion rejects.
    reply = requests.post(
        served.base_url + "/api/experiments/auto-promote",
        timeout=10,
        json={"action": "scan", "experimentName": "x"},
        headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
    )
    assert reply.status_code == 400 and reply.json()["error"]["code"] not in STATE_STATUSES.get(400, ())
