"""Decode raw records into feature vectors (or dead-letter reasons) and encode results as JSON.

Decoding is strict on purpose: a record contributes to the model only if every feature is a
finite JSON number (CSV: a string that parses as a finite float).  Everything else becomes a
dead letter with a human-readable reason, and never touches the model.

orjson parses and writes all JSON; the stdlib's json only handles what orjson refuses, so that
the decisions and dead-letter reasons stay those of the stdlib (numbers beyond float64) and odd
but legal values still get written (integers beyond 64 bits).  ``NaN``/``Infinity`` are not JSON:
a record holding one anywhere is a dead letter.  A record that is not UTF-8 is a dead letter
whose ``record`` keeps its bytes base64-encoded (``"record_encoding": "base64"``).  A timestamp
field is copied to the output only if it is a number or an ISO 8601 string; otherwise it is left
out (logged once).  Results and dead letters are UTF-8 ``bytes``, which the sinks write as they
are.

Example
-------
>>> from streamgmm.service.records import RawRecord
>>> dec = Decoder(features=None)
>>> recs = [RawRecord(None, "f", 0, i, None, v, None) for i, v in enumerate(
...     ['{"a": 1, "b": 2.5, "id": "x"}', '{"a": "hot", "b": 1}', 'nope', '{"a": 1e400, "b": 0}'])]
>>> out = dec.decode_batch(recs)
>>> dec.features, out.X.tolist(), out.rows
(['a', 'b'], [[1.0, 2.5]], [0])
>>> [r for _, r in out.dead]  # doctest: +NORMALIZE_WHITESPACE
["feature 'a' is not a number: 'hot'", 'not JSON: Expecting value: line 1 column 1 (char 0)',
 "feature 'a' overflows float64"]
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from .records import RawRecord

__all__ = ["DecodedBatch", "Decoder", "encode_dead_letter", "encode_outputs", "output_key"]

log = logging.getLogger("streamgmm.service.codec")


class _NonFinite:
    """Marker for the JSON constants NaN/Infinity, so they are rejected with their own reason."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


# orjson parses every record; the stdlib decoder (built once: json.loads(..., parse_constant=...)
# would build one per call) only sees what orjson rejects, to explain or decide it.
_loads = orjson.loads
_dumps = orjson.dumps
_DecodeError = orjson.JSONDecodeError
_EncodeError = orjson.JSONEncodeError
_JSON = json.JSONDecoder(parse_constant=_NonFinite)
_NUMBER = (int, float)
_NUMERIC_TYPES = frozenset(_NUMBER)
_FALLBACK = object()
_NONFINITE_WORDS = {
    "nan",
    "+nan",
    "-nan",
    "inf",
    "+inf",
    "-inf",
    "infinity",
    "+infinity",
    "-infinity",
}


@dataclass
class DecodedBatch:
    """Result of :meth:`Decoder.decode_batch`.

    ``X`` holds the valid rows in arrival order, ``rows[i]`` is the batch index of ``X[i]``;
    ``keys``/``timestamps`` are per valid row; ``dead`` lists ``(batch index, reason)``.
    """

    X: np.ndarray
    rows: list[int]
    keys: list[Any]
    timestamps: list[Any]
    dead: list[tuple[int, str]] = field(default_factory=list)


