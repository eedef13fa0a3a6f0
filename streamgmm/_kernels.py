"""Compiled one-sample E-step and update, one pair of kernels per covariance type.

Why compiled: one ``learn + score`` at K=5, D=10 must cost a few microseconds, and a numpy
expression costs about one microsecond of call overhead before it does any arithmetic.

Every learn kernel checks everything it is about to use (log-density finite, deviations bounded)
*before* it writes, so a sample either updates the state completely or not at all.  The full and
tied kernels carry the precision and log-determinant along by Sherman–Morrison, O(K D^2) per
sample; the caller refreshes them exactly from the covariance statistics every so often (the
regulariser's share is not a rank-one term, and rounding accumulates).
"""

from __future__ import annotations

import numpy as np
from numba import njit

LOG_2PI = float(np.log(2.0 * np.pi))
# Responsibilities below this are flushed to exactly zero: subnormals slow every later
# operation on them by two orders of magnitude.
FLUSH = 1e-30
# Weight statistics never go below this, so log-weights stay finite under forgetting.
TINY_WEIGHT = 1e-250
# |x - mu| beyond this could overflow the outer product e e^T.
MAX_DEVIATION = 1e150
# After a step this large the rank-one path is refreshed exactly...
BIG_STEP = 0.25
# ...and after an update this large along its own direction (w e^T P e): the precision then
# loses most of its digits in that direction to cancellation.
BIG_UPDATE = 1.0
# What a learn kernel did with its sample (INVALID: a value non-finite or beyond
# MAX_ABS_VALUE; nothing computed, the caller's full checks say which).
LEARNED, LEARNED_REFRESH, REJECTED, INVALID = 0, 1, -1, -2
# |x| beyond this would overflow the second moments: the kernels refuse such rows (and NaN
# or infinite ones) themselves, so the one-row API needs no separate validating pass.
MAX_ABS_VALUE = 1e150


@njit(cache=True, inline="always")
def _step(t, t0, kappa, floor):
    rho = (t + 1.0 + t0) ** (-kappa)
    return rho if rho > floor else floor


@njit(cache=True)
def _normalise(log_prob, resp):
    """Log-sum-exp of log_prob into resp (flushed, renormalised); returns the log-density."""
    k_count = log_prob.shape[0]
    peak = -np.inf
    for k in range(k_count):
        if log_prob[k] > peak:
            peak = log_prob[k]
    if not np.isfinite(peak):
        return -np.inf
    total = 0.0
    for k in range(k_count):
        resp[k] = np.exp(log_prob[k] - peak)
        total += resp[k]
    lse = peak + np.log(total)
    kept = 0.0
    for k in range(k_count):
        r = resp[k] / total
        if r < FLUSH:
            r = 0.0
        resp[k] = r
        kept += r
    for k in range(k_count):
        resp[k] /= kept
    return lse


@njit(cache=True)
def _log_weights(s0, out):
    total = 0.0
    for k in range(s0.shape[0]):
        total += s0[k]
    log_total = np.log(total)
    for k in range(s0.shape[0]):
        out[k] = np.log(s0[k]) - log_total


# --------------------------------------------------------------------------- full / tied


@njit(cache=True)
def _e_step_dense(x, s0, means, prec, logdet, tied, log_prob, q, e, u):
    k_count, d = means.shape
    _log_weights(s0, log_prob)
    for k in range(k_count):
        pk = 0 if tied else k
        for i in range(d):
            e[k, i] = x[i] - means[k, i]
        qk = 0.0
        for i in range(d):
            acc = 0.0
            for j in range(d):
                acc += prec[pk, i, j] * e[k, j]
            u[k, i] = acc
            qk += acc * e[k, i]
        q[k] = qk
        log_prob[k] += -0.5 * (d * LOG_2PI + logdet[k] + qk)


