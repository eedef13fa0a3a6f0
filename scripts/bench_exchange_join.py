#!/usr/bin/env python
"""Start-up of a joiner of the model exchange: from the newest snapshot vs the whole topic.

Writers (``--instances`` ModelExchange objects in this process, K=5 full, D=10, each learning
``--rows`` rows of one mixture per tick) exchange for ``--ticks`` ticks, publishing a snapshot
every ``--snapshot-every`` ticks (the exchange is not trimmed, so the whole history stays
readable for the peer; of the snapshot topic only the newest snapshot is kept, as trimming
would).  Then a joiner restores the group's model twice per round, side by side: from the
newest snapshot, and from the topic's beginning (``from_snapshot=False``: what every join did
before snapshots).  Reports the median restore time of ``--rounds`` rounds, the exchange
messages each read, and checks that both joiners built the same model.

    python scripts/bench_exchange_join.py [--ticks 110,1010] [--instances 2] [--rounds 3]

Uses $KAFKA_BOOTSTRAP_SERVERS if set, else starts a broker and stops it at the end.
"""

from __future__ import annotations

import argparse
import copy
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
import kafka_broker  # noqa: E402


def _cfg(bootstrap):
    from streamgmm.service.config import load_config

    return load_config(
        overrides={
            "kafka": {
                "bootstrap_servers": bootstrap,
                "topics": ["x"],
                "group_id": "bench",
                "output_topic": "x-out",
            },
            "model": {"n_components": bk.K, "covariance_type": "full", "warm_up": 200},
            "gate": {"enabled": False},
        },
        env={},
    )


def run(bootstrap, ticks, instances, rows, snapshot_every, rounds):
    from streamgmm.service.exchange import ModelExchange
    from streamgmm.service.processor import build_model
    from streamgmm.service.state import Slot

    cfg = _cfg(bootstrap)
    rng = np.random.default_rng(0)
    means = rng.normal(0, 4, (bk.K, bk.D))
    topic = f"bench-exchange-{uuid.uuid4().hex[:6]}"
    fresh = build_model(cfg)
    writers = []
    for i in range(instances):
        kcfg = cfg.kafka.model_copy(update={"client_id": f"bench-w{i}"})
        slot = Slot(*copy.deepcopy(fresh))
        ex = ModelExchange(kcfg, topic, snapshot_every=snapshot_every, trim_after=None)
        ex.restore(slot)
        writers.append((slot, ex))
    t0 = time.perf_counter()
    for _ in range(ticks):
        for slot, ex in writers:
            X = means[rng.integers(0, bk.K, rows)] + rng.standard_normal((rows, bk.D))
            slot.gate.score_and_learn(slot.model, X)
            ex.learned(slot, X)
            ex.tick(slot)
    t_write = time.perf_counter() - t0
    n_snap = sum(ex.snapshots_sent for _, ex in writers)
    # What trimming leaves of the snapshot topic (the exchange itself stays whole for the
    # peer): the newest snapshot only.
    w = writers[0][1]
    snaps = w._snapshots()
    if len(snaps) > 1:
        w.admin.delete_records({w.stp: max(s.offset for s in snaps)}, timeout_ms=10000)
    for _, ex in writers:
        ex.close()
    times = {True: [], False: []}
    read = {}
    models = {}
    for _ in range(rounds):
        for from_snapshot in (True, False):
            slot = Slot(*copy.deepcopy(fresh))
            ex = ModelExchange(cfg.kafka, topic, from_snapshot=from_snapshot)
            t = time.perf_counter()
            ex.restore(slot)
            times[from_snapshot].append(time.perf_counter() - t)
            read[from_snapshot] = (ex.start_offset, ex.read_count)
            models[from_snapshot] = slot.model
            ex.close()
    a, b = models[True], models[False]
    assert a.n_samples_seen_ == b.n_samples_seen_ == ticks * instances * rows
    np.testing.assert_allclose(a.covariances_, b.covariances_, rtol=1e-9, atol=1e-12)
    snap, full = statistics.median(times[True]), statistics.median(times[False])
    print(
        f"{ticks:6d} ticks x {instances} instances ({t_write:5.1f} s writing, {n_snap} "
        f"snapshots): exchange messages read: snapshot joiner {read[True][1]} from offset "
        f"{read[True][0]}, whole topic {read[False][1]}; restore {snap * 1000:7.1f} ms vs "
        f"{full * 1000:7.1f} ms (x{full / snap:.1f})",
        flush=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ticks", default="110,1010", help="comma separated")
    ap.add_argument("--instances", type=int, default=2)
    ap.add_argument("--rows", type=int, default=50, help="rows learned per instance per tick")
    ap.add_argument("--snapshot-every", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    with kafka_broker.bootstrap_servers() as bootstrap:
        for n in (int(t) for t in a.ticks.split(",")):
            run(bootstrap, n, a.instances, a.rows, a.snapshot_every, a.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
