"""Unit tests of the stream processor's parts: config, codec, checkpoint files, sources, metrics."""

from __future__ import annotations

import base64
import json
import urllib.request
import zipfile

import numpy as np
import pytest

from streamgmm.service import checkpoint as ckmod
from streamgmm.service.checkpoint import CheckpointError, CheckpointStore, read_checkpoint
from streamgmm.service.cli import _overrides, _parser
from streamgmm.service.codec import Decoder, encode_dead_letter
from streamgmm.service.config import ConfigError, load_config
from streamgmm.service.metrics import Metrics, MetricsServer
from streamgmm.service.records import RawRecord
from streamgmm.service.sources import FileSource

# -- config ------------------------------------------------------------------------------------


def test_config_precedence_yaml_env_cli(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text(
        "input: {path: a.jsonl}\nmodel: {n_components: 2, covariance_type: diag}\n"
        "batch_size: 100\nfeatures: [x, y]\n"
    )
    env = {
        "STREAMGMM_MODEL__N_COMPONENTS": "4",
        "STREAMGMM_BATCH_SIZE": "200",
        "STREAMGMM_FEATURES": "p,q,r",
        "OTHER": "1",
    }
    ns = _parser().parse_args(["run", "--batch-size", "300", "--input", "b.jsonl"])
    cfg = load_config(y, overrides=_overrides(ns), env=env)
    assert cfg.model.n_components == 4  # env over YAML
    assert cfg.model.covariance_type == "diag"  # YAML over default
    assert cfg.batch_size == 300  # CLI over env
    assert cfg.input.path == "b.jsonl"  # CLI over YAML
    assert cfg.features == ["p", "q", "r"]
    cfg2 = load_config(y, env={})
    assert (cfg2.model.n_components, cfg2.batch_size, cfg2.features) == (2, 100, ["x", "y"])


@pytest.mark.parametrize(
    ("yaml_text", "env", "needle"),
    [
        ("input: {path: a}\nmodel: {n_componnets: 3}\n", {}, "model.n_componnets"),
        ("input: {path: a}\n", {"STREAMGMM_MODEL__COVARIANCE_TYPE": "round"}, "covariance_type"),
        ("input: {path: a}\ngate: {false_alarm_rate: 2}\n", {}, "gate.false_alarm_rate"),
        ("kafka: {topics: [t]}\n", {}, "kafka.bootstrap_servers"),
        ("{}\n", {}, "no input"),
        ("[1, 2]\n", {}, "mapping"),
        ("input: {path: a\n", {}, "not valid YAML"),
    ],
)
def test_invalid_config_one_clear_error(tmp_path, yaml_text, env, needle):
    y = tmp_path / "c.yaml"
    y.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(y, env=env)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg.strip()


def test_example_configs_are_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "configs"
    f = load_config(root / "file.yaml", env={})
    k = load_config(root / "kafka.yaml", env={})
    assert f.mode == "file" and k.mode == "kafka"
    assert (
        f.fingerprint()
        != load_config(
            root / "file.yaml", overrides={"model": {"n_components": 9}}, env={}
        ).fingerprint()
    )


# -- codec -------------------------------------------------------------------------------------


def _recs(values):
    return [RawRecord(None, "f", 0, i, None, v, None) for i, v in enumerate(values)]


BAD = {
    "not json": ("{nope", "not JSON"),
    "not object": ("[1, 2]", "not a JSON object"),
    "string": ('"x"', "not a JSON object"),
    "missing": ('{"a": 1}', "missing feature 'b'"),
    "non-numeric": ('{"a": "1.5", "b": 2}', "feature 'a' is not a number"),
    "bool": ('{"a": true, "b": 2}', "feature 'a' is not a number"),
    "null": ('{"a": null, "b": 2}', "feature 'a' is not a number"),
    "nested": ('{"a": [1], "b": 2}', "feature 'a' is not a number"),
    "nan": ('{"a": NaN, "b": 2}', "feature 'a' is NaN"),
    "inf": ('{"a": 1, "b": -Infinity}', "feature 'b' is -Infinity"),
    "overflow": ('{"a": 1e400, "b": 2}', "feature 'a' overflows"),
    "big int": ('{"a": 1' + "0" * 320 + ', "b": 2}', "overflows"),
    "beyond model range": ('{"a": 1e200, "b": 2}', "feature 'a' overflows"),
    "oversized": ('{"a": 1, "b": 2, "pad": "' + "x" * 400 + '"}', "oversized"),
    "bad utf8": (b'{"a": 1, "b": \xff}', "not UTF-8"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_decoder_dead_letter_reasons(kind):
    raw, reason = BAD[kind]
    dec = Decoder(["a", "b"], max_record_bytes=340)
    out = dec.decode_batch(_recs(['{"a": 1, "b": 2}', raw, '{"a": 3, "b": 4.5}']))
    assert out.rows == [0, 2]
    assert out.X.tolist() == [[1.0, 2.0], [3.0, 4.5]]
    assert len(out.dead) == 1 and out.dead[0][0] == 1
    assert reason in out.dead[0][1]


def test_decoder_vector_field_wrong_dimension():
    dec = Decoder(["a", "b", "c"], vector_field="v")
    out = dec.decode_batch(_recs(['{"v": [1, 2, 3]}', '{"v": [1, 2]}', '{"v": "x"}', "{}"]))
    assert out.X.tolist() == [[1, 2, 3]]
    reasons = [r for _, r in out.dead]
    assert "wrong dimension: got 2 values, expected 3" in reasons[0]
    assert "not an array" in reasons[1] and "missing field 'v'" in reasons[2]


def test_decoder_infers_numeric_fields_once():
    dec = Decoder(None, key_field="id")
    out = dec.decode_batch(
        _recs(
            [
                '"x"',
                '{"id": 5, "s": "a", "x": 1, "ok": true, "y": 2.0, "timestamp": 9}',
                '{"x": 3, "y": 4}',
                '{"x": 3, "z": 4}',
            ]
        )
    )
    assert dec.features == ["x", "y"]
    assert out.keys[0] == 5 and out.timestamps[0] == 9
    assert [r for _, r in out.dead][1] == "missing feature 'y'"


def test_dead_letter_json_carries_source_error_record():
    rec = RawRecord("t", None, 2, 17, b"k1", b"\xffbad", 123)
    d = json.loads(encode_dead_letter(rec, "not UTF-8 text"))
    assert d["source"] == {"topic": "t", "partition": 2, "offset": 17}
    assert d["key"] == "k1" and d["error"] == "not UTF-8 text"
    assert d["record_encoding"] == "base64" and base64.b64decode(d["record"]) == b"\xffbad"
    d = json.loads(encode_dead_letter(rec._replace(value="y" * 50), "oversized", max_bytes=10))
    assert d["record"] == "y" * 10 and d["record_truncated"] and d["record_length"] == 50


# -- sources ---------------------------------------------------------------------------------


def test_file_source_aligned_batches_and_blank_lines(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text('{"a":1}\n\n{"a":2}\n{"a":3}\n   \n{"a":4}\n')
    src = FileSource(str(p), batch_size=2)
    assert [[r.offset for r in b] for b in src.batches()] == [[0], [2, 3], [5]]
    src = FileSource(str(p), batch_size=2, start=3)
    assert [[r.offset for r in b] for b in src.batches()] == [[3], [5]]


def test_csv_source_rows_and_malformed(tmp_path):
    p = tmp_path / "in.csv"
    p.write_text('a,b,name\n1,2,"x"\n3,4\n5,"6",y\n7,8,"multi\nline"\n')
    (batch,) = list(FileSource(str(p), batch_size=10).batches())
    assert [r.offset for r in batch] == [0, 1, 2, 3]
    assert batch[0].parsed == {"a": "1", "b": "2", "name": "x"}
    assert batch[1].parsed.startswith("wrong dimension") and batch[1].value == "3,4"
    assert batch[3].value == '7,8,"multi\nline"'


# -- checkpoint files ----------------------------------------------------------------------------


def _save(store, i):
    return store.save({"model.x": np.arange(4.0) + i}, {"offsets": {"files": {"f": i}}})


def test_checkpoint_roundtrip_keep_and_atomic_failure(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, keep=2)
    for i in range(4):
        _save(store, i)
    assert [p.name for p in store.paths()] == ["ckpt-000000000003.npz", "ckpt-000000000004.npz"]
    ck = store.load_latest()
    assert ck.meta["offsets"]["files"]["f"] == 3 and ck.arrays["model.x"][0] == 3.0
    before = sorted(p.name for p in tmp_path.iterdir())

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckmod.np, "savez", boom)
    with pytest.raises(OSError):
        _save(store, 9)
    # No partial file, no temp file, previous checkpoints intact.
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    monkeypatch.undo()
    assert store.load_latest().meta["offsets"]["files"]["f"] == 3


def test_checkpoint_corrupt_falls_back_then_refuses(tmp_path, caplog):
    store = CheckpointStore(tmp_path, keep=3)
    for i in range(3):
        _save(store, i)
    newest = store.paths()[-1]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    with caplog.at_level("ERROR"):
        ck = store.load_latest()
    assert ck.meta["offsets"]["files"]["f"] == 1
    assert "skipping unusable checkpoint" in caplog.text
    for p in store.paths()[:-1]:
        p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"no usable checkpoint.*--fresh"):
        store.load_latest()


def test_checkpoint_checksum_and_version_checked(tmp_path):
    store = CheckpointStore(tmp_path)
    path = _save(store, 1)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    tampered = dict(arrays)
    tampered["model.x"] = tampered["model.x"] + 1  # valid zip, wrong content
    np.savez(tmp_path / "t.npz", **tampered)
    with pytest.raises(CheckpointError, match="checksum"):
        read_checkpoint(tmp_path / "t.npz")
    meta = json.loads(arrays["__meta__"].tobytes())
    meta["format_version"] = 99
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    arrays["__sha256__"] = np.frombuffer(
        ckmod._digest({k: v for k, v in arrays.items() if k != "__sha256__"}).encode(), np.uint8
    )
    np.savez(tmp_path / "v.npz", **arrays)
    with pytest.raises(CheckpointError, match="version 99"):
        read_checkpoint(tmp_path / "v.npz")


def test_checkpoint_never_unpickles(tmp_path):
    p = tmp_path / "evil.npz"
    np.savez(p, obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="unreadable"):
        read_checkpoint(p)
    assert zipfile.is_zipfile(p)
    with pytest.raises(ValueError, match="dtype object"):
        CheckpointStore(tmp_path / "s").save({"x": np.array([None], dtype=object)}, {})


# -- metrics -------------------------------------------------------------------------------------


def test_metrics_server_serves_metrics_and_health():
    m = Metrics()
    m.records_in.inc(5)
    m.dead_letters.inc(2)
    server = MetricsServer(m, port=0)
    try:
        base = f"http://127.0.0.1:{server.port}"
        text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert "streamgmm_records_in_total 5.0" in text
        assert "streamgmm_dead_letters_total 2.0" in text
        assert "streamgmm_checkpoint_age_seconds" in text
        health = json.loads(urllib.request.urlopen(base + "/healthz", timeout=5).read())
        assert health["status"] == "ok" and health["records_in"] == 5
    finally:
        server.close()


def test_kafka_clients_share_brokers_client_id_and_reconnect_backoff():
    """One place for the settings every kafka-python client of the service gets."""
    cfg = load_config(
        overrides={
            "kafka": {
                "bootstrap_servers": "a:9092,b:9093",
                "topics": ["t"],
                "group_id": "g",
                "output_topic": "o",
                "client_id": "me",
                "reconnect_backoff_max_ms": 700,
            }
        },
        env={},
    ).kafka
    assert cfg.client_kwargs() == {
        "bootstrap_servers": ["a:9092", "b:9093"],
        "client_id": "me",
        "reconnect_backoff_max_ms": 700,
    }
    assert cfg.client_kwargs("admin")["client_id"] == "me-admin"
