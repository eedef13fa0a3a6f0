"""Record sources: JSONL/CSV files, stdin, and Kafka (kafka-python consumer group).

Every source yields lists of :class:`~streamgmm.service.records.RawRecord` (mini-batches).  File
batches are cut at fixed positions — multiples of ``batch_size`` counted from the start of the
file — so a run resumed from a checkpoint (always taken at a batch end) sees exactly the batches
an uninterrupted run saw, and its outputs are identical.

Example
-------
>>> import tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "in.jsonl")
>>> _ = open(p, "w").write("".join(f'{{"a": {i}}}\\n' for i in range(5)))
>>> src = FileSource(p, batch_size=2, start=1)
>>> [[r.offset for r in b] for b in src.batches()]
[[1], [2, 3], [4]]
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import itertools
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from . import faults
from .records import RawRecord
from .state import SourcePartition

__all__ = [
    "FileSource",
    "InputError",
    "Interrupted",
    "KafkaSource",
    "Source",
    "committed_offsets",
    "file_identity",
]

log = logging.getLogger("streamgmm.service.sources")


class Interrupted(Exception):
    """Raised by the signal handler to break a blocking read on stdin."""


class InputError(ValueError):
    """The input as a whole cannot be read (e.g. its CSV header): the user's to fix, said in
    one message (single bad records are dead letters instead)."""


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def file_identity(path: str) -> str:
    """Key under which a file's position is checkpointed (its absolute path; ``-`` for stdin)."""
    return "-" if path == "-" else str(Path(path).resolve())


class Source(Protocol):
    """What the processing loop needs of an input; :class:`FileSource` and :class:`KafkaSource`
    implement it, so the loop has no file/Kafka branches.

    ``batches()`` yields lists of records (``[]``: nothing arrived, the loop checks stop and
    idleness); after each batch ``positions`` holds the next offset of every
    :class:`SourcePartition` the batch read.  ``commit(positions)`` makes them the group's
    (Kafka; a file has nothing to commit), ``after_checkpoint(seq)`` is told each written
    checkpoint.  ``waiting`` is true while an empty poll is not idleness (a replay waiting for
    its partitions); ``idle_grace`` is the extra time allowed before the first assignment.
    ``live``: partial batches are shown at once (stdin, a pipe).
    """

    positions: dict[SourcePartition, int]
    live: bool
    bytes_read: int

    def batches(self) -> Iterator[list[RawRecord]]: ...
    def commit(self, positions: dict[SourcePartition, int]) -> None: ...
    def after_checkpoint(self, seq: int) -> None: ...
    @property
    def waiting(self) -> bool: ...
    def idle_grace(self) -> float: ...
    def lag(self, positions: dict[SourcePartition, int]) -> int | None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


