"""Configuration: defaults, presets, layering, environment parsing, validation with every error listed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from worker.config import (
    PRESETS,
    AutoPromotionConfig,
    ConfigError,
    load_config,
    load_settings,
    with_experiment_overrides,
)


def errors_of(**kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(**kwargs)  # type: ignore[arg-type]
    return err.value.errors


def test_defaults_are_the_balanced_preset() -> None:
    cfg = load_config(env={}).config
    assert cfg.thresholds.min_confidence == 95.0
    assert cfg.thresholds.min_sample_size == 2000
    assert cfg.thresholds.min_improvement == 5.0
    assert cfg.thresholds.min_runtime_hours == 24.0
    assert cfg.safety_checks.max_error_rate == 0.05
    assert cfg.safety_checks.max_latency_degradation == 20.0
    assert cfg.method == "sequential"
    assert cfg.sequential_tuning == 5000
    assert cfg.correction == "holm"
    assert cfg.safety_checks.srm_threshold == 0.001
    assert cfg.enabled is True and cfg.dry_run is False
    assert AutoPromotionConfig().public() == cfg.public()


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("aggressive", (90.0, 500, 3.0, 12.0, 0.08, 30.0)),
        ("conservative", (99.0, 5000, 10.0, 72.0, 0.02, 10.0)),
        ("balanced", (95.0, 2000, 5.0, 24.0, 0.05, 20.0)),
    ],
)
def test_presets_have_the_seed_values(preset: str, expected: tuple[float, ...]) -> None:
    cfg = load_config(preset=preset, env={}).config
    t, s = cfg.thresholds, cfg.safety_checks
    got = (
        t.min_confidence,
        t.min_sample_size,
        t.min_improvement,
        t.min_runtime_hours,
        s.max_error_rate,
        s.max_latency_degradation,
    )
    assert got == expected


def test_preset_from_environment_and_unknown_preset() -> None:
    assert load_config(env={"AUTO_PROMOTION_PRESET": "conservative"}).preset == "conservative"
    assert any("unknown preset 'yolo'" in e for e in errors_of(preset="yolo", env={}))
    assert any("AUTO_PROMOTION_PRESET" in e for e in errors_of(env={"AUTO_PROMOTION_PRESET": "yolo"}))


def test_layers_later_wins_and_sources_are_tracked() -> None:
    eff = load_config(
        preset="aggressive",
        env={"AUTO_PROMOTION_MIN_CONFIDENCE": "97.5", "AUTO_PROMOTION_MIN_SAMPLE_SIZE": "800"},
        overrides={"thresholds": {"minSampleSize": 900}, "dryRun": True},
    )
    cfg = eff.config
    assert cfg.thresholds.min_confidence == 97.5  # env over preset
    assert cfg.thresholds.min_sample_size == 900  # request over env
    assert cfg.thresholds.min_improvement == 3.0  # preset over default
    assert cfg.dry_run is True
    assert eff.sources["thresholds.minConfidence"] == "env:AUTO_PROMOTION_MIN_CONFIDENCE"
    assert eff.sources["thresholds.minSampleSize"] == "request"
    assert eff.sources["thresholds.minImprovement"] == "preset:aggressive"
    assert eff.sources["method"] == "default"
    per_experiment = with_experiment_overrides(eff, {"thresholds": {"minSampleSize": 50, "minImprovement": 1.0}})
    assert per_experiment.thresholds.min_improvement == 1.0  # experiment over preset
    assert per_experiment.thresholds.min_confidence == 97.5
    # ... but a request's stricter value holds (tests/integration/test_config_layering.py has the whole rule)
    assert per_experiment.thresholds.min_sample_size == 900


def test_environment_lists_are_trimmed_and_empty_items_dropped() -> None:
    cfg = load_config(
        env={
            "AUTO_PROMOTION_EXCLUDED": " legacy-*, critical-test-1 ,,",
            "AUTO_PROMOTION_NOTIFICATION_CHANNELS": "slack,email",
        }
    ).config
    assert cfg.excluded_experiments == ("legacy-*", "critical-test-1")
    assert cfg.notifications.channels == ("slack", "email")
    assert load_config(env={"AUTO_PROMOTION_EXCLUDED": ""}).config.excluded_experiments == ()


def test_glob_exclusions_match() -> None:
    cfg = load_config(env={"AUTO_PROMOTION_EXCLUDED": "legacy-*,exact"}).config
    assert cfg.is_excluded("legacy-checkout") == "legacy-*"
    assert cfg.is_excluded("exact") == "exact"
    assert cfg.is_excluded("exactly") is None


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"AUTO_PROMOTION_MIN_CONFIDENCE": "high"}, "expected a number, got 'high'"),
        ({"AUTO_PROMOTION_MIN_CONFIDENCE": "nan"}, "expected a finite number"),
        ({"AUTO_PROMOTION_MIN_SAMPLE_SIZE": "12.5"}, "expected a whole number, got '12.5'"),
        ({"AUTO_PROMOTION_MIN_SAMPLE_SIZE": ""}, "is set but empty"),
        ({"AUTO_PROMOTION_ENABLED": "maybe"}, "expected true or false, got 'maybe'"),
        ({"AUTO_PROMOTION_METHOD": "bayesian"}, "expected one of sequential, fixed"),
        ({"AUTO_PROMOTION_NOTIFICATION_CHANNELS": "slack,sms"}, "notifications.channels"),
    ],
)
def test_bad_environment_values_are_errors_not_defaults(env: dict[str, str], fragment: str) -> None:
    assert any(fragment in e for e in errors_of(env=env)), errors_of(env=env)


def test_boolean_spellings() -> None:
    for raw, value in [
        ("true", True),
        ("1", True),
        ("YES", True),
        ("on", True),
        ("false", False),
        ("0", False),
        ("No", False),
        ("off", False),
    ]:
        assert load_config(env={"AUTO_PROMOTION_DRY_RUN": raw}).config.dry_run is value


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"thresholds": {"minConfidence": 120}}, "thresholds.minConfidence: must be between 50 and 99.999, got 120"),
        (
            {"thresholds": {"minConfidence": 49.99}},
            "thresholds.minConfidence: must be between 50 and 99.999, got 49.99",
        ),
        ({"thresholds": {"minSampleSize": 0}}, "thresholds.minSampleSize: must be at least 1, got 0"),
        ({"safetyChecks": {"maxErrorRate": 1.5}}, "safetyChecks.maxErrorRate: must be between 0 and 1, got 1.5"),
        ({"thresholds": {"minSampleSize": "100"}}, "thresholds.minSampleSize: Input should be a valid integer"),
        ({"thresholds": {"minSampleSize": 10.5}}, "thresholds.minSampleSize:"),
        ({"dryRun": "yes"}, "dryRun: Input should be a valid boolean"),
        ({"thresholds": {"minConfidnce": 90}}, "thresholds.minConfidnce: unknown setting"),
        ({"correction": "bonferroni"}, "correction:"),
    ],
)
def test_validation_names_the_field_and_value(overrides: dict[str, object], expected: str) -> None:
    errs = errors_of(env={}, overrides=overrides)
    assert any(e.startswith(expected) for e in errs), errs


@pytest.mark.parametrize("value", [50, 99.999, 75.5])
def test_boundaries_are_inclusive(value: float) -> None:
    cfg = load_config(env={}, overrides={"thresholds": {"minConfidence": value}}).config
    assert cfg.thresholds.min_confidence == value


def test_every_error_is_reported_at_once() -> None:
    errs = errors_of(
        env={"AUTO_PROMOTION_MIN_IMPROVEMENT": "lots", "AUTO_PROMOTION_DRY_RUN": "perhaps"},
        overrides={"thresholds": {"minConfidence": 120, "minSampleSize": -5}, "method": "magic"},
    )
    joined = "\n".join(errs)
    for fragment in [
        "AUTO_PROMOTION_MIN_IMPROVEMENT",
        "AUTO_PROMOTION_DRY_RUN",
        "thresholds.minConfidence",
        "thresholds.minSampleSize",
        "method",
    ]:
        assert fragment in joined
    assert len(errs) >= 5


def test_contradictions_are_rejected() -> None:
    errs = errors_of(
        env={}, overrides={"maxConcurrentPromotions": 0, "guard": {"guardHours": 0}, "notifications": {"channels": []}}
    )
    joined = "\n".join(errs)
    assert "maxConcurrentPromotions: is 0 while enabled is true" in joined
    assert "guard.autoRollback" in joined
    assert "notifications.channels: empty" in joined
    # Not a contradiction in dry-run or when disabled.
    load_config(env={}, overrides={"maxConcurrentPromotions": 0, "enabled": False})


def test_invalid_experiment_overrides_are_reported_with_their_source() -> None:
    eff = load_config(env={})
    with pytest.raises(ConfigError) as err:
        with_experiment_overrides(eff, {"thresholds": {"minConfidence": 10}})
    assert err.value.errors[0].startswith("experiment config thresholds.minConfidence")


def test_presets_are_not_mutated_by_loading() -> None:
    before = repr(PRESETS)
    load_config(preset="aggressive", env={}, overrides={"thresholds": {"minConfidence": 91}})
    assert repr(PRESETS) == before


def test_runtime_settings_parse_and_fail_clearly() -> None:
    s = load_settings({"AUTO_PROMOTION_HTTP_PORT": "9090", "ALERT_EMAIL_TO": "a@x.io, b@x.io", "SLACK_WEBHOOK_URL": ""})
    assert s.http_port == 9090 and s.alert_email_to == ("a@x.io", "b@x.io") and s.slack_webhook_url is None
    with pytest.raises(ConfigError) as err:
        load_settings({"AUTO_PROMOTION_HTTP_PORT": "eighty", "AUTO_PROMOTION_POLL_INTERVAL": "-1"})
    joined = "\n".join(err.value.errors)
    assert "AUTO_PROMOTION_HTTP_PORT" in joined and "pollInterval: must be between" in joined


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("AUTO_PROMOTION_")}
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], capture_output=True, text=True, env={**base, **(env or {})}, timeout=60
    )


def test_cli_config_validate_lists_every_error_and_exits_1() -> None:
    bad = {"AUTO_PROMOTION_MIN_CONFIDENCE": "120", "AUTO_PROMOTION_ENABLED": "x"}
    result = _cli("config", "validate", env=bad)
    assert result.returncode == 1
    assert (
        "AUTO_PROMOTION_MIN_CONFIDENCE (thresholds.minConfidence): must be between 50 and 99.999, got 120; "
        "fix AUTO_PROMOTION_MIN_CONFIDENCE or unset it" in result.stderr
    )
    assert "AUTO_PROMOTION_ENABLED" in result.stderr
    assert "Traceback" not in result.stderr
    assert _cli("config", "validate").returncode == 0


def test_cli_config_show_reports_sources() -> None:
    import json

    result = _cli("config", "show", "--preset", "conservative", "--json", env={"AUTO_PROMOTION_MIN_CONFIDENCE": "99.5"})
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["preset"] == "conservative"
    assert data["config"]["thresholds"]["minConfidence"] == 99.5
    assert data["sources"]["thresholds.minConfidence"] == "env:AUTO_PROMOTION_MIN_CONFIDENCE"
    assert data["sources"]["thresholds.minSampleSize"] == "preset:conservative"
    text = _cli("config", "show").stdout
    assert "thresholds.minConfidence" in text and "(preset:balanced)" in text
