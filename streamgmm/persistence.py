"""The one state codec: a learner's state as bytes — plain arrays and JSON, never pickle.

Every place that stores model state uses this codec: :func:`save_model`/:func:`load_model`,
the stream processor's checkpoint files and its Kafka changelog messages.  An encoded state is
an ``.npz`` archive (zip) holding the numeric arrays plus two ``uint8`` arrays:

``__meta__``
    UTF-8 JSON: the caller's metadata plus ``format_version``.
``__sha256__``
    hex SHA-256 over every other array's name, dtype, shape and bytes (the metadata included),
    so a flipped bit anywhere in the data is detected even where the zip's CRC is not checked.

It is read with ``np.load(allow_pickle=False)``: decoding can construct arrays of numbers and
one JSON document, nothing else, so crafted bytes cannot run code.  Files written by the first
``save_model`` (metadata as a 0-d unicode array, no checksum) are still read.

**Raw container** (``encode_state(..., raw=True)``): for many small states (a model per key,
encoded at every checkpoint) a zip archive and a SHA-256 cost far more than the few hundred
numbers they hold.  The raw container is::

    b"SGMS" | u8 container version (1) | u32 LE header length | header | payload | u32 LE CRC-32

``header`` is UTF-8 JSON ``{"meta": ..., "arrays": [[name, dtype, shape], ...]}`` (dtypes
little-endian numbers or booleans only), ``payload`` the arrays' bytes back to back in C order,
and the CRC-32 covers everything before it.  Decoding checks the magic, the lengths, the CRC and
every dtype before it builds anything: numbers and one JSON document, still no pickle.
:func:`decode_state` tells the two containers apart by their first bytes.

Example
-------
>>> import numpy as np
>>> blob = encode_state({"means": np.eye(2)}, {"who": "me"}, format_version=3)
>>> arrays, meta = decode_state(blob, accept_versions=(3,))
>>> meta["who"], meta["format_version"], arrays["means"].tolist()
('me', 3, [[1.0, 0.0], [0.0, 1.0]])
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

META_KEY = "__meta__"
SUM_KEY = "__sha256__"
RAW_MAGIC = b"SGMS"
RAW_VERSION = 1
# Numbers and booleans only, little-endian: nothing else can come out of a raw state.
_RAW_DTYPES = frozenset(
    ["<f8", "<f4", "<i8", "<i4", "<i2", "|i1", "<u8", "<u4", "<u2", "|u1", "|b1"]
)
_RAW_HEAD = struct.Struct("<4sBI")
#: Format of a state written by :func:`save_model` (the service has its own version numbers).
MODEL_FORMAT_VERSION = 1

__all__ = [
    "META_KEY",
    "MODEL_FORMAT_VERSION",
    "SUM_KEY",
    "StateFormatError",
    "decode_state",
    "encode_state",
    "load_model",
    "save_model",
    "state_digest",
]


class StateFormatError(ValueError):
    """Bytes that are not a usable encoded state: unreadable, corrupted, or another version."""


def state_digest(arrays: dict[str, np.ndarray]) -> str:
    """Hex SHA-256 over every array's name, dtype, shape and bytes, by name."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(a.dtype.str.encode())
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def encode_state(
    arrays: dict[str, np.ndarray],
    meta: dict,
    *,
    format_version: int = MODEL_FORMAT_VERSION,
    compress: bool = False,
    raw: bool = False,
) -> bytes:
    """``arrays`` (numbers only) and ``meta`` (JSON-able) as checksummed bytes.

    Parameters
    ----------
    arrays
        Numeric arrays; names ``__meta__``/``__sha256__`` are reserved, object dtypes refused.
    meta
        JSON-able metadata (no NaN/inf); ``format_version`` is added.
    format_version
        Stored in the metadata; :func:`decode_state` refuses versions it is not told to accept.
    compress
        Deflate the archive (``np.savez_compressed``): smaller Kafka messages, slower.
    raw
        The raw container (see the module's docstring): a header, the arrays' bytes and a
        CRC-32; many times cheaper to write and read than the archive.
    """
    if raw:
        return _encode_raw(arrays, {**meta, "format_version": format_version}, compress)
    out: dict[str, np.ndarray] = {}
    for k, v in arrays.items():
        if k in (META_KEY, SUM_KEY):
            raise ValueError(f"reserved array name {k!r}")
        a = np.asarray(v)
        if a.dtype.hasobject:
            raise ValueError(f"array {k!r} has dtype object; a state holds numbers only")
        out[k] = a
    meta = {**meta, "format_version": format_version}
    out[META_KEY] = np.frombuffer(json.dumps(meta, allow_nan=False).encode(), dtype=np.uint8)
    out[SUM_KEY] = np.frombuffer(state_digest(out).encode("ascii"), dtype=np.uint8)
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **out)
    return buf.getvalue()


