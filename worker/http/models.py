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

Action = Literal["scan", "promote", "check", "rollback", "pause", "resume", "approve", "decline"]
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


ApprovalId = Annotated[str, AfterValidator(_is_uuid)]


class ApproveRequest(_Request):
    """Approve a pending approval: the decision is checked again on the locked state and, when still eligible, the
    winner promoted (or the rollout step advanced) in the same transaction; else the approval is closed with the
    reasons. Needs the operator role; audited."""

    action: Literal["approve"]
    approval_id: ApprovalId = Field(alias="approvalId", json_schema_extra={"format": "uuid", "pattern": UUID_TEXT})


class DeclineRequest(_Request):
    """Decline a pending approval: nothing is promoted. Needs the operator role; audited."""

    action: Literal["decline"]
    approval_id: ApprovalId = Field(alias="approvalId", json_schema_extra={"format": "uuid", "pattern": UUID_TEXT})
    reason: NonBlank = Field(max_length=MAX_REASON, description="Why; recorded with the approval.")


class PauseRequest(_Request):
    """Hold a ramp (rollout.mode = ramp) where it is; it stays guarded. Needs the operator role; audited."""

    action: Literal["pause"]
    experiment_name: NonBlank = Field(alias="experimentName")
    reason: NonBlank | None = Field(None, max_length=MAX_REASON, description="Why; recorded with the pause.")


class ResumeRequest(_Request):
    """Let a paused ramp go on from its step. Needs the operator role; audited."""

    action: Literal["resume"]
    experiment_name: NonBlank = Field(alias="experimentName")


