"""Covariance-type specifics, as plain functions over arrays (the scikit-learn way).

A mixture's state keeps, per component, a weight statistic ``s0``, a mean and a *centered*
covariance statistic ``C`` without regularisation.  The regulariser ``reg`` (one value per
feature, ``reg_covar`` times the feature's variance: "standardised units") is added whenever a
covariance is used, so forgetting never erodes it.  Shapes of ``C`` by covariance type:

=========== ============ =======================================
type        ``C``        precision ``P`` of ``C + reg``
=========== ============ =======================================
full        (K, D, D)    (K, D, D)
diag        (K, D)       (K, D)
spherical   (K,)         (K,)
tied        (D, D)       (D, D)
=========== ============ =======================================

``logdet`` is always (K,): the log-determinant of each component's regularised covariance.
"""

from __future__ import annotations

import functools

import numpy as np

from streamgmm import _kernels

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")
LOG_2PI = float(np.log(2.0 * np.pi))


def regularised(cov: np.ndarray, reg: np.ndarray, covariance_type: str) -> np.ndarray:
    """The covariances a user sees (sklearn's ``covariances_`` shapes): ``C`` plus ``reg``."""
    if covariance_type in ("full", "tied"):
        d = reg.shape[0]
        out = np.array(cov, order="C", copy=True)
        # The diagonals of C-ordered (d, d) matrices: every (d+1)-th number of each (a view;
        # the same additions as out[..., i, i] += reg[i], without fancy indexing's cost).
        out.reshape(-1, d * d)[:, :: d + 1] += reg
        return out
    if covariance_type == "diag":
        return cov + reg
    return cov + reg.mean()


@functools.lru_cache(maxsize=32)
def _identities(shape: tuple[int, ...]) -> np.ndarray:
    """Identity matrices of ``shape`` (..., d, d), read-only (a broadcast of one)."""
    return np.broadcast_to(np.eye(shape[-1]), shape)


def full_matrices(cov: np.ndarray, reg: np.ndarray, covariance_type: str, n_components: int):
    """Every component's regularised covariance as a (K, D, D) matrix, whatever the type."""
    d = reg.shape[0]
    sigma = regularised(cov, reg, covariance_type)
    if covariance_type == "full":
        return sigma
    if covariance_type == "tied":
        return np.broadcast_to(sigma, (n_components, d, d)).copy()
    if covariance_type == "diag":
        out = np.zeros((n_components, d, d))
        out[:, np.arange(d), np.arange(d)] = sigma
        return out
    return sigma[:, None, None] * np.eye(d)


def exact_precision(cov: np.ndarray, reg: np.ndarray, covariance_type: str, n_components: int):
    """Precision and log-determinant of ``C + reg``, from a fresh Cholesky factorisation."""
    sigma = regularised(cov, reg, covariance_type)
    d = reg.shape[0]
    if covariance_type in ("full", "tied"):
        chol = np.linalg.cholesky(sigma)
        inv_chol = np.linalg.solve(chol, _identities(sigma.shape))
        prec = np.swapaxes(inv_chol, -1, -2) @ inv_chol
        prec = 0.5 * (prec + np.swapaxes(prec, -1, -2))
        logdet = 2.0 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)
        if covariance_type == "tied":
            logdet = np.full(n_components, logdet)
        return prec, logdet
    if covariance_type == "diag":
        return 1.0 / sigma, np.log(sigma).sum(-1)
    return 1.0 / sigma, d * np.log(sigma)


def stabilise(cov: np.ndarray, reg: np.ndarray, covariance_type: str) -> np.ndarray:
    """``cov``, with the least diagonal jitter that makes every ``C + reg`` factorisable.

    The regulariser is fixed at warm-up in that era's units; if the data's scale later grows by
    many orders of magnitude, ``C + reg`` can be positive definite in exact arithmetic yet
    not in floating point.  Jitter relative to the matrix's own diagonal restores it.
    """
    if covariance_type not in ("full", "tied"):
        return cov
    d = reg.shape[0]
    idx = np.arange(d)
    try:
        np.linalg.cholesky(regularised(cov, reg, covariance_type))
        return cov
    except np.linalg.LinAlgError:
        pass
    mats = cov.reshape(-1, d, d).copy()
    for m in mats:
        base = max(1e-12 * float(np.abs(m[idx, idx]).max()), np.finfo(float).tiny)
        for attempt in range(40):
            try:
                np.linalg.cholesky(m + np.diag(reg))
                break
            except np.linalg.LinAlgError:
                m[idx, idx] += base * 10.0**attempt
    return mats.reshape(cov.shape)


