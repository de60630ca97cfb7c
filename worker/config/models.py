"""The configuration models: AutoPromotionConfig (how the worker decides) with its sub-models, Settings (how the
process runs), the field helpers that give every leaf field its environment variable and description, and
ConfigError with how pydantic's validation errors read.

Each of the ~50 settings carries its range, environment name and one-line description here: the one source the
environment parser, ``config show``, the README and ``.env.example`` read.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue

Channel = Literal["slack", "email", "pagerduty", "webhook"]
CHANNELS: tuple[str, ...] = get_args(Channel)
Method = Literal["sequential", "fixed"]
Correction = Literal["holm", "bh", "none"]
PresetName = Literal["aggressive", "conservative", "balanced"]
PRESET_NAMES: tuple[str, ...] = get_args(PresetName)


class ConfigError(ValueError):
    """An invalid configuration; ``errors`` lists every problem as ``path: message``."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("invalid configuration:\n  " + "\n  ".join(errors))


def _between(lo: float, hi: float) -> Callable[[float], float]:
    def check(v: float) -> float:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"must be a finite number, got {v}")
        if not lo <= v <= hi:
            raise ValueError(f"must be between {_num(lo)} and {_num(hi)}, got {_num(v)}")
        return v

    return check


def _at_least(lo: float) -> Callable[[float], float]:
    def check(v: float) -> float:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"must be a finite number, got {v}")
        if v < lo:
            raise ValueError(f"must be at least {_num(lo)}, got {_num(v)}")
        return v

    return check


