"""The OpenAPI 3.1 document of the HTTP API, built from the same models the handlers validate with.

The POST body, the POST answers, the query strings and the configuration are generated from the pydantic models
(worker/http/models.py, worker/config/models.py); the read endpoints' answers are still written here. The tests validate
every response they receive against this document, a property-based fuzz sends broken requests, and Schemathesis
sends the requests the document allows (none may be refused); a change of behaviour that is not written down here
fails the suite.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any, get_args

from pydantic import BaseModel

from worker import __version__
from worker.config import PRESET_NAMES, AutoPromotionConfig
from worker.http import models

EXPERIMENT_STATUSES = get_args(models.ExperimentStatus)
ERROR_CODES = (
    "malformed_json",
    "invalid_request",
    "invalid_config",
    "unauthorized",
    "forbidden",
    "not_found",
    "experiment_not_found",
    "promotion_not_found",
    "rollout_not_found",
    "metric_not_found",
    "metric_exists",
    "method_not_allowed",
    "already_promoted",
    "already_rolled_back",
    "approval_not_found",
    "approval_not_pending",
    "rollout_state_conflict",
    "payload_too_large",
    "rate_limited",
    "internal_error",
    "database_unavailable",
)


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(
    props: dict[str, Any],
    required: list[str] | tuple[str, ...] | None = None,
    *,
    additional: bool | dict[str, Any] = True,
    description: str | None = None,
) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else list(required),
    }
    if additional is not True:
        schema["additionalProperties"] = additional
    if description:
        schema["description"] = description
    return schema


def _arr(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def _null(type_: str, **extra: Any) -> dict[str, Any]:
    return {"type": [type_, "null"], **extra}


STR, INT, NUM, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
TIME = {"type": "string", "format": "date-time"}
NTIME = _null("string", format="date-time")
NSTR, NNUM, NINT = _null("string"), _null("number"), _null("integer")
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def _clean(node: Any) -> Any:
    """pydantic's JSON Schema without the generated titles, ``env`` as the extension ``x-env``, ``x-ref`` (see
    models.CONFIG_REF) as ``$ref``."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "title" and isinstance(value, str):
                continue
            out[{"env": "x-env", "x-ref": "$ref"}.get(key, key)] = _clean(value)
        return out
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return node


def _request_schemas() -> dict[str, Any]:
    """The POST body: one schema per action (``oneOf`` with a discriminator on ``action``), from models.py."""
    raw = models.AUTO_PROMOTE_REQUEST.json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    defs = raw.pop("$defs", {})
    raw["description"] = (
        "One object per action, each with exactly its own fields (others are refused). "
        "check needs the viewer role; scan, promote, rollback, pause and resume need operator."
    )
    cleaned: dict[str, Any] = _clean({"AutoPromoteRequest": raw, **defs})
    return cleaned


def _response_schemas() -> dict[str, Any]:
    """The POST answers: one envelope per action (``oneOf`` with a discriminator on ``action``), from models.py."""
    raw = models.ACTION_RESPONSE.json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    defs = raw.pop("$defs", {})
    cleaned: dict[str, Any] = _clean({"ActionResponse": raw, **defs})
    return cleaned


def _metric_schemas() -> dict[str, Any]:
    """The metrics routes' body and answers, from models.py."""
    from pydantic.json_schema import models_json_schema

    members: list[tuple[type[BaseModel], Any]] = [
        (models.MetricDefinitionRequest, "validation"),
        (models.MetricListResponse, "serialization"),
        (models.MetricChangeResponse, "serialization"),
    ]
    _, raw = models_json_schema(members, by_alias=True, ref_template="#/components/schemas/{model}")
    cleaned: dict[str, Any] = _clean(raw.get("$defs", {}))
    return cleaned


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    """A query model's fields as OpenAPI parameters (an optional field is simply left out: no null)."""
    raw = model.model_json_schema(by_alias=True)
    required = set(raw.get("required", []))
    params: list[dict[str, Any]] = []
    for name, prop in _clean(raw.get("properties", {})).items():
        description = prop.pop("description", "")
        if "anyOf" in prop:
            branches = [b for b in prop.pop("anyOf") if b.get("type") != "null"]
            assert len(branches) == 1, (model, name)
            prop = {**branches[0], **prop}
        if prop.get("default", 0) is None:
            del prop["default"]
        params.append(_param(name, prop, description, required=name in required))
    return params


