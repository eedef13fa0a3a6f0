"""The ``streamgmm`` command as a new user meets it: ``--version``, help, ``inspect`` in a pipe
or on the wrong file, a Kafka configuration without a broker, and ``demo``'s checks and figure
(issue 10, "First-hour defects")."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import streamgmm
from streamgmm.service import cli, demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "streamgmm.service.cli"]


def _cli(*args, timeout=120, **kw):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, **kw)


def test_version():
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"streamgmm {streamgmm.__version__}"


def _run_parser() -> argparse.ArgumentParser:
    sub = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["run"]


def test_every_run_flag_has_help_with_its_default_or_choices():
    undocumented = []
    for action in _run_parser()._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flag = action.option_strings[-1]
        h = action.help or ""
        takes_value = action.nargs != 0
        if not h or (takes_value and "default" not in h and flag != "--config"):
            undocumented.append(flag)
    assert not undocumented


@pytest.mark.parametrize(
    ("flag", "choices"),
    [
        ("--covariance-type", ["full", "diag", "spherical", "tied"]),
        ("--log-level", ["DEBUG", "INFO", "WARNING", "ERROR"]),
        ("--input-format", ["auto", "jsonl", "csv"]),
        ("--log-format", ["json", "text"]),
    ],
)
def test_run_flags_with_a_fixed_set_of_values_list_them(flag, choices):
    action = next(a for a in _run_parser()._actions if flag in a.option_strings)
    assert list(action.choices) == choices


def test_run_help_shows_the_configured_defaults():
    text = _run_parser().format_help()
    assert "(default: 3)" in text  # --n-components
    assert "(default: 0.01)" in text  # --false-alarm-rate
    assert "(default: 500)" in text  # --batch-size


def _checkpoint(tmp_path):
    inp = tmp_path / "in.jsonl"
    rng = np.random.default_rng(0)
    inp.write_text(
        "".join(json.dumps({"a": x, "b": y}) + "\n" for x, y in rng.normal(size=(300, 2)))
    )
    ck = tmp_path / "ck"
    r = _cli(
        "run",
        "--input",
        str(inp),
        "--output",
        str(tmp_path / "o.jsonl"),
        "--checkpoint-dir",
        str(ck),
    )
    assert r.returncode == 0, r.stderr
    return ck


def test_inspect_into_a_closed_pipe_is_quiet(tmp_path):
    ck = _checkpoint(tmp_path)
    for args in (["inspect", str(ck)], ["inspect", str(ck), "--json"]):
        p = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p.stdout.close()  # like `| head -1` that has already exited
        err = p.stderr.read().decode()
        p.wait(60)
        assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_inspect_on_a_file_that_is_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    pickled = tmp_path / "model.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    plain = tmp_path / "arrays.npz"
    np.savez(plain, x=np.zeros(3))
    for path in (text, pickled):
        r = _cli("inspect", str(path))
        assert r.returncode == 1
        assert r.stderr == f"streamgmm: {path} is not a streamgmm checkpoint\n", r.stderr
    r = _cli("inspect", str(plain))  # a zip of arrays, without streamgmm's metadata
    assert r.returncode == 1
    assert r.stderr == f"streamgmm: {plain}: not a streamgmm checkpoint (no metadata/checksum)\n"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_kafka_config_without_a_broker_is_one_clear_message(tmp_path):
    env = dict(
        os.environ,
        STREAMGMM_KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{_closed_port()}",
        STREAMGMM_CHECKPOINT__DIR=str(tmp_path / "ck"),
        STREAMGMM_METRICS_PORT="0",
        STREAMGMM_KAFKA__BOOTSTRAP_TIMEOUT_MS="2000",
    )
    t0 = time.monotonic()
    r = _cli("run", "--config", os.path.join(ROOT, "configs", "kafka.yaml"), env=env, timeout=90)
    assert time.monotonic() - t0 < 20  # kafka.bootstrap_timeout_ms is honoured
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and "KafkaTimeoutError: KafkaTimeoutError" not in r.stderr
    [msg] = [s for s in r.stderr.splitlines() if "streamgmm:" in s or '"error"' in s]
    assert msg.startswith("streamgmm: cannot reach Kafka at 127.0.0.1:"), msg
    assert "Is a broker running there?" in msg
    assert "connecting to Kafka at 127.0.0.1:" in r.stderr.splitlines()[0]  # said at once


# -- demo ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", ["0", "-5", "100"])
def test_demo_refuses_too_few_records_up_front(n):
    r = _cli("demo", "--n", n)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--n: the demo needs at least 2000 records" in r.stderr


def test_demo_plot_in_a_missing_folder_is_refused_before_the_run(tmp_path):
    t0 = time.monotonic()
    r = _cli("demo", "--plot", str(tmp_path / "nowhere" / "demo.png"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stdout == ""  # nothing ran
    assert f"--plot: folder {tmp_path / 'nowhere'} does not exist" in r.stderr
    assert time.monotonic() - t0 < 30
    r = _cli("demo", "--plot", str(tmp_path / "demo.unknown"))
    assert r.returncode == 2 and "--plot: cannot write '.unknown' files" in r.stderr


def test_demo_without_matplotlib_says_what_to_install_up_front(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert cli.main(["demo", "--plot", str(tmp_path / "d.png")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "pip install 'streamgmm[plot]'" in err


def test_demo_figure_marks_warm_up_and_jump_and_names_the_features(tmp_path, monkeypatch):
    import matplotlib.figure

    saved = []
    real_savefig = matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kw):
        saved.append(fig)
        return real_savefig(fig, *args, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    png = tmp_path / "demo.png"
    assert demo.run_demo(n=4000, plot=str(png)) == 0
    scatter, scores = saved[0].axes
    assert "vibration" in scatter.get_title()  # which features the scatter shows, and not
    assert scatter.get_xlabel() == "temperature" and scatter.get_ylabel() == "pressure"
    marks = {t.get_text() for t in scores.texts}
    assert {"end of warm-up", "pressure jump"} <= marks
    saved[0].canvas.draw()
    ticks = [t.get_text() for t in scores.get_yticklabels() if t.get_text()]
    assert ticks and all(t.lstrip("−-").replace(".", "").isdigit() for t in ticks), ticks
    assert png.read_bytes()[:4] == b"\x89PNG"


# -- the shipped example configurations -----------------------------------------------------------


def test_file_config_runs_verbatim_from_the_repository_root(tmp_path):
    # A copy of what the repository ships, so the run writes nowhere in the checkout.
    import shutil

    for name in ("configs", "data"):
        shutil.copytree(os.path.join(ROOT, name), tmp_path / name)
    r = _cli("run", "--config", "configs/file.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    n_lines = len((tmp_path / "data" / "sensors.jsonl").read_text().splitlines())
    scored = (tmp_path / "out" / "scored.jsonl").read_text().splitlines()
    dead = (tmp_path / "out" / "dead.jsonl").read_text().splitlines()
    assert len(dead) == 3 and len(scored) == n_lines - 3 == 2000
    assert any((tmp_path / "out" / "checkpoints").iterdir())


def test_run_on_a_folder_instead_of_a_file_is_one_message(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"a": 1}\n')
    for args, path in (
        (["--input", str(tmp_path), "--output", str(tmp_path / "o.jsonl")], tmp_path),
        (["--input", str(inp), "--output", str(tmp_path)], tmp_path),
    ):
        r = _cli("run", *args, "--log-format", "text")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines()[-1] == f"streamgmm: {path}: Is a directory"


def test_log_lines_go_to_the_current_stderr(monkeypatch):
    # In-process use (tests, notebooks) replaces sys.stderr; a handler bound to the old one
    # wrote "--- Logging error --- I/O operation on closed file" in later runs.
    import io
    import logging

    logger = logging.getLogger("streamgmm")
    saved = logger.handlers[:], logger.level, logger.propagate
    try:
        cli.setup_logging("INFO", "text")
        buf = io.StringIO()
        monkeypatch.setattr(sys, "stderr", buf)
        logging.getLogger("streamgmm.service").info("hello")
        assert "INFO streamgmm.service: hello" in buf.getvalue()
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
