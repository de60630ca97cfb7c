"""Review fixes of the progressive rollout (issue 17): each test failed before its fix."""

from __future__ import annotations

import pytest

from worker.config import ConfigError, load_config


@pytest.mark.parametrize(
    ("env", "var", "said"),
    [
        ({"AUTO_PROMOTION_ROLLOUT_STEPS": "10,ten"}, "AUTO_PROMOTION_ROLLOUT_STEPS", "expected numbers (percent)"),
        ({"AUTO_PROMOTION_ROLLOUT_STEPS": "10,10"}, "AUTO_PROMOTION_ROLLOUT_STEPS", "each step may be given once"),
        ({"AUTO_PROMOTION_ROLLOUT_STEPS": "20,100"}, "AUTO_PROMOTION_ROLLOUT_STEPS", "between 1 and 99"),
        ({"AUTO_PROMOTION_ROLLOUT_HOLDBACK": "51"}, "AUTO_PROMOTION_ROLLOUT_HOLDBACK", "between 0 and 50"),
        ({"AUTO_PROMOTION_ROLLOUT_STEP_MINUTES": "-1"}, "AUTO_PROMOTION_ROLLOUT_STEP_MINUTES", "between 0 and"),
    ],
)
def test_a_bad_environment_value_names_its_variable_and_a_hint(env: dict[str, str], var: str, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env=env)
    [line] = caught.value.errors
    path = {
        "AUTO_PROMOTION_ROLLOUT_STEPS": "rollout.steps",
        "AUTO_PROMOTION_ROLLOUT_HOLDBACK": "rollout.holdback",
        "AUTO_PROMOTION_ROLLOUT_STEP_MINUTES": "rollout.stepMinutes",
    }[var]
    assert line.startswith(f"{var} ({path}): "), line
    assert said in line
    assert f"fix {var} or unset it" in line  # the hint


def test_a_bad_value_from_a_later_layer_is_not_blamed_on_the_environment() -> None:
    # The environment's steps are fine; the request's holdback is not: the message names the setting only.
    with pytest.raises(ConfigError) as caught:
        load_config(env={"AUTO_PROMOTION_ROLLOUT_HOLDBACK": "10"}, overrides={"rollout": {"holdback": 60}})
    [line] = caught.value.errors
    assert line.startswith("rollout.holdback: ") and "AUTO_PROMOTION" not in line