def _config_schemas() -> dict[str, Any]:
    raw = AutoPromotionConfig.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    defs = raw.pop("$defs", {})
    cleaned: dict[str, Any] = _clean({"AutoPromotionConfig": raw, **defs})
    cleaned["AutoPromotionConfig"]["description"] = (
        "The decision configuration in camelCase. As a request's `config`, every field is optional and overrides "
        "the server's configuration (defaults <- preset <- environment <- request <- per-experiment config). "
        "Where the request and an experiment's own config set the same safety setting (dryRun, enabled, the "
        "thresholds and safety limits), the safer of the two holds: a request can make a decision stricter or "
        "dry, never less safe than the experiment's own config. "
        "Value ranges are checked by the server: a value out of range is a 400 `invalid_config` listing every "
        "problem with its path."
    )
    return cleaned


def _schemas() -> dict[str, Any]:
    variant_live = _obj(
        {
            "name": STR,
            "isControl": BOOL,
            "weight": NUM,
            "exposures": INT,
            "conversions": INT,
            "rate": NNUM,
            "errors": INT,
            "errorRate": NNUM,
            "p95LatencyMs": NNUM,
            "latencySamples": INT,
            "updatedAt": NTIME,
        },
        description="Live statistics of one variant, from ab_variant_stats (as of the last fold).",
    )
    winning = {"anyOf": [_obj({"variantName": STR, "successRate": NUM, "sampleSize": INT}), {"type": "null"}]}
    last_decision = {
        "anyOf": [
            {
                **_obj(
                    {
                        "eligible": BOOL,
                        "confidence": NNUM,
                        "improvement": NNUM,
                        "winningVariant": winning,
                        "bestVariant": NSTR,
                        "controlVariant": NSTR,
                        "method": NSTR,
                        "reasons": _arr(STR),
                        "lastEvaluatedAt": TIME,
                        "evaluations": INT,
                    },
                    required=["eligible", "reasons", "lastEvaluatedAt", "evaluations"],
                    description=(
                        "The last decision stored in ab_experiment_state (the detail view adds the full check data)."
                    ),
                )
            },
            {"type": "null"},
        ]
    }
    experiment = _obj(
        {
            "id": INT,
            "name": STR,
            "status": {"type": "string", "enum": list(EXPERIMENT_STATUSES)},
            "metricType": STR,
            "priority": STR,
            "description": STR,
            "config": ANY_OBJECT,
            "startedAt": NTIME,
            "createdAt": TIME,
            "updatedAt": TIME,
            "activePromotionId": NSTR,
            "pendingUpdates": {
                "type": "integer",
                "minimum": 0,
                "maximum": 10_001,
                "description": "Metric updates recorded but not folded into the statistics yet (10001 means more); "
                "the daemon folds them within moments, and any check, promote or scan folds first",
            },
            "variants": _arr(_ref("VariantStats")),
            "lastDecision": last_decision,
            "eta": {
                "anyOf": [_ref("EtaResult"), {"type": "null"}],
                "description": "GET /api/experiments/{name} only: when a decision is expected, from the last "
                "decision (null unless running)",
            },
        },
        required=[
            "id",
            "name",
            "status",
            "metricType",
            "priority",
            "description",
            "config",
            "startedAt",
            "createdAt",
            "updatedAt",
            "activePromotionId",
            "pendingUpdates",
            "variants",
            "lastDecision",
        ],
    )
    promotion = _obj(
        {
            "id": STR,
            "status": {"type": "string", "enum": ["active", "rollback_requested", "rolled_back"]},
            "experimentName": STR,
            "promotedVariantName": STR,
            "controlVariantName": NSTR,
            "confidence": NUM,
            "improvement": NUM,
            "method": STR,
            "promotedAt": TIME,
            "promotedBy": STR,
            "previousWeights": ANY_OBJECT,
            "guardUntil": NTIME,
            "rollbackRequestedAt": NTIME,
            "rollbackRequestedBy": NSTR,
            "rollbackRequestReason": NSTR,
            "rollbackAt": NTIME,
            "rollbackReason": NSTR,
            "rolledBackBy": NSTR,
        }
    )
    audit = _obj(
        {
            "id": INT,
            "createdAt": TIME,
            "actor": STR,
            "action": STR,
            "experimentId": NINT,
            "experimentName": NSTR,
            "promotionId": NSTR,
            "details": ANY_OBJECT,
        }
    )
    history = _obj(
        {
            "createdAt": TIME,
            "variantName": STR,
            "exposures": INT,
            "controlExposures": INT,
            "lift": NNUM,
            "ciLow": NNUM,
            "ciHigh": NNUM,
            "confidence": NNUM,
            "eligible": BOOL,
        }
    )
    alert = _obj(
        {
            "id": INT,
            "global": BOOL,
            "severity": {"type": "string", "enum": ["info", "warning", "critical"]},
            "message": STR,
            "createdAt": TIME,
        }
    )

    def page(key: str, item: str) -> dict[str, Any]:
        return _ok(_obj({key: _arr(_ref(item)), "total": INT, "limit": INT, "offset": INT}))

    schemas: dict[str, Any] = {
        **_config_schemas(),
        **_request_schemas(),
        **_response_schemas(),
        **_metric_schemas(),
        "Error": _obj(
            {
                "success": {"const": False},
                "error": _obj(
                    {"code": {"type": "string", "enum": list(ERROR_CODES)}, "message": STR, "details": ANY_OBJECT},
                    additional=False,
                ),
            },
            additional=False,
        ),
        "VariantStats": variant_live,
        "Experiment": experiment,
        "Promotion": promotion,
        "AuditEntry": audit,
        "ConfigResponse": _ok(
            _obj(
                {
                    "preset": {"type": "string", "enum": list(PRESET_NAMES)},
                    "config": {"anyOf": [_ref("AutoPromotionConfig"), {"type": "null"}]},
                    "sources": {
                        "type": "object",
                        "additionalProperties": STR,
                        "description": "camelCase path -> default | preset:NAME | env:VAR",
                    },
                    "validation": _obj({"valid": BOOL, "errors": _arr(STR)}),
                    "presets": {"type": "object", "additionalProperties": ANY_OBJECT},
                    "presetNames": _arr(STR),
                    "api": _obj(
                        {
                            "auth": {"type": "string", "enum": ["enabled", "disabled"]},
                            "rateLimitPerMinute": INT,
                            "maxBodyBytes": INT,
                        }
                    ),
                    "warnings": _arr(STR),
                }
            )
        ),
        "ExperimentList": page("experiments", "Experiment"),
        "ExperimentDetail": _ok(
            _obj(
                {
                    "experiment": _ref("Experiment"),
                    "history": _arr(history),
                    "promotions": _arr(_ref("Promotion")),
                    "audit": _arr(_ref("AuditEntry")),
                    "alerts": _arr(alert),
                    "rollout": {
                        "anyOf": [_ref("RolloutStatus"), {"type": "null"}],
                        "description": "The experiment's ramp (rollout.mode = ramp), null when it never ramped",
                    },
                }
            )
        ),
        "PromotionList": page("promotions", "Promotion"),
        "PromotionStats": _ok(
            _obj(
                {
                    "days": INT,
                    "stats": _obj(
                        {
                            "periodDays": INT,
                            "totalPromotions": INT,
                            "promotionsPerDay": NUM,
                            "successfulPromotions": INT,
                            "failedPromotions": INT,
                            "avgConfidence": NNUM,
                            "avgImprovement": NNUM,
                            "avgHoursToPromotion": NNUM,
                            "rollbackCount": INT,
                            "rollbackRate": NUM,
                            "activePromotions": INT,
                        }
                    ),
                    "perDay": _arr(
                        _obj({"day": {"type": "string", "format": "date"}, "promotions": INT, "rollbacks": INT})
                    ),
                }
            )
        ),
        "AuditList": page("entries", "AuditEntry"),
        "Approval": _obj(
            {
                "approvalId": STR,
                "experimentName": STR,
                "kind": {"type": "string", "enum": ["promote", "step"]},
                "status": {"type": "string", "enum": ["pending", "approved", "declined", "closed"]},
                "requestedAt": TIME,
                "requestedBy": STR,
                "expiresAt": TIME,
                "variant": NSTR,
                "step": NINT,
                "decision": {**ANY_OBJECT, "description": "The decision (check data) the request was made on"},
                "decidedAt": NTIME,
                "decidedBy": NSTR,
                "reason": NSTR,
                "expired": BOOL,
                "promotionId": NSTR,
            }
        ),
        "ApprovalList": page("approvals", "Approval"),
        **_plan_schemas(),
    }
    return schemas


