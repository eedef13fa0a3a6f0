"""Dict <-> vector conversion and the feature schema of the River adapters.

River records are dicts whose keys may come and go.  The adapters decide which keys are features
during the warm-up (:class:`FrequentKeys`, :data:`MIN_FEATURE_FREQUENCY`), fix a canonical
feature order (sorted, so that shuffled dicts give identical vectors), map a record onto it with
``nan`` for a missing feature, and count the keys outside the schema instead of failing on them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from numba import njit

# Beyond this many distinct unseen names only the total is counted: a stream whose keys are
# record ids must not grow the estimator's memory without bound.
MAX_TRACKED_UNSEEN = 1000

# The schema rule: a key is a feature if it has a value in at least this fraction of the
# warm-up's records (and in at least two of them).  A key seen once -- a record id, a one-off
# tag -- is not a feature: it would make every later record partial (the slow missing-data path)
# and, with the default warm-up size growing with the number of features, the warm-up endless.
MIN_FEATURE_FREQUENCY = 0.05

# Keys tracked at once while counting the warm-up's keys.  Misra-Gries keeps every key whose
# share of the key occurrences exceeds 1 / (capacity + 1), so the rule above is exact for
# records of up to capacity * MIN_FEATURE_FREQUENCY (= 500) keys on average.
MAX_CANDIDATE_KEYS = 10_000


def _sort_key(name: Any) -> tuple[str, Any]:
    # Grouping by type name keeps mixed key types (int and str) sortable.
    return (type(name).__name__, name)


def canonical_order(names: Iterable[Any]) -> list[Any]:
    """Feature names in the canonical (sorted) order.

    >>> canonical_order(["b", "a", 2, 1])
    [1, 2, 'a', 'b']

    """
    try:
        return sorted(names, key=_sort_key)
    except TypeError:  # keys of one type that do not compare (tuples of mixed types, ...)
        return sorted(names, key=lambda n: (type(n).__name__, repr(n)))


def _bad_value(x: Mapping, names: list) -> ValueError:
    for name in names:
        v = x.get(name)
        if v is None:
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            return ValueError(f"feature {name!r} has a non-numeric value {v!r}")
        if math.isinf(f):
            return ValueError(f"feature {name!r} is infinite ({v!r})")
    return ValueError("record contains a non-finite or non-numeric value")


def to_vector(x: Mapping, names: list) -> tuple[np.ndarray, bool]:
    """Values of `x` in the order of `names` as float64, ``nan`` where a feature is missing.

    Returns the vector and whether anything is missing.  A value of ``None`` or ``nan`` counts as
    missing; ``inf`` or a non-numeric value raises ValueError.

    >>> to_vector({"b": 2, "a": 1.5}, ["a", "b", "c"])
    (array([1.5, 2. , nan]), True)

    """
    get = x.get
    try:
        # np.array turns None into nan when the dtype is float.
        v = np.array([get(name) for name in names], dtype=np.float64)
    except (TypeError, ValueError):
        raise _bad_value(x, names) from None
    # One reduction is cheaper than isnan().any() + isinf().any() on the hot path.
    if math.isfinite(v.sum()):
        return v, False
    if np.isinf(v).any():
        raise _bad_value(x, names)
    return v, bool(np.isnan(v).any())  # the sum may also overflow on finite values


@njit(cache=True)
def _standardise_row(v, loc, inv_scale):
    """``v = (v - loc) * inv_scale`` in place; 0: complete, 1: some value NaN, 2: one infinite
    (``v`` then half done)."""
    status = 0
    for i in range(v.shape[0]):
        value = v[i]
        if value != value:
            status = 1
        elif abs(value) == np.inf:
            return 2
        v[i] = (value - loc[i]) * inv_scale[i]
    return status


def standardised_vector(
    x: Mapping, names: list, loc: np.ndarray, inv_scale: np.ndarray
) -> tuple[np.ndarray, bool]:
    """:func:`to_vector` standardised, ``(v - loc) * inv_scale``: the same vector, flag and
    errors, in one compiled pass over the values (the adapters' per-record path).

    >>> standardised_vector({"b": 2, "a": 1.5}, ["a", "b", "c"], np.ones(3), np.full(3, 2.0))
    (array([ 1.,  2., nan]), True)

    """
    get = x.get
    try:
        v = np.array([get(name) for name in names], dtype=np.float64)
    except (TypeError, ValueError):
        v = None
    if v is not None and v.ndim == 1:
        status = _standardise_row(v, loc, inv_scale)
        if status < 2:
            return v, status == 1
    v, missing = to_vector(x, names)  # raises what to_vector raises
    v -= loc
    v *= inv_scale
    return v, missing


def record_values(x: Mapping) -> dict:
    """A float copy of a record (warm-up buffer), ``None``/``nan`` values dropped.

    >>> record_values({"a": 1, "b": None, "c": float("nan")})
    {'a': 1.0}

    """
    out = {}
    for name, v in x.items():
        if v is None:
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"feature {name!r} has a non-numeric value {v!r}") from None
        if math.isinf(f):
            raise ValueError(f"feature {name!r} is infinite ({v!r})")
        if f == f:
            out[name] = f
    return out


class FrequentKeys:
    """Counts of the keys of a stream of records, in bounded memory (Misra-Gries).

    At most `capacity` keys are tracked.  When a new key arrives with the table full, every
    count drops by one and the keys at zero are forgotten (the new key too): a key seen once is
    soon gone, while a key that recurs stays.  Every key whose number of occurrences exceeds
    ``n_occurrences / (capacity + 1)`` is in the table, with a count that underestimates its
    true count by at most that much.  Beside its count, each tracked key keeps the running mean
    and sum of squared deviations (Welford) of its values since it entered the table.

    Parameters
    ----------
    capacity
        Maximum number of keys tracked.

    Attributes
    ----------
    n_records
        Records counted.
    n_occurrences
        Key occurrences counted (the sum of the records' sizes).

    Examples
    --------
    >>> keys = FrequentKeys(capacity=2)
    >>> for i in range(100):
    ...     keys.add({"a": float(i), f"id_{i}": 1.0})
    >>> sorted(keys.frequent(0.05)), len(keys) <= 2
    (['a'], True)
    >>> keys["a"] >= 100 - keys.n_occurrences / 3   # Misra-Gries' bound
    True
    >>> keys.moments("a")[:2]   # "a" never left the table: moments of all its values
    (100, 49.5)

    """

    def __init__(self, capacity: int = MAX_CANDIDATE_KEYS):
        self.capacity = capacity
        self._table: dict = {}  # key -> [count, n, mean, m2]
        self.n_records = 0
        self.n_occurrences = 0

    def add(self, record: Mapping) -> None:
        """Count the keys of one record (a dict of floats)."""
        self.n_records += 1
        self.n_occurrences += len(record)
        table = self._table
        for key, v in record.items():
            s = table.get(key)
            if s is None:
                if len(table) >= self.capacity:
                    self._decrement()
                    continue
                table[key] = [1, 1, v, 0.0]
                continue
            s[0] += 1
            n = s[1] = s[1] + 1
            delta = v - s[2]
            s[2] += delta / n
            s[3] += delta * (v - s[2])

    def _decrement(self) -> None:
        table = {}
        for key, s in self._table.items():
            if s[0] > 1:
                s[0] -= 1
                table[key] = s
        self._table = table

    def __len__(self) -> int:
        return len(self._table)

    def __iter__(self):
        return iter(self._table)

    def __contains__(self, key) -> bool:
        return key in self._table

    def __getitem__(self, key) -> int:
        """The key's count (an underestimate by at most ``n_occurrences / (capacity + 1)``)."""
        return self._table[key][0]

    def moments(self, key) -> tuple[int, float, float]:
        """``(n, mean, m2)`` of the key's values since it entered the table."""
        _, n, mean, m2 = self._table[key]
        return n, mean, m2

    def frequent(self, fraction: float) -> set:
        """Keys counted in at least ``max(2, fraction * n_records)`` records."""
        least = min_count(fraction, self.n_records)
        return {key for key, s in self._table.items() if s[0] >= least}


def min_count(fraction: float, n_records: int) -> int:
    """Least number of records a feature must appear in: ``max(2, ceil(fraction * n))``.

    >>> min_count(0.05, 1000), min_count(0.05, 10)
    (50, 2)

    """
    return max(2, math.ceil(fraction * n_records - 1e-9))


def count_unseen(x: Mapping, known: Mapping, counts: dict) -> int:
    """Count the keys of `x` absent from `known` into `counts`; return how many there were."""
    n = 0
    for name in x:
        if name not in known:
            n += 1
            if name in counts or len(counts) < MAX_TRACKED_UNSEEN:
                counts[name] = counts.get(name, 0) + 1
    return n
