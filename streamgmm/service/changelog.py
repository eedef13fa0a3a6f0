"""Model state in Kafka: a compacted changelog topic co-partitioned with the input.

For model scopes ``partition`` and ``key`` the state of input partition ``p`` of topic ``t``
lives in partition ``p`` of the changelog topic ``<group>-<t>-state`` (created with
``cleanup.policy=compact`` and as many partitions as the input if missing), as Kafka Streams and
Quix Streams keep theirs.  Whichever instance of the consumer group is assigned ``p`` restores
that partition's state from there, so a partition that moves to another machine, even one with
an empty disk, takes its state along.

Messages of one changelog partition (latest value per message key is the state; compaction
keeps exactly that):

``\\x01``
    the partition's model (scope ``partition``) or pooled model (scope ``key``);
``\\x02<key>``
    the model of record key ``<key>`` (UTF-8);
``\\x00partition``
    the *partition record*, JSON: ``seq`` (this partition's checkpoint number), ``offset`` (the
    next input offset its states have learned up to) and counts.

A state message's value is the state codec's bytes (:func:`~streamgmm.service.state.encode_slot`;
no pickle, checksummed, versioned) with headers ``seq`` and ``learned_to`` (the input offset the
state had learned up to when written).  A state larger than :data:`CHUNK_BYTES` (a full
covariance model at K=10, D=100 is ~1.6 MB, beyond Kafka's default 1 MiB message limit) is sent
as chunks under keys of their own (``<state key>\\x1f<seq>:<i>``) followed by a *manifest* under
the state key (JSON: chunk count, size, SHA-256); the chunks a manifest replaces are tombstoned
after it, so compaction can never separate a manifest from its chunks.

One checkpoint of a partition writes its changed states, then its partition record, then waits
for every acknowledgement (producer flush), before the input offsets are committed.  A crash
between the states and the partition record leaves states that learned beyond the partition
record's offset: they carry ``learned_to``, and records before it are scored by a throwaway copy
but not learned again, so no model update is applied twice.  (With Kafka transactions the
states, the partition record, the outputs and the offsets become one atomic write; the order and
the message layout stay.)

*Local cache.*  With a checkpoint directory, each partition's states are also copied there
after every checkpoint that wrote them (:class:`~streamgmm.service.changelog_cache.LocalCache`),
under the partition record's ``seq`` and random ``id``.  On assignment only the changelog
partition's *tail* is read to find its newest partition record; if it is the one the cache
holds (same ``seq`` and ``id``), the cache is the newest copy and the changelog is not read
further.  Otherwise (a crash between the changelog write and the copy, another instance wrote
since, a transaction was aborted, the changelog was re-created) the cache is stale and
ignored: the changelog is read whole.

*Fresh start* (``--fresh``): a partition's changelog states are not restored but tombstoned
(every live message key of the partition gets a ``null`` value), once per partition per run, so
its models start new from the group's committed offsets and compaction removes the old states.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .state import SourcePartition, StateKey

if TYPE_CHECKING:  # the cache module builds on this one
    from .changelog_cache import LocalCache

__all__ = [
    "CHUNK_BYTES",
    "Changelog",
    "ChangelogError",
    "PartitionState",
    "changelog_topic",
    "read_changelog",
]

log = logging.getLogger("streamgmm.service.changelog")

#: Largest value sent as one message (Kafka's default ``max.message.bytes`` is 1 MiB).
CHUNK_BYTES = 512 * 1024
PARTITION_KEY = b"\x00partition"
JOURNAL_KEY = b"\x00journal"
_POOLED, _KEYED, _CHUNK_SEP = b"\x01", b"\x02", b"\x1f"


class ChangelogError(RuntimeError):
    """The changelog cannot be written or read consistently."""


def changelog_topic(group_id: str, topic: str) -> str:
    """Default changelog topic of ``topic`` for consumer group ``group_id``."""
    return f"{group_id}-{topic}-state"


def message_key(sk: StateKey) -> bytes:
    if sk.key is None:
        return _POOLED
    return _KEYED + sk.key.encode("utf-8", "surrogateescape")


def _state_key(sp: SourcePartition, mk: bytes) -> StateKey | None:
    if mk == _POOLED:
        return StateKey(sp, None)
    if mk.startswith(_KEYED) and _CHUNK_SEP not in mk:
        return StateKey(sp, mk[1:].decode("utf-8", "surrogateescape"))
    return None


@dataclass
class PartitionState:
    """What the changelog holds for one input partition.

    ``states`` maps each :class:`StateKey` to ``(state bytes, learned_to)``; ``offset`` is the
    partition record's next input offset (``None``: no checkpoint was ever written), ``seq`` its
    checkpoint number, ``record`` the whole partition record.
    """

    partition: SourcePartition
    states: dict[StateKey, tuple[bytes, int]] = field(default_factory=dict)
    offset: int | None = None
    seq: int = 0
    record: dict = field(default_factory=dict)
    chunk_keys: dict[bytes, list[bytes]] = field(default_factory=dict)
    keys: list[bytes] = field(default_factory=list)  # every live message key
    journal: list[list[int]] | None = None  # the batch journal's segments, if any
    source: str = "changelog"  # or "cache"


def _headers(msg) -> dict[str, bytes]:
    return {k: v for k, v in (msg.headers or [])}


def read_changelog(
    consumer,
    topic: str,
    sps: Iterable[SourcePartition],
    timeout: float = 60.0,
    counter: list[int] | None = None,
) -> dict[SourcePartition, PartitionState]:
    """Read the changelog partitions of ``sps`` (input partitions of one input topic) to their
    end offsets with ``consumer`` (no group) and assemble each partition's latest states."""
    from kafka import TopicPartition

    sps = list(sps)
    tps = {TopicPartition(topic, sp.partition): sp for sp in sps}
    if not tps:
        return {}
    consumer.assign(list(tps))
    consumer.seek_to_beginning(*tps)
    end = consumer.end_offsets(list(tps))
    latest: dict[TopicPartition, dict[bytes, object]] = {tp: {} for tp in tps}
    deadline = time.monotonic() + timeout
    while any(consumer.position(tp) < end[tp] for tp in tps):
        if time.monotonic() > deadline:
            raise ChangelogError(f"changelog {topic} could not be read to its end in {timeout} s")
        for tp, msgs in consumer.poll(timeout_ms=500, max_records=10_000).items():
            d = latest[tp]
            if counter is not None:
                counter[0] += len(msgs)
            for m in msgs:
                if m.value is None:
                    d.pop(m.key, None)  # tombstone
                else:
                    d[m.key] = m
    out = {}
    for tp, sp in tps.items():
        ps = PartitionState(sp)
        msgs = latest[tp]
        ps.keys = list(msgs)
        jm = msgs.get(JOURNAL_KEY)
        if jm is not None:
            ps.journal = json.loads(jm.value)["segments"]
        rec = msgs.get(PARTITION_KEY)
        if rec is not None:
            ps.record = json.loads(rec.value)
            ps.offset, ps.seq = int(ps.record["offset"]), int(ps.record["seq"])
        for mk, m in msgs.items():
            sk = _state_key(sp, mk)
            if sk is None:
                continue
            h = _headers(m)
            learned_to = int(h.get("learned_to", b"0"))
            if h.get("kind") == b"manifest":
                man = json.loads(m.value)
                keys = [k.encode("latin-1") for k in man["chunks"]]
                parts = [msgs.get(k) for k in keys]
                if any(p is None for p in parts):
                    raise ChangelogError(
                        f"changelog {topic}[{sp.partition}]: state of {sk.key!r} misses chunks"
                    )
                blob = b"".join(p.value for p in parts)
                if hashlib.sha256(blob).hexdigest() != man["sha256"]:
                    raise ChangelogError(
                        f"changelog {topic}[{sp.partition}]: state of {sk.key!r} fails its checksum"
                    )
                ps.chunk_keys[mk] = keys
            else:
                blob = m.value
            ps.states[sk] = (blob, learned_to)
        out[sp] = ps
    consumer.assign([])
    return out


