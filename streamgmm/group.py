"""One model across a group of learners: sufficient-statistics increments and their merge.

Several learners (processes, machines) each see part of one stream and should end with the
model one learner would have learned from all of it.  They share a *base* (one model, the same
components in the same order for everyone) and then exchange *increments*: what each learned
from its own rows since its last exchange, as sufficient statistics relative to the state it
started that stretch from.  Each learner folds the others' increments into its own model.

Statistics
----------
The online EM keeps, per component ``k``, exponentially weighted sufficient statistics, moved
by every learned row with a step ``rho_t``::

    S_t = (1 - rho_t) S_{t-1} + rho_t s(x_t)

with ``s(x) = (r_k, r_k (x - c_k), r_k (x - c_k)(x - c_k)^T)`` (responsibility, first and
second moment).  :class:`MixtureStatistics` holds them *about a center* ``c_k`` per component
(the base's means): stored raw about the origin the second moments would cancel
catastrophically when the data sit far from it; about a nearby center they do not.  The
update is linear in ``S``, which is what makes increments exact.

Merge rule
----------
A learner that starts a stretch from statistics ``R`` and learns ``n`` rows with steps
``rho_1..rho_n`` ends with ``L = a R + D`` where ``a = prod(1 - rho_i)`` is the decay of its
own steps and ``D`` is what its rows added, each row weighted by its step and the decay of the
later ones.  So its **increment** is::

    D = L - a R                           (local statistics minus the decayed base)

and its mass is ``1 - a`` (every row adds responsibilities summing to 1).  A receiver with
statistics ``S`` at time ``t`` that had learned those ``n`` rows itself would have applied its
own next ``n`` steps, decaying ``S`` by ``a_S = prod_{i<n} (1 - rho_{t+i})`` and adding rows of
total mass ``1 - a_S``.  The **fold** does exactly that with the sender's rows::

    S' = a_S S + c D,   c = (1 - a_S) / (1 - a)

(``c D`` is the sender's rows' weighted mean statistics ``D / (1 - a)`` given the receiver's
mass), and the receiver's time advances by ``n``.  With a constant step (a half-life floor)
``a_S = a`` and ``c = 1``: learner *i* folding *j*'s increment ends with
``a_j a_i R + a_j D_i + D_j``, exactly one learner that learned *i*'s rows, then *j*'s.  Learner
*j* ends with ``a_i a_j R + a_i D_j + D_i``; the two differ by
``(1 - a_i) D_j - (1 - a_j) D_i``, of the order of ``(1 - a)^2``: the square of the share of the
memory one exchange interval stands for, tiny when the interval is short against the
half-life (or, stationary, against the rows seen).  Older differences decay with the
statistics themselves.  Within an interval the rows of different learners are weighted as
if learned one block after the other instead of interleaved: again a second-order effect.

What the rule cannot align: the E-step of each learner uses its own model, which lacks the
others' rows of the current interval (first order in the interval, but the same error
stochastic EM makes with any step); and changes of the component set.  Births, merges, deaths
and re-seeding are not linear statistics, so a learner of a group freezes its components
(:meth:`streamgmm.OnlineGaussianMixture.freeze_components`): the component set is the base's.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> base = MixtureStatistics.random(rng, k=2, d=3)
>>> rows = MixtureStatistics.random(rng, 2, 3, center=base.center)
>>> local = base.scaled(0.9).plus(rows.scaled(0.1))
>>> inc = increment(local, base, decay=0.9, n_samples=5)
>>> np.allclose(fold(base, inc, decay=0.9).s2, local.s2)   # same steps: back to the local
True
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["Increment", "MixtureStatistics", "fold", "increment"]

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")


@dataclasses.dataclass(frozen=True)
class MixtureStatistics:
    """Sufficient statistics of a Gaussian mixture about per-component centers.

    ``s0`` (K,): weights (responsibility mass).  ``s1`` (K, D): ``s0_k (mean_k - center_k)``.
    ``s2``: ``s0_k (cov_k + dev_k dev_k^T)`` with ``dev_k = mean_k - center_k``, shaped as the
    covariance type stores covariances: (K, D, D) full, (K, D) diag (the diagonal),
    (K,) spherical (the mean diagonal), and for tied one (D, D) matrix, the sum over
    components (the tied covariance is the pooled within-component spread).  ``center``
    (K, D).  ``n_samples``: the learner's sample count when taken (its time in steps).
    """

    s0: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    center: np.ndarray
    covariance_type: str
    n_samples: int = 0

    @classmethod
    def from_moments(cls, weights, means, cov, covariance_type, center=None, n_samples=0):
        """Statistics of a mixture given as weights, means and *centered* covariances."""
        w = np.asarray(weights, dtype=np.float64)
        means = np.asarray(means, dtype=np.float64)
        center = means.copy() if center is None else np.asarray(center, dtype=np.float64)
        if center.shape != means.shape:
            raise ValueError(f"center has shape {center.shape}, means {means.shape}")
        dev = means - center
        s1 = w[:, None] * dev
        cov = np.asarray(cov, dtype=np.float64)
        if covariance_type == "full":
            s2 = w[:, None, None] * (cov + dev[:, :, None] * dev[:, None, :])
        elif covariance_type == "diag":
            s2 = w[:, None] * (cov + dev * dev)
        elif covariance_type == "spherical":
            s2 = w * (cov + (dev * dev).mean(axis=1))
        elif covariance_type == "tied":
            s2 = w.sum() * cov + np.einsum("k,ki,kj->ij", w, dev, dev)
        else:
            raise ValueError(f"unknown covariance type {covariance_type!r}")
        return cls(w.copy(), s1, s2, center, covariance_type, int(n_samples))

    def moments(self):
        """``(weights, means, centered covariances)`` (inverse of :meth:`from_moments`)."""
        s0 = self.s0
        if not (s0 > 0).all():
            raise ValueError("statistics with a non-positive weight have no moments")
        dev = self.s1 / s0[:, None]
        means = self.center + dev
        ct = self.covariance_type
        if ct == "full":
            cov = self.s2 / s0[:, None, None] - dev[:, :, None] * dev[:, None, :]
        elif ct == "diag":
            cov = self.s2 / s0[:, None] - dev * dev
        elif ct == "spherical":
            cov = self.s2 / s0 - (dev * dev).mean(axis=1)
        else:
            cov = (self.s2 - np.einsum("k,ki,kj->ij", s0, dev, dev)) / s0.sum()
        return s0.copy(), means, cov

    def recentered(self, center) -> MixtureStatistics:
        """The same statistics about another center (exact up to rounding)."""
        center = np.asarray(center, dtype=np.float64)
        if center.shape == self.center.shape and np.array_equal(center, self.center):
            return self
        w, means, cov = self.moments()
        return MixtureStatistics.from_moments(
            w, means, cov, self.covariance_type, center, self.n_samples
        )

    def _check(self, other: MixtureStatistics) -> None:
        if other.covariance_type != self.covariance_type or other.s1.shape != self.s1.shape:
            raise ValueError(
                f"statistics of a {other.covariance_type} mixture of shape {other.s1.shape} "
                f"do not match {self.covariance_type} {self.s1.shape}: not the same components"
            )
        if not np.array_equal(other.center, self.center):
            raise ValueError("statistics about different centers (recenter one first)")

    def scaled(self, f: float) -> MixtureStatistics:
        return dataclasses.replace(self, s0=f * self.s0, s1=f * self.s1, s2=f * self.s2)

    def plus(self, other: MixtureStatistics) -> MixtureStatistics:
        self._check(other)
        return dataclasses.replace(
            self, s0=self.s0 + other.s0, s1=self.s1 + other.s1, s2=self.s2 + other.s2
        )

    def minus(self, other: MixtureStatistics) -> MixtureStatistics:
        return self.plus(other.scaled(-1.0))

    @classmethod
    def random(cls, rng, k, d, covariance_type="full", center=None):
        """Random valid statistics (tests and examples)."""
        w = rng.dirichlet(np.ones(k))
        means = rng.normal(size=(k, d))
        a = rng.normal(size=(k, d, d))
        full = a @ np.swapaxes(a, 1, 2) + d * np.eye(d)
        cov = {
            "full": full,
            "diag": np.einsum("kii->ki", full),
            "spherical": np.einsum("kii->k", full) / d,
            "tied": full[0],
        }[covariance_type]
        return cls.from_moments(w, means, cov, covariance_type, center)

    def to_arrays(self) -> dict:
        return {"s0": self.s0, "s1": self.s1, "s2": self.s2, "center": self.center}

    @classmethod
    def from_arrays(cls, arrays, covariance_type, n_samples=0) -> MixtureStatistics:
        got = {}
        for name in ("s0", "s1", "s2", "center"):
            v = np.asarray(arrays[name])
            if v.dtype != np.float64 or not np.isfinite(v).all():
                raise ValueError(f"statistics: {name} must be finite float64")
            got[name] = v
        k, d = got["s1"].shape
        want = {"full": (k, d, d), "diag": (k, d), "spherical": (k,), "tied": (d, d)}
        if got["s0"].shape != (k,) or got["center"].shape != (k, d):
            raise ValueError("statistics: s0/center shapes do not match s1")
        if got["s2"].shape != want[covariance_type]:
            raise ValueError(f"statistics: s2 has shape {got['s2'].shape}")
        return cls(**got, covariance_type=covariance_type, n_samples=int(n_samples))


@dataclasses.dataclass(frozen=True)
class Increment:
    """What one learner added since a reference state: ``stats`` = ``D = L - a R``.

    ``decay`` is ``a`` (the product of ``1 - rho`` over the learner's own steps),
    ``n_samples`` the rows learned, ``base_version`` the shared base the learner's components
    come from (an increment from another base describes other components and is refused).
    """

    stats: MixtureStatistics
    decay: float
    n_samples: int
    base_version: str | None = None


def increment(local: MixtureStatistics, base: MixtureStatistics, decay: float, n_samples: int,
              base_version: str | None = None) -> Increment:  # fmt: skip
    """``D = L - a R``: the learner's statistics ``local`` minus its reference ``base`` decayed
    by ``decay`` (``a``, its own steps since ``base``)."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    local = local.recentered(base.center)
    return Increment(local.minus(base.scaled(decay)), float(decay), int(n_samples), base_version)


def fold(stats: MixtureStatistics, inc: Increment, decay: float) -> MixtureStatistics:
    """``S' = a_S S + c D`` with ``c = (1 - a_S) / (1 - a)``: ``inc`` folded into ``stats`` as
    if the receiver had learned the sender's rows with its own next steps (their decay
    ``a_S = decay``).  The result is about ``stats``'s center; its ``n_samples`` advances by
    the increment's."""
    if inc.n_samples == 0 or inc.decay >= 1.0:
        return stats
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    d = inc.stats.recentered(stats.center)
    c = (1.0 - decay) / (1.0 - inc.decay)
    out = stats.scaled(decay).plus(d.scaled(c))
    return dataclasses.replace(out, n_samples=stats.n_samples + inc.n_samples)


def log_decay(t0: int, t1: int, step_offset: float, step_exponent: float, floors) -> float:
    """``sum_{t0 <= t < t1} log(1 - rho_t)`` of the core's step schedule
    ``rho_t = max((t + 1 + step_offset) ** -step_exponent, floor)``; ``floors``: the floor's
    history as ``[(from_t, floor), ...]`` ascending (the first entry holds before it too)."""
    if t1 <= t0:
        return 0.0
    total = 0.0
    for i, (start, floor) in enumerate(floors):
        lo = t0 if i == 0 else max(start, t0)
        hi = floors[i + 1][0] if i + 1 < len(floors) else t1
        hi = min(hi, t1)
        if hi > lo:
            t = np.arange(lo, hi, dtype=np.float64)
            rho = np.maximum((t + 1.0 + step_offset) ** (-step_exponent), floor)
            total += float(np.log1p(-rho).sum())
    return total if math.isfinite(total) else -math.inf
