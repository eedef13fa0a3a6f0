"""The warm-up: a batch EM fit of the first samples, before the model goes online.

Online EM forgets its start only slowly, so the start must be good: several k-means++ (or
random-from-data) initialisations, each run to convergence on the standardised buffer, the best
kept, then the worst-scoring few percent trimmed (outliers in the warm-up would otherwise be
baked into a component) and the survivors refitted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import kmeans_plusplus

from streamgmm import _covariance as cov_ops


@dataclass
class BatchFit:
    """Weights, means and unregularised covariance statistics, in the caller's units."""

    weights: np.ndarray
    means: np.ndarray
    cov: np.ndarray
    log_likelihood: float


def _initial_resp(X, n_components, init_params, rng):
    n = X.shape[0]
    if init_params == "k-means++":
        seed = int(rng.integers(2**31 - 1))
        centers, _ = kmeans_plusplus(X, n_components, random_state=seed)
    else:  # random_from_data
        centers = X[rng.choice(n, size=n_components, replace=n < n_components)]
    dist = ((X[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
    resp = np.zeros((n, n_components))
    resp[np.arange(n), dist.argmin(axis=1)] = 1.0
    return resp


def _em(X, resp, covariance_type, reg, max_iter, tol):
    """Batch EM from initial responsibilities; returns the last parameters and mean log-lik."""
    k = resp.shape[1]
    lower = -np.inf
    for _ in range(max(1, max_iter)):
        weights, means, cov = cov_ops.batch_m_step(X, resp, covariance_type)
        prec, logdet = cov_ops.exact_precision(cov, reg, covariance_type, k)
        diff = cov_ops.centered_rows(X, means)
        with np.errstate(divide="ignore"):
            log_w = np.log(weights)
        log_prob = cov_ops.log_gaussian(diff, prec, logdet, covariance_type) + log_w
        log_norm, log_resp = cov_ops.log_responsibilities(log_prob)
        resp = np.exp(log_resp)
        new_lower = float(log_norm.mean())
        if abs(new_lower - lower) < tol:
            lower = new_lower
            break
        lower = new_lower
    weights, means, cov = cov_ops.batch_m_step(X, resp, covariance_type)
    return weights, means, cov, resp, lower


def feature_scales(X: np.ndarray) -> np.ndarray:
    """Each feature's standard deviation, or 1 where the feature is constant.

    A feature counts as constant when its variance is no more than rounding noise of its mean:
    its scale is then unknown, and 1 (absolute units) is the only neutral guess.  Taking the
    noise as the scale would make the regulariser vanish and every later value impossible.
    """
    var = X.var(axis=0)
    noise = (1e-13 * np.abs(X.mean(axis=0))) ** 2
    return np.sqrt(np.where(var > noise, var, 1.0))


def fit_batch(
    X: np.ndarray,
    scale: np.ndarray,
    n_components: int,
    covariance_type: str,
    reg_covar: float,
    n_init: int,
    init_params: str,
    max_iter: int,
    tol: float,
    rng: np.random.Generator,
    trim_fraction: float = 0.02,
) -> BatchFit:
    """Fit a mixture to X by batch EM; covariances returned without the regulariser.

    ``scale``: each feature's scale (:func:`feature_scales`); the fit runs in those units.
    """
    center = X.mean(axis=0)
    if covariance_type == "spherical":
        # One variance per component is only meaningful in units shared by all features.
        scale = np.full_like(scale, np.sqrt(np.mean(scale**2)))
    Xs = (X - center) / scale
    # In standardised units the regulariser is the same for every feature.
    reg = np.full(X.shape[1], reg_covar)

    best = None
    for _ in range(max(1, n_init)):
        resp = _initial_resp(Xs, n_components, init_params, rng)
        fit = _em(Xs, resp, covariance_type, reg, max_iter, tol)
        if best is None or fit[4] > best[4]:
            best = fit

    weights, means, cov, resp, lower = best
    n_trim = int(trim_fraction * X.shape[0])
    if n_trim >= 1 and X.shape[0] - n_trim > 2 * n_components:
        prec, logdet = cov_ops.exact_precision(cov, reg, covariance_type, n_components)
        diff = cov_ops.centered_rows(Xs, means)
        with np.errstate(divide="ignore"):
            log_prob = cov_ops.log_gaussian(diff, prec, logdet, covariance_type) + np.log(weights)
        log_norm, _ = cov_ops.log_responsibilities(log_prob)
        keep = np.argsort(log_norm, kind="stable")[n_trim:]
        keep.sort()
        weights, means, cov, _, lower = _em(
            Xs[keep], resp[keep], covariance_type, reg, max_iter, tol
        )

    return BatchFit(
        weights=weights,
        means=center + means * scale,
        cov=_unstandardise(cov, scale, covariance_type),
        log_likelihood=lower - float(np.log(scale).sum()),
    )


def _unstandardise(cov, scale, covariance_type):
    if covariance_type in ("full", "tied"):
        return cov * scale[:, None] * scale[None, :]
    if covariance_type == "diag":
        return cov * scale**2
    return cov * scale[0] ** 2  # spherical: one scale shared by all features
