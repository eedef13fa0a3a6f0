"""The real Kafka test broker: round trips through it with kafka-python, restart, command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.serializer import DefaultSerializer, JsonSerializer

pytestmark = pytest.mark.kafka

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "kafka_broker.py"
N_RECORDS = 1000


def _produce(bootstrap: str, topic: str, n: int, start: int = 0) -> dict[int, tuple[int, int]]:
    """Send n JSON records (acks=all); return {i: (partition, offset)} from the broker's acks."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        key_serializer=DefaultSerializer(),  # str <-> UTF-8 bytes
        value_serializer=JsonSerializer(),
        linger_ms=5,
    )
    try:
        futures = {
            i: producer.send(topic, key=f"key-{i}", value={"i": i, "x": [i * 0.5, -i]})
            for i in range(start, start + n)
        }
        producer.flush(timeout=30)
        acked = {}
        for i, fut in futures.items():
            meta = fut.get(timeout=30)
            acked[i] = (meta.partition, meta.offset)
        return acked
    finally:
        producer.close(timeout=10)


def _consumer(bootstrap: str, topic: str, group: str) -> KafkaConsumer:
    return KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        key_deserializer=DefaultSerializer(),
        value_deserializer=JsonSerializer(),
        max_poll_records=500,
    )


def _consume(consumer: KafkaConsumer, n: int, timeout_s: float = 60.0) -> list:
    """Poll until n records arrived (committing after every poll) or the deadline passes."""
    records = []
    deadline = time.monotonic() + timeout_s
    while len(records) < n and time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=500)
        for recs in batch.values():
            records.extend(recs)
        if batch:
            consumer.commit()  # synchronous: commits the positions after this batch
    return records


def test_round_trip_1000_json_records_with_manual_commits(kafka_bootstrap, kafka_admin, new_topic):
    topic = new_topic(partitions=3)
    group = f"rt-{uuid.uuid4().hex[:8]}"

    acked = _produce(kafka_bootstrap, topic, N_RECORDS)
    per_partition = defaultdict(list)
    for partition, offset in acked.values():
        per_partition[partition].append(offset)
    # Keys hash onto all three partitions; each partition's offsets are dense from 0.
    assert sorted(per_partition) == [0, 1, 2]
    for offsets in per_partition.values():
        assert sorted(offsets) == list(range(len(offsets)))

    consumer = _consumer(kafka_bootstrap, topic, group)
    try:
        records = _consume(consumer, N_RECORDS)
        assert len(records) == N_RECORDS, f"consumed {len(records)} of {N_RECORDS}"
        # Nothing extra arrives after the last record.
        assert not consumer.poll(timeout_ms=1000)

        seen = {}
        for rec in records:
            i = rec.value["i"]
            assert i not in seen, f"record {i} delivered twice"
            seen[i] = rec
            assert rec.key == f"key-{i}"
            assert rec.value == {"i": i, "x": [i * 0.5, -i]}
            assert (rec.partition, rec.offset) == acked[i]
        assert sorted(seen) == list(range(N_RECORDS))
        # Within a partition, records come back in offset order.
        for partition in range(3):
            offsets = [r.offset for r in records if r.partition == partition]
            assert offsets == sorted(offsets)

        end = consumer.end_offsets([TopicPartition(topic, p) for p in range(3)])
        assert sum(end.values()) == N_RECORDS
        for tp, end_offset in end.items():
            assert end_offset == len(per_partition[tp.partition])
            assert consumer.committed(tp) == end_offset
    finally:
        consumer.close()

    # The broker's view of the group's commits, through the admin API.
    committed = kafka_admin.list_group_offsets({group: None})[group]
    assert {tp.partition: om.offset for tp, om in committed.items()} == {
        tp.partition: off for tp, off in end.items()
    }

    # A new member of the same group resumes at the commits: nothing is redelivered.
    again = _consumer(kafka_bootstrap, topic, group)
    try:
        deadline = time.monotonic() + 30
        redelivered = []
        while not again.assignment() and time.monotonic() < deadline:
            for recs in again.poll(timeout_ms=300).values():
                redelivered.extend(recs)
        assert len(again.assignment()) == 3
        for recs in again.poll(timeout_ms=500).values():
            redelivered.extend(recs)
        assert redelivered == []
        for tp, end_offset in end.items():
            assert again.position(tp) == end_offset
    finally:
        again.close()