def _plan_schemas() -> dict[str, Any]:
    """The planner's answer, from its pydantic models (api.get_plan validates what it sends with them)."""
    raw = models.PlanResponse.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    defs = raw.pop("$defs", {})
    cleaned: dict[str, Any] = _clean({"PlanResponse": raw, **defs})
    return cleaned


def _ok(data: dict[str, Any]) -> dict[str, Any]:
    return _obj({"success": {"const": True}, "data": data}, additional=False)


_ERROR_TEXT = {
    "400": "Bad input: malformed_json, invalid_request or invalid_config; `details.errors` lists "
    "`{path, message}` for every problem. A request this document allows is refused only as "
    "invalid_config when it switches on what the server's own configuration has set to 0 or empty "
    "(maxConcurrentPromotions, guard.guardHours, notifications.channels).",
    "401": "No token, a malformed Authorization header, or an unknown token (`WWW-Authenticate: Bearer`).",
    "403": "The token's role is too weak for the action (`details.requiredRole`).",
    "404": "experiment_not_found, promotion_not_found, approval_not_found, or rollout_not_found (pause/resume: no "
    "ramp in progress).",
    "404m": "experiment_not_found, or metric_not_found (the experiment has no metric of that name).",
    "409": "already_promoted (the experiment has an active promotion), already_rolled_back, approval_not_pending "
    "(approved, declined, expired or closed before; `details.status`), or rollout_state_conflict (pause a paused "
    "ramp, resume one that is not paused).",
    "409m": "metric_exists: the experiment already has a metric of that name (remove it first).",
    "413": "payload_too_large: the body is over AUTO_PROMOTION_MAX_BODY_BYTES.",
    "429": "rate_limited: over AUTO_PROMOTION_RATE_LIMIT scan/promote/rollback/approve/decline calls per minute for "
    "this token; "
    "see `Retry-After`.",
    "500": "internal_error: an unexpected failure, logged under `details.requestId`; no stack trace is sent.",
    "503": "database_unavailable: the database cannot be reached; see `Retry-After`.",
}


