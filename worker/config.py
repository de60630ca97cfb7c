"""Configuration: the seed's AutoPromotionConfig, presets, layering, validation, and runtime settings.

Layers, later wins: defaults <- preset <- environment <- per-request overrides <- per-experiment config, except
that a request may make a safety setting of the experiment's safer, never less safe (with_experiment_overrides).
Every leaf field carries its environment variable in its metadata, so the environment parser, the
``config show`` command, the README reference and the ``.env.example`` test all read one source.

Over 500 lines because it holds two models (AutoPromotionConfig and Settings) with every field's description
and environment name, and the layering; the split planned is models / env parsing / layering (issue "One house
plan").
"""

from __future__ import annotations

import copy
import fnmatch
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationError,
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
    sequential_tuning: Annotated[float, AfterValidator(_between(1, 1e12)), JsonBounds(1, 1e12)] = setting(
        5000.0, "AUTO_PROMOTION_SEQUENTIAL_TUNING", "N*: sample size the confidence sequence is tightest at"
    )
    correction: Correction = setting(
        "holm", "AUTO_PROMOTION_CORRECTION", "Multiple-comparison correction: holm, bh or none"
    )
    scan_interval_seconds: Annotated[float, AfterValidator(_between(1, 86_400)), JsonBounds(1, 86_400)] = setting(
        60.0, "AUTO_PROMOTION_SCAN_INTERVAL", "Seconds between reconciliation scans"
    )
    guard: Guard = Field(default_factory=Guard)
    approval: ApprovalPolicy = Field(default_factory=ApprovalPolicy)

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


PRESETS: dict[str, dict[str, Any]] = {
    "aggressive": {
        "thresholds": {"minConfidence": 90.0, "minSampleSize": 500, "minImprovement": 3.0, "minRuntimeHours": 12.0},
        "safetyChecks": {"maxErrorRate": 0.08, "maxLatencyDegradation": 30.0},
    },
    "conservative": {
        "thresholds": {"minConfidence": 99.0, "minSampleSize": 5000, "minImprovement": 10.0, "minRuntimeHours": 72.0},
        "safetyChecks": {"maxErrorRate": 0.02, "maxLatencyDegradation": 10.0},
    },
    "balanced": {
        "thresholds": {"minConfidence": 95.0, "minSampleSize": 2000, "minImprovement": 5.0, "minRuntimeHours": 24.0},
        "safetyChecks": {"maxErrorRate": 0.05, "maxLatencyDegradation": 20.0},
    },
}
PRESET_ENV = "AUTO_PROMOTION_PRESET"


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


# ---------------------------------------------------------------------------------------------------------
# Field walking: one description of every setting
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SettingInfo:
    path: str  # camelCase dotted path, e.g. thresholds.minConfidence
    env: str
    default: Any
    description: str
    annotation: Any


