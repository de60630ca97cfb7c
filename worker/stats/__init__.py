"""Statistics core of ab-autopromote: pure functions and frozen value objects, no I/O and no state.

Public surface: analyze_experiment (scalar, one experiment), analyze_many (vectorised, many experiments),
error_rate_test, srm_test, adjust_pvalues, compare_arms, cuped_effect (CUPED), LatencySketch and
latency_degradation.
The only exception raised is StatsInputError, for inputs no statistic can be computed from.
"""

from __future__ import annotations

from . import reasons
from .cuped import CovariateSums, CupedEffect, CupedKind, cuped_effect
from .effects import compare_arms, error_rate_test
from .errors import StatsInputError
from .experiment import analyze_experiment
from .models import (
    Comparison,
    Correction,
    Effect,
    ErrorRateResult,
    ExperimentAnalysis,
    Method,
    MetricType,
    SrmResult,
    VariantStats,
)
from .multiple import adjust_pvalues
from .sketch import GAMMA, LatencySketch, latency_degradation
from .srm import srm_test
from .vectorized import ManyAnalysis, analyze_many

__all__ = [
    "GAMMA",
    "Comparison",
    "Correction",
    "CovariateSums",
    "CupedEffect",
    "CupedKind",
    "Effect",
    "ErrorRateResult",
    "ExperimentAnalysis",
    "LatencySketch",
    "ManyAnalysis",
    "Method",
    "MetricType",
    "SrmResult",
    "StatsInputError",
    "VariantStats",
    "adjust_pvalues",
    "analyze_experiment",
    "analyze_many",
    "compare_arms",
    "cuped_effect",
    "error_rate_test",
    "latency_degradation",
    "reasons",
    "srm_test",
]
