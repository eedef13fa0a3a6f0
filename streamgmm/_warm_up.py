"""The warm-up: a batch EM fit of the first samples, before the model goes online.

Online EM forgets its start only slowly, so the start must be good: several k-means++ (or
random-from-data) initialisations, each run to convergence on the standardised buffer, the best
kept.  Every row counts: trimming "the worst few percent" deletes rare but normal values (a
binary column at 1.5% lost all its ones).  Covariances resting on few rows are regularised by
priors instead (see :func:`variance_floors` and ``_covariance.batch_m_step``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamgmm import _covariance as cov_ops


@dataclass
class BatchFit:
    """Weights, means and unregularised covariance statistics, in the caller's units."""

    weights: np.ndarray
    means: np.ndarray
    cov: np.ndarray
    log_likelihood: float
    n_iter: int
    converged: bool
    lower_bounds: list
    n_rows: int = 0


# A fit with a component on fewer rows than this is degenerate: a component on one row has
# no variance of its own (only the regulariser and the priors), and it buys training
# likelihood that held-out rows do not pay back (iris, spherical K=5: a component on one of
# the 105 rows, training log-likelihood -0.750 against -0.770, held-out -0.952 against -0.837).
MIN_COMPONENT_ROWS = 2.0

# Starts beyond n_init (fit()'s k-means starts) are screened by this many EM iterations: only
# the best n_init continue to convergence (short-run EM, Biernacki, Celeux & Govaert 2003).
SCREEN_ITER = 5


def _initial_resp(X, n_components, init_params, rng):
    """Hard (or random) initial responsibilities, by scikit-learn's ``init_params`` names."""
    n = X.shape[0]
    seed = int(rng.integers(2**31 - 1))
    if init_params == "random":
        resp = rng.uniform(size=(n, n_components))
        return resp / resp.sum(axis=1, keepdims=True)
    # scikit-learn's k-means is imported here, not at module level (~0.2 s): a process that
    # restores its models (every restart of the service) never warms up.
    from sklearn.cluster import KMeans, kmeans_plusplus

    if init_params == "kmeans":
        labels = KMeans(n_components, n_init=1, random_state=seed).fit(X).labels_
    else:
        if init_params == "k-means++":
            centers, _ = kmeans_plusplus(X, n_components, random_state=seed)
        else:  # random_from_data
            centers = X[rng.choice(n, size=n_components, replace=n < n_components)]
        labels = ((X[:, None, :] - centers[None, :, :]) ** 2).sum(-1).argmin(axis=1)
    resp = np.zeros((n, n_components))
    resp[np.arange(n), labels] = 1.0
    return resp


def _safe_precision(cov, reg, covariance_type, k):
    """Precision and log-determinant, with the least diagonal jitter if ``cov`` needs it."""
    try:
        return cov, *cov_ops.exact_precision(cov, reg, covariance_type, k)
    except np.linalg.LinAlgError:
        cov = cov_ops.stabilise(cov, reg, covariance_type)
        return cov, *cov_ops.exact_precision(cov, reg, covariance_type, k)


@dataclass
class _Params:
    """One EM iterate, in standardised units: ``cov`` without the regulariser."""

    weights: np.ndarray
    means: np.ndarray
    cov: np.ndarray
    prec: np.ndarray
    logdet: np.ndarray


def _start(X, resp, covariance_type, reg, prior, shrink, init):
    """The first iterate: an M-step on ``resp``, overridden by any given ``init``.

    ``init``: ``(weights, means, precisions)`` in standardised units, any of them None (as
    scikit-learn's ``weights_init``, ``means_init``, ``precisions_init``).
    """
    k = resp.shape[1]
    weights, means, cov = cov_ops.batch_m_step(X, resp, covariance_type, prior, shrink, reg)
    w_init, m_init, p_init = init
    if w_init is not None:
        weights = w_init
    if m_init is not None:
        means = m_init
    if p_init is not None:
        sigma = _inverse(p_init, covariance_type)
        cov = cov_ops.regularised(sigma, -reg, covariance_type)  # C + reg = inverse(P)
        prec = p_init
        logdet = -_logdet(p_init, covariance_type, k, X.shape[1])
        return _Params(weights, means, cov, prec, logdet)
    cov, prec, logdet = _safe_precision(cov, reg, covariance_type, k)
    return _Params(weights, means, cov, prec, logdet)


def _inverse(prec, covariance_type):
    if covariance_type in ("full", "tied"):
        return np.linalg.inv(prec)
    return 1.0 / prec


