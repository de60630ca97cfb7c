"""The one exception type the statistics core raises."""

from __future__ import annotations

__all__ = ["StatsInputError"]


class StatsInputError(ValueError):
    """Input that no statistic can be computed from: a caller bug or corrupt data, never a data condition.

    Data conditions (zero exposures, a control rate of 0, identical arms, ...) are not errors: they come back
    as results carrying a human-readable ``reason``.
    """