@njit(cache=True)
def score_dense(x, s0, means, prec, logdet, tied, resp):
    """Log-density of one row (responsibilities into ``resp``); NaN if the row is invalid."""
    if not row_within(x, MAX_ABS_VALUE):
        return np.nan
    k_count, d = means.shape
    log_prob = np.empty(k_count)
    q = np.empty(k_count)
    e = np.empty((k_count, d))
    u = np.empty((k_count, d))
    _e_step_dense(x, s0, means, prec, logdet, tied, log_prob, q, e, u)
    return _normalise(log_prob, resp)


@njit(cache=True)
def _bounded_resp(log_prob, q, q_max, resp):
    """Responsibilities for learning: as if every ``q_k > q_max`` were ``q_max``.

    A Huber-type E-step: an extreme row goes to the components by weight and volume, not to
    whichever is broadest along its direction (which would then grow without bound).  Exact
    when no ``q_k`` exceeds ``q_max``: ``resp`` is left as it is.
    """
    extreme = False
    for k in range(q.shape[0]):
        if q[k] > q_max:
            extreme = True
            log_prob[k] += 0.5 * (q[k] - q_max)
    if extreme:
        _normalise(log_prob, resp)


@njit(cache=True)
def _deviations_ok(e, q):
    for k in range(e.shape[0]):
        if not np.isfinite(q[k]):
            return False
        for i in range(e.shape[1]):
            if abs(e[k, i]) > MAX_DEVIATION:
                return False
    return True


@njit(cache=True)
def learn_full(x, s0, means, cov, prec, logdet, t, t0, kappa, floor, w_cap, q_max):
    """One sample of online EM, full covariances. Returns (log-density before, status).

    A deviation longer than ``q_max`` (squared Mahalanobis) is shortened to that length
    before it enters the update (bounded influence, see ``influence_limit``).
    """
    if not row_within(x, MAX_ABS_VALUE):
        return np.nan, INVALID
    k_count, d = means.shape
    log_prob = np.empty(k_count)
    q = np.empty(k_count)
    e = np.empty((k_count, d))
    u = np.empty((k_count, d))
    resp = np.empty(k_count)
    _e_step_dense(x, s0, means, prec, logdet, False, log_prob, q, e, u)
    lse = _normalise(log_prob, resp)
    if not np.isfinite(lse) or not _deviations_ok(e, q):
        return lse, REJECTED
    _bounded_resp(log_prob, q, q_max, resp)
    rho = _step(t, t0, kappa, floor)
    status = LEARNED
    for k in range(k_count):
        s0_new = (1.0 - rho) * s0[k] + rho * resp[k]
        if resp[k] > 0.0:
            w = rho * resp[k] / s0_new
            if w > w_cap:
                w = w_cap
            qk = q[k] if q[k] > 0.0 else 0.0
            if qk > q_max:
                f = np.sqrt(q_max / qk)
                for i in range(d):
                    e[k, i] *= f
                    u[k, i] *= f
                qk = q_max
            if w > BIG_STEP or w * qk > BIG_UPDATE:
                status = LEARNED_REFRESH
            c = w / (1.0 + w * qk)
            inv = 1.0 / (1.0 - w)
            for i in range(d):
                means[k, i] += w * e[k, i]
            # Upper triangle mirrored: (c u_i) u_j and (c u_j) u_i round differently, and an
            # antisymmetric error would grow by 1 / (1 - w) at every step.
            for i in range(d):
                we = w * e[k, i]
                cu = c * u[k, i]
                for j in range(i, d):
                    cij = (1.0 - w) * (cov[k, i, j] + we * e[k, j])
                    pij = (prec[k, i, j] - cu * u[k, j]) * inv
                    cov[k, i, j] = cij
                    cov[k, j, i] = cij
                    prec[k, i, j] = pij
                    prec[k, j, i] = pij
            logdet[k] += d * np.log1p(-w) + np.log1p(w * qk)
        s0[k] = s0_new if s0_new > TINY_WEIGHT else TINY_WEIGHT
    return lse, status


