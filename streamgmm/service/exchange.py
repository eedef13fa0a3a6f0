"""One model across a consumer group: increments exchanged through a Kafka topic.

With model scope ``global`` and ``model.exchange`` on (``--model-exchange``), every instance of
the consumer group learns from its own partitions and the instances exchange what they learned
through one topic, ``<group>-<input topic>-exchange`` (1 partition, created if missing), so the
group converges on one model whose components stay aligned.  The numbers are the core's
(:mod:`streamgmm.group`); this module is the Kafka side.

Messages (key: the sending process's id; value: the state codec's bytes, no pickle; each
carries the sender's input positions, next offset per partition, at the time it was sent):

``base``
    a whole model (:meth:`~streamgmm.OnlineGaussianMixture.get_state`) with an id.  The first
    base in the topic is *the* base: every instance adopts it, so the components are the same
    everywhere.  An instance whose model finishes its warm-up before it has seen a base
    publishes its own as a candidate.
``rows``
    rows as they are: what an instance learned while the group had no base yet (sent at every
    checkpoint while it warms up, with its base candidate, and when it adopts the base, its
    rows in no message yet).
    Whoever adopts or wins the base learns every rows message not in it (not from the base's
    sender), in topic order.  So no record is lost: not by a candidate that loses the race, nor
    by an instance that leaves during its warm-up.
``increment``
    ``D = L - a R`` (:meth:`~streamgmm.OnlineGaussianMixture.increment_since`): what the
    sender learned since its last exchange, with its decay ``a``, row count and the base id.
    Every other instance folds it in (:meth:`~streamgmm.OnlineGaussianMixture.fold_increment`);
    increments of another base are ignored (a lost candidate's: its rows are learned again).

An exchange (a *tick*) happens at every checkpoint, in its middle: after the outputs are
flushed, before the offsets are committed.  It sends the increment, then reads the topic to its
end and folds the others' increments, then takes the new reference ``R``; no row is learned in
between, so the next increment holds this instance's rows only.  While no record comes in, the
topic is still read every ``checkpoint.every_seconds`` (an idle tick), so an idle instance keeps
up with the others.

No instance is special.  **Joining**: an instance starts (or restarts, on any machine) from
the newest snapshot (below), then reads the topic from the snapshot's position -- or, with no
snapshot, from the beginning: the base, then every message in topic order; that is the
group's model; its input positions are the group's committed offsets.  **Leaving**: its
increments are in the topic already, up to its last committed offsets, so nothing is lost; the
records after them are processed again by the partitions' next owner.  With
``at_least_once`` a crash between sending an increment and committing the offsets makes that
owner learn those records a second time (the outputs repeat anyway).  With ``exactly_once`` the
increment is sent inside the checkpoint's transaction, with the outputs and the offsets, and
the topic is read ``read_committed``: every record is learned by the group exactly once; an
aborted transaction rolls the model back by joining again.

**Snapshots and trimming** (``model.exchange_snapshot_every``, ``model.exchange_trim_after``).
An instance's live model is *not* exactly "the base plus every message up to where it read":
it learned its own rows as they came, before folding others' increments that precede its own
in the topic (the fold rule is exact only up to second-order terms in the exchange interval,
see :mod:`streamgmm.group`), and under ``exactly_once`` its own increment of the open
transaction lies beyond the last stable offset it read to.  So every instance also keeps the
**replay**: a second model (and gate) that applies every message of the topic in topic order
exactly as a joiner reading it from the beginning does -- its own included, the early rows
learned right when the base is decided -- a function of the topic's messages alone, the same
in every instance.  A joiner's live model is a copy of its replay.

Every ``exchange_snapshot_every`` ticks an instance publishes its replay (model + gate, the
slot codec of :func:`~streamgmm.service.state.encode_slot`) with the exchange *position* ``p``
it read to (every message before ``p`` is in it, none after) on the topic
``<exchange topic>-snapshot`` (1 partition, ``retention.ms=-1``; ``p`` also in a record header).
Under ``exactly_once`` the snapshot is sent inside the checkpoint's transaction and read
``read_committed``: ``p`` is then the last stable offset, before this instance's own
uncommitted increment, which a joiner folds after the snapshot once it commits; an aborted
transaction takes the snapshot with it.  A joiner takes the snapshot with the highest ``p``,
decodes it into its replay, and reads the exchange topic from ``p``: the same messages in the
same order on the same state as reading everything, so the same model (exact up to the
codec's float64 round trip).  A snapshot is as large as a base (one message of up to 16 MiB:
K=10, D=100 full covariances take ~1.6 MB); no chunking.

After sending a snapshot an instance trims both topics with the admin client's
``delete_records`` (nothing else is ever deleted; ``retention.ms`` stays -1): let ``s`` be the
newest snapshot record at least ``exchange_trim_after`` seconds old (its record timestamp)
whose ``p`` is at least every earlier snapshot's.  Snapshot records before ``s`` and exchange
records before ``s``'s ``p`` are deleted.  Invariant: the snapshot topic always holds a
snapshot whose ``p`` is at least the exchange topic's log-start offset (a snapshot record is
only deleted when a later one has a ``p`` as high, and the exchange is only cut at a kept
snapshot's ``p``).  A joiner reads the exchange's log-start offset, then the snapshots, and
uses the best one at or above it; with none (a hand-deleted topic, a corrupt snapshot) it
stops with an error instead of building a wrong model.  If records are deleted while a
reader is behind them (the reader gets ``OffsetOutOfRange``; it never jumps silently) the
instance joins again from the newest snapshot: at an idle tick or under ``at_least_once`` at
once (its own increment is already in the topic); under ``exactly_once`` the checkpoint's
transaction is aborted and rolled back (a join).  ``exchange_trim_after`` (default 600 s) keeps
the exchange's records that instances which have not read for that long still need, so that
rejoin stays rare.  On disk the exchange then holds the increments of about
``exchange_trim_after`` seconds plus one snapshot interval, and a joiner reads one snapshot and
those increments instead of the whole history.

**Components.**  With ``n_components="auto"`` the component set must be the same for all: the
base's components are frozen (:meth:`~streamgmm.OnlineGaussianMixture.freeze_components`: no
birth, merge, death nor re-seeding; poorly explained rows are learned, not held back).  Choose
``n_components`` (or let the base's BIC choice stand) knowing K will not follow the stream.

A candidate's rows since its last rows message go out as a rows message in the checkpoint of
its candidacy, before its base: a candidate killed after committing its base and before
learning that another base won lost them (they were only in its losing base).  With the
anomaly gate on, the rows of rows messages are
gated by each receiver's own gate, so the instances' row counts may differ by the few rows
gated differently.  The replay doubles the folding work and the model memory of an instance.
"""

