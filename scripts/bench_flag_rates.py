#!/usr/bin/env python
"""Realised flag rates of the River detector on real data, `n_components="auto"` vs 1.

Prequential (score, then learn) over data sets bundled with River and scikit-learn, with the
detector's defaults (``false_alarm_rate`` 0.01). Prints, after the first 1,000 records, the
share of records flagged and percentiles of ``-log p(x)``: a user judges a detector by its
realised flag rate, and a calibrated one flags about its target on data with few anomalies.

Usage: ``python scripts/bench_flag_rates.py`` (about two minutes).
"""

from __future__ import annotations

import numpy as np
from river import datasets
from sklearn.datasets import load_digits

from streamgmm.river import GaussianMixtureDetector

SKIP = 1000  # the warm-up's records and the first calibrations


def streams():
    yield "Bananas", [x for x, _ in datasets.Bananas()]
    yield "Phishing", [x for x, _ in datasets.Phishing()]
    yield "ImageSegments", [x for x, _ in datasets.ImageSegments()]
    yield "digits", [{f"p{j}": float(v) for j, v in enumerate(r)} for r in load_digits().data]
    yield "Shuttle (normal class)", [x for x, y in datasets.Shuttle() if y == 0][:8000]


def run(rows, n_components):
    det = GaussianMixtureDetector(n_components=n_components)
    flagged, nll = [], []
    for x in rows:
        flagged.append(det.score_one(x) > det.threshold)
        nll.append(det.neg_log_density_one(x))
        det.learn_one(x)
    return np.array(flagged[SKIP:]), np.array(nll[SKIP:])


def main() -> None:
    print(
        f"{'data set':24s} {'K':>5s} {'rows':>6s} {'flag rate':>9s} {'-log p p50':>11s} "
        f"{'p99':>12s} {'max':>12s}"
    )
    for name, rows in streams():
        for k in ("auto", 1):
            flags, nll = run(rows, k)
            p50, p99 = np.percentile(nll, [50, 99])
            print(
                f"{name:24s} {k!s:>5s} {len(rows):6d} {flags.mean():9.4f} {p50:11.1f} "
                f"{p99:12.4g} {nll.max():12.4g}",
                flush=True,
            )


if __name__ == "__main__":
    main()
