"""Hostile input: every bad record becomes one dead letter with a reason, the service never
dies, and the model is exactly the model of a run that never saw the bad records.

A fixed corpus goes through the real broker (in-process processor, real Kafka messages: null
values, invalid UTF-8 bytes, oversized messages) and through the file path; hypothesis-generated
records go through the file path (fast: no broker round trips per example). "A run without
them" on the file path is the same file with every bad line blanked: blank lines keep their
position, so mini-batches are cut at the same places and the models must be bit-identical.
"""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest
from _kafka import read_all
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer

from streamgmm.service.config import load_config
from streamgmm.service.processor import Processor

FEATURES = ["a", "b", "c"]
MAX_BYTES = 65536


def _valid(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 3.0], [0.0, 7.0, -4.0]])
    X = centres[rng.integers(0, 3, n)] + rng.standard_normal((n, 3))
    return [json.dumps(dict(zip(FEATURES, map(float, x), strict=True))).encode() for x in X]


# (raw record, what it is). All are invalid except those marked "valid".
CORPUS: list[tuple[bytes | None, str]] = [
    (b'{"a": 1.0, "b": 2.0, "c"', "truncated JSON"),
    (b'{"a": 1.0, "b": 2.0, "c": 3.0', "truncated JSON (no brace)"),
    (b'{"a": 1.0, "b": 2.0, "c": 3.0}}', "trailing garbage"),
    (b"not json at all", "not JSON"),
    (b'"just a string"', "JSON string, not an object"),
    (b"[1.0, 2.0, 3.0]", "JSON array, not an object"),
    (b"42", "JSON number, not an object"),
    (b"null", "JSON null"),
    (b'{"a": "1.0", "b": 2, "c": 3}', "number as string"),
    (b'{"a": true, "b": 2, "c": 3}', "boolean"),
    (b'{"a": null, "b": 2, "c": 3}', "null feature"),
    (b'{"a": [1], "b": 2, "c": 3}', "array feature"),
    (b'{"a": {"v": 1}, "b": 2, "c": 3}', "object feature"),
    (b'{"a": NaN, "b": 2, "c": 3}', "NaN"),
    (b'{"a": Infinity, "b": 2, "c": 3}', "Infinity"),
    (b'{"a": -Infinity, "b": 2, "c": 3}', "-Infinity"),
    (b'{"a": 1e400, "b": 2, "c": 3}', "1e400 overflows"),
    (b'{"a": -1e400, "b": 2, "c": 3}', "-1e400 overflows"),
    (b'{"a": 1e200, "b": 2, "c": 3}', "finite but squares overflow"),
    (b'{"a": ' + b"9" * 400 + b', "b": 2, "c": 3}', "400-digit integer"),
    (b'{"a": "' + b"x" * 60000 + b'", "b": 2, "c": 3}', "huge string (under the size limit)"),
    (b'{"a": ' + b"[" * 20000 + b"]" * 20000 + b', "b": 2, "c": 3}', "deep nesting"),
    (b"[" * 30000, "deep nesting, unterminated"),
    (b'{"a": 1.0, "b": 2.0, "c": 3.0, "s": "\xff\xfe"}', "invalid UTF-8"),
    (b"\xc3\x28\xa0\xa1", "invalid UTF-8, not JSON"),
    (b'\xef\xbb\xbf{"a": 1, "b": 2, "c": 3}', "UTF-8 byte order mark"),
    (b"{}", "empty object"),
    (b'{"a": 1, "b": 2}', "missing feature (wrong dimension)"),
    (b'{"x": 1, "y": 2, "z": 3, "w": 4}', "other fields only"),
    (b'{"a": 1, "b": 2, "c": 3, "pad": "' + b"x" * 70000 + b'"}', "oversized (valid JSON)"),
    (b"x" * 300_000, "oversized (300 kB)"),
    (b'{"a": 1.5, "b": -2.5, "c": 0.25, "extra": "ok", "n": {"k": [1, 2]}}', "valid"),
    (b'{"c": 3.0, "b": 2.0, "a": 1.0, "ts": null}', "valid"),
    (b'{"a": -0.0, "b": 1e-300, "c": 123456789012345678901234567890}', "valid"),
]
KAFKA_ONLY: list[tuple[bytes | None, str]] = [
    (b"", "empty value"),
    (b"   ", "whitespace value"),
    (None, "null value (tombstone)"),
]


def _is_valid(what: str) -> bool:
    return what == "valid"


# -- the file path -----------------------------------------------------------------------------


