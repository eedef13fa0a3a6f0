"""When and in which order state becomes durable: the checkpointer.

It owns the input positions (next offset per :class:`~streamgmm.service.state.SourcePartition`),
the schedule (every ``every_records`` records and/or ``every_seconds`` seconds, always at a
batch end) and the order of one checkpoint:

1. *flush outputs* — every output and dead letter written so far is durable;
2. *write state* — the model states with the positions they have learned up to;
3. *commit offsets* — only now may the input move on for good.

A crash between any two steps replays from the last written state: outputs may repeat
(at-least-once), model updates never do.  The three steps are callables, so a transactional
sink (Kafka transactions: outputs, changelog and offsets in one transaction) can put all three
in one place without changing the schedule or the order.

Example
-------
>>> from streamgmm.service.state import SourcePartition
>>> done = []
>>> ck = Checkpointer(every_records=2, every_seconds=None)
>>> ck.advance({SourcePartition.file("in"): 3}, 3)
>>> ck.due()
True
>>> ck.run(lambda: done.append("flush"), lambda: done.append("write"),
...        lambda pos: done.append(("commit", pos)))
>>> done
['flush', 'write', ('commit', {SourcePartition(kind='file', name='in', partition=0): 3})]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from . import faults
from .state import SourcePartition

__all__ = ["Checkpointer", "positions_from_meta", "positions_to_meta"]


def positions_to_meta(positions: Mapping[SourcePartition, int]) -> dict:
    """Checkpoint JSON of positions: ``{"kafka": {"topic:p": n}, "files": {identity: n}}``."""
    return {
        "kafka": {sp.label: int(o) for sp, o in positions.items() if sp.kind == "kafka"},
        "files": {sp.label: int(o) for sp, o in positions.items() if sp.kind == "file"},
    }


def positions_from_meta(off: Mapping) -> dict[SourcePartition, int]:
    """Inverse of :func:`positions_to_meta`."""
    out = {SourcePartition.parse(k, "kafka"): int(v) for k, v in off.get("kafka", {}).items()}
    out.update({SourcePartition.file(k): int(v) for k, v in off.get("files", {}).items()})
    return out


class Checkpointer:
    """Positions, schedule and order of checkpoints (see the module docstring).

    Parameters
    ----------
    every_records, every_seconds
        Checkpoint when this many records came in since the last one, or this many seconds
        passed and at least one record came in (``None``: that trigger is off).

    Attributes
    ----------
    positions
        Next offset per :class:`SourcePartition` of everything processed so far.
    """

    def __init__(self, every_records: int | None, every_seconds: float | None):
        self.every_records = every_records
        self.every_seconds = every_seconds
        self.positions: dict[SourcePartition, int] = {}
        self.since = 0
        self.last = time.monotonic()
        self.count = 0

    def advance(self, positions: Mapping[SourcePartition, int], n: int) -> None:
        """A batch of ``n`` records was processed, ending at ``positions``."""
        self.positions.update(positions)
        self.since += n

    def due(self) -> bool:
        n, t = self.every_records, self.every_seconds
        return (n is not None and self.since >= n) or (
            t is not None and self.since > 0 and time.monotonic() - self.last >= t
        )

    def run(
        self,
        flush: Callable[[], None],
        write: Callable[[], None],
        commit: Callable[[dict[SourcePartition, int]], None] | None,
    ) -> None:
        """One checkpoint: ``flush()`` -> ``write()`` -> ``commit(positions)``."""
        flush()
        faults.point("flush")
        write()
        self.since = 0
        self.last = time.monotonic()
        self.count += 1
        faults.point("commit")
        if commit is not None:
            commit(dict(self.positions))