def _logdet(prec, covariance_type, k, d):
    if covariance_type == "full":
        return np.linalg.slogdet(prec)[1]
    if covariance_type == "tied":
        return np.full(k, np.linalg.slogdet(prec)[1])
    if covariance_type == "diag":
        return np.log(prec).sum(axis=1)
    return d * np.log(prec)


def _em(X, start, covariance_type, reg, prior, shrink, max_iter, tol, resume=None):
    """Batch EM from a first iterate, as scikit-learn's: E-step, M-step, until the mean
    log-likelihood (of the E-step) changes by less than ``tol`` or ``max_iter`` iterations.

    Returns ``(params, lower, n_iter, converged, lower_bounds)``; ``resume``: such a result
    of an EM stopped early, continued (``start`` is then not used) up to ``max_iter`` in all.
    """
    if resume is None:
        params, lower, lower_bounds, converged, done = start, -np.inf, [], False, 0
    else:
        params, lower, done, converged, lower_bounds = resume
        lower_bounds = list(lower_bounds)
        if converged:
            return resume
    k = params.weights.shape[0]
    n_iter = done
    for n_iter in range(done + 1, max_iter + 1):  # noqa: B007 (n_iter is reported)
        diff = cov_ops.centered_rows(X, params.means)
        with np.errstate(divide="ignore"):
            log_w = np.log(params.weights)
        log_prob = cov_ops.log_gaussian(diff, params.prec, params.logdet, covariance_type)
        log_norm, log_resp = cov_ops.log_responsibilities(log_prob + log_w)
        with np.errstate(under="ignore"):
            resp = np.exp(log_resp)
        weights, means, cov = cov_ops.batch_m_step(X, resp, covariance_type, prior, shrink, reg)
        cov, prec, logdet = _safe_precision(cov, reg, covariance_type, k)
        params = _Params(weights, means, cov, prec, logdet)
        new_lower = float(log_norm.mean())
        lower_bounds.append(new_lower)
        change, lower = new_lower - lower, new_lower
        if abs(change) < tol:
            converged = True
            break
    return params, lower, n_iter, converged, lower_bounds


def feature_scales(X: np.ndarray) -> np.ndarray:
    """Each feature's standard deviation, or 1 where the feature is constant.

    A feature counts as constant when its variance is no more than rounding noise of its mean:
    its scale is then unknown, and 1 (absolute units) is the only neutral guess.  Taking the
    noise as the scale would make the regulariser vanish and every later value impossible.
    """
    var = X.var(axis=0)
    noise = (1e-13 * np.abs(X.mean(axis=0))) ** 2
    return np.sqrt(np.where(var > noise, var, 1.0))


# A value this many robust spreads from its feature's median is "gross" (see gross_rows):
# some 6,700 standard deviations for Gaussian data; heavy-tailed real data (Shuttle) have
# recurring values at a few hundred...
GROSS_SPREADS = 1e4
# ...unless it recurs in at least this share of the rows (and at least MIN_RECURRENCES times).
RECURRING_SHARE = 0.005
MIN_RECURRENCES = 3


