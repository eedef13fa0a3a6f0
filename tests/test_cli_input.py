"""First-hour input defects: what the decoder accepts, what it copies, and what a dead letter
looks like (issue 10, "First-hour defects")."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from streamgmm.service.codec import Decoder, encode_dead_letter
from streamgmm.service.config import load_config
from streamgmm.service.processor import Processor
from streamgmm.service.records import RawRecord
from streamgmm.service.sources import FileSource


def _recs(values):
    return [RawRecord(None, "f", 0, i, None, v, None) for i, v in enumerate(values)]


def _csv_rec(i, row: dict, raw: str = "raw"):
    return RawRecord(None, "f.csv", 0, i, None, raw, None, row)


# -- NaN / Infinity outside the features ------------------------------------------------------


@pytest.mark.parametrize("const", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("where", ["top", "nested"])
def test_nan_outside_the_features_is_not_json(const, where):
    extra = f'"note": {const}' if where == "top" else f'"meta": {{"q": [1, {const}]}}'
    dec = Decoder(["a", "b"])
    out = dec.decode_batch(_recs(['{"a": 1, "b": 2}', f'{{"a": 1, "b": 2, {extra}}}']))
    assert out.rows == [0]
    [(i, why)] = out.dead
    field = "note" if where == "top" else "meta"
    assert i == 1 and why == f"not JSON: {const} is not a JSON value (field '{field}')"


def test_nan_outside_the_features_is_found_after_a_nan_feature():
    out = Decoder(["a", "b"]).decode_batch(_recs(['{"a": NaN, "b": 2, "c": Infinity}']))
    assert out.dead == [(0, "not JSON: Infinity is not a JSON value (field 'c')")]


# -- the timestamp field ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "copied"),
    [
        ("1700000000", 1700000000),
        ("1700000000.25", 1700000000.25),
        ('"2026-11-25T10:00:00Z"', "2026-11-25T10:00:00Z"),
        ('"2026-11-25 10:00:00.5+01:00"', "2026-11-25 10:00:00.5+01:00"),
        ('"2026-11-25"', "2026-11-25"),
        ('{"s": 1}', None),
        ('"yesterday"', None),
        ("[1700000000]", None),
        ("true", None),
        ('""', None),
        ("1e400", None),
    ],
)
def test_timestamp_is_validated_or_left_out(value, copied, caplog):
    dec = Decoder(["a"])
    with caplog.at_level(logging.WARNING, logger="streamgmm"):
        out = dec.decode_batch(_recs([f'{{"a": 1, "timestamp": {value}}}'] * 2))
    assert out.rows == [0, 1] and not out.dead  # a bad timestamp never costs the record
    assert out.timestamps == [copied, copied]
    warned = [r for r in caplog.records if "timestamp" in r.getMessage()]
    if copied is None:
        # Said once (not per record), naming the field, the rule and what happens.
        assert len(warned) == 1
        msg = warned[0].getMessage()
        assert "'timestamp'" in msg and "left out" in msg and "ISO 8601" in msg
        assert dec.invalid_timestamps == 2
    else:
        assert not warned and dec.invalid_timestamps == 0


def test_csv_timestamp_numbers_become_numbers():
    dec = Decoder(["a"])
    rows = [{"a": "1", "timestamp": "1700000000"}, {"a": "2", "timestamp": "soon"}]
    out = dec.decode_batch([_csv_rec(i, r) for i, r in enumerate(rows)])
    assert out.timestamps == [1700000000, None]


def test_invalid_timestamp_falls_back_to_the_kafka_timestamp():
    rec = RawRecord("t", None, 0, 0, None, b'{"a": 1, "timestamp": "yesterday"}', 1234)
    out = Decoder(["a"]).decode_batch([rec])
    assert out.timestamps == [1234]


# -- dead letters of input that is not UTF-8 ---------------------------------------------------


def _file_line(raw: bytes) -> str:
    # What FileSource yields for a line that is not UTF-8 (read with surrogateescape).
    return raw.decode("utf-8", "surrogateescape")


@pytest.mark.parametrize("origin", ["file", "kafka"])
def test_dead_letter_of_non_utf8_input_is_utf8_json_with_base64(origin):
    raw = b'{"a": 1, "b": \xff\xfe}'
    if origin == "file":
        rec = RawRecord(None, "in.jsonl", 0, 3, None, _file_line(raw), None)
    else:
        rec = RawRecord("t", None, 0, 3, b"k", raw, 1)
    [(_, why)] = Decoder(["a", "b"]).decode_batch([rec]).dead
    # Plain words: which byte, where; not Python's "surrogates not allowed".
    assert why == "not UTF-8 text: byte 0xff at position 14 is not valid UTF-8"
    letter = encode_dead_letter(rec, why)
    d = json.loads(letter.decode("utf-8"))  # strict: the dead letter itself is valid UTF-8
    assert d["record_encoding"] == "base64"
    assert base64.b64decode(d["record"]) == raw


def test_csv_row_that_is_not_utf8_is_a_dead_letter_not_an_output():
    raw = _file_line(b"caf\xe9,1,2")
    rec = _csv_rec(0, {"id": raw.split(",")[0], "a": "1", "b": "2"}, raw)
    out = Decoder(["a", "b"], key_field="id").decode_batch(
        [rec, _csv_rec(1, {"id": "x", "a": "3", "b": "4"})]
    )
    assert out.rows == [1]
    [(_, why)] = out.dead
    assert why == "not UTF-8 text: byte 0xe9 at position 3 is not valid UTF-8"
    d = json.loads(encode_dead_letter(rec, why).decode("utf-8"))
    assert base64.b64decode(d["record"]) == b"caf\xe9,1,2"


def test_dead_letter_of_utf8_text_stays_text():
    d = json.loads(encode_dead_letter(RawRecord(None, "f", 0, 0, None, '{"a": "é"', None), "x"))
    assert d["record"] == '{"a": "é"' and "record_encoding" not in d


def test_non_utf8_file_end_to_end_dead_letters_are_strict_utf8(tmp_path):
    inp = tmp_path / "in.jsonl"
    lines = [f'{{"a": {i % 7}, "b": {i % 5}}}'.encode() for i in range(50)]
    lines[10] = b'{"a": 1, "b": "\xe9t\xe9"}'
    lines[20] = b"\xff\xfe\x00garbage"
    inp.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"
    cfg = load_config(
        overrides={
            "input": {"path": str(inp)},
            "output": {"path": str(out)},
            "features": ["a", "b"],
            "progress": False,
        },
        env={},
    )
    Processor(cfg, handle_signals=False).run()
    dead = (tmp_path / "out.dlq.jsonl").read_bytes().decode("utf-8")  # strict
    letters = [json.loads(s) for s in dead.splitlines()]
    assert [d["source"]["offset"] for d in letters] == [10, 20]
    assert [base64.b64decode(d["record"]) for d in letters] == [lines[10], lines[20]]
    out.read_bytes().decode("utf-8")


# -- CSV with a byte-order mark -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_utf8_byte_order_mark_is_not_part_of_the_data(tmp_path, fmt):
    p = tmp_path / f"in.{fmt}"
    text = {"csv": "a,b\n1,2\n3,4\n", "jsonl": '{"a": 1, "b": 2}\n{"a": 3, "b": 4}\n'}[fmt]
    p.write_bytes(b"\xef\xbb\xbf" + text.encode())
    batches = list(FileSource(str(p)).batches())
    out = Decoder(["a", "b"]).decode_batch(batches[0])
    assert not out.dead
    assert out.X.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_csv_read_as_jsonl_gets_a_hint():
    recs = _recs(["a,b", "1,2", "{nope"])
    dead = dict(Decoder(["a", "b"]).decode_batch(recs).dead)
    assert dead[0].endswith("(a CSV line? pass --input-format csv)")
    assert dead[1].endswith("(a CSV line? pass --input-format csv)")
    assert "CSV" not in dead[2]
    kafka = RawRecord("t", None, 0, 0, None, b"1,2", None)  # no such flag for topics
    assert "CSV" not in Decoder(["a", "b"]).decode_batch([kafka]).dead[0][1]


@pytest.mark.parametrize(("sep", "said"), [(";", "';'"), ("\t", "tabs"), ("|", "'|'")])
@pytest.mark.parametrize("features", [None, ["a", "b"]])
def test_csv_in_another_dialect_gets_a_hint(tmp_path, sep, said, features):
    # Was "no numeric fields to use as features" (or "missing feature 'a'") for every row.
    p = tmp_path / "in.csv"
    p.write_text(f"a{sep}b\n1.5{sep}2\n3{sep}4\n")
    [batch] = list(FileSource(str(p)).batches())
    dead = Decoder(features).decode_batch(batch).dead
    assert [why for _, why in dead] == [
        f"CSV separated by {said}? Only commas separate fields (the header is one field: "
        f"{'a' + sep + 'b'!r})"
    ] * 2


def test_csv_row_of_one_field_says_field(tmp_path):
    p = tmp_path / "in.csv"
    p.write_text("a,b\n1\n1,2,3\n")
    [recs] = list(FileSource(str(p)).batches())
    whys = [why for _, why in Decoder(["a", "b"]).decode_batch(recs).dead]
    assert whys == [
        "wrong dimension: CSV row has 1 field, header has 2",
        "wrong dimension: CSV row has 3 fields, header has 2",
    ]


def test_a_repeated_csv_column_name_is_warned(tmp_path, caplog):
    # "a,a,b": the second 'a' silently replaced the first.
    p = tmp_path / "in.csv"
    p.write_text("a,a,b\n1,2,3\n")
    with caplog.at_level(logging.WARNING, logger="streamgmm.service.sources"):
        [batch] = list(FileSource(str(p)).batches())
    assert "the CSV header repeats 'a': of columns with one name only the last is read" in (
        caplog.text
    )
    assert Decoder(["a", "b"]).decode_batch(batch).X.tolist() == [[2.0, 3.0]]


@pytest.mark.parametrize("name", ["in.jsonl.gz", "in.csv.gz", "in.gz"])
def test_a_gzip_file_is_read_decompressed(tmp_path, name):
    # Was read as text: every line a dead letter ("not JSON", "not UTF-8 text").
    import gzip

    text = {"csv": "a,b\n1,2\n3,4\n", "jsonl": '{"a": 1, "b": 2}\n{"a": 3, "b": 4}\n'}
    fmt = "csv" if name.endswith(".csv.gz") else "jsonl"
    p = tmp_path / name
    p.write_bytes(gzip.compress(text[fmt].encode()))
    source = FileSource(str(p), start=1)
    [batch] = list(source.batches())
    out = Decoder(["a", "b"]).decode_batch(batch)
    assert not out.dead and out.X.tolist() == [[3.0, 4.0]]  # resumes after line 1, too
    assert source.size is None  # no progress total in compressed bytes


def test_numbers_in_quotes_get_a_hint_when_no_feature_is_numeric():
    dead = Decoder(None).decode_batch(_recs(['{"a": "1.5", "b": "x"}', '{"s": "x"}'])).dead
    assert dead[0][1] == (
        "no numeric fields to use as features ('a' holds a number in quotes, which JSON reads "
        "as text)"
    )
    assert dead[1][1] == "no numeric fields to use as features"


# -- what counts as a blank line --------------------------------------------------------------


@pytest.mark.parametrize("char", ["\x1c", "\x1f", "\x0b", "\x0c", "\x85", "\u2028", "\xa0"])
def test_a_line_of_non_json_whitespace_is_a_record_not_a_blank_line(tmp_path, char):
    # str.strip() removes these, JSON does not call them whitespace: such a line is a record
    # (a dead letter), never silently skipped.
    p = tmp_path / "in.jsonl"
    p.write_text(f'{{"a": 1}}\n{char}\n \t\n{{"a": 2}}\n', encoding="utf-8")
    [batch] = list(FileSource(str(p)).batches())
    assert [r.offset for r in batch] == [0, 1, 3]
    out = Decoder(["a"]).decode_batch(batch)
    assert out.rows == [0, 2] and [i for i, _ in out.dead] == [1]
