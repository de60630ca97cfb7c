"""The ramp's notifications and settings, pure: what a message says about a ramp, who hears a ramp's rollback, and
how bad rollout settings are refused."""

from __future__ import annotations

from typing import Any

import pytest

from worker.config import AutoPromotionConfig, ConfigError, Settings, load_config
from worker.notify.events import EventFacts
from worker.notify.pagerduty import pagerduty_action
from worker.notify.routing import ConfigRow, plan_routes
from worker.notify.slack import build_slack_message

ADVANCED: dict[str, Any] = {
    "event": "rollout.advanced",
    "experimentName": "checkout",
    "priority": "normal",
    "promotionId": "6f1c4c1e-0000-4000-8000-000000000001",
    "actor": "autopromote-guard",
    "variant": "variant-b",
    "controlVariant": "control",
    "confidence": 97.5,
    "improvement": 12.0,
    "rollout": {
        "state": "ramping",
        "step": 2,
        "steps": [25.0, 50.0, 75.0, 95.0, 100.0],
        "treatmentShare": 50.0,
        "guard": [
            {"metric": "error_rate", "verdict": "ok", "lift": 0.12, "interval": [-0.3, 0.54]},
            {"metric": "latency", "verdict": "waiting", "lift": None, "interval": None},
        ],
    },
}


def test_a_ramp_message_says_where_the_ramp_is_and_what_its_guard_saw() -> None:
    facts = EventFacts.from_payload("rollout.advanced", ADVANCED, public_url=None)
    assert facts.title == "Rollout advanced"
    assert facts.headline == "checkout: rollout of variant-b advanced to 50%"
    rows = dict(facts.fact_rows())
    assert rows["Rollout"] == "ramping, step 2 of 5 (50%); steps 25% -> 50% -> 75% -> 95% -> 100%"
    assert rows["Guard: error_rate"] == "ok (+0.12)" and rows["Guard: latency"] == "waiting"
    text = str(build_slack_message(facts))
    assert "advanced to 50%" in text and "step 2 of 5" in text


def test_a_rolled_back_ramp_is_said_at_its_step_and_resolves_a_page() -> None:
    body = {
        **ADVANCED,
        "event": "rollout.rolled_back",
        "reason": "guard: error rate ...",
        "rollout": {**ADVANCED["rollout"], "state": "rolled_back"},
    }
    facts = EventFacts.from_payload("rollout.rolled_back", body, public_url=None)
    assert facts.headline == "checkout: rollout of variant-b rolled back at step 2 (50%)"
    assert pagerduty_action("rollout.rolled_back", "normal", guard_breach_triggered=True) == "resolve"
    assert pagerduty_action("rollout.rolled_back", "normal") == "trigger"


def test_every_target_of_rollbacks_hears_a_ramps_rollback_once() -> None:
    rows = [
        ConfigRow(1, "rollbacks", "webhook", "https://a.example.com/x", ("promotion.rolled_back",), "normal"),
        ConfigRow(2, "ramps", "webhook", "https://b.example.com/x", ("rollout.rolled_back",), "normal"),
        ConfigRow(
            3, "both", "webhook", "https://c.example.com/x", ("promotion.rolled_back", "rollout.rolled_back"), "normal"
        ),
        ConfigRow(4, "promotions", "webhook", "https://d.example.com/x", ("promotion.promoted",), "normal"),
    ]
    routes, _ = plan_routes(
        "rollout.rolled_back", "normal", config=AutoPromotionConfig(), settings=Settings(), rows=rows
    )
    assert sorted(r.config_id or 0 for r in routes) == [1, 2, 3]
    advanced, _ = plan_routes(
        "rollout.advanced", "normal", config=AutoPromotionConfig(), settings=Settings(), rows=rows
    )
    assert advanced == []  # no row subscribed to it (the environment's defaults are, see DEFAULT_EVENTS)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rollout": {"steps": [25, 50, 25]}}, "rollout.steps: each step may be given once, got 25 twice"),
        ({"rollout": {"steps": [0.5]}}, "rollout.steps: each step is a treatment share in percent between 1 and 99"),
        ({"rollout": {"steps": [100]}}, "rollout.steps: each step is a treatment share in percent between 1 and 99"),
        ({"rollout": {"holdback": 51}}, "rollout.holdback: must be between 0 and 50, got 51"),
        ({"rollout": {"stepMinutes": -1}}, "rollout.stepMinutes: must be between 0"),
        ({"rollout": {"stepMinExposures": 1.5}}, "rollout.stepMinExposures"),
        ({"rollout": {"mode": "gradual"}}, "rollout.mode"),
    ],
)
def test_bad_rollout_settings_are_refused_with_the_setting_named(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env={}, experiment_overrides=overrides)
    assert any(message in e for e in err.value.errors), err.value.errors


def test_steps_in_any_order_ramp_from_the_smallest() -> None:
    # JSON Schema cannot state an order, so the document allows any; the ramp takes them in increasing order.
    cfg = load_config(env={"AUTO_PROMOTION_ROLLOUT_STEPS": "75,25,50"}).config
    assert cfg.rollout.steps == (25.0, 50.0, 75.0)


def test_rollout_settings_take_any_layer_and_fractional_minutes() -> None:
    effective = load_config(
        env={"AUTO_PROMOTION_ROLLOUT_MODE": "ramp", "AUTO_PROMOTION_ROLLOUT_STEPS": "10,20,40"},
        overrides={"rollout": {"stepMinutes": 0.5}},
        experiment_overrides={"rollout": {"holdback": 0, "stepMinExposures": 0}},
    )
    r = effective.config.rollout
    assert (r.mode, r.steps, r.holdback, r.step_minutes, r.step_min_exposures) == (
        "ramp",
        (10.0, 20.0, 40.0),
        0.0,
        0.5,
        0,
    )
    assert effective.sources["rollout.steps"] == "env:AUTO_PROMOTION_ROLLOUT_STEPS"
    assert load_config(env={}).config.rollout.mode == "instant"  # the seed's behaviour by default
    with pytest.raises(
        ConfigError, match=r"AUTO_PROMOTION_ROLLOUT_STEPS \(rollout.steps\): expected numbers \(percent\), got .ten."
    ):
        load_config(env={"AUTO_PROMOTION_ROLLOUT_STEPS": "10,ten"})
