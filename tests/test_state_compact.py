"""Per-key speed and size: the gate's few-rows step, the raw state container, the gate's
reference as knots, packed checkpoints (no broker needed; all fast)."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from streamgmm import OnlineGaussianMixture
from streamgmm.anomaly import AnomalyGate
from streamgmm.persistence import StateFormatError, decode_state, encode_state
from streamgmm.service.processor import store_from_checkpoint, store_to_checkpoint
from streamgmm.service.state import (
    SourcePartition,
    StateKey,
    StateStore,
    decode_slot,
    encode_slot,
)

FIXTURE = Path(__file__).parent / "fixtures" / "slot_v1.npz"


def _cancer() -> np.ndarray:
    """Breast cancer, 10 mean features, standardised, in a fixed shuffled order."""
    X = load_breast_cancer().data[:, :10]
    X = (X - X.mean(0)) / X.std(0)
    return X[np.random.default_rng(0).permutation(len(X))]


def _fitted(X, n=300):
    model = OnlineGaussianMixture(n_components=2, warm_up=200, random_state=0)
    gate = AnomalyGate(false_alarm_rate=0.02, random_state=0)
    gate.score_and_learn(model, X[:n])
    return model, gate


def test_few_rows_step_judges_and_learns_like_one_row_batches():
    """score_and_learn_few (a key's row or two) against the batch step on one-row batches: the
    same flags and learned rows; log-densities and the model agree far within the batch-size
    tolerance (the one-row kernel and the mini-batch update are different float paths: here
    0.002 nats/row apart, while batches of 50 are 0.6 apart from batches of 1)."""
    X = _cancer()
    m1, g1 = _fitted(X)
    m2, g2 = _fitted(X)
    rows = X[300:]
    assert g2.few_rows(m2, 3) and not g2.few_rows(m2, 4)
    batch = [g1.score_and_learn(m1, rows[i : i + 1]) for i in range(len(rows))]
    few = [g2.score_and_learn_few(m2, rows[i : i + 2]) for i in range(0, len(rows), 2)]
    a = type(batch[0])(*(np.concatenate(f) for f in zip(*batch, strict=True)))
    b = type(few[0])(*(np.concatenate(f) for f in zip(*few, strict=True)))
    assert a.anomaly.sum() > 0  # some rows flagged: the comparison covers flags
    assert np.array_equal(a.anomaly, b.anomaly) and np.array_equal(a.learned, b.learned)
    assert np.mean(np.abs(a.log_density - b.log_density)) < 0.01
    np.testing.assert_allclose(a.tail_probability, b.tail_probability, atol=0.02)
    np.testing.assert_allclose(a.proba, b.proba, atol=0.02)
    np.testing.assert_allclose(a.threshold, b.threshold, rtol=1e-3)
    np.testing.assert_allclose(m1.means_, m2.means_, atol=1e-3)
    assert abs(m1.score(X[:300]) - m2.score(X[:300])) < 0.01
    assert m1.n_samples_seen_ == m2.n_samples_seen_
    assert (g1.n_flagged_, g1.n_observed_) == (g2.n_flagged_, g2.n_observed_)


def test_score_proba_one_is_score_one_and_predict_proba_one():
    X = _cancer()
    model, _ = _fitted(X)
    for x in X[300:320]:
        ld, resp = model.score_proba_one(x)
        assert ld == model.score_one(x)
        np.testing.assert_array_equal(resp, model.predict_proba_one(x))
    with pytest.raises(ValueError):
        model.score_proba_one(np.full(10, np.nan))


def test_raw_container_round_trip_and_corruption():
    arrays = {"a": np.arange(6.0).reshape(2, 3), "i": np.arange(3), "b": np.array([True])}
    blob = encode_state(arrays, {"x": 1}, format_version=7, raw=True)
    got, meta = decode_state(blob, accept_versions=(7,))
    assert meta == {"x": 1, "format_version": 7}
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v)
    got["a"][0, 0] = 5.0  # writable
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x10
    for bad in (bytes(flipped), blob[:-3], blob[:10]):
        with pytest.raises(StateFormatError):
            decode_state(bad, accept_versions=(7,))
    with pytest.raises(StateFormatError, match="version"):
        decode_state(blob, accept_versions=(1,))
    with pytest.raises(ValueError, match="numbers only"):
        encode_state({"o": np.array([object()])}, {}, raw=True)


def test_old_slot_format_still_loads_and_continues_exactly():
    """A slot of format 1 (npz, gate state 2 with its full calibration sample), written before
    this change, loads; re-encoded in the new formats it continues bit for bit."""
    model, gate, meta = decode_slot(FIXTURE.read_bytes())
    assert meta["format_version"] == 1 and gate._ref.size > 1000
    assert model.n_samples_seen_ == 1200
    blob = encode_slot(model, gate)
    assert blob[:4] == b"SGMS"
    m2, g2, meta2 = decode_slot(blob)
    assert meta2["format_version"] == 2
    X = np.random.default_rng(3).normal(2.5, 2.0, (50, 3))
    a, b = gate.score_and_learn(model, X), g2.score_and_learn(m2, X)
    for f, g in zip(a, b, strict=True):
        assert np.array_equal(f, g, equal_nan=True)
    # At its next refresh the gate keeps knots only: the state shrinks.
    gate.calibrate(model)
    assert gate._ref.size <= 64
    assert len(encode_slot(model, gate)) < len(blob) - 10_000


def test_reference_knots_keep_thresholds_and_tails():
    """64 knots of the survival curve instead of 2,000 scores: thresholds within 1e-3 of the
    full sample's, tail probabilities within a tenth (relative) where flags are decided."""
    import streamgmm.anomaly as an

    X = _cancer()
    model, _ = _fitted(X)
    scores = -model.score_samples(model.sample(2000, random_state=1)[0])
    small = AnomalyGate(false_alarm_rate=0.01)
    small._set_reference(scores, "model")
    full_knots, an.REF_KNOTS = an.REF_KNOTS, 10**9
    try:
        full = AnomalyGate(false_alarm_rate=0.01)
        full._set_reference(scores, "model")
    finally:
        an.REF_KNOTS = full_knots
    assert small._ref.size <= 64 < full._ref.size
    assert abs(small.threshold_ - full.threshold_) < 1e-3 * abs(full.threshold_)
    assert small.exclusion_threshold_ == full.exclusion_threshold_
    q = np.quantile(scores, np.linspace(0.5, 0.999, 500))
    ts, tf = small.tail_probability(q), full.tail_probability(q)
    assert np.max(np.abs(ts / tf - 1.0)) < 0.1
    # Restored exactly (knots and their ranks).
    g2 = AnomalyGate.from_state(*small.get_state())
    assert np.array_equal(g2.tail_probability(q), ts) and g2.threshold_ == small.threshold_


def test_packed_checkpoint_and_the_old_layout_both_load():
    sp = SourcePartition.file("f")

    def factory():
        return OnlineGaussianMixture(n_components=2, random_state=0), AnomalyGate()

    store = StateStore("key", factory)
    X = _cancer()
    for key in ("a", "b"):
        slot = store.get(StateKey(sp, key))
        slot.gate.score_and_learn(slot.model, X[:250])
    arrays, meta = store_to_checkpoint(store)
    meta["scope"] = "key"
    assert set(arrays) == {"states.bytes", "states.ends"}
    old = {f"state.{i}": np.frombuffer(b, np.uint8) for i, (_, b) in enumerate(store.encoded())}
    for arr in (arrays, old):
        back = StateStore("key", factory)
        store_from_checkpoint(types.SimpleNamespace(meta=meta, arrays=arr, path="ck"), back)
        for key in ("a", "b"):
            got = back.get(StateKey(sp, key)).model
            assert np.array_equal(got.means_, store.get(StateKey(sp, key)).model.means_)
