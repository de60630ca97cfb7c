"""tests/unit needs no database: every database fixture of tests/conftest.py starts from ``pg_server``, so
overriding it here makes a unit test that asks for one (db_url, conn, pool, admin_url, ...) fail at once with
where it belongs, instead of quietly starting a server and making `pytest tests/unit` slow."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def pg_server() -> None:
    pytest.fail("a test under tests/unit asked for a database; it belongs in tests/integration", pytrace=False)
