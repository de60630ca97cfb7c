""".env.example: every setting with its default, all commented out, and exactly what the generator writes."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from worker.config import (
    PRESET_ENV,
    AutoPromotionConfig,
    SettingInfo,
    Settings,
    all_settings,
    iter_settings,
    load_config,
    load_settings,
)

ROOT = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = ROOT / ".env.example"
GENERATOR = ROOT / "deploy" / "gen_env_example.py"
REGENERATE = (
    "run `python deploy/gen_env_example.py` (with the project's virtualenv: "
    "`.venv/bin/python deploy/gen_env_example.py`) and commit .env.example"
)
ASSIGNMENT = re.compile(r"^#\s?([A-Z][A-Z0-9_]*)=(.*)$")


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_env_example", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def entries() -> dict[str, list[tuple[str, str]]]:
    """Each ``# VAR=value`` line of .env.example: var -> [(value, the comment block it sits in)]."""
    found: dict[str, list[tuple[str, str]]] = {}
    for block in ENV_EXAMPLE.read_text(encoding="utf-8").split("\n\n"):
        for line in block.splitlines():
            match = ASSIGNMENT.match(line)
            if match:
                found.setdefault(match.group(1), []).append((match.group(2), block))
    return found


def _at(tree: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        tree = tree[part]
    return tree


def effective_values(env: dict[str, str]) -> dict[str, Any]:
    """The value of every setting, by environment variable, when ``env`` is the whole environment."""
    effective = load_config(env=env)
    config = effective.config.public()
    settings = load_settings(env=env).model_dump(mode="json", by_alias=True)
    values = {info.env: _at(config, info.path) for info in iter_settings(AutoPromotionConfig)}
    values.update({info.env: _at(settings, info.path) for info in iter_settings(Settings)})
    values[PRESET_ENV] = effective.preset
    return values


def as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def test_every_setting_appears_once() -> None:
    found = entries()
    missing = [info.env for info in all_settings() if info.env not in found]
    assert not missing, f".env.example lacks {', '.join(missing)}: {REGENERATE}"
    repeated = [env for env, lines in found.items() if len(lines) > 1]
    assert not repeated, f".env.example sets {', '.join(repeated)} more than once: {REGENERATE}"


def test_no_line_names_an_unknown_setting() -> None:
    known = {info.env for info in all_settings()}
    unknown = sorted(set(entries()) - known)
    assert not unknown, f".env.example names settings that no longer exist: {', '.join(unknown)}: {REGENERATE}"


@pytest.mark.parametrize("info", all_settings(), ids=lambda info: info.env)
def test_each_line_holds_the_default(info: SettingInfo) -> None:
    """Uncommenting a line as it stands must change nothing: its value parses back to the default."""
    lines = entries().get(info.env)
    assert lines, f".env.example lacks {info.env}: {REGENERATE}"
    value, block = lines[0]
    if info.default is None and value:
        # An example value (DATABASE_URL) instead of the empty default: the comment must say so.
        assert "unset" in block.lower(), f"{info.env}={value} is an example; its comment must say the default is unset"
        return
    values = effective_values({info.env: value})
    if info.env in values:
        assert values[info.env] == as_json(info.default), (
            f"{info.env}={value} does not read back as its default {info.default!r}: {REGENERATE}"
        )
    else:  # a setting outside the models this test reads: compare the text at least
        assert value == load_generator().render_value(info.default), f"{info.env}: {REGENERATE}"


def test_every_line_is_commented_out_so_presets_still_apply() -> None:
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    live = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert not live, f"uncommented lines would override the preset: {live}"
    head = text[:1500]
    assert "defaults <- preset" in head and "environment" in head, "the header must explain the layering"


def test_database_url_note_says_unset_means_embedded() -> None:
    ((value, block),) = entries()["DATABASE_URL"]
    assert value.startswith("postgresql://")
    assert "embedded" in block and "throw-away" in block


def test_committed_file_is_the_generator_output() -> None:
    expected = load_generator().render()
    assert ENV_EXAMPLE.read_text(encoding="utf-8") == expected, f".env.example is stale: {REGENERATE}"


def test_generator_check_reports_a_stale_file_and_writing_fixes_it(tmp_path: Path) -> None:
    gen = load_generator()
    gen.TARGET = tmp_path / ".env.example"  # type: ignore[attr-defined]
    gen.TARGET.write_text("# stale\n", encoding="utf-8")
    assert gen.main(["--check"]) == 1
    assert gen.TARGET.read_text(encoding="utf-8") == "# stale\n"
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0
    assert gen.TARGET.read_text(encoding="utf-8") == gen.render()


def test_generator_runs_as_a_script_from_any_directory(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_a_value_that_would_need_quoting_is_refused() -> None:
    with pytest.raises(ValueError, match="needs quoting"):
        load_generator().render_value("two words")
