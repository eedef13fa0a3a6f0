"""Typed input positions and the model state store, keyed by (partition, key).

:class:`SourcePartition` names one ordered input: a Kafka topic partition or a file.  Positions
(next offsets) are always keyed by it — never by a tuple here and a string there.

:class:`StateStore` holds one model + anomaly gate per :class:`StateKey` as the configured
model scope asks:

``global``
    one state for the whole input (``StateKey(None, None)``).
``partition``
    one per input partition (``StateKey(partition, None)``).
``key``
    one per record key within its partition (``StateKey(partition, key)``), plus the
    partition's *pooled* model (``StateKey(partition, None)``) that learns every valid record of
    the partition.  A key seen for the first time starts as a copy of its partition's pooled
    model (so its first records are scored by a model of its kind, not left unscored during a
    warm-up of its own); while the pooled model is itself still warming up, a new key's records
    are scored and learned by the pooled model (counted for the key: they are in the copy it
    starts from once the pooled model is fitted).  Records without a key are scored and learned
    by the pooled model alone.  Idle keys are evicted from memory beyond ``max_live`` (least
    recently used first): their encoded state is kept (a few KiB, in the checkpoint /
    changelog) and decoded again on their next record.

Each state is encoded on its own with the one state codec
(:func:`streamgmm.persistence.encode_state`), so a checkpoint file and a changelog message carry
the same bytes.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

from streamgmm.persistence import decode_state, encode_state

__all__ = [
    "SLOT_FORMAT_VERSION",
    "SourcePartition",
    "StateKey",
    "StateStore",
    "decode_slot",
    "encode_slot",
]

#: Version of one encoded model+gate state (a checkpoint entry or a changelog message).
#: 2: the state codec's raw container (a header, the arrays' bytes, a CRC-32: a fraction of the
#: cost of 1's npz + SHA-256 for a small per-key state).  1 is still read.
SLOT_FORMAT_VERSION = 2
READ_SLOT_VERSIONS = (1, 2)


class SourcePartition(NamedTuple):
    """One ordered input: ``("kafka", topic, partition)`` or ``("file", identity, 0)``.

    Example
    -------
    >>> sp = SourcePartition.kafka("in", 3)
    >>> sp.label, SourcePartition.parse(sp.label) == sp
    ('in:3', True)
    """

    kind: str
    name: str
    partition: int

    @classmethod
    def kafka(cls, topic: str, partition: int) -> SourcePartition:
        return cls("kafka", topic, int(partition))

    @classmethod
    def file(cls, identity: str) -> SourcePartition:
        return cls("file", identity, 0)

    @property
    def tp(self) -> tuple[str, int]:
        """``(topic, partition)`` as kafka-python's ``TopicPartition`` takes it."""
        return (self.name, self.partition)

    @property
    def label(self) -> str:
        """``topic:partition`` (Kafka) or the file's identity: how checkpoints name it."""
        return f"{self.name}:{self.partition}" if self.kind == "kafka" else self.name

    @classmethod
    def parse(cls, label: str, kind: str = "kafka") -> SourcePartition:
        if kind == "kafka":
            t, p = label.rsplit(":", 1)
            return cls.kafka(t, int(p))
        return cls.file(label)


class StateKey(NamedTuple):
    """Where a model lives: its input partition (``None``: global) and record key."""

    partition: SourcePartition | None
    key: str | None


def encode_slot(model, gate, extra: dict | None = None, *, compress: bool = False) -> bytes:
    """One model + gate state as bytes (the state codec; no pickle, checksummed)."""
    m_arrays, m_meta = model.get_state()
    g_arrays, g_meta = gate.get_state()
    arrays = {f"model.{k}": v for k, v in m_arrays.items()}
    arrays.update({f"gate.{k}": v for k, v in g_arrays.items()})
    meta = {"model_meta": m_meta, "gate_meta": g_meta, **(extra or {})}
    return encode_state(
        arrays, meta, format_version=SLOT_FORMAT_VERSION, compress=compress, raw=True
    )


