"""Console logs carry colour only for a person at a terminal, and never when NO_COLOR is set."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from worker.logging import configure_logging

ESC = "\x1b["
ROOT = Path(__file__).resolve().parents[2]


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, as a person's shell does."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def _log_to(stream: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("info", "console")
    structlog.get_logger("test").warning("demo.slow_fold", experiment="checkout-button", ms=812)
    return stream.getvalue()


def test_console_logs_into_a_file_have_no_colour_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = _log_to(io.StringIO(), monkeypatch)
    assert "demo.slow_fold" in out and "checkout-button" in out
    assert ESC not in out


def test_console_logs_on_a_terminal_are_coloured_unless_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert ESC in _log_to(_Terminal(), monkeypatch)
    monkeypatch.setenv("NO_COLOR", "1")
    out = _log_to(_Terminal(), monkeypatch)
    assert "demo.slow_fold" in out and ESC not in out
    # no-color.org: an empty NO_COLOR is the same as unset.
    monkeypatch.setenv("NO_COLOR", "")
    assert ESC in _log_to(_Terminal(), monkeypatch)


def test_a_process_whose_stderr_is_a_file_writes_plain_console_logs(tmp_path: Path) -> None:
    """What `make demo > file 2>&1` does: the CLI's console logs redirected into a file."""
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    log = tmp_path / "demo.log"
    code = (
        "from worker.logging import configure_logging; import structlog; "
        "configure_logging('warning', 'console'); structlog.get_logger().warning('demo.tick', n=1)"
    )
    with log.open("w") as fh:
        subprocess.run(
            [sys.executable, "-c", code], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT, check=True, timeout=60
        )
    text = log.read_text()
    assert "demo.tick" in text and ESC not in text