def _file_cfg(tmp_path, inp, name):
    return load_config(
        overrides={
            "input": {"path": str(inp)},
            "output": {
                "path": str(tmp_path / f"{name}.jsonl"),
                "dead_letter": str(tmp_path / f"{name}.dlq.jsonl"),
            },
            "features": FEATURES,
            "checkpoint": {"dir": str(tmp_path / f"ck-{name}"), "every_records": 700},
            "model": {"n_components": 3, "warm_up": 300, "random_state": 0},
            "batch_size": 64,
            "max_record_bytes": MAX_BYTES,
            "timestamp_field": None,
            "progress": False,
        },
        env={},
    )


def _loads(line: bytes):
    return json.loads(line.decode("utf-8", "surrogateescape"))


def _file_run(tmp_path, lines: list[bytes], name: str):
    inp = tmp_path / f"{name}.in.jsonl"
    inp.write_bytes(b"\n".join(lines) + b"\n")
    p = Processor(_file_cfg(tmp_path, inp, name), handle_signals=False)
    assert p.run() == 0
    outs = [_loads(s) for s in (tmp_path / f"{name}.jsonl").read_bytes().splitlines()]
    # a dead letter of a file line keeps the line's original bytes, UTF-8 or not
    dead = [_loads(s) for s in (tmp_path / f"{name}.dlq.jsonl").read_bytes().splitlines()]
    return p, outs, dead


def _assert_same_model(a, b):
    assert a.n_samples_seen_ == b.n_samples_seen_
    for name in ("weights_", "means_", "covariances_"):
        x, y = getattr(a, name), getattr(b, name)
        assert np.isfinite(x).all()
        np.testing.assert_array_equal(x, y)


def _mix(valid: list[bytes], bad: list[bytes], seed: int) -> tuple[list[bytes], list[int]]:
    """Bad records scattered among the valid ones; returns lines and the bad positions."""
    rng = np.random.default_rng(seed)
    pos = sorted(rng.choice(len(valid) + len(bad), len(bad), replace=False).tolist())
    lines, it_v, it_b = [], iter(valid), iter(bad)
    for i in range(len(valid) + len(bad)):
        lines.append(next(it_b) if i in set(pos) else next(it_v))
    return lines, pos


def test_corpus_through_the_file_path(tmp_path):
    valid = _valid(2000)
    records = [r for r, _ in CORPUS]
    lines, pos = _mix(valid, records, seed=1)
    p, outs, dead = _file_run(tmp_path, lines, "hostile")
    n_bad = sum(not _is_valid(w) for _, w in CORPUS)
    assert len(dead) == n_bad
    assert len(outs) == len(lines) - n_bad
    # one result per line, in order, and each bad record dead-lettered with a reason
    by_offset = {o["source"]["offset"]: "out" for o in outs}
    by_offset.update({d["source"]["offset"]: d for d in dead})
    assert sorted(by_offset) == list(range(len(lines)))
    for (_, what), i in zip(CORPUS, pos, strict=True):
        got = by_offset[i]
        if _is_valid(what):
            assert got == "out", what
        else:
            assert got != "out", f"{what} was not dead-lettered"
            assert isinstance(got["error"], str) and len(got["error"]) > 5, got["error"]
            assert got["record"], what
    # the model equals a run that never saw the bad records (blank lines keep positions)
    clean = [
        b"" if i in set(pos) and not _is_valid(CORPUS[pos.index(i)][1]) else x
        for i, x in enumerate(lines)
    ]
    q, _, _ = _file_run(tmp_path, clean, "clean")
    _assert_same_model(p.model, q.model)


