"""Cheap scikit-learn parameter plumbing for estimators that are built by the thousand.

scikit-learn's ``get_params`` reads the constructor's signature with :mod:`inspect` on every
call, and ``_validate_params`` checks every constraint again; a stream processor with one model
and gate per key rebuilds and encodes thousands of them per checkpoint, and those lookups cost
more than the states themselves.  The names of a class's parameters never change, so they are
read once per class; a set of parameter values that passed validation once passes again, so it
is remembered (only hashable values, a bounded memo; anything invalid is checked every time).
"""

from __future__ import annotations

from collections.abc import Callable

_MEMO_SIZE = 256
_valid: dict[tuple, None] = {}


class CachedParamNames:
    """Mix-in (before ``BaseEstimator``): the constructor's parameter names, read once."""

    @classmethod
    def _get_param_names(cls):
        names = cls.__dict__.get("_param_names_cache")
        if names is None:
            names = super()._get_param_names()
            cls._param_names_cache = names  # on this class only: subclasses read their own
        return names


def validate_once(kind: object, params: dict, validate: Callable[[], None]) -> None:
    """``validate()`` unless these exact ``params`` of ``kind`` passed it before."""
    try:
        key = (kind, tuple(sorted(params.items())))
        hash(key)
    except TypeError:  # an unhashable value (a list, an array): always validate
        validate()
        return
    if key in _valid:
        return
    validate()
    if len(_valid) >= _MEMO_SIZE:
        _valid.pop(next(iter(_valid)))
    _valid[key] = None
