"""Components that come and go: online birth, merge and death (``n_components="auto"``).

With ``n_components="auto"`` the warm-up chooses K by the Bayesian information criterion, and
online the number of components follows the stream.  This module holds the rules; the core
(:class:`streamgmm.OnlineGaussianMixture`) calls them from small hooks in its learning paths.
With an integer ``n_components`` none of this runs: K stays fixed, as in scikit-learn, and a
starving component is re-seeded by splitting the heaviest.

Idea
----
A mixture fitted at the warm-up explains the stream it saw.  Later, three things happen:

* **A new regime appears** (a machine in a new operating mode, a new customer segment): a
  persistent, coherent group of records that no component explains.  It deserves a component.
  Scattered anomalies, even in a burst, do not: they are what an anomaly detector must keep
  flagging, and a broad component grown around them would swallow later anomalies.
* **Two components come to explain the same data** (a birth next to a component that then
  widened, two components drifting together): one of them is redundant.
* **A regime ends**: its component's weight decays under forgetting and starves.

Rules
-----
*Poorly explained record.*  A record whose squared Mahalanobis distance to every component
exceeds the chi-square quantile ``chi2_D(1 - POOR_TAIL)``: no component would draw it more than
once in a thousand.  Every record the model scores is checked -- also those an anomaly gate keeps
out of learning (:meth:`OnlineGaussianMixture.score_and_learn` sees them all, and
:meth:`~streamgmm.OnlineGaussianMixture.observe_one` is the one-row door for them).  A cheap
bound on the log-density (a record that is poor for every component has a log-density below
``logsumexp_k(log pi_k - (D log 2 pi + log|Sigma_k|) / 2) - q_poor / 2``) means the distances are
computed only for the few records below it.  The most recent poorly explained records are kept,
with their arrival time, in a bounded buffer (``2 n_birth`` rows of D values), and their share
of the stream is averaged with a half-life of two windows (``rate``).

*Hold-back.*  Once ``n_hold = max(10, n_birth / 4)`` poorly explained records are in the window,
a group may be forming and a poorly explained record is not learned: learning it would stretch
a component over a new regime before the regime can be born (measured: 30 such records
sufficed), and an anomaly is not data.  Below that they are the normal tail (0.1% of a
Gaussian stream) and are learned, so that the covariance is not truncated.  If groups with full
evidence keep failing the birth tests for ``RELEASE_WINDOWS`` windows (a lasting change that is
not a compact new cluster: drift) they are learned, until poorly explained records are rare
again.  So a coherent group rarer than
``min_weight`` stays anomalous and unlearned: it scores very low.

*Birth* needs, all at once, on the poorly explained records of the last window
(``n_birth / min_weight`` records, ``n_birth = max(40, 2 (D + 1))``):

1. **Evidence**: at least ``n_birth`` of them, and ``rate >= min_weight``.
2. **A coherent core**: the densest part of the records, found by the concentration steps of
   the minimum covariance determinant (Rousseeuw & Van Driessen 1999) and its members (within
   ``chi2_D(1 - MEMBER_TAIL)`` of it), must hold at least ``min_weight`` of the stream
   (``rate`` times the members' share).  Rarer groups stay anomalies: on River's Shuttle the
   anomaly classes, 7% of the stream in all, make up most poorly explained records, and a
   Gaussian fitted to all of them is compact by chance now and then; their core is one class.
3. **Persistence, tested on later records**: the core found in the older half of the records
   must hold at least half as many of the newer half (among its members), and explain those
   better than the mixture by at least ``BIRTH_GAIN`` nats per record.
4. **Compactness**: the core's variances must not exceed, by more than a ratio of
   ``COMPACT_RATIO`` (4) in geometric mean over the features, the larger of the widest
   component's and the whole mixture's variance in each feature: scattered anomalies over a
   wide region fit only a broad Gaussian.  (Variances, not determinants: on collinear real data
   a determinant compares the shrinkage of few rows more than their spread.)
5. **A new place**: the core's mean must itself be poorly explained (beyond ``chi2_D(0.99)``
   of every component): tail records of an existing component surround it.
6. **Confirmation**: the tests pass on ``BIRTH_CONFIRMATIONS`` (2) attempts in a row, an
   attempt every ``n_birth / 4`` new poorly explained records; and K is below
   ``max_components``.

The newborn gets the core's mean and covariance (shrunk toward the diagonal, Schäfer-Strimmer)
and its share of the stream as weight (at most 1/2); the others are scaled down to make room.
It gets a new, never reused component id (``component_ids_``), so labels stay stable.

*Merge.*  Every ``merge_every`` records each pair of components is compared with the single
Gaussian that matches their first two moments: the Kullback-Leibler divergence of the pair from
it (per unit of their weight) is estimated by the unscented transform, 2D sigma points per
component (Goldberger & Aronowitz 2005), after a cheap screen by Runnalls' (2007) upper bound.
Below ``MERGE_KL`` nats the pair explains the data no better than one Gaussian: they are merged
by moment matching.  The merged component keeps the older id.

*Death.*  A component whose weight falls below ``max(rho / 2, DEATH_SHARE * min_weight)`` is
removed (K decreases) instead of being re-seeded; the last component never dies.

Everything is deterministic (no random draws) and lives in the model's state as plain arrays
and JSON numbers, so a restored model continues exactly like one that never stopped.  A change
whose factorisation fails or turns non-finite is rolled back.

References
----------
.. [1] Runnalls, A. R. (2007). Kullback-Leibler approach to Gaussian mixture reduction.
   IEEE Transactions on Aerospace and Electronic Systems 43(3), 989-999.
.. [2] Goldberger, J. and Aronowitz, H. (2005). A distance measure between GMMs based on the
   unscented transform and its application to speaker recognition. Interspeech.
.. [3] Ueda, N., Nakano, R., Ghahramani, Z. and Hinton, G. (2000). SMEM algorithm for mixture
   models. Neural Computation 12(9), 2109-2128.
.. [4] Engel, P. M. and Heinen, M. R. (2010). Incremental learning of multivariate Gaussian
   mixture models. SBIA (novelty-driven creation of components).
.. [5] Kristan, M., Leonardis, A. and Skočaj, D. (2011). Multivariate online kernel density
   estimation with Gaussian kernels. Pattern Recognition 44 (merging by moment matching).
.. [6] Rousseeuw, P. J. and Van Driessen, K. (1999). A fast algorithm for the minimum
   covariance determinant estimator. Technometrics 41(3), 212-223.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import chdtri

from streamgmm import _covariance as cov_ops

# A record is poorly explained beyond this tail of every component's chi-square distribution.
POOR_TAIL = 1e-3
# ... and a candidate's mean is in a new place beyond this tail of every component.
CENTER_TAIL = 1e-2
# A record belongs to a candidate's core within this tail of its chi-square distribution.
MEMBER_TAIL = 0.025
# Concentration steps of the core's robust fit (they settle within a few).
CORE_STEPS = 10
# Poorly explained rows are held back once this many (and n_birth / 4) are in the window.
HOLD_MIN_ROWS = 10
# Fewest poorly explained records for a birth (and at least 2 (D + 1)).
BIRTH_MIN_ROWS = 40
# A candidate must explain later poorly explained records this much better (nats per record).
BIRTH_GAIN = 2.0
# ... and be no wider than the widest component by more than this variance ratio per axis.
COMPACT_RATIO = 4.0
# Pairs whose moment-matched merge loses less than this (nats per unit weight) are merged.
MERGE_KL = 0.05
# Pairs are screened by Runnalls' bound (an upper bound on the loss) below this first.
MERGE_SCREEN = 2.0
# Records between merge checks (at least; wide data: 5 D).
MERGE_EVERY = 500
# A component dies below this share of min_weight (or below half a sample's step).
DEATH_SHARE = 0.1
# Half-life, in windows, of the poorly explained rows' share of the stream.
RATE_WINDOWS = 2
# Consecutive birth attempts (each after n_birth / 4 new poorly explained rows) that must pass.
BIRTH_CONFIRMATIONS = 2
# Groups failing the birth tests for this many windows are learned (drift), not held back.
RELEASE_WINDOWS = 5
# The log-density bound that screens records is refreshed after this many records.
BOUND_EVERY = 64


def _log_gauss(X, mean, cov):
    """Log-density of rows X under N(mean, cov); None if cov does not factorise."""
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        return None
    z = np.linalg.solve(chol, (X - mean).T)
    logdet = 2.0 * np.log(np.diagonal(chol)).sum()
    return -0.5 * (X.shape[1] * cov_ops.LOG_2PI + logdet + (z * z).sum(axis=0))


def _core(rows, reg, scale, q_member):
    """Mean, covariance and member mask of the densest coherent part of ``rows``.

    Concentration steps of the minimum covariance determinant (Rousseeuw & Van Driessen 1999):
    from the half of the rows nearest the coordinate-wise median (in ``scale`` units), refit on
    the half nearest the fit until it settles; then the rows within ``q_member`` of the fit
    (its covariance made consistent by the median distance) are the members, and the
    estimate is refitted on them.  A mixed bag of rare groups yields a core holding only one
    of them.
    """
    n, d = rows.shape
    h = min(n, max(n // 2, d + 2))
    z = (rows - np.median(rows, axis=0)) / scale
    keep = np.sort(np.argsort((z * z).sum(axis=1), kind="stable")[:h])
    sigma_reg = np.diag(reg)
    for _ in range(CORE_STEPS):
        mean, cov = _shrunk_moments(rows[keep])
        q = _mahalanobis(rows, mean, cov + sigma_reg)
        new = np.sort(np.argsort(q, kind="stable")[:h])
        if np.array_equal(new, keep):
            break
        keep = new
    cov = cov * (np.median(q) / chdtri(d, 0.5))
    members = _mahalanobis(rows, mean, cov + sigma_reg) <= q_member
    if members.sum() >= d + 2:
        mean, cov = _shrunk_moments(rows[members])
    return mean, cov, members


def _mahalanobis(X, mean, cov):
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, (X - mean).T)
    return (z * z).sum(axis=0)


def _shrunk_moments(rows):
    """Mean and covariance (shrunk toward the diagonal) of the rows."""
    mean = rows.mean(axis=0)
    dev = rows - mean
    cov = dev.T @ dev / rows.shape[0]
    return mean, cov_ops.shrink_to_diagonal(cov, np.array(rows.shape[0]))


class Lifecycle:
    """Birth, merge and death of the components of one model (see the module docstring).

    Holds the component ids, the buffer of poorly explained records and a few counters; acts on
    the model's arrays through :meth:`observe`, :meth:`step` and :meth:`remove_starving`.
    """

    def __init__(self, n_components, n_features, min_weight, max_components):
        d = n_features
        self.min_weight = float(min_weight)
        self.max_components = int(max_components)
        self.n_birth = max(BIRTH_MIN_ROWS, 2 * (d + 1))
        self.window = math.ceil(self.n_birth / self.min_weight)
        self.n_hold = max(HOLD_MIN_ROWS, self.n_birth // 4)
        self.n_attempt = self.n_hold  # new poorly explained rows between birth attempts
        self.merge_every = max(MERGE_EVERY, 5 * d)
        self.q_poor = float(chdtri(d, POOR_TAIL))
        self.q_center = float(chdtri(d, CENTER_TAIL))
        self.q_member = float(chdtri(d, MEMBER_TAIL))
        self.ids = np.arange(n_components, dtype=np.int64)
        self.next_id = int(n_components)
        cap = 2 * self.n_birth
        self.rows = np.empty((cap, d))
        self.times = np.empty(cap)
        self.n_rows = 0
        self.n_seen = 0  # records observed
        self.pending = 0  # poorly explained records since the last birth attempt
        self.merged_at = 0  # n_seen at the last merge check
        self.bound = math.inf  # log-density below which a record may be poorly explained
        self.bound_at = -BOUND_EVERY  # n_seen when the bound was computed
        self.n_births = self.n_merges = self.n_deaths = 0
        # Poorly explained rows are held back from learning (learning them would stretch a
        # component over a new regime before it can be born, and anomalies are not data) ...
        # ... unless groups with full evidence keep failing the birth tests for RELEASE_WINDOWS
        # windows (a burst of anomalies is shorter): then they are learned (ordinary drift)
        # until poorly explained rows are rare again.
        self.holding = True
        self.failing_since = -1  # n_seen at the first failed attempt of a run, -1: none
        self.passes = 0  # consecutive attempts that passed the birth tests
        self.checked_at = 0  # n_seen when a released hold was last checked (every 64 rows)
        # Share of poorly explained rows in the stream, averaged with a half-life of
        # RATE_WINDOWS windows: a group must hold min_weight of the stream for that long,
        # not in one window by chance (River's Shuttle: an anomaly class at 7% reaches 10% of
        # some windows).
        self.rate = 0.0
        self.decay = 2.0 ** (-1.0 / (RATE_WINDOWS * self.window))

    # ------------------------------------------------------------------ evidence

    def _refresh_bound(self, model):
        with np.errstate(divide="ignore"):
            log_w = np.log(model._s0 / model._s0.sum())
        base = log_w - 0.5 * (model.n_features_in_ * cov_ops.LOG_2PI + model._logdet)
        # One nat of slack: the bound is reused for BOUND_EVERY records while the model moves.
        top = float(base.max())
        self.bound = top + math.log(float(np.exp(base - top).sum())) - 0.5 * self.q_poor + 1.0
        self.bound_at = self.n_seen

    def observe_one(self, model, x, log_density) -> bool:
        """Account one scored record (log-density before learning it); True: hold it back."""
        if self.n_seen - self.bound_at >= BOUND_EVERY:
            self._refresh_bound(model)
        self.n_seen += 1
        self.rate *= self.decay
        if not (log_density < self.bound or log_density != log_density):
            return False
        # The compiled one-row kernel gives the responsibilities, hence every component's
        # squared distance: q_k = 2 (base_k - log p(x) - log r_k).
        resp = np.empty(model._k)
        ld = model._one(x, resp)
        with np.errstate(divide="ignore"):
            log_w = np.log(model._s0 / model._s0.sum())
            q = 2.0 * (
                log_w - 0.5 * (x.shape[0] * cov_ops.LOG_2PI + model._logdet) - ld - np.log(resp)
            )
        if ld == -np.inf or not q.min() <= self.q_poor:
            return self._keep_one(x, self.n_seen - 1.0)
        return False

    def _keep_one(self, x, time):
        """:meth:`_keep` for one poor row (the one-row path: no masks nor temporaries, the
        same state); whether to hold it back."""
        self.rate += (1.0 - self.decay) * float(self.decay ** (self.n_seen - 1.0 - time))
        n_rows = self.n_rows
        if n_rows + 1 > self.rows.shape[0]:  # drop the oldest
            keep = self.rows.shape[0] - 1
            self.rows[:keep] = self.rows[n_rows - keep : n_rows]
            self.times[:keep] = self.times[n_rows - keep : n_rows]
            n_rows = keep
        self.rows[n_rows] = x
        self.times[n_rows] = time
        self.n_rows = n_rows + 1
        self.pending += 1
        if not self.holding:
            return False
        recent = int(np.count_nonzero(self.times[: self.n_rows] >= self.n_seen - self.window))
        return recent >= self.n_hold

    def observe(self, model, X, log_density) -> np.ndarray:
        """Account scored records (log-densities before learning them), in order; the mask of
        rows to hold back from learning."""
        n = X.shape[0]
        if self.n_seen - self.bound_at >= BOUND_EVERY:
            self._refresh_bound(model)
        times = self.n_seen + np.arange(n, dtype=np.float64)
        self.n_seen += n
        self.rate *= self.decay**n
        held = np.zeros(n, dtype=bool)
        low = ~(log_density >= self.bound)  # NaN (no density) included
        if low.any():
            held[low] = self._screen(model, X[low], times[low])
        return held

    def _screen(self, model, X, times):
        """Buffer the poorly explained rows; the mask of those to hold back."""
        with np.errstate(over="ignore", invalid="ignore"):
            q = cov_ops.mahalanobis(
                cov_ops.centered_rows(X, model._means), model._prec, model.covariance_type
            )
        return self._keep(~(q.min(axis=1) <= self.q_poor), X, times)

    def _keep(self, poor, X, times):
        """Buffer the rows marked ``poor``; the mask of those to hold back."""
        if not poor.any():
            return poor
        # Each poor row's contribution, decayed from its arrival to now.
        self.rate += (1.0 - self.decay) * float(
            np.sum(self.decay ** (self.n_seen - 1.0 - times[poor]))
        )
        X, times = X[poor], times[poor]
        cap = self.rows.shape[0]
        if X.shape[0] >= cap:
            X, times = X[-cap:], times[-cap:]
        m = X.shape[0]
        if self.n_rows + m > cap:  # drop the oldest
            keep = cap - m
            self.rows[:keep] = self.rows[self.n_rows - keep : self.n_rows]
            self.times[:keep] = self.times[self.n_rows - keep : self.n_rows]
            self.n_rows = keep
        self.rows[self.n_rows : self.n_rows + m] = X
        self.times[self.n_rows : self.n_rows + m] = times
        self.n_rows += m
        self.pending += m
        if not self.holding:
            return np.zeros_like(poor)
        # Held back only when a group may be forming: in a steady stream the few poorly
        # explained rows are the normal tail, and must be learned (no truncation).
        recent = int(np.count_nonzero(self.times[: self.n_rows] >= self.n_seen - self.window))
        return poor if recent >= self.n_hold else np.zeros_like(poor)

    # ------------------------------------------------------------------ decisions

    def step(self, model):
        """Birth and merge checks that are due (call between learning steps)."""
        if self.pending >= self.n_attempt:
            self.pending = 0
            self._try_birth(model)
        elif not self.holding and self.n_seen - self.checked_at >= BOUND_EVERY:
            self.checked_at = self.n_seen
            if len(self._recent_poor()) < self.n_birth // 2:
                self.holding, self.failing_since = True, -1
        if self.n_seen - self.merged_at >= self.merge_every:
            self.merged_at = self.n_seen
            self._try_merge(model)

    def _recent_poor(self):
        recent = self.times[: self.n_rows] >= self.n_seen - self.window
        return self.rows[: self.n_rows][recent]

    def birth_evidence(self, model):
        """``(passed, reasons)``: the birth tests on the buffered records, for diagnostics."""
        rows = self._recent_poor()
        n, d = rows.shape
        full = n >= self.n_birth and self.rate >= self.min_weight
        reasons = {"rows": n, "needed": self.n_birth, "rate": self.rate, "full": full}
        if not full:
            return False, reasons
        reg, scale = model._reg, np.sqrt(self._reference_spread(model))
        half = n // 2
        # The group's core, found in the older half, must go on in the newer half...
        mean_a, cov_a, _ = _core(rows[:half], reg, scale, self.q_member)
        ll_cand = _log_gauss(rows[half:], mean_a, cov_a + np.diag(reg))
        if ll_cand is None:
            return False, reasons
        q_new = -2.0 * ll_cand - d * cov_ops.LOG_2PI - np.linalg.slogdet(cov_a + np.diag(reg))[1]
        later = q_new <= self.q_member
        # ... and explain those later records much better than the mixture does.
        ll_model = model._e_step(rows[half:][later])[0] if later.any() else np.zeros(0)
        reasons["gain"] = float(np.mean(ll_cand[later] - ll_model)) if later.any() else -math.inf
        mean, cov, members = _core(rows, reg, scale, self.q_member)
        # Persistence of the coherent part: its share of the stream, now and later.
        reasons["share"] = self.rate * float(members.mean())
        reasons["later_share"] = float(later.mean()) / max(float(members.mean()), 1e-12)
        spread = np.diagonal(cov) + reg
        reasons["excess_volume"] = float(np.mean(np.log(spread / scale**2)))
        q_mean = cov_ops.mahalanobis(
            cov_ops.centered_rows(mean[None, :], model._means), model._prec, model.covariance_type
        )
        reasons["center_q"] = float(q_mean.min())
        passed = (
            reasons["share"] >= self.min_weight
            and reasons["later_share"] >= 0.5
            and reasons["gain"] >= BIRTH_GAIN
            and reasons["excess_volume"] <= math.log(COMPACT_RATIO)
            and reasons["center_q"] > self.q_center
        )
        reasons["mean"], reasons["cov"] = mean, cov
        return passed, reasons

    @staticmethod
    def _reference_spread(model):
        """Per feature, the largest variance of a component or of the whole mixture."""
        w = model._s0 / model._s0.sum()
        var = np.diagonal(model._covariance_matrices(), axis1=1, axis2=2)
        dev = model._means - w @ model._means
        overall = w @ var + w @ (dev * dev)
        return np.maximum(var.max(axis=0), overall)

    def _try_birth(self, model):
        passed, ev = self.birth_evidence(model)
        passed = passed and model._k < self.max_components
        if not ev["full"] or passed:
            self.failing_since = -1
        elif self.failing_since < 0:
            self.failing_since = self.n_seen
        elif self.n_seen - self.failing_since >= RELEASE_WINDOWS * self.window:
            self.holding = False  # a lasting group that cannot be born: drift, learn it
        # A passing group must pass again on later records: one lucky draw is not evidence.
        self.passes = self.passes + 1 if passed else 0
        # Failing groups (a lasting mix of anomalies) are retried less often (an attempt costs
        # a few robust fits), at least every n_birth poorly explained rows (rarer attempts
        # made the detector slow to follow the drift a MinMaxScaler makes: Shuttle ROC-AUC
        # 0.84 instead of 0.93 at 4 n_birth).
        full_fail = ev["full"] and not passed
        self.n_attempt = min(2 * self.n_attempt, self.n_birth) if full_fail else self.n_hold
        if self.passes < BIRTH_CONFIRMATIONS:
            return False
        self.passes = 0
        w = min(ev["share"], 0.5)
        ct = model.covariance_type
        cov = ev["cov"]
        if ct == "full":
            new_cov = np.concatenate([model._cov, cov[None]])
        elif ct == "diag":
            new_cov = np.concatenate([model._cov, np.diagonal(cov)[None]])
        elif ct == "spherical":
            new_cov = np.append(model._cov, np.diagonal(cov).mean())
        else:  # tied: the shared covariance stays
            new_cov = model._cov.copy()
        total = model._s0.sum()
        s0 = np.append(model._s0 * (1.0 - w), w * total)
        means = np.concatenate([model._means, ev["mean"][None]])
        if not self._adopt(model, s0, means, new_cov):
            return False
        self.ids = np.append(self.ids, self.next_id)
        self.next_id += 1
        self.n_births += 1
        self.n_rows = 0  # those records are explained now
        self.bound_at = -BOUND_EVERY
        return True

    def _try_merge(self, model):
        k = model._k
        if k < 2:
            return False
        covs = model._covariance_matrices()
        w = model._s0 / model._s0.sum()
        means = model._means
        logdet = model._logdet
        best = (MERGE_KL, None)
        for i in range(k):
            for j in range(i + 1, k):
                wi, wj = w[i] / (w[i] + w[j]), w[j] / (w[i] + w[j])
                d = means[i] - means[j]
                merged = wi * covs[i] + wj * covs[j] + wi * wj * np.outer(d, d)
                sign, logdet_m = np.linalg.slogdet(merged)
                if sign <= 0:
                    continue
                runnalls = 0.5 * (logdet_m - wi * logdet[i] - wj * logdet[j])
                if runnalls >= MERGE_SCREEN:
                    continue
                kl = self._pair_kl(
                    means[[i, j]], covs[[i, j]], logdet[[i, j]], (wi, wj), merged, d, wi
                )
                if kl is not None and kl < best[0]:
                    best = (kl, (i, j))
        if best[1] is None:
            return False
        return self._merge(model, *best[1])

    @staticmethod
    def _pair_kl(means, covs, logdets, weights, merged, d, wi):
        """KL(pair || moment-matched Gaussian) by the unscented transform (nats)."""
        dim = means.shape[1]
        mean_m = means[1] + wi * d
        kl = 0.0
        for c in range(2):
            try:
                chol = np.linalg.cholesky(covs[c])
            except np.linalg.LinAlgError:
                return None
            offsets = math.sqrt(dim) * chol.T  # rows: the columns of the factor
            pts = np.vstack([means[c] + offsets, means[c] - offsets])
            parts = []
            for e in range(2):
                diff = pts - means[e]
                z = np.linalg.solve(np.linalg.cholesky(covs[e]), diff.T)
                parts.append(
                    math.log(weights[e])
                    - 0.5 * (dim * cov_ops.LOG_2PI + logdets[e] + (z * z).sum(axis=0))
                )
            log_pair = np.logaddexp(parts[0], parts[1])
            log_m = _log_gauss(pts, mean_m, merged)
            if log_m is None:
                return None
            kl += weights[c] * float(np.mean(log_pair - log_m))
        return kl

    def _merge(self, model, i, j):
        """Merge components i and j by moment matching; the older id survives."""
        if self.ids[j] < self.ids[i]:
            i, j = j, i
        s0 = model._s0.copy()
        total_w = s0[i] + s0[j]
        wi, wj = s0[i] / total_w, s0[j] / total_w
        d = model._means[i] - model._means[j]
        means = model._means.copy()
        means[i] = wi * model._means[i] + wj * model._means[j]
        ct = model.covariance_type
        cov = model._cov.copy()
        if ct == "full":
            cov[i] = wi * cov[i] + wj * cov[j] + wi * wj * np.outer(d, d)
        elif ct == "diag":
            cov[i] = wi * cov[i] + wj * cov[j] + wi * wj * d * d
        elif ct == "spherical":
            cov[i] = wi * cov[i] + wj * cov[j] + wi * wj * float(np.mean(d * d))
        else:  # tied: the pair's spread joins the shared covariance, by their weight
            cov = cov + (total_w / s0.sum()) * wi * wj * np.outer(d, d)
        s0[i] = total_w
        keep = np.arange(model._k) != j
        cov = cov if ct == "tied" else cov[keep]
        if not self._adopt(model, s0[keep], means[keep], cov):
            return False
        self.ids = self.ids[keep]
        self.n_merges += 1
        self.bound_at = -BOUND_EVERY
        return True

    def remove_starving(self, model, rho):
        """Remove components whose weight starves (never the last one); True if any died."""
        weights = model._s0 / model._s0.sum()
        limit = max(0.5 * rho, DEATH_SHARE * self.min_weight)
        starving = weights < limit
        if not starving.any() or model._k < 2:
            return False
        if starving.all():
            starving[int(np.argmax(weights))] = False
        keep = ~starving
        cov = model._cov if model.covariance_type == "tied" else model._cov[keep]
        # Dropping components leaves the others' factorisations valid: slice them.
        prec = model._prec if model.covariance_type == "tied" else model._prec[keep]
        model._s0 = model._s0[keep].copy()
        model._means = model._means[keep].copy()
        model._cov = cov.copy()
        model._prec = prec.copy()
        model._logdet = model._logdet[keep].copy()
        model._k = int(keep.sum())
        model._derive()
        self.ids = self.ids[keep]
        self.n_deaths += int(starving.sum())
        self.bound_at = -BOUND_EVERY
        return True

    @staticmethod
    def _adopt(model, s0, means, cov):
        """Install new component arrays if they factorise to finite values; else roll back."""
        old = (model._k, model._s0, model._means, model._cov, model._prec, model._logdet)
        model._k = s0.shape[0]
        try:
            cov, prec, logdet = model._factorised(np.ascontiguousarray(cov))
        except np.linalg.LinAlgError:
            prec = None
        if prec is None or not all(np.isfinite(a).all() for a in (s0, means, cov, prec, logdet)):
            model._k = old[0]
            return False
        model._s0 = np.ascontiguousarray(s0)
        model._means = np.ascontiguousarray(means)
        model._cov, model._prec, model._logdet = cov, prec, logdet
        model._derive()
        model._since_refresh = 0
        return True

    # ------------------------------------------------------------------ state

    def get_state(self):
        """``(arrays, meta)``: float64 arrays and JSON numbers."""
        arrays = {
            "component_ids": self.ids.astype(np.float64),
            "poor_rows": self.rows[: self.n_rows].copy(),
            "poor_times": self.times[: self.n_rows].copy(),
        }
        meta = {
            "next_id": self.next_id,
            "n_seen": self.n_seen,
            "pending": self.pending,
            "merged_at": self.merged_at,
            "bound": None if math.isinf(self.bound) else self.bound,
            "bound_at": self.bound_at,
            "counts": [self.n_births, self.n_merges, self.n_deaths],
            "holding": self.holding,
            "failing_since": self.failing_since,
            "passes": self.passes,
            "checked_at": self.checked_at,
            "n_attempt": self.n_attempt,
            "rate": self.rate,
        }
        return arrays, meta

    @classmethod
    def from_state(cls, arrays, meta, n_components, n_features, min_weight, max_components):
        lc = cls(n_components, n_features, min_weight, max_components)
        ids = np.asarray(arrays["component_ids"], dtype=np.float64)
        rows = np.asarray(arrays["poor_rows"], dtype=np.float64)
        times = np.asarray(arrays["poor_times"], dtype=np.float64)
        if ids.shape != (n_components,) or not np.array_equal(ids, np.round(ids)):
            raise ValueError("model state: component_ids has the wrong shape or values")
        if rows.ndim != 2 or rows.shape[1] != n_features or rows.shape[0] > lc.rows.shape[0]:
            raise ValueError("model state: poor_rows has the wrong shape")
        if times.shape != (rows.shape[0],) or not np.isfinite(rows).all():
            raise ValueError("model state: poor_times/poor_rows malformed")
        lc.ids = ids.astype(np.int64)
        lc.n_rows = rows.shape[0]
        lc.rows[: lc.n_rows] = rows
        lc.times[: lc.n_rows] = times
        lc.next_id = int(meta["next_id"])
        lc.n_seen = int(meta["n_seen"])
        lc.pending = int(meta["pending"])
        lc.merged_at = int(meta["merged_at"])
        lc.bound = math.inf if meta["bound"] is None else float(meta["bound"])
        lc.bound_at = int(meta["bound_at"])
        lc.n_births, lc.n_merges, lc.n_deaths = (int(v) for v in meta["counts"])
        lc.holding = bool(meta["holding"])
        lc.failing_since = int(meta["failing_since"])
        lc.passes = int(meta["passes"])
        lc.checked_at = int(meta["checked_at"])
        lc.n_attempt = int(meta["n_attempt"])
        lc.rate = float(meta["rate"])
        return lc
