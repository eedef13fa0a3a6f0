"""One model across a consumer group (global scope, --model-exchange): real broker, real processes.

Three ``streamgmm run`` instances share a 6-partition topic of River's Bananas (2 features,
two interleaved banana shapes: not a Gaussian mixture) with some invalid records. Each learns
from its own partitions and they exchange increments through the exchange topic. After the
stream every instance's model has learned every valid record once (n_samples_seen), the
instances agree with each other, and each is within 0.02 nats/sample of held-out
log-likelihood of one learner that started from the group's base and saw the rest of the stream
(and within the order noise of an independent instance). A joiner that reads the exchange topic
gets the same model.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import numpy as np
import pytest
from _instances import kill_while_producing, owns_partitions
from _kafka import read_all
from river import datasets

from streamgmm import OnlineGaussianMixture
from streamgmm.service.checkpoint import CheckpointStore
from streamgmm.service.config import KafkaConfig, load_config
from streamgmm.service.exchange import ModelExchange, exchange_topic
from streamgmm.service.processor import Processor, build_model, model_from_checkpoint
from streamgmm.service.state import Slot

pytestmark = pytest.mark.kafka

PARTITIONS = 6
FEATURES = ["x1", "x2"]
MODEL = ["--n-components", "5", "--covariance-type", "full", "--warm-up", "200"]
# Instances agree within this held-out log-likelihood (nats/sample) and mean difference (in
# feature standard deviations): the merge rule's second-order error, largest in the first
# exchanges after the base, when the steps are large (measured 0.0002-0.004 and 0.02-0.044).
AGREE_LL, AGREE_MEANS = 0.005, 0.1
# ... and each is this close to one learner that saw everything (the target).
MATCH_LL = 0.02
# One learner's held-out log-likelihood moves by up to this with the order of the records alone:
# its warm-up's 200 rows pick the local optimum online EM then stays near (Bananas, K=5, full,
# 30 orders of the valid stream: -2.684 to -2.638, range 0.046; 6 orders had shown 0.025, and
# CI then saw an independent instance 0.055 above the group's base). The allowance against an
# independent instance; the 0.02 target itself is asserted against a learner from the base.
ORDER_NOISE = 0.05


def _bananas():
    X = np.array([list(x.values()) for x, _ in datasets.Bananas()], dtype=float)
    return X[np.random.default_rng(3).permutation(len(X))]


def _records(X):
    """(partition, value) of the stream: every row, round robin, 1 in 101 made invalid."""
    out = []
    for i, x in enumerate(X):
        value = json.dumps(dict(zip(FEATURES, x.tolist(), strict=True))).encode()
        if i % 101 == 50:
            value = b'{"x1": "not a number", "x2": 1}'
        out.append((i % PARTITIONS, value))
    return out


def _cmd(bootstrap, tin, tout, group, ckdir, extra=()):
    return [
        sys.executable, "-m", "streamgmm.service.cli", "run",
        "--bootstrap-servers", bootstrap, "--topic", tin, "--output-topic", tout,
        "--dead-letter-topic", tout + ".dlq", "--group-id", group,
        "--checkpoint-dir", str(ckdir), "--features", ",".join(FEATURES),
        "--model-scope", "global", "--model-exchange", *MODEL, "--no-gate",
        "--checkpoint-every", "300", "--checkpoint-interval", "1", "--max-poll-records", "100",
        "--idle-timeout", "10", "--log-format", "text", "--log-level", "INFO", *extra,
    ]  # fmt: skip


def _start_one(bootstrap, tin, tout, group, tmp_path, i, extra=()):
    env = {**os.environ, "STREAMGMM_KAFKA__SESSION_TIMEOUT_MS": "6000"}
    log = open(tmp_path / f"log{i}.txt", "w")  # noqa: SIM115 - closed with the process
    p = subprocess.Popen(
        _cmd(bootstrap, tin, tout, group, tmp_path / f"ck{i}", extra),
        env=env,
        stdout=log,
        stderr=log,
    )
    p.log_path = log.name
    p.ckdir = tmp_path / f"ck{i}"
    return p


def _owning(procs, timeout=40):
    """Until every instance owns partitions since its last revocation."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = [_text(p.log_path) for p in procs]
        if all("partitions assigned: ['" in t for t in logs) and all(
            t.rfind("partitions assigned: ['") > t.rfind("partitions revoked") for t in logs
        ):
            return
        time.sleep(0.3)
    raise AssertionError(f"the group did not settle within {timeout} s: {logs}")


