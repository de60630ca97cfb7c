"""Read results (worker.db.reads) turned into template context, and the formatting the templates use.

Nothing here writes HTML except the SVG charts of worker.http.svg, which escape their own labels and are passed to
the templates as ``Markup``; every other value reaches the page through Jinja2's autoescape.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from markupsafe import Markup
from pydantic import ValidationError

from worker.config import AutoPromotionConfig, ConfigError, EffectiveConfig, with_experiment_overrides
from worker.db.reads import (
    Approval,
    AuditEntry,
    EvaluationSnapshot,
    Experiment,
    ExperimentHistory,
    Promotion,
    PromotionReport,
    StatusCount,
)
from worker.domain.errors import InvalidRequest
from worker.domain.eta import EtaRequest, stored_etas
from worker.domain.metrics import BUILTIN_METRIC
from worker.domain.planning import PlanRequest, plan_experiment
from worker.http.models import PlanQuery
from worker.http.svg import (
    DayCount,
    LiftPoint,
    ShareStep,
    interval_bar,
    interval_scale,
    lift_chart,
    pct,
    promotions_chart,
    share_chart,
)

MAX_EXPERIMENTS = 300
AUDIT_ROWS = 100
PROMOTION_ROWS = 100
DEFAULT_DAYS = 30
REFRESH_ALL = "evaluation promotion rollback rollout"
REFRESH_PROMOTIONS = "promotion rollback"

STATUS_LABELS = {
    "running": ("▶", "running"),
    "promoted": ("★", "promoted"),
    "rolled_back": ("↩", "rolled back"),
    "paused": ("⏸", "paused"),
    "draft": ("✎", "draft"),
    "stopped": ("■", "stopped"),
}


# --------------------------------------------------------------------------------------------- formatting
def experiment_href(name: str) -> str:
    return "/experiments/" + quote(name, safe="")


def fragment_href(name: str) -> str:
    return "/fragments/experiment?" + urlencode({"name": name})


def card_fragment_href(name: str) -> str:
    return "/fragments/experiment-card?" + urlencode({"name": name})


def slug(name: str) -> str:
    """A stable id for an experiment's elements (names may contain anything; ids must not)."""
    return "x" + hashlib.sha1(name.encode("utf-8"), usedforsecurity=False).hexdigest()[:10]


def num(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}{suffix}"
    return f"{float(value):,.{digits}f}{suffix}"


def rate(value: Any, metric_type: str) -> str:
    if value is None:
        return "–"
    return pct(float(value), 2, signed=False) if metric_type == "conversion" else num(float(value), 4)


def status_label(status: str) -> tuple[str, str]:
    """(icon, words) of an experiment status."""
    return STATUS_LABELS.get(status, ("•", status))


