#!/usr/bin/env python
"""End-to-end throughput of the stream processor vs a bare kafka-python consume->produce pipe.

Both read the same topic of K=5, D=10 JSON records in the same process and run, with the same
consumer settings and the very same producer settings (both producers come from
``streamgmm.service.sinks.make_producer`` with one configuration); the processor also decodes,
scores, learns, encodes and checkpoints.  Target: processor >= 0.7 x bare pipe.  Also reports
the file path (JSONL in -> JSONL out) in records/s, and every run's CPU time per record (this
process's, client threads included), which another load on a shared machine disturbs less than
wall time.

The bare pipe runs in two variants each round, both forwarding every raw value with its input
key: ``key`` leaves the partition to kafka-python's default partitioner (murmur2 hash of the key,
in pure Python), ``input`` chooses ``input partition % output partitions`` like the processor
does.  The headline ratio is against the faster of the two, so the processor gains nothing from
a routing choice the bare pipe could make as well.  Rounds rotate the order of the three runs.

    python scripts/bench_kafka.py [--n 200000] [--rounds 3] [--partitions 1]
           [--max-poll-records 2000] [--linger-ms 5] [--batch-size 262144]

Uses $KAFKA_BOOTSTRAP_SERVERS if set, else starts a broker with scripts/kafka_broker.py and
stops it (by its pid) at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import kafka_broker  # noqa: E402  (scripts/ on the path above)

from streamgmm.service.config import load_config  # noqa: E402
from streamgmm.service.processor import Processor  # noqa: E402
from streamgmm.service.sinks import make_producer  # noqa: E402

K, D = 5, 10
FEATURES = [f"f{j}" for j in range(D)]
MAX_POLL = 2000
LINGER = 5
BATCH_BYTES = 262144


def make_records(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 4, (K, D))
    X = means[rng.integers(0, K, n)] + rng.standard_normal((n, D))
    return [json.dumps(dict(zip(FEATURES, map(float, row), strict=True))).encode() for row in X]


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from kafka import KafkaProducer

    # Keyed: with several partitions the input is key-partitioned, as a real upstream would be.
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=LINGER, batch_size=BATCH_BYTES)
    for i, v in enumerate(values):
        p.send(topic, value=v, key=str(i).encode())
    p.flush()
    p.close()


def config(bootstrap: str, tin: str, tout: str, n: int, ckdir: str):
    """The processor's configuration; its Kafka section also builds the bare pipe's producer."""
    return load_config(
        overrides={
            "kafka": {
                "bootstrap_servers": bootstrap,
                "topics": [tin],
                "output_topic": tout,
                "group_id": f"sgmm-{uuid.uuid4().hex[:6]}",
                "max_poll_records": MAX_POLL,
                "linger_ms": LINGER,
                "producer_batch_size": BATCH_BYTES,
            },
            "features": FEATURES,
            "model": {"n_components": K, "random_state": 0},
            # time-based checkpoints (each one waits for every output to be acknowledged)
            "checkpoint": {"dir": ckdir, "every_records": None, "every_seconds": 5.0},
            "max_records": n,
            "log_level": "WARNING",
        },
        env={},
    )


def bare_consumer(bootstrap: str, tin: str, **settings):
    """The bare pipe's consumer: a fresh group, from the earliest offset, no auto-commit."""
    from kafka import KafkaConsumer

    return KafkaConsumer(
        tin,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=MAX_POLL,
        **settings,
    )


