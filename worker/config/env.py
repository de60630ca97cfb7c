"""The environment and presets: every setting as a SettingInfo (path, env var, default, description), parsing
environment strings, and load_config / load_settings, which build the effective config from every layer.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError

from worker.config.layering import _flatten, _hold_kill_switches, _json_types, _set_path, deep_merge
from worker.config.models import (
    PRESET_NAMES,
    AutoPromotionConfig,
    ConfigError,
    EffectiveConfig,
    Settings,
    _format_validation_error,
)

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
    if value == "" and optional:
        return None  # an optional setting written empty is unset, as its .env.example line shows it
    if value == "":
        raise ValueError("is set but empty; give a value or unset the variable to use the default")
    if origin is Literal:
        allowed = [str(a) for a in get_args(ann)]
        if value.lower() in allowed:
            return value.lower()
        raise ValueError(f"expected one of {', '.join(allowed)}, got {raw!r}")
    if not optional and args and _number_or_word(args):
        # A number or a word (sequentialTuning: 5000 or auto): the word as it is, anything else as the number.
        words = [str(w) for a in args if get_origin(_leaf_type(a)) is Literal for w in get_args(_leaf_type(a))]
        if value.lower() in words:
            return value.lower()
        number = next(_leaf_type(a) for a in args if _leaf_type(a) in (int, float))
        try:
            return _parse_scalar(number, value, raw)
        except ValueError:
            raise ValueError(f"expected {' or '.join(words)} or a number, got {raw!r}") from None
    return _parse_scalar(ann, value, raw)


def _parse_scalar(ann: Any, value: str, raw: str) -> Any:
    """A bool, int or float from its (stripped, non-empty) text; any other type keeps the text."""
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
    return value


def _number_or_word(args: list[Any]) -> bool:
    """A union of one number type and Literal words (and nothing else)."""
    kinds = [_leaf_type(a) for a in args]
    numbers = [k for k in kinds if k in (int, float)]
    words = [k for k in kinds if get_origin(k) is Literal]
    return len(numbers) == 1 and len(numbers) + len(words) == len(kinds)


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
            errors.extend(_format_validation_error(exc, sources=sources))
        raise ConfigError(errors)
    try:
        config = AutoPromotionConfig.model_validate(_json_types(merged))
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, sources=sources)) from None
    return EffectiveConfig(config, preset_name, sources)


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