def _json(value: Any) -> Any:
    """jsonb arrives decoded with the project's pool codecs; tolerate a pool without them."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


FILTERS: dict[str, Callable[..., Any]] = {
    "num": num,
    "rate": rate,
    "pct": pct,
    "slug": slug,
    "experiment_href": experiment_href,
    "fragment_href": fragment_href,
    "card_fragment_href": card_fragment_href,
    "status_label": status_label,
}


# ---------------------------------------------------------------------------------------- experiment list
def _variant_rows(exp: Experiment) -> tuple[list[dict[str, Any]], bool]:
    """Variants as of the last decision when there is one (consistent figures), else the folded statistics."""
    evaluated = (exp.decision or {}).get("variants") or []
    if evaluated:
        return [dict(v) for v in evaluated], True
    out = []
    for v in exp.variants:
        n = v.exposures
        numerator = v.conversions if exp.metric_type == "conversion" else v.value_sum
        out.append(
            {
                "name": v.name,
                "isControl": v.is_control,
                "exposures": n,
                "rate": (float(numerator or 0) / n) if n else None,
                "errorRate": (v.errors / n) if n else None,
            }
        )
    return out, False


def variants_table(exp: Experiment, *, detailed: bool = False) -> dict[str, Any]:
    """The variants table: headings and one display row per variant."""
    variants, evaluated = _variant_rows(exp)
    metric = exp.metric_type
    scale = interval_scale(
        [(v.get("lift"), v.get("ciLow"), v.get("ciHigh")) for v in variants if not v.get("isControl")]
    )
    rate_head = "Conversion rate" if metric == "conversion" else "Mean"
    heads = ["Variant", "Exposures", rate_head, "Lift (interval)", "Confidence"]
    if detailed:
        heads += ["Error rate", "p95 latency"]
    rows = []
    for v in variants:
        control = bool(v.get("isControl"))
        lift = v.get("lift")
        p95 = v.get("p95LatencyMs")
        rows.append(
            {
                "name": v.get("name"),
                "tagged": control and str(v.get("name")).strip().lower() != "control",
                "lift_state": "baseline" if control else ("none" if lift is None else "value"),
                "lift": pct(lift),
                "ci_low": pct(v.get("ciLow")),
                "ci_high": pct(v.get("ciHigh")),
                "bar": (
                    Markup(interval_bar(lift, v.get("ciLow"), v.get("ciHigh"), lo=scale[0], hi=scale[1]))  # noqa: S704 - SVG escapes its labels
                    if not control and lift is not None
                    else ""
                ),
                "confidence": num(v.get("confidence"), 1, "%"),
                "exposures": num(int(v.get("exposures") or 0)),
                "rate": rate(v.get("rate"), metric),
                "error_rate": rate(v.get("errorRate"), "conversion"),
                "p95": num(p95, 1, " ms") if p95 is not None else None,
            }
        )
    caption = "Variants at the last evaluation" if evaluated else "Variants (folded statistics; not evaluated yet)"
    return {"rows": rows, "heads": heads, "rate_head": rate_head, "caption": caption, "detailed": detailed}


def reasons(decision: Mapping[str, Any] | None, status: str) -> dict[str, Any]:
    """Why the experiment is (not) eligible, as the last decision says."""
    if not decision:
        return {"kind": "none"}
    prefix = "" if status == "running" else "At the last evaluation: "
    if decision.get("eligible"):
        winner = (decision.get("winningVariant") or {}).get("variantName") or decision.get("bestVariant")
        return {
            "kind": "eligible",
            "prefix": prefix,
            "winner": winner,
            "confidence": num(decision.get("confidence"), 1),
            "improvement": num(decision.get("improvement"), 2),
        }
    items = decision.get("reasons") or []
    if not items:
        return {"kind": "no_reason"}
    title = "Why not yet eligible:" if status == "running" else "Why it was not eligible at the last evaluation:"
    return {"kind": "list", "title": title, "lines": list(items)}


def actions(exp: Experiment) -> dict[str, Any]:
    """The operator buttons: a dry-run check always, promote while running, roll back an active promotion."""
    eligible = bool((exp.decision or {}).get("eligible"))
    return {
        "name": exp.name,
        "promotion_id": exp.active_promotion_id,
        "promote": exp.status == "running" and exp.active_promotion_id is None,
        # the API refuses a blocked one; do not invite the click
        "promote_style": "btn primary" if eligible else "btn",
    }


def card(exp: Experiment, eta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One experiment's card on the overview (``eta``: etas() of it, or None)."""
    return {
        "exp": exp,
        "decision": exp.decision or None,
        "variants": variants_table(exp),
        "reasons": reasons(exp.decision or None, exp.status),
        "actions": actions(exp),
        "eta": eta_view(eta, exp.decision),
    }


def etas(experiments: Sequence[Experiment], base: EffectiveConfig | None, now: datetime) -> list[dict[str, Any] | None]:
    """The ETA of each running experiment from its last decision (domain/eta.py), in one vectorised pass."""
    if base is None:
        return [None] * len(experiments)
    requests: list[EtaRequest] = []
    where: list[int] = []
    for i, exp in enumerate(experiments):
        if exp.status != "running" or not exp.decision or exp.last_evaluated_at is None:
            continue
        try:
            config = with_experiment_overrides(base, exp.config if isinstance(exp.config, dict) else None)
        except ConfigError:
            continue
        requests.append(EtaRequest(exp.decision, config, exp.status, exp.started_at, exp.last_evaluated_at))
        where.append(i)
    out: list[dict[str, Any] | None] = [None] * len(experiments)
    for i, eta in zip(where, stored_etas(requests, now), strict=True):
        out[i] = eta
    return out


