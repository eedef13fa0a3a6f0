"""The changelog's local cache on disk: a base, deltas after it, and the chain check.

Real files in a temporary directory; the states are opaque bytes to the cache."""

from __future__ import annotations

import os

from streamgmm.service.changelog_cache import LocalCache
from streamgmm.service.state import SourcePartition, StateKey

SP = SourcePartition.kafka("in", 1)


def _sk(key):
    return StateKey(SP, key)


def _rec(seq, offset):
    return {"seq": seq, "offset": offset, "id": f"id{seq}"}


def _all(states):
    return lambda: ([(sk, b, None) for sk, b in states.items()], {})


def test_deltas_carry_only_changed_states_and_load_back_the_newest_copy(tmp_path):
    cache = LocalCache(tmp_path)
    states = {_sk(None): b"pooled-1" * 50, **{_sk(f"k{i}"): bytes([i]) * 400 for i in range(20)}}
    assert cache.write(SP, _rec(1, 100), None, None, {}, _all(states)) == "full"
    base = cache.bytes_written
    # The next checkpoint changed two states: only they are written.
    changed = {_sk(None): b"pooled-2" * 50, _sk("k3"): b"\xff" * 400}
    assert cache.write(SP, _rec(2, 180), "id1", changed, {}, _all(states)) == "delta"
    assert cache.bytes_written - base < base / 5
    states.update(changed)

    ps = LocalCache(tmp_path).load(SP)  # a new process
    assert ps.source == "cache" and ps.offset == 180 and ps.seq == 2
    assert {sk: b for sk, (b, _) in ps.states.items()} == states


def test_a_write_that_does_not_follow_the_cached_record_is_a_full_copy(tmp_path):
    cache = LocalCache(tmp_path)
    states = {_sk("a"): b"a" * 100}
    cache.write(SP, _rec(1, 10), None, None, {}, _all(states))
    # prev is not the record the cache holds (another instance wrote in between).
    kind = cache.write(SP, _rec(5, 50), "id4", {_sk("a"): b"b" * 100}, {}, _all(states))
    assert kind == "full"


def test_deltas_larger_than_their_base_trigger_a_new_base(tmp_path):
    cache = LocalCache(tmp_path)
    states = {_sk(f"k{i}"): b"x" * 1000 for i in range(4)}
    cache.write(SP, _rec(1, 1), None, None, {}, _all(states))
    kinds = []
    for seq in range(2, 12):
        changed = {_sk("k0"): bytes([seq]) * 1000, _sk("k1"): bytes([seq]) * 1000}
        states.update(changed)
        kinds.append(cache.write(SP, _rec(seq, seq), f"id{seq - 1}", changed, {}, _all(states)))
    assert "full" in kinds and kinds[0] == "delta"
    left = sorted(p.name for p in (tmp_path / "changelog-cache").iterdir())
    assert len(left) <= 4, left  # the deltas of an old base are removed
    ps = LocalCache(tmp_path).load(SP)
    assert ps.seq == 11 and {sk: b for sk, (b, _) in ps.states.items()} == states


def test_a_delta_of_an_older_chain_is_not_applied(tmp_path):
    """A crash between writing a new base and removing the old deltas leaves deltas whose
    ``prev`` is not the base's record: loading stops at the base."""
    cache = LocalCache(tmp_path)
    states = {_sk("a"): b"a" * 100}
    cache.write(SP, _rec(1, 10), None, None, {}, _all(states))
    cache.write(SP, _rec(2, 20), "id1", {_sk("a"): b"b" * 100}, {}, _all(states))
    old_delta = next((tmp_path / "changelog-cache").glob("*.delta")).read_bytes()
    cache.write(SP, _rec(3, 30), "id2", None, {}, _all({_sk("a"): b"c" * 100}))  # a new base
    (tmp_path / "changelog-cache" / "in-1.1.delta").write_bytes(old_delta)
    ps = LocalCache(tmp_path).load(SP)
    assert ps.seq == 3 and ps.states[_sk("a")][0] == b"c" * 100


def test_a_damaged_cache_file_is_ignored(tmp_path, caplog):
    cache = LocalCache(tmp_path)
    cache.write(SP, _rec(1, 10), None, None, {}, _all({_sk("a"): b"a" * 100}))
    path = tmp_path / "changelog-cache" / "in-1.state"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    assert LocalCache(tmp_path).load(SP) is None
    assert "unreadable" in caplog.text
    os.remove(path)
    assert LocalCache(tmp_path).load(SP) is None
