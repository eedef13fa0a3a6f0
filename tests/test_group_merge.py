"""The group merge rule (streamgmm.group): increments D = L - aR folded as S' = a_S S + cD.

Algebra on random statistics (hypothesis), then the property that matters: three learners that
each see a third of River's Bananas and exchange increments agree with each other and with one
learner that saw everything.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import datasets

from streamgmm import OnlineGaussianMixture
from streamgmm.group import Increment, MixtureStatistics, fold, increment, log_decay

TYPES = ["full", "diag", "spherical", "tied"]


def _close(a: MixtureStatistics, b: MixtureStatistics, rtol=1e-9, atol=1e-9):
    for name in ("s0", "s1", "s2"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=rtol, atol=atol)


def _sample_stats(rng, center, ct, n):
    """Per-row statistics s(x) of ``n`` random rows about ``center``: (s0, s1, s2) each."""
    k, d = center.shape
    out = []
    for _ in range(n):
        x = rng.normal(size=d) * 3
        r = rng.dirichlet(np.ones(k))
        out.append(
            MixtureStatistics.from_moments(
                r, np.tile(x, (k, 1)), np.zeros_like(MixtureStatistics.random(rng, k, d, ct).s2)
                if ct != "tied" else np.zeros((d, d)), ct, center,
            )
        )  # fmt: skip
    return out


def _learn(stats, rows, rhos):
    """The linear SA-EM recursion S <- (1 - rho) S + rho s(x)."""
    for s, rho in zip(rows, rhos, strict=True):
        stats = stats.scaled(1 - rho).plus(s.scaled(rho))
    return stats


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    ct=st.sampled_from(TYPES),
    k=st.integers(1, 4),
    d=st.integers(1, 4),
    decay=st.floats(0.0, 0.999),
)
def test_fold_with_the_same_decay_restores_the_local_statistics(seed, ct, k, d, decay):
    rng = np.random.default_rng(seed)
    base = MixtureStatistics.random(rng, k, d, ct)
    local = base.scaled(decay).plus(
        MixtureStatistics.random(rng, k, d, ct, center=base.center).scaled(1 - decay)
    )
    inc = increment(local, base, decay, 7)
    _close(fold(base, inc, decay), local)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), ct=st.sampled_from(TYPES), rho=st.floats(0.001, 0.3))
def test_constant_step_fold_is_one_learner_learning_both_blocks(seed, ct, rho):
    """With a constant step, i folding j's increment is exactly i's rows then j's from the
    base; j folding i's is j's then i's (they differ by second-order terms only)."""
    rng = np.random.default_rng(seed)
    k, d = 3, 2
    base = MixtureStatistics.random(rng, k, d, ct)
    rows_i = _sample_stats(rng, base.center, ct, 5)
    rows_j = _sample_stats(rng, base.center, ct, 8)
    li = _learn(base, rows_i, [rho] * 5)
    lj = _learn(base, rows_j, [rho] * 8)
    inc_i = increment(li, base, (1 - rho) ** 5, 5)
    inc_j = increment(lj, base, (1 - rho) ** 8, 8)
    at_i = fold(li, inc_j, (1 - rho) ** 8)
    _close(at_i, _learn(base, rows_i + rows_j, [rho] * 13))
    at_j = fold(lj, inc_i, (1 - rho) ** 5)
    _close(at_j, _learn(base, rows_j + rows_i, [rho] * 13))
    # Mass is preserved (weights sum to 1 before and after).
    assert at_i.s0.sum() == pytest.approx(1.0) and at_j.s0.sum() == pytest.approx(1.0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), ct=st.sampled_from(TYPES), n=st.integers(1, 200))
def test_fold_with_a_decaying_step_keeps_the_mass(seed, ct, n):
    """Robbins-Monro steps: the receiver's own decay over the sender's rows, c = (1-a_S)/(1-a),
    gives the sender's rows exactly the mass the receiver's own steps would have."""
    rng = np.random.default_rng(seed)
    base = MixtureStatistics.random(rng, 2, 3, ct)
    floors = [(0, 0.0)]
    t_sender, t_recv = 100, 400
    a = np.exp(log_decay(t_sender, t_sender + n, 2.0, 0.8, floors))
    rows = _sample_stats(rng, base.center, ct, n)
    rhos = [(t + 1 + 2.0) ** -0.8 for t in range(t_sender, t_sender + n)]
    local = _learn(base, rows, rhos)
    assert local.s0.sum() == pytest.approx(1.0)
    a_s = np.exp(log_decay(t_recv, t_recv + n, 2.0, 0.8, floors))
    out = fold(base, increment(local, base, a, n), a_s)
    assert out.s0.sum() == pytest.approx(1.0)
    assert out.n_samples == n


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), ct=st.sampled_from(TYPES), offset=st.sampled_from([0, 1e6]))
def test_statistics_about_a_center_round_trip(seed, ct, offset):
    """Moments -> statistics about another (nearby) center -> moments: exact, far from 0."""
    rng = np.random.default_rng(seed)
    s = MixtureStatistics.random(rng, 3, 3, ct)
    w, means, cov = s.moments()
    means = means + offset
    stats = MixtureStatistics.from_moments(w, means, cov, ct, center=means + rng.normal(size=3))
    _, m2, c2 = stats.moments()
    np.testing.assert_allclose(m2, means, rtol=1e-12)
    np.testing.assert_allclose(c2, cov, rtol=1e-6, atol=1e-9)