def robust_bounds(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per feature, the range beyond which a value is gross: median ± GROSS_SPREADS spreads.

    The spread is the median distance to the median over the values that differ from it, so a
    binary or sparse feature's spread is its step, never 0.  Where the scale is unknown (a
    constant feature, or fewer than ``2 MIN_RECURRENCES`` rows) there is no bound.
    """
    huge = np.finfo(np.float64).max
    lo, hi = np.full(X.shape[1], -huge), np.full(X.shape[1], huge)
    if X.shape[0] < 2 * MIN_RECURRENCES:
        return lo, hi
    med = np.median(X, axis=0)
    for j in range(X.shape[1]):
        dev = np.abs(X[:, j] - med[j])
        moved = dev[dev > 0]
        if moved.size:
            spread = GROSS_SPREADS * np.median(moved)
            lo[j], hi[j] = med[j] - spread, med[j] + spread
    return lo, hi


def gross_rows(X: np.ndarray) -> np.ndarray:
    """Rows the warm-up fit leaves out: values far beyond any sane scale of their feature.

    A value is gross when it lies outside :func:`robust_bounds` *and* occurs in fewer than
    ``max(MIN_RECURRENCES, RECURRING_SHARE n)`` rows.  A value that recurs is never left out
    (a binary column at 1% of 300 rows has 3 ones: kept).  Such rows (1e149, 2^64 among values
    of order 1) would otherwise set the feature's scale and squash every ordinary value to one
    point; they are only left out of the warm-up *fit*.  Online, the same bounds decide which
    rows are not learned while gross rows are rare (``OnlineGaussianMixture``).
    """
    n, d = X.shape
    gross = np.zeros(n, dtype=bool)
    if n < 2 * MIN_RECURRENCES:
        return gross
    lo, hi = robust_bounds(X)
    rare = max(MIN_RECURRENCES, RECURRING_SHARE * n)
    for j in range(d):
        far = (X[:, j] < lo[j]) | (X[:, j] > hi[j])
        if not far.any():
            continue
        _, inverse, counts = np.unique(X[:, j], return_inverse=True, return_counts=True)
        gross |= far & (counts[inverse] < rare)
    return gross


def variance_floors(X: np.ndarray, capped: bool = True) -> np.ndarray:
    """Per feature, the variance a component's variance is pulled toward when it rests on a
    few rows: ``min(delta^2 / 12, var)`` for a discrete feature, 0 for the others.

    A feature is discrete when its values recur (at most one distinct value per 4 rows);
    ``delta``, the smallest gap between its distinct values, is its resolution, and
    ``delta^2 / 12`` the variance of rounding to it (Sheppard).  Capped by the feature's own
    variance, so a rare binary value is never made more spread than the data show.  Constant
    features get 0: their scale is unknown (``OnlineGaussianMixture`` regularises them in its
    provisional fits).  The floor enters as a prior (``_covariance.prior_weight``) that fades
    as a component gathers rows: a component with dozens of rows equal on a feature keeps the
    data's spike, one with a few is not made a spike by them.  Uncapped (``capped=False``)
    for the lasting rule, whose floor falls as ``delta^2 / (n + 2)`` with the rows: the gap
    to the nearest other value, not the feature's spread, is what a spike must not ignore.
    """
    n, d = X.shape
    floors = np.zeros(d)
    for j in range(d):
        values = np.unique(X[:, j])
        if values.size < 2 or 4 * values.size > n:
            continue
        delta = float(np.diff(values).min())
        floors[j] = delta * delta / 12.0
        if capped:
            floors[j] = min(floors[j], float(X[:, j].var()))
    return floors


def fit_batch(
    X: np.ndarray,
    scale: np.ndarray,
    floors: np.ndarray,
    n_components: int,
    covariance_type: str,
    reg_covar: float,
    n_init: int,
    init_params: str,
    max_iter: int,
    tol: float,
    rng: np.random.Generator,
    shrink: bool = True,
    init=(None, None, None),
    seedings=None,
    lasting_floors: bool = False,
) -> BatchFit | list[BatchFit]:
    """Fit a mixture to X by batch EM; covariances returned without the regulariser.

    ``scale``: each feature's scale (:func:`feature_scales`); the fit runs in those units.
    ``floors``: :func:`variance_floors`, in the caller's units, applied by the lasting rule if
    ``lasting_floors`` (``_covariance.prior_weight``).  ``reg_covar`` (a scalar, or
    one per feature) is in standardised units; ``shrink``: shrink full and tied covariances
    toward their diagonal (``_covariance.shrink_by_likelihood``).  ``init``: ``(weights, means,
    precisions)`` in the caller's units, any of them None, replacing the seeding's
    (scikit-learn's ``*_init``).  ``seedings``: one start per entry, each seeded by that
    ``init_params`` value (``init_params`` is then not used), and the fits of all of them are
    returned, best first (:func:`fit_rank`): the non-degenerate ones by decreasing
    log-likelihood, then the degenerate ones.  With more seedings than ``n_init``, each start
    runs :data:`SCREEN_ITER` iterations and only the best ``n_init`` go on to convergence (they
    come first in the list); a start whose hard seeding partitions the rows as an earlier one
    did is dropped (its EM would be the same).  No row is left out: outliers in
    the stream are the gate's business, and trimming the worst-scoring rows deletes rare but
    normal values.
    """
    center = X.mean(axis=0)
    if covariance_type == "spherical":
        # One variance per component is only meaningful in units shared by all features.
        scale = np.full_like(scale, np.sqrt(np.mean(scale**2)))
    Xs = (X - center) / scale
    prior = cov_ops.VariancePrior(floors / scale**2, lasting_floors)
    # In standardised units the regulariser is the same for every feature.
    reg = np.broadcast_to(np.asarray(reg_covar, dtype=np.float64), X.shape[1]).copy()
    init_s = _standardise_init(init, center, scale, covariance_type)
    every_start = seedings is not None
    if seedings is None:
        seedings = [init_params] * max(1, n_init)
    if all(part is not None for part in init):
        seedings = seedings[:1]  # nothing left to seed: every start would be the same

    n = X.shape[0]
    # Several starts: each runs SCREEN_ITER iterations, and only the best n_init of them
    # (ranked as the fits are, _rank) go on to convergence.  Starts whose hard seeding
    # partitions the rows as an earlier one did would repeat its EM: they are dropped.
    screen = every_start and len(seedings) > max(1, n_init)
    no_init = all(part is None for part in init_s)
    fits, partitions = [], set()
    for seeding in seedings:
        resp = _initial_resp(Xs, n_components, seeding, rng)
        if every_start and no_init and seeding != "random":
            partition = _partition(resp)
            if partition in partitions:
                continue
            partitions.add(partition)
        start = _start(Xs, resp, covariance_type, reg, prior, shrink, init_s)
        iters = min(max_iter, SCREEN_ITER) if screen else max_iter
        fits.append(_em(Xs, start, covariance_type, reg, prior, shrink, iters, tol))
    if screen:
        fits.sort(key=lambda fit: fit_rank(fit[0].weights, fit[1], n))
        fits[: max(1, n_init)] = [
            _em(Xs, None, covariance_type, reg, prior, shrink, max_iter, tol, resume=fit)
            for fit in fits[: max(1, n_init)]
        ]
    log_scale = float(np.log(scale).sum())
    results = [
        _batch_fit(fit, center, scale, log_scale, covariance_type, X.shape[0]) for fit in fits
    ]
    if not every_start:  # the best log-likelihood, the first of equals (as scikit-learn)
        return max(results, key=lambda fit: fit.log_likelihood)
    # sorted() is stable: equal keys keep the order of the starts.  When screened, the fits
    # run to convergence come first.
    kept = max(1, n_init) if screen else len(results)
    ranked = sorted(results[:kept], key=_rank) + sorted(results[kept:], key=_rank)
    # Starts that reached the same optimum: the copies are dropped (fit() would carry each
    # through the same online passes).
    distinct = []
    for fit in ranked:
        if not any(_same_fit(fit, other) for other in distinct):
            distinct.append(fit)
    return distinct


def _same_fit(a: BatchFit, b: BatchFit) -> bool:
    """The same mixture, whatever the components' order (log-likelihoods equal to 1e-9)."""
    la, lb = a.log_likelihood, b.log_likelihood
    if not (np.isfinite(la) and abs(la - lb) <= 1e-9 * max(1.0, abs(la))):
        return False
    oa, ob = np.lexsort(a.means.T[::-1]), np.lexsort(b.means.T[::-1])
    scale = np.abs(a.means).max() + 1.0
    return bool(np.allclose(a.weights[oa], b.weights[ob], rtol=0, atol=1e-6)) and bool(
        np.allclose(a.means[oa], b.means[ob], rtol=0, atol=1e-6 * scale)
    )


def _rank(fit: BatchFit):
    return fit_rank(fit.weights, fit.log_likelihood, fit.n_rows)


def fit_rank(weights, log_likelihood, n_rows):
    """Sort key of fits of ``n_rows`` rows, best first: non-degenerate (no component on fewer
    than :data:`MIN_COMPONENT_ROWS` rows), then the highest log-likelihood (NaN last)."""
    degenerate = bool((weights * n_rows < MIN_COMPONENT_ROWS).any())
    return (degenerate, -log_likelihood if np.isfinite(log_likelihood) else np.inf)


def _partition(resp) -> bytes:
    """The partition of the rows a hard seeding makes, whatever the components' order."""
    labels = resp.argmax(axis=1)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.empty(first.size, dtype=np.int64)
    order[np.argsort(first)] = np.arange(first.size)
    return order[inverse].tobytes()


def _batch_fit(fit, center, scale, log_scale, covariance_type, n_rows) -> BatchFit:
    params, lower, n_iter, converged, lower_bounds = fit
    return BatchFit(
        weights=params.weights,
        means=center + params.means * scale,
        cov=_unstandardise(params.cov, scale, covariance_type),
        log_likelihood=lower - log_scale,
        n_iter=n_iter,
        converged=converged,
        lower_bounds=[b - log_scale for b in lower_bounds],
        n_rows=n_rows,
    )


def _standardise_init(init, center, scale, covariance_type):
    weights, means, prec = init
    if means is not None:
        means = (np.asarray(means, dtype=np.float64) - center) / scale
    if prec is not None:
        prec = np.asarray(prec, dtype=np.float64)
        if covariance_type in ("full", "tied"):
            prec = prec * scale[:, None] * scale[None, :]
        elif covariance_type == "diag":
            prec = prec * scale**2
        else:
            prec = prec * scale[0] ** 2
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
    return weights, means, prec


def _unstandardise(cov, scale, covariance_type):
    if covariance_type in ("full", "tied"):
        return cov * scale[:, None] * scale[None, :]
    if covariance_type == "diag":
        return cov * scale**2
    return cov * scale[0] ** 2  # spherical: one scale shared by all features
