"""Layering: laying one config tree over another, and the rule that a request or the environment may only make
an experiment's config safer (SAFER, KILL_SWITCHES, with_experiment_overrides).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from worker.config.models import (
    APPROVAL_REQUIRE,
    AutoPromotionConfig,
    ConfigError,
    EffectiveConfig,
    _format_validation_error,
)


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