# hypothesis: records built to be hostile, plus arbitrary bytes
_finite = st.floats(allow_nan=False, allow_infinity=False, width=64).filter(lambda v: abs(v) < 1e6)
_scalar = st.one_of(
    st.floats(),  # NaN, inf, huge
    st.integers(min_value=-(10**400), max_value=10**400),
    st.text(max_size=20),
    st.booleans(),
    st.none(),
)
_json_value = st.recursive(
    _scalar,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def _hostile_record(draw) -> bytes:
    kind = draw(st.sampled_from(["object", "bytes", "json"]))
    if kind == "bytes":
        raw = st.binary(min_size=1, max_size=60)
        return draw(raw.filter(lambda b: b"\n" not in b and b"\r" not in b and b.strip()))
    if kind == "json":
        v = draw(_json_value)
        return json.dumps(v).encode()
    obj = {}
    for f in FEATURES:
        if draw(st.integers(0, 9)) == 0:
            continue  # missing feature
        obj[f] = draw(st.one_of(_finite, _scalar, _json_value))
    obj.update(draw(st.dictionaries(st.text(max_size=8), _json_value, max_size=3)))
    return json.dumps(obj).encode()  # NaN/Infinity appear as the JSON extensions


def _oracle(raw: bytes) -> bool:
    """Is this record valid? (every feature a finite JSON number, not a bool, |x| <= 1e150)"""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return False
    if not isinstance(obj, dict):
        return False
    for f in FEATURES:
        v = obj.get(f)
        if type(v) not in (int, float):
            return False
        try:
            if not (math.isfinite(float(v)) and abs(float(v)) <= 1e150):
                return False
        except OverflowError:
            return False
    return True


BACKGROUND = _valid(600, seed=5)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(bad=st.lists(_hostile_record(), min_size=1, max_size=40), seed=st.integers(0, 2**16))
def test_hypothesis_records_never_hurt_the_service(tmp_path_factory, bad, seed):
    tmp_path = tmp_path_factory.mktemp("hyp")
    lines, pos = _mix(BACKGROUND, bad, seed)
    p, outs, dead = _file_run(tmp_path, lines, "h")
    valid_bad = [_oracle(r) for r in bad]
    assert len(outs) + len(dead) == len(lines)
    assert len(dead) == valid_bad.count(False)
    got = {o["source"]["offset"]: None for o in outs}
    got.update({d["source"]["offset"]: d for d in dead})
    for raw, ok, i in zip(bad, valid_bad, pos, strict=True):
        if ok:
            assert got[i] is None, raw
        else:
            assert got[i] is not None and got[i]["error"], raw
    assert np.isfinite(p.model.means_).all() and np.isfinite(p.model.covariances_).all()
    # bad records removed (blanked), valid ones among them kept: the same model, bit for bit
    pos_set = {i: ok for i, ok in zip(pos, valid_bad, strict=True)}
    clean = [b"" if i in pos_set and not pos_set[i] else x for i, x in enumerate(lines)]
    q, _, _ = _file_run(tmp_path, clean, "c")
    _assert_same_model(p.model, q.model)


# -- the same corpus through the real broker ---------------------------------------------------


@pytest.mark.kafka
def test_corpus_through_the_real_broker(kafka_bootstrap, new_topic, tmp_path):
    tin, tout, tdlq = new_topic(2), new_topic(1), new_topic(1)
    corpus = CORPUS + KAFKA_ONLY
    valid = _valid(3000, seed=2)
    lines, pos = _mix(valid, [r for r, _ in corpus], seed=3)
    prod = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5, max_request_size=2**21)
    keys = []
    for i, v in enumerate(lines):
        k = f"k{i}".encode() if i % 7 else b"\xff\xfe-key-" + str(i).encode()  # odd keys too
        keys.append(k)
        prod.send(tin, value=v, key=k, partition=i % 2)
    prod.flush()
    prod.close()
    cfg = load_config(
        overrides={
            "kafka": {
                "bootstrap_servers": kafka_bootstrap,
                "topics": [tin],
                "output_topic": tout,
                "dead_letter_topic": tdlq,
                "group_id": f"g-{tin}",
                "max_poll_records": 300,
            },
            "features": FEATURES,
            "checkpoint": {"dir": str(tmp_path / "ck"), "every_records": 1000},
            "model": {"n_components": 3, "warm_up": 300, "random_state": 0},
            "gate": {"enabled": False},
            "max_record_bytes": MAX_BYTES,
            "idle_timeout": 2.0,
        },
        env={},
    )
    p = Processor(cfg, handle_signals=False)
    assert p.run() == 0  # never died
    outs, dead = read_all(kafka_bootstrap, tout), read_all(kafka_bootstrap, tdlq)
    n_bad = sum(not _is_valid(w) for _, w in corpus)
    assert len(dead) == n_bad and len(outs) == len(lines) - n_bad
    res = {}
    for m in outs:
        o = json.loads(m.value)
        res[(o["source"]["partition"], o["source"]["offset"])] = ("out", m.key)
    for m in dead:
        d = json.loads(m.value)
        res[(d["source"]["partition"], d["source"]["offset"])] = (d, m.key)
    assert len(res) == len(lines)
    for (raw, what), i in zip(corpus, pos, strict=True):
        kind, key = res[(i % 2, i // 2)]
        assert key == keys[i]  # dead letters and outputs keyed like their input
        if _is_valid(what):
            assert kind == "out", what
        else:
            assert kind != "out", f"{what} was not dead-lettered"
            assert kind["error"], what
            if raw is not None and len(raw) <= MAX_BYTES:
                if kind.get("record_encoding") == "base64":  # not UTF-8: kept byte for byte
                    assert base64.b64decode(kind["record"]) == raw, what
                else:
                    assert kind["record"] == raw.decode("utf-8"), what
    # A valid record with a gross value (1.2e29 among values of order 1) is scored but,
    # while such values stay rare, deliberately not learned: one record must not wreck the model.
    n_gross = sum(
        _is_valid(w) and max(abs(float(json.loads(r)[f])) for f in FEATURES) > 1e6
        for r, w in corpus
    )
    assert n_gross == 1
    assert p.model.n_samples_seen_ == len(lines) - n_bad - n_gross
    assert np.isfinite(p.model.means_).all() and np.isfinite(p.model.covariances_).all()
