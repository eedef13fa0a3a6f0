"""Online Gaussian mixture clustering for River."""

from __future__ import annotations

import numpy as np
from river import base

from streamgmm._mixture_spec import MIXTURE_DEFAULTS

from ._base import MixtureAdapter, _check_core_params

__all__ = ["GaussianMixture"]


class GaussianMixture(MixtureAdapter, base.Clusterer):
    """Gaussian mixture model learned online by expectation-maximisation.

    Each component is a Gaussian with its own weight, mean and covariance.  After a short
    warm-up (a batch EM on the first `warm_up` records, with k-means++ seeding and several
    initialisations) every record updates the mixture's sufficient statistics by stochastic
    approximation EM, one O(K D^2) step in compiled code.  With `half_life` the model forgets,
    so it tracks a drifting stream.

    While it warms up, the clusterer predicts from a provisional fit of the records buffered so
    far, refitted each time the buffer doubles; cluster labels are carried over from one fit to
    the next (each new component takes the label of the nearest previous one), so predictions
    keep their meaning when the warm-up ends.

    Unlike k-means style clusterers, the model gives soft assignments (`predict_proba_one`) and
    a density.  The features are the keys present in at least 5% of the warm-up's records (and
    in at least two; `streamgmm.river._features.MIN_FEATURE_FREQUENCY`): a key seen once, such
    as a record id, is not a feature, and the keys are counted in bounded memory.  Features are
    put in a canonical (sorted) order and standardised with the warm-up's moments, so the
    defaults work whatever the scale of the data.  A feature missing from a record is
    marginalised out when predicting, and filled in by its conditional expectation
    (missing-data EM) when learning.  A key outside the schema is ignored and counted in
    `unseen_features_`.

    The parameters shared with :class:`streamgmm.OnlineGaussianMixture` are validated by the
    core's own parameter constraints and passed to it by name.

    Parameters
    ----------
    n_components
        Number of mixture components (clusters), or `"auto"` (the default): K chosen at the
        warm-up, then clusters born, merged and removed online.  A born cluster gets a new
        label, a merge keeps the older label, so labels stay stable.
    covariance_type
        'full', 'diag', 'spherical' or 'tied', as in scikit-learn.
    half_life
        Forgetting half-life in samples; `None` for a stationary stream.
    step_exponent
        Exponent of the Robbins-Monro step size `(t + step_offset) ** -step_exponent`.
    step_offset
        Offset of the step size.
    warm_up
        Number of records buffered before the first batch fit.  `None` means
        `max(1000, 2 * K * (n_features + 1))` (K = 3 for `"auto"`), with `n_features` the keys that
        qualify as features so far.
    n_init
        Number of initialisations of the warm-up fit; the best is kept.
    init_params
        Seeding of the warm-up fit ('k-means++', as in the core model).
    reg_covar
        Added to the covariance diagonals, in standardised units.
    max_components, min_weight
        With `"auto"`: the most clusters, and the least share of the stream a cluster stands
        for (rarer groups stay unexplained: see :class:`streamgmm.OnlineGaussianMixture`).
    seed
        Random seed: with a seed, results are exactly reproducible.

    Attributes
    ----------
    centers
        `{cluster: {feature: mean}}` in the input's units.
    model_
        The underlying :class:`streamgmm.OnlineGaussianMixture` (`None` during the warm-up).
    unseen_features_
        `{feature: count}` of features ignored because they were not in the schema.
    n_unseen_
        Total number of ignored feature values.
    n_learned_
        Number of records learned.

    Examples
    --------
    >>> import random
    >>> from streamgmm.river import GaussianMixture

    >>> rng = random.Random(0)
    >>> stream = [
    ...     {"x": rng.gauss(c, 0.5), "y": rng.gauss(-c, 0.5)}
    ...     for _ in range(400) for c in (0.0, 6.0)
    ... ]
    >>> model = GaussianMixture(n_components=2, warm_up=200, seed=42)
    >>> for x in stream:
    ...     model.learn_one(x)

    >>> a = model.predict_one({"x": 0.1, "y": -0.2})
    >>> b = model.predict_one({"x": 5.9, "y": -6.1})
    >>> a != b
    True
    >>> round(model.centers[b]["x"])
    6
    >>> proba = model.predict_proba_one({"x": 0.1})   # "y" missing: marginalised
    >>> max(proba, key=proba.get) == a
    True

    References
    ----------
    Cappé, O. and Moulines, E. (2009). On-line expectation-maximization algorithm for latent
    data models. JRSS B 71(3).

    Ghahramani, Z. and Jordan, M. I. (1994). Supervised learning from incomplete data via an
    EM approach. NIPS 6.

    """

    _fits_during_warm_up = True

    def __init__(
        self,
        n_components: int | str = MIXTURE_DEFAULTS["n_components"],
        covariance_type: str = MIXTURE_DEFAULTS["covariance_type"],
        half_life: float | None = MIXTURE_DEFAULTS["half_life"],
        step_exponent: float = MIXTURE_DEFAULTS["step_exponent"],
        step_offset: float = MIXTURE_DEFAULTS["step_offset"],
        warm_up: int | None = MIXTURE_DEFAULTS["warm_up"],
        n_init: int = MIXTURE_DEFAULTS["n_init"],
        init_params: str = MIXTURE_DEFAULTS["init_params"],
        reg_covar: float = MIXTURE_DEFAULTS["reg_covar"],
        max_components: int = MIXTURE_DEFAULTS["max_components"],
        min_weight: float = MIXTURE_DEFAULTS["min_weight"],
        seed: int | None = None,
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.half_life = half_life
        self.step_exponent = step_exponent
        self.step_offset = step_offset
        self.warm_up = warm_up
        self.n_init = n_init
        self.init_params = init_params
        self.reg_covar = reg_covar
        self.max_components = max_components
        self.min_weight = min_weight
        self.seed = seed
        _check_core_params(self)
        self._reset()

    @classmethod
    def _unit_test_params(cls):
        yield {"n_components": 3, "warm_up": 50}
        yield {
            "n_components": 2,
            "covariance_type": "diag",
            "half_life": 300.0,
            "warm_up": 80,
            "seed": 7,
        }

    def learn_one(self, x: dict) -> None:
        """Update the mixture with one record (missing features by conditional expectation)."""
        if self._model is None:
            self._buffer_one(x)
            return
        z, missing = self._standardised(x)
        self._count_unseen(x, missing)
        if not missing:
            if self._model.learn_one(z):  # False: density underflow, not learned
                self.n_learned_ += 1
            return
        observed = ~np.isnan(z)
        if observed.any():
            self._update(z, observed)

    def learn_many(self, X) -> None:
        """Learn from the rows of a DataFrame, in order; the same as a loop of `learn_one`."""
        for x in self._iter_frame(X):
            self.learn_one(x)

    def predict_proba_one(self, x: dict) -> dict[int, float]:
        """Posterior probability of each cluster (from the provisional fit during the warm-up;
        uniform before it has one)."""
        labels, resp = self._responsibilities(x)
        if labels is None:
            return {k: float(p) for k, p in enumerate(resp)}
        return {int(k): float(p) for k, p in zip(labels, resp, strict=True)}

    def predict_one(self, x: dict) -> int:
        """Most probable cluster (the argmax of `predict_proba_one`)."""
        labels, resp = self._responsibilities(x)
        j = int(np.argmax(resp))
        return j if labels is None else int(labels[j])

    def score_one(self, x: dict) -> float:
        """Log-density of `x` in the input's units (marginal over missing features)."""
        return self._log_density(x)

    @property
    def centers(self) -> dict:
        """`{cluster: {feature: mean}}`; during the warm-up, the provisional fit's means (before
        it exists, every center is the running mean)."""
        return self._centers()