from __future__ import annotations

import copy
import logging
import time
import uuid
from typing import NamedTuple

import numpy as np

from streamgmm.group import Increment, MixtureStatistics
from streamgmm.persistence import decode_state, encode_state

__all__ = [
    "ExchangeError",
    "ExchangeTrimmed",
    "ModelExchange",
    "exchange_topic",
    "snapshot_topic",
]

log = logging.getLogger("streamgmm.service.exchange")

#: Version of an exchange message's encoding.
EXCHANGE_FORMAT_VERSION = 1
#: Largest message (a base of K=10, D=100 full covariances is ~1.6 MB).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: Key of every snapshot record.
SNAPSHOT_KEY = b"snapshot"


def exchange_topic(group_id: str, topic: str) -> str:
    """The default exchange topic of a consumer group reading ``topic``."""
    return f"{group_id}-{topic}-exchange"


def snapshot_topic(exchange: str) -> str:
    """The snapshot topic of an exchange topic."""
    return f"{exchange}-snapshot"


class ExchangeError(RuntimeError):
    """The group's model cannot be rebuilt from the topics (records deleted, no snapshot)."""


class ExchangeTrimmed(ExchangeError):
    """Records this reader had not read yet were deleted (a newer snapshot holds them)."""


class _Snapshot(NamedTuple):
    position: int  # exchange offset: every message before it is in the snapshot
    offset: int  # the record's offset in the snapshot topic
    timestamp_ms: int
    value: bytes


