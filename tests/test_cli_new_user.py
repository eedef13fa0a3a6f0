"""What a new user met running ``streamgmm run`` on files (a trial with scikit-learn's and River's
data sets): a refused resume that left empty output files behind, a resume that said the
features were "auto-detected" when they came from the checkpoint (and refused a file that had
only grown), an output folder created without a word, and a warm-up silent for a minute."""

from __future__ import annotations

import json
import subprocess

import numpy as np
from fault_injection import cli_command as _cli


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*_cli(), "run", "--log-format", "text", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _rows(n: int, seed: int = 0, c=None) -> list[str]:
    """Records of two continuous features ``a``, ``b`` and an integer field ``c`` (0 unless
    given: constant, so auto-detection leaves it out)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 2)) + rng.integers(0, 2, (n, 1)) * 5.0
    cs = np.zeros(n, dtype=int) if c is None else c(rng, n)
    return [
        json.dumps({"a": float(a), "b": float(b), "c": int(v)})
        for (a, b), v in zip(X, cs, strict=True)
    ]


def _write(path, lines, mode="w"):
    with open(path, mode) as f:
        f.write("\n".join(lines) + "\n")


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_refused_resume_creates_no_output_and_truncates_none(tmp_path):
    first, other = tmp_path / "first.jsonl", tmp_path / "other.jsonl"
    _write(first, _rows(300))
    ck = ["--checkpoint-dir", str(tmp_path / "ck"), "--warm-up", "100"]
    r = _run("--input", str(first), "--output", str(tmp_path / "o1.jsonl"), *ck)
    assert r.returncode == 0, r.stderr
    # Other fields than the checkpoint's auto-detected ones: refused on the first batch.
    _write(other, [json.dumps({"x": i * 0.5, "y": (i % 7) * 1.5}) for i in range(300)])
    before = _files(tmp_path)
    r = _run("--input", str(other), "--output", str(tmp_path / "new" / "o2.jsonl"), *ck)
    assert r.returncode == 2, r.stderr
    assert "auto-detected features ['a', 'b']" in r.stderr and "missing ['a', 'b']" in r.stderr
    assert _files(tmp_path) == before  # no folder new/, no o2.jsonl, no o2.dlq.jsonl
    # An existing file of the user's named as the output is not truncated by the refusal.
    mine = tmp_path / "mine.jsonl"
    mine.write_text("keep me\n")
    r = _run("--input", str(other), "--output", str(mine), *ck)
    assert r.returncode == 2, r.stderr
    assert mine.read_text() == "keep me\n"
    assert not (tmp_path / "mine.dlq.jsonl").exists()
    # Other model settings: refused before anything is opened too.
    before = _files(tmp_path)
    out = str(tmp_path / "n2" / "o.jsonl")
    r = _run("--input", str(first), "--output", out, *ck, "--n-components", "2")
    assert r.returncode == 2, r.stderr
    assert "model.n_components: checkpoint 'auto' != configured 2" in r.stderr
    assert _files(tmp_path) == before


def test_resume_takes_auto_detected_features_from_the_checkpoint_and_says_so(tmp_path):
    # c is 0 in the first 200 records (left out: constant), then varies: the file grows. The
    # resume re-detected features on the new records, found c and refused the same file.
    data, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(data, _rows(200))
    ck = ["--checkpoint-dir", str(tmp_path / "ck"), "--warm-up", "100"]
    r = _run("--input", str(data), "--output", str(out), *ck)
    assert r.returncode == 0, r.stderr
    assert "features (auto-detected from the first 200 records): a, b" in r.stderr
    _write(data, _rows(200, seed=1, c=lambda rng, n: rng.integers(0, 9, n)), mode="a")
    r = _run("--input", str(data), "--output", str(out), *ck)
    assert r.returncode == 0, r.stderr
    assert "auto-detected from the first" not in r.stderr
    assert "features (from checkpoint ckpt-000000000001.npz, auto-detected by the run that " in (
        r.stderr
    )
    assert "this input has them all): a, b" in r.stderr
    assert "not used as features, as in that run: c" in r.stderr
    assert len(out.read_text().splitlines()) == 400
    # A resume that reads no record keeps the features in its checkpoint: the next resume on
    # other fields is still refused (the checkpoint had none, and anything was accepted).
    r = _run("--input", str(data), "--output", str(out), *ck)
    assert r.returncode == 0, r.stderr
    other = tmp_path / "other.jsonl"
    _write(other, [json.dumps({"x": i * 0.5, "y": (i % 7) * 1.5}) for i in range(300)])
    r = _run("--input", str(other), "--output", str(tmp_path / "o3.jsonl"), *ck)
    assert r.returncode == 2, r.stderr
    assert "auto-detected features ['a', 'b']" in r.stderr


def test_resume_of_configured_features_names_the_checkpoint(tmp_path):
    data = tmp_path / "in.jsonl"
    _write(data, _rows(150))
    ck = ["--checkpoint-dir", str(tmp_path / "ck"), "--warm-up", "100"]
    r = _run("--input", str(data), "--output", str(tmp_path / "o.jsonl"), *ck, "--features", "b,a")
    assert r.returncode == 0, r.stderr
    assert "features: b, a" in r.stderr
    _write(data, _rows(50, seed=2), mode="a")
    r = _run("--input", str(data), "--output", str(tmp_path / "o.jsonl"), *ck)
    assert r.returncode == 0, r.stderr
    assert "features (from checkpoint ckpt-000000000001.npz): b, a" in r.stderr


def test_output_into_a_missing_folder_creates_it_and_says_so(tmp_path):
    data = tmp_path / "in.jsonl"
    _write(data, _rows(120))
    out = tmp_path / "results" / "day1" / "scored.jsonl"
    r = _run("--input", str(data), "--output", str(out), "--warm-up", "100")
    assert r.returncode == 0, r.stderr
    assert len(out.read_text().splitlines()) == 120
    said = [s for s in r.stderr.splitlines() if "created the folder" in s]
    assert len(said) == 1, r.stderr  # once, although the dead letters go there too
    assert (
        f"INFO streamgmm.service.sinks: created the folder {out.parent} for the output" in (said[0])
    )
    r = _run("--input", str(data), "--output", str(out), "--warm-up", "100")
    assert r.returncode == 0 and "created the folder" not in r.stderr, r.stderr


def test_the_warm_up_says_which_k_it_tries(tmp_path):
    data = tmp_path / "in.jsonl"
    _write(data, _rows(400))
    r = _run("--input", str(data), "--output", str(tmp_path / "o.jsonl"), "--warm-up", "300")
    assert r.returncode == 0, r.stderr
    lines = [s.split(": ", 1)[1] for s in r.stderr.splitlines() if "streamgmm.online:" in s]
    assert lines[0] == "warm-up: choosing K by BIC on 300 rows of 2 features, K = 1..8"
    tried = [s for s in lines if s.startswith("K=") and " of 8: BIC " in s]
    assert [int(s[2]) for s in tried] == list(range(1, 9))
    assert all(s.endswith(" s)") for s in tried)
    assert lines[-1].startswith("K=2 chosen (least BIC)") and " s" in lines[-1]
    # Provisional fits during the warm-up stay at DEBUG.
    assert not any(s.startswith("provisional fit") for s in lines)


def test_a_refusal_on_wide_input_names_a_dozen_fields_and_counts_the_rest(tmp_path):
    cols = [f"p{j}" for j in range(30)]
    rng = np.random.default_rng(0)
    first = tmp_path / "first.jsonl"
    _write(
        first, [json.dumps(dict(zip(cols, r.tolist(), strict=True))) for r in rng.random((150, 30))]
    )
    ck = ["--checkpoint-dir", str(tmp_path / "ck"), "--warm-up", "100", "--n-components", "1"]
    r = _run("--input", str(first), "--output", str(tmp_path / "o1.jsonl"), *ck)
    assert r.returncode == 0, r.stderr
    other = tmp_path / "other.jsonl"
    _write(other, [json.dumps({"q": float(v)}) for v in rng.random(50)])
    r = _run("--input", str(other), "--output", str(tmp_path / "o2.jsonl"), *ck)
    assert r.returncode == 2, r.stderr
    assert "auto-detected features ['p0', 'p1', " in r.stderr
    assert "'p11', ... 18 more], but this input's numeric fields are ['q'] (missing" in r.stderr


def test_kafka_resume_with_auto_detected_features_opens_its_outputs_on_the_first_batch(
    kafka_bootstrap, tmp_path
):
    # The outputs of a resume whose features were auto-detected are opened after the first
    # batch's check (see above); on Kafka too every record gets its output or dead letter once.
    import fault_injection as fi

    topics = fi.make_topics(kafka_bootstrap, 1, stem="autofeat")
    valid = fi.produce(kafka_bootstrap, topics[0], 3000, 1)
    ck = tmp_path / "ck"
    cmd = fi.run_cmd(kafka_bootstrap, *topics, f"autofeat-{topics[0]}", ck, 500)
    i = cmd.index("--features")
    cmd = cmd[:i] + cmd[i + 2 :]  # features auto-detected
    i = cmd.index("--idle-timeout")
    cmd[i + 1] = "15"  # the first group join on a fresh broker can take seconds
    env = fi._env(None)  # static membership: the restart rejoins at once
    first = subprocess.run(
        [*cmd, "--max-records", "1500"], capture_output=True, text=True, timeout=120, env=env
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert "features (auto-detected from the first " in first.stderr
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "features (from checkpoint ckpt-" in second.stderr, second.stderr[-3000:]
    assert "auto-detected from the first" not in second.stderr
    f = fi.audit(kafka_bootstrap, *topics)
    assert f["records_in"] == 3000 and f["lost"] == 0 and f["unexpected"] == 0, f
    assert f["duplicated_records"] == 0, f
    assert f["outputs"] == valid and f["dead_letters"] == 3000 - valid, f
