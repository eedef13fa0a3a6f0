"""Online EM for Gaussian mixtures: the numerical core of streamgmm."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
import warnings
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
from scipy.special import logsumexp
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.utils import check_random_state
from sklearn.utils._array_api import get_namespace
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import validate_data

from streamgmm import _covariance as cov_ops
from streamgmm import _kernels
from streamgmm._lifecycle import Lifecycle
from streamgmm._mixture_spec import MIXTURE_DEFAULTS
from streamgmm._params import CachedParamNames, validate_once
from streamgmm._warm_up import (
    RECURRING_SHARE,
    feature_scales,
    fit_batch,
    fit_rank,
    gross_rows,
    robust_bounds,
    variance_floors,
)

STATE_FORMAT = "streamgmm.OnlineGaussianMixture"
STATE_VERSION = 1
# Exact refresh of the rank-one-updated precisions after this many samples.
REFRESH_EVERY = 64
# A single step never moves a component more than halfway to one sample.
W_CAP = 0.5
# Changes of the step floor remembered for the decay of past steps (streamgmm.group).
FLOOR_HISTORY = 256
# Large inputs are learned in mini-batches of this many rows: bounded memory, and the
# outcome of one huge array matches that of a stream cut into ordinary batches.
MAX_BATCH = 1000
# Batches smaller than this are learned row by row (compiled) rather than as numpy batches.
SMALL_BATCH = 32
# |x| beyond this would overflow the second moments (the compiled kernels refuse it too).
MAX_ABS_VALUE = _kernels.MAX_ABS_VALUE
# The one-row fast path takes C-contiguous float64 rows: the kernels check their values.
_FLOAT64 = np.dtype(np.float64)
_ROW_STRIDES = (_FLOAT64.itemsize,)
# The regulariser never goes below this (standardised units): with reg_covar=0 a component
# resting on equal rows would otherwise have a zero variance and no density at all.
MIN_REG = 1e-10
# ...nor below this share of a feature's current variance (see _factorised).
RELATIVE_REG = 1e-12
# Candidates of n_components="auto" (chosen by BIC at each warm-up fit).
AUTO_COMPONENTS = range(1, 9)

log = logging.getLogger(__name__)
# The warm-up of n_components="auto" is sized for this many full covariances (2 (D + 1) rows
# each); online births add components later if the stream needs them.
AUTO_WARM_UP_COMPONENTS = 3


def default_warm_up(n_components, n_features: int) -> int:
    """Rows fitted in batch before going online when ``warm_up=None``: ``max(1000, 2 K (D+1))``
    (K = :data:`AUTO_WARM_UP_COMPONENTS` for ``"auto"``)."""
    k = AUTO_WARM_UP_COMPONENTS if n_components == "auto" else n_components
    return max(1000, 2 * k * (n_features + 1))


def half_life_step(half_life) -> float:
    """Constant step ``1 - 2**(-1/H)`` under which a sample's weight halves every ``H`` samples
    (0 for ``None``: stationary, no floor)."""
    return 0.0 if half_life is None else float(-np.expm1(-np.log(2.0) / half_life))


# fit() seeds this many k-means starts per n_init on top of the n_init starts seeded by
# init_params (unless that is "kmeans" already, or n_init is 1: one start, as asked).
# k-means++ seeds alone missed optima that scikit-learn's k-means seeding finds on lattice
# data (Phishing: every feature takes 2-3 values; full K=5 held-out 0.32 against
# scikit-learn's 0.50); one k-means start per n_init still left wine diag K=10 and Phishing
# full K=5 0.10-0.11 below scikit-learn, two do not (python scripts/bench_accuracy.py).
# They are cheap: screened by a few EM iterations (_warm_up.fit_batch's seedings).
FIT_KMEANS_STARTS = 2

# Gross rows (outside the warm-up's robust bounds) are not learned while they are rare: their
# rate, averaged with this half-life in learned rows, stays below RECURRING_SHARE.
GROSS_HALF_LIFE = 1000
GROSS_DECAY = 2.0 ** (-1.0 / GROSS_HALF_LIFE)


class ScoreResult(NamedTuple):
    """What :meth:`OnlineGaussianMixture.score_and_learn` returns for a batch."""

    log_density: np.ndarray
    proba: np.ndarray
    learned: np.ndarray


class OnlineGaussianMixture(CachedParamNames, DensityMixin, BaseEstimator):
    """Gaussian mixture learned online by stochastic-approximation EM.

    Each component keeps exponentially weighted sufficient statistics — a weight, a mean and a
    *centered* covariance — that every new sample (or mini-batch) moves toward its own
    statistics by a step ``rho_t`` (Cappé & Moulines, 2009).  The centered form is exact and
    does not cancel catastrophically when the data sit far from the origin.  Precisions and
    log-determinants are carried along by Sherman–Morrison rank-one updates, so one sample costs
    O(K D^2), and are refreshed exactly every few dozen samples.

    The step is ``rho_t = max((t + step_offset) ** -step_exponent, 1 - 2 ** (-1 / half_life))``:
    on stationary data it decays like Robbins–Monro; with a half-life it never falls below the
    rate at which a sample's influence halves every ``half_life`` samples, so the model follows
    drift.  A mini-batch of B rows takes the total step ``1 - prod(1 - rho_i)`` with pooled
    batch moments, so the result hardly depends on how a stream is cut into batches.

    The first ``warm_up`` rows are buffered and fitted by batch EM (several k-means++ starts, the
    best kept; every row counts) before the model goes online.  While it warms up, predictions
    come from a provisional fit of the buffer, refitted each time it doubles.  Covariances that
    rest on few rows are regularised in each feature's own scale: full and tied covariances are
    shrunk toward their diagonal (by the multiple of the Schäfer–Strimmer intensity, from
    1/64 to 4, that best predicts left-out rows), and a discrete feature's variance is pulled
    toward the variance of rounding to its resolution by a prior worth one row (both fade as
    rows accumulate, in the warm-up and online alike).

    Parameters
    ----------
    n_components
        Number of mixture components K (fixed, as in scikit-learn), or ``"auto"`` (the
        default): K is chosen at each warm-up fit by the Bayesian information criterion over
        ``1..8`` (:data:`AUTO_COMPONENTS`, never more than half the rows nor
        ``max_components``; in a provisional fit during the warm-up, nor one per
        ``2 (D + 1)`` rows; each K tried is logged, at INFO for the final fit), and the chosen
        fit's components lighter than ``min_weight`` are dropped (they modelled rare
        groups: anomalies); online, components are then born
        (a persistent, coherent group of poorly explained records), merged (two components
        that explain the same data) and removed (weight starving), see
        :mod:`streamgmm._lifecycle`.  ``n_components_`` tells how many there are now and
        ``component_ids_`` which (stable ids).  With ``"auto"`` the variance floors of
        discrete features last (``_covariance.prior_weight``): rows left without a component
        of their own then cost nats, not millions of them.  With an integer, as in
        scikit-learn, a component may become a spike of ``reg_covar``'s width on a value all
        its rows share.
    covariance_type
        ``"full"``, ``"diag"``, ``"spherical"`` or ``"tied"``, as in scikit-learn.
    half_life
        In samples: after this many new samples an old sample's weight has halved.  ``None``
        means a stationary stream (the step keeps decaying).
    step_exponent
        Decay exponent ``kappa`` of the step, in (0.5, 1].
    step_offset
        Offset ``t0`` of the step schedule.
    warm_up
        Rows buffered and fitted in batch before going online (at least 2, and never fewer
        than K).  ``None`` means ``max(1000, 2 K (D + 1))``.
    n_init
        Initialisations of the warm-up fit; the best is kept.  :meth:`fit` adds k-means
        starts and carries the best ``n_init`` starts through the complete fit, as scikit-learn
        does (see :meth:`fit`).
    init_params
        How each warm-up initialisation is seeded, as in scikit-learn: ``"k-means++"``,
        ``"kmeans"``, ``"random"`` or ``"random_from_data"``.
    weights_init, means_init, precisions_init
        Initial weights (K,), means (K, D) and precisions (shaped as scikit-learn's
        ``precisions_``), as in scikit-learn: any given one replaces the seeding's estimate in
        the warm-up fit (every provisional fit and the final one).
    reg_covar
        Added to the covariance diagonals, in units of each feature's variance at warm-up.
        0 is accepted and turns every regularisation off (no variance floors, no shrinkage)
        but the least that keeps every covariance factorisable: 1e-10 of each feature's
        variance.
    max_iter
        EM iterations per warm-up initialisation (0: the initialisation itself); for
        :meth:`fit` on more rows than the warm-up, also the most online passes.
    tol
        Convergence threshold of the warm-up EM (change of mean log-likelihood).
    random_state
        Seed for initialisation, re-seeding and :meth:`sample`.
    max_components
        With ``"auto"``: the most components (at the warm-up and through births).
    min_weight
        With ``"auto"``: the least share of the stream a component stands for.  Lighter
        components of the warm-up fit are dropped, a group of poorly explained records rarer
        than this stays anomalous (no birth, not learned), and a component below a tenth of it
        dies.

    Attributes
    ----------
    n_components_ : int
        The number of components K in use (``n_components``, or the choice of ``"auto"``).
    n_iter_ : int
        Set by :meth:`fit`: EM iterations when the warm-up covered all of X, else online
        passes over X.
    converged_ : bool
        Set by :meth:`fit`: whether the last pass (or EM iteration) changed the mean
        log-likelihood by less than ``tol``.
    lower_bound_ : float
        Set by :meth:`fit`: mean log-likelihood of X under the final model (rows with gross
        values, which are not learned, left out).
    lower_bounds_ : list of float
        Set by :meth:`fit`: the mean log-likelihood after each EM iteration or pass.
    weights_ : ndarray of shape (K,)
    means_ : ndarray of shape (K, D)
    covariances_ : ndarray
        Shape depends on ``covariance_type``, as in scikit-learn.
    precisions_cholesky_ : ndarray
        Cholesky factors of the precisions, as in scikit-learn.
    n_features_in_ : int
    n_samples_seen_ : int
        Exact number of rows learned.
    n_held_back_ : int
        Exact number of rows offered for learning (:meth:`partial_fit`, :meth:`learn_one`,
        :meth:`score_and_learn`) that the model itself did not learn: poorly explained rows held
        back by the component life cycle while a new component may be forming
        (``n_components="auto"``), rare gross values, rows of zero density, a non-finite update
        rolled back.  Rows a caller keeps out (``threshold``, ``select``: an anomaly gate) are
        not offered.  So ``n_samples_seen_ + n_held_back_`` is every row offered, exactly; this
        is what lets a delivery guarantee be checked with ``"auto"``.
    warming_up_ : bool
        True while the warm-up buffer is filling.

    Examples
    --------
    >>> import numpy as np
    >>> from streamgmm import OnlineGaussianMixture
    >>> rng = np.random.default_rng(0)
    >>> stream = np.vstack([rng.normal(-5, 1, (3000, 2)), rng.normal(5, 1, (3000, 2))])
    >>> stream = stream[rng.permutation(len(stream))]
    >>> gmm = OnlineGaussianMixture(n_components=2, random_state=0)
    >>> for batch in np.array_split(stream, 60):
    ...     gmm = gmm.partial_fit(batch)
    >>> gmm.n_samples_seen_
    6000
    >>> np.round(np.sort(gmm.means_[:, 0]))
    array([-5.,  5.])
    >>> bool(gmm.predict([[-5.0, -5.0]])[0] != gmm.predict([[5.0, 5.0]])[0])
    True
    >>> float(np.round(gmm.score([[5.0, 5.0]]), 1))
    -2.5

    References
    ----------
    .. [1] Cappé, O. and Moulines, E. (2009). On-line expectation–maximization algorithm for
       latent data models. JRSS B 71(3), 593–613.
    .. [2] Chan, T., Golub, G. and LeVeque, R. (1979). Updating formulae and a pairwise
       algorithm for computing sample variances.
    """

    # Set when the model is set up (_start) and when a model exists (_fit_buffer): the
    # one-row fast path reads them without a hasattr.
    _row_shape = None
    _s0 = None
    # Set by fit() around its warm-up: _fit_buffer keeps the fits of the other starts in
    # _starts (best first), for fit() to carry each through the complete fit.
    _keep_starts = False
    _starts = ()
    # fit()'s extra k-means starts; the River adapters turn them off for their warm-up fits,
    # which keep the stream warm-up's n_init starts (and main's cost: 6 more k-means seeds
    # made a GaussianMixture(n_components=3) over 3,000 Shuttle records 1.4-1.7x slower).
    _extra_starts = True

    _parameter_constraints: dict = {  # noqa: RUF012 (scikit-learn's convention)
        "n_components": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "covariance_type": [StrOptions(set(cov_ops.COVARIANCE_TYPES))],
        "half_life": [Interval(Real, 0, None, closed="neither"), None],
        "step_exponent": [Interval(Real, 0.5, 1.0, closed="right")],
        "step_offset": [Interval(Real, 0, None, closed="left")],
        "warm_up": [Interval(Integral, 2, None, closed="left"), None],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "init_params": [StrOptions({"kmeans", "k-means++", "random", "random_from_data"})],
        "weights_init": ["array-like", None],
        "means_init": ["array-like", None],
        "precisions_init": ["array-like", None],
        "reg_covar": [Interval(Real, 0.0, None, closed="left")],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "tol": [Interval(Real, 0.0, None, closed="left")],
        "random_state": ["random_state"],
        "max_components": [Interval(Integral, 1, None, closed="left")],
        "min_weight": [Interval(Real, 0.0, 0.5, closed="right")],
    }

    def __init__(
        self,
        n_components=MIXTURE_DEFAULTS["n_components"],
        *,
        covariance_type=MIXTURE_DEFAULTS["covariance_type"],
        half_life=MIXTURE_DEFAULTS["half_life"],
        step_exponent=MIXTURE_DEFAULTS["step_exponent"],
        step_offset=MIXTURE_DEFAULTS["step_offset"],
        warm_up=MIXTURE_DEFAULTS["warm_up"],
        n_init=MIXTURE_DEFAULTS["n_init"],
        init_params=MIXTURE_DEFAULTS["init_params"],
        weights_init=None,
        means_init=None,
        precisions_init=None,
        reg_covar=MIXTURE_DEFAULTS["reg_covar"],
        max_iter=100,
        tol=1e-3,
        random_state=None,
        max_components=MIXTURE_DEFAULTS["max_components"],
        min_weight=MIXTURE_DEFAULTS["min_weight"],
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.half_life = half_life
        self.step_exponent = step_exponent
        self.step_offset = step_offset
        self.warm_up = warm_up
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.max_components = max_components
        self.min_weight = min_weight

    # ------------------------------------------------------------------ learning

    def fit(self, X, y=None):
        """Learn a fresh model from all of X; the result does not depend on the row order.

        The rows are shuffled (with ``random_state``); the warm-up fits the first
        ``warm_up`` of them by batch EM (all of X if it is no longer), then online passes
        over all of X, each in a fresh random order, continue until the mean log-likelihood of
        X changes by less than ``tol`` or ``max_iter`` passes are done.

        Several starts, as scikit-learn's ``n_init``: the warm-up runs ``n_init`` starts seeded
        by ``init_params`` and, when ``n_init > 1`` and ``init_params`` is not ``"kmeans"``,
        ``2 n_init`` seeded by k-means (scikit-learn's default seeding, which finds optima that
        k-means++ seeds miss on lattice-like data).  Each start runs
        ``_warm_up.SCREEN_ITER`` EM iterations and only the best ``n_init`` go on to
        convergence; k-means seeds that partition the rows as an earlier seed did, and starts
        that reach the same optimum, are dropped.  When the warm-up covered all of X the best
        of them is the model; otherwise each goes through the complete fit (the online passes)
        and the best final ``lower_bound_`` is kept.  "Best" ranks degenerate fits last: a fit
        with a component on fewer than 2 rows (``_warm_up.MIN_COMPONENT_ROWS``), whose variance
        is only the regulariser's, buys training likelihood that held-out rows do not pay back.

        Sets ``n_iter_`` (EM iterations of the warm-up when it covered all of X, else online
        passes), ``converged_`` and ``lower_bound_`` (the final mean log-likelihood of X).
        """
        self._validate_params()
        self._reset()
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        if self.n_components != "auto" and X.shape[0] < self.n_components:
            raise ValueError(
                f"Expected n_samples >= n_components but got n_components = "
                f"{self.n_components}, n_samples = {X.shape[0]}"
            )
        self._check_magnitude(X)
        self._start(X.shape[1], X.shape[0])
        X = X[np.random.default_rng([self._seed, 1]).permutation(X.shape[0])]
        w = self._warm_up_size
        # The warm-up's fit keeps the fits of all its starts (_starts), best first.
        self._keep_starts = True
        try:
            self._learn_rows(X[:w])
            if self.warming_up_:
                self._finish_warm_up()
        finally:
            starts = self._starts
            self.__dict__.pop("_keep_starts", None)
            self.__dict__.pop("_starts", None)
        if w >= X.shape[0]:  # batch EM saw everything: its best start is the model
            fit = self._warm_up_fit
            self.n_iter_, self.converged_ = fit.n_iter, fit.converged
            self.lower_bounds_ = fit.lower_bounds
            self.lower_bound_ = fit.lower_bounds[-1] if fit.lower_bounds else -np.inf
        else:
            # Gross rows (see _skip_gross) are not learned: the bound is over the others.
            ordinary = X[((self._gross_lo <= X) & (self._gross_hi >= X)).all(axis=1)]
            if not ordinary.shape[0]:
                ordinary = X
            # The best n_init starts of the warm-up each go through the complete fit.
            starts = starts[: max(self.n_init, 1) - 1]
            after_warm_up = copy.deepcopy(self.__dict__) if starts else None
            self._online_passes(X, w, ordinary)
            best, best_rank = self.__dict__, self._rank(ordinary.shape[0])
            for start in starts:
                self.__dict__ = copy.deepcopy(after_warm_up)
                self._install(start)
                self._warm_up_fit = start
                self._online_passes(X, w, ordinary)
                rank = self._rank(ordinary.shape[0])
                if rank < best_rank:
                    best, best_rank = self.__dict__, rank
            self.__dict__ = best
        if not self.converged_ and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def _rank(self, n_rows):
        """How :meth:`fit` ranks complete fits of ``n_rows`` rows (lowest best): as the
        warm-up ranks its starts (``_warm_up.fit_rank``), by the final ``lower_bound_``."""
        return fit_rank(self.weights_, self.lower_bound_, n_rows)

    def _online_passes(self, X, w, ordinary):
        """The rest of :meth:`fit` after the warm-up on ``X[:w]`` (X shuffled): learn the
        other rows, then passes over X in fresh orders until the bound on ``ordinary`` settles."""
        self._learn_rows(X[w:])
        self.lower_bounds_ = [self.score(ordinary)]
        self.n_iter_, self.converged_ = 1, False
        shuffle = np.random.default_rng([self._seed, 2])
        while self.n_iter_ < self.max_iter:
            self._learn_rows(X[shuffle.permutation(X.shape[0])])
            self.n_iter_ += 1
            self.lower_bounds_.append(self.score(ordinary))
            if abs(self.lower_bounds_[-1] - self.lower_bounds_[-2]) < self.tol:
                self.converged_ = True
                break
        self.lower_bound_ = self.lower_bounds_[-1]

    def fit_predict(self, X, y=None):
        """:meth:`fit` on X, then the most probable component of each row of X."""
        return self.fit(X).predict(X)

    def partial_fit(self, X, y=None):
        """Learn from one row or a mini-batch (2-D array); returns self."""
        X = self._check_rows(X)
        self._learn_counted(X.shape[0], self._learn_rows, X)
        return self

    def _learn_counted(self, offered, learn, *args):
        """``learn(*args)``, counting the offered rows it did not learn as held back (the
        difference of ``n_samples_seen_``: exact whichever rule kept a row out)."""
        if not hasattr(self, "n_features_in_"):
            return learn(*args)  # the first rows set the model up, counters included
        before = self.n_samples_seen_
        out = learn(*args)
        self.n_held_back_ += offered - (self.n_samples_seen_ - before)
        return out

    def score_and_learn(self, X, threshold=None, select=None) -> ScoreResult:
        """Score a batch with the model as it is, then learn from it (prequential).

        Every row is scored before any row of the batch is learned (one E-step serves both).
        Rows whose anomaly score ``-log_density`` exceeds ``threshold`` are not learned, and
        neither are rows whose density underflows to zero, nor (``n_components="auto"``)
        poorly explained rows held back while a new component may be forming; every row is
        evidence for the component life cycle, learned or not.  Rows seen before any model exists
        get a NaN log-density and uniform probabilities.

        ``select``, if given, is called with the rows' log-densities before anything is learned
        and returns a boolean mask of the rows that may be learned: a caller that decides from
        the scores (the anomaly gate) needs no second E-step.
        """
        X = self._check_rows(X)
        n = X.shape[0]
        if self._has_model():
            log_density, log_resp, diff, extreme = self._e_step(X)
            with np.errstate(under="ignore"):
                proba = np.exp(log_resp)
            learned = np.isfinite(log_density)
            if extreme:  # learning uses bounded responsibilities and deviations: recompute
                diff = None
        else:
            log_density = np.full(n, np.nan)
            proba = np.full((n, self._k), 1.0 / self._k)
            learned = np.ones(n, dtype=bool)
            diff = None
        # Rows the caller keeps out are not offered; the model's own refusals (zero density,
        # the life cycle's hold-back, gross values) are counted in n_held_back_.
        offered = np.ones(n, dtype=bool)
        if threshold is not None:
            offered &= ~(-log_density > threshold)
        if select is not None:
            offered &= np.asarray(select(log_density), dtype=bool)
        learned &= offered
        lifecycle = self._lifecycle if not self.warming_up_ else None
        if lifecycle is not None:  # every scored row counts as evidence, learned or not
            learned &= ~lifecycle.observe(self, X, log_density)
            self._lc_quiet = True
        try:
            before = self.n_samples_seen_
            self._learn_scored(X, learned, proba, diff)
            self.n_held_back_ += int(offered.sum()) - (self.n_samples_seen_ - before)
        finally:
            self._lc_quiet = False
        if lifecycle is not None:
            lifecycle.step(self)
        return ScoreResult(log_density, proba, learned)

    def _learn_scored(self, X, learned, proba, diff):
        if learned.all():
            self._learn_rows(X, proba if diff is not None else None, diff)
        elif learned.any():
            rows = np.flatnonzero(learned)
            self._learn_rows(
                X[rows],
                proba[rows] if diff is not None else None,
                diff[:, rows] if diff is not None else None,
            )

    # ------------------------------------------------------------------ prediction

    def score_samples(self, X):
        """Log-density of each row under the current model, shape (n,)."""
        X = self._check_predict(X)
        return self._chunked(X, lambda c: self._e_step(c)[0])

    def score(self, X, y=None):
        """Mean log-likelihood per row."""
        return float(self.score_samples(X).mean())

    def predict_proba(self, X):
        """Responsibilities (posterior component probabilities), shape (n, K)."""
        X = self._check_predict(X)
        with np.errstate(under="ignore"):
            return self._chunked(X, lambda c: np.exp(self._e_step(c)[1]))

    def predict(self, X):
        """Most probable component of each row."""
        X = self._check_predict(X)
        return self._chunked(X, lambda c: self._e_step(c)[1].argmax(axis=1))

    def sample(self, n_samples=1, random_state=None):
        """Draw ``n_samples`` rows from the model; returns (X, component labels).

        ``random_state``: a seed, ``RandomState`` or ``Generator`` for this draw; ``None``
        uses the estimator's ``random_state`` (as scikit-learn does).
        """
        self._check_fitted()
        if not isinstance(n_samples, Integral) or n_samples < 1:
            raise ValueError(f"Invalid value for 'n_samples': {n_samples}. It must be >= 1.")
        if random_state is None:
            rng = check_random_state(self.random_state)
        elif isinstance(random_state, np.random.Generator):
            rng = random_state
        else:
            rng = check_random_state(random_state)
        return self._draw(int(n_samples), rng)

    def _draw(self, n_samples, rng):
        """(rows, component labels) drawn with ``rng`` (a RandomState or a Generator)."""
        counts = rng.multinomial(n_samples, self.weights_)
        # A Generator can draw through the Cholesky factor (faster than the SVD default).
        how = {"method": "cholesky"} if isinstance(rng, np.random.Generator) else {}
        covs = self._covariance_matrices()
        X = np.vstack(
            [
                rng.multivariate_normal(mean, cov, int(c), **how)
                for mean, cov, c in zip(self._means, covs, counts, strict=True)
            ]
        )
        return X, np.repeat(np.arange(self._k), counts)

    def bic(self, X):
        """Bayesian information criterion on X (lower is better)."""
        n = np.asarray(X).shape[0]
        return -2.0 * self.score(X) * n + self._n_parameters() * np.log(n)

    def aic(self, X):
        """Akaike information criterion on X (lower is better)."""
        n = np.asarray(X).shape[0]
        return -2.0 * self.score(X) * n + 2.0 * self._n_parameters()

    # ------------------------------------------------------------------ fitted attributes

    @property
    def weights_(self):
        self._check_fitted()
        return self._s0 / self._s0.sum()

    @property
    def means_(self):
        self._check_fitted()
        return self._means

    @property
    def covariances_(self):
        self._check_fitted()
        return cov_ops.regularised(self._stable_cov(), self._reg, self.covariance_type)

    @property
    def precisions_cholesky_(self):
        self._check_fitted()
        return cov_ops.precisions_cholesky(self._stable_cov(), self._reg, self.covariance_type)

    @property
    def precisions_(self):
        self._check_fitted()
        return cov_ops.exact_precision(
            self._stable_cov(), self._reg, self.covariance_type, self._k
        )[0]

    def _factorised(self, cov):
        """``(cov, precision, logdet)``, factorising once; on failure ``cov`` gets the least
        diagonal jitter that makes it factorisable (see ``_covariance.stabilise``)."""
        ct, k = self.covariance_type, self._k
        if ct in ("full", "tied"):
            # The regulariser was fixed in the warm-up's units; if a feature's scale has since
            # grown a millionfold (it was constant then), it sinks below rounding and the
            # precision turns to noise.  Keep it at least RELATIVE_REG of each variance.
            var = np.diagonal(cov, axis1=-2, axis2=-1)
            need = RELATIVE_REG * (var.max(axis=0) if var.ndim == 2 else var)
            if (need > self._reg).any():
                self._reg = np.maximum(self._reg, need)
                self._reg_mean = float(self._reg.mean())
        try:
            return cov, *cov_ops.exact_precision(cov, self._reg, ct, k)
        except np.linalg.LinAlgError:
            cov = cov_ops.stabilise(cov, self._reg, ct)
            return cov, *cov_ops.exact_precision(cov, self._reg, ct, k)

    def _stable_cov(self):
        return cov_ops.stabilise(self._cov, self._reg, self.covariance_type)

    def _covariance_matrices(self):
        """Each component's regularised covariance as a (K, D, D) matrix."""
        return cov_ops.full_matrices(self._stable_cov(), self._reg, self.covariance_type, self._k)

    @property
    def full_covariances_(self):
        """Every component's covariance as a (K, D, D) matrix, whatever ``covariance_type``."""
        self._check_fitted()
        return self._covariance_matrices()

    @property
    def step_floor(self) -> float:
        """Least step ``rho`` of an update: ``1 - 2**(-1/half_life)``, 0 when stationary.

        It can be raised for a while and put back: the anomaly gate raises it after a detected
        change so that the model re-adapts within a few dozen records.
        """
        return self._rho_floor

    @step_floor.setter
    def step_floor(self, rho: float) -> None:
        rho = float(rho)
        if not 0.0 <= rho < 1.0:
            raise ValueError(f"step_floor must be in [0, 1), got {rho}")
        if rho != self._rho_floor:  # the group merge rule needs the decay of past steps
            history = self._floor_history
            history.append((int(self.n_samples_seen_), rho))
            if len(history) > FLOOR_HISTORY:
                del history[: len(history) - FLOOR_HISTORY]
        self._rho_floor = rho

    @property
    def has_model_(self):
        """Whether a model (provisional during the warm-up, or final) exists to score with."""
        return self._has_model()

    def __sklearn_is_fitted__(self):
        return self._has_model()

    # ------------------------------------------------------------------ one row (public)

    def learn_one(self, x, observed=None, *, log_density=None) -> bool:
        """Learn one row; returns whether it was learned.

        Parameters
        ----------
        x
            1-D array of ``n_features_in_`` values (float64 is the fast path).
        observed
            Optional boolean mask: the row's observed coordinates.  The others (any value,
            NaN included) are filled by their conditional expectation under each component
            (missing-data EM, Ghahramani & Jordan 1994); see :mod:`streamgmm._missing`.
        log_density
            Optional: what :meth:`score_one` returned for this complete row, with no update in
            between (a scored-then-learned stream, as the River detector's).  The life cycle
            (``n_components="auto"``) then does not score the row again; the result is the
            same.  A value that is not the row's current log-density misleads the life cycle.

        Returns False, and leaves the state untouched, when the row cannot be learned: its
        density under the model underflows to zero, or it is partial while no model past the
        warm-up exists.  A non-finite or out-of-range value raises ValueError, state untouched.
        """
        if (
            observed is None
            and type(x) is np.ndarray
            and x.dtype is _FLOAT64
            and x.shape == self._row_shape
            and x.strides == _ROW_STRIDES
            and not self.warming_up_
        ):  # the hot path: the compiled kernel checks the values (see _learn_one_status)
            if self._learn_one_status(x, log_density)[1]:
                return True
            self.n_held_back_ += 1
            return False
        x, observed = self._check_one(x, observed, learning=True)
        if observed is None:
            learned = self._learn_one_status(x, None if self.warming_up_ else log_density)[1]
        else:
            learned = self._learn_partial(x, observed)
        if not learned:
            self.n_held_back_ += 1
        return learned

    def _learn_partial(self, x, observed) -> bool:
        if self.warming_up_:
            return False
        obs = np.flatnonzero(observed)
        inside = _kernels.row_inside(x[obs], self._gross_lo[obs], self._gross_hi[obs])
        if not inside and self._skip_gross(1):
            return False
        from streamgmm._missing import learn_one_partial

        before = self.n_samples_seen_
        try:
            learn_one_partial(self, x, observed)
        except FloatingPointError:
            return False
        return self.n_samples_seen_ > before

    def score_one(self, x, observed=None) -> float:
        """Log-density of one row (marginal over the observed coordinates if ``observed``)."""
        if (
            observed is None
            and type(x) is np.ndarray
            and x.dtype is _FLOAT64
            and x.shape == self._row_shape
            and x.strides == _ROW_STRIDES
            and self._s0 is not None
        ):  # the hot path: the compiled kernel checks the values
            log_density = self._one(x, np.empty(self._k))
            if log_density == log_density:  # NaN: an invalid value, the checks below say which
                return float(log_density)
        x, observed = self._check_one(x, observed)
        self._check_fitted()
        if observed is None:
            return float(self._score_one(x))
        from streamgmm._missing import marginal_log_prob

        try:
            return float(marginal_log_prob(self, x, observed)[0])
        except FloatingPointError:
            return -np.inf

    def predict_proba_one(self, x, observed=None) -> np.ndarray:
        """Responsibilities of one row, shape (K,) (marginal over unobserved coordinates)."""
        if (
            observed is None
            and type(x) is np.ndarray
            and x.dtype is _FLOAT64
            and x.shape == self._row_shape
            and x.strides == _ROW_STRIDES
            and self._s0 is not None
        ):  # the hot path: the compiled kernel checks the values
            resp = np.empty(self._k)
            ld = self._one(x, resp)
            if ld == -np.inf:
                resp = np.full(self._k, 1.0 / self._k)
            if ld == ld:  # NaN: an invalid value, the checks below say which
                return resp
        x, observed = self._check_one(x, observed)
        self._check_fitted()
        if observed is None:
            ld, resp = self._proba_one(x)
        else:
            from streamgmm._missing import marginal_log_prob

            try:
                ld, resp = marginal_log_prob(self, x, observed)
            except FloatingPointError:
                ld = -np.inf
        if ld == -np.inf:  # no component gives the row a density: say so evenly
            resp = np.full(self._k, 1.0 / self._k)
        return resp

    def _validate_params(self):
        # Thousands of models per key are restored and built; a parameter set that passed once
        # passes again (see streamgmm._params).
        validate_once(type(self), self.get_params(deep=False), super()._validate_params)

    def score_proba_one(self, x) -> tuple[float, np.ndarray]:
        """``(log-density, responsibilities)`` of one complete row, from one compiled pass.

        :meth:`score_one` and :meth:`predict_proba_one` in one call (a caller that needs both,
        as the anomaly gate's few-rows step, pays one E-step).  No state change.  A row whose
        density underflows gets ``-inf`` and even responsibilities.
        """
        if (
            type(x) is np.ndarray
            and x.dtype is _FLOAT64
            and x.shape == self._row_shape
            and x.strides == _ROW_STRIDES
            and self._s0 is not None
        ):  # the hot path: the compiled kernel checks the values
            resp = np.empty(self._k)
            ld = self._one(x, resp)
            if ld == ld:  # NaN: an invalid value, the checks below say which
                if ld == -np.inf:
                    resp = np.full(self._k, 1.0 / self._k)
                return float(ld), resp
        x, _ = self._check_one(x)
        self._check_fitted()
        ld, resp = self._proba_one(x)
        if ld == -np.inf:
            resp = np.full(self._k, 1.0 / self._k)
        return float(ld), resp

    def _check_one(self, x, observed=None, learning=False):
        """``(x, observed)`` validated; ``observed`` is None for a complete row.

        A C-contiguous float64 1-D array of the right length costs one compiled pass; anything
        else gets the full conversion and checks.
        """
        d = getattr(self, "n_features_in_", -1)
        if (
            observed is None
            and type(x) is np.ndarray
            and x.dtype == np.float64
            and x.ndim == 1
            and x.shape[0] == d
            and x.flags.c_contiguous
            and _kernels.row_within(x, MAX_ABS_VALUE)
        ):
            return x, None
        x = np.ascontiguousarray(x, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"Expected a 1-D row, got an array of shape {x.shape}")
        if d == -1:
            if not learning:
                self._check_fitted()
            d = x.shape[0]
            if d == 0:
                raise ValueError("a row needs at least one feature")
        if x.shape[0] != d:
            raise ValueError(
                f"X has {x.shape[0]} features, but {type(self).__name__} is expecting {d} "
                "features as input."
            )
        if observed is not None:
            observed = np.asarray(observed)
            if observed.dtype != bool or observed.shape != (d,):
                raise ValueError(f"observed must be a boolean mask of shape ({d},)")
            if observed.all():
                observed = None
        values = x if observed is None else x[observed]
        if not np.isfinite(values).all():
            raise ValueError("Input X contains NaN or infinity at observed coordinates.")
        if values.size and np.abs(values).max() > MAX_ABS_VALUE:
            raise ValueError(
                f"Input X has values beyond ±{MAX_ABS_VALUE:g}; their squares would overflow."
            )
        if observed is not None:
            x = np.where(observed, x, 0.0)  # placeholders: never read as data
        if not hasattr(self, "n_features_in_"):  # first row ever: set the model up
            self._validate_params()
            self._start(d, None)
        return x, observed

    # ------------------------------------------------------------------ fast one-row paths

    def _score_one(self, x):
        """Log-density of one validated row (1-D float64); no state change."""
        return self._one(x, np.empty(self._k))

    def _proba_one(self, x):
        """(log-density, responsibilities) of one validated row; no state change."""
        resp = np.empty(self._k)
        return self._one(x, resp), resp

    def _one(self, x, resp):
        if self.covariance_type in ("full", "tied"):
            return _kernels.score_dense(
                x, self._s0, self._means, self._prec3, self._logdet, self._tied, resp
            )
        return _kernels.score_diag(
            x, self._s0, self._means, self._prec, self._logdet, self._spherical, resp
        )

    def _learn_one(self, x):
        """Learn one validated row (1-D float64, finite); returns its log-density before.

        The row is learned unless its density underflows to zero (returns ``-inf``) or it is
        a rare gross row (see :meth:`_skip_gross`).  Before any model exists the returned
        log-density is NaN.
        """
        return self._learn_one_status(x)[0]

    def _learn_one_status(self, x, log_density=None):
        """``(log-density before, learned)`` of one validated row, learned if it can be.

        ``log_density``: the row's log-density under the current model if the caller has it
        (saves the life cycle a second scoring of the row)."""
        if self.warming_up_:
            before = self._score_one(x) if self._has_model() else np.nan
            self._learn_rows(x[None, :])
            return before, True
        if not _kernels.row_inside(x, self._gross_lo, self._gross_hi):
            if not _kernels.row_within(x, MAX_ABS_VALUE):  # before any accounting
                self._refuse(x)
            if self._skip_gross(1):
                return self._score_one(x), False
        lifecycle = self._lifecycle
        if lifecycle is not None and not self._lc_quiet:
            before = self._score_one(x) if log_density is None else log_density
            held = lifecycle.observe_one(self, x, before)
            lifecycle.step(self)
            if held:  # poorly explained: evidence for a birth, not learned
                return before, False
        ct = self.covariance_type
        args = (float(self.n_samples_seen_), self.step_offset, self.step_exponent)
        if ct == "full":
            lse, status = _kernels.learn_full(
                x, self._s0, self._means, self._cov, self._prec, self._logdet,
                *args, self._rho_floor, W_CAP, self._q_max,
            )  # fmt: skip
        elif ct == "tied":
            lse, status = _kernels.learn_tied(
                x, self._s0, self._means, self._cov, self._prec, self._logdet,
                *args, self._rho_floor, W_CAP, self._q_max,
            )  # fmt: skip
        elif ct == "diag":
            lse, status = _kernels.learn_diag(
                x, self._s0, self._means, self._cov, self._prec, self._logdet, self._reg,
                *args, self._rho_floor, W_CAP, self._q_max,
            )  # fmt: skip
        else:
            lse, status = _kernels.learn_spherical(
                x, self._s0, self._means, self._cov, self._prec, self._logdet,
                self._reg_mean, *args, self._rho_floor, W_CAP, self._q_max,
            )  # fmt: skip
        if status == _kernels.REJECTED:
            return lse, False
        if status == _kernels.INVALID:
            self._refuse(x)
        self.n_samples_seen_ += 1
        self._since_refresh += 1
        if status == _kernels.LEARNED_REFRESH or self._since_refresh >= REFRESH_EVERY:
            self._refresh()
        return lse, True

    def _refuse(self, x):
        """Raise the full checks' ValueError for a row the compiled path found invalid."""
        self._check_one(np.array(x, dtype=np.float64))
        raise ValueError("Input X contains NaN, infinity or values beyond ±1e150.")

    def observe_one(self, x, *, log_density=None) -> float:
        """Let the component life cycle see a row that is not learned; its log-density.

        For a row an anomaly gate keeps out of learning: with ``n_components="auto"`` a
        persistent, coherent group of poorly explained rows becomes a component even if none
        of them is learned (:mod:`streamgmm._lifecycle`).  Nothing else changes; with an
        integer ``n_components``, or during the warm-up, this only scores the row.
        ``log_density``: as in :meth:`learn_one` (the row's :meth:`score_one`, no update since).
        """
        x, _ = self._check_one(x)
        self._check_fitted()
        # The caller's score of the row (score_one, no update since) spares scoring it again.
        if log_density is None or self.warming_up_:
            log_density = float(self._score_one(x))
        lifecycle = None if self.warming_up_ else self._lifecycle
        if lifecycle is not None:
            lifecycle.observe_one(self, x, log_density)
            lifecycle.step(self)
        return log_density

    @property
    def component_ids_(self) -> np.ndarray:
        """A stable id per component (K,): a born component gets a new id, never reused; a
        merge keeps the older id.  Fixed K: ``0..K-1``.  Read-only; replaced when K changes."""
        self._check_fitted()
        lifecycle = self._lifecycle
        if lifecycle is None:
            return np.arange(self._k)
        return lifecycle.ids

    @property
    def lifecycle_counts_(self) -> dict:
        """``{"births", "merges", "deaths"}`` so far (all 0 with an integer ``n_components``)."""
        lc = self._lifecycle
        if lc is None:
            return {"births": 0, "merges": 0, "deaths": 0}
        return {"births": lc.n_births, "merges": lc.n_merges, "deaths": lc.n_deaths}

    def _skip_gross(self, n_gross):
        """Account for ``n_gross`` gross rows; True if they are rare, so not to be learned.

        A gross row has a value outside the warm-up's robust bounds
        (``_warm_up.robust_bounds``: beyond 1e4 robust spreads of the feature's median).  While
        such rows are rare (their rate, with a half-life of ``GROSS_HALF_LIFE`` learned rows,
        below ``RECURRING_SHARE``) they are not learned: one record of 1e149 among values of
        order 1 cannot wreck the model.  When they recur, the stream has moved there (drift,
        a rescaled sensor) and they are learned.
        """
        decay = GROSS_DECAY ** (self.n_samples_seen_ - self._gross_at)
        self._gross_rate = self._gross_rate * decay + n_gross * (1.0 - GROSS_DECAY)
        self._gross_at = self.n_samples_seen_
        return self._gross_rate < RECURRING_SHARE

    def learn_expected_one(self, x_hat, extra_cov, resp) -> None:
        """Learn one sample from its expected sufficient statistics (missing-data EM).

        The M-step half of learning a partially observed row (Ghahramani & Jordan, 1994):
        :meth:`learn_one` with an ``observed`` mask computes these expectations with
        :func:`streamgmm._missing.conditional_moments` and hands them here.  Each component
        sees the second moment ``x_hat x_hat^T + extra_cov``, so its centered update is
        ``C' = (1 - w) (C + w e e^T) + w extra_cov``.

        Parameters
        ----------
        x_hat
            (K, D): each component's conditional expectation of the sample.
        extra_cov
            (K, D, D): each component's conditional covariance of the unobserved coordinates
            (zero where observed).
        resp
            (K,): the sample's responsibilities (non-negative, summing to 1).

        Raises NotFittedError during the warm-up, ValueError for arrays of the wrong shape,
        non-finite values or responsibilities that are not a distribution.
        """
        self._check_fitted()
        k, d = self._k, self.n_features_in_
        x_hat = np.asarray(x_hat, dtype=np.float64)
        extra = np.asarray(extra_cov, dtype=np.float64)
        resp = np.asarray(resp, dtype=np.float64)
        for name, value, shape in (
            ("x_hat", x_hat, (k, d)),
            ("extra_cov", extra, (k, d, d)),
            ("resp", resp, (k,)),
        ):
            if value.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
            if not np.isfinite(value).all():
                raise ValueError(f"{name} contains NaN or infinity")
        if (resp < 0).any() or abs(resp.sum() - 1.0) > 1e-6:
            raise ValueError("resp must be non-negative and sum to 1")
        if self.warming_up_:
            raise NotFittedError("learning from partial rows needs a model past its warm-up")
        rho = self._steps(1)[0]
        s0 = (1.0 - rho) * self._s0 + rho * resp
        w = np.minimum(np.where(resp > 0, rho * resp / s0, 0.0), W_CAP)
        e = x_hat - self._means
        q = cov_ops.mahalanobis(e[:, None, :], self._prec, self.covariance_type)[0]
        with np.errstate(divide="ignore", invalid="ignore"):  # bounded influence, as online
            e = e * np.where(q > self._q_max, np.sqrt(self._q_max / q), 1.0)[:, None]
        means = self._means + w[:, None] * e
        outer = e[:, :, None] * e[:, None, :]
        ct = self.covariance_type
        if ct == "full":
            cov = (1 - w)[:, None, None] * (self._cov + w[:, None, None] * outer)
            cov += w[:, None, None] * extra
        elif ct == "diag":
            diag_e = np.einsum("kii->ki", outer)
            cov = (1 - w)[:, None] * (self._cov + w[:, None] * diag_e)
            cov += w[:, None] * np.einsum("kii->ki", extra)
        elif ct == "spherical":
            tr_e = np.einsum("kii->k", outer) / e.shape[1]
            cov = (1 - w) * (self._cov + w * tr_e) + w * np.einsum("kii->k", extra) / e.shape[1]
        else:
            spread = (1 - w)[:, None, None] * outer + extra
            cov = (1 - rho) * self._cov + rho * np.einsum("k,kij->ij", resp, spread)
        self._commit(np.maximum(s0, _kernels.TINY_WEIGHT), means, cov, 1)

    # ------------------------------------------------------------------ group learning

    def freeze_components(self) -> None:
        """Keep the component set as it is: no birth, merge, death nor re-seeding from now on.

        For a model shared by a group of learners (:mod:`streamgmm.group`): its increments are
        linear statistics of fixed components, and a component created or removed by one
        learner would not exist, or mean another thing, for the others.  With
        ``n_components="auto"`` the life cycle stops entirely (poorly explained rows are
        learned, not held back: nothing could be born from them).  Needs a model past its
        warm-up.  Irreversible for this instance (it is kept in :meth:`get_state`)."""
        self._check_fitted()
        if self.warming_up_:
            raise NotFittedError("freeze_components needs a model past its warm-up")
        self._frozen = True
        self._lifecycle = None

    @property
    def components_frozen_(self) -> bool:
        """Whether :meth:`freeze_components` was called."""
        return bool(getattr(self, "_frozen", False))

    def _decay(self, t0, t1) -> float:
        from streamgmm.group import log_decay

        return math.exp(
            log_decay(t0, t1, self.step_offset, self.step_exponent, self._floor_history)
        )

    def group_statistics(self, center=None):
        """The model's sufficient statistics (:class:`streamgmm.group.MixtureStatistics`)
        about ``center`` (K, D) (default: the current means), stamped with
        ``n_samples_seen_``."""
        from streamgmm.group import MixtureStatistics

        self._check_fitted()
        return MixtureStatistics.from_moments(
            self._s0, self._means, self._cov, self.covariance_type, center, self.n_samples_seen_
        )

    def increment_since(self, base, base_version=None):
        """What this model learned since its statistics were ``base`` (a
        :meth:`group_statistics` of this model, taken earlier with nothing but its own learning
        since): ``D = L - a R`` with ``a`` the decay of its steps in between
        (:func:`streamgmm.group.increment`)."""
        from streamgmm.group import increment

        n = self.n_samples_seen_ - base.n_samples
        if n < 0:
            raise ValueError("base is newer than the model")
        decay = self._decay(base.n_samples, self.n_samples_seen_)
        local = self.group_statistics(base.center)
        return increment(local, base, decay, n, base_version)

    def fold_increment(self, inc) -> None:
        """Fold another learner's :class:`streamgmm.group.Increment` into this model as if it
        had learned the sender's rows itself (:func:`streamgmm.group.fold`): the statistics
        become ``a_S S + c D``, ``n_samples_seen_`` advances by the sender's rows.

        Raises ValueError for an increment of other components (shape) or one whose result is
        not a valid mixture (the model is left unchanged)."""
        from streamgmm.group import fold

        self._check_fitted()
        if self.warming_up_:
            raise NotFittedError("fold_increment needs a model past its warm-up")
        if inc.n_samples == 0:
            return
        if inc.stats.s1.shape != self._means.shape or inc.stats.covariance_type != (
            self.covariance_type
        ):
            raise ValueError(
                f"increment of {inc.stats.covariance_type} statistics {inc.stats.s1.shape} "
                f"does not fit this {self.covariance_type} model {self._means.shape}"
            )
        mine = self.group_statistics(inc.stats.center)
        a_s = self._decay(self.n_samples_seen_, self.n_samples_seen_ + inc.n_samples)
        s0, means, cov = fold(mine, inc, a_s).moments()
        if not (np.isfinite(s0).all() and (s0 > 0).all()):
            raise ValueError("the folded increment leaves a component without weight")
        before = self.n_samples_seen_
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a rollback is an error here
            try:
                self._commit(np.maximum(s0, _kernels.TINY_WEIGHT), means, cov, inc.n_samples)
            except RuntimeWarning as e:
                raise ValueError(f"the folded increment is not a valid mixture: {e}") from None
        assert self.n_samples_seen_ == before + inc.n_samples

    # ------------------------------------------------------------------ state

    def get_state(self):
        """The whole learner as plain arrays plus JSON-able metadata (no pickle needed)."""
        params = {
            name: value.tolist() if isinstance(value, np.ndarray) else value
            for name, value in self.get_params().items()
        }
        if not (params["random_state"] is None or isinstance(params["random_state"], Integral)):
            raise ValueError("get_state needs random_state to be None or an int")
        meta = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "params": params,
            "started": hasattr(self, "n_features_in_"),
        }
        arrays = {}
        if meta["started"]:
            meta.update(
                n_features_in=int(self.n_features_in_),
                n_samples_seen=int(self.n_samples_seen_),
                n_held_back=int(self.n_held_back_),
                warming_up=bool(self.warming_up_),
                since_refresh=int(self._since_refresh),
                seed=int(self._seed),
                provisional_n=int(self._provisional_n),
                warm_up_size=int(self._warm_up_size),
                gross_rate=float(self._gross_rate),
                n_components_in_use=int(self._k),
                gross_at=int(self._gross_at),
                frozen=bool(self._frozen),
                has_model=self._has_model(),
                feature_names_in=(
                    [str(f) for f in self.feature_names_in_]
                    if hasattr(self, "feature_names_in_")
                    else None
                ),
            )
            if self.warming_up_:
                arrays["buffer"] = self._buffer[: self._n_buffered].copy()
            if self._has_model():
                for name in _STATE_ARRAYS:
                    arrays[name[1:]] = getattr(self, name).copy()
            if self._lifecycle is not None:
                lc_arrays, meta["lifecycle"] = self._lifecycle.get_state()
                arrays.update(lc_arrays)
        return arrays, json.loads(json.dumps(meta))

    @classmethod
    def from_state(cls, arrays, meta):
        """Rebuild a learner from :meth:`get_state`'s output; raises ValueError if malformed."""
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(f"not a streamgmm model state: format={meta.get('format')!r}")
        if meta.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported model state version {meta.get('version')!r}")
        model = cls(**meta["params"])
        model._validate_params()
        if not meta["started"]:
            return model
        d = int(meta["n_features_in"])
        model._start(
            d,
            None,
            seed=int(meta["seed"]),
            warm_up_size=int(meta["warm_up_size"]),
            k=meta.get("n_components_in_use"),
        )
        model.n_samples_seen_ = int(meta["n_samples_seen"])
        model.n_held_back_ = int(meta.get("n_held_back", 0))  # absent in older states
        model._since_refresh = int(meta["since_refresh"])
        model._provisional_n = int(meta["provisional_n"])
        model._gross_rate = float(meta.get("gross_rate", 0.0))
        model._gross_at = int(meta.get("gross_at", 0))
        model._frozen = bool(meta.get("frozen", False))
        if meta.get("feature_names_in") is not None:
            model.feature_names_in_ = np.asarray(meta["feature_names_in"], dtype=object)
        if meta["warming_up"]:
            buf = _float_array(arrays["buffer"], "buffer")
            if buf.ndim != 2 or buf.shape[1] != d or buf.shape[0] > model._warm_up_size:
                raise ValueError("model state: buffer has the wrong shape")
            model._buffer[: buf.shape[0]] = buf
            model._n_buffered = buf.shape[0]
        else:
            model.warming_up_ = False
            model._buffer = None
        if meta["has_model"]:
            k = model._k
            shapes = _state_shapes(model.covariance_type, k, d)
            # States written before the variance floors and gross bounds: neutral values.
            huge = np.finfo(np.float64).max
            defaults = {"floors": 0.0, "gross_lo": -huge, "gross_hi": huge}
            arrays = {**{k: np.full(d, v) for k, v in defaults.items()}, **arrays}
            for name, shape in shapes.items():
                value = _float_array(arrays[name], name)
                if value.shape != shape:
                    raise ValueError(f"model state: {name} has shape {value.shape}, not {shape}")
                setattr(model, "_" + name, value)
            model._derive()
        elif not meta["warming_up"]:
            raise ValueError("model state: past warm-up but no parameters")
        if meta.get("lifecycle") is not None:
            model._lifecycle = Lifecycle.from_state(
                arrays, meta["lifecycle"], model._k, d, model.min_weight, model.max_components
            )
        return model

    # ------------------------------------------------------------------ internals

    def _reset(self):
        # Only what this class set: frameworks (sklearn's callbacks, pipelines) may have set
        # their own attributes on the instance.
        for name in _LEARNED_ATTRIBUTES:
            self.__dict__.pop(name, None)

    def _start(self, n_features, n_rows, seed=None, warm_up_size=None, k=None):
        if k is None:
            k = max(AUTO_COMPONENTS) if self.n_components == "auto" else self.n_components
        self._k = k
        self._lifecycle = None
        self._lc_quiet = False
        if warm_up_size is None:
            warm_up_size = (
                self.warm_up
                if self.warm_up is not None
                else default_warm_up(self.n_components, n_features)
            )
            warm_up_size = max(int(warm_up_size), k, 2)
            if n_rows is not None:  # fit(): no larger buffer than the data
                warm_up_size = min(warm_up_size, n_rows)
        if seed is None:
            seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        self.n_features_in_ = n_features
        self._row_shape = (n_features,)
        self.n_samples_seen_ = 0
        self.n_held_back_ = 0
        self.warming_up_ = True
        self._seed = seed
        self._warm_up_size = warm_up_size
        self._buffer = np.empty((warm_up_size, n_features))
        self._n_buffered = 0
        self._provisional_n = 0
        self._since_refresh = 0
        self._rho_floor = half_life_step(self.half_life)
        self._floor_history = [(0, self._rho_floor)]
        self._frozen = False
        self._tied = self.covariance_type == "tied"
        self._spherical = self.covariance_type == "spherical"
        self._q_max = _kernels.influence_limit(n_features)
        self._gross_rate = 0.0
        self._gross_at = 0

    @property
    def n_components_(self):
        """The number of components K in use (see ``n_components``)."""
        if not hasattr(self, "_k"):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet.")
        return self._k

    def _has_model(self):
        return getattr(self, "_s0", None) is not None

    def _check_fitted(self):
        if not self._has_model():
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator (or 'partial_fit')."
            )

    def _check_magnitude(self, X):
        if X.size and np.abs(X).max() > MAX_ABS_VALUE:
            raise ValueError(
                f"Input X has values beyond ±{MAX_ABS_VALUE:g}; their squares would overflow."
            )

    def _plain_rows(self, X):
        """True for a float64 (n, D) ndarray that needs no conversion nor name checks.

        sklearn's ``validate_data`` costs tens of microseconds, more than learning a row; such
        an array only needs the finiteness and magnitude checks, done here in one pass.
        """
        return (
            type(X) is np.ndarray
            and X.dtype == np.float64
            and X.ndim == 2
            and X.shape[0] > 0
            and X.shape[1] == getattr(self, "n_features_in_", -1)
            and not hasattr(self, "feature_names_in_")
            and bool(np.abs(X).max() <= MAX_ABS_VALUE)  # False for NaN: full path explains
        )

    def _check_rows(self, X):
        if self._plain_rows(X):
            return X
        first = not hasattr(self, "n_features_in_")
        if first:
            self._validate_params()
        X = validate_data(self, X, reset=first, dtype=np.float64, ensure_min_samples=0)
        try:
            self._check_magnitude(X)
        except ValueError:
            if first:
                self._reset()
            raise
        if first:
            self._start(X.shape[1], None)
        return X

    def _check_predict(self, X):
        self._check_fitted()
        if self._plain_rows(X):
            return X
        return validate_data(self, X, reset=False, dtype=np.float64)

    def _chunked(self, X, fn, size=8192):
        if X.shape[0] <= size:
            return fn(X)
        return np.concatenate([fn(X[i : i + size]) for i in range(0, X.shape[0], size)])

    def _e_step(self, X, learning=False):
        """(log-density (n,), log-responsibilities (n, K), deviations (K, n, D), extreme).

        ``extreme``: some row lies beyond the squared Mahalanobis length
        ``q_max = influence_limit(D)`` of some component.  When ``learning``, such a row's
        responsibilities are computed as if it were at ``q_max`` and its deviations are
        shortened to that length (bounded influence: a Huber-type E-step, exact for ordinary
        data, as in the compiled kernels); the log-density is always the true one.
        """
        diff = cov_ops.centered_rows(X, self._means)
        with np.errstate(divide="ignore"):
            log_w = np.log(self._s0 / self._s0.sum())
        q = cov_ops.mahalanobis(diff, self._prec, self.covariance_type)
        base = log_w - 0.5 * (X.shape[1] * cov_ops.LOG_2PI + self._logdet)
        log_norm, log_resp = cov_ops.log_responsibilities(base - 0.5 * q)
        extreme = bool(q.max(initial=0.0) > self._q_max)
        if learning and extreme:
            q_cut = np.minimum(q, self._q_max)
            _, log_resp = cov_ops.log_responsibilities(base - 0.5 * q_cut)
            with np.errstate(divide="ignore", invalid="ignore"):
                f = np.sqrt(q_cut / q)
            diff = diff * np.nan_to_num(f, nan=0.0).T[:, :, None]
        return log_norm, log_resp, diff, extreme

    def _steps(self, n):
        t = self.n_samples_seen_ + np.arange(n, dtype=np.float64)
        rho = (t + 1.0 + self.step_offset) ** (-self.step_exponent)
        return np.maximum(rho, self._rho_floor)

    def _learn_rows(self, X, resp=None, diff=None):
        """Learn rows in order: into the warm-up buffer, then online in mini-batches."""
        start = 0
        if self.warming_up_:
            take = min(self._warm_up_size - self._n_buffered, X.shape[0])
            self._buffer[self._n_buffered : self._n_buffered + take] = X[:take]
            self._n_buffered += take
            start = take
            try:
                if self._n_buffered == self._warm_up_size:
                    self._finish_warm_up()
                    resp = diff = None  # the model just changed: responsibilities are stale
                else:
                    self._maybe_fit_provisional()
            except BaseException:
                if self.warming_up_:  # nothing of these rows was learned: forget them
                    self._n_buffered -= take
                raise
            self.n_samples_seen_ += take
        if start == X.shape[0]:
            return
        if start:
            X = X[start:]
        if X.shape[0] < SMALL_BATCH and resp is None:
            # A few rows cost less one by one through the compiled kernel than as a numpy
            # batch; both are the same online EM, equal within the batch-size tolerance.
            rejected = sum(not np.isfinite(self._learn_one(np.ascontiguousarray(x))) for x in X)
            if rejected:
                warnings.warn(
                    f"{rejected} rows have zero density under the model and were not learned",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return
        for i in range(0, X.shape[0], MAX_BATCH):
            j = i + MAX_BATCH
            if i == 0 and resp is not None and X.shape[0] <= MAX_BATCH:
                self._learn_batch(X, resp, diff)
            else:
                self._learn_batch(X[i:j])

    def _learn_batch(self, X, resp=None, diff=None):
        if not _kernels.block_inside(X, self._gross_lo, self._gross_hi):
            inside = ((self._gross_lo <= X) & (self._gross_hi >= X)).all(axis=1)
            skip = np.zeros(X.shape[0], dtype=bool)
            for i in np.flatnonzero(~inside):
                skip[i] = self._skip_gross(1)
            if skip.any():
                warnings.warn(
                    f"{int(skip.sum())} rows with values far beyond the scales seen so far "
                    "(and rare) were not learned",
                    RuntimeWarning,
                    stacklevel=3,
                )
                keep = ~skip
                if not keep.any():
                    return
                X = X[keep]
                if resp is not None and diff is not None:
                    resp, diff = resp[keep], diff[:, keep]
        lifecycle = None if self._lc_quiet else self._lifecycle
        if resp is None or diff is None:
            log_norm, log_resp, diff, _ = self._e_step(X, learning=True)
            ok = np.isfinite(log_norm)
            if not ok.all():
                warnings.warn(
                    f"{int((~ok).sum())} rows have zero density under the model and were "
                    "not learned",
                    RuntimeWarning,
                    stacklevel=3,
                )
            if lifecycle is not None:  # poorly explained rows: evidence, held back
                ok &= ~lifecycle.observe(self, X, log_norm)
            if not ok.all():
                if not ok.any():
                    if lifecycle is not None:
                        lifecycle.step(self)
                    return
                X, log_resp, diff = X[ok], log_resp[ok], diff[:, ok]
            with np.errstate(under="ignore"):
                resp = np.exp(log_resp)
        resp = np.where(resp < _kernels.FLUSH, 0.0, resp)
        n = X.shape[0]
        g = -np.expm1(np.log1p(-self._steps(n)).sum())
        nk, d, V = cov_ops.batch_moments(diff, resp, self.covariance_type)
        # Per sample a step is capped at W_CAP; n_k samples in a row could move a component
        # by 1 - (1 - W_CAP)^n_k in all, which is the batch's cap.
        w_cap = -np.expm1(np.maximum(nk, 1.0) * np.log1p(-W_CAP))
        s0, means, cov = cov_ops.pooled_update(
            self._s0, self._means, self._cov, g, nk / n, d, V, w_cap, self.covariance_type
        )
        self._commit(np.maximum(s0, _kernels.TINY_WEIGHT), means, cov, n)
        if lifecycle is not None:
            lifecycle.step(self)

    def _commit(self, s0, means, cov, n):
        """Adopt new statistics if every derived quantity is finite; else keep the old ones."""
        if self.covariance_type in ("full", "tied"):  # outer products round asymmetrically
            cov = 0.5 * (cov + np.swapaxes(cov, -1, -2))
        self._floor(cov, s0)
        try:
            cov, prec, logdet = self._factorised(cov)
        except np.linalg.LinAlgError:
            prec = None
        if prec is None or not all(np.isfinite(a).all() for a in (s0, means, cov, prec, logdet)):
            warnings.warn(
                "a non-finite update was rolled back to the last good state",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        self._s0, self._means, self._cov, self._prec, self._logdet = s0, means, cov, prec, logdet
        self._derive()
        self.n_samples_seen_ += n
        self._since_refresh = 0
        self._reseed_starving()

    def _refresh(self):
        """Recompute precisions exactly from the covariance statistics (and re-seed)."""
        self._floor(self._cov, self._s0)
        self._cov, self._prec, self._logdet = self._factorised(self._cov)
        self._derive()
        self._since_refresh = 0
        self._reseed_starving()

    def _floor(self, cov, s0):
        """The variance floors' prior, online (``_covariance.floor_variances``), in place.

        A component's rows are counted as its weight times the step's memory ``1 / rho``.
        """
        if not self._floors.any():
            return
        rows = (s0 / s0.sum()) / self._steps(1)[0]
        cov_ops.floor_variances(
            cov,
            self._floors,
            rows.sum() if self._tied else rows,
            self.covariance_type,
            self._lasting_floors,
        )

    @property
    def _lasting_floors(self):
        """Whether the variance floors last (``n_components="auto"``; see
        ``_covariance.prior_weight``): its warm-up drops light components and its life cycle
        holds rows back, so rows that no component of their own covers are expected."""
        return self.n_components == "auto"

    def _derive(self):
        """Views the compiled kernels want; recomputed whenever the arrays are replaced."""
        if self._tied:
            self._prec3 = self._prec.reshape(1, *self._prec.shape)
        else:
            self._prec3 = self._prec
        self._reg_mean = float(self._reg.mean())

    def _reseed_starving(self):
        """Replace a component holding under half a sample's weight by a split of the heaviest."""
        if self._frozen:  # a group's shared components: see freeze_components
            return
        if self._lifecycle is not None:  # "auto": a starving component dies instead
            self._lifecycle.remove_starving(self, self._steps(1)[0])
            return
        weights = self._s0 / self._s0.sum()
        limit = 0.5 * self._steps(1)[0]
        starving = np.flatnonzero(weights < limit)
        if starving.size == 0 or self._k < 2:
            return
        for k in starving:
            h = int(np.argmax(self._s0))
            if h == k or self._s0[h] / self._s0.sum() < 2 * limit:
                return
            cov_h = self._cov if self._tied else self._cov[h]
            axis, var = cov_ops.principal_axis(cov_h, self.covariance_type, self.n_features_in_)
            shift = 0.5 * np.sqrt(var) * axis
            self._means[k] = self._means[h] + shift
            self._means[h] = self._means[h] - shift
            half = 0.5 * self._s0[h]
            self._s0[h] = half
            self._s0[k] = half
            if self.covariance_type == "full":
                # The two halves together keep the parent's covariance.
                self._cov[h] = self._cov[h] - 0.25 * var * np.outer(axis, axis)
                self._cov[k] = self._cov[h]
            elif self.covariance_type == "diag":
                self._cov[h] = self._cov[h] - 0.25 * var * axis**2
                self._cov[k] = self._cov[h]
            elif self.covariance_type == "spherical":
                self._cov[k] = self._cov[h]
        self._cov, self._prec, self._logdet = self._factorised(self._cov)
        self._derive()

    def _finish_warm_up(self):
        X = self._buffer[: self._n_buffered]
        self._warm_up_fit = self._fit_buffer(X, self.n_init, stream=0)
        if self.n_components == "auto":
            self._lifecycle = Lifecycle(
                self._k, self.n_features_in_, self.min_weight, self.max_components
            )
        self.warming_up_ = False
        self._buffer = None
        self._n_buffered = 0

    def _maybe_fit_provisional(self):
        n = self._n_buffered
        if n >= max(self._k, 2) and n >= 2 * self._provisional_n:
            self._fit_buffer(self._buffer[:n], 1, stream=n)
            self._provisional_n = n

    def _fit_buffer(self, X, n_init, stream):
        self._gross_lo, self._gross_hi = robust_bounds(X)
        gross = gross_rows(X)
        if gross.any() and (~gross).sum() >= max(self._k, 2):
            X = X[~gross]
        scale = feature_scales(X)
        # reg_covar=0 asks for no regularisation: no floors nor shrinkage, only MIN_REG.
        regularise = self.reg_covar > 0
        reg_covar = np.full(X.shape[1], max(self.reg_covar, MIN_REG))
        if stream and regularise:
            # A provisional fit: a feature constant so far (a pixel 0 in the first 50 rows)
            # has an unknown scale; 1 / (n + 1) in absolute units (a prior of one row at the
            # neutral scale 1) keeps a later 1 from scoring -5e5.  The final fit drops it.
            constant = np.ptp(X, axis=0) == 0
            reg_covar[constant] = np.maximum(reg_covar[constant], 1.0 / (X.shape[0] + 1))
        self._reg = reg_covar * scale**2
        lasting = self._lasting_floors
        if regularise:
            self._floors = variance_floors(X, capped=not lasting)
        else:
            self._floors = np.zeros(X.shape[1])
        init = self._checked_init(X.shape[1])

        def fit_k(k, seed, seedings=None):
            return fit_batch(
                X, scale, self._floors, k, self.covariance_type, reg_covar, n_init,
                self.init_params, self.max_iter, self.tol, np.random.default_rng(seed),
                shrink=regularise, init=init, seedings=seedings, lasting_floors=lasting,
            )  # fmt: skip

        if self.n_components != "auto":
            if self._keep_starts and self._extra_starts and not stream:
                # fit(): k-means starts too (scikit-learn's default seeding), all ranked
                # together (_warm_up.fit_batch's seedings); the best is the model.
                seedings = [self.init_params] * self.n_init
                if self.init_params != "kmeans" and self.n_init > 1:
                    seedings += ["kmeans"] * (FIT_KMEANS_STARTS * self.n_init)
                fit, *self._starts = fit_k(self._k, [self._seed, stream], seedings)
            else:
                fit = fit_k(self._k, [self._seed, stream])
        else:  # the K of least BIC; never more components than half the rows
            n = X.shape[0]
            best_bic = np.inf
            top = min(max(1, n // 2), self.max_components)
            if stream:
                # A provisional fit: at most one component per 2 (D + 1) rows (the rows per
                # component of the default warm-up).  BIC on a few rows otherwise picks many
                # tight components: 8 rows of a 2-D Gaussian gave K=4 and -log p up to 56 for
                # the next rows, and the service flagged 20 of a clean stream's first 60
                # records (3 with this cap).
                top = min(top, max(1, n // (2 * (X.shape[1] + 1))))
            ks = [k for k in AUTO_COMPONENTS if k <= top]
            # The warm-up's final scan can take a minute on wide data (digits, D=64: one K of
            # eight takes seconds): said at INFO, one line per K, so a run does not look hung.
            # Provisional fits are smaller and quicker: DEBUG.
            level = logging.DEBUG if stream else logging.INFO
            t_all = time.perf_counter()
            log.log(
                level,
                "%s: choosing K by BIC on %d rows of %d features, K = %d..%d",
                "provisional fit" if stream else "warm-up",
                n, X.shape[1], ks[0], ks[-1],
            )  # fmt: skip
            for k in ks:
                t0 = time.perf_counter()
                candidate = fit_k(k, [self._seed, stream, k])
                bic = -2.0 * candidate.log_likelihood * n + self._n_parameters(k) * np.log(n)
                log.log(
                    level,
                    "K=%d of %d: BIC %.6g (%.1f s)",
                    k, ks[-1], bic, time.perf_counter() - t0,
                )  # fmt: skip
                if bic < best_bic:
                    best_bic, fit = bic, candidate
            # Components lighter than min_weight modelled rare groups of the warm-up (anomalies,
            # not regimes): they are dropped, so that such records stay poorly explained.
            k_best = fit.weights.shape[0]
            fit = self._without_light(fit, X)
            self._k = fit.weights.shape[0]
            log.log(
                level,
                "K=%d chosen (least BIC)%s, in %.1f s",
                k_best,
                f"; {k_best - self._k} of its components lighter than min_weight="
                f"{self.min_weight} dropped: K={self._k}"
                if self._k < k_best
                else "",
                time.perf_counter() - t_all,
            )
        self._install(fit)
        return fit

    def _install(self, fit):
        """Make a batch fit (``_warm_up.BatchFit``) the model."""
        self._s0 = np.maximum(fit.weights, _kernels.TINY_WEIGHT)
        self._means = np.ascontiguousarray(fit.means)
        self._cov, self._prec, self._logdet = self._factorised(np.ascontiguousarray(fit.cov))
        self._derive()
        self._since_refresh = 0

    def _without_light(self, fit, X):
        """``fit`` without its components lighter than ``min_weight`` (log-likelihood redone)."""
        w = fit.weights / fit.weights.sum()
        keep = w >= self.min_weight
        if keep.all() or not keep.any():
            return fit
        ct, k = self.covariance_type, int(keep.sum())
        cov = fit.cov if ct == "tied" else fit.cov[keep]
        try:
            prec, logdet = cov_ops.exact_precision(cov, self._reg, ct, k)
        except np.linalg.LinAlgError:
            return fit
        means = fit.means[keep]
        log_w = np.log(w[keep] / w[keep].sum())
        log_p = cov_ops.log_gaussian(cov_ops.centered_rows(X, means), prec, logdet, ct)
        log_lik = float(np.mean(logsumexp(log_p + log_w, axis=1)))
        return dataclasses.replace(
            fit, weights=w[keep] / w[keep].sum(), means=means, cov=cov, log_likelihood=log_lik
        )

    def _checked_init(self, n_features):
        """``(weights_init, means_init, precisions_init)`` checked as scikit-learn does."""
        k, ct = self._k, self.covariance_type
        weights = means = precisions = None
        xp, _ = get_namespace(np.zeros(1))
        given = any(
            p is not None for p in (self.weights_init, self.means_init, self.precisions_init)
        )
        if self.n_components == "auto" and given:
            raise ValueError("n_components='auto' cannot be combined with *_init parameters")
        if not given:
            return weights, means, precisions
        # Imported here: sklearn.mixture pulls in sklearn.cluster (~0.2 s at every start of a
        # process), and only models given *_init parameters need these checks.
        from sklearn.mixture._gaussian_mixture import (
            _check_means,
            _check_precisions,
            _check_weights,
        )

        if self.weights_init is not None:
            weights = _check_weights(self.weights_init, k, xp=xp)
        if self.means_init is not None:
            means = _check_means(self.means_init, k, n_features, xp=xp)
        if self.precisions_init is not None:
            precisions = _check_precisions(self.precisions_init, ct, k, n_features, xp=xp)
        return weights, means, precisions

    def _n_parameters(self, k=None):
        k = self._k if k is None else k
        d = self.n_features_in_
        cov_params = {
            "full": k * d * (d + 1) / 2.0,
            "diag": k * d,
            "tied": d * (d + 1) / 2.0,
            "spherical": k,
        }[self.covariance_type]
        return int(cov_params + k * d + k - 1)


_LEARNED_ATTRIBUTES = (
    "_k",
    "n_features_in_",
    "_row_shape",
    "feature_names_in_",
    "n_samples_seen_",
    "n_held_back_",
    "warming_up_",
    "_buffer",
    "_n_buffered",
    "_provisional_n",
    "_warm_up_size",
    "_seed",
    "_since_refresh",
    "_rho_floor",
    "_floor_history",
    "_frozen",
    "_tied",
    "_spherical",
    "_q_max",
    "_gross_rate",
    "_gross_at",
    "_gross_lo",
    "_gross_hi",
    "_s0",
    "_means",
    "_cov",
    "_prec",
    "_prec3",
    "_logdet",
    "_reg",
    "_reg_mean",
    "_floors",
    "n_iter_",
    "converged_",
    "lower_bound_",
    "lower_bounds_",
    "_warm_up_fit",
    "_lifecycle",
    "_lc_quiet",
)


_STATE_ARRAYS = (
    "_s0", "_means", "_cov", "_prec", "_logdet", "_reg", "_floors", "_gross_lo", "_gross_hi",
)  # fmt: skip


def _state_shapes(covariance_type, k, d):
    cov_shape = {"full": (k, d, d), "diag": (k, d), "spherical": (k,), "tied": (d, d)}
    return {
        "s0": (k,),
        "means": (k, d),
        "cov": cov_shape[covariance_type],
        "prec": cov_shape[covariance_type],
        "logdet": (k,),
        "reg": (d,),
        "floors": (d,),
        "gross_lo": (d,),
        "gross_hi": (d,),
    }


def _float_array(value, name):
    arr = np.asarray(value)
    if arr.dtype != np.float64:
        raise ValueError(f"model state: {name} must be float64, not {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError(f"model state: {name} has non-finite values")
    return np.ascontiguousarray(arr.copy())
