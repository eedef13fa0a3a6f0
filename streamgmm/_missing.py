"""Gaussian mixture on partially observed samples: marginals and missing-data EM.

The marginal of a Gaussian over a subset of its coordinates is Gaussian with the matching blocks
of the mean and covariance, so a record with missing features is scored on what it has.  To learn
from it, missing-data EM (Ghahramani & Jordan 1994) replaces the missing coordinates by their
per-component conditional expectation

    E[x_m | x_o, k] = mu_m + S_mo S_oo^-1 (x_o - mu_o)

and adds the conditional covariance ``S_mm - S_mo S_oo^-1 S_om`` of the missing block to the
second-moment statistics, which zero-filling or mean-filling would silently shrink.

Only numpy here: this path runs when a record is incomplete, which is rare on a healthy stream;
the complete-record path is the compiled one of the core.

References
----------
Ghahramani, Z. and Jordan, M. I. (1994). Supervised learning from incomplete data via an EM
approach. NIPS 6.

"""

from __future__ import annotations

import numpy as np

__all__ = ["conditional_moments", "learn_one_partial", "marginal_log_prob"]

_LOG_2PI = float(np.log(2.0 * np.pi))
_FLUSH = 1e-30


def _blocks(model, x, observed):
    obs = np.flatnonzero(observed)
    means = np.asarray(model.means_, dtype=np.float64)
    covs = np.asarray(model.full_covariances_, dtype=np.float64)
    with np.errstate(divide="ignore"):
        log_w = np.log(np.asarray(model.weights_, dtype=np.float64))
    return obs, means, covs, log_w


def _responsibilities(log_prob):
    peak = np.max(log_prob)
    if not np.isfinite(peak):
        raise FloatingPointError("no component gives the observed coordinates a finite density")
    p = np.exp(log_prob - peak)
    total = p.sum()
    log_density = float(peak + np.log(total))
    resp = p / total
    resp[resp < _FLUSH] = 0.0
    resp /= resp.sum()
    return log_density, resp


def _marginal(obs, means, covs, log_w, x):
    """Per component: log pi_k + log N(x_o | mu_o, S_oo), and S_oo^-1 (x_o - mu_o)."""
    d = obs.size
    diff = x[obs][None, :] - means[:, obs]  # (K, d)
    s_oo = covs[:, obs[:, None], obs[None, :]]  # (K, d, d)
    chol = np.linalg.cholesky(s_oo)
    half = np.linalg.solve(chol, diff[:, :, None])[:, :, 0]  # L^-1 (x_o - mu_o)
    maha = np.einsum("kd,kd->k", half, half)
    logdet = 2.0 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
    log_prob = log_w - 0.5 * (d * _LOG_2PI + logdet + maha)
    return log_prob, s_oo, diff


def marginal_log_prob(model, x, observed):
    """Log-density and responsibilities of `x` marginalised over the unobserved coordinates.

    Parameters
    ----------
    model
        A fitted mixture exposing ``means_``, ``weights_`` and ``full_covariances_``.
    x
        Sample of shape (D,); values at unobserved coordinates are ignored.
    observed
        Boolean mask of shape (D,).

    Returns
    -------
    (log_density, resp): a float and an array of shape (K,) summing to 1.  With nothing observed
    the density is the empty marginal (log 1 = 0) and the responsibilities are the weights.

    Examples
    --------
    >>> import numpy as np
    >>> class Unit:  # one standard bivariate Gaussian
    ...     means_ = np.zeros((1, 2)); weights_ = np.ones(1)
    ...     full_covariances_ = np.eye(2)[None]
    >>> ld, resp = marginal_log_prob(Unit(), np.array([0.0, np.nan]), np.array([True, False]))
    >>> round(ld, 6), resp.tolist()
    (-0.918939, [1.0])

    """
    obs, means, covs, log_w = _blocks(model, x, observed)
    if obs.size == 0:
        w = np.exp(log_w)
        return 0.0, w / w.sum()
    log_prob, _, _ = _marginal(obs, means, covs, log_w, x)
    return _responsibilities(log_prob)


def conditional_moments(model, x, observed):
    """Missing-data E-step of one sample.

    Returns
    -------
    (log_density, resp, x_hat, extra_cov):
        the marginal log-density of the observed part, the responsibilities (K,), the
        per-component completed sample ``x_hat`` (K, D) -- observed coordinates as given, missing
        ones at their conditional expectation -- and ``extra_cov`` (K, D, D), the conditional
        covariance of the missing block (zeros elsewhere).

    """
    obs, means, covs, log_w = _blocks(model, x, observed)
    k_count, dim = means.shape
    mis = np.flatnonzero(~np.asarray(observed, dtype=bool))
    x_hat = np.empty((k_count, dim))
    extra = np.zeros((k_count, dim, dim))
    if obs.size == 0:
        # Nothing observed: the expectation is the component mean, the covariance all of it.
        x_hat[:] = means
        extra[:] = covs
        w = np.exp(log_w)
        return 0.0, w / w.sum(), x_hat, extra
    log_prob, s_oo, diff = _marginal(obs, means, covs, log_w, x)
    log_density, resp = _responsibilities(log_prob)
    x_hat[:, obs] = x[obs]
    if mis.size:
        s_mo = covs[:, mis[:, None], obs[None, :]]  # (K, m, d)
        s_mm = covs[:, mis[:, None], mis[None, :]]  # (K, m, m)
        # One solve for both the regression of x_m on x_o and the Schur complement.
        rhs = np.concatenate([diff[:, :, None], np.swapaxes(s_mo, 1, 2)], axis=2)
        sol = np.linalg.solve(s_oo, rhs)  # S_oo^-1 [diff, S_om]
        x_hat[:, mis] = means[:, mis] + np.einsum("kmd,kd->km", s_mo, sol[:, :, 0])
        cond = s_mm - s_mo @ sol[:, :, 1:]
        cond = 0.5 * (cond + np.swapaxes(cond, 1, 2))  # exact symmetry for the rank updates
        extra[:, mis[:, None], mis[None, :]] = cond
    return log_density, resp, x_hat, extra


def learn_one_partial(model, x, observed):
    """Update `model` from one partially observed sample by missing-data EM.

    Computes the expected sufficient statistics with :func:`conditional_moments` and hands them
    to the core's public ``model.learn_expected_one(x_hat, extra_cov, resp)``.  Returns the marginal
    log-density of the observed part under the model as it was before the update.
    """
    log_density, resp, x_hat, extra = conditional_moments(model, x, observed)
    model.learn_expected_one(x_hat, extra, resp)
    return log_density
