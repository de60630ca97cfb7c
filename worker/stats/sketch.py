"""DDSketch-style latency sketch whose JSON form PostgreSQL can build and merge with plain SQL."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Final

import numpy as np
import numpy.typing as npt

from .errors import StatsInputError

__all__ = [
    "GAMMA",
    "RELATIVE_ACCURACY",
    "ZERO_KEY",
    "LatencySketch",
    "bucket_key",
    "latency_degradation",
]

RELATIVE_ACCURACY: Final = 0.01
GAMMA: Final = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
_LOG_GAMMA: Final = math.log(GAMMA)
# log(2/(GAMMA+1)) folded into the exponent so the representative of the top key cannot overflow.
_LOG_REP_FACTOR: Final = math.log(2.0 / (GAMMA + 1.0))
ZERO_KEY: Final = "z"
# Keys of the smallest subnormal and the largest finite double; anything outside is corrupt input and
# would overflow exp() when turned back into a value.
_MIN_KEY: Final = math.ceil(math.log(5e-324) / _LOG_GAMMA) - 1
_MAX_KEY: Final = math.ceil(math.log(sys.float_info.max) / _LOG_GAMMA) + 1


def bucket_key(x: float) -> int:
    """Return the bucket key ceil(ln(x)/ln(GAMMA)) of one positive value, as SQL computes it.

    x must be finite and > 0 (zeros live in the separate "z" bucket). Uses numpy's log so a single value
    lands in the same bucket as it would in from_values. SQL must use float8 and GAMMA = 1.01/0.99; a value
    within one ulp of a bucket boundary may still land one bucket apart there (a 2% error at worst).
    """
    if not (math.isfinite(x) and x > 0.0):
        raise StatsInputError(f"bucket_key needs a finite value > 0, got {x!r}")
    return int(_keys(np.asarray([x], dtype=np.float64))[0])


def _keys(pos: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    keys: npt.NDArray[np.int64] = np.ceil(np.log(pos) / _LOG_GAMMA).astype(np.int64)
    return keys


def _check_count(name: str, c: object) -> int:
    if isinstance(c, bool) or not isinstance(c, int | float | np.integer | np.floating):
        raise StatsInputError(f"sketch count for {name!r} must be an integer, got {c!r}")
    if isinstance(c, float | np.floating):
        # jsonb numerics may come back as floats; accept them only when they are whole numbers.
        if not (math.isfinite(c) and float(c).is_integer()):
            raise StatsInputError(f"sketch count for {name!r} must be a whole number, got {c!r}")
    ci = int(c)
    if ci < 0:
        raise StatsInputError(f"sketch count for {name!r} must be >= 0, got {ci}")
    return ci


class LatencySketch:
    """Immutable DDSketch (relative accuracy 1%): bucket counts keyed by ceil(ln x / ln GAMMA), plus zeros.

    Every operation returns a new sketch; instances are hashable and compare equal when their JSON forms do.
    """

    __slots__ = ("_count", "_counts", "_keys", "_zeros")

    _keys: tuple[int, ...]
    _counts: tuple[int, ...]
    _zeros: int
    _count: int

    def __init__(self, bins: Mapping[int, int] | None = None, zeros: int = 0) -> None:
        """Build a sketch from key -> count bins and a zero count; zero-count bins are dropped.

        Raises StatsInputError for negative counts or keys outside the range of finite doubles.
        """
        items: list[tuple[int, int]] = []
        for k, c in (bins or {}).items():
            if isinstance(k, bool) or not isinstance(k, int | np.integer):
                raise StatsInputError(f"sketch key must be an integer, got {k!r}")
            ki = int(k)
            if not _MIN_KEY <= ki <= _MAX_KEY:
                raise StatsInputError(f"sketch key {ki} is outside the range of finite positive doubles")
            ci = _check_count(str(ki), c)
            if ci:
                items.append((ki, ci))
        items.sort()
        self._keys = tuple(k for k, _ in items)
        self._counts = tuple(c for _, c in items)
        self._zeros = _check_count(ZERO_KEY, zeros)
        self._count = self._zeros + sum(self._counts)

    @classmethod
    def from_values(cls, values: Iterable[float]) -> LatencySketch:
        """Sketch a batch of latencies (any iterable or numpy array, any unit, all values finite and >= 0).

        Raises StatsInputError on a negative, NaN or infinite value. Vectorised: 10^6 values take ~50 ms.
        """
        try:
            if isinstance(values, np.ndarray):
                arr = values.astype(np.float64, copy=False).ravel()
            else:
                arr = np.fromiter((float(v) for v in values), dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise StatsInputError(f"latency values must be numbers: {exc}") from None
        if arr.size == 0:
            return cls()
        if not np.all(np.isfinite(arr)):
            raise StatsInputError("latency values must be finite (got NaN or infinity)")
        if np.any(arr < 0.0):
            raise StatsInputError(f"latency values must be >= 0, got {float(arr.min())!r}")
        pos = arr[arr > 0.0]
        keys, counts = np.unique(_keys(pos), return_counts=True)
        return cls(dict(zip(keys.tolist(), counts.tolist(), strict=True)), int(arr.size - pos.size))

    @classmethod
    def from_json(cls, d: Mapping[str, int] | None) -> LatencySketch:
        """Parse the jsonb form {str(key): count, "z": zeros}; None or {} is an empty sketch.

        Raises StatsInputError on a key that is neither "z" nor an integer, or on a negative count.
        """
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise StatsInputError(f"sketch JSON must be an object, got {type(d).__name__}")
        bins: dict[int, int] = {}
        zeros = 0
        for k, c in d.items():
            if k == ZERO_KEY:
                zeros = _check_count(k, c)
                continue
            try:
                ki = int(k)
            except (TypeError, ValueError):
                raise StatsInputError(f"sketch key must be {ZERO_KEY!r} or an integer, got {k!r}") from None
            bins[ki] = _check_count(str(k), c)
        return cls(bins, zeros)

    def to_json(self) -> dict[str, int]:
        """Return the jsonb form: str(key) -> count in ascending key order, "z" only when there are zeros."""
        out = {str(k): c for k, c in zip(self._keys, self._counts, strict=True)}
        if self._zeros:
            out[ZERO_KEY] = self._zeros
        return out

    @property
    def count(self) -> int:
        """Number of values sketched, zeros included."""
        return self._count

    @property
    def zero_count(self) -> int:
        """Number of values that were exactly 0."""
        return self._zeros

    @property
    def is_empty(self) -> bool:
        """True when the sketch holds no value."""
        return self._count == 0

    def bins(self) -> Iterator[tuple[int, int]]:
        """Iterate (key, count) for the positive buckets in ascending key order."""
        return zip(self._keys, self._counts, strict=True)

    def add(self, value: float, count: int = 1) -> LatencySketch:
        """Return a new sketch with `value` added `count` times (value finite and >= 0, count >= 0)."""
        if not isinstance(value, int | float | np.integer | np.floating) or isinstance(value, bool):
            raise StatsInputError(f"latency value must be a number, got {value!r}")
        v = float(value)
        if not math.isfinite(v) or v < 0.0:
            raise StatsInputError(f"latency value must be finite and >= 0, got {value!r}")
        n = _check_count("count", count)
        if v == 0.0:
            return self.merge(LatencySketch(None, n))
        return self.merge(LatencySketch({bucket_key(v): n}))

    def merge(self, other: LatencySketch) -> LatencySketch:
        """Return the sketch of the union of both inputs (bucket-wise sum, exactly as SQL merges jsonb)."""
        bins = dict(self.bins())
        for k, c in other.bins():
            bins[k] = bins.get(k, 0) + c
        return LatencySketch(bins, self._zeros + other._zeros)

    def subtract(self, other: LatencySketch) -> LatencySketch:
        """Return self minus other bucket-wise, clamped at 0 (e.g. "since promotion" = now - baseline).

        Exact when other is a genuine earlier state of self; otherwise the clamp silently drops negatives.
        """
        if other._count == 0:
            return self
        theirs = dict(zip(other._keys, other._counts, strict=True))
        # Both operands are valid sketches already: the difference needs no second validation (the guard of a
        # ramp subtracts two sketches per arm on every update).
        keys: list[int] = []
        counts: list[int] = []
        for k, c in zip(self._keys, self._counts, strict=True):
            left = c - theirs.get(k, 0)
            if left > 0:
                keys.append(k)
                counts.append(left)
        out = LatencySketch.__new__(LatencySketch)
        out._keys = tuple(keys)
        out._counts = tuple(counts)
        out._zeros = max(0, self._zeros - other._zeros)
        out._count = out._zeros + sum(counts)
        return out

    def quantile(self, q: float) -> float | None:
        """Return the DDSketch estimate of quantile q in [0, 1] (within 1% relative), None when empty.

        Rank-based: the bucket holding rank q*(count-1), reported by its representative 2*GAMMA**k/(GAMMA+1);
        0.0 when that rank falls among the zeros. Raises StatsInputError for q outside [0, 1] or NaN.
        """
        if not isinstance(q, int | float | np.integer | np.floating) or not 0.0 <= float(q) <= 1.0:
            raise StatsInputError(f"quantile must be in [0, 1], got {q!r}")
        if self._count == 0:
            return None
        rank = float(q) * (self._count - 1)
        if rank < self._zeros:
            return 0.0
        running = self._zeros
        key = self._keys[-1]
        for k, c in zip(self._keys, self._counts, strict=True):
            running += c
            if running > rank:
                key = k
                break
        try:
            return math.exp(key * _LOG_GAMMA + _LOG_REP_FACTOR)
        except OverflowError:  # only the top key of the double range can get here
            return sys.float_info.max

    def p95(self) -> float | None:
        """Return quantile(0.95): the 95th percentile estimate, None when empty."""
        return self.quantile(0.95)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencySketch):
            return NotImplemented
        return (self._zeros, self._keys, self._counts) == (other._zeros, other._keys, other._counts)

    def __hash__(self) -> int:
        return hash((self._zeros, self._keys, self._counts))

    def __repr__(self) -> str:
        return f"LatencySketch(count={self._count}, buckets={len(self._keys)}, zeros={self._zeros})"


def latency_degradation(control_p95: float, treatment_p95: float) -> float:
    """Return the treatment's latency increase over control in percent: 100*(t/c - 1) (negative = faster).

    Control 0: returns 0.0 when the treatment is also 0, else math.inf (any latency is an unbounded
    degradation of a zero baseline, so a "> threshold" guard trips). Raises StatsInputError on negative,
    NaN or infinite input.
    """
    for name, v in (("control_p95", control_p95), ("treatment_p95", treatment_p95)):
        if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
            raise StatsInputError(f"{name} must be a number, got {v!r}")
        if not math.isfinite(v) or v < 0.0:
            raise StatsInputError(f"{name} must be finite and >= 0, got {v!r}")
    c, t = float(control_p95), float(treatment_p95)
    if c == 0.0:
        return 0.0 if t == 0.0 else math.inf
    r = 100.0 * (t / c - 1.0)
    # t/c can overflow for a subnormal control; report it as unbounded like the zero case.
    return r if math.isfinite(r) else math.inf
