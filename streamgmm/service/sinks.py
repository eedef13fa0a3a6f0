"""Output sinks: JSONL file, stdout/stderr, and Kafka topics (kafka-python producer).

Sinks take encoded JSON documents (UTF-8 ``bytes``, see :mod:`~streamgmm.service.codec`) and
write them as they are.

``flush()`` returns only once everything written so far is durable (file: fsynced; Kafka: every
send acknowledged, else :class:`SinkError`), because the processor checkpoints right after it.
A file sink reports its size at flush time; the checkpoint stores it so a resumed run can cut
off output written after the checkpoint (which it is about to write again) — a file output is
then exactly what one uninterrupted run would have written.

Example
-------
>>> import tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "out.jsonl")
>>> s = FileSink(p)
>>> s.write(None, [b'{"a":1}', b'{"a":2}'])
>>> s.flush()
16
>>> s.close(); open(p).read()
'{"a":1}\\n{"a":2}\\n'
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from collections.abc import Callable, Sequence

from .codec import output_key
from .records import RawRecord

__all__ = ["FileSink", "KafkaSink", "SinkError", "is_regular_output", "make_producer"]

log = logging.getLogger("streamgmm.service.sinks")


class SinkError(RuntimeError):
    """Output could not be delivered; the processor must not checkpoint past it."""


class FileSink:
    """Appends JSON lines to a file, or writes them to stdout (``-``) / stderr (``<stderr>``).

    A path that is not a regular file (``/dev/null``, a named pipe, a terminal) is written like
    stdout: flushed, never fsynced, sized or cut back.

    Parameters
    ----------
    path
        Output file, ``-`` for stdout, ``<stderr>`` for stderr.
    resume_size
        ``None``: start a new file (truncate). An int: the size recorded by the checkpoint the
        run resumes from — anything beyond it was written after that checkpoint and is cut off.

    Attributes
    ----------
    is_file
        Whether the output is a regular file (durable by fsync, with a size to checkpoint).
    """

    def __init__(self, path: str, resume_size: int | None = None):
        self.path = path
        self.is_file = path not in ("-", "<stderr>")
        self._owned = self.is_file
        if not self.is_file:
            self._f = sys.stdout.buffer if path == "-" else sys.stderr.buffer
            return
        if not is_regular_output(path):
            self.is_file = False
            self._f = open(path, "wb")  # noqa: SIM115 - held open by the sink
            return
        # A missing folder is created, and said (INFO): the shipped example writes into out/,
        # which a fresh clone lacks, and the checkpoint folder is created the same way; the
        # line names the folder in full, so a mistyped path shows.
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            os.makedirs(parent, exist_ok=True)
            log.info("created the folder %s for the output %s (it did not exist)", parent, path)
        if resume_size is None:
            self._f = open(path, "wb")  # noqa: SIM115 - held open by the sink
        else:
            self._f = open(path, "ab")  # noqa: SIM115 - held open by the sink
            size = self._f.tell()
            if size > resume_size:
                log.info(
                    "%s: cutting %d bytes written after the checkpoint", path, size - resume_size
                )
                self._f.truncate(resume_size)
                self._f.seek(resume_size)
            elif size < resume_size:
                log.warning(
                    "%s is shorter than at the checkpoint (%d < %d bytes); appending",
                    path,
                    size,
                    resume_size,
                )

    def write(self, records: Sequence[RawRecord] | None, lines: Sequence[bytes]) -> None:
        """Append one line per JSON document (``lines``: UTF-8 bytes without newline)."""
        if lines:
            self._f.write(b"\n".join(lines) + b"\n")

    def flush(self) -> int | None:
        """Make written lines durable; returns the file size (``None`` for stdout/stderr)."""
        self._f.flush()
        if not self.is_file:
            return None
        os.fsync(self._f.fileno())
        return self._f.tell()

    def close(self) -> None:
        if self._owned:
            self._f.close()
        else:
            self._f.flush()


def is_regular_output(path: str) -> bool:
    """Whether ``path`` is (or will be created as) a regular file: not a device or pipe."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # missing (created as a file), or unreadable: opening it will say why
        return True


