"""River estimators backed by the online Gaussian mixture core.

- :class:`GaussianMixture`: a `river.base.Clusterer` (`predict_one`, `predict_proba_one`,
  `centers`).
- :class:`GaussianMixtureDetector`: a `river.base.AnomalyDetector` (`score_one` = 1 - tail
  probability in [0, 1], or the negative log-density) with calibrated decisions and gated
  learning.

Both take plain dicts, in any key order, with features that may be missing.
"""

from __future__ import annotations

from .clusterer import GaussianMixture
from .detector import GaussianMixtureDetector

__all__ = ["GaussianMixture", "GaussianMixtureDetector"]