def _errors(*statuses: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in statuses:
        status = key.rstrip("m")  # "404m": the metrics routes' wording of a status
        response: dict[str, Any] = {
            "description": _ERROR_TEXT[key],
            "content": {"application/json": {"schema": _ref("Error")}},
        }
        if status in ("429", "503"):
            response["headers"] = {
                "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before retrying"}
            }
        if status == "401":
            response["headers"] = {"WWW-Authenticate": {"schema": STR}}
        out[status] = response
    return out


def _json(schema_name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema_name)}}}


def _param(
    name: str, schema: dict[str, Any], description: str, where: str = "query", required: bool = False
) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": schema, "description": description}


_READ_ERRORS = ("400", "401", "500", "503")
_EXPERIMENT_PATH = _param(
    "name", _clean(models.EXPERIMENT_PATH_NAME.json_schema()), "Experiment name (URL-encoded)", "path", True
)
_VIEWER: list[dict[str, list[str]]] = [{"bearer": []}]

_POST_DESCRIPTION = """The seed's actions, a ramp's and the approvals'. `check` needs the viewer role; `scan`,
`promote`, `rollback`, `pause`, `resume`, `approve` and `decline` need operator, are audited with the token's name as
the actor, and are rate limited per token (dry runs included).

Responses are `{success, action, data, config: {enabled, dryRun, preset}}` with `data` the engine's result:
- `check`: the eligibility (`data.eligible`, `data.reasons`); `success` is true.
- `promote`: `success` mirrors `data.success`. Not eligible is **200 with `success: false`** and
  `data.reasons`: the request was valid, the experiment was not ready. A dry run reports `success: true`
  when it would promote. 409 is reserved for "already promoted".
- `scan`: counts and one result per running experiment; `success` is true.
- `rollback`: the restored weights; 409 when already rolled back. It rolls a ramp back at any step.
- `pause` / `resume`: hold a ramp (rollout.mode = ramp) where it is, or let it go on; `data.rollout` says where it
  is. 404 when the experiment has no ramp in progress, 409 when it is already paused (or, to resume, not paused).
- `approve` (`approvalId`): under `approval.require`, an eligible promotion (or, under every_step, a ramp's next
  step) waits as a pending approval (`GET /api/approvals`). Approving decides again on the locked state and acts
  in the same transaction: `success` true with `data.status` approved and `data.promotion` (or `data.step`); when it
  is no longer allowed, **200 with `success: false`**, `data.status` closed and `data.reason`. 409
  approval_not_pending when it was decided, or expired, before.
- `decline` (`approvalId`, `reason`): nothing is promoted (a ramp holds, paused); 409 approval_not_pending as for
  approve.

`dryRun` is accepted at the top level (as in the seed's example) and inside `config`. The body is read as
JSON whatever the Content-Type. Fields an action does not use are refused rather than ignored."""


