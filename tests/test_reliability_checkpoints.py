"""Damaged, foreign and malicious checkpoints; an unwritable or full checkpoint directory.

Every damaged checkpoint must be detected (zip CRC, SHA-256 checksum, format version or config
fingerprint) and either skipped for the previous good one with a logged error, or refused
clearly — never a silent fresh start (that would learn every record a second time), and never
code run from a checkpoint file.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import os
import shutil
import struct
import subprocess
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fault_injection import cli_command as _cli

from streamgmm.service import faults
from streamgmm.service.checkpoint import (
    CheckpointError,
    CheckpointStore,
    checkpoint_paths,
    latest_checkpoint,
    read_checkpoint,
)
from streamgmm.service.cli import main
from streamgmm.service.config import load_config
from streamgmm.service.processor import Processor

FEATURES = ["a", "b", "c"]
PKG = Path(__file__).resolve().parent.parent / "streamgmm"


def _write_input(path: Path, n: int = 3000, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 3.0], [0.0, 7.0, -4.0]])
    X = centres[rng.integers(0, 3, n)] + rng.standard_normal((n, 3))
    path.write_text("".join(json.dumps(dict(zip(FEATURES, x, strict=True))) + "\n" for x in X))
    return n


def _cfg(tmp_path: Path, **over):
    d = {
        "input": {"path": str(tmp_path / "in.jsonl")},
        "output": {"path": str(tmp_path / "out.jsonl")},
        "features": FEATURES,
        "checkpoint": {"dir": str(tmp_path / "ck"), "every_records": 500, "keep": 3},
        "model": {"n_components": 3, "warm_up": 300, "random_state": 0},
        "gate": {"enabled": False},
        "batch_size": 100,
        "progress": False,
    }
    for k, v in over.items():
        if isinstance(v, dict):
            d.setdefault(k, {}).update(v)
        else:
            d[k] = v
    return load_config(overrides=d, env={})


def _run(tmp_path: Path, **over) -> Processor:
    p = Processor(_cfg(tmp_path, **over), handle_signals=False)
    assert p.run() == 0
    return p


@pytest.fixture
def reference(tmp_path_factory):
    """Output lines and model of one uninterrupted run over the same input."""
    d = tmp_path_factory.mktemp("ref")
    n = _write_input(d / "in.jsonl")
    p = _run(d)
    return n, _outputs(d / "out.jsonl"), p.model


def _outputs(path: Path) -> list[dict]:
    """Output records without the input file's name (the reference run reads another copy)."""
    out = []
    for line in path.read_bytes().splitlines():
        o = json.loads(line)
        o["source"].pop("topic", None)
        o["source"].pop("file", None)
        out.append(o)
    return out


@pytest.fixture
def interrupted(tmp_path):
    """A run stopped after 1800 of 3000 records: three checkpoints kept (1000, 1500, 1800)."""
    _write_input(tmp_path / "in.jsonl")
    _run(tmp_path, max_records=1800)
    paths = checkpoint_paths(tmp_path / "ck")
    assert [read_checkpoint(p).meta["offsets"]["files"] for p in paths][-1]
    assert len(paths) == 3
    return tmp_path, paths


def _resume_and_check(tmp_path, reference, caplog, expect_seq):
    """Resume; the previous good checkpoint must be used, with an error logged, and the result
    must equal the uninterrupted run byte for byte."""
    n, ref_out, ref_model = reference
    with caplog.at_level(logging.ERROR, logger="streamgmm.service.checkpoint"):
        p = Processor(_cfg(tmp_path), handle_signals=False)
    assert p.restored_from is not None and p.restored_from.name == f"ckpt-{expect_seq:012d}.npz"
    assert any("skipping unusable checkpoint" in r.getMessage() for r in caplog.records)
    assert p.run() == 0
    assert p.model.n_samples_seen_ == n  # nothing learned twice, nothing skipped
    assert _outputs(tmp_path / "out.jsonl") == ref_out
    np.testing.assert_array_equal(p.model.means_, ref_model.means_)
    np.testing.assert_array_equal(p.model.covariances_, ref_model.covariances_)