ActionRequest = (
    CheckRequest
    | PromoteRequest
    | ScanRequest
    | RollbackRequest
    | PauseRequest
    | ResumeRequest
    | ApproveRequest
    | DeclineRequest
)
AnyActionRequest = ActionRequest  # the approvals' name for it
AutoPromoteRequest = Annotated[ActionRequest, Field(discriminator="action")]
AUTO_PROMOTE_REQUEST: TypeAdapter[ActionRequest] = TypeAdapter(AutoPromoteRequest)
# Each action's own fields (by alias), to tell "belongs to another action" from "unknown".
ACTION_FIELDS: dict[str, frozenset[str]] = {
    get_args(m.model_fields["action"].annotation)[0]: frozenset(f.alias or n for n, f in m.model_fields.items())
    for m in (
        CheckRequest,
        PromoteRequest,
        ScanRequest,
        RollbackRequest,
        PauseRequest,
        ResumeRequest,
        ApproveRequest,
        DeclineRequest,
    )
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


class ApprovalsQuery(_Page):
    status: Literal["pending", "approved", "declined", "closed", "all"] = Field(
        "pending", description="pending (the default), approved, declined (expired ones too), closed, or all"
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


class PlanQuery(Query):
    """``GET /api/plan``: the planner's inputs, as ``autopromote plan`` takes them (flags in camelCase)."""

    model_config = ConfigDict(allow_inf_nan=False)

    metricType: Literal["conversion", "mean"] = Field(description="The metric's kind")
    baseline: float = Field(description="The control's conversion rate (0.1 = 10%), or its mean (not 0)")
    sd: float | None = Field(None, gt=0, description="Standard deviation of the value per exposure (mean metrics)")
    mde: float = Field(gt=0, le=10_000, description="Minimum detectable effect: relative lift in percent (5 = +5%)")
    alpha: float = Field(0.05, gt=0, le=0.5, description="Significance level")
    power: float = Field(0.8, ge=0.5, lt=1, description="Probability of finding a true lift of mde")
    treatments: int = Field(1, ge=1, le=100, description="Variants besides the control")
    primaryMetrics: int = Field(1, ge=1, le=100, description="Primary metrics (alpha is split across them)")
    rho: float = Field(0.0, gt=-1, lt=1, description="Covariate correlation for CUPED (variance x (1 - rho^2))")
    dailyExposures: float | None = Field(None, gt=0, description="Exposures per arm per day (adds the days)")
    preset: Literal["aggressive", "conservative", "balanced"] | None = Field(
        None, description="Plan under this preset's configuration (method, sequentialTuning, correction)"
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
    se: float | None = Field(None, description="Standard error of the relative lift")
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
    unadjustedLift: float | None = Field(
        description="The lift in percent without CUPED (equal to lift when CUPED did not apply); null: none."
    )
    varianceReduction: float | None = Field(
        description="CUPED's variance reduction of the lift, 1 - Var(adjusted)/Var(unadjusted) (about the squared "
        "correlation of the metric with its pre-exposure value); null when CUPED did not apply."
    )


class MetricResult(_Out):
    """One metric of the experiment: the built-in ``primary`` first, then the ab_metrics rows."""

    name: str
    role: Literal["primary", "guardrail", "secondary"]
    kind: Literal["proportion", "mean", "ratio"]
    direction: Literal["increase", "decrease"]
    margin: float = Field(description="Relative non-inferiority margin of a guardrail (0.02: at most 2% worse).")
    control: MetricControl
    treatments: list[MetricTreatment]


class EtaResult(_Out):
    """When the experiment is expected to be decided (worker/domain/eta.py); null numbers when not projected."""

    exposuresRemainingPerArm: int | None = Field(description="Median exposures per arm still needed")
    hoursRemaining: float | None = Field(description="Median hours still needed; null when the rate is unknown")
    interval80: list[int | None] | None = Field(
        description="Exposures per arm still needed: 10th and 90th percentile (90th null: beyond the horizon)"
    )
    hoursInterval80: list[float | None] | None = Field(description="The same interval in hours")
    basis: Literal["observed", "planned"] = Field(description="Projected with the observed lift, or the planned MDE")
    message: str
    asOf: str | None = Field(
        None, description="From a stored decision: the evaluation it was projected at (hours counted from now)"
    )


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
    notes: list[str] = Field(
        description="What people should know that does not block a promotion, e.g. a metric whose CUPED covariate "
        "is missing for some units (its unadjusted estimate is used)."
    )
    nStar: float | None = Field(None, description="The confidence sequence's N* (sequentialTuning); null for fixed")
    eta: EtaResult | None = Field(None, description="When a decision is expected (running experiments)")
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
    approvalId: str | None = Field(
        None, description="Under approval.require: the pending approval this promotion waits for."
    )
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
    approvalId: str | None = None
    eta: EtaResult | None = Field(None, description="When a decision is expected")


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


class ApprovalResult(_Out):
    """An approval as decided by approve or decline."""

    approvalId: str
    experimentName: str
    kind: Literal["promote", "step"]
    status: Literal["approved", "declined", "closed"] = Field(
        description="approved: promoted (or the step advanced); declined; closed: approved, but the decision "
        "checked again on the locked state refused it (reason)."
    )
    decidedBy: str
    decidedAt: str
    reason: str | None
    expired: bool
    promotion: PromoteResult | None = Field(description="kind promote, approved or closed: the promotion or why not")
    step: dict[str, Any] | None = Field(description="kind step: what the rollout did")


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


class ApproveResponse(_Out):
    success: bool = Field(description="True when approved and acted on (status approved); false when closed.")
    action: Literal["approve"]
    data: ApprovalResult
    config: ConfigSummary


class DeclineResponse(_Out):
    success: Literal[True]
    action: Literal["decline"]
    data: ApprovalResult
    config: ConfigSummary


class PlanAssumptions(_Out):
    """Every input and configured value the plan rests on, and notes where a threshold binds first."""

    metricType: Literal["conversion", "mean"]
    baseline: float
    sd: float | None
    mde: float = Field(description="Relative lift in percent")
    alpha: float
    power: float
    treatments: int
    primaryMetrics: int
    rho: float
    dailyExposuresPerArm: float | None
    correction: str
    alphaPerComparison: float = Field(description="The level one treatment-vs-control comparison is held to")
    varianceFactor: float = Field(description="1 - rho^2")
    sequentialTuning: float | Literal["auto"]
    nStar: float | None = Field(description="The confidence sequence's N* (total over both arms); null for fixed")
    test: str
    notes: list[str]


class PlanResult(_Out):
    """Exposures per arm and days for the configured method, and for a fixed-horizon test."""

    exposuresPerArm: int = Field(description="For the configured method (sequential: where it reaches `power`)")
    fixedHorizonExposuresPerArm: int
    medianExposuresPerArm: int = Field(description="Sequential: the median stopping point; fixed: the horizon")
    days: float | None = Field(description="exposuresPerArm / dailyExposures; null without dailyExposures")
    fixedHorizonDays: float | None
    method: Literal["sequential", "fixed"]
    assumptions: PlanAssumptions


class PlanResponse(_Out):
    success: Literal[True]
    data: PlanResult


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


AnyActionResponse = (
    CheckResponse
    | PromoteResponse
    | ScanResponse
    | RollbackResponse
    | PauseResponse
    | ResumeResponse
    | ApproveResponse
    | DeclineResponse
)
ActionResponse = Annotated[AnyActionResponse, Field(discriminator="action")]
ACTION_RESPONSE: TypeAdapter[AnyActionResponse] = TypeAdapter(ActionResponse)


def action_response(body: dict[str, Any]) -> dict[str, Any]:
    """The POST answer checked against its model and serialised by it (the keys the engine gave, no others)."""
    out: dict[str, Any] = ACTION_RESPONSE.dump_python(
        ACTION_RESPONSE.validate_python(body), mode="json", exclude_unset=True
    )
    return out


# ------------------------------------------------------------------------------------------------ metrics
# /api/experiments/{name}/metrics: the experiment's metrics (ab_metrics rows) beside its built-in one. The
# constraints are the table's (schema/0009), so that the document allows exactly what the database accepts.
METRIC_NAME_TEXT = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$"
PATTERN_MESSAGES[METRIC_NAME_TEXT] = (
    "must be 1-100 letters, digits, '_', '.', ':' or '-', starting with a letter or digit (e.g. revenue_per_user)"
)
MetricKindName = Literal["proportion", "mean", "ratio"]
MetricRoleName = Literal["primary", "guardrail", "secondary"]


class MetricDefinitionRequest(BaseModel):
    """A metric to add. Needs the operator role; audited (metric_added)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = Field(
        pattern=METRIC_NAME_TEXT,
        description="Unique within the experiment. 'primary' changes the built-in metric's role, direction or "
        "margin (its kind must then be the built-in one: proportion for conversion, mean for mean experiments).",
    )
    kind: MetricKindName | None = Field(
        None, description="proportion, mean or ratio; required except for 'primary' (default: the built-in kind)."
    )
    role: MetricRoleName | None = Field(
        None,
        description="primary (must win), guardrail (must not be worse beyond its margin) or secondary (reported, "
        "never decides). Default: primary for 'primary', else secondary.",
    )
    direction: Literal["increase", "decrease"] = Field("increase", description="Which way is better.")
    margin: float = Field(
        0.0,
        ge=0,
        lt=1,
        allow_inf_nan=False,
        description="A guardrail's relative non-inferiority margin: 0.02 = may be at most 2% worse than control.",
    )
    description: str = Field("", max_length=2000, pattern=NO_NUL_TEXT)
    cuped: Literal["auto", "off"] = Field(
        "auto",
        description="Variance reduction with a pre-exposure covariate: auto (when every variant sent one) or off.",
    )


# The metric name in /api/experiments/{name}/metrics/{metric} (URL-decoded).
METRIC_PATH_NAME: TypeAdapter[str] = TypeAdapter(
    Annotated[str, Field(min_length=1, max_length=200, pattern=NO_NUL_TEXT)]
)


class MetricOut(_Out):
    """One metric of an experiment; ``builtin``: the experiment's own metric_type metric (named primary)."""

    name: str
    kind: MetricKindName
    role: MetricRoleName
    direction: Literal["increase", "decrease"]
    margin: float
    description: str
    cuped: Literal["auto", "off"]
    builtin: bool
    units: dict[str, int] = Field(
        description="Units folded so far per variant: every variant's exposures for the built-in metric, the variants "
        "with data for the others."
    )
    createdAt: str | None = Field(description="null for the built-in metric without an ab_metrics row")
    updatedAt: str | None


class MetricList(_Out):
    experimentName: str
    metricType: Literal["conversion", "mean"]
    metrics: list[MetricOut] = Field(
        description="The built-in metric first, then the ab_metrics rows in creation order."
    )


class MetricChange(_Out):
    experimentName: str
    metric: MetricOut


class MetricListResponse(_Out):
    success: Literal[True]
    data: MetricList


class MetricChangeResponse(_Out):
    success: Literal[True]
    data: MetricChange
