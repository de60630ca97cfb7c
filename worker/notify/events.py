"""Notification events and the facts every channel tells about one: pure, tolerant of missing payload keys."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

EVENTS: tuple[str, ...] = (
    "promotion.promoted",
    "promotion.rolled_back",
    "guard.breached",
    "promotion.failed",
    "promotion.eligible",
    "approval.requested",
    "approval.expired",
    "rollout.advanced",
    "rollout.completed",
    "rollout.rolled_back",
)
# What a notification_configs row subscribes to by default (schema/0001); eligible is opt-in.
DEFAULT_EVENTS: tuple[str, ...] = EVENTS[:4]
# What the environment's default targets hear: the defaults, the rollout's, and the approvals (which happen only
# when approval.require asks for them, and which nobody could act on unheard).
ENV_EVENTS: tuple[str, ...] = (
    *DEFAULT_EVENTS,
    "rollout.advanced",
    "rollout.completed",
    "rollout.rolled_back",
    "approval.requested",
    "approval.expired",
)
# A ramped promotion's rollback is rollout.rolled_back, and reaches every target subscribed to rollbacks:
# notification_configs rows that list promotion.rolled_back hear it too (once).
ALSO_SUBSCRIBED_AS: dict[str, str] = {"rollout.rolled_back": "promotion.rolled_back"}
PRIORITIES: tuple[str, ...] = ("normal", "high", "critical")

_TITLES = {
    "promotion.promoted": "Promoted",
    "promotion.rolled_back": "Rolled back",
    "guard.breached": "Guard breached",
    "promotion.failed": "Promotion failed",
    "promotion.eligible": "Eligible for promotion (dry run)",
    "approval.requested": "Approval requested",
    "approval.expired": "Approval expired",
    "rollout.advanced": "Rollout advanced",
    "rollout.completed": "Rollout complete",
    "rollout.rolled_back": "Rollout rolled back",
}


def priority_rank(priority: str) -> int:
    """0 for normal, 1 for high, 2 for critical; an unknown value counts as normal."""
    return PRIORITIES.index(priority) if priority in PRIORITIES else 0


def normalize_priority(value: object) -> str:
    return value if isinstance(value, str) and value in PRIORITIES else "normal"


@dataclass(frozen=True, slots=True)
class SafetyCheckFact:
    name: str
    passed: bool
    message: str
    severity: str

    @property
    def verdict(self) -> str:
        """pass, warn (failed but only a warning) or FAIL."""
        if self.passed:
            return "pass"
        return "warn" if self.severity in ("warning", "info") else "FAIL"


@dataclass(frozen=True, slots=True)
class VariantFact:
    name: str
    is_control: bool
    exposures: float | None
    conversions: float | None
    rate: float | None
    errors: float | None
    error_rate: float | None
    p95_latency_ms: float | None


@dataclass(frozen=True, slots=True)
class GuardrailFact:
    """One guardrail's verdict for the notified variant (lift, bound and margin in percent)."""

    name: str
    variant: str
    verdict: str
    direction: str
    margin: float | None
    lift: float | None
    bound: float | None

    @property
    def passed(self) -> bool:
        return self.verdict == "non_inferior"

    @property
    def line(self) -> str:
        """``revenue_per_user: non_inferior — variant-b -0.50% (lower bound -1.20%, margin -2.00%)``"""
        side = "upper" if self.direction == "decrease" else "lower"
        numbers = f"{self.variant} {format_percent(self.lift, signed=True)}"
        if self.bound is not None:
            numbers += f" ({side} bound {format_percent(self.bound, signed=True)}"
            if self.margin is not None:
                limit = 100.0 * (self.margin if self.direction == "decrease" else -self.margin)
                numbers += f", margin {format_percent(limit, signed=True)}"
            numbers += ")"
        verdict = self.verdict.replace("_", "-") if self.passed else self.verdict.replace("_", " ").upper()
        return f"{self.name}: {verdict} — {numbers}"


