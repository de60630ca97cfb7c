"""The API's request models: what the handlers validate with, and what the OpenAPI document is generated from.

One model per ``action`` of the seed's POST (a discriminated union on ``action``), each with exactly its own
fields, and one model per endpoint's query string. Every constraint the server enforces is a JSON Schema
keyword here (lengths, ranges, patterns, NUL characters refused), so that a client generated from the document
never sends a request the document allows and the server refuses. The few rules that span two fields are
written as JSON Schema too (``json_schema_extra``) next to the code that enforces them (worker/http/api/).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, WithJsonSchema

from worker.config import NON_BLANK_TEXT, PRESET_NAMES

Action = Literal["scan", "promote", "check", "rollback", "pause", "resume"]
ACTIONS: tuple[str, ...] = get_args(Action)
ExperimentStatus = Literal["draft", "running", "paused", "promoted", "rolled_back", "stopped"]
MAX_REASON = 2000
MAX_NAME = 500

# Text PostgreSQL can store: no NUL characters (the server refuses them in bodies, query strings and paths).
NO_NUL_TEXT = "^[^\\u0000]*$"
# A UUID as the document promises it; the server also takes the other spellings uuid.UUID reads.
UUID_TEXT = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# What a pattern mismatch means, for the error message (pydantic's would print the pattern).
PATTERN_MESSAGES = {
    NO_NUL_TEXT: "must not contain NUL characters",
    NON_BLANK_TEXT: "must not be blank, nor contain NUL characters",
}
# pydantic resolves "$ref"s it did not make, so the models name the config schema with "x-ref" (openapi.py turns
# it into a "$ref").
CONFIG_REF = "#/components/schemas/AutoPromotionConfig"


def _is_uuid(value: str) -> str:
    try:
        uuid.UUID(value.strip())
    except ValueError:
        raise ValueError(f"must be a UUID, got {value[:80]!r}") from None
    return value


NonBlank = Annotated[str, Field(pattern=NON_BLANK_TEXT)]
PresetName = Annotated[str, WithJsonSchema({"type": "string", "enum": list(PRESET_NAMES)})]
# The overrides are checked by worker.config.load_config (a 400 invalid_config listing every problem).
ConfigOverrides = Annotated[dict[str, Any], WithJsonSchema({"x-ref": CONFIG_REF})]
# A rollback has no dry run: config.dryRun may only be false (api/actions.py refuses true).
RollbackConfig = Annotated[
    dict[str, Any], WithJsonSchema({"allOf": [{"x-ref": CONFIG_REF}, {"properties": {"dryRun": {"const": False}}}]})
]

_DRY_RUN_CONFLICT: dict[str, Any] = {
    "not": {
        "anyOf": [
            {
                "required": ["dryRun", "config"],
                "properties": {
                    "dryRun": {"const": flag},
                    "config": {"type": "object", "required": ["dryRun"], "properties": {"dryRun": {"const": not flag}}},
                },
            }
            for flag in (True, False)
        ]
    },
}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=False)

    preset: PresetName | None = Field(None, description="A preset under this request's overrides.")


class _DecidingRequest(_Request):
    # dryRun and config.dryRun, when both given, must be equal (api/actions.py _action_problems).
    model_config = ConfigDict(json_schema_extra=_DRY_RUN_CONFLICT)

    config: ConfigOverrides | None = Field(None, description="Overrides for this request, camelCase.")
    dry_run: bool | None = Field(
        None,
        alias="dryRun",
        description="Same as config.dryRun (give one, or both equal). false cannot lift an "
        "experiment's own dryRun: true or enabled: false.",
    )


class CheckRequest(_DecidingRequest):
    """Is the experiment eligible? Needs the viewer role; changes nothing."""

    action: Literal["check"]
    experiment_name: NonBlank = Field(alias="experimentName")


class PromoteRequest(_DecidingRequest):
    """Check and, when eligible, promote the winner in one transaction. Needs the operator role."""

    action: Literal["promote"]
    experiment_name: NonBlank = Field(alias="experimentName")


class ScanRequest(_DecidingRequest):
    """Check every running experiment and promote the eligible ones. Needs the operator role."""

    action: Literal["scan"]


class RollbackRequest(_Request):
    """Restore the weights a promotion replaced. Needs the operator role; there is no dry run."""

    action: Literal["rollback"]
    promotion_id: Annotated[str, AfterValidator(_is_uuid)] = Field(
        alias="promotionId", json_schema_extra={"format": "uuid", "pattern": UUID_TEXT}
    )
    reason: NonBlank = Field(max_length=MAX_REASON, description="Why; recorded with the rollback.")
    config: RollbackConfig | None = Field(
        None, description="Overrides for this request, camelCase (notifications, say); dryRun may only be false."
    )
    dry_run: Literal[False] | None = Field(None, alias="dryRun", description="Only false: a rollback has no dry run.")


class PauseRequest(_Request):
    """Hold a ramp (rollout.mode = ramp) where it is; it stays guarded. Needs the operator role; audited."""

    action: Literal["pause"]
    experiment_name: NonBlank = Field(alias="experimentName")
    reason: NonBlank | None = Field(None, max_length=MAX_REASON, description="Why; recorded with the pause.")


class ResumeRequest(_Request):
    """Let a paused ramp go on from its step. Needs the operator role; audited."""

    action: Literal["resume"]
    experiment_name: NonBlank = Field(alias="experimentName")


ActionRequest = CheckRequest | PromoteRequest | ScanRequest | RollbackRequest | PauseRequest | ResumeRequest
AutoPromoteRequest = Annotated[ActionRequest, Field(discriminator="action")]
AUTO_PROMOTE_REQUEST: TypeAdapter[ActionRequest] = TypeAdapter(AutoPromoteRequest)
# Each action's own fields (by alias), to tell "belongs to another action" from "unknown".
ACTION_FIELDS: dict[str, frozenset[str]] = {
    get_args(m.model_fields["action"].annotation)[0]: frozenset(f.alias or n for n, f in m.model_fields.items())
    for m in (CheckRequest, PromoteRequest, ScanRequest, RollbackRequest, PauseRequest, ResumeRequest)
}


# ------------------------------------------------------------------------------------------ query strings
def _valid_unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


QueryText = Annotated[str, Field(min_length=1, pattern=NO_NUL_TEXT), AfterValidator(_valid_unicode)]


class Query(BaseModel):
    """No parameters (unknown ones are refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _Page(Query):
    limit: int = Field(50, ge=1, le=500, description="Page size")
    offset: int = Field(0, ge=0, le=1_000_000_000, description="Rows to skip")


class ConfigQuery(Query):
    preset: Literal["aggressive", "conservative", "balanced"] | None = Field(
        None, description="Show the configuration with this preset, and only this preset"
    )


class ExperimentsQuery(_Page):
    limit: int = Field(100, ge=1, le=500, description="Page size")
    status: ExperimentStatus | None = Field(None, description="Only experiments with this status")


class PromotionsQuery(_Page):
    status: Literal["active", "rolled_back", "all"] = Field(
        "all", description="active (not rolled back; includes rollback_requested), rolled_back, or all"
    )
    experiment: Annotated[QueryText, Field(max_length=MAX_NAME)] | None = Field(
        None, description="Only rows of this experiment (exact name)"
    )


class StatsQuery(Query):
    days: int = Field(30, ge=1, le=3650, description="Period in days")


class AuditQuery(_Page):
    experiment: Annotated[QueryText, Field(max_length=MAX_NAME)] | None = Field(
        None, description="Only rows of this experiment (exact name)"
    )
    action: Annotated[QueryText, Field(max_length=100)] | None = Field(
        None,
        description="Only this action (promoted, rolled_back, dry_run, promotion_refused, promotion_failed, "
        "scan_requested, rollback_requested, ...)",
    )


# The experiment name in /api/experiments/{name} (URL-decoded).
EXPERIMENT_PATH_NAME: TypeAdapter[str] = TypeAdapter(QueryText)


# ------------------------------------------------------------------------------------------------ results
# What POST answers, as the engine builds it: these models check the engine's data at the edge (a key that drifts
# fails the request loudly instead of reaching clients unannounced) and generate the document's response schemas.
# Field names are the JSON keys (camelCase) so that nothing is renamed on the way out; a key the engine gives only
# sometimes has a default and is left out of the answer when the engine left it out (exclude_unset).
Severity = Literal["info", "warning", "critical"]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SafetyCheck(_Out):
    name: str
    passed: bool
    message: str
    severity: Severity


class WinningVariant(_Out):
    variantName: str
    successRate: float
    sampleSize: int


class Srm(_Out):
    """The sample-ratio-mismatch test."""

    pValue: float
    flagged: bool


class CheckVariant(_Out):
    """One variant as the check saw it; treatments add their comparison with the control, mean metrics their sums."""

    name: str
    isControl: bool
    weight: float
    exposures: int
    conversions: int
    rate: float
    errors: int
    errorRate: float | None
    p95LatencyMs: float | None
    latencySamples: int
    valueSum: float | None = None
    valueSumSq: float | None = None
    lift: float | None = None
    ciLow: float | None = None
    ciHigh: float | None = None
    pValue: float | None = None
    adjustedP: float | None = None
    confidence: float | None = None
    improvement: float | None = None
    significant: bool | None = None
    note: str | None = None


class RolloutGuardItem(_Out):
    """One metric of the current step's guard: the winner against the concurrent control since the step began."""

    metric: str = Field(description="primary, error_rate, latency or critical_alert")
    verdict: Literal["ok", "breach", "waiting"]
    lift: float | None = Field(
        description="primary: relative lift in %; error_rate: difference in percentage points; latency: P95 change in %"
    )
    interval: list[float | None] | None = Field(description="The always-valid interval of lift at the step's alpha")


class RolloutStatus(_Out):
    """Where a ramped promotion is (rollout.mode = ramp)."""

    state: Literal["ramping", "holding", "complete", "rolled_back", "paused", "awaiting_approval"]
    step: int = Field(description="1-based position in steps")
    steps: list[float] = Field(description="Every treatment share of the ramp in %, the last one 100")
    treatmentShare: float = Field(description="The winner's share now, in % (0 once rolled back)")
    stepStartedAt: str
    guard: list[RolloutGuardItem]
    nextStepAt: str | None = Field(description="When the step's time minimum is met (holding: its end)")


class MetricControl(_Out):
    variant: str
    units: int
    mean: float = Field(description="The control's estimate: conversion rate, mean, or ratio of sums.")


class MetricTreatment(_Out):
    variant: str
    units: int
    mean: float
    lift: float | None = Field(description="Relative lift over control in percent (like improvement); null: none.")
    interval: tuple[float, float] | None = Field(
        description="Two-sided interval for the lift in percent at the configured alpha (always valid under the "
        "sequential method); null when the lift is undefined."
    )
    pValue: float = Field(
        description="Two-sided p-value before multiplicity adjustment; for a guardrail the one-sided "
        "non-inferiority p-value."
    )
    verdict: Literal["better", "worse", "inconclusive", "non_inferior", "not_shown"]


class MetricResult(_Out):
    """One metric of the experiment: the built-in ``primary`` first, then the ab_metrics rows."""

    name: str
    role: Literal["primary", "guardrail", "secondary"]
    kind: Literal["proportion", "mean", "ratio"]
    direction: Literal["increase", "decrease"]
    margin: float = Field(description="Relative non-inferiority margin of a guardrail (0.02: at most 2% worse).")
    control: MetricControl
    treatments: list[MetricTreatment]


class CheckResult(_Out):
    """The seed's check result: eligibility, figures, safety checks, reasons."""

    eligible: bool
    experimentName: str
    winningVariant: WinningVariant | None
    confidence: float
    improvement: float
    safetyChecks: list[SafetyCheck]
    reasons: list[str]
    bestVariant: str | None
    controlVariant: str | None
    method: str
    metricType: str
    priority: str
    variants: list[CheckVariant]
    srm: Srm | None
    evaluatedAt: str
    metrics: list[MetricResult] = Field(description="Every metric with its role, lift, interval and verdict.")
    rollout: RolloutStatus | None = Field(None, description="The experiment's ramp, when it was promoted by one.")


class PromoteResult(_Out):
    """A promotion, a dry run of one, or a refusal (not eligible: ``success`` false with ``reasons``)."""

    success: bool = Field(description="True when promoted (or, in a dry run, when it would be).")
    experimentName: str
    promotedVariantName: str | None
    confidence: float | None
    improvement: float | None
    promotionId: str | None
    notificationsQueued: int = Field(description="Notifications put in the outbox (the seed's notificationsSent)")
    dryRun: bool
    enabled: bool | None = Field(None, description="In a dry run: whether promotion is enabled at all.")
    reasons: list[str] | None = Field(None, description="Why not (not promoted, or a dry run).")
    eligibility: CheckResult
    promotedAt: str | None = Field(None, description="When promoted (a promotion, not a dry run).")
    rollout: RolloutStatus | None = Field(None, description="Under rollout.mode = ramp: the ramp's first step.")


class ScanItem(_Out):
    experimentName: str
    eligible: bool
    confidence: float | None
    improvement: float | None
    winningVariant: WinningVariant | None
    reasons: list[str]
    promoted: bool
    metrics: list[MetricResult]
    error: str | None = None
    dryRun: bool | None = None
    promotionId: str | None = None


class ScanResult(_Out):
    scanned: int
    eligible: int
    promoted: int
    dryRun: bool
    results: list[ScanItem]


class RollbackResult(_Out):
    success: bool
    promotionId: str
    experimentName: str
    rolledBackVariantName: str
    reason: str
    rolledBackBy: str
    rolledBackAt: str
    restoredWeights: dict[str, float]
    trigger: str
    notificationsQueued: int


class ConfigSummary(_Out):
    enabled: bool
    dryRun: bool
    preset: PresetName


class CheckResponse(_Out):
    success: Literal[True]
    action: Literal["check"]
    data: CheckResult
    config: ConfigSummary


class PromoteResponse(_Out):
    success: bool = Field(description="Mirrors data.success.")
    action: Literal["promote"]
    data: PromoteResult
    config: ConfigSummary


class ScanResponse(_Out):
    success: Literal[True]
    action: Literal["scan"]
    data: ScanResult
    config: ConfigSummary


class RollbackResponse(_Out):
    success: Literal[True]
    action: Literal["rollback"]
    data: RollbackResult
    config: ConfigSummary


class RolloutActionResult(_Out):
    """A paused or resumed ramp: where it is now."""

    experimentName: str
    rollout: RolloutStatus


class PauseResponse(_Out):
    success: Literal[True]
    action: Literal["pause"]
    data: RolloutActionResult
    config: ConfigSummary


class ResumeResponse(_Out):
    success: Literal[True]
    action: Literal["resume"]
    data: RolloutActionResult
    config: ConfigSummary


AnyActionResponse = CheckResponse | PromoteResponse | ScanResponse | RollbackResponse | PauseResponse | ResumeResponse
ActionResponse = Annotated[AnyActionResponse, Field(discriminator="action")]
ACTION_RESPONSE: TypeAdapter[AnyActionResponse] = TypeAdapter(ActionResponse)


def action_response(body: dict[str, Any]) -> dict[str, Any]:
    """The POST answer checked against its model and serialised by it (the keys the engine gave, no others)."""
    out: dict[str, Any] = ACTION_RESPONSE.dump_python(
        ACTION_RESPONSE.validate_python(body), mode="json", exclude_unset=True
    )
    return out
