"""GrowthBook-compatible assignment, bit for bit the same as ``ab_fnv1a32``/``ab_assign`` in schema/0008_serving.sql.

Hash version 2: ``n = fnv1a32(str(fnv1a32(seed + unit_id)))``, ``bucket = (n % 10000) / 10000``, FNV-1a 32 over
UTF-16 code units (what JavaScript's ``charCodeAt`` yields, so astral-plane characters count as their surrogate
pair). Ranges: variants in a fixed order (control first, then by id), weights normalised to sum 1 in double
precision in that order, variant i owning ``[cumulative_i, cumulative_i + weight_i)``.
"""

from __future__ import annotations

import sys
from bisect import bisect_right
from collections.abc import Sequence

FNV_OFFSET = 2166136261
FNV_PRIME = 16777619
_UTF16 = "utf-16-le" if sys.byteorder == "little" else "utf-16-be"  # native order, for memoryview.cast("H")


def fnv1a32(s: str, state: int = FNV_OFFSET) -> int:
    """FNV-1a 32 of ``s``'s UTF-16 code units, continuing from ``state`` (the offset basis by default)."""
    h = state
    if s.isascii():  # one byte is one code unit; bytes iterate as ints without a per-item call
        for c in s.encode():
            h = (h ^ c) * 16777619 & 0xFFFFFFFF
        return h
    for c in memoryview(s.encode(_UTF16, "surrogatepass")).cast("H"):
        h = (h ^ c) * 16777619 & 0xFFFFFFFF
    return h


def bucket_from_state(seed_state: int, unit_id: str) -> float:
    """The v2 bucket in [0, 1) of ``unit_id`` under the seed whose FNV state is ``seed_state``.

    Continuing from the seed's state is the same as hashing ``seed + unit_id`` (FNV is a left fold), and saves
    hashing the seed on every call. The hot path of the provider: kept flat on purpose.
    """
    h = seed_state
    if unit_id.isascii():
        for c in unit_id.encode():
            h = (h ^ c) * 16777619 & 0xFFFFFFFF
    else:
        for c in memoryview(unit_id.encode(_UTF16, "surrogatepass")).cast("H"):
            h = (h ^ c) * 16777619 & 0xFFFFFFFF
    n = 2166136261
    for c in str(h).encode():
        n = (n ^ c) * 16777619 & 0xFFFFFFFF
    return n % 10000 / 10000


py_fnv1a32 = fnv1a32  # the pure-Python twins, kept for the tests that compare them with the C ones
py_bucket_from_state = bucket_from_state
ACCELERATED = False
try:  # the C accelerator (_fnv.c), built at install time when a compiler is there; the same results, ~20x faster
    from ._fnv import bucket_from_state, fnv1a32  # type: ignore[assignment]

    ACCELERATED = True
except ImportError:  # pragma: no cover - depends on the install
    pass


def hash_v2(seed: str, unit_id: str) -> float:
    """GrowthBook's ``hash(seed, value, 2)``."""
    return bucket_from_state(fnv1a32(seed), unit_id)


def range_ends(weights: Sequence[float]) -> tuple[float, ...]:
    """Upper ends of the variants' bucket ranges; all 0.0 (nobody assigned) when no weight is positive."""
    total = 0.0
    for w in weights:
        total += w
    ends: list[float] = []
    cumulative = 0.0
    for w in weights:
        if total > 0:
            cumulative += w / total
        ends.append(cumulative)
    return tuple(ends)


def choose(bucket: float, ends: Sequence[float]) -> int:
    """Index of the variant whose range holds ``bucket``; -1 when none does (no traffic at all).

    The ends never decrease, so that is the number of ends <= bucket (zero-weight variants, with empty ranges,
    are skipped): SQL's width_bucket, here a binary search in C.
    """
    i = bisect_right(ends, bucket)
    return i if i < len(ends) else -1


def assign(seed: str, unit_id: str, variants: Sequence[str], weights: Sequence[float]) -> str | None:
    """The variant ``unit_id`` sees; the Python twin of ``ab_assign`` for an experiment that is serving."""
    i = choose(hash_v2(seed, unit_id), range_ends(weights))
    return variants[i] if i >= 0 else None
