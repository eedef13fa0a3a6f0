"""One model across a consumer group: increments exchanged through a Kafka topic.

With model scope ``global`` and ``model.exchange`` on (``--model-exchange``), every instance of
the consumer group learns from its own partitions and the instances exchange what they learned
through one topic, ``<group>-<input topic>-exchange`` (1 partition, created if missing,
``retention.ms=-1``), so the group converges on one model whose components stay aligned.  The
numbers are the core's (:mod:`streamgmm.group`); this module is the Kafka side.

Messages (key: the sending process's id; value: the state codec's bytes, no pickle; each
carries the sender's input positions, next offset per partition, at the time it was sent):

``base``
    a whole model (:meth:`~streamgmm.OnlineGaussianMixture.get_state`) with an id.  The first
    base in the topic is *the* base: every instance adopts it, so the components are the same
    everywhere.  An instance whose model finishes its warm-up before it has seen a base
    publishes its own as a candidate.
``rows``
    rows as they are: what an instance learned while the group had no base yet (sent at every
    checkpoint while it warms up, and when it adopts the base, its rows in no message yet).
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

No instance is special.  **Joining**: an instance starts (or restarts, on any machine) by
reading the topic from the beginning -- the base, then every increment in topic order -- which
is the group's model; its input positions are the group's committed offsets.  **Leaving**: its
increments are in the topic already, up to its last committed offsets, so nothing is lost; the
records after them are processed again by the partitions' next owner.  With
``at_least_once`` a crash between sending an increment and committing the offsets makes that
owner learn those records a second time (the outputs repeat anyway).  With ``exactly_once`` the
increment is sent inside the checkpoint's transaction, with the outputs and the offsets, and
the topic is read ``read_committed``: every record is learned by the group exactly once; an
aborted transaction rolls the model back by reading the topic again.

**Components.**  With ``n_components="auto"`` the component set must be the same for all: the
base's components are frozen (:meth:`~streamgmm.OnlineGaussianMixture.freeze_components`: no
birth, merge, death nor re-seeding; poorly explained rows are learned, not held back).  Choose
``n_components`` (or let the base's BIC choice stand) knowing K will not follow the stream.

Not done: the topic is never compacted or re-based (a new base that folds in the increments so
far would let a joiner start there); it grows by one increment per instance per checkpoint
(about ``K D^2`` doubles each), and a joiner reads all of it.  A candidate killed after
committing its base and before learning that another base won loses the rows of its base that
are in no rows message (those since its last checkpoint before the candidacy; start-up only).
With the anomaly gate on, the rows of rows messages are gated by each receiver's own gate, so
the instances' row counts may differ by the few rows gated differently.
"""

from __future__ import annotations

import logging
import time
import uuid

import numpy as np

from streamgmm.group import Increment, MixtureStatistics
from streamgmm.persistence import decode_state, encode_state

__all__ = ["ModelExchange", "exchange_topic"]

log = logging.getLogger("streamgmm.service.exchange")

#: Version of an exchange message's encoding.
EXCHANGE_FORMAT_VERSION = 1
#: Largest message (a base of K=10, D=100 full covariances is ~1.6 MB).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def exchange_topic(group_id: str, topic: str) -> str:
    """The default exchange topic of a consumer group reading ``topic``."""
    return f"{group_id}-{topic}-exchange"