def test_fixture_reports_live_broker(kafka_bootstrap, kafka_admin, new_topic):
    host, port = kafka_bootstrap.rsplit(":", 1)
    cluster = kafka_admin.describe_cluster()
    assert [(b["host"], b["port"]) for b in cluster["brokers"]] == [(host, int(port))]

    topic = new_topic(partitions=2)
    assert topic in kafka_admin.list_topics()
    (described,) = kafka_admin.describe_topics([topic])
    assert described["error_code"] == 0
    assert sorted(p["partition_index"] for p in described["partitions"]) == [0, 1]
    assert all(p["leader_id"] >= 0 for p in described["partitions"])


def test_restart_keeps_port_data_and_committed_offsets(kafka_broker, new_topic):
    from kafka import KafkaAdminClient

    topic = new_topic(partitions=2)
    group = f"restart-{uuid.uuid4().hex[:8]}"
    _produce(kafka_broker.bootstrap, topic, 50)
    consumer = _consumer(kafka_broker.bootstrap, topic, group)
    try:
        assert len(_consume(consumer, 50)) == 50
    finally:
        consumer.close()

    old_pid, old_port = kafka_broker.pid, kafka_broker.port
    kafka_broker.restart()
    assert kafka_broker.alive()
    assert kafka_broker.pid != old_pid
    assert kafka_broker.port == old_port
    assert old_pid not in _broker_pids()

    # Records and the group's commits survived; new records go on from there.
    _produce(kafka_broker.bootstrap, topic, 20, start=50)
    consumer = _consumer(kafka_broker.bootstrap, topic, group)
    try:
        records = _consume(consumer, 20)
    finally:
        consumer.close()
    assert sorted(r.value["i"] for r in records) == list(range(50, 70))
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    try:
        committed = admin.list_group_offsets({group: None})[group]
    finally:
        admin.close()
    assert sum(om.offset for om in committed.values()) == 70


def _broker_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "kafka.Kafka"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def test_command_line_start_status_stop_leaves_no_process(tmp_path):
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=150
        )

    data_dir = tmp_path / "broker"
    started = cli("start", "--data-dir", str(data_dir))
    assert started.returncode == 0, started.stderr
    (line,) = started.stdout.splitlines()
    assert line.startswith("KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:")
    state = next(
        json.loads(p.read_text())
        for p in (SCRIPT.parent.parent / ".kafka" / "state").glob("*.json")
        if json.loads(p.read_text())["data_dir"] == str(data_dir.resolve())
    )
    pid = state["pid"]
    try:
        assert pid in _broker_pids()
        assert line == f"KAFKA_BOOTSTRAP_SERVERS={state['bootstrap']}"
        assert (data_dir / "kafka-logs" / "meta.properties").exists()

        status = cli("status")
        assert status.returncode == 0
        assert f"pid {pid} {state['bootstrap']}" in status.stdout
    finally:
        # Select by data dir: a plain `stop` would also stop this session's own broker.
        stopped = cli("stop", "--data-dir", str(data_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert pid not in _broker_pids()
    assert f"pid {pid}" not in cli("status").stdout
    # A --data-dir given by the user is kept (only folders the script created are removed).
    assert (data_dir / "kafka-logs" / "meta.properties").exists()


def test_bootstrap_servers_uses_the_given_broker_else_starts_and_stops_its_own(monkeypatch):
    """The dev scripts' helper: $KAFKA_BOOTSTRAP_SERVERS starts nothing; without it the block
    gets a broker of its own that serves requests and is gone after the block, even when the
    block raises."""
    import kafka_broker  # scripts/ is on the path (conftest.py)
    from kafka import KafkaAdminClient

    def recorded() -> set[int]:  # this checkout's brokers (other checkouts' are not counted)
        return {b.pid for b in kafka_broker.recorded_brokers()}

    before = recorded()
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    with kafka_broker.bootstrap_servers() as bootstrap:
        assert bootstrap == "127.0.0.1:1"
        assert recorded() == before

    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS")
    with (
        pytest.raises(RuntimeError, match="inside the block"),
        kafka_broker.bootstrap_servers() as bootstrap,
    ):
        (own,) = [b for b in kafka_broker.recorded_brokers() if b.bootstrap == bootstrap]
        assert own.pid not in before and own.alive() and own.owner_pid == os.getpid()
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            (broker,) = admin.describe_cluster()["brokers"]
        finally:
            admin.close()
        assert f"{broker['host']}:{broker['port']}" == bootstrap
        raise RuntimeError("inside the block")
    assert not own.alive()
    assert own.pid not in _broker_pids()
    assert own.pid not in recorded()