def newest_record(
    consumer, topic: str, sp: SourcePartition, counter: list[int], timeout: float = 30.0
) -> tuple[dict | None, list | None]:
    """The newest partition record of ``sp``'s changelog partition and the batch journal
    written after it, read from its tail (a window before the end, widened until a record is
    found): a partition record ends each write, followed only by the tombstones of replaced
    chunks and the journal of later batches, so a few messages usually suffice."""
    from kafka import TopicPartition

    tp = TopicPartition(topic, sp.partition)
    consumer.assign([tp])
    end = consumer.end_offsets([tp])[tp]
    begin = consumer.beginning_offsets([tp])[tp]
    window = 16
    try:
        while True:
            start = max(begin, end - window)
            consumer.seek(tp, start)
            found = journal = None
            deadline = time.monotonic() + timeout
            while consumer.position(tp) < end:
                if time.monotonic() > deadline:
                    raise ChangelogError(f"changelog {topic}[{sp.partition}]: tail not readable")
                for msgs in consumer.poll(timeout_ms=500, max_records=10_000).values():
                    counter[0] += len(msgs)
                    for m in msgs:
                        if m.key == PARTITION_KEY and m.value is not None:
                            found, journal = m, None
                        elif m.key == JOURNAL_KEY and m.value is not None:
                            journal = json.loads(m.value)["segments"]
            if found is not None:
                return json.loads(found.value), journal
            if start == begin:
                return None, None
            window *= 8
    finally:
        consumer.assign([])


