"""CLI commands over the engine: check, promote, scan, rollback, rollout pause|resume|show. Tables by default;
--json prints the API's data."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel

from worker.cli import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    CliError,
    _config,
    _run_async,
    _settings,
    register,
    settle_imports,
)
from worker.cli_json import dumps_indented
from worker.config import PRESET_NAMES, EffectiveConfig, Settings
from worker.domain.errors import (
    AlreadyPromoted,
    AlreadyRolledBack,
    ApprovalNotFound,
    ApprovalNotPending,
    DomainError,
    ExperimentNotFound,
    InvalidRequest,
    MetricExists,
    MetricNotFound,
    PromotionNotFound,
    RolloutConflict,
    RolloutNotFound,
)
from worker.http.models import (
    ApprovalResult,
    CheckResult,
    PromoteResult,
    RollbackResult,
    RolloutActionResult,
    ScanResult,
)

# Every domain error's exit code, in one place: a wrong argument or name is a usage error (2, like argparse);
# a refusal of a valid request (already promoted, already rolled back) is 1. A subclass not listed takes its
# nearest listed base's code.
EXIT_CODES: dict[type[DomainError], int] = {
    DomainError: EXIT_USAGE,
    InvalidRequest: EXIT_USAGE,
    ExperimentNotFound: EXIT_USAGE,
    PromotionNotFound: EXIT_USAGE,
    AlreadyPromoted: EXIT_REFUSED,
    AlreadyRolledBack: EXIT_REFUSED,
    ApprovalNotFound: EXIT_USAGE,
    ApprovalNotPending: EXIT_REFUSED,
    RolloutNotFound: EXIT_USAGE,
    RolloutConflict: EXIT_REFUSED,
    MetricNotFound: EXIT_USAGE,
    MetricExists: EXIT_REFUSED,
}


def exit_code(exc: DomainError) -> int:
    """The exit code of a domain error (by its class, or the nearest listed base)."""
    return next(EXIT_CODES[cls] for cls in type(exc).__mro__ if cls in EXIT_CODES)


@asynccontextmanager
async def open_engine(settings: Settings, config: EffectiveConfig) -> AsyncIterator[Any]:
    """An Engine on DATABASE_URL (or a migrated embedded server when it is unset)."""
    from worker.db.connect import create_pool, resolve_database
    from worker.db.migrate import migrate, pending_migrations
    from worker.engine import Engine

    settle_imports()
    async with resolve_database(settings.database_url) as db:
        pool = await create_pool(db.url, min_size=1, max_size=4)
        try:
            # On the pool's first connection: one connection set up, not two (the command is a short process).
            async with pool.acquire() as conn:
                if db.embedded is not None:
                    print("note: DATABASE_URL is not set; using a throw-away embedded database", file=sys.stderr)
                    await migrate(conn)
                elif await pending_migrations(conn):
                    raise CliError("the database schema is not up to date; run `autopromote migrate` first", EXIT_USAGE)
            yield Engine(pool, settings, config)
        finally:
            await pool.close()


def _engine_command(
    args: argparse.Namespace,
    action: Callable[[Any], Awaitable[dict[str, Any]]],
    render: Callable[[dict[str, Any]], None],
    ok: Callable[[dict[str, Any]], bool],
    result: type[BaseModel],
) -> int:
    settings = _settings()
    overrides: dict[str, Any] = {}
    if getattr(args, "dry_run", False):
        # A request-layer value, like the API's: it makes every decision dry, and nothing here can make one less
        # dry than the experiment's own config (worker.config.with_experiment_overrides).
        overrides["dryRun"] = True
    config = _config(args.preset, overrides)

    async def go() -> int:
        async with open_engine(settings, config) as engine:
            try:
                data = await action(engine)
            except DomainError as exc:
                raise CliError(exc.message, exit_code(exc)) from None
        if args.json:
            # Through the API's result model: the same keys and values as the API's ``data``, checked.
            checked = result.model_validate(data).model_dump(mode="json", exclude_unset=True)
            print(dumps_indented(checked))  # json.dumps(checked, indent=2), twice as fast (a scan's is ~10 MB)
        else:
            render(data)
        return EXIT_OK if ok(data) else EXIT_REFUSED

    return _run_async(go)


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def _render_check(data: dict[str, Any]) -> None:
    verdict = "ELIGIBLE" if data["eligible"] else "not eligible"
    print(
        f"{data['experimentName']}: {verdict}  (method {data.get('method')}, "
        f"confidence {data['confidence']:.2f}%, improvement {data['improvement']:+.2f}%)"
    )
    winner = data.get("winningVariant")
    if winner:
        print(f"winner: {winner['variantName']}  rate {winner['successRate']:.4f}  n={winner['sampleSize']:,}")
    variants = data.get("variants") or []
    if variants:
        rows = [
            [
                v["name"] + (" (control)" if v["isControl"] else ""),
                f"{v['exposures']:,}",
                f"{v['rate']:.4f}",
                "-" if v.get("lift") is None else f"{100 * v['lift']:+.2f}%",
                "-" if v.get("confidence") is None else f"{v['confidence']:.2f}%",
                "-" if v.get("errorRate") is None else f"{100 * v['errorRate']:.2f}%",
                "-" if v.get("p95LatencyMs") is None else f"{v['p95LatencyMs']:.1f} ms",
            ]
            for v in variants
        ]
        print(_table(rows, ["variant", "exposures", "rate", "lift", "confidence", "errors", "p95"]))
    metrics = data.get("metrics") or []
    if len(metrics) > 1:  # an experiment with ab_metrics rows: each metric's verdict per treatment
        rows = [
            [
                m["name"],
                m["role"] + (f" (margin {100 * m['margin']:.1f}%)" if m["role"] == "guardrail" else ""),
                t["variant"],
                "-" if t["lift"] is None else f"{t['lift']:+.2f}%",
                "-" if t["interval"] is None else f"[{t['interval'][0]:+.2f}%, {t['interval'][1]:+.2f}%]",
                f"{t['pValue']:.4g}",
                t["verdict"],
            ]
            for m in metrics
            for t in m["treatments"]
        ]
        print(_table(rows, ["metric", "role", "variant", "lift", "interval", "p", "verdict"]))
    print("safety checks:")
    for c in data.get("safetyChecks", []):
        mark = "pass" if c["passed"] else "FAIL"
        print(f"  [{mark}] {c['name']} ({c['severity']}): {c['message']}")
    if data.get("reasons"):
        print("why not:")
        for r in data["reasons"]:
            print(f"  - {r}")
    for m in data.get("metrics") or []:
        for t in m.get("treatments") or []:
            if t.get("varianceReduction") is not None and t.get("lift") is not None:
                unadjusted = "-" if t.get("unadjustedLift") is None else f"{t['unadjustedLift']:+.2f}%"
                print(
                    f"CUPED on {m['name']}: {t['variant']} {t['lift']:+.2f}% adjusted ({unadjusted} without), "
                    f"{100 * t['varianceReduction']:.0f}% less variance"
                )
    for note in data.get("notes") or []:
        print(f"note: {note}")
    eta = data.get("eta")
    if eta:
        print(f"eta ({eta['basis']}): {eta['message']}")
    if data.get("rollout"):
        _render_ramp(data["rollout"])


def _render_ramp(r: dict[str, Any]) -> None:
    """Where a ramp is: its state, the shares, and the current step's guard."""
    path = " -> ".join((f"[{s:g}%]" if i + 1 == r["step"] else f"{s:g}%") for i, s in enumerate(r["steps"]))
    print(f"rollout: {r['state']}, step {r['step']} of {len(r['steps'])} at {r['treatmentShare']:g}%  ({path})")
    print(f"  step began {r['stepStartedAt']}" + (f", next step at {r['nextStepAt']}" if r.get("nextStepAt") else ""))
    for g in r.get("guard") or []:
        interval = g.get("interval")
        shown = "" if g.get("lift") is None else f"  {g['lift']:+.2f}"
        if interval and interval[0] is not None and interval[1] is not None:
            shown += f" [{interval[0]:+.2f}, {interval[1]:+.2f}]"
        print(f"  guard {g['metric']}: {g['verdict']}{shown}")