def bare_pipe(bootstrap: str, tin: str, tout: str, n: int, routing: str) -> float:
    """Consume n records and produce each unchanged: the floor any Kafka processor pays.

    ``routing="key"``: the default partitioner hashes the input key; ``"input"``: partition
    ``input partition % output partitions``, as the processor routes.
    """

    t0 = time.perf_counter()
    c = bare_consumer(
        bootstrap,
        tin,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    p = make_producer(config(bootstrap, tin, tout, n, "").kafka)  # the processor's settings
    send = p.send
    seen = 0
    if routing == "key":
        while seen < n:
            for msgs in c.poll(timeout_ms=200, max_records=MAX_POLL).values():
                for m in msgs:
                    send(tout, value=m.value, key=m.key)
                seen += len(msgs)
    else:
        nparts = len(p.partitions_for(tout))
        while seen < n:
            for tp, msgs in c.poll(timeout_ms=200, max_records=MAX_POLL).items():
                part = tp.partition % nparts
                for m in msgs:
                    send(tout, value=m.value, key=m.key, partition=part)
                seen += len(msgs)
    p.flush()
    c.commit()
    # Closing counts on both sides: the processor's run() also ends with closing its clients.
    p.close()
    c.close()
    return time.perf_counter() - t0


def processor(bootstrap: str, tin: str, tout: str, n: int, ckdir: str) -> tuple[float, Processor]:
    cfg = config(bootstrap, tin, tout, n, ckdir)
    t0 = time.perf_counter()
    proc = Processor(cfg, handle_signals=False)
    proc.run()
    return time.perf_counter() - t0, proc


def file_path(values: list[bytes], workdir: str) -> float:
    inp = Path(workdir) / "bench.jsonl"
    inp.write_bytes(b"\n".join(values) + b"\n")
    cfg = load_config(
        overrides={
            "input": {"path": str(inp)},
            "output": {"path": str(Path(workdir) / "out.jsonl")},
            "features": FEATURES,
            "model": {"n_components": K, "random_state": 0},
            "checkpoint": {"dir": str(Path(workdir) / "ck-file"), "every_records": 50000},
            "batch_size": 1000,
            "progress": False,
            "log_level": "WARNING",
        },
        env={},
    )
    t0 = time.perf_counter()
    Processor(cfg, handle_signals=False).run()
    return time.perf_counter() - t0


def main() -> int:
    global MAX_POLL, LINGER, BATCH_BYTES  # read by the runs (one setting for all of them)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3, help="rounds, order of the runs rotated")
    ap.add_argument("--partitions", type=int, default=1, help="of the input and output topics")
    ap.add_argument("--max-poll-records", type=int, default=MAX_POLL)
    ap.add_argument("--linger-ms", type=int, default=LINGER, help="both producers")
    ap.add_argument("--batch-size", type=int, default=BATCH_BYTES, help="both producers, bytes")
    args = ap.parse_args()
    MAX_POLL, LINGER, BATCH_BYTES = args.max_poll_records, args.linger_ms, args.batch_size
    import logging

    logging.getLogger("kafka").setLevel(logging.ERROR)
    with kafka_broker.bootstrap_servers() as bootstrap:
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        values = make_records(args.n)
        tag = uuid.uuid4().hex[:6]
        tin = f"bench-in-{tag}"
        runs = ("bare-key", "bare-input", "streamgmm")
        outs = {
            (r, name): f"bench-out-{tag}-{r}-{name}" for r in range(args.rounds) for name in runs
        }
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(t, args.partitions, 1) for t in [tin, *outs.values()]])
        admin.close()
        produce(bootstrap, tin, values)
        print(
            f"topic {tin}: {args.n} JSON records, K={K} D={D}, {args.partitions} partition(s); "
            f"broker {bootstrap}; max_poll_records={MAX_POLL} linger_ms={LINGER} "
            f"batch_size={BATCH_BYTES}"
        )
        rate: dict[str, list[float]] = {name: [] for name in runs}
        # CPU seconds of this process (the clients' threads included, the broker not): less
        # sensitive than wall time to other work on a shared machine.
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        with tempfile.TemporaryDirectory() as wd:
            for r in range(args.rounds):
                order = runs[r % 3 :] + runs[: r % 3]
                for name in order:
                    tout = outs[(r, name)]
                    c0 = time.process_time()
                    if name == "streamgmm":
                        dt, proc = processor(bootstrap, tin, tout, args.n, str(Path(wd) / f"ck{r}"))
                        assert proc.counts["in"] == args.n == proc.counts["out"], proc.counts
                    else:
                        dt = bare_pipe(bootstrap, tin, tout, args.n, name.split("-")[1])
                    rate[name].append(args.n / dt)
                    cpu[name].append((time.process_time() - c0) / args.n * 1e6)
                bare = max(rate["bare-key"][-1], rate["bare-input"][-1])
                print(
                    f"round {r + 1}: bare pipe key-hashed {rate['bare-key'][-1]:,.0f} rec/s, "
                    f"input-partitioned {rate['bare-input'][-1]:,.0f} rec/s   "
                    f"streamgmm {rate['streamgmm'][-1]:,.0f} rec/s   "
                    f"ratio {rate['streamgmm'][-1] / bare:.2f} (vs key-hashed "
                    f"{rate['streamgmm'][-1] / rate['bare-key'][-1]:.2f}); CPU us/record: "
                    f"bare {cpu['bare-key'][-1]:.1f} / {cpu['bare-input'][-1]:.1f}, "
                    f"streamgmm {cpu['streamgmm'][-1]:.1f}"
                )
            c0 = time.process_time()
            fdt = file_path(values, wd)
            fcpu = time.process_time() - c0
        ratios = [
            o / max(a, b)
            for o, a, b in zip(rate["streamgmm"], rate["bare-key"], rate["bare-input"], strict=True)
        ]
        b = max(max(rate["bare-key"]), max(rate["bare-input"]))
        o = max(rate["streamgmm"])
        print(
            f"best: bare kafka-python pipe {b:,.0f} rec/s, streamgmm end to end {o:,.0f} rec/s "
            f"-> ratio {o / b:.2f}; per-round ratios {', '.join(f'{x:.2f}' for x in ratios)}, "
            f"median {statistics.median(ratios):.2f} (target >= 0.70)"
        )
        cpu_ratios = [
            min(a, b) / o
            for o, a, b in zip(cpu["streamgmm"], cpu["bare-key"], cpu["bare-input"], strict=True)
        ]
        print(
            f"CPU time per record, bare (cheaper variant) / streamgmm: per round "
            f"{', '.join(f'{x:.2f}' for x in cpu_ratios)}, median "
            f"{statistics.median(cpu_ratios):.2f}"
        )
        print(
            f"file path (JSONL -> JSONL, batch 1000): {args.n / fdt:,.0f} rec/s "
            f"({fcpu / args.n * 1e6:.1f} CPU us/record)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