class Changelog:
    """Writes and restores the states of input partitions (see the module docstring).

    Parameters
    ----------
    kafka
        The :class:`~streamgmm.service.config.KafkaConfig` (bootstrap servers, group, topics).
    producer
        A ``KafkaProducer`` (the sinks' one: one flush makes both durable).
    topic_name
        ``input topic -> changelog topic``; default :func:`changelog_topic`.
    """

    def __init__(self, kafka, producer, topic_name=None):
        from kafka import KafkaConsumer

        self.kafka = kafka
        self.producer = producer
        name = topic_name or (lambda t: changelog_topic(kafka.group_id, t))
        self.topics = {t: name(t) for t in kafka.topics}
        self.ensure_topics()
        self.reader = KafkaConsumer(
            **kafka.client_kwargs("restore"),
            enable_auto_commit=False,
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            # Only committed transactions' states (exactly_once); plain writes are visible
            # either way.
            isolation_level="read_committed",
        )
        # The high watermark (read_uncommitted end offsets), to see open transactions.
        self._hw_reader = None
        self.seq: dict[SourcePartition, int] = {}
        self.chunks: dict[tuple[SourcePartition, bytes], list[bytes]] = {}
        self._errors: list[BaseException] = []
        self._read = [0]  # changelog messages read (restores)

    def ensure_topics(self) -> None:
        """Create missing changelog topics: compacted, as many partitions as their input."""
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(**self.kafka.client_kwargs("admin"))
        try:
            existing = set(admin.list_topics())
            for t, cl in self.topics.items():
                n_in = len(self.producer.partitions_for(t) or ())
                if not n_in:
                    raise ChangelogError(f"input topic {t!r} has no partitions (does it exist?)")
                if cl in existing:
                    n_cl = len(self.producer.partitions_for(cl) or ())
                    if n_cl < n_in:
                        raise ChangelogError(
                            f"changelog topic {cl!r} has {n_cl} partitions, its input {t!r} "
                            f"{n_in}: they must be co-partitioned (add partitions to {cl!r})"
                        )
                    continue
                try:
                    admin.create_topics(
                        [NewTopic(cl, n_in, 1, topic_configs={"cleanup.policy": "compact"})]
                    )
                    log.info("created changelog topic %s (%d partitions, compacted)", cl, n_in)
                except TopicAlreadyExistsError:
                    pass  # another instance created it meanwhile
        finally:
            admin.close()

    def restore(
        self, sps: Iterable[SourcePartition], cache: LocalCache | None = None
    ) -> dict[SourcePartition, PartitionState]:
        """Each partition's latest states and partition record: from ``cache`` where it holds
        the changelog's newest write (only the changelog's tail is read), else the changelog
        read to its end.  ``messages_read`` counts the changelog messages read."""
        by_topic: dict[str, list[SourcePartition]] = {}
        for sp in sps:
            by_topic.setdefault(sp.name, []).append(sp)
        out = {}
        for t, group in by_topic.items():
            self.wait_stable(self.topics[t], group)
            got, rest = {}, []
            for sp in group:
                ps = cache.load(sp) if cache is not None else None
                if ps is not None:
                    rec, journal = newest_record(self.reader, self.topics[t], sp, self._read)
                    same = rec is not None and (rec.get("seq"), rec.get("id")) == (
                        ps.seq,
                        ps.record.get("id"),
                    )
                    if same:
                        ps.journal = journal
                        got[sp] = ps
                        continue
                    log.info(
                        "local state cache of %s is stale (seq %d; changelog %s): reading "
                        "the changelog",
                        sp.label,
                        ps.seq,
                        None if rec is None else rec.get("seq"),
                    )
                rest.append(sp)
            if rest:
                got.update(read_changelog(self.reader, self.topics[t], rest, counter=self._read))
            for sp, ps in got.items():
                self.seq[sp] = ps.seq
                for mk, keys in ps.chunk_keys.items():
                    self.chunks[(sp, mk)] = keys
            out.update(got)
        return out

    @property
    def messages_read(self) -> int:
        return self._read[0]

    def wipe(self, sps: Iterable[SourcePartition]) -> int:
        """Tombstone every live message of the changelog partitions of ``sps`` (a fresh
        start): compaction then removes the old states.  Returns the number of tombstones
        sent (flushed by the next checkpoint, with the new states)."""
        n = 0
        for sp, ps in self.restore(sps).items():
            topic = self.topics[sp.name]
            for mk in ps.keys:
                self.producer.send(topic, key=mk, value=None, partition=sp.partition).add_errback(
                    self._errors.append
                )
                n += 1
            for k in [k for k in self.chunks if k[0] == sp]:
                del self.chunks[k]
        return n

    def wait_stable(self, topic: str, sps: list[SourcePartition]) -> None:
        """Wait until no transaction is open on the changelog partitions of ``sps``.

        An open transaction there belongs to the partitions' previous owner (a dead instance,
        or a zombie paused with its transaction open): restoring now would read the state
        before it, and if it then committed, its outputs and the records this instance
        re-processes would both be visible.  The broker ends it within the transaction timeout
        (committed or aborted), so this waits at most that long plus a margin."""
        from kafka import KafkaConsumer, TopicPartition

        if self._hw_reader is None:
            self._hw_reader = KafkaConsumer(
                **self.kafka.client_kwargs("restore-hw"),
                enable_auto_commit=False,
            )
        tps = [TopicPartition(topic, sp.partition) for sp in sps]
        limit = self.kafka.transaction_timeout_ms / 1000 + 30.0
        t0 = time.monotonic()
        logged = False
        while True:
            stable = self.reader.end_offsets(tps)  # read_committed: the last stable offset
            high = self._hw_reader.end_offsets(tps)
            open_ = [tp.partition for tp in tps if stable[tp] < high[tp]]
            if not open_:
                return
            waited = time.monotonic() - t0
            if waited > limit:
                raise ChangelogError(
                    f"changelog {topic} partitions {open_} kept a transaction open for "
                    f"{waited:.0f} s (more than the transaction timeout)"
                )
            if not logged:
                log.info(
                    "changelog %s partitions %s have an open transaction of their previous "
                    "owner: waiting for it to end before restoring",
                    topic,
                    open_,
                )
                logged = True
            time.sleep(0.2)

    def write(
        self,
        sp: SourcePartition,
        states: list[tuple[StateKey, bytes]],
        offset: int,
        extra: dict | None = None,
    ) -> None:
        """Send ``states`` of ``sp`` and its partition record (nothing is flushed here)."""
        topic, part = self.topics[sp.name], sp.partition
        seq = self.seq.get(sp, 0) + 1
        base = [("seq", str(seq).encode()), ("learned_to", str(offset).encode())]
        send, failed = self.producer.send, self._errors.append
        stale: list[bytes] = []
        for sk, blob in states:
            mk = message_key(sk)
            old = self.chunks.pop((sp, mk), [])
            if len(blob) <= CHUNK_BYTES:
                send(topic, key=mk, value=blob, partition=part, headers=base).add_errback(failed)
            else:
                keys = []
                for i in range(0, len(blob), CHUNK_BYTES):
                    ck = mk + _CHUNK_SEP + f"{seq}:{i // CHUNK_BYTES}".encode()
                    value = blob[i : i + CHUNK_BYTES]
                    hdr = [*base, ("kind", b"chunk")]
                    send(topic, key=ck, value=value, partition=part, headers=hdr).add_errback(
                        failed
                    )
                    keys.append(ck)
                manifest = {
                    "chunks": [k.decode("latin-1") for k in keys],
                    "size": len(blob),
                    "sha256": hashlib.sha256(blob).hexdigest(),
                }
                send(
                    topic,
                    key=mk,
                    value=json.dumps(manifest).encode(),
                    partition=part,
                    headers=[*base, ("kind", b"manifest")],
                ).add_errback(failed)
                self.chunks[(sp, mk)] = keys
            stale.extend(old)
        # The id tells this write from another instance's write of the same seq (a transaction
        # aborted here, then the partition's next owner continued the sequence): a local cache
        # is the newest copy only if seq and id both match.
        record = {
            "seq": seq,
            "offset": int(offset),
            "written": time.time(),
            "id": uuid.uuid4().hex,
            **(extra or {}),
        }
        send(
            topic, key=PARTITION_KEY, value=json.dumps(record).encode(), partition=part
        ).add_errback(failed)
        for ck in stale:  # after the manifests that replace them: compaction may drop them
            send(topic, key=ck, value=None, partition=part).add_errback(failed)
        self.seq[sp] = seq
        return record

    def journal(self, sp: SourcePartition, segments: list[list[int]]):
        """Send ``sp``'s batch journal (its segments since its last partition record); the
        send's future (the caller waits for it before the batch's outputs go out)."""
        value = json.dumps({"segments": segments}).encode()
        return self.producer.send(
            self.topics[sp.name], key=JOURNAL_KEY, value=value, partition=sp.partition
        )

    def flush(self) -> None:
        """Wait for every write's acknowledgement; :class:`ChangelogError` if one failed."""
        self.producer.flush()
        if self._errors:
            n, first = len(self._errors), self._errors[0]
            del self._errors[:n]
            raise ChangelogError(f"{n} changelog writes were not acknowledged: {first!r}")

    def chunk_keys(
        self, sp: SourcePartition, sks: Iterable[StateKey] | None = None
    ) -> dict[bytes, list[bytes]]:
        """``{message key: its chunks' keys}`` of ``sp``'s chunked states (of the states
        ``sks`` only, with ``[]`` for those not chunked, if given)."""
        if sks is None:
            return {mk: keys for (p, mk), keys in self.chunks.items() if p == sp}
        return {mk: self.chunks.get((sp, mk), []) for mk in map(message_key, sks)}

    def forget(self, sps: Iterable[SourcePartition]) -> None:
        """Partitions that left this instance: their next owner continues their sequence."""
        for sp in sps:
            self.seq.pop(sp, None)
            for k in [k for k in self.chunks if k[0] == sp]:
                del self.chunks[k]

    def close(self) -> None:
        import contextlib

        with contextlib.suppress(Exception):
            self.reader.close()
        if self._hw_reader is not None:
            with contextlib.suppress(Exception):
                self._hw_reader.close()