def eta_cell(eta: dict[str, Any] | None) -> str:
    """An ETA in a table cell: the median time left with its 80% interval, or what stands instead."""
    if not eta:
        return "-"
    hours, lo_hi = eta.get("hoursRemaining"), eta.get("hoursInterval80")
    if hours is not None and lo_hi:
        if hours == 0:
            return "now"
        hi = "?" if lo_hi[1] is None else f"{lo_hi[1] / 24:.1f}"
        return f"{hours / 24:.1f} d ({lo_hi[0] / 24:.1f}-{hi})"
    n = eta.get("exposuresRemainingPerArm")
    if n is not None:
        return f"{n:,}/arm"
    return "won't reach MDE" if str(eta.get("message", "")).startswith("will not reach") else "-"


def _render_promote(data: dict[str, Any]) -> None:
    if data.get("dryRun"):
        verdict = "would promote" if data["success"] else "would not promote"
        print(
            f"dry run: {data['experimentName']} {verdict}"
            + (f" {data['promotedVariantName']}" if data.get("promotedVariantName") else "")
        )
    elif data["success"]:
        print(
            f"promoted {data['promotedVariantName']} of {data['experimentName']} "
            f"(confidence {data['confidence']:.2f}%, improvement {data['improvement']:+.2f}%)"
        )
        print(f"promotion id: {data['promotionId']}  notifications queued: {data['notificationsQueued']}")
    else:
        print(f"not promoted: {data['experimentName']}")
    for r in data.get("reasons") or []:
        print(f"  - {r}")


