"""What the River clusterer and detector share: feature schema, warm-up, scaling, missing data.

Life of an adapter:

1. **Warm-up.**  The first ``warm_up`` non-empty records are buffered (as float dicts).  The
   feature set is the union of their keys.  Meanwhile a per-feature running mean/variance gives a
   provisional diagonal-Gaussian density, so that scoring works from the first record on.
2. **Fit.**  At the end of the warm-up the features are put in canonical (sorted) order and
   standardised with the buffer's mean and standard deviation -- which makes the defaults
   independent of the data's scale (k-means++ seeding is not scale invariant) -- missing cells
   are set to the feature mean, and the core :class:`~streamgmm.OnlineGaussianMixture` is fitted
   on the buffer.
3. **Online.**  A complete record goes dict -> float64 vector -> standardised vector -> the core's
   compiled one-sample path.  An incomplete record is scored on its marginal and learned by
   missing-data EM (:mod:`streamgmm._missing`).  A feature outside the schema is ignored and
   counted in ``unseen_features_``.

Densities are reported in the units of the input: the standardisation's log-Jacobian is
subtracted, so ``-score`` is the log-density of the record as given.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streamgmm import OnlineGaussianMixture
from streamgmm._missing import learn_one_partial, marginal_log_prob

from ._features import canonical_order, count_unseen, record_values, to_vector

_LOG_2PI = math.log(2.0 * math.pi)


def _check_core_params(adapter: Any) -> None:
    """Validate the core's parameters where the adapter is built (River checks at init)."""
    OnlineGaussianMixture(**adapter._core_kwargs(warm_up=adapter.warm_up))._validate_params()


