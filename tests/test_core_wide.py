"""Wide data (issue 8): a model after a few hundred rows, sane provisional scores, shrinkage
toward the diagonal that fades as rows accumulate."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from streamgmm import OnlineGaussianMixture
from streamgmm.online import default_warm_up


def _correlated(n, d, rho, seed):
    """Rows with unit variances and correlation ``rho`` between every pair of features."""
    cov = np.full((d, d), rho) + (1.0 - rho) * np.eye(d)
    return np.random.default_rng(seed).multivariate_normal(np.zeros(d), cov, n), cov


def test_default_warm_up_of_wide_data_is_a_few_thousand_rows_at_most():
    n = default_warm_up(3, 200)
    assert n <= 1500
    model = OnlineGaussianMixture(3, covariance_type="diag", random_state=0)
    model.partial_fit(np.random.default_rng(0).normal(size=(n - 1, 200)))
    assert model.warming_up_
    model.partial_fit(np.random.default_rng(1).normal(size=(1, 200)))
    assert not model.warming_up_


@pytest.mark.parametrize("covariance_type", ["full", "diag", "tied"])
def test_digits_leave_the_warm_up_and_provisional_scores_stay_bounded(covariance_type):
    X = load_digits().data
    X = X[np.random.default_rng(0).permutation(len(X))]
    train, test = X[:1500], X[1500:]
    model = OnlineGaussianMixture(3, covariance_type=covariance_type, random_state=0)
    for i in range(0, len(train), 50):
        model.partial_fit(train[i : i + 50])
        if model.warming_up_:
            # 64 integer pixels, some 0 so far: log-densities of order -100; a digit with a
            # pixel never lit in the 1000 rows so far may score -1e4, never -1e6 (was -4.5e6).
            assert model.score_samples(test).min() > -2e4, i
    assert not model.warming_up_
    assert np.median(model.score_samples(test)) > -150


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_wide_correlated_data_has_a_sane_model_after_a_few_dozen_rows(covariance_type):
    d = 60
    X, cov = _correlated(6060, d, 0.6, 0)
    X_test, _ = _correlated(2000, d, 0.6, 1)
    _, logdet = np.linalg.slogdet(cov)
    inv = np.linalg.inv(cov)
    true = -0.5 * (d * np.log(2 * np.pi) + logdet + np.einsum("ni,ij,nj->n", X_test, inv, X_test))
    model = OnlineGaussianMixture(2, covariance_type=covariance_type, random_state=0)
    model.partial_fit(X[:60])  # fewer rows than features: shrinkage toward the diagonal
    assert model.warming_up_ and model.has_model_
    early = model.score_samples(X_test)
    assert early.mean() > true.mean() - 50  # a model, if a rough one (true mean ~ -62)
    assert early.min() > true.min() - 500
    for i in range(60, len(X), 500):
        model.partial_fit(X[i : i + 500])
    # With 6k rows the shrinkage has faded: the correlations are there, the fit is close.
    c = model.full_covariances_[int(np.argmax(model.weights_))]
    r = c / np.sqrt(np.outer(np.diag(c), np.diag(c)))
    assert np.median(r[~np.eye(d, dtype=bool)]) > 0.5
    assert model.score(X_test) > true.mean() - 1.5
