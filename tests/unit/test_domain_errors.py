"""Domain errors carry no transport details; the HTTP API and the CLI each map them in one table."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.api import DOC
from worker import engine
from worker.cli import EXIT_REFUSED, EXIT_USAGE
from worker.cli_engine import EXIT_CODES, exit_code
from worker.domain import errors
from worker.http.errors import DOMAIN_ERRORS, domain_status

WORKER = Path(__file__).resolve().parents[2] / "worker"
# The domain: pure modules that must not know how they are served.
DOMAIN_MODULES = [
    *sorted((WORKER / "domain").rglob("*.py")),
    WORKER / "decide.py",
    *sorted((WORKER / "stats").rglob("*.py")),
]

DOCUMENTED = {
    errors.InvalidRequest: (400, "invalid_request", EXIT_USAGE),
    errors.ExperimentNotFound: (404, "experiment_not_found", EXIT_USAGE),
    errors.PromotionNotFound: (404, "promotion_not_found", EXIT_USAGE),
    errors.AlreadyPromoted: (409, "already_promoted", EXIT_REFUSED),
    errors.AlreadyRolledBack: (409, "already_rolled_back", EXIT_REFUSED),
    errors.ApprovalNotFound: (404, "approval_not_found", EXIT_USAGE),
    errors.ApprovalNotPending: (409, "approval_not_pending", EXIT_REFUSED),
    errors.RolloutNotFound: (404, "rollout_not_found", EXIT_USAGE),
    errors.RolloutConflict: (409, "rollout_state_conflict", EXIT_REFUSED),
    errors.MetricNotFound: (404, "metric_not_found", EXIT_USAGE),
    errors.MetricExists: (409, "metric_exists", EXIT_REFUSED),
}
# Where each error is answered (the seed's POST, or the metrics routes).
METRICS_OPERATION = ("/api/experiments/{name}/metrics/{metric}", "delete")
OPERATION = {errors.MetricNotFound: METRICS_OPERATION, errors.MetricExists: ("/api/experiments/{name}/metrics", "post")}


@pytest.mark.parametrize("cls", errors.DOMAIN_ERRORS, ids=lambda c: c.__name__)
def test_each_domain_error_maps_to_its_documented_status_and_exit_code(cls: type[errors.DomainError]) -> None:
    status, code, exit_status = DOCUMENTED[cls]
    exc = cls("a message", {"key": "value"})
    assert domain_status(exc) == (status, code)
    assert exit_code(exc) == exit_status
    # The operation documents the status with this code, and the code is one of the document's error codes.
    path, method = OPERATION.get(cls, ("/api/experiments/auto-promote", "post"))
    responses = DOC["paths"][path][method]["responses"]
    assert str(status) in responses and code in responses[str(status)]["description"]
    assert code in DOC["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]


def test_every_domain_error_is_in_both_tables_and_a_subclass_takes_its_base_entry() -> None:
    assert set(errors.DOMAIN_ERRORS) <= set(DOMAIN_ERRORS) and set(errors.DOMAIN_ERRORS) <= set(EXIT_CODES)

    class StillNotFound(errors.ExperimentNotFound):
        pass

    assert domain_status(StillNotFound("x")) == (404, "experiment_not_found")
    assert exit_code(StillNotFound("x")) == EXIT_USAGE


def test_domain_errors_carry_no_http() -> None:
    for cls in (errors.DomainError, *errors.DOMAIN_ERRORS):
        assert not hasattr(cls, "status") and not hasattr(cls, "code"), cls
        assert not hasattr(cls("x"), "status")  # type: ignore[operator]
    # The old import names still work (other modules import the errors from the engine).
    assert engine.EngineError is errors.DomainError and engine.ExperimentNotFound is errors.ExperimentNotFound


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", DOMAIN_MODULES, ids=lambda p: str(p.relative_to(WORKER)))
def test_domain_modules_import_nothing_from_http(path: Path) -> None:
    transport = [n for n in _imports(path) if n.split(".")[:2] == ["worker", "http"] or n.split(".")[0] == "aiohttp"]
    assert not transport, f"{path.relative_to(WORKER)} imports {transport}"


def test_the_scan_sees_an_http_import() -> None:
    # The check above would pass vacuously if _imports missed an import form.
    probe = WORKER / "http" / "api" / "actions.py"
    assert any(n.startswith("worker.http") for n in _imports(probe)) and "aiohttp" in _imports(probe)
