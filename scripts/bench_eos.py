#!/usr/bin/env python
"""Throughput of processing_guarantee exactly_once vs at_least_once vs a bare kafka-python pipe.

One process, one broker, the same input topic (K=5, D=10 JSON records, several partitions) for
every run: the bare consume->produce pipe of ``bench_kafka.py`` (the floor), then the processor
with model scope ``partition`` in ``at_least_once`` and ``exactly_once`` at each commit interval
(``checkpoint.every_seconds``; one Kafka transaction per interval in exactly_once).  Reports
records/s and the exactly_once / at_least_once ratio per interval (target >= 0.7 at <= 1 s).

    python scripts/bench_eos.py [--n 30000] [--partitions 4] [--intervals 0.5,1,5] [--rounds 1]

Uses $KAFKA_BOOTSTRAP_SERVERS if set, else starts a broker and stops it at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_kafka as bk  # noqa: E402

from streamgmm.service.config import load_config  # noqa: E402
from streamgmm.service.processor import Processor  # noqa: E402


def run_processor(bootstrap, tin, n, guarantee, interval) -> float:
    tout = f"eos-out-{uuid.uuid4().hex[:6]}"
    cfg = load_config(
        overrides={
            "kafka": {
                "bootstrap_servers": bootstrap,
                "topics": [tin],
                "output_topic": tout,
                "dead_letter_topic": tout + ".dlq",
                "group_id": f"eos-{uuid.uuid4().hex[:6]}",
                "max_poll_records": bk.MAX_POLL,
                "linger_ms": bk.LINGER,
                "producer_batch_size": bk.BATCH_BYTES,
            },
            "features": bk.FEATURES,
            "model": {"n_components": bk.K, "random_state": 0, "scope": "partition"},
            "checkpoint": {"every_records": None, "every_seconds": interval},
            "processing_guarantee": guarantee,
            "max_records": n,
            "log_level": "WARNING",
        },
        env={},
    )
    t0 = time.perf_counter()
    Processor(cfg, handle_signals=False).run()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=30_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--intervals", default="0.5,1,5", help="commit intervals, seconds")
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    intervals = [float(x) for x in a.intervals.split(",")]
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        broker = bk._broker()
        bootstrap = broker.bootstrap
    try:
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        tin = f"eos-in-{uuid.uuid4().hex[:6]}"
        admin.create_topics([NewTopic(tin, a.partitions, 1)])
        bk.produce(bootstrap, tin, bk.make_records(a.n))
        run_processor(bootstrap, tin, min(a.n, 5000), "at_least_once", 5.0)  # warm-up: imports
        times: dict[str, list[float]] = {}
        for _ in range(a.rounds):
            tout = f"bare-{uuid.uuid4().hex[:6]}"
            admin.create_topics([NewTopic(tout, a.partitions, 1)])
            times.setdefault("bare pipe", []).append(
                bk.bare_pipe(bootstrap, tin, tout, a.n, "input")
            )
            for s in intervals:
                for g in ("at_least_once", "exactly_once"):
                    times.setdefault(f"{g} @{s:g}s", []).append(
                        run_processor(bootstrap, tin, a.n, g, s)
                    )
        admin.close()
        rate = {k: a.n / statistics.median(v) for k, v in times.items()}
        print(f"{a.n} records, {a.partitions} partitions, scope partition, {a.rounds} round(s)")
        for k, r in rate.items():
            print(f"{k:24s} {r:10,.0f} records/s  ({r / rate['bare pipe']:.2f} x bare pipe)")
        for s in intervals:
            ratio = rate[f"exactly_once @{s:g}s"] / rate[f"at_least_once @{s:g}s"]
            print(f"exactly_once / at_least_once @{s:g}s: {ratio:.2f}")
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
