"""Pickle-free state: exact round trips, and continuing after a restore equals never stopping."""

import numpy as np
import pytest

from streamgmm import OnlineGaussianMixture
from streamgmm.persistence import load_model, save_model


def _stream(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[-4.0, 0.0, 1.0], [4.0, 1.0, -1.0], [0.0, 5.0, 0.0]])
    return centers[rng.integers(3, size=n)] + rng.normal(size=(n, 3))


def _assert_same_predictions(a, b, X):
    np.testing.assert_array_equal(a.score_samples(X), b.score_samples(X))
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    np.testing.assert_array_equal(a.predict(X), b.predict(X))


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
@pytest.mark.parametrize("stop_at", [150, 1700])  # during warm-up, and online
def test_round_trip_and_continuation_are_exact(tmp_path, covariance_type, stop_at):
    X = _stream()
    params = dict(
        n_components=3, covariance_type=covariance_type, half_life=500, warm_up=400, random_state=3
    )
    uninterrupted = OnlineGaussianMixture(**params)
    interrupted = OnlineGaussianMixture(**params)
    for i in range(0, stop_at, 50):
        uninterrupted.partial_fit(X[i : i + 50])
        interrupted.partial_fit(X[i : i + 50])
    path = save_model(interrupted, tmp_path / "model.npz")
    restored = load_model(path)
    _assert_same_predictions(interrupted, restored, X[:200])
    assert restored.get_params() == interrupted.get_params()
    assert restored.n_samples_seen_ == stop_at
    for i in range(stop_at, len(X), 50):
        uninterrupted.partial_fit(X[i : i + 50])
        restored.partial_fit(X[i : i + 50])
    for x in X[:300]:  # and the per-sample path, through several exact refreshes
        uninterrupted.learn_one(x)
        restored.learn_one(x)
    _assert_same_predictions(uninterrupted, restored, X[:500])
    assert restored.n_samples_seen_ == uninterrupted.n_samples_seen_ == len(X) + 300


def test_state_file_cannot_hold_objects(tmp_path):
    model = OnlineGaussianMixture(2, random_state=0).fit(_stream(500))
    arrays, _ = model.get_state()
    assert all(a.dtype != object for a in arrays.values())
    # A file carrying a pickled object array is refused, not unpickled.
    evil = tmp_path / "evil.npz"
    np.savez(evil, __meta__=np.array("{}"), s0=np.array([object()], dtype=object))
    with pytest.raises(ValueError):
        load_model(evil)


def test_malformed_state_is_refused():
    model = OnlineGaussianMixture(2, random_state=0).fit(_stream(500))
    arrays, meta = model.get_state()
    bad = dict(arrays, means=arrays["means"][:, :2])
    with pytest.raises(ValueError, match="shape"):
        OnlineGaussianMixture.from_state(bad, meta)
    bad = dict(arrays, cov=np.full_like(arrays["cov"], np.nan))
    with pytest.raises(ValueError, match="non-finite"):
        OnlineGaussianMixture.from_state(bad, meta)
    with pytest.raises(ValueError, match="version"):
        OnlineGaussianMixture.from_state(arrays, dict(meta, version=99))


def test_fit_is_deterministic_given_random_state():
    X = _stream(2500)
    a = OnlineGaussianMixture(3, random_state=7).fit(X)
    b = OnlineGaussianMixture(3, random_state=7).fit(X)
    _assert_same_predictions(a, b, X[:100])


def test_sample_bic_aic():
    X = _stream(3000)
    model = OnlineGaussianMixture(3, random_state=0).fit(X)
    S, labels = model.sample(1000)
    assert S.shape == (1000, 3) and labels.shape == (1000,)
    assert np.bincount(labels, minlength=3).min() > 150
    one = OnlineGaussianMixture(1, random_state=0).fit(X)
    assert model.bic(X) < one.bic(X)
    assert model.aic(X) < one.aic(X)
