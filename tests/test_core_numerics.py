"""Numerics that must hold (SPEC §2): bad rows, degenerate data, forgetting, starvation."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamgmm import NotFittedError, OnlineGaussianMixture


def _state_equal(a, b):
    arrays_a, meta_a = a.get_state()
    arrays_b, meta_b = b.get_state()
    assert meta_a == meta_b
    assert arrays_a.keys() == arrays_b.keys()
    for name in arrays_a:
        np.testing.assert_array_equal(arrays_a[name], arrays_b[name], err_msg=name)


def _fitted(covariance_type="full", n=600, seed=0):
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.normal(-3, 1, (n // 2, 3)), rng.normal(3, 1, (n // 2, 3))])
    return OnlineGaussianMixture(
        2, covariance_type=covariance_type, warm_up=200, random_state=0
    ).partial_fit(X), X


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e200])
@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_bad_row_raises_and_leaves_model_bit_identical(bad, covariance_type):
    model, X = _fitted(covariance_type)
    reference, _ = _fitted(covariance_type)
    batch = X[:10].copy()
    batch[4, 1] = bad
    with pytest.raises(ValueError):
        model.partial_fit(batch)
    with pytest.raises(ValueError):
        model.score_and_learn(batch)
    _state_equal(model, reference)


def test_bad_row_during_warm_up_leaves_model_untouched():
    model = OnlineGaussianMixture(2, random_state=0).partial_fit(np.ones((5, 2)))
    with pytest.raises(ValueError, match="NaN"):
        model.partial_fit([[np.nan, 1.0]])
    assert model.n_samples_seen_ == 5


def test_first_call_with_bad_row_leaves_a_fresh_estimator():
    model = OnlineGaussianMixture(2)
    with pytest.raises(ValueError):
        model.partial_fit([[1e300, 1.0]])
    assert not hasattr(model, "n_features_in_")


def test_wrong_dimension_is_a_clear_error():
    model, _ = _fitted()
    with pytest.raises(ValueError, match="features"):
        model.partial_fit(np.ones((2, 4)))
    with pytest.raises(ValueError, match="features"):
        model.score_samples(np.ones((2, 2)))


def test_unfitted_model_raises_not_fitted():
    with pytest.raises(NotFittedError):
        OnlineGaussianMixture(2).score_samples([[0.0, 1.0]])


def test_predictions_during_warm_up_come_from_a_provisional_fit():
    rng = np.random.default_rng(0)
    model = OnlineGaussianMixture(2, random_state=0)
    model.partial_fit(rng.normal(size=(50, 2)))
    assert model.warming_up_
    assert np.isfinite(model.score_samples(rng.normal(size=(5, 2)))).all()
    state_before = model.get_state()
    model.predict_proba(rng.normal(size=(5, 2)))
    assert model.get_state()[1] == state_before[1]  # scoring never refits


def test_auto_provisional_fit_of_a_few_rows_does_not_overfit_k():
    # 8 rows of one 2-D Gaussian: BIC over K=1..4 chose 4 tight components and scored the
    # next rows up to -log p = 56 (the service flagged a third of a clean stream's first 60).
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 2)) * [1.0, 2.0] + [0.0, 5.0]
    for n in (8, 16):
        model = OnlineGaussianMixture(random_state=0).partial_fit(X[:n])
        assert model.warming_up_
        assert model.weights_.shape[0] <= max(1, n // 6)
        single = OnlineGaussianMixture(1, random_state=0).partial_fit(X[:n])
        assert np.max(-model.score_samples(X[n:])) <= np.max(-single.score_samples(X[n:])) + 3


def test_score_and_learn_before_any_model():
    model = OnlineGaussianMixture(3, random_state=0)
    result = model.score_and_learn(np.ones((2, 2)))
    assert np.isnan(result.log_density).all()
    np.testing.assert_allclose(result.proba, 1 / 3)
    assert result.learned.all()
    assert model.n_samples_seen_ == 2


def test_score_and_learn_gates_rows_above_threshold():
    model, X = _fitted()
    far = np.array([[50.0, 50.0, 50.0]])
    batch = np.vstack([X[:5], far])
    before = model.n_samples_seen_
    result = model.score_and_learn(batch, threshold=20.0)
    assert result.learned.tolist() == [True] * 5 + [False]
    assert model.n_samples_seen_ == before + 5
    assert -result.log_density[-1] > 20.0


def test_weights_do_not_underflow_and_starving_component_is_reseeded():
    rng = np.random.default_rng(0)
    a = rng.normal(-5, 1, (2000, 2))
    b = rng.normal(5, 1, (2000, 2))
    model = OnlineGaussianMixture(2, half_life=100, warm_up=2000, random_state=0)
    model.partial_fit(np.vstack([a[:1000], b[:1000]])[rng.permutation(2000)])
    # Cluster "a" vanishes: its component starves under forgetting and must be re-seeded
    # into the data (a split of the heaviest), not left to underflow.
    later = rng.normal(5, 1, (20_000, 2))
    for x in later:
        model.learn_one(x)
    assert np.isfinite(np.log(model.weights_)).all()
    assert (model.weights_ > 1e-3).all()
    assert (np.abs(model.means_[:, 0] - 5) < 3).all()
    assert np.isfinite(model.score_samples(later[:100])).all()


@st.composite
def _streams(draw):
    d = draw(st.integers(1, 20))
    k = draw(st.integers(1, 8))
    covariance_type = draw(st.sampled_from(["full", "diag", "spherical", "tied"]))
    n = draw(st.integers(max(k, 2), 120))
    scale = draw(st.sampled_from([1e-6, 1e-2, 1.0, 1e4, 1e8]))
    offset = draw(st.sampled_from([0.0, 1.0, -1e6, 1e8]))
    kind = draw(st.sampled_from(["normal", "constant_columns", "repeated_points", "integers"]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    X = offset + scale * rng.normal(size=(n, d))
    if kind == "constant_columns":
        X[:, : max(1, d // 2)] = offset
    elif kind == "repeated_points":
        X = np.repeat(X[:3], n // 3 + 1, axis=0)[:n]
    elif kind == "integers":
        X = np.round(X / max(scale, 1.0)).clip(-3, 3) + offset
    batch = draw(st.sampled_from([1, 7, 50]))
    return X, k, covariance_type, batch


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_streams())
def test_any_shape_scale_or_degenerate_stream_stays_finite(case):
    X, k, covariance_type, batch = case
    model = OnlineGaussianMixture(
        k, covariance_type=covariance_type, warm_up=max(k, 2, len(X) // 3), random_state=0
    )
    for i in range(0, len(X), batch):
        model.partial_fit(X[i : i + batch])
    for x in X[: min(len(X), 20)]:
        model.learn_one(np.ascontiguousarray(x))
    assert model.n_samples_seen_ == len(X) + min(len(X), 20)
    for value in (model.weights_, model.means_, model.covariances_, model.precisions_cholesky_):
        assert np.isfinite(value).all()
    scores = model.score_samples(X)
    assert np.isfinite(scores).all()
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-9)


def _shrink_by_likelihood_reference(cov, diff, resp, nk, reg):
    """The per-component numpy loop the compiled leave-one-out pass replaced (full covariances)."""
    from streamgmm._covariance import SHRINK_GRID, diagonal_shrinkage_intensity, shrunk

    d = cov.shape[-1]
    lam_ss = diagonal_shrinkage_intensity(cov, nk)
    lams = np.minimum(np.outer(lam_ss, SHRINK_GRID), 1.0)
    idx = np.arange(d)
    w = cov[:, idx, idx] + reg
    inv_sqrt_w = 1.0 / np.sqrt(w)
    a_mat = cov * inv_sqrt_w[:, :, None] * inv_sqrt_w[:, None, :]
    a_mat[:, idx, idx] = 1.0
    evals, evecs = np.linalg.eigh(a_mat)
    spectra = (1.0 - lams)[:, :, None] * evals[:, None, :] + lams[:, :, None]
    valid = (spectra > 0).all(axis=2)
    spectra = np.where(spectra > 0, spectra, 1.0)
    logdets = np.log(w).sum(axis=1)[:, None] + np.log(spectra).sum(axis=2)
    q = np.einsum("knd,kgd->kng", (diff * inv_sqrt_w[:, None, :] @ evecs) ** 2, 1.0 / spectra)
    r = resp.T
    scores = np.full(lams.shape, -np.inf)
    for k in np.flatnonzero(nk - r.max(axis=1) > 1.0):
        a = (nk[k] / (nk[k] - r[k]))[:, None]
        left = 1.0 - (1.0 - lams[k])[None, :] * (r[k, :, None] * a / nk[k]) * q[k]
        valid[k] &= (left > 0).all(axis=0)
        loo = d * np.log(a) + logdets[k] + np.log(left) + a * a * q[k] / (a * left)
        scores[k] = np.where(valid[k], -0.5 * (r[k] @ loo), -np.inf)
    chosen = lam_ss.copy()
    pick = np.isfinite(scores).any(axis=1)
    chosen[pick] = lams[pick, np.argmax(scores[pick], axis=1)]
    return shrunk(cov, chosen), scores


@pytest.mark.parametrize("n_components", [1, 3, 6])
def test_compiled_shrinkage_scores_pick_what_the_numpy_loop_picks(n_components):
    """The warm-up's shrinkage (one compiled pass) chooses as the plain per-component loop."""
    from sklearn.datasets import load_diabetes

    from streamgmm import _kernels
    from streamgmm._covariance import centered_rows, shrink_by_likelihood

    X = load_diabetes().data * 20.0
    rng = np.random.default_rng(n_components)
    resp = rng.dirichlet(np.full(n_components, 0.3), size=X.shape[0])
    nk = resp.sum(axis=0)
    means = resp.T @ X / nk[:, None]
    diff = centered_rows(X, means)
    cov = np.swapaxes(resp.T[:, :, None] * diff, 1, 2) @ diff / nk[:, None, None]
    reg = np.full(X.shape[1], 1e-6)
    expected, _ = _shrink_by_likelihood_reference(cov, diff, resp, nk, reg)
    np.testing.assert_array_equal(shrink_by_likelihood(cov, diff, resp, nk, reg), expected)
    # Not the unshrunk matrices: the choice is a real one.
    assert not np.allclose(expected, cov)
    # The compiled sums themselves agree with numpy's to rounding.
    use = np.arange(n_components)
    lams = np.full((n_components, 2), 0.1)
    q = rng.random((n_components, X.shape[0], 2))
    logdets = rng.normal(size=(n_components, 2))
    sums, ok = _kernels.shrink_scores(q, np.ascontiguousarray(resp.T), nk, nk, 1.0 - lams,
                                      logdets, float(X.shape[1]), use)  # fmt: skip
    a = (nk[:, None] / (nk[:, None] - resp.T))[:, :, None]
    left = 1.0 - 0.9 * (resp.T[:, :, None] * a[:, :, :1] / nk[:, None, None]) * q
    loo = X.shape[1] * np.log(a) + logdets[:, None, :] + np.log(left) + a * q / left
    np.testing.assert_allclose(sums, np.einsum("kn,kng->kg", resp.T, loo), rtol=1e-10)
    np.testing.assert_array_equal(ok, (left > 0).all(axis=1))