def _start_group(bootstrap, tin, tout, group, tmp_path, n, extra=()):
    procs = [_start_one(bootstrap, tin, tout, group, tmp_path, i, extra) for i in range(n)]
    try:
        _owning(procs, timeout=15)  # every instance owns partitions before the records come
    except AssertionError:
        # Seen on this broker with kafka-python, with or without the exchange: a member that
        # joined with the others now and then never gets an assignment. Restart such members
        # (before any record: nothing to lose) and wait again.
        for i, p in enumerate(procs):
            if "partitions assigned: ['" not in _text(p.log_path):
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=60)
                procs[i] = _start_one(bootstrap, tin, tout, group, tmp_path, 10 + i, extra)
        _owning(procs)
    return procs


def _text(path) -> str:
    with open(path) as f:
        return f.read()


def _produce(bootstrap, tin, records, at=None, then=None):
    """Every record, over ~5 s (several exchanges while the stream flows); ``then()`` once
    ``at`` records are out."""
    from kafka import KafkaProducer

    prod = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for n, (p, value) in enumerate(records):
        prod.send(tin, value=value, partition=p)
        if n % 500 == 499:
            prod.flush()
            time.sleep(0.5)
        if n + 1 == at:
            prod.flush()
            then()
    prod.flush()
    prod.close()


def _wait(procs, tmp_path, timeout=90):
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    logs = [_text(p.log_path) for p in procs]
    for p, text in zip(procs, logs, strict=True):
        assert p.returncode == 0, text[-3000:]
    return logs


def _from_the_base(bootstrap, tin, group, records, stream):
    """The group's base (the first base message of the exchange topic), then every valid
    record it has not learned (those before the positions sent with it), in stream order."""
    from streamgmm.persistence import decode_state
    from streamgmm.service.exchange import EXCHANGE_FORMAT_VERSION

    for msg in read_all(bootstrap, exchange_topic(group, tin)):
        arrays, meta = decode_state(msg.value, accept_versions=(EXCHANGE_FORMAT_VERSION,))
        if meta["type"] == "base":
            break
    model = OnlineGaussianMixture.from_state(arrays, meta["model_meta"])
    learned = {int(label.rsplit(":", 1)[1]): o for label, o in meta["positions"].items()}
    offsets = Counter()
    rest = []
    for (p, value), x in zip(records, stream, strict=True):
        off, offsets[p] = offsets[p], offsets[p] + 1
        if off >= learned.get(p, 0) and b"not a" not in value:
            rest.append(x)
    rest = np.array(rest)
    for i in range(0, len(rest), 100):
        model.partial_fit(rest[i : i + 100])
    return model


def _one_instance(bootstrap, tin, tout, group, n_records):
    """One instance (in this process) that learns the whole stream (``n_records``, all in
    the topic already: it stops at the last one rather than idling out): the reference."""
    cfg = load_config(
        overrides={
            "kafka": {
                "bootstrap_servers": bootstrap,
                "topics": [tin],
                "output_topic": tout + "-ref",
                "dead_letter_topic": tout + "-ref.dlq",
                "group_id": group + "-ref",
                "max_poll_records": 100,
            },
            "features": FEATURES,
            "model": {"n_components": 5, "covariance_type": "full", "warm_up": 200},
            "gate": {"enabled": False},
            "max_records": n_records,
            "idle_timeout": 2.0,
        },
        env={},
    )
    ref = Processor(cfg, handle_signals=False)
    ref.run()
    return ref.model


