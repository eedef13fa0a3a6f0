"""Gaussian mixture anomaly detector for River, with a calibrated threshold and gated learning."""

from __future__ import annotations

import math

import numpy as np
from river import base

from streamgmm.anomaly import AnomalyGate

from ._base import MixtureAdapter, _check_core_params

__all__ = ["GaussianMixtureDetector"]

# Flags reach the gate in chunks of at most this many records: one call per record would cost
# more than the whole per-record update, and the gate's windows are ~1000 records long.
_FLAG_CHUNK = 64


class GaussianMixtureDetector(MixtureAdapter, base.AnomalyDetector):
    """Anomaly detector scoring records by their negative log-density under an online mixture.

    `score_one(x)` is `-log p(x)` under the Gaussian mixture as it is before `x` is learned
    (higher = more anomalous, River's convention), in the units of `x`.  The mixture is the one
    of :class:`streamgmm.river.GaussianMixture`: warm-up batch fit, then one compiled
    stochastic-EM step per record, features standardised internally (no scaler needed), missing
    features marginalised, unseen features ignored and counted.

    Learning is gated.  An :class:`streamgmm.anomaly.AnomalyGate` calibrates a threshold on the
    score at the target `false_alarm_rate` from the model itself, and refreshes it as the model
    moves; a record scoring above it is not learned, so that a burst of anomalies does not grow
    into a "normal" component that would hide the next ones.  If far more records than the
    target rate are flagged for a sustained period (`drift_factor` times the rate over
    `drift_window` records), the stream has drifted: the gate opens and the model learns from
    everything until the flag rate is normal again.  `threshold` and `is_anomaly` expose the
    decision.  A partial record is compared with the same threshold on its marginal score.

    Parameters
    ----------
    n_components
        Number of mixture components.
    covariance_type
        'full', 'diag', 'spherical' or 'tied'.
    half_life
        Forgetting half-life in samples; `None` for a stationary stream.
    step_exponent
        Exponent of the Robbins-Monro step size.
    step_offset
        Offset of the step size.
    warm_up
        Records buffered before the first batch fit; `None` means
        `max(1000, 10 * n_components * (n_features + 1))`.  During the warm-up records are
        scored by a diagonal Gaussian of the running moments.
    n_init
        Initialisations of the warm-up fit.
    init_params
        Seeding of the warm-up fit.
    reg_covar
        Covariance regularisation, in standardised units.
    false_alarm_rate
        Target fraction of normal records above the threshold.
    refresh_every
        The threshold is recalibrated every this many records.
    n_calibration
        Samples drawn from the model to calibrate the threshold.
    drift_factor
        Flag rate, as a multiple of `false_alarm_rate`, taken as drift.
    drift_window
        Records over which the flag rate is measured.
    gating
        Whether flagged records are kept out of the model.
    seed
        Random seed: with a seed, results are exactly reproducible.

    Attributes
    ----------
    threshold
        Current threshold on the score (`inf` until the warm-up has ended).
    model_
        The underlying :class:`streamgmm.OnlineGaussianMixture` (`None` during the warm-up).
    gate_
        The :class:`streamgmm.anomaly.AnomalyGate`.
    n_flagged_
        Records flagged by `learn_one` (after the warm-up).
    n_learned_
        Records learned.
    unseen_features_
        `{feature: count}` of ignored features.
    n_unseen_
        Total number of ignored feature values.

    Examples
    --------
    >>> import random
    >>> from streamgmm.river import GaussianMixtureDetector

    >>> rng = random.Random(1)
    >>> detector = GaussianMixtureDetector(warm_up=300, seed=42)
    >>> for _ in range(2000):
    ...     detector.learn_one({"a": rng.gauss(10.0, 1.0), "b": rng.gauss(-3.0, 0.1)})

    >>> normal, odd = {"a": 10.2, "b": -3.05}, {"a": 10.2, "b": -2.0}
    >>> detector.score_one(normal) < detector.threshold < detector.score_one(odd)
    True
    >>> detector.is_anomaly(odd), detector.is_anomaly({"a": 10.5})  # "b" missing
    (True, False)

    In a pipeline with River's filters:

    >>> from river import anomaly
    >>> model = anomaly.QuantileFilter(GaussianMixtureDetector(warm_up=100, seed=0), q=0.99)

    References
    ----------
    Cappé, O. and Moulines, E. (2009). On-line expectation-maximization algorithm for latent
    data models. JRSS B 71(3).

    """

    def __init__(
        self,
        n_components: int = 1,
        covariance_type: str = "full",
        half_life: float | None = None,
        step_exponent: float = 0.8,
        step_offset: float = 2.0,
        warm_up: int | None = None,
        n_init: int = 3,
        init_params: str = "k-means++",
        reg_covar: float = 1e-6,
        false_alarm_rate: float = 0.01,
        refresh_every: int = 1000,
        n_calibration: int = 2000,
        drift_factor: float = 10.0,
        drift_window: int = 1000,
        gating: bool = True,
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
        self.false_alarm_rate = false_alarm_rate
        self.refresh_every = refresh_every
        self.n_calibration = n_calibration
        self.drift_factor = drift_factor
        self.drift_window = drift_window
        self.gating = gating
        self.seed = seed
        _check_core_params(self)
        self._reset()  # builds the AnomalyGate, which validates its own parameters

    def _reset(self) -> None:
        super()._reset()
        self.gate_ = AnomalyGate(
            false_alarm_rate=self.false_alarm_rate,
            refresh_every=self.refresh_every,
            n_calibration=self.n_calibration,
            drift_factor=self.drift_factor,
            drift_window=self.drift_window,
            random_state=self.seed,
        )
        self._threshold_z = math.inf  # in standardised units, as the gate computes it
        self._flags: list[bool] = []
        self.n_flagged_ = 0
        self._cache = None

    @classmethod
    def _unit_test_params(cls):
        yield {"warm_up": 50}
        yield {
            "n_components": 2,
            "covariance_type": "diag",
            "warm_up": 100,
            "half_life": 500.0,
            "false_alarm_rate": 0.02,
            "refresh_every": 200,
            "n_calibration": 500,
            "drift_window": 200,
            "seed": 3,
        }

    # -- gate ------------------------------------------------------------------------------

    def _on_fitted(self) -> None:
        self._threshold_z = float(self.gate_.threshold_for(self._model))

    def _observe(self, flagged: bool) -> None:
        flags = self._flags
        flags.append(flagged)
        if len(flags) >= min(_FLAG_CHUNK, self.refresh_every, self.drift_window):
            self.gate_.observe(np.array(flags, dtype=bool))
            flags.clear()
            self._threshold_z = float(self.gate_.threshold_for(self._model))

    @property
    def threshold(self) -> float:
        """Threshold on `score_one` above which a record is anomalous (`inf` during warm-up)."""
        return self._threshold_z + self._log_scale_sum

    # -- River API -------------------------------------------------------------------------

    def score_one(self, x: dict) -> float:
        """Negative log-density of `x` (marginal over missing features); no state change."""
        if self._model is None:
            return 0.0 - self._provisional_log_density(x)  # 0.0 - 0.0, not -0.0
        z, missing = self._standardised(x)
        ld, observed = self._log_density_z(z, missing)
        if observed is None:
            # The prequential loop scores x then learns it: keep what learn_one would recompute.
            # A cache, not state: dropped from pickles/copies, keyed on a copy of x and on the
            # number of updates so far.
            self._cache = (dict(x), z, ld, self.n_learned_)
        return -self._to_input_units(ld, observed)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    def is_anomaly(self, x: dict) -> bool:
        """Whether `score_one(x)` exceeds the calibrated threshold; no state change."""
        return self.score_one(x) > self.threshold

    def learn_one(self, x: dict) -> None:
        """Learn `x` unless the gate flags it as an anomaly."""
        model = self._model
        if model is None:
            self._buffer_one(x)
            return
        cache = self._cache
        if cache is not None and cache[3] == self.n_learned_ and cache[0] == x:
            z, missing, ld = cache[1], False, cache[2]
        else:
            z, missing = self._standardised(x)
            ld = None
        self._cache = None
        self._count_unseen(x, missing)
        thr = self._threshold_z
        if not missing:
            if self.gating and self.gate_.gating and thr < math.inf:
                # Score first: a flagged record must not touch the model.
                if ld is None:
                    ld = model._score_one(z)
                flagged = -ld > thr
                if not flagged and model._learn_one(z) > -math.inf:
                    self.n_learned_ += 1
            else:
                ld = model._learn_one(z)  # -inf: density underflow, the core did not learn
                flagged = -ld > thr
                if ld > -math.inf:
                    self.n_learned_ += 1
        else:
            ld, observed = self._log_density_z(z, missing)
            if not observed.any():
                return  # nothing known about this record: nothing to learn, nothing to judge
            flagged = -ld > thr
            if not (flagged and self.gating and self.gate_.gating):
                self._update(z, observed)
        if flagged:
            self.n_flagged_ += 1
        self._observe(flagged)

    def learn_many(self, X) -> None:
        """Learn from the rows of a DataFrame, in order; the same as a loop of `learn_one`."""
        for x in self._iter_frame(X):
            self.learn_one(x)
