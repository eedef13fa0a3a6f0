"""The processing loop: source -> decode -> score, then learn (gated) -> encode -> sinks.

Per mini-batch: every valid record is scored by the model *as it was before the batch*
(prequential), then the batch is learned in one step, except rows the anomaly gate keeps out.
Each valid input yields exactly one output, each invalid one exactly one dead letter.

Delivery and recovery.  A checkpoint holds the model and gate state together with the next
input offset of every partition/file it has consumed.  It is written every
``checkpoint.every_records`` records and/or ``every_seconds`` seconds (always at a batch end),
at shutdown and before partitions are revoked, in the order *flush outputs -> write checkpoint
-> commit offsets*.  After a crash the processor restores the newest checkpoint and re-reads
from its offsets — on every Kafka partition assignment, whatever assignments came before, since
the committed offsets may lag the checkpoint (a crash between write and commit) — outputs
after it are produced again (at-least-once; Kafka outputs are keyed by the source coordinates
or input key, a file output is cut back to its size at the checkpoint
so it ends up exactly as one uninterrupted run writes it), while the restored model has never
learned those records — no update is ever applied twice.  File batches end at fixed positions
(multiples of ``batch_size``), so a replay is bit-identical.  Kafka batches follow ``poll()``;
to replay them identically, the grouping of every batch since the last checkpoint (partition,
first and end offset per segment) is appended to a batch journal (``batches-<seq>.jsonl`` in the
checkpoint directory, written before the batch is processed, not fsynced) and a restart replays
those batches first, so duplicate outputs are byte-identical after a process crash.  The
journals are normalised against the checkpoint's offsets first (see
:func:`~streamgmm.service.checkpoint.replay_plan`), so a batch journaled twice or partly is
replayed once, and a replay that cannot progress is given up rather than waited on.  In
changelog mode (scope ``partition``/``key`` on Kafka) each partition's journal is a message of
its changelog partition instead (see :mod:`~streamgmm.service.changelog`), acknowledged before
the batch's outputs are sent, so the partition's next owner on any machine replays the same
batches; the checkpoint directory is then only the changelog's local cache.  Only if a journal
is lost (machine crash of the global scope's disk) does a replay regroup records, and then
agrees within the core's batch-size tolerance.  Fault points for the
reliability tests: :mod:`streamgmm.service.faults`.

``processing_guarantee: exactly_once`` (Kafka in and out, scope ``partition``/``key``): the
checkpoint's three steps end one Kafka transaction — outputs, dead letters, changelog states and
the consumed offsets (sent with the consumer's group metadata, KIP-447) commit together; the
input and the changelog restore read ``read_committed``.  A failed transaction is aborted and
rolled back (states restored from the changelog, consumer sought back); a fenced producer stops
the processor.  Transactional id: one per process (``kafka.transactional_id``, default
``<group>-<instance or client id>-<random>``), as Kafka Streams' ``exactly_once_v2``: zombies
are fenced by the group generation and the transaction timeout, and a partition's new owner
waits until no transaction of its previous owner is open on the changelog before restoring.

``processing_guarantee: exactly_once`` with scope ``global`` needs ``model.exchange`` (one model
across the group, :mod:`~streamgmm.service.exchange`): the model's increment joins the
transaction instead of a changelog state, and a rollback reads the exchange topic again.  The
exchange itself hooks in at two places only: the model step (:meth:`Processor._step` tells it
the rows learned) and the checkpoint's state write (its tick: send, read, fold).

Records scored before any model exists (the very first mini-batch of a fresh run) get
``log_density``/``score`` ``null``, uniform probabilities and ``anomaly: false``; during the
core's warm-up, scores come from its provisional fit and the threshold may still be ``null``
(infinite) until the gate can calibrate.  ``model_version`` is the number of rows the model had
learned when it scored the record.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from . import faults
from .checkpoint import CheckpointError, CheckpointRefused, CheckpointStore
from .checkpointer import Checkpointer, positions_from_meta, positions_to_meta
from .codec import Decoder, encode_dead_letter, encode_outputs
from .config import ServiceConfig
from .keywatch import KeyWatch
from .metrics import Metrics, MetricsServer
from .records import RawRecord
from .sinks import FileSink, KafkaSink, make_producer
from .sources import FileSource, Interrupted, KafkaSource, Source, committed_offsets, file_identity
from .state import SourcePartition, StateKey, StateStore, as_uint8, restore_pair

__all__ = ["Processor", "build_model", "model_from_checkpoint"]

log = logging.getLogger("streamgmm.service")


def build_model(cfg: ServiceConfig):
    """A fresh model and anomaly gate from the configuration."""
    from streamgmm import OnlineGaussianMixture
    from streamgmm.anomaly import AnomalyGate

    # The configuration's sections name exactly the estimators' parameters.
    model = OnlineGaussianMixture(**cfg.model.estimator_params())
    gate = AnomalyGate(**cfg.gate.gate_kwargs())
    return model, gate


def model_from_checkpoint(ck):
    """``(model, gate)`` of a global-scope checkpoint (raises CheckpointError otherwise)."""
    if ck.meta.get("states") is not None:
        raise CheckpointError(
            f"{ck.path}: holds {len(ck.meta['states'])} states of scope "
            f"{ck.meta.get('scope')!r}, not one global model"
        )
    try:
        return restore_pair(ck.arrays, ck.meta["model_meta"], ck.meta["gate_meta"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{ck.path}: model state cannot be restored: {e}") from None


def store_from_checkpoint(ck, store: StateStore) -> None:
    """Install a checkpoint's states into ``store`` (raises CheckpointError)."""
    scope = ck.meta.get("scope", "global")
    if scope != store.scope:
        raise CheckpointError(
            f"checkpoint {ck.path} holds model scope {scope!r}, configured {store.scope!r}. "
            "Use the same scope, another --checkpoint-dir, or --fresh."
        )
    if ck.meta.get("states") is None:
        from .state import Slot

        model, gate = model_from_checkpoint(ck)
        store.live[StateKey(None, None)] = Slot(model, gate)
        return
    for entry, blob in zip(ck.meta["states"], checkpoint_blobs(ck), strict=True):
        part = entry.get("partition")
        sp = None if part is None else SourcePartition.parse(part, entry.get("kind", "kafka"))
        store.put_encoded(StateKey(sp, entry.get("key")), blob)
    for label, kind, key, n in ck.meta.get("unborn", []):
        store.unborn[StateKey(SourcePartition.parse(label, kind), key)] = int(n)


def checkpoint_blobs(ck) -> list[bytes]:
    """The encoded states of a partition/key checkpoint, in ``meta["states"]`` order."""
    entries = ck.meta["states"]
    packed, ends = ck.arrays.get("states.bytes"), ck.arrays.get("states.ends")
    if packed is None:  # formats 1-2: one array per state
        blobs = []
        for i in range(len(entries)):
            arr = ck.arrays.get(f"state.{i}")
            if arr is None:
                raise CheckpointError(f"{ck.path}: state {i} is missing")
            blobs.append(arr.tobytes())
        return blobs
    # Format 3: the states' bytes back to back, their ends beside them.
    if ends is None or len(ends) != len(entries):
        raise CheckpointError(f"{ck.path}: the states' bounds are missing")
    data, blobs, start = packed.tobytes(), [], 0
    for i, end in enumerate(ends.tolist()):
        if not start <= end <= len(data):
            raise CheckpointError(f"{ck.path}: state {i} is out of bounds")
        blobs.append(data[start:end])
        start = end
    return blobs


def store_to_checkpoint(store: StateStore) -> tuple[dict, dict]:
    """``(arrays, meta)`` of every state of ``store`` for a checkpoint file.

    A global store keeps the layout of format 1 (``model.*``/``gate.*`` arrays), which
    ``inspect`` and older tools read; other scopes store every state's encoded bytes back to
    back in one array (``states.bytes``, with their ends in ``states.ends``): one zip entry
    instead of one per key, ten thousand of which cost seconds per checkpoint."""
    if store.scope == "global":
        slot = store.only()
        m_arrays, m_meta = slot.model.get_state()
        g_arrays, g_meta = slot.gate.get_state()
        arrays = {f"model.{k}": v for k, v in m_arrays.items()}
        arrays.update({f"gate.{k}": v for k, v in g_arrays.items()})
        return arrays, {"model_meta": m_meta, "gate_meta": g_meta}
    blobs, states = [], []
    for sk, blob in store.encoded():
        blobs.append(blob)
        sp = sk.partition
        states.append(
            {
                "partition": None if sp is None else sp.label,
                "kind": None if sp is None else sp.kind,
                "key": sk.key,
            }
        )
    arrays = {
        "states.bytes": as_uint8(b"".join(blobs)),
        "states.ends": np.cumsum([len(b) for b in blobs], dtype=np.int64),
    }
    return arrays, {"states": states}


