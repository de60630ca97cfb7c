"""The several-metrics decision rule: a treatment wins when it is significantly better on at least one primary
metric and shown non-inferior on every guardrail; among several, the largest lift on the first primary metric.

Pure: the metrics' definitions and sums in, each metric's analysis, the winner, the candidate to report and every
reason out. ``decide.py`` applies it only when the experiment has ``ab_metrics`` rows; without them the decision is
the single-metric one, unchanged. The safety checks stay ``decide.py``'s.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

from worker.domain.metrics import BUILTIN_METRIC, MetricDefinition, MetricKind, MetricSnapshot, MetricSums
from worker.stats import Comparison, Effect, ExperimentAnalysis, StatsInputError
from worker.stats import reasons as stat_reasons
from worker.stats.metrics import (
    MetricAnalysis,
    MetricComparison,
    NonInferiority,
    analyze_metric,
    assemble_metric,
    builtin_metric_analysis,
)
from worker.stats.metrics_many import KIND_CODES, compare_metrics_many

__all__ = [
    "MetricRuling",
    "analyze_metrics",
    "analyze_metrics_many",
    "builtin_definition",
    "rule",
    "single_metric_analysis",
]

Definitions = Sequence[tuple[MetricDefinition, Mapping[str, MetricSums]]]


def builtin_definition(metric_type: str, rows: Sequence[MetricSnapshot] = ()) -> MetricDefinition:
    """The built-in metric (``metric_type``) as a definition: role primary, direction increase, margin 0, cuped
    auto, unless an ``ab_metrics`` row named ``primary`` changes its role, direction, margin or cuped (never its
    kind)."""
    kind: MetricKind = "proportion" if metric_type == "conversion" else "mean"
    row = next((m.definition for m in rows if m.name == BUILTIN_METRIC), None)
    if row is None:
        return MetricDefinition(BUILTIN_METRIC, kind)
    return MetricDefinition(
        BUILTIN_METRIC,
        kind,
        role=row.role,
        direction=row.direction,
        margin=row.margin,
        description=row.description,
        cuped=row.cuped,
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
                cuped=d.cuped,
            )
        )
    return tuple(out)


def _sums_row(s: MetricSums | None) -> tuple[float, float, float, float, float, float]:
    if s is None:
        return (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    d, dd, sd = s.denominator_sum, s.denominator_sum_sq, s.value_denominator_product_sum
    return (float(s.units), s.value_sum, s.value_sum_sq, d or 0.0, dd or 0.0, sd or 0.0)


def _opt(x: float) -> float | None:
    return x if math.isfinite(x) else None


def analyze_metrics_many(
    items: Sequence[tuple[Hashable, Definitions, str, Sequence[str]]],
    *,
    method: str,
    alpha: float,
    n_star: float,
    correction: str,
) -> dict[Hashable, tuple[MetricAnalysis, ...]]:
    """analyze_metrics for many experiments (key, definitions, control, treatments) in a few numpy calls.

    Same conclusions as analyze_metrics (the statistics agree to round-off; the adjustment and verdicts are the
    same code). Left out, for analyze_metrics to decide: an experiment with sums the scalar path would refuse, a
    ratio metric without its denominator sums, and a metric whose units sent pre-exposure covariates (CUPED, when
    not off: the scalar seam ``stats.metrics.arm_estimates`` is where an adjusted estimator lives)."""
    kinds: list[int] = []
    ctrl: list[tuple[float, ...]] = []
    treat: list[tuple[float, ...]] = []
    signs: list[float] = []
    margins: list[float] = []
    layout: list[tuple[Hashable, Definitions, str, Sequence[str], int]] = []
    for key, definitions, control, treatments in items:
        start = len(kinds)
        usable = True
        for d, sums in definitions:
            if d.cuped != "off" and any(x.has_covariate for x in sums.values()):
                # covariates: an adjusted estimator's business, which only the scalar seam (arm_estimates) knows
                usable = False
            c = _sums_row(sums.get(control) or MetricSums())
            for t in treatments:
                ts = sums.get(t)
                if d.kind == "ratio" and any(
                    x is not None and (x.denominator_sum is None or x.value_denominator_product_sum is None)
                    for x in (sums.get(control), ts)
                ):
                    usable = False
                kinds.append(KIND_CODES.get(d.kind, -1))
                ctrl.append(c)
                treat.append(_sums_row(ts))
                signs.append(1.0 if d.direction == "increase" else -1.0)
                margins.append(d.margin if d.role == "guardrail" else 0.0)
        if usable:
            layout.append((key, definitions, control, treatments, start))
    if not kinds:
        return {}
    many = compare_metrics_many(
        kinds,
        tuple(zip(*ctrl, strict=True)),
        tuple(zip(*treat, strict=True)),
        signs,
        margins,
        method=method,  # type: ignore[arg-type]  # checked by compare_metrics_many
        alpha=alpha,
        n_star=n_star,
    )
    cols = (
        many.n_a.tolist(),
        many.mean_a.tolist(),
        many.n_b.tolist(),
        many.mean_b.tolist(),
        many.estimate.tolist(),
        many.se.tolist(),
        many.ci_low.tolist(),
        many.ci_high.tolist(),
        many.p_value.tolist(),
        many.df.tolist(),
        many.ni_p_value.tolist(),
        many.ni_bound.tolist(),
        many.reason_code.tolist(),
    )
    n_a, mean_a, n_b, mean_b, est, se, lo, hi, p, df, ni_p, ni_b, code = cols
    invalid = many.invalid
    a = float(alpha)
    out: dict[Hashable, tuple[MetricAnalysis, ...]] = {}
    for key, definitions, control, treatments, start in layout:
        stop = start + len(definitions) * len(treatments)
        if invalid[start:stop].any():
            continue
        primaries = max(sum(1 for d, _ in definitions if d.role == "primary"), 1)
        analyses = []
        i = start
        for d, _ in definitions:
            guardrail = d.role == "guardrail"
            arms, nis = [], []
            for t in treatments:
                defined = code[i] == 0
                e = Effect(
                    est[i] if defined else None,
                    se[i] if defined else None,
                    lo[i] if defined else None,
                    hi[i] if defined else None,
                    p[i],
                    method,  # type: ignore[arg-type]
                    True,
                    stat_reasons.CODES[code[i]],
                    _opt(df[i]) if defined else None,
                )
                arms.append((t, n_b[i], mean_b[i], e))
                if guardrail:
                    nis.append(NonInferiority(ni_p[i], ni_b[i] if defined else None, defined and ni_p[i] < a))
                i += 1
            try:
                analyses.append(
                    assemble_metric(
                        d.name,
                        d.kind,
                        d.role,
                        d.direction,
                        d.margin,
                        (control, n_a[i - 1] if treatments else 0, mean_a[i - 1] if treatments else 0.0),
                        arms,
                        nis if d.role == "guardrail" else None,
                        method=method,  # type: ignore[arg-type]
                        alpha=a,
                        correction=correction,  # type: ignore[arg-type]
                        primary_count=primaries,
                    )
                )
            except StatsInputError:
                break
        else:
            out[key] = tuple(analyses)
    return out


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


# Why an undefined relative lift cannot pass a guardrail, after its reason (worker/stats/reasons.py): what the
# numbers are and what would change it.
_UNDEFINED_GUARDRAIL = {
    stat_reasons.CONTROL_RATE_ZERO: (
        "; control has no events, so the treatment's relative lift is undefined and a relative margin cannot be "
        "tested (arms that both have no events pass)"
    ),
    stat_reasons.CONTROL_MEAN_ZERO: (
        "; a relative margin of a control mean of 0 is 0: record the metric so that control's mean is not 0 "
        "(e.g. shifted or as a proportion)"
    ),
    stat_reasons.ZERO_VARIANCE: (
        "; every unit of an arm has the same value, so the relative lift has no standard error: it can be tested once "
        "the values vary"
    ),
}


def guardrail_reason(m: MetricAnalysis, c: MetricComparison) -> str:
    """Why a guardrail holds a treatment back, with its numbers."""
    if c.verdict == "not_shown":
        why = c.effect.reason or "no result"
        more = _UNDEFINED_GUARDRAIL.get(why, "")
        return f"guardrail {m.name}: {c.variant} has no result ({why}) — not shown, so it blocks{more}"
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
    head = f"no treatment beats control on primary metric {m.name} at {min_confidence:g}% confidence"
    oriented = m.oriented(best.lift)
    if best.verdict == "worse" or (oriented is not None and oriented <= 0.0):
        # The "best" of treatments that all went the wrong way is no best: say which way and how sure.
        how = f"significantly worse at {conf:.2f}% confidence" if best.verdict == "worse" else "not better"
        return (
            f"{head} (none moved it the better way, {m.direction}: closest {best.variant} at "
            f"{100.0 * best.lift:+.2f}%, {how})"
        )
    return f"{head} (best: {best.variant} at {conf:.2f}% confidence, {100.0 * best.lift:+.2f}%)"


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


def _verdict_maps(
    primaries: Sequence[MetricAnalysis], guardrails: Sequence[MetricAnalysis], treatments: Sequence[str]
) -> tuple[dict[str, list[MetricAnalysis]], dict[str, list[tuple[MetricAnalysis, MetricComparison]]]]:
    """Per treatment: the primary metrics it is better on, and the guardrails it does not pass (in order)."""
    won: dict[str, list[MetricAnalysis]] = {v: [] for v in treatments}
    for m in primaries:
        for c in m.comparisons:
            if c.verdict == "better" and c.variant in won:
                won[c.variant].append(m)
    blocked_by: dict[str, list[tuple[MetricAnalysis, MetricComparison]]] = {v: [] for v in treatments}
    for m in guardrails:
        for c in m.comparisons:
            if c.verdict != "non_inferior" and c.variant in blocked_by:
                blocked_by[c.variant].append((m, c))
    return won, blocked_by


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
    won, blocked_by = _verdict_maps(primaries, guardrails, treatments)

    def wins(v: str) -> list[MetricAnalysis]:
        return won.get(v, [])

    def blocks(v: str) -> list[tuple[MetricAnalysis, MetricComparison]]:
        return blocked_by.get(v, [])

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
        deciding = wins(chosen)[0]  # the first primary metric it wins, in the metrics' order
        c = deciding.comparison(chosen)
        assert c is not None
        comp = deciding.as_comparison(c)
        return MetricRuling(comp if passing else None, comp, deciding, tuple(reasons))
    top = _best_on(first, treatments)
    return MetricRuling(None, first.as_comparison(top) if top is not None else None, first, tuple(reasons))
