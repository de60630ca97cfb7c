"""Refresh the configuration reference table in README.md from the config models.

Run after adding or changing a setting: ``python deploy/gen_readme_reference.py`` (``--check`` exits 1 when the
README is stale). tests/unit/test_readme.py fails while they differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- settings-reference:start -->", "<!-- settings-reference:end -->"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def render(readme: str) -> str:
    from worker.cli import settings_reference_markdown

    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{settings_reference_markdown()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is stale, change nothing")
    args = parser.parse_args()
    current = README.read_text(encoding="utf-8")
    wanted = render(current)
    if args.check:
        return 0 if current == wanted else 1
    README.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
