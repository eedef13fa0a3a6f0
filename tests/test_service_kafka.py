"""The stream processor against a real Apache Kafka broker (tests/conftest.py starts it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from _kafka import read_all
from fault_injection import cli_command as _cli
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CoordinatorNotAvailableError

from streamgmm.service.checkpoint import latest_checkpoint
from streamgmm.service.config import load_config
from streamgmm.service.processor import Processor

pytestmark = pytest.mark.kafka

BAD = [
    b"not json",
    b"[1,2,3]",
    b'{"a": 1, "b": 2}',
    b'{"a": "x", "b": 1, "c": 2}',
    b'{"a": NaN, "b": 1, "c": 2}',
    b'{"a": 1e400, "b": 1, "c": 2}',
]


def _run_cmd(bootstrap, tin, tout, tdlq, group, ckdir, *extra) -> list[str]:
    """``streamgmm run`` on Kafka with the settings these tests share, plus ``extra`` flags."""
    return [
        *_cli(),
        "run",
        "--bootstrap-servers",
        bootstrap,
        "--topic",
        tin,
        "--output-topic",
        tout,
        "--dead-letter-topic",
        tdlq,
        "--group-id",
        group,
        "--checkpoint-dir",
        str(ckdir),
        "--features",
        "a,b,c",
        "--warm-up",
        "300",
        "--no-gate",
        *extra,
    ]


def _produce(bootstrap, topic, n, seed=0, bad_every=None, start=0):
    """n records round-robin over partitions; every ``bad_every``-th is invalid. Returns the
    number of valid records."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 3.0], [0.0, 7.0, -4.0]])
    X = centres[rng.integers(0, 3, n)] + rng.standard_normal((n, 3))
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    valid = 0
    for i, x in enumerate(X):
        if bad_every and i % bad_every == bad_every - 1:
            v = BAD[(i // bad_every) % len(BAD)]
        else:
            v = json.dumps({"a": x[0], "b": x[1], "c": x[2]}).encode()
            valid += 1
        p.send(topic, value=v, key=f"k{start + i}".encode())
    p.flush()
    p.close()
    return valid


def _coords(records):
    return [
        (
            json.loads(m.value)["source"]["topic"],
            json.loads(m.value)["source"]["partition"],
            json.loads(m.value)["source"]["offset"],
        )
        for m in records
    ]


def _cfg(bootstrap, tin, tout, tdlq, group, ckdir, **over):
    d = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topics": [tin],
            "output_topic": tout,
            "dead_letter_topic": tdlq,
            "group_id": group,
            "max_poll_records": 500,
        },
        "features": ["a", "b", "c"],
        "checkpoint": {"dir": str(ckdir), "every_records": 1000},
        "model": {"n_components": 3, "warm_up": 300, "random_state": 0},
        "gate": {"enabled": False},  # so that every valid record is learned exactly once
        "idle_timeout": 2.0,
    }
    for k, v in over.items():
        if isinstance(v, dict):
            d.setdefault(k, {}).update(v)
        else:
            d[k] = v
    return load_config(overrides=d, env={})


def _input_coords(topic, bootstrap):
    return sorted((m.topic, m.partition, m.offset) for m in read_all(bootstrap, topic))


def test_kafka_one_output_or_dead_letter_per_input(kafka_bootstrap, new_topic, tmp_path):
    tin, tout, tdlq = new_topic(3), new_topic(2), new_topic(1)
    valid = _produce(kafka_bootstrap, tin, 3000, bad_every=100)
    proc = Processor(
        _cfg(kafka_bootstrap, tin, tout, tdlq, "g-one", tmp_path / "ck"), handle_signals=False
    )
    assert proc.run() == 0
    outs, dead = read_all(kafka_bootstrap, tout), read_all(kafka_bootstrap, tdlq)
    assert len(outs) == valid == 2970 and len(dead) == 30
    assert sorted(_coords(outs) + _coords(dead)) == _input_coords(tin, kafka_bootstrap)
    o = json.loads(outs[-1].value)
    assert o["key"] == outs[-1].key.decode() and o["key"].startswith("k")
    assert abs(sum(o["probabilities"]) - 1) < 1e-9 and isinstance(o["timestamp"], int)
    d = json.loads(dead[0].value)
    assert d["error"] and d["record"].encode() in BAD
    assert proc.model.n_samples_seen_ == valid
    meta = latest_checkpoint(tmp_path / "ck").meta
    assert sum(meta["offsets"]["kafka"].values()) == 3000
    # offsets were committed for the group after the checkpoint
    c = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id="g-one")
    committed = {p: c.committed(TopicPartition(tin, p)) for p in range(3)}
    c.close()
    assert {f"{tin}:{p}": o for p, o in committed.items()} == meta["offsets"]["kafka"]


def test_kafka_stop_restart_resumes_without_relearning(kafka_bootstrap, new_topic, tmp_path):
    tin, tout, tdlq = new_topic(2), new_topic(1), new_topic(1)
    valid = _produce(kafka_bootstrap, tin, 2000, bad_every=50)
    ck = tmp_path / "ck"
    p1 = Processor(
        _cfg(kafka_bootstrap, tin, tout, tdlq, "g-rs", ck, max_records=900), handle_signals=False
    )
    assert p1.run() == 0
    first = p1.counts["in"]
    assert 900 <= first < 2000
    valid += _produce(kafka_bootstrap, tin, 1000, seed=1, bad_every=50, start=2000)
    p2 = Processor(_cfg(kafka_bootstrap, tin, tout, tdlq, "g-rs", ck), handle_signals=False)
    assert p2.restored_from is not None
    assert p2.run() == 0
    assert p2.model.n_samples_seen_ == valid  # nothing learned twice, nothing skipped
    outs, dead = read_all(kafka_bootstrap, tout), read_all(kafka_bootstrap, tdlq)
    assert sorted(_coords(outs) + _coords(dead)) == _input_coords(tin, kafka_bootstrap)


