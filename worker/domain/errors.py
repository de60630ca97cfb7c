"""The refusals the operations raise, without transport details.

A caller can act on each of these (fix the request, pick another experiment, stop retrying). Each front end
maps them in one table: the HTTP API to a status code and an error code (worker.http.errors.DOMAIN_ERRORS),
the CLI to an exit code (worker.cli_engine.EXIT_CODES). Nothing here knows about HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class DomainError(Exception):
    """A refusal a caller can act on: ``message`` for people, ``details`` (JSON-ready) for programs."""

    def __init__(self, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = dict(details or {})


class InvalidRequest(DomainError):
    """The arguments are unusable (no reason, a promotion id that is not a UUID)."""


class ExperimentNotFound(DomainError):
    """No experiment has that name (or it disappeared while being read)."""


class PromotionNotFound(DomainError):
    """No promotion has that id."""


class AlreadyPromoted(DomainError):
    """The experiment already has an active promotion; roll it back before promoting again."""


class AlreadyRolledBack(DomainError):
    """The promotion was rolled back before; nothing changed."""


class ApprovalNotFound(DomainError):
    """No approval has that id."""


class ApprovalNotPending(DomainError):
    """The approval was decided before (approved, declined, expired or closed); nothing changed."""


class RolloutNotFound(DomainError):
    """The experiment has no rollout in progress (never ramped, or its last one is complete or rolled back)."""


class RolloutConflict(DomainError):
    """The rollout is not in a state the request applies to (pause a paused ramp, resume one that is not)."""


class MetricNotFound(DomainError):
    """The experiment has no metric (ab_metrics row) of that name."""


class MetricExists(DomainError):
    """The experiment already has a metric of that name; remove it before adding it again."""


# The name the engine has always used; other modules import it from worker.engine.
EngineError = DomainError

DOMAIN_ERRORS: tuple[type[DomainError], ...] = (
    InvalidRequest,
    ExperimentNotFound,
    PromotionNotFound,
    AlreadyPromoted,
    AlreadyRolledBack,
    ApprovalNotFound,
    ApprovalNotPending,
    RolloutNotFound,
    RolloutConflict,
    MetricNotFound,
    MetricExists,
)
