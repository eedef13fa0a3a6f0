"""Anomaly decisions for an online mixture: tail probability, threshold, learning gate, drift.

One gate step (:meth:`AnomalyGate.score_and_learn` for a batch, :meth:`AnomalyGate.decide_one`
and :meth:`AnomalyGate.account_one` for one record) serves the stream processor and the River
detector alike.
"""

from __future__ import annotations

import bisect
import logging
import math
from typing import NamedTuple

import numpy as np
from river import drift
from sklearn.base import BaseEstimator

from streamgmm._gate_spec import GATE_DEFAULTS, gate_constraints, validate_gate_params
from streamgmm._params import CachedParamNames
from streamgmm.online import MAX_ABS_VALUE, half_life_step

__all__ = ["AnomalyGate", "GateResult"]

log = logging.getLogger("streamgmm.anomaly")

STATE_FORMAT = "streamgmm.AnomalyGate"
STATE_VERSION = 3  # 3: the reference as knots (+ their indices); 2 (the full sample) is read
READ_STATE_VERSIONS = (2, 3)

# Rows per model call in the batch step: a detected change takes effect within this many rows
# (and a batch of several thousand rows would otherwise be judged by one stale model).
CHUNK = 64
# Smaller chunks and faster recalibration while the model re-adapts after a change.
ADAPT_CHUNK = 8
ADAPT_REFRESH = 8
# While re-adapting, the tail is loosened (power down to ADAPT_MIN_POWER) from this many
# post-change scores on.
ADAPT_MIN_RECENT = 8
ADAPT_MIN_POWER = 0.2
# Small chunks already while the change detector's statistic passes this fraction of its
# threshold: the rows after a detection must not all have been judged by the old model.
SUSPECT_FRACTION = 0.25
# After the warm-up or a change, the first few refreshes come this often (and the stream check
# needs this many recent scores): a model that does not fit is caught within a few hundred records.
EARLY_REFRESH = 200
N_EARLY = 5
# ...and after the warm-up the very first ones sooner still (FIRST_CHECK records, then doubling
# up to EARLY_REFRESH; also in the warm-up, after each provisional fit): a model whose own
# samples misjudge real records (lattice-valued features: digits, Phishing) would otherwise flag
# a fifth of the records until the first check.
FIRST_CHECK = 50
# The stream replaces the model's samples as the reference only if the model also misjudges the
# bulk: more than BULK_FACTOR * BULK_LEVEL of the stream above the model's BULK_LEVEL quantile.
BULK_LEVEL = 0.1
BULK_FACTOR = 1.5
# More than this share of the stream beyond the threshold is not a share of anomalies: the
# model misjudges the data (lattice-valued features), even where its bulk looks right.
MAX_ANOMALY_SHARE = 0.1
# The exponential tail is fitted to this many top reference scores (at least).
TAIL_FIT = 10
# The change detector sees the surprise -log(tail) clipped here: one extreme anomaly must not
# look like a change by itself.
SURPRISE_CAP = 8.0
# The change detector sees the median surprise of blocks of this many records.
DRIFT_BLOCK = 5
# PageHinkley's allowance per record (in nats of surprise, whose mean is 1 on calibrated data).
DRIFT_DELTA = 0.5
# Consecutive refresh windows with an excessive flag rate before a warning.
ALARM_WINDOWS = 3
# Up to this many rows, a gate step goes row by row (score_and_learn_few): cheaper than a batch
# step's arrays and segments for a model per key that sees a row or two per batch.
FEW_ROWS = 3
# The reference's bulk is kept as this many knots of its empirical survival curve (half evenly
# spaced in rank, half in log survival, so the far tail where the thresholds lie stays dense):
# a gate per key then holds ~1 KiB of reference instead of n_calibration scores.
REF_KNOTS = 64


class GateResult(NamedTuple):
    """What :meth:`AnomalyGate.score_and_learn` returns for a batch (one entry per row)."""

    log_density: np.ndarray
    proba: np.ndarray
    tail_probability: np.ndarray
    anomaly: np.ndarray
    learned: np.ndarray
    threshold: np.ndarray