def _render_scan(data: dict[str, Any]) -> None:
    print(
        f"scanned {data['scanned']}, eligible {data['eligible']}, promoted {data['promoted']}"
        + (" (dry run)" if data.get("dryRun") else "")
    )
    rows = []
    for r in data["results"]:
        status = "promoted" if r.get("promoted") else ("eligible" if r["eligible"] else "blocked")
        why = r.get("error") or ("; ".join(r["reasons"]) if r["reasons"] else "")
        rows.append(
            [
                r["experimentName"],
                status,
                f"{r['confidence']:.2f}%",
                f"{r['improvement']:+.2f}%",
                eta_cell(r.get("eta")),
                why[:100],
            ]
        )
    if rows:
        print(_table(rows, ["experiment", "decision", "confidence", "improvement", "eta (days, 80%)", "reason"]))


def _render_rollback(data: dict[str, Any]) -> None:
    print(f"rolled back {data['rolledBackVariantName']} of {data['experimentName']} ({data['promotionId']})")
    print(f"restored weights: {json.dumps(data['restoredWeights'])}")
    print(f"notifications queued: {data['notificationsQueued']}")


def cmd_check(args: argparse.Namespace) -> int:
    return _engine_command(
        args,
        lambda e: e.check_promotion_eligibility(args.name),
        _render_check,
        lambda d: bool(d["eligible"]),
        CheckResult,
    )


def cmd_promote(args: argparse.Namespace) -> int:
    return _engine_command(
        args,
        lambda e: e.promote_winner(args.name, actor=args.actor),
        _render_promote,
        lambda d: bool(d["success"]),
        PromoteResult,
    )


def cmd_scan(args: argparse.Namespace) -> int:
    return _engine_command(
        args,
        # The table shows each experiment's ETA; --json is the API's data, which leaves it out (it costs).
        lambda e: e.scan_and_promote_winners(actor=args.actor, include_eta=not args.json),
        _render_scan,
        lambda d: True,
        ScanResult,
    )