def _leaf_type(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def iter_settings(model: type[BaseModel], prefix: str = "") -> Iterator[SettingInfo]:
    """Every leaf field of ``model`` (recursively) with its env var, default and description."""
    for name, field in model.model_fields.items():
        alias = field.alias or name
        path = f"{prefix}{alias}"
        ann = _leaf_type(field.annotation)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from iter_settings(ann, prefix=f"{path}.")
            continue
        extra = field.json_schema_extra
        env = extra.get("env") if isinstance(extra, dict) else None
        if not isinstance(env, str):
            continue
        default = field.get_default(call_default_factory=True)
        yield SettingInfo(path, env, default, field.description or "", field.annotation)


def all_settings() -> list[SettingInfo]:
    """Decision settings, the preset selector, and process settings."""
    preset = SettingInfo(PRESET_ENV, PRESET_ENV, "balanced", "Preset: aggressive, conservative or balanced", str)
    return [*iter_settings(AutoPromotionConfig), preset, *iter_settings(Settings)]


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_env_value(info: SettingInfo, raw: str) -> Any:
    """Parse one environment string into the type of ``info``; ValueError says what is expected."""
    ann = _leaf_type(info.annotation)
    origin = get_origin(ann)
    args = [a for a in get_args(ann) if a is not type(None)]
    optional = origin is not None and type(None) in get_args(ann)
    if optional and len(args) == 1:
        ann = _leaf_type(args[0])
        origin = get_origin(ann)
    value = raw.strip()
    if origin is tuple:
        items = [item.strip() for item in value.split(",")]
        return tuple(item for item in items if item)
    if ann is str:
        return value if value or not optional else None
    if value == "":
        raise ValueError("is set but empty; give a value or unset the variable to use the default")
    if ann is bool:
        low = value.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if ann is int:
        try:
            return int(value.replace("_", ""))
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
    if ann is float:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {raw!r}")
        return number
    if origin is Literal:
        allowed = [str(a) for a in get_args(ann)]
        if value.lower() in allowed:
            return value.lower()
        raise ValueError(f"expected one of {', '.join(allowed)}, got {raw!r}")
    return value


def _set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` laid over it, nested mappings merged key by key (neither is modified)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def env_layer(env: Mapping[str, str], model: type[BaseModel] = AutoPromotionConfig) -> tuple[dict[str, Any], list[str]]:
    """The environment as a camelCase override tree for ``model``, plus every parse error."""
    tree: dict[str, Any] = {}
    errors: list[str] = []
    for info in iter_settings(model):
        if info.env not in env:
            continue
        try:
            _set_path(tree, info.path, _parse_env_value(info, env[info.env]))
        except ValueError as exc:
            errors.append(f"{info.env} ({info.path}): {exc}")
    return tree, errors


def _format_validation_error(exc: ValidationError, prefix: str = "") -> list[str]:
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
        else:
            out.append(f"{prefix}{loc}: {msg}")
    return out


@dataclass(frozen=True, slots=True)
class EffectiveConfig:
    config: AutoPromotionConfig
    preset: str
    sources: dict[str, str]  # camelCase path -> default | preset:NAME | env:VAR | request | experiment


def resolve_preset(preset: str | None, env: Mapping[str, str]) -> str:
    """The preset name in force; ConfigError when it is unknown."""
    name = preset if preset is not None else env.get(PRESET_ENV, "").strip() or "balanced"
    if name not in PRESETS:
        where = "preset" if preset is not None else PRESET_ENV
        raise ConfigError([f"{where}: unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}"])
    return name


def load_config(
    *,
    preset: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    experiment_overrides: Mapping[str, Any] | None = None,
) -> EffectiveConfig:
    """Build and validate the effective config from all layers; ConfigError lists every problem."""
    env = os.environ if env is None else env
    errors: list[str] = []
    try:
        preset_name = resolve_preset(preset, env)
    except ConfigError as exc:
        errors.extend(exc.errors)
        preset_name = "balanced"
    env_tree, env_errors = env_layer(env)
    errors.extend(env_errors)
    layers: list[tuple[str, Mapping[str, Any]]] = [
        (f"preset:{preset_name}", PRESETS[preset_name]),
        ("env", env_tree),
        ("request", overrides or {}),
        ("experiment", experiment_overrides or {}),
    ]
    for label, layer in layers[2:]:
        if not isinstance(layer, Mapping):
            errors.append(f"{label} overrides: must be a JSON object, got {type(layer).__name__}")
    defaults = AutoPromotionConfig().model_dump(by_alias=True)
    sources = dict.fromkeys(_flatten(defaults), "default")
    merged: dict[str, Any] = defaults
    env_paths = {info.path: info.env for info in iter_settings(AutoPromotionConfig)}
    for label, layer in layers:
        if not isinstance(layer, Mapping):
            continue
        before, before_sources = merged, dict(sources)
        merged = deep_merge(merged, layer)
        for path in _flatten(layer):
            sources[path] = f"env:{env_paths.get(path, '?')}" if label == "env" else label
        if label != "env":
            merged = _hold_kill_switches(before, merged, layer, sources, previous=before_sources)
    if errors:
        # Also report model errors so that one run lists everything wrong.
        try:
            AutoPromotionConfig.model_validate(_json_types(merged))
        except ValidationError as exc:
            errors.extend(_format_validation_error(exc))
        raise ConfigError(errors)
    try:
        config = AutoPromotionConfig.model_validate(_json_types(merged))
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
    return EffectiveConfig(config, preset_name, sources)


def _json_types(tree: Any) -> Any:
    """Lists become tuples so that strict validation accepts JSON arrays for tuple fields."""
    if isinstance(tree, Mapping):
        return {k: _json_types(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return tuple(_json_types(v) for v in tree)
    return tree


def _stricter_flag(a: bool, b: bool) -> bool:
    return a or b


def _both_enabled(a: bool, b: bool) -> bool:
    return a and b


def _more_approvals(a: str, b: str) -> str:
    """The stricter of two approval.require values (none < promote < every_step)."""
    return max(a, b, key=APPROVAL_REQUIRE.index)


def _union(a: Any, b: Any) -> tuple[Any, ...]:
    return tuple(dict.fromkeys((*a, *b)))


# The settings whose safe direction is unambiguous, with how to take the safer of two values. A request may move
# one of these past the experiment's own value only in this direction (see with_experiment_overrides).
# The deployment's own switches: AUTO_PROMOTION_DRY_RUN=true or AUTO_PROMOTION_ENABLED=false hold for every
# experiment (a staging deployment, an incident), whatever an experiment's config says.
KILL_SWITCHES = frozenset({"enabled", "dryRun"})

SAFER: dict[str, Callable[[Any, Any], Any]] = {
    "enabled": _both_enabled,
    "dryRun": _stricter_flag,
    "thresholds.minConfidence": max,
    "thresholds.minSampleSize": max,
    "thresholds.minImprovement": max,
    "thresholds.minRuntimeHours": max,
    "safetyChecks.maxErrorRate": min,
    "safetyChecks.maxLatencyDegradation": min,
    "safetyChecks.checkTrafficBalance": _stricter_flag,
    "safetyChecks.srmThreshold": max,
    "safetyChecks.checkCriticalAlerts": _stricter_flag,
    "safetyChecks.alertLookbackHours": max,
    "safetyChecks.failOnMissingData": _stricter_flag,
    "excludedExperiments": _union,
    "maxConcurrentPromotions": min,
    "guard.guardHours": max,
    "guard.autoRollback": _stricter_flag,
    "approval.require": _more_approvals,
}


def _get_path(tree: Mapping[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        node = node[part]
    return node


def with_request_overrides(base: EffectiveConfig, overrides: Mapping[str, Any]) -> EffectiveConfig:
    """``base`` with more request-layer values (e.g. a CLI's ``--dry-run``); ConfigError if invalid.

    The values are marked as the request's, so that with_experiment_overrides treats them as one.
    """
    if not overrides:
        return base
    before = base.config.model_dump(by_alias=True)
    merged = deep_merge(before, overrides)
    sources = {**base.sources, **dict.fromkeys(_flatten(overrides), "request")}
    merged = _hold_kill_switches(before, merged, overrides, sources, previous=base.sources)
    try:
        config = AutoPromotionConfig.model_validate(_json_types(merged))
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
    return EffectiveConfig(config, base.preset, sources)


def _hold_kill_switches(
    before: dict[str, Any],
    merged: dict[str, Any],
    layer: Mapping[str, Any],
    sources: dict[str, str],
    *,
    previous: Mapping[str, str],
) -> dict[str, Any]:
    """``merged`` (``layer`` laid over ``before``, whose sources were ``previous``) with the environment's
    KILL_SWITCHES kept where ``layer`` would make them less safe; ``sources`` (updated in place) then keeps saying
    "env:…" for them, so that with_experiment_overrides holds them too."""
    for path in KILL_SWITCHES & set(_flatten(layer)):
        env_source = previous.get(path, "")
        if not env_source.startswith("env:"):
            continue
        held, wanted = _get_path(before, path), _get_path(merged, path)
        value = SAFER[path](held, wanted)
        if value == held and value != wanted:
            merged = copy.deepcopy(merged)
            _set_path(merged, path, value)
            sources[path] = env_source
    return merged


def with_experiment_overrides(
    base: EffectiveConfig, experiment_config: Mapping[str, Any] | None
) -> AutoPromotionConfig:
    """The config one experiment is decided under: ``base`` with the experiment's ``config`` column laid over it.

    The one place the last layer is applied; every path (daemon, scan, check, promote, guard) calls it, and
    nothing it returns may be overridden afterwards by an explicit argument. The experiment's own value wins over
    every layer of ``base``, except that a request (``base.sources`` says "request") may make a setting of SAFER
    safer still: the safer of the two applies; the environment may too for the KILL_SWITCHES. So a request's
    ``dryRun: true`` or ``enabled: false`` holds, and
    the experiment's ``dryRun: true``, ``enabled: false`` or stricter thresholds cannot be lifted by any request.
    ConfigError if the result is invalid.
    """
    if not experiment_config:
        return base.config
    if not isinstance(experiment_config, Mapping):
        raise ConfigError([f"experiment config: must be a JSON object, got {type(experiment_config).__name__}"])
    base_tree = base.config.model_dump(by_alias=True)
    merged = deep_merge(base_tree, experiment_config)
    try:
        # The experiment's own values first, so that an invalid one is reported even where a request's wins.
        config = AutoPromotionConfig.model_validate(_json_types(merged))
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, prefix="experiment config ")) from None
    own_tree = config.model_dump(by_alias=True)
    safer_tree = own_tree
    for path in _flatten(experiment_config):
        safer = SAFER.get(path)
        source = base.sources.get(path, "")
        if safer is None or not (source == "request" or (path in KILL_SWITCHES and source.startswith("env:"))):
            continue
        requested, own = _get_path(base_tree, path), _get_path(own_tree, path)
        value = safer(requested, own)
        if value != own:
            if safer_tree is own_tree:
                safer_tree = copy.deepcopy(own_tree)
            _set_path(safer_tree, path, value)
    if safer_tree is own_tree:
        return config
    try:
        return AutoPromotionConfig.model_validate(_json_types(safer_tree))
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, prefix="request and experiment config ")) from None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Process settings from the environment; ConfigError lists every problem."""
    env = os.environ if env is None else env
    tree, errors = env_layer(env, Settings)
    try:
        settings = Settings.model_validate(_json_types(tree))
    except ValidationError as exc:
        errors.extend(_format_validation_error(exc))
        raise ConfigError(errors) from None
    if errors:
        raise ConfigError(errors)
    return settings
