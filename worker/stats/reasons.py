"""Human-readable reasons for results that could not be computed.

They are module constants (not f-strings built at the call site) so that the scalar and vectorised paths
report the very same text, and callers can compare against them.
"""

from __future__ import annotations

from typing import Final

NO_EXPOSURES_CONTROL: Final = "control has no exposures"
NO_EXPOSURES_TREATMENT: Final = "treatment has no exposures"
TOO_FEW_EXPOSURES: Final = "fewer than 2 exposures in an arm: variance undefined"
NO_CONVERSIONS: Final = "no conversions in either arm"
CONTROL_RATE_ZERO: Final = "control conversion rate is 0: relative lift undefined"
CONTROL_MEAN_ZERO: Final = "control mean is 0: relative lift undefined"
ZERO_VARIANCE: Final = "zero variance in an arm: test statistic undefined"
NOT_FINITE: Final = "control mean too close to 0 for a finite relative lift"
VARIANT_ABSENT: Final = "variant not present"

NO_ERRORS: Final = "no errors in either arm"
ERROR_RATES_DEGENERATE: Final = "error rates are identical and degenerate (0 or 1): no test possible"

SRM_NO_EXPOSURES: Final = "no exposures: SRM not computable"
SRM_ALL_WEIGHTS_ZERO: Final = "all configured weights are 0: SRM not computable"
SRM_SINGLE_ARM: Final = "fewer than 2 variants with a positive weight: SRM not computable"
SRM_ZERO_WEIGHT_TRAFFIC: Final = "exposures recorded for a variant with weight 0"

NO_TREATMENTS: Final = "no treatment variants: nothing to compare"

# Index = reason code used by the vectorised path (0 means "no reason": the comparison was computed).
CODES: Final[tuple[str | None, ...]] = (
    None,
    NO_EXPOSURES_CONTROL,
    NO_EXPOSURES_TREATMENT,
    TOO_FEW_EXPOSURES,
    NO_CONVERSIONS,
    CONTROL_RATE_ZERO,
    CONTROL_MEAN_ZERO,
    ZERO_VARIANCE,
    NOT_FINITE,
    VARIANT_ABSENT,
)

# Reason codes of the vectorised SRM result, same convention.
SRM_CODES: Final[tuple[str | None, ...]] = (
    None,
    SRM_ALL_WEIGHTS_ZERO,
    SRM_SINGLE_ARM,
    SRM_NO_EXPOSURES,
    SRM_ZERO_WEIGHT_TRAFFIC,
)
