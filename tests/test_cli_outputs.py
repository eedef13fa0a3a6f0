"""Outputs that are not regular files (``/dev/null``, a named pipe) and where their dead letters
go (issue 10, "First-hour defects")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

from streamgmm.service.config import load_config
from streamgmm.service.sinks import FileSink


def _input(path, n=300):
    lines = [json.dumps({"a": i % 7, "b": (i * 3) % 11}) for i in range(n)]
    lines[5] = '{"a": "x", "b": 1}'
    path.write_text("\n".join(lines) + "\n")


def _run(*args, timeout=60):
    cmd = [sys.executable, "-m", "streamgmm.service.cli", "run", "--log-format", "text", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_output_to_dev_null_works_and_dead_letters_go_to_stderr(tmp_path):
    inp = tmp_path / "in.jsonl"
    _input(inp)
    r = _run("--input", str(inp), "--output", "/dev/null", "--checkpoint-dir", str(tmp_path / "ck"))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "Errno" not in r.stderr
    dead = [json.loads(s) for s in r.stderr.splitlines() if s.startswith("{")]
    assert [d["source"]["offset"] for d in dead] == [5]


def test_output_to_a_named_pipe(tmp_path):
    inp, fifo = tmp_path / "in.jsonl", tmp_path / "scored.pipe"
    _input(inp)
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    r = _run("--input", str(inp), "--output", str(fifo), "--checkpoint-dir", str(tmp_path / "ck"))
    reader.join(30)
    assert r.returncode == 0, r.stderr
    assert len(got[0].splitlines()) == 299
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "in.jsonl", "scored.pipe"]


def test_dead_letter_default_beside_a_non_regular_output_is_stderr(tmp_path):
    def dlq(out):
        return load_config(overrides={"input": {"path": "x"}, "output": {"path": out}}, env={})

    assert dlq("/dev/null").output.dead_letter == "<stderr>"
    assert dlq(str(tmp_path / "o.jsonl")).output.dead_letter is None  # <output>.dlq.jsonl


def test_file_sink_on_a_character_device_flushes_without_fsync():
    s = FileSink("/dev/null")
    s.write(None, [b'{"a":1}'])
    assert s.flush() is None and not s.is_file
    s.close()
    s = FileSink("/dev/null", resume_size=100)  # a resumed run: nothing to cut back
    s.write(None, [b'{"a":1}'])
    s.flush()
    s.close()
