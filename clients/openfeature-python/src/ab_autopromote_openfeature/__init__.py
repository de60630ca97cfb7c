"""OpenFeature provider for ab-autopromote: serve the experiments' current decisions from PostgreSQL.

from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from ab_autopromote_openfeature import AutoPromoteProvider

api.set_provider(AutoPromoteProvider("postgresql://app@db/app"))
variant = api.get_client().get_string_value("homepage-cta", "control", EvaluationContext(targeting_key=user_id))
"""

from .hashing import assign, bucket_from_state, choose, fnv1a32, hash_v2, range_ends
from .provider import (
    PROMOTION_CHANNEL,
    SERVING_CHANNEL,
    AutoPromoteProvider,
    ExposureHook,
    ServedExperiment,
)

__all__ = [
    "PROMOTION_CHANNEL",
    "SERVING_CHANNEL",
    "AutoPromoteProvider",
    "ExposureHook",
    "ServedExperiment",
    "assign",
    "bucket_from_state",
    "choose",
    "fnv1a32",
    "hash_v2",
    "range_ends",
]
