#!/usr/bin/env python
"""Model scopes side by side on a real broker: global vs partition vs key (10 / 1,000 / 10,000
keys), against a bare kafka-python consume -> produce pipe, in the same run; 1 vs 2 instances.

Each configuration runs in its own process (so its memory is its own) on the same records:
K=3, D=8 JSON records, keyed ``s<i % keys>``, on a 6-partition topic (a key always on the same
partition).  Reported per configuration, in the **steady state**: from the first batch after
``--skip`` records (default n/5: the JVM, the process start-up, the consumer group's join and
the models' warm-up fits are behind) to the last batch handed to the producer; the bare pipe
likewise, to its last send:
records/s, CPU time per record (the process's, all threads), batch latency p50/p99 (a batch's
poll return to its outputs handed to the producer: the records are a backlog, so this is the
processing part of the output latency), RSS after the run and, for the key scopes, memory per
key live and evicted (keys per GB).  With two instances (same group, started together) the
rate is their records over the first counted batch of either to the last batch of either
(they join together, behind a barrier).  Also: the time to restore each partition's state from
the changelog topic, and an estimate for 8 machines from the measured CPU per record.
Target: every scope >= 0.7 of the bare pipe at 1,000 keys.

    python scripts/bench_state.py [--n 60000] [--partitions 6] [--skip N]

Uses $KAFKA_BOOTSTRAP_SERVERS if set, else starts a broker with scripts/kafka_broker.py and
stops it (by its pid) at the end.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import kafka_broker  # noqa: E402  (scripts/ on the path above)

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


class _Window:
    """Steady-state clock: from the start of the first batch after ``skip`` records (start-up,
    the group join and the models' warm-up fits are behind) to the last batch's end."""

    def __init__(self, skip: int = 0):
        self.first = self.last = None  # (perf_counter, wall time, process CPU)
        self.skip = skip
        self.seen = 0
        self.records_after_first = 0
        self.lat: list[float] = []

    def start(self):
        if self.first is None and self.seen >= self.skip:
            self.first = (time.perf_counter(), time.time(), time.process_time())
        return self.first is not None

    def end(self, n: int, counting: bool, t: float):
        self.seen += n
        if not counting:
            return
        self.records_after_first += n
        self.lat.append(time.perf_counter() - t)
        self.last = (time.perf_counter(), time.time(), time.process_time())

    def result(self) -> dict:
        if self.first is None or self.last is None:
            return {"records": 0}
        secs = self.last[0] - self.first[0]
        out = {
            "seconds": secs,
            "records": self.records_after_first,
            "cpu_s": self.last[2] - self.first[2],
            "wall_first": self.first[1],
            "wall_last": self.last[1],
        }
        if self.lat:
            out["p50_ms"] = 1e3 * float(np.percentile(self.lat, 50))
            out["p99_ms"] = 1e3 * float(np.percentile(self.lat, 99))
        return out


def bare(args) -> dict:
    """Consume and produce each record unchanged (the processor's producer settings and output
    routing): the floor any Kafka processor pays."""
    from kafka import KafkaConsumer

    from streamgmm.service.config import KafkaConfig
    from streamgmm.service.sinks import make_producer

    c = KafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=f"bare-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=MAX_POLL,
    )
    p = make_producer(KafkaConfig(bootstrap_servers=args.bootstrap))
    tout = args.topic + "-out-bare"
    send = p.send
    nparts = len(p.partitions_for(tout))  # routed as the processor routes: input % output
    w = _Window(args.skip)
    seen = 0
    while seen < args.n:
        got = c.poll(timeout_ms=200, max_records=MAX_POLL)
        if not got:
            continue
        t = time.perf_counter()
        counting = w.start()
        m = 0
        for tp, msgs in got.items():
            for msg in msgs:
                send(tout, value=msg.value, key=msg.key, partition=tp.partition % nparts)
            m += len(msgs)
        seen += m
        w.end(m, counting, t)
    p.flush()
    c.close()
    p.close()
    return w.result()


def one(args) -> dict:
    """One configuration (one instance of it), in this process."""
    from streamgmm.service.config import load_config
    from streamgmm.service.processor import Processor

    if args.scope == "bare":
        out = bare(args)
        out["rss_mib"] = _rss_mib()
        return out
    group = args.group or f"bench-{uuid.uuid4().hex[:6]}"
    model = {"n_components": K, "random_state": 0, "scope": args.scope}
    if args.max_live:
        model["max_live_keys"] = args.max_live
    two = args.group is not None
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
            "model": model,
            "checkpoint": {"every_records": None, "every_seconds": 5.0},
            # One instance stops at the last record; two stop when the input has gone quiet.
            **({"idle_timeout": 8.0} if two else {"max_records": args.n}),
            "log_level": "WARNING",
        },
        env={},
    )
    proc = Processor(cfg, handle_signals=False)
    # Two instances: the second skips the first's share of the warm-up.
    w = _Window(args.skip // 2 if two else args.skip)
    inner = proc.process_batch

    def timed(batch):
        t = time.perf_counter()
        counting = w.start()
        inner(batch)
        w.end(len(batch), counting, t)

    proc.process_batch = timed
    if two:  # both instances join the group together (a barrier of files)
        Path(f"{args.group_barrier}.{os.getpid()}").touch()
        while not Path(f"{args.group_barrier}.go").exists():
            time.sleep(0.01)
    proc.run()
    out = w.result()
    out.update(rss_mib=_rss_mib(), states=len(proc.states), live=len(proc.states.live))
    out["cold_bytes"] = sum(len(b) for b in proc.states.cold.values())
    out["in"] = proc.counts["in"]
    if args.restore:
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


def _cmd(args, scope, keys, topic, max_live=None, group=None, restore=False, barrier=None):
    cmd = [sys.executable, __file__, "--one", "--scope", scope, "--keys", str(keys)]
    cmd += ["--bootstrap", args.bootstrap, "--topic", topic, "--n", str(args.n)]
    cmd += ["--skip", str(args.skip)]
    if barrier:
        cmd += ["--group-barrier", barrier]
    cmd += ["--partitions", str(args.partitions)]
    if max_live:
        cmd += ["--max-live", str(max_live)]
    if group:
        cmd += ["--group", group]
    if restore:
        cmd += ["--restore"]
    return cmd


def _parse(r) -> dict:
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=30000)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scope", help=argparse.SUPPRESS)
    ap.add_argument("--keys", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", help=argparse.SUPPRESS)
    ap.add_argument("--topic", help=argparse.SUPPRESS)
    ap.add_argument("--max-live", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--group", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--restore", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--group-barrier", default=None, help=argparse.SUPPRESS)
    ap.add_argument(
        "--skip",
        type=int,
        default=None,
        help="records before the clock starts (start-up, group join, warm-up fits; n/5)",
    )
    args = ap.parse_args()
    if args.skip is None:
        args.skip = args.n // 5
    if args.one:
        print(json.dumps(one(args)))
        return 0
    with kafka_broker.bootstrap_servers() as bootstrap:
        args.bootstrap = bootstrap
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        # (name, scope, keys, max live keys, restore)
        runs = [
            ("bare", "bare", 1000, None, False),
            ("global", "global", 1000, None, False),
            ("partition", "partition", 1000, None, False),
            ("key 10", "key", 10, None, False),
            ("key 1000", "key", 1000, None, False),
            ("key 10000", "key", 10000, None, True),
            ("key 10000, 1000 live", "key", 10000, 1000, False),
        ]
        topics = {}
        for keys in sorted({r[2] for r in runs}):
            t = f"bench-state-{keys}-{uuid.uuid4().hex[:6]}"
            admin.create_topics([NewTopic(t, args.partitions, 1)])
            produce(bootstrap, t, args.n, keys, args.partitions)
            topics[keys] = t
        results = []
        for name, scope, keys, max_live, restore in runs:
            cmd = _cmd(args, scope, keys, topics[keys], max_live, restore=restore)
            try:
                res = _parse(
                    subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300)
                )
            except (subprocess.TimeoutExpired, RuntimeError) as e:
                # kafka-python's consumer has been seen spinning without fetching on this loaded
                # machine: say so and go on with the other configurations.
                print(f"{name}: failed ({str(e)[-500:]})", file=sys.stderr)
                continue
            res.update(name=name, scope=scope, keys=keys, instances=1)
            res["rate"] = res["records"] / res["seconds"]
            results.append(res)
            print(json.dumps(res), file=sys.stderr)
        # Two instances of one group, started together, on the same records.
        for name, scope, keys in [("partition", "partition", 1000), ("key 1000", "key", 1000)]:
            group = f"bench2-{uuid.uuid4().hex[:6]}"
            barrier = os.path.join(tempfile.mkdtemp(prefix="bench-state-"), "barrier")
            cmd = _cmd(args, scope, keys, topics[keys], group=group, barrier=barrier)
            procs = [
                subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)
            ]
            deadline = time.time() + 120
            while len(glob.glob(barrier + ".[0-9]*")) < 2 and time.time() < deadline:
                time.sleep(0.05)
            Path(barrier + ".go").touch()
            parts = []
            for pr in procs:
                try:
                    out, err = pr.communicate(timeout=300)
                except subprocess.TimeoutExpired:
                    pr.kill()
                    out, err = pr.communicate()
                parts.append(_parse(subprocess.CompletedProcess(cmd, pr.returncode, out, err)))
            busy = [r for r in parts if r.get("records")]
            first = min(r["wall_first"] for r in busy)
            last = max(r["wall_last"] for r in busy)
            total = sum(r["records"] for r in busy)
            res = {
                "name": name + " x2",
                "scope": scope,
                "keys": keys,
                "instances": 2,
                "rate": total / (last - first),
                "records": total,
                "seconds": last - first,
                "cpu_s": sum(r["cpu_s"] for r in busy),
                "p50_ms": max(r.get("p50_ms", 0.0) for r in busy),
                "p99_ms": max(r.get("p99_ms", 0.0) for r in busy),
                "rss_mib": max(r["rss_mib"] for r in parts),
                "per_instance": [r.get("in", 0) for r in parts],
            }
            results.append(res)
            print(json.dumps(res), file=sys.stderr)
        report(args, results)
    return 0


def report(args, results: list[dict]) -> None:
    bare_rate = results[0]["rate"]
    print(
        f"\n{args.n} records, K={K}, D={D}, {args.partitions} partitions; steady state: "
        f"after the first {args.skip} records"
    )
    head = f"{'run':<24}{'rec/s':>9}{'x bare':>8}{'CPU us/rec':>11}{'p50 ms':>8}{'p99 ms':>8}"
    print(head + f"{'RSS MiB':>9}")
    for r in results:
        cpu = 1e6 * r["cpu_s"] / max(r["records"], 1)
        print(
            f"{r['name']:<24}{r['rate']:>9.0f}{r['rate'] / bare_rate:>8.2f}{cpu:>11.0f}"
            f"{r.get('p50_ms', float('nan')):>8.1f}{r.get('p99_ms', float('nan')):>8.1f}"
            f"{r['rss_mib']:>9.0f}"
        )
    by = {r["name"]: r for r in results}
    if "global" not in by or "key 10000" not in by:
        return
    base = by["global"]["rss_mib"]
    live = by["key 10000"]
    per_live = (live["rss_mib"] - base) * 1024 / live["states"]
    print(
        f"key 10000, all live: {live['states']} states, RSS {live['rss_mib'] - base:.0f} MiB above "
        f"global -> {per_live:.1f} KiB per live key, ~{1024 * 1024 / per_live:,.0f} live keys "
        "per GiB"
    )
    cold = by.get("key 10000, 1000 live", {"states": 0, "live": 0})
    n_cold = cold["states"] - cold["live"]
    if n_cold:
        per_cold_rss = (cold["rss_mib"] - base) * 1024 - cold["live"] * per_live
        per_cold_rss /= n_cold
        per_cold = cold["cold_bytes"] / 1024 / n_cold
        print(
            f"key 10000, 1000 live: {n_cold} evicted states of {per_cold:.1f} KiB encoded "
            f"(~{1024 * 1024 / per_cold:,.0f} evicted keys per GiB); by RSS "
            f"{max(per_cold_rss, 0.0):.1f} KiB each"
        )
    rt = live.get("restore_s_per_partition", [])
    if rt:
        print(
            f"restore from the changelog: {live['restored_states']} states of one partition "
            f"(~{live['keys'] // args.partitions} keys) in {np.median(rt):.2f} s (median over "
            f"{len(rt)} partitions, max {max(rt):.2f} s)"
        )
    # 8 machines: every instance on its own core pays the CPU per record measured here; the
    # group then scales with the instances while partitions >= instances and the broker keeps
    # up (this machine cannot show that: 2 cores, shared).
    for name in ("bare", "global", "partition", "key 1000", "key 10000"):
        r = by.get(name)
        if r is None:
            continue
        per = r["cpu_s"] / max(r["records"], 1)
        print(
            f"8 machines, {name}: ~{8 / per:,.0f} rec/s from {1e6 * per:.0f} CPU us/record "
            f"(needs >= 8 partitions; this run has {args.partitions})"
        )


if __name__ == "__main__":
    raise SystemExit(main())