def _file_argv(tmp_path, *extra) -> list[str]:
    """``streamgmm run`` arguments on this module's input, output and checkpoint files."""
    return [
        "run",
        "--input",
        str(tmp_path / "in.jsonl"),
        "--output",
        str(tmp_path / "out.jsonl"),
        "--features",
        "a,b,c",
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--warm-up",
        "300",
        "--no-gate",
        *extra,
    ]


def test_truncated_newest_checkpoint_falls_back_to_previous(interrupted, reference, caplog):
    tmp_path, paths = interrupted
    newest = paths[-1]
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable"):
        read_checkpoint(newest)
    _resume_and_check(tmp_path, reference, caplog, expect_seq=int(paths[-2].stem[5:]))


@pytest.mark.parametrize("content", [b"", b"\x00garbage\xff" * 500], ids=["empty", "garbage"])
def test_zero_length_or_garbage_newest_checkpoint_falls_back(
    interrupted, reference, caplog, content
):
    tmp_path, paths = interrupted
    paths[-1].write_bytes(content)
    _resume_and_check(tmp_path, reference, caplog, expect_seq=int(paths[-2].stem[5:]))


def _member_data_offsets(path: Path) -> list[int]:
    """File offsets of every byte of the zip members' stored data (not the zip's own headers,
    where a flipped timestamp or attribute is harmless and rightly goes unnoticed)."""
    raw = path.read_bytes()
    offsets = []
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            h = info.header_offset  # local header: 30 bytes, then name and extra field
            name_len, extra_len = struct.unpack("<HH", raw[h + 26 : h + 30])
            start = h + 30 + name_len + extra_len
            offsets.extend(range(start, start + info.compress_size))
    return offsets


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_bit_flipped_newest_checkpoint_is_detected(interrupted, reference, caplog, where):
    tmp_path, paths = interrupted
    newest = paths[-1]
    data = bytearray(newest.read_bytes())
    offsets = _member_data_offsets(newest)
    data[offsets[int(len(offsets) * where)]] ^= 0x10
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        read_checkpoint(newest)
    _resume_and_check(tmp_path, reference, caplog, expect_seq=int(paths[-2].stem[5:]))


@pytest.mark.parametrize("stray", ["garbage", "copy-of-oldest"])
def test_stray_file_named_like_a_newer_checkpoint_hides_nothing(
    interrupted, reference, caplog, stray
):
    """A file named like a checkpoint with a huge sequence number (garbage, or a copy of an old
    checkpoint) must neither be taken for the newest state nor hide the ones written after it:
    checkpoints are ordered by the sequence number inside their checksummed metadata."""
    tmp_path, paths = interrupted
    fake = tmp_path / "ck" / "ckpt-999999999999.npz"
    if stray == "garbage":
        fake.write_bytes(b"not a checkpoint " * 200)
    else:
        shutil.copyfile(paths[0], fake)
    _run(tmp_path, max_records=2400)  # continues from 1800, checkpoints after the stray file
    p = Processor(_cfg(tmp_path), handle_signals=False)
    assert p.model.n_samples_seen_ == 2400
    assert p.run() == 0
    n, ref_out, ref_model = reference
    assert p.model.n_samples_seen_ == n
    assert _outputs(tmp_path / "out.jsonl") == ref_out
    np.testing.assert_array_equal(p.model.means_, ref_model.means_)