@lru_cache(maxsize=1)
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ab-autopromote API",
            "version": __version__,
            "description": "Auto-promotion of A/B test winners: the seed's REST interface plus read endpoints. "
            "Every error is `{success: false, error: {code, message, details}}`.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from `autopromote token create`; the server stores only its SHA-256 "
                    "in AUTO_PROMOTION_API_TOKENS. Roles: viewer (reads, check), operator (also "
                    "scan, promote, rollback).",
                }
            },
            "schemas": _schemas(),
        },
        "security": _VIEWER,
        "paths": {
            "/api/experiments/auto-promote": {
                "post": {
                    "operationId": "autoPromote",
                    "summary": "Run scan, promote, check, rollback, pause or resume",
                    "description": _POST_DESCRIPTION,
                    "x-roles": {
                        "check": "viewer",
                        "scan": "operator",
                        "promote": "operator",
                        "rollback": "operator",
                        "approve": "operator",
                        "decline": "operator",
                        "pause": "operator",
                        "resume": "operator",
                    },
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("AutoPromoteRequest")}},
                    },
                    "responses": {
                        "200": {
                            **_json("ActionResponse", "The action ran (see the description for `success`)"),
                            "headers": {"X-RateLimit-Limit": {"schema": INT}, "X-RateLimit-Remaining": {"schema": INT}},
                        },
                        **_errors("400", "401", "403", "404", "409", "413", "429", "500", "503"),
                    },
                },
                "get": {
                    "operationId": "getConfig",
                    "summary": "The effective configuration, its validation result and the presets",
                    "parameters": _query_params(models.ConfigQuery),
                    "responses": {"200": _json("ConfigResponse", "The configuration"), **_errors(*_READ_ERRORS)},
                },
            },
            "/api/experiments": {
                "get": {
                    "operationId": "listExperiments",
                    "summary": "Experiments with live per-variant statistics and the last decision, newest first",
                    "parameters": _query_params(models.ExperimentsQuery),
                    "responses": {"200": _json("ExperimentList", "A page of experiments"), **_errors(*_READ_ERRORS)},
                }
            },
            "/api/experiments/{name}": {
                "get": {
                    "operationId": "getExperiment",
                    "summary": "One experiment with evaluation history, promotions, recent audit rows and open alerts",
                    "description": "The name is URL-encoded. (An experiment named `auto-promote` is shadowed by "
                    "the configuration endpoint; find it in the list.)",
                    "parameters": [
                        _param(
                            "name", _clean(models.EXPERIMENT_PATH_NAME.json_schema()), "Experiment name", "path", True
                        )
                    ],
                    "responses": {
                        "200": _json("ExperimentDetail", "The experiment"),
                        **_errors("400", "401", "404", "500", "503"),
                    },
                }
            },
            "/api/experiments/{name}/metrics": {
                "get": {
                    "operationId": "listMetrics",
                    "parameters": [_EXPERIMENT_PATH],
                    "summary": "The experiment's metrics: the built-in one (primary), then its ab_metrics rows",
                    "responses": {
                        "200": _json("MetricListResponse", "The metrics"),
                        **_errors("400", "401", "404", "500", "503"),
                    },
                },
                "post": {
                    "operationId": "addMetric",
                    "parameters": [_EXPERIMENT_PATH],
                    "summary": "Add a metric (an ab_metrics row); operator role, audited as metric_added",
                    "description": "A primary metric must win, a guardrail must not be worse than control by more "
                    "than its margin, a secondary one is only reported. The name `primary` changes the built-in "
                    "metric's role, direction or margin. Producers then record it with `ab_record_metric`.",
                    "x-roles": {"post": "operator"},
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("MetricDefinitionRequest")}},
                    },
                    "responses": {
                        "201": _json("MetricChangeResponse", "The metric was added"),
                        **_errors("400", "401", "403", "404", "409m", "413", "500", "503"),
                    },
                },
            },
            "/api/experiments/{name}/metrics/{metric}": {
                "delete": {
                    "operationId": "removeMetric",
                    "parameters": [
                        _EXPERIMENT_PATH,
                        _param("metric", _clean(models.METRIC_PATH_NAME.json_schema()), "Metric name", "path", True),
                    ],
                    "summary": "Remove a metric with its statistics and queued updates; operator role, audited as "
                    "metric_removed",
                    "x-roles": {"delete": "operator"},
                    "responses": {
                        "200": _json("MetricChangeResponse", "The metric was removed (as it was)"),
                        **_errors("400", "401", "403", "404m", "500", "503"),
                    },
                },
            },
            "/api/promotions": {
                "get": {
                    "operationId": "listPromotions",
                    "summary": "Promotions, newest first",
                    "parameters": _query_params(models.PromotionsQuery),
                    "responses": {"200": _json("PromotionList", "A page of promotions"), **_errors(*_READ_ERRORS)},
                }
            },
            "/api/promotions/stats": {
                "get": {
                    "operationId": "promotionStats",
                    "summary": "get_promotion_stats() and get_promotions_per_day()",
                    "parameters": _query_params(models.StatsQuery),
                    "responses": {"200": _json("PromotionStats", "The statistics"), **_errors(*_READ_ERRORS)},
                }
            },
            "/api/audit": {
                "get": {
                    "operationId": "listAudit",
                    "summary": "The promotion audit log, newest first",
                    "parameters": _query_params(models.AuditQuery),
                    "responses": {"200": _json("AuditList", "A page of audit rows"), **_errors(*_READ_ERRORS)},
                }
            },
            "/api/approvals": {
                "get": {
                    "operationId": "listApprovals",
                    "summary": "Approvals (pending ones by default), newest first",
                    "description": "Under approval.require an eligible promotion (or, under every_step, a rollout step "
                    "ready to advance) waits here until an operator approves or declines it (the POST's actions "
                    "approve and decline), or until approval.timeoutHours pass (then it is declined, `expired` true).",
                    "parameters": _query_params(models.ApprovalsQuery),
                    "responses": {"200": _json("ApprovalList", "A page of approvals"), **_errors(*_READ_ERRORS)},
                }
            },
            "/api/slack/interactions": {
                "post": {
                    "operationId": "slackInteractions",
                    "summary": "Slack's Interactivity request URL: the Approve / Decline / Roll back buttons",
                    "description": "Authenticated by Slack's request signature (SLACK_SIGNING_SECRET: v0 HMAC-SHA256 "
                    "of `v0:{timestamp}:{body}`), not by a bearer token. A timestamp older than five minutes, a "
                    "request seen before, a bad or missing signature is a 401; a Slack user not in "
                    "AUTO_PROMOTION_SLACK_APPROVERS a 403; nothing is changed then. The outcome replaces the "
                    "message through the interaction's response_url. 404 when SLACK_SIGNING_SECRET is not set.",
                    "security": [],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/x-www-form-urlencoded": {
                                "schema": _obj({"payload": {**STR, "description": "The interaction, JSON"}})
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Acted on (the outcome goes to response_url)",
                            "content": {"application/json": {"schema": _ok(_obj({"outcome": STR}))}},
                        },
                        **{k: {**v, "description": d} for k, v, d in _slack_errors()},
                    },
                }
            },
            "/api/plan": {
                "get": {
                    "operationId": "plan",
                    "summary": "Exposures per arm and days an experiment needs: configured method and fixed horizon",
                    "description": "The same plan as `autopromote plan`: the sequential test's extra cost is computed "
                    "from its first-passage law, not assumed. Needs the viewer role; reads nothing from the database. "
                    "Rules between parameters (a 400 naming the parameter): a conversion `baseline` is a rate between "
                    "0 and 1 and stays below 1 when raised by `mde`, and takes no `sd`; a mean metric needs `sd` and a "
                    "`baseline` other than 0.",
                    "parameters": _query_params(models.PlanQuery),
                    "responses": {"200": _json("PlanResponse", "The plan"), **_errors(*_READ_ERRORS)},
                }
            },
            "/api/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document (no authentication)",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document",
                            "content": {"application/json": {"schema": ANY_OBJECT}},
                        },
                        **_errors("400"),
                    },
                }
            },
        },
    }


def _slack_errors() -> list[tuple[str, dict[str, Any], str]]:
    texts = {
        "400": "The signed body is not an interaction Slack sends (no payload, not JSON, no action).",
        "401": "unauthorized: no signature, a bad one, a timestamp older than five minutes, or a replay.",
        "403": "forbidden: the Slack user is not in AUTO_PROMOTION_SLACK_APPROVERS.",
        "404": "not_found: SLACK_SIGNING_SECRET is not set, so Slack buttons are off.",
    }
    errors = _errors(*texts)
    return [(status, errors[status], text) for status, text in texts.items()]


def openapi_document() -> dict[str, Any]:
    """A copy of the document (built once)."""
    return copy.deepcopy(_document())