class _Follower:
    """What one reader makes of the exchange topic's messages (the base decision, rows
    messages, folds) into ``slot``.  The live instance is one; its *replay* is another that
    never sends, so it applies every message (see the module docstring)."""

    def __init__(self, slot=None, quiet=False):
        self.slot = slot
        # The replay's news (adopted, rows learned) repeat the live state's: debug level.
        self.log_level = logging.DEBUG if quiet else logging.INFO
        self._reset_follower()

    def _reset_follower(self) -> None:
        # A new sender id: this instance's earlier messages are not in the model any more (a
        # rollback rebuilds it), so they are folded like anyone's.
        self.sender = uuid.uuid4().hex[:16]
        self.base_id: str | None = None  # the base this model comes from
        self.winner: str | None = None  # the first base in the topic
        self.base_sender: str | None = None  # ... and who sent it
        self.confirmed = False
        # Own rows learned but in no message yet (while the group's base is undecided).
        self.own_rows: list[np.ndarray] = []
        # Rows messages read before the base was decided: (sender, rows), in topic order.
        self.early_rows: list[tuple[str, np.ndarray]] = []
        self.folded = 0

    def _send_rows(self) -> None:
        raise AssertionError("the replay never sends")

    def _settle(self, slot) -> None:
        """The group's base was just decided (adopted, or this instance's own won): learn the
        rows messages that are not in it, in topic order, and this instance's rows that are in
        no message yet (sent now as one, so the others learn them too)."""
        adopted = self.base_sender != self.sender
        early, self.early_rows = self.early_rows, []
        n = 0
        for sender, rows in early:
            if sender != self.base_sender:
                self._learn_rows(slot, rows)
                n += len(rows)
        if adopted and self.own_rows:
            batches = self.own_rows
            self._send_rows()
            for rows in batches:  # batch by batch as first learned: no huge early step
                self._learn_rows(slot, rows)
                n += len(rows)
        self.own_rows = []
        if n:
            log.log(
                self.log_level,
                "model exchange: %d rows learned on base %s from rows messages",
                n,
                self.winner,
            )

    def _learn_rows(self, slot, rows) -> None:
        for i in range(0, len(rows), 100):
            slot.gate.score_and_learn(slot.model, rows[i : i + 100])

    def _message(self, slot, msg) -> bool:
        """Apply one message; True when it decided the group's base for this instance."""
        try:
            arrays, meta = decode_state(
                msg.value, accept_versions=(EXCHANGE_FORMAT_VERSION,), where="exchange message"
            )
        except ValueError as e:
            log.error("model exchange: offset %d skipped: %s", msg.offset, e)
            return False
        kind, sender = meta.get("type"), meta.get("sender")
        if kind == "base":
            if self.winner is not None:
                return False  # a candidate that came too late
            self.winner, self.base_sender = meta["id"], sender
            self.confirmed = True
            if self.base_id == self.winner:
                log.info("model exchange: this instance's base %s is the group's", self.winner)
            else:
                self._adopt(slot, arrays, meta)
            return True
        if kind == "rows":
            rows = np.asarray(arrays["rows"], dtype=np.float64)
            if self.winner is None:
                self.early_rows.append((sender, rows))  # learned once the base is decided
            elif sender not in (self.base_sender, self.sender):
                self._learn_rows(slot, rows)
            return False
        if kind != "increment" or self.winner is None or meta.get("base") != self.winner:
            return False
        if sender == self.sender or self.base_id != self.winner:
            return False  # this instance's own, already in its model
        stats = MixtureStatistics.from_arrays(arrays, meta["covariance_type"])
        inc = Increment(stats, float(meta["decay"]), int(meta["n"]), meta["base"])
        try:
            slot.model.fold_increment(inc)
        except ValueError as e:
            log.error("model exchange: increment at offset %d not folded: %s", msg.offset, e)
            return False
        self.folded += 1
        return False

    def _adopt(self, slot, arrays, meta) -> None:
        from streamgmm import OnlineGaussianMixture

        model = OnlineGaussianMixture.from_state(arrays, meta["model_meta"])
        if not model.components_frozen_:
            model.freeze_components()
        slot.model = model
        slot.dirty = True
        # This instance's earlier messages (rows it learned before) are not in the adopted
        # model: a new id makes them foreign, learned like anyone's when read.
        self.sender = uuid.uuid4().hex[:16]
        if getattr(slot.gate, "calibrate", None) is not None:
            slot.gate.calibrate(model)
        self.base_id = self.winner
        log.log(
            self.log_level,
            "model exchange: adopted the group's base %s (%d rows, K=%d)",
            self.base_id,
            model.n_samples_seen_,
            model.n_components_,
        )