class Decoder:
    """Turns raw JSON/CSV records into float64 feature rows.

    Parameters
    ----------
    features
        Field names, in order. ``None``: inferred from the first batch and fixed from then on
        (read :attr:`features` after decoding): the numeric fields of its first record that has
        any, except fields that look like ids, counters or labels — named so (``id``,
        ``*_id``, ``label``, ``target``, ...) or, judged over the batch once it holds 20
        records, constant, integer with only two values, or only counting up or down.  The
        choice is logged (INFO), and what was left out with why (WARNING).
    max_record_bytes
        Larger records are dead letters ("oversized").
    key_field, timestamp_field
        Optional fields copied to the output as ``key`` / ``timestamp``; never used as features
        when features are inferred.
    vector_field
        If set, the features are read as a JSON array in this field (its length must equal the
        number of features, else "wrong dimension").
    max_abs
        Larger magnitudes are dead letters ("overflows"): the model's statistics square them.
    origin
        Where given ``features`` come from, for the log line that names them (``"from the
        checkpoint ..."``); ``None``: configured.
    announce
        Whether inferred features are logged when found (the processor says it itself when it
        only re-detects a checkpoint's features to check this input against them).

    Attributes
    ----------
    excluded
        Inferred features only: numeric fields left out, with the reason.
    invalid_timestamps
        Records whose timestamp field was not a timestamp (left out of their output).
    """

    def __init__(
        self,
        features: Sequence[str] | None,
        *,
        max_record_bytes: int = 65536,
        key_field: str | None = None,
        timestamp_field: str | None = "timestamp",
        vector_field: str | None = None,
        max_abs: float = 1e150,
        origin: str | None = None,
        announce: bool = True,
    ):
        self.max_abs = float(max_abs)
        self.announce = announce
        self.features = list(features) if features is not None else None
        self.max_record_bytes = max_record_bytes
        self.key_field = key_field
        self.timestamp_field = timestamp_field
        self.vector_field = vector_field
        if vector_field is not None and self.features is None:
            raise ValueError("vector_field needs an explicit feature list")
        self.invalid_timestamps = 0
        self.excluded: dict[str, str] = {}
        # Inferred features: the numeric fields they were chosen from (the first record's), and
        # a hook called once they are chosen, before any row is decoded (the processor checks
        # them against a checkpoint's there, and may replace them by the checkpoint's).
        self.fields: list[str] | None = None
        self.on_inferred: Callable[[], None] | None = None
        if self.features is not None:
            where = f" ({origin})" if origin else ""
            log.info("features%s: %s", where, ", ".join(self.features))

    # -- the timestamp field ----------------------------------------------------------------
    def _timestamp(self, value: Any, rec: RawRecord) -> Any:
        """``value`` if it is a timestamp (a finite number, or an ISO 8601 date/time string;
        from CSV a numeric string becomes a number), else ``None``: left out, said once."""
        ts = _valid_timestamp(value)
        if ts is None:
            self.invalid_timestamps += 1
            if self.invalid_timestamps == 1:
                log.warning(
                    "field '%s' of record %s is not a timestamp (%s): left out of the output "
                    "(a timestamp must be a number or an ISO 8601 string); further invalid "
                    "timestamps are left out silently",
                    self.timestamp_field,
                    _where(rec),
                    _short(value),
                )
        return ts

    # -- feature inference ---------------------------------------------------------------
    def _numeric_fields(self, obj: dict, csv: bool) -> list[str]:
        skip = {self.key_field, self.timestamp_field}
        return [k for k, v in obj.items() if k not in skip and _number(v, csv) is not None]

    def _infer(self, batch: Sequence[RawRecord]) -> None:
        """Fix :attr:`features` from the first batch: the numeric fields of its first record
        that has any, except those that look like ids, counters or labels in the batch."""
        objs = []
        csv = False
        for rec in batch:
            obj = rec.parsed
            if obj is None:
                try:
                    obj = _loads(rec.value)
                except (_DecodeError, TypeError):
                    continue
            else:
                csv = True
            if type(obj) is dict:
                objs.append(obj)
        names = next((f for obj in objs if (f := self._numeric_fields(obj, csv))), None)
        if names is None:
            return  # no record to learn from yet: every one is a dead letter
        excluded = {}
        for name in names:
            values = [v for obj in objs if (v := _number(obj.get(name), csv)) is not None]
            why = _looks_like_id_or_label(name, values)
            if why:
                excluded[name] = why
        chosen = [n for n in names if n not in excluded]
        if not chosen:
            log.warning(
                "the only numeric fields look like ids, counters or labels (%s); using them as "
                "features anyway: pass --features to choose",
                "; ".join(f"{n}: {why}" for n, why in excluded.items()),
            )
            chosen, excluded = names, {}
        self.features, self.excluded, self.fields = chosen, excluded, list(names)
        if not self.announce:
            return
        log.info(
            "features (auto-detected from the first %d records): %s", len(batch), ", ".join(chosen)
        )
        if excluded:
            log.warning(
                "not used as features: %s. Pass --features to choose the features yourself",
                "; ".join(f"{n} ({why})" for n, why in excluded.items()),
            )
        # Fields the first record lacks were dropped without a word, however common.
        counts: dict[str, int] = {}
        for obj in objs:
            for name in self._numeric_fields(obj, csv):
                if name not in names:
                    counts[name] = counts.get(name, 0) + 1
        common = [n for n, c in counts.items() if 2 * c >= len(objs)]
        if common:
            log.warning(
                "not used as features: %s (numeric in most of the first %d records, but not in "
                "the first one, whose numeric fields are the features). Pass --features to "
                "choose the features yourself",
                ", ".join(common),
                len(objs),
            )

    # -- per-record checks (slow path, only for records that failed the fast one) ---------
    def _why_json(self, obj: dict) -> str:
        if self.vector_field is not None:
            if self.vector_field not in obj:
                return f"missing field '{self.vector_field}'"
            vec = obj[self.vector_field]
            if not isinstance(vec, list):
                return f"field '{self.vector_field}' is not an array: {_short(vec)}"
            if len(vec) != len(self.features):
                return f"wrong dimension: got {len(vec)} values, expected {len(self.features)}"
            items = list(zip(self.features, vec, strict=True))
        else:
            missing = [f for f in self.features if f not in obj]
            if missing:
                return "missing feature " + ", ".join(f"'{f}'" for f in missing)
            items = [(f, obj[f]) for f in self.features]
        for name, v in items:
            if isinstance(v, _NonFinite):
                return f"feature '{name}' is {v.text} (not finite)"
            if type(v) not in _NUMBER:
                return f"feature '{name}' is not a number: {_short(v)}"
            try:
                fv = float(v)
            except OverflowError:
                return f"feature '{name}' overflows float64"
            if not math.isfinite(fv):
                return f"feature '{name}' overflows float64"
        return ""

    def _csv_row(self, obj: dict) -> list[float] | str:
        out = []
        for name in self.features:
            if name not in obj:
                return f"missing feature '{name}'"
            s = obj[name]
            try:
                v = float(s)
            except (TypeError, ValueError):
                return f"feature '{name}' is not a number: {_short(s)}"
            if not math.isfinite(v):
                if s.strip().lower() in _NONFINITE_WORDS:
                    return f"feature '{name}' is {s.strip()} (not finite)"
                return f"feature '{name}' overflows float64"
            out.append(v)
        return out

    def _reason(self, obj: dict) -> str:
        try:
            return self._why_json(obj) or "invalid features"
        except OverflowError:
            return "a feature overflows float64"

    # -- batch decoding -------------------------------------------------------------------
    def decode_batch(self, batch: Sequence[RawRecord]) -> DecodedBatch:
        """Decode one mini-batch; never raises on bad input."""
        rows: list[int] = []
        # Feature values of all valid rows, flat: per-row lists kept alive to the end of a
        # 2000-record batch would be promoted by the garbage collector and make full collections
        # more frequent.
        flat: list = []
        extend = flat.extend
        keys: list[Any] = []
        stamps: list[Any] = []
        dead: list[tuple[int, str]] = []
        maxb = self.max_record_bytes
        kf, tf, vf = self.key_field, self.timestamp_field, self.vector_field
        numeric = _NUMERIC_TYPES
        if self.features is None:
            self._infer(batch)
            if self.features is not None and self.on_inferred is not None:
                self.on_inferred()
        feats = self.features
        nfeat = len(feats) if feats is not None else 0
        get = _row_getter(feats) if feats is not None else None
        for i, rec in enumerate(batch):
            value = rec.value
            try:
                if len(value) > maxb:
                    dead.append((i, f"oversized: {len(value)} bytes > max_record_bytes={maxb}"))
                    continue
            except TypeError:  # a Kafka message with a null value (tombstone)
                dead.append((i, "no value (null Kafka message)"))
                continue
            parsed = rec.parsed
            csv = parsed is not None
            if csv:
                if isinstance(parsed, str):
                    dead.append((i, parsed))
                    continue
                if not value.isascii() and _utf8_text(value) is None:
                    # Read with surrogateescape: its bytes are not UTF-8, and a key or
                    # timestamp copied from it could not be written as JSON.
                    dead.append((i, _not_utf8(value)))
                    continue
                obj = parsed
            else:
                try:
                    obj = _loads(value)
                except _DecodeError:
                    # orjson rejects what the stdlib parses and then explains or decides the
                    # same way as before: NaN/Infinity (refused below with their own reason),
                    # numbers beyond float64, invalid UTF-8, nesting limits, malformed JSON.
                    obj = _FALLBACK
                try:
                    if obj is _FALLBACK:
                        text = _utf8_text(value)
                        if text is None:
                            dead.append((i, _not_utf8(value)))
                            continue
                        obj = _JSON.decode(text)
                        if type(obj) is dict:
                            bad = _non_json_constant(obj, self.features)
                            if bad:
                                dead.append((i, bad))
                                continue
                except ValueError as e:
                    dead.append((i, f"not JSON: {e}{_csv_hint(rec, text)}"))
                    continue
                except RecursionError:
                    dead.append((i, "not JSON: nested too deeply"))
                    continue
                if type(obj) is not dict:
                    dead.append((i, f"not a JSON object (got {_json_type(obj)})"))
                    continue
            if feats is None:
                dead.append((i, _no_features(obj, csv)))
                continue
            if csv:
                row = self._csv_row(obj)
                if isinstance(row, str):
                    dead.append((i, row))
                    continue
            else:
                # Fast check: exact int/float types only (bool, str, None, NaN markers fail);
                # finiteness is checked for the whole batch at once below.
                try:
                    if vf is None:
                        row = get(obj)
                        ok = numeric >= set(map(type, row))
                    else:
                        row = obj[vf]
                        ok = (
                            type(row) is list
                            and len(row) == nfeat
                            and numeric >= set(map(type, row))
                        )
                except (KeyError, TypeError):
                    ok = False
                if not ok:
                    dead.append((i, self._reason(obj)))
                    continue
            rows.append(i)
            extend(row)
            k = rec.key
            if k is None and kf is not None:
                k = obj.get(kf)
            keys.append(k)
            ts = obj.get(tf) if tf is not None else None
            if ts is not None and type(ts) is not int:
                ts = self._timestamp(ts, rec)
            stamps.append(ts if ts is not None else rec.timestamp)
        d = len(self.features) if self.features is not None else 0
        if not rows:
            return DecodedBatch(np.empty((0, d), dtype=np.float64), rows, keys, stamps, dead)
        try:
            X = np.array(flat, dtype=np.float64)
        except OverflowError:  # an integer beyond float64: convert value by value
            X = np.array([_to_float(v) for v in flat], dtype=np.float64)
        X = X.reshape(len(rows), d)
        with np.errstate(invalid="ignore", over="ignore"):
            big = ~(np.abs(X) <= self.max_abs)  # also catches inf from 1e400 / huge ints
        if big.any():
            # Finite but so large that squares overflow: the model refuses them, so must we.
            keep = ~big.any(axis=1)
            for j in np.flatnonzero(~keep):
                col = int(np.argmax(big[j]))
                name = self.features[col]
                if np.isinf(X[j, col]):
                    why = f"feature '{name}' overflows float64"
                else:
                    why = f"feature '{name}' overflows: |value| > {self.max_abs:g} is not supported"
                dead.append((rows[j], why))
            dead.sort()
            X = X[keep]
            sel = np.flatnonzero(keep).tolist()
            rows = [rows[j] for j in sel]
            keys = [keys[j] for j in sel]
            stamps = [stamps[j] for j in sel]
        return DecodedBatch(X, rows, keys, stamps, dead)


