"""Synthetic Gaussian mixtures with known densities: for tests, benchmarks and demos."""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from scipy.stats import multivariate_normal


class KnownMixture:
    """A Gaussian mixture with known parameters: draw from it and evaluate its log-density.

    Examples
    --------
    >>> from streamgmm.datasets import KnownMixture
    >>> truth = KnownMixture.random(n_components=3, n_features=2, seed=0)
    >>> X, labels = truth.sample(1000, seed=1)
    >>> X.shape, truth.log_density(X).shape
    ((1000, 2), (1000,))
    """

    def __init__(self, weights, means, covariances):
        self.weights = np.asarray(weights, dtype=float)
        self.means = np.asarray(means, dtype=float)
        self.covariances = np.asarray(covariances, dtype=float)

    @classmethod
    def random(cls, n_components, n_features, seed=0, separation=4.0, diagonal=False):
        rng = np.random.default_rng(seed)
        weights = rng.dirichlet(np.full(n_components, 5.0))
        means = rng.normal(0.0, separation, (n_components, n_features))
        covs = []
        for _ in range(n_components):
            a = rng.normal(size=(n_features, n_features))
            cov = a @ a.T / n_features + 0.3 * np.eye(n_features)
            covs.append(np.diag(np.diag(cov)) if diagonal else cov)
        return cls(weights, means, np.array(covs))

    def sample(self, n, seed):
        rng = np.random.default_rng(seed)
        labels = rng.choice(len(self.weights), size=n, p=self.weights)
        X = np.empty((n, self.means.shape[1]))
        for k in range(len(self.weights)):
            idx = labels == k
            X[idx] = rng.multivariate_normal(self.means[k], self.covariances[k], idx.sum())
        return X, labels

    def log_density(self, X):
        parts = [
            np.log(w) + multivariate_normal(m, c).logpdf(X)
            for w, m, c in zip(self.weights, self.means, self.covariances, strict=True)
        ]
        return logsumexp(np.column_stack(parts), axis=1)

    def shifted(self, offset):
        return KnownMixture(self.weights, self.means + offset, self.covariances)
