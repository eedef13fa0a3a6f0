"""processing_guarantee exactly_once: configuration, transactions on a real broker."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from _instances import kill_while_producing, owns_partitions
from _kafka import read_all
from kafka import KafkaProducer
from test_reliability_scale_out import _accounted, _expected, _records
from test_service_scope import FEATURES

from streamgmm.service.config import ConfigError, load_config

KAFKA = {
    "kafka": {
        "bootstrap_servers": "localhost:9092",
        "topics": "in",
        "group_id": "g",
        "output_topic": "out",
    },
    "model": {"scope": "partition"},
    "processing_guarantee": "exactly_once",
}


def test_exactly_once_is_accepted_with_kafka_input_and_outputs():
    cfg = load_config(overrides=KAFKA, env={})
    assert cfg.processing_guarantee == "exactly_once"
    default = dict(KAFKA)
    default.pop("processing_guarantee")
    assert load_config(overrides=default, env={}).processing_guarantee == "at_least_once"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            {
                "kafka": {"topics": [], "output_topic": None},
                "input": {"path": "in.jsonl"},
                "model": {"scope": "key"},
                "key_field": "k",
            },
            "input",
        ),
        ({"output": {"path": "out.jsonl"}}, "output"),
        ({"output": {"dead_letter": "dlq.jsonl"}}, "dead_letter"),
        ({"model": {"scope": "global"}}, "model.scope"),
    ],
)
def test_exactly_once_refuses_what_cannot_be_in_a_transaction(change, says):
    over = {k: (dict(v) if isinstance(v, dict) else v) for k, v in KAFKA.items()}
    for k, v in change.items():
        over[k] = {**over.get(k, {}), **v} if isinstance(v, dict) else v
    with pytest.raises(ConfigError, match="exactly_once") as e:
        load_config(overrides=over, env={})
    assert says in str(e.value)


# -- real broker, real processes ------------------------------------------------------------------

PARTITIONS = 6


def _eos_cmd(bootstrap, tin, tout, tdlq, group, ckdir, scope) -> list[str]:
    return [
        sys.executable, "-m", "streamgmm.service.cli", "run",
        "--bootstrap-servers", bootstrap, "--topic", tin, "--output-topic", tout,
        "--dead-letter-topic", tdlq, "--group-id", group,
        "--checkpoint-dir", str(ckdir), "--features", ",".join(FEATURES),
        "--model-scope", scope, "--covariance-type", "diag", "--warm-up", "40", "--no-gate",
        "--checkpoint-every", "150", "--checkpoint-interval", "0.5", "--max-poll-records", "100",
        "--idle-timeout", "60", "--log-format", "text", "--log-level", "INFO",
        "--processing-guarantee", "exactly_once",
    ]  # fmt: skip


EOS_ENV = {
    "STREAMGMM_KAFKA__SESSION_TIMEOUT_MS": "2000",
    # A killed instance's open transaction blocks its partitions until the broker aborts it.
    "STREAMGMM_KAFKA__TRANSACTION_TIMEOUT_MS": "3000",
}


def _start(cmd, log_path, fault=None):
    env = {**os.environ, **EOS_ENV}
    if fault:
        env["SGMM_FAULTS"] = fault
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
    proc.log_path = str(log_path)
    return proc


def _working(proc, timeout=30.0) -> bool:
    """Whether ``proc`` owns partitions, waiting up to ``timeout`` seconds for it."""
    return owns_partitions(proc, timeout)


def _produce(bootstrap, topic, records, pause=1.0):
    prod = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for n, (p, key, value) in enumerate(records):
        prod.send(topic, key=key.encode(), value=value, partition=p)
        if n % 200 == 199:
            prod.flush()
            time.sleep(pause)
    prod.flush()
    prod.close()


def _committed_sources(bootstrap, topics) -> Counter:
    """(partition, offset) of the input of every committed output and dead letter."""
    seen = Counter()
    for t in topics:
        for m in read_all(bootstrap, t, timeout=20, isolation_level="read_committed"):
            src = json.loads(m.value)["source"]
            seen[(src["partition"], src["offset"])] += 1
    return seen


def _stop_all(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.mark.kafka
def test_exactly_once_three_instances_sigkilled_every_input_once(kafka_broker, new_topic, tmp_path):
    """3 instances, 6 partitions, 10+ SIGKILLs (some at the worst moments: state sent but the
    transaction not committed) and one broker restart mid-run, each instance restart with an
    empty checkpoint directory: a read_committed reader finds exactly one output or dead
    letter per input, and every partition's and key's model was given exactly its valid
    records (learned + held back: n_components="auto", the default)."""
    bootstrap = kafka_broker.bootstrap  # the session's own broker: this test restarts it
    tin, tout, tdlq = new_topic(PARTITIONS), new_topic(PARTITIONS), new_topic(PARTITIONS)
    records = _records()[: 2 * 1797]
    scope, group = "key", "g-eos"
    rng = random.Random(5)
    # Besides SIGKILLs from outside, instances kill themselves at the worst moments: state and
    # outputs sent and flushed but the transaction not committed ("commit"), outputs flushed
    # but no state written ("flush"), mid-interval ("produce").
    faults = ["commit:kill@2", "flush:kill@3", "produce:kill@4", "commit:kill@3", None]
    n = 0
    restarted = []

    def start(may_fault=True):
        nonlocal n
        n += 1
        fault = faults[(n - 1) % len(faults)] if may_fault else None
        cmd = _eos_cmd(bootstrap, tin, tout, tdlq, group, tmp_path / f"ck{n}", scope)
        return _start(cmd, tmp_path / f"log{n}.txt", fault)

    def broker_restart(kills):
        # Once, mid-run: every open transaction, fetch and group session meets a broker
        # that goes away (controlled shutdown) and comes back on the same port and data.
        if kills >= 4 and not restarted:
            t0 = time.monotonic()
            kafka_broker.restart()
            restarted.append(time.monotonic() - t0)

    procs = [start() for _ in range(3)]
    producer = threading.Thread(target=_produce, args=(bootstrap, tin, records, 0.6))
    producer.start()
    t_start = time.monotonic()
    try:
        # Victims drawn from all instances, working or not (prefer_working=False), as before:
        # with denser kills (drawing only working ones) and with the armed instances swapped
        # for unarmed ones after the stream, runs on a loaded 2-core machine found one batch
        # (100 inputs) with two committed outputs after an instance's group membership
        # expired: an open exactly_once issue, not this test's to hide or provoke.
        kills, self_kills = kill_while_producing(
            procs, start, _working, producer, rng, 10, (0.1, 1.0), broker_restart,
            prefer_working=False,
        )  # fmt: skip
        want = len(records)
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            for j, p in enumerate(procs):
                if p.poll() is not None:  # a fault point fired after the stream
                    procs[j] = start(may_fault=False)
            seen = _committed_sources(bootstrap, (tout, tdlq))
            if len(seen) >= want:
                break
            time.sleep(1)
    finally:
        _stop_all(procs)
    print(
        f"{kills} kills ({self_kills} at fault points), broker restart {restarted[0]:.1f} s, "
        f"stream done after {time.monotonic() - t_start:.1f} s"
    )
    seen = _committed_sources(bootstrap, (tout, tdlq))
    dups = {k: c for k, c in seen.items() if c > 1}
    assert not dups, f"{len(dups)} inputs with duplicate committed outputs, e.g. {list(dups)[:5]}"
    assert len(seen) == want, f"{want - len(seen)} inputs without output or dead letter"
    assert kills >= 10 and self_kills >= 2 and restarted, (kills, self_kills)
    given, held = _accounted(bootstrap, tin, group)
    print(f"{held} rows held back")
    assert given == _expected(records, scope)


def _learned(bootstrap, tin, group) -> dict:
    """Rows given to each (partition, key) state: learned + held back."""
    return _accounted(bootstrap, tin, group)[0]


@pytest.mark.kafka
def test_failed_transaction_is_aborted_and_the_models_rolled_back(
    kafka_bootstrap, new_topic, monkeypatch
):
    """A checkpoint fails after the state was sent (inside the transaction): the transaction
    is aborted, every model goes back to the last committed state and the consumer to its
    offsets, so the records are learned and output once, not twice or never."""
    from streamgmm.service import faults
    from streamgmm.service.config import load_config
    from streamgmm.service.processor import Processor

    tin, tout, tdlq = new_topic(PARTITIONS), new_topic(PARTITIONS), new_topic(PARTITIONS)
    records = _records()[:1797]
    _produce(kafka_bootstrap, tin, records, pause=0)
    group = "g-eos-abort"
    cfg = load_config(
        overrides={
            "kafka": {
                "bootstrap_servers": kafka_bootstrap,
                "topics": [tin],
                "output_topic": tout,
                "dead_letter_topic": tdlq,
                "group_id": group,
                "max_poll_records": 100,
            },
            "features": FEATURES,
            "model": {"scope": "key", "covariance_type": "diag", "warm_up": 40, "n_components": 3},
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
    seen = _committed_sources(kafka_bootstrap, (tout, tdlq))
    assert max(seen.values()) == 1, "an input has two committed outputs"
    assert len(seen) == len(records)
    assert _learned(kafka_bootstrap, tin, group) == _expected(records, "key")
    # In memory too: the rolled-back models learned the aborted records once, not twice.
    n_valid = sum(v for (p, k), v in _expected(records, "key").items() if k is None)
    assert proc._n_seen() == n_valid


@pytest.mark.kafka
def test_zombie_instance_is_fenced(kafka_bootstrap, new_topic, tmp_path):
    """An instance paused (SIGSTOP) past its session timeout while another takes over its
    partitions cannot commit when resumed (SIGCONT): the group coordinator refuses its offsets
    (stale member, KIP-447) or the broker has aborted its transaction, so its transaction is
    aborted and it rolls back and rejoins, or it is fenced and stops; read_committed consumers
    see every input exactly once."""
    tin, tout, tdlq = new_topic(4), new_topic(4), new_topic(4)
    records = [(p % 4, k, v) for p, k, v in _records()[:1797]]
    group = "g-eos-zombie"

    def cmd(i):
        return _eos_cmd(kafka_bootstrap, tin, tout, tdlq, group, tmp_path / f"ck{i}", "partition")

    producer = threading.Thread(
        target=_produce, args=(kafka_bootstrap, tin, records), kwargs={"pause": 0.7}
    )
    zombie = _start(cmd(1), tmp_path / "zombie.txt")
    procs = [zombie]
    try:
        producer.start()
        _working(zombie)
        time.sleep(2.0)  # inside a transaction with outputs sent
        zombie.send_signal(signal.SIGSTOP)
        heir = _start(cmd(2), tmp_path / "heir.txt")
        procs.append(heir)
        _working(heir)  # after the zombie's session expired
        time.sleep(6.0)  # the heir processes the zombie's partitions
        zombie.send_signal(signal.SIGCONT)
        producer.join()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            seen = _committed_sources(kafka_bootstrap, (tout, tdlq))
            if len(seen) >= len(records):
                break
            time.sleep(2)
    finally:
        if zombie.poll() is None:
            zombie.send_signal(signal.SIGCONT)
        _stop_all(procs)
    log = (tmp_path / "zombie.txt").read_text()
    refused = "transaction failed" in log or "producer was fenced" in log
    assert refused, log[-3000:]
    seen = _committed_sources(kafka_bootstrap, (tout, tdlq))
    assert max(seen.values()) == 1, "a zombie's output became visible beside the heir's"
    assert len(seen) == len(records)
    assert _learned(kafka_bootstrap, tin, group) == _expected(records, "partition")


@pytest.mark.kafka
def test_partitions_lost_abort_the_open_transaction(kafka_bootstrap, new_topic, monkeypatch):
    """Group membership lost (a session timeout) mid-transaction: the open transaction's
    outputs belong to records the partitions' next owner processes again, so they must never
    become visible. Here the loss is reported after three batches and the run then ends with
    its final checkpoint; with the loss not aborting the transaction, that commit (no
    partition left to send offsets for, so no generation check) made all 300 outputs visible
    (seen as one batch output twice in the three-instance kill test)."""
    from streamgmm.service.config import load_config
    from streamgmm.service.processor import Processor
    from streamgmm.service.state import SourcePartition

    tin, tout, tdlq = new_topic(PARTITIONS), new_topic(PARTITIONS), new_topic(PARTITIONS)
    records = _records()[:600]
    _produce(kafka_bootstrap, tin, records, pause=0)
    cfg = load_config(
        overrides={
            "kafka": {
                "bootstrap_servers": kafka_bootstrap,
                "topics": [tin],
                "output_topic": tout,
                "dead_letter_topic": tdlq,
                "group_id": f"g-eos-lost-{tin}",
                "max_poll_records": 100,
            },
            "features": FEATURES,
            "model": {"scope": "key", "covariance_type": "diag", "warm_up": 40, "n_components": 3},
            "gate": {"enabled": False},
            "checkpoint": {"every_records": 100_000, "every_seconds": None},
            "idle_timeout": 3.0,
            "processing_guarantee": "exactly_once",
        },
        env={},
    )
    batches = []
    original = Processor.process_batch

    def process_batch(self, batch):
        original(self, batch)
        batches.append(len(batch))
        if len(batches) == 3:
            lost = sorted(
                SourcePartition.kafka(tp.topic, tp.partition)
                for tp in self.source.consumer.assignment()
            )
            self._on_lost(lost)
            self.stop()

    monkeypatch.setattr(Processor, "process_batch", process_batch)
    proc = Processor(cfg, handle_signals=False)
    proc.run()
    assert sum(batches) >= 100
    assert not _committed_sources(kafka_bootstrap, (tout, tdlq))
    assert proc.aborts == 1
