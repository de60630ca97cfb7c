"""Several metrics per experiment: what a metric is and the sufficient statistics the decision reads.

An experiment always has its built-in metric (``metric_type`` conversion or mean, fed by ``ab_record_metrics``),
reported under the name ``primary``. Rows in ``ab_metrics`` add metrics beside it; a row named ``primary``
changes only the built-in metric's role, direction or margin (its statistics stay those of ``ab_variant_stats``).

Pure values: the data layer builds them from rows (``from_row``), the statistics and the decision read them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

MetricKind = Literal["proportion", "mean", "ratio"]
MetricRole = Literal["primary", "guardrail", "secondary"]
Direction = Literal["increase", "decrease"]
CupedSetting = Literal["auto", "off"]
Verdict = Literal["better", "worse", "inconclusive", "non_inferior", "not_shown"]

BUILTIN_METRIC = "primary"
"""The name the experiment's own ``metric_type`` metric is reported under."""


def _opt(x: Any) -> float | None:
    return None if x is None else float(x)


@dataclass(frozen=True, slots=True)
class MetricSums:
    """One variant's sufficient statistics for one metric, over ``units`` units (users, sessions, …).

    proportion: value_sum = converted units (value_sum_sq is value_sum, a 0/1 value's square is itself).
    mean:       value_sum = Σx, value_sum_sq = Σx².
    ratio:      numerator x and denominator y per unit: Σx, Σx², Σy, Σy², Σxy.
    CUPED (issue "Decide with fewer users"): pre_units of the units also sent their pre-exposure value x_pre:
                pre_sum = Σx_pre, pre_sum_sq = Σx_pre², pre_value_product_sum = Σx·x_pre over those units.
    """

    units: int = 0
    value_sum: float = 0.0
    value_sum_sq: float = 0.0
    denominator_sum: float | None = None
    denominator_sum_sq: float | None = None
    value_denominator_product_sum: float | None = None
    pre_units: int = 0
    pre_sum: float | None = None
    pre_sum_sq: float | None = None
    pre_value_product_sum: float | None = None

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> MetricSums:
        """From an ``ab_metric_stats`` row or its JSON form (the column names)."""
        get = r.get  # the scan builds tens of thousands of these: positional, one lookup per column
        return cls(
            int(get("units") or 0),
            float(get("value_sum") or 0.0),
            float(get("value_sum_sq") or 0.0),
            _opt(get("denominator_sum")),
            _opt(get("denominator_sum_sq")),
            _opt(get("value_denominator_product_sum")),
            int(get("pre_units") or 0),
            _opt(get("pre_sum")),
            _opt(get("pre_sum_sq")),
            _opt(get("pre_value_product_sum")),
        )

    @property
    def has_covariate(self) -> bool:
        """Every unit sent its pre-exposure value (CUPED may use this variant's sums)."""
        return self.units > 0 and self.pre_units == self.units and self.pre_sum is not None

    def is_finite(self) -> bool:
        vals = (self.value_sum, self.value_sum_sq, self.denominator_sum, self.denominator_sum_sq)
        return all(v is None or math.isfinite(v) for v in vals)


@dataclass(frozen=True, slots=True)
class MetricDefinition:
    """One ``ab_metrics`` row (or the built-in metric's defaults)."""

    name: str
    kind: MetricKind
    role: MetricRole = "primary"
    direction: Direction = "increase"
    margin: float = 0.0
    description: str = ""
    cuped: CupedSetting = "auto"

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> MetricDefinition:
        return cls(
            name=str(r["name"]),
            kind=r["kind"],
            role=r.get("role") or "primary",
            direction=r.get("direction") or "increase",
            margin=float(r.get("margin") or 0.0),
            description=str(r.get("description") or ""),
            cuped=r.get("cuped") or "auto",
        )


@dataclass(frozen=True, slots=True)
class MetricSnapshot:
    """A metric's definition and each variant's sums (variant name → sums), read in the decision's snapshot."""

    definition: MetricDefinition
    sums: Mapping[str, MetricSums] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.definition.name


def metric_snapshots(rows: Any) -> tuple[MetricSnapshot, ...]:
    """From the snapshot's ``metrics`` JSON array: one object per ``ab_metrics`` row (its columns) with ``sums``,
    an object variant name → ``ab_metric_stats`` columns. None or [] (no rows): ()."""
    if not rows:
        return ()
    return tuple(
        MetricSnapshot(
            MetricDefinition.from_row(r),
            {str(v): MetricSums.from_row(s) for v, s in (r.get("sums") or {}).items()},
        )
        for r in rows
    )