def test_three_instances_share_one_model(kafka_bootstrap, new_topic, tmp_path):
    X = _bananas()
    test, stream = X[:800], X[800:]
    records = _records(stream)
    valid = np.array([x for x, (_, v) in zip(stream, records, strict=True) if b"not a" not in v])
    tin, tout = new_topic(PARTITIONS), new_topic(PARTITIONS)
    group = f"g-exchange-{tin[-8:]}"
    t0 = time.monotonic()
    procs = _start_group(kafka_bootstrap, tin, tout, group, tmp_path, 3)
    left = []

    def leave_and_join():
        # One instance leaves mid-stream (SIGTERM: it finishes its batch, sends its last
        # increment, commits) and a new one joins with an empty checkpoint directory: it reads
        # the group's model from the exchange topic and continues from the committed offsets.
        procs[2].send_signal(signal.SIGTERM)
        procs[2].wait(timeout=60)
        left.append(procs[2])
        procs[2] = _start_one(kafka_bootstrap, tin, tout, group, tmp_path, 3)
        _owning(procs)

    _produce(kafka_bootstrap, tin, records, at=2000, then=leave_and_join)
    logs = _wait(procs, tmp_path)
    elapsed = time.monotonic() - t0
    assert left[0].returncode == 0
    assert "joined base" in logs[2], logs[2][-2000:]

    models = []
    for p in procs:
        ck = CheckpointStore(p.ckdir, 3).load_latest()
        models.append(model_from_checkpoint(ck)[0])
    assert all("model exchange" in t for t in logs)
    assert sum("base candidate" in t for t in [*logs, _text(left[0].log_path)]) >= 1
    # Every instance read its own share of the stream (not one doing it all).
    n_in = [
        int(re.search(r"run summary: (\d+) records in", t).group(1))
        for t in [*logs, _text(left[0].log_path)]
    ]
    assert min(n_in) > 0 and sum(n_in) >= len(records), n_in
    seen = [m.n_samples_seen_ for m in models]
    assert seen == [len(valid)] * 3, (seen, len(valid))

    # The reference: one learner that starts from the group's base and learns every other
    # valid record in stream order. (An independent single instance, below, also differs by
    # its own warm-up: see ORDER_NOISE.)
    ref = _from_the_base(kafka_bootstrap, tin, group, records, stream)
    assert ref.n_samples_seen_ == len(valid)
    alone = _one_instance(kafka_bootstrap, tin, tout, group, len(records))
    assert alone.n_samples_seen_ == len(valid)
    ll = np.array([m.score(test) for m in models])
    ll_ref, ll_alone = ref.score(test), alone.score(test)
    spread = stream.std(axis=0)
    means_diff = max(
        float(np.abs((a.means_ - b.means_) / spread).max()) for a in models for b in models
    )
    print(
        f"held-out ll {ll} vs one learner from the base {ll_ref:.4f}, one instance alone "
        f"{ll_alone:.4f}; means differ by {means_diff:.4f} sd; group {elapsed:.1f} s"
    )
    assert np.ptp(ll) < AGREE_LL
    assert means_diff < AGREE_MEANS
    assert np.abs(ll - ll_ref).max() < MATCH_LL
    assert np.abs(ll - ll_alone).max() < ORDER_NOISE + MATCH_LL

    # A joiner reads the exchange topic: the group's model, every valid record in it.
    kcfg = KafkaConfig(bootstrap_servers=kafka_bootstrap, topics=[tin], group_id=group)
    cfg = load_config(
        overrides={
            "kafka": {**kcfg.model_dump(), "output_topic": tout},
            "model": {"n_components": 5, "covariance_type": "full", "warm_up": 200},
            "gate": {"enabled": False},  # as the instances: rows messages are learned ungated
        },
        env={},
    )
    slot = Slot(*build_model(cfg))
    ex = ModelExchange(kcfg, exchange_topic(group, tin))
    try:
        ex.restore(slot)
    finally:
        ex.close()
    assert slot.model.n_samples_seen_ == len(valid)
    assert abs(slot.model.score(test) - ll.mean()) < AGREE_LL


def _committed_sources(bootstrap, topics) -> Counter:
    seen = Counter()
    for t in topics:
        for m in read_all(bootstrap, t, timeout=20, isolation_level="read_committed"):
            src = json.loads(m.value)["source"]
            seen[(src["partition"], src["offset"])] += 1
    return seen


