"""The command line starts fast: a command that needs no statistics (``--help``, ``config``, ``token create``, any
command's ``--help``) loads neither scipy nor numpy (together about half a second of start-up), nor the web server
or the database driver. Each case runs ``autopromote`` (``worker.cli:main``, the console script's entry point) in a
fresh interpreter and reports which of those modules it loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("scipy", "numpy", "aiohttp", "asyncpg")

# What the ``autopromote`` console script does, then the heavy modules the process has loaded.
WRAPPER = """
import json, sys
from worker.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "loaded": [m for m in %r if m in sys.modules]}), file=sys.stderr)
""" % (HEAVY,)  # noqa: UP031  # a literal tuple in the child's source


def run_cli(*args: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True, timeout=120, check=False
    )
    last = proc.stderr.strip().splitlines()[-1]
    result: dict[str, object] = json.loads(last)
    return result


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("scan", "--help"),
        ("check", "--help"),
        ("run", "--help"),
        ("serve", "--help"),
        ("config", "show", "--json"),
        ("config", "reference"),
        ("token", "create", "--name", "ci", "--role", "viewer", "--json"),
    ],
    ids=" ".join,
)
def test_commands_without_statistics_do_not_load_scipy(args: tuple[str, ...]) -> None:
    result = run_cli(*args)
    assert result["code"] in (0, None), result
    assert result["loaded"] == [], f"autopromote {' '.join(args)} loaded {result['loaded']}"


def test_the_check_sees_a_heavy_import() -> None:
    # The check above would pass vacuously if the wrapper could not see an import: importing the engine (what
    # check/promote/scan run) loads scipy.
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, worker.engine; print('scipy' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert proc.stdout.strip() == "True"


def test_the_engine_loads_only_the_scipy_it_decides_with() -> None:
    # check/promote/scan load scipy.special (the tests' p-values); the planner's scipy.signal (with scipy.stats,
    # optimize and interpolate: about 0.4 s more) only loads for an experiment with sequentialTuning auto.
    watched = ("scipy.special", "scipy.signal", "scipy.stats", "scipy.optimize")
    code = f"import sys, worker.engine; print(sorted(m for m in sys.modules if m in {watched!r}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "['scipy.special']"
