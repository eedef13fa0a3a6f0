"""Anomaly decisions with defaults and no tuning, side by side in one run (issue 9).

1. Flag rate on clean stationary streams, gated vs ungated: every covariance type, K in
   {1, 3, 5}, D in {2, 10, 50}, targets 0.01 and 0.05 (realised rate / target after the
   warm-up, and the largest relative difference of a learned variance gated vs ungated, with
   components matched by their means); and the contamination guarantee (2% far outliers).
2. River's bundled Shuttle (features f1-f9, 7% anomalies): realised flag rate on the normal
   class and exact ROC-AUC (sklearn ``roc_auc_score``), through the CLI (``streamgmm run``
   with defaults) and through ``GaussianMixtureDetector()``, against
   ``MinMaxScaler() | HalfSpaceTrees(seed=42)``.
3. ``streamgmm demo``: precision and recall.
4. River's ``metrics.ROCAUC`` on the detector's bounded score vs sklearn's exact figure.

    python scripts/bench_anomaly.py [--n 20000] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from river import anomaly, datasets, metrics, preprocessing
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import roc_auc_score

from streamgmm import OnlineGaussianMixture
from streamgmm.anomaly import AnomalyGate
from streamgmm.river import GaussianMixtureDetector

WARM_UP = 1000


def clean_stream(k, d, n, seed):
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 6.0, (k, d))
    return means[rng.integers(k, size=n)] + rng.normal(size=(n, d))


def run_gate(X, k, covariance_type, rate, gating, seed=0):
    model = OnlineGaussianMixture(
        k, covariance_type=covariance_type, warm_up=WARM_UP, random_state=seed
    )
    gate = AnomalyGate(false_alarm_rate=rate, gating=gating, random_state=seed)
    result = gate.score_and_learn(model, X)
    return model, result


def variance_gap(a, b):
    cost = ((a.means_[:, None] - b.means_[None]) ** 2).sum(-1)
    i, j = linear_sum_assignment(cost)
    va = np.diagonal(a.full_covariances_[i], axis1=1, axis2=2)
    vb = np.diagonal(b.full_covariances_[j], axis1=1, axis2=2)
    return float(np.abs(va / vb - 1.0).max())


def flag_rate_table(n, quick):
    print("\n(1) Clean stationary streams: realised flag rate / target, gated vs ungated")
    print(f"    {n:,} rows each, rates after a {WARM_UP}-row warm-up; 'var gap' = largest")
    print("    relative difference of a learned variance, gated vs ungated (target <= 0.05)")
    print(f"    {'cov':<10}{'K':>3}{'D':>4}{'target':>8}{'gated':>8}{'ungated':>9}{'var gap':>9}")
    ks, ds = ((1, 5), (2, 50)) if quick else ((1, 3, 5), (2, 10, 50))
    worst_rate, worst_gap, n_ok, total = 0.0, 0.0, 0, 0
    for ct, k, d, rate in itertools.product(
        ("full", "diag", "spherical", "tied"), ks, ds, (0.01, 0.05)
    ):
        X = clean_stream(k, d, n, seed=k * 100 + d)
        gated, rg = run_gate(X, k, ct, rate, True)
        ungated, ru = run_gate(X, k, ct, rate, False)
        ratio = rg.anomaly[WARM_UP:].mean() / rate
        ratio_u = ru.anomaly[WARM_UP:].mean() / rate
        gap = variance_gap(gated, ungated)
        ok = abs(ratio - 1.0) <= 0.25 and gap <= 0.05
        n_ok += ok
        total += 1
        worst_rate = max(worst_rate, abs(ratio - 1.0))
        worst_gap = max(worst_gap, gap)
        flag = "" if ok else "  <-- outside target"
        print(f"    {ct:<10}{k:>3}{d:>4}{rate:>8.2f}{ratio:>8.2f}{ratio_u:>9.2f}{gap:>9.3f}{flag}")
    print(
        f"    within targets: {n_ok}/{total}; worst |rate/target - 1| {worst_rate:.2f}, "
        f"worst var gap {worst_gap:.3f}"
    )


def contamination():
    """2% far outliers in a 3-component 4-D mixture: clean held-out log-likelihood of the gated
    model vs a model that never saw them, and the share of outliers flagged."""
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0, 0.0, 0.0], [5.0, 5.0, 0.0, 0.0], [0.0, 5.0, 5.0, -5.0]])

    def mixture(m):
        return centers[rng.integers(0, 3, m)] + rng.normal(0.0, 1.0, (m, 4))

    clean, test = mixture(30000), mixture(20000)
    outlier = rng.random(len(clean)) < 0.02
    outlier[:WARM_UP] = False
    direction = rng.normal(size=(outlier.sum(), 4))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    dirty = clean.copy()
    dirty[outlier] = np.array([1.5, 3.0, 1.5, -1.5]) + direction * rng.uniform(
        12.0, 20.0, (outlier.sum(), 1)
    )
    ref, _ = run_gate(clean[~outlier], 3, "full", 0.01, True)
    gated, r = run_gate(dirty, 3, "full", 0.01, True)
    ungated, _ = run_gate(dirty, 3, "full", 0.01, False)
    ll_ref, ll_g, ll_u = (m.score(test) for m in (ref, gated, ungated))
    print("\n    contamination (2% far outliers, K=3, D=4, target 0.01):")
    print(
        f"    clean log-lik gap gated {ll_ref - ll_g:+.4f} nats (target <= 0.02), "
        f"ungated {ll_ref - ll_u:+.4f}; outliers flagged {r.anomaly[outlier].mean():.1%} "
        "(target >= 95%)"
    )


def row(path, auc, rate=None, per_s=None):
    rate_text = "" if rate is None else f"{rate:.4f}"
    speed = "" if per_s is None else f"{per_s:,.0f}"
    print(f"    {path:<52}{auc:>9.4f}{rate_text:>20}{speed:>10}")


def shuttle():
    data = list(datasets.Shuttle())
    labels = np.array([int(y) for _, y in data])
    normal = labels == 0
    names = [f"f{i}" for i in range(1, 10)]
    print(f"\n(2) River's Shuttle: {len(data):,} records, {labels.mean():.1%} anomalies")
    print(f"    {'path':<52}{'ROC-AUC':>9}{'flag rate (normal)':>20}{'rec/s':>10}")

    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "shuttle.jsonl", Path(tmp) / "scored.jsonl"
        with open(src, "w") as f:
            for x, _ in data:
                f.write(json.dumps({k: x[k] for k in names}) + "\n")
        cmd = [
            sys.executable,
            "-m",
            "streamgmm.service.cli",
            "run",
            "--input",
            str(src),
            "--output",
            str(out),
            "--features",
            ",".join(names),
            "--no-progress",
            "--log-level",
            "ERROR",
        ]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=os.environ.copy())
        dt = time.perf_counter() - t0
        recs = [json.loads(line) for line in out.read_text().splitlines()]
    score = np.array([np.nan if r["score"] is None else r["score"] for r in recs])
    tail = np.array(
        [np.nan if r["tail_probability"] is None else r["tail_probability"] for r in recs]
    )
    flags = np.array([r["anomaly"] for r in recs])
    scored = ~np.isnan(score)
    auc_score = roc_auc_score(labels[scored], score[scored])
    auc_tail = roc_auc_score(labels[scored], 1.0 - tail[scored])
    rate = flags[normal].mean()
    row("CLI `streamgmm run` (defaults), score = -log p", auc_score, rate, len(recs) / dt)
    row("CLI, 1 - tail_probability", auc_tail)

    detector = GaussianMixtureDetector(seed=42)
    river_auc = metrics.ROCAUC()
    tails, nll, det_flags = [], [], []
    t0 = time.perf_counter()
    for x, y in data:
        s = detector.score_one(x)
        tails.append(s)
        river_auc.update(y, s)
        detector.learn_one(x)
    dt = time.perf_counter() - t0
    # Flags and -log p in a second, identical pass (is_anomaly and the extra score cost time).
    detector2 = GaussianMixtureDetector(seed=42)
    for x, _ in data:
        nll.append(detector2.neg_log_density_one(x))
        det_flags.append(detector2.is_anomaly(x))
        detector2.learn_one(x)
    det_flags = np.array(det_flags)
    auc_det = roc_auc_score(labels, tails)
    auc_nll = roc_auc_score(labels, nll)
    row(
        "GaussianMixtureDetector(), score_one (1 - tail)",
        auc_det,
        det_flags[normal].mean(),
        len(data) / dt,
    )
    row("GaussianMixtureDetector(), neg_log_density_one", auc_nll)

    # River's filters around the detector (they learn only what they do not flag).
    for label, wrapped in (
        ("ThresholdFilter(detector, threshold=0.99)", anomaly.ThresholdFilter),
        ("QuantileFilter(detector, q=0.95)", anomaly.QuantileFilter),
    ):
        if wrapped is anomaly.ThresholdFilter:
            model = wrapped(GaussianMixtureDetector(seed=42), threshold=0.99)
        else:
            model = wrapped(GaussianMixtureDetector(seed=42), q=0.95)
        scores, flags = [], []
        for x, _ in data:
            scores.append(model.score_one(x))
            flags.append(model.classify(scores[-1]))
            model.learn_one(x)
        flags = np.array(flags)
        row(f"{label}: classify", roc_auc_score(labels, scores), flags[normal].mean())
        print(
            f"    {'':<52}all records flagged {flags.mean():.4f}, "
            f"anomalies {flags[~normal].mean():.4f}"
        )

    hst = preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=42)
    hs = []
    t0 = time.perf_counter()
    for x, _ in data:
        hs.append(hst.score_one(x))
        hst.learn_one(x)
    dt = time.perf_counter() - t0
    row("MinMaxScaler() | HalfSpaceTrees(seed=42)", roc_auc_score(labels, hs), None, len(data) / dt)
    gate = detector.gate_
    print(
        f"    detector's gate: calibration source {gate.calibration_source_!r}, "
        f"flag-rate warnings {gate.n_rate_warnings_}, changes detected {gate.n_drifts_}"
    )
    return river_auc.get(), auc_det


def river_rocauc(river_figure, exact):
    print("\n(4) River metrics.ROCAUC on the bounded score vs sklearn's exact figure (Shuttle)")
    gap = abs(river_figure - exact)
    verdict = "within" if gap <= 0.02 else "OUTSIDE"
    print(
        f"    River {river_figure:.4f}, sklearn {exact:.4f}, difference {gap:.4f} "
        f"({verdict} the target <= 0.02)"
    )


def demo():
    print("\n(3) streamgmm demo (python -m streamgmm.service.cli demo): target precision >= 0.90")
    print("    at recall >= 0.95")
    r = subprocess.run(
        [sys.executable, "-m", "streamgmm.service.cli", "demo"],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ.copy(),
    )
    for line in r.stdout.splitlines():
        if "precision" in line:
            print("   ", line.strip())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="rows per synthetic stream")
    parser.add_argument("--quick", action="store_true", help="a smaller grid (K 1,5; D 2,50)")
    args = parser.parse_args()
    flag_rate_table(args.n, args.quick)
    contamination()
    river_figure, exact = shuttle()
    demo()
    river_rocauc(river_figure, exact)


if __name__ == "__main__":
    main()
