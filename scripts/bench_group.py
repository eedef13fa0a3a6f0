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

    python scripts/bench_group.py [--n 40000] [--partitions 4] [--interval 1] [--rounds 1]

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
import time
import uuid
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_kafka as bk  # noqa: E402

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


def _instance(bootstrap, tin, group, exchange, interval, test, barrier, out):
    from streamgmm.service.config import load_config
    from streamgmm.service.processor import Processor

    tout = f"grp-out-{uuid.uuid4().hex[:6]}"
    cfg = load_config(
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
            "idle_timeout": 3.0,
            "log_level": "WARNING",
        },
        env={},
    )
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=40_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--interval", type=float, default=1.0, help="checkpoint/exchange, seconds")
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        broker = bk._broker()
        bootstrap = broker.bootstrap
    try:
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        tin = f"grp-in-{uuid.uuid4().hex[:6]}"
        admin.create_topics([NewTopic(tin, a.partitions, 1)])
        records, test = make_data(a.n)
        bk.produce(bootstrap, tin, records)
        runs = {
            "global, 1 instance, no exchange": (1, False),
            "global + exchange, 1 instance": (1, True),
            "global + exchange, 2 instances": (2, True),
        }
        times: dict[str, list[float]] = {}
        lls: dict[str, list[float]] = {}
        for _ in range(a.rounds):
            tout = f"bare-{uuid.uuid4().hex[:6]}"
            admin.create_topics([NewTopic(tout, a.partitions, 1)])
            times.setdefault("bare pipe", []).append(
                bk.bare_pipe(bootstrap, tin, tout, a.n, "input")
            )
            for name, (k, ex) in runs.items():
                elapsed, res = run_group(bootstrap, tin, k, ex, a.interval, test)
                times.setdefault(name, []).append(elapsed)
                lls.setdefault(name, []).extend(r["ll"] for r in res)
                share = [r["records_in"] for r in res]
                seen = [r["seen"] for r in res]
                print(f"  {name}: {elapsed:.2f} s, records in per instance {share}, "
                      f"rows learned per instance {seen}")  # fmt: skip
        admin.close()
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
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
