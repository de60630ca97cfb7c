"""pyproject.toml says its license the way current setuptools wants it, so `make install` prints no deprecation."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_license_is_an_spdx_expression_and_the_build_needs_a_setuptools_that_reads_it() -> None:
    data = tomllib.loads(PYPROJECT.read_text())
    # A table ({text = ...}) is deprecated since setuptools 77 and warns on every build.
    assert data["project"]["license"] == "Apache-2.0"
    setuptools = [Requirement(r) for r in data["build-system"]["requires"] if Requirement(r).name == "setuptools"]
    assert len(setuptools) == 1
    [spec] = setuptools
    # Every version the requirement admits must accept the SPDX string (PEP 639 support arrived in 77.0).
    assert not spec.specifier.contains(Version("76.9")) and spec.specifier.contains(Version("77.0"))
