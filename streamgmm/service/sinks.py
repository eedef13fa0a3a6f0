"""Output sinks: JSONL file, stdout/stderr, and Kafka topics (kafka-python producer).

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
>>> s.write(None, ['{"a":1}', '{"a":2}'])
>>> s.flush()
16
>>> s.close(); open(p).read()
'{"a":1}\\n{"a":2}\\n'
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence

from .codec import output_key
from .records import RawRecord

__all__ = ["FileSink", "KafkaSink", "SinkError", "make_producer"]

log = logging.getLogger("streamgmm.service.sinks")


class SinkError(RuntimeError):
    """Output could not be delivered; the processor must not checkpoint past it."""


class FileSink:
    """Appends JSON lines to a file, or writes them to stdout (``-``) / stderr (``<stderr>``).

    Parameters
    ----------
    path
        Output file, ``-`` for stdout, ``<stderr>`` for stderr.
    resume_size
        ``None``: start a new file (truncate). An int: the size recorded by the checkpoint the
        run resumes from — anything beyond it was written after that checkpoint and is cut off.
    """

    def __init__(self, path: str, resume_size: int | None = None):
        self.path = path
        self.is_file = path not in ("-", "<stderr>")
        if not self.is_file:
            self._f = sys.stdout.buffer if path == "-" else sys.stderr.buffer
            return
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
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

    def write(self, records: Sequence[RawRecord] | None, lines: Sequence[str]) -> None:
        if lines:
            self._f.write(("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))

    def flush(self) -> int | None:
        """Make written lines durable; returns the file size (``None`` for stdout/stderr)."""
        self._f.flush()
        if not self.is_file:
            return None
        os.fsync(self._f.fileno())
        return self._f.tell()

    def close(self) -> None:
        if self.is_file:
            self._f.close()
        else:
            self._f.flush()


def make_producer(cfg):
    """A kafka-python producer tuned for throughput (batching, short linger)."""
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=cfg.bootstrap_servers.split(","),
        client_id=cfg.client_id,
        linger_ms=cfg.linger_ms,
        batch_size=cfg.producer_batch_size,
        max_request_size=16 * 1024 * 1024,
    )


class KafkaSink:
    """Sends JSON lines to a topic, keyed by the input key or the source coordinates.

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
        self._pending: list = []

    def write(self, records: Sequence[RawRecord], lines: Sequence[str]) -> None:
        if len(records) != len(lines):
            raise ValueError("records and lines differ in length")
        send = self.producer.send
        topic, topic_for = self.topic, self.topic_for
        append = self._pending.append
        # Hot loop (one iteration per output record): output_key() inlined.
        for i, line in enumerate(lines):
            rec = records[i]
            k = rec.key
            if k is None:
                k = f"{rec.topic}:{rec.partition}:{rec.offset}".encode()
            elif type(k) is not bytes:
                k = output_key(rec)
            append(
                send(topic or topic_for(rec), value=line.encode("utf-8", "surrogateescape"), key=k)
            )

    def flush(self) -> None:
        self.producer.flush()
        failed = [f for f in self._pending if f.failed()]
        self._pending = []
        if failed:
            raise SinkError(
                f"{len(failed)} records were not delivered to Kafka: {failed[0].exception}"
            )

    def close(self) -> None:
        self.flush()
