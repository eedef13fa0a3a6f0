#!/usr/bin/env python
"""One model across a consumer group: global scope with the model exchange, 1 vs 2 instances.

One broker, one input topic (K=5, D=10 JSON records, several partitions), side by side in one
run: the bare kafka-python consume->produce pipe of ``bench_kafka.py`` (the floor), then model
scope ``global`` with ``model.exchange`` on in 1 and in 2 instances (separate processes of one
consumer group; increments exchanged at every checkpoint, ``--interval`` seconds), and as a
reference one instance without the exchange.  Reports records/s (from the moment every instance
is ready to the last batch processed by any) and the accuracy cost: each instance's held-out
mean log-likelihood (5000 rows of the same mixture, never streamed) against the single
instance's.

Then end-to-end latency (p50/p99) of the same four systems, as ``bench_eos.py`` measures it: a
paced stream (``--rate`` records/s for ``--seconds``) into a fresh topic while the system runs
(the instances writing into one output topic), after a warm-up batch sent once every instance
is built (group joins, warm-up fit); latency = when a consumer of the output sees a record's
output - when it was sent (one clock: the sender and the reader are this process).

    python scripts/bench_group.py [--n 40000] [--partitions 4] [--interval 1] [--rounds 1]
                                  [--rate 1000] [--seconds 8] [--latency-only]

Uses $KAFKA_BOOTSTRAP_SERVERS if set, else starts a broker and stops it at the end.  On a
machine with fewer free cores than instances, 2 instances cannot be faster than 1.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_kafka as bk  # noqa: E402
import e2e_latency  # noqa: E402
import kafka_broker  # noqa: E402

HELD_OUT = 5000


def make_data(n: int, seed: int = 0):
    """``n`` records and ``HELD_OUT`` held-out rows of one K=5, D=10 mixture."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 4, (bk.K, bk.D))
    X = means[rng.integers(0, bk.K, n + HELD_OUT)] + rng.standard_normal((n + HELD_OUT, bk.D))
    records = [
        json.dumps(dict(zip(bk.FEATURES, map(float, row), strict=True))).encode() for row in X[:n]
    ]
    return records, X[n:]


def _config(bootstrap, tin, tout, group, exchange, interval, idle_timeout):
    from streamgmm.service.config import load_config

    return load_config(
        overrides={
            "kafka": {
                "bootstrap_servers": bootstrap,
                "topics": [tin],
                "output_topic": tout,
                "dead_letter_topic": tout + ".dlq",
                "group_id": group,
                "max_poll_records": bk.MAX_POLL,
                "linger_ms": bk.LINGER,
                "producer_batch_size": bk.BATCH_BYTES,
                "session_timeout_ms": 6000,
            },
            "features": bk.FEATURES,
            "model": {"n_components": bk.K, "random_state": 0, "exchange": exchange},
            "checkpoint": {"every_records": None, "every_seconds": interval},
            "idle_timeout": idle_timeout,
            "log_level": "WARNING",
        },
        env={},
    )


def _instance(bootstrap, tin, group, exchange, interval, test, barrier, out):
    from streamgmm.service.processor import Processor

    tout = f"grp-out-{uuid.uuid4().hex[:6]}"
    cfg = _config(bootstrap, tin, tout, group, exchange, interval, 3.0)
    proc = Processor(cfg, handle_signals=False)
    barrier.wait()
    proc.run()
    m = proc.model
    out.put(
        {
            "last_batch": proc.metrics.last_batch,
            "records_in": proc.counts["in"],
            "seen": int(m.n_samples_seen_),
            "ll": float(m.score(test)),
        }
    )


def _latency_instance(bootstrap, tin, tout, group, exchange, interval, barrier, stop, out):
    """One instance of the latency runs: until ``stop``, all instances into one output topic."""
    from streamgmm.service.processor import Processor

    cfg = _config(bootstrap, tin, tout, group, exchange, interval, None)
    proc = Processor(cfg, handle_signals=False)
    threading.Thread(target=lambda: (stop.wait(), proc.stop()), daemon=True).start()
    barrier.wait()
    proc.run()
    out.put(proc.counts["in"])


