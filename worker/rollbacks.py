"""SQL rollback requests, by their old name: worker.services.rollback_requests."""

from worker.services.rollback_requests import (
    SQL_REQUEST_TRIGGER,
    RollbackRequestOutcome,
    carry_out_rollback_requests,
)

__all__ = ["SQL_REQUEST_TRIGGER", "RollbackRequestOutcome", "carry_out_rollback_requests"]
