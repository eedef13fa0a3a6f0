"""End-to-end tests of the stream processor's file/stdin path: the real CLI in subprocesses and
the same processor in-process, real files and real signals."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from fault_injection import cli_command as _cli

from streamgmm.service.checkpoint import latest_checkpoint
from streamgmm.service.cli import main
from streamgmm.service.config import load_config
from streamgmm.service.processor import Processor

FEATURES = ["a", "b", "c"]


def _rows(n, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 3.0], [0.0, 7.0, -4.0]])
    return centres[rng.integers(0, 3, n)] + rng.standard_normal((n, 3))


def _write_jsonl(path, X, bad=None):
    """JSONL of X; ``bad`` maps a line number to a raw line inserted there."""
    bad = bad or {}
    lines = []
    for i, x in enumerate(X):
        while len(lines) in bad:
            lines.append(bad[len(lines)])
        lines.append(json.dumps({"a": x[0], "b": x[1], "c": x[2], "timestamp": i, "id": f"r{i}"}))
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def _read(path):
    return [json.loads(s) for s in path.read_text().splitlines()] if path.exists() else []


def _run_inproc(tmp_path, inp, out, **over):
    base = {
        "input": {"path": str(inp)},
        "output": {"path": str(out)},
        "features": FEATURES,
        "key_field": "id",
        "checkpoint": {"dir": str(tmp_path / "ck"), "every_records": 1000},
        "model": {"n_components": 3, "warm_up": 300, "random_state": 0},
        "batch_size": 100,
        "progress": False,
    }
    for k, v in over.items():
        if isinstance(v, dict):
            base.setdefault(k, {}).update(v)
        else:
            base[k] = v
    proc = Processor(load_config(overrides=base, env={}), handle_signals=False)
    assert proc.run() == 0
    return proc


def test_jsonl_end_to_end_outputs_and_dead_letters(tmp_path):
    X = _rows(2000)
    bad = {
        5: "not json",
        77: "[1, 2, 3]",
        150: '{"a": 1, "b": 2}',
        400: '{"a": "x", "b": 2, "c": 3}',
        401: '{"a": NaN, "b": 2, "c": 3}',
        402: '{"a": 1e400, "b": 2, "c": 3}',
        403: '{"a": Infinity, "b": 2, "c": 3}',
        900: '{"a": 1, "b": 2, "c": 3, "pad": "' + "z" * 2000 + '"}',
    }
    inp = tmp_path / "in.jsonl"
    n_lines = _write_jsonl(inp, X, bad)
    out = tmp_path / "out.jsonl"
    proc = _run_inproc(tmp_path, inp, out, max_record_bytes=1000)
    outs, dead = _read(out), _read(tmp_path / "out.dlq.jsonl")
    assert len(outs) == 2000 and len(dead) == len(bad)
    # exactly one result per input line, each pointing back at its line
    assert sorted(
        [o["source"]["offset"] for o in outs] + [d["source"]["offset"] for d in dead]
    ) == list(range(n_lines))
    assert {d["source"]["offset"]: d["record"] for d in dead} == {
        k: (v if len(v) <= 1000 else v[:1000]) for k, v in bad.items()
    }
    errors = [d["error"] for d in sorted(dead, key=lambda d: d["source"]["offset"])]
    for want, got in zip(
        [
            "not JSON",
            "not a JSON object",
            "missing feature 'c'",
            "not a number",
            "NaN",
            "overflows",
            "Infinity",
            "oversized",
        ],
        errors,
        strict=True,
    ):
        assert want in got
    o = outs[-1]
    assert set(o) == {
        "source",
        "key",
        "probabilities",
        "cluster",
        "log_density",
        "score",
        "tail_probability",
        "anomaly",
        "threshold",
        "model_version",
        "timestamp",
    }
    assert o["source"] == {"file": str(inp), "partition": 0, "offset": n_lines - 1}
    assert o["key"] == "r1999" and o["timestamp"] == 1999
    p = np.array([r["probabilities"] for r in outs[200:]])
    assert p.shape == (1800, 3) and np.allclose(p.sum(axis=1), 1.0)
    assert all(r["score"] == -r["log_density"] for r in outs[200:])
    # prequential: the first batch was scored before any model existed
    assert outs[0]["log_density"] is None and outs[0]["anomaly"] is False
    assert outs[0]["model_version"] == 0 and outs[-1]["model_version"] > 1500
    # the bad lines never reached the model: a run where they are blank lines (same positions,
    # so the same batch boundaries) ends in exactly the same state with the same scores
    clean = tmp_path / "clean"
    clean.mkdir()
    _write_jsonl(clean / "in.jsonl", X, {k: "" for k in bad})
    ref = _run_inproc(clean, clean / "in.jsonl", clean / "out.jsonl", max_record_bytes=1000)
    assert proc.model.n_samples_seen_ == ref.model.n_samples_seen_
    a_arr, _ = proc.model.get_state()
    b_arr, _ = ref.model.get_state()
    for k in a_arr:
        np.testing.assert_array_equal(a_arr[k], b_arr[k])
    assert [r["log_density"] for r in outs] == [
        r["log_density"] for r in _read(clean / "out.jsonl")
    ]


def test_csv_and_inferred_features(tmp_path):
    X = _rows(800, seed=1)
    lines = ["t,a,b,c,label"] + [f"{i},{x[0]},{x[1]},{x[2]},ok" for i, x in enumerate(X)]
    lines.insert(50, "1,2")  # wrong dimension
    lines.insert(60, "7,1,abc,3,ok")  # non-numeric
    lines.insert(70, "7,1,nan,3,ok")  # NaN
    inp = tmp_path / "in.csv"
    inp.write_text("\n".join(lines) + "\n")
    out = tmp_path / "o.jsonl"
    proc = _run_inproc(tmp_path, inp, out, features=None, key_field=None, timestamp_field="t")
    assert proc.decoder.features == ["a", "b", "c"]
    outs, dead = _read(out), _read(tmp_path / "o.dlq.jsonl")
    assert len(outs) == 800 and len(dead) == 3
    assert [d["error"].split(":")[0] for d in dead] == [
        "wrong dimension",
        "feature 'b' is not a number",
        "feature 'b' is nan (not finite)",
    ]
    assert dead[0]["record"] == "1,2" and outs[10]["timestamp"] == 10  # CSV: a number
    ck = latest_checkpoint(tmp_path / "ck")
    assert ck.meta["features"] == ["a", "b", "c"] and ck.meta["n_samples_seen"] > 700


def test_cli_stdin_to_stdout_and_inspect_json(tmp_path):
    X = _rows(600, seed=2)
    data = "".join(json.dumps({"a": x[0], "b": x[1], "c": x[2]}) + "\n" for x in X) + "oops\n"
    ck = tmp_path / "ck"
    r = subprocess.run(
        [
            *_cli(),
            "run",
            "--input",
            "-",
            "--features",
            "a,b,c",
            "--checkpoint-dir",
            str(ck),
            "--n-components",
            "2",
            "--warm-up",
            "200",
            "--log-format",
            "text",
        ],
        input=data,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    outs = [json.loads(s) for s in r.stdout.splitlines()]
    assert len(outs) == 600 and outs[-1]["source"] == {"file": "-", "partition": 0, "offset": 599}
    dead = [json.loads(s) for s in r.stderr.splitlines() if s.startswith('{"source"')]
    assert len(dead) == 1 and dead[0]["record"] == "oops"
    r = subprocess.run(
        [*_cli(), "inspect", str(ck), "--json"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert 0 < s["n_samples_seen"] <= 600
    assert s["features"] == FEATURES and s["offsets"]["files"] == {"-": 601}
    assert len(s["weights"]) == 2 and abs(sum(s["weights"]) - 1) < 1e-9
    assert np.array(s["means"]).shape == (2, 3)
    r = subprocess.run([*_cli(), "inspect", str(ck)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "rows learned" in r.stdout and "a, b, c" in r.stdout


def test_resume_continues_after_last_line_identically(tmp_path):
    X = _rows(3000, seed=3)
    inp = tmp_path / "in.jsonl"
    _write_jsonl(inp, X, {1234: "bad line"})
    full = tmp_path / "full"
    _run_inproc(full, inp, full / "out.jsonl")
    part = tmp_path / "part"
    p1 = _run_inproc(part, inp, part / "out.jsonl", max_records=1300)
    assert p1.counts["in"] == 1300 and len(_read(part / "out.jsonl")) == 1299
    p2 = _run_inproc(part, inp, part / "out.jsonl")
    assert p2.counts["in"] == 3001  # counts continue from the checkpoint
    assert (part / "out.jsonl").read_bytes() == (full / "out.jsonl").read_bytes()
    assert (part / "out.dlq.jsonl").read_bytes() == (full / "out.dlq.jsonl").read_bytes()
    f = latest_checkpoint(full / "ck")
    p = latest_checkpoint(part / "ck")
    assert p.meta["n_samples_seen"] == f.meta["n_samples_seen"]
    for k in f.arrays:
        np.testing.assert_array_equal(p.arrays[k], f.arrays[k])
    # a third run finds nothing new: no output appended, nothing learned
    p3 = _run_inproc(part, inp, part / "out.jsonl")
    assert p3.model.n_samples_seen_ == p2.model.n_samples_seen_
    assert (part / "out.jsonl").read_bytes() == (full / "out.jsonl").read_bytes()


def test_checkpoint_refused_for_other_config_unless_fresh(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    _write_jsonl(inp, _rows(400, seed=4))
    args = [
        "run",
        "--input",
        str(inp),
        "--output",
        str(tmp_path / "o.jsonl"),
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--features",
        "a,b,c",
        "--warm-up",
        "200",
        "--log-level",
        "ERROR",
    ]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--n-components", "5"]) == 2
    err = capsys.readouterr().err
    assert "different configuration" in err
    assert "n_components: checkpoint 'auto' != configured 5" in err
    assert main([*args[:-4], "--features", "a,b", "--warm-up", "200"]) == 2
    assert "features ['a', 'b', 'c'], configured ['a', 'b']" in capsys.readouterr().err
    assert main([*args, "--n-components", "5", "--fresh"]) == 0
    assert latest_checkpoint(tmp_path / "ck").meta["config"]["model"]["n_components"] == 5


def test_corrupt_latest_checkpoint_falls_back(tmp_path, caplog):
    inp = tmp_path / "in.jsonl"
    _write_jsonl(inp, _rows(2500, seed=5))
    _run_inproc(tmp_path, inp, tmp_path / "o.jsonl", max_records=2000)
    cks = sorted((tmp_path / "ck").glob("ckpt-*.npz"))
    assert len(cks) == 2  # at 1000 and at 2000 records (keep=3)
    cks[-1].write_bytes(cks[-1].read_bytes()[:-100])  # torn by a disk fault
    with caplog.at_level("ERROR"):
        proc = _run_inproc(tmp_path, inp, tmp_path / "o.jsonl")
    assert "skipping unusable checkpoint" in caplog.text
    assert proc.restored_from.name == cks[0].name
    outs = _read(tmp_path / "o.jsonl")
    assert [o["source"]["offset"] for o in outs] == list(range(2500))


def test_cli_invalid_config_exits_2_with_one_message(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("input: {path: x.jsonl}\nmodel: {n_components: -1}\n")
    r = subprocess.run(
        [*_cli(), "run", "--config", str(y)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "model.n_components" in r.stderr
    env = {**os.environ, "STREAMGMM_BATCH_SIZE": "lots"}
    r = subprocess.run(
        [*_cli(), "run", "--input", "x.jsonl"], capture_output=True, text=True, timeout=60, env=env
    )
    assert r.returncode == 2 and "batch_size" in r.stderr


def _wait_for(cond, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_csv_piped_to_stdin_is_read_as_csv(tmp_path):
    """``cat wine.csv | streamgmm run --input -``: stdin's first line is a CSV header, not
    JSON, so stdin is read as CSV (it was 179 dead letters, each "not JSON")."""
    import csv
    import io

    from sklearn.datasets import load_wine

    wine = load_wine()
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(wine.feature_names)
    w.writerows(wine.data.tolist())
    r = subprocess.run(
        [*_cli(), "run", "--input", "-", "--output", "-", "--checkpoint-dir", str(tmp_path),
         "--log-format", "text"],
        input=text.getvalue(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    outs = [json.loads(s) for s in r.stdout.splitlines()]
    assert len(outs) == len(wine.data) and all(o["score"] is not None for o in outs[20:])
    assert "stdin read as CSV" in r.stderr and '{"source"' not in r.stderr  # no dead letter


def test_sigterm_on_stdin_finishes_batch_and_checkpoints(tmp_path):
    ck = tmp_path / "ck"
    out = tmp_path / "o.jsonl"
    p = subprocess.Popen(
        [
            *_cli(),
            "run",
            "--input",
            "-",
            "--output",
            str(out),
            "--features",
            "a,b,c",
            "--checkpoint-dir",
            str(ck),
            "--checkpoint-every",
            "1000",
            "--batch-size",
            "500",
            "--warm-up",
            "300",
        ],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    X = _rows(3200, seed=6)
    p.stdin.write("".join(json.dumps({"a": x[0], "b": x[1], "c": x[2]}) + "\n" for x in X))
    p.stdin.flush()  # stdin stays open: the process blocks reading more
    assert _wait_for(lambda: any(ck.glob("ckpt-*.npz")) and len(list(ck.glob("ckpt-*"))) >= 3)
    time.sleep(0.3)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    outs = _read(out)
    assert len(outs) == 3200  # the partial last batch (200 rows) was finished too
    meta = latest_checkpoint(ck).meta
    assert meta["offsets"]["files"]["-"] == 3200 and meta["counts"]["out"] == 3200
    assert "received SIGTERM" in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_signal_mid_file_then_resume_loses_and_repeats_nothing(tmp_path, sig):
    n = 60000
    inp = tmp_path / "in.jsonl"
    _write_jsonl(inp, _rows(n, seed=7))
    out = tmp_path / "o.jsonl"
    ck = tmp_path / "ck"
    cmd = [
        *_cli(),
        "run",
        "--input",
        str(inp),
        "--output",
        str(out),
        "--features",
        "a,b,c",
        "--checkpoint-dir",
        str(ck),
        "--checkpoint-every",
        "2000",
        "--batch-size",
        "50",
        "--warm-up",
        "300",
        "--n-components",
        "3",
        "--no-progress",
    ]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    assert _wait_for(lambda: len(list(ck.glob("ckpt-*.npz"))) >= 2, timeout=60)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    if sig == signal.SIGTERM:
        assert p.returncode == 0, err
        meta = latest_checkpoint(ck).meta
        # graceful: the final checkpoint covers exactly the outputs written
        assert meta["offsets"]["files"][str(inp)] == len(_read(out)) < n
    else:
        assert p.returncode == -signal.SIGKILL
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    outs = _read(out)
    assert [o["source"]["offset"] for o in outs] == list(range(n))  # nothing missing or repeated
    assert latest_checkpoint(ck).meta["n_samples_seen"] <= n
    ref = tmp_path / "ref"
    _run_inproc(
        ref, inp, ref / "o.jsonl", batch_size=50, key_field=None, checkpoint={"every_records": 2000}
    )
    # outputs identical to one uninterrupted run: model updates were never repeated
    assert out.read_bytes() == (ref / "o.jsonl").read_bytes()


def test_demo_reports_precision_recall_and_plots(tmp_path):
    png = tmp_path / "demo.png"
    r = subprocess.run(
        [*_cli(), "demo", "--n", "8000", "--plot", str(png)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    line = next(s for s in r.stdout.splitlines() if "excluding" in s)
    prec = float(line.split("precision")[1].split()[0])
    rec = float(line.split("recall")[1].split()[0])
    assert prec > 0.7 and rec > 0.8, r.stdout
    assert "dead letters 3" in r.stdout
    assert png.stat().st_size > 10000 and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("name", "text", "said"),
    [
        ("in.jsonl", "", "the input is empty"),
        ("in.csv", "a,b\n", "no data rows after the CSV header, if any"),
    ],
)
def test_an_empty_input_is_said_in_the_summary(tmp_path, caplog, name, text, said):
    # Was only "run summary: 0 records in, 0 out, ...".
    inp = tmp_path / name
    inp.write_text(text)
    cfg = load_config(
        overrides={"input": {"path": str(inp)}, "output": {"path": str(tmp_path / "out.jsonl")}},
        env={},
    )
    with caplog.at_level("WARNING", logger="streamgmm.service"):
        assert Processor(cfg, handle_signals=False).run() == 0
    assert f"no records in {inp}: {said}" in caplog.text


@pytest.mark.parametrize("which", ["output", "dead_letter"])
def test_writing_over_the_input_file_is_refused(tmp_path, which):
    # `--output` naming the input emptied it before a line was read, exit code 0.
    from streamgmm.service.config import ConfigError

    inp = tmp_path / "in.jsonl"
    inp.write_text('{"a": 1, "b": 2}\n')
    output = {"path": str(tmp_path / "out.jsonl")}
    output[{"output": "path", "dead_letter": "dead_letter"}[which]] = str(
        tmp_path / "sub" / ".." / "in.jsonl"
    )
    with pytest.raises(ConfigError, match="is the input file: it would be overwritten"):
        load_config(overrides={"input": {"path": str(inp)}, "output": output}, env={})
    assert inp.read_text() == '{"a": 1, "b": 2}\n'
    load_config(overrides={"input": {"path": "-"}, "output": {"path": "-"}}, env={})
    load_config(
        overrides={"input": {"path": "/dev/stdin"}, "output": {"path": "/dev/stdout"}}, env={}
    )


def test_demo_prints_n_a_for_a_precision_of_no_flags(monkeypatch, capsys, tmp_path):
    # `streamgmm demo --n 2000` printed "precision 0.000  recall 0.000 (tp 0, fp 0, fn 0)".
    from streamgmm.service import demo

    run = demo.DemoRun(
        2000, 4, 3, [], 1990, 3, 1.0, 0.75, 3, 0, 1, (0.0, 0.0, 0, 0, 0), 1000, 1200, 1
    )
    monkeypatch.setattr(demo, "detect", lambda n, seed, workdir: (run, {}))
    assert demo.run_demo(2000, workdir=str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "precision 1.000  recall 0.750  (tp 3, fp 0, fn 1)" in out
    assert "jump: precision n/a  recall n/a  (tp 0, fp 0, fn 0)" in out


def test_a_rerun_on_stdin_does_not_claim_to_skip_records(tmp_path, monkeypatch, caplog):
    # The second run logged "resuming - at record 20" and then (rightly) read all of stdin.
    import io

    def run(lines):
        data = "".join(f'{{"a": {i % 7}, "b": {i % 5}}}\n' for i in range(lines)).encode()
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        out = tmp_path / f"out{lines}.jsonl"
        cfg = load_config(
            overrides={
                "input": {"path": "-"},
                "output": {"path": str(out)},
                "checkpoint": {"dir": str(tmp_path / "ck")},
                "progress": False,
            },
            env={},
        )
        Processor(cfg, handle_signals=False).run()
        return len(out.read_text().splitlines())

    assert run(20) == 20
    with caplog.at_level(logging.INFO, logger="streamgmm.service"):
        assert run(5) == 5
    assert "resuming" not in caplog.text
    assert "reading stdin from its first record" in caplog.text
