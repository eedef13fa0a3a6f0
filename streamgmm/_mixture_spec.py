"""The one list of the mixture's defaults, shared by every face that exposes them.

:class:`streamgmm.OnlineGaussianMixture`, the River estimators
(:class:`streamgmm.river.GaussianMixture`, :class:`streamgmm.river.GaussianMixtureDetector`)
and the service configuration (``model`` section) take their defaults from here, so that they
cannot drift apart (validation stays with the core's ``_parameter_constraints``).  Plain data:
the service reads it without importing scikit-learn.
"""

from __future__ import annotations

__all__ = ["MIXTURE_DEFAULTS"]

MIXTURE_DEFAULTS: dict = {
    # K chosen at the warm-up (BIC), then components are born, merged and removed online.
    "n_components": "auto",
    "covariance_type": "full",
    "half_life": None,
    "step_exponent": 0.8,
    "step_offset": 2.0,
    "warm_up": None,
    "n_init": 3,
    "init_params": "k-means++",
    "reg_covar": 1e-6,
    "max_components": 10,
    # A group rarer than a tenth of the stream is anomalous, not a regime (River's Shuttle: its
    # anomaly classes, 7% in all, are coherent groups; at 0.05 one became a component and the
    # ROC-AUC fell from 0.996 to 0.904).
    "min_weight": 0.1,
}
