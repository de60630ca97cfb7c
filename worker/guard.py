"""The post-promotion guard, by its old name: the rule is worker.domain.guard_rules, the I/O
worker.services.guard."""

from worker.domain.guard_rules import (
    GuardBreach,
    GuardMetric,
    VariantTotals,
    WatchedPromotion,
    check_guard,
    watched_from_row,
)
from worker.services.effects import GUARD_ACTOR
from worker.services.guard import GuardOutcome, PostPromotionGuard, default_identity

__all__ = [
    "GUARD_ACTOR",
    "GuardBreach",
    "GuardMetric",
    "GuardOutcome",
    "PostPromotionGuard",
    "VariantTotals",
    "WatchedPromotion",
    "check_guard",
    "default_identity",
    "watched_from_row",
]
