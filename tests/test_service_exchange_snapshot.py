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


def _cfg(bootstrap, tin, group, exchange, guarantee="at_least_once", **model):
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
            "processing_guarantee": guarantee,
        },
        env={},
    )


def _two_instances(bootstrap, new_topic, guarantee="at_least_once", **model):
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
        Processor(
            _cfg(bootstrap, t, f"g-{t[-8:]}", exchange, guarantee, **model), handle_signals=False
        )
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


def _join(bootstrap, exchange, read_committed=False, **kw):
    kcfg = KafkaConfig(bootstrap_servers=bootstrap, topics=["unused"], group_id="joiner")
    cfg = _cfg(bootstrap, "unused", "joiner", exchange)
    slot = Slot(*build_model(cfg))
    ex = ModelExchange(kcfg, exchange, read_committed=read_committed, **kw)
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
    # A corrupt newest snapshot is skipped (logged), the one before it used.
    from kafka import KafkaProducer

    prod = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    prod.send(snapshot_topic(exchange), b"garbage", headers=[("position", str(end).encode())])
    prod.flush()
    prod.close()
    again, m_again = _join(kafka_bootstrap, exchange)
    assert again.start_offset == newest
    np.testing.assert_allclose(m_again.covariances_, m_full.covariances_, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_trimmed_exchange_topic_keeps_the_group_model(kafka_bootstrap, new_topic, guarantee):
    """Trimming after every snapshot (trim_after=0): instances behind the cut join again
    (exactly_once: the checkpoint's transaction aborts and rolls back; its snapshots are sent
    in the transaction, read read_committed)."""
    eos = guarantee == "exactly_once"
    exchange, n_valid, procs = _two_instances(
        kafka_bootstrap, new_topic, guarantee, exchange_snapshot_every=2, exchange_trim_after=0
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
    ex, model = _join(kafka_bootstrap, exchange, read_committed=eos)
    assert ex.start_offset >= start
    assert model.n_samples_seen_ == n_valid
    assert [p.model.n_samples_seen_ for p in procs] == [n_valid] * 2
    test = _bananas()[-800:]
    assert abs(model.score(test) - procs[0].model.score(test)) < 0.01
    # Ignoring the snapshots the increments before the log start are missing: an error.
    with pytest.raises(ExchangeError, match="cannot be rebuilt"):
        _join(kafka_bootstrap, exchange, read_committed=eos, from_snapshot=False)
    if eos:
        print(f"aborted transactions: {[p.aborts for p in procs]}")


def test_reader_behind_a_trim_joins_again_or_aborts(kafka_bootstrap, new_topic):
    """Records deleted under a reader's position are never skipped silently: an at_least_once
    instance joins again from the newest snapshot (keeping its own increment, sent before the
    read); under exactly_once the tick raises, so the checkpoint's transaction aborts."""
    from streamgmm.service.exchange import ExchangeTrimmed
    from streamgmm.service.sinks import make_producer

    exchange = new_topic(1) + "-exchange"
    kcfg = KafkaConfig(bootstrap_servers=kafka_bootstrap, topics=["unused"], group_id="j")
    cfg = _cfg(kafka_bootstrap, "unused", "j", exchange)
    X = _bananas()
    slots = {name: Slot(*build_model(cfg)) for name in "wre"}
    w = ModelExchange(kcfg, exchange, snapshot_every=1, trim_after=0)
    r = ModelExchange(kcfg, exchange)
    prod = make_producer(kcfg, transactional_id=f"t-{exchange[-8:]}")
    prod.init_transactions()
    prod.begin_transaction()
    e = ModelExchange(kcfg, exchange, producer=prod, read_committed=True)
    rows = iter(np.array_split(X[:1200], 12))

    def learn(name, ex):
        batch = next(rows)
        slots[name].gate.score_and_learn(slots[name].model, batch)
        ex.learned(slots[name], batch)
        ex.tick(slots[name])
        return len(batch)

    try:
        for name, ex in zip("wre", (w, r, e), strict=True):
            ex.restore(slots[name])
        n = learn("w", w) + learn("w", w) + learn("w", w)  # warm-up 200: the base
        r.tick(slots["r"])  # adopts it
        e.idle_tick(slots["e"])
        prod.commit_transaction()
        prod.begin_transaction()
        n += learn("w", w) + learn("w", w)  # snapshots and trims past r's and e's positions
        assert w.trims >= 1 and r.reader.position(r.tp) < _offsets(kafka_bootstrap, exchange)[0]
        before = r.rejoins
        n += learn("r", r)
        assert r.rejoins == before + 1
        assert slots["r"].model.n_samples_seen_ == n
        with pytest.raises(ExchangeTrimmed):
            learn("e", e)
        prod.abort_transaction()
        e.restore(Slot(*build_model(cfg)))  # what the processor's rollback does
        assert e.start_offset > 0
    finally:
        for ex in (w, r, e):
            ex.close()
    _, joined = _join(kafka_bootstrap, exchange)
    assert joined.n_samples_seen_ == n