class ModelExchange(_Follower):
    """The exchange of one instance (see the module docstring).

    Parameters
    ----------
    kafka
        The :class:`~streamgmm.service.config.KafkaConfig`.
    topic
        The exchange topic (created if missing, with its snapshot topic).
    producer
        The transactional producer (``exactly_once``: increments and snapshots join the
        checkpoint's transaction), or ``None``: the exchange sends through a producer of its
        own and waits for the acknowledgement at each tick.
    read_committed
        Read only committed transactions' messages (``exactly_once``).
    every_seconds
        Least time between idle ticks.
    snapshot_every
        Publish a snapshot every this many ticks (0: never; joining still uses the others').
    trim_after
        Delete records covered by a snapshot at least this many seconds old (``None``: never).
    from_snapshot
        Join from the newest snapshot (``False``: read the exchange topic from its beginning,
        which fails once it has been trimmed).

    Attributes
    ----------
    base_id
        The base this instance's model comes from (``None``: none yet; warming up).
    confirmed
        Whether ``base_id`` is known to be the group's (first in the topic).
    sent, folded
        Increments sent and folded by this process.
    start_offset, read_count
        Where the last join started reading the exchange topic (the snapshot's position, or
        its log-start offset) and how many exchange messages it read.
    snapshots_sent, trims, rejoins
        Snapshots this instance published, trims (``delete_records`` calls) it made, and joins
        again after records it had not read were deleted.
    replay
        The group's model as the topic's messages make it (see the module docstring).
    """

    def __init__(
        self,
        kafka,
        topic,
        producer=None,
        read_committed=False,
        every_seconds=1.0,
        snapshot_every=0,
        trim_after=None,
        from_snapshot=True,
    ):
        from kafka import KafkaConsumer, TopicPartition
        from kafka.admin import KafkaAdminClient

        self.kafka = kafka
        self.topic = topic
        self.log_level = logging.INFO
        self.snapshot_topic = snapshot_topic(topic)
        self.every_seconds = float(every_seconds or 1.0)
        self.snapshot_every = int(snapshot_every or 0)
        self.trim_after = None if trim_after is None else float(trim_after)
        self.from_snapshot = bool(from_snapshot)
        self._own_producer = producer is None
        if producer is None:
            from .sinks import make_producer

            producer = make_producer(kafka)
        self.producer = producer
        self.admin = KafkaAdminClient(**kafka.client_kwargs("admin"))
        self._ensure_topics()
        self.tp = TopicPartition(topic, 0)
        self.stp = TopicPartition(self.snapshot_topic, 0)

        def reader(suffix):
            c = KafkaConsumer(
                **kafka.client_kwargs(suffix),
                enable_auto_commit=False,
                fetch_max_bytes=4 * MAX_MESSAGE_BYTES,
                max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
                isolation_level="read_committed" if read_committed else "read_uncommitted",
                # Records deleted under the reader's position: an error, never a silent jump.
                auto_offset_reset="none",
            )
            return c

        self.reader = reader("exchange")
        self.reader.assign([self.tp])
        self.snap_reader = reader("exchange-snapshot")
        self.snap_reader.assign([self.stp])
        self._fresh = None  # a fresh (model, gate): what the replay starts from
        self.replay: _Follower | None = None
        self.ticks = self.snapshots_sent = self.trims = self.rejoins = 0
        self.start_offset = self.read_count = 0
        self._snapshot_at: int | None = None
        self.reset()

    def reset(self) -> None:
        """Forget everything read (before reading the topic again from its beginning)."""
        self._reset_follower()
        self.reader.seek_to_beginning(self.tp)
        self.ref: MixtureStatistics | None = None
        self.sent = 0
        self._positions: dict[str, int] = {}
        self.last_tick = time.monotonic()

    def _ensure_topics(self) -> None:
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        existing = set(self.admin.list_topics())
        for name in (self.topic, self.snapshot_topic):
            if name in existing:
                continue
            try:
                self.admin.create_topics(
                    [
                        NewTopic(
                            name,
                            1,
                            1,
                            topic_configs={
                                # Only delete_records after a snapshot removes anything.
                                "retention.ms": "-1",
                                "max.message.bytes": str(MAX_MESSAGE_BYTES),
                            },
                        )
                    ]
                )
                log.info("created model exchange topic %s", name)
            except TopicAlreadyExistsError:
                pass  # another instance created it meanwhile
        # Wait until the new topics' metadata has reached the brokers' caches: a consumer
        # group joined in the same moment was seen to get an empty assignment and not rejoin.
        self.producer.partitions_for(self.topic)
        self.producer.partitions_for(self.snapshot_topic)

    # -- the hooks the processor calls ------------------------------------------------------
    def restore(self, slot) -> None:
        """Join: the group's model from the newest snapshot and the exchange messages after
        it (or the whole topic: base, then every message in order)."""
        t0 = time.perf_counter()
        if self._fresh is None:
            self._fresh = copy.deepcopy((slot.model, slot.gate))
        for attempt in range(5):
            try:
                self._join(slot)
                break
            except ExchangeTrimmed as e:
                if attempt == 4:
                    raise
                log.warning("model exchange: %s; joining again from the newest snapshot", e)
        log.info(
            "model exchange %s: %s, %s, %d messages read, %d increments folded in %.3f s "
            "(%d rows learned)",
            self.topic,
            f"joined base {self.base_id}" if self.base_id else "no base yet",
            f"from the snapshot at offset {self.start_offset}"
            if self.replay.confirmed and self.start_offset
            else f"from offset {self.start_offset}",
            self.read_count,
            self.folded,
            time.perf_counter() - t0,
            int(getattr(slot.model, "n_samples_seen_", 0)),
        )

    def learned(self, slot, X) -> None:
        """Rows the model just learned: kept while the group's base is undecided (they go out
        as a ``rows`` message, or are in this instance's base if it wins)."""
        if not self.confirmed:
            self.own_rows.append(np.array(X, dtype=np.float64, copy=True))

    def tick(self, slot, positions=None) -> None:
        """Send this instance's increment (or its base candidate, or while it has none the rows
        it learned), then read and fold the others'; every ``snapshot_every`` ticks publish a
        snapshot and trim. Inside a checkpoint: after the outputs' flush, before the offsets'
        commit, so what the committed offsets cover is in the topic.
        ``positions`` (next input offset per partition label), sent along: where the sender's
        model is (a base: every record of those partitions before them is in it)."""
        self._positions = dict(positions or {})
        if self.base_id is None:
            self._read_or_join(slot)  # a base may have come: join it rather than compete
        model = slot.model
        if self.base_id is not None:
            inc = model.increment_since(self.ref, self.base_id)
            if inc.n_samples:
                self._send("increment", inc.stats.to_arrays(), self._inc_meta(inc))
                self.sent += 1
        elif getattr(model, "has_model_", False) and not model.warming_up_:
            # Past the warm-up and no base seen: this model is a candidate. Its rows since its
            # last rows message go out first, in the same checkpoint: if another base wins, the
            # group learns them even if this instance dies before it hears of it (under
            # exactly_once another candidate's base may sit in an open transaction now); if
            # this one wins, they are in its base and, as the base sender's, skipped.
            model.freeze_components()
            if self.own_rows:
                self._send_rows()
            self.base_id = f"{self.sender}-{model.n_samples_seen_}"
            arrays, meta = model.get_state()
            self._send("base", arrays, {"id": self.base_id, "model_meta": meta})
            log.info("model exchange: base candidate %s sent", self.base_id)
        elif self.own_rows:
            # Still warming up: the rows go out as they are, so an instance that leaves now
            # loses nothing (the group learns them once it has a base).
            self._send_rows()
        if self._own_producer:
            self.producer.flush()  # acknowledged before the offsets are committed
        self._read_or_join(slot)
        self.ticks += 1
        due = self.snapshot_every and self.ticks % self.snapshot_every == 0
        if due and self._snapshot() and self.trim_after is not None:
            self._trim()
        self.last_tick = time.monotonic()

    def idle_tick(self, slot) -> None:
        """While no record comes in (nothing learned since the last tick): read and fold."""
        if time.monotonic() - self.last_tick < self.every_seconds:
            return
        try:
            self._read(slot)
        except ExchangeTrimmed as e:
            self._rejoin(slot, e)  # nothing learned since the last tick: nothing lost
        self.last_tick = time.monotonic()

    def close(self) -> None:
        self.reader.close()
        self.snap_reader.close()
        self.admin.close()
        if self._own_producer:
            self.producer.close(timeout=10)

    # -- internals ----------------------------------------------------------------------------
    def _read_or_join(self, slot) -> None:
        try:
            self._read(slot)
        except ExchangeTrimmed as e:
            if not self._own_producer:
                # exactly_once: this transaction's increment is not readable yet; the
                # checkpoint aborts, and the rollback joins again (Processor._rejoin).
                raise
            # at_least_once: this instance's increment is in the topic already (flushed).
            self._rejoin(slot, e)

    def _rejoin(self, slot, why) -> None:
        """Records this instance had not read were deleted: join again from the newest
        snapshot. Rows of its own in no message yet (a candidate's, whose candidacy the
        group's base has decided by now) go out first, so the group learns them."""
        log.warning("model exchange: %s; joining again from the newest snapshot", why)
        if self.own_rows and self._own_producer:
            self._send_rows()
            self.producer.flush()
        self.rejoins += 1
        self.restore(slot)

    def _join(self, slot) -> None:
        self.reset()
        self.replay = _Follower(_replay_slot(*copy.deepcopy(self._fresh)), quiet=True)
        self.start_offset = self._load_snapshot()
        self.read_count = 0
        self._read(slot, live=False)
        self._follow(slot)

    def _follow(self, slot) -> None:
        """The live state becomes a copy of the replay's (a joiner's model is the group's)."""
        from .state import copy_pair

        r = self.replay
        if r.winner is not None and r.base_id == r.winner:
            slot.model, slot.gate = copy_pair(r.slot.model, r.slot.gate)
            slot.dirty = True
            self.base_id = self.winner = r.winner
            self.base_sender, self.confirmed = r.base_sender, True
            self.ref = slot.model.group_statistics()
        else:  # no base yet: the rows read wait for it, as the replay's do
            self.early_rows = list(r.early_rows)
        self.folded = r.folded

    def _load_snapshot(self) -> int:
        """Install the newest usable snapshot into the replay and seek the reader to its
        position; the offset reading starts from (the log-start offset without one)."""
        self.reader.seek_to_beginning(self.tp)
        start = self.reader.position(self.tp)  # the log-start offset: read before the snapshots
        snaps = self._snapshots() if self.from_snapshot else []
        for snap in sorted(snaps, key=lambda s: (s.position, s.offset), reverse=True):
            if snap.position < start:
                break  # this one and every older one miss deleted increments
            try:
                self._install(snap)
            except (ValueError, KeyError, TypeError) as e:
                log.error("model exchange: snapshot at offset %d skipped: %s", snap.offset, e)
                continue
            self.reader.seek(self.tp, snap.position)
            return snap.position
        if start > 0:
            raise ExchangeError(
                f"model exchange {self.topic}: its records before offset {start} are deleted "
                f"and no readable snapshot in {self.snapshot_topic} covers them: the group's "
                "model cannot be rebuilt (refusing to build a wrong one)"
            )
        return start

    def _install(self, snap: _Snapshot) -> None:
        from .state import decode_slot

        where = f"snapshot at offset {snap.offset} of {self.snapshot_topic}"
        model, gate, meta = decode_slot(snap.value, where=where)
        if meta.get("type") != "snapshot" or meta.get("topic") != self.topic:
            raise ValueError(f"{where}: not a snapshot of {self.topic}")
        if int(meta["position"]) != snap.position:
            raise ValueError(f"{where}: its header and its state disagree on the position")
        r = self.replay
        r.slot.model, r.slot.gate = model, gate
        r.winner = r.base_id = str(meta["base"])
        r.base_sender = meta["base_sender"]
        r.confirmed = True

    def _snapshots(self) -> list[_Snapshot]:
        """Every snapshot record now (committed ones under ``exactly_once``)."""
        from kafka.errors import OffsetOutOfRangeError

        c, tp = self.snap_reader, self.stp
        c.seek_to_beginning(tp)
        end = c.end_offsets([tp])[tp]
        out: list[_Snapshot] = []
        deadline = time.monotonic() + 30.0
        while c.position(tp) < end:
            if time.monotonic() > deadline:
                raise ExchangeError(f"{self.snapshot_topic}: not read to its end within 30 s")
            try:
                batch = c.poll(timeout_ms=200, max_records=100)
            except OffsetOutOfRangeError as e:
                raise ExchangeTrimmed(f"{self.snapshot_topic} trimmed while read") from e
            for msgs in batch.values():
                for m in msgs:
                    try:
                        pos = int(dict(m.headers or ())["position"])
                    except (KeyError, ValueError) as e:
                        log.error(
                            "model exchange: snapshot record %d has no position: %r", m.offset, e
                        )
                        continue
                    out.append(_Snapshot(pos, m.offset, int(m.timestamp), m.value))
        return out

    def _snapshot(self) -> bool:
        """Publish the replay at the position read to (if it has a base, and anything is new
        since this instance's last snapshot)."""
        from .state import encode_slot

        r = self.replay
        if r is None or r.winner is None or r.base_id != r.winner or r.early_rows:
            return False
        pos = self.reader.position(self.tp)
        if pos == self._snapshot_at:
            return False
        blob = encode_slot(
            r.slot.model,
            r.slot.gate,
            {
                "type": "snapshot",
                "topic": self.topic,
                "position": pos,
                "base": r.winner,
                "base_sender": r.base_sender,
            },
        )
        self.producer.send(
            self.snapshot_topic,
            key=SNAPSHOT_KEY,
            value=blob,
            partition=0,
            headers=[("position", str(pos).encode())],
        )
        if self._own_producer:
            self.producer.flush()
        self._snapshot_at = pos
        self.snapshots_sent += 1
        log.info(
            "model exchange: snapshot at offset %d sent (%d bytes, %d rows)",
            pos,
            len(blob),
            int(getattr(r.slot.model, "n_samples_seen_", 0)),
        )
        return True

    def _trim(self) -> None:
        """Delete the snapshot records and exchange records the newest snapshot at least
        ``trim_after`` seconds old makes unnecessary (see the module docstring). Best effort:
        a failure is logged, the next snapshot tries again."""
        try:
            snaps = sorted(self._snapshots(), key=lambda s: s.offset)
        except ExchangeError as e:
            log.warning("model exchange: not trimmed: %s", e)
            return
        now_ms = time.time() * 1000.0
        keep, high = None, -1
        for s in snaps:
            if s.position >= high:
                high = s.position
                if now_ms - s.timestamp_ms >= self.trim_after * 1000.0:
                    keep = s  # a prefix maximum old enough
        if keep is None:
            return
        cut = {}
        if keep.offset > snaps[0].offset:
            cut[self.stp] = keep.offset
        if keep.position > self.reader.beginning_offsets([self.tp])[self.tp]:
            cut[self.tp] = keep.position
        if not cut:
            return
        try:
            self.admin.delete_records(cut, timeout_ms=10000)
        except Exception as e:  # trimming is retried at the next snapshot
            log.warning("model exchange: delete_records %s failed: %r", cut, e)
            return
        self.trims += 1
        log.info(
            "model exchange: trimmed %s",
            ", ".join(f"{tp.topic} before offset {o}" for tp, o in cut.items()),
        )

    def _inc_meta(self, inc: Increment) -> dict:
        return {
            "base": inc.base_version,
            "decay": inc.decay,
            "n": inc.n_samples,
            "covariance_type": inc.stats.covariance_type,
        }

    def _send(self, kind: str, arrays: dict, meta: dict) -> None:
        blob = encode_state(
            arrays,
            {"type": kind, "sender": self.sender, "positions": self._positions, **meta},
            format_version=EXCHANGE_FORMAT_VERSION,
        )
        self.producer.send(self.topic, key=self.sender.encode(), value=blob, partition=0)

    def _send_rows(self) -> None:
        rows = np.concatenate(self.own_rows)
        self.own_rows = []
        self._send("rows", {"rows": rows}, {"n": len(rows)})

    def _read(self, slot, timeout: float = 30.0, live: bool = True) -> None:
        """Every message up to the topic's end now, in order, applied to the live state
        (unless ``live`` is false: a join) and to the replay; then the new reference ``R``
        (after any rows learned from ``rows`` messages: those are nobody's increment)."""
        from kafka.errors import OffsetOutOfRangeError

        end = self.reader.end_offsets([self.tp])[self.tp]
        decided = False
        replay = self.replay
        deadline = time.monotonic() + timeout
        while self.reader.position(self.tp) < end:
            if time.monotonic() > deadline:
                log.warning("model exchange: topic not read to its end within %.0f s", timeout)
                break
            try:
                batch = self.reader.poll(timeout_ms=200, max_records=1000)
            except OffsetOutOfRangeError as e:
                raise ExchangeTrimmed(
                    f"{self.topic} was trimmed past this reader's position "
                    f"{self.reader.position(self.tp)}"
                ) from e
            for msgs in batch.values():
                for msg in msgs:
                    self.read_count += 1
                    if live:
                        decided |= self._message(slot, msg)
                    if replay is not None and replay._message(replay.slot, msg):
                        replay._settle(replay.slot)  # at once: the same point for everyone
        if decided:
            self._settle(slot)
        if self.base_id is not None:
            self.ref = slot.model.group_statistics()


def _replay_slot(model, gate):
    from .state import Slot

    return Slot(model, gate)