def cmd_rollback(args: argparse.Namespace) -> int:
    if not args.reason or not args.reason.strip():
        raise CliError("--reason must not be empty: say why you roll back", EXIT_USAGE)
    return _engine_command(
        args,
        lambda e: e.rollback_promotion(args.promotion_id, args.reason, actor=args.actor),
        _render_rollback,
        lambda d: bool(d["success"]),
        RollbackResult,
    )


def _render_approval(data: dict[str, Any]) -> None:
    status = data["status"]
    what = "step of the rollout" if data["kind"] == "step" else "promotion"
    print(f"{status} approval {data['approvalId']} ({what} of {data['experimentName']}) by {data['decidedBy']}")
    promotion = data.get("promotion")
    if status == "approved" and promotion and promotion.get("promotionId"):
        print(f"promoted {promotion['promotedVariantName']}: promotion id {promotion['promotionId']}")
    if data.get("reason"):
        print(f"  - {data['reason']}")


def cmd_approve(args: argparse.Namespace) -> int:
    return _engine_command(
        args,
        lambda e: e.approve(args.approval_id, actor=args.actor),
        _render_approval,
        lambda d: d["status"] == "approved",
        ApprovalResult,
    )


def cmd_decline(args: argparse.Namespace) -> int:
    if not args.reason or not args.reason.strip():
        raise CliError("--reason must not be empty: say why you decline", EXIT_USAGE)
    return _engine_command(
        args,
        lambda e: e.decline(args.approval_id, args.reason, actor=args.actor),
        _render_approval,
        lambda d: True,
        ApprovalResult,
    )


def cmd_approvals(args: argparse.Namespace) -> int:
    from worker.db.reads import Reads
    from worker.http.api.approvals import approval_json
    from worker.http.api.wire import plain

    if not 1 <= args.limit <= 10_000:
        raise CliError(f"--limit must be between 1 and 10000, got {args.limit}", EXIT_USAGE)
    settings = _settings()
    config = _config(None)
    status = None if args.status == "all" else args.status

    async def go() -> int:
        async with open_engine(settings, config) as engine:
            items, total = await Reads(engine.pool).approvals_page(status, args.experiment, args.limit, 0)
        if args.json:
            print(json.dumps({"approvals": [plain(approval_json(a)) for a in items], "total": total}, indent=2))
            return EXIT_OK
        if not items:
            print(f"no {args.status if status else ''} approvals".replace("  ", " "))
            return EXIT_OK
        rows = [
            [
                str(a.id),
                a.experiment_name,
                a.kind if a.step is None else f"{a.kind} {a.step}",
                a.variant or "-",
                "expired" if a.expired else a.status,
                a.requested_at.strftime("%Y-%m-%d %H:%M:%S"),
                a.expires_at.strftime("%Y-%m-%d %H:%M:%S") if a.status == "pending" else (a.decided_by or "-"),
            ]
            for a in items
        ]
        last = "expires (UTC)" if status == "pending" else "expires / decided by"
        print(_table(rows, ["approval id", "experiment", "kind", "variant", "status", "requested (UTC)", last]))
        if total > len(items):
            print(f"({len(items)} of {total}; --limit shows more)", file=sys.stderr)
        return EXIT_OK

    return _run_async(go)


def _render_rollout_action(data: dict[str, Any]) -> None:
    print(f"{data['experimentName']}:")
    _render_ramp(data["rollout"])


def cmd_rollout(args: argparse.Namespace) -> int:
    async def act(e: Any) -> dict[str, Any]:
        if args.rollout_command == "pause":
            rollout = await e.rollouts.pause(args.name, actor=args.actor, reason=args.reason)
        elif args.rollout_command == "resume":
            rollout = await e.rollouts.resume(args.name, actor=args.actor)
        else:
            rollout = await e.rollouts.describe_named(args.name)
            if rollout is None:
                raise RolloutNotFound(f"experiment {args.name!r} has no rollout (or does not exist)")
        return {"experimentName": args.name, "rollout": rollout}

    return _engine_command(args, act, _render_rollout_action, lambda d: True, RolloutActionResult)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=PRESET_NAMES, help="preset to start from (default: AUTO_PROMOTION_PRESET)")
    p.add_argument("--json", action="store_true", help="print exactly the API's data object")


