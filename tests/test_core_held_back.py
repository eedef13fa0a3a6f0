"""``n_held_back_``: rows offered for learning that the model itself did not learn.

With ``n_components="auto"`` the life cycle holds back poorly explained rows while a component
may be forming, so ``n_samples_seen_`` alone is less than the rows offered.  The counter makes
``n_samples_seen_ + n_held_back_ == rows offered`` an exact identity on every learning path,
which is what the service's delivery tests assert with the default ``"auto"``.
"""

from __future__ import annotations

import numpy as np
import pytest
from river import datasets

from streamgmm import OnlineGaussianMixture
from streamgmm.anomaly import AnomalyGate

A, B, C = np.array([0.0, 0.0]), np.array([6.0, 0.0]), np.array([0.0, 8.0])


def blobs(n, centers, seed):
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(centers), n)
    return np.asarray(centers)[which] + rng.normal(size=(n, 2))


def _stream():
    """Two clusters, then a third appears: the life cycle holds its first rows back."""
    return np.vstack([blobs(3000, [A, B], seed=1), blobs(3000, [A, B, C], seed=2)])


def _feed(model, X, path):
    if path == "partial_fit":
        for i in range(0, len(X), 100):
            model.partial_fit(X[i : i + 100])
    elif path == "learn_one":
        for x in X:
            model.learn_one(x)
    else:
        for i in range(0, len(X), 50):
            model.score_and_learn(X[i : i + 50])


@pytest.mark.parametrize("path", ["partial_fit", "learn_one", "score_and_learn"])
def test_learned_plus_held_back_is_every_row_offered(path):
    model = OnlineGaussianMixture(random_state=0, half_life=2000)
    X = _stream()
    _feed(model, X, path)
    assert model.n_components_ == 3  # the new cluster was born ...
    assert model.n_held_back_ > 10  # ... after its first rows were held back
    assert model.n_samples_seen_ + model.n_held_back_ == len(X)


def test_fixed_k_holds_back_only_what_cannot_be_learned():
    """An integer K has no life cycle: nothing is held back but a rare gross row."""
    model = OnlineGaussianMixture(2, random_state=0)
    X = blobs(2000, [A, B], seed=1)
    model.partial_fit(X)
    assert model.n_held_back_ == 0
    assert model.learn_one(np.array([1e12, 0.0])) is False  # rare and gross: not learned
    model.partial_fit(np.array([[1e12, 1.0], [0.5, 0.5]]))
    assert model.n_held_back_ == 2
    assert model.n_samples_seen_ + model.n_held_back_ == 2003


def test_rows_a_caller_keeps_out_are_not_counted():
    """threshold/select (an anomaly gate) keep rows out: they were never offered."""
    model = OnlineGaussianMixture(2, random_state=0)
    model.partial_fit(blobs(2000, [A, B], seed=1))
    X = blobs(200, [A, B], seed=2)
    r = model.score_and_learn(X, select=lambda ld: np.arange(ld.size) % 2 == 0)
    assert int(r.learned.sum()) == 100
    r = model.score_and_learn(X, threshold=-np.inf)  # every row beyond the threshold
    assert not r.learned.any()
    assert model.n_held_back_ == 0 and model.n_samples_seen_ == 2100


def test_real_data_through_a_gate_with_auto():
    """Real data (River's ImageSegments) through the service's gate step, gate off: every
    valid row is learned or held back, none lost to the accounting.  (scikit-learn's digits,
    used before, no longer holds rows back since the floors of discrete features last.)"""
    X = np.array([[x[k] for k in sorted(x)] for x, _ in datasets.ImageSegments()])
    model = OnlineGaussianMixture(covariance_type="diag", warm_up=200, random_state=0)
    gate = AnomalyGate(gating=False)
    for i in range(0, len(X), 100):
        gate.score_and_learn(model, X[i : i + 100])
    assert model.n_held_back_ > 0
    assert model.n_samples_seen_ + model.n_held_back_ == len(X)


def test_the_counter_is_in_the_state_and_old_states_load():
    model = OnlineGaussianMixture(random_state=0, half_life=2000)
    _feed(model, _stream(), "partial_fit")
    arrays, meta = model.get_state()
    assert meta["n_held_back"] == model.n_held_back_ > 0
    back = OnlineGaussianMixture.from_state(arrays, meta)
    assert back.n_held_back_ == model.n_held_back_
    X = blobs(500, [A, B, C], seed=5)
    back.partial_fit(X)
    model.partial_fit(X)
    assert back.n_held_back_ == model.n_held_back_
    old = {k: v for k, v in meta.items() if k != "n_held_back"}  # a state from before it
    assert OnlineGaussianMixture.from_state(arrays, old).n_held_back_ == 0
