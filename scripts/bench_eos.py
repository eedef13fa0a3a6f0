#!/usr/bin/env python
"""Throughput and end-to-end latency of exactly_once vs at_least_once vs a bare kafka-python pipe.

One process, one broker, in one run:

*Throughput*: the same input topic (K=5, D=10 JSON records, several partitions) for every run:
the bare consume->produce pipe of ``bench_kafka.py`` (the floor), then the processor with model
scope ``partition`` in ``at_least_once`` and ``exactly_once`` at each commit interval
(``checkpoint.every_seconds``; one Kafka transaction per interval in exactly_once).  Reports
records/s and the exactly_once / at_least_once ratio per interval (target >= 0.7 at <= 1 s).

*Latency*: a paced stream (``--rate`` records/s for ``--seconds``) into a fresh topic while the
system under test runs; a ``read_committed`` consumer of the output notes when each record's
output becomes visible.  Latency = that moment - the moment the record was sent (one clock: the
sender and the reader are this process), p50 and p99, after a warm-up batch (group join, model
warm-up) is through.  exactly_once outputs become visible only when their transaction commits,
so its latency is about the commit interval; at_least_once outputs are visible when sent.  In
the same run, the latency of ``bench_group.py``'s group (scope ``global`` with the model
exchange, at_least_once, 1 and 2 instances in separate processes; ``--group-interval``), so
that every system the issue compares is side by side with the same bare pipe.

    python scripts/bench_eos.py [--n 30000] [--partitions 4] [--intervals 0.5,1,5] [--rounds 1]
                                [--rate 1000] [--seconds 8] [--latency-only]
                                [--group-interval 1]

Uses $KAFKA_BOOTSTRAP_SERVERS if set, else starts a broker and stops it at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_group  # noqa: E402
import bench_kafka as bk  # noqa: E402
import e2e_latency  # noqa: E402
import kafka_broker  # noqa: E402

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


def latency_config(bootstrap, tin, tout, guarantee, interval):
    return load_config(
        overrides={
            "kafka": {
                "bootstrap_servers": bootstrap,
                "topics": [tin],
                "output_topic": tout,
                "dead_letter_topic": tout + ".dlq",
                "group_id": f"lat-{uuid.uuid4().hex[:6]}",
                "max_poll_records": bk.MAX_POLL,
                "linger_ms": bk.LINGER,
                "producer_batch_size": bk.BATCH_BYTES,
            },
            "features": bk.FEATURES,
            "model": {"n_components": bk.K, "random_state": 0, "scope": "partition"},
            "checkpoint": {"every_records": None, "every_seconds": interval},
            "processing_guarantee": guarantee,
            "idle_timeout": None,
            "log_level": "WARNING",
        },
        env={},
    )


def processor_system(guarantee, interval):
    def run(bootstrap, tin, tout, stop: threading.Event, ready: threading.Event) -> None:
        proc = Processor(
            latency_config(bootstrap, tin, tout, guarantee, interval), handle_signals=False
        )
        watcher = threading.Thread(target=lambda: (stop.wait(), proc.stop()), daemon=True)
        watcher.start()
        ready.set()
        proc.run()

    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=30_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--intervals", default="0.5,1,5", help="commit intervals, seconds")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--rate", type=int, default=1000, help="latency: records/s paced")
    ap.add_argument("--seconds", type=float, default=8.0, help="latency: paced stream length")
    ap.add_argument("--latency-only", action="store_true", help="skip the throughput runs")
    ap.add_argument(
        "--group-interval",
        type=float,
        default=1.0,
        help="latency also of scope global + model exchange, 1 and 2 instances (bench_group.py's "
        "group), exchanging every this many seconds; 0: not",
    )
    a = ap.parse_args()
    intervals = [float(x) for x in a.intervals.split(",")]
    with kafka_broker.bootstrap_servers() as bootstrap:
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        tin = f"eos-in-{uuid.uuid4().hex[:6]}"
        admin.create_topics([NewTopic(tin, a.partitions, 1)])
        if not a.latency_only:
            bk.produce(bootstrap, tin, bk.make_records(a.n))
            run_processor(bootstrap, tin, min(a.n, 5000), "at_least_once", 5.0)  # warm-up
        times: dict[str, list[float]] = {}
        for _ in range(0 if a.latency_only else a.rounds):
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
        rate = {k: a.n / statistics.median(v) for k, v in times.items()}
        if rate:
            print(f"{a.n} records, {a.partitions} partitions, scope partition, {a.rounds} round(s)")
        for k, r in rate.items():
            print(f"{k:24s} {r:10,.0f} records/s  ({r / rate['bare pipe']:.2f} x bare pipe)")
        for s in intervals if rate else ():
            ratio = rate[f"exactly_once @{s:g}s"] / rate[f"at_least_once @{s:g}s"]
            print(f"exactly_once / at_least_once @{s:g}s: {ratio:.2f}")
        print(
            f"\nend-to-end latency (send -> output visible to read_committed), "
            f"{a.rate} records/s paced for {a.seconds:g} s, {a.partitions} partitions"
        )
        systems = {"bare pipe": e2e_latency.bare_system}
        for s in intervals:
            for g in ("at_least_once", "exactly_once"):
                systems[f"{g} @{s:g}s"] = processor_system(g, s)
        shares: dict[str, list] = {}
        for k in (1, 2) if a.group_interval > 0 else ():
            name = f"global+exchange x{k} @{a.group_interval:g}s"
            shares[name] = []
            systems[name] = bench_group.group_system(k, True, a.group_interval, shares[name])
        for name, system in systems.items():
            p50, p99, missing = e2e_latency.latency(
                admin, bootstrap, a.partitions, system, a.rate, a.seconds
            )
            print(
                f"{name:28s} p50 {1000 * p50:8.1f} ms   p99 {1000 * p99:8.1f} ms"
                + (f"   ({missing} outputs not seen)" if missing else "")
                + (f"   records in per instance {shares[name][-1]}" if shares.get(name) else "")
            )
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
