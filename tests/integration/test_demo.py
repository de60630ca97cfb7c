"""`autopromote demo` as a newcomer runs it, output piped to a file: every path shows up in the summary."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_every_path_to_its_summary_without_a_terminal() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTO_PROMOTION_", "DATABASE_URL"))}
    result = subprocess.run(
        [sys.executable, "-m", "worker", "demo", "--duration", "40"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\x1b[" not in out  # plain lines, not a refreshing screen, when piped
    summary = out[out.index("\nsummary\n") :]
    assert "homepage-cta: variant-b at" in summary.split("blocked")[0]
    assert "button-color-aa: no treatment beats control" in summary
    assert "search-ranking: safety check failed: Error Rate Check" in summary
    assert "signup-flow: safety check failed: Traffic Balance Check" in summary
    assert "legacy-checkout: excluded by configuration" in summary
    assert "checkout-flow: variant-b rolled back by autopromote-guard: guard: error rate" in summary
    assert "pricing-banner: variant-b rolled back by demo-operator" in summary
    assert "checkout-upsell: guardrail revenue_per_visit: variant-b is -" in summary
    assert "— not shown within the -2.0% margin" in summary
    # rollout.mode ramp: one ramp reaches 100%, the other is rolled back by its second step's guard.
    assert "onboarding-ramp: variant-b at" in summary and "complete at step 3" in summary
    assert (
        "checkout-ramp: variant-b rolled back by autopromote-guard: rollout step 2 of 4 (80% on variant-b)" in summary
    )
    assert "Rollout advanced: onboarding-ramp" in out and "Rollout complete: onboarding-ramp" in out
    assert "notification  webhook  promotion.promoted" in out
    # CUPED decides on fewer users than its twin, which gets the same users' data without the covariate.
    cuped = re.search(r"order-value-cuped: promoted variant-b \(\+[\d.]+%\) at ([\d,]+) users per arm; CUPED", summary)
    assert cuped is not None, summary
    plain = re.search(r"order-value-plain: (promoted variant-b \(\+[\d.]+%\)|not decided yet) at ([\d,]+)", summary)
    assert plain is not None, summary
    assert int(cuped.group(1).replace(",", "")) < int(plain.group(2).replace(",", ""))
    assert "notification  webhook  promotion.rolled_back" in out
    assert "dashboard/API was at http://127.0.0.1:" in out and "postgresql://" in out
    assert "sign in with the token ap_" in out  # the dashboard needs a token: the demo says which
    assert "Traceback" not in result.stderr


def test_demo_rejects_a_bad_duration() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "worker", "demo", "--duration", "0"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "--duration must be a positive number" in result.stderr
