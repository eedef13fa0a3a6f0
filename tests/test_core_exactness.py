"""The online updates are exact where closed forms exist."""

import numpy as np
import pytest

from streamgmm import OnlineGaussianMixture, _kernels
from streamgmm import _covariance as cov_ops


def _stream(n=3000, d=3, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    return rng.normal(size=(n, d)) @ a + rng.normal(0, 5, d)


def _running_average_model(warm_up):
    # step_exponent=1, step_offset=0: rho_t = 1 / (t + 1), the running average.
    return OnlineGaussianMixture(
        1, step_exponent=1.0, step_offset=0.0, warm_up=warm_up, reg_covar=0.0, random_state=0
    )


@pytest.mark.parametrize("path", ["per_sample", "batches"])
def test_k1_running_average_equals_mean_and_biased_cov(path):
    X = _stream()
    m = _running_average_model(warm_up=10).partial_fit(X[:10])
    if path == "per_sample":
        for x in X[10:]:
            m.learn_one(x)
    else:
        for i in range(10, len(X), 37):
            m.partial_fit(X[i : i + 37])
    assert m.n_samples_seen_ == len(X)
    np.testing.assert_allclose(m.means_[0], X.mean(axis=0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(m.covariances_[0], np.cov(X.T, bias=True), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_k1_running_average_all_covariance_types(covariance_type):
    X = _stream(n=500)
    m = OnlineGaussianMixture(
        1,
        covariance_type=covariance_type,
        step_exponent=1.0,
        step_offset=0.0,
        warm_up=10,
        reg_covar=0.0,
        random_state=0,
    ).partial_fit(X[:10])
    for x in X[10:]:
        m.learn_one(x)
    cov = np.cov(X.T, bias=True)
    expected = {
        "full": cov[None],
        "tied": cov,
        "diag": np.diag(cov)[None],
        "spherical": np.array([np.trace(cov) / 3]),
    }[covariance_type]
    np.testing.assert_allclose(m.covariances_, expected, rtol=1e-10, atol=1e-10)


def test_constant_step_equals_exponentially_weighted_moments():
    X = _stream(n=2000)
    half_life, w = 100.0, 20
    # A huge offset makes the decaying part negligible: rho is the half-life floor throughout.
    m = OnlineGaussianMixture(
        1, half_life=half_life, step_offset=1e15, warm_up=w, reg_covar=0.0, random_state=0
    ).partial_fit(X[:w])
    for x in X[w:]:
        m.learn_one(x)
    rho = 1 - 2 ** (-1 / half_life)
    n = len(X) - w
    weights = np.concatenate(
        [np.full(w, (1 - rho) ** n / w), rho * (1 - rho) ** np.arange(n - 1, -1, -1)]
    )
    mean = weights @ X
    cov = (weights[:, None] * (X - mean)).T @ (X - mean)
    np.testing.assert_allclose(weights.sum(), 1.0, atol=1e-12)
    np.testing.assert_allclose(m.means_[0], mean, atol=1e-9)
    np.testing.assert_allclose(m.covariances_[0], cov, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_rank_one_path_matches_fresh_factorisation_after_1e5_updates(covariance_type):
    rng = np.random.default_rng(4)
    k, d = 3, 6
    centers = rng.normal(0, 4, (k, d))
    X = centers[rng.integers(k, size=100_000)] + rng.normal(size=(100_000, d))
    m = OnlineGaussianMixture(
        k, covariance_type=covariance_type, half_life=500, warm_up=500, random_state=0
    )
    m.partial_fit(X[:500])
    # Without a regulariser the carried precision is exactly the inverse of the statistic, so
    # any difference is accumulated rounding of the Sherman–Morrison path.
    m._reg = np.zeros(d)
    m._refresh()
    kernel = _kernels.learn_full if covariance_type == "full" else _kernels.learn_tied
    for i, x in enumerate(X):
        kernel(x, m._s0, m._means, m._cov, m._prec, m._logdet, 500.0 + i, 2.0, 0.8,
               m._rho_floor, 0.5, m._q_max)  # fmt: skip
    prec, logdet = cov_ops.exact_precision(m._cov, m._reg, covariance_type, k)
    rel = np.linalg.norm(m._prec - prec) / np.linalg.norm(prec)
    assert rel <= 1e-6, rel
    np.testing.assert_allclose(m._logdet, logdet, rtol=1e-6)


def test_large_offset_small_spread_is_estimated_correctly():
    rng = np.random.default_rng(0)
    offset, spread = 1e8, 1e-2
    X = offset + spread * rng.normal(size=(20_000, 2))
    m = OnlineGaussianMixture(1, warm_up=200, random_state=0)
    m.partial_fit(X[:200])
    for x in X[200:5000]:
        m.learn_one(x)
    for i in range(5000, len(X), 500):
        m.partial_fit(X[i : i + 500])
    var = m.covariances_[0].diagonal()
    np.testing.assert_allclose(var, spread**2, rtol=0.1)
    np.testing.assert_allclose(m.means_[0], offset, rtol=0, atol=5 * spread)
    assert np.isfinite(m.score_samples(X[:100])).all()


@pytest.mark.parametrize("gap", [-80.0, -720.0])  # tiny, and subnormal once exponentiated
def test_tiny_responsibilities_are_flushed_to_zero(gap):
    resp = np.empty(3)
    lse = _kernels._normalise(np.array([0.0, gap, -1.0]), resp)
    assert resp[1] == 0.0
    assert resp.sum() == pytest.approx(1.0)
    assert np.isfinite(lse)
    assert not np.any((resp > 0) & (resp < 1e-30))
