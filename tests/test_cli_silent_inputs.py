"""CLI inputs that used to do the wrong thing silently (through the real CLI, on real files)."""

from __future__ import annotations

import json
import subprocess
import sys


def _run(*args, cwd):
    cmd = [sys.executable, "-m", "streamgmm.service.cli", "run", "--log-format", "text", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)


def _jsonl(path, n=300, key="sensor_id"):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({key: f"s{i % 3}", "a": i % 7 * 1.0, "b": (i * 13) % 11 * 1.0}))
            f.write("\n")


def test_empty_features_are_refused_not_auto_detected(tmp_path):
    _jsonl(tmp_path / "in.jsonl")
    for value in ("", " , "):
        r = _run("--input", "in.jsonl", "--output", "out.jsonl", "--features", value, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert "features" in r.stderr and "is empty" in r.stderr
        assert not (tmp_path / "out.jsonl").exists()


def test_key_scope_warns_once_when_no_record_has_the_key_field(tmp_path):
    _jsonl(tmp_path / "in.jsonl")
    args = ["--input", "in.jsonl", "--output", "out.jsonl", "--features", "a,b"]
    r = _run(*args, "--model-scope", "key", "--key-field", "sensor", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    said = [x for x in r.stderr.splitlines() if "has a key" in x]
    assert len(said) == 1 and "'sensor'" in said[0] and "sensor_id" in said[0], r.stderr
    # The right field: no warning.
    r = _run(*args, "--model-scope", "key", "--key-field", "sensor_id", cwd=tmp_path)
    assert r.returncode == 0 and "has a key" not in r.stderr, r.stderr
    # A short input (fewer records than the watch waits for) is warned about at its end.
    _jsonl(tmp_path / "short.jsonl", n=20)
    r = _run(
        "--input", "short.jsonl", "--output", "o2.jsonl", "--features", "a,b",
        "--model-scope", "key", "--key-field", "sensor", cwd=tmp_path,
    )  # fmt: skip
    assert "none of the first 20 valid records has a key" in r.stderr, r.stderr


def test_unclosed_quote_in_a_csv_header_is_an_error(tmp_path):
    (tmp_path / "in.csv").write_text('a,"b,c\n1,2,3\n4,5,6\n7,8,9\n')
    r = _run("--input", "in.csv", "--output", "out.jsonl", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "unclosed quote in the CSV header" in r.stderr and "Traceback" not in r.stderr


def test_unclosed_quote_in_a_csv_row_is_a_dead_letter_that_says_so(tmp_path):
    (tmp_path / "in.csv").write_text('a,b,c\n1,2,3\n4,"5,6\n7,8,9\n10,11,12\n')
    r = _run("--input", "in.csv", "--output", "out.jsonl", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    dead = [json.loads(x) for x in (tmp_path / "out.dlq.jsonl").read_text().splitlines()]
    assert len(dead) == 1
    assert "unclosed quote? a quoted field runs over 3 lines" in json.dumps(dead[0])