@dataclass(frozen=True, slots=True)
class JsonBounds:
    """The range a validator above enforces (with its own message), shown as minimum/maximum in the JSON Schema,
    so that the OpenAPI document states every range the server checks."""

    minimum: float
    maximum: float | None = None

    def __get_pydantic_json_schema__(self, core: Any, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler(core)
        schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return schema


@dataclass(frozen=True, slots=True)
class JsonPattern:
    """A pattern a validator enforces (with its own message), shown in the JSON Schema."""

    pattern: str

    def __get_pydantic_json_schema__(self, core: Any, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler(core)
        schema["pattern"] = self.pattern
        return schema


# The characters str.isspace() calls whitespace, as a regular-expression class body that Python, ECMAScript and
# Rust read alike (no \s: each engine's \s differs). tests/test_openapi_models.py checks it against isspace().
WHITESPACE_CLASS = (
    "\\u0009-\\u000d\\u001c-\\u0020\\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
)
# Text without NUL characters (PostgreSQL cannot store them), with at least one non-whitespace character.
NON_BLANK_TEXT = f"^[^\\u0000]*[^\\u0000{WHITESPACE_CLASS}][^\\u0000]*$"


def _whole_number(v: Any) -> Any:
    """A JSON number that is a whole number (``5.0``) as an int: JSON Schema's ``integer`` includes it, so a
    client generated from the OpenAPI document may send it. Anything else is left to strict validation."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def setting(default: Any, env: str, description: str) -> Any:
    """A config field with its environment variable and one-line description."""
    return Field(default=default, description=description, json_schema_extra={"env": env})


# Whole numbers from JSON (see _whole_number), with their ranges.
PositiveCount = Annotated[int, BeforeValidator(_whole_number), AfterValidator(_at_least(1)), JsonBounds(1)]
PromotionLimit = Annotated[
    int, BeforeValidator(_whole_number), AfterValidator(_between(0, 10_000)), JsonBounds(0, 10_000)
]


def _sequential_tuning(v: Any) -> float | Literal["auto"]:
    """auto, or N* as a number in [1, 1e12] (one message for both, not one per branch of the union)."""
    if isinstance(v, str) and v.strip().lower() == "auto":
        return "auto"
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"must be auto or a number between 1 and 1e12, got {v!r}")
    return _between(1, 1e12)(float(v))


# sequentialTuning: N* (the total sample size the confidence sequence is tightest at) or auto (twice the
# experiment's planned sample size per arm, worker.domain.tuning).
SequentialTuning = Annotated[
    float | Literal["auto"],
    PlainValidator(_sequential_tuning),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 1, "maximum": 1e12}, {"const": "auto"}]}),
]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, strict=True)


class Thresholds(_Model):
    min_confidence: Annotated[float, AfterValidator(_between(50, 99.999)), JsonBounds(50, 99.999)] = setting(
        95.0, "AUTO_PROMOTION_MIN_CONFIDENCE", "Confidence (100 x (1 - adjusted p)) a winner must reach, in %"
    )
    min_sample_size: PositiveCount = setting(
        2000, "AUTO_PROMOTION_MIN_SAMPLE_SIZE", "Exposures the winner and the control each need"
    )
    min_improvement: Annotated[float, AfterValidator(_between(0, 10_000)), JsonBounds(0, 10_000)] = setting(
        5.0, "AUTO_PROMOTION_MIN_IMPROVEMENT", "Relative lift of the winner over control, in %"
    )
    min_runtime_hours: Annotated[float, AfterValidator(_between(0, 24 * 365)), JsonBounds(0, 24 * 365)] = setting(
        24.0, "AUTO_PROMOTION_MIN_RUNTIME_HOURS", "Hours since started_at before a promotion"
    )


class SafetyChecks(_Model):
    max_error_rate: Annotated[float, AfterValidator(_between(0, 1)), JsonBounds(0, 1)] = setting(
        0.05, "AUTO_PROMOTION_MAX_ERROR_RATE", "Highest error rate (errors/exposures) the winner may have"
    )
    max_latency_degradation: Annotated[float, AfterValidator(_between(0, 1000)), JsonBounds(0, 1000)] = setting(
        20.0, "AUTO_PROMOTION_MAX_LATENCY_DEGRADATION", "Highest P95 latency increase over control, in %"
    )
    check_traffic_balance: bool = setting(
        True, "AUTO_PROMOTION_CHECK_TRAFFIC_BALANCE", "Block promotion on a sample-ratio mismatch"
    )
    srm_threshold: Annotated[float, AfterValidator(_between(1e-12, 0.5)), JsonBounds(1e-12, 0.5)] = setting(
        0.001, "AUTO_PROMOTION_SRM_THRESHOLD", "Chi-square p-value below which traffic is mismatched"
    )
    check_critical_alerts: bool = setting(
        True, "AUTO_PROMOTION_CHECK_CRITICAL_ALERTS", "Block promotion on unresolved critical alerts"
    )
    alert_lookback_hours: Annotated[float, AfterValidator(_between(0, 24 * 90)), JsonBounds(0, 24 * 90)] = setting(
        24.0, "AUTO_PROMOTION_ALERT_LOOKBACK_HOURS", "Window in which critical alerts count, in hours"
    )
    fail_on_missing_data: bool = setting(
        False, "AUTO_PROMOTION_FAIL_ON_MISSING_DATA", "A check without data fails instead of warning"
    )


class Notifications(_Model):
    # The JSON Schema of the check in AutoPromotionConfig._no_contradictions, for the OpenAPI document.
    model_config = ConfigDict(
        json_schema_extra={
            "if": {"required": ["channels"], "properties": {"channels": {"maxItems": 0}}},
            "then": {"required": ["enabled"], "properties": {"enabled": {"const": False}}},
        }
    )

    enabled: bool = setting(True, "AUTO_NOTIFY_ALERTS", "Send notifications at all")
    channels: tuple[Channel, ...] = setting(
        CHANNELS, "AUTO_PROMOTION_NOTIFICATION_CHANNELS", "Channels that may be used (comma-separated)"
    )
    include_detailed_metrics: bool = setting(
        False, "AUTO_PROMOTION_INCLUDE_DETAILED_METRICS", "Add per-variant statistics to messages"
    )
    notify_eligible: bool = setting(
        False, "AUTO_PROMOTION_NOTIFY_ELIGIBLE", "Send promotion.eligible for dry-run decisions"
    )


class Guard(_Model):
    # The JSON Schema of the check in AutoPromotionConfig._no_contradictions, for the OpenAPI document.
    model_config = ConfigDict(
        json_schema_extra={
            "if": {"required": ["guardHours"], "properties": {"guardHours": {"const": 0}}},
            "then": {"required": ["autoRollback"], "properties": {"autoRollback": {"const": False}}},
        }
    )

    guard_hours: Annotated[float, AfterValidator(_between(0, 24 * 90)), JsonBounds(0, 24 * 90)] = setting(
        24.0, "AUTO_PROMOTION_GUARD_HOURS", "Hours the promoted variant is watched after promotion"
    )
    auto_rollback: bool = setting(
        True, "AUTO_PROMOTION_AUTO_ROLLBACK", "Roll back on a guard breach (else notify only)"
    )
    min_samples: PositiveCount = setting(
        200, "AUTO_PROMOTION_GUARD_MIN_SAMPLES", "Exposures since promotion before the error-rate guard acts"
    )


ApprovalRequire = Literal["none", "promote", "every_step"]
APPROVAL_REQUIRE: tuple[str, ...] = get_args(ApprovalRequire)


class ApprovalPolicy(_Model):
    require: ApprovalRequire = setting(
        "none",
        "AUTO_PROMOTION_REQUIRE_APPROVAL",
        "none, promote (an eligible promotion waits for an operator's approval) or every_step (each rollout step too)",
    )
    timeout_hours: Annotated[float, AfterValidator(_between(0.01, 24 * 30)), JsonBounds(0.01, 24 * 30)] = setting(
        24.0, "AUTO_PROMOTION_APPROVAL_TIMEOUT_HOURS", "Hours a pending approval waits before it expires as declined"
    )


RolloutMode = Literal["instant", "ramp"]


def _rollout_steps(v: Any) -> Any:
    """Step shares from JSON numbers or the environment's comma-separated text, as floats; anything else is left
    to strict validation (which names the bad item)."""
    if isinstance(v, str):
        v = tuple(item.strip() for item in v.split(",") if item.strip())
    if isinstance(v, list | tuple):
        out: list[Any] = []
        for item in v:
            if isinstance(item, str):
                try:
                    item = float(item)
                except ValueError:
                    raise ValueError(f"expected numbers (percent), got {item!r}") from None
            elif isinstance(item, int) and not isinstance(item, bool):
                item = float(item)
            out.append(item)
        return tuple(out)
    return v


def _increasing_shares(v: tuple[float, ...]) -> tuple[float, ...]:
    """The shares in increasing order, each once. JSON Schema cannot state an order (the OpenAPI document says
    uniqueItems), so any order is accepted and the ramp takes them from the smallest; a share given twice is
    refused, as the document says."""
    for s in v:
        if not math.isfinite(s) or not 1 <= s <= 99:
            raise ValueError(f"each step is a treatment share in percent between 1 and 99, got {_num(s)}")
    ordered = tuple(sorted(v))
    for a, b in itertools.pairwise(ordered):
        if b == a:
            raise ValueError(f"each step may be given once, got {_num(a)} twice")
    return ordered


class Rollout(_Model):
    """How a promotion reaches 100%: at once (instant) or step by step against the concurrent control (ramp)."""

    mode: RolloutMode = setting(
        "instant", "AUTO_PROMOTION_ROLLOUT_MODE", "instant (winner to 100% at once) or ramp (step by step, guarded)"
    )
    steps: Annotated[
        tuple[float, ...],
        BeforeValidator(_rollout_steps),
        AfterValidator(_increasing_shares),
        WithJsonSchema(
            {"type": "array", "items": {"type": "number", "minimum": 1, "maximum": 99}, "uniqueItems": True}
        ),
    ] = setting(
        (25.0, 50.0, 75.0),
        "AUTO_PROMOTION_ROLLOUT_STEPS",
        "Ramp steps: the winner's share in %, 1-99, each once, taken in increasing order (those at or below its test "
        "share skipped)",
    )
    holdback: Annotated[float, AfterValidator(_between(0, 50)), JsonBounds(0, 50)] = setting(
        5.0, "AUTO_PROMOTION_ROLLOUT_HOLDBACK", "% kept on the control after the last step until guardHours pass"
    )
    step_minutes: Annotated[float, AfterValidator(_between(0, 24 * 90 * 60)), JsonBounds(0, 24 * 90 * 60)] = setting(
        60.0, "AUTO_PROMOTION_ROLLOUT_STEP_MINUTES", "Minimum minutes per ramp step (any number >= 0, e.g. 0.5)"
    )
    step_min_exposures: Annotated[
        int, BeforeValidator(_whole_number), AfterValidator(_between(0, 10**12)), JsonBounds(0, 10**12)
    ] = setting(1000, "AUTO_PROMOTION_ROLLOUT_STEP_MIN_EXPOSURES", "Minimum winner exposures per ramp step")


class AutoPromotionConfig(_Model):
    """The decision configuration (the seed's AutoPromotionConfig plus statistics and guard)."""

    # The JSON Schema of the check in _no_contradictions, for the OpenAPI document: within one object (a request's
    # overrides), a setting that would contradict another comes with the value that makes it consistent.
    model_config = ConfigDict(
        json_schema_extra={
            "if": {"required": ["maxConcurrentPromotions"], "properties": {"maxConcurrentPromotions": {"const": 0}}},
            "then": {
                "anyOf": [
                    {"required": ["enabled"], "properties": {"enabled": {"const": False}}},
                    {"required": ["dryRun"], "properties": {"dryRun": {"const": True}}},
                ]
            },
        }
    )

    enabled: bool = setting(True, "AUTO_PROMOTION_ENABLED", "Promote at all (off: evaluate and report only)")
    dry_run: bool = setting(False, "AUTO_PROMOTION_DRY_RUN", "Decide and audit, change nothing")
    thresholds: Thresholds = Field(default_factory=Thresholds)
    safety_checks: SafetyChecks = Field(default_factory=SafetyChecks)
    notifications: Notifications = Field(default_factory=Notifications)
    excluded_experiments: tuple[Annotated[str, JsonPattern(NON_BLANK_TEXT)], ...] = setting(
        (), "AUTO_PROMOTION_EXCLUDED", "Experiment names or glob patterns never auto-promoted (comma-separated)"
    )
    max_concurrent_promotions: PromotionLimit = setting(
        5, "AUTO_PROMOTION_MAX_CONCURRENT", "Promotions per scan, and promotions inside their guard window at once"
    )
    method: Method = setting("sequential", "AUTO_PROMOTION_METHOD", "sequential (peeking-safe) or fixed")
    sequential_tuning: SequentialTuning = setting(
        5000.0,
        "AUTO_PROMOTION_SEQUENTIAL_TUNING",
        "N*: total sample size the confidence sequence is tightest at, or auto: twice the planned sample size",
    )
    planned_sample_size: PositiveCount | None = setting(
        None,
        "AUTO_PROMOTION_PLANNED_SAMPLE_SIZE",
        "Exposures per arm an experiment is planned for (set in its config; sequentialTuning auto tunes to it)",
    )
    correction: Correction = setting(
        "holm", "AUTO_PROMOTION_CORRECTION", "Multiple-comparison correction: holm, bh or none"
    )
    scan_interval_seconds: Annotated[float, AfterValidator(_between(1, 86_400)), JsonBounds(1, 86_400)] = setting(
        60.0, "AUTO_PROMOTION_SCAN_INTERVAL", "Seconds between reconciliation scans"
    )
    guard: Guard = Field(default_factory=Guard)
    approval: ApprovalPolicy = Field(default_factory=ApprovalPolicy)
    rollout: Rollout = Field(default_factory=Rollout)

    @model_validator(mode="after")
    def _no_contradictions(self) -> AutoPromotionConfig:
        problems: list[str] = []
        if self.enabled and not self.dry_run and self.max_concurrent_promotions == 0:
            problems.append(
                "maxConcurrentPromotions: is 0 while enabled is true, so nothing could ever be promoted; "
                "set it to at least 1, or set enabled to false"
            )
        if self.guard.auto_rollback and self.guard.guard_hours == 0:
            problems.append("guard.autoRollback: is true but guard.guardHours is 0; give the guard a window")
        if self.notifications.enabled and not self.notifications.channels:
            problems.append(
                "notifications.channels: empty while notifications.enabled is true; name a channel or disable"
            )
        for pattern in self.excluded_experiments:
            if not pattern.strip():
                problems.append("excludedExperiments: contains an empty pattern")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def is_excluded(self, experiment_name: str) -> str | None:
        """The exclusion pattern that matches ``experiment_name``, or None."""
        for pattern in self.excluded_experiments:
            if pattern == experiment_name or fnmatch.fnmatchcase(experiment_name, pattern):
                return pattern
        return None

    @property
    def alpha(self) -> float:
        return 1.0 - self.thresholds.min_confidence / 100.0

    def public(self) -> dict[str, Any]:
        """The camelCase JSON form, as the API shows it."""
        return self.model_dump(mode="json", by_alias=True)


# ---------------------------------------------------------------------------------------------------------
# Runtime settings: how the process runs, as opposed to how it decides.
# ---------------------------------------------------------------------------------------------------------
class Settings(_Model):
    """Process settings (database, HTTP, listener, channels). Read from the environment only."""

    database_url: str | None = setting(
        None, "DATABASE_URL", "PostgreSQL URL; unset starts a throw-away embedded server"
    )
    log_level: Literal["debug", "info", "warning", "error"] = setting("info", "LOG_LEVEL", "Log level")
    log_format: Literal["auto", "json", "console"] = setting(
        "auto", "LOG_FORMAT", "auto: JSON lines unless stdout is a terminal"
    )
    http_host: str = setting("127.0.0.1", "AUTO_PROMOTION_HTTP_HOST", "Address of the HTTP server")
    http_port: Annotated[int, AfterValidator(_between(0, 65535))] = setting(
        8080, "AUTO_PROMOTION_HTTP_PORT", "Port of the HTTP server (0 picks a free one)"
    )
    public_url: str | None = setting(
        None, "AUTO_PROMOTION_PUBLIC_URL", "Public base URL of the dashboard, linked from notifications"
    )
    poll_interval: Annotated[float, AfterValidator(_between(0.05, 3600))] = setting(
        5.0, "AUTO_PROMOTION_POLL_INTERVAL", "Seconds between queue polls (the fallback for lost NOTIFYs)"
    )
    poll_only: bool = setting(
        False, "AUTO_PROMOTION_POLL_ONLY", "Never LISTEN, only poll (PgBouncer transaction pooling)"
    )
    liveness_interval: Annotated[float, AfterValidator(_between(0.1, 600))] = setting(
        3.0, "AUTO_PROMOTION_LIVENESS_INTERVAL", "Seconds between listener liveness checks"
    )
    shutdown_grace: Annotated[float, AfterValidator(_between(0, 600))] = setting(
        10.0, "AUTO_PROMOTION_SHUTDOWN_GRACE", "Seconds to finish in-flight work on SIGTERM"
    )
    fold_batch_size: Annotated[int, AfterValidator(_between(1, 1_000_000))] = setting(
        50_000, "AUTO_PROMOTION_FOLD_BATCH", "Metric updates claimed per fold transaction"
    )
    pool_size: Annotated[int, AfterValidator(_between(2, 200))] = setting(
        8, "AUTO_PROMOTION_POOL_SIZE", "Pooled connections per worker (plus the listener and scan-leader sessions)"
    )
    api_auth: Literal["enabled", "disabled"] = setting(
        "enabled", "AUTO_PROMOTION_API_AUTH", "disabled turns off API authentication (logged loudly)"
    )
    api_tokens: str = setting("", "AUTO_PROMOTION_API_TOKENS", "API tokens as name:role:sha256hex, comma-separated")
    rate_limit_per_minute: Annotated[int, AfterValidator(_between(1, 100_000))] = setting(
        30, "AUTO_PROMOTION_RATE_LIMIT", "scan/promote/rollback/approve/decline calls per token per minute"
    )
    metrics_auth: bool = setting(False, "AUTO_PROMOTION_METRICS_AUTH", "Require a token for /metrics")
    max_body_bytes: Annotated[int, AfterValidator(_between(1024, 100_000_000))] = setting(
        65_536, "AUTO_PROMOTION_MAX_BODY_BYTES", "Largest accepted API request body"
    )
    sse_max_clients: Annotated[int, AfterValidator(_at_least(1))] = setting(
        100, "AUTO_PROMOTION_SSE_MAX_CLIENTS", "Dashboard live-update streams (/events) open at once; more get 503"
    )
    slack_webhook_url: str | None = setting(None, "SLACK_WEBHOOK_URL", "Slack incoming-webhook URL")
    slack_signing_secret: str | None = setting(
        None,
        "SLACK_SIGNING_SECRET",
        "Slack app signing secret: turns on the Approve / Decline / Roll back buttons (POST /api/slack/interactions)",
    )
    slack_approvers: tuple[str, ...] = setting(
        (), "AUTO_PROMOTION_SLACK_APPROVERS", "Slack user ids (U…) whose button clicks are acted on (comma-separated)"
    )
    smtp_host: str | None = setting(None, "SMTP_HOST", "SMTP server host")
    smtp_port: Annotated[int, AfterValidator(_between(1, 65535))] = setting(587, "SMTP_PORT", "SMTP server port")
    smtp_security: Literal["starttls", "tls", "none"] = setting(
        "starttls", "SMTP_SECURITY", "starttls, tls (implicit) or none"
    )
    smtp_username: str | None = setting(None, "SMTP_USERNAME", "SMTP user")
    smtp_password: str | None = setting(None, "SMTP_PASSWORD", "SMTP password")
    smtp_from: str = setting("autopromote@localhost", "SMTP_FROM", "From address of notification mail")
    alert_email_to: tuple[str, ...] = setting((), "ALERT_EMAIL_TO", "Recipients of notification mail (comma-separated)")
    pagerduty_routing_key: str | None = setting(None, "PAGERDUTY_ROUTING_KEY", "PagerDuty Events v2 routing key")
    pagerduty_events_url: str = setting(
        "https://events.pagerduty.com/v2/enqueue", "PAGERDUTY_EVENTS_URL", "PagerDuty Events API v2 URL"
    )
    webhook_url: str | None = setting(None, "WEBHOOK_URL", "Generic webhook receiver URL")
    webhook_secret: str | None = setting(None, "WEBHOOK_SECRET", "HMAC-SHA256 signing secret for webhooks")
    notify_timeout: Annotated[float, AfterValidator(_between(0.1, 300))] = setting(
        10.0, "AUTO_PROMOTION_NOTIFY_TIMEOUT", "Seconds one notification attempt may take"
    )
    notify_max_attempts: Annotated[int, AfterValidator(_between(1, 100))] = setting(
        12, "AUTO_PROMOTION_NOTIFY_MAX_ATTEMPTS", "Attempts before a notification is dead-lettered (~1 h)"
    )
    notify_backoff_base: Annotated[float, AfterValidator(_between(0.01, 3600))] = setting(
        2.0, "AUTO_PROMOTION_NOTIFY_BACKOFF", "First retry delay in seconds (doubles each attempt)"
    )
    notify_rate_per_second: Annotated[float, AfterValidator(_between(0.01, 1000))] = setting(
        1.0, "AUTO_PROMOTION_NOTIFY_RATE", "Messages per second per target (token bucket)"
    )
    schema_dir: str | None = setting(
        None, "AUTO_PROMOTION_SCHEMA_DIR", "Folder of migration files (default: the bundled schema/)"
    )


def _format_validation_error(
    exc: ValidationError, prefix: str = "", sources: Mapping[str, str] | None = None
) -> list[str]:
    """One line per error, ``path: message``; ``sources`` (path -> where the value came from, as
    EffectiveConfig.sources): a value taken from the environment is named by its variable, with a hint."""
    out: list[str] = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
        msg = str(err["msg"])
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        given = err.get("input")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting; check the spelling (settings are camelCase)"
        elif err["type"] not in {"value_error", "assertion_error"} and not isinstance(given, dict | list):
            msg = f"{msg}, got {given!r}"
        if not loc:
            out.extend(part.strip() for part in msg.split("\n") if part.strip())
        elif (source := (sources or {}).get(loc, "")).startswith("env:"):
            var = source[len("env:") :]
            out.append(f"{var} ({loc}): {msg}; fix {var} or unset it to use the default")
        else:
            out.append(f"{prefix}{loc}: {msg}")
    return out


@dataclass(frozen=True, slots=True)
class EffectiveConfig:
    config: AutoPromotionConfig
    preset: str
    sources: dict[str, str]  # camelCase path -> default | preset:NAME | env:VAR | request | experiment
