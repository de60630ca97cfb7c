"""How a metric's points over time are kept: as rows of the evaluation history beside the built-in metric's.

A history row is one treatment at one kept evaluation (``ab_evaluation_snapshots``). The built-in metric's rows
are named after the treatment, as always; another metric's rows are named ``<metric>\\x1f<treatment>`` (metric
names cannot hold the unit separator, see ``ab_metrics.name``), so they are thinned per metric and treatment by the
same rule and the lift chart of the built-in metric reads exactly the rows it read before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from worker.domain.metrics import BUILTIN_METRIC
from worker.stats.metrics import MetricAnalysis

SEPARATOR = "\x1f"

__all__ = ["SEPARATOR", "history_name", "metric_points", "split_history_name"]


def history_name(metric: str, variant: str) -> str:
    """The history row name of ``variant`` on ``metric`` (the built-in metric's rows keep the bare name)."""
    return variant if metric == BUILTIN_METRIC else f"{metric}{SEPARATOR}{variant}"


def split_history_name(name: str) -> tuple[str, str]:
    """(metric, variant) of a history row name."""
    metric, sep, variant = name.partition(SEPARATOR)
    return (metric, variant) if sep else (BUILTIN_METRIC, name)


def metric_points(
    metrics: Sequence[MetricAnalysis],
) -> Iterator[tuple[str, int, float | None, float | None, float | None, float]]:
    """History points of every metric but the built-in one: (row name, units, lift, ci_low, ci_high, confidence),
    confidence 100 x (1 - the p-value the verdict is taken on)."""
    for m in metrics:
        if m.name == BUILTIN_METRIC:
            continue
        for c in m.comparisons:
            e = c.effect
            yield (
                history_name(m.name, c.variant),
                c.units,
                e.estimate,
                e.ci_low,
                e.ci_high,
                100.0 * (1.0 - c.adjusted_p),
            )
