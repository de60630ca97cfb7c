"""What one evaluation of an experiment concluded and did (``worker.engine.Evaluation.action``)."""

from __future__ import annotations

from typing import Literal, get_args

EvaluationAction = Literal[
    "skipped",  # not running, excluded, or gone
    "busy",  # another transaction holds the experiment's row: the daemon tries again later
    "evaluated",  # decided and recorded; nothing to do
    "promoted",  # promoted in this transaction
    "dry_run",  # would have been promoted (dryRun, or not enabled): reported, nothing changed
    "refused",  # an explicit promote of an experiment that is not eligible
    "awaiting_approval",  # eligible, and approval.require says an operator approves first: a pending approval
    "failed",  # the evaluation raised; recorded as a failure
    "fresh",  # the stored decision already covers what it would read (schema/0007): not evaluated again
]
EVALUATION_ACTIONS: tuple[str, ...] = get_args(EvaluationAction)
