"""The compacted changelog topic that holds per-partition / per-key state (real broker)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from _kafka import read_all
from kafka.admin import ConfigResource, ConfigResourceType
from test_service_scope import _counts, _expected, _kafka_cfg, _produce_keyed

from streamgmm import OnlineGaussianMixture
from streamgmm.anomaly import AnomalyGate
from streamgmm.service.changelog import CHUNK_BYTES, Changelog, changelog_topic
from streamgmm.service.config import load_config
from streamgmm.service.processor import Processor
from streamgmm.service.state import SourcePartition, StateKey, decode_slot, encode_slot

pytestmark = pytest.mark.kafka


def _changelog(bootstrap, tin, group):
    from streamgmm.service.sinks import make_producer

    cfg = load_config(
        overrides={
            "kafka": {
                "bootstrap_servers": bootstrap,
                "topics": [tin],
                "output_topic": "unused",
                "group_id": group,
            }
        },
        env={},
    )
    return Changelog(cfg.kafka, make_producer(cfg.kafka))


def test_changelog_topic_is_compacted_and_co_partitioned(kafka_bootstrap, new_topic, kafka_admin):
    tin = new_topic(4)
    cl = _changelog(kafka_bootstrap, tin, "g-compact")
    name = changelog_topic("g-compact", tin)
    assert cl.topics == {tin: name}
    assert len(cl.producer.partitions_for(name)) == 4
    res = kafka_admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    assert res["topic"][name]["cleanup.policy"]["value"] == "compact"
    cl.close()
    cl.producer.close()


def test_large_state_is_chunked_and_restored_bit_for_bit(kafka_bootstrap, new_topic):
    """Full covariance, K=10, D=100 (~1.6 MB: beyond Kafka's 1 MiB message limit)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 100)) @ rng.normal(size=(100, 100)) * 0.1
    model = OnlineGaussianMixture(10, covariance_type="full", warm_up=2500, random_state=0)
    model.partial_fit(X)
    gate = AnomalyGate()
    gate.score_and_learn(model, X[:100])
    blob = encode_slot(model, gate)
    assert len(blob) > 2 * CHUNK_BYTES
    tin = new_topic(2)
    cl = _changelog(kafka_bootstrap, tin, "g-large")
    sp = SourcePartition.kafka(tin, 1)
    sk = StateKey(sp, "machine-7")
    cl.write(sp, [(sk, blob)], 1234)
    cl.flush()
    cl.write(sp, [(sk, blob)], 2345)  # a second version: the first one's chunks tombstoned
    cl.flush()
    msgs = read_all(kafka_bootstrap, changelog_topic("g-large", tin))
    assert max(len(m.value) for m in msgs if m.value) <= CHUNK_BYTES
    assert sum(1 for m in msgs if m.value is None) >= 3  # the replaced chunks
    fresh = _changelog(kafka_bootstrap, tin, "g-large")
    got = fresh.restore([sp, SourcePartition.kafka(tin, 0)])
    assert got[sp].offset == 2345 and got[sp].seq == 2
    assert got[sp].states[sk] == (blob, 2345)
    assert got[SourcePartition.kafka(tin, 0)].offset is None  # never written
    m2, _, _ = decode_slot(got[sp].states[sk][0])
    np.testing.assert_array_equal(m2.covariances_, model.covariances_)
    for c in (cl, fresh):
        c.close()
        c.producer.close()


def test_states_written_beyond_their_partition_record_learn_nothing_twice(
    kafka_bootstrap, new_topic, tmp_path
):
    """A crash after a checkpoint's state messages but before its partition record: the
    restored states have learned past the offset the partition resumes from. The records in
    between are scored (outputs repeat) but not learned again."""
    tin, tout = new_topic(3), new_topic(3)
    per_key, per_part = _produce_keyed(kafka_bootstrap, tin, 3)
    group = "g-ahead"
    cfg = _kafka_cfg(kafka_bootstrap, tin, tout, group, tmp_path / "ck", "key")
    assert Processor(cfg, handle_signals=False).run() == 0
    # Rewind every partition record to an older offset: as if the last checkpoint's state
    # messages were written and the process died before its partition record.
    cl = _changelog(kafka_bootstrap, tin, group)
    restored = cl.restore([SourcePartition.kafka(tin, p) for p in range(3)])
    for sp, ps in restored.items():
        assert ps.offset is not None and ps.offset > 300
        cl.write(sp, [], ps.offset - 300)
    cl.flush()
    cl.close()
    cl.producer.close()
    again = Processor(cfg, handle_signals=False)
    assert again.run() == 0
    assert _counts(again.states) == _expected(per_key, per_part, "key")
    # Outputs: one per valid record, plus a repeat of each valid record that was replayed.
    msgs = read_all(kafka_bootstrap, tin)
    end = Counter()
    for m in msgs:
        end[m.partition] = max(end[m.partition], m.offset + 1)
    replayed = [m for m in msgs if m.offset >= end[m.partition] - 300 and b"oops" not in m.value]
    assert len(read_all(kafka_bootstrap, tout)) == sum(per_part.values()) + len(replayed)
