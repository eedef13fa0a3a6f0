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
            "--idle-timeout", "1.5", "--log-format", "text",
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


# -- the cache follows the checkpoints: a SIGKILLed instance restarts from it ------------------


def _cli(bootstrap, tin, tout, ckdir, idle, faults=None):
    """``streamgmm run`` on ``tin`` (scope key, a checkpoint every 50 records or second).

    The runs read topics produced before they start, far smaller than one fetch (8 MiB per
    partition): once the first fetch of each partition has answered (idle time counts only
    from then: the idle grace), an empty poll means the input is exhausted, so a short
    ``idle`` (1.5 s) cannot cut a run short."""
    import os
    import sys

    from test_service_scope import FEATURES

    cmd = [
        sys.executable, "-m", "streamgmm.service.cli", "run",
        "--bootstrap-servers", bootstrap, "--topic", tin, "--output-topic", tout,
        "--dead-letter-topic", tout + ".dlq", "--group-id", "g-" + tin,
        "--checkpoint-dir", str(ckdir), "--features", ",".join(FEATURES),
        "--model-scope", "key", "--n-components", "1", "--covariance-type", "diag",
        "--warm-up", "40", "--no-gate", "--checkpoint-every", "50",
        "--checkpoint-interval", "1", "--max-poll-records", "50",
        "--idle-timeout", str(idle), "--log-format", "text",
    ]  # fmt: skip
    env = {**os.environ, "STREAMGMM_KAFKA__SESSION_TIMEOUT_MS": "3000"}
    env.pop("SGMM_FAULTS", None)
    if faults:
        env["SGMM_FAULTS"] = faults
    return cmd, env


def _from_cache(stderr: str) -> tuple[set, list[int]]:
    """Partitions restored from the local cache, and changelog messages read, per assignment."""
    import re

    found = re.findall(
        r"\((\d+) changelog messages read; from the local cache: \[([^\]]*)\]", stderr
    )
    labels = {x.strip(" '") for _, group in found for x in group.split(",") if x.strip()}
    return labels, [int(n) for n, _ in found]


def _check_delivery(bootstrap, tout, n_valid, n_invalid, exact: bool) -> None:
    import json

    outs = [json.loads(m.value)["source"] for m in read_all(bootstrap, tout)]
    seen = {(s["partition"], s["offset"]) for s in outs}
    assert len(seen) == n_valid, (len(seen), n_valid)
    if exact:  # nothing replayed: no output twice
        assert len(outs) == n_valid
    assert len(read_all(bootstrap, tout + ".dlq")) >= n_invalid


def test_after_a_sigkill_the_restart_restores_from_the_cache(kafka_bootstrap, new_topic, tmp_path):
    """No graceful stop: the instance is SIGKILLed once its checkpoints are done; the cache
    written after them is the newest copy, so the restart reads only the changelog's tail, and
    its models learn the next records exactly once."""
    import subprocess
    import time

    from kafka import KafkaConsumer, TopicPartition

    from streamgmm.service.changelog_cache import LocalCache
    from streamgmm.service.state import SourcePartition

    tin, tout = new_topic(2), new_topic(2)
    k1, p1 = _produce_keyed(kafka_bootstrap, tin, 2)
    c = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    ends = c.end_offsets([TopicPartition(tin, p) for p in (0, 1)])
    c.close()
    sps = [SourcePartition.kafka(tin, p) for p in (0, 1)]
    cmd, env = _cli(kafka_bootstrap, tin, tout, tmp_path / "a", idle=120)
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline, cached = time.monotonic() + 120, {}
        while time.monotonic() < deadline and proc.poll() is None:
            for sp in sps:
                try:
                    ps = LocalCache(tmp_path / "a").load(sp)
                except Exception:  # caught between a base and its deltas' removal: again
                    ps = None
                cached[sp] = None if ps is None else ps.offset
            if all(cached[sp] == ends[TopicPartition(tin, sp.partition)] for sp in sps):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"the cache never caught up with the input: {cached}, {ends}")
    finally:
        proc.kill()  # SIGKILL: no graceful stop, no final checkpoint
        first_err = proc.communicate()[1]
    assert proc.returncode == -9
    assert "run summary" not in first_err  # it did not stop gracefully

    k2, p2 = _produce_keyed(kafka_bootstrap, tin, 2)
    cmd, env = _cli(kafka_bootstrap, tin, tout, tmp_path / "a", idle=1.5)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]
    labels, read = _from_cache(again.stderr)
    assert labels == {sp.label for sp in sps}, again.stderr[-3000:]
    n_changelog = len(read_all(kafka_bootstrap, f"g-{tin}-{tin}-state"))
    assert sum(read) < n_changelog / 10, (read, n_changelog)

    # Every key's model learned each valid record once: those before the kill (restored from
    # the cache) and those after it (learned by the restarted instance), no more.
    check = _run(_cfg(kafka_bootstrap, tin, f"g-{tin}", tmp_path / "check"))
    assert _counts(check.states) == _expected(k1 + k2, p1 + p2, "key")
    n_valid = sum((p1 + p2).values())
    _check_delivery(kafka_bootstrap, tout, n_valid, 2 * 1797 - n_valid, exact=True)


def test_a_cache_one_checkpoint_behind_after_a_crash_is_not_used(
    kafka_bootstrap, new_topic, tmp_path
):
    """SIGKILL between a checkpoint's changelog write and its cache copy: the cache is one
    write behind the changelog. Used, it would seek back to its older offsets and process that
    checkpoint's records again (duplicate outputs of records whose state is in Kafka; in
    exactly_once, duplicates in committed output). It must be recognised as stale and the
    changelog read instead: every record then has exactly one output."""
    import subprocess

    tin, tout = new_topic(2), new_topic(2)
    k1, p1 = _produce_keyed(kafka_bootstrap, tin, 2)
    # Killed at the 8th checkpoint's "commit" point: changelog written, cache not yet.
    cmd, env = _cli(kafka_bootstrap, tin, tout, tmp_path / "a", idle=60, faults="commit:kill@8")
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert first.returncode == -9, first.stderr[-3000:]
    cmd, env = _cli(kafka_bootstrap, tin, tout, tmp_path / "a", idle=1.5)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]
    n_valid = sum(p1.values())
    # The kill came after the outputs and the changelog write: the changelog's offsets are
    # past every flushed output, so nothing is processed twice.
    _check_delivery(kafka_bootstrap, tout, n_valid, 1797 - n_valid, exact=True)
    check = _run(_cfg(kafka_bootstrap, tin, f"g-{tin}", tmp_path / "check"))
    assert _counts(check.states) == _expected(k1, p1, "key")
    assert "is stale" in again.stderr, again.stderr[-3000:]
    labels, _ = _from_cache(again.stderr)
    assert len(labels) < 2  # at least the partition written last came from the changelog