@njit(cache=True)
def learn_tied(x, s0, means, cov, prec, logdet, t, t0, kappa, floor, w_cap, q_max):
    """One sample of online EM, one covariance shared by all components."""
    if not row_within(x, MAX_ABS_VALUE):
        return np.nan, INVALID
    k_count, d = means.shape
    log_prob = np.empty(k_count)
    q = np.empty(k_count)
    e = np.empty((k_count, d))
    u = np.empty((k_count, d))
    resp = np.empty(k_count)
    p3 = prec.reshape((1, d, d))
    _e_step_dense(x, s0, means, p3, logdet, True, log_prob, q, e, u)
    lse = _normalise(log_prob, resp)
    if not np.isfinite(lse) or not _deviations_ok(e, q):
        return lse, REJECTED
    _bounded_resp(log_prob, q, q_max, resp)
    rho = _step(t, t0, kappa, floor)
    status = LEARNED
    # T' = (1 - rho) [T + sum_k a_k e_k e_k^T],  a_k = rho r_k (1 - w_k) / (1 - rho)
    gain = 0.0
    pe = np.empty(d)
    for k in range(k_count):
        s0_new = (1.0 - rho) * s0[k] + rho * resp[k]
        if resp[k] > 0.0:
            w = rho * resp[k] / s0_new
            if w > w_cap:
                w = w_cap
            if w > BIG_STEP:
                status = LEARNED_REFRESH
            a = rho * resp[k] * (1.0 - w) / (1.0 - rho)
            if q[k] > q_max:  # bounded influence, as in learn_full
                f = np.sqrt(q_max / q[k])
                for i in range(d):
                    e[k, i] *= f
            # P e_k with the precision as already updated by earlier components
            qk = 0.0
            for i in range(d):
                acc = 0.0
                for j in range(d):
                    acc += prec[i, j] * e[k, j]
                pe[i] = acc
                qk += acc * e[k, i]
            qk = qk if qk > 0.0 else 0.0
            if a * qk > BIG_UPDATE:
                status = LEARNED_REFRESH
            c = a / (1.0 + a * qk)
            for i in range(d):  # mirrored, as in learn_full
                ae = a * e[k, i]
                cp = c * pe[i]
                for j in range(i, d):
                    cij = cov[i, j] + ae * e[k, j]
                    pij = prec[i, j] - cp * pe[j]
                    cov[i, j] = cij
                    cov[j, i] = cij
                    prec[i, j] = pij
                    prec[j, i] = pij
            gain += np.log1p(a * qk)
            for i in range(d):
                means[k, i] += w * e[k, i]
        s0[k] = s0_new if s0_new > TINY_WEIGHT else TINY_WEIGHT
    inv = 1.0 / (1.0 - rho)
    for i in range(d):
        for j in range(d):
            cov[i, j] *= 1.0 - rho
            prec[i, j] *= inv
    shift = d * np.log1p(-rho) + gain
    for k in range(k_count):
        logdet[k] += shift
    return lse, status


# --------------------------------------------------------------------------- diag / spherical


@njit(cache=True)
def _e_step_diag(x, s0, means, prec, logdet, log_prob, q):
    k_count, d = means.shape
    _log_weights(s0, log_prob)
    for k in range(k_count):
        qk = 0.0
        for i in range(d):
            ei = x[i] - means[k, i]
            qk += ei * ei * prec[k, i]
        q[k] = qk
        log_prob[k] += -0.5 * (d * LOG_2PI + logdet[k] + qk)


@njit(cache=True)
def _e_step_spherical(x, s0, means, prec, logdet, log_prob, q):
    k_count, d = means.shape
    _log_weights(s0, log_prob)
    for k in range(k_count):
        qk = 0.0
        for i in range(d):
            ei = x[i] - means[k, i]
            qk += ei * ei
        q[k] = qk * prec[k]
        log_prob[k] += -0.5 * (d * LOG_2PI + logdet[k] + q[k])


