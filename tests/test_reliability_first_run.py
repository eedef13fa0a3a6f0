"""What a new user meets in the first hour: a checkpoint's auto-detected features against another
input, live input that must show results at once, and an honest end-of-run summary (this run's
counts, warm-up, flag rate, a hint and a non-zero exit when no record could be used)."""

from __future__ import annotations

import json
import re
import subprocess
import time

import numpy as np
from fault_injection import cli_command as _cli


def _records(n: int, fields=("a", "b", "c"), seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 3.0], [0.0, 7.0, -4.0]])
    X = centres[rng.integers(0, 3, n)] + rng.standard_normal((n, 3))
    return [json.dumps(dict(zip(fields, x.tolist(), strict=True))) for x in X]


def _run(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*_cli(), "run", "--log-format", "text", "--warm-up", "100", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_checkpoint_with_auto_detected_features_refuses_input_with_other_fields(tmp_path):
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text("\n".join(_records(600)) + "\n")
    ck = ["--checkpoint-dir", str(tmp_path / "ck")]
    r = _run("--input", str(first), "--output", str(tmp_path / "o1.jsonl"), *ck)
    assert r.returncode == 0, r.stderr
    second.write_text("\n".join(_records(300, fields=("a", "b", "d"))) + "\n")
    out = tmp_path / "o2.jsonl"
    r = _run("--input", str(second), "--output", str(out), *ck)
    assert r.returncode == 2, r.stderr
    assert "auto-detected features ['a', 'b', 'c']" in r.stderr and "missing ['c']" in r.stderr
    assert not out.exists()  # the refusal came before any output file was created
    # The same fields in another file: accepted, resumed (the model keeps its rows).
    same = tmp_path / "same.jsonl"
    same.write_text("\n".join(_records(300, seed=1)) + "\n")
    r = _run("--input", str(same), "--output", str(out), *ck)
    assert r.returncode == 0, r.stderr
    assert "restored checkpoint" in r.stderr


def test_live_input_is_processed_before_a_full_batch_arrives(tmp_path):
    out = tmp_path / "out.jsonl"
    cmd = [*_cli(), "run", "--input", "-", "--output", str(out), "--features", "a,b,c"]
    p = subprocess.Popen(
        [*cmd, "--max-batch-wait", "0.2", "--log-format", "text"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        p.stdin.write(("\n".join(_records(7)) + "\n").encode())
        p.stdin.flush()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            not out.exists() or len(out.read_bytes().splitlines()) < 7
        ):
            time.sleep(0.05)
        seen = len(out.read_bytes().splitlines()) if out.exists() else 0
        assert seen == 7, "7 records written to a live stdin (batch size 500) gave no output"
        assert p.poll() is None  # still running, waiting for more input
        p.stdin.close()
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stderr.close()


def test_summary_counts_this_run_and_says_when_the_run_ended_inside_the_warm_up(tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text("\n".join(_records(60)) + "\n{oops\n")
    args = ["--input", str(data), "--output", str(tmp_path / "out.jsonl"), "--features", "a,b,c"]
    r = _run(*args, "--checkpoint-dir", str(tmp_path / "ck"))
    assert r.returncode == 0, r.stderr
    assert "run summary: 61 records in, 60 out, 1 dead letters this run" in r.stderr
    assert "inside the model's warm-up" in r.stderr  # 60 rows < warm-up 100
    assert "not JSON" in r.stderr  # the dead-letter reason is named
    with data.open("a") as f:
        f.write("\n".join(_records(200, seed=2)) + "\n")
    r = _run(*args, "--checkpoint-dir", str(tmp_path / "ck"))
    assert r.returncode == 0, r.stderr
    assert "run summary: 200 records in, 200 out, 0 dead letters this run (261 / 260 / 1" in (
        r.stderr
    )
    assert "inside the model's warm-up" not in r.stderr
    assert "target false-alarm rate 1.00%" in r.stderr or "not calibrated" in r.stderr
    # Every valid row is learned, kept out by the gate or held back by the model: the summary
    # says which (a user saw 44,234 of 49,097 Shuttle rows learned and 553 flagged).
    m = re.search(
        r"(\d+) rows learned, (\d+) kept out by the anomaly gate .*?, (\d+) held back", r.stderr
    )
    assert m is not None, r.stderr
    assert sum(int(g) for g in m.groups()) == 260


def test_all_records_dead_lettered_exits_non_zero_with_a_hint(tmp_path):
    csv = (
        "a,b,c\n"
        + "\n".join(",".join(str(v) for v in json.loads(r).values()) for r in _records(50))
        + "\n"
    )
    # CSV in a file not named .csv is read as JSON lines (stdin would be sniffed as CSV).
    export = tmp_path / "export.txt"
    export.write_text(csv)
    r = _run("--input", str(export), "--output", str(tmp_path / "o.jsonl"))
    assert r.returncode == 1, r.stderr
    assert "no record could be used: all 51 records were dead-lettered" in r.stderr
    assert "--input-format csv" in r.stderr
    data = tmp_path / "in.jsonl"
    data.write_text("\n".join(_records(50)) + "\n")
    r = _run("--input", str(data), "--output", str(tmp_path / "o2.jsonl"), "--features", "a,b,x")
    assert r.returncode == 1, r.stderr
    assert "all 50 records were dead-lettered" in r.stderr and "--features" in r.stderr
    r = _run("--input", str(data), "--output", str(tmp_path / "o3.jsonl"), "--features", "a,b,c")
    assert r.returncode == 0, r.stderr


def test_summary_accounts_for_every_valid_row_on_real_data(tmp_path):
    """River's ImageSegments (default settings): learned + kept out by the gate + held back by
    the model's life cycle = every valid row, each part named in the summary."""
    from river import datasets

    from streamgmm.service.config import load_config
    from streamgmm.service.processor import Processor

    data = tmp_path / "segments.jsonl"
    rows = [x for x, _ in datasets.ImageSegments()]
    data.write_text("".join(json.dumps(x) + "\n" for x in rows))
    cfg = load_config(
        overrides={
            "input": {"path": str(data)},
            "output": {"path": str(tmp_path / "out.jsonl")},
            "checkpoint": {"dir": str(tmp_path / "ck")},
            "progress": False,
        },
        env={},
    )
    proc = Processor(cfg, handle_signals=False)
    assert proc.run() == 0
    s = proc.summary()
    assert s["outputs"] == len(rows) and not s["warming_up"]
    assert s["rows_kept_out"] > 0 and s["rows_held_back"] > 0  # both happen on this data
    assert s["rows_learned"] + s["rows_kept_out"] + s["rows_held_back"] == len(rows)
