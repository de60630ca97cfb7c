"""The experiments' metrics as the scan's bulk read returns them (``variants_with_stats_for`` in queries.sql),
turned into the domain's ``MetricSnapshot``s.

The per-experiment reads return a JSON array of objects (``metric_snapshots`` in worker/domain/metrics.py reads
it); over 10,000 experiments, formatting and parsing that text cost more than the numbers, so the bulk read sends
two arrays in PostgreSQL's binary form instead, and this reads them into the same values: a ratio's denominator sums
only for a ratio, covariate sums only when some unit sent one, variants without data left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from worker.domain.metrics import MetricDefinition, MetricSnapshot, MetricSums


def bulk_metric_snapshots(
    defs: Sequence[Sequence[str]] | None,
    sums: Sequence[Sequence[float]] | None,
    variant_names: Mapping[int, str],
) -> tuple[MetricSnapshot, ...]:
    """From the ``metric_defs`` and ``metric_sums`` columns of one experiment's control row (NULL: ()), with the
    names of its variants by id.

    Runs once per metric and variant over the scan's 10,000 experiments: metric ids arrive as floats, which look up
    int keys directly (2.0 == 2, with the same hash)."""
    if not defs:
        return ()
    ratios = {int(d[0]) for d in defs if d[2] == "ratio"}
    by_metric: dict[float, dict[str, MetricSums]] = {}
    for metric_id, variant_id, units, x, xx, y, yy, xy, pre_units, pre, pre_sq, pre_xy in sums or ():
        ratio = metric_id in ratios
        covariate = pre_units > 0
        per_variant = by_metric.get(metric_id)
        if per_variant is None:
            per_variant = by_metric[metric_id] = {}
        vid = int(variant_id)
        per_variant[variant_names.get(vid) or str(vid)] = MetricSums(
            int(units),
            x,
            xx,
            y if ratio else None,
            yy if ratio else None,
            xy if ratio else None,
            int(pre_units),
            pre if covariate else None,
            pre_sq if covariate else None,
            pre_xy if covariate else None,
        )
    out: list[MetricSnapshot] = []
    for def_id, name, kind, role, direction, margin, description, cuped in defs:
        definition = MetricDefinition(name, kind, role, direction, float(margin), description, cuped)  # type: ignore[arg-type]
        out.append(MetricSnapshot(definition, by_metric.get(int(def_id), {})))
    return tuple(out)