def test_exactly_once_group_model_sigkilled_learns_every_record_once(
    kafka_bootstrap, new_topic, tmp_path
):
    """exactly_once with the model exchange: increments commit with the outputs and offsets.
    Instances are SIGKILLed (once inside the transaction: increment sent, not committed) and
    restarted with empty checkpoint directories: a read_committed reader finds exactly one
    output or dead letter per input, and the group's model (read from the exchange topic)
    learned exactly the valid records. Kills start once the group's base is decided: a
    candidate that loses the base race keeps its warm-up rows in memory until its next
    checkpoint (see exchange.py)."""
    X = _bananas()[:3000]
    records = _records(X)
    n_valid = sum(b"not a" not in v for _, v in records)
    tin, tout = new_topic(PARTITIONS), new_topic(PARTITIONS)
    tdlq = tout + ".dlq"
    group = f"g-exchange-eos-{tin[-8:]}"
    env = {
        **os.environ,
        "STREAMGMM_KAFKA__SESSION_TIMEOUT_MS": "3000",
        "STREAMGMM_KAFKA__TRANSACTION_TIMEOUT_MS": "4000",
    }
    extra = ["--processing-guarantee", "exactly_once", "--idle-timeout", "60",
             "--checkpoint-interval", "0.5"]  # fmt: skip
    n = 0

    def start(fault=None):
        nonlocal n
        n += 1
        log = open(tmp_path / f"log{n}.txt", "w")  # noqa: SIM115 - closed with the process
        penv = {**env, "SGMM_FAULTS": fault} if fault else env
        cmd = _cmd(kafka_bootstrap, tin, tout, group, tmp_path / f"ck{n}", extra)
        p = subprocess.Popen(cmd, env=penv, stdout=log, stderr=log)
        p.log_path = log.name
        return p

    def working(proc, timeout=30.0) -> bool:
        return owns_partitions(proc, timeout, also="model exchange: ")

    procs = [start() for _ in range(3)]
    base_decided = threading.Event()

    def produce():
        from kafka import KafkaProducer

        prod = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
        for i, (p, value) in enumerate(records):
            prod.send(tin, value=value, partition=p)
            if i % 300 == 299:
                prod.flush()
                if i >= 899 and not base_decided.is_set():  # ~300 rows each: warmed up
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline and not any(
                        "is the group's" in _text(q.log_path) for q in procs
                    ):
                        time.sleep(0.2)
                    base_decided.set()
                time.sleep(1.0)
        prod.flush()
        prod.close()

    producer = threading.Thread(target=produce)
    producer.start()
    t0 = time.monotonic()
    try:
        base_decided.wait(60)
        # One instance kills itself inside a transaction (increment sent, not committed).
        procs[0].kill()
        procs[0].wait()
        procs[0] = start("commit:kill@2")
        kills, _ = kill_while_producing(
            procs, start, working, producer, random.Random(3), min_kills=3, pause=(0.5, 2.0)
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            for j, p in enumerate(procs):
                if p.poll() is not None:
                    procs[j] = start()
            seen = _committed_sources(kafka_bootstrap, (tout, tdlq))
            if len(seen) >= len(records):
                break
            time.sleep(1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    print(f"{kills + 1} kills, {time.monotonic() - t0:.1f} s")
    seen = _committed_sources(kafka_bootstrap, (tout, tdlq))
    dups = {k: c for k, c in seen.items() if c > 1}
    assert not dups, f"{len(dups)} inputs with duplicate committed outputs"
    assert len(seen) == len(records), f"{len(records) - len(seen)} inputs without output"
    kcfg = KafkaConfig(bootstrap_servers=kafka_bootstrap, topics=[tin], group_id=group)
    cfg = load_config(
        overrides={
            "kafka": {**kcfg.model_dump(), "output_topic": tout},
            "gate": {"enabled": False},  # as the instances: rows messages are learned ungated
        },
        env={},
    )
    slot = Slot(*build_model(cfg))
    ex = ModelExchange(kcfg, exchange_topic(group, tin), read_committed=True)
    try:
        ex.restore(slot)
    finally:
        ex.close()
    assert slot.model.n_samples_seen_ == n_valid


def test_exactly_once_group_model_failed_transaction_is_rolled_back(kafka_bootstrap, new_topic):
    """A checkpoint fails after the increment was sent (inside the transaction): aborted, the
    model is read again from the exchange topic and the input resumes at the committed offsets,
    so every record is output once and learned once (in memory and in the topic)."""
    from streamgmm.service import faults

    X = _bananas()[:1500]
    records = _records(X)
    n_valid = sum(b"not a" not in v for _, v in records)
    tin, tout = new_topic(PARTITIONS), new_topic(PARTITIONS)
    _produce(kafka_bootstrap, tin, records)
    group = f"g-exchange-abort-{tin[-8:]}"
    cfg = load_config(
        overrides={
            "kafka": {
                "bootstrap_servers": kafka_bootstrap,
                "topics": [tin],
                "output_topic": tout,
                "dead_letter_topic": tout + ".dlq",
                "group_id": group,
                "max_poll_records": 100,
            },
            "features": FEATURES,
            "model": {"n_components": 5, "warm_up": 200, "exchange": True},
            "gate": {"enabled": False},
            "checkpoint": {"every_records": 300, "every_seconds": None},
            "idle_timeout": 3.0,
            "processing_guarantee": "exactly_once",
        },
        env={},
    )
    faults.configure("commit:enospc@3")  # the third transaction fails before its commit
    try:
        proc = Processor(cfg, handle_signals=False)
        proc.run()
    finally:
        faults.configure(None)
    assert proc.aborts == 1 and proc.transactions >= 3
    seen = _committed_sources(kafka_bootstrap, (tout, tout + ".dlq"))
    assert max(seen.values()) == 1 and len(seen) == len(records)
    assert proc.model.n_samples_seen_ == n_valid
    kcfg = KafkaConfig(bootstrap_servers=kafka_bootstrap, topics=[tin], group_id=group)
    slot = Slot(*build_model(cfg))
    ex = ModelExchange(kcfg, exchange_topic(group, tin), read_committed=True)
    try:
        ex.restore(slot)
    finally:
        ex.close()
    assert slot.model.n_samples_seen_ == n_valid


@pytest.mark.parametrize(
    ("over", "says"),
    [
        ({"processing_guarantee": "exactly_once"}, "model exchange"),
        ({"model": {"exchange": True, "scope": "key"}}, "model.exchange"),
    ],
)
def test_config_refuses_global_exactly_once_without_exchange_and_exchange_off_global(over, says):
    from streamgmm.service.config import ConfigError

    base = {
        "kafka": {
            "bootstrap_servers": "x:1",
            "topics": ["in"],
            "output_topic": "out",
            "group_id": "g",
        },
    }
    with pytest.raises(ConfigError, match=says):
        load_config(overrides={**base, **over}, env={})
    ok = load_config(
        overrides={**base, "processing_guarantee": "exactly_once", "model": {"exchange": True}},
        env={},
    )
    assert ok.model.exchange and "exchange" not in ok.model.estimator_params()


def test_a_candidate_that_loses_the_base_race_and_dies_loses_no_rows(kafka_bootstrap, new_topic):
    """exactly_once: A's base is in A's open transaction when B reads the exchange, so B sends a
    candidate too, commits it and dies before its next checkpoint, never having seen A's base.
    A commits: A's base is the group's. The rows B learned since its last rows message must
    still reach the group: they go out with the candidacy (the group's model had 450 of 600
    rows when they were only in B's losing base)."""
    from streamgmm.service.sinks import make_producer

    X = _bananas()[:600]
    tin = new_topic(1)
    kcfg = KafkaConfig(bootstrap_servers=kafka_bootstrap, topics=[tin], group_id=f"g-race-{tin}")
    cfg = load_config(
        overrides={
            "kafka": {**kcfg.model_dump(), "output_topic": tin + "-out"},
            "model": {"n_components": 3, "covariance_type": "full", "warm_up": 200},
            "gate": {"enabled": False},
        },
        env={},
    )
    topic = exchange_topic(kcfg.group_id, tin)
    instances = []
    for name in ("a", "b"):
        producer = make_producer(kcfg, transactional_id=f"{tin}-{name}")
        producer.init_transactions()
        ex = ModelExchange(kcfg, topic, producer=producer, read_committed=True)
        slot = Slot(*build_model(cfg))
        ex.restore(slot)  # joins: no base yet
        instances.append((ex, slot, producer))
    (a, a_slot, a_prod), (b, b_slot, b_prod) = instances

    def learn(ex, slot, rows):
        slot.model.partial_fit(rows)
        ex.learned(slot, rows)

    def checkpoint(ex, slot, producer, commit=True):
        producer.begin_transaction()
        ex.tick(slot)
        if commit:
            producer.commit_transaction()
        else:  # in the log, in the open transaction (the client may hold it back otherwise:
            producer.flush()  # B's candidacy then came first, on a loaded machine)

    try:
        learn(b, b_slot, X[:150])
        checkpoint(b, b_slot, b_prod)  # B warms up: its rows go out as a rows message
        learn(a, a_slot, X[300:600])
        learn(b, b_slot, X[150:300])  # B's warm-up ends: a candidate at its next checkpoint
        checkpoint(a, a_slot, a_prod, commit=False)  # A's base, in A's open transaction
        checkpoint(b, b_slot, b_prod)  # B cannot see it: B's candidacy, committed
        assert a.base_id != b.base_id and not b.confirmed
        b.close()  # B dies before its next checkpoint
        a_prod.commit_transaction()  # A's base, first in the topic, is the group's
    finally:
        a.close()
        b.close()
        a_prod.close()
        b_prod.close()
    joiner_slot = Slot(*build_model(cfg))
    joiner = ModelExchange(kcfg, topic, read_committed=True)
    try:
        joiner.restore(joiner_slot)
    finally:
        joiner.close()
    assert joiner.base_id == a.base_id
    assert joiner_slot.model.n_samples_seen_ == 600