def _register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("check", help="is an experiment eligible for promotion, and if not, why")
    p.add_argument("name", help="experiment name")
    _common(p)
    p.set_defaults(handler=cmd_check)

    p = sub.add_parser("promote", help="promote an experiment's winner (one transaction, all checks on locked state)")
    p.add_argument("name", help="experiment name")
    p.add_argument("--dry-run", action="store_true", help="decide and audit, change nothing")
    p.add_argument("--actor", default="cli", help="who acts, recorded in the audit log (default: cli)")
    _common(p)
    p.set_defaults(handler=cmd_promote)

    p = sub.add_parser("scan", help="evaluate every running experiment and promote the eligible ones")
    p.add_argument("--dry-run", action="store_true", help="decide and audit, change nothing")
    p.add_argument("--actor", default="cli", help="who acts, recorded in the audit log (default: cli)")
    _common(p)
    p.set_defaults(handler=cmd_scan)

    p = sub.add_parser("rollback", help="roll a promotion back and restore the previous weights")
    p.add_argument("promotion_id", metavar="PROMOTION_ID")
    p.add_argument("--reason", required=True, help="why (required, recorded and sent in notifications)")
    p.add_argument("--actor", default="cli", help="who acts, recorded in the audit log (default: cli)")
    _common(p)
    p.set_defaults(handler=cmd_rollback)

    p = sub.add_parser("approvals", help="approvals waiting for an operator (approval.require), or past ones")
    p.add_argument(
        "--status",
        choices=("pending", "approved", "declined", "closed", "all"),
        default="pending",
        help="which approvals (default: pending)",
    )
    p.add_argument("--experiment", help="only this experiment's")
    p.add_argument("--limit", type=int, default=100, help="at most this many, newest first (default: 100)")
    p.add_argument("--json", action="store_true", help="print as JSON (the API's GET /api/approvals data)")
    p.set_defaults(handler=cmd_approvals)

    p = sub.add_parser("approve", help="approve a pending approval: re-check on the locked state and promote")
    p.add_argument("approval_id", metavar="APPROVAL_ID")
    p.add_argument("--actor", default="cli", help="who approves, recorded in the audit log (default: cli)")
    _common(p)
    p.set_defaults(handler=cmd_approve)

    p = sub.add_parser("decline", help="decline a pending approval: nothing is promoted")
    p.add_argument("approval_id", metavar="APPROVAL_ID")
    p.add_argument("--reason", required=True, help="why (required, recorded with the approval)")
    p.add_argument("--actor", default="cli", help="who declines, recorded in the audit log (default: cli)")
    _common(p)
    p.set_defaults(handler=cmd_decline)

    ramp = sub.add_parser("rollout", help="hold, resume or show a ramp (rollout.mode = ramp)")
    ramp_sub = ramp.add_subparsers(dest="rollout_command", metavar="SUBCOMMAND", required=True)
    p = ramp_sub.add_parser("pause", help="hold a ramp at its step (it stays guarded; audited)")
    p.add_argument("name", metavar="EXPERIMENT", help="experiment name")
    p.add_argument("--reason", help="why (recorded in the audit log)")
    p.add_argument("--actor", default="cli", help="who acts, recorded in the audit log (default: cli)")
    _common(p)
    p.set_defaults(handler=cmd_rollout)
    p = ramp_sub.add_parser("resume", help="let a paused ramp go on from its step (audited)")
    p.add_argument("name", metavar="EXPERIMENT", help="experiment name")
    p.add_argument("--actor", default="cli", help="who acts, recorded in the audit log (default: cli)")
    _common(p)
    p.set_defaults(handler=cmd_rollout)
    p = ramp_sub.add_parser("show", help="where a ramp is and its current step's guard")
    p.add_argument("name", metavar="EXPERIMENT", help="experiment name")
    _common(p)
    p.set_defaults(handler=cmd_rollout)


register(_register)
