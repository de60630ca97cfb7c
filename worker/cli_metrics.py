"""``autopromote metrics add|list|remove``: the metrics an experiment is decided on (``ab_metrics``).

Each command calls one method of the engine (worker.services.metric_definitions); changes are audited with
``--actor``. Tables by default; ``--json`` prints what the API answers as ``data``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from typing import Any

from worker.cli import EXIT_OK, CliError, _config, _run_async, _settings, register

KINDS = ("proportion", "mean", "ratio")
ROLES = ("primary", "guardrail", "secondary")
DIRECTIONS = ("increase", "decrease")
CUPED = ("auto", "off")


def _run(
    args: argparse.Namespace, call: Callable[[Any], Awaitable[dict[str, Any]]], render: Callable[..., None]
) -> int:
    from worker.cli_engine import exit_code, open_engine
    from worker.domain.errors import DomainError

    settings = _settings()
    config = _config(None)

    async def go() -> int:
        async with open_engine(settings, config) as engine:
            try:
                data = await call(engine)
            except DomainError as exc:
                hint = exc.details.get("hint")
                raise CliError(exc.message + (f"\nhint: {hint}" if hint else ""), exit_code(exc)) from None
        if args.json:
            print(json.dumps(data, indent=2, default=_json_value))
        else:
            render(data)
        return EXIT_OK

    return _run_async(go)


def _json_value(x: Any) -> str:
    """Datetimes as ISO 8601, as the API writes them."""
    return x.isoformat() if hasattr(x, "isoformat") else str(x)


def _margin(m: dict[str, Any]) -> str:
    return f"{100 * m['margin']:.2f}%" if m["role"] == "guardrail" or m["margin"] else "-"


def _describe(m: dict[str, Any]) -> str:
    better = "higher" if m["direction"] == "increase" else "lower"
    margin = f", margin {_margin(m)}" if m["role"] == "guardrail" else ""
    return f"{m['role']} {m['name']} ({m['kind']}, {better} is better{margin})"


def _render_add(data: dict[str, Any]) -> None:
    print(f"added {_describe(data['metric'])} to {data['experimentName']}")
    if data["metric"]["role"] == "secondary":
        print("note: a secondary metric is reported and never decides; --role primary or guardrail makes it count")
    if not data["metric"]["builtin"]:
        m = data["metric"]
        print(f"record it with: SELECT ab_record_metric('{data['experimentName']}', <variant>, '{m['name']}', ...)")


def _render_remove(data: dict[str, Any]) -> None:
    m = data["metric"]
    what = "its settings (the built-in metric is back to its defaults)" if m["builtin"] else "its statistics"
    print(f"removed {_describe(m)} from {data['experimentName']}, with {what}")


def _render_list(data: dict[str, Any]) -> None:
    from worker.cli_engine import _table

    rows = []
    for m in data["metrics"]:
        units = ", ".join(f"{v} {n:,}" for v, n in m["units"].items()) or "no data yet"
        rows.append(
            [
                m["name"] + (" (built-in)" if m["builtin"] else ""),
                m["role"],
                m["kind"],
                "higher" if m["direction"] == "increase" else "lower",
                _margin(m),
                m["cuped"],
                units,
                (m["description"] or "")[:60],
            ]
        )
    print(f"{data['experimentName']} ({data['metricType']}): {len(rows)} metric{'s' if len(rows) != 1 else ''}")
    print(_table(rows, ["metric", "role", "kind", "better", "margin", "cuped", "units", "description"]))


def cmd_metrics_add(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda e: e.add_metric(
            args.experiment,
            args.name,
            kind=args.kind,
            role=args.role,
            direction=args.direction,
            margin=args.margin,
            description=args.description,
            cuped=args.cuped,
            actor=args.actor,
        ),
        _render_add,
    )


def cmd_metrics_list(args: argparse.Namespace) -> int:
    return _run(args, lambda e: e.list_metrics(args.experiment), _render_list)


def cmd_metrics_remove(args: argparse.Namespace) -> int:
    return _run(args, lambda e: e.remove_metric(args.experiment, args.name, actor=args.actor), _render_remove)


def _register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    grp = sub.add_parser("metrics", help="add, list or remove the metrics an experiment is decided on")
    msub = grp.add_subparsers(dest="metrics_command", metavar="SUBCOMMAND", required=True)

    p = msub.add_parser(
        "add",
        help="add a metric (ab_metrics row) to an experiment",
        description="Add a metric beside the experiment's built-in one. A primary metric must win, a guardrail "
        "must not be worse than control by more than its margin, a secondary one is only reported. The name "
        "'primary' changes the built-in metric's role, direction or margin instead.",
    )
    p.add_argument("experiment", metavar="EXPERIMENT")
    p.add_argument("name", metavar="NAME", help="the metric's name (letters, digits, _ . : -), e.g. revenue_per_user")
    p.add_argument("--kind", choices=KINDS, help="proportion, mean or ratio (required, except for 'primary')")
    p.add_argument(
        "--role", choices=ROLES, help="primary, guardrail or secondary (default: secondary; primary for 'primary')"
    )
    p.add_argument(
        "--direction", choices=DIRECTIONS, default="increase", help="which way is better (default: increase)"
    )
    p.add_argument(
        "--margin",
        type=float,
        default=0.0,
        help="a guardrail's relative non-inferiority margin, "
        "0 <= margin < 1: 0.02 = may be at most 2%% worse (default 0)",
    )
    p.add_argument("--description", default="", help="what the metric measures")
    p.add_argument(
        "--cuped",
        choices=CUPED,
        default="auto",
        help="variance reduction with a pre-exposure "
        "covariate: auto (when every variant sent one) or off (default auto)",
    )
    p.add_argument("--actor", default="cli", help="who acts, recorded in the audit log (default: cli)")
    p.add_argument("--json", action="store_true", help="print exactly the API's data object")
    p.set_defaults(handler=cmd_metrics_add)

    p = msub.add_parser("list", help="the experiment's metrics: the built-in one, then its ab_metrics rows")
    p.add_argument("experiment", metavar="EXPERIMENT")
    p.add_argument("--json", action="store_true", help="print exactly the API's data object")
    p.set_defaults(handler=cmd_metrics_list)

    p = msub.add_parser("remove", help="remove a metric with its statistics and queued updates")
    p.add_argument("experiment", metavar="EXPERIMENT")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--actor", default="cli", help="who acts, recorded in the audit log (default: cli)")
    p.add_argument("--json", action="store_true", help="print exactly the API's data object")
    p.set_defaults(handler=cmd_metrics_remove)


register(_register)
