"""Output encoding and sinks: JSON bytes end to end, stdlib fallbacks, Kafka partition choice and
delivery errors (the Kafka tests run against the real broker of tests/conftest.py)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from _kafka import read_all
from kafka import KafkaProducer

from streamgmm.service.codec import Decoder, encode_dead_letter, encode_outputs
from streamgmm.service.config import KafkaConfig, load_config
from streamgmm.service.processor import Processor
from streamgmm.service.records import RawRecord
from streamgmm.service.sinks import FileSink, KafkaSink, SinkError, make_producer

# -- codec -------------------------------------------------------------------------------------


def _encode(recs, dec, ld=None, proba=None, thr=2.5):
    d = dec.decode_batch(recs)
    n = len(d.rows)
    ld = np.linspace(-3.0, -1.0, n) if ld is None else ld
    proba = np.full((n, 2), 0.5) if proba is None else proba
    return d, encode_outputs(recs, d, ld, proba, thr, -ld > thr, 42)


def test_encode_outputs_bytes_fields_and_nulls():
    recs = [
        RawRecord("t", None, 1, 10, b"k1", b'{"a": 1, "b": 2, "timestamp": 7}', 99),
        RawRecord("t", None, 1, 11, None, b'{"a": 3, "b": 4}', 100),
        RawRecord(None, "in.jsonl", 0, 3, None, '{"a": 5, "b": 6}', None),
    ]
    proba = np.array([[0.25, 0.75], [1.0, 0.0], [0.5, 0.5]])
    ld = np.array([-1.5, np.nan, -np.inf])
    _, out = _encode(recs, Decoder(["a", "b"]), ld, proba[:, ::-1], thr=np.inf)
    assert all(type(b) is bytes for b in out)
    o = [json.loads(b) for b in out]
    assert o[0] == {
        "source": {"topic": "t", "partition": 1, "offset": 10},
        "key": "k1",
        "probabilities": [0.75, 0.25],  # a non-contiguous array is written correctly
        "cluster": 0,
        "log_density": -1.5,
        "score": 1.5,
        "anomaly": False,
        "threshold": None,  # infinite: JSON has no infinity
        "model_version": 42,
        "timestamp": 7,  # the record's own field wins over the Kafka timestamp
    }
    assert o[1]["timestamp"] == 100 and o[1]["key"] is None
    assert o[1]["log_density"] is None and o[1]["score"] is None
    assert o[2]["source"] == {"file": "in.jsonl", "partition": 0, "offset": 3}
    assert "timestamp" not in o[2] and o[2]["score"] is None
    assert b" " not in out[0]  # compact, one line


def test_encode_outputs_falls_back_for_what_orjson_refuses():
    # The stdlib parser reads integers beyond 64 bits; orjson writes none of them.
    big = '{"id": 1234567890123456789012345, "a": 1, "b": 2, "timestamp": 1e400}'
    recs = [
        RawRecord(None, "f", 0, 0, None, big, None),
        RawRecord(None, "f", 0, 1, None, '{"id": "r1", "a": 1, "b": 2}', 5),
        RawRecord(None, "f.csv", 0, 2, None, "raw", None, {"id": "café", "a": "1", "b": "2"}),
    ]
    d, out = _encode(recs, Decoder(["a", "b"], key_field="id"))
    assert d.rows == [0, 1, 2] and not d.dead
    o = [json.loads(b.decode("utf-8")) for b in out]
    assert o[0]["key"] == 1234567890123456789012345 and "timestamp" not in o[0]
    assert o[0]["log_density"] == -3.0 and o[1]["key"] == "r1" and o[1]["timestamp"] == 5
    assert o[2]["key"] == "café"
    assert all(b" " not in b and b"NaN" not in b for b in out)
    assert [x["probabilities"] for x in o] == [[0.5, 0.5]] * 3


def test_dead_letter_is_bytes_and_keeps_file_bytes():
    raw = b'{"a": "\xff"}'.decode("utf-8", "surrogateescape")
    out = encode_dead_letter(RawRecord(None, "f", 0, 4, None, raw, None), "not a number")
    assert type(out) is bytes
    d = json.loads(out.decode("utf-8"))
    assert d["record_encoding"] == "base64" and base64.b64decode(d["record"]) == b'{"a": "\xff"}'
    d = json.loads(encode_dead_letter(RawRecord("t", None, 0, 1, b"k", b"x", 1), "not JSON"))
    assert d == {
        "source": {"topic": "t", "partition": 0, "offset": 1},
        "key": "k",
        "error": "not JSON",
        "record": "x",
    }


def test_file_sink_writes_bytes_lines(tmp_path):
    p = tmp_path / "o.jsonl"
    s = FileSink(str(p))
    s.write(None, [b'{"a":1}', '{"b":"é"}'.encode()])
    s.write(None, [])
    assert s.flush() == p.stat().st_size
    s.close()
    assert p.read_bytes() == b'{"a":1}\n{"b":"\xc3\xa9"}\n'


def test_file_mode_fallbacks_end_to_end(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rng = np.random.default_rng(0)
    lines = [
        json.dumps({"id": f"r{i}", "a": x, "b": y}).encode()
        for i, (x, y) in enumerate(rng.normal(size=(300, 2)))
    ]
    lines[10] = b'{"id": 123456789012345678901234567890, "a": 0.5, "b": 0.25, "timestamp": 1e400}'
    lines[20] = b'{"id": "r\xff", "a": 0.5, "b": 0.25}'  # not UTF-8: a dead letter
    inp.write_bytes(b"\n".join(lines) + b"\n")
    cfg = load_config(
        overrides={
            "input": {"path": str(inp)},
            "output": {"path": str(out)},
            "features": ["a", "b"],
            "key_field": "id",
            "checkpoint": {"dir": str(tmp_path / "ck")},
            "model": {"n_components": 2, "warm_up": 100, "random_state": 0},
            "batch_size": 50,
            "progress": False,
        },
        env={},
    )
    proc = Processor(cfg, handle_signals=False)
    assert proc.run() == 0
    got = out.read_bytes().splitlines()
    assert len(got) == 299 and proc.counts["dead"] == 1
    o = json.loads(got[10])
    assert o["key"] == 123456789012345678901234567890 and "timestamp" not in o
    assert [json.loads(g)["source"]["offset"] for g in got] == [i for i in range(300) if i != 20]
    dead = json.loads((tmp_path / "out.dlq.jsonl").read_bytes().decode("utf-8"))
    assert base64.b64decode(dead["record"]) == lines[20]  # the original bytes, as read


def test_published_threshold_agrees_with_every_flag_on_real_data(tmp_path):
    """``anomaly`` is ``score > threshold`` wherever a threshold is published; during the
    warm-up (the flag also weighs the record's rank) it is null. River's Phishing: 1,250
    records, the default warm-up of 1,000 (88 of wine's 178 records broke the rule)."""
    from river import datasets

    inp, out = tmp_path / "phishing.jsonl", tmp_path / "out.jsonl"
    with open(inp, "w") as f:
        for x, _ in datasets.Phishing():
            f.write(json.dumps({k: float(v) for k, v in x.items()}) + "\n")
    cfg = load_config(
        overrides={
            "input": {"path": str(inp)},
            "output": {"path": str(out)},
            "features": list(next(iter(datasets.Phishing()))[0]),
            "checkpoint": {"dir": str(tmp_path / "ck")},
            "progress": False,
        },
        env={},
    )
    assert Processor(cfg, handle_signals=False).run() == 0
    docs = [json.loads(line) for line in out.read_bytes().splitlines()]
    assert len(docs) == 1250
    published = [d for d in docs if d["threshold"] is not None]
    assert 200 <= len(published) <= 250  # from the end of the warm-up on
    assert all(d["threshold"] is None for d in docs[:1000])
    assert all(d["anomaly"] == (d["score"] > d["threshold"]) for d in published)
    assert sum(d["anomaly"] for d in docs[:1000]) > 0  # the warm-up flags too, by its rule


# -- Kafka -------------------------------------------------------------------------------------


@pytest.mark.kafka
def test_kafka_output_partition_follows_input_partition(
    kafka_bootstrap, kafka_admin, new_topic, tmp_path
):
    tin, tout = new_topic(3), new_topic(3)
    tdlq = f"{tin}.dlq"  # the default dead-letter topic, per input topic (topic_for path)
    kafka_admin.create_topics({tdlq: {"num_partitions": 2, "replication_factor": 1}})
    kafka_admin.wait_for_topics([tdlq], timeout_ms=30_000)
    rng = np.random.default_rng(0)
    p = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    n = 1200
    for i, x in enumerate(rng.normal(size=(n, 2))):
        v = b"not json" if i % 50 == 7 else json.dumps({"a": x[0], "b": x[1]}).encode()
        # every 4th record has no key: its output key is the source coordinates
        p.send(tin, value=v, key=None if i % 4 == 0 else f"k{i}".encode(), partition=i % 3)
    p.flush()
    p.close()
    cfg = load_config(
        overrides={
            "kafka": {
                "bootstrap_servers": kafka_bootstrap,
                "topics": [tin],
                "output_topic": tout,
                "group_id": f"g-{tin}",
                "max_poll_records": 300,
            },
            "features": ["a", "b"],
            "checkpoint": {"dir": str(tmp_path / "ck")},
            "model": {"n_components": 2, "warm_up": 100, "random_state": 0},
            # The topic is complete and far smaller than one fetch (8 MiB per partition): once
            # the first fetch of each partition answered (the idle grace lasts until then), an
            # empty poll means the input is exhausted.
            "idle_timeout": 1.0,
        },
        env={},
    )
    proc = Processor(cfg, handle_signals=False)
    assert proc.run() == 0
    inputs = {(m.partition, m.offset): m for m in read_all(kafka_bootstrap, tin)}
    outs, dead = read_all(kafka_bootstrap, tout), read_all(kafka_bootstrap, tdlq)
    assert len(outs) == n - 24 and len(dead) == 24 and len(inputs) == n
    for m, parts in [(m, 3) for m in outs] + [(m, 2) for m in dead]:
        src = json.loads(m.value)["source"]
        assert src["topic"] == tin
        assert m.partition == src["partition"] % parts
        key = inputs[(src["partition"], src["offset"])].key
        assert m.key == (key or f"{tin}:{src['partition']}:{src['offset']}".encode())
    assert {m.partition for m in outs} == {0, 1, 2} and {m.partition for m in dead} == {0, 1}
    # within a partition, outputs keep the input order
    for part in range(3):
        offs = [json.loads(m.value)["source"]["offset"] for m in outs if m.partition == part]
        assert offs == sorted(offs)


@pytest.mark.kafka
def test_kafka_sink_flush_raises_when_the_broker_rejects(kafka_bootstrap, new_topic):
    small = new_topic(1, {"max.message.bytes": "2000"})
    producer = make_producer(KafkaConfig(bootstrap_servers=kafka_bootstrap))
    try:
        sink = KafkaSink(producer, small)
        recs = [RawRecord("in", None, p, p, None, b"", None) for p in range(3)]
        sink.write(recs[:1], [b"x" * 5000])  # alone in its batch: kafka-python cannot split it
        with pytest.raises(SinkError, match="1 records were not delivered"):
            sink.flush()
        # The failure is reported once; later sends are checked afresh. (kafka-python's
        # idempotent producer treats the rejection as fatal and fails later batches too: either
        # way nothing may be lost silently.)
        sink.write(recs[1:], [b'{"ok":1}', b'{"ok":2}'])
        try:
            sink.flush()
            delivered = [b'{"ok":1}', b'{"ok":2}']
        except SinkError as e:
            assert str(e).startswith("2 records were not delivered")
            delivered = []
    finally:
        producer.close(timeout=10)
    got = [m.value for m in read_all(kafka_bootstrap, small)]
    assert got == delivered
