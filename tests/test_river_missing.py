"""streamgmm._missing against brute-force Gaussian conditioning."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from streamgmm import OnlineGaussianMixture
from streamgmm._missing import conditional_moments, learn_one_partial, marginal_log_prob


class Fixed:
    """A mixture given by its parameters (the interface _missing reads)."""

    def __init__(self, weights, means, covs):
        self.weights_, self.means_, self._covs = weights, means, covs

    def _covariance_matrices(self):
        return self._covs


def random_mixture(rng, k=3, d=5):
    a = rng.normal(size=(k, d, d))
    covs = a @ np.swapaxes(a, 1, 2) + 0.5 * np.eye(d)
    weights = rng.dirichlet(np.ones(k))
    return Fixed(weights, rng.normal(size=(k, d)) * 2, covs)


@pytest.mark.parametrize("seed", range(5))
def test_marginal_and_conditional_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    model = random_mixture(rng)
    x = rng.normal(size=5) * 2
    observed = np.array([True, False, True, True, False])
    o, m = np.flatnonzero(observed), np.flatnonzero(~observed)
    x_in = x.copy()
    x_in[m] = np.nan
    ld, resp, x_hat, extra = conditional_moments(model, x_in, observed)
    parts = [
        w * multivariate_normal(mu[o], c[np.ix_(o, o)]).pdf(x[o])
        for w, mu, c in zip(model.weights_, model.means_, model._covs, strict=True)
    ]
    assert np.isclose(ld, np.log(sum(parts)), rtol=1e-10)
    np.testing.assert_allclose(resp, np.array(parts) / sum(parts), rtol=1e-9)
    ld2, resp2 = marginal_log_prob(model, x_in, observed)
    assert ld2 == pytest.approx(ld, rel=1e-12)
    np.testing.assert_allclose(resp2, resp, rtol=1e-12)
    for k in range(3):
        mu, c = model.means_[k], model._covs[k]
        gain = c[np.ix_(m, o)] @ np.linalg.inv(c[np.ix_(o, o)])
        np.testing.assert_allclose(x_hat[k, o], x[o])
        np.testing.assert_allclose(x_hat[k, m], mu[m] + gain @ (x[o] - mu[o]), rtol=1e-9)
        cond = c[np.ix_(m, m)] - gain @ c[np.ix_(o, m)]
        np.testing.assert_allclose(extra[k][np.ix_(m, m)], cond, rtol=1e-9, atol=1e-12)
        assert not extra[k][o].any() and not extra[k][:, o].any()


def test_nothing_observed():
    model = random_mixture(np.random.default_rng(0))
    ld, resp = marginal_log_prob(model, np.full(5, np.nan), np.zeros(5, dtype=bool))
    assert ld == 0.0
    np.testing.assert_allclose(resp, model.weights_)


def test_learn_one_partial_moves_the_core_model():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 3))
    model = OnlineGaussianMixture(n_components=2, warm_up=500, random_state=0).fit(X[:500])
    n = model.n_samples_seen_
    means = model.means_.copy()
    x = np.array([3.0, np.nan, -2.0])
    ld = learn_one_partial(model, x, ~np.isnan(x))
    assert np.isfinite(ld)
    assert model.n_samples_seen_ == n + 1
    assert not np.allclose(model.means_, means)
    assert np.isfinite(model.full_covariances_).all()
