"""streamgmm: online Gaussian mixture models for streams that never stop.

The estimator is imported on first use (``streamgmm.OnlineGaussianMixture``): it derives from
scikit-learn's ``BaseEstimator``, whose import alone (scikit-learn, SciPy's statistics, pandas)
takes about a second, which ``import streamgmm``, ``streamgmm --help`` and a configuration
error have no need to wait for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = ["NotFittedError", "OnlineGaussianMixture", "ScoreResult", "__version__"]

# public name -> module that defines it, imported on first access (PEP 562)
_LAZY = {
    "NotFittedError": "streamgmm.exceptions",
    "OnlineGaussianMixture": "streamgmm.online",
    "ScoreResult": "streamgmm.online",
}

if TYPE_CHECKING:  # for type checkers and IDEs: the names as if imported eagerly
    from streamgmm.exceptions import NotFittedError
    from streamgmm.online import OnlineGaussianMixture, ScoreResult


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'streamgmm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