def group_system(n_instances: int, exchange: bool, interval: float, shares: list):
    """``e2e_latency.latency``'s system under test: ``n_instances`` processes of one group.

    Each instance's records-in count is appended to ``shares`` at the end (an instance that
    got no partition shows as 0)."""

    def run(bootstrap, tin, tout, stop: threading.Event, ready: threading.Event) -> None:
        ctx = mp.get_context("spawn")
        barrier, stop_all, out = ctx.Barrier(n_instances + 1), ctx.Event(), ctx.Queue()
        group = f"grp-lat-{uuid.uuid4().hex[:6]}"
        args = (bootstrap, tin, tout, group, exchange, interval, barrier, stop_all, out)
        procs = [ctx.Process(target=_latency_instance, args=args) for _ in range(n_instances)]
        for p in procs:
            p.start()
        barrier.wait(timeout=120)
        ready.set()
        stop.wait()
        stop_all.set()
        shares.append([out.get(timeout=60) for _ in procs])
        for p in procs:
            p.join(timeout=30)

    return run


def run_group(bootstrap, tin, n_instances, exchange, interval, test):
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n_instances + 1), ctx.Queue()
    group = f"grp-{uuid.uuid4().hex[:6]}"
    procs = [
        ctx.Process(
            target=_instance, args=(bootstrap, tin, group, exchange, interval, test, barrier, out)
        )
        for _ in range(n_instances)
    ]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.time()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    elapsed = max(r["last_batch"] for r in results) - t0
    return elapsed, results


def throughput(admin, bootstrap, runs, a) -> None:
    """Records/s of ``runs`` and the bare pipe on one pre-filled topic, and the accuracy cost."""
    from kafka.admin import NewTopic

    tin = f"grp-in-{uuid.uuid4().hex[:6]}"
    admin.create_topics([NewTopic(tin, a.partitions, 1)])
    records, test = make_data(a.n)
    bk.produce(bootstrap, tin, records)
    times: dict[str, list[float]] = {}
    lls: dict[str, list[float]] = {}
    for _ in range(a.rounds):
        tout = f"bare-{uuid.uuid4().hex[:6]}"
        admin.create_topics([NewTopic(tout, a.partitions, 1)])
        times.setdefault("bare pipe", []).append(bk.bare_pipe(bootstrap, tin, tout, a.n, "input"))
        for name, (k, ex) in runs.items():
            elapsed, res = run_group(bootstrap, tin, k, ex, a.interval, test)
            times.setdefault(name, []).append(elapsed)
            lls.setdefault(name, []).extend(r["ll"] for r in res)
            share = [r["records_in"] for r in res]
            seen = [r["seen"] for r in res]
            print(f"  {name}: {elapsed:.2f} s, records in per instance {share}, "
                  f"rows learned per instance {seen}")  # fmt: skip
    rate = {k: a.n / statistics.median(v) for k, v in times.items()}
    print(
        f"\n{a.n} records, {a.partitions} partitions, K={bk.K} D={bk.D} full, exchange "
        f"every {a.interval:g} s, {a.rounds} round(s), {os.cpu_count()} cores"
    )
    for k, r in rate.items():
        print(f"{k:34s} {r:10,.0f} records/s  ({r / rate['bare pipe']:.2f} x bare pipe)")
    ref = statistics.mean(lls["global + exchange, 1 instance"])
    print("held-out mean log-likelihood (nats/sample), difference to 1 instance:")
    for k, v in lls.items():
        print(f"{k:34s} {statistics.mean(v):.4f}  ({max(abs(x - ref) for x in v):.4f} max)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=40_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--interval", type=float, default=1.0, help="checkpoint/exchange, seconds")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--rate", type=int, default=1000, help="latency: records/s paced")
    ap.add_argument("--seconds", type=float, default=8.0, help="latency: paced stream length")
    ap.add_argument("--latency-only", action="store_true", help="skip the throughput runs")
    a = ap.parse_args()
    with kafka_broker.bootstrap_servers() as bootstrap:
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        runs = {
            "global, 1 instance, no exchange": (1, False),
            "global + exchange, 1 instance": (1, True),
            "global + exchange, 2 instances": (2, True),
        }
        if not a.latency_only:
            throughput(admin, bootstrap, runs, a)
        print(
            f"\nend-to-end latency (send -> output visible), {a.rate} records/s paced for "
            f"{a.seconds:g} s, {a.partitions} partitions, exchange every {a.interval:g} s"
        )
        systems = {"bare pipe": (e2e_latency.bare_system, None)}
        for name, (k, ex) in runs.items():
            shares: list = []
            systems[name] = (group_system(k, ex, a.interval, shares), shares)
        for name, (system, shares) in systems.items():
            p50, p99, missing = e2e_latency.latency(
                admin, bootstrap, a.partitions, system, a.rate, a.seconds
            )
            print(
                f"{name:34s} p50 {1000 * p50:8.1f} ms   p99 {1000 * p99:8.1f} ms"
                + (f"   ({missing} outputs not seen)" if missing else "")
                + (f"   records in per instance {shares[-1]}" if shares else "")
            )
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
