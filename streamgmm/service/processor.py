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
replayed once, and a replay that cannot progress is given up rather than waited on.  Only if
the journal is lost (machine crash) or the partitions moved to another instance does a replay
regroup records, and then agrees within the core's batch-size tolerance.  Fault points for the
reliability tests: :mod:`streamgmm.service.faults`.

Records scored before any model exists (the very first mini-batch of a fresh run) get
``log_density``/``score`` ``null``, uniform probabilities and ``anomaly: false``; during the
core's warm-up, scores come from its provisional fit and the threshold may still be ``null``
(infinite) until the gate can calibrate.  ``model_version`` is the number of rows the model had
learned when it scored the record.
"""

from __future__ import annotations

import contextlib
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
from .codec import Decoder, encode_dead_letter, encode_outputs
from .config import ServiceConfig
from .metrics import Metrics, MetricsServer
from .records import RawRecord
from .sinks import FileSink, KafkaSink, make_producer
from .sources import FileSource, Interrupted, KafkaSource, committed_offsets, file_identity

__all__ = ["Processor", "build_model", "model_from_checkpoint"]

log = logging.getLogger("streamgmm.service")


def build_model(cfg: ServiceConfig):
    """A fresh model and anomaly gate from the configuration."""
    from streamgmm import OnlineGaussianMixture
    from streamgmm.anomaly import AnomalyGate

    # The configuration's sections name exactly the estimators' parameters.
    model = OnlineGaussianMixture(**cfg.model.model_dump())
    gate = AnomalyGate(**cfg.gate.gate_kwargs())
    return model, gate


def _split(arrays: dict, prefix: str) -> dict:
    n = len(prefix)
    return {k[n:]: v for k, v in arrays.items() if k.startswith(prefix)}


def model_from_checkpoint(ck):
    """``(model, gate)`` rebuilt from a loaded checkpoint."""
    from streamgmm import OnlineGaussianMixture
    from streamgmm.anomaly import AnomalyGate

    try:
        model = OnlineGaussianMixture.from_state(_split(ck.arrays, "model."), ck.meta["model_meta"])
        gate = AnomalyGate.from_state(_split(ck.arrays, "gate."), ck.meta["gate_meta"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{ck.path}: model state cannot be restored: {e}") from None
    return model, gate


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
    model, gate
        The :class:`streamgmm.OnlineGaussianMixture` and :class:`streamgmm.anomaly.AnomalyGate`.
    offsets
        Next offset per Kafka ``(topic, partition)`` or per input file identity.
    metrics
        :class:`~streamgmm.service.metrics.Metrics`.
    """

    def __init__(self, cfg: ServiceConfig, *, handle_signals: bool = True):
        self.cfg = cfg
        self.handle_signals = handle_signals
        self.metrics = Metrics()
        self.offsets: dict = {}
        self.counts = {"in": 0, "out": 0, "dead": 0, "anomalies": 0}
        self.sink_sizes: dict[str, int] = {}
        self.store = (
            CheckpointStore(cfg.checkpoint.dir, cfg.checkpoint.keep) if cfg.checkpoint.dir else None
        )
        self._dead_reasons: Counter[str] = Counter()  # this run's, for the summary's hints
        self._counts_at_start = dict(self.counts)
        self._stop = False
        self._outage_since: float | None = None
        self._outage_logged = 0.0
        self._processing = False
        self.source = None
        self.restored_from: Path | None = None
        ck = None
        if self.store is not None and not cfg.fresh:
            ck = self.store.load_latest()
        # Batch journal (Kafka): the grouping of every batch since the last checkpoint, so a
        # restart replays the same batches and its duplicate outputs are identical.
        self._journal = self.store.journal() if self.store is not None else None
        self._journal_path: Path | None = None
        self._replay_plan: list = []
        # Partitions this instance gave up (revoked, lost; kept across restarts in the
        # checkpoint): another instance may have processed them further, so a re-assignment
        # resumes from the later of our offset and the group's committed one.
        self._released: set[tuple[str, int]] = set()
        self._assigned_at = 0.0  # monotonic time of the last non-empty assignment
        features = cfg.features
        # Features found in the input (not configured): a checkpoint made so is refused when
        # this input's fields differ (checked on the first valid record, before any scoring).
        self.features_inferred = cfg.features is None
        self._expect_features: list[str] | None = None
        if ck is not None:
            self._check_compatible(ck)
            self.model, self.gate = model_from_checkpoint(ck)
            features = ck.meta.get("features") or features
            if cfg.features is None:
                self.features_inferred = bool(ck.meta.get("features_inferred"))
                if self.features_inferred and features:
                    self._expect_features, features = list(features), None
            off = ck.meta.get("offsets", {})
            for k, v in off.get("kafka", {}).items():
                t, p = k.rsplit(":", 1)
                self.offsets[(t, int(p))] = int(v)
            for k, v in off.get("files", {}).items():
                self.offsets[k] = int(v)
            for k in ck.meta.get("released", []):
                t, p = k.rsplit(":", 1)
                self._released.add((t, int(p)))
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
        else:
            self.model, self.gate = build_model(cfg)
            if self.store is not None and not cfg.fresh and cfg.mode == "kafka":
                self._refuse_forgotten_model()
        if self.store is not None and not cfg.fresh and cfg.mode == "kafka":
            start = {k: v for k, v in self.offsets.items() if isinstance(k, tuple)}
            self._replay_plan, self._journal_path = self.store.journal_replay(
                ck.seq if ck is not None else 0, start
            )
        self.decoder = Decoder(
            features,
            max_record_bytes=cfg.max_record_bytes,
            key_field=cfg.key_field,
            timestamp_field=cfg.timestamp_field,
            vector_field=cfg.vector_field,
            max_abs=_max_abs(),
        )
        self._resumed = ck is not None

    # -- checkpoint compatibility ----------------------------------------------------------
    def _check_compatible(self, ck) -> None:
        meta, cfg = ck.meta, self.cfg
        fp = cfg.fingerprint()
        if meta.get("fingerprint") != fp:
            old = meta.get("config", {})
            new = {"model": cfg.model.model_dump(), "gate": cfg.gate.model_dump()}
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
        found, expected = self.decoder.features, self._expect_features
        self._expect_features = None
        if found != expected:
            missing = [f for f in expected if f not in found]
            extra = [f for f in found if f not in expected]
            raise CheckpointRefused(
                f"checkpoint {self.restored_from} was made with the auto-detected features "
                f"{expected}, but this input's numeric fields are {found}"
                + (f" (missing {missing})" if missing else "")
                + (f" (new {extra})" if extra else "")
                + ". Use --features to choose, another --checkpoint-dir, or --fresh."
            )

    def _n_seen(self) -> int:
        return int(getattr(self.model, "n_samples_seen_", 0))

    # -- sources and sinks -------------------------------------------------------------------
    def _open(self) -> None:
        cfg = self.cfg
        self.producer = None
        if cfg.mode == "kafka":
            self.source = KafkaSource(cfg.kafka, self._on_assigned, self._on_revoked, self._on_lost)
            self.metrics.broker_check = self.source.broker_connected
            self._watch_stop = threading.Event()
            threading.Thread(target=self._watch_broker, name="broker-watch", daemon=True).start()
            if self._replay_plan:
                log.info("replaying %d journaled batches", len(self._replay_plan))
                self.source.replay(self._replay_plan)
            if self._journal_path is not None:
                self._journal.open(self._journal_path, "a")
        else:
            ident = file_identity(cfg.input.path)
            start = self.offsets.get(ident, 0)
            self.source = FileSource(
                cfg.input.path, cfg.input.format, cfg.batch_size, start, cfg.max_batch_wait
            )
            if start:
                log.info("resuming %s at record %d", cfg.input.path, start)
        k = cfg.kafka
        if cfg.mode == "kafka" and k.output_topic and cfg.output.path is None:
            self.producer = make_producer(k)
            self.out = KafkaSink(self.producer, k.output_topic)
        else:
            self.out = self._file_sink(cfg.output.path or "-")
        dlq = cfg.output.dead_letter
        if dlq is None and self.producer is not None:
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
    def _on_assigned(self, tps, committed):
        # Seek every assigned partition to where this model is, on every assignment, whatever
        # came before (an empty first assignment, partial ones): the committed offset may lag
        # the checkpoint (a crash between the two), and resuming there would learn records
        # twice. Only for a partition this instance released may the group be further on: then
        # another instance processed those records and this model skips them.
        seeks = {}
        for tp in tps:
            ours = self.offsets.get(tp)
            if ours is None:
                continue
            theirs = committed.get(tp)
            if tp in self._released and theirs is not None and theirs > ours:
                log.info(
                    "%s[%d] was processed elsewhere up to %d since this instance released it "
                    "at %d: continuing from there",
                    *tp,
                    theirs,
                    ours,
                )
                self.offsets[tp] = ours = theirs
                self.source.drop_plan(f"{tp[0]}[{tp[1]}] moved on elsewhere")
            seeks[tp] = ours
            self._released.discard(tp)
        if tps:
            self._assigned_at = time.monotonic()  # idle time counts from here (see _loop)
        log.info("partitions assigned: %s; seeking %s", tps, seeks)
        return seeks

    def _on_revoked(self, tps):
        log.info("partitions revoked: %s", tps)
        self.source.forget(tps)
        self._released.update(tps)
        self._checkpoint(commit=False)
        return {tp: self.offsets[tp] for tp in tps if tp in self.offsets}

    def _on_lost(self, tps):
        log.warning("partitions lost (group membership expired): %s", tps)
        self.source.forget(tps)
        # Keep our offsets: they are where the model is. If the partitions come back to this
        # instance (e.g. after a broker restart) it seeks there, or further if another
        # instance processed them meanwhile (see _on_assigned).
        self._released.update(tps)

    # -- checkpointing ---------------------------------------------------------------------------
    def _flush(self) -> None:
        self.out.flush()
        self.dead.flush()
        for s in (self.out, self.dead):
            if isinstance(s, FileSink) and s.is_file:
                self.sink_sizes[s.identity] = s._f.tell()
        faults.point("flush")

    def _checkpoint(self, commit: bool = True) -> None:
        """Flush outputs -> write checkpoint -> commit offsets (that order is the guarantee)."""
        self._flush()
        if self.store is not None:
            m_arrays, m_meta = self.model.get_state()
            g_arrays, g_meta = self.gate.get_state()
            arrays = {f"model.{k}": v for k, v in m_arrays.items()}
            arrays.update({f"gate.{k}": v for k, v in g_arrays.items()})
            kafka_offs = {
                f"{k[0]}:{k[1]}": o for k, o in self.offsets.items() if isinstance(k, tuple)
            }
            file_offs = {k: o for k, o in self.offsets.items() if isinstance(k, str)}
            meta = {
                "fingerprint": self.cfg.fingerprint(),
                "config": {
                    "model": self.cfg.model.model_dump(),
                    "gate": self.cfg.gate.model_dump(),
                },
                "features": self.decoder.features,
                "features_inferred": self.features_inferred,
                "offsets": {"kafka": kafka_offs, "files": file_offs},
                "released": sorted(f"{t}:{p}" for t, p in self._released),
                "sinks": dict(self.sink_sizes),
                "counts": dict(self.counts),
                "n_samples_seen": self._n_seen(),
                "model_meta": m_meta,
                "gate_meta": g_meta,
            }
            path = self.store.save(arrays, meta)
            log.debug("checkpoint %s written", path.name)
            if isinstance(self.source, KafkaSource):
                self._rotate_journal(int(path.stem.split("-")[1]))
        self.metrics.last_checkpoint = time.time()
        self.metrics.checkpoints.inc()
        self._since_ckpt = 0
        self._last_ckpt = time.monotonic()
        faults.point("commit")
        if commit and isinstance(self.source, KafkaSource):
            self.source.commit({k: v for k, v in self.offsets.items() if isinstance(k, tuple)})

    def _rotate_journal(self, seq: int) -> None:
        # A new journal per checkpoint; batches still to replay (a checkpoint taken in the
        # middle of a replay) are the first entries of the new one.
        self._journal.open(self.store.journal_path(seq), "w", entries=self.source.plan)

    # -- one batch -------------------------------------------------------------------------------
    def process_batch(self, batch: list[RawRecord]) -> None:
        t0 = time.perf_counter()
        dec = self.decoder.decode_batch(batch)
        if self._expect_features is not None and self.decoder.features is not None:
            self._check_inferred_features()
        lines: list[bytes] = []
        faults.point("score")
        if dec.rows:
            lines = self._score_and_learn(batch, dec)
        dead = dec.dead
        if dead:
            self._dead_reasons.update(why[:100] for _, why in dead)
            dl = [encode_dead_letter(batch[i], why, self.cfg.max_record_bytes) for i, why in dead]
            self.dead.write([batch[i] for i, _ in dead], dl)
        if lines:
            self.out.write([batch[i] for i in dec.rows], lines)
        faults.point("produce")
        offsets = self.offsets
        if batch[0].topic is None:
            offsets[self.source.identity] = batch[-1].offset + 1
        elif isinstance(self.source, KafkaSource):
            offsets.update(self.source.next_offsets)
        else:
            for r in batch:
                offsets[(r.topic, r.partition)] = r.offset + 1
        n = len(batch)
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
        self._since_ckpt += n

    def _score_and_learn(self, batch, dec) -> list[bytes]:
        """Score, flag and (gated) learn the decoded rows: the gate's one step, as in River."""
        model, gate = self.model, self.gate
        version = self._n_seen()
        gate.gating = self.cfg.gate.enabled  # the configuration decides, also after a restore
        try:
            r = gate.score_and_learn(model, dec.X)
        except Exception as e:
            # The gate validates the whole batch before any state change; isolate the rows.
            log.warning("batch rejected by the model (%s); retrying row by row", e)
            r = self._row_by_row(dec)
            if r is None:
                return []
        n_anom = int(r.anomaly.sum())
        self.counts["anomalies"] += n_anom
        self.metrics.anomalies.inc(n_anom)
        self.metrics.samples_seen.set(self._n_seen())
        self.metrics.observe_gate(gate)
        return encode_outputs(
            batch,
            dec,
            r.log_density,
            r.proba,
            r.threshold,
            r.anomaly,
            version,
            tail_probability=r.tail_probability,
        )

    def _row_by_row(self, dec):
        """The gate step row by row; rows the model rejects become dead letters."""
        from streamgmm.anomaly import GateResult

        keep, parts = [], []
        for j, i in enumerate(dec.rows):
            try:
                parts.append(self.gate.score_and_learn(self.model, dec.X[j : j + 1]))
            except Exception as e:
                dec.dead.append((i, f"rejected by the model: {e}"))
                continue
            keep.append(j)
        dec.dead.sort()
        dec.rows = [dec.rows[j] for j in keep]
        dec.keys = [dec.keys[j] for j in keep]
        dec.timestamps = [dec.timestamps[j] for j in keep]
        if not keep:
            return None
        return GateResult(*(np.concatenate(field) for field in zip(*parts, strict=True)))

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
        try:
            if cfg.metrics_port is not None:
                server = MetricsServer(self.metrics, cfg.metrics_host, cfg.metrics_port)
                self.metrics_port = server.port
                log.info("metrics on http://%s:%d/metrics", cfg.metrics_host, server.port)
            self._open()
            self._loop()
            self._checkpoint()
            return self._report()
        finally:
            self.metrics.running = False
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
        thr = float(self.gate.threshold_for(self.model)) if self._n_seen() else math.inf
        recent = float(self.gate.recent_flag_rate_)  # over the gate's last complete window
        return {
            "records_in": run["in"],
            "outputs": run["out"],
            "dead_letters": run["dead"],
            "anomalies": run["anomalies"],
            "flag_rate": run["anomalies"] / run["out"] if run["out"] else None,
            "target_flag_rate": self.cfg.gate.false_alarm_rate,
            "threshold_calibrated": math.isfinite(thr),
            "warming_up": bool(getattr(self.model, "warming_up_", True)),
            "rows_learned": self._n_seen(),
            "recent_flag_rate": recent if math.isfinite(recent) else None,
            "flag_rate_alarm": bool(self.gate.flag_rate_alarm_),
            "dead_reasons": self._dead_reasons.most_common(3),
            "totals": dict(self.counts),
        }

    def _report(self) -> int:
        s = self.summary()
        tot = s["totals"]
        log.info(
            "run summary: %d records in, %d out, %d dead letters this run (%d / %d / %d in "
            "total, across restarts); %d rows learned",
            s["records_in"],
            s["outputs"],
            s["dead_letters"],
            tot["in"],
            tot["out"],
            tot["dead"],
            s["rows_learned"],
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
        cfg = self.cfg
        ck = cfg.checkpoint
        every_n = ck.every_records
        every_t = ck.every_seconds
        self._since_ckpt = 0
        self._last_ckpt = time.monotonic()
        last_data = time.monotonic()
        bar = self._progress()
        kafka = isinstance(self.source, KafkaSource)
        live = not kafka and self.source.blocking

        def idle_limit() -> float:
            # Until its first assignment a Kafka consumer is joining the group (which may wait
            # for a killed member's session to expire): that is not idle input.
            if kafka and self._assigned_at == 0.0:
                return cfg.idle_timeout + cfg.kafka.session_timeout_ms / 1000
            return cfg.idle_timeout

        batches = self.source.batches()
        try:
            for batch in batches:
                if batch:
                    self._processing = True
                    try:
                        if kafka and self._journal is not None and not self.source.replayed:
                            self._journal.append(self.source.segments)
                        self.process_batch(batch)
                    finally:
                        self._processing = False
                    last_data = time.monotonic()
                    if live and len(batch) < cfg.batch_size:
                        self._show()  # a batch cut by max_batch_wait: results are wanted now
                    if bar is not None:
                        bar.update(self.source.bytes_read - bar.n)
                    if kafka:
                        lag = self.source.lag(self.offsets)
                        if lag is not None:
                            self.metrics.consumer_lag.set(lag)
                elif kafka and (self._outage_since is not None or self.source.replaying):
                    # An outage is not idleness (keep waiting, reconnecting), nor is a replay
                    # waiting for its partitions (bounded by the source's stall timeout).
                    pass
                elif (
                    cfg.idle_timeout is not None
                    and time.monotonic() - max(last_data, self._assigned_at) > idle_limit()
                ):
                    log.info("no input for %.1f s: stopping", cfg.idle_timeout)
                    break
                if self._stop:
                    break
                if cfg.max_records is not None and self.counts["in"] >= cfg.max_records:
                    log.info("max_records=%d reached: stopping", cfg.max_records)
                    break
                if (every_n is not None and self._since_ckpt >= every_n) or (
                    every_t is not None
                    and time.monotonic() - self._last_ckpt >= every_t
                    and self._since_ckpt > 0
                ):
                    self._checkpoint()
        except Interrupted:
            pass
        finally:
            with contextlib.suppress(Exception):
                batches.close()
            if bar is not None:
                bar.close()

    def _show(self) -> None:
        # Durability still comes from the checkpoint's flush; a failure here reappears there.
        for sink in (self.out, self.dead):
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
        if self._journal is not None:
            self._journal.close()
        if isinstance(self.source, KafkaSource):
            self.source.close()


def _hint(reasons: list[tuple[str, int]], cfg: ServiceConfig) -> str:
    """The usual cause of a run whose every record was dead-lettered."""
    top = reasons[0][0] if reasons else ""
    if top.startswith("not JSON") and cfg.mode == "file":
        return (
            "Is the input CSV? Pass --input-format csv (stdin and files not named .csv are "
            "read as JSON lines)."
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


def _max_abs() -> float:
    try:
        from streamgmm.online import MAX_ABS_VALUE
    except ImportError:  # older core: keep the documented bound
        return 1e150
    return float(MAX_ABS_VALUE)
