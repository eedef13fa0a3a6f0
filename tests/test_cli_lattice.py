"""scikit-learn's digits (pixels of 17 values) through ``streamgmm run`` with its defaults, as a
new user exports it (64 pixels and the target to CSV): the records' -log p stays bounded by what
the data support.

Before the variance floors of discrete features lasted under ``n_components="auto"``
(``_covariance.prior_weight``), a component resting on hundreds of rows all 0 on a pixel had a
variance of 1e-6 of the pixel's, and the next digit with a stroke there scored -log p up to
8e8: 88 of the warm-up's 1,000 records and 27 of the last 797 above 1e4."""

from __future__ import annotations

import json
import subprocess

import numpy as np
from fault_injection import cli_command as _cli
from sklearn.datasets import load_digits


def test_digits_scores_are_bounded(tmp_path):
    d = load_digits(as_frame=True).frame
    data, out = tmp_path / "digits.csv", tmp_path / "scored.jsonl"
    d.to_csv(data, index=False)
    r = subprocess.run(
        [*_cli(), "run", "--input", str(data), "--output", str(out), "--log-format", "text"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "features (auto-detected from the first 500 records): pixel_0_1," in r.stderr
    assert "target" not in r.stderr.split("features (auto-detected")[1].split("\n")[0]
    rows = [json.loads(s) for s in out.read_text().splitlines()]
    assert len(rows) == 1797
    scores = np.array([np.nan if o["score"] is None else o["score"] for o in rows])
    warm, after = scores[:1000], scores[1000:]
    warm = warm[~np.isnan(warm)]
    assert len(warm) > 900 and not np.isnan(after).any()
    # Measured: the warm-up's records (provisional fits) max 3.6e4, 7 above 1e4 (the first
    # batch's smallest fits, where few features count as discrete yet), median 118; after the
    # warm-up max 364, median 110.
    assert warm.max() < 1e5
    assert (warm > 1e4).sum() <= 10
    assert np.median(warm) < 200
    assert after.max() < 1e3
    assert np.median(after) < 200
