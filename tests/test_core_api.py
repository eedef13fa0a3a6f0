"""The public one-row API (learn_one, score_one, predict_proba_one, sample, has_model_,
full_covariances_) that the River estimators, the anomaly gate and the service call."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from streamgmm import NotFittedError, OnlineGaussianMixture


def _state_equal(a, b):
    arrays_a, meta_a = a.get_state()
    arrays_b, meta_b = b.get_state()
    assert meta_a == meta_b
    for name in arrays_a:
        np.testing.assert_array_equal(arrays_a[name], arrays_b[name], err_msg=name)


def _fitted(covariance_type="full", seed=0):
    X = np.random.default_rng(seed).normal(size=(400, 3))
    return OnlineGaussianMixture(
        2, covariance_type=covariance_type, warm_up=100, random_state=0
    ).partial_fit(X)


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_one_row_methods_agree_with_the_batch_methods(covariance_type):
    model = _fitted(covariance_type)
    X = np.random.default_rng(1).normal(size=(20, 3))
    assert [model.score_one(x) for x in X] == pytest.approx(model.score_samples(X), rel=1e-10)
    proba = np.array([model.predict_proba_one(x) for x in X])
    np.testing.assert_allclose(proba, model.predict_proba(X), rtol=1e-9, atol=1e-12)
    assert model.has_model_
    full = model.full_covariances_
    assert full.shape == (2, 3, 3)
    density = sum(
        w * multivariate_normal(mean, cov).pdf(X)
        for w, mean, cov in zip(model.weights_, model.means_, full, strict=True)
    )
    np.testing.assert_allclose(np.log(density), model.score_samples(X), rtol=1e-9)


def test_learn_one_accepts_lists_and_learns_like_partial_fit():
    a, b = _fitted(), _fitted()
    rows = np.random.default_rng(2).normal(size=(10, 3))
    for x in rows:
        assert a.learn_one(x.tolist()) is True
        b.partial_fit(x[None, :])
    _state_equal(a, b)


@pytest.mark.parametrize(
    "bad", [[np.nan, 0.0, 0.0], [np.inf, 0.0, 0.0], [1e200, 0.0, 0.0], [0.0, 0.0], [[0.0] * 3]]
)
def test_bad_rows_raise_and_leave_the_state_untouched(bad):
    model, reference = _fitted(), _fitted()
    for method in (model.learn_one, model.score_one, model.predict_proba_one):
        with pytest.raises(ValueError):
            method(bad)
    _state_equal(model, reference)


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([0.0, np.nan, 0.0], "NaN or infinity"),
        ([np.inf, 0.0, 0.0], "NaN or infinity"),
        ([0.0, 0.0, -np.inf], "NaN or infinity"),
        ([1e200, 0.0, 0.0], "beyond"),
        ([0.0, 0.0, -2e150], "beyond"),
    ],
)
def test_bad_float64_rows_on_the_fast_path_raise_and_leave_the_state_untouched(
    covariance_type, bad, message
):
    # A C-contiguous float64 row of the right length skips the Python-level checks: the
    # compiled kernel refuses its values, and the full checks then explain why.
    model, reference = _fitted(covariance_type), _fitted(covariance_type)
    row = np.array(bad)
    for method in (model.learn_one, model.score_one, model.predict_proba_one):
        with pytest.raises(ValueError, match=message):
            method(row)
    _state_equal(model, reference)


def test_fast_and_full_paths_agree():
    model = _fitted()
    rows = np.random.default_rng(2).normal(size=(6, 6))
    for wide in rows:
        strided = wide[::2]  # not contiguous: the full path
        plain = np.ascontiguousarray(strided)
        assert model.score_one(strided) == model.score_one(plain)
        np.testing.assert_array_equal(
            model.predict_proba_one(strided), model.predict_proba_one(plain)
        )
        assert model.score_one(list(plain)) == model.score_one(plain)


def test_row_with_zero_density_is_not_learned():
    X = 1e-5 * np.random.default_rng(0).normal(size=(400, 3))
    model, reference = (
        OnlineGaussianMixture(2, warm_up=100, random_state=0).partial_fit(X) for _ in range(2)
    )
    far = np.full(3, 1e150)  # its squared distance overflows: density exactly zero
    assert model.score_one(far) == -np.inf
    assert model.learn_one(far) is False
    # The parameters are untouched (a count of rare gross rows in the metadata moves).
    for name, value in reference.get_state()[0].items():
        np.testing.assert_array_equal(model.get_state()[0][name], value, err_msg=name)
    assert model.n_samples_seen_ == reference.n_samples_seen_
    np.testing.assert_allclose(model.predict_proba_one(far), [0.5, 0.5])


def test_partial_rows_use_the_marginal_and_learn_by_conditional_expectation():
    model = _fitted()
    x = np.array([0.3, np.nan, -0.2])
    observed = np.array([True, False, True])
    # The marginal over coordinates 0 and 2 of the full model, computed by hand.
    log_terms = []
    for k in range(2):
        cov = model.full_covariances_[k][np.ix_([0, 2], [0, 2])]
        diff = x[[0, 2]] - model.means_[k, [0, 2]]
        q = diff @ np.linalg.solve(cov, diff)
        log_terms.append(
            np.log(model.weights_[k])
            - 0.5 * (2 * np.log(2 * np.pi) + np.linalg.slogdet(cov)[1] + q)
        )
    assert model.score_one(x, observed) == pytest.approx(np.logaddexp(*log_terms), rel=1e-10)
    assert model.predict_proba_one(x, observed).sum() == pytest.approx(1.0)
    seen = model.n_samples_seen_
    assert model.learn_one(x, observed) is True
    assert model.n_samples_seen_ == seen + 1
    assert np.isfinite(model.full_covariances_).all()


def test_partial_row_during_warm_up_is_not_learned():
    model = OnlineGaussianMixture(2, random_state=0)
    model.learn_one(np.zeros(3))
    assert model.learn_one(np.array([1.0, np.nan, 0.0]), np.array([True, False, True])) is False
    assert model.n_samples_seen_ == 1


def test_before_any_model():
    model = OnlineGaussianMixture(2, random_state=0)
    assert not model.has_model_
    with pytest.raises(NotFittedError):
        model.score_one(np.zeros(3))
    with pytest.raises(NotFittedError):
        model.full_covariances_  # noqa: B018
    assert model.learn_one(np.zeros(3)) is True  # buffered for the warm-up
    assert model.n_features_in_ == 3


def test_sample_with_its_own_random_state():
    model = _fitted()
    a, la = model.sample(50, random_state=np.random.default_rng(3))
    b, lb = model.sample(50, random_state=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    c, _ = model.sample(50, random_state=4)
    assert c.shape == (50, 3)
    with pytest.raises(ValueError):
        model.sample(0)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_auto_chooses_the_number_of_components_by_bic(covariance_type):
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    X = np.vstack([rng.normal(c, 1.0, (400, 2)) for c in centers])[rng.permutation(1200)]
    model = OnlineGaussianMixture("auto", covariance_type=covariance_type, random_state=0)
    for i in range(0, len(X), 100):
        model.partial_fit(X[i : i + 100])
    assert model.n_components_ == 3
    assert model.means_.shape == (3, 2)
    assert model.predict_proba(X[:5]).shape == (5, 3)
    restored = OnlineGaussianMixture.from_state(*model.get_state())
    np.testing.assert_array_equal(restored.score_samples(X), model.score_samples(X))
    assert OnlineGaussianMixture("auto", random_state=0).fit(X).n_components_ == 3


def test_learn_expected_one_is_the_complete_update_when_nothing_is_missing():
    # With nothing missing (x_hat = x for every component, no extra covariance) the public
    # missing-data M-step is the ordinary online update of one row.
    a, b = _fitted(seed=1), _fitted(seed=1)
    x = np.array([0.4, -1.0, 0.2])
    resp = a.predict_proba_one(x)
    a.learn_one(x)
    b.learn_expected_one(np.tile(x, (2, 1)), np.zeros((2, 3, 3)), resp)
    assert b.n_samples_seen_ == a.n_samples_seen_
    np.testing.assert_allclose(b.means_, a.means_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b.full_covariances_, a.full_covariances_, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize(
    ("x_hat", "extra", "resp", "message"),
    [
        (np.zeros((2, 2)), np.zeros((2, 3, 3)), [0.5, 0.5], "x_hat must have shape"),
        (np.zeros((2, 3)), np.zeros((2, 3)), [0.5, 0.5], "extra_cov must have shape"),
        (np.full((2, 3), np.nan), np.zeros((2, 3, 3)), [0.5, 0.5], "NaN or infinity"),
        (np.zeros((2, 3)), np.zeros((2, 3, 3)), [0.7, 0.7], "sum to 1"),
        (np.zeros((2, 3)), np.zeros((2, 3, 3)), [1.5, -0.5], "non-negative"),
    ],
)
def test_learn_expected_one_refuses_malformed_statistics(x_hat, extra, resp, message):
    model = _fitted()
    before = model.get_state()
    with pytest.raises(ValueError, match=message):
        model.learn_expected_one(x_hat, extra, resp)
    after = model.get_state()
    assert before[1] == after[1]
    for name in before[0]:
        np.testing.assert_array_equal(before[0][name], after[0][name])


def test_learn_expected_one_needs_a_model_past_the_warm_up():
    model = OnlineGaussianMixture(2, random_state=0)
    with pytest.raises(NotFittedError):
        model.learn_expected_one(np.zeros((2, 3)), np.zeros((2, 3, 3)), [0.5, 0.5])
    model.partial_fit(np.random.default_rng(0).normal(size=(10, 3)))  # provisional model
    with pytest.raises(NotFittedError, match="warm-up"):
        model.learn_expected_one(np.zeros((2, 3)), np.zeros((2, 3, 3)), [0.5, 0.5])
