#!/usr/bin/env python
"""Where a model scope's time per record goes: one configuration of ``bench_state.py`` (same
records, same processor settings, real broker), sampled by py-spy in the steady state only.

    python scripts/profile_state.py [--scope key] [--keys 1000] [--n 60000] [--top 40]

The processor runs in this process; after ``--skip`` records (n/5) py-spy attaches to it
(``py-spy record --pid``, needs py-spy on PATH: ``pip install py-spy``) until the run ends.
Printed: records/s and CPU µs per record of the window, the time spent in the cyclic garbage
collector (its callbacks), and the functions with the largest share of the main thread's
samples (inclusive: a function and what it calls), then a few named parts of a record's path.
The raw samples (collapsed stacks) are kept with ``--raw PATH``.

Uses $KAFKA_BOOTSTRAP_SERVERS if set, else starts a broker with scripts/kafka_broker.py and
stops it (by its pid) at the end.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_state  # noqa: E402  (scripts/ on the path above)
import kafka_broker  # noqa: E402

# Named parts of a record's path (function names as py-spy reports them).
PARTS = [
    ("model + gate step (per state and batch)", "Processor._step"),
    ("  core E-step", "OnlineGaussianMixture._e_step"),
    ("  core mini-batch update", "OnlineGaussianMixture._learn_batch"),
    ("  core precision refresh", "exact_precision"),
    ("  key births (copies of the pooled model)", "StateStore._new"),
    ("output encoding", "_Results.encode"),
    ("input decoding", "Decoder.decode_batch"),
    ("grouping rows by state", "Processor._groups"),
    ("Kafka send (outputs)", "KafkaSink.write"),
    ("Kafka poll (inputs)", "KafkaSource.batches"),
    ("checkpoint", "Processor._checkpoint"),
    ("  states encoded", "StateStore.changed"),
    ("  changelog sends", "Changelog.write"),
]


def _frames(line: str) -> tuple[list[str], int]:
    stack, n = line.rstrip("\n").rsplit(" ", 1)
    return [f.split(" (")[0] for f in stack.split(";")], int(n)


def breakdown(raw: str, top: int) -> None:
    stacks = [_frames(x) for x in Path(raw).read_text().splitlines() if x.strip()]
    main = [(s, n) for s, n in stacks if "Processor.run" in s]
    total = sum(n for _, n in main)
    if not total:
        print("no samples of the processing loop")
        return
    inclusive: collections.Counter[str] = collections.Counter()
    for s, n in main:
        for f in set(s):
            inclusive[f] += n
    print(f"\nmain thread, {total} samples; share of the loop (inclusive):")
    for name, label in PARTS:
        print(f"  {100 * inclusive[label] / total:5.1f}%  {name}  [{label}]")
    print(f"\ntop {top} functions (inclusive):")
    for f, n in inclusive.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scope", default="key", choices=["global", "partition", "key"])
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--n", type=int, default=60000)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--skip", type=int, default=None, help="records before sampling (n/5)")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--raw", default=None, help="keep py-spy's collapsed stacks here")
    args = ap.parse_args()
    skip = args.n // 5 if args.skip is None else args.skip
    spy = shutil.which("py-spy")
    if spy is None:
        print("py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    with kafka_broker.bootstrap_servers() as bootstrap:
        from kafka.admin import KafkaAdminClient, NewTopic

        from streamgmm.service.config import load_config
        from streamgmm.service.processor import Processor

        topic = f"profile-state-{args.keys}-{uuid.uuid4().hex[:6]}"
        KafkaAdminClient(bootstrap_servers=bootstrap).create_topics(
            [NewTopic(topic, args.partitions, 1)]
        )
        bench_state.produce(bootstrap, topic, args.n, args.keys, args.partitions)
        group = f"profile-{uuid.uuid4().hex[:6]}"
        cfg = load_config(
            overrides={  # bench_state.py's one-instance configuration
                "kafka": {
                    "bootstrap_servers": bootstrap,
                    "topics": [topic],
                    "output_topic": f"{topic}-out-{group}",
                    "group_id": group,
                    "max_poll_records": bench_state.MAX_POLL,
                },
                "features": bench_state.FEATURES,
                "model": {"n_components": bench_state.K, "random_state": 0, "scope": args.scope},
                "checkpoint": {"every_records": None, "every_seconds": 5.0},
                "max_records": args.n,
                "log_level": "WARNING",
            },
            env={},
        )
        proc = Processor(cfg, handle_signals=False)
        raw = args.raw or os.path.join(tempfile.mkdtemp(prefix="profile-state-"), "spy.txt")
        w = {"seen": 0, "on": False, "n": 0, "gc": 0.0, "gcs": 0}

        def on_gc(phase, info):
            if phase == "start":
                w["gc_t"] = time.perf_counter()
            elif w["on"] and "gc_t" in w:
                w["gc"] += time.perf_counter() - w["gc_t"]
                w["gcs"] += 1

        gc.callbacks.append(on_gc)
        inner = proc.process_batch

        def timed(batch):
            if not w["on"] and w["seen"] >= skip:
                cmd = [spy, "record", "--pid", str(os.getpid()), "-r", "250"]
                cmd += ["--format", "raw", "-o", raw]
                w["spy"] = subprocess.Popen(
                    cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                time.sleep(1.0)  # py-spy attached
                w.update(on=True, t0=time.perf_counter(), c0=time.process_time())
            inner(batch)
            w["seen"] += len(batch)
            if w["on"]:
                w["n"] += len(batch)
                w["t1"], w["c1"] = time.perf_counter(), time.process_time()

        proc.process_batch = timed
        proc.run()
        gc.callbacks.remove(on_gc)
        if not w["on"]:
            print("the run ended before the steady state", file=sys.stderr)
            return 1
        w["spy"].send_signal(signal.SIGINT)
        w["spy"].wait(timeout=60)
        secs, cpu = w["t1"] - w["t0"], w["c1"] - w["c0"]
        print(
            f"{args.scope} scope, {args.keys} keys: {w['n']} records after the first {skip}: "
            f"{w['n'] / secs:,.0f} rec/s, {1e6 * cpu / w['n']:.0f} CPU us/record (with py-spy "
            f"attached); garbage collector {w['gc']:.2f} s in {w['gcs']} collections"
        )
        breakdown(raw, args.top)
        if args.raw:
            print(f"\nraw samples: {raw}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
