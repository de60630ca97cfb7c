"""``autopromote plan``: exposures per arm and days an experiment needs, for the configured method and fixed-horizon.

No database: the plan depends on the inputs and the configuration (method, sequentialTuning, correction) only.
"""

from __future__ import annotations

import argparse
from typing import Any

from worker.cli import EXIT_OK, EXIT_USAGE, CliError, _config, _print_json, register
from worker.config import PRESET_NAMES


def _count(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _days(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


def render_plan(data: dict[str, Any]) -> str:
    """The plan as text: the two methods side by side, then what it assumed."""
    a = data["assumptions"]
    base = f"{100 * a['baseline']:g}%" if a["metricType"] == "conversion" else f"{a['baseline']:g} (sd {a['sd']:g})"
    lines = [
        f"plan for a {a['metricType']} metric: baseline {base}, minimum detectable effect +{a['mde']:g}% (relative), "
        f"alpha {a['alpha']:g}, power {100 * a['power']:g}%",
        f"  {a['treatments']} treatment(s), {a['primaryMetrics']} primary metric(s), correction {a['correction']} "
        f"(each comparison at alpha {a['alphaPerComparison']:.4g}), covariate rho {a['rho']:g} "
        f"(variance x {a['varianceFactor']:g})",
    ]
    method = data["method"]
    label = f"{method} (configured)"
    rows = [("exposures per arm", _count(data["exposuresPerArm"]), _count(data["fixedHorizonExposuresPerArm"]))]
    if data["days"] is not None:
        rows.append(
            (
                f"days at {a['dailyExposuresPerArm']:,g}/day per arm",
                _days(data["days"]),
                _days(data["fixedHorizonDays"]),
            )
        )
    if method == "sequential":
        rows.append(("median stopping point", _count(data["medianExposuresPerArm"]), "-"))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(label), *(len(r[1]) for r in rows))
    lines.append("")
    lines.append(f"  {'':<{w0}}  {label:<{w1}}  fixed horizon")
    lines += [f"  {r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]}" for r in rows]
    if method == "sequential":
        extra = data["exposuresPerArm"] / max(data["fixedHorizonExposuresPerArm"], 1)
        tuning = a["sequentialTuning"] if isinstance(a["sequentialTuning"], str) else f"{a['sequentialTuning']:g}"
        lines.append("")
        lines.append(
            f"  the sequential test may stop at any update; to reach {100 * a['power']:g}% power it needs "
            f"{extra:.2f}x the fixed-horizon sample (N* = {a['nStar']:,.0f}, sequentialTuning {tuning})"
        )
    if a["notes"]:
        lines.append("")
        lines += [f"  note: {n}" for n in a["notes"]]
    return "\n".join(lines)


def cmd_plan(args: argparse.Namespace) -> int:
    # Imported here: the statistics (scipy) load only when a plan is asked for, not for `autopromote --help`.
    from worker.domain.errors import InvalidRequest
    from worker.domain.planning import PlanRequest, plan_experiment

    config = _config(args.preset)
    req = PlanRequest(
        metric_type=args.metric_type,
        baseline=args.baseline,
        mde=args.mde,
        sd=args.sd,
        alpha=args.alpha,
        power=args.power,
        treatments=args.treatments,
        primary_metrics=args.primary_metrics,
        rho=args.rho,
        daily_exposures=args.daily_exposures,
    )
    try:
        data = plan_experiment(req, config.config)
    except InvalidRequest as exc:
        problems = [e["message"] for e in exc.details.get("errors", [])] or [exc.message]
        raise CliError(
            "cannot plan:\n  - " + "\n  - ".join(problems) + "\nhint: autopromote plan --help lists every flag",
            EXIT_USAGE,
        ) from None
    if args.json:
        _print_json(data)
    else:
        print(render_plan(data))
    return EXIT_OK


def _register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "plan",
        help="exposures per arm and days an experiment needs (configured method and fixed horizon)",
        description="How many exposures per arm, and days, to find a true relative lift of --mde with --power, for "
        "the configured method (a sequential test's extra cost computed) and for a fixed-horizon test.",
    )
    p.add_argument("--metric-type", required=True, choices=("conversion", "mean"), help="the metric's kind")
    p.add_argument(
        "--baseline", required=True, type=float, help="the control's conversion rate (0.1 = 10%%), or its mean"
    )
    p.add_argument("--sd", type=float, help="standard deviation of the value per exposure (mean metrics)")
    p.add_argument(
        "--mde", required=True, type=float, help="minimum detectable effect: relative lift in percent (5 = +5%%)"
    )
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--power", type=float, default=0.8, help="probability of finding a true lift of --mde (default 0.8)")
    p.add_argument("--treatments", type=int, default=1, help="variants besides the control (default 1)")
    p.add_argument(
        "--primary-metrics", type=int, default=1, help="primary metrics; alpha is split across them (default 1)"
    )
    p.add_argument(
        "--rho", type=float, default=0.0, help="covariate correlation for CUPED; variance x (1 - rho^2) (default 0)"
    )
    p.add_argument("--daily-exposures", type=float, help="exposures per arm per day; adds the days needed")
    p.add_argument("--preset", choices=PRESET_NAMES, help="preset to start from (default: AUTO_PROMOTION_PRESET)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(handler=cmd_plan)


register(_register)
