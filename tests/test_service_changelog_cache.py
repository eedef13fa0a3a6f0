"""Changelog mode: the checkpoint directory as a cache of the changelog, and ``--fresh``.

Real broker, real Processor runs one after another in one consumer group (scope ``key``,
scikit-learn's digits keyed by label)."""

from __future__ import annotations

import logging

import pytest
from _kafka import read_all
from test_service_scope import _counts, _expected, _kafka_cfg, _produce_keyed

from streamgmm.service.processor import Processor

pytestmark = pytest.mark.kafka


def _run(cfg):
    proc = Processor(cfg, handle_signals=False)
    proc.run()
    return proc


def _cfg(bootstrap, tin, group, ckdir, fresh=False):
    cfg = _kafka_cfg(bootstrap, tin, tin + "-out", group, ckdir, "key")
    # Frequent checkpoints: a changelog of many writes, whose whole read the cache saves.
    ck = cfg.checkpoint.model_copy(update={"every_records": 50})
    kafka = cfg.kafka.model_copy(update={"max_poll_records": 50})
    return cfg.model_copy(update={"fresh": fresh, "checkpoint": ck, "kafka": kafka})


def test_a_newer_local_copy_is_used_and_a_stale_one_ignored(
    kafka_bootstrap, new_topic, tmp_path, caplog
):
    tin = new_topic(2)
    group = "g-cache"
    k1, p1 = _produce_keyed(kafka_bootstrap, tin, 2)
    first = _run(_cfg(kafka_bootstrap, tin, group, tmp_path / "a"))
    assert _counts(first.states) == _expected(k1, p1, "key")
    full = first.changelog.messages_read  # 0: nothing to restore at the start
    blobs = {sk: blob for sk, blob in first.states.encoded()}

    # Restart on the same directory: the cache holds the newest write, so only the
    # changelog's tail is read, and the states are the ones written, bit for bit.
    caplog.set_level(logging.INFO, logger="streamgmm.service")
    again = _run(_cfg(kafka_bootstrap, tin, group, tmp_path / "a"))
    assert "from the local cache: ['" in caplog.text
    n_changelog = len(read_all(kafka_bootstrap, f"{group}-{tin}-state"))
    assert again.changelog.messages_read < n_changelog / 3, (
        again.changelog.messages_read,
        n_changelog,
    )
    assert {sk: blob for sk, blob in again.states.encoded()} == blobs
    assert full == 0

    # Another instance (another machine: empty directory) moves the partitions on; the first
    # directory's copy is now stale and must be ignored: a restore from it would learn the
    # second batch twice.
    k2, p2 = _produce_keyed(kafka_bootstrap, tin, 2)
    _run(_cfg(kafka_bootstrap, tin, group, tmp_path / "b"))
    caplog.clear()
    last = _run(_cfg(kafka_bootstrap, tin, group, tmp_path / "a"))
    # The stale copy would seek back to where it was and process the second batch again
    # (duplicate outputs); the changelog's newest states continue where the other instance
    # stopped: nothing is left to process.
    assert last.summary()["records_in"] == 0
    assert _counts(last.states) == _expected(k1 + k2, p1 + p2, "key")
    assert "local state cache of" in caplog.text and "is stale" in caplog.text
    assert "from the local cache: []" in caplog.text


def test_fresh_tombstones_the_changelog_states_and_starts_new(
    kafka_bootstrap, new_topic, tmp_path, caplog
):
    tin = new_topic(2)
    group = "g-fresh"
    _produce_keyed(kafka_bootstrap, tin, 2)
    _run(_cfg(kafka_bootstrap, tin, group, tmp_path / "a"))
    k2, p2 = _produce_keyed(kafka_bootstrap, tin, 2)
    caplog.set_level(logging.INFO, logger="streamgmm.service")
    fresh = _run(_cfg(kafka_bootstrap, tin, group, tmp_path / "a", fresh=True))
    # Not restored: the models learned only what came after the group's committed offsets.
    assert _counts(fresh.states) == _expected(k2, p2, "key")
    assert "--fresh:" in caplog.text and "tombstoned" in caplog.text
    # The old states are gone from the changelog: a later instance restores the new ones.
    later = _run(_cfg(kafka_bootstrap, tin, group, tmp_path / "c"))
    assert _counts(later.states) == _expected(k2, p2, "key")


def test_a_replay_after_a_crash_repeats_the_outputs_byte_for_byte(
    kafka_bootstrap, new_topic, tmp_path
):
    """at_least_once, scope partition: an instance killed after flushing outputs but before
    writing its state; the next instance (empty directory, another batch size) replays those
    batches from the changelog's batch journal, so every duplicate output is the same bytes."""
    import json
    import os
    import subprocess
    import sys

    from test_service_scope import FEATURES

    tin, tout = new_topic(3), new_topic(3)
    _produce_keyed(kafka_bootstrap, tin, 3)

    def run(ckdir, max_poll, fault=None):
        cmd = [
            sys.executable, "-m", "streamgmm.service.cli", "run",
            "--bootstrap-servers", kafka_bootstrap, "--topic", tin, "--output-topic", tout,
            "--dead-letter-topic", tout + ".dlq", "--group-id", "g-replay",
            "--checkpoint-dir", str(ckdir), "--features", ",".join(FEATURES),
            "--model-scope", "partition", "--covariance-type", "diag", "--warm-up", "40",
            "--no-gate", "--checkpoint-every", "300", "--max-poll-records", str(max_poll),
            "--idle-timeout", "3", "--log-format", "text",
        ]  # fmt: skip
        env = {**os.environ, "STREAMGMM_KAFKA__SESSION_TIMEOUT_MS": "3000"}
        if fault:
            env["SGMM_FAULTS"] = fault
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)

    first = run(tmp_path / "a", 50, "flush:kill@3")  # outputs flushed, state not written
    assert first.returncode != 0, first.stderr[-2000:]
    second = run(tmp_path / "b", 37)
    assert second.returncode == 0, second.stderr[-2000:]
    copies: dict[tuple, set] = {}
    for m in read_all(kafka_bootstrap, tout):
        src = json.loads(m.value)["source"]
        copies.setdefault((src["partition"], src["offset"]), set()).add(m.value)
    differ = {k: v for k, v in copies.items() if len(v) > 1}
    assert not differ, f"{len(differ)} inputs with differing duplicate outputs"
    outputs = len(read_all(kafka_bootstrap, tout))
    assert outputs > len(copies), "the crash left no duplicate outputs: nothing was replayed"
    assert "journaled batches" in second.stderr