def split_arrays(arrays: dict, prefix: str) -> dict:
    n = len(prefix)
    return {k[n:]: v for k, v in arrays.items() if k.startswith(prefix)}


def restore_pair(arrays: dict, model_meta: dict, gate_meta: dict):
    """``(model, gate)`` from their arrays (``model.*``, ``gate.*``) and metadata."""
    from streamgmm import OnlineGaussianMixture
    from streamgmm.anomaly import AnomalyGate

    model = OnlineGaussianMixture.from_state(split_arrays(arrays, "model."), model_meta)
    gate = AnomalyGate.from_state(split_arrays(arrays, "gate."), gate_meta)
    return model, gate


def copy_pair(model, gate):
    """An exact, independent copy of ``(model, gate)`` through their public state API."""
    return pair_copier(model, gate)()


def pair_copier(model, gate) -> Callable[[], tuple]:
    """``() -> (model, gate)``: exact, independent copies of ``(model, gate)`` as they are now,
    their state taken once (a partition's pooled model gives birth to many keys per batch)."""
    m_arrays, m_meta = model.get_state()
    g_arrays, g_meta = gate.get_state()
    arrays = {f"model.{k}": v for k, v in m_arrays.items()}
    arrays.update({f"gate.{k}": v for k, v in g_arrays.items()})
    meta = json.dumps({"m": m_meta, "g": g_meta})

    def copy():
        mine = {k: np.array(v, copy=True) for k, v in arrays.items()}
        m = json.loads(meta)  # no shared mutable metadata
        return restore_pair(mine, m["m"], m["g"])

    return copy


