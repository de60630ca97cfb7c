"""The README's claims that can drift: the settings reference, the quickstart, the commands it names."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from worker.cli import build_parser, settings_reference_markdown
from worker.config import all_settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_settings_reference_matches_the_config_models() -> None:
    start = README.index("<!-- settings-reference:start -->") + len("<!-- settings-reference:start -->")
    end = README.index("<!-- settings-reference:end -->")
    assert README[start:end].strip() == settings_reference_markdown(), (
        "README settings table is stale: run `python deploy/gen_readme_reference.py`"
    )
    for info in all_settings():
        assert f"`{info.env}`" in README[start:end]


def test_quickstart_is_exactly_two_commands() -> None:
    quick = README.split("## Quickstart", 1)[1].split("##", 1)[0]
    block = re.search(r"```sh\n(.*?)```", quick, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_every_cli_command_in_the_readme_exists() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    known = set(sub.choices)  # type: ignore[arg-type]
    named = set(re.findall(r"`autopromote ([a-z]+)", README))
    assert named, "the README names no command"
    assert named <= known, f"README names unknown commands: {named - known}"


def test_readme_script_check_mode_agrees() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "gen_readme_reference.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
