"""Helpers shared by the tests that talk to the real broker."""

from __future__ import annotations

import time

from kafka import KafkaConsumer, TopicPartition


def read_all(
    bootstrap: str, topic: str, timeout: float = 30.0, isolation_level: str = "read_uncommitted"
) -> list:
    """Every record of ``topic`` now, from the beginning of each partition (no group);
    ``read_committed``: only committed transactions' records, up to the last stable offset."""
    c = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation_level
    )
    tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    end = c.end_offsets(tps)
    out, deadline = [], time.monotonic() + timeout
    while any(c.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
        for msgs in c.poll(timeout_ms=500).values():
            out.extend(msgs)
    c.close()
    return out
