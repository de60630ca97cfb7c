"""The several-metrics decision rule: a treatment wins when it is significantly better on at least one primary
metric and shown non-inferior on every guardrail; among several, the largest lift on the first primary metric.

Pure: the metrics' definitions and sums in, each metric's analysis, the winner, the candidate to report and every
reason out. ``decide.py`` applies it only when the experiment has ``ab_metrics`` rows; without them the decision is
the single-metric one, unchanged. The safety checks stay ``decide.py``'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from worker.domain.metrics import BUILTIN_METRIC, MetricDefinition, MetricKind, MetricSnapshot, MetricSums
from worker.stats import Comparison, ExperimentAnalysis
from worker.stats.metrics import MetricAnalysis, MetricComparison, analyze_metric, builtin_metric_analysis

__all__ = ["MetricRuling", "analyze_metrics", "builtin_definition", "rule", "single_metric_analysis"]


def builtin_definition(metric_type: str, rows: Sequence[MetricSnapshot] = ()) -> MetricDefinition:
    """The built-in metric (``metric_type``) as a definition: role primary, direction increase, margin 0, unless
    an ``ab_metrics`` row named ``primary`` changes its role, direction or margin (never its kind)."""
    kind: MetricKind = "proportion" if metric_type == "conversion" else "mean"
    row = next((m.definition for m in rows if m.name == BUILTIN_METRIC), None)
    if row is None:
        return MetricDefinition(BUILTIN_METRIC, kind)
    return MetricDefinition(
        BUILTIN_METRIC, kind, role=row.role, direction=row.direction, margin=row.margin, description=row.description
    )


def single_metric_analysis(analysis: ExperimentAnalysis, units: Mapping[str, int]) -> MetricAnalysis:
    """The built-in metric's entry of an experiment without ``ab_metrics`` rows, from its existing analysis (no
    new statistics: the numbers are those the decision used)."""
    return builtin_metric_analysis(
        analysis,
        BUILTIN_METRIC,
        "proportion" if analysis.metric_type == "conversion" else "mean",
        units,
    )


def analyze_metrics(
    definitions: Sequence[tuple[MetricDefinition, Mapping[str, MetricSums]]],
    control: str,
    treatments: Sequence[str],
    *,
    method: str,
    alpha: float,
    n_star: float,
    correction: str,
) -> tuple[MetricAnalysis, ...]:
    """Each metric analysed for every treatment, alpha split across the primary metrics (Bonferroni).

    A variant with no sums for a metric counts as no data (its comparison is ``not_shown``)."""
    primaries = sum(1 for d, _ in definitions if d.role == "primary")
    out = []
    for d, sums in definitions:
        out.append(
            analyze_metric(
                d.name,
                d.kind,
                (control, sums.get(control) or MetricSums()),
                [(t, sums.get(t)) for t in treatments],
                role=d.role,
                direction=d.direction,
                margin=d.margin,
                method=method,  # type: ignore[arg-type]  # checked by analyze_metric
                alpha=alpha,
                n_star=n_star,
                correction=correction,  # type: ignore[arg-type]
                primary_count=max(primaries, 1),
            )
        )
    return tuple(out)


@dataclass(frozen=True, slots=True)
class MetricRuling:
    """What the rule concluded: the winner (None when no treatment qualifies), the candidate to report (the
    winner, else a primary winner blocked by a guardrail, else the best on the first primary metric), each on
    its deciding primary metric, and the reasons that hold the winner back."""

    winner: Comparison | None
    candidate: Comparison | None
    deciding: MetricAnalysis | None  # the primary metric the candidate's numbers are from
    reasons: tuple[str, ...]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100.0 * x:+.1f}%"


def guardrail_reason(m: MetricAnalysis, c: MetricComparison) -> str:
    """Why a guardrail holds a treatment back, with its numbers."""
    if c.verdict == "not_shown":
        why = c.effect.reason or "no result"
        return f"guardrail {m.name}: {c.variant} has no result ({why}) — not shown, so it blocks"
    ni = c.non_inferiority
    bound = ni.bound if ni is not None else None
    side = "lower" if m.direction == "increase" else "upper"
    worse = ", significantly worse" if c.verdict == "worse" else ""
    if m.margin > 0.0:
        limit = -m.margin if m.direction == "increase" else m.margin
        tail = f"not shown within the {100.0 * limit:+.1f}% margin"
    else:
        tail = "not shown to be no worse than control"
    return f"guardrail {m.name}: {c.variant} is {_pct(c.lift)} ({side} bound {_pct(bound)}){worse} — {tail}"


def _primary_reason(m: MetricAnalysis, best: MetricComparison | None, min_confidence: float) -> str:
    if best is None or best.lift is None:
        why = best.effect.reason if best is not None else None
        return f"no winner on primary metric {m.name}: {why or 'lift undefined'}"
    conf = 100.0 * (1.0 - best.adjusted_p)
    return (
        f"no treatment beats control on primary metric {m.name} at {min_confidence:g}% confidence "
        f"(best: {best.variant} at {conf:.2f}% confidence, {100.0 * best.lift:+.2f}%)"
    )


def _best_on(m: MetricAnalysis, variants: Sequence[str]) -> MetricComparison | None:
    """The comparison with the largest lift in the metric's good direction (undefined last, ties to order)."""
    best: MetricComparison | None = None
    best_key = float("-inf")
    for v in variants:
        c = m.comparison(v)
        if c is None:
            continue
        o = m.oriented(c.lift)
        key = o if o is not None else float("-inf")
        if best is None or key > best_key:
            best, best_key = c, key
    return best