class MixtureAdapter:
    """Mixin holding the state machine; subclasses define ``__init__`` with the parameters."""

    # -- parameters ------------------------------------------------------------------------

    def _core_kwargs(self, warm_up: int) -> dict:
        return dict(
            n_components=self.n_components,
            covariance_type=self.covariance_type,
            half_life=self.half_life,
            step_exponent=self.step_exponent,
            step_offset=self.step_offset,
            warm_up=warm_up,
            n_init=self.n_init,
            init_params=self.init_params,
            reg_covar=self.reg_covar,
            random_state=self.seed,
        )

    def _reset(self) -> None:
        self._names: list = []  # canonical order, frozen once the core model exists
        self._position: dict = {}  # name -> index in _names
        self._buffer: list[dict] = []  # warm-up records
        self._stats: dict = {}  # name -> [count, mean, M2] over the warm-up records
        self._model: OnlineGaussianMixture | None = None
        self._loc = np.zeros(0)
        self._inv_scale = np.ones(0)
        self._log_scale = np.zeros(0)
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
        """Features in canonical order (the warm-up's union so far, frozen after the warm-up)."""
        if self._model is not None:
            return tuple(self._names)
        return tuple(canonical_order(self._stats))

    @property
    def warming_up_(self) -> bool:
        return self._model is None

    # -- warm-up ---------------------------------------------------------------------------

    def _warm_up_size(self) -> int:
        if self.warm_up is not None:
            return self.warm_up
        # The core's default, with D = the features seen so far.
        return max(1000, 10 * self.n_components * (len(self._stats) + 1))

    def _buffer_one(self, x: dict) -> bool:
        rec = record_values(x)
        if not rec:
            return False
        self._buffer.append(rec)
        stats = self._stats
        for name, v in rec.items():  # Welford
            s = stats.get(name)
            if s is None:
                stats[name] = [1, v, 0.0]
                continue
            s[0] += 1
            delta = v - s[1]
            s[1] += delta / s[0]
            s[2] += delta * (v - s[1])
        self.n_learned_ += 1
        if len(self._buffer) >= self._warm_up_size():
            self._finish_warm_up()
        return True

    def _finish_warm_up(self) -> None:
        names = canonical_order(self._stats)
        position = {name: i for i, name in enumerate(names)}
        loc = np.array([self._stats[n][1] for n in names])
        var = np.array([self._stats[n][2] / self._stats[n][0] for n in names])
        scale = np.sqrt(var)
        # A (nearly) constant feature keeps unit scale: dividing by ~0 would blow it up.
        degenerate = ~(scale > 1e-12 * np.maximum(1.0, np.abs(loc)))
        scale[degenerate] = 1.0
        z = np.zeros((len(self._buffer), len(names)))  # missing cells at the mean
        for i, rec in enumerate(self._buffer):
            for name, v in rec.items():
                j = position[name]
                z[i, j] = (v - loc[j]) / scale[j]
        model = OnlineGaussianMixture(**self._core_kwargs(warm_up=len(self._buffer)))
        model.fit(z)
        self._model = model
        self._names = names
        self._position = position
        self._loc = loc
        self._inv_scale = 1.0 / scale
        self._log_scale = np.log(scale)
        self._log_scale_sum = float(self._log_scale.sum())
        self._buffer = []
        self._stats = {}
        self._on_fitted()

    def _on_fitted(self) -> None:
        """Hook for subclasses (the detector calibrates its threshold here)."""

    def _provisional_log_density(self, x: dict) -> float:
        """Diagonal Gaussian of the warm-up's running moments, on the features it knows."""
        rec = record_values(x)
        log_density = 0.0
        for name in canonical_order(rec):  # a fixed order: sums must not depend on key order
            v = rec[name]
            s = self._stats.get(name)
            if s is None or s[0] < 2:
                continue
            n, mean, m2 = s
            # Regularised as the core does: reg_covar relative to the variance, or absolute
            # for a feature that has been constant so far.
            var = m2 / n
            var = var * (1.0 + self.reg_covar) if var > 0 else max(self.reg_covar, 1e-12)
            log_density -= 0.5 * ((v - mean) ** 2 / var + _LOG_2PI + math.log(var))
        return log_density

    # -- online ----------------------------------------------------------------------------

    def _standardised(self, x: dict) -> tuple[np.ndarray, bool]:
        v, missing = to_vector(x, self._names)
        v -= self._loc
        v *= self._inv_scale
        return v, missing

    def _count_unseen(self, x: dict, missing: bool) -> None:
        # Complete vector and as many keys as features: nothing else can be in x.
        if missing or len(x) != len(self._names):
            self.n_unseen_ += count_unseen(x, self._position, self.unseen_features_)

    def _log_density_z(self, z: np.ndarray, missing: bool) -> tuple[float, np.ndarray | None]:
        """Log-density in standardised units; the observed mask when the record is partial."""
        if not missing:
            return self._model._score_one(z), None
        observed = ~np.isnan(z)
        if not observed.any():
            return 0.0, observed
        ld, _ = marginal_log_prob(self._model, z, observed)
        return ld, observed

    def _to_input_units(self, log_density_z: float, observed: np.ndarray | None) -> float:
        if observed is None:
            return log_density_z - self._log_scale_sum
        return log_density_z - float(self._log_scale[observed].sum())

    def _log_density(self, x: dict) -> float:
        """Log-density of `x` (in its own units), marginalised over missing features."""
        if self._model is None:
            return self._provisional_log_density(x)
        z, missing = self._standardised(x)
        ld, observed = self._log_density_z(z, missing)
        return self._to_input_units(ld, observed)

    def _update(self, z: np.ndarray, observed: np.ndarray | None) -> None:
        if observed is None:
            self._model._learn_one(z)
        else:
            learn_one_partial(self._model, z, observed)
        self.n_learned_ += 1

    def _responsibilities(self, x: dict) -> np.ndarray:
        k = self.n_components
        if self._model is None:
            return np.full(k, 1.0 / k)
        z, missing = self._standardised(x)
        if not missing:
            return self._model._proba_one(z)[1]
        observed = ~np.isnan(z)
        _, resp = marginal_log_prob(self._model, z, observed)
        return resp

    def _centers(self) -> dict:
        k = self.n_components
        if self._model is None:
            if not self._stats:
                return {}
            mean = {name: s[1] for name, s in self._stats.items()}
            return {c: dict(mean) for c in range(k)}
        means = np.asarray(self._model.means_) / self._inv_scale + self._loc
        return {
            c: {name: float(means[c, j]) for j, name in enumerate(self._names)} for c in range(k)
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