@njit(cache=True)
def score_diag(x, s0, means, prec, logdet, spherical, resp):
    """Log-density of one row (responsibilities into ``resp``); NaN if the row is invalid."""
    if not row_within(x, MAX_ABS_VALUE):
        return np.nan
    k_count = means.shape[0]
    log_prob = np.empty(k_count)
    q = np.empty(k_count)
    if spherical:
        _e_step_spherical(x, s0, means, prec.reshape(-1), logdet, log_prob, q)
    else:
        _e_step_diag(x, s0, means, prec.reshape((k_count, -1)), logdet, log_prob, q)
    return _normalise(log_prob, resp)


@njit(cache=True)
def _bounded(x, means):
    for k in range(means.shape[0]):
        for i in range(means.shape[1]):
            if abs(x[i] - means[k, i]) > MAX_DEVIATION:
                return False
    return True


@njit(cache=True)
def learn_diag(x, s0, means, cov, prec, logdet, reg, t, t0, kappa, floor, w_cap, q_max):
    """One sample of online EM, diagonal covariances (exact: no factorisation to carry)."""
    if not row_within(x, MAX_ABS_VALUE):
        return np.nan, INVALID
    k_count, d = means.shape
    log_prob = np.empty(k_count)
    q = np.empty(k_count)
    resp = np.empty(k_count)
    _e_step_diag(x, s0, means, prec, logdet, log_prob, q)
    lse = _normalise(log_prob, resp)
    if not np.isfinite(lse) or not _bounded(x, means):
        return lse, REJECTED
    _bounded_resp(log_prob, q, q_max, resp)
    rho = _step(t, t0, kappa, floor)
    for k in range(k_count):
        s0_new = (1.0 - rho) * s0[k] + rho * resp[k]
        if resp[k] > 0.0:
            w = rho * resp[k] / s0_new
            if w > w_cap:
                w = w_cap
            ld = 0.0
            f = np.sqrt(q_max / q[k]) if q[k] > q_max else 1.0  # bounded influence
            for i in range(d):
                ei = f * (x[i] - means[k, i])
                means[k, i] += w * ei
                cov[k, i] = (1.0 - w) * (cov[k, i] + w * ei * ei)
                sigma = cov[k, i] + reg[i]
                prec[k, i] = 1.0 / sigma
                ld += np.log(sigma)
            logdet[k] = ld
        s0[k] = s0_new if s0_new > TINY_WEIGHT else TINY_WEIGHT
    return lse, LEARNED


@njit(cache=True)
def learn_spherical(x, s0, means, cov, prec, logdet, reg_mean, t, t0, kappa, floor, w_cap, q_max):
    """One sample of online EM, one variance per component."""
    if not row_within(x, MAX_ABS_VALUE):
        return np.nan, INVALID
    k_count, d = means.shape
    log_prob = np.empty(k_count)
    q = np.empty(k_count)
    resp = np.empty(k_count)
    _e_step_spherical(x, s0, means, prec, logdet, log_prob, q)
    lse = _normalise(log_prob, resp)
    if not np.isfinite(lse) or not _bounded(x, means):
        return lse, REJECTED
    _bounded_resp(log_prob, q, q_max, resp)
    rho = _step(t, t0, kappa, floor)
    for k in range(k_count):
        s0_new = (1.0 - rho) * s0[k] + rho * resp[k]
        if resp[k] > 0.0:
            w = rho * resp[k] / s0_new
            if w > w_cap:
                w = w_cap
            sq = 0.0
            f = np.sqrt(q_max / q[k]) if q[k] > q_max else 1.0  # bounded influence
            for i in range(d):
                ei = f * (x[i] - means[k, i])
                means[k, i] += w * ei
                sq += ei * ei
            cov[k] = (1.0 - w) * (cov[k] + w * sq / d)
            sigma = cov[k] + reg_mean
            prec[k] = 1.0 / sigma
            logdet[k] = d * np.log(sigma)
        s0[k] = s0_new if s0_new > TINY_WEIGHT else TINY_WEIGHT
    return lse, LEARNED