def _days_text(hours: float) -> str:
    return f"{hours:.1f} hours" if hours < 48 else f"{hours / 24:.1f} days"


def eta_view(eta: Mapping[str, Any] | None, decision: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """An ETA as the page shows it: a progress bar (exposures so far against those still needed) and the words."""
    if not eta:
        return None
    remaining = eta.get("exposuresRemainingPerArm")
    variants = {v.get("name"): v for v in (decision or {}).get("variants") or []}
    arms = [variants.get((decision or {}).get(k)) for k in ("controlVariant", "bestVariant")]
    so_far = sum(int(v.get("exposures") or 0) for v in arms if v) / 2
    progress = None
    if remaining is not None and so_far + remaining > 0:
        progress = round(100 * so_far / (so_far + remaining))
    hours, interval = eta.get("hoursRemaining"), eta.get("hoursInterval80")
    if remaining == 0:
        text = str(eta.get("message") or "decided")
    elif hours is not None and interval:
        upper = "longer" if interval[1] is None else _days_text(interval[1])
        text = f"about {_days_text(hours)} left (80%: {_days_text(interval[0])} to {upper})"
    elif remaining is not None:
        text = f"about {remaining:,} more exposures per arm (exposure rate unknown)"
    else:
        text = str(eta.get("message") or "")
    basis = "if the true lift is the MDE" if eta.get("basis") == "planned" else "at the observed lift"
    return {"progress": progress, "text": text, "basis": basis, "message": eta.get("message")}


def summary(counts: Sequence[StatusCount]) -> dict[str, Any]:
    """The one-line count above the cards."""
    return {
        "total": sum(c.experiments for c in counts),
        "parts": ", ".join(f"{c.experiments} {status_label(c.status)[1]}" for c in counts),
        "eligible": sum(c.eligible for c in counts if c.status == "running"),
    }


def overview(
    experiments: Sequence[Experiment],
    counts: Sequence[StatusCount],
    base: EffectiveConfig | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The experiments list (the body of ``/`` and of ``/fragments/experiments``)."""
    total = sum(c.experiments for c in counts)
    projected = etas(experiments, base, now or datetime.now(UTC))
    return {
        "cards": [card(e, eta) for e, eta in zip(experiments, projected, strict=True)],
        "summary": summary(counts),
        "shown": len(experiments),
        "total": total,
    }


# ---------------------------------------------------------------------------------------- experiment page
def safety_checks(decision: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    out = []
    for c in (decision or {}).get("safetyChecks") or []:
        passed = bool(c.get("passed"))
        if passed and str(c.get("severity") or "") == "warning":
            icon, label, cls = "⚠", "passed with a warning", "warn"
        elif passed:
            icon, label, cls = "✓", "passed", "ok"
        else:
            icon, label, cls = "✗", "failed", "bad"
        out.append({"icon": icon, "label": label, "cls": cls, "name": c.get("name"), "message": c.get("message")})
    return out


def _audit_summary(details: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for key in ("reason", "trigger", "promotedVariant", "wouldPromote", "error"):
        if key in details and details[key] not in (None, ""):
            parts.append(f"{key}: {details[key]}")
    found = details.get("reasons")
    if isinstance(found, list) and found:
        parts.append("reasons: " + "; ".join(str(r) for r in found[:3]) + (" …" if len(found) > 3 else ""))
    return " · ".join(parts)[:600]


def audit_rows(entries: Sequence[AuditEntry]) -> list[dict[str, Any]]:
    out = []
    for entry in entries:
        details = _json(entry.details) or {}
        text = json.dumps(details, indent=1, sort_keys=True, default=str)
        if len(text) > 6000:
            text = text[:6000] + "\n… (truncated)"
        out.append(
            {"entry": entry, "text": text, "summary": _audit_summary(details if isinstance(details, dict) else {})}
        )
    return out


def lift_charts(
    name: str,
    control: str | None,
    snapshots: Sequence[EvaluationSnapshot],
    promotions: Sequence[Promotion],
    level: float,
) -> list[dict[str, Any]]:
    """One chart per treatment (drawn wide and narrow) with the data behind it, newest 25 rows first."""
    marks: list[tuple[datetime, str]] = []
    for p in promotions:
        marks.append((p.promoted_at, f"promoted {p.promoted_variant_name}"))
        if p.rollback_at is not None:
            marks.append((p.rollback_at, "rolled back"))
    by_variant: dict[str, list[LiftPoint]] = {}
    raw: dict[str, list[EvaluationSnapshot]] = {}
    for s in snapshots:
        if s.metric != BUILTIN_METRIC:
            continue
        by_variant.setdefault(s.variant_name, []).append(
            LiftPoint(s.created_at, s.lift, s.ci_low, s.ci_high, s.eligible)
        )
        raw.setdefault(s.variant_name, []).append(s)
    charts = []
    for i, (variant, points) in enumerate(sorted(by_variant.items())):
        title = f"Lift of {variant} over {control or 'control'}"
        chart_id = f"lift-{slug(name)}-{i}"
        charts.append(
            {
                "title": title,
                # svg.py escapes every label it draws (the title included), so the drawing is markup already.
                "wide": Markup(lift_chart(points, chart_id=chart_id, title=title, level=level, marks=marks)),  # noqa: S704
                "narrow": Markup(  # noqa: S704
                    lift_chart(
                        points,
                        chart_id=f"{chart_id}-n",
                        title=title,
                        level=level,
                        compact=True,
                        marks=marks,
                    )
                ),
                "kept": len(raw[variant]),
                "rows": list(reversed(raw[variant][-25:])),
            }
        )
    return charts


_GUARD_LABELS = {
    "critical_alert": "Critical alerts",
    "primary": "Primary metric (relative lift)",
    "error_rate": "Error rate (percentage points)",
    "latency": "P95 latency (change)",
}
_VERDICTS = {"ok": ("✓", "no harm shown"), "breach": ("✗", "breach"), "waiting": ("…", "waiting for data")}


def _guard_rows(guard: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per metric of a step's guard: its verdict (icon and words), lift, interval and a bar on the row's own
    scale (the metrics' units differ), with zero dashed and a guardrail's margin as a red tick."""
    rows = []
    for g in guard:
        icon, words = _VERDICTS.get(str(g.get("verdict")), ("?", str(g.get("verdict"))))
        interval = g.get("interval") or None
        lift = g.get("lift")
        metric = str(g.get("metric"))
        margin = g.get("margin") if metric not in ("critical_alert", "error_rate", "latency") else None
        unit = " pp" if metric == "error_rate" else "%"
        bar = ""
        if isinstance(lift, int | float) and interval and None not in interval:
            lo_v, hi_v = float(interval[0]), float(interval[1])
            edges = [0.0, lo_v, hi_v, float(lift), *([float(margin)] if isinstance(margin, int | float) else [])]
            pad = max((max(edges) - min(edges)) * 0.08, 0.01)
            # svg.py draws only numbers; the bar is decorative (the text beside it says the same).
            bar = Markup(  # noqa: S704
                interval_bar(
                    float(lift),
                    lo_v,
                    hi_v,
                    lo=min(edges) - pad,
                    hi=max(edges) + pad,
                    margin=float(margin) if isinstance(margin, int | float) and margin else None,
                )
            )
        rows.append(
            {
                "metric": _GUARD_LABELS.get(metric, f"Guardrail {metric} (relative lift)"),
                "verdict": g.get("verdict"),
                "icon": icon,
                "words": words,
                "lift": "–" if lift is None else f"{lift:+.2f}{unit}",
                "interval": "–"
                if not interval or interval[0] is None or interval[1] is None
                else f"[{interval[0]:+.2f}, {interval[1]:+.2f}]{unit}",
                "margin": None if not isinstance(margin, int | float) or not margin else f"{margin:+g}%",
                "bar": bar,
            }
        )
    return rows


def rollout_section(timeline: Mapping[str, Any] | None, name: str, now: datetime) -> dict[str, Any] | None:
    """The ramp of ``/experiments/{name}``: where it is, the share over time, and each step's guard."""
    if timeline is None:
        return None
    history = timeline["history"]
    steps = [ShareStep(h["startedAt"], h["endedAt"], float(h["share"]), h["outcome"]) for h in history]
    return {
        "name": name,
        "state": timeline["state"],
        "step": timeline["step"],
        "steps": " → ".join(f"{s:g}%" for s in timeline["steps"]),
        "share": timeline["treatmentShare"],
        "next": timeline["nextStepAt"],
        "reason": timeline.get("reason"),
        "can_pause": timeline["state"] in ("ramping", "holding", "awaiting_approval"),
        "can_resume": timeline["state"] == "paused",
        "chart_wide": Markup(share_chart(steps, chart_id="ramp", now=now)),  # noqa: S704
        "chart_narrow": Markup(share_chart(steps, chart_id="ramp-n", now=now, compact=True)),  # noqa: S704
        "history": [
            {
                "step": h["step"],
                "share": h["share"],
                "kind": h["kind"],
                "started_at": h["startedAt"],
                "ended_at": h["endedAt"],
                "outcome": h["outcome"] or ("current" if timeline["state"] not in ("complete", "rolled_back") else "–"),
                "guard": _guard_rows(h["guard"] or []),
            }
            for h in reversed(history)
        ],
    }


VERDICT_LABELS = {
    "better": ("▲", "better", "ok"),
    "worse": ("▼", "worse", "bad"),
    "inconclusive": ("…", "inconclusive", "neutral"),
    "non_inferior": ("✓", "non-inferior", "ok"),
    "not_shown": ("✗", "not shown", "bad"),
}


def _margin_line(m: Mapping[str, Any]) -> float | None:
    """A guardrail's limit as a relative lift: -margin for an increase metric, +margin for a decrease one."""
    margin = m.get("margin")
    if m.get("role") != "guardrail" or not isinstance(margin, int | float):
        return None
    return -float(margin) if m.get("direction") != "decrease" else float(margin)


def _cuped_line(t: Mapping[str, Any]) -> str | None:
    """What CUPED did to a treatment's lift, in words (None when it did not apply)."""
    reduction, unadjusted = t.get("varianceReduction"), t.get("unadjustedLift")
    if not isinstance(reduction, int | float):
        return None
    without = pct(float(unadjusted) / 100.0) if isinstance(unadjusted, int | float) else "not computed"
    return f"CUPED: {100.0 * float(reduction):.0f}% less variance; without it {without}"


def metrics_table(decision: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """One group per metric of the last decision: its role and, per treatment, the lift with its interval drawn as
    a bar against the guardrail's margin, and the verdict in words."""
    groups = []
    for m in (decision or {}).get("metrics") or []:
        if not isinstance(m, Mapping):
            continue
        limit = _margin_line(m)
        treatments = [t for t in m.get("treatments") or [] if isinstance(t, Mapping)]

        def frac(x: Any) -> float | None:
            return float(x) / 100.0 if isinstance(x, int | float) else None

        intervals: list[tuple[float | None, float | None, float | None]] = []
        for t in treatments:
            ci = t.get("interval") or [None, None]
            intervals.append((frac(t.get("lift")), frac(ci[0]), frac(ci[1])))
        lo, hi = interval_scale([*intervals, *([(limit, limit, limit)] if limit is not None else [])])
        rows = []
        for t, (lift, ci_low, ci_high) in zip(treatments, intervals, strict=True):
            icon, words, cls = VERDICT_LABELS.get(str(t.get("verdict")), ("?", str(t.get("verdict")), "neutral"))
            rows.append(
                {
                    "variant": t.get("variant"),
                    "units": num(t.get("units")),
                    "mean": num(t.get("mean"), 4),
                    "lift": pct(lift),
                    "ci_low": pct(ci_low),
                    "ci_high": pct(ci_high),
                    "has_lift": lift is not None,
                    "bar": Markup(  # noqa: S704 - SVG escapes its labels
                        interval_bar(lift, ci_low, ci_high, lo=lo, hi=hi, margin=limit)
                    )
                    if lift is not None
                    else "",
                    "p_value": num(t.get("pValue"), 4),
                    "verdict": words,
                    "icon": icon,
                    "cls": cls,
                    "cuped": _cuped_line(t),
                }
            )
        raw_control = m.get("control")
        control: Mapping[str, Any] = raw_control if isinstance(raw_control, Mapping) else {}
        groups.append(
            {
                "name": m.get("name"),
                "role": m.get("role"),
                "kind": m.get("kind"),
                "direction": "higher is better" if m.get("direction") != "decrease" else "lower is better",
                "margin": pct(limit) if limit is not None else None,
                "control": control.get("variant"),
                "control_mean": num(control.get("mean"), 4),
                "control_units": num(control.get("units")),
                "p_label": "NI p-value" if m.get("role") == "guardrail" else "p-value",
                "rows": rows,
            }
        )
    return groups


def metric_charts(
    name: str,
    decision: Mapping[str, Any] | None,
    snapshots: Sequence[EvaluationSnapshot],
    level: float,
) -> list[dict[str, Any]]:
    """A chart over time of every metric but the built-in one (whose chart is the lift chart), one per treatment,
    in the order of the last decision's metrics; the margin of a guardrail is named in the title."""
    by_key: dict[tuple[str, str], list[LiftPoint]] = {}
    for s in snapshots:
        if s.metric != BUILTIN_METRIC:
            by_key.setdefault((s.metric, s.variant_name), []).append(
                LiftPoint(s.created_at, s.lift, s.ci_low, s.ci_high, s.eligible)
            )
    described = {str(m.get("name")): m for m in (decision or {}).get("metrics") or [] if isinstance(m, Mapping)}
    order = {n: i for i, n in enumerate(described)}
    out = []
    for i, ((metric, variant), points) in enumerate(
        sorted(by_key.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0]))
    ):
        m = described.get(metric, {})
        limit = _margin_line(m)
        role = f"{m.get('role')} " if m.get("role") else ""
        title = f"{role}{metric}: lift of {variant}" + (f" (margin {pct(limit)})" if limit is not None else "")
        chart_id = f"metric-{slug(name)}-{i}"
        out.append(
            {
                "metric": metric,
                "title": title,
                "wide": Markup(lift_chart(points, chart_id=chart_id, title=title, level=level)),  # noqa: S704
                "narrow": Markup(  # noqa: S704
                    lift_chart(points, chart_id=f"{chart_id}-n", title=title, level=level, compact=True)
                ),
                "kept": len(points),
            }
        )
    return out


def experiment_page(
    page: ExperimentHistory, level: float, base: EffectiveConfig | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """The body of ``/experiments/{name}``."""
    exp = page.experiment
    decision = exp.decision or None
    eta = etas([exp], base, now or datetime.now(UTC))[0]
    control = (decision or {}).get("controlVariant") or next((v.name for v in exp.variants if v.is_control), None)
    return {
        "exp": exp,
        "decision": decision,
        "reasons": reasons(decision, exp.status),
        "actions": actions(exp),
        "charts": lift_charts(exp.name, control, page.snapshots, page.promotions, level),
        "metrics": metrics_table(decision),
        "metric_notes": [str(n) for n in (decision or {}).get("notes") or []],
        "metric_charts": metric_charts(exp.name, decision, page.snapshots, level),
        "variants": variants_table(exp, detailed=True),
        "checks": safety_checks(decision),
        "eta": eta_view(eta, decision),
        "promotions": page.promotions,
        "audit": audit_rows(page.audit),
    }


# ---------------------------------------------------------------------------------------- promotions page
def promotions_page(report: PromotionReport, approvals: Sequence[Approval] = ()) -> dict[str, Any]:
    """The body of ``/promotions``: the pending approvals, get_promotion_stats(), promotions per day, active and
    rolled back."""
    stats = report.stats
    figures = [
        ("Promotions", num(stats.total_promotions)),
        ("Per day", num(stats.promotions_per_day, 2)),
        ("Still active", num(stats.successful_promotions)),
        ("Failed attempts", num(stats.failed_promotions)),
        ("Rolled back", num(stats.rollback_count)),
        ("Rollback rate", pct(stats.rollback_rate, 1, signed=False)),
        ("Avg confidence", num(stats.avg_confidence, 1, "%")),
        ("Avg improvement", num(stats.avg_improvement, 2, "%")),
        ("Avg time to promotion", num(stats.avg_hours_to_promotion, 1, " h")),
        ("Active now (all time)", num(stats.active_promotions)),
    ]
    counts = [DayCount(d.day, d.promotions, d.rollbacks) for d in report.per_day]
    return {
        "days": report.days,
        "figures": figures,
        # svg.py escapes its own labels.
        "chart_wide": Markup(promotions_chart(counts, chart_id="per-day")),  # noqa: S704
        "chart_narrow": Markup(promotions_chart(counts, chart_id="per-day-n", compact=True)),  # noqa: S704
        "active": report.active,
        "rolled_back": report.rolled_back,
        "approvals": list(approvals),
    }


# ------------------------------------------------------------------------------------------------- plan
# The planner's form: (query name, label, hint). The names are GET /api/plan's, so the page's URL is the API's
# query string too.
PLAN_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("baseline", "Baseline", "the control's conversion rate (0.1 = 10%), or its mean"),
    ("sd", "Standard deviation", "mean metrics only: per exposure"),
    ("mde", "Minimum detectable effect (%)", "relative lift: 5 means +5% over the baseline"),
    ("alpha", "Alpha", "significance level, 0.05 = 95% confidence"),
    ("power", "Power", "chance of finding a true lift of the MDE"),
    ("treatments", "Treatments", "variants besides the control"),
    ("primaryMetrics", "Primary metrics", "alpha is split across them"),
    ("rho", "Covariate correlation (rho)", "CUPED: variance x (1 - rho^2); 0 without"),
    ("dailyExposures", "Daily exposures per arm", "optional: adds the days"),
)
PLAN_DEFAULTS = {
    "metricType": "conversion",
    "alpha": "0.05",
    "power": "0.8",
    "treatments": "1",
    "primaryMetrics": "1",
    "rho": "0",
}


def plan_form(query: Mapping[str, str], config: AutoPromotionConfig) -> dict[str, Any]:
    """The form's values as entered, and either the plan (rows side by side) or every problem with the input."""
    names = {"metricType", *(f for f, _, _ in PLAN_FIELDS)}
    given = {k: v.strip() for k, v in query.items() if k in names and v.strip()}
    values = {**PLAN_DEFAULTS, **given}
    fields = [{"name": f, "label": label, "hint": hint, "value": values.get(f, "")} for f, label, hint in PLAN_FIELDS]
    out: dict[str, Any] = {"fields": fields, "metric_type": values["metricType"], "errors": [], "result": None}
    if not given:
        return out
    try:
        q = PlanQuery.model_validate(values)
    except ValidationError as exc:
        out["errors"] = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return out
    req = PlanRequest(
        metric_type=q.metricType,
        baseline=q.baseline,
        mde=q.mde,
        sd=q.sd,
        alpha=q.alpha,
        power=q.power,
        treatments=q.treatments,
        primary_metrics=q.primaryMetrics,
        rho=q.rho,
        daily_exposures=q.dailyExposures,
    )
    try:
        data = plan_experiment(req, config)
    except InvalidRequest as exc:
        out["errors"] = [e["message"] for e in exc.details.get("errors", [])] or [exc.message]
        return out
    out["result"] = plan_view(data)
    return out


def plan_view(data: Mapping[str, Any]) -> dict[str, Any]:
    """A plan (plan_experiment's answer) as table rows: the configured method beside a fixed-horizon test."""

    def count(v: Any) -> str:
        return "–" if v is None else f"{v:,}"

    def days(v: Any) -> str:
        return "–" if v is None else f"{v:g}"

    a = data["assumptions"]
    rows = [("Exposures per arm", count(data["exposuresPerArm"]), count(data["fixedHorizonExposuresPerArm"]))]
    if data["days"] is not None:
        rows.append(("Days", days(data["days"]), days(data["fixedHorizonDays"])))
    if data["method"] == "sequential":
        rows.append(("Median stopping point (exposures per arm)", count(data["medianExposuresPerArm"]), "–"))
    return {
        "method": data["method"],
        "rows": rows,
        "alpha_per_comparison": f"{a['alphaPerComparison']:.4g}",
        "n_star": None if a["nStar"] is None else f"{a['nStar']:,.0f}",
        "tuning": a["sequentialTuning"],
        "test": a["test"],
        "notes": a["notes"],
        "json": json.dumps(data, indent=2),
    }
