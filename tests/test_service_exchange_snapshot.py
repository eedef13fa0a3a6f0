"""The model exchange stays bounded: snapshots and trimming (real broker, in-process processors).

Two processors (two consumer groups over two topics of River's Bananas, one exchange topic)
run at the same time, so their increments interleave in the exchange topic. With snapshots on,
a joiner starts from the newest snapshot, reads only the messages after it and gets the model of
a joiner that read the whole topic. With trimming on, the exchange topic's log-start offset
moves, every row is still in the group's model, and a joiner that ignores the snapshots fails
loudly instead of building a wrong model.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from _kafka import read_all
from kafka import KafkaConsumer, TopicPartition
from test_service_group_model import FEATURES, PARTITIONS, _bananas, _produce, _records

from streamgmm.service.config import KafkaConfig, load_config
from streamgmm.service.exchange import ExchangeError, ModelExchange, snapshot_topic
from streamgmm.service.processor import Processor, build_model
from streamgmm.service.state import Slot

pytestmark = pytest.mark.kafka

MODEL = {"n_components": 4, "covariance_type": "full", "warm_up": 200}


def _cfg(bootstrap, tin, group, exchange, **model):
    return load_config(
        overrides={
            "kafka": {
                "bootstrap_servers": bootstrap,
                "topics": [tin],
                "output_topic": tin + "-out",
                "dead_letter_topic": tin + "-out.dlq",
                "group_id": group,
                "max_poll_records": 100,
            },
            "features": FEATURES,
            "model": {**MODEL, "exchange": True, "exchange_topic": exchange, **model},
            "gate": {"enabled": False},
            "checkpoint": {"every_records": 100, "every_seconds": 0.5},
            "idle_timeout": 4.0,
        },
        env={},
    )


def _two_instances(bootstrap, new_topic, **model):
    """Two processors at the same time, each on a topic of its own, one exchange topic.
    Returns (exchange topic, valid rows learned by the group, processors)."""
    X = _bananas()[:2400]
    exchange = new_topic(1) + "-exchange"
    topics, n_valid = [], 0
    for part in (X[:1200], X[1200:]):
        records = _records(part)
        n_valid += sum(b"not a" not in v for _, v in records)
        tin = new_topic(PARTITIONS)
        _produce(bootstrap, tin, records)
        topics.append(tin)
    procs = [
        Processor(_cfg(bootstrap, t, f"g-{t[-8:]}", exchange, **model), handle_signals=False)
        for t in topics
    ]
    errors = []

    def run(p):
        try:
            p.run()
        except BaseException as e:  # reported by the test
            errors.append(e)

    threads = [threading.Thread(target=run, args=(p,)) for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    return exchange, n_valid, procs


def _join(bootstrap, exchange, **kw):
    kcfg = KafkaConfig(bootstrap_servers=bootstrap, topics=["unused"], group_id="joiner")
    cfg = _cfg(bootstrap, "unused", "joiner", exchange)
    slot = Slot(*build_model(cfg))
    ex = ModelExchange(kcfg, exchange, **kw)
    try:
        ex.restore(slot)
    finally:
        ex.close()
    return ex, slot.model


def _offsets(bootstrap, topic):
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    try:
        return c.beginning_offsets([tp])[tp], c.end_offsets([tp])[tp]
    finally:
        c.close()


def test_joiner_from_the_newest_snapshot_gets_the_model_of_reading_everything(
    kafka_bootstrap, new_topic
):
    exchange, n_valid, procs = _two_instances(
        kafka_bootstrap, new_topic, exchange_snapshot_every=2, exchange_trim_after=None
    )
    assert all(p.exchange.snapshots_sent >= 2 for p in procs)
    # A third instance joins (from the newest snapshot) and sends increments, no snapshot.
    records = _records(_bananas()[2400:2800])
    n_valid += sum(b"not a" not in v for _, v in records)
    tin = new_topic(PARTITIONS)
    _produce(kafka_bootstrap, tin, records)
    cfg = _cfg(kafka_bootstrap, tin, f"g-{tin[-8:]}", exchange, exchange_snapshot_every=0)
    third = Processor(cfg, handle_signals=False)
    third.run()
    assert third.exchange.sent >= 2 and third.exchange.snapshots_sent == 0
    start, end = _offsets(kafka_bootstrap, exchange)
    assert start == 0  # nothing trimmed: the whole history can be read for the comparison
    snap, m_snap = _join(kafka_bootstrap, exchange)
    full, m_full = _join(kafka_bootstrap, exchange, from_snapshot=False)
    # The snapshot joiner read only what follows the newest snapshot; the other, everything.
    newest = max(
        int(dict(m.headers)["position"])
        for m in read_all(kafka_bootstrap, snapshot_topic(exchange))
    )
    assert snap.start_offset == newest > 0
    assert snap.read_count == end - newest >= third.exchange.sent
    assert full.start_offset == 0 and full.read_count == end
    print(f"exchange {end} messages; the snapshot joiner read {snap.read_count}")
    # The same model, every valid row of both streams in it once.
    assert m_snap.n_samples_seen_ == m_full.n_samples_seen_ == n_valid
    np.testing.assert_allclose(m_snap.weights_, m_full.weights_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m_snap.means_, m_full.means_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m_snap.covariances_, m_full.covariances_, rtol=1e-9, atol=1e-12)


def test_trimmed_exchange_topic_keeps_the_group_model(kafka_bootstrap, new_topic):
    exchange, n_valid, procs = _two_instances(
        kafka_bootstrap, new_topic, exchange_snapshot_every=2, exchange_trim_after=0
    )
    assert sum(p.exchange.trims for p in procs) >= 1
    start, end = _offsets(kafka_bootstrap, exchange)
    s_start, s_end = _offsets(kafka_bootstrap, snapshot_topic(exchange))
    assert start > 0 and s_start > 0, (start, end, s_start, s_end)
    # The exchange is cut exactly at a kept snapshot's position, never beyond one.
    kept = [
        int(dict(m.headers)["position"])
        for m in read_all(kafka_bootstrap, snapshot_topic(exchange))
    ]
    assert start in kept, (start, kept)
    # The group's model after the trims: every valid row once, the instances' models agree.
    ex, model = _join(kafka_bootstrap, exchange)
    assert ex.start_offset >= start
    assert model.n_samples_seen_ == n_valid
    assert [p.model.n_samples_seen_ for p in procs] == [n_valid] * 2
    test = _bananas()[-800:]
    assert abs(model.score(test) - procs[0].model.score(test)) < 0.01
    # Ignoring the snapshots the increments before the log start are missing: an error.
    with pytest.raises(ExchangeError, match="cannot be rebuilt"):
        _join(kafka_bootstrap, exchange, from_snapshot=False)
