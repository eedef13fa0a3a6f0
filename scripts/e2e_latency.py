"""End-to-end latency of a stream system on a real broker: send -> output visible, p50 / p99.

Shared by ``bench_eos.py`` and ``bench_group.py`` so that every system (the bare kafka-python
pipe, the processor in each guarantee, a group of processor instances) is measured the same way:
a paced stream into a fresh topic while the system runs, a ``read_committed`` consumer of the
output noting when each record's output becomes visible, one clock (the sender and the reader
are this process).
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import bench_kafka as bk


def bare_system(bootstrap, tin, tout, stop: threading.Event, ready: threading.Event) -> None:
    """The bare pipe, running until ``stop``: consume, produce each record unchanged."""
    from streamgmm.service.sinks import make_producer

    c = bk.bare_consumer(bootstrap, tin)
    p = make_producer(bk.config(bootstrap, tin, tout, 1, "").kafka)
    nparts = len(p.partitions_for(tout))
    ready.set()
    while not stop.is_set():
        for tp, msgs in c.poll(timeout_ms=100, max_records=bk.MAX_POLL).items():
            for m in msgs:
                p.send(tout, value=m.value, key=m.key, partition=tp.partition % nparts)
    p.flush()
    p.close()
    c.close()


def latency_run(admin, bootstrap, partitions, system, rate, seconds) -> tuple[float, float, int]:
    """``(p50, p99, missing)`` in seconds of the paced stream's end-to-end latency.

    ``system(bootstrap, tin, tout, stop, ready)`` runs the system under test from ``tin`` to
    ``tout`` until the event ``stop``; it sets the event ``ready`` once its consumers are built
    (several processes: all of them), and the warm-up batch is sent only then, so that the
    group's joins fall into the warm-up and not into the measured stream.
    """
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic

    tin, tout = f"lat-in-{uuid.uuid4().hex[:6]}", f"lat-out-{uuid.uuid4().hex[:6]}"
    admin.create_topics([NewTopic(tin, partitions, 1), NewTopic(tout, partitions, 1)])
    seen: dict[bytes, float] = {}
    stop, reading, ready = threading.Event(), threading.Event(), threading.Event()

    def read() -> None:
        c = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        tps = [TopicPartition(tout, p) for p in range(partitions)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        while not reading.is_set():
            for msgs in c.poll(timeout_ms=20).values():
                now = time.perf_counter()
                for m in msgs:
                    seen.setdefault(m.key, now)
        c.close()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sut = threading.Thread(target=system, args=(bootstrap, tin, tout, stop, ready), daemon=True)
    sut.start()
    if not ready.wait(180):
        print("  (the system under test was not ready in 180 s)")
    # Warm-up: group join, every partition model's warm-up fit (1,000 rows), first commits.
    n_warm = 1500 * partitions
    values = bk.make_records(n_warm + int(rate * seconds), seed=1)
    prod = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)

    def wait_for(keys, timeout) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(k in seen for k in keys):
            time.sleep(0.05)

    warm = [f"w{i}".encode() for i in range(n_warm)]
    for k, v in zip(warm, values, strict=False):
        prod.send(tin, value=v, key=k)
    prod.flush()
    wait_for(warm, 60)
    if not all(k in seen for k in warm):
        print(f"  (warm-up: {sum(k in seen for k in warm)} of {n_warm} outputs seen in 60 s)")
        if os.environ.get("BENCH_DEBUG"):
            import faulthandler

            faulthandler.dump_traceback(all_threads=True)
    sent: dict[bytes, float] = {}
    n = int(rate * seconds)
    t0 = time.perf_counter()
    per_tick = max(1, rate // 100)
    for i in range(n):
        if i % per_tick == 0:  # paced in ticks of 10 ms
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        k = str(i).encode()
        sent[k] = time.perf_counter()
        prod.send(tin, value=values[n_warm + i], key=k)
    prod.flush()
    prod.close()
    wait_for(list(sent), 60)
    stop.set()
    sut.join(timeout=60)
    reading.set()
    reader.join(timeout=10)
    lat = sorted(seen[k] - t for k, t in sent.items() if k in seen)
    missing = n - len(lat)
    if not lat:
        return float("nan"), float("nan"), missing
    return lat[len(lat) // 2], lat[min(len(lat) - 1, int(0.99 * len(lat)))], missing


def latency(admin, bootstrap, partitions, system, rate, seconds):
    """:func:`latency_run`, once more on new topics if the first never got through its
    warm-up (seen now and then on the loaded 2-core machine: said in the output)."""
    p50, p99, missing = latency_run(admin, bootstrap, partitions, system, rate, seconds)
    if missing == int(rate * seconds):
        print("  (no output seen: run again on new topics)")
        p50, p99, missing = latency_run(admin, bootstrap, partitions, system, rate, seconds)
    return p50, p99, missing
