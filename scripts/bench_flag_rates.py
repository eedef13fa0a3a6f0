#!/usr/bin/env python
"""Realised flag rates of the River detector on real data, `n_components="auto"` vs 1.

Prequential (score, then learn) over data sets bundled with River and scikit-learn, with the
detector's defaults (``false_alarm_rate`` 0.01), ``n_components="auto"`` with three seeds and
``n_components=1`` with one. Prints the share of records flagged after the first 1,000 records
(the warm-up and the first calibrations) and over the whole stream, and percentiles of
``-log p(x)`` after the first 1,000: a user judges a detector by its realised flag rate, and a
calibrated one flags about its target on data with few anomalies.

With ``--cli`` the same question through ``streamgmm run`` with its defaults (a file in, a
file out, nothing but the features): small data sets that lie wholly in the warm-up (judged by
provisional fits) and the first 1,000 records of the longer ones, then the rest.

Usage: ``python scripts/bench_flag_rates.py`` (about four minutes); ``--cli`` (about a minute).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from river import datasets
from sklearn import datasets as sk_datasets
from sklearn.datasets import load_digits

from streamgmm.river import GaussianMixtureDetector

SKIP = 1000  # the warm-up's records and the first calibrations


def streams():
    yield "Bananas", [x for x, _ in datasets.Bananas()]
    yield "Phishing", [x for x, _ in datasets.Phishing()]
    yield "ImageSegments", [x for x, _ in datasets.ImageSegments()]
    yield "digits", [{f"p{j}": float(v) for j, v in enumerate(r)} for r in load_digits().data]
    yield "Shuttle (normal class)", [x for x, y in datasets.Shuttle() if y == 0][:8000]


SEEDS = (0, 1, 2)


def run(rows, n_components, seed):
    det = GaussianMixtureDetector(n_components=n_components, seed=seed)
    flagged, nll = [], []
    for x in rows:
        flagged.append(det.score_one(x) > det.threshold)
        nll.append(det.neg_log_density_one(x))
        det.learn_one(x)
    return np.array(flagged), np.array(nll[SKIP:])


def cli_streams():
    order = np.random.default_rng(0)
    yield "TrumpApproval (drifts)", [x for x, _ in datasets.TrumpApproval()]
    for name in ("breast_cancer", "diabetes", "iris", "wine"):
        data = getattr(sk_datasets, f"load_{name}")().data
        if name in ("iris", "wine"):  # sorted by class: shuffled, as a stream would mix them
            data = data[order.permutation(len(data))]
        yield name, [{f"f{j}": float(v) for j, v in enumerate(r)} for r in data]
    yield "Phishing", [x for x, _ in datasets.Phishing()]
    yield "ImageSegments", [x for x, _ in datasets.ImageSegments()]


def run_cli(rows) -> np.ndarray:
    """``streamgmm run`` with defaults on ``rows`` (JSONL); the anomaly flags, in order."""
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp, "in.jsonl"), Path(tmp, "out.jsonl")
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
        cmd = [sys.executable, "-m", "streamgmm.service.cli", "run", "--input", str(src)]
        cmd += ["--output", str(out), "--checkpoint-dir", str(Path(tmp, "ckpt"))]
        subprocess.run([*cmd, "--no-progress", "--log-level", "ERROR"], check=True)
        return np.array([json.loads(line)["anomaly"] for line in out.open()], dtype=float)


def main_cli() -> None:
    print(f"{'data set':24s} {'rows':>6s} {'whole stream':>13s} {'first 1,000':>12s} {'after':>8s}")
    for name, rows in cli_streams():
        flags = run_cli(rows)
        after = f"{flags[SKIP:].mean():.4f}" if len(flags) > SKIP else "-"
        print(
            f"{name:24s} {len(rows):6d} {flags.mean():13.4f} {flags[:SKIP].mean():12.4f} "
            f"{after:>8s}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cli", action="store_true", help="through `streamgmm run` instead")
    if parser.parse_args().cli:
        main_cli()
        return
    print(
        f"{'data set':24s} {'K':>5s} {'rows':>6s} {'after warm-up':>22s} {'whole stream':>22s} "
        f"{'-log p p50':>11s} {'p99':>10s}"
    )
    print(f"{'':37s}(flag rate, mean [min-max] over seeds {', '.join(map(str, SEEDS))})")
    for name, rows in streams():
        for k, seeds in (("auto", SEEDS), (1, SEEDS[:1])):
            after, whole, nlls = [], [], []
            for seed in seeds:
                flags, nll = run(rows, k, seed)
                after.append(flags[SKIP:].mean())
                whole.append(flags.mean())
                nlls.append(nll)
            p50, p99 = np.percentile(np.concatenate(nlls), [50, 99])
            print(
                f"{name:24s} {k!s:>5s} {len(rows):6d} {_spread(after):>22s} {_spread(whole):>22s} "
                f"{p50:11.1f} {p99:10.3g}",
                flush=True,
            )


def _spread(values) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} [{min(values):.3f}-{max(values):.3f}]"


if __name__ == "__main__":
    main()
