"""``autopromote serve`` (a real process on a real database); ``token create`` is in tests/unit/test_token_cli.py."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
import structlog

from tests.support.api import TOKENS, VIEWER_TOKEN


@pytest.fixture(autouse=True)
def _keep_logging_config() -> Iterator[None]:
    """main() points structlog at the captured stderr of this test; later tests must not log into it."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


# ------------------------------------------------------------------------------------------------ serve
@asynccontextmanager
async def _serve(
    env: dict[str, str], *args: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str | None, list[str]]]:
    """The process, its URL once it listens (None if it exited first), and the stderr lines read so far."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AUTO_PROMOTION_")}
    full_env.update({"AUTO_PROMOTION_API_TOKENS": TOKENS, "LOG_FORMAT": "json", **env})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        *args,
        env=full_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    url = None
    seen: list[str] = []
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(60):
            while True:
                line = (await proc.stderr.readline()).decode()
                if not line:
                    break
                seen.append(line)
                match = re.search(r"serving the API on (http://\S+)", line)
                if match:
                    url = match.group(1)
                    break
        yield proc, url, seen
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
async def test_serve_runs_the_api_alone_and_stops_cleanly(db_url: str, stop: signal.Signals) -> None:
    async with _serve({"DATABASE_URL": db_url}) as (proc, url, _seen):
        assert url is not None
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/api/experiments", headers={"Authorization": f"Bearer {VIEWER_TOKEN}"}) as r:
                assert r.status == 200 and (await r.json())["data"]["total"] == 0
            async with http.get(f"{url}/api/experiments") as r:
                assert r.status == 401
        proc.send_signal(stop)
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert b"Traceback" not in err


@pytest.mark.slow
async def test_serve_refuses_malformed_tokens(db_url: str) -> None:
    async with _serve({"DATABASE_URL": db_url, "AUTO_PROMOTION_API_TOKENS": "alice:admin:nothex"}) as (proc, url, seen):
        assert url is None
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
    assert proc.returncode == 2
    text = "".join(seen) + err.decode()
    assert "AUTO_PROMOTION_API_TOKENS entry 1 (alice)" in text and "Traceback" not in text


@pytest.mark.slow
async def test_serve_refuses_an_unmigrated_database(empty_db_url: str) -> None:
    async with _serve({"DATABASE_URL": empty_db_url}) as (proc, url, seen):
        assert url is None
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
    assert proc.returncode == 1 and "autopromote migrate" in "".join(seen) + err.decode()


@pytest.mark.slow
async def test_serve_reports_an_unreachable_database() -> None:
    async with _serve({"DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none"}) as (proc, url, seen):
        assert url is None
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
    text = "".join(seen) + err.decode()
    assert proc.returncode == 3 and "cannot connect" in text and "Traceback" not in text