# Field names that say "identifier" or "ground truth", compared without case and punctuation.
_ID_NAMES = frozenset(
    [
        "id",
        "uuid",
        "guid",
        "index",
        "idx",
        "row",
        "rowid",
        "rownumber",
        "rownum",
        "seq",
        "seqno",
        "sequence",
        "offset",
        "recordid",
    ]
)
_LABEL_NAMES = frozenset(
    [
        "label",
        "labels",
        "class",
        "target",
        "truth",
        "groundtruth",
        "isanomaly",
        "anomaly",
        "outlier",
        "isoutlier",
    ]
)
_MIN_ROWS_TO_JUDGE = 20


def _number(v: Any, csv: bool) -> float | None:
    """``v`` as a finite float if it is a JSON number or (``csv``) a numeric string, else
    ``None``."""
    t = type(v)
    if t is str and csv:
        try:
            f = float(v)
        except ValueError:
            return None
    elif t is int or t is float:
        try:
            f = float(v)
        except OverflowError:
            return None
    else:
        return None
    return f if math.isfinite(f) else None


def _looks_like_id_or_label(name: str, values: list[float]) -> str:
    """Why field ``name`` with ``values`` (one per record of the first batch) is no feature, or
    ``""``.  By name always; by values once there are enough of them to judge."""
    plain = "".join(c for c in name.lower() if c.isalnum())
    if plain in _LABEL_NAMES:
        return "named like a label"
    if plain in _ID_NAMES or name.lower().endswith(("_id", "-id", " id")) or name.endswith("Id"):
        return "named like an id"
    n = len(values)
    if n < _MIN_ROWS_TO_JUDGE:
        return ""
    distinct = sorted(set(values))
    if len(distinct) == 1:
        return f"constant ({distinct[0]:g}) in the first {n} records"
    integral = all(v.is_integer() for v in distinct)
    if integral and len(distinct) == 2:
        a, b = distinct
        return (
            f"only the values {a:g} and {b:g} in the first {n} records: looks like a label or flag"
        )
    steps = np.diff(values)
    if (steps >= 0).all() or (steps <= 0).all():
        way = "up" if steps.sum() > 0 else "down"
        return f"counts {way} over the first {n} records: an id, counter, clock or sorted label?"
    return ""


