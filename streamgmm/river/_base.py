"""What the River clusterer and detector share: feature schema, warm-up, scaling, missing data.

Life of an adapter:

1. **Warm-up.**  The first ``warm_up`` non-empty records are buffered (as float dicts) and their
   keys counted in bounded memory (:class:`~._features.FrequentKeys`), with the running mean and
   variance of each key, which give a provisional diagonal-Gaussian density so that scoring works
   from the first record on.  The clusterer also fits a provisional mixture on the buffer each
   time it has doubled, and predicts from it.
2. **Schema and fit.**  At the end of the warm-up the features are the keys present in at least
   :data:`~._features.MIN_FEATURE_FREQUENCY` (5%) of the warm-up's records, and in at least two:
   a key seen once (a record id, a one-off tag) is not a feature.  With ``warm_up=None`` the
   warm-up lasts the core's default ``max(1000, 2 K (D + 1))`` records with D the number of
   features under that rule, so it ends on schedule whatever keys come and go.  If no key
   recurs, the warm-up starts over.  The features are put in canonical (sorted) order and
   standardised with the buffer's mean and standard deviation -- which makes the defaults
   independent of the data's scale (k-means++ seeding is not scale invariant) -- missing cells
   are set to the feature mean, and the core :class:`~streamgmm.OnlineGaussianMixture` is fitted
   on the buffer.
3. **Online.**  A complete record goes dict -> float64 vector -> standardised vector -> the core's
   public one-row methods (``learn_one``, ``score_one``, ``predict_proba_one``), a compiled path.
   An incomplete record goes through the same methods with an ``observed`` mask: scored on its
   marginal, learned by missing-data EM.  A key outside the schema is ignored and counted in
   ``unseen_features_``.

Densities are reported in the units of the input: the standardisation's log-Jacobian is
subtracted, so ``-score`` is the log-density of the record as given.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.utils._param_validation import InvalidParameterError

from streamgmm import OnlineGaussianMixture
from streamgmm.online import default_warm_up

from ._features import (
    MIN_FEATURE_FREQUENCY,
    FrequentKeys,
    canonical_order,
    count_unseen,
    min_count,
    record_values,
    standardised_vector,
)

_LOG_2PI = math.log(2.0 * math.pi)

# The adapters' parameters that the core takes under the same name: the core's own parameter
# spec is the one list (``warm_up`` and the seed are the adapter's business).
_CORE_PARAMETERS = frozenset(OnlineGaussianMixture._parameter_constraints) - {
    "warm_up",
    "random_state",
}


def _check_core_params(adapter: Any) -> None:
    """Validate the core's parameters where the adapter is built (River checks at init); the
    error names the adapter, whose parameters they are."""
    try:
        OnlineGaussianMixture(**adapter._core_kwargs(warm_up=adapter.warm_up))._validate_params()
    except InvalidParameterError as e:
        raise InvalidParameterError(
            str(e).replace("OnlineGaussianMixture", type(adapter).__name__, 1)
        ) from None


def _least_components(n_components) -> int:
    """Components a fit needs at least (1 for ``"auto"``)."""
    return 1 if n_components == "auto" else n_components


class _Fit:
    """A schema, its standardisation and a core model fitted on standardised records.

    ``labels[j]`` is the public cluster label of the core's component ``j``: a refit may order
    its components differently, and the labels keep a cluster's name across refits.  ``None``
    means the identity (no per-prediction relabelling on the hot path).  Online, with
    ``n_components="auto"``, the core's stable component ids map to labels
    (:meth:`MixtureAdapter._current_labels`): a born component gets a new label, a merge
    keeps the older one.
    """

    def __init__(self, names, loc, scale, model, labels):
        self.names = names
        self.position = {name: j for j, name in enumerate(names)}
        self.loc = loc
        self.inv_scale = 1.0 / scale
        self.log_scale = np.log(scale)
        self.log_scale_sum = float(self.log_scale.sum())
        self.model = model
        self.labels = labels

    def standardised(self, x: dict) -> tuple[np.ndarray, bool]:
        return standardised_vector(x, self.names, self.loc, self.inv_scale)

    def log_density_z(self, z: np.ndarray, missing: bool) -> tuple[float, np.ndarray | None]:
        """Log-density in standardised units; the observed mask when the record is partial."""
        if not missing:
            return self.model.score_one(z), None
        observed = ~np.isnan(z)
        if not observed.any():
            return 0.0, observed
        return self.model.score_one(z, observed), observed

    def to_input_units(self, log_density_z: float, observed: np.ndarray | None) -> float:
        if observed is None:
            return log_density_z - self.log_scale_sum
        return log_density_z - float(self.log_scale[observed].sum())

    def log_density(self, x: dict) -> float:
        z, missing = self.standardised(x)
        return self.to_input_units(*self.log_density_z(z, missing))

    def responsibilities(self, x: dict) -> np.ndarray:
        """Posterior probability of each component (core order), marginal if x is partial."""
        z, missing = self.standardised(x)
        if not missing:
            return self.model.predict_proba_one(z)
        return self.model.predict_proba_one(z, ~np.isnan(z))

    def means(self) -> np.ndarray:
        """Component means in input units, shape (K, D)."""
        return np.asarray(self.model.means_) / self.inv_scale + self.loc


def _matching_labels(previous: _Fit | None, new: _Fit) -> np.ndarray | None:
    """Labels for `new`'s components: each takes the label of the nearest previous cluster.

    Nearest in the new standardised units over the features both fits share, one-to-one
    (Hungarian assignment; the fits may differ in K with ``"auto"``: components left over get
    new labels); ``None`` (identity) when there is nothing to match.
    """
    if previous is None:
        return None
    n_components = new.model.n_components_
    shared = [name for name in new.names if name in previous.position]
    if not shared:
        return None
    old_cols = [previous.position[name] for name in shared]
    new_cols = [new.position[name] for name in shared]
    old = previous.means()[:, old_cols] * new.inv_scale[new_cols]
    cur = new.means()[:, new_cols] * new.inv_scale[new_cols]
    cost = ((old[:, None, :] - cur[None, :, :]) ** 2).sum(axis=2)
    old_components, new_components = linear_sum_assignment(cost)
    identity = np.arange(n_components)
    n_old = previous.model.n_components_
    old_labels = np.arange(n_old) if previous.labels is None else previous.labels
    labels = np.full(n_components, -1)
    labels[new_components] = old_labels[old_components]
    unmatched = labels < 0
    labels[unmatched] = old_labels.max() + 1 + np.arange(int(unmatched.sum()))
    return None if np.array_equal(labels, identity) else labels


class MixtureAdapter:
    """Mixin holding the state machine; subclasses define ``__init__`` with the parameters."""

    # Whether to fit a provisional mixture while warming up (the clusterer predicts from it).
    _fits_during_warm_up = False

    # -- parameters ------------------------------------------------------------------------

    def _core_kwargs(self, warm_up: int | None, **overrides) -> dict:
        params = {k: v for k, v in self._get_params().items() if k in _CORE_PARAMETERS}
        return {**params, "warm_up": warm_up, "random_state": self.seed, **overrides}

    def _reset(self) -> None:
        self._keys: FrequentKeys | None = FrequentKeys()  # the warm-up's keys
        self._buffer: list[dict] = []  # warm-up records
        self._next_check = self._warm_up_size()  # buffer size at which to check the warm-up
        self._provisional: _Fit | None = None
        self._provisional_n = 0  # buffer size of the last provisional fit
        self._fit: _Fit | None = None
        # Aliases of the final fit's fields (hot paths and subclasses read them).
        self._model: OnlineGaussianMixture | None = None
        self._names: list = []
        self._position: dict = {}
        self._loc = np.zeros(0)
        self._inv_scale = np.ones(0)
        self._log_scale_sum = 0.0
        self.unseen_features_: dict = {}
        self.n_unseen_ = 0
        self.n_learned_ = 0

    # -- public read-only views ------------------------------------------------------------

    @property
    def model_(self) -> OnlineGaussianMixture | None:
        """The underlying core model (None during the warm-up)."""
        return self._model

    @property
    def feature_names_in_(self) -> tuple:
        """Features in canonical order: the schema after the warm-up, its rule applied so far
        during the warm-up."""
        if self._model is not None:
            return tuple(self._names)
        return tuple(canonical_order(self._keys.frequent(MIN_FEATURE_FREQUENCY)))

    @property
    def warming_up_(self) -> bool:
        return self._model is None

    # -- warm-up ---------------------------------------------------------------------------

    def _warm_up_size(self) -> int:
        k = self.n_components
        if self.warm_up is not None:
            return max(self.warm_up, _least_components(k), 2)
        # The core's default (OnlineGaussianMixture's warm_up=None), with D = the features
        # under the schema rule so far.
        n_features = len(self._keys.frequent(MIN_FEATURE_FREQUENCY))
        return default_warm_up(k, n_features)

    def _buffer_one(self, x: dict) -> bool:
        rec = record_values(x)
        if not rec:
            return False
        self._buffer.append(rec)
        self._keys.add(rec)
        self.n_learned_ += 1
        n = len(self._buffer)
        if n >= self._next_check:
            self._next_check = self._warm_up_size()
            if n >= self._next_check:
                self._finish_warm_up()
                return True
        least = _least_components(self.n_components)
        if self._fits_during_warm_up and n >= max(least, 2, 2 * self._provisional_n):
            # Refitted each time the buffer doubles: O(final fit) in all.
            fit = self._fit_buffer(n_init=1)
            if fit is not None:
                self._provisional = fit
            self._provisional_n = n
        return True

    def _schema(self) -> list:
        """The buffer's keys present in at least MIN_FEATURE_FREQUENCY of its records.

        The counter's table holds every candidate; their counts are made exact here.
        """
        counts = dict.fromkeys(self._keys, 0)
        for rec in self._buffer:
            for name in rec:
                if name in counts:
                    counts[name] += 1
        least = min_count(MIN_FEATURE_FREQUENCY, len(self._buffer))
        return canonical_order([name for name, c in counts.items() if c >= least])

    def _fit_buffer(self, n_init: int) -> _Fit | None:
        """Schema, standardisation and core model from the buffer; None if nothing recurs."""
        names = self._schema()
        position = {name: j for j, name in enumerate(names)}
        X = np.full((len(self._buffer), len(names)), np.nan)
        for i, rec in enumerate(self._buffer):
            for name, v in rec.items():
                j = position.get(name)
                if j is not None:
                    X[i, j] = v
        X = X[~np.isnan(X).all(axis=1)]  # records with no feature of the schema
        if not names or len(X) < max(_least_components(self.n_components), 2):
            return None
        loc = np.nanmean(X, axis=0)
        scale = np.sqrt(np.nanvar(X, axis=0))
        # A (nearly) constant feature keeps unit scale: dividing by ~0 would blow it up.
        scale[~(scale > 1e-12 * np.maximum(1.0, np.abs(loc)))] = 1.0
        z = (X - loc) / scale
        z[np.isnan(z)] = 0.0  # missing cells at the mean
        model = OnlineGaussianMixture(**self._core_kwargs(warm_up=len(z), n_init=n_init))
        model._extra_starts = False  # the stream warm-up's starts (see OnlineGaussianMixture)
        model.fit(z)
        fit = _Fit(names, loc, scale, model, labels=None)
        fit.labels = _matching_labels(self._provisional, fit)
        return fit

    def _finish_warm_up(self) -> None:
        fit = self._fit_buffer(n_init=self.n_init)
        self._buffer = []
        self._provisional = None
        self._provisional_n = 0
        if fit is None:  # no key recurs: start over, memory stays bounded
            self._keys = FrequentKeys()
            self._next_check = self._warm_up_size()
            return
        self._keys = None
        self._fit = fit
        self._model = fit.model
        self._names = fit.names
        self._position = fit.position
        self._loc = fit.loc
        self._inv_scale = fit.inv_scale
        self._log_scale_sum = fit.log_scale_sum
        # Online, labels follow the core's stable component ids (K changes with "auto").
        labels = np.arange(fit.model.n_components_) if fit.labels is None else fit.labels
        self._label_of_id = {
            int(i): int(label) for i, label in zip(fit.model.component_ids_, labels, strict=True)
        }
        self._next_label = int(labels.max()) + 1
        self._ids_seen = None
        self._on_fitted()

    def _current_labels(self, fit: _Fit) -> np.ndarray | None:
        """Label of each of ``fit``'s components now (None: the identity)."""
        if fit is not self._fit or fit.model.n_components != "auto":
            return fit.labels
        ids = fit.model.component_ids_  # the same array until K changes
        if ids is self._ids_seen:
            return self._labels_now
        labels = np.empty(ids.shape[0], dtype=np.int64)
        for j, i in enumerate(ids.tolist()):
            if i not in self._label_of_id:  # born: a new label
                self._label_of_id[i] = self._next_label
                self._next_label += 1
            labels[j] = self._label_of_id[i]
        self._ids_seen = ids
        self._labels_now = None if np.array_equal(labels, np.arange(ids.shape[0])) else labels
        return self._labels_now

    def _on_fitted(self) -> None:
        """Hook for subclasses (the detector calibrates its threshold here)."""

    def _provisional_log_density(self, x: dict) -> float:
        """Diagonal Gaussian of the warm-up's running moments, on the features it knows."""
        rec = record_values(x)
        keys = self._keys
        log_density = 0.0
        for name in canonical_order(rec):  # a fixed order: sums must not depend on key order
            if name not in keys:
                continue
            n, mean, m2 = keys.moments(name)
            if n < 2:
                continue
            # Regularised as the core does: reg_covar relative to the variance, or absolute
            # for a feature that has been constant so far.
            var = m2 / n
            var = var * (1.0 + self.reg_covar) if var > 0 else max(self.reg_covar, 1e-12)
            log_density -= 0.5 * ((rec[name] - mean) ** 2 / var + _LOG_2PI + math.log(var))
        return log_density

    # -- online ----------------------------------------------------------------------------

    def _standardised(self, x: dict) -> tuple[np.ndarray, bool]:
        return self._fit.standardised(x)

    def _count_unseen(self, x: dict, missing: bool) -> None:
        # Complete vector and as many keys as features: nothing else can be in x.
        if missing or len(x) != len(self._names):
            self.n_unseen_ += count_unseen(x, self._position, self.unseen_features_)

    def _log_density_z(self, z: np.ndarray, missing: bool) -> tuple[float, np.ndarray | None]:
        """Log-density in standardised units; the observed mask when the record is partial."""
        return self._fit.log_density_z(z, missing)

    def _to_input_units(self, log_density_z: float, observed: np.ndarray | None) -> float:
        return self._fit.to_input_units(log_density_z, observed)

    def _log_density(self, x: dict) -> float:
        """Log-density of `x` (in its own units), marginalised over missing features."""
        fit = self._fit or self._provisional
        if fit is None:
            return self._provisional_log_density(x)
        return fit.log_density(x)

    def _update(self, z: np.ndarray, observed: np.ndarray | None) -> None:
        if self._model.learn_one(z, observed):
            self.n_learned_ += 1

    def _responsibilities(self, x: dict) -> tuple[np.ndarray | None, np.ndarray]:
        """``(labels, probabilities)`` of the clusters; labels None means ``0..K-1``."""
        fit = self._fit or self._provisional
        if fit is None:
            k = _least_components(self.n_components)
            return None, np.full(k, 1.0 / k)
        return self._current_labels(fit), fit.responsibilities(x)

    def _centers(self) -> dict:
        fit = self._fit or self._provisional
        if fit is None:
            names = self.feature_names_in_
            if not names:
                return {}
            mean = {name: self._keys.moments(name)[1] for name in names}
            return {c: dict(mean) for c in range(_least_components(self.n_components))}
        means = fit.means()
        labels = self._current_labels(fit)
        labels = range(means.shape[0]) if labels is None else labels
        return {
            int(label): {name: float(means[j, i]) for i, name in enumerate(fit.names)}
            for j, label in enumerate(labels)
        }

    def _iter_frame(self, X):
        """Rows of a DataFrame as dicts, missing cells dropped (same as learn_one on dicts)."""
        columns = list(X.columns)
        for row in X.itertuples(index=False, name=None):
            yield {
                c: v
                for c, v in zip(columns, row, strict=True)
                if not (v is None or (isinstance(v, float) and v != v))
            }