def decode_state(
    data: bytes | os.PathLike | str | io.IOBase,
    *,
    accept_versions: Iterable[int] = (MODEL_FORMAT_VERSION,),
    where: str = "state",
) -> tuple[dict[str, np.ndarray], dict]:
    """Inverse of :func:`encode_state`: ``(arrays, meta)``, verified.

    ``data`` is the bytes, or a path / open binary file holding them.

    Raises
    ------
    StateFormatError
        Unreadable, not a state, checksum mismatch, or a ``format_version`` not accepted; the
        message starts with ``where``.
    """
    if isinstance(data, bytes | bytearray | memoryview) and bytes(data[:4]) == RAW_MAGIC:
        arrays, meta = _decode_raw(bytes(data), where)
        _check_version(meta, accept_versions, where)
        return arrays, meta
    src = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
    try:
        with np.load(src, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile/np errors of every kind mean the same: unusable
        raise StateFormatError(f"{where}: unreadable ({type(e).__name__}: {e})") from None
    if META_KEY not in arrays:
        raise StateFormatError(f"{where}: not a streamgmm state (no metadata)")
    if SUM_KEY not in arrays:
        if arrays[META_KEY].dtype.kind == "U":  # the first save_model format: no checksum
            try:
                meta = json.loads(str(arrays.pop(META_KEY)[()]))
            except ValueError as e:
                raise StateFormatError(f"{where}: metadata is not valid JSON ({e})") from None
            return arrays, {"legacy_meta": meta, "format_version": 0}
        raise StateFormatError(f"{where}: not a streamgmm state (no checksum)")
    stored = arrays.pop(SUM_KEY).tobytes().decode("ascii", "replace")
    if state_digest(arrays) != stored:
        raise StateFormatError(f"{where}: checksum mismatch (corrupted)")
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
    except ValueError as e:
        raise StateFormatError(f"{where}: metadata is not valid JSON ({e})") from None
    _check_version(meta, accept_versions, where)
    return arrays, meta


def _check_version(meta, accept_versions: Iterable[int], where: str) -> None:
    accept = tuple(accept_versions)
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version not in accept:
        raise StateFormatError(
            f"{where}: format version {version!r}, this streamgmm reads "
            + " or ".join(map(str, accept))
        )


def _encode_raw(arrays: dict[str, np.ndarray], meta: dict, compress: bool) -> bytes:
    table, parts = [], []
    for k, v in arrays.items():
        a = np.asarray(v)
        if a.dtype.hasobject:
            raise ValueError(f"array {k!r} has dtype object; a state holds numbers only")
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        if a.dtype.str not in _RAW_DTYPES:
            raise ValueError(f"array {k!r} has dtype {a.dtype}; a state holds numbers only")
        table.append([k, a.dtype.str, list(a.shape)])
        parts.append(a.tobytes())
    payload = b"".join(parts)
    head = {"meta": meta, "arrays": table}
    if compress:  # large states (wide full covariances) in Kafka: deflate the numbers
        payload = zlib.compress(payload, 6)
        head["deflate"] = True
    header = json.dumps(head, allow_nan=False, separators=(",", ":")).encode()
    body = _RAW_HEAD.pack(RAW_MAGIC, RAW_VERSION, len(header)) + header + payload
    return body + struct.pack("<I", zlib.crc32(body))


def _decode_raw(data: bytes, where: str) -> tuple[dict[str, np.ndarray], dict]:
    n = len(data)
    if n < _RAW_HEAD.size + 4:
        raise StateFormatError(f"{where}: unreadable (truncated raw state)")
    _, version, hlen = _RAW_HEAD.unpack_from(data)
    if version != RAW_VERSION:
        raise StateFormatError(f"{where}: raw state container version {version} is unknown")
    (crc,) = struct.unpack_from("<I", data, n - 4)
    if zlib.crc32(memoryview(data)[: n - 4]) != crc:
        raise StateFormatError(f"{where}: checksum mismatch (corrupted)")
    start = _RAW_HEAD.size
    if start + hlen > n - 4:
        raise StateFormatError(f"{where}: unreadable (header beyond the data)")
    try:
        head = json.loads(data[start : start + hlen].decode("utf-8"))
        meta, table = head["meta"], head["arrays"]
    except (ValueError, KeyError, TypeError) as e:
        raise StateFormatError(f"{where}: header is not valid ({e})") from None
    payload = data[start + hlen : n - 4]
    if head.get("deflate"):
        try:
            payload = zlib.decompress(payload)
        except zlib.error as e:
            raise StateFormatError(f"{where}: unreadable ({e})") from None
    buf = bytearray(payload)  # one writable copy: the arrays are views of it
    arrays, pos = {}, 0
    try:
        for name, dt, shape in table:
            if dt not in _RAW_DTYPES or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise ValueError(f"array {name!r}: dtype {dt!r} / shape {shape!r} refused")
            dtype = np.dtype(dt)
            count = int(np.prod(shape, dtype=np.int64))
            size = count * dtype.itemsize
            if pos + size > len(buf):
                raise ValueError(f"array {name!r} runs beyond the data")
            arrays[str(name)] = np.frombuffer(buf, dtype, count, pos).reshape(shape)
            pos += size
    except (ValueError, TypeError) as e:
        raise StateFormatError(f"{where}: unreadable ({e})") from None
    if pos != len(buf):
        raise StateFormatError(f"{where}: unreadable ({len(buf) - pos} stray bytes)")
    return arrays, meta


def save_model(model, path) -> Path:
    """Write the model's full state to ``path`` (.npz, :func:`encode_state`), atomically."""
    path = Path(path)
    arrays, meta = model.get_state()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(encode_state(arrays, {"model_meta": meta}))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load_model(path):
    """Read a model written by :func:`save_model`; raises ValueError on a malformed file."""
    from streamgmm.online import OnlineGaussianMixture

    arrays, meta = decode_state(Path(path), accept_versions=(MODEL_FORMAT_VERSION,), where=path)
    meta = meta["legacy_meta"] if meta["format_version"] == 0 else meta["model_meta"]
    return OnlineGaussianMixture.from_state(arrays, meta)
