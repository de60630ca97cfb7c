"""``autopromote plan``: the JSON contract, the configured method, and bad input refused with a hint."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog

from worker.cli import main
from worker.config import load_config
from worker.domain.errors import InvalidRequest
from worker.domain.planning import PlanRequest, plan_experiment

KEYS = {"exposuresPerArm", "fixedHorizonExposuresPerArm", "days", "fixedHorizonDays", "method", "assumptions"}


@pytest.fixture(autouse=True)
def _keep_logging_config() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AUTO_PROMOTION_METHOD", "AUTO_PROMOTION_SEQUENTIAL_TUNING", "AUTO_PROMOTION_CORRECTION"):
        monkeypatch.delenv(var, raising=False)


def _plan(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(["plan", *argv, "--json"]) == 0
    data: dict[str, object] = json.loads(capsys.readouterr().out)
    return data


def test_plan_json_has_the_contract_keys_and_both_methods(capsys: pytest.CaptureFixture[str]) -> None:
    data = _plan(capsys, "--metric-type", "conversion", "--baseline", "0.1", "--mde", "10", "--daily-exposures", "2000")
    assert KEYS <= set(data)
    assert data["method"] == "sequential"
    seq, fixed = data["exposuresPerArm"], data["fixedHorizonExposuresPerArm"]
    assert isinstance(seq, int) and isinstance(fixed, int) and seq > fixed
    assert data["days"] == pytest.approx(seq / 2000, abs=0.1)
    assert data["fixedHorizonDays"] == pytest.approx(fixed / 2000, abs=0.1)
    assumptions = data["assumptions"]
    assert isinstance(assumptions, dict)
    assert assumptions["alpha"] == 0.05 and assumptions["power"] == 0.8 and assumptions["treatments"] == 1
    assert assumptions["nStar"] == 5000.0  # the configured sequentialTuning


def test_plan_follows_the_configured_method(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTO_PROMOTION_METHOD", "fixed")
    data = _plan(capsys, "--metric-type", "mean", "--baseline", "50", "--sd", "20", "--mde", "5")
    assert data["method"] == "fixed"
    assert data["exposuresPerArm"] == data["fixedHorizonExposuresPerArm"]
    assert data["days"] is None and data["fixedHorizonDays"] is None


def test_treatments_metrics_and_rho_change_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--metric-type", "conversion", "--baseline", "0.05", "--mde", "5"]
    plain = _plan(capsys, *base)["fixedHorizonExposuresPerArm"]
    split = _plan(capsys, *base, "--treatments", "3", "--primary-metrics", "2")["fixedHorizonExposuresPerArm"]
    cuped = _plan(capsys, *base, "--rho", "0.5")["fixedHorizonExposuresPerArm"]
    assert isinstance(plain, int) and isinstance(split, int) and isinstance(cuped, int)
    assert split > plain and cuped == pytest.approx(0.75 * plain, rel=1e-3)


def test_plan_text_shows_both_columns(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["plan", "--metric-type", "conversion", "--baseline", "0.1", "--mde", "10", "--daily-exposures", "500"])
        == 0
    )
    out = capsys.readouterr().out
    assert "sequential (configured)" in out and "fixed horizon" in out and "exposures per arm" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--metric-type", "conversion", "--baseline", "1.5", "--mde", "5"], "conversion rate between 0 and 1"),
        (["--metric-type", "conversion", "--baseline", "0.1", "--mde", "-5"], "5 means +5%"),
        (["--metric-type", "mean", "--baseline", "10", "--mde", "5"], "sd is required"),
        (["--metric-type", "conversion", "--baseline", "0.1", "--mde", "5", "--power", "0.2"], "power must be"),
        (["--metric-type", "conversion", "--baseline", "0.1", "--mde", "5", "--rho", "1"], "rho must be"),
        (["--metric-type", "conversion", "--baseline", "0.1", "--mde", "5", "--treatments", "0"], "treatments"),
        (["--metric-type", "conversion", "--baseline", "nan", "--mde", "5"], "finite"),
    ],
)
def test_bad_input_exits_2_with_a_message_and_a_hint(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert main(["plan", *argv]) == 2
    captured = capsys.readouterr()
    assert expected in captured.err and "hint:" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(InvalidRequest) as info:
        plan_experiment(PlanRequest("conversion", 2.0, -1.0, sd=3.0, alpha=0.9), load_config().config)
    assert len(info.value.details["errors"]) == 4


def test_notes_say_when_the_thresholds_bind() -> None:
    data = plan_experiment(PlanRequest("conversion", 0.3, 2.0, daily_exposures=1e6), load_config().config)
    notes = " ".join(data["assumptions"]["notes"])
    assert "minImprovement" in notes and "minRuntimeHours" in notes
