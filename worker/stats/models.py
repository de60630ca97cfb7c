"""Inputs and results of the statistics core: small frozen value objects, no behaviour beyond selection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .sketch import LatencySketch

__all__ = [
    "Comparison",
    "Correction",
    "Effect",
    "ErrorRateResult",
    "ExperimentAnalysis",
    "Method",
    "MetricType",
    "SrmResult",
    "VariantStats",
]

MetricType = Literal["conversion", "mean"]
Method = Literal["sequential", "fixed"]
Correction = Literal["holm", "bh", "none"]


@dataclass(frozen=True, slots=True)
class VariantStats:
    """Aggregated counts for one variant; validated by the functions that consume it, not on construction."""

    name: str
    is_control: bool
    exposures: int
    conversions: int = 0  # conversion metrics
    value_sum: float = 0.0  # mean metrics
    value_sum_sq: float = 0.0  # mean metrics
    errors: int = 0
    weight: float = 1.0  # configured relative traffic weight (any scale, need not sum to 1 or 100)
    latency: LatencySketch | None = None  # None or empty sketch = no latency samples


@dataclass(frozen=True, slots=True)
class Effect:
    """One treatment-vs-control effect on the relative or absolute scale (the primitive behind Comparison)."""

    estimate: float | None  # relative lift (muB-muA)/|muA|, or absolute difference muB-muA
    se: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float  # two-sided, in [0, 1]; 1.0 when undefined
    method: Method
    relative: bool
    reason: str | None
    df: float | None = None  # Welch-Satterthwaite degrees of freedom (fixed method only)


@dataclass(frozen=True, slots=True)
class Comparison:
    """One treatment vs control on the primary metric, after multiple-comparison correction."""

    variant: str
    control: str
    mean_control: float  # conversion rate or mean value
    mean_treatment: float
    lift: float | None  # relative lift (muB-muA)/|muA|; None when undefined
    se: float | None
    ci_low: float | None  # interval for the relative lift
    ci_high: float | None
    p_value: float  # raw, in [0,1]; 1.0 when undefined
    adjusted_p: float  # after multiple-comparison correction
    confidence: float  # 100*(1-adjusted_p)
    improvement: float | None  # 100*lift
    significant: bool  # adjusted_p < alpha
    better: bool  # significant and lift > 0
    method: Method
    reason: str | None  # why not computable, else None


@dataclass(frozen=True, slots=True)
class SrmResult:
    """Pearson chi-squared sample-ratio-mismatch check of exposures against configured weights."""

    chi2: float
    p_value: float
    flagged: bool
    expected: tuple[float, ...]  # expected exposures per variant, input order; 0.0 for skipped (weight-0)
    observed: tuple[int, ...]
    reason: str | None
    df: int = 0  # degrees of freedom actually used: (variants with positive weight) - 1


@dataclass(frozen=True, slots=True)
class ErrorRateResult:
    """One-sided test for the treatment's error rate being above the control's."""

    control_rate: float
    treatment_rate: float
    p_value: float
    significant_increase: bool
    method: Method
    reason: str | None
    difference: float = 0.0  # treatment_rate - control_rate
    ci_low: float | None = None  # one-sided lower confidence bound on the difference (upper bound is +inf)


@dataclass(frozen=True, slots=True)
class ExperimentAnalysis:
    """Everything analyze_experiment concluded about one experiment."""

    metric_type: MetricType
    method: Method
    alpha: float
    correction: Correction
    control: str  # control variant name
    comparisons: tuple[Comparison, ...]  # one per treatment, in input order
    srm: SrmResult
    reason: str | None = None  # set when there is nothing to compare (single variant)

    def best(self) -> Comparison | None:
        """Return the treatment with the highest lift (undefined lifts last, ties to input order).

        None only when there are no treatments; the result need not be significant.
        """
        best: Comparison | None = None
        for c in self.comparisons:
            if best is None or (c.lift is not None and (best.lift is None or c.lift > best.lift)):
                best = c
        return best

    def winner(self) -> Comparison | None:
        """Return the highest-lift treatment among those with better=True, or None.

        SRM is not consulted: a caller that must not promote under sample-ratio mismatch checks srm.flagged.
        """
        win: Comparison | None = None
        for c in self.comparisons:
            # better implies a defined lift; the check keeps mypy (and a hand-built object) honest.
            if c.better and c.lift is not None and (win is None or win.lift is None or c.lift > win.lift):
                win = c
        return win
