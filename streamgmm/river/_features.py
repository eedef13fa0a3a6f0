"""Dict <-> vector conversion for the River adapters.

River records are dicts whose keys may come and go.  The adapters fix a canonical feature order
(sorted, so that shuffled dicts give identical vectors), map a record onto it with ``nan`` for a
missing feature, and count the features they have never seen instead of failing on them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

# Beyond this many distinct unseen names only the total is counted: a stream whose keys are
# record ids must not grow the estimator's memory without bound.
MAX_TRACKED_UNSEEN = 1000


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


def count_unseen(x: Mapping, known: Mapping, counts: dict) -> int:
    """Count the keys of `x` absent from `known` into `counts`; return how many there were."""
    n = 0
    for name in x:
        if name not in known:
            n += 1
            if name in counts or len(counts) < MAX_TRACKED_UNSEEN:
                counts[name] = counts.get(name, 0) + 1
    return n
