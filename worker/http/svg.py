"""Server-side SVG charts for the dashboard: lift with its confidence sequence over time, promotions per day,
and the small interval bars of the overview.

Pure functions from plain data to SVG text; every label is escaped here, so callers may pass database values.
Colours are presentation attributes (the page's CSP forbids inline style), and nothing relies on colour alone:
the interval is a shaded band *and* two thin boundary lines, rollbacks are hatched, eligible evaluations are
diamonds, and every chart carries a text summary for screen readers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from html import escape

INK = "#1f2933"
MUTED = "#52606d"
GRID = "#d9e2ec"
LINE = "#1d4ed8"
BAND = "#bfdbfe"
BAND_EDGE = "#3b82f6"
GOOD = "#15803d"
BAR = "#334e68"
ROLLBACK = "#b91c1c"


@dataclass(frozen=True, slots=True)
class LiftPoint:
    """One kept evaluation of one treatment: relative lift and its interval as fractions (0.12 = +12%)."""

    at: datetime
    lift: float | None
    ci_low: float | None
    ci_high: float | None
    eligible: bool = False


@dataclass(frozen=True, slots=True)
class DayCount:
    day: date
    promotions: int
    rollbacks: int


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _num(x: float) -> str:
    """Coordinates with two decimals: short, and stable in tests."""
    return f"{x:.2f}".rstrip("0").rstrip(".") if x != 0 else "0"


def pct(x: float | None, digits: int = 1, *, signed: bool = True) -> str:
    """A fraction as a percentage (``+12.3%``); an en dash when undefined."""
    if not _finite(x):
        return "–"
    assert x is not None
    return f"{100 * x:+.{digits}f}%" if signed else f"{100 * x:.{digits}f}%"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 2.5 or 5 times a power of ten apart)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks: list[float] = []
    value = first
    while value <= hi + step * 1e-9 and len(ticks) < 50:
        ticks.append(round(value, 12) + 0.0)
        value += step
    return ticks


def _time_ticks(t0: datetime, t1: datetime, count: int = 5) -> list[tuple[datetime, str]]:
    span = (t1 - t0).total_seconds()
    if span <= 0:
        return [(t0, t0.strftime("%H:%M:%S"))]
    fmt = "%H:%M:%S" if span < 3 * 3600 else "%d %b %H:%M" if span < 3 * 86400 else "%d %b"
    moments = (t0 + timedelta(seconds=span * i / (count - 1)) for i in range(count))
    return [(t, t.strftime(fmt)) for t in moments]


def _tick_pct(x: float) -> str:
    if abs(x) < 1e-12:
        return "0%"
    return pct(x, 0 if abs(x) >= 0.1 or float(round(100 * x, 6)).is_integer() else 1)


def _lift_domain(points: Sequence[LiftPoint]) -> tuple[float, float, bool]:
    """The y range: every lift, the latest interval and zero, plus the rest of the intervals within reason.

    Early confidence-sequence intervals can be hundreds of percent wide; drawing them to scale would flatten
    the part people care about, so they are clipped (and the chart says so).
    """
    lifts = [p.lift for p in points if p.lift is not None and math.isfinite(p.lift)]
    ends = [x for p in points for x in (p.ci_low, p.ci_high) if x is not None and math.isfinite(x)]
    last = next((p for p in reversed(points) if _finite(p.lift)), None)
    core = [0.0, *lifts]
    if last is not None:
        core += [x for x in (last.ci_low, last.ci_high) if x is not None and math.isfinite(x)]
    lo, hi = min(core), max(core)
    spread = max(hi - lo, 0.02)
    limit_lo, limit_hi = lo - 1.5 * spread, hi + 1.5 * spread
    clipped = False
    for p in points:
        if not _finite(p.lift):
            continue
        for x in (p.ci_low, p.ci_high):
            if x is None or not math.isfinite(x) or x < limit_lo or x > limit_hi:
                clipped = True
    for x in ends:
        lo, hi = min(lo, max(x, limit_lo)), max(hi, min(x, limit_hi))
    pad = (hi - lo) * 0.06
    return lo - pad, hi + pad, clipped


def lift_chart(
    points: Sequence[LiftPoint],
    *,
    chart_id: str,
    title: str,
    level: float = 95.0,
    compact: bool = False,
    marks: Sequence[tuple[datetime, str]] = (),
) -> str:
    """Lift of one treatment over time with its confidence sequence, as an inline, responsive SVG.

    ``compact`` draws for narrow screens: fewer, larger labels on a smaller canvas, so that the text stays
    readable once the browser scales the drawing down to the width of a phone. ``marks`` are labelled moments
    (a promotion, a rollback) drawn as vertical lines when they fall after the first evaluation.
    """
    kept = sorted((p for p in points if _finite(p.lift)), key=lambda p: p.at)
    cid = _e(chart_id)
    if not kept:
        return (
            f'<p class="chart-empty" id="{cid}">No evaluations with a defined lift yet: the chart appears '
            "after the first evaluation with exposures in both control and this variant.</p>"
        )
    width, height, font, n_xticks = (360, 250, 12, 3) if compact else (960, 320, 13, 6)
    left, right, top, bottom = (50, 14, 14, 42) if compact else (64, 20, 18, 44)
    pw, ph = width - left - right, height - top - bottom
    y0, y1, clipped = _lift_domain(kept)
    t0, t1 = kept[0].at, kept[-1].at
    shown_marks = sorted((m for m in marks if m[0] >= t0), key=lambda m: m[0])
    if shown_marks:
        t1 = max(t1, shown_marks[-1][0])
    if t1 <= t0:
        t0, t1 = t0 - timedelta(minutes=1), t1 + timedelta(minutes=1)
    span = (t1 - t0).total_seconds()

    def x(t: datetime) -> float:
        return left + pw * (t - t0).total_seconds() / span

    def y(v: float | None, edge: float) -> float:
        if v is None or not math.isfinite(v):
            v = edge
        v = min(max(v, y0), y1)
        return top + ph * (1 - (v - y0) / (y1 - y0))

    last = kept[-1]
    summary = (
        f"Latest lift {pct(last.lift)} with interval {pct(last.ci_low)} to {pct(last.ci_high)}, "
        f"{len(kept)} evaluation(s) from {kept[0].at:%Y-%m-%d %H:%M} to {last.at:%Y-%m-%d %H:%M} UTC."
    )
    summary += "".join(f" {label} at {when:%Y-%m-%d %H:%M} UTC." for when, label in shown_marks)
    out = [
        f'<svg class="chart" id="{cid}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="{cid}-title {cid}-desc" xmlns="http://www.w3.org/2000/svg" '
        f'font-family="system-ui, sans-serif" font-size="{font}">',
        f'<title id="{cid}-title">{_e(title)}</title>',
        f'<desc id="{cid}-desc">{_e(summary)}</desc>',
        f'<clipPath id="{cid}-clip"><rect x="{left}" y="{top}" width="{pw}" height="{ph}"/></clipPath>',
    ]
    for tick in nice_ticks(y0, y1, 5):
        ty = y(tick, tick)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{_num(ty)}" y2="{_num(ty)}" stroke="{GRID}"/>')
        out.append(
            f'<text x="{left - 6}" y="{_num(ty + 4)}" text-anchor="end" fill="{MUTED}">{_e(_tick_pct(tick))}</text>'
        )
    for t, label in _time_ticks(t0, t1, n_xticks):
        tx = x(t)
        anchor = "start" if tx <= left + 1 else "end" if tx >= left + pw - 1 else "middle"
        out.append(f'<line x1="{_num(tx)}" x2="{_num(tx)}" y1="{top + ph}" y2="{top + ph + 4}" stroke="{MUTED}"/>')
        out.append(f'<text x="{_num(tx)}" y="{top + ph + 18}" text-anchor="{anchor}" fill="{MUTED}">{_e(label)}</text>')
    out.append(f'<text x="{left + pw}" y="{height - 4}" text-anchor="end" fill="{MUTED}">time (UTC)</text>')
    upper = [(x(p.at), y(p.ci_high, y1)) for p in kept]
    lower = [(x(p.at), y(p.ci_low, y0)) for p in kept]
    if len(kept) == 1:  # a lone evaluation: an error bar rather than a zero-width band
        (px, hy), (_, ly) = upper[0], lower[0]
        out.append(
            f'<g clip-path="url(#{cid}-clip)"><line x1="{_num(px)}" x2="{_num(px)}" y1="{_num(hy)}" '
            f'y2="{_num(ly)}" stroke="{BAND_EDGE}" stroke-width="8" stroke-opacity="0.35"/></g>'
        )
    else:
        ring = " ".join(f"{_num(a)},{_num(b)}" for a, b in [*upper, *reversed(lower)])
        out.append(
            f'<g clip-path="url(#{cid}-clip)" class="band">'
            f'<polygon points="{ring}" fill="{BAND}" fill-opacity="0.7"/>'
            f'<polyline points="{_pts(upper)}" fill="none" stroke="{BAND_EDGE}" stroke-width="1"/>'
            f'<polyline points="{_pts(lower)}" fill="none" stroke="{BAND_EDGE}" stroke-width="1"/></g>'
        )
    zy = y(0.0, 0.0)
    out.append(
        f'<line x1="{left}" x2="{left + pw}" y1="{_num(zy)}" y2="{_num(zy)}" stroke="{INK}" stroke-dasharray="6 4"/>'
    )
    out.append(f'<text x="{left + 4}" y="{_num(zy - 4)}" fill="{INK}">no difference</text>')
    line = [(x(p.at), y(p.lift, 0.0)) for p in kept]
    out.append(f'<polyline class="lift-line" points="{_pts(line)}" fill="none" stroke="{LINE}" stroke-width="2.5"/>')
    if len(kept) == 1:
        out.append(f'<circle cx="{_num(line[0][0])}" cy="{_num(line[0][1])}" r="4" fill="{LINE}"/>')
    for p, (px, py) in zip(kept, line, strict=True):
        if p.eligible:
            out.append(f'<path d="M{_num(px)} {_num(py - 6)} l6 6 l-6 6 l-6 -6 z" fill="{GOOD}" stroke="#fff"/>')
    for i, (when, label) in enumerate(shown_marks):
        mx = x(when)
        anchor = "end" if mx > left + pw / 2 else "start"
        dx = -4 if anchor == "end" else 4
        out.append(
            f'<line x1="{_num(mx)}" x2="{_num(mx)}" y1="{top}" y2="{top + ph}" stroke="{INK}" stroke-dasharray="2 3"/>'
        )
        out.append(
            f'<text x="{_num(mx + dx)}" y="{top + 14 + 15 * (i % 3)}" text-anchor="{anchor}" '
            f'fill="{INK}" font-weight="600">{_e(label)}</text>'
        )
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="{GRID}"/>')
    out.append("</svg>")
    legend = [
        '<span class="key"><svg width="22" height="10" aria-hidden="true"><line x1="0" x2="22" y1="5" y2="5" '
        f'stroke="{LINE}" stroke-width="2.5"/></svg> lift</span>',
        f'<span class="key"><svg width="22" height="10" aria-hidden="true"><rect width="22" height="10" fill="{BAND}" '
        f'stroke="{BAND_EDGE}"/></svg> {_e(f"{level:g}")}% confidence sequence</span>',
        '<span class="key"><svg width="22" height="10" aria-hidden="true"><line x1="0" x2="22" y1="5" y2="5" '
        f'stroke="{INK}" stroke-dasharray="6 4"/></svg> no difference (0%)</span>',
    ]
    if any(p.eligible for p in kept):
        legend.append(
            f'<span class="key"><svg width="12" height="12" aria-hidden="true"><path d="M6 0 l6 6 l-6 6 '
            f'l-6 -6 z" fill="{GOOD}"/></svg> eligible at that evaluation</span>'
        )
    if shown_marks:
        legend.append(
            '<span class="key"><svg width="22" height="10" aria-hidden="true"><line x1="11" x2="11" y1="0" '
            f'y2="10" stroke="{INK}" stroke-dasharray="2 3"/></svg> promotion / rollback</span>'
        )
    if clipped:
        legend.append('<span class="key note">Wide early intervals are cut at the chart edge.</span>')
    return "".join(out) + f'<p class="legend">{"".join(legend)}</p>'


def _pts(points: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{_num(a)},{_num(b)}" for a, b in points)


def promotions_chart(days: Sequence[DayCount], *, chart_id: str, compact: bool = False) -> str:
    """Promotions (solid) and rollbacks (hatched) per day as grouped bars (``compact``: for narrow screens)."""
    cid = _e(chart_id)
    if not days:
        return f'<p class="chart-empty" id="{cid}">No days to show.</p>'
    width, height, font, n_labels = (360, 200, 12, 4) if compact else (960, 240, 13, 10)
    left, right, top, bottom = 34, 10, 16, 40
    pw, ph = width - left - right, height - top - bottom
    peak = max(1, *(max(d.promotions, d.rollbacks) for d in days))
    ticks = [t for t in nice_ticks(0, peak, min(4, peak)) if float(t).is_integer()]
    ymax = max(peak, *(ticks or [1]))
    slot = pw / len(days)
    bar = max(1.0, min(14.0, slot * 0.36))
    total_p = sum(d.promotions for d in days)
    total_r = sum(d.rollbacks for d in days)
    summary = (
        f"{total_p} promotion(s) and {total_r} rollback(s) between {days[0].day.isoformat()} and "
        f"{days[-1].day.isoformat()}."
    )
    busiest = max(days, key=lambda d: (d.promotions, d.day))
    if busiest.promotions:
        summary += f" Busiest day {busiest.day.isoformat()} with {busiest.promotions} promotion(s)."

    def y(v: float) -> float:
        return top + ph * (1 - v / ymax)

    out = [
        f'<svg class="chart" id="{cid}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="{cid}-title {cid}-desc" xmlns="http://www.w3.org/2000/svg" '
        f'font-family="system-ui, sans-serif" font-size="{font}">',
        f'<title id="{cid}-title">Promotions and rollbacks per day</title>',
        f'<desc id="{cid}-desc">{_e(summary)}</desc>',
        f'<defs><pattern id="{cid}-hatch" width="5" height="5" patternUnits="userSpaceOnUse" '
        f'patternTransform="rotate(45)"><rect width="5" height="5" fill="#fff"/>'
        f'<line x1="0" y1="0" x2="0" y2="5" stroke="{ROLLBACK}" stroke-width="3"/></pattern></defs>',
    ]
    for t in ticks:
        ty = y(t)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{_num(ty)}" y2="{_num(ty)}" stroke="{GRID}"/>')
        out.append(f'<text x="{left - 6}" y="{_num(ty + 4)}" text-anchor="end" fill="{MUTED}">{int(t)}</text>')
    every = max(1, math.ceil(len(days) / n_labels))
    for i, d in enumerate(days):
        cx = left + slot * (i + 0.5)
        label = f"{d.day.isoformat()}: {d.promotions} promotion(s), {d.rollbacks} rollback(s)"
        out.append(f"<g><title>{_e(label)}</title>")
        if d.promotions:
            out.append(
                f'<rect x="{_num(cx - bar)}" y="{_num(y(d.promotions))}" width="{_num(bar)}" '
                f'height="{_num(ph - (y(d.promotions) - top))}" fill="{BAR}"/>'
            )
        if d.rollbacks:
            out.append(
                f'<rect x="{_num(cx)}" y="{_num(y(d.rollbacks))}" width="{_num(bar)}" '
                f'height="{_num(ph - (y(d.rollbacks) - top))}" fill="url(#{cid}-hatch)" stroke="{ROLLBACK}"/>'
            )
        out.append("</g>")
        if (len(days) - 1 - i) % every == 0:
            # The newest day is always labelled; it sits at the right edge, so it ends there instead of centring.
            tx, anchor = (left + pw, "end") if i == len(days) - 1 else (cx, "middle")
            out.append(
                f'<text x="{_num(tx)}" y="{top + ph + 16}" text-anchor="{anchor}" fill="{MUTED}">'
                f"{_e(d.day.strftime('%d %b'))}</text>"
            )
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="{MUTED}"/>')
    out.append("</svg>")
    legend = (
        '<p class="legend"><span class="key"><svg width="14" height="10" aria-hidden="true">'
        f'<rect width="14" height="10" fill="{BAR}"/></svg> promotions</span>'
        f'<span class="key"><svg width="14" height="10" aria-hidden="true"><defs><pattern id="{cid}-hatch-key" '
        'width="5" height="5" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        f'<rect width="5" height="5" fill="#fff"/><line x1="0" y1="0" x2="0" y2="5" stroke="{ROLLBACK}" '
        f'stroke-width="3"/></pattern></defs><rect width="14" height="10" fill="url(#{cid}-hatch-key)" '
        f'stroke="{ROLLBACK}"/></svg> rollbacks (hatched)</span></p>'
    )
    return "".join(out) + legend


def interval_bar(
    lift: float | None,
    ci_low: float | None,
    ci_high: float | None,
    *,
    lo: float,
    hi: float,
    width: int = 140,
    height: int = 18,
    margin: float | None = None,
) -> str:
    """A small decorative interval (the numbers sit next to it in text) on the shared scale [lo, hi].

    ``margin``: a guardrail's non-inferiority limit (a relative lift, e.g. -0.02), drawn as a solid red tick
    distinct from the dashed zero line; the text beside the bar states it too."""
    if not _finite(lift) or hi <= lo:
        return ""
    assert lift is not None

    def x(v: float | None, edge: float) -> float:
        if v is None or not math.isfinite(v):
            v = edge
        return 2 + (width - 4) * (min(max(v, lo), hi) - lo) / (hi - lo)

    mid = height / 2
    zx = x(0.0, 0.0)
    a, b, c = x(ci_low, lo), x(ci_high, hi), x(lift, 0.0)
    return (
        f'<svg class="ibar" width="{width}" height="{height}" viewBox="0 0 {width} {height}" aria-hidden="true" '
        f'focusable="false" xmlns="http://www.w3.org/2000/svg">'
        f'<line x1="{_num(zx)}" x2="{_num(zx)}" y1="1" y2="{height - 1}" stroke="{MUTED}" stroke-dasharray="3 2"/>'
        f'<line x1="{_num(a)}" x2="{_num(b)}" y1="{_num(mid)}" y2="{_num(mid)}" stroke="{BAND_EDGE}" '
        f'stroke-width="4" stroke-opacity="0.55"/>'
        f'<line x1="{_num(a)}" x2="{_num(a)}" y1="{_num(mid - 4)}" y2="{_num(mid + 4)}" stroke="{BAND_EDGE}"/>'
        f'<line x1="{_num(b)}" x2="{_num(b)}" y1="{_num(mid - 4)}" y2="{_num(mid + 4)}" stroke="{BAND_EDGE}"/>'
        + (
            f'<line class="margin" x1="{_num(x(margin, 0.0))}" x2="{_num(x(margin, 0.0))}" y1="0" y2="{height}" '
            f'stroke="{ROLLBACK}" stroke-width="2"/>'
            if margin is not None and math.isfinite(margin)
            else ""
        )
        + f'<circle cx="{_num(c)}" cy="{_num(mid)}" r="3.5" fill="{LINE}"/></svg>'
    )


def interval_scale(intervals: Sequence[tuple[float | None, float | None, float | None]]) -> tuple[float, float]:
    """A shared, symmetric-enough scale for a group of interval bars, always containing zero."""
    values = [0.0]
    for lift, lo, hi in intervals:
        if _finite(lift):
            assert lift is not None
            values.append(lift)
            values += [v for v in (lo, hi) if v is not None and math.isfinite(v) and abs(v - lift) < 1.0]
    lo_v, hi_v = min(values), max(values)
    pad = max((hi_v - lo_v) * 0.1, 0.01)
    return lo_v - pad, hi_v + pad


@dataclass(frozen=True, slots=True)
class ShareStep:
    """One step of a ramp: the winner's share (percent) from ``start`` until ``end`` (None: still on it)."""

    start: datetime
    end: datetime | None
    share: float
    outcome: str | None = None  # advanced, completed, rolled_back


