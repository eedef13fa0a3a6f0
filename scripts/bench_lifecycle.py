"""K that adapts: n_components="auto" (warm-up BIC, online birth/merge/death) against fixed K.

Prints, side by side in one run:

1. River's bundled Shuttle through ``GaussianMixtureDetector`` with its defaults (now "auto")
   and with the former default ``n_components=1``: exact ROC-AUC (sklearn), flag rate on the
   normal class, K at the end, births/merges/deaths (throughput: ``scripts/bench_river.py``).
2. A new cluster appearing mid-stream (2-D, clusters at (0,0), (6,0); from record 3,000 on a
   third at (0,8) takes a third of the stream): held-out log-likelihood per record on the new
   mixture for "auto", fixed K=1 and K=2, and a model fitted on the new mixture (K=3, batch);
   then the River detector's flag rate on records of the new cluster, "auto" vs K=1.

Run: ``python scripts/bench_lifecycle.py``
"""

from __future__ import annotations

import numpy as np
from river import datasets
from sklearn.metrics import roc_auc_score

from streamgmm import OnlineGaussianMixture
from streamgmm.river import GaussianMixtureDetector

FACES = [("defaults (n_components='auto')", {}), ("n_components=1", {"n_components": 1})]
CENTERS = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 8.0]])


def blobs(n, k, seed):
    rng = np.random.default_rng(seed)
    return CENTERS[rng.integers(0, k, n)] + rng.normal(size=(n, 2))


def shuttle():
    data = list(datasets.Shuttle())
    labels = np.array([bool(y) for _, y in data])
    print(f"(1) River's Shuttle, {len(data):,} records, {labels.mean():.1%} anomalies")
    print(f"    {'GaussianMixtureDetector':<38}{'ROC-AUC':>9}{'flag rate (normal)':>20}"
          f"{'K':>4}{'b/m/d':>8}")  # fmt: skip
    for name, kwargs in FACES:
        det = GaussianMixtureDetector(seed=42, **kwargs)
        scores, flags = [], []
        for x, _ in data:
            scores.append(det.score_one(x))
            flags.append(det.is_anomaly(x))
            det.learn_one(x)
        c = det.model_.lifecycle_counts_
        print(
            f"    {name:<38}{roc_auc_score(labels, scores):>9.4f}"
            f"{np.mean(np.array(flags)[~labels]):>20.4f}{det.model_.n_components_:>4}"
            f"{'{}/{}/{}'.format(c['births'], c['merges'], c['deaths']):>8}"
        )


def new_cluster():
    print("\n(2) A new cluster mid-stream (a third of the stream from record 3,000 on)")
    before, after = blobs(3000, 2, seed=1), blobs(6000, 3, seed=2)
    test = blobs(20000, 3, seed=3)
    oracle = OnlineGaussianMixture(3, random_state=0).fit(blobs(20000, 3, seed=4))
    print(f"    {'model':<40}{'held-out loglik':>16}{'K':>4}{'births':>8}")
    for name, k in [("'auto' (default)", "auto"), ("K=1", 1), ("K=2", 2)]:
        m = OnlineGaussianMixture(k, random_state=0, half_life=2000)
        for X in (before, after):
            for i in range(0, X.shape[0], 100):
                m.partial_fit(X[i : i + 100])
        print(
            f"    {name:<40}{m.score(test):>16.4f}{m.n_components_:>4}"
            f"{m.lifecycle_counts_['births']:>8}"
        )
    print(f"    {'K=3 batch fit on the new mixture':<40}{oracle.score(test):>16.4f}{3:>4}")
    print("    River detector, flag rate on the new cluster's records (last 3,000 of the stream)")
    for name, kwargs in FACES:
        det = GaussianMixtureDetector(seed=0, **kwargs)
        rng = np.random.default_rng(5)
        stream = [(x, False) for x in before]
        which = rng.integers(0, 3, 9000)
        stream += [(CENTERS[w] + rng.normal(size=2), w == 2) for w in which]
        flags = []
        for x, new in stream:
            rec = {"a": x[0], "b": x[1]}
            flags.append((det.is_anomaly(rec), new))
            det.learn_one(rec)
        last = flags[-3000:]
        rate = np.mean([f for f, new in last if new])
        old_rate = np.mean([f for f, new in last if not new])
        print(
            f"    {name:<40} new cluster {rate:.4f}, old clusters {old_rate:.4f}, "
            f"K={det.model_.n_components_}"
        )


if __name__ == "__main__":
    shuttle()
    new_cluster()
