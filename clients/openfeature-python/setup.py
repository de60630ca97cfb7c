"""The optional C accelerator of the hash (ab_autopromote_openfeature._fnv); everything else is in pyproject.toml.

``optional=True``: without a compiler the install still succeeds and hashing.py uses its pure-Python twin."""

from setuptools import Extension, setup

setup(
    ext_modules=[Extension("ab_autopromote_openfeature._fnv", ["src/ab_autopromote_openfeature/_fnv.c"], optional=True)]
)