class Processor:
    """Runs one stream-processing job as configured.

    Parameters
    ----------
    cfg
        A validated :class:`~streamgmm.service.config.ServiceConfig`.
    handle_signals
        Install SIGTERM/SIGINT handlers (graceful stop) while :meth:`run` runs; only possible
        in the main thread.

    Attributes
    ----------
    states
        The :class:`~streamgmm.service.state.StateStore`: model + gate per (partition, key).
    model, gate
        Global scope: the :class:`streamgmm.OnlineGaussianMixture` and
        :class:`streamgmm.anomaly.AnomalyGate`.
    checkpointer
        :class:`~streamgmm.service.checkpointer.Checkpointer`: positions (next offset per
        :class:`~streamgmm.service.state.SourcePartition`), schedule and order.
    metrics
        :class:`~streamgmm.service.metrics.Metrics`.
    """

    def __init__(self, cfg: ServiceConfig, *, handle_signals: bool = True):
        self.cfg = cfg
        self.handle_signals = handle_signals
        self.metrics = Metrics()
        self.counts = {"in": 0, "out": 0, "dead": 0, "anomalies": 0}
        self.sink_sizes: dict[str, int] = {}
        # Kafka with one model per partition or key: the state lives in a compacted changelog
        # topic and moves with its partitions (see changelog.py); no local checkpoint is read.
        self.changelog = None
        self._changelog_mode = cfg.mode == "kafka" and cfg.model.scope != "global"
        # Kafka, global scope, model.exchange: one model across the group; its durable state
        # is the exchange topic (see exchange.py), a checkpoint file is only a copy.
        self.exchange = None
        self._exchange_mode = cfg.model.exchange
        # exactly_once: one Kafka transaction per checkpoint (see _commit_transaction).
        self.exactly_once = cfg.processing_guarantee == "exactly_once"
        self.transactions = 0  # committed
        self.aborts = 0
        self._fenced: BaseException | None = None
        self._written: dict[SourcePartition, int] = {}  # offset of each partition's last write
        # at_least_once in changelog mode: each partition's batch journal since its last
        # write (see changelog.py), acknowledged before a batch's outputs are sent.
        self._journal_on = self._changelog_mode and not self.exactly_once
        self._segments: dict[SourcePartition, list[list[int]]] = {}
        self._journal_sent: list = []
        self._journal_failed = False
        self.store = (
            CheckpointStore(cfg.checkpoint.dir, cfg.checkpoint.keep)
            if cfg.checkpoint.dir and not self._changelog_mode
            else None
        )
        # Changelog mode: the checkpoint directory is a cache of the changelog, copied after
        # every checkpoint and used on an assignment when it holds the newest write (see
        # changelog_cache.py).
        self.cache = None
        self._fresh_done: set[SourcePartition] = set()  # --fresh: partitions wiped this run
        self._records: dict[SourcePartition, dict] = {}  # the last changelog record written
        self._cached: dict[SourcePartition, str] = {}  # id of the record each cache copy holds
        # Changelog writes not in the cache yet: (id of the record they followed, the states
        # they sent), so the cache copies only those (a delta) rather than every state.
        self._uncached: dict[SourcePartition, tuple[str | None, dict[StateKey, bytes]]] = {}
        if cfg.checkpoint.dir and self._changelog_mode:
            from .changelog_cache import LocalCache

            self.cache = LocalCache(cfg.checkpoint.dir)
            log.info(
                "model scope %r on Kafka: state is kept in the changelog topic; %s caches it",
                cfg.model.scope,
                cfg.checkpoint.dir,
            )
        self.checkpointer = Checkpointer(cfg.checkpoint.every_records, cfg.checkpoint.every_seconds)
        self.states = StateStore(
            cfg.model.scope, lambda: build_model(cfg), max_live=cfg.model.max_live_keys
        )
        self._dead_reasons: Counter[str] = Counter()  # this run's, for the summary's hints
        self._counts_at_start = dict(self.counts)
        self._stop = False
        self._outage_since: float | None = None
        self._outage_logged = 0.0
        self._processing = False
        self.source: Source | None = None
        self.out = self.dead = None  # the output and dead-letter sinks (see _open)
        self.restored_from: Path | None = None
        ck = None
        # With the model exchange the model is the group's, read from the exchange topic.
        exchange = self._exchange_mode
        if self.store is not None and not cfg.fresh and not exchange:
            ck = self.store.load_latest()
        # Partitions this instance gave up (revoked, lost; kept across restarts in the
        # checkpoint): another instance may have processed them further, so a re-assignment
        # resumes from the later of our offset and the group's committed one.
        self._released: set[SourcePartition] = set()
        self._assigned_at = 0.0  # monotonic time of the last non-empty assignment
        features = cfg.features
        # Features found in the input (not configured): a checkpoint made so is refused when
        # this input's fields differ (checked on the first valid record, before any scoring).
        self.features_inferred = cfg.features is None
        self._expect_features: list[str] | None = None
        # ...and the numeric fields they were chosen from (None: a checkpoint older than that)
        self._expect_fields: list[str] | None = None
        if ck is not None:
            self._check_compatible(ck)
            store_from_checkpoint(ck, self.states)
            features = ck.meta.get("features") or features
            if cfg.features is None:
                self.features_inferred = bool(ck.meta.get("features_inferred"))
                if self.features_inferred and features:
                    self._expect_features, features = list(features), None
                    fields = ck.meta.get("feature_fields")
                    self._expect_fields = list(fields) if fields is not None else None
            off = ck.meta.get("offsets", {})
            self.checkpointer.positions.update(positions_from_meta(off))
            self._released = {SourcePartition.parse(k) for k in ck.meta.get("released", [])}
            self.counts.update(ck.meta.get("counts", {}))
            self._counts_at_start = dict(self.counts)
            self.sink_sizes = {k: int(v) for k, v in ck.meta.get("sinks", {}).items()}
            self.restored_from = ck.path
            log.info(
                "restored checkpoint %s: %d rows learned, offsets %s",
                ck.path.name,
                self._n_seen(),
                off,
            )
        elif self.store is not None and not cfg.fresh and cfg.mode == "kafka" and not exchange:
            self._refuse_forgotten_model()
        self._ck_seq = ck.seq if ck is not None else 0
        # Where the features come from, for the log line that names them: a resumed run takes
        # them from its checkpoint (a new user read "auto-detected" there and thought this
        # input had chosen them).
        origin = None
        if ck is not None and features is not None and cfg.features is None:
            origin = f"from checkpoint {ck.path.name}"
        self.decoder = Decoder(
            features,
            max_record_bytes=cfg.max_record_bytes,
            key_field=cfg.key_field,
            timestamp_field=cfg.timestamp_field,
            vector_field=cfg.vector_field,
            max_abs=_max_abs(),
            origin=origin,
            announce=self._expect_features is None,
        )
        if self._expect_features is not None:
            self.decoder.on_inferred = self._check_inferred_features
        self._resumed = ck is not None
        # Scope key: warn when no record has a key (all would go to the pooled model).
        self._key_watch = KeyWatch(cfg.key_field) if cfg.model.scope == "key" else None

    @property
    def offsets(self) -> dict[SourcePartition, int]:
        """Next offset per input partition/file processed so far."""
        return self.checkpointer.positions

    @property
    def model(self):
        slot = self._any_slot()
        return None if slot is None else slot.model

    @property
    def gate(self):
        slot = self._any_slot()
        return None if slot is None else slot.gate

    def _any_slot(self):
        if self.states.scope == "global":
            return self.states.only()
        if not self.states.live and self.states.cold:
            self.states.get(next(iter(self.states.cold)))
        return next(reversed(self.states.live.values()), None)

    # -- checkpoint compatibility ----------------------------------------------------------
    def _check_compatible(self, ck) -> None:
        meta, cfg = ck.meta, self.cfg
        fp = cfg.fingerprint()
        if meta.get("fingerprint") != fp:
            old = meta.get("config", {})
            new = {"model": cfg.model.estimator_params(), "gate": cfg.gate.model_dump()}
            diffs = [
                f"{sec}.{k}: checkpoint {old.get(sec, {}).get(k)!r} != configured {v!r}"
                for sec in ("model", "gate")
                for k, v in new[sec].items()
                if old.get(sec, {}).get(k) != v
            ]
            raise CheckpointError(
                f"checkpoint {ck.path} was made with a different configuration ("
                + ("; ".join(diffs) or "fingerprint differs")
                + "). Use the same settings, another --checkpoint-dir, or --fresh to start over."
            )
        if cfg.features is not None and meta.get("features") not in (None, cfg.features):
            raise CheckpointError(
                f"checkpoint {ck.path} has features {meta.get('features')}, configured "
                f"{cfg.features}. Use the same features, another --checkpoint-dir, or --fresh."
            )

    def _refuse_forgotten_model(self) -> None:
        # Committed offsets without a checkpoint: a model learned those records and its state
        # is gone (new machine, wiped volume). Starting fresh there would silently forget it.
        committed = committed_offsets(self.cfg.kafka)
        if committed:
            raise CheckpointError(
                f"consumer group {self.cfg.kafka.group_id!r} has committed offsets on "
                f"{', '.join(self.cfg.kafka.topics)} but the checkpoint directory "
                f"{self.store.dir} holds no checkpoint: the model that learned those records "
                "is not here. Point --checkpoint-dir at its checkpoints, or pass --fresh to "
                "start a new model from the committed offsets."
            )

    def _check_inferred_features(self) -> None:
        """This input against a checkpoint whose features were auto-detected (the decoder's
        hook, on the first batch, before any row is decoded): refused when a feature is not
        among the numeric fields of its first record, or (checkpoints that recorded them) a
        numeric field is new; else the checkpoint's features are the features.  The value
        rules of the detection (constant, two values, counting) are not judged again: on a
        later part of the same stream (a file that grew) they may differ, and such a resume
        was refused (digits: pixels 0 in the first 500 rows, not in the next)."""
        dec = self.decoder
        found, expected, fields = dec.fields, self._expect_features, self._expect_fields
        self._expect_features = None
        missing = [f for f in expected if f not in found]
        extra = [f for f in found if f not in fields] if fields is not None else []
        if missing or extra:
            raise CheckpointRefused(
                f"checkpoint {self.restored_from} was made with the auto-detected features "
                f"{_names(expected)}, but this input's numeric fields are {_names(found)}"
                + (f" (missing {_names(missing)})" if missing else "")
                + (f" (new {_names(extra)})" if extra else "")
                + ". Use --features to choose, another --checkpoint-dir, or --fresh."
            )
        unused = [f for f in found if f not in expected]
        dec.features, dec.fields = list(expected), list(fields if fields is not None else found)
        dec.excluded = {f: dec.excluded.get(f, "not a feature of the checkpoint") for f in unused}
        log.info(
            "features (from checkpoint %s, auto-detected by the run that started it; this "
            "input has them all): %s",
            self.restored_from.name,
            ", ".join(expected),
        )
        if unused:
            log.info("not used as features, as in that run: %s", ", ".join(unused))

    def _global_count(self, obj, name: str) -> int | None:
        """A counter of the one model or gate in global scope (None in the other scopes)."""
        if self.states.scope != "global" or obj is None:
            return None
        return int(getattr(obj, name, 0))

    def _n_seen(self) -> int:
        """Rows learned: the global model's, else summed over partitions' (pooled) models."""
        st = self.states
        if st.scope == "global":
            return int(getattr(st.only().model, "n_samples_seen_", 0))
        total = 0
        for sk in st.state_keys():
            if sk.key is None:
                total += st.get(sk).n_own
        return total

    # -- sources and sinks -------------------------------------------------------------------
    def _open(self) -> None:
        """The source and sinks of the configured mode: the one place that tells them apart."""
        cfg = self.cfg
        k = cfg.kafka
        self.producer = None
        if self.exactly_once:
            tid = self.transactional_id = k.transactional_id or _default_transactional_id(k)
            self.producer = make_producer(
                k, transactional_id=tid, transaction_timeout_ms=k.transaction_timeout_ms
            )
            # Fences an older producer of the same id and ends its open transaction.
            self.producer.init_transactions()
            self.producer.begin_transaction()
            log.info("exactly_once: transactional id %s", tid)
        elif cfg.mode == "kafka" and (
            (k.output_topic and cfg.output.path is None) or self._changelog_mode
        ):
            self.producer = make_producer(k)
        if self._changelog_mode:
            from .changelog import Changelog

            self.changelog = Changelog(k, self.producer)
        if self._exchange_mode:
            from .exchange import ModelExchange, exchange_topic

            self.exchange = ModelExchange(
                k,
                cfg.model.exchange_topic or exchange_topic(k.group_id, k.topics[0]),
                self.producer if self.exactly_once else None,
                read_committed=self.exactly_once,
                every_seconds=cfg.checkpoint.every_seconds,
                snapshot_every=cfg.model.exchange_snapshot_every,
                trim_after=cfg.model.exchange_trim_after,
            )
            self.exchange.restore(self.states.only())  # join: the group's model
        if cfg.mode == "kafka":
            journal, plan = None, []
            if self.store is not None and not cfg.fresh and not self._exchange_mode:
                # Batch journal: the grouping of every batch since the last checkpoint, so a
                # restart replays the same batches and its duplicate outputs are identical.
                start = {sp.tp: o for sp, o in self.offsets.items() if sp.kind == "kafka"}
                plan, path = self.store.journal_replay(self._ck_seq, start)
                journal = self.store.journal()
                journal.open(path, "a")
            if self._journal_on:
                journal = _ChangelogJournal(self)
            self.source = KafkaSource(
                cfg.kafka,
                self._on_assigned,
                self._on_revoked,
                self._on_lost,
                journal,
                plan,
                isolation_level="read_committed" if self.exactly_once else "read_uncommitted",
            )
            self.metrics.broker_check = self.source.broker_connected
            self._watch_stop = threading.Event()
            threading.Thread(target=self._watch_broker, name="broker-watch", daemon=True).start()
        else:
            ident = file_identity(cfg.input.path)
            start = self.offsets.get(SourcePartition.file(ident), 0)
            self.source = FileSource(
                cfg.input.path, cfg.input.format, cfg.batch_size, start, cfg.max_batch_wait
            )
            if start and self.source.blocking:
                # stdin, a pipe: nothing to skip ("resuming - at record 3000" said otherwise).
                log.info(
                    "reading %s from its first record (live input has no position to resume "
                    "at); the model continues from the checkpoint",
                    "stdin" if cfg.input.path == "-" else cfg.input.path,
                )
            elif start:
                log.info("resuming %s at record %d", cfg.input.path, start)
        if self._expect_features is None:
            self._open_sinks()
        # else: resuming a checkpoint whose features were auto-detected, which this input's
        # fields must match (checked on its first batch): the outputs are opened only then, so
        # a refused resume creates, truncates or leaves behind no output file.

    def _open_sinks(self) -> None:
        cfg, k = self.cfg, self.cfg.kafka
        if cfg.mode == "kafka" and k.output_topic and cfg.output.path is None:
            self.out = KafkaSink(self.producer, k.output_topic)
        else:
            self.out = self._file_sink(cfg.output.path or "-")
        dlq = cfg.output.dead_letter
        if dlq is None and self.producer is not None and cfg.output.path is None:
            fixed = k.dead_letter_topic
            self.dead = KafkaSink(self.producer, fixed, lambda r: f"{r.topic}.dlq")
        else:
            if dlq is None:
                outp = cfg.output.path or "-"
                dlq = "<stderr>" if outp == "-" else _dlq_path(outp)
            self.dead = self._file_sink(dlq)

    def _file_sink(self, path: str) -> FileSink:
        if path in ("-", "<stderr>"):
            return FileSink(path)
        ident = file_identity(path)
        resume = self.sink_sizes.get(ident) if self._resumed else None
        sink = FileSink(path, resume_size=resume)
        sink.identity = ident
        return sink

    # -- Kafka rebalance callbacks (run inside poll(), i.e. between batches) -------------------
    def _on_assigned(self, sps: list[SourcePartition], committed: dict) -> dict:
        # Seek every assigned partition to where this model is, on every assignment, whatever
        # came before (an empty first assignment, partial ones): the committed offset may lag
        # the checkpoint (a crash between the two), and resuming there would learn records
        # twice. Only for a partition this instance released may the group be further on: then
        # another instance processed those records and this model skips them.
        if self.changelog is not None:
            return self._restore(sps, committed)
        seeks = {}
        for sp in sps:
            ours = self.offsets.get(sp)
            if ours is None:
                continue
            theirs = committed.get(sp)
            if sp in self._released and theirs is not None and theirs > ours:
                log.info(
                    "%s was processed elsewhere up to %d since this instance released it "
                    "at %d: continuing from there",
                    sp.label,
                    theirs,
                    ours,
                )
                self.offsets[sp] = ours = theirs
            seeks[sp] = ours
            self._released.discard(sp)
        if sps:
            self._assigned_at = time.monotonic()  # idle time counts from here (see _loop)
        log.info(
            "partitions assigned: %s; seeking %s",
            [sp.label for sp in sps],
            {sp.label: o for sp, o in seeks.items()},
        )
        return seeks

    def _restore(self, sps: list[SourcePartition], committed: dict) -> dict:
        """Changelog mode: each assigned partition's states from its changelog partition, and
        the offset stored with them to seek to (whatever this instance had: it may be stale)."""
        t0 = time.perf_counter()
        if self.cfg.fresh:
            # --fresh: the old states of partitions new to this run are tombstoned, not
            # restored; their models start new from the group's committed offsets.
            new = [sp for sp in sps if sp not in self._fresh_done]
            if new:
                n = self.changelog.wipe(new)
                self._fresh_done.update(new)
                log.info(
                    "--fresh: %d changelog messages of %s tombstoned; their models start new",
                    n,
                    [sp.label for sp in new],
                )
                for sp in new:
                    self.states.drop_partition(sp)
                    self.offsets.pop(sp, None)
                    self._written.pop(sp, None)
                sps = [sp for sp in sps if sp not in new]
        read_before = self.changelog.messages_read
        restored = self.changelog.restore(sps, self.cache)
        seeks = {}
        for sp in sps:
            ps = restored[sp]
            self.states.drop_partition(sp)
            for sk, (blob, learned_to) in ps.states.items():
                ahead = ps.offset is None or learned_to > ps.offset
                self.states.put_encoded(sk, blob, learned_to if ahead else None)
            for key, n in ps.record.get("unborn", {}).items():
                self.states.unborn[StateKey(sp, key)] = int(n)
            self._written.pop(sp, None)
            self._segments.pop(sp, None)
            self._records.pop(sp, None)
            self._cached.pop(sp, None)
            self._uncached.pop(sp, None)
            if ps.record.get("id"):  # a graceful stop caches it, even without a new write
                self._records[sp] = ps.record
                if ps.source == "cache":
                    self._cached[sp] = ps.record["id"]
            if ps.offset is not None:
                self.offsets[sp] = seeks[sp] = ps.offset
                self._written[sp] = ps.offset
                self._replay_journal(sp, ps, ps.offset)
            elif ps.journal and self._replay_journal(sp, ps, int(ps.journal[0][0])):
                # Batches processed before the partition's first write (its first owner died
                # before a checkpoint): replay them from where that owner started.
                seeks[sp] = int(ps.journal[0][0])
            else:
                self.offsets.pop(sp, None)
                if committed.get(sp) is not None:
                    log.error(
                        "%s has committed offset %d but its changelog holds no state: its "
                        "models start fresh from there (was the changelog topic deleted?)",
                        sp.label,
                        committed[sp],
                    )
        if sps:
            self._assigned_at = time.monotonic()
        cached = [sp.label for sp in sps if restored[sp].source == "cache"]
        self.metrics.partitions_restored.labels("cache").inc(len(cached))
        self.metrics.partitions_restored.labels("changelog").inc(len(sps) - len(cached))
        log.info(
            "partitions assigned: %s; restored %d states in %.3f s (%d changelog messages "
            "read; from the local cache: %s); seeking %s",
            [sp.label for sp in sps],
            sum(len(restored[sp].states) for sp in sps),
            time.perf_counter() - t0,
            self.changelog.messages_read - read_before,
            cached,
            {sp.label: o for sp, o in seeks.items()},
        )
        return seeks

    def _replay_journal(self, sp: SourcePartition, ps, base: int) -> bool:
        """Queue the batches the partition's previous owner processed after its last write
        (its journal, contiguous from ``base``), each as a batch of its own: the replay's
        outputs are then the same bytes as the first ones. Whether any were queued."""
        if not self._journal_on or not ps.journal:
            return False
        segs = [[int(a), int(b)] for a, b in ps.journal if a >= base]
        at = base
        for a, b in segs:
            if a != at or b <= a:  # not contiguous from the record: not a journal of it
                return False
            at = b
        if segs:
            self._segments[sp] = segs  # still this partition's journal until its next write
            self.source.replay([[(sp.name, sp.partition, a, b)] for a, b in segs])
            log.info("%s: replaying %d journaled batches from %d", sp.label, len(segs), base)
        return bool(segs)

    def _journal_append(self, segs) -> None:
        for t, p, start, end in segs:
            sp = SourcePartition.kafka(t, p)
            lst = self._segments.setdefault(sp, [])
            lst.append([int(start), int(end)])
            self._journal_sent.append(self.changelog.journal(sp, lst))

    def _journal_wait(self) -> None:
        """The batch's journal entries are acknowledged before its outputs go out: no output
        can be visible whose batch a replay would not know."""
        sent, self._journal_sent = self._journal_sent, []
        for fut in sent:
            try:
                fut.get(timeout=60)
            except Exception as e:
                if not self._journal_failed:
                    log.warning(
                        "batch journal not acknowledged (%r): after a crash, duplicate outputs "
                        "of these batches may differ slightly from the first ones",
                        e,
                    )
                self._journal_failed = True

    def _on_revoked(self, sps: list[SourcePartition]) -> dict:
        log.info("partitions revoked: %s", [sp.label for sp in sps])
        self._released.update(sps)
        self._checkpoint(commit=False)
        offsets = {sp: self.offsets[sp] for sp in sps if sp in self.offsets}
        if self.changelog is not None:
            self._forget(sps)  # their next owner restores them from the changelog
        if self.exactly_once:
            return {}  # committed inside the transaction already
        return offsets

    def _forget(self, sps: list[SourcePartition]) -> None:
        gone = {sp.tp for sp in sps}
        plan = getattr(self.source, "plan", None)
        if plan:  # their journaled batches are the next owner's to replay
            kept = [e for e in plan if not any((t, p) in gone for t, p, _, _ in e)]
            plan.clear()
            plan.extend(kept)
        for sp in sps:
            self.states.drop_partition(sp)
            self.offsets.pop(sp, None)
            self._written.pop(sp, None)
            self._segments.pop(sp, None)
            self._records.pop(sp, None)
            self._cached.pop(sp, None)
            self._uncached.pop(sp, None)
            if self.cache is not None:
                self.cache.forget(sp)
        self.changelog.forget(sps)

    def _on_lost(self, sps: list[SourcePartition]) -> None:
        log.warning("partitions lost (group membership expired): %s", [sp.label for sp in sps])
        if self.exactly_once:
            self._abort_lost(sps)
        if self.changelog is not None:
            self._forget(sps)  # not written: the next owner continues from the changelog
            return
        # Keep our offsets: they are where the model is. If the partitions come back to this
        # instance (e.g. after a broker restart) it seeks there, or further if another
        # instance processed them meanwhile (see _on_assigned).
        self._released.update(sps)

    def _abort_lost(self, sps: list[SourcePartition]) -> None:
        """exactly_once, partitions lost: abort the open transaction.  Its outputs, dead
        letters and state writes belong to records the partitions' next owner processes again
        from the committed offsets; committed, they would be duplicates, and with no partition
        left to this member the commit would carry no offsets, so no generation check (KIP-447)
        would refuse it (seen: one batch of 100 inputs with two committed outputs in the
        three-instance kill test).  The lost partitions' states are dropped by the caller
        (changelog: the next owner restores the committed ones); the group's model (exchange)
        is read again, as after a failed transaction."""
        try:
            self.producer.abort_transaction()
        except Exception as e:  # fenced already: nothing of it can commit; stop at the next step
            self._fenced = RuntimeError(
                f"exactly_once: partitions lost and the transaction could not be aborted "
                f"({e!r}); stopping without committing anything more"
            )
            return
        self.aborts += 1
        for sink in (self.out, self.dead):
            if isinstance(sink, KafkaSink):
                sink._errors.clear()  # of the aborted transaction
        if self.changelog is not None:
            self.changelog._errors.clear()
        if self.exchange is not None:
            slot = self.states.only()
            slot.model, slot.gate = build_model(self.cfg)
            self.exchange.restore(slot)
            for sp in sps:  # the group's committed offsets apply when they come back
                self.offsets.pop(sp, None)
        self.checkpointer.since = 0
        self.producer.begin_transaction()
        log.warning("exactly_once: partitions lost; their open transaction was aborted")

    # -- checkpointing ---------------------------------------------------------------------------
    def _checkpoint(self, commit: bool = True) -> None:
        """Flush outputs -> write checkpoint -> commit offsets (that order is the guarantee).

        exactly_once: the three steps end one Kafka transaction (offsets are committed through
        it, also before partitions are revoked); a failed one is aborted and rolled back.
        Changelog mode with a checkpoint directory: then the states written are copied to the
        local cache (only once Kafka has them: the cache never holds more than the changelog).
        """
        if self._fenced is not None:
            raise self._fenced
        if self.exactly_once:
            try:
                self.checkpointer.run(self._flush, self._write_state, self._commit_transaction)
            except Exception as e:
                self._transaction_failed(e)
                return
        else:
            self.checkpointer.run(
                self._flush, self._write_state, self.source.commit if commit else None
            )
        self.metrics.last_checkpoint = time.time()
        self.metrics.checkpoints.inc()
        if self.cache is not None:
            self._save_cache()

    def _save_cache(self) -> None:
        """Copy to the local cache every owned partition whose newest changelog record (written
        and acknowledged by now) the cache does not hold yet: only the states that write sent
        (a delta), or, when the cache does not hold the record before it (just restored from
        the changelog, or a delta chain grown too long), all of the partition's states.

        After a crash the cache is at most one checkpoint older than the changelog (a crash
        between the changelog write and this copy), and is then ignored on restore."""
        t0 = time.perf_counter()
        for sp, rec in list(self._records.items()):
            if sp not in self.offsets or self._cached.get(sp) == rec["id"]:
                continue
            prev, changed = self._uncached.pop(sp, (None, None))
            if prev is None or prev != self._cached.get(sp):
                changed = None  # the cache does not hold the write before: a full copy
            kind = self.cache.write(
                sp,
                rec,
                prev,
                changed,
                self.changelog.chunk_keys(sp, changed or ()),
                lambda sp=sp: (self.states.partition_states(sp), self.changelog.chunk_keys(sp)),
            )
            self._cached[sp] = rec["id"]
            self.metrics.cache_writes.labels(kind).inc()
        self.metrics.cache_seconds.inc(time.perf_counter() - t0)

    def _commit_transaction(self, positions: dict[SourcePartition, int]) -> None:
        """exactly_once: the consumed offsets join the transaction, which commits; the next
        one begins. Offsets go with the consumer's group metadata (generation, member id:
        KIP-447), so the group coordinator refuses them from a member the group has moved on
        from (a zombie), and then the whole transaction is aborted."""
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        # Only partitions this instance owns now: global scope keeps the positions of released
        # ones (see _on_assigned), and committing those would move another owner's back.
        mine = self.source.consumer.assignment()
        offsets = {
            tp: OffsetAndMetadata(o, "", -1)
            for sp, o in positions.items()
            if sp.kind == "kafka" and (tp := TopicPartition(sp.name, sp.partition)) in mine
        }
        if offsets:
            self.producer.send_offsets_to_transaction(
                offsets, self.source.consumer.group_metadata()
            )
        self.producer.commit_transaction()
        self.transactions += 1
        self.producer.begin_transaction()

    def _transaction_failed(self, err: BaseException) -> None:
        """Abort the transaction and roll back to its start: every assigned partition's state
        is restored from the changelog (the last committed transaction's) and the consumer
        seeks to the offsets stored with it, so the aborted records are processed again.
        A fenced producer (another instance took over its transactional id or the broker
        timed its transaction out) cannot go on: the processor stops."""
        from kafka import TopicPartition
        from kafka.errors import InvalidProducerEpochError, ProducerFencedError

        fatal = isinstance(err, (ProducerFencedError, InvalidProducerEpochError))
        if not fatal:
            log.warning("transaction failed (%r): aborting and rolling back", err)
            try:
                self.producer.abort_transaction()
            except Exception as e:
                fatal, err = True, e
        if fatal:
            self._fenced = RuntimeError(
                f"exactly_once: this instance's producer was fenced ({err!r}): another "
                "instance has taken over its partitions or transactional id; stopping without "
                "committing anything more"
            )
            self.stop()
            raise self._fenced from err
        self.aborts += 1
        for sink in (self.out, self.dead):
            if isinstance(sink, KafkaSink):
                sink._errors.clear()  # of the aborted transaction
        consumer = self.source.consumer
        mine = sorted(SourcePartition.kafka(tp.topic, tp.partition) for tp in consumer.assignment())
        self.source.forget(sp.tp for sp in mine)
        if self.exchange is not None:
            seeks = self._rejoin(mine)
        else:
            self.changelog._errors.clear()
            self._forget(sorted(set(self.offsets) | set(mine)))
            seeks = self._restore(mine, {})
        for sp in mine:
            tp = TopicPartition(sp.name, sp.partition)
            if sp in seeks:
                consumer.seek(tp, seeks[sp])
            elif self.cfg.kafka.auto_offset_reset == "earliest":
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek_to_end(tp)
        self.checkpointer.since = 0
        self.producer.begin_transaction()
        log.warning("rolled back to the last committed transaction: %s", seeks)

    def _rejoin(self, sps: list[SourcePartition]) -> dict:
        """Model exchange: the model of the last committed transaction is the group's, read
        from the exchange topic again; the input resumes at the group's committed offsets."""
        slot = self.states.only()
        slot.model, slot.gate = build_model(self.cfg)
        self.exchange.restore(slot)
        committed = self.source.consumer.committed
        from kafka import TopicPartition

        seeks = {}
        for sp in sps:
            self.offsets.pop(sp, None)
            o = committed(TopicPartition(sp.name, sp.partition))
            if o is not None:
                self.offsets[sp] = seeks[sp] = o
        return seeks

    def _flush(self) -> None:
        if self.out is None:  # not opened yet (see _open): nothing written
            return
        self.out.flush()
        self.dead.flush()
        for s in (self.out, self.dead):
            if isinstance(s, FileSink) and s.is_file:
                self.sink_sizes[s.identity] = s._f.tell()

    def _write_state(self) -> None:
        if self.changelog is not None:
            self._write_changelog()
        if self.exchange is not None:
            positions = {sp.label: o for sp, o in self.offsets.items()}
            self.exchange.tick(self.states.only(), positions)  # send ours, fold the others'
        if self.store is None:
            return
        arrays, meta = store_to_checkpoint(self.states)
        meta.update(
            {
                "scope": self.states.scope,
                "fingerprint": self.cfg.fingerprint(),
                "config": {
                    "model": self.cfg.model.estimator_params(),
                    "gate": self.cfg.gate.model_dump(),
                },
                # Not re-detected yet (a resume that read no record): still the checkpoint's
                # (a checkpoint without them let the next run detect anything, unchecked).
                "features": self.decoder.features
                if self.decoder.features is not None
                else self._expect_features,
                "features_inferred": self.features_inferred,
                "feature_fields": self.decoder.fields
                if self.decoder.fields is not None
                else self._expect_fields,
                "offsets": positions_to_meta(self.offsets),
                "released": sorted(sp.label for sp in self._released),
                "sinks": dict(self.sink_sizes),
                "counts": dict(self.counts),
                "n_samples_seen": self._n_seen(),
                "unborn": [
                    [sk.partition.label, sk.partition.kind, sk.key, n]
                    for sk, n in self.states.unborn.items()
                ],
            }
        )
        path = self.store.save(arrays, meta)
        log.debug("checkpoint %s written", path.name)
        self.source.after_checkpoint(int(path.stem.split("-")[1]))

    def _write_changelog(self) -> None:
        """Changed states and the partition record of every partition that moved on, then one
        flush: all acknowledged before the offsets are committed."""
        for sp, offset in list(self.offsets.items()):
            changed = self.states.changed(sp)
            if changed or self._written.get(sp) != offset:
                unborn = {sk.key: n for sk, n in self.states.unborn.items() if sk.partition == sp}
                before = self._records.get(sp, {}).get("id")
                self._records[sp] = self.changelog.write(
                    sp, changed, offset, {"unborn": unborn} if unborn else None
                )
                if self.cache is not None:  # what the cache has to copy after this checkpoint
                    prev, sent = self._uncached.get(sp, (before, {}))
                    sent.update(changed)
                    self._uncached[sp] = (prev, sent)
                self._written[sp] = offset
                self._segments.pop(sp, None)  # the record supersedes the journal
        self.changelog.flush()

    # -- one batch -------------------------------------------------------------------------------
    def process_batch(self, batch: list[RawRecord]) -> None:
        t0 = time.perf_counter()
        dec = self.decoder.decode_batch(batch)
        if self.out is None:
            self._open_sinks()  # see _open
        if self._key_watch is not None and dec.rows:
            said = self._key_watch.observe(dec.keys, lambda: _fields(batch[dec.rows[0]]))
            if said:
                log.warning(said)
        lines: list[bytes] = []
        faults.point("score")
        if dec.rows:
            lines = self._score_and_learn(batch, dec)
        if self._journal_sent:
            self._journal_wait()
        dead = dec.dead
        if dead:
            self._dead_reasons.update(why[:100] for _, why in dead)
            dl = [encode_dead_letter(batch[i], why, self.cfg.max_record_bytes) for i, why in dead]
            self.dead.write([batch[i] for i, _ in dead], dl)
        if lines:
            self.out.write([batch[i] for i in dec.rows], lines)
        faults.point("produce")
        n = len(batch)
        self.checkpointer.advance(self.source.positions, n)
        self.counts["in"] += n
        self.counts["out"] += len(lines)
        self.counts["dead"] += len(dead)
        m = self.metrics
        m.records_in.inc(n)
        m.records_out.inc(len(lines))
        if dead:
            m.dead_letters.inc(len(dead))
        m.batch_latency.observe(time.perf_counter() - t0)
        m.last_batch = time.time()

    def _groups(self, batch, dec) -> dict[StateKey, list[int]]:
        """Valid rows (indices into ``dec``) per state they belong to, in order."""
        st = self.states
        if st.scope == "global":
            return {StateKey(None, None): list(range(len(dec.rows)))}
        groups: dict[StateKey, list[int]] = {}
        part = self.source_partition
        for j, i in enumerate(dec.rows):
            rec = batch[i]
            groups.setdefault(st.key_for(part(rec), dec.keys[j]), []).append(j)
        return groups

    def source_partition(self, rec: RawRecord) -> SourcePartition:
        if rec.topic is not None:
            return SourcePartition.kafka(rec.topic, rec.partition)
        return self.source.partition  # a file is one partition

    def _score_and_learn(self, batch, dec) -> list[bytes]:
        """Score, flag and (gated) learn the decoded rows: per state, the gate's one step."""
        groups = self._groups(batch, dec)
        st = self.states
        res = _Results(len(dec.rows))
        rejected: set[int] = set()
        if st.scope == "key":
            # Every valid row of a partition also trains the partition's pooled model: the
            # prior of its new keys and the model of rows without a key. New keys are copied
            # from it before it learns this batch; while it still warms up, they are not born
            # yet and the pooled model scores their rows.
            pooled: dict[StateKey, list[int]] = {}
            own: dict[StateKey, list[int]] = {}
            bearing: dict[SourcePartition, bool] = {}
            births: list[StateKey] = []
            for sk, js in groups.items():
                pk = StateKey(sk.partition, None)
                pooled.setdefault(pk, []).extend(js)
                if sk.key is None:
                    own.setdefault(pk, []).extend(js)
                    continue
                if sk not in st:
                    if sk.partition not in bearing:
                        bearing[sk.partition] = st.can_bear(sk.partition)
                    if not bearing[sk.partition]:
                        own.setdefault(pk, []).extend(js)
                        st.unborn[sk] = st.unborn.get(sk, 0) + len(js)
                        continue
                    births.append(sk)
            st.bear(births)  # copies of the pooled models as they are before this batch
            for pk, js in pooled.items():
                mine = sorted(own.get(pk, ()))
                self._step(st.get(pk), batch, dec, sorted(js), mine, res, rejected)
            groups = {sk: js for sk, js in groups.items() if sk.key is not None and sk in st}
        for sk, js in groups.items():
            self._step(st.get(sk), batch, dec, js, js, res, rejected)
        if res.gate is not None:
            self.metrics.observe_gate(res.gate)
        if rejected:
            keep = [j for j in range(len(dec.rows)) if j not in rejected]
            dec.dead.sort()
            dec.rows = [dec.rows[j] for j in keep]
            dec.keys = [dec.keys[j] for j in keep]
            dec.timestamps = [dec.timestamps[j] for j in keep]
        else:
            keep = None
        return res.encode(batch, dec, keep)

    def _step(self, slot, batch, dec, learn, emit, res, rejected) -> None:
        """The gate's step of ``slot`` on rows ``learn`` (indices into ``dec``); the results of
        rows ``emit`` (a subset, in order) go to ``res``."""
        if rejected:
            learn = [j for j in learn if j not in rejected]
        if slot.learned_to is not None:
            learn, emit = self._already_learned(slot, batch, dec, learn, emit, res, rejected)
            if not learn:
                return
        model, gate = slot.model, slot.gate
        version = int(getattr(model, "n_samples_seen_", 0))
        gate.gating = self.cfg.gate.enabled  # the configuration decides, also after a restore
        slot.dirty = True
        slot.blob = None  # stale from here on: not kept alive beside the live state
        n = len(learn)
        try:
            rows = dec.X if n == len(dec.rows) else dec.X[learn]
            if gate.few_rows(model, n):  # a key's row or two: no batch machinery
                r = gate.score_and_learn_few(model, rows)
            else:
                r = gate.score_and_learn(model, rows)
            ok = learn
            if self.exchange is not None:
                self.exchange.learned(slot, rows)
        except Exception as e:
            # The gate validates the whole batch before any state change; isolate the rows.
            log.warning("batch rejected by the model (%s); retrying row by row", e)
            r, ok = self._row_by_row(slot, dec, learn, rejected)
            if r is None:
                return
        if len(emit) != len(ok):  # a pooled model: only rows without a key are its own
            emit_set = set(emit)
            at = [i for i, j in enumerate(ok) if j in emit_set]
            if not at:
                return
            r = type(r)(*(f[at] for f in r))
            ok = [ok[i] for i in at]
        n_anom = int(r.anomaly.sum())
        self.counts["anomalies"] += n_anom
        self.metrics.anomalies.inc(n_anom)
        if self.states.scope == "global":
            self.metrics.samples_seen.set(int(getattr(model, "n_samples_seen_", 0)))
        res.put(ok, r, version, gate)

    def _already_learned(self, slot, batch, dec, learn, emit, res, rejected):
        """Rows before ``slot.learned_to`` are in the state already (it was written beyond its
        partition record before a crash): a throwaway copy scores them, the state does not
        learn them again. Returns the rows left to learn and emit."""
        from .state import Slot, decode_slot, encode_slot

        cut = slot.learned_to
        done = {j for j in learn if batch[dec.rows[j]].offset < cut}
        if done:
            model, gate, _ = decode_slot(encode_slot(slot.model, slot.gate))
            scratch = Slot(model, gate)
            order = [j for j in learn if j in done]
            self._step(scratch, batch, dec, order, [j for j in emit if j in done], res, rejected)
            learn = [j for j in learn if j not in done]
            emit = [j for j in emit if j not in done]
        if learn:
            slot.learned_to = None  # past it: from here on every record is new to the state
        return learn, emit

    def _row_by_row(self, slot, dec, js, rejected):
        """The gate step row by row; rows the model rejects become dead letters."""
        from streamgmm.anomaly import GateResult

        keep, parts = [], []
        for j in js:
            try:
                parts.append(slot.gate.score_and_learn(slot.model, dec.X[j : j + 1]))
            except Exception as e:
                if j not in rejected:
                    rejected.add(j)
                    dec.dead.append((dec.rows[j], f"rejected by the model: {e}"))
                continue
            keep.append(j)
        if not keep:
            return None, []
        return GateResult(*(np.concatenate(field) for field in zip(*parts, strict=True))), keep

    # -- the loop ----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to stop after the current batch (thread- and signal-safe)."""
        self._stop = True
        self.metrics.running = False
        src = self.source
        if src is not None:
            src.stop()
            if getattr(src, "in_read", False) and not self._processing:
                raise Interrupted()

    def _signal(self, signum, frame) -> None:
        log.info("received %s: finishing the current batch", signal.Signals(signum).name)
        self.stop()

    def run(self) -> int:
        """Process until the input ends, a stop is requested or a limit is reached.

        Returns 0, or 1 when records came in but none could be used (all dead-lettered: see
        the summary's hint). Ends with the summary of :meth:`summary` in the log."""
        cfg = self.cfg
        old_handlers = {}
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                old_handlers[s] = signal.signal(s, self._signal)
        server = None
        gc_tuned = False
        try:
            if cfg.metrics_port is not None:
                server = MetricsServer(self.metrics, cfg.metrics_host, cfg.metrics_port)
                self.metrics_port = server.port
                log.info("metrics on http://%s:%d/metrics", cfg.metrics_host, server.port)
            self._open()
            gc_tuned = _gc_for_streaming()
            self._loop()
            if self.out is None:  # no record came (see _open)
                self._open_sinks()
            self._checkpoint()
            return self._report()
        finally:
            self.metrics.running = False
            if gc_tuned:
                _gc_restore()
            for s, h in old_handlers.items():
                signal.signal(s, h)
            self._close()
            if server is not None:
                server.close()

    def summary(self) -> dict:
        """What this run did (not the totals kept across restarts, which are under
        ``totals``): records in/out/dead-lettered, anomalies flagged and the realised flag rate
        against the configured ``false_alarm_rate``, whether the model is still warming up
        (scores null or provisional), and the most frequent dead-letter reasons."""
        run = {k: self.counts[k] - self._counts_at_start.get(k, 0) for k in self.counts}
        model, gate = self.model, self.gate
        thr = float(gate.threshold_for(model)) if model is not None and self._n_seen() else math.inf
        # over the gate's last complete window
        recent = float(gate.recent_flag_rate_) if gate is not None else math.nan
        # The gate counts every row not learned, the model's hold-backs included.
        held = self._global_count(model, "n_held_back_")
        excluded = self._global_count(gate, "n_excluded_")
        kept_out = None if held is None or excluded is None else excluded - held
        return {
            "records_in": run["in"],
            "outputs": run["out"],
            "dead_letters": run["dead"],
            "anomalies": run["anomalies"],
            "flag_rate": run["anomalies"] / run["out"] if run["out"] else None,
            "target_flag_rate": self.cfg.gate.false_alarm_rate,
            "threshold_calibrated": math.isfinite(thr),
            "warming_up": bool(getattr(model, "warming_up_", True)),
            "rows_learned": self._n_seen(),
            # global scope: why the other valid rows were not learned (model totals)
            "rows_held_back": held,
            "rows_kept_out": kept_out,
            "recent_flag_rate": recent if math.isfinite(recent) else None,
            "flag_rate_alarm": bool(gate is not None and gate.flag_rate_alarm_),
            "dead_reasons": self._dead_reasons.most_common(3),
            "totals": dict(self.counts),
        }

    def _report(self) -> int:
        s = self.summary()
        if self._key_watch is not None and (said := self._key_watch.message()):
            log.warning(said)  # an input shorter than the watch's first records
        tot = s["totals"]
        not_learned = ""
        if s["rows_held_back"] is not None and not s["warming_up"]:
            not_learned = (
                f", {s['rows_kept_out']} kept out by the anomaly gate (far beyond its "
                f"threshold), {s['rows_held_back']} held back by the model (poorly explained "
                "while a new component may be forming, or zero density)"
            )
        log.info(
            "run summary: %d records in, %d out, %d dead letters this run (%d / %d / %d in "
            "total, across restarts); %d rows learned%s",
            s["records_in"],
            s["outputs"],
            s["dead_letters"],
            tot["in"],
            tot["out"],
            tot["dead"],
            s["rows_learned"],
            not_learned,
        )
        if s["outputs"]:
            if s["threshold_calibrated"]:
                log.info(
                    "flagged %d of %d records (%.2f%%; target false-alarm rate %.2f%%)",
                    s["anomalies"],
                    s["outputs"],
                    100 * s["flag_rate"],
                    100 * s["target_flag_rate"],
                )
            else:
                log.info("anomaly threshold not calibrated yet: nothing could be flagged")
        if s["flag_rate_alarm"]:
            log.warning(
                "flag-rate alarm: %.2f%% of the last records were flagged against a target of "
                "%.2f%%, for several windows in a row: either the stream holds that many "
                "anomalies, or the data do not fit the model (check the features) or the stream "
                "is changing",
                100 * s["recent_flag_rate"],
                100 * s["target_flag_rate"],
            )
        if s["warming_up"] and s["outputs"]:
            log.warning(
                "the run ended inside the model's warm-up: scores were null (no model yet) or "
                "provisional; the model is fitted once its warm-up buffer is full"
            )
        if not tot["in"] and self.cfg.mode != "kafka":
            # An empty file (or a CSV of only its header) ran silently to "0 records in".
            inp = self.cfg.input
            csv = inp.format == "csv" or (
                inp.format == "auto" and inp.path.lower().endswith((".csv", ".csv.gz"))
            )
            log.warning(
                "no records in %s: %s",
                "stdin" if inp.path == "-" else inp.path,
                "no data rows after the CSV header, if any" if csv else "the input is empty",
            )
        if s["dead_letters"]:
            log.info(
                "most frequent dead-letter reasons: %s",
                "; ".join(f"{why} ({n})" for why, n in s["dead_reasons"]),
            )
        if s["records_in"] and not s["outputs"]:
            log.error(
                "no record could be used: all %d records were dead-lettered. %s",
                s["records_in"],
                _hint(s["dead_reasons"], self.cfg),
            )
            return 1
        return 0

    def _loop(self) -> None:
        """Batches in, each processed, a checkpoint whenever due; until end, stop or limit."""
        cfg, source = self.cfg, self.source
        self._last_data = time.monotonic()
        self._bar = self._progress()
        batches = source.batches()
        try:
            for batch in batches:
                if batch:
                    self._process(batch)
                elif not (source.waiting or self._outage_since is not None) and self._idle():
                    log.info("no input for %.1f s: stopping", cfg.idle_timeout)
                    break
                if self._stop or self._limit_reached():
                    break
                if self.checkpointer.due():
                    self._checkpoint()
                elif self.exchange is not None and not self.checkpointer.since:
                    self.exchange.idle_tick(self.states.only())  # keep up with the group
        except Interrupted:
            pass
        finally:
            with contextlib.suppress(Exception):
                batches.close()
            if self._bar is not None:
                self._bar.close()

    def _process(self, batch: list[RawRecord]) -> None:
        self._processing = True
        try:
            self.process_batch(batch)
        finally:
            self._processing = False
        self._last_data = time.monotonic()
        if self.source.live and len(batch) < self.cfg.batch_size:
            self._show()  # a batch cut by max_batch_wait: results are wanted now
        if self._bar is not None:
            self._bar.update(self.source.bytes_read - self._bar.n)
        lag = self.source.lag(self.offsets)
        if lag is not None:
            self.metrics.consumer_lag.set(lag)

    def _idle(self) -> bool:
        # An outage or a replay waiting for its partitions is not idleness (checked by the
        # caller); nor is joining the group, or waiting for the first fetch (idle_grace).
        limit = self.cfg.idle_timeout
        if limit is None:
            return False
        since = max(self._last_data, self._assigned_at)
        grace = self.source.idle_grace()
        return time.monotonic() - since > limit + grace

    def _limit_reached(self) -> bool:
        limit = self.cfg.max_records
        if limit is not None and self.counts["in"] >= limit:
            log.info("max_records=%d reached: stopping", limit)
            return True
        return False

    def _show(self) -> None:
        # Durability still comes from the checkpoint's flush; a failure here reappears there.
        for sink in (self.out, self.dead):
            if sink is not None:
                with contextlib.suppress(OSError):
                    sink.flush()

    def _watch_broker(self) -> None:
        # A thread: the loop itself may sit in a blocking flush/commit while the broker is away.
        while not self._watch_stop.wait(1.0):
            self._broker_ok()

    def _broker_ok(self) -> bool:
        """False while no broker connection is up; logs the outage every 30 s."""
        try:
            up = self.source.broker_connected()
        except Exception:
            up = True  # cannot tell: behave as before
        now = time.monotonic()
        if up:
            if self._outage_since is not None:
                log.warning("Kafka broker reachable again after %.1f s", now - self._outage_since)
            self._outage_since = None
            return True
        if self._outage_since is None:
            self._outage_since = self._outage_logged = now
            log.warning("Kafka broker unreachable: waiting and reconnecting")
        elif now - self._outage_logged >= 30:
            self._outage_logged = now
            log.warning("Kafka broker unreachable for %.0f s", now - self._outage_since)
        return False

    def _progress(self):
        cfg = self.cfg
        if cfg.mode != "file" or cfg.input.path == "-":
            return None
        import sys

        show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
        if not show:
            return None
        from tqdm import tqdm

        return tqdm(
            total=self.source.size,
            unit="B",
            unit_scale=True,
            desc="streamgmm",
            initial=0,
            file=sys.stderr,
        )

    def _close(self) -> None:
        if getattr(self, "_watch_stop", None) is not None:
            self._watch_stop.set()
        for name in ("out", "dead"):
            s = getattr(self, name, None)
            if s is not None:
                try:
                    s.close()
                except Exception as e:
                    log.error("closing %s sink: %s", name, e)
        if getattr(self, "producer", None) is not None:
            with contextlib.suppress(Exception):
                self.producer.close(timeout=10)
        if self.source is not None:
            self.source.close()
        if self.changelog is not None:
            self.changelog.close()
        if self.exchange is not None:
            self.exchange.close()


