"""``autopromote token create``: the token printed once, its entry, bad names and roles refused.

``autopromote serve`` (a real process on a real database) is tested in tests/integration/test_api_cli.py."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
import structlog

from tests.support.api import TOKENS
from worker.cli import main
from worker.http.auth import Authenticator, hash_token, parse_tokens


@pytest.fixture(autouse=True)
def _keep_logging_config() -> Iterator[None]:
    """main() points structlog at the captured stderr of this test; later tests must not log into it."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


# ------------------------------------------------------------------------------------------------ token
def test_token_create_prints_the_token_once_and_the_entry(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AUTO_PROMOTION_API_TOKENS", raising=False)
    assert main(["token", "create", "--name", "ci-bot", "--role", "operator"]) == 0
    out = capsys.readouterr().out
    token = re.search(r"^\s+(ap_\S+)$", out, re.MULTILINE)
    entry = re.search(r"^\s+(ci-bot:operator:[0-9a-f]{64})$", out, re.MULTILINE)
    assert token and entry, out
    assert out.count(token.group(1)) == 1
    assert entry.group(1) == f"ci-bot:operator:{hash_token(token.group(1))}"
    principal = Authenticator(parse_tokens(entry.group(1))).authenticate(f"Bearer {token.group(1)}")
    assert (principal.name, principal.role) == ("ci-bot", "operator")


def test_token_create_json_and_replacement_note(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTO_PROMOTION_API_TOKENS", TOKENS)
    assert main(["token", "create", "--name", "dashboard", "--role", "viewer", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["entry"] == f"dashboard:viewer:{hash_token(data['token'])}" and data["replacesExisting"] is True


@pytest.mark.parametrize(
    "argv",
    [
        ["--name", "has space", "--role", "viewer"],
        ["--name", "a:b", "--role", "viewer"],
        ["--name", "ok", "--role", "admin"],
        ["--role", "viewer"],
    ],
)
def test_token_create_refuses_bad_names_and_roles(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    try:
        code = main(["token", "create", *argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("name must be" in err or "role" in err)
