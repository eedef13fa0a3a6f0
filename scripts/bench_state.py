#!/usr/bin/env python
"""Model scopes side by side on a real broker: global vs partition vs key (10 / 1,000 / 10,000
keys), against a bare kafka-python consume -> produce pipe, in the same run.

Each configuration runs in its own process (so its memory is its own) on the same records:
K=3, D=8 JSON records, keyed ``s<i % keys>``, on a 6-partition topic (a key always on the same
partition).  Reported per configuration: records/s (backlog drained: first poll to last output
acknowledged), batch latency p50/p99 (a batch's poll return to its outputs handed to the
producer), RSS after the run and, for the key scopes, RSS per key (keys per GB); for the
10,000-key run also the time to restore each partition's state from the changelog topic.
Target: every scope >= 0.7 of the bare pipe at 1,000 keys.

    python scripts/bench_state.py [--n 60000] [--partitions 6]

Uses $KAFKA_BOOTSTRAP_SERVERS if set, else starts a broker with scripts/kafka_broker.py and
stops it (by its pid) at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

K, D = 3, 8
FEATURES = [f"f{j}" for j in range(D)]
MAX_POLL = 2000


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def produce(bootstrap: str, topic: str, n: int, keys: int, partitions: int) -> None:
    from kafka import KafkaProducer

    rng = np.random.default_rng(0)
    means = rng.normal(0, 4, (K, D))
    X = means[rng.integers(0, K, n)] + rng.standard_normal((n, D))
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, batch_size=262144)
    for i, row in enumerate(X):
        k = i % keys
        v = json.dumps(dict(zip(FEATURES, map(float, row), strict=True))).encode()
        p.send(topic, value=v, key=f"s{k}".encode(), partition=k % partitions)
    p.flush()
    p.close()


def one(args) -> dict:
    """One configuration, in this process."""
    from streamgmm.service.config import load_config
    from streamgmm.service.processor import Processor

    group = f"bench-{uuid.uuid4().hex[:6]}"
    if args.scope == "bare":
        from bench_kafka import bare_pipe

        rss0 = _rss_mib()
        secs = bare_pipe(args.bootstrap, args.topic, args.topic + "-out-bare", args.n, "input")
        return {"seconds": secs, "rss_mib": _rss_mib(), "rss0_mib": rss0}
    cfg = load_config(
        overrides={
            "kafka": {
                "bootstrap_servers": args.bootstrap,
                "topics": [args.topic],
                "output_topic": f"{args.topic}-out-{group}",
                "group_id": group,
                "max_poll_records": MAX_POLL,
            },
            "features": FEATURES,
            "model": {"n_components": K, "random_state": 0, "scope": args.scope},
            "checkpoint": {"every_records": None, "every_seconds": 5.0},
            "max_records": args.n,
            "log_level": "WARNING",
        },
        env={},
    )
    rss0 = _rss_mib()
    proc = Processor(cfg, handle_signals=False)
    lat: list[float] = []
    inner = proc.process_batch

    def timed(batch):
        t = time.perf_counter()
        inner(batch)
        lat.append(time.perf_counter() - t)

    proc.process_batch = timed
    t0 = time.perf_counter()
    proc.run()
    secs = time.perf_counter() - t0
    out = {
        "seconds": secs,
        "p50_ms": 1e3 * float(np.percentile(lat, 50)),
        "p99_ms": 1e3 * float(np.percentile(lat, 99)),
        "rss_mib": _rss_mib(),
        "rss0_mib": rss0,
        "states": len(proc.states),
    }
    if args.scope != "global" and args.keys >= 10000:
        from kafka import KafkaProducer

        from streamgmm.service.changelog import Changelog
        from streamgmm.service.state import SourcePartition

        prod = KafkaProducer(bootstrap_servers=args.bootstrap)
        cl = Changelog(cfg.kafka, prod)
        times = []
        for p in range(args.partitions):
            t = time.perf_counter()
            got = cl.restore([SourcePartition.kafka(args.topic, p)])
            times.append(time.perf_counter() - t)
        out["restore_s_per_partition"] = times
        out["restored_states"] = sum(len(ps.states) for ps in got.values())
        cl.close()
        prod.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=60000)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scope", help=argparse.SUPPRESS)
    ap.add_argument("--keys", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", help=argparse.SUPPRESS)
    ap.add_argument("--topic", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return 0
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        import kafka_broker

        broker = kafka_broker.start_broker(owner_pid=os.getpid())
        bootstrap = broker.bootstrap
    try:
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        runs = [
            ("bare", 1000),
            ("global", 1000),
            ("partition", 1000),
            ("key", 10),
            ("key", 1000),
            ("key", 10000),
        ]
        topics = {}
        for keys in sorted({k for _, k in runs}):
            t = f"bench-state-{keys}-{uuid.uuid4().hex[:6]}"
            admin.create_topics([NewTopic(t, args.partitions, 1)])
            produce(bootstrap, t, args.n, keys, args.partitions)
            topics[keys] = t
        results = []
        for scope, keys in runs:
            cmd = [sys.executable, __file__, "--one", "--scope", scope, "--keys", str(keys)]
            cmd += ["--bootstrap", bootstrap, "--topic", topics[keys], "--n", str(args.n)]
            cmd += ["--partitions", str(args.partitions)]
            r = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if r.returncode != 0:
                print(r.stderr[-3000:], file=sys.stderr)
                return 1
            res = json.loads(r.stdout.strip().splitlines()[-1])
            res.update(scope=scope, keys=keys, rate=args.n / res["seconds"])
            results.append(res)
            print(json.dumps(res), file=sys.stderr)
        bare = results[0]["rate"]
        print(f"\n{args.n} records, K={K}, D={D}, {args.partitions} partitions")
        print(f"{'run':<16}{'rec/s':>9}{'x bare':>8}{'p50 ms':>8}{'p99 ms':>8}{'RSS MiB':>9}")
        for r in results:
            name = (
                r["scope"]
                if r["scope"] in ("bare", "global", "partition")
                else (f"key {r['keys']}")
            )
            print(
                f"{name:<16}{r['rate']:>9.0f}{r['rate'] / bare:>8.2f}"
                f"{r.get('p50_ms', float('nan')):>8.1f}{r.get('p99_ms', float('nan')):>8.1f}"
                f"{r['rss_mib']:>9.0f}"
            )
        big = results[-1]
        per_key = (big["rss_mib"] - results[1]["rss_mib"]) * 1024 / big["keys"]
        print(
            f"key 10000: {big['states']} states, RSS {big['rss_mib'] - results[1]['rss_mib']:.0f} "
            f"MiB above global -> {per_key:.1f} KiB per key, ~{1024 * 1024 / per_key:,.0f} keys "
            "per GB"
        )
        rt = big.get("restore_s_per_partition", [])
        if rt:
            print(
                f"restore from the changelog: {big['restored_states']} states of one partition "
                f"(~{big['keys'] // args.partitions} keys) in {np.median(rt):.2f} s (median over "
                f"{len(rt)} partitions, max {max(rt):.2f} s)"
            )
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