def _names(names: list[str], at_most: int = 12) -> str:
    """``names`` as a list, the first ``at_most`` of a longer one and how many more (a refusal
    on 64 pixel columns listed 170 names)."""
    if len(names) <= at_most:
        return str(names)
    return f"{str(names[:at_most])[:-1]}, ... {len(names) - at_most} more]"


class _ChangelogJournal:
    """The source's journal hook in changelog mode: batches go to the changelog."""

    def __init__(self, proc: Processor) -> None:
        self.proc = proc

    def append(self, segs) -> None:
        self.proc._journal_append(segs)

    def close(self) -> None:
        pass


def _fields(rec: RawRecord) -> list[str]:
    """Field names of a valid record (a CSV row's header, a JSON object's keys)."""
    if isinstance(rec.parsed, dict):
        return list(rec.parsed)
    import json

    return list(json.loads(rec.value))


def _default_transactional_id(k) -> str:
    """``<group>-<instance or client id>-<random>``: unique per process, as Kafka Streams'
    exactly_once_v2 makes it; zombies are fenced by the group generation sent with the offsets
    (and by the transaction timeout), not by reusing the id."""
    import uuid

    return f"{k.group_id}-{k.group_instance_id or k.client_id}-{uuid.uuid4().hex[:12]}"


def _hint(reasons: list[tuple[str, int]], cfg: ServiceConfig) -> str:
    """The usual cause of a run whose every record was dead-lettered."""
    top = reasons[0][0] if reasons else ""
    if top.startswith("not JSON") and cfg.mode == "file":
        return (
            "Is the input CSV? Pass --input-format csv (files not named .csv are read as JSON "
            "lines, and so is stdin when its first line is a JSON object)."
        )
    if top.startswith("missing"):
        return "Check that --features names fields the records have (names are case-sensitive)."
    if top.startswith("wrong dimension"):
        return "The records have another number of features than the model (or checkpoint)."
    return "See the dead letters for each record's reason."