def test_kafka_sigterm_mid_stream(kafka_bootstrap, new_topic, tmp_path):
    tin, tout, tdlq = new_topic(2), new_topic(1), new_topic(1)
    valid = _produce(kafka_bootstrap, tin, 30000, bad_every=1000)
    ck = tmp_path / "ck"
    cmd = _run_cmd(
        kafka_bootstrap, tin, tout, tdlq, "g-term", ck,
        "--checkpoint-every", "2000", "--max-poll-records", "200", "--idle-timeout", "3",
    )  # fmt: skip
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 60
    while not list(ck.glob("ckpt-*.npz")) and time.monotonic() < end:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    meta = latest_checkpoint(ck).meta
    done = sum(meta["offsets"]["kafka"].values())
    assert 0 < done < 30000, "SIGTERM should arrive mid-stream"
    assert len(read_all(kafka_bootstrap, tout)) + len(read_all(kafka_bootstrap, tdlq)) == done
    # The resumed run stops at the topic's last record rather than idling out: --max-records
    # counts the records in across restarts (as the checkpoint has them), so a resume that read
    # records again would stop short and leave inputs without output, besides learning twice.
    until_end = [*cmd, "--max-records", "30000"]
    r = subprocess.run(until_end, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "max_records=30000 reached" in r.stderr, r.stderr[-2000:]
    meta = latest_checkpoint(ck).meta
    assert meta["n_samples_seen"] == valid
    outs, dead = read_all(kafka_bootstrap, tout), read_all(kafka_bootstrap, tdlq)
    assert sorted(_coords(outs) + _coords(dead)) == _input_coords(tin, kafka_bootstrap)


def _wait_for_members(admin, group, n, timeout=60.0):
    """Until the group is stable with n members that all hold partitions."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            g = admin.describe_groups([group]).get(group) or {}
        except CoordinatorNotAvailableError:  # a fresh broker still creating __consumer_offsets
            time.sleep(0.2)
            continue
        members = g.get("members") or []
        if (
            g.get("group_state") == "Stable"
            and len(members) == n
            and all(m.get("member_assignment") for m in members)
        ):
            return
        time.sleep(0.1)
    raise AssertionError(f"group {group} did not reach {n} members with partitions")


def test_kafka_two_instances_split_partitions(kafka_bootstrap, kafka_admin, new_topic, tmp_path):
    tin, tout, tdlq = new_topic(4), new_topic(2), new_topic(1)
    valid = _produce(kafka_bootstrap, tin, 15000, bad_every=200)
    procs = []
    for i in range(2):
        # No idle timeout: the instances run until the test has seen every input answered and
        # stops them (SIGTERM: flush, checkpoint, commit), so no instance leaves early on a
        # loaded machine and the test does not sit out an idle timeout on a quiet one.
        cmd = _run_cmd(
            kafka_bootstrap, tin, tout, tdlq, "g-two", tmp_path / f"ck{i}",
            "--max-poll-records", "100",
        )  # fmt: skip
        procs.append(
            subprocess.Popen(
                cmd,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "STREAMGMM_LOG_FORMAT": "text"},
            )
        )
    # The second half arrives once both instances share the partitions: a fast first instance
    # could otherwise drain the topic before the second one has even started.
    _wait_for_members(kafka_admin, "g-two", 2)
    valid += _produce(kafka_bootstrap, tin, 15000, seed=1, bad_every=200, start=15000)
    inputs = _input_coords(tin, kafka_bootstrap)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        answered = _coords(read_all(kafka_bootstrap, tout)) + _coords(
            read_all(kafka_bootstrap, tdlq)
        )
        if len(set(answered)) >= len(inputs) or any(p.poll() is not None for p in procs):
            break
        time.sleep(0.5)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    metas = [latest_checkpoint(tmp_path / f"ck{i}").meta for i in range(2)]
    # both instances worked, on different partitions at the end (an instance keeps the offsets
    # of the partitions it released, listed as such, to resume correctly if they come back)
    assert all(m["n_samples_seen"] > 0 for m in metas)
    owned = [set(m["offsets"]["kafka"]) - set(m["released"]) for m in metas]
    assert owned[0] and owned[1] and not owned[0] & owned[1]
    outs, dead = read_all(kafka_bootstrap, tout), read_all(kafka_bootstrap, tdlq)
    got = _coords(outs) + _coords(dead)
    assert sorted(set(got)) == inputs  # nothing lost
    # a rebalance replays at most what was in flight, never learned twice by one model
    assert sum(m["n_samples_seen"] for m in metas) <= valid + (len(got) - len(set(got)))


def test_kafka_consumes_topics_compressed_by_the_java_producer(kafka_bootstrap, tmp_path):
    """Records compressed with each codec (gzip, snappy, lz4, zstd, interleaved in one topic)
    by Kafka's own Java producer — a client other than kafka-python: its codec implementations,
    its batch framing — are all processed."""
    import fault_injection  # scripts/ is on the path (conftest.py)

    codecs = "gzip,snappy,lz4,zstd"
    f = fault_injection.compressed_topic(kafka_bootstrap, tmp_path, codecs, records=2000)
    log = (tmp_path / "codecs.log").read_text(errors="replace")
    assert f["sent"] == 2000
    assert f["returncode"] == 0, log[-3000:]
    assert f["outputs"] == 2000 and f["dead_letters"] == 0 and f["lost"] == 0, f
    assert f["n_samples_seen"] == 2000