def share_chart(steps: Sequence[ShareStep], *, chart_id: str, now: datetime, compact: bool = False) -> str:
    """The winner's share of traffic over a ramp, a step line from 0 to 100%, as an inline, responsive SVG. A
    rollback drops the line to the test share (drawn dashed, and said in the text summary)."""
    cid = _e(chart_id)
    if not steps:
        return f'<p class="chart-empty" id="{cid}">The ramp has no steps yet.</p>'
    width, height, font = (360, 200, 12) if compact else (960, 220, 13)
    left, right, top, bottom = (44, 14, 12, 40) if compact else (56, 20, 14, 42)
    pw, ph = width - left - right, height - top - bottom
    t0 = steps[0].start
    t1 = max(now, *(s.end for s in steps if s.end is not None))
    if t1 <= t0:
        t1 = t0 + timedelta(minutes=1)
    span = (t1 - t0).total_seconds()

    def x(t: datetime) -> float:
        return left + pw * min(max((t - t0).total_seconds() / span, 0.0), 1.0)

    def y(v: float) -> float:
        return top + ph * (1 - min(max(v, 0.0), 100.0) / 100.0)

    parts = [f"step {i + 1} at {s.share:g}% from {s.start:%Y-%m-%d %H:%M:%S}" for i, s in enumerate(steps)]
    last = steps[-1]
    summary = (
        "Winner's share: "
        + "; ".join(parts)
        + (f"; rolled back at step {len(steps)}" if last.outcome == "rolled_back" else "")
        + "."
    )
    out = [
        f'<svg class="chart" id="{cid}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="{cid}-title {cid}-desc" xmlns="http://www.w3.org/2000/svg" '
        f'font-family="system-ui, sans-serif" font-size="{font}">',
        f'<title id="{cid}-title">Winner\'s share of traffic over the ramp</title>',
        f'<desc id="{cid}-desc">{_e(summary)}</desc>',
    ]
    for tick in (0, 25, 50, 75, 100):
        ty = y(tick)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{_num(ty)}" y2="{_num(ty)}" stroke="{GRID}"/>')
        out.append(f'<text x="{left - 6}" y="{_num(ty + 4)}" text-anchor="end" fill="{MUTED}">{tick}%</text>')
    for t, label in _time_ticks(t0, t1, 3 if compact else 6):
        tx = x(t)
        anchor = "start" if tx <= left + 1 else "end" if tx >= left + pw - 1 else "middle"
        out.append(f'<text x="{_num(tx)}" y="{top + ph + 18}" text-anchor="{anchor}" fill="{MUTED}">{_e(label)}</text>')
    points: list[tuple[float, float]] = []
    for s in steps:
        end = s.end or now
        points += [(x(s.start), y(s.share)), (x(end), y(s.share))]
        label = f"step at {s.share:g}% from {s.start:%H:%M:%S}" + (f" ({s.outcome})" if s.outcome else " (current)")
        out.append(
            f'<g><title>{_e(label)}</title><circle cx="{_num(x(s.start))}" cy="{_num(y(s.share))}" r="3.5" '
            f'fill="{LINE}"/></g>'
        )
    out.append(f'<polyline points="{_pts(points)}" fill="none" stroke="{LINE}" stroke-width="2.5"/>')
    if last.outcome == "rolled_back" and last.end is not None:
        out.append(
            f'<line x1="{_num(x(last.end))}" x2="{_num(x(last.end))}" y1="{top}" y2="{top + ph}" '
            f'stroke="{ROLLBACK}" stroke-width="2" stroke-dasharray="5 3"/>'
            f'<text x="{_num(x(last.end) - 4)}" y="{top + 12}" text-anchor="end" fill="{ROLLBACK}">rolled back</text>'
        )
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="{MUTED}"/>')
    out.append("</svg>")
    return "".join(out)
