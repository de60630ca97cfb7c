"""The API's request models: what the handlers validate with, and what the OpenAPI document is generated from.

One model per ``action`` of the seed's POST (a discriminated union on ``action``), each with exactly its own
fields, and one model per endpoint's query string. Every constraint the server enforces is a JSON Schema
keyword here (lengths, ranges, patterns, NUL characters refused), so that a client generated from the document
never sends a request the document allows and the server refuses. The few rules that span two fields are
written as JSON Schema too (``json_schema_extra``) next to the code that enforces them (api.py).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, WithJsonSchema

from worker.config import NON_BLANK_TEXT, PRESET_NAMES

Action = Literal["scan", "promote", "check", "rollback"]
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
# A rollback has no dry run: config.dryRun may only be false (api.py refuses true).
RollbackConfig = Annotated[dict[str, Any], WithJsonSchema(
    {"allOf": [{"x-ref": CONFIG_REF}, {"properties": {"dryRun": {"const": False}}}]})]

_DRY_RUN_CONFLICT: dict[str, Any] = {
    "not": {"anyOf": [
        {"required": ["dryRun", "config"],
         "properties": {"dryRun": {"const": flag},
                        "config": {"type": "object", "required": ["dryRun"],
                                   "properties": {"dryRun": {"const": not flag}}}}}
        for flag in (True, False)
    ]},
}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=False)

    preset: PresetName | None = Field(None, description="A preset under this request's overrides.")


class _DecidingRequest(_Request):
    # dryRun and config.dryRun, when both given, must be equal (api._action_problems).
    model_config = ConfigDict(json_schema_extra=_DRY_RUN_CONFLICT)

    config: ConfigOverrides | None = Field(None, description="Overrides for this request, camelCase.")
    dry_run: bool | None = Field(
        None, alias="dryRun", description="Same as config.dryRun (give one, or both equal). false cannot lift an "
                                          "experiment's own dryRun: true or enabled: false.")


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
        alias="promotionId", json_schema_extra={"format": "uuid", "pattern": UUID_TEXT})
    reason: NonBlank = Field(max_length=MAX_REASON, description="Why; recorded with the rollback.")
    config: RollbackConfig | None = Field(None, description="Overrides for this request, camelCase "
                                                            "(notifications, say); dryRun may only be false.")
    dry_run: Literal[False] | None = Field(None, alias="dryRun", description="Only false: a rollback has no dry run.")


AutoPromoteRequest = Annotated[CheckRequest | PromoteRequest | ScanRequest | RollbackRequest,
                               Field(discriminator="action")]
AUTO_PROMOTE_REQUEST: TypeAdapter[CheckRequest | PromoteRequest | ScanRequest | RollbackRequest] = TypeAdapter(
    AutoPromoteRequest)
# Each action's own fields (by alias), to tell "belongs to another action" from "unknown".
ACTION_FIELDS: dict[str, frozenset[str]] = {
    get_args(m.model_fields["action"].annotation)[0]: frozenset(f.alias or n for n, f in m.model_fields.items())
    for m in (CheckRequest, PromoteRequest, ScanRequest, RollbackRequest)
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
        None, description="Show the configuration with this preset, and only this preset")


class ExperimentsQuery(_Page):
    limit: int = Field(100, ge=1, le=500, description="Page size")
    status: ExperimentStatus | None = Field(None, description="Only experiments with this status")


class PromotionsQuery(_Page):
    status: Literal["active", "rolled_back", "all"] = Field(
        "all", description="active (not rolled back; includes rollback_requested), rolled_back, or all")
    experiment: Annotated[QueryText, Field(max_length=MAX_NAME)] | None = Field(
        None, description="Only rows of this experiment (exact name)")


class StatsQuery(Query):
    days: int = Field(30, ge=1, le=3650, description="Period in days")


class AuditQuery(_Page):
    experiment: Annotated[QueryText, Field(max_length=MAX_NAME)] | None = Field(
        None, description="Only rows of this experiment (exact name)")
    action: Annotated[QueryText, Field(max_length=100)] | None = Field(
        None, description="Only this action (promoted, rolled_back, dry_run, promotion_refused, promotion_failed, "
                          "scan_requested, rollback_requested, ...)")


# The experiment name in /api/experiments/{name} (URL-decoded).
EXPERIMENT_PATH_NAME: TypeAdapter[str] = TypeAdapter(QueryText)