def decode_slot(blob: bytes, where: str = "state"):
    """``(model, gate, meta)`` from :func:`encode_slot`'s bytes (raises ValueError)."""
    arrays, meta = decode_state(blob, accept_versions=READ_SLOT_VERSIONS, where=where)
    try:
        model, gate = restore_pair(arrays, meta["model_meta"], meta["gate_meta"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"{where}: model state cannot be restored: {e}") from None
    return model, gate, meta


class Slot:
    """A live model + gate, with what the store needs to know about it.

    ``learned_to``: input offset this state has learned up to, if beyond where its partition
    resumes (see :mod:`~streamgmm.service.changelog`).  ``seen_at_birth`` is the copied
    prior's ``n_samples_seen_`` (0 unless the state started as a copy of its partition's pooled
    model): ``n_samples_seen_ - seen_at_birth`` rows are its own; likewise ``held_at_birth``
    for the core's ``n_held_back_`` (rows offered but not learned: see :attr:`n_held_own`).
    ``dirty``: changed since it was last encoded.
    """

    __slots__ = (
        "blob",
        "dirty",
        "gate",
        "held_at_birth",
        "learned_to",
        "model",
        "pre_birth",
        "seen_at_birth",
    )

    def __init__(
        self,
        model,
        gate,
        seen_at_birth: int = 0,
        blob: bytes | None = None,
        learned_to: int | None = None,
        pre_birth: int = 0,
        held_at_birth: int = 0,
    ):
        self.model, self.gate = model, gate
        self.seen_at_birth = int(seen_at_birth)
        self.held_at_birth = int(held_at_birth)
        self.pre_birth = int(pre_birth)
        self.blob = blob
        self.dirty = blob is None
        # Restored from a changelog write that went beyond its partition's record (a crash
        # between the two): input records before this offset are in the state already.
        self.learned_to = learned_to

    @property
    def n_own(self) -> int:
        """Rows of this state's own: learned since its birth, plus (a key's) rows the pooled
        model learned for it before it was born (they are in the copy it started from)."""
        return int(getattr(self.model, "n_samples_seen_", 0)) - self.seen_at_birth + self.pre_birth

    @property
    def n_held_own(self) -> int:
        """Rows of this state's own that its model was offered but did not learn (the core's
        ``n_held_back_``: with ``n_components="auto"`` the life cycle holds poorly explained
        rows back while a component may be forming).  ``n_own + n_held_own`` is exactly the
        valid records this state was given (gate off; the gate's exclusions are not offered)."""
        return int(getattr(self.model, "n_held_back_", 0)) - self.held_at_birth

    def encode(self) -> bytes:
        if self.dirty or self.blob is None:
            extra = {
                "seen_at_birth": self.seen_at_birth,
                "pre_birth": self.pre_birth,
                "held_at_birth": self.held_at_birth,
            }
            self.blob = encode_slot(self.model, self.gate, extra)
            self.dirty = False
        return self.blob


class StateStore:
    """Model + gate per :class:`StateKey`, created on first use, evicted when idle.

    Parameters
    ----------
    scope
        ``global``, ``partition`` or ``key``.
    factory
        ``() -> (model, gate)``: a fresh pair from the configuration.
    max_live
        Key scope: at most this many decoded per-key states in memory; the least recently used
        beyond it are kept encoded only (``None``: no bound).

    Attributes
    ----------
    live
        Decoded states, least recently used first.
    cold
        Encoded states of evicted keys (bytes of :func:`encode_slot`).
    """

    def __init__(
        self, scope: str, factory: Callable[[], tuple], max_live: int | None = None
    ) -> None:
        if scope not in ("global", "partition", "key"):
            raise ValueError(f"unknown model scope {scope!r}")
        self.scope = scope
        self.factory = factory
        self.max_live = max_live
        self.live: OrderedDict[StateKey, Slot] = OrderedDict()
        self.cold: dict[StateKey, bytes] = {}
        self.learned_to: dict[StateKey, int] = {}  # of cold states restored from a changelog
        self.unsaved: set[StateKey] = set()  # evicted while changed since their last write
        # Rows of keys not born yet (their partition's pooled model was still warming up, so
        # the pooled model learned them): each key's count goes with it at birth.
        self.unborn: dict[StateKey, int] = {}
        self.evictions = 0
        self.restores = 0
        self._pooled_live = 0  # live pooled models: not counted against max_live

    # -- addressing ---------------------------------------------------------------------------
    def key_for(self, partition: SourcePartition, record_key) -> StateKey:
        """The state a record of ``partition`` with ``record_key`` belongs to."""
        if self.scope == "global":
            return StateKey(None, None)
        if self.scope == "partition" or record_key is None:
            return StateKey(partition, None)
        if isinstance(record_key, bytes):
            record_key = record_key.decode("utf-8", "surrogateescape")
        elif not isinstance(record_key, str):
            record_key = str(record_key)
        return StateKey(partition, record_key)

    def __contains__(self, sk: StateKey) -> bool:
        return sk in self.live or sk in self.cold

    def __len__(self) -> int:
        return len(self.live) + len(self.cold)

    def state_keys(self) -> list[StateKey]:
        return list(self.live) + list(self.cold)

    def get(self, sk: StateKey) -> Slot:
        """The state of ``sk``: live, decoded from its evicted bytes, or new."""
        slot = self.live.get(sk)
        if slot is not None:
            self.live.move_to_end(sk)
            return slot
        blob = self.cold.pop(sk, None)
        if blob is not None:
            model, gate, meta = decode_slot(blob, where=f"state of {sk}")
            slot = Slot(
                model,
                gate,
                meta.get("seen_at_birth", 0),
                blob,
                self.learned_to.pop(sk, None),
                meta.get("pre_birth", 0),
                meta.get("held_at_birth", 0),
            )
            if sk in self.unsaved:
                slot.dirty = True
                self.unsaved.discard(sk)
            self.restores += 1
        else:
            slot = self._new(sk)
        self.live[sk] = slot
        if sk.key is None:
            self._pooled_live += 1
        self._evict()
        return slot

    def can_bear(self, partition: SourcePartition) -> bool:
        """Whether new keys of ``partition`` can be born: its pooled model is past its warm-up
        (a copy of a warming model would warm up, slowly, on its key's few rows alone)."""
        pooled = self.get(StateKey(partition, None))
        return not getattr(pooled.model, "warming_up_", True)

    def bear(self, sks: list[StateKey]) -> None:
        """Create the states of new keys ``sks`` (not in the store), in order, as :meth:`get`
        would one by one: each a copy of its partition's pooled model, whose state is taken
        once for all of them (the pooled model does not change in between)."""
        copiers: dict[SourcePartition, Callable[[], tuple]] = {}
        for sk in sks:
            if sk.key is None or sk in self:
                self.get(sk)
                continue
            copier = copiers.get(sk.partition)
            if copier is None:
                pooled = self.get(StateKey(sk.partition, None))
                copier = copiers[sk.partition] = pair_copier(pooled.model, pooled.gate)
            else:
                self.live.move_to_end(StateKey(sk.partition, None))  # as get() would
            self.live[sk] = self._new(sk, copier)
            self._evict()

    def _new(self, sk: StateKey, copier: Callable[[], tuple] | None = None) -> Slot:
        if sk.key is not None:
            if copier is None:
                pooled = self.get(StateKey(sk.partition, None))
                copier = pair_copier(pooled.model, pooled.gate)
            model, gate = copier()
            seen = int(getattr(model, "n_samples_seen_", 0))
            held = int(getattr(model, "n_held_back_", 0))
            return Slot(model, gate, seen, pre_birth=self.unborn.pop(sk, 0), held_at_birth=held)
        model, gate = self.factory()
        return Slot(model, gate)

    def _evict(self) -> None:
        if self.max_live is None or self.scope != "key":
            return
        # Pooled models stay, and do not count: every record of their partition needs them.
        while len(self.live) - self._pooled_live > self.max_live:
            sk = next((k for k in self.live if k.key is not None), None)
            if sk is None:
                return
            slot = self.live.pop(sk)
            if slot.dirty:
                self.unsaved.add(sk)
            if slot.learned_to is not None:
                self.learned_to[sk] = slot.learned_to
            self.cold[sk] = slot.encode()
            self.evictions += 1

    # -- bulk ------------------------------------------------------------------------------------
    def put_encoded(self, sk: StateKey, blob: bytes, learned_to: int | None = None) -> None:
        """Install a state from its bytes (restore); decoded on first use."""
        if self.live.pop(sk, None) is not None and sk.key is None:
            self._pooled_live -= 1
        self.unsaved.discard(sk)
        self.cold[sk] = blob
        if learned_to is not None:
            self.learned_to[sk] = learned_to

    def changed(self, partition: SourcePartition) -> list[tuple[StateKey, bytes]]:
        """States of ``partition`` changed since they were last taken, encoded; taking them
        marks them saved."""
        out = []
        for sk, slot in self.live.items():
            if sk.partition == partition and slot.dirty:
                out.append((sk, slot.encode()))
        for sk in [k for k in self.unsaved if k.partition == partition]:
            out.append((sk, self.cold[sk]))
            self.unsaved.discard(sk)
        return out

    def partition_states(
        self, partition: SourcePartition
    ) -> list[tuple[StateKey, bytes, int | None]]:
        """``(key, bytes, learned_to)`` of every state of ``partition`` (a full copy)."""
        out = []
        for sk, slot in self.live.items():
            if sk.partition == partition:
                out.append((sk, slot.encode(), slot.learned_to))
        for sk, blob in self.cold.items():
            if sk.partition == partition:
                out.append((sk, blob, self.learned_to.get(sk)))
        return out

    def encoded(self) -> Iterator[tuple[StateKey, bytes]]:
        """Every state's bytes (live ones re-encoded only if they changed)."""
        for sk, slot in self.live.items():
            yield sk, slot.encode()
        yield from self.cold.items()

    def drop_partition(self, partition: SourcePartition) -> None:
        """Forget the states of ``partition`` (it moved to another instance)."""
        for d in (self.live, self.cold, self.learned_to, self.unborn):
            for sk in [k for k in d if k.partition == partition]:
                del d[sk]
        self.unsaved = {k for k in self.unsaved if k.partition != partition}
        self._pooled_live = sum(1 for k in self.live if k.key is None)

    def only(self) -> Slot | None:
        """The state of a global store (created if needed); ``None`` for other scopes."""
        return self.get(StateKey(None, None)) if self.scope == "global" else None


def as_uint8(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.uint8)