@dataclass(frozen=True, slots=True)
class EventFacts:
    """What a message says about one event, read from the engine's payload."""

    event: str
    experiment: str
    priority: str
    promotion_id: str | None
    occurred_at: str | None
    actor: str
    variant: str | None
    control_variant: str | None
    confidence: float | None
    improvement: float | None
    method: str | None
    reason: str | None
    dry_run: bool
    safety_checks: tuple[SafetyCheckFact, ...]
    variants: tuple[VariantFact, ...]
    dashboard_url: str | None
    approval_id: str | None = None
    expires_at: str | None = None
    step: int | None = None
    guardrails: tuple[GuardrailFact, ...] = ()
    rollout: RolloutFact | None = None

    @classmethod
    def from_payload(cls, event: str, payload: Mapping[str, Any], *, public_url: str | None) -> EventFacts:
        """Facts from a payload; missing or malformed keys become None or empty rather than errors."""
        experiment = _text(payload.get("experimentName")) or "(unknown experiment)"
        checks = tuple(
            SafetyCheckFact(
                name=_text(c.get("name")) or "check",
                passed=bool(c.get("passed")),
                message=_text(c.get("message")) or "",
                severity=_text(c.get("severity")) or "error",
            )
            for c in _dicts(payload.get("safetyChecks"))
        )
        variants = tuple(
            VariantFact(
                name=_text(v.get("name")) or "?",
                is_control=bool(v.get("isControl")),
                exposures=_number(v.get("exposures")),
                conversions=_number(v.get("conversions")),
                rate=_number(v.get("rate")),
                errors=_number(v.get("errors")),
                error_rate=_number(v.get("errorRate")),
                p95_latency_ms=_number(v.get("p95LatencyMs")),
            )
            for v in _dicts(payload.get("variants"))
        )
        guardrails = tuple(
            GuardrailFact(
                name=_text(g.get("name")) or "guardrail",
                variant=_text(g.get("variant")) or "?",
                verdict=_text(g.get("verdict")) or "not_shown",
                direction=_text(g.get("direction")) or "increase",
                margin=_number(g.get("margin")),
                lift=_number(g.get("lift")),
                bound=_number(g.get("bound")),
            )
            for g in _dicts(payload.get("guardrails"))
        )
        dashboard = None
        if public_url and _text(payload.get("experimentName")):
            dashboard = f"{public_url.rstrip('/')}/experiments/{quote(experiment, safe='')}"
        return cls(
            event=event,
            experiment=experiment,
            priority=normalize_priority(payload.get("priority")),
            promotion_id=_text(payload.get("promotionId")),
            occurred_at=_text(payload.get("occurredAt")),
            actor=_text(payload.get("actor")) or "autopromote",
            variant=_text(payload.get("variant")),
            control_variant=_text(payload.get("controlVariant")),
            confidence=_number(payload.get("confidence")),
            improvement=_number(payload.get("improvement")),
            method=_text(payload.get("method")),
            reason=_text(payload.get("reason")),
            dry_run=bool(payload.get("dryRun")),
            safety_checks=checks,
            variants=variants,
            dashboard_url=dashboard,
            approval_id=_text(payload.get("approvalId")),
            expires_at=_text(payload.get("expiresAt")),
            step=_whole(payload.get("step")),
            guardrails=guardrails,
            rollout=RolloutFact.from_payload(payload.get("rollout")),
        )

    @property
    def title(self) -> str:
        return _TITLES.get(self.event, self.event)

    @property
    def headline(self) -> str:
        """One sentence: what happened to which variant of which experiment."""
        variant = self.variant or "the variant"
        control = f" over {self.control_variant}" if self.control_variant else ""
        match self.event:
            case "promotion.promoted":
                return f"{self.experiment}: promoted {variant}{control}"
            case "promotion.rolled_back":
                return f"{self.experiment}: rolled back the promotion of {variant}"
            case "guard.breached":
                return f"{self.experiment}: post-promotion guard breached for {variant}"
            case "promotion.failed":
                return f"{self.experiment}: promoting {variant} failed"
            case "promotion.eligible":
                return f"{self.experiment}: {variant} is eligible for promotion{control} (dry run, nothing changed)"
            case "approval.requested":
                what = (
                    f"step {self.step} of the rollout of {variant}" if self.step is not None else f"promoting {variant}"
                )
                return f"{self.experiment}: {what}{control} waits for an approval"
            case "approval.expired":
                what = (
                    f"step {self.step} of the rollout of {variant}" if self.step is not None else f"promoting {variant}"
                )
                return f"{self.experiment}: the approval of {what} expired unanswered; declined"
            case "rollout.advanced":
                share = self.rollout.share_text if self.rollout else "its next step"
                return f"{self.experiment}: rollout of {variant} advanced to {share}"
            case "rollout.completed":
                return f"{self.experiment}: rollout of {variant} complete at 100%"
            case "rollout.rolled_back":
                where = f" at step {self.rollout.step} ({self.rollout.share_text})" if self.rollout else ""
                return f"{self.experiment}: rollout of {variant} rolled back{where}"
        return f"{self.experiment}: {self.event}"

    @property
    def variant_label(self) -> str:
        return (
            "Promoted variant"
            if self.event in ("promotion.rolled_back", "guard.breached", "promotion.failed")
            else ("Winning variant")
        )

    def fact_rows(self) -> list[tuple[str, str]]:
        """The labelled facts every channel shows, in order."""
        variant = self.variant or "n/a"
        if self.control_variant:
            variant = f"{variant} (control: {self.control_variant})"
        rows = [
            ("Experiment", self.experiment),
            (self.variant_label, variant),
            ("Confidence", format_percent(self.confidence)),
            ("Improvement", format_percent(self.improvement, signed=True)),
            ("Method", self.method or "n/a"),
            ("Priority", self.priority),
            ("Acted by", self.actor),
        ]
        if self.occurred_at:
            rows.append(("When", self.occurred_at))
        if self.promotion_id:
            rows.append(("Promotion", self.promotion_id))
        if self.approval_id:
            rows.append(("Approval", self.approval_id))
        if self.expires_at and self.event == "approval.requested":
            rows.append(("Expires", self.expires_at))
        if self.rollout is not None:
            rows.append(("Rollout", self.rollout.summary))
            for g in self.rollout.guard:
                rows.append((f"Guard: {g}", self.rollout.guard[g]))
        return rows

    def variant_table(self) -> list[list[str]]:
        """Per-variant statistics as rows of cells, header first (empty when the payload has none)."""
        if not self.variants:
            return []
        table = [["variant", "exposures", "conversions", "rate", "errors", "error rate", "p95 ms"]]
        for v in self.variants:
            table.append(
                [
                    f"{v.name} (control)" if v.is_control else v.name,
                    format_count(v.exposures),
                    format_count(v.conversions),
                    format_ratio(v.rate),
                    format_count(v.errors),
                    format_ratio(v.error_rate),
                    "n/a" if v.p95_latency_ms is None else f"{v.p95_latency_ms:.1f}",
                ]
            )
        return table