def _dlq_path(out: str) -> str:
    p = Path(out)
    stem = p.name[: -len(".jsonl")] if p.name.endswith(".jsonl") else p.name
    return str(p.with_name(stem + ".dlq.jsonl"))


#: Young objects (allocations minus deallocations) before a generation-0 collection while the
#: loop runs.  A batch allocates tens of thousands of short-lived objects (records, outputs,
#: producer futures) that die by reference count; at Python's default (700) their survivors
#: were promoted and set off a full collection every few seconds.  See _gc_for_streaming.
GC_YOUNG = 50_000


_gc_lock = threading.Lock()
_gc_users: list = [0, None]  # processors running in this process, thresholds before the first


def _gc_for_streaming() -> bool:
    """Make the cyclic garbage collector cheap for the loop: what is alive now (the imported
    libraries' ~200k functions, types and dicts; the connections) goes to the permanent
    generation (``gc.freeze()``), which collections do not scan, and generation 0 is collected
    after :data:`GC_YOUNG` net allocations instead of 700.  Before, a full collection scanned
    those ~250k objects (~0.2 s) every ~10,000 records and found nothing: a fifth of the key
    scope's CPU.  No decision or number depends on it.  Processors running side by side in one
    process (threads) share it: the last to end puts the collector back (:func:`_gc_restore`).
    Objects frozen here are never collected as cycles while a processor runs: they are the
    libraries and the few states restored before the loop (global, pooled), which live as long
    as the run anyway."""
    with _gc_lock:
        if _gc_users[0] == 0:
            before = gc.get_threshold()
            _gc_users[1] = before
            gc.set_threshold(max(before[0], GC_YOUNG), *before[1:])
        _gc_users[0] += 1
        gc.freeze()
    return True


