"""Atomic, checksummed, pickle-free checkpoints in a directory.

A checkpoint is one state encoded by the project's one state codec
(:func:`streamgmm.persistence.encode_state`: an ``.npz`` read with ``allow_pickle=False``, so
loading can never run code, holding numeric arrays plus the JSON metadata — offsets, features,
config fingerprint, format version, ... — and a SHA-256 over all of it). It is written to a
temporary file, fsynced, renamed into place and the directory fsynced, so a crash leaves the old
set of checkpoints or the old set plus one complete new file, never a torn one. The last
``keep`` are kept; a checkpoint that fails its checksum or version check is skipped (logged) in
favour of the previous one. Checkpoints are ordered by the sequence number recorded in their
checksummed metadata, not by file name: a stray or copied file named like a checkpoint can never
make an older state look newer, nor hide the checkpoints written after it. Beside each
checkpoint ``N`` a batch journal ``batches-N.jsonl`` lists the Kafka batches processed after it
(see :mod:`streamgmm.service.processor`); a write failure (disk full, read-only, no access)
raises :class:`CheckpointWriteError` naming the directory.

Example
-------
>>> import tempfile, numpy as np
>>> d = tempfile.mkdtemp()
>>> store = CheckpointStore(d, keep=2)
>>> for i in range(3):
...     _ = store.save({"model.means": np.full((2, 3), float(i))}, {"offsets": {"f": i}})
>>> [p.name for p in store.paths()]
['ckpt-000000000002.npz', 'ckpt-000000000003.npz']
>>> ck = store.load_latest()
>>> ck.meta["offsets"], float(ck.arrays["model.means"][0, 0]), ck.meta["format_version"]
({'f': 2}, 2.0, 3)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamgmm.persistence import StateFormatError, decode_state, encode_state, state_digest

from . import faults

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "CheckpointRefused",
    "CheckpointStore",
    "CheckpointWriteError",
    "checkpoint_paths",
    "latest_checkpoint",
    "read_checkpoint",
    "replay_plan",
    "scan_checkpoints",
]

#: Version 2: one or many model states per checkpoint (``meta["states"]``, model scopes);
#: version 1 (one global model, arrays ``model.*``/``gate.*``) is still read.  Version 3: the
#: states' bytes back to back in one array (``states.bytes``/``states.ends``); 2 is still read.
FORMAT_VERSION = 3
READ_VERSIONS = (1, 2, 3)
_NAME = re.compile(r"^ckpt-(\d+)\.npz$")
_JOURNAL = re.compile(r"^batches-(\d+)\.jsonl$")
_META, _SUM = "__meta__", "__sha256__"
log = logging.getLogger("streamgmm.service.checkpoint")


class CheckpointError(ValueError):
    """A checkpoint cannot be used (corrupt, wrong version, or refused for the configuration)."""


class CheckpointRefused(CheckpointError):
    """A usable checkpoint that does not fit this run (its features against the input's)."""


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint (or the batch journal) cannot be written: disk full, read-only, no access.
    The message names the directory; nothing is committed past the last durable checkpoint."""


@dataclass
class Checkpoint:
    """A loaded, verified checkpoint."""

    arrays: dict[str, np.ndarray]
    meta: dict
    path: Path

    @property
    def seq(self) -> int:
        return int(self.meta.get("seq", 0))


_digest = state_digest  # the codec's checksum (kept under this name for tests)


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not supported on every platform/filesystem.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load and verify one checkpoint file.

    Raises
    ------
    CheckpointError
        Unreadable, not a checkpoint, checksum mismatch or unsupported format version.
    """
    path = Path(path)
    try:
        arrays, meta = decode_state(path, accept_versions=READ_VERSIONS, where=str(path))
    except StateFormatError as e:
        msg = str(e)
        if msg.endswith(("(no metadata)", "(no checksum)")):
            msg = f"{path}: not a streamgmm checkpoint (no metadata/checksum)"
        elif "unreadable (" in msg:
            msg = msg.replace(": unreadable (", ": unreadable checkpoint (", 1)
        elif "format version" in msg:
            msg = msg.replace("format version", "checkpoint format version", 1)
        raise CheckpointError(msg) from None
    if meta.get("format_version") == 0:  # a save_model file, not a checkpoint
        raise CheckpointError(f"{path}: not a streamgmm checkpoint (no metadata/checksum)")
    return Checkpoint(arrays, meta, path)


def checkpoint_paths(directory: str | os.PathLike) -> list[Path]:
    """Files named like checkpoints in ``directory``, by the number in their name (read-only).

    A listing, not an ordering of states: :func:`latest_checkpoint` orders by the sequence
    number inside each verified file."""
    d = Path(directory)
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def scan_checkpoints(directory: str | os.PathLike) -> tuple[list[Checkpoint], list[str]]:
    """Every checkpoint-named file of ``directory``, verified: the usable ones ordered oldest
    first by the sequence number in their (checksummed) metadata, and why each other one is
    unusable. A copy of an older checkpoint under a newer name sorts as what it is."""
    good: list[tuple[tuple[int, int], Checkpoint]] = []
    errors: list[str] = []
    for p in checkpoint_paths(directory):
        try:
            ck = read_checkpoint(p)
        except CheckpointError as e:
            errors.append(str(e))
            continue
        named = int(_NAME.match(p.name).group(1))
        if ck.seq != named:
            log.warning(
                "%s holds checkpoint #%d (not #%d): ordered as #%d", p, ck.seq, named, ck.seq
            )
        good.append(((ck.seq, named), ck))
    good.sort(key=lambda item: item[0])
    return [ck for _, ck in good], errors


def latest_checkpoint(directory: str | os.PathLike) -> Checkpoint | None:
    """The newest checkpoint in ``directory`` that verifies (read-only; see
    :meth:`CheckpointStore.load_latest`)."""
    return _newest(*scan_checkpoints(directory), directory)


def _newest(good: list[Checkpoint], errors: list[str], directory) -> Checkpoint | None:
    """The newest verified checkpoint; unusable ones are logged. Raises if all are unusable."""
    for e in errors:
        log.error("skipping unusable checkpoint, falling back to the previous one: %s", e)
    if good:
        return good[-1]
    if errors:
        raise CheckpointError(
            f"no usable checkpoint in {directory}: "
            + "; ".join(errors)
            + " (start over with --fresh)"
        )
    return None


def replay_plan(entries: list, start: dict[tuple[str, int], int]) -> list[list]:
    """The journaled batches that continue exactly from ``start`` (next offset per partition).

    Journals are chained across checkpoints and may hold a batch twice (a replay checkpointed
    midway, a batch regrouped after a rebalance), batches already covered by the checkpoint, or
    stop short. Walking them in order, a segment ending at or before the partition's position is
    dropped, one straddling it is cut there, and the first gap (a segment starting after the
    position) ends the plan: what is left replays every record after the checkpoint exactly
    once, in order. A partition absent from ``start`` starts where its first segment does.
    """
    pos = dict(start)
    plan: list[list] = []
    for entry in entries:
        kept = []
        for seg in entry:
            try:
                t, p, s, e = seg
                tp, s, e = (str(t), int(p)), int(s), int(e)
            except (TypeError, ValueError):
                log.error("batch journal entry %r malformed: replay stops there", seg)
                return plan
            here = pos.setdefault(tp, s)
            if e <= here:
                continue
            if s > here:
                log.warning("batch journal skips %s[%d] %d..%d: replay stops there", *tp, here, s)
                if kept:
                    plan.append(kept)
                return plan
            kept.append([tp[0], tp[1], here, e])
            pos[tp] = e
        if kept:
            plan.append(kept)
    return plan


class CheckpointStore:
    """The checkpoints of one processor, in one directory.

    Parameters
    ----------
    directory
        Created if missing.
    keep
        How many of the newest checkpoints to keep (at least 1).
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        self.dir = Path(directory)
        self.keep = max(1, int(keep))
        try:  # fail now, clearly, rather than at the first checkpoint after minutes of work
            self.dir.mkdir(parents=True, exist_ok=True)
            for stale in self.dir.glob(".ckpt-*.tmp"):  # left by a crash mid-write
                stale.unlink()
            fd, probe = tempfile.mkstemp(prefix=".ckpt-", suffix=".tmp", dir=self.dir)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise CheckpointError(
                f"checkpoint directory {self.dir} is not writable: {e.strerror or e}"
            ) from None
        self._kept: list[tuple[int, Path]] | None = None  # (seq, path) of the usable ones

    def _scan(self) -> tuple[list[Checkpoint], list[str]]:
        good, errors = scan_checkpoints(self.dir)
        self._kept = [(ck.seq, ck.path) for ck in good]
        return good, errors

    def paths(self) -> list[Path]:
        """Files named like checkpoints, by the number in their name (see
        :func:`checkpoint_paths`)."""
        return checkpoint_paths(self.dir)

    def save(self, arrays: dict[str, np.ndarray], meta: dict) -> Path:
        """Write a new checkpoint atomically and prune old ones; returns its path.

        Its sequence number follows the newest usable checkpoint's; a file already under that
        name is unusable or an older copy (else it would be the newest) and is replaced."""
        if self._kept is None:
            self._scan()
        seq = self._kept[-1][0] + 1 if self._kept else 1
        meta = {**meta, "seq": seq, "created": time.time()}
        blob = encode_state(arrays, meta, format_version=FORMAT_VERSION)
        final = self.dir / f"ckpt-{seq:012d}.npz"
        try:
            fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".tmp", dir=self.dir)
        except OSError as e:
            raise CheckpointWriteError(
                f"cannot write a checkpoint in {self.dir}: {e.strerror or e}"
            ) from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            faults.point("checkpoint_write")
            os.replace(tmp, final)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(e, OSError):  # disk full, read-only, permissions: say where
                raise CheckpointWriteError(
                    f"cannot write a checkpoint in {self.dir}: {e.strerror or e}"
                ) from None
            raise
        _fsync_dir(self.dir)
        self._kept = [(s, p) for s, p in self._kept if p != final] + [(seq, final)]
        for _, old in self._kept[: -self.keep]:
            with contextlib.suppress(OSError):
                old.unlink()
        self._kept = self._kept[-self.keep :]
        oldest = self._kept[0][0]
        for j in self.dir.glob("batches-*.jsonl"):
            m = _JOURNAL.match(j.name)
            if m and int(m.group(1)) < oldest:
                with contextlib.suppress(OSError):
                    j.unlink()
        return final

    # -- batch journal ---------------------------------------------------------------------------
    def journal_path(self, seq: int) -> Path:
        """The batch journal of the batches processed after checkpoint ``seq`` (0: before the
        first checkpoint)."""
        return self.dir / f"batches-{seq:012d}.jsonl"

    def journal_replay(
        self, seq: int, start: dict[tuple[str, int], int] | None = None
    ) -> tuple[list[list], Path]:
        """Batches journaled after checkpoint ``seq`` (0: no checkpoint), oldest first, that
        continue exactly from the checkpoint's offsets ``start`` (see :func:`replay_plan`),
        and the journal to append to.

        The journals of ``seq`` and of every later checkpoint are chained: after falling back to
        an older checkpoint (a newer one was damaged) the batches after the damaged one replay
        too. Without a checkpoint only journal 0 counts (the journals of checkpoints that are
        gone cannot be placed). A torn last line (a crash mid-write) ends the replay.
        """
        found = sorted(
            (int(m.group(1)), p)
            for p in self.dir.glob("batches-*.jsonl")
            if (m := _JOURNAL.match(p.name))
            and (int(m.group(1)) >= seq if seq else int(m.group(1)) == 0)
        )
        plan: list[list] = []
        for _, p in found:
            try:
                text = p.read_text("utf-8")
            except OSError as e:
                log.error("batch journal %s unreadable (%s): replay order may differ", p, e)
                break
            lines = text.split("\n")
            complete = lines[:-1]  # the last piece lacks its newline: torn or empty
            try:
                plan.extend(json.loads(line) for line in complete if line)
            except ValueError as e:
                log.error("batch journal %s damaged (%s): replay order may differ", p, e)
                break
        last = found[-1][1] if found else self.journal_path(seq)
        with contextlib.suppress(OSError), open(last, "r+b") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):  # cut a torn last line before appending
                f.truncate(data.rfind(b"\n") + 1)
        return replay_plan(plan, start or {}), last

    def journal(self) -> BatchJournal:
        """A writer for this directory's batch journals."""
        return BatchJournal(self.dir)

    def load_latest(self) -> Checkpoint | None:
        """The newest checkpoint that verifies, or ``None`` if the directory has none.

        A corrupt newer checkpoint is logged as an error and the previous one is used.

        Raises
        ------
        CheckpointError
            Checkpoint files exist but none of them verifies (starting over silently would
            learn every record a second time).
        """
        return _newest(*self._scan(), self.dir)


class BatchJournal:
    """Appends the boundaries of each Kafka batch, one JSON line per batch, before it runs.

    Written but not fsynced: a killed process loses nothing the kernel already has, and after a
    machine crash a replay may regroup the last few batches (within the model's tolerance).
    Every write failure is a :class:`CheckpointWriteError` naming the directory.
    """

    def __init__(self, directory: Path):
        self.dir = directory
        self.path: Path | None = None
        self._fh = None

    def open(self, path: Path, mode: str = "a", entries=()) -> None:
        """Switch to ``path`` (``"w"``: a new journal, starting with ``entries``)."""
        self.close()
        self.path = path
        self._write(lambda: open(path, mode, encoding="utf-8"), entries)  # noqa: SIM115

    def append(self, entry) -> None:
        if self._fh is not None:
            self._write(None, (entry,))

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):  # a full disk has been reported already
                self._fh.close()
            self._fh = None

    def _write(self, opener, entries) -> None:
        try:
            if opener is not None:
                self._fh = opener()
            if entries:
                self._fh.write("".join(json.dumps(e) + "\n" for e in entries))
                self._fh.flush()
        except OSError as e:
            raise CheckpointWriteError(
                f"cannot write the batch journal in {self.dir}: {e.strerror or e}"
            ) from None
