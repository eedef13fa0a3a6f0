"""Fault injection for the reliability tests: crash, stall or fail at named points of the loop.

Off unless the environment variable ``SGMM_FAULTS`` is set when this module is first
imported (or :func:`configure` is called); then :func:`point` is a dictionary lookup per call,
and it is only called once per batch or per checkpoint, never per record.

``SGMM_FAULTS`` (deliberately outside the ``STREAMGMM_*`` configuration namespace) is a
comma-separated list of ``POINT:ACTION[@N]``:

``POINT``
    ``poll`` (a Kafka poll is about to run), ``score`` (a decoded batch is about to be scored
    and learned), ``produce`` (the batch's outputs were handed to the sinks, not yet flushed),
    ``flush`` (outputs flushed, checkpoint not yet written), ``checkpoint_write`` (the new
    checkpoint's temporary file is written and fsynced but not yet renamed into place),
    ``commit`` (the checkpoint is durable, offsets not yet committed to Kafka).
``ACTION``
    ``kill`` — SIGKILL this process (a crash exactly there); ``sleep=SECONDS`` — stall;
    ``enospc`` / ``eacces`` — raise the corresponding :class:`OSError` (disk full / no access).
``@N``
    Act only on the N-th time the point is reached (1-based); without it, every time.

Example
-------
>>> configure("flush:enospc@2")
>>> point("flush")
>>> try:
...     point("flush")
... except OSError as e:
...     print(e.strerror)
No space left on device (injected at flush)
>>> configure(None)
>>> point("flush")
"""

from __future__ import annotations

import errno
import os
import signal
import time

__all__ = ["POINTS", "configure", "point"]

ENV = "SGMM_FAULTS"
POINTS = ("poll", "score", "produce", "flush", "checkpoint_write", "commit")
_ERRORS = {"enospc": errno.ENOSPC, "eacces": errno.EACCES}

_plan: dict[str, list[tuple[str, int | None]]] = {}
_hits: dict[str, int] = {}


def configure(spec: str | None) -> None:
    """Install the faults described by ``spec`` (the ``SGMM_FAULTS`` syntax); ``None`` or
    ``""`` removes them."""
    plan: dict[str, list[tuple[str, int | None]]] = {}
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        where, _, action = item.partition(":")
        action, _, nth = action.partition("@")
        if where not in POINTS or not action:
            raise ValueError(f"{ENV}: bad fault {item!r} (points: {', '.join(POINTS)})")
        plan.setdefault(where, []).append((action, int(nth) if nth else None))
    _plan.clear()
    _plan.update(plan)
    _hits.clear()


def point(name: str) -> None:
    """Called by the processor at fault point ``name``; does nothing unless a fault is set."""
    if not _plan or name not in _plan:
        return
    n = _hits[name] = _hits.get(name, 0) + 1
    for action, nth in _plan[name]:
        if nth is not None and nth != n:
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action.startswith("sleep="):
            time.sleep(float(action[len("sleep=") :]))
        elif action in _ERRORS:
            code = _ERRORS[action]
            raise OSError(code, f"{os.strerror(code)} (injected at {name})")
        else:
            raise ValueError(f"{ENV}: unknown fault action {action!r}")


configure(os.environ.get(ENV))
