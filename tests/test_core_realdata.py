"""Statistics that must hold on real data (issue 8): rare-but-normal values, discrete and
near-constant features, reg_covar=0, order independence of fit, extreme but legal values."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

from streamgmm import OnlineGaussianMixture


def _with_binary(n, rate, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    X[:, 2] = (rng.random(n) < rate).astype(float)
    return X


@pytest.mark.parametrize("rate", [0.01, 0.015, 0.03])
def test_rare_binary_column_keeps_sklearn_likelihood(rate):
    X, X_test = _with_binary(1000, rate, 0), _with_binary(5000, rate, 1)
    ours = OnlineGaussianMixture(1, random_state=0).fit(X)
    reference = GaussianMixture(1, random_state=0).fit(X)
    assert ours.score(X_test) > reference.score(X_test) - 0.05
    np.testing.assert_allclose(ours.covariances_[0, 2, 2], X[:, 2].var(), rtol=1e-3)


def test_clean_data_variance_is_not_shrunk():
    X = np.random.default_rng(0).normal(size=(900, 3))
    model = OnlineGaussianMixture(1, random_state=0).fit(X)
    np.testing.assert_allclose(np.diag(model.covariances_[0]), X.var(axis=0), rtol=1e-3)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_discrete_column_in_a_few_rows_gets_a_floor(covariance_type):
    # Component 1 has only 8 rows, all with the same value of the integer feature: its
    # variance there must stay in that feature's own scale, not collapse to the regulariser.
    rng = np.random.default_rng(0)
    big = np.column_stack([rng.normal(0, 1, 600), rng.integers(0, 5, 600)])
    small = np.column_stack([rng.normal(30, 1, 8), np.full(8, 2.0)])
    X = np.vstack([big, small])
    model = OnlineGaussianMixture(2, covariance_type=covariance_type, random_state=0).fit(X)
    k = int(np.argmax(model.means_[:, 0]))
    var = model.covariances_[k, 1, 1] if covariance_type == "full" else model.covariances_[k, 1]
    assert var > 1e-3
    # A later row of that component with a neighbouring integer is unusual, not impossible.
    assert model.score_samples([[30.0, 3.0]])[0] > -60


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_reg_covar_zero_never_gives_nan_nor_stuck_model(covariance_type):
    X = np.repeat(np.random.default_rng(0).normal(size=(5, 2)), 20, axis=0)
    model = OnlineGaussianMixture(
        2, covariance_type=covariance_type, reg_covar=0.0, warm_up=50, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        model.partial_fit(X)
    assert not model.warming_up_
    assert model.n_samples_seen_ == len(X)
    assert np.isfinite(model.score_samples(X)).all()
    assert np.isfinite(model.covariances_).all()
    fitted = OnlineGaussianMixture(2, covariance_type=covariance_type, reg_covar=0.0).fit(X)
    assert np.isfinite(fitted.score_samples(X)).all()


def _grouped_clusters():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    X = np.vstack([rng.normal(c, 1.0, (2000, 2)) for c in centers])
    y = np.repeat(np.arange(3), 2000)
    test = np.vstack([rng.normal(c, 1.0, (1000, 2)) for c in centers])
    return X, y, test


def test_fit_does_not_depend_on_row_order():
    X, y, X_test = _grouped_clusters()
    order = np.random.default_rng(1).permutation(len(X))
    grouped = OnlineGaussianMixture(3, random_state=0).fit(X)
    shuffled = OnlineGaussianMixture(3, random_state=0).fit(X[order])
    reference = GaussianMixture(3, n_init=3, random_state=0).fit(X)
    assert abs(grouped.score(X_test) - shuffled.score(X_test)) < 0.01
    assert grouped.score(X_test) > reference.score(X_test) - 0.01
    assert adjusted_rand_score(y, grouped.predict(X)) > 0.7
