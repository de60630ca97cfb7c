"""Every file the package reads at run time (SQL, templates, static files) is listed as package data, so a wheel
built from pyproject.toml has it: the dashboard's templates and the read service's SQL are loaded from the
installed package, not from the source tree."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "worker"


def test_every_data_file_under_worker_is_in_the_package_data() -> None:
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["worker"]
    listed = {path for pattern in globs for path in PACKAGE.glob(pattern) if path.is_file()}
    data = {
        path
        for path in PACKAGE.rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    }
    assert data, "no data files found: the test looks in the wrong place"
    missing = sorted(str(p.relative_to(ROOT)) for p in data - listed)
    assert not missing, f"add these to [tool.setuptools.package-data] in pyproject.toml: {missing}"
    assert any(p.suffix == ".html" for p in listed) and (PACKAGE / "db" / "reads.sql") in listed