def make_producer(cfg, **extra):
    """A kafka-python producer tuned for throughput (batching, short linger); ``extra``: more
    producer settings (e.g. ``transactional_id``)."""
    from kafka import KafkaProducer

    return KafkaProducer(
        **cfg.client_kwargs(),
        bootstrap_timeout_ms=cfg.bootstrap_timeout_ms,
        linger_ms=cfg.linger_ms,
        batch_size=cfg.producer_batch_size,
        max_request_size=16 * 1024 * 1024,
        **extra,
    )


class KafkaSink:
    """Sends JSON documents to a topic, keyed by the input key or the source coordinates.

    The output partition is chosen here, not by the producer's key hash: a result goes to
    partition ``input partition % partitions of the output topic`` (Kafka Streams'
    co-partitioning).  When the input is key-partitioned and both topics have the same number of
    partitions this is exactly key partitioning; in every case a replay after a crash lands in
    the same partition as the first delivery (and with the same key), and partition order
    follows input order.  It also spares kafka-python's pure-Python murmur2 hash of every key.
    Dead letters are routed the same way.

    Delivery is checked with an errback on every send rather than by keeping each future until
    :meth:`flush`: hundreds of thousands of live futures per checkpoint interval cost the garbage
    collector more than the check itself.

    Parameters
    ----------
    producer
        A ``KafkaProducer`` (shared by the output and dead-letter sinks).
    topic
        Fixed topic, or ``None`` to use ``topic_for(record)`` per record.
    """

    def __init__(
        self, producer, topic: str | None, topic_for: Callable[[RawRecord], str] | None = None
    ):
        if topic is None and topic_for is None:
            raise ValueError("KafkaSink needs a topic or topic_for")
        self.producer = producer
        self.topic = topic
        self.topic_for = topic_for
        # Partition count per topic, read once: partitions added later are not used (a result
        # still goes to a valid partition, the same one as before the change).
        self._n_partitions: dict[str, int] = {}
        # Filled by the producer's I/O thread (errbacks); list.append is atomic under the GIL.
        self._errors: list[BaseException] = []

    def partitions(self, topic: str) -> int:
        """Number of partitions of ``topic`` (cached; waits for metadata the first time)."""
        n = self._n_partitions.get(topic)
        if n is None:
            parts = self.producer.partitions_for(topic)
            if not parts:
                raise SinkError(f"no partition metadata for topic {topic!r}")
            n = self._n_partitions[topic] = len(parts)
        return n

    def write(self, records: Sequence[RawRecord], values: Sequence[bytes]) -> None:
        if len(records) != len(values):
            raise ValueError("records and values differ in length")
        send = self.producer.send
        failed = self._errors.append
        topic = self.topic
        if topic is not None:
            n = self.partitions(topic)
        # Hot loop (one iteration per output record): output_key() inlined.
        for rec, value in zip(records, values):  # noqa: B905 - lengths checked above
            if topic is None:
                t = self.topic_for(rec)
                n = self._n_partitions.get(t) or self.partitions(t)
            else:
                t = topic
            k = rec.key
            if k is None:
                k = f"{rec.topic}:{rec.partition}:{rec.offset}".encode()
            elif type(k) is not bytes:
                k = output_key(rec)
            send(t, value=value, key=k, partition=rec.partition % n).add_errback(failed)

    def flush(self) -> None:
        """Wait until every record sent so far is acknowledged; :class:`SinkError` if any failed."""
        try:
            self.producer.flush()
        except Exception as e:  # e.g. kafka-python's own errors while retrying split batches
            raise SinkError(f"Kafka producer flush failed: {e!r}") from e
        # flush() returns after every batch's futures resolved, errbacks included.
        errors = self._errors
        if errors:
            n, first = len(errors), errors[0]
            del errors[:n]
            raise SinkError(f"{n} records were not delivered to Kafka: {first!r}")

    def close(self) -> None:
        self.flush()
