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
        self.weights_, self.means_, self.full_covariances_ = weights, means, covs


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
        for w, mu, c in zip(model.weights_, model.means_, model.full_covariances_, strict=True)
    ]
    assert np.isclose(ld, np.log(sum(parts)), rtol=1e-10)
    np.testing.assert_allclose(resp, np.array(parts) / sum(parts), rtol=1e-9)
    ld2, resp2 = marginal_log_prob(model, x_in, observed)
    assert ld2 == pytest.approx(ld, rel=1e-12)
    np.testing.assert_allclose(resp2, resp, rtol=1e-12)
    for k in range(3):
        mu, c = model.means_[k], model.full_covariances_[k]
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


# -- through the River adapters, on a real data set with keys dropped at random -------------


def image_segments(seed=0):
    from river import datasets

    rows = [x for x, _ in datasets.ImageSegments()]
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[i] for i in order]


def test_partial_records_are_scored_on_their_exact_marginal():
    from streamgmm.river import GaussianMixture

    rows = image_segments()
    model = GaussianMixture(n_components=3, warm_up=500, seed=0)
    for x in rows[:1500]:
        model.learn_one(x)
    gmm = model.model_
    names = list(model.feature_names_in_)
    scale = 1.0 / model._inv_scale
    means = gmm.means_ * scale + model._loc
    covs = gmm.full_covariances_ * np.outer(scale, scale)
    # Cluster labels may differ from the core's component order: match them by their centers.
    centers = model.centers
    labels = [
        min(centers, key=lambda c: np.abs([centers[c][n] for n in names] - m).max()) for m in means
    ]
    assert sorted(labels) == [0, 1, 2]
    rng = np.random.default_rng(1)
    for x in rows[1500:1530]:
        kept = sorted(rng.choice(len(names), size=int(rng.integers(1, len(names))), replace=False))
        partial = {names[j]: x[names[j]] for j in kept}
        values = [x[names[j]] for j in kept]
        # log w_k N(x_o | mu_o, S_oo) by slogdet and solve (scipy refuses ImageSegments'
        # nearly singular covariances: it has a constant feature).
        log_parts = []
        for w, m, c in zip(gmm.weights_, means, covs, strict=True):
            sub, diff = c[np.ix_(kept, kept)], np.asarray(values) - m[kept]
            logdet = np.linalg.slogdet(sub)[1]
            maha = diff @ np.linalg.solve(sub, diff)
            log_parts.append(np.log(w) - 0.5 * (len(kept) * np.log(2 * np.pi) + logdet + maha))
        log_parts = np.array(log_parts)
        parts = np.exp(log_parts - log_parts.max())
        log_density = log_parts.max() + np.log(parts.sum())
        assert model.score_one(partial) == pytest.approx(log_density, rel=1e-7, abs=1e-7)
        proba = model.predict_proba_one(partial)
        np.testing.assert_allclose(
            [proba[label] for label in labels], parts / parts.sum(), rtol=1e-6, atol=1e-9
        )


def test_learning_partial_records_on_real_data_uses_conditional_expectation():
    """ImageSegments, 6 of 18 keys dropped from half the records after the warm-up: the model
    learned by missing-data EM keeps the variances of the model learned from complete records,
    where filling in the warm-up means shrinks them; and it scores held-out records about as
    well."""
    from streamgmm.river import GaussianMixture

    rows = image_segments()
    warm_up, n_train = 400, 1800
    names = sorted(rows[0])
    warm_mean = {k: np.mean([x[k] for x in rows[:warm_up]]) for k in names}

    def learned(mode):
        model = GaussianMixture(n_components=1, warm_up=warm_up, half_life=300.0, seed=0)
        rng = np.random.default_rng(1)
        for i, x in enumerate(rows[:n_train]):
            if i >= warm_up and rng.random() < 0.5:
                drop = set(rng.choice(names, 6, replace=False))
                if mode == "missing":
                    x = {k: v for k, v in x.items() if k not in drop}
                elif mode == "mean-filled":
                    x = {k: warm_mean[k] if k in drop else v for k, v in x.items()}
            model.learn_one(x)
        return model

    complete, missing, mean_filled = (learned(m) for m in ("complete", "missing", "mean-filled"))

    def variances(model):  # standardised units: the three share their warm-up
        return np.diagonal(model.model_.full_covariances_[0])

    assert np.median(variances(missing) / variances(complete)) == pytest.approx(1.0, abs=0.05)
    assert np.median(variances(mean_filled) / variances(complete)) < 0.9
    held_out = rows[n_train:]

    def log_likelihood(model):
        return np.mean([model.score_one(x) for x in held_out])

    ll_complete, ll_missing = log_likelihood(complete), log_likelihood(missing)
    ll_mean_filled = log_likelihood(mean_filled)
    assert ll_complete - ll_missing < 5.0  # nats per 18-feature record
    assert ll_missing - ll_mean_filled > 10.0
