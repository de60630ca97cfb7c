"""Configuration: the seed's AutoPromotionConfig, presets, layering, validation, and runtime settings.

Layers, later wins: defaults <- preset <- environment <- per-request overrides <- per-experiment config, except
that a request may make a safety setting of the experiment's safer, never less safe (with_experiment_overrides).
Every leaf field carries its environment variable in its metadata, so the environment parser, the
``config show`` command, the README reference and the ``.env.example`` test all read one source.

The package: ``models`` (the fields and models), ``env`` (settings walking, environment parsing, presets,
load_config / load_settings), ``layering`` (deep_merge, the request and experiment layers, SAFER). Import from
here: ``from worker.config import X``. It imports nothing else of worker.
"""

from worker.config.env import (
    PRESET_ENV,
    PRESETS,
    SettingInfo,
    all_settings,
    env_layer,
    iter_settings,
    load_config,
    load_settings,
    resolve_preset,
)
from worker.config.layering import (
    KILL_SWITCHES,
    SAFER,
    deep_merge,
    with_experiment_overrides,
    with_request_overrides,
)
from worker.config.models import (
    CHANNELS,
    NON_BLANK_TEXT,
    PRESET_NAMES,
    WHITESPACE_CLASS,
    AutoPromotionConfig,
    Channel,
    ConfigError,
    Correction,
    EffectiveConfig,
    Guard,
    JsonBounds,
    JsonPattern,
    Method,
    Notifications,
    PositiveCount,
    PresetName,
    PromotionLimit,
    Rollout,
    RolloutMode,
    SafetyChecks,
    Settings,
    Thresholds,
    setting,
)

__all__ = [
    "CHANNELS",
    "KILL_SWITCHES",
    "NON_BLANK_TEXT",
    "PRESETS",
    "PRESET_ENV",
    "PRESET_NAMES",
    "SAFER",
    "WHITESPACE_CLASS",
    "AutoPromotionConfig",
    "Channel",
    "ConfigError",
    "Correction",
    "EffectiveConfig",
    "Guard",
    "JsonBounds",
    "JsonPattern",
    "Method",
    "Notifications",
    "PositiveCount",
    "PresetName",
    "PromotionLimit",
    "Rollout",
    "RolloutMode",
    "SafetyChecks",
    "SettingInfo",
    "Settings",
    "Thresholds",
    "all_settings",
    "deep_merge",
    "env_layer",
    "iter_settings",
    "load_config",
    "load_settings",
    "resolve_preset",
    "setting",
    "with_experiment_overrides",
    "with_request_overrides",
]
