"""The checkpoint directory as a local cache of the changelog (changelog mode).

In changelog mode (model scope ``partition``/``key`` on Kafka) the durable state is the
compacted changelog topic (see :mod:`~streamgmm.service.changelog`).  A restart on the same
disk need not read it whole: this cache keeps a copy of each partition's states under the
partition record (``seq`` and random ``id``) they were written with, and on assignment it is
used only if the changelog's newest partition record is that same one.

The cache follows the checkpoints: after a checkpoint's changelog write is acknowledged (and
its offsets are committed), the partitions written are copied here, so the cache never holds
anything the changelog does not, and after a crash (SIGKILL, OOM kill) it is at most one
checkpoint behind the changelog: one behind, it is stale and ignored, at worst costing the
read it was meant to spare.

Cost: one checkpoint writes only the states the changelog write sent (those that changed), as
a *delta* file after the partition's *base* file; a base is rewritten whole (and its deltas
removed) once the deltas have grown larger than it, so the bytes written per checkpoint stay
proportional to the states that changed (about twice them, amortised), not to the number of
keys a partition holds.

Files, per input partition (``changelog-cache/<topic>-<partition>``):

``.state``
    the base: every state of the partition, its partition record, its chunk keys;
``.<n>.delta`` (n = 1, 2, ...)
    the states written by one later checkpoint, its partition record, and ``prev``: the ``id``
    of the record the file before it holds.

Each file is one state-codec container (no pickle, CRC-32) written to a temporary file and
renamed into place, so a crash leaves either the old file or the new one, never a torn one
(and a torn one, after a power loss, fails its checksum and is ignored).  Loading applies the
deltas in order while each one's ``prev`` is the record reached so far: a delta left over from
an older chain (a crash between writing a base and removing the old deltas) does not continue
it and ends the chain there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamgmm.persistence import decode_state, encode_state

from .changelog import PartitionState
from .state import SourcePartition, StateKey

__all__ = ["CACHE_FORMAT_VERSION", "LocalCache"]

log = logging.getLogger("streamgmm.service.changelog")

#: Version of a cache file.  2: base + deltas, the states' bytes in one array (1, a file of one
#: array per state, is not read: a cache that cannot be read is ignored, never an error).
CACHE_FORMAT_VERSION = 2
#: At most this many deltas after a base (bounds the files a restore opens).
MAX_DELTAS = 200

# ``[(StateKey, bytes, learned_to or None)]`` and ``{message key: chunk keys}``: a full copy.
Everything = tuple[list[tuple[StateKey, bytes, int | None]], dict[bytes, list[bytes]]]


@dataclass
class _Tip:
    """What this process last wrote for a partition: the end of its chain."""

    id: str
    base_bytes: int
    delta_bytes: int
    n_deltas: int


def _encode(sp: SourcePartition, record: dict, states, chunks, prev: str | None) -> bytes:
    blobs = [blob for _, blob, _ in states]
    ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
    arrays = {"blobs": np.frombuffer(b"".join(blobs), dtype=np.uint8), "ends": ends}
    meta = {
        "topic": sp.name,
        "partition": sp.partition,
        "record": record,
        "prev": prev,
        "keys": [sk.key for sk, _, _ in states],
        "learned_to": [lt for _, _, lt in states],
        "chunks": {
            mk.decode("latin-1"): [k.decode("latin-1") for k in keys] for mk, keys in chunks.items()
        },
    }
    return encode_state(arrays, meta, format_version=CACHE_FORMAT_VERSION, raw=True)


class LocalCache:
    """Each partition's states in ``<directory>/changelog-cache`` (see the module docstring).

    Attributes
    ----------
    writes
        ``{"full": n, "delta": n}``: files written by this process.
    bytes_written
        Their total size.
    """

    def __init__(self, directory) -> None:
        self.dir = Path(directory) / "changelog-cache"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._tips: dict[SourcePartition, _Tip] = {}
        self.writes = {"full": 0, "delta": 0}
        self.bytes_written = 0

    def _stem(self, sp: SourcePartition) -> str:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in sp.name)
        return f"{safe}-{sp.partition}"

    def _base(self, sp: SourcePartition) -> Path:
        return self.dir / f"{self._stem(sp)}.state"

    def _delta(self, sp: SourcePartition, n: int) -> Path:
        return self.dir / f"{self._stem(sp)}.{n}.delta"

    def _put(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self.bytes_written += len(data)

    # -- writing ---------------------------------------------------------------------------------
    def write(
        self,
        sp: SourcePartition,
        record: dict,
        prev: str | None,
        changed: dict[StateKey, bytes] | None,
        changed_chunks: dict[bytes, list[bytes]],
        everything: Callable[[], Everything],
    ) -> str:
        """Cache ``sp`` as of ``record``: a delta of the ``changed`` states (and the chunk keys
        of their message keys, ``[]``: not chunked) if the cache's newest copy is the record
        ``prev`` that this write followed and the deltas are still small; else a new base of
        ``everything()``.  Returns ``"delta"`` or ``"full"``."""
        tip = self._tips.get(sp)
        if (
            changed is not None
            and prev is not None
            and tip is not None
            and tip.id == prev
            and tip.delta_bytes <= tip.base_bytes
            and tip.n_deltas < MAX_DELTAS
        ):
            states = [(sk, blob, None) for sk, blob in changed.items()]
            data = _encode(sp, record, states, changed_chunks, prev)
            n = tip.n_deltas + 1
            self._put(self._delta(sp, n), data)
            self._tips[sp] = _Tip(record["id"], tip.base_bytes, tip.delta_bytes + len(data), n)
            self.writes["delta"] += 1
            return "delta"
        states, chunks = everything()
        data = _encode(sp, record, states, chunks, None)
        self._put(self._base(sp), data)
        # The old deltas no longer continue the chain (their ``prev`` is an older record's
        # id); removed so a restore does not open them.
        n = 1
        while True:
            try:
                self._delta(sp, n).unlink()
            except FileNotFoundError:
                break
            n += 1
        self._tips[sp] = _Tip(record["id"], len(data), 0, 0)
        self.writes["full"] += 1
        return "full"

    def forget(self, sp: SourcePartition) -> None:
        """``sp`` left this instance: its next cached copy here starts a new base."""
        self._tips.pop(sp, None)

    # -- reading ---------------------------------------------------------------------------------
    def load(self, sp: SourcePartition) -> PartitionState | None:
        """The cached copy of ``sp``, or None (none, or unreadable: then it is not used)."""
        path = self._base(sp)
        try:
            arrays, meta = self._read(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("local state cache %s unreadable (%s): not used", path, e)
            return None
        if meta.get("topic") != sp.name or meta.get("partition") != sp.partition:
            return None
        ps = PartitionState(sp, source="cache")
        base_bytes, delta_bytes, n = path.stat().st_size, 0, 0
        self._apply(ps, arrays, meta)
        while n < MAX_DELTAS:
            dpath = self._delta(sp, n + 1)
            try:
                arrays, meta = self._read(dpath)
            except FileNotFoundError:
                break
            except (OSError, ValueError) as e:
                log.warning("local state cache %s unreadable (%s): chain ends before it", dpath, e)
                break
            if meta.get("prev") != ps.record.get("id"):
                break  # left over from an older chain
            self._apply(ps, arrays, meta)
            delta_bytes += dpath.stat().st_size
            n += 1
        # A write after this restore continues the chain (if it follows this record).
        self._tips[sp] = _Tip(str(ps.record.get("id")), base_bytes, delta_bytes, n)
        return ps

    @staticmethod
    def _read(path: Path):
        return decode_state(
            path.read_bytes(), accept_versions=(CACHE_FORMAT_VERSION,), where=str(path)
        )

    @staticmethod
    def _apply(ps: PartitionState, arrays: dict, meta: dict) -> None:
        """Lay one file (a base or a delta) over ``ps``."""
        ps.record = meta["record"]
        ps.offset, ps.seq = int(ps.record["offset"]), int(ps.record["seq"])
        data, ends = arrays["blobs"].tobytes(), arrays["ends"]
        start = 0
        for key, learned_to, end in zip(meta["keys"], meta["learned_to"], ends, strict=True):
            ps.states[StateKey(ps.partition, key)] = (
                data[start : int(end)],
                ps.offset if learned_to is None else int(learned_to),
            )
            start = int(end)
        for mk, keys in meta["chunks"].items():
            if keys:
                ps.chunk_keys[mk.encode("latin-1")] = [k.encode("latin-1") for k in keys]
            else:
                ps.chunk_keys.pop(mk.encode("latin-1"), None)
