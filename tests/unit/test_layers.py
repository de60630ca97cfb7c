"""The layer rules of ARCHITECTURE.md, checked in the suite by reading every module's imports with ``ast``.

import-linter enforces the same contracts under ``make check``; this test makes a plain ``pytest`` run fail too.
Imports inside functions and under ``if TYPE_CHECKING:`` count: a layer rule is about what a module knows.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "worker"

RUNTIME = ("worker.daemon", "worker.listener", "worker.evaluator", "worker.scanner")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = ROOT) -> set[str]:
    """Every module ``path`` imports, absolute (``from . import x`` resolved against its package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = {module_name(p): imports_of(p) for p in sorted(WORKER.rglob("*.py"))}


def within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def offenders(
    modules: dict[str, set[str]],
    *,
    importers: tuple[str, ...],
    forbidden: tuple[str, ...],
    exempt: tuple[str, ...] = (),
) -> list[str]:
    return sorted(
        f"{mod} imports {imp}"
        for mod, imps in modules.items()
        if within(mod, *importers) and not within(mod, *exempt)
        for imp in imps
        if within(imp, *forbidden)
    )


def test_the_scan_sees_the_package() -> None:
    assert "worker.db.connect" in MODULES and "asyncpg" in MODULES["worker.db.connect"]
    assert "worker.http.app" in MODULES["worker.http.dashboard.bridge"]


def test_only_worker_db_imports_asyncpg() -> None:
    assert offenders(MODULES, importers=("worker",), forbidden=("asyncpg",), exempt=("worker.db",)) == []


def test_the_domain_and_the_math_know_no_storage_transport_or_services() -> None:
    assert (
        offenders(
            MODULES,
            importers=("worker.domain", "worker.decide", "worker.stats"),
            forbidden=("worker.db", "worker.http", "worker.services"),
        )
        == []
    )


def test_services_never_import_http_or_the_runtime() -> None:
    assert offenders(MODULES, importers=("worker.services",), forbidden=("worker.http", *RUNTIME)) == []


def test_http_never_writes_through_the_store() -> None:
    assert offenders(MODULES, importers=("worker.http",), forbidden=("worker.db.store",)) == []


@pytest.mark.parametrize(
    ("source", "rule"),
    [
        ("import asyncpg\n", "asyncpg"),
        ("from asyncpg.exceptions import UniqueViolationError\n", "asyncpg"),
        ("def f():\n    from worker.http import app\n", "services"),
        ("from ..db import store\n", "http"),
    ],
)
def test_the_rules_catch_a_violation(tmp_path: Path, source: str, rule: str) -> None:
    """The checks above fail on a module that breaks them (so they are not vacuous)."""
    package = tmp_path / "worker" / ("http" if rule == "http" else "services")
    package.mkdir(parents=True)
    path = package / "bad.py"
    path.write_text(source)
    found = imports_of(path, tmp_path)
    name = "worker.http.bad" if rule == "http" else "worker.services.bad"
    modules = {name: found}
    if rule == "asyncpg":
        assert offenders(modules, importers=("worker",), forbidden=("asyncpg",), exempt=("worker.db",))
    elif rule == "services":
        assert offenders(modules, importers=("worker.services",), forbidden=("worker.http", *RUNTIME))
    else:
        assert offenders(modules, importers=("worker.http",), forbidden=("worker.db.store",))
