"""analyze_experiment: every treatment against the control, corrected for multiplicity, plus SRM."""

from __future__ import annotations

from collections.abc import Sequence

from . import _validate as check
from . import reasons
from .effects import effect_from_moments
from .errors import StatsInputError
from .models import Comparison, Correction, ExperimentAnalysis, Method, MetricType, VariantStats
from .multiple import adjust_pvalues
from .srm import _srm

__all__ = ["analyze_experiment"]


def analyze_experiment(
    variants: Sequence[VariantStats],
    *,
    metric_type: MetricType = "conversion",
    method: Method = "sequential",
    alpha: float = 0.05,
    n_star: float = 5000,
    correction: Correction = "holm",
    srm_threshold: float = 0.001,
) -> ExperimentAnalysis:
    """Compare each treatment with the control on the relative lift of the primary metric.

    Exactly one variant must have is_control=True and names must be unique (StatsInputError otherwise).
    method="sequential" (default) gives always-valid p-values and confidence sequences, safe to re-run
    after every batch of data; "fixed" is a Welch t-test valid only at a pre-planned sample size. n_star is
    the total (all arms of one comparison) sample size the sequence is tuned for. Corrections apply across
    the treatments of this experiment. Data conditions (zero exposures, control rate 0, ...) give a
    comparison with p 1.0 and a reason, never an exception; winner() ignores SRM, so check srm.flagged.
    """
    mt = check.metric_type(metric_type)
    m = check.method(method)
    a = check.alpha(alpha)
    ns = check.n_star(n_star)
    corr = check.correction(correction)
    thr = check.threshold(srm_threshold)
    if isinstance(variants, str | bytes) or not isinstance(variants, Sequence):
        raise StatsInputError("variants must be a sequence of VariantStats")
    if not variants:
        raise StatsInputError("variants is empty: an experiment needs at least its control")

    moments = [check.variant(v, mt) for v in variants]
    controls = [i for i, v in enumerate(variants) if v.is_control]
    if len(controls) != 1:
        raise StatsInputError(f"exactly one variant must have is_control=True, found {len(controls)}")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise StatsInputError(f"variant names must be unique, got {names!r}")
    ci = controls[0]
    ctrl = variants[ci]
    n_a, mu_a, var_a = moments[ci]

    treat = [i for i in range(len(variants)) if i != ci]
    effects = [
        effect_from_moments(n_a, mu_a, var_a, *moments[i], metric_type=mt, method=m, alpha=a, n_star=ns) for i in treat
    ]
    adjusted = adjust_pvalues([e.p_value for e in effects], corr)
    comparisons = []
    for i, e, adj in zip(treat, effects, adjusted, strict=True):
        significant = adj < a and e.estimate is not None
        comparisons.append(
            Comparison(
                variant=names[i],
                control=ctrl.name,
                mean_control=mu_a,
                mean_treatment=moments[i][1],
                lift=e.estimate,
                se=e.se,
                ci_low=e.ci_low,
                ci_high=e.ci_high,
                p_value=e.p_value,
                adjusted_p=adj,
                confidence=100.0 * (1.0 - adj),
                improvement=None if e.estimate is None else 100.0 * e.estimate,
                significant=significant,
                better=significant and e.estimate is not None and e.estimate > 0.0,
                method=m,
                reason=e.reason,
            )
        )
    srm = _srm(tuple(n for n, _, _ in moments), tuple(float(v.weight) for v in variants), thr)
    return ExperimentAnalysis(
        metric_type=mt,
        method=m,
        alpha=a,
        correction=corr,
        control=ctrl.name,
        comparisons=tuple(comparisons),
        srm=srm,
        reason=None if treat else reasons.NO_TREATMENTS,
    )
