"""Anomaly threshold and learning gate for an online mixture."""

from __future__ import annotations

import math

import numpy as np

STATE_FORMAT = "streamgmm.AnomalyGate"
STATE_VERSION = 1


class AnomalyGate:
    """Calibrated anomaly threshold that also decides what the model may learn.

    The anomaly score of a point is its negative log-density ``-log p(x)``.  The threshold is
    the ``1 - false_alarm_rate`` quantile of the scores of points drawn *from the model
    itself*, so it needs no labels and follows the model as it moves: it is recomputed after
    every ``refresh_every`` observed points.

    Points above the threshold should not be learned: otherwise a burst of anomalies grows a
    broad component that then swallows later anomalies.  But if far more points than the
    target rate are flagged for a whole window (``drift_factor`` times the rate over
    ``drift_window`` points), the world has changed rather than gone wrong: gating stops until
    the flag rate is back to normal, so the model can learn the new regime.  Nothing is gated
    while the model is still warming up (its provisional fits are too rough to judge by).

    Parameters
    ----------
    false_alarm_rate
        Target fraction of normal points flagged.
    refresh_every
        Observed points between recalibrations of the threshold.
    n_calibration
        Points drawn from the model for each calibration.
    drift_factor
        A window whose flag rate exceeds ``drift_factor * false_alarm_rate`` counts as drift.
    drift_window
        Points per drift-detection window.
    random_state
        Seed of the calibration draws (an int, or None for a fixed default of 0).

    Attributes
    ----------
    threshold : float
        The current threshold (``inf`` until the model exists).
    gating : bool
        Whether flagged points are currently kept from learning.
    drift_detected : bool
        Whether the last complete window looked like drift.

    Examples
    --------
    >>> import numpy as np
    >>> from streamgmm import OnlineGaussianMixture
    >>> from streamgmm.anomaly import AnomalyGate
    >>> rng = np.random.default_rng(1)
    >>> model = OnlineGaussianMixture(n_components=1, warm_up=500, random_state=0)
    >>> gate = AnomalyGate(false_alarm_rate=0.01, random_state=0)
    >>> flagged = 0
    >>> for batch in np.array_split(rng.normal(0, 1, (5000, 2)), 50):
    ...     thr = gate.threshold_for(model)
    ...     result = model.score_and_learn(batch, threshold=thr if gate.gating else None)
    ...     flags = -result.log_density > thr
    ...     gate.observe(flags)
    ...     flagged += int(flags.sum())
    >>> 0.003 < flagged / 5000 < 0.03
    True
    >>> thr = gate.threshold_for(model)
    >>> bool(-model.score_samples([[8.0, 8.0]])[0] > thr)
    True
    """

    def __init__(
        self,
        false_alarm_rate: float = 0.01,
        refresh_every: int = 1000,
        n_calibration: int = 2000,
        drift_factor: float = 5.0,
        drift_window: int = 1000,
        random_state: int | None = None,
    ):
        if not 0.0 < false_alarm_rate < 1.0:
            raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate!r}")
        for name, value in (
            ("refresh_every", refresh_every),
            ("n_calibration", n_calibration),
            ("drift_window", drift_window),
        ):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not drift_factor > 1.0:
            raise ValueError(f"drift_factor must be > 1, got {drift_factor!r}")
        self.false_alarm_rate = float(false_alarm_rate)
        self.refresh_every = int(refresh_every)
        self.n_calibration = int(n_calibration)
        self.drift_factor = float(drift_factor)
        self.drift_window = int(drift_window)
        self.random_state = random_state
        self.threshold = math.inf
        self.drift_detected = False
        self._n_observed = 0
        self._calibrated_at = -1
        self._n_calibrations = 0
        self._model_warming = True
        self._window_n = 0
        self._window_flagged = 0

    @property
    def gating(self) -> bool:
        return not (self._model_warming or self.drift_detected)

    def threshold_for(self, model) -> float:
        """The threshold for ``model`` now, recalibrated if due."""
        self._model_warming = bool(getattr(model, "warming_up_", True))
        if not model._has_model():
            self.threshold = math.inf
            return self.threshold
        due = self._calibrated_at < 0 or (
            self._n_observed - self._calibrated_at >= self.refresh_every
        )
        if due:
            self.calibrate(model)
        return self.threshold

    def calibrate(self, model) -> float:
        """Set the threshold from ``n_calibration`` points drawn from ``model``."""
        seed = 0 if self.random_state is None else int(self.random_state)
        rng = np.random.default_rng([seed, self._n_calibrations])
        X, _ = model._draw(self.n_calibration, rng)
        scores = -model.score_samples(X)
        self.threshold = float(np.quantile(scores, 1.0 - self.false_alarm_rate))
        self._calibrated_at = self._n_observed
        self._n_calibrations += 1
        return self.threshold

    def observe(self, flags) -> None:
        """Account for a batch's anomaly flags (drift detection, recalibration timing)."""
        flags = np.asarray(flags, dtype=bool).ravel()
        self._n_observed += flags.size
        self._window_n += flags.size
        self._window_flagged += int(flags.sum())
        if self._window_n >= self.drift_window:
            rate = self._window_flagged / self._window_n
            self.drift_detected = rate > self.drift_factor * self.false_alarm_rate
            self._window_n = 0
            self._window_flagged = 0

    def get_state(self) -> tuple[dict, dict]:
        """Plain arrays (none needed) and JSON-able metadata."""
        meta = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "params": {
                "false_alarm_rate": self.false_alarm_rate,
                "refresh_every": self.refresh_every,
                "n_calibration": self.n_calibration,
                "drift_factor": self.drift_factor,
                "drift_window": self.drift_window,
                "random_state": self.random_state,
            },
            "threshold": None if math.isinf(self.threshold) else self.threshold,
            "drift_detected": self.drift_detected,
            "n_observed": self._n_observed,
            "calibrated_at": self._calibrated_at,
            "n_calibrations": self._n_calibrations,
            "model_warming": self._model_warming,
            "window_n": self._window_n,
            "window_flagged": self._window_flagged,
        }
        return {}, meta

    @classmethod
    def from_state(cls, arrays, meta) -> AnomalyGate:
        if meta.get("format") != STATE_FORMAT or meta.get("version") != STATE_VERSION:
            raise ValueError("not a streamgmm AnomalyGate state (format/version mismatch)")
        gate = cls(**meta["params"])
        gate.threshold = math.inf if meta["threshold"] is None else float(meta["threshold"])
        gate.drift_detected = bool(meta["drift_detected"])
        gate._n_observed = int(meta["n_observed"])
        gate._calibrated_at = int(meta["calibrated_at"])
        gate._n_calibrations = int(meta["n_calibrations"])
        gate._model_warming = bool(meta["model_warming"])
        gate._window_n = int(meta["window_n"])
        gate._window_flagged = int(meta["window_flagged"])
        return gate
