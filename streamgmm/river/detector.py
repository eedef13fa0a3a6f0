"""Gaussian mixture anomaly detector for River: a calibrated, bounded score and gated learning."""

from __future__ import annotations

import bisect
import math

import numpy as np
from river import base
from scipy import special

from streamgmm._gate_spec import GATE_DEFAULTS, validate_gate_params
from streamgmm._mixture_spec import MIXTURE_DEFAULTS
from streamgmm.anomaly import AnomalyGate

from ._base import MixtureAdapter, _check_core_params
from ._features import canonical_order, record_values

__all__ = ["GaussianMixtureDetector"]

_GATE_PARAMS = (
    "false_alarm_rate",
    "exclusion_ratio",
    "refresh_every",
    "n_calibration",
    "n_recent",
    "stream_factor",
    "drift_detection",
    "drift_threshold",
    "adapt_half_life",
    "adapt_records",
    "gating",
)
_SCORES = ("tail", "neg_log_density")
# Records scored and not learned that `learn_one` may still account as kept out by a wrapper.
_MAX_PENDING = 64


class GaussianMixtureDetector(MixtureAdapter, base.AnomalyDetector):
    """Anomaly detector scoring records by how improbable they are under an online mixture.

    By default `score_one(x)` is bounded: `1 - tail probability`, where the tail probability
    is the probability that a normal record scores at least as badly as `x` under the Gaussian
    mixture as it is before `x` is learned.  On calibrated normal data it is uniform on [0, 1];
    anomalies score near 1.  So River's tools mean what they say: `metrics.ROCAUC` (whose
    thresholds lie on [0, 1]) agrees with the exact ROC-AUC, `QuantileFilter(q=0.95)` flags
    about 5% and `ThresholdFilter(threshold=0.99)` about 1% of normal records.  With
    `score="neg_log_density"` it is `-log p(x)` in the units of `x` (unbounded; finer ranking of
    extreme records, whose tail probabilities all round to 0); both are always available from
    :meth:`tail_probability_one` and :meth:`neg_log_density_one`.

    The mixture is the one of :class:`streamgmm.river.GaussianMixture`: warm-up batch fit, then
    one compiled stochastic-EM step per record, features standardised internally (no scaler
    needed), missing features marginalised, unseen features ignored and counted.  During the
    warm-up records are scored by each feature's Student-t predictive distribution given the
    records so far (a few records cannot produce absurd scores), and their tail probability is
    never below their rank among the earlier warm-up records' (the stream's own calibration).

    Decisions are those of :class:`streamgmm.anomaly.AnomalyGate` (the same gate step as the
    stream processor): the tail probability is calibrated on samples of the model, checked
    against the stream's own recent scores; a record is flagged (`is_anomaly`) when its tail
    probability is below `false_alarm_rate`, and kept out of the model only when far more
    extreme (below `exclusion_ratio * false_alarm_rate`), so the normal tail is still learned.
    A change in the score stream (River's `drift.PageHinkley`) makes the model re-adapt fast.
    A partial record is judged on its marginal score against the same reference.

    Parameters
    ----------
    n_components
        Number of mixture components, or `"auto"` (the default, the same in the core, the
        service and here: `streamgmm._mixture_spec`): K chosen at the warm-up, then
        components born, merged and removed online (`streamgmm._lifecycle`).  A group of
        records rarer than `min_weight` is never a component: it stays anomalous (River's
        Shuttle: ROC-AUC 0.996 with the defaults, 0.991 with 1 component).
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
        `max(1000, 2 * K * (n_features + 1))`, K = `n_components` (3 for `"auto"`).
    n_init
        Initialisations of the warm-up fit.
    init_params
        Seeding of the warm-up fit.
    reg_covar
        Covariance regularisation, in standardised units.
    max_components, min_weight
        With `"auto"`: the most components, and the least share of the stream a component
        stands for (see :class:`streamgmm.OnlineGaussianMixture`).
    false_alarm_rate, exclusion_ratio, refresh_every, n_calibration, n_recent, stream_factor,
    drift_detection, drift_threshold, adapt_half_life, adapt_records, gating
        The anomaly gate's parameters, with the defaults of the one spec shared with
        :class:`streamgmm.anomaly.AnomalyGate` and the service
        (:data:`streamgmm._gate_spec.GATE_PARAMETERS`).
    score
        What `score_one` returns: `"tail"` (default, `1 - tail probability` in [0, 1]) or
        `"neg_log_density"`.
    seed
        Random seed: with a seed, results are exactly reproducible.

    Attributes
    ----------
    threshold
        Threshold on `score_one` above which a record is anomalous: `1 - false_alarm_rate` for
        the tail score; for the negative log-density, `inf` until the warm-up has ended.
    model_
        The underlying :class:`streamgmm.OnlineGaussianMixture` (`None` during the warm-up).
    gate_
        The :class:`streamgmm.anomaly.AnomalyGate` (flag rate, calibration source, warnings,
        detected changes).
    n_flagged_
        Records flagged (after the warm-up), kept-out ones (`n_kept_out_`) included.
    n_learned_
        Records learned.
    n_kept_out_
        Records scored and then not given to `learn_one` before the next record: kept out by a
        wrapper such as River's `ThresholdFilter` / `QuantileFilter` (their default
        `protect_anomaly_detector=True`).  They are not learned, but they still count in the
        calibration as records the gate kept out (see Notes).
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
    >>> 0.0 <= detector.score_one(normal) < detector.threshold < detector.score_one(odd) <= 1.0
    True
    >>> detector.is_anomaly(odd), detector.is_anomaly({"a": 10.5})  # "b" missing
    (True, False)
    >>> detector.neg_log_density_one(odd) > detector.neg_log_density_one(normal)
    True

    In a pipeline with River's filters, thresholds are probabilities:

    >>> from river import anomaly
    >>> model = anomaly.ThresholdFilter(GaussianMixtureDetector(seed=0), threshold=0.99)

    Notes
    -----
    River's filters learn only the records they do not flag.  A detector calibrated on what it
    learns then sees its normal tail cut off at its own threshold: each recalibration moves the
    threshold inwards, and during the warm-up a record beyond every earlier one is never
    learned, so its kind stays "beyond every earlier one" for good (around a wrapped detector
    that never saw them, `ThresholdFilter(threshold=0.99)` flagged 55% of Shuttle's normal
    records).  So when `learn_one` comes, the records scored since the previous `learn_one`
    that are not this one are taken as kept out by the caller, as the gate itself keeps out
    extreme records: each one's score joins the warm-up's rank reference, or the gate's stream
    reference and counters, and it is evidence for a new component; it is never learned.  A
    record is the same record when it compares equal (the filters pass the same dict to
    `score_one` and `learn_one`; a scaler in a `Pipeline` in front would not, and this
    detector needs none).

    References
    ----------
    Cappé, O. and Moulines, E. (2009). On-line expectation-maximization algorithm for latent
    data models. JRSS B 71(3).

    """

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
        score: str = "tail",
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
        self.score = score
        self.seed = seed
        _check_core_params(self)
        validate_gate_params(self._gate_kwargs(), type(self).__name__)
        if score not in _SCORES:
            raise ValueError(f"score must be one of {_SCORES}, got {score!r}")
        self._reset()

    def _gate_kwargs(self) -> dict:
        return {name: getattr(self, name) for name in _GATE_PARAMS}

    def _reset(self) -> None:
        super()._reset()
        self.gate_ = AnomalyGate(**self._gate_kwargs(), random_state=self.seed)
        self.n_flagged_ = 0
        self._cache = None
        self._warm_up_tails: list = []  # sorted t tails of the warm-up records so far
        # Records scored since the last `learn_one` (see `_note_scored`).
        self._pending: list = []
        self.n_kept_out_ = 0

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
            "n_recent": 500,
            "score": "neg_log_density",
            "seed": 3,
        }

    # -- gate ------------------------------------------------------------------------------

    def _on_fitted(self) -> None:
        self._warm_up_tails = []  # the warm-up's own reference; the gate's from now on
        self.gate_.prepare(self._model)

    @property
    def threshold(self) -> float:
        """Threshold on `score_one` above which a record is anomalous."""
        if self.score == "tail":
            return 1.0 - self.gate_.false_alarm_rate
        return self.gate_.threshold_ + self._log_scale_sum

    # -- warm-up scores --------------------------------------------------------------------

    def _warm_up_t(self, x: dict):
        """Per known feature ``(t statistic, degrees of freedom, log-density)`` under the
        Student-t predictive of the warm-up records so far (None if no feature is known)."""
        rec = record_values(x)
        keys = self._keys  # the warm-up's bounded key counts, with running moments
        out = []
        for name in canonical_order(rec):  # a fixed order: sums must not depend on key order
            if keys is None or name not in keys:
                continue
            n, mean, m2 = keys.moments(name)
            if n < 2:
                continue
            nu = n - 1.0
            # Predictive scale^2 = s^2 (1 + 1/n); a constant feature so far keeps a floor.
            var = max(m2 / nu, self.reg_covar, 1e-12) * (1.0 + 1.0 / n)
            t = (rec[name] - mean) / math.sqrt(var)
            log_pdf = (
                math.lgamma((nu + 1.0) / 2.0)
                - math.lgamma(nu / 2.0)
                - 0.5 * math.log(nu * math.pi * var)
                - (nu + 1.0) / 2.0 * math.log1p(t * t / nu)
            )
            out.append((t, nu, log_pdf))
        return out

    def _warm_up_neg_log_density(self, x: dict) -> float:
        return 0.0 - sum(lp for _, _, lp in self._warm_up_t(x))  # 0.0 - 0.0, not -0.0

    def _warm_up_tail(self, x: dict) -> float:
        """The larger of the Student-t tail (:meth:`_t_tail`) and its rank among the earlier
        warm-up records' t tails: ``(1 + #{earlier tails <= this}) / (1 + #earlier)``.

        The rank is the stream's own calibration, as the gate's stream reference is after the
        warm-up: the t tails assume Gaussian features, and on lattice-valued ones (ImageSegments'
        pixel counts) they flagged 15% of the warm-up.  A conformal p-value is never below
        ``1 / (n + 1)`` unless the record is beyond every earlier one (then the rank is
        extrapolated in proportion to the t tail): a handful of records cannot support a claim
        about a 1% tail, only about a record unlike all of them.
        """
        tail = self._t_tail(x)
        ranks = self._warm_up_tails
        below = bisect.bisect_right(ranks, tail)
        if below == 0 and ranks and ranks[0] > 0.0:
            # Beyond every earlier record: extrapolated, not tied at 1 / (n + 1) (ties made
            # River's QuantileFilter flag them all, and what it flags is never learned).
            rank = tail / ranks[0] / (1.0 + len(ranks))
        else:
            rank = (1.0 + below) / (1.0 + len(ranks))
        return max(tail, rank)

    def _t_tail(self, x: dict) -> float:
        """Each feature's two-sided t tail, mapped to a chi-square(1) value; their sum's tail."""
        parts = self._warm_up_t(x)
        if not parts:
            return 1.0
        t = np.array([abs(p[0]) for p in parts])
        nu = np.array([p[1] for p in parts])
        two_sided = np.clip(2.0 * special.stdtr(nu, -t), 1e-300, 1.0)
        chi2 = special.chdtri(1.0, two_sided)
        return float(special.chdtrc(len(parts), chi2.sum()))

    # -- scores ----------------------------------------------------------------------------

    def _score_z(self, x: dict):
        """``(z, missing, observed, score in model units)``; caches a complete record's."""
        z, missing = self._standardised(x)
        ld, observed = self._log_density_z(z, missing)
        if observed is None:
            # The prequential loop scores x then learns it: keep what learn_one would recompute.
            # A cache, not state: dropped from pickles/copies, keyed on a copy of x and on the
            # number of updates so far.
            self._cache = (dict(x), z, ld, self.n_learned_)
        elif not observed.any():
            return z, missing, observed, math.nan
        return z, missing, observed, -ld

    def _note_scored(self, x: dict) -> None:
        """Remember `x` as scored: if the next `learn_one` is another record's, `x` was kept
        out by the caller.  Only remembered (scoring changes no state a pickle keeps), and only
        the last `_MAX_PENDING` distinct records: scoring a test set between two `learn_one`
        calls can be taken for a run of kept-out records, but only for that many."""
        pending = self._pending
        if not pending or pending[-1] != x:
            if len(pending) == _MAX_PENDING:
                del pending[0]
            pending.append(dict(x))

    def _account_kept_out(self, x: dict) -> None:
        """Account a record a wrapper kept out, as judged when it was scored (nothing was
        learned since)."""
        self.n_kept_out_ += 1
        if self._model is None:
            bisect.insort(self._warm_up_tails, self._t_tail(x))
        else:
            self._judge(x, learn=False)

    def tail_probability_one(self, x: dict) -> float:
        """Probability that a normal record scores at least as badly as `x`; no state change
        (if the next record learned is another, `x` was kept out by the caller: see Notes)."""
        self._note_scored(x)
        if self._model is None:
            return self._warm_up_tail(x)
        score = self._score_z(x)[3]
        tail = self.gate_.tail_probability_one(score)
        return 1.0 if tail != tail else tail

    def neg_log_density_one(self, x: dict) -> float:
        """`-log p(x)` in the units of `x` (marginal over missing features); no state change."""
        self._note_scored(x)
        if self._model is None:
            return self._warm_up_neg_log_density(x)
        _, _, observed, score = self._score_z(x)
        if score != score:
            return 0.0
        return -self._to_input_units(-score, observed)

    def score_one(self, x: dict) -> float:
        """`1 - tail probability` (default) or `-log p(x)`, see `score`; no state change."""
        if self.score == "tail":
            return 1.0 - self.tail_probability_one(x)
        return self.neg_log_density_one(x)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = None
        state["_pending"] = []
        return state

    def is_anomaly(self, x: dict) -> bool:
        """Whether `x`'s tail probability is below `false_alarm_rate`; no state change."""
        return self.tail_probability_one(x) < self.gate_.false_alarm_rate

    def learn_one(self, x: dict) -> None:
        """Learn `x` unless the gate keeps it out (far more extreme than the flag threshold)."""
        pending, self._pending = self._pending, []
        for kept_out in pending:
            if kept_out != x:
                self._account_kept_out(kept_out)
        if self._model is None:
            # The t tail as this record was judged (before it joins the moments): the rank
            # reference of later warm-up records.
            bisect.insort(self._warm_up_tails, self._t_tail(x))
            self._buffer_one(x)
            return
        self._judge(x, learn=True)

    def _judge(self, x: dict, learn: bool) -> None:
        """The gate's decision on `x` and its accounting; `x` is learned if `learn` and the
        gate lets it in, else it is only evidence for a new component."""
        model = self._model
        cache = self._cache
        self._cache = None
        if cache is not None and cache[3] == self.n_learned_ and cache[0] == x:
            z, missing, observed, score = cache[1], False, None, -cache[2]
        else:
            z, missing, observed, score = self._score_z(x)
            self._cache = None
        if learn:
            self._count_unseen(x, missing)
        if score != score:
            return  # nothing known about this record: nothing to learn, nothing to judge
        gate = self.gate_
        gate.prepare(model)
        tail, flagged, let_in = gate.decide_one(score)
        learned = False
        if learn and let_in:
            if observed is None:
                # The score just computed is the row's log-density now (no update since):
                # the core's life cycle need not score it again.
                learned = model.learn_one(z, log_density=-score)  # False: density underflow
                self.n_learned_ += learned
            else:
                self._update(z, observed)
                learned = True
        elif observed is None:
            # Kept out of the model, but evidence for a new component (n_components="auto").
            model.observe_one(z, log_density=-score)
        if flagged:
            self.n_flagged_ += 1
        gate.account_one(score, tail, flagged, learned)

    def learn_many(self, X) -> None:
        """Learn from the rows of a DataFrame, in order; the same as a loop of `learn_one`."""
        for x in self._iter_frame(X):
            self.learn_one(x)