def test_log_decay_follows_the_floor_history():
    floors = [(0, 0.0), (50, 0.1), (60, 0.0)]
    t = np.arange(40, 70, dtype=float)
    rho = (t + 3.0) ** -0.8
    rho[(t >= 50) & (t < 60)] = np.maximum(rho[(t >= 50) & (t < 60)], 0.1)
    assert log_decay(40, 70, 2.0, 0.8, floors) == pytest.approx(np.log1p(-rho).sum())


def _bananas():
    X = np.array([list(x.values()) for x, _ in datasets.Bananas()], dtype=float)
    return X[np.random.default_rng(0).permutation(len(X))]


def _group_run(X, n_learners, chunk, half_life, batch=25, warm_up=300):
    """``n_learners`` learners from one base, each learning its own chunks and exchanging
    increments after every round; one learner learning every chunk in the same order."""
    base = OnlineGaussianMixture(
        n_components=5, warm_up=warm_up, random_state=0, half_life=half_life
    )
    base.partial_fit(X[:warm_up])
    base.freeze_components()
    single = copy.deepcopy(base)
    learners = [copy.deepcopy(base) for _ in range(n_learners)]
    refs = [m.group_statistics() for m in learners]
    rest, pos = X[warm_up:], 0
    while pos < len(rest):
        for m in learners:
            part, pos = rest[pos : pos + chunk], pos + chunk
            for b in range(0, len(part), batch):
                m.partial_fit(part[b : b + batch])
                single.partial_fit(part[b : b + batch])
        incs = [m.increment_since(r) for m, r in zip(learners, refs, strict=True)]
        for i, m in enumerate(learners):
            for j, inc in enumerate(incs):
                if j != i:
                    m.fold_increment(inc)
        refs = [m.group_statistics() for m in learners]
    return learners, single


@pytest.mark.parametrize("half_life", [None, 500])
def test_three_learners_agree_and_match_one_learning_everything(half_life):
    X = _bananas()
    test, X = X[:1000], X[1000:]
    learners, single = _group_run(X, 3, chunk=50, half_life=half_life)
    assert [m.n_samples_seen_ for m in learners] == [len(X)] * 3 == [single.n_samples_seen_] * 3
    ll = np.array([m.score(test) for m in learners])
    ll_single = single.score(test)
    print(f"held-out ll {ll} vs one learner {ll_single:.4f}")
    assert np.ptp(ll) < 0.005
    assert np.abs(ll - ll_single).max() < 0.02
    spread = X.std(axis=0)
    worst = max(np.abs((a.means_ - b.means_) / spread).max() for a in learners for b in learners)
    assert worst < 0.02, worst
    for m in learners:
        np.testing.assert_allclose(m.weights_, learners[0].weights_, atol=0.01)


def test_fold_refuses_other_components():
    X = _bananas()[:400]
    a = OnlineGaussianMixture(n_components=3, warm_up=200, random_state=0).partial_fit(X)
    b = OnlineGaussianMixture(n_components=2, warm_up=200, random_state=0).partial_fit(X)
    ref = b.group_statistics()
    b.partial_fit(X[:50])
    with pytest.raises(ValueError, match="does not fit"):
        a.fold_increment(b.increment_since(ref))
    bad = Increment(ref.scaled(-50.0), 0.5, 10)  # leaves negative weights
    before = b.means_.copy()
    with pytest.raises(ValueError):
        b.fold_increment(bad)
    np.testing.assert_array_equal(b.means_, before)


def test_frozen_auto_model_keeps_its_components_and_the_flag_survives_state():
    rng = np.random.default_rng(1)
    X = rng.normal(0, 1, (600, 2))
    m = OnlineGaussianMixture(warm_up=300, random_state=0).partial_fit(X)
    k = m.n_components_
    m.freeze_components()
    assert m.components_frozen_
    # A new, persistent regime far away: "auto" would give birth to a component; frozen it
    # is learned by the existing ones.
    m.partial_fit(rng.normal(12, 0.5, (1500, 2)))
    assert m.n_components_ == k and m.lifecycle_counts_["births"] == 0
    assert m.n_samples_seen_ == 2100
    arrays, meta = m.get_state()
    assert OnlineGaussianMixture.from_state(arrays, meta).components_frozen_