class FileSource:
    """JSONL or CSV records from a file or stdin (``path="-"``).

    Parameters
    ----------
    path
        File path or ``-``.
    fmt
        ``jsonl``, ``csv`` or ``auto`` (by extension; stdin by its first line: JSONL if it is a
        JSON object, else CSV).
    batch_size
        Batches end at record positions that are multiples of this.
    start
        Position of the first record to yield (records before it are skipped): the checkpoint's
        next offset. Ignored for stdin, whose content is new on every run.

    max_batch_wait
        Live input only (stdin, a pipe): a partial batch is yielded once its first record has
        waited this many seconds, so a slow stream (``tail -f``) is processed as it comes.
        Files keep their fixed batch boundaries (a resumed run must see the same batches).

    Blank lines of a JSONL file are not records: they are skipped but keep their position so
    offsets remain line numbers. A CSV's first line is its header; offsets count data rows.
    """

    def __init__(
        self,
        path: str,
        fmt: str = "auto",
        batch_size: int = 500,
        start: int = 0,
        max_batch_wait: float = 0.2,
    ):
        self.path = path
        self.name = "-" if path == "-" else path
        self.identity = file_identity(path)
        if fmt == "auto":
            if path.lower().endswith((".csv", ".csv.gz")):
                fmt = "csv"
            else:  # stdin has no name: its first line tells (see _rows)
                fmt = "sniff" if path == "-" else "jsonl"
        self.fmt = fmt
        self.batch_size = int(batch_size)
        self.blocking = path == "-" or not Path(path).is_file()  # stdin, a pipe, a device
        # A gzip file (by its magic bytes) is read decompressed: read as text, it was hundreds of
        # dead letters blamed on "not JSON" or "not UTF-8".
        self.gzip = not self.blocking and _is_gzip(path)
        self.start = 0 if self.blocking else int(start)
        self.max_batch_wait = float(max_batch_wait)
        self.bytes_read = 0
        # The progress bar counts text read: a compressed file's size is no total for it.
        self.size = None if path == "-" or self.gzip else os.path.getsize(path)
        self._stop = False
        self.in_read = False
        self.live = self.blocking
        self.partition = SourcePartition.file(self.identity)
        self.positions: dict[SourcePartition, int] = {}

    def stop(self) -> None:
        self._stop = True

    # The rest of the Source protocol: a file has no group, commit, replay or lag.
    waiting = False

    def commit(self, positions) -> None:
        pass

    def after_checkpoint(self, seq: int) -> None:
        pass

    def idle_grace(self) -> float:
        return 0.0

    def lag(self, positions) -> int | None:
        return None

    def close(self) -> None:
        pass

    def _done(self, batch: list[RawRecord]) -> list[RawRecord]:
        self.positions = {self.partition: batch[-1].offset + 1}
        return batch

    def _open(self):
        # utf-8-sig: a byte-order mark (Excel and PowerShell write one) is not part of the first
        # header name or record; without one it reads exactly like utf-8.
        if self.path == "-":
            return io.TextIOWrapper(
                sys.stdin.buffer, encoding="utf-8-sig", errors="surrogateescape", newline=""
            )
        opener = gzip.open if self.gzip else open
        return opener(self.path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="")

    def _lines(self, f) -> Iterator[str]:
        live = self.blocking  # read by the pump thread: the main thread waits in _live()
        while True:
            if not live:
                self.in_read = True  # the signal handler may interrupt only this blocking read
            try:
                line = f.readline()
            except Interrupted:
                return
            finally:
                if not live:
                    self.in_read = False
            if not line:
                return
            self.bytes_read += len(line)
            yield line

    def batches(self) -> Iterator[list[RawRecord]]:
        f = self._open()
        try:
            rows = self._rows(f)
            if self.blocking:
                yield from self._live(rows)
                return
            batch: list[RawRecord] = []
            end = (self.start // self.batch_size + 1) * self.batch_size
            for pos, rec in rows:
                if pos < self.start:
                    continue
                if pos >= end:
                    if batch:
                        yield self._done(batch)
                        batch = []
                    end = (pos // self.batch_size + 1) * self.batch_size
                    if self._stop:
                        return
                if rec is not None:
                    batch.append(rec)
            if batch:
                yield self._done(batch)
        finally:
            if not self.blocking:
                f.close()

    def _live(self, rows) -> Iterator[list[RawRecord]]:
        """Batches of live input: full ones, or partial once ``max_batch_wait`` has passed.

        A daemon thread reads (a blocking read cannot time out); this generator waits on its
        queue with a timeout, where the signal handler may interrupt it."""
        import queue
        import threading

        q: queue.Queue = queue.Queue(maxsize=4 * self.batch_size)
        end = object()

        def pump():
            try:
                for item in rows:
                    q.put(item)
            except BaseException as e:  # handed to the main thread
                q.put(e)
            q.put(end)

        threading.Thread(target=pump, name="live-input", daemon=True).start()
        batch: list[RawRecord] = []
        first = 0.0
        while not self._stop:
            timeout = (
                None if not batch else max(0.0, first + self.max_batch_wait - time.monotonic())
            )
            self.in_read = True
            try:
                item = q.get(timeout=timeout)
            except queue.Empty:
                item = None
            except Interrupted:
                return
            finally:
                self.in_read = False
            if item is end or isinstance(item, BaseException):
                if batch:
                    yield self._done(batch)
                if isinstance(item, BaseException):
                    raise item
                return
            if item is not None and item[1] is not None:
                if not batch:
                    first = time.monotonic()
                batch.append(item[1])
            if batch and (
                len(batch) >= self.batch_size or time.monotonic() - first >= self.max_batch_wait
            ):
                yield self._done(batch)
                batch = []

    def _rows(self, f) -> Iterator[tuple[int, RawRecord | None]]:
        """``(position, record or None)`` of ``f`` in its format. Stdin's (``auto``) is read
        from its first line: a JSON object starts JSONL, anything else is a CSV header (piped
        CSV was a dead letter per line, each blamed on "not JSON")."""
        lines = self._lines(f)
        fmt = self.fmt
        if fmt == "sniff":
            first = next(lines, None)
            if first is None:
                return
            text = first.strip()
            fmt = "jsonl" if not text or text.startswith(("{", "[")) else "csv"
            if fmt == "csv":
                log.info(
                    "stdin read as CSV: its first line is not JSON (pass --input-format to choose)"
                )
            lines = itertools.chain([first], lines)
        yield from self._jsonl(lines) if fmt == "jsonl" else self._csv(lines)

    def _jsonl(self, lines) -> Iterator[tuple[int, RawRecord | None]]:
        name = self.name
        for pos, line in enumerate(lines):
            text = line.rstrip("\r\n")
            if not text.strip(" \t"):  # JSON's whitespace only: str.strip() also eats \x1c
                yield pos, None
                continue
            yield pos, RawRecord(None, name, 0, pos, None, text, None)

    def _csv(self, lines) -> Iterator[tuple[int, RawRecord | None]]:
        # csv.reader pulls lines through this generator, so the raw text of each row (even one
        # spanning several lines in quotes) is known for dead letters.
        consumed: list[str] = []

        def feed():
            for line in lines:
                consumed.append(line)
                yield line

        reader = csv.reader(feed())
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise InputError(f"{self.name}: unreadable CSV header: {e}") from None
        if any("\n" in h or "\r" in h for h in header):
            # A quote opened in the header and never closed: csv reads on to the next quote or
            # the end of the file, and the whole file became one header of no data rows.
            col = next(i for i, h in enumerate(header) if "\n" in h or "\r" in h)
            start = header[col].splitlines()[0]
            raise InputError(
                f"{self.name}: unclosed quote in the CSV header: its field {col + 1} (starting "
                f"{start!r}) runs over {len(consumed)} lines, taking the data rows with it; "
                "close the quote"
            )
        header = [h.strip() for h in header]
        consumed.clear()
        n = len(header)
        repeated = sorted({h for h in header if header.count(h) > 1})
        if repeated:
            log.warning(
                "%s: the CSV header repeats %s: of columns with one name only the last is read",
                self.name,
                ", ".join(repr(h) for h in repeated),
            )
        # A header of one field holding ';', a tab or '|': a file in another dialect (Excel's
        # ';' in many locales); its rows are dead letters whose reason says so.
        sep = next((c for c in ";\t|" if c in header[0]), None) if n == 1 else None
        other_dialect = sep is not None and (
            f"CSV separated by {'tabs' if sep == chr(9) else repr(sep)}? Only commas separate "
            f"fields (the header is one field: {header[0]!r})"
        )
        pos = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                row = f"malformed CSV row: {e}"
            raw = "".join(consumed).rstrip("\r\n")
            consumed.clear()
            if isinstance(row, list) and not row:
                yield pos, None  # blank line
            elif isinstance(row, str):
                yield pos, RawRecord(None, self.name, 0, pos, None, raw, None, row)
            elif len(row) != n:
                fields = "field" if len(row) == 1 else "fields"
                why = f"wrong dimension: CSV row has {len(row)} {fields}, header has {n}"
                if len(spanned := raw.splitlines()) > 1:
                    # A quote left open swallows the lines after it into one field: said first
                    # (the summary shows a reason's first 100 characters).
                    why = (
                        f"unclosed quote? a quoted field runs over {len(spanned)} lines (the "
                        f"lines it took are in this record); {why}"
                    )
                yield pos, RawRecord(None, self.name, 0, pos, None, raw, None, why)
            elif other_dialect and sep in row[0]:
                yield pos, RawRecord(None, self.name, 0, pos, None, raw, None, other_dialect)
            else:
                yield (
                    pos,
                    RawRecord(
                        None,
                        self.name,
                        0,
                        pos,
                        None,
                        raw,
                        None,
                        dict(zip(header, row, strict=True)),
                    ),
                )
            pos += 1


def committed_offsets(cfg, timeout_ms: int = 15_000) -> dict[tuple[str, int], int] | None:
    """The consumer group's committed offsets on the configured topics (``None``: the broker
    could not tell within the timeout). Joins no group: a short-lived consumer only asks."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        **cfg.client_kwargs(),
        group_id=cfg.group_id,
        enable_auto_commit=False,
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=cfg.bootstrap_timeout_ms,
    )
    try:
        tps = [TopicPartition(t, p) for t in cfg.topics for p in (c.partitions_for_topic(t) or ())]
        got = c._coordinator.fetch_committed_offsets(tps, timeout_ms=timeout_ms) if tps else {}
    except Exception as e:
        log.warning("could not read the group's committed offsets (%s)", e)
        return None
    finally:
        with contextlib.suppress(Exception):
            c.close(autocommit=False)
    return {
        (tp.topic, tp.partition): o.offset
        for tp, o in got.items()
        if o is not None and o.offset >= 0
    }


class KafkaSource:
    """Records from Kafka topics through a kafka-python consumer group.

    Offsets are never auto-committed: the processor commits them itself after the outputs are
    flushed and the checkpoint is written. ``on_assigned(tps, committed) -> {tp: offset}``
    tells the source where to seek newly assigned partitions (the checkpoint's offsets), given
    the group's committed offsets of those partitions; ``on_revoked(tps)`` lets the processor
    flush, checkpoint and commit before they go.

    Replay: :meth:`replay` queues journaled batches (each a list of ``[topic, partition, start,
    end)`` segments, contiguous from the checkpoint's offsets) that :meth:`batches` yields first,
    grouped exactly as the crashed run processed them. A batch is served once every partition
    it needs is assigned and has been read up to its end; while waiting, ``[]`` is yielded (the
    loop stays responsive to stop and idle checks). If the replay makes no progress for
    ``stall_seconds`` (its partitions went to another instance for good, records were deleted)
    it is given up with a warning: the records are then processed in new batches — the model
    still learns each once, only the duplicate outputs may differ from the first copies.
    """

    def __init__(
        self,
        cfg,
        on_assigned: Callable[[list[SourcePartition], dict], dict[SourcePartition, int]],
        on_revoked: Callable[[list[SourcePartition]], dict[SourcePartition, int]],
        on_lost: Callable[[list[SourcePartition]], None],
        journal=None,
        replay: list | None = None,
        isolation_level: str = "read_uncommitted",
    ):
        from kafka import KafkaConsumer
        from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener

        self.cfg = cfg
        self._stop = False
        self.consumer = KafkaConsumer(
            **cfg.client_kwargs(),
            group_id=cfg.group_id,
            group_instance_id=cfg.group_instance_id,
            enable_auto_commit=False,
            auto_offset_reset=cfg.auto_offset_reset,
            max_poll_records=cfg.max_poll_records,
            session_timeout_ms=cfg.session_timeout_ms,
            bootstrap_timeout_ms=cfg.bootstrap_timeout_ms,
            heartbeat_interval_ms=max(100, cfg.session_timeout_ms // 3),
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            isolation_level=isolation_level,  # read_committed: see processing_guarantee
        )
        source = self

        class _Listener(AsyncConsumerRebalanceListener):
            # Async so the commit inside a rebalance can await the coordinator instead of
            # re-entering the consumer's event loop (kafka-python 3 runs listeners inside it).
            async def on_partitions_revoked(self, revoked):
                sps = sorted(SourcePartition.kafka(tp.topic, tp.partition) for tp in revoked)
                if not sps or source._closing:
                    return
                source.forget(sp.tp for sp in sps)
                offsets = on_revoked(sps)
                if offsets:
                    await source._commit_async({sp.tp: o for sp, o in offsets.items()})

            async def on_partitions_assigned(self, assigned):
                tps = sorted((tp.topic, tp.partition) for tp in assigned)
                committed = {}
                if assigned:
                    try:
                        got = await source.consumer._coordinator.fetch_committed_offsets_async(
                            set(assigned), timeout_ms=10_000
                        )
                        committed = {
                            (tp.topic, tp.partition): o.offset
                            for tp, o in got.items()
                            if o is not None and o.offset >= 0
                        }
                    except Exception as e:  # unknown: the processor falls back to its own
                        log.warning("could not fetch committed offsets (%s)", e)
                if tps:
                    source.assigned_once = True
                seeks = on_assigned(
                    [SourcePartition.kafka(*tp) for tp in tps],
                    {SourcePartition.kafka(*tp): o for tp, o in committed.items()},
                )
                for tp in assigned:
                    off = seeks.get(SourcePartition.kafka(tp.topic, tp.partition))
                    if off is not None:
                        log.info("seek %s[%d] to checkpoint offset %d", tp.topic, tp.partition, off)
                        source.consumer.seek(tp, off)
                        source._moved_on(tp.topic, tp.partition, off)

            async def on_partitions_lost(self, lost):
                sps = sorted(SourcePartition.kafka(tp.topic, tp.partition) for tp in lost)
                source.forget(sp.tp for sp in sps)
                on_lost(sps)

        self._closing = False
        self.next_offsets: dict[tuple[str, int], int] = {}
        # Journaled batches to replay first, each a list of [topic, partition, start, end);
        # records polled meanwhile wait in _held. segments/replayed describe the last batch.
        self.plan: deque[list] = deque()
        self._held: dict[tuple[str, int], list[RawRecord]] = {}
        self._read_to: dict[tuple[str, int], int] = {}  # 1 + highest offset polled (replay)
        self._progress_at = time.monotonic()
        # Long enough for a killed predecessor's group session to expire and its partitions
        # to come to this instance (dynamic membership), so a restart replays exactly.
        self.stall_seconds = cfg.session_timeout_ms / 1000 + 15.0
        self.segments: list[tuple[str, int, int, int]] = []
        self.replayed = False
        self.assigned_once = False
        self.live = True
        self.bytes_read = 0
        # The batch journal (see the processor): every batch's grouping, written before it is
        # processed; replayed batches are in it already.
        self._journal = journal
        if replay:
            log.info("replaying %d journaled batches", len(replay))
            self.replay(replay)
        self.consumer.subscribe(topics=list(cfg.topics), listener=_Listener())

    def stop(self) -> None:
        self._stop = True

    @property
    def positions(self) -> dict[SourcePartition, int]:
        """Next offset per partition read by the batch just yielded."""
        return {SourcePartition.kafka(t, p): o for (t, p), o in self.next_offsets.items()}

    @property
    def waiting(self) -> bool:
        """A replay waits for its partitions: an empty poll then is not idleness."""
        return bool(self.plan)

    def idle_grace(self) -> float:
        # Until its first assignment the consumer is joining the group (which may wait for a
        # killed member's session to expire), and until a fetch has answered for every
        # assigned partition (its high watermark is unknown until then) it cannot know whether
        # input is waiting: on a loaded machine that first fetch can take seconds. Neither is
        # idle input.
        if not self.assigned_once or not self._fetched_all_assigned():
            return self.cfg.session_timeout_ms / 1000
        return 0.0

    def _fetched_all_assigned(self) -> bool:
        from kafka import TopicPartition

        return all(
            self.consumer.highwater(TopicPartition(t, p)) is not None for t, p in self.assigned()
        )

    def after_checkpoint(self, seq: int) -> None:
        """A new journal per checkpoint; batches still to replay (a checkpoint taken in the
        middle of a replay) are the first entries of the new one."""
        if self._journal is not None:
            self._journal.open(self._journal.dir / f"batches-{seq:012d}.jsonl", "w", self.plan)

    def _moved_on(self, topic: str, partition: int, offset: int) -> None:
        # A seek past where the journal's batches start (the partition was processed elsewhere
        # meanwhile): those batches cannot replay as they were.
        for entry in self.plan:
            for t, p, start, _ in entry:
                if (t, p) == (topic, partition):
                    if offset > start:
                        self.drop_plan(f"{topic}[{partition}] moved on elsewhere")
                    return

    def batches(self) -> Iterator[list[RawRecord]]:
        """Poll forever (until :meth:`stop`); yields ``[]`` when a poll returns nothing.

        While :attr:`plan` holds journaled batches (a restart replaying what the crashed run
        processed after its checkpoint), records are held back and yielded in exactly those
        batches, so the replay scores every record with the same model as the first time.
        """
        poll = self.consumer.poll
        timeout, maxrec = self.cfg.poll_timeout_ms, self.cfg.max_poll_records
        new = tuple.__new__  # RawRecord(...) via tuple.__new__: half the cost per record
        while not self._stop:
            faults.point("poll")
            got = poll(timeout_ms=timeout, max_records=maxrec)
            batch: list[RawRecord] = []
            nxt: dict[tuple[str, int], int] = {}
            segs: list[tuple[str, int, int, int]] = []
            for tp, msgs in got.items():
                if not msgs:
                    continue
                t, p = tp.topic, tp.partition
                batch.extend(
                    [
                        new(RawRecord, (t, None, p, m.offset, m.key, m.value, m.timestamp, None))
                        for m in msgs
                    ]
                )
                nxt[(t, p)] = msgs[-1].offset + 1
                segs.append((t, p, msgs[0].offset, msgs[-1].offset + 1))
            if self.plan or self._held:
                yield from self._replay(batch)
                continue
            self.next_offsets = nxt  # per partition, for the batch just yielded
            self.segments, self.replayed = segs, False
            if batch and self._journal is not None:
                self._journal.append(segs)
            yield batch

    @property
    def replaying(self) -> bool:
        """Journaled batches are still to be replayed."""
        return bool(self.plan)

    def replay(self, entries) -> None:
        """Queue journaled batches to yield first (see the class docstring)."""
        self.plan.extend(entries)
        self._progress_at = time.monotonic()

    def drop_plan(self, why: str) -> None:
        """Give up replaying journaled batches (held records are still yielded, in order)."""
        if self.plan:
            log.warning(
                "%s: %d journaled batches will not replay in their original grouping; their "
                "duplicate outputs may differ slightly from the first ones",
                why,
                len(self.plan),
            )
            self.plan.clear()

    def forget(self, tps) -> None:
        """Drop held records of partitions no longer assigned (re-read after a new seek)."""
        for tp in tps:
            self._held.pop(tuple(tp), None)
            self._read_to.pop(tuple(tp), None)

    def _replay(self, polled: list[RawRecord]) -> Iterator[list[RawRecord]]:
        held, read_to = self._held, self._read_to
        # Hold only what the replay needs: kafka-python fetches partitions in turn, so records
        # of other partitions arrive first. Those beyond the plan are dropped and their
        # partition rewound to be fetched again after the replay, so memory stays bounded by
        # the journaled batches. (pause()/resume() would be the natural tool, but in
        # kafka-python 3.0.12 a resumed partition sometimes never fetched again.)
        need: dict[tuple[str, int], int] = {}
        for entry in self.plan:
            for t, p, _, end in entry:
                need[(t, p)] = max(need.get((t, p), 0), end)
        rewind: dict[tuple[str, int], int] = {}
        for r in polled:
            key = (r.topic, r.partition)
            if r.offset + 1 > read_to.get(key, 0):
                read_to[key] = r.offset + 1
            if self.plan and r.offset >= need.get(key, 0):
                if key not in rewind:
                    rewind[key] = r.offset
                continue
            held.setdefault(key, []).append(r)
        if rewind:
            from kafka import TopicPartition

            for (t, p), off in rewind.items():
                self.consumer.seek(TopicPartition(t, p), off)
        mine = self.assigned()
        served = False
        while self.plan:
            entry = self.plan[0]
            # Ready when every partition is ours and read past the batch's end (reading past
            # it, not holding its last offset: compaction may have removed that record).
            if not all((t, p) in mine and read_to.get((t, p), 0) >= end for t, p, _, end in entry):
                break
            self.plan.popleft()
            batch, nxt, segs = [], {}, []
            for t, p, start, end in entry:
                recs = held.get((t, p), [])
                cut = next((i for i, r in enumerate(recs) if r.offset >= end), len(recs))
                part = [r for r in recs[:cut] if r.offset >= start]
                held[(t, p)] = recs[cut:]
                batch.extend(part)
                nxt[(t, p)] = end
                segs.append((t, p, start, end))
            self.next_offsets, self.segments, self.replayed = nxt, segs, True
            self._progress_at = time.monotonic()
            served = True
            yield batch
        if self.plan and not served:
            waited = time.monotonic() - self._progress_at
            if waited > self.stall_seconds:
                self.drop_plan(f"the replay made no progress for {waited:.0f} s")
            else:
                if rewind and len(rewind) == len({(r.topic, r.partition) for r in polled}):
                    time.sleep(0.05)  # only re-read records came back: do not spin on them
                yield []  # let the loop check stop/idle as usual
                return
        while not self.plan and any(held.values()):
            # Records held during the replay, in batches of at most max_poll_records.
            batch, nxt, segs = [], {}, []
            room = self.cfg.max_poll_records
            for (t, p), recs in held.items():
                if recs and room > 0:
                    part, held[(t, p)] = recs[:room], recs[room:]
                    room -= len(part)
                    batch.extend(part)
                    nxt[(t, p)] = part[-1].offset + 1
                    segs.append((t, p, part[0].offset, part[-1].offset + 1))
            self.next_offsets, self.segments, self.replayed = nxt, segs, False
            if batch and self._journal is not None:
                self._journal.append(segs)
            yield batch
        if not self.plan:
            held.clear()
            read_to.clear()

    @staticmethod
    def _to_commit(offsets: dict[tuple[str, int], int]):
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        return {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}

    def broker_connected(self) -> bool:
        """Whether any connection to a broker is up (read-only; safe from another thread)."""
        conns = self.consumer._client._manager._conns
        return any(c.connected for c in list(conns.values()))

    def assigned(self) -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in self.consumer.assignment()}

    def commit(self, positions: dict[SourcePartition, int]) -> None:
        """Commit next offsets of currently assigned partitions (outside of poll)."""
        from kafka.errors import CommitFailedError, KafkaError

        mine = self.assigned()
        todo = {sp.tp: v for sp, v in positions.items() if sp.kind == "kafka" and sp.tp in mine}
        if todo:
            try:
                self.consumer.commit(self._to_commit(todo))
            except (CommitFailedError, KafkaError) as e:
                # The checkpoint (with these offsets) is already durable and this instance
                # resumes from it; a missed commit only makes a new owner replay more.
                log.warning("offset commit failed (%s); a new owner may replay records", e)

    async def _commit_async(self, offsets: dict[tuple[str, int], int]) -> None:
        # Inside a rebalance callback: use the coordinator's coroutine directly.
        try:
            await self.consumer._coordinator._commit_offsets_sync_async(
                self._to_commit(offsets), None
            )
        except Exception as e:  # the group moved on: the next owner replays from older offsets
            log.warning("offset commit during rebalance failed (%s); records may be replayed", e)

    def lag(self, positions: dict[SourcePartition, int]) -> int | None:
        """Records behind the high watermark, summed over assigned partitions (if known)."""
        from kafka import TopicPartition

        total, known = 0, False
        for t, p in self.assigned():
            hw = self.consumer.highwater(TopicPartition(t, p))
            pos = positions.get(SourcePartition.kafka(t, p))
            if hw is not None and pos is not None:
                total += max(0, hw - pos)
                known = True
        return total if known else None

    def close(self) -> None:
        self._closing = True
        if self._journal is not None:
            self._journal.close()
        try:
            self.consumer.close(autocommit=False)
        except Exception as e:  # closing a consumer whose broker is gone must not fail shutdown
            log.warning("consumer close: %s", e)