def rule(metrics: Sequence[MetricAnalysis], treatments: Sequence[str], min_confidence: float) -> MetricRuling:
    """Apply the decision rule to analysed metrics (see the module doc)."""
    primaries = [m for m in metrics if m.role == "primary"]
    guardrails = [m for m in metrics if m.role == "guardrail"]
    if not primaries:
        return MetricRuling(
            None,
            None,
            None,
            (f"no primary metric: the built-in '{BUILTIN_METRIC}' metric is not primary and no ab_metrics row is",),
        )
    first = primaries[0]

    def wins(v: str) -> list[MetricAnalysis]:
        return [m for m in primaries if (c := m.comparison(v)) is not None and c.verdict == "better"]

    def blocks(v: str) -> list[tuple[MetricAnalysis, MetricComparison]]:
        out = []
        for m in guardrails:
            c = m.comparison(v)
            if c is not None and c.verdict != "non_inferior":
                out.append((m, c))
        return out

    winners = [v for v in treatments if wins(v)]
    passing = [v for v in winners if not blocks(v)]
    reasons: list[str] = []
    chosen: str | None = None
    if passing:
        top = _best_on(first, passing)
        chosen = top.variant if top is not None else passing[0]
    elif winners:
        top = _best_on(first, winners)
        blocked = top.variant if top is not None else winners[0]
        for v in winners:
            reasons.extend(guardrail_reason(m, c) for m, c in blocks(v))
        chosen = blocked
    else:
        for m in primaries:
            reasons.append(_primary_reason(m, _best_on(m, treatments), min_confidence))
        top = _best_on(first, treatments)
        if top is not None:
            reasons.extend(guardrail_reason(m, c) for m, c in blocks(top.variant))
    if chosen is not None:
        deciding = next(m for m in primaries if m in wins(chosen))
        c = deciding.comparison(chosen)
        assert c is not None
        comp = deciding.as_comparison(c)
        return MetricRuling(comp if passing else None, comp, deciding, tuple(reasons))
    top = _best_on(first, treatments)
    return MetricRuling(None, first.as_comparison(top) if top is not None else None, first, tuple(reasons))
