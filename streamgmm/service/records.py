"""The unit every source yields: one raw input record with its coordinates."""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["RawRecord"]


class RawRecord(NamedTuple):
    """One input record as read, before decoding.

    ``topic`` is set for Kafka records, ``file`` for file/stdin records (``"-"`` for stdin);
    ``offset`` is the Kafka offset or, for files, the record's 0-based position (line number for
    JSONL, data row number for CSV). ``parsed`` is filled by sources that parse themselves (CSV:
    a dict of strings, or a string giving why the row is malformed).

    Example
    -------
    >>> r = RawRecord(None, "in.jsonl", 0, 7, None, '{"a": 1}', None)
    >>> r.coordinates()
    {'file': 'in.jsonl', 'partition': 0, 'offset': 7}
    """

    topic: str | None
    file: str | None
    partition: int
    offset: int
    key: bytes | str | None
    value: bytes | str
    timestamp: int | None
    parsed: Any = None

    def coordinates(self) -> dict:
        if self.topic is not None:
            return {"topic": self.topic, "partition": self.partition, "offset": self.offset}
        return {"file": self.file, "partition": self.partition, "offset": self.offset}