def precisions_cholesky(cov: np.ndarray, reg: np.ndarray, covariance_type: str) -> np.ndarray:
    """scikit-learn's ``precisions_cholesky_``: ``precision = L @ L.T`` (upper ``L`` for full)."""
    sigma = regularised(cov, reg, covariance_type)
    if covariance_type in ("full", "tied"):
        chol = np.linalg.cholesky(sigma)
        eye = np.broadcast_to(np.eye(sigma.shape[-1]), sigma.shape)
        return np.swapaxes(np.linalg.solve(chol, eye), -1, -2)
    return 1.0 / np.sqrt(sigma)


def centered_rows(X: np.ndarray, means: np.ndarray) -> np.ndarray:
    """``X - mean_k`` for every component: (K, n, D)."""
    return X[None, :, :] - means[:, None, :]


def mahalanobis(diff: np.ndarray, prec: np.ndarray, covariance_type: str) -> np.ndarray:
    """Squared Mahalanobis distances (n, K) of centered rows ``diff`` (K, n, D)."""
    if covariance_type == "full" or covariance_type == "tied":
        q = np.einsum("knd,knd->kn", diff @ prec, diff)
    elif covariance_type == "diag":
        q = np.einsum("knd,kd->kn", diff * diff, prec)
    else:
        q = np.einsum("knd,knd->kn", diff, diff) * prec[:, None]
    return q.T


def log_gaussian(diff: np.ndarray, prec: np.ndarray, logdet: np.ndarray, covariance_type: str):
    """Log-density of each centered row under each component, (n, K)."""
    d = diff.shape[-1]
    q = mahalanobis(diff, prec, covariance_type)
    return -0.5 * (d * LOG_2PI + logdet[None, :] + q)