def _gc_restore() -> None:
    with _gc_lock:
        _gc_users[0] -= 1
        if _gc_users[0] == 0:
            gc.set_threshold(*_gc_users[1])
            gc.unfreeze()


def _max_abs() -> float:
    try:
        from streamgmm.online import MAX_ABS_VALUE
    except ImportError:  # older core: keep the documented bound
        return 1e150
    return float(MAX_ABS_VALUE)


class _Results:
    """One batch's gate results, row by row, from any number of models (one per key): encoded
    to output documents once for the whole batch, not once per model."""

    __slots__ = ("anomaly", "gate", "log_density", "proba", "tail", "threshold", "version")

    def __init__(self, n: int) -> None:
        self.log_density = np.full(n, np.nan)
        self.tail = np.full(n, np.nan)
        self.threshold = np.full(n, np.nan)
        self.anomaly = np.zeros(n, dtype=bool)
        self.version = [0] * n
        self.proba: list = [None] * n
        self.gate = None  # the last gate stepped: its rates go to the metrics

    def put(self, rows: list[int], r, version: int, gate) -> None:
        self.log_density[rows] = r.log_density
        self.tail[rows] = r.tail_probability
        self.threshold[rows] = r.threshold
        self.anomaly[rows] = r.anomaly
        version_, proba = self.version, self.proba
        for i, j in enumerate(rows):
            version_[j] = version
            proba[j] = r.proba[i]
        self.gate = gate

    def encode(self, batch, dec, keep: list[int] | None) -> list[bytes]:
        """The output documents of rows ``keep`` (all rows if None; ``dec`` holds just them)."""
        ld, tail, thr, an, ver, pr = (
            self.log_density,
            self.tail,
            self.threshold,
            self.anomaly,
            self.version,
            self.proba,
        )
        if keep is not None:
            ld, tail, thr, an = ld[keep], tail[keep], thr[keep], an[keep]
            ver = [ver[j] for j in keep]
            pr = [pr[j] for j in keep]
        if not pr:
            return []
        if any(p is None for p in pr):  # every row kept has been stepped
            raise RuntimeError("a valid row was not scored")
        width = pr[0].shape[0]
        proba = np.vstack(pr) if all(p.shape[0] == width for p in pr) else pr
        return encode_outputs(batch, dec, ld, proba, thr, an, ver, tail_probability=tail)
