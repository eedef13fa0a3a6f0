"""Statistical targets of SPEC §5 that a test can check: parity, drift, batch-size invariance."""

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture

from streamgmm import OnlineGaussianMixture
from streamgmm.datasets import KnownMixture


def _online_pass(X, batch_size, **params):
    model = OnlineGaussianMixture(**params)
    if batch_size == 1:
        model.partial_fit(X[:1])
        for x in X[1:]:
            model.learn_one(x)
    else:
        for i in range(0, len(X), batch_size):
            model.partial_fit(X[i : i + batch_size])
    return model


@pytest.fixture(scope="module")
def stationary_k5_d10():
    true = KnownMixture.random(5, 10, seed=1)
    X, _ = true.sample(200_000, seed=2)
    X_test, _ = true.sample(20_000, seed=3)
    return true, X, X_test


@pytest.mark.slow
def test_stationary_parity_with_sklearn(stationary_k5_d10):
    _, X, X_test = stationary_k5_d10
    online = _online_pass(X, 1000, n_components=5, random_state=0)
    reference = GaussianMixture(5, n_init=3, random_state=0).fit(X)
    gap = reference.score(X_test) - online.score(X_test)
    assert gap <= 0.01, gap
    assert online.n_samples_seen_ == len(X)


@pytest.mark.slow
def test_batch_size_invariance(stationary_k5_d10):
    _, X, X_test = stationary_k5_d10
    X = X[:100_000]
    scores = {
        b: _online_pass(X, b, n_components=5, random_state=0).score(X_test)
        for b in (1, 10, 100, 1000)
    }
    spread = max(scores.values()) - min(scores.values())
    assert spread <= 1e-3, scores


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_drift_recovered_within_five_half_lives(covariance_type):
    half_life = 2000
    before = KnownMixture.random(3, 4, seed=5, diagonal=covariance_type == "diag")
    after = before.shifted(np.array([3.0, -3.0, 2.0, 0.0]))
    X_old, _ = before.sample(20_000, seed=6)
    X_new, _ = after.sample(5 * half_life, seed=7)
    X_test, _ = after.sample(10_000, seed=8)
    model = _online_pass(
        np.vstack([X_old, X_new]),
        100,
        n_components=3,
        covariance_type=covariance_type,
        half_life=half_life,
        random_state=0,
    )
    gap = after.log_density(X_test).mean() - model.score(X_test)
    assert gap <= 0.1, gap
    assert gap >= -0.01  # the true density is the best there is


def test_stationary_model_without_half_life_does_not_chase_noise():
    true = KnownMixture.random(2, 3, seed=11)
    X, _ = true.sample(30_000, seed=12)
    X_test, _ = true.sample(10_000, seed=13)
    model = _online_pass(X, 100, n_components=2, random_state=0)
    gap = true.log_density(X_test).mean() - model.score(X_test)
    assert gap <= 0.01, gap