def _rewrite_npz(path: Path, edit) -> None:
    """Rewrite a checkpoint as a *valid* zip with arrays changed by ``edit(arrays)`` and the
    stored checksum left as it was: only the SHA-256 can notice."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    edit(arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def test_tampered_array_fails_the_checksum(interrupted, reference, caplog):
    tmp_path, paths = interrupted

    def nudge(arrays):
        k = next(k for k in arrays if k.startswith("model.") and arrays[k].dtype.kind == "f")
        arrays[k] = arrays[k].copy()
        arrays[k].flat[0] = np.nextafter(arrays[k].flat[0], np.inf)  # one ulp

    _rewrite_npz(paths[-1], nudge)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        read_checkpoint(paths[-1])
    _resume_and_check(tmp_path, reference, caplog, expect_seq=int(paths[-2].stem[5:]))


def test_unknown_format_version_is_detected(interrupted, reference, caplog):
    tmp_path, paths = interrupted
    # A well-formed checkpoint of a future format: metadata and checksum both consistent.
    ck = read_checkpoint(paths[-1])
    paths[-1].unlink()
    store = CheckpointStore(tmp_path / "ck", keep=10)
    meta = {**ck.meta}
    path = store.save(ck.arrays, meta)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    m = json.loads(arrays["__meta__"].tobytes())
    m["format_version"] = 99
    arrays["__meta__"] = np.frombuffer(json.dumps(m).encode(), dtype=np.uint8)
    from streamgmm.service.checkpoint import _digest

    del arrays["__sha256__"]
    arrays["__sha256__"] = np.frombuffer(_digest(arrays).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="format version 99"):
        read_checkpoint(path)
    _resume_and_check(tmp_path, reference, caplog, expect_seq=int(paths[-2].stem[5:]))


def test_checkpoint_of_another_configuration_is_refused(interrupted, capsys):
    tmp_path, _ = interrupted
    before = {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()}
    out_before = (tmp_path / "out.jsonl").read_bytes()
    with pytest.raises(CheckpointError, match=r"different configuration.*n_components"):
        Processor(_cfg(tmp_path, model={"n_components": 4}), handle_signals=False)
    with pytest.raises(CheckpointError, match="features"):
        Processor(_cfg(tmp_path, features=["a", "b"]), handle_signals=False)
    # the CLI: one clear message, exit code 2, nothing written
    assert main(_file_argv(tmp_path, "--n-components", "4", "--batch-size", "100")) == 2
    err = capsys.readouterr().err
    assert "different configuration" in err and "model.n_components: checkpoint 3" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()} == before
    assert (tmp_path / "out.jsonl").read_bytes() == out_before


def test_every_checkpoint_damaged_is_a_clear_refusal_not_a_fresh_start(interrupted, capsys):
    tmp_path, paths = interrupted
    for p in paths:
        p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"no usable checkpoint.*--fresh"):
        Processor(_cfg(tmp_path), handle_signals=False)
    r = subprocess.run(
        [*_cli(), "inspect", str(tmp_path / "ck"), "--json"], capture_output=True, text=True
    )
    assert r.returncode == 1 and "no usable checkpoint" in r.stderr
    out_before = (tmp_path / "out.jsonl").read_bytes()
    assert main(_file_argv(tmp_path)) == 2
    assert "no usable checkpoint" in capsys.readouterr().err
    assert (tmp_path / "out.jsonl").read_bytes() == out_before
    assert checkpoint_paths(tmp_path / "ck") == paths  # nothing new written


class _Payload:
    """Unpickling this runs ``open(marker, "w")`` — the proof of code execution we look for."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_checkpoint_is_refused_without_running_it(interrupted, reference, caplog):
    tmp_path, paths = interrupted
    marker = tmp_path / f"PWNED-{uuid.uuid4().hex}"
    evil = np.empty(1, dtype=object)
    evil[0] = _Payload(str(marker))
    # Sanity check of the payload itself: a pickle-enabled load does create the marker.
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=evil)
    with np.load(probe, allow_pickle=True) as z:
        z["x"]
    assert marker.exists()
    marker.unlink()
    probe.unlink()
    # A newest "checkpoint" carrying the payload, next to otherwise plausible content.
    ck = read_checkpoint(paths[-1])
    seq = int(paths[-1].stem[5:]) + 1
    newest = tmp_path / "ck" / f"ckpt-{seq:012d}.npz"
    np.savez(newest, **{**ck.arrays, "model.means_": evil})
    with pytest.raises(CheckpointError, match="unreadable"):
        read_checkpoint(newest)
    r = subprocess.run([*_cli(), "inspect", str(newest)], capture_output=True, text=True)
    assert r.returncode == 1 and "unreadable" in r.stderr
    assert not marker.exists()
    _resume_and_check(tmp_path, reference, caplog, expect_seq=int(paths[-1].stem[5:]))
    assert not marker.exists()


_FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "joblib", "dill", "cloudpickle", "shelve"}
_FORBIDDEN_CALLS = {"eval", "exec", "__import__"}


def test_package_has_no_pickle_or_eval_path():
    """Static proof: no module of streamgmm imports a pickle-like serialiser, calls
    eval/exec, or loads numpy files without ``allow_pickle=False``."""
    problems = []
    files = sorted(PKG.rglob("*.py"))
    assert len(files) > 10
    for f in files:
        tree = ast.parse(f.read_text(), filename=str(f))
        for node in ast.walk(tree):
            where = f"{f.relative_to(PKG.parent)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import):
                problems += [
                    f"{where} imports {a.name}"
                    for a in node.names
                    if a.name.split(".")[0] in _FORBIDDEN_MODULES | {"marshal"}
                ]
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.module.split(".")[0] in _FORBIDDEN_MODULES | {"marshal"}:
                    problems.append(f"{where} imports from {node.module}")
            elif isinstance(node, ast.Call):
                fn = node.func
                name = fn.id if isinstance(fn, ast.Name) else getattr(fn, "attr", None)
                if isinstance(fn, ast.Name) and name in _FORBIDDEN_CALLS:
                    problems.append(f"{where} calls {name}()")
                kw = {k.arg: k.value for k in node.keywords}
                ap = kw.get("allow_pickle")
                if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                    problems.append(f"{where} passes allow_pickle other than False")
                if name == "load" and isinstance(fn, ast.Attribute):
                    base = fn.value
                    if isinstance(base, ast.Name) and base.id in ("np", "numpy") and ap is None:
                        problems.append(f"{where} np.load without allow_pickle=False")
    assert not problems, problems


# -- checkpoint directory unwritable / disk full ------------------------------------------------