def influence_limit(n_features: int) -> float:
    """Squared Mahalanobis length ``q_max`` beyond which a row's influence is bounded.

    ``max(1e4, D + 6 sqrt(2 D) + 25)``: a Gaussian sample exceeds it with probability below
    ~1e-8, and a binary value as rare as 0.01% lies at about ``1 / 0.01% = 1e4``, so ordinary
    data (rare discrete values, heavy tails as Shuttle's) are learned exactly.  Lower, a rare
    value's variance would be learned short, making it rarer still (measured: a bound of
    1000 collapsed digits' rare pixels and Shuttle's tied fit).  Beyond it, the row's
    responsibilities are computed as if it were at that length, and its deviation is
    shortened to it: the row goes to the components by weight, moves one by at most
    ``w sqrt(q_max)`` standard deviations and grows its variance along that direction by at
    most a factor ``1 + w q_max`` (``w``: the component's step).
    """
    return max(1e4, n_features + 6.0 * float(np.sqrt(2.0 * n_features)) + 25.0)


@njit(cache=True)
def row_within(x, limit):
    """True if every value of the 1-D row is finite and at most ``limit`` in magnitude."""
    for i in range(x.shape[0]):  # noqa: SIM110 (a compiled loop, not a generator)
        if not abs(x[i]) <= limit:  # False for NaN too
            return False
    return True


@njit(cache=True)
def row_inside(x, lo, hi):
    """True if ``lo <= x <= hi`` coordinate-wise."""
    for i in range(x.shape[0]):  # noqa: SIM110 (a compiled loop, not a generator)
        if x[i] < lo[i] or x[i] > hi[i]:
            return False
    return True


@njit(cache=True)
def block_inside(X, lo, hi):
    """True if ``lo <= X[i] <= hi`` for every row: one pass, no temporaries."""
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            if X[i, j] < lo[j] or X[i, j] > hi[j]:
                return False
    return True


@njit(cache=True, error_model="numpy")
def shrink_scores(q, r, total, nk, keep, logdets, d, use):
    """Leave-one-out sums of ``_covariance.shrink_by_likelihood`` for one covariance per
    component, fused in one pass (no (K, n, G) temporaries): the warm-up's K selection calls it
    hundreds of times.

    ``q`` (K, n, G): each row's squared length under each candidate; ``r`` (K, n): the
    responsibilities; ``total``, ``nk`` (K,); ``keep`` (K, G): ``1 - lam`` of each candidate;
    ``logdets`` (K, G); ``use``: the components to score.  Returns ``(sums, valid)``, each
    (len(use), G): ``sums[u, g]`` is the responsibility-weighted sum of the leave-one-out
    ``-2 log p`` (NaN propagates as in numpy), ``valid`` False where a downdated covariance is
    not positive definite.
    """
    n, n_g = q.shape[1], q.shape[2]
    sums = np.zeros((use.shape[0], n_g))
    valid = np.ones((use.shape[0], n_g), dtype=np.bool_)
    for u in range(use.shape[0]):
        k = use[u]
        t, m = total[k], nk[k]
        for i in range(n):
            rk = r[k, i]
            a = t / (t - rk)  # the covariance's normaliser without the row
            c = m / (m - rk)  # its deviation from the mean fitted without it
            w = rk * c / t
            d_log_a = d * np.log(a)
            for g in range(n_g):
                qq = q[k, i, g]
                left = 1.0 - keep[k, g] * w * qq
                if not left > 0.0:
                    valid[u, g] = False
                loo = d_log_a + logdets[k, g] + np.log(left) + c * c * qq / (a * left)
                sums[u, g] += rk * loo
    return sums, valid
