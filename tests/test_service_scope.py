"""Model scopes: one model per input partition or per record key (files and a real broker).

Data: scikit-learn's bundled handwritten digits, keyed by their label (10 keys, "sensors" that
each have their own distribution), on 8 pixel features.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from _kafka import read_all
from kafka import KafkaProducer
from sklearn.datasets import load_digits

from streamgmm.service.checkpoint import CheckpointError
from streamgmm.service.config import ConfigError, load_config
from streamgmm.service.processor import Processor

FEATURES = [f"p{i}" for i in (20, 21, 26, 28, 33, 36, 42, 43)]  # pixels that vary


def _digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    cols = [int(f[1:]) for f in FEATURES]
    return d.data[:, cols], d.target


def _records(n_bad: int = 30, n_keyless: int = 40) -> tuple[list[str], Counter, int]:
    """JSON lines: digits keyed by label, some invalid, some without a key. Returns the lines,
    the valid records per key and the number of valid records without a key."""
    X, y = _digits()
    lines, per_key, keyless = [], Counter(), 0
    for i, (x, label) in enumerate(zip(X, y, strict=True)):
        rec = {f: float(v) for f, v in zip(FEATURES, x, strict=True)}
        if i % 60 == 7 and n_bad:
            n_bad -= 1
            rec[FEATURES[3]] = "broken"  # a dead letter; the model must not see it
            rec["sensor"] = f"d{label}"
        elif i % 40 == 3 and n_keyless:
            n_keyless -= 1
            keyless += 1
        else:
            # Digit 9 after record 1200 comes from a new sensor: a key born late.
            rec["sensor"] = "late9" if i >= 1200 and label == 9 else f"d{label}"
            per_key[rec["sensor"]] += 1
        lines.append(json.dumps(rec))
    return lines, per_key, keyless


def _file_cfg(tmp_path, **over):
    d = {
        "input": {"path": str(tmp_path / "in.jsonl")},
        "output": {"path": str(tmp_path / "out.jsonl")},
        "features": FEATURES,
        "key_field": "sensor",
        "batch_size": 100,
        "checkpoint": {"dir": str(tmp_path / "ck"), "every_records": 300},
        "model": {
            "scope": "key",
            # Delivery is tested with a fixed K: with "auto" the component life cycle holds
            # back poorly explained rows while a new component may be forming (by design not
            # learned, so not countable as delivered-and-learned).
            "n_components": 1,
            "covariance_type": "diag",
            "warm_up": 40,
            "random_state": 0,
        },
        "gate": {"enabled": False},  # every valid record is learned exactly once
    }
    for k, v in over.items():
        if isinstance(v, dict):
            d.setdefault(k, {}).update(v)
        else:
            d[k] = v
    return load_config(overrides=d, env={})


def _file_states(proc: Processor) -> dict:
    """``{key: (rows learned by that key's model, model)}`` of a file run."""
    st = proc.states
    return {sk.key: (st.get(sk).n_own, st.get(sk).model) for sk in st.state_keys()}


@pytest.fixture
def keyed_file(tmp_path):
    lines, per_key, keyless = _records()
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path, lines, per_key, keyless


def test_file_key_scope_one_model_per_key_learns_exactly_its_records(keyed_file):
    tmp_path, lines, per_key, keyless = keyed_file
    proc = Processor(_file_cfg(tmp_path), handle_signals=False)
    assert proc.run() == 0
    states = _file_states(proc)
    assert {k: n for k, (n, _) in states.items() if k is not None} == dict(per_key)
    # The pooled model (key None) learns every valid record: the keyed ones and the keyless.
    assert states[None][0] == sum(per_key.values()) + keyless
    outs = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    dead = (tmp_path / "out.dlq.jsonl").read_text().splitlines()
    assert len(outs) + len(dead) == len(lines) and len(dead) == 30
    assert [o["source"]["offset"] for o in outs] == sorted(o["source"]["offset"] for o in outs)
    # A key's models differ: digit 0 and digit 1 do not share their means.
    assert not np.allclose(states["d0"][1].means_, states["d1"][1].means_)
    # A key born after the pooled model exists is scored from its first record: it starts as
    # a copy of the pooled model.
    late = [o for o in outs if o["key"] == "late9"]
    assert late[0]["source"]["offset"] > 1200 and late[0]["log_density"] is not None
    assert late[0]["model_version"] > 1000  # the pooled model's rows, at its birth
    sk = next(sk for sk in proc.states.state_keys() if sk.key == "late9")
    assert proc.states.get(sk).seen_at_birth == late[0]["model_version"]


def test_file_key_scope_restart_resumes_every_key(keyed_file):
    tmp_path, *_ = keyed_file
    ref = Processor(
        _file_cfg(tmp_path, output={"path": str(tmp_path / "ref.jsonl")}, checkpoint={"dir": None}),
        handle_signals=False,
    )
    ref.run()
    first = Processor(_file_cfg(tmp_path, max_records=900), handle_signals=False)
    first.run()
    resumed = Processor(_file_cfg(tmp_path), handle_signals=False)
    assert resumed.restored_from is not None
    resumed.run()
    a, b = _file_states(ref), _file_states(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k][0] == b[k][0], k
        np.testing.assert_array_equal(a[k][1].means_, b[k][1].means_)
    assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "ref.jsonl").read_bytes()


def test_idle_keys_are_evicted_and_restored_identically(keyed_file):
    tmp_path, *_ = keyed_file
    ref = Processor(_file_cfg(tmp_path, checkpoint={"dir": None}), handle_signals=False)
    ref.run()
    small = Processor(
        _file_cfg(
            tmp_path,
            output={"path": str(tmp_path / "small.jsonl")},
            model={"max_live_keys": 3},
            checkpoint={"dir": None},
        ),
        handle_signals=False,
    )
    small.run()
    assert small.states.evictions > 50 and small.states.restores > 50
    assert len(small.states.live) == 3 + 1  # + the pooled model: never evicted, not counted
    assert (tmp_path / "small.jsonl").read_bytes() == (tmp_path / "out.jsonl").read_bytes()
    a, b = _file_states(ref), _file_states(small)
    assert {k: n for k, (n, _) in a.items()} == {k: n for k, (n, _) in b.items()}


def test_inspect_lists_every_key_of_a_checkpoint(keyed_file, capsys):
    from streamgmm.service.cli import main

    tmp_path, _, per_key, _ = keyed_file
    Processor(_file_cfg(tmp_path), handle_signals=False).run()
    assert main(["inspect", str(tmp_path / "ck"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["scope"] == "key"
    assert {st["key"]: st["rows_own"] for st in s["states"] if st["key"]} == dict(per_key)


def test_scope_configuration_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"partition.*needs Kafka"):
        _file_cfg(tmp_path, model={"scope": "partition"})
    with pytest.raises(ConfigError, match="needs key_field"):
        _file_cfg(tmp_path, key_field=None)


def test_checkpoint_of_another_scope_is_refused(keyed_file):
    tmp_path, *_ = keyed_file
    Processor(_file_cfg(tmp_path, max_records=300), handle_signals=False).run()
    with pytest.raises(CheckpointError, match="model scope 'key', configured 'global'"):
        Processor(_file_cfg(tmp_path, model={"scope": "global"}), handle_signals=False)


# -- Kafka ------------------------------------------------------------------------------------


def _produce_keyed(bootstrap, topic, partitions: int) -> tuple[Counter, Counter]:
    """Digits keyed by label, each label on partition label % partitions; some invalid. Returns
    valid records per (partition, key) and per partition."""
    X, y = _digits()
    prod = KafkaProducer(bootstrap_servers=bootstrap)
    per_key, per_part = Counter(), Counter()
    for i, (x, label) in enumerate(zip(X, y, strict=True)):
        p, key = int(label) % partitions, f"d{label}"
        if i % 50 == 11:
            value = b'{"p20": "oops"}'
        else:
            value = json.dumps(dict(zip(FEATURES, x.tolist(), strict=True))).encode()
            per_key[(p, key)] += 1
            per_part[p] += 1
        prod.send(topic, value=value, key=key.encode(), partition=p)
    prod.flush()
    prod.close()
    return per_key, per_part


def _kafka_cfg(bootstrap, tin, tout, group, ckdir, scope):
    return load_config(
        overrides={
            "kafka": {
                "bootstrap_servers": bootstrap,
                "topics": [tin],
                "output_topic": tout,
                "dead_letter_topic": tout + ".dlq",
                "group_id": group,
                "max_poll_records": 300,
            },
            "features": FEATURES,
            "checkpoint": {"dir": str(ckdir), "every_records": 500},
            "model": {
                "scope": scope,
                "n_components": 1,  # fixed K: see _file_cfg
                "covariance_type": "diag",
                "warm_up": 40,
            },
            "gate": {"enabled": False},
            # Every run here reads a topic produced before it starts, of far less than the
            # consumer's 8 MiB per partition fetch: the first fetch of each partition brings
            # all of its records (no idle time counts until then: the idle grace), so an empty
            # poll afterwards means the input is exhausted, and 1 s is enough.
            "idle_timeout": 1.0,
        },
        env={},
    )


@pytest.mark.kafka
@pytest.mark.parametrize("scope", ["partition", "key"])
def test_kafka_scopes_learn_each_partition_and_key_exactly(
    kafka_bootstrap, new_topic, tmp_path, scope
):
    tin, tout = new_topic(3), new_topic(3)
    per_key, per_part = _produce_keyed(kafka_bootstrap, tin, 3)
    group = f"g-scope-{scope}"
    cfg = _kafka_cfg(kafka_bootstrap, tin, tout, group, tmp_path / "ck", scope)
    proc = Processor(cfg, handle_signals=False)
    assert proc.run() == 0
    assert _counts(proc.states) == _expected(per_key, per_part, scope)
    assert len(read_all(kafka_bootstrap, tout)) == sum(per_part.values())
    # A new instance with an empty checkpoint directory (another machine) restores every
    # partition's and key's state from the changelog and continues: nothing learned twice.
    more_key, more_part = _produce_keyed(kafka_bootstrap, tin, 3)
    cfg2 = _kafka_cfg(kafka_bootstrap, tin, tout, group, tmp_path / "empty", scope)
    again = Processor(cfg2, handle_signals=False)
    assert again.run() == 0
    assert _counts(again.states) == _expected(per_key + more_key, per_part + more_part, scope)
    # The directory is only the changelog's local cache now (tests/test_service_changelog_cache).
    assert [p.name for p in (tmp_path / "empty").iterdir()] == ["changelog-cache"]
    # `streamgmm inspect` reads the same state from the changelog, per partition and per key.
    r = subprocess.run(
        [sys.executable, "-m", "streamgmm.service.cli", "inspect", "--bootstrap-servers",
         kafka_bootstrap, "--topic", tin, "--group-id", group, "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    shown = {
        (p["partition"], st["key"]): st["rows_own"]
        for p in json.loads(r.stdout)["partitions"]
        for st in p["states"]
    }
    assert shown == _counts(again.states)


def _counts(st) -> dict:
    return {
        (sk.partition.partition, sk.key): st.get(sk).n_own
        for sk in st.state_keys()
        if sk.partition is not None
    }


def _expected(per_key: Counter, per_part: Counter, scope: str) -> dict:
    out = {(p, None): n for p, n in per_part.items()}
    if scope == "key":
        out.update(per_key)
    return out