def test_unwritable_checkpoint_directory_is_a_clear_error_at_start(tmp_path, capsys):
    _write_input(tmp_path / "in.jsonl", n=200)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    argv = [
        "run",
        "--input",
        str(tmp_path / "in.jsonl"),
        "--output",
        str(tmp_path / "out.jsonl"),
        "--features",
        "a,b,c",
        "--checkpoint-dir",
        str(blocker / "ck"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "checkpoint directory" in err and str(blocker / "ck") in err
    assert not (tmp_path / "out.jsonl").exists()


def test_checkpoint_write_failure_keeps_the_last_durable_state(tmp_path, reference):
    """ENOSPC while writing a checkpoint (injected): the run fails with a clear error, the
    half-written file is gone, and a restart resumes from the last durable checkpoint."""
    n, ref_out, _ = reference
    _write_input(tmp_path / "in.jsonl")
    faults.configure("checkpoint_write:enospc@3")
    try:
        p = Processor(_cfg(tmp_path), handle_signals=False)
        with pytest.raises(CheckpointError, match="No space left on device") as ei:
            p.run()
    finally:
        faults.configure(None)
    assert str(tmp_path / "ck") in str(ei.value)
    names = sorted(x.name for x in (tmp_path / "ck").iterdir())
    assert not [x for x in names if x.endswith(".tmp")], names
    assert latest_checkpoint(tmp_path / "ck").meta["n_samples_seen"] == 1000
    p = _run(tmp_path)
    assert p.model.n_samples_seen_ == n
    assert _outputs(tmp_path / "out.jsonl") == ref_out


# -- the same against Kafka, with a real full / read-only filesystem ------------------------------


@contextlib.contextmanager
def _tiny_fs(path: Path, size_kb: int = 256):
    """A real tmpfs of ``size_kb`` at ``path`` (we are root in CI); else None."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    try:
        yield r.returncode == 0
    finally:
        if r.returncode == 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(path: Path) -> None:
    """Fill the file system to the last byte."""
    fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0")
    finally:
        os.close(fd)


def _committed(bootstrap: str, group: str, topic: str) -> dict[str, int]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offs = admin.list_group_offsets({group: None})[group]
    finally:
        admin.close()
    return {
        f"{tp.topic}:{tp.partition}": om.offset
        for tp, om in offs.items()
        if tp.topic == topic and om.offset >= 0
    }


@pytest.mark.kafka
@pytest.mark.parametrize("fault", ["disk_full", "permission_denied"])
def test_kafka_checkpoint_dir_failure_never_commits_past_durable_checkpoint(
    kafka_bootstrap, new_topic, tmp_path, fault
):
    import fault_injection as fi  # scripts/ is on the path (conftest.py)

    tin, tout, tdlq = new_topic(3), new_topic(1), new_topic(1)
    fi.produce(kafka_bootstrap, tin, 60_000, 3, seed=1)
    mnt = tmp_path / "mnt"
    group = f"g-{fault}-{uuid.uuid4().hex[:6]}"
    with _tiny_fs(mnt) as mounted:
        ck = mnt / "ck"
        cmd = fi.run_cmd(kafka_bootstrap, tin, tout, tdlq, group, ck, every=2000)
        env = fi._env(None)
        # Slow the batches down so the stream is still running when the fault strikes.
        env["SGMM_FAULTS"] = "produce:sleep=0.05"
        real = mounted and fault == "disk_full"
        if not real:  # EACCES mid-run cannot be made for root; not root: no tmpfs either
            code = "enospc" if fault == "disk_full" else "eacces"
            env["SGMM_FAULTS"] += f",checkpoint_write:{code}@4"
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + 60
        while len(checkpoint_paths(ck) if ck.exists() else []) < 2:
            assert p.poll() is None, p.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.02)
        if real:
            _fill(mnt)
        _, err = p.communicate(timeout=60)
        err = err.decode()
        assert p.returncode == 1, err[-3000:]
        expect = "No space left on device" if fault == "disk_full" else "Permission denied"
        last_line = err.strip().splitlines()[-1]
        assert last_line.startswith("streamgmm: failed:") and expect in last_line, last_line
        assert str(ck) in last_line
        durable = latest_checkpoint(ck)
        committed = _committed(kafka_bootstrap, group, tin)
        assert committed, "the durable checkpoints were committed"
        kafka_offs = durable.meta["offsets"]["kafka"]
        assert committed == {k: v for k, v in kafka_offs.items() if k in committed}
        assert sum(committed.values()) < 60_000


def test_replay_plan_keeps_each_record_once_from_the_checkpoint_on():
    """Chained journals can hold a batch twice (a replay checkpointed midway), a batch regrouped
    after a rebalance, segments the checkpoint already covers, or a gap: the plan keeps what
    continues exactly from the checkpoint's offsets, each offset once, and stops at a gap."""
    from streamgmm.service.checkpoint import replay_plan

    a, b = ("t", 0), ("t", 1)
    entries = [
        [["t", 0, 0, 100]],  # before the checkpoint: dropped
        [["t", 0, 100, 200], ["t", 1, 50, 80]],
        [["t", 0, 100, 200]],  # the same batch again: dropped
        [["t", 0, 150, 250]],  # straddles: cut to 200..250
        [["t", 1, 80, 90], ["t", 0, 250, 260]],
        [["t", 1, 95, 99]],  # gap after 90: the plan ends here
        [["t", 0, 260, 270]],
    ]
    assert replay_plan(entries, {a: 100, b: 50}) == [
        [["t", 0, 100, 200], ["t", 1, 50, 80]],
        [["t", 0, 200, 250]],
        [["t", 1, 80, 90], ["t", 0, 250, 260]],
    ]
    # A partition the checkpoint does not know starts where its first segment does.
    assert replay_plan([[["u", 3, 7, 9]], [["u", 3, 9, 12]]], {}) == [
        [["u", 3, 7, 9]],
        [["u", 3, 9, 12]],
    ]
    assert replay_plan([[["t", 0, 0, 10]], ["junk"]], {a: 0}) == [[["t", 0, 0, 10]]]