class AnomalyGate(CachedParamNames, BaseEstimator):
    """Calibrated tail probability, anomaly threshold and learning gate of an online mixture.

    **Score and tail probability.**  The score of a record is ``-log p(x)`` under the model as
    it was before the record (prequential).  Its *tail probability* is the probability that a
    normal record scores at least as high: bounded in [0, 1], uniform on calibrated normal
    data, so thresholds and River's metrics mean what users expect.  It is read from a
    *reference* distribution of scores: ``n_calibration`` records drawn from the model itself
    (empirical survival function, and beyond its top an exponential tail fitted to the top
    scores, so that extreme records keep distinct, strictly decreasing tail probabilities).
    The reference is refreshed every ``refresh_every`` records as the model moves.

    **Checked against the stream.**  On non-Gaussian data the model's own samples are
    optimistic (real records score worse than the model's).  At each refresh the gate counts
    how many of the last ``n_recent`` scores lie above the model-calibrated threshold; if more
    than ``stream_factor`` times the target while the model misjudges the bulk too, or more
    than a tenth of the stream, the stream's own recent scores become the reference
    (``calibration_source_ == "stream"``).  The first checks come soon: 50 records after the
    warm-up (then 100, 200; after a change 200), and during the warm-up 50 records after each
    provisional fit, against the records that fit scored.  While the model warms up a record's
    tail is also never below its rank among the earlier warm-up records' tails (a conformal
    p-value: a few hundred records and a provisional fit cannot support a claim about a 1%
    tail, only about a record beyond nearly all of them).  If the realised flag rate still stays
    above ``stream_factor`` times the target for three refresh windows, the gate logs a warning
    and counts it in ``n_rate_warnings_`` (``flag_rate_alarm_`` is set while it lasts).

    **Flag and gate.**  A record is flagged when its tail probability is below
    ``false_alarm_rate``, i.e. its score exceeds ``threshold_``.  It is kept out of the model
    only when far more extreme: tail probability below ``exclusion_ratio * false_alarm_rate``
    (``exclusion_threshold_``), and never more than a tenth of the recent stream.  Dropping
    every flagged record would truncate the normal tail and shrink the learned covariance (then
    more is flagged, and so on); dropping only the far tail keeps the bias negligible while a
    burst of true anomalies still cannot grow a broad component that would swallow later ones.
    Nothing is gated while the model warms up.

    **Drift.**  River's :class:`river.drift.PageHinkley` watches the surprise
    ``min(-log tail, 8)`` (mean 1 on calibrated data).  When it detects a rise, the gate opens
    (every record is learned), the model's step is raised to that of a half-life of
    ``adapt_half_life`` records for ``adapt_records`` records, and the reference is refreshed
    every few dozen records, so the model settles on the new regime within a few hundred
    records instead of a few thousand.

    Parameters
    ----------
    false_alarm_rate, exclusion_ratio, refresh_every, n_calibration, n_recent, stream_factor,
    drift_detection, drift_threshold, adapt_half_life, adapt_records, gating, random_state
        See :data:`streamgmm._gate_spec.GATE_PARAMETERS` (the one spec shared with the River
        detector and the service configuration).

    Attributes
    ----------
    threshold_ : float
        Current threshold on the score (``inf`` until the model exists).
    exclusion_threshold_ : float
        Scores above it are not learned (while gating).
    calibration_source_ : str or None
        ``"model"`` or ``"stream"``: where the reference scores come from.
    n_observed_, n_flagged_, n_excluded_ : int
        Records judged, flagged, kept out of the model.
    recent_flag_rate_ : float
        Flag rate over the last complete refresh window (NaN before one).
    flag_rate_alarm_ : bool
        Whether the flag rate has stayed far above the target (see above).
    n_rate_warnings_ : int
        Warnings issued about it.
    n_drifts_ : int
        Changes detected.
    adapting_ : bool
        Whether the model is re-adapting after a change.

    Examples
    --------
    >>> import numpy as np
    >>> from streamgmm import OnlineGaussianMixture
    >>> from streamgmm.anomaly import AnomalyGate
    >>> rng = np.random.default_rng(1)
    >>> model = OnlineGaussianMixture(n_components=1, warm_up=500, random_state=0)
    >>> gate = AnomalyGate(false_alarm_rate=0.01, random_state=0)
    >>> result = gate.score_and_learn(model, rng.normal(0, 1, (20000, 2)))
    >>> bool(0.0075 < result.anomaly[1000:].mean() < 0.0125)
    True
    >>> odd = gate.score_and_learn(model, np.array([[8.0, 8.0]]))
    >>> bool(odd.anomaly[0]), bool(odd.learned[0]), float(odd.tail_probability[0]) < 1e-6
    (True, False, True)
    """

    _parameter_constraints: dict = gate_constraints()

    def __init__(
        self,
        false_alarm_rate: float = GATE_DEFAULTS["false_alarm_rate"],
        exclusion_ratio: float = GATE_DEFAULTS["exclusion_ratio"],
        refresh_every: int = GATE_DEFAULTS["refresh_every"],
        n_calibration: int = GATE_DEFAULTS["n_calibration"],
        n_recent: int = GATE_DEFAULTS["n_recent"],
        stream_factor: float = GATE_DEFAULTS["stream_factor"],
        drift_detection: bool = GATE_DEFAULTS["drift_detection"],
        drift_threshold: float = GATE_DEFAULTS["drift_threshold"],
        adapt_half_life: float = GATE_DEFAULTS["adapt_half_life"],
        adapt_records: int = GATE_DEFAULTS["adapt_records"],
        gating: bool = GATE_DEFAULTS["gating"],
        random_state: int | None = GATE_DEFAULTS["random_state"],
    ):
        self.false_alarm_rate = false_alarm_rate
        self.exclusion_ratio = exclusion_ratio
        self.refresh_every = refresh_every
        self.n_calibration = n_calibration
        self.n_recent = n_recent
        self.stream_factor = stream_factor
        self.drift_detection = drift_detection
        self.drift_threshold = drift_threshold
        self.adapt_half_life = adapt_half_life
        self.adapt_records = adapt_records
        self.gating = gating
        self.random_state = random_state
        # Validated at construction (the gate is built from user input by three faces).
        validate_gate_params(self.get_params(), type(self).__name__)
        self._reset()

    # ------------------------------------------------------------------ state

    def _reset(self) -> None:
        self.threshold_ = math.inf
        self.exclusion_threshold_ = math.inf
        self.calibration_source_: str | None = None
        self._ref = np.zeros(0)  # sorted reference scores up to the exponential tail
        self._ref_n = 0  # number of reference scores (including the tail's)
        self._ref_index = np.zeros(0, dtype=np.int64)  # ranks of the knots kept in _ref
        self._ref_list: list | None = None  # the reference as lists, for the scalar path
        self._log_p: np.ndarray = np.zeros(0)
        self._log_p_list: list | None = None
        self._ref_version = 0  # counts reference changes (for the scalar path's memo)
        self._memo: tuple = (math.nan, math.nan, -1, math.nan)
        self._tail_u = math.inf  # start of the exponential tail
        self._tail_log_pu = 0.0
        self._tail_beta = 1.0
        self.tail_power_ = 1.0
        self._recent = np.full(self.n_recent, np.nan)
        self._recent_pos = 0
        self._warm_checks = 0  # stream checks of the current provisional fit
        self._warm_tails = np.zeros(0)  # sorted tails of the warm-up's records so far
        self._fresh_fit = False  # settling after the warm-up (not after a change)
        self.n_observed_ = 0
        self.n_flagged_ = 0
        self.n_excluded_ = 0
        self._calibrated_at = -1
        self._calibrated_seen = -1
        self._n_settled = 0  # calibrations since the warm-up or the last change
        self._n_calibrations = 0
        self._model_warming = True
        self._window_n = 0
        self._window_flagged = 0
        self.recent_flag_rate_ = math.nan
        self._excess_windows = 0
        self.flag_rate_alarm_ = False
        self.n_rate_warnings_ = 0
        self.n_drifts_ = 0
        self._adapt_left = 0
        self._next_check = 0  # n_observed_ at which prepare() has work again (not saved)
        self._detector = self._new_detector()
        self._block: list = []  # surprises of the current block (change detector)

    def _new_detector(self):
        if not self.drift_detection:
            return None
        return drift.PageHinkley(
            min_instances=30,
            delta=DRIFT_DELTA,
            threshold=float(self.drift_threshold),
            alpha=1.0,  # no fading: with it the sums wander (AR(1)) and raise false alarms
            mode="up",
        )

    def __getstate__(self):
        # Caches are not state: a pickle must not change when the gate is only asked (the River
        # detector's inference is pure), and they are rebuilt on the next scalar lookup.
        state = dict(super().__getstate__())
        state["_memo"] = (math.nan, math.nan, -1, math.nan)
        state["_ref_list"] = state["_log_p_list"] = None
        return state

    @property
    def adapting_(self) -> bool:
        return self._adapt_left > 0

    @property
    def gating_(self) -> bool:
        """Whether extreme records are kept out of the model right now."""
        return bool(
            self.gating
            and not self._model_warming
            and not self._adapt_left
            and self.exclusion_threshold_ < math.inf
        )

    # ------------------------------------------------------------------ reference / tails

    def _set_reference(self, scores: np.ndarray, source: str) -> bool:
        """Make ``scores`` the reference; False (nothing changed) if too few are finite."""
        ref = np.sort(scores[np.isfinite(scores)])
        n = ref.size
        if n < TAIL_FIT + 2:
            return False
        # Survival at the i-th smallest reference score: (n - i) / (n + 1).
        log_p = np.log((n - np.arange(n)) / (n + 1.0))
        m = max(TAIL_FIT, n // 200)
        u = float(ref[n - m])
        beta = float(np.mean(ref[n - m :] - u))
        # A (nearly) degenerate top: keep the tail decreasing, on the scale of the bulk.
        spread = float(ref[n - m] - ref[n // 2])
        beta = max(beta, 1e-3 * max(spread, 1.0), 1e-9)
        idx = _knots(n, n - m + 1)
        self._ref, self._log_p, self._ref_n = ref[idx], log_p[idx], n
        self._ref_index = idx
        self._ref_list = self._log_p_list = None  # built at the first scalar lookup
        self._ref_version += 1
        self._tail_u, self._tail_log_pu, self._tail_beta = u, float(log_p[n - m]), beta
        self.calibration_source_ = source
        self._set_thresholds()
        return True

    def _set_thresholds(self) -> None:
        """The flag and exclusion thresholds from the reference and ``tail_power_``."""
        self.threshold_ = self.score_at(self.false_alarm_rate)
        self.exclusion_threshold_ = self.score_at(self.false_alarm_rate * self.exclusion_ratio)

    def score_at(self, tail_probability: float) -> float:
        """The score whose tail probability is ``tail_probability`` (inverse of the tail)."""
        if not self._ref.size:
            return math.inf
        log_a = math.log(tail_probability) / self.tail_power_
        if log_a <= self._tail_log_pu:
            return self._tail_u + self._tail_beta * (self._tail_log_pu - log_a)
        # log_p decreases along the reference: interpolate on the reversed arrays.
        return float(np.interp(log_a, self._log_p[::-1], self._ref[::-1]))

    def tail_probability(self, scores) -> np.ndarray:
        """Tail probability of each score (NaN for NaN or before any calibration)."""
        s = np.asarray(scores, dtype=np.float64)
        if not self._ref.size:
            return np.full(s.shape, np.nan)
        with np.errstate(invalid="ignore", over="ignore"):
            bulk = np.interp(s, self._ref, self._log_p, left=self._log_p[0])
            tail = self._tail_log_pu - (s - self._tail_u) / self._tail_beta
            out = np.exp(self.tail_power_ * np.where(s >= self._tail_u, tail, bulk))
        return out

    def tail_probability_one(self, score: float) -> float:
        """Tail probability of one score (fast scalar path of :meth:`tail_probability`)."""
        if not self._ref.size or score != score:
            return math.nan
        g = self.tail_power_
        # The River detector asks twice per record (score_one, then learn_one): remember the
        # last answer for this reference and power.
        memo = self._memo
        if memo[0] == score and memo[1] == g and memo[2] == self._ref_version:
            return memo[3]
        tail = self._tail_one(score, g)
        self._memo = (score, g, self._ref_version, tail)
        return tail

    def _tail_one(self, score: float, g: float) -> float:
        if score >= self._tail_u:
            return math.exp(g * (self._tail_log_pu - (score - self._tail_u) / self._tail_beta))
        ref = self._ref_list
        if ref is None:  # lists bisect faster than arrays for one value
            ref = self._ref_list = self._ref.tolist()
            self._log_p_list = self._log_p.tolist()
        i = bisect.bisect_right(ref, score)
        lp = self._log_p_list
        if i == 0:
            return math.exp(g * lp[0])
        lo, hi = ref[i - 1], ref[i]
        f = (score - lo) / (hi - lo) if hi > lo else 1.0
        return math.exp(g * (lp[i - 1] + f * (lp[i] - lp[i - 1])))

    # ------------------------------------------------------------------ calibration

    def prepare(self, model) -> None:
        """Bring the reference up to date for ``model`` and set its step (before judging)."""
        if self.n_observed_ < self._next_check:
            return  # nothing due: the per-record path of the River detector stays cheap
        was_warming = self._model_warming
        self._model_warming = bool(getattr(model, "warming_up_", True))
        if not model.has_model_:
            return
        if self._model_warming:
            # A provisional fit changes each time the buffer doubles: follow it, and check it
            # against the records it scored since (FIRST_CHECK records, then doubling): a
            # provisional fit of lattice-valued data flagged a fifth of digits' warm-up.
            if self._calibrated_seen < 0 or model.n_samples_seen_ >= 2 * self._calibrated_seen:
                self._forget_recent()  # scored by the previous provisional fit
                self._warm_checks = 0
                self.calibrate(model)
            elif self.n_observed_ - self._calibrated_at >= FIRST_CHECK << self._warm_checks:
                self._warm_checks += 1
                seen = self._calibrated_seen  # the refit schedule follows the refits only
                self.calibrate(model)
                self._calibrated_seen = seen
            return
        if was_warming:
            # The final fit: a fresh reference, checked against its own scores only.
            self._forget_recent()
            self._warm_tails = np.zeros(0)  # the warm-up's own reference is done with
            self._calibrated_at = -1
            self._fresh_fit = True
        if self._calibrated_at < 0 or self.n_observed_ - self._calibrated_at >= self._every(model):
            self.calibrate(model)
        self._next_check = self._calibrated_at + self._every(model)
        floor = half_life_step(model.half_life)
        if self._adapt_left:
            # Never fewer effective records than a covariance of the model needs.
            hl = max(self.adapt_half_life, 2.0 * model.n_components_ * (model.n_features_in_ + 1))
            floor = max(floor, half_life_step(hl))
        # Raised while re-adapting, put back to the half-life's floor after.
        model.step_floor = floor

    def _forget_recent(self) -> None:
        """Drop the recent scores (they were scored by a model that is gone)."""
        self._recent[:] = np.nan
        self._recent_pos = 0

    def _every(self, model) -> int:
        """Records between refreshes now."""
        if self._adapt_left:
            # Wide data: a calibration costs O(n_calibration K D^2); not every few rows.
            return max(ADAPT_REFRESH, model.n_features_in_ // 2)
        return self._settling_every()

    def _settling_every(self) -> int:
        """Records between refreshes while settling (after the warm-up or a change), else
        ``refresh_every``."""
        if self._n_settled >= N_EARLY:
            return self.refresh_every
        if not self._fresh_fit:
            # After a change the re-adaptation has recalibrated often already; sooner checks
            # there switched to a stream reference still holding the change (demo, seed 1:
            # recall 0.98 -> 0.93).
            return min(self.refresh_every, EARLY_REFRESH)
        early = FIRST_CHECK << max(self._n_settled - 1, 0)
        return min(self.refresh_every, EARLY_REFRESH, early)

    def threshold_for(self, model) -> float:
        """The score threshold for ``model`` now (the reference refreshed first if due)."""
        self.prepare(model)
        return self.threshold_

    def calibrate(self, model) -> float:
        """Recompute the reference (model samples, or the stream's recent scores); the threshold."""
        seed = 0 if self.random_state is None else int(self.random_state)
        rng = np.random.default_rng([seed, self._n_calibrations])
        self._n_calibrations += 1
        self._calibrated_at = self.n_observed_
        self._calibrated_seen = int(model.n_samples_seen_)
        if not (self._model_warming or self._adapt_left):
            self._n_settled += 1
        scores = -model.score_samples(model.sample(self.n_calibration, random_state=rng)[0])
        self.tail_power_ = 1.0
        referenced = self._set_reference(scores, "model")
        model_exclusion = self.exclusion_threshold_
        recent = self._recent[np.isfinite(self._recent)]
        if self._adapt_left:
            if recent.size >= ADAPT_MIN_RECENT:
                # The model lags the new regime: what it flags now is mostly its own lag.  Loosen
                # its tail by the power that matches the post-change records' median surprise.
                with np.errstate(divide="ignore"):
                    median = float(np.median(-np.log(self.tail_probability(recent))))
                if median > math.log(2.0):
                    self.tail_power_ = max(math.log(2.0) / median, ADAPT_MIN_POWER)
                    if referenced:  # the same reference, a new power
                        self._set_thresholds()
            return self.threshold_
        enough = recent.size >= min(self.n_recent, FIRST_CHECK)
        if not enough:
            return self.threshold_
        # The stream's typical surprise -log(tail): ln 2 at the median if the model's samples
        # score like the stream.  A model fitted on finitely many records scores real records
        # a little worse than its own samples; for a Gaussian score tail that mismatch is a
        # power of the tail probability, estimated here from the median (robust to a few
        # percent of anomalies).
        with np.errstate(divide="ignore"):
            median_surprise = float(np.median(-np.log(self.tail_probability(recent))))
        if median_surprise > 0.0:
            power = math.log(2.0) / median_surprise
            # Only what the median's sampling noise (one relative s.e., 1 / (ln 2 sqrt(n))) cannot
            # explain: a well-fitted model keeps its own tail.
            noise = 1.0 / (math.log(2.0) * math.sqrt(recent.size))
            excess = max(abs(power - 1.0) - noise, 0.0)
            self.tail_power_ = min(max(1.0 + math.copysign(excess, power - 1.0), 0.5), 2.0)
            if referenced:  # the same reference, a new power
                self._set_thresholds()
        above = float(np.mean(recent > self.threshold_))
        bulk_above = float(np.mean(recent > self.score_at(BULK_LEVEL)))
        if above > self.stream_factor * self.false_alarm_rate and (
            bulk_above > BULK_FACTOR * BULK_LEVEL or above > MAX_ANOMALY_SHARE
        ):
            # The model's samples are far too optimistic, in the tail and in the bulk (a few
            # percent of true anomalies only fill the tail): the stream's scores are the
            # reference.
            self.tail_power_ = 1.0
            self._set_reference(recent, "stream")
            # What is learned is still judged by the model's own far tail: a stream reference
            # holds the stream's anomalies too, and must not let them in (on Shuttle, its 7% of
            # anomalies would be learned and the ROC-AUC falls from 0.996 to 0.97).
            self.exclusion_threshold_ = model_exclusion
        # Never keep more than MAX_ANOMALY_SHARE of the stream out of the model: beyond that,
        # what the model's far tail holds is its own misfit, and not learning it would bias
        # the model further.
        if recent.size:
            cap = float(np.quantile(recent, 1.0 - MAX_ANOMALY_SHARE))
            self.exclusion_threshold_ = max(self.exclusion_threshold_, cap)
        return self.threshold_

    # ------------------------------------------------------------------ one gate step

    def decide_one(self, score: float) -> tuple[float, bool, bool]:
        """``(tail probability, flagged, learn)`` for one record's score (no state change)."""
        tail = self.tail_probability_one(score)
        flagged = tail < self.false_alarm_rate
        learn = not (score > self.exclusion_threshold_ and self.gating_)
        return tail, flagged, learn

    def account_one(self, score: float, tail: float, flagged: bool, learned: bool) -> None:
        """Record one judged record: counters, recent scores, flag-rate alarm, change detector.

        The scalar twin of what :meth:`score_and_learn` does for a segment of rows.
        """
        self.n_observed_ += 1
        if flagged:
            self.n_flagged_ += 1
        if not learned:
            self.n_excluded_ += 1
        if score == score:
            self._recent[self._recent_pos] = score
            self._recent_pos = (self._recent_pos + 1) % self.n_recent
        self._window_n += 1
        self._window_flagged += flagged
        if self._window_n >= self.refresh_every:
            self._close_window()
        if self._adapt_left:
            self._count_down(1)
        elif self._watching():
            self._watch(tail)

    def _watching(self) -> bool:
        return self._detector is not None and not self._model_warming and not self._adapt_left

    def _watch(self, tail: float) -> bool:
        """Feed the change detector one tail probability; True (and adapting) on a change."""
        if tail != tail:
            return False
        surprise = -math.log(tail) if tail > 0.0 else SURPRISE_CAP
        block = self._block
        block.append(surprise if surprise < SURPRISE_CAP else SURPRISE_CAP)
        if len(block) < DRIFT_BLOCK:
            return False
        # The block's median: a change moves every record, scattered anomalies only a few.
        block.sort()
        median = block[DRIFT_BLOCK // 2]
        block.clear()
        if _page_hinkley_up(self._detector, [median]) is not None:
            self._start_adaptation()
            return True
        return False

    def _watch_many(self, tails: np.ndarray) -> int | None:
        """:meth:`_watch` for a segment's tails at once; the row where a change fires, or None.

        Surprises and block medians are computed in numpy; River's detector sees one median per
        block, exactly as row by row.
        """
        rows = np.flatnonzero(~np.isnan(tails))
        if not rows.size:
            return None
        with np.errstate(divide="ignore"):
            surprise = np.minimum(-np.log(tails[rows]), SURPRISE_CAP)
        pending = len(self._block)
        values = np.concatenate([np.asarray(self._block, dtype=np.float64), surprise])
        n_blocks = values.size // DRIFT_BLOCK
        blocks = np.sort(values[: n_blocks * DRIFT_BLOCK].reshape(n_blocks, DRIFT_BLOCK), axis=1)
        b = _page_hinkley_up(self._detector, blocks[:, DRIFT_BLOCK // 2].tolist())
        if b is not None:
            self._block = []
            self._start_adaptation()
            return int(rows[(b + 1) * DRIFT_BLOCK - 1 - pending])
        self._block = values[n_blocks * DRIFT_BLOCK :].tolist()
        return None

    def _count_down(self, n: int) -> None:
        self._adapt_left -= n
        if not self._adapt_left:
            self._detector = self._new_detector()
            self._block = []
            self._calibrated_at = -1  # a fresh reference for the settled model
            self._next_check = 0

    def _account_many(self, scores, tails, flags, learned) -> None:
        """:meth:`account_one` for a segment that ends at or before a window boundary."""
        n = scores.size
        self.n_observed_ += n
        n_flagged = int(flags.sum())
        self.n_flagged_ += n_flagged
        self.n_excluded_ += n - int(learned.sum())
        kept = scores[np.isfinite(scores)][-self.n_recent :]
        idx = (self._recent_pos + np.arange(kept.size)) % self.n_recent
        self._recent[idx] = kept
        self._recent_pos = int((self._recent_pos + kept.size) % self.n_recent)
        self._window_n += n
        self._window_flagged += n_flagged
        if self._window_n >= self.refresh_every:
            self._close_window()

    def _suspect(self) -> bool:
        det = self._detector
        if det is None:
            return False
        rise = det._sum_increase - det._min_increase
        return rise > SUSPECT_FRACTION * self.drift_threshold

    def _start_adaptation(self) -> None:
        self.n_drifts_ += 1
        self._adapt_left = self.adapt_records
        self._next_check = 0
        self._forget_recent()  # the old regime's scores say nothing about the new one
        self._fresh_fit = False
        self._calibrated_at = -1
        self._n_settled = 0
        log.info(
            "change detected in the score stream after %d records: re-adapting the model",
            self.n_observed_,
        )

    def _close_window(self) -> None:
        rate = self._window_flagged / self._window_n
        self.recent_flag_rate_ = rate
        self._window_n = self._window_flagged = 0
        if rate > self.stream_factor * self.false_alarm_rate:
            self._excess_windows += 1
            if self._excess_windows >= ALARM_WINDOWS and not self.flag_rate_alarm_:
                self.flag_rate_alarm_ = True
                self.n_rate_warnings_ += 1
                log.warning(
                    "anomaly flag rate %.3g stays far above the target %.3g (%d windows of %d "
                    "records): either the stream holds that many anomalies, or the data do not fit "
                    "the model (check the features) or the stream is changing",
                    rate,
                    self.false_alarm_rate,
                    self._excess_windows,
                    self.refresh_every,
                )
        else:
            self._excess_windows = 0
            self.flag_rate_alarm_ = False

    def score_and_learn(self, model, X) -> GateResult:
        """Score a batch prequentially, flag it, and let ``model`` learn what the gate admits.

        The batch is processed in segments, each scored by the model as it is after the
        previous segments (never after the segment itself).  A segment ends where the reference
        is due for a refresh or where the change detector fires (it sees each row's tail before
        the segment is learned), so a change detected mid-batch takes effect at the next row;
        while the model re-adapts, segments are a few rows long.
        """
        X = np.asarray(X, dtype=np.float64)
        # All or nothing: a bad row must fail the batch before any segment has been learned.
        if X.ndim != 2 or (X.size and not np.abs(X).max() <= MAX_ABS_VALUE):
            raise ValueError("X must be a 2-D array of finite values within the model's range")
        n = X.shape[0]
        log_density = np.empty(n)
        tails = np.empty(n)
        flags = np.zeros(n, dtype=bool)
        learned = np.zeros(n, dtype=bool)
        thresholds = np.empty(n)
        probas = []
        i = 0
        while i < n:
            self.prepare(model)
            j = min(n, i + self._segment_length(model))
            was_adapting = bool(self._adapt_left)
            watch = self._watching() and model.has_model_
            seg = {}

            def select(log_density, watch=watch, seg=seg):
                # One E-step serves the tails, the change detector and learning: the detector
                # sees the rows' tails before anything is learned, and the segment ends right
                # after the row where it fires (the rest is judged again by the next segment).
                score = -log_density
                tail = raw = self.tail_probability(score)
                if self._model_warming:
                    tail = self._warm_up_rank(raw)
                cut = score.size
                if watch:
                    fired = self._watch_many(tail)
                    if fired is not None:
                        cut = fired + 1
                learn = np.zeros(score.size, dtype=bool)
                learn[:cut] = True
                if self.gating_:  # after the detector: a change just detected opens the gate
                    with np.errstate(invalid="ignore"):
                        learn &= ~(score > self.exclusion_threshold_)
                seg["tail"], seg["raw"], seg["cut"] = tail, raw, cut
                return learn

            r = model.score_and_learn(X[i:j], select=select)
            cut = seg["cut"]
            j = i + cut
            score = -r.log_density[:cut]
            tail = seg["tail"][:cut]
            learned_seg = r.learned[:cut]
            with np.errstate(invalid="ignore"):
                flag = tail < self.false_alarm_rate
            log_density[i:j], tails[i:j], flags[i:j], learned[i:j] = -score, tail, flag, learned_seg
            # While the model warms up a flag also weighs the row's rank among the warm-up's
            # rows: no score threshold decides it, so none is published (NaN: null).
            thresholds[i:j] = math.nan if self._model_warming else self.threshold_
            probas.append(r.proba[:cut])
            if self._model_warming:
                self._keep_warm_up_tails(seg["raw"][:cut])
            self._account_many(score, tail, flag, learned_seg)
            if was_adapting:
                self._count_down(j - i)
            i = j
        # With n_components="auto" K can change between segments (warm-up end, birth, merge,
        # death): rows keep the probabilities of the components they were scored by.
        width = max((p.shape[1] for p in probas), default=getattr(model, "n_components_", 1))
        if len(probas) == 1:  # one segment (the usual case): no copies
            return GateResult(log_density, probas[0], tails, flags, learned, thresholds)
        if any(p.shape[1] != width for p in probas):
            probas = [np.pad(p, ((0, 0), (0, width - p.shape[1]))) for p in probas]
        proba = np.vstack(probas) if probas else np.zeros((0, width))
        return GateResult(log_density, proba, tails, flags, learned, thresholds)

    def few_rows(self, model, n: int) -> bool:
        """Whether :meth:`score_and_learn_few` serves ``n`` rows for ``model`` now: a handful
        of rows of a model past its warm-up (a warming model refits on its buffer; the batch
        step handles that)."""
        return n <= FEW_ROWS and not getattr(model, "warming_up_", True) and model.has_model_

    def score_and_learn_few(self, model, X) -> GateResult:
        """:meth:`score_and_learn` for a few rows (see :meth:`few_rows`), one row at a time.

        A model per key sees one to three rows per batch: the batch step's segment machinery
        (arrays, a ``select`` callback, padding) costs far more than the rows themselves.  Each
        row is judged by the model as it is after the rows before it — what a segment of one row
        would do, in the same order: the reference refreshed if due, the row's log-density and
        responsibilities (one compiled pass, :meth:`OnlineGaussianMixture.score_proba_one`),
        the change detector fed before the decision (a change just detected opens the gate),
        then learned (or only shown to the component life cycle) and accounted.
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or (X.size and not np.abs(X).max() <= MAX_ABS_VALUE):
            raise ValueError("X must be a 2-D array of finite values within the model's range")
        n = X.shape[0]
        log_density = np.empty(n)
        tails = np.empty(n)
        flags = np.zeros(n, dtype=bool)
        learned = np.zeros(n, dtype=bool)
        thresholds = np.empty(n)
        probas = []
        far = self.false_alarm_rate
        for i in range(n):
            x = X[i]
            self.prepare(model)
            was_adapting = bool(self._adapt_left)
            watch = self._watching()
            ld, resp = model.score_proba_one(x)
            score = -ld
            tail = self._tail_scalar(score)
            if watch:
                self._watch(tail)
            if self.gating_ and score > self.exclusion_threshold_:
                ok = False
                model.observe_one(x, log_density=ld)
            else:
                ok = bool(model.learn_one(x, log_density=ld))
            flag = tail < far
            log_density[i], tails[i], flags[i], learned[i] = ld, tail, flag, ok
            thresholds[i] = self.threshold_
            probas.append(resp)
            # _account_many for one row (the detector has seen it above).
            self.n_observed_ += 1
            self.n_flagged_ += flag
            self.n_excluded_ += not ok
            if math.isfinite(score):
                self._recent[self._recent_pos] = score
                self._recent_pos = (self._recent_pos + 1) % self.n_recent
            self._window_n += 1
            self._window_flagged += flag
            if self._window_n >= self.refresh_every:
                self._close_window()
            if was_adapting:
                self._count_down(1)
        width = max(p.shape[0] for p in probas) if probas else model.n_components_
        if any(p.shape[0] != width for p in probas):  # K changed between rows ("auto")
            probas = [np.pad(p, (0, width - p.shape[0])) for p in probas]
        proba = np.vstack(probas) if probas else np.zeros((0, width))
        return GateResult(log_density, proba, tails, flags, learned, thresholds)

    def _warm_up_rank(self, tails: np.ndarray) -> np.ndarray:
        """Each tail, or its conformal rank among the earlier warm-up records' if larger.

        While the model warms up, each provisional fit is judged against samples of itself,
        which a few hundred records cannot make trustworthy in the far tail: on small or
        drifting real data (TrumpApproval, breast_cancer, iris) the warm-up flagged 6-60% at a
        target of 1%.  The rank ``(1 + #{earlier tails <= this}) / (1 + #earlier)`` (rows in
        order, the segment's earlier rows included) is the stream's own calibration, as the
        River detector's warm-up has it: a conformal p-value, so on exchangeable records at most
        about the target is flagged, and a handful of records can support a claim about a 1%
        tail only for a record beyond all of them.  Beyond every earlier record the rank is
        extrapolated in proportion to the tail (ties at ``1 / (n + 1)`` would flag them all).
        """
        out = tails.copy()
        rows = np.flatnonzero(~np.isnan(tails))  # no provisional fit yet: nothing to rank
        if not rows.size:
            return out
        t = tails[rows]
        earlier = self._warm_tails
        n_earlier = earlier.size + np.arange(t.size)
        # Earlier rows of this segment (at most a chunk of rows: the pairwise table is small).
        within = np.tril(t[None, :] <= t[:, None], -1).sum(axis=1)
        below = np.searchsorted(earlier, t, side="right") + within
        first = earlier[0] if earlier.size else math.inf
        lowest = np.minimum.accumulate(np.concatenate([[first], t[:-1]]))
        rank = (1.0 + below) / (1.0 + n_earlier)
        beyond = (below == 0) & (lowest > 0.0) & np.isfinite(lowest)
        rank[beyond] = t[beyond] / lowest[beyond] / (1.0 + n_earlier[beyond])
        out[rows] = np.maximum(t, rank)
        return out

    def _keep_warm_up_tails(self, tails: np.ndarray) -> None:
        """Add judged warm-up records' tails to the rank reference (kept sorted)."""
        t = np.sort(tails[~np.isnan(tails)])
        if t.size:
            at = np.searchsorted(self._warm_tails, t, side="right")
            self._warm_tails = np.insert(self._warm_tails, at, t)

    def _tail_scalar(self, score: float) -> float:
        """:meth:`tail_probability` of one score, by the same numpy interpolation (no lists:
        a gate per key must not carry :meth:`tail_probability_one`'s list copies)."""
        if not self._ref.size or score != score:
            return math.nan
        if score >= self._tail_u:
            t = self._tail_log_pu - (score - self._tail_u) / self._tail_beta
        else:
            t = float(np.interp(score, self._ref, self._log_p, left=self._log_p[0]))
        return math.exp(self.tail_power_ * t)

    def _segment_length(self, model) -> int:
        """Rows until the next refresh, window end or end of adaptation (a few while unsure)."""
        if self._model_warming:
            # Rows past the end of the warm-up must already be judged by the final fit.
            if getattr(model, "warm_up", None) and hasattr(model, "n_samples_seen_"):
                return max(min(model.warm_up - model.n_samples_seen_, CHUNK), 1)
            return ADAPT_CHUNK
        if self._adapt_left:
            return min(max(ADAPT_CHUNK, model.n_features_in_ // 4), self._adapt_left)
        if self._suspect():
            return ADAPT_CHUNK
        every = self._settling_every()
        to_refresh = max(every - (self.n_observed_ - self._calibrated_at), 1)
        return max(min(to_refresh, self.refresh_every - self._window_n), 1)

    # ------------------------------------------------------------------ persistence

    def get_state(self) -> tuple[dict, dict]:
        """Plain float arrays and JSON-able metadata (no pickle)."""
        det = self._detector
        det_state = None
        if det is not None:
            det_state = {
                "n": det._x_mean.n,
                "mean": det._x_mean._mean,
                "sum_increase": det._sum_increase,
                "sum_decrease": det._sum_decrease,
                "min_increase": _finite_or_none(det._min_increase),
                "max_decrease": det._max_decrease,
                "drift_detected": det._drift_detected,
            }
        meta = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "params": self.get_params(),
            "calibration_source": self.calibration_source_,
            "tail": [
                _finite_or_none(self._tail_u),
                self._tail_log_pu,
                self._tail_beta,
                self._ref_n,
                self.tail_power_,
            ],
            "recent_pos": self._recent_pos,
            "counts": [
                self.n_observed_,
                self.n_flagged_,
                self.n_excluded_,
                self._calibrated_at,
                self._calibrated_seen,
                self._n_calibrations,
                self._window_n,
                self._window_flagged,
                self._excess_windows,
                self.n_rate_warnings_,
                self.n_drifts_,
                self._adapt_left,
                self._n_settled,
            ],
            "model_warming": self._model_warming,
            # The stream checks' schedule: a replay after a restore must decide as the original.
            "settling": [self._warm_checks, self._fresh_fit],
            "flag_rate_alarm": self.flag_rate_alarm_,
            "recent_flag_rate": _finite_or_none(self.recent_flag_rate_),
            # Not always the reference's: with a stream reference, the model's own far tail.
            "exclusion_threshold": _finite_or_none(self.exclusion_threshold_),
            "detector": det_state,
            "block": list(self._block),
        }
        arrays = {
            "reference": self._ref.copy(),
            "reference_index": self._ref_index.astype(np.int64),
            "recent": self._recent.copy(),
            "warm_up_tails": self._warm_tails.copy(),
        }
        return arrays, meta

    @classmethod
    def from_state(cls, arrays, meta) -> AnomalyGate:
        """Rebuild a gate from :meth:`get_state`'s output; ValueError if malformed."""
        if meta.get("format") != STATE_FORMAT or meta.get("version") not in READ_STATE_VERSIONS:
            raise ValueError("not a streamgmm AnomalyGate state (format/version mismatch)")
        gate = cls(**meta["params"])
        ref = np.asarray(arrays["reference"], dtype=np.float64)
        recent = np.asarray(arrays["recent"], dtype=np.float64)
        if ref.ndim != 1 or recent.shape != (gate.n_recent,):
            raise ValueError("AnomalyGate state: arrays have the wrong shape")
        # Version 2 kept every reference score up to the tail (knots come at its next refresh).
        v3 = meta["version"] >= 3
        idx = np.asarray(arrays["reference_index"]) if v3 else np.arange(ref.size)
        if ref.size:
            u, log_pu, beta, n, gate.tail_power_ = meta["tail"]
            if (
                idx.shape != ref.shape
                or idx.dtype.kind not in "iu"
                or idx[0] < 0
                or idx[-1] >= int(n)
                or np.any(np.diff(idx) <= 0)
            ):
                raise ValueError("AnomalyGate state: the reference's ranks are malformed")
            gate._ref, gate._ref_n = ref.copy(), int(n)
            gate._ref_index = idx.astype(np.int64)
            # The survival values exactly as _set_reference made them.
            gate._log_p = np.log((n - gate._ref_index) / (n + 1.0))
            gate._ref_list = gate._log_p_list = None
            gate._ref_version += 1
            gate._tail_u = math.inf if u is None else float(u)
            gate._tail_log_pu, gate._tail_beta = float(log_pu), float(beta)
            gate.calibration_source_ = meta["calibration_source"]
            gate.threshold_ = gate.score_at(gate.false_alarm_rate)
            gate.exclusion_threshold_ = gate.score_at(gate.false_alarm_rate * gate.exclusion_ratio)
            if "exclusion_threshold" in meta:
                # Recomputed from a stream reference it was the stream's far tail (anomalies
                # included), not the model's: a restored gate let in what it had kept out.
                excl = meta["exclusion_threshold"]
                gate.exclusion_threshold_ = math.inf if excl is None else float(excl)
        gate._recent = recent.copy()
        warm_tails = np.asarray(arrays.get("warm_up_tails", np.zeros(0)), dtype=np.float64)
        if warm_tails.ndim != 1 or np.any(np.diff(warm_tails) < 0):
            raise ValueError("AnomalyGate state: the warm-up tails are malformed")
        gate._warm_tails = warm_tails.copy()
        gate._recent_pos = int(meta["recent_pos"])
        (
            gate.n_observed_,
            gate.n_flagged_,
            gate.n_excluded_,
            gate._calibrated_at,
            gate._calibrated_seen,
            gate._n_calibrations,
            gate._window_n,
            gate._window_flagged,
            gate._excess_windows,
            gate.n_rate_warnings_,
            gate.n_drifts_,
            gate._adapt_left,
            gate._n_settled,
        ) = (int(v) for v in meta["counts"])
        gate._model_warming = bool(meta["model_warming"])
        warm_checks, fresh_fit = meta.get("settling", (0, False))
        gate._warm_checks, gate._fresh_fit = int(warm_checks), bool(fresh_fit)
        gate.flag_rate_alarm_ = bool(meta["flag_rate_alarm"])
        rate = meta["recent_flag_rate"]
        gate.recent_flag_rate_ = math.nan if rate is None else float(rate)
        gate._block = [float(v) for v in meta["block"]]
        det_state = meta["detector"]
        if gate._detector is not None and det_state is not None:
            det = gate._detector
            det._x_mean.n = float(det_state["n"])
            det._x_mean._mean = float(det_state["mean"])
            det._sum_increase = float(det_state["sum_increase"])
            det._sum_decrease = float(det_state["sum_decrease"])
            mi = det_state["min_increase"]
            det._min_increase = math.inf if mi is None else float(mi)
            det._max_decrease = float(det_state["max_decrease"])
            det._drift_detected = bool(det_state["drift_detected"])
        return gate


def _page_hinkley_up(det, values: list) -> int | None:
    """``det.update(v)`` for each of ``values`` until a change is detected; its index or None.

    ``det`` is River's :class:`~river.drift.PageHinkley` in mode ``"up"``; its
    ``update`` is unrolled here over a list, with the very same floating-point operations in the
    same order (River's running mean, then the cumulative sums), and the state is written back
    to the detector, so that the result is River's to the last bit (tested against
    ``PageHinkley.update``) at a fifth of the cost of one method call per value.
    """
    if det.mode != "up" or det.drift_detected:  # not the gate's configuration: River's own loop
        for i, v in enumerate(values):
            det.update(v)
            if det.drift_detected:
                return i
        return None
    stat = det._x_mean
    n, mean = stat.n, stat._mean
    s_inc, s_dec = det._sum_increase, det._sum_decrease
    lowest, highest = det._min_increase, det._max_decrease
    alpha, delta, threshold, min_n = det.alpha, det.delta, det.threshold, det.min_instances
    fired = None
    for i, x in enumerate(values):
        n += 1.0
        mean += (1.0 / n) * (x - mean)
        dev = x - mean
        s_inc = alpha * s_inc + dev - delta
        s_dec = alpha * s_dec + dev + delta
        if s_inc < lowest:
            lowest = s_inc
        if s_dec > highest:
            highest = s_dec
        if n >= min_n and s_inc - lowest > threshold:
            fired = i
            break
    stat.n, stat._mean = n, mean
    det._sum_increase, det._sum_decrease = s_inc, s_dec
    det._min_increase, det._max_decrease = lowest, highest
    if fired is not None:
        det._drift_detected = True
    return fired


def _knots(n: int, size: int) -> np.ndarray:
    """Ranks (0 .. size-1) of the reference scores kept as knots; all of them if few.

    Half are evenly spaced in rank (the bulk), half evenly spaced in log survival
    ``log((n - i) / (n + 1))`` (the upper tail, where the flag threshold is read); the first and
    the last rank are always kept, so the interpolated survival curve spans the same range.
    """
    if size <= REF_KNOTS:
        return np.arange(size, dtype=np.int64)
    half = REF_KNOTS // 2
    by_rank = np.linspace(0.0, size - 1, half)
    by_tail = n - np.geomspace(n, n - size + 1, half)
    idx = np.unique(np.rint(np.concatenate([by_rank, by_tail])).astype(np.int64))
    return idx[(idx >= 0) & (idx < size)]


def _finite_or_none(v):
    v = float(v)
    return v if math.isfinite(v) else None