def log_responsibilities(weighted_log_prob: np.ndarray):
    """Log-sum-exp over components: per-row log-density (n,) and log-responsibilities (n, K)."""
    peak = weighted_log_prob.max(axis=1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore", under="ignore"):
        log_norm = np.log(np.exp(weighted_log_prob - peak).sum(axis=1)) + peak[:, 0]
        log_resp = weighted_log_prob - log_norm[:, None]
    return log_norm, log_resp


def batch_moments(diff: np.ndarray, resp: np.ndarray, covariance_type: str):
    """Weighted moments of one mini-batch, centered at each component's current mean.

    Returns ``nk`` (K,) summed responsibilities, ``d`` (K, D) = weighted batch mean minus the
    component mean, and ``V`` the weighted covariance about the batch mean, in the shape of the
    covariance statistic of ``covariance_type`` (tied: per component (K, D, D), pooled later).
    The rows are already centered at the component means, so ``E[diff diff^T] - d d^T`` loses
    only ``eps |d|^2 / V`` relative precision: nothing unless a batch jumps by ~1e8 spreads.
    """
    nk = resp.sum(axis=0)
    safe = np.where(nk > 0, nk, 1.0)
    weighted = resp.T[:, :, None] * diff  # (K, n, D)
    d = weighted.sum(axis=1) / safe[:, None]
    if covariance_type in ("full", "tied"):
        V = np.swapaxes(weighted, 1, 2) @ diff / safe[:, None, None]
        V -= d[:, :, None] * d[:, None, :]
    elif covariance_type == "diag":
        V = np.einsum("knd,knd->kd", weighted, diff) / safe[:, None] - d * d
    else:
        V = np.einsum("knd,knd->k", weighted, diff) / safe / diff.shape[-1]
        V -= (d * d).sum(axis=1) / diff.shape[-1]
    return nk, d, V


def pooled_update(s0, means, cov, g, b0, d, V, w_cap, covariance_type):
    """Move the statistics toward a batch's moments by total step ``g`` (pooled variance).

    With ``w = g b0 / s0'``: ``mu' = mu + w d`` and ``C' = (1-w) C + w V + w (1-w) d d^T`` —
    exact, positive, and free of the raw-moment cancellation.  Returns new arrays.
    """
    s0_new = (1.0 - g) * s0 + g * b0
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(s0_new > 0, g * b0 / s0_new, 0.0)
    w = np.minimum(w, w_cap)
    means_new = means + w[:, None] * d
    a = w * (1.0 - w)
    if covariance_type == "full":
        cov_new = (
            (1.0 - w)[:, None, None] * cov
            + w[:, None, None] * V
            + a[:, None, None] * d[:, :, None] * d[:, None, :]
        )
    elif covariance_type == "diag":
        cov_new = (1.0 - w)[:, None] * cov + w[:, None] * V + a[:, None] * d * d
    elif covariance_type == "spherical":
        cov_new = (1.0 - w) * cov + w * V + a * (d * d).sum(axis=1) / d.shape[1]
    else:
        # Tied: the weighted sum of per-component scatters; sum_k s0_k' (1 - w_k) = (1 - g).
        spread = V + (1.0 - w)[:, None, None] * d[:, :, None] * d[:, None, :]
        cov_new = (1.0 - g) * cov + g * np.einsum("k,kij->ij", b0, spread)
    return s0_new, means_new, cov_new


def shrink_to_diagonal(cov: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Shrink sample covariances (..., D, D) estimated from ``n`` rows toward their diagonal
    by the Schäfer–Strimmer intensity (:func:`diagonal_shrinkage_intensity`)."""
    return shrunk(cov, diagonal_shrinkage_intensity(cov, n))


def diagonal_shrinkage_intensity(cov: np.ndarray, n) -> np.ndarray:
    """Schäfer & Strimmer's (2005) intensity of shrinkage toward the diagonal (their target
    "D": the Ledoit–Wolf idea with the diagonal as target), shape ``cov.shape[:-2]``.

    The correlations are scaled by ``1 - lambda`` with
    ``lambda = sum_ij Var(r_ij) / sum_ij r_ij^2`` over off-diagonal pairs and
    ``Var(r_ij) ~ (1 - r_ij^2)^2 / n``.  With D near n the sample covariance is singular or
    wildly conditioned and ``lambda`` is near 1; as rows accumulate ``lambda`` falls as 1/n.
    """
    d = cov.shape[-1]
    if d < 2:
        return np.zeros(cov.shape[:-2])
    var = np.diagonal(cov, axis1=-2, axis2=-1)
    sd = np.sqrt(np.maximum(var, 0.0))
    safe = np.where(sd > 0, sd, 1.0)
    r = cov / (safe[..., :, None] * safe[..., None, :])
    off = ~np.eye(d, dtype=bool)
    r2 = np.where(off, r * r, 0.0)
    n = np.maximum(np.asarray(n, dtype=np.float64), 1.0).reshape(r.shape[:-2])
    spread = ((1.0 - np.minimum(r2, 1.0)) ** 2 * off).sum(axis=(-2, -1)) / n
    signal = r2.sum(axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(signal > 0, np.minimum(spread / signal, 1.0), 1.0)


def shrunk(cov: np.ndarray, lam) -> np.ndarray:
    """``(1 - lam) cov + lam diag(cov)`` for covariances (..., D, D); a new array."""
    lam = np.asarray(lam, dtype=np.float64)
    out = (1.0 - lam)[..., None, None] * cov
    idx = np.arange(cov.shape[-1])
    out[..., idx, idx] = cov[..., idx, idx]
    return out


# Shrinkage intensities tried by :func:`shrink_by_likelihood`, as multiples of the
# Schäfer–Strimmer intensity (capped at 1: the diagonal).  Not 0: where features obey exact
# linear relations (ImageSegments' derived colour features) the unshrunk covariance is
# singular up to the regulariser, and online passes started from it stalled (held-out 1.01
# instead of 1.34 nats per feature, full K=2); a 64th of the intensity, which fades as 1/n too,
# keeps diabetes' near-exact relation (within 0.01 nats of the unshrunk fit).
SHRINK_GRID = (1.0 / 64, 1.0 / 16, 1.0 / 4, 1.0, 4.0)


def shrink_by_likelihood(cov, diff, resp, nk, reg, tied=False):
    """Shrink covariances toward their diagonal by the intensity that predicts rows best.

    The Schäfer–Strimmer intensity (:func:`diagonal_shrinkage_intensity`) is optimal for the
    squared error of the matrix, not for the likelihood, which hinges on the smallest
    eigenvalues: where features obey a near-exact linear relation (diabetes: a cholesterol
    total and its fractions) 5% shrinkage lifts a tiny eigenvalue a hundredfold and costs
    0.1 nats per feature, while with fewer rows than features the sample covariance is
    singular and only shrinkage gives a model.  So each covariance's intensity is chosen
    among multiples of the Schäfer–Strimmer one (:data:`SHRINK_GRID`, 1/64 to 4) by its
    responsibility-weighted leave-one-out log-likelihood (Hoffbeck & Landgrebe, 1996):
    leaving out row ``i`` (weight ``r``, deviation ``e`` from the weighted mean) is a
    rank-one downdate of the covariance (the diagonal target's own change neglected), so every
    row's held-out density follows from one factorisation per candidate.

    ``cov`` (K, D, D), or (D, D) when ``tied``: weighted sample covariances about each
    component's weighted mean; ``diff`` (K, n, D): those deviations; ``resp`` (n, K);
    ``nk`` (K,): summed responsibilities; ``reg`` (D,): the regulariser added to every
    covariance before use.  Returns the shrunk covariances, a new array.
    """
    d = cov.shape[-1]
    if d < 2:
        return cov.copy()
    mats = cov.reshape(-1, d, d)  # (M, D, D): M = K, or 1 when tied
    total = np.atleast_1d(resp.sum() if tied else nk).astype(np.float64)  # (M,)
    lam_ss = np.atleast_1d(diagonal_shrinkage_intensity(cov, total))
    lams = np.minimum(np.outer(lam_ss, SHRINK_GRID), 1.0)  # (M, G) candidates
    # (1 - lam) (S + R) + lam (diag S + R) = W^1/2 ((1 - lam) A + lam I) W^1/2 with
    # W = diag S + R and A = W^-1/2 (S + R) W^-1/2: one eigendecomposition of A serves every
    # candidate, and each row's Mahalanobis length under each candidate costs O(D).
    idx = np.arange(d)
    w = mats[:, idx, idx] + reg
    if not (w > 0).all():
        return shrunk(cov, lam_ss.reshape(cov.shape[:-2]))
    inv_sqrt_w = 1.0 / np.sqrt(w)
    a_mat = mats * inv_sqrt_w[:, :, None] * inv_sqrt_w[:, None, :]
    a_mat[:, idx, idx] = 1.0
    evals, evecs = np.linalg.eigh(a_mat)
    spectra = (1.0 - lams)[:, :, None] * evals[:, None, :] + lams[:, :, None]  # (M, G, D)
    valid = (spectra > 0).all(axis=2)
    spectra = np.where(spectra > 0, spectra, 1.0)
    logdets = np.log(w).sum(axis=1)[:, None] + np.log(spectra).sum(axis=2)  # (M, G)
    y = diff * (inv_sqrt_w[:, None, :] if not tied else inv_sqrt_w[0])
    y2 = (y @ (evecs if not tied else evecs[0])) ** 2  # (K, n, D)
    r = resp.T  # (K, n)
    # A component with a row carrying (almost) all of its weight has no leave-one-out fit.
    usable = nk - r.max(axis=1) > 1.0
    scores = np.zeros(lams.shape)
    n_used = np.zeros(lams.shape[0])
    if not tied:
        # One covariance per component: every component's scores in one batched matmul and
        # one compiled pass (the warm-up's K selection runs this hundreds of times; einsum and
        # a loop of (n, G) temporaries per component were most of the warm-up).  Only the
        # scores' rounding can differ; the result is a grid value picked by argmax.
        q = y2 @ np.swapaxes(1.0 / spectra, 1, 2)  # (K, n, G)
        use = np.flatnonzero(usable)
        sums, ok = _kernels.shrink_scores(
            q, np.ascontiguousarray(r), total, nk, 1.0 - lams, logdets, float(d), use
        )
        valid[use] &= ok
        scores[use] -= 0.5 * np.nan_to_num(sums, nan=np.inf)
        n_used[use] += 1
        return _shrunk_by_scores(cov, lams, lam_ss, scores, valid, n_used, total)
    q = y2 @ (1.0 / spectra[0]).T  # (K, n, G)
    shrink_of = np.zeros(resp.shape[1], dtype=int)  # every component: the one matrix
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for k in np.flatnonzero(usable):
            m = shrink_of[k]
            t = total[m]
            a = (t / (t - r[k]))[:, None]  # the covariance's normaliser without the row
            c = (nk[k] / (nk[k] - r[k]))[:, None]  # its deviation from the mean fitted without it
            left = 1.0 - (1.0 - lams[m])[None, :] * (r[k, :, None] * c / t) * q[k]
            valid[m] &= (left > 0).all(axis=0)
            loo = d * np.log(a) + logdets[m] + np.log(left) + c * c * q[k] / (a * left)
            scores[m] -= 0.5 * np.nan_to_num(r[k] @ loo, nan=np.inf)
            n_used[m] += 1
    return _shrunk_by_scores(cov, lams, lam_ss, scores, valid, n_used, total)


def _shrunk_by_scores(cov, lams, lam_ss, scores, valid, n_used, total):
    """``cov`` shrunk by each matrix's best-scoring valid intensity (else Schäfer–Strimmer's)."""
    scores = np.where(valid & (n_used > 0)[:, None] & (total >= 2.0)[:, None], scores, -np.inf)
    chosen = lam_ss.copy()
    pick = np.isfinite(scores).any(axis=1)
    chosen[pick] = lams[pick, np.argmax(scores[pick], axis=1)]
    return shrunk(cov, chosen.reshape(cov.shape[:-2]))


# Worth of the variance-floor prior, in rows (see :func:`prior_weight`)...
PRIOR_COUNT = 1.0
# ...which tapers to nothing for a component resting on this many rows or more.
FEW_ROWS = 30.0
# The lasting floor is the whole Sheppard floor up to this many rows (then 12 / (n + 2) of it).
SHEPPARD_ROWS = 10.0


def prior_weight(counts, lasting=False):
    """Weight of the variance floor in a variance resting on ``counts`` rows.

    Fading (scikit-learn's semantics, integer ``n_components``): ``PRIOR_COUNT / (n +
    PRIOR_COUNT)`` (a conjugate prior worth one row) times the taper ``max(0, 1 - n /
    FEW_ROWS)^2``: a component resting on *a few* equal values is not made a spike by them,
    while one with dozens of rows keeps what its rows show, as scikit-learn's would -- down to
    the regulariser (1e-6 in standardised units), so that a held-out row one value off the
    spike scores ~5e6 nats below it on a binary feature.

    ``lasting`` (``n_components="auto"``: components are dropped at the warm-up and rows held
    back online, so some rows are covered by no component of their own): the floor
    ``delta^2 / 12`` while ``n <= SHEPPARD_ROWS``, then ``12 / (n + 2)`` of it, i.e.
    ``delta^2 / (n + 2)``.  By the rule of succession a component whose ``n`` rows share a
    discrete feature's value has another value next with probability ``p ~ 1 / (n + 2)``; the
    variance that maximises the expected log-density of that next row, the nearest other value
    lying one resolution step ``delta`` away, is ``p delta^2``.  A row one step off the spike
    then costs ``~(n + 2) / 2`` nats instead of millions.
    """
    n = np.asarray(counts, dtype=np.float64)
    if lasting:
        return np.minimum(1.0, (SHEPPARD_ROWS + 2.0) / (n + 2.0))
    return PRIOR_COUNT / (n + PRIOR_COUNT) * np.maximum(0.0, 1.0 - n / FEW_ROWS) ** 2


class VariancePrior:
    """Variance floors (``_warm_up.variance_floors``, in the fit's units) and their rule
    (:func:`prior_weight`), as the batch M-step applies them (:func:`batch_m_step`)."""

    __slots__ = ("floors", "lasting")

    def __init__(self, floors, lasting=False):
        self.floors = floors
        self.lasting = bool(lasting)

    def apply(self, cov, counts, covariance_type):
        """The variances with the prior applied (a new array): for the fading rule,
        ``(1 - b) C + b floor`` (a conjugate prior); for the lasting one, at least
        ``b floor`` (a floor: a component with real spread keeps it)."""
        if self.lasting:
            return floor_variances(cov.copy(), self.floors, counts, covariance_type, True)
        return apply_prior(cov, self.floors, counts, covariance_type)


def batch_m_step(
    X: np.ndarray, resp: np.ndarray, covariance_type: str, prior=None, shrink=False, reg=None
):
    """Batch EM M-step (used by the warm-up fit): weights, means, unregularised covariances.

    ``prior`` (:class:`VariancePrior`), optional: variance floors, so a component's variance
    is ``(1 - b) S_k + b floor`` with ``b = prior_weight(n_k)`` (at least ``b floor`` for the
    lasting rule).  With ``shrink``, full and tied
    covariances are shrunk toward their diagonal by the intensity that predicts the rows best
    (:func:`shrink_by_likelihood`; ``reg`` (D,), default 0, is the regulariser added before
    use).
    """
    reg = np.zeros(X.shape[1]) if reg is None else np.broadcast_to(reg, X.shape[1])
    n = X.shape[0]
    nk = resp.sum(axis=0) + 10.0 * np.finfo(float).eps
    means = resp.T @ X / nk[:, None]
    diff = centered_rows(X, means)
    rk = resp.T[:, :, None]
    if covariance_type == "full":
        cov = np.swapaxes(rk * diff, 1, 2) @ diff / nk[:, None, None]
        if shrink:
            cov = shrink_by_likelihood(cov, diff, resp, nk, reg)
    elif covariance_type == "tied":
        cov = np.einsum("kni,knj->ij", rk * diff, diff) / n
        if shrink:
            cov = shrink_by_likelihood(cov, diff, resp, nk, reg, tied=True)
    elif covariance_type == "diag":
        cov = (rk * diff * diff).sum(axis=1) / nk[:, None]
    else:
        cov = (rk[:, :, 0] * np.einsum("knd,knd->kn", diff, diff)).sum(axis=1) / nk / X.shape[1]
    if prior is not None and prior.floors.any():
        cov = prior.apply(cov, nk if covariance_type != "tied" else n, covariance_type)
    return nk / n, means, cov


def apply_prior(cov, floors, counts, covariance_type):
    """``(1 - b) C + b floor`` on the variances, ``b = prior_weight(counts)``; a new array.

    ``counts``: rows behind each component's statistic ((K,), or a scalar for tied).
    """
    b = prior_weight(counts)
    a = 1.0 - b
    if covariance_type == "full":
        out = a[:, None, None] * cov
        idx = np.arange(floors.shape[0])
        out[:, idx, idx] += b[:, None] * floors
        return out
    if covariance_type == "tied":
        out = a * cov
        idx = np.arange(floors.shape[0])
        out[idx, idx] += b * floors
        return out
    if covariance_type == "diag":
        return a[:, None] * cov + b[:, None] * floors
    return a * cov + b * floors.mean()


def floor_variances(cov, floors, counts, covariance_type, lasting=False):
    """Raise each variance to at least ``prior_weight(n_k, lasting) floor`` (online).

    The online form of the prior of :func:`batch_m_step`: the fading rule binds only on
    components resting on few rows; in place, returns ``cov``.
    """
    b = prior_weight(counts, lasting)
    if covariance_type in ("full", "tied"):
        idx = np.arange(floors.shape[0])
        diag = cov[..., idx, idx]
        cov[..., idx, idx] = np.maximum(diag, np.multiply.outer(b, floors))
    elif covariance_type == "diag":
        np.maximum(cov, b[:, None] * floors, out=cov)
    else:
        np.maximum(cov, b * floors.mean(), out=cov)
    return cov


def principal_axis(cov_k: np.ndarray, covariance_type: str, n_features: int):
    """Largest-variance direction and its variance of one component's statistic (for splits)."""
    if covariance_type in ("full", "tied"):
        vals, vecs = np.linalg.eigh(cov_k)
        return vecs[:, -1], max(float(vals[-1]), 0.0)
    axis = np.zeros(n_features)
    if covariance_type == "diag":
        j = int(np.argmax(cov_k))
        axis[j] = 1.0
        return axis, max(float(cov_k[j]), 0.0)
    axis[0] = 1.0
    return axis, max(float(cov_k), 0.0)