class ModelExchange:
    """The exchange of one instance (see the module docstring).

    Parameters
    ----------
    kafka
        The :class:`~streamgmm.service.config.KafkaConfig`.
    topic
        The exchange topic (created if missing).
    producer
        The transactional producer (``exactly_once``: increments join the checkpoint's
        transaction), or ``None``: the exchange sends through a producer of its own and waits
        for the acknowledgement at each tick.
    read_committed
        Read only committed transactions' messages (``exactly_once``).
    every_seconds
        Least time between idle ticks.

    Attributes
    ----------
    base_id
        The base this instance's model comes from (``None``: none yet; warming up).
    confirmed
        Whether ``base_id`` is known to be the group's (first in the topic).
    sent, folded
        Increments sent and folded by this process.
    """

    def __init__(self, kafka, topic, producer=None, read_committed=False, every_seconds=1.0):
        from kafka import KafkaConsumer, TopicPartition

        self.kafka = kafka
        self.topic = topic
        self.every_seconds = float(every_seconds or 1.0)
        self._own_producer = producer is None
        if producer is None:
            from .sinks import make_producer

            producer = make_producer(kafka)
        self.producer = producer
        self._ensure_topic()
        self.tp = TopicPartition(topic, 0)
        self.reader = KafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers.split(","),
            client_id=f"{kafka.client_id}-exchange",
            enable_auto_commit=False,
            fetch_max_bytes=4 * MAX_MESSAGE_BYTES,
            max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
            isolation_level="read_committed" if read_committed else "read_uncommitted",
        )
        self.reader.assign([self.tp])
        self.reset()

    def reset(self) -> None:
        """Forget everything read (before reading the topic again from its beginning)."""
        # A new sender id: this instance's earlier messages are not in the model any more (a
        # rollback rebuilds it), so they are folded like anyone's.
        self.sender = uuid.uuid4().hex[:16]
        self.reader.seek_to_beginning(self.tp)
        self.base_id: str | None = None  # the base this model comes from
        self.winner: str | None = None  # the first base in the topic
        self.base_sender: str | None = None  # ... and who sent it
        self.confirmed = False
        self.ref: MixtureStatistics | None = None
        # Own rows learned but in no message yet (while the group's base is undecided).
        self.own_rows: list[np.ndarray] = []
        # Rows messages read before the base was decided: (sender, rows), in topic order.
        self.early_rows: list[tuple[str, np.ndarray]] = []
        self.sent = self.folded = 0
        self._positions: dict[str, int] = {}
        self.last_tick = time.monotonic()

    def _ensure_topic(self) -> None:
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(
            bootstrap_servers=self.kafka.bootstrap_servers.split(","),
            client_id=f"{self.kafka.client_id}-admin",
        )
        try:
            if self.topic in set(admin.list_topics()):
                return
            try:
                admin.create_topics(
                    [
                        NewTopic(
                            self.topic,
                            1,
                            1,
                            topic_configs={
                                "retention.ms": "-1",  # the base must stay
                                "max.message.bytes": str(MAX_MESSAGE_BYTES),
                            },
                        )
                    ]
                )
                log.info("created model exchange topic %s", self.topic)
            except TopicAlreadyExistsError:
                pass  # another instance created it meanwhile
        finally:
            admin.close()
        # Wait until the new topic's metadata has reached the brokers' caches: a consumer
        # group joined in the same moment was seen to get an empty assignment and not rejoin.
        self.producer.partitions_for(self.topic)

    # -- the hooks the processor calls ------------------------------------------------------
    def restore(self, slot) -> None:
        """Join: the group's model from the topic (base, then every increment in order)."""
        t0 = time.perf_counter()
        self.reset()
        self._read(slot)
        log.info(
            "model exchange %s: %s, %d increments folded in %.3f s (%d rows learned)",
            self.topic,
            f"joined base {self.base_id}" if self.base_id else "no base yet",
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
        it learned), then read and fold the others'. Inside a checkpoint: after the outputs'
        flush, before the offsets' commit, so what the committed offsets cover is in the topic.
        ``positions`` (next input offset per partition label), sent along: where the sender's
        model is (a base: every record of those partitions before them is in it)."""
        self._positions = dict(positions or {})
        if self.base_id is None:
            self._read(slot)  # a base may have come meanwhile: join it rather than compete
        model = slot.model
        if self.base_id is not None:
            inc = model.increment_since(self.ref, self.base_id)
            if inc.n_samples:
                self._send("increment", inc.stats.to_arrays(), self._inc_meta(inc))
                self.sent += 1
        elif getattr(model, "has_model_", False) and not model.warming_up_:
            # Past the warm-up and no base seen: this model is a candidate. Its rows since its
            # last rows message are in it; kept until the candidacy is decided.
            model.freeze_components()
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
        self._read(slot)
        self.last_tick = time.monotonic()

    def idle_tick(self, slot) -> None:
        """While no record comes in (nothing learned since the last tick): read and fold."""
        if time.monotonic() - self.last_tick < self.every_seconds:
            return
        self._read(slot)
        self.last_tick = time.monotonic()

    def close(self) -> None:
        self.reader.close()
        if self._own_producer:
            self.producer.close(timeout=10)

    # -- internals ----------------------------------------------------------------------------
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

    def _read(self, slot, timeout: float = 30.0) -> None:
        """Every message up to the topic's end now, in order; then the new reference ``R``
        (after any rows learned from ``rows`` messages: those are nobody's increment)."""
        end = self.reader.end_offsets([self.tp])[self.tp]
        decided = False
        deadline = time.monotonic() + timeout
        while self.reader.position(self.tp) < end:
            if time.monotonic() > deadline:
                log.warning("model exchange: topic not read to its end within %.0f s", timeout)
                break
            for msgs in self.reader.poll(timeout_ms=200, max_records=1000).values():
                for msg in msgs:
                    decided |= self._message(slot, msg)
        if decided:
            self._settle(slot)
        if self.base_id is not None:
            self.ref = slot.model.group_statistics()

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
            log.info(
                "model exchange: %d rows learned on base %s from rows messages", n, self.winner
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
        log.info(
            "model exchange: adopted the group's base %s (%d rows, K=%d)",
            self.base_id,
            model.n_samples_seen_,
            model.n_components_,
        )