@dataclass(frozen=True, slots=True)
class RolloutFact:
    """Where a ramp is, from a payload's ``rollout``: its step, the shares, and the verdicts of the step's guard."""

    state: str
    step: int
    steps: tuple[float, ...]
    share: float | None
    guard: dict[str, str]

    @classmethod
    def from_payload(cls, value: object) -> RolloutFact | None:
        if not isinstance(value, Mapping):
            return None
        steps = tuple(x for x in (_number(s) for s in value.get("steps") or ()) if x is not None)
        step = _number(value.get("step"))
        guard: dict[str, str] = {}
        for g in _dicts(value.get("guard")):
            lift = _number(g.get("lift"))
            shown = "" if lift is None else f" ({lift:+.2f})"
            guard[_text(g.get("metric")) or "?"] = f"{_text(g.get('verdict')) or '?'}{shown}"
        return cls(
            state=_text(value.get("state")) or "?",
            step=int(step) if step is not None else 0,
            steps=steps,
            share=_number(value.get("treatmentShare")),
            guard=guard,
        )

    @property
    def share_text(self) -> str:
        return "n/a" if self.share is None else f"{self.share:g}%"

    @property
    def summary(self) -> str:
        path = " -> ".join(f"{s:g}%" for s in self.steps)
        return f"{self.state}, step {self.step} of {len(self.steps)} ({self.share_text}); steps {path}"


def format_percent(value: float | None, *, signed: bool = False) -> str:
    """A value already in percent (97.3 -> '97.30%')."""
    if value is None:
        return "n/a"
    return f"{value:+.2f}%" if signed else f"{value:.2f}%"


def format_ratio(value: float | None) -> str:
    """A fraction as percent (0.0123 -> '1.23%')."""
    return "n/a" if value is None else f"{value * 100:.2f}%"


def format_count(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.2f}"


def text_table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned monospace columns."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _whole(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dicts(value: object) -> list[Mapping[str, Any]]:
    if not isinstance(value, list | tuple):
        return []
    return [item for item in value if isinstance(item, Mapping)]
