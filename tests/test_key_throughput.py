"""Key scope throughput changes keep every decision and number: births of many keys from one
snapshot of their pooled model, and the garbage collector's setting while the loop runs (files
only, no broker needed)."""

from __future__ import annotations

import gc
import json

import numpy as np

from streamgmm import OnlineGaussianMixture
from streamgmm.anomaly import AnomalyGate
from streamgmm.service import processor as processor_mod
from streamgmm.service.config import load_config
from streamgmm.service.processor import Processor
from streamgmm.service.state import SourcePartition, StateKey, StateStore

D = 4


def _rows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0] * D, [6.0] * D, [-6.0, 6.0, -6.0, 6.0]])
    return centres[rng.integers(0, 3, n)] + rng.standard_normal((n, D))


def _factory():
    return (
        OnlineGaussianMixture(n_components=3, warm_up=100, random_state=0),
        AnomalyGate(false_alarm_rate=0.02, random_state=0),
    )


def _store(max_live):
    st = StateStore("key", _factory, max_live=max_live)
    sp = SourcePartition.file("in")
    pooled = st.get(StateKey(sp, None))
    pooled.gate.score_and_learn(pooled.model, _rows(400))
    return st, sp


def test_births_from_one_snapshot_equal_births_one_by_one():
    """``StateStore.bear`` against ``get`` per key: the same live order, evictions and
    per-key states, byte for byte, also after every key learned rows of its own."""
    one, sp = _store(max_live=5)
    many, _ = _store(max_live=5)
    keys = [StateKey(sp, f"k{i}") for i in range(12)]
    for sk in keys:
        one.get(sk)
    many.bear(keys)
    assert list(one.live) == list(many.live)
    assert set(one.cold) == set(many.cold) and one.evictions == many.evictions == 7
    for i, sk in enumerate(keys):
        a, b = one.get(sk), many.get(sk)
        assert a.seen_at_birth == b.seen_at_birth == 400
        rows = _rows(5 + i, seed=i + 1)
        ra, rb = (s.gate.score_and_learn(s.model, rows) for s in (a, b))
        np.testing.assert_array_equal(ra.log_density, rb.log_density)
    # Every state its own: one key's learning changed no other key's copy.
    for sk in keys:
        assert one.get(sk).encode() == many.get(sk).encode()
    assert len({many.get(sk).encode() for sk in keys}) == len(keys)


def _keyed_file(tmp_path, n=3000, keys=150):
    X = _rows(n, seed=7)
    lines = []
    for i, x in enumerate(X):
        rec = {f"f{j}": float(v) for j, v in enumerate(x)}
        if i % 97 != 5:  # some records without a key: the pooled model's own
            rec["sensor"] = f"s{(i * 7919) % keys}"
        lines.append(json.dumps(rec))
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")


def _cfg(tmp_path, out, ck):
    return load_config(
        overrides={
            "input": {"path": str(tmp_path / "in.jsonl")},
            "output": {"path": str(tmp_path / out)},
            "features": [f"f{j}" for j in range(D)],
            "key_field": "sensor",
            "batch_size": 500,
            "checkpoint": {"dir": str(tmp_path / ck), "every_records": 1000},
            "model": {"scope": "key", "n_components": 3, "warm_up": 200, "random_state": 0},
        },
        env={},
    )


def _states(proc):
    st = proc.states
    return {sk.key: st.get(sk).encode() for sk in st.state_keys()}


def test_key_scope_run_is_identical_to_births_one_by_one(tmp_path, monkeypatch):
    """A key scope file run (many keys born per batch, gate on) gives the same outputs and the
    same per-key states, byte for byte, as one where each key is born on its own from its
    pooled model (the processor before births were batched)."""
    _keyed_file(tmp_path)
    new = Processor(_cfg(tmp_path, "new.jsonl", "ck-new"), handle_signals=False)
    assert new.run() == 0

    def one_by_one(self, sks):
        for sk in sks:
            self.get(sk)

    monkeypatch.setattr(StateStore, "bear", one_by_one)
    old = Processor(_cfg(tmp_path, "old.jsonl", "ck-old"), handle_signals=False)
    assert old.run() == 0
    out_new = (tmp_path / "new.jsonl").read_bytes()
    assert out_new == (tmp_path / "old.jsonl").read_bytes()
    a, b = _states(new), _states(old)
    assert len(a) > 100 and a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a)
    # Each key was born as a copy of its pooled model as it was at the start of a batch (before
    # learning it), and its rows of that batch were scored by that copy.
    outs = [json.loads(x) for x in out_new.splitlines()]
    assert sum(o["anomaly"] for o in outs) > 0
    pooled = {o["source"]["offset"] // 500: o["model_version"] for o in outs if o["key"] is None}
    first: dict[tuple[str, int], int] = {}
    for o in outs:
        if o["key"] is not None:
            first.setdefault((o["key"], o["source"]["offset"] // 500), o["model_version"])
    born = 0
    for sk in new.states.state_keys():
        s = new.states.get(sk).seen_at_birth
        if sk.key is None or not s:
            continue
        born += 1
        assert any(v == s == pooled[b] for (k, b), v in first.items() if k == sk.key), sk.key
    assert born > 100


def test_loop_runs_with_a_frozen_heap_and_puts_the_collector_back(tmp_path):
    """While the loop runs, what was alive before it is frozen (not scanned by collections)
    and generation 0 waits for GC_YOUNG objects; afterwards the collector is as it was."""
    _keyed_file(tmp_path, n=600, keys=10)
    before = gc.get_threshold()
    seen = []
    proc = Processor(_cfg(tmp_path, "out.jsonl", "ck"), handle_signals=False)
    inner = proc.process_batch

    def spy(batch):
        seen.append((gc.get_threshold()[0], gc.get_freeze_count()))
        inner(batch)

    proc.process_batch = spy
    assert proc.run() == 0
    assert seen and all(t >= processor_mod.GC_YOUNG and n > 10_000 for t, n in seen)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