def _no_features(obj: dict, csv: bool) -> str:
    quoted = [k for k, v in obj.items() if not csv and _number(v, True) is not None]
    if quoted:
        return (
            f"no numeric fields to use as features ('{quoted[0]}' holds a number in quotes, "
            "which JSON reads as text)"
        )
    return "no numeric fields to use as features"


def _csv_hint(rec: RawRecord, text: str) -> str:
    """A hint for the common mistake of a CSV file read as JSONL (stdin, or no .csv suffix)."""
    if rec.topic is None and "," in text and not text.lstrip().startswith(("{", "[", '"')):
        return " (a CSV line? pass --input-format csv)"
    return ""


def _utf8_text(value: bytes | str) -> str | None:
    """The record as text, or ``None`` if its bytes are not UTF-8 (a file line read with
    surrogateescape carries such bytes as lone surrogates)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def _raw_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def _not_utf8(value: bytes | str) -> str:
    """Dead-letter reason naming the first byte that is not UTF-8 and its position."""
    raw = _raw_bytes(value)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8 text: byte 0x{raw[e.start]:02x} at position {e.start} is not valid UTF-8"
    return "not UTF-8 text"


def _non_json_constant(obj: dict, features: Sequence[str] | None) -> str:
    """Reason if a NaN/Infinity constant (accepted by Python, not JSON) occurs anywhere."""
    for name, v in obj.items():
        if features is not None and name in features:
            continue  # the feature checks give their own reason
        found = _find_constant(v)
        if found is not None:
            return f"not JSON: {found.text} is not a JSON value (field '{name}')"
    return ""


def _find_constant(v: Any) -> _NonFinite | None:
    if isinstance(v, _NonFinite):
        return v
    children = v.values() if type(v) is dict else v if type(v) is list else ()
    for c in children:
        found = _find_constant(c)
        if found is not None:
            return found
    return None


def _valid_timestamp(v: Any) -> Any:
    """``v`` as a timestamp, or ``None`` (see :meth:`Decoder._timestamp`)."""
    t = type(v)
    if t is int:
        return v
    if t is float:
        return v if math.isfinite(v) else None
    if t is not str:
        return None
    s = v.strip()
    try:  # CSV: every field is text
        number = float(s)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            return None
        return int(s) if s.lstrip("+-").isdigit() else number
    try:  # Python 3.10 reads no "Z" suffix
        datetime.datetime.fromisoformat(s[:-1] + "+00:00" if s.endswith("Z") else s)
    except ValueError:
        return None
    return v


def _where(rec: RawRecord) -> str:
    if rec.topic is not None:
        return f"{rec.topic}[{rec.partition}]@{rec.offset}"
    return f"{rec.file}:{rec.offset}"


def _row_getter(features: Sequence[str]) -> Callable[[dict], tuple]:
    # itemgetter fetches all features in C: a tuple, faster than a list comprehension.
    get = operator.itemgetter(*features)
    return get if len(features) > 1 else lambda obj: (get(obj),)


def _to_float(v) -> float:
    try:
        return float(v)
    except OverflowError:
        return math.inf


def _json_type(obj: Any) -> str:
    if isinstance(obj, _NonFinite):
        return "number"
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(obj), "number"
    )


def _short(v: Any, n: int = 40) -> str:
    s = repr(v.text) if isinstance(v, _NonFinite) else repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


# -- encoding ----------------------------------------------------------------------------
# Everything leaves as UTF-8 JSON bytes, written to files and Kafka as is.  orjson writes NaN and
# infinities as null (JSON has none): a score before any model exists, an infinite threshold.


def _plain(v: Any) -> Any:
    """``v`` with non-finite floats and NaN/Infinity markers as ``None`` (for the stdlib)."""
    if type(v) is float:
        return v if math.isfinite(v) else None
    if isinstance(v, _NonFinite):
        return None
    if isinstance(v, np.ndarray):
        return _plain(v.tolist())
    if type(v) is dict:
        return {k: _plain(x) for k, x in v.items()}
    if type(v) is list:
        return [_plain(x) for x in v]
    return v


def _dumps_slow(d: dict) -> bytes:
    # What orjson refuses to write: integers beyond 64 bits (e.g. in a key field).  Records
    # that are not UTF-8 never get here (dead letters keep them base64-encoded), so "replace"
    # only guards the rule that every line written is UTF-8.
    text = json.dumps(_plain(d), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8", "replace")  # never raw bytes: every line must be UTF-8


def output_key(rec: RawRecord) -> bytes:
    """Kafka key of a result: the input key, else the source coordinates (replays collide)."""
    k = rec.key
    if k is not None:
        return k if isinstance(k, bytes) else str(k).encode("utf-8", "surrogateescape")
    return f"{rec.topic}:{rec.partition}:{rec.offset}".encode()


def encode_outputs(
    batch: Sequence[RawRecord],
    decoded: DecodedBatch,
    log_density: np.ndarray,
    proba: np.ndarray,
    threshold: float | np.ndarray,
    anomaly: np.ndarray,
    model_version: int | Sequence[int],
    tail_probability: np.ndarray | None = None,
) -> list[bytes]:
    """One JSON document (UTF-8 bytes, no newline) per valid row of ``decoded``, in order.

    Fields: ``source``, ``key``, ``probabilities``, ``cluster``, ``log_density``, ``score``,
    ``anomaly``, ``threshold``, ``model_version`` and ``timestamp`` if the input has one;
    ``tail_probability`` (the probability that a normal record scores at least as high) after
    ``score`` when given.  ``threshold`` and ``model_version`` are one value for the batch or
    one per row (rows of several models, one per key).  ``proba`` is an (n, K) array, or a list
    of one 1-D array per row (models of different K).
    """
    ld = log_density.tolist()
    # Rows of the array go to orjson as they are (untracked views; per-row lists from tolist()
    # would live through the batch and burden the garbage collector).
    if isinstance(proba, list):
        pr = proba
        cl = [int(p.argmax()) if p.size else 0 for p in pr]
    else:
        pr = np.ascontiguousarray(proba, dtype=np.float64)
        cl = pr.argmax(axis=1).tolist() if pr.shape[1] else [0] * len(ld)
    an = anomaly.tolist()
    thr_rows = np.broadcast_to(np.asarray(threshold, dtype=np.float64), len(ld)).tolist()
    versions = [model_version] * len(ld) if isinstance(model_version, int) else list(model_version)
    tail = None if tail_probability is None else tail_probability.tolist()
    keys, stamps = decoded.keys, decoded.timestamps
    dumps, opt = _dumps, orjson.OPT_SERIALIZE_NUMPY
    out: list[bytes] = []
    append = out.append
    for j, i in enumerate(decoded.rows):
        rec = batch[i]
        src = (
            {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset}
            if rec.topic is not None
            else {"file": rec.file, "partition": rec.partition, "offset": rec.offset}
        )
        k = keys[j]
        if type(k) is bytes:
            k = k.decode("utf-8", "replace")
        x = ld[j]
        d = {
            "source": src,
            "key": k,
            "probabilities": pr[j],
            "cluster": cl[j],
            "log_density": x,
            "score": -x,
            **({} if tail is None else {"tail_probability": tail[j]}),
            "anomaly": an[j],
            "threshold": thr_rows[j],
            "model_version": versions[j],
        }
        ts = stamps[j]
        if ts is not None:
            d["timestamp"] = ts
        try:
            append(dumps(d, option=opt))
        except _EncodeError:
            append(_dumps_slow(d))
    return out


def encode_dead_letter(rec: RawRecord, reason: str, max_bytes: int | None = None) -> bytes:
    """JSON dead letter (UTF-8 bytes): ``source``, ``key``, ``error`` and the raw ``record``.

    The record is kept as text when it is UTF-8; otherwise its exact bytes are kept
    base64-encoded in ``record``, with ``"record_encoding": "base64"``, so that every dead
    letter is valid UTF-8 JSON and loses nothing.
    """
    raw = rec.value
    d = {"source": rec.coordinates(), "key": None, "error": reason, "record": None}
    if rec.key is not None:
        d["key"] = rec.key.decode("utf-8", "replace") if isinstance(rec.key, bytes) else rec.key
    if raw is None:  # null Kafka message
        return _dumps(d)
    text = _utf8_text(raw)
    data = _raw_bytes(raw) if text is None else text
    if max_bytes is not None and len(data) > max_bytes:
        # A dead letter must fit where it goes; keep the head of an oversized record.
        d["record_truncated"] = True
        d["record_length"] = len(data)
        data = data[: max_bytes * 3 // 4 if text is None else max_bytes]
    if text is None:
        d["record"] = base64.b64encode(data).decode("ascii")
        d["record_encoding"] = "base64"
    else:
        d["record"] = data
    try:
        return _dumps(d)
    except _EncodeError:
        return _dumps_slow(d)
