"""Document readers of equal.data: formats, ids, and errors naming file, line and field."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from equal.data import (
    MAX_ERRORS,
    Document,
    DocumentStream,
    ReadResult,
    content_hash,
    iter_documents,
    read_documents,
)
from equal.errors import DataError

ROWS = [
    {"id": "d1", "text": "First document.", "url": "http://a"},
    {"id": "d2", "text": "Second one,\nwith a newline and ünïcode.", "url": "http://b"},
    {"id": "d3", "text": "Third, \"quoted\", text"},
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _csv_text(rows: list[dict]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["id", "text", "url"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _write_all_formats(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "jsonl": _jsonl(folder / "c.jsonl", ROWS),
        "ndjson": _jsonl(folder / "c.ndjson", ROWS),
        "json_list": folder / "list.json",
        "json_obj": folder / "obj.json",
        "parquet": folder / "c.parquet",
        "csv": folder / "c.csv",
        "jsonl_gz": folder / "c.jsonl.gz",
    }
    paths["json_list"].write_text(json.dumps(ROWS, indent=2), encoding="utf-8")
    paths["json_obj"].write_text(json.dumps({"version": 1, "data": ROWS}), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist([{**r, "url": r.get("url")} for r in ROWS]), paths["parquet"])
    paths["csv"].write_text(_csv_text(ROWS), encoding="utf-8")
    paths["jsonl_gz"].write_bytes(gzip.compress(paths["jsonl"].read_bytes()))
    return paths


@pytest.mark.parametrize("kind", ["jsonl", "ndjson", "json_list", "json_obj", "parquet", "csv", "jsonl_gz"])
def test_each_format_reads_the_same_documents(tmp_path: Path, kind: str) -> None:
    path = _write_all_formats(tmp_path)[kind]
    res = read_documents(path)
    assert isinstance(res, ReadResult)
    assert res.path == str(path) and res.skipped == 0 and res.errors == []
    assert [d.id for d in res.items] == ["d1", "d2", "d3"]
    assert [d.text for d in res.items] == [r["text"] for r in ROWS]
    assert all(d.meta["source"] == str(path) for d in res.items)


def test_meta_locations(tmp_path: Path) -> None:
    paths = _write_all_formats(tmp_path)
    assert [d.meta["line"] for d in read_documents(paths["jsonl"]).items] == [1, 2, 3]
    # json.dumps(indent=2): "[" on line 1, then each object takes "{", one line per key, "}".
    assert [d.meta["line"] for d in read_documents(paths["json_list"]).items] == [2, 7, 12]
    assert [d.meta["line"] for d in read_documents(paths["json_obj"]).items] == [1, 1, 1]
    # The second CSV row holds a quoted newline, so the third starts on line 5.
    assert [d.meta["line"] for d in read_documents(paths["csv"]).items] == [2, 3, 5]
    assert [d.meta["row"] for d in read_documents(paths["parquet"]).items] == [0, 1, 2]


def test_meta_fields_are_copied(tmp_path: Path) -> None:
    path = _write_all_formats(tmp_path)["parquet"]
    docs = read_documents(path, meta_fields=["url", "absent"]).items
    assert [d.meta.get("url") for d in docs] == ["http://a", "http://b", None]
    assert "absent" not in docs[0].meta
    jdocs = read_documents(tmp_path / "c.jsonl", meta_fields=("url",)).items
    assert "url" not in jdocs[2].meta and jdocs[0].meta["url"] == "http://a"


def test_text_and_markdown_files_and_folder_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.md").write_text("# Title\n\nBody", encoding="utf-8")
    (tmp_path / "a.txt").write_text("plain text\n", encoding="utf-8")
    (tmp_path / "B.TXT").write_text("upper-case suffix", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("never read", encoding="utf-8")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.txt").write_text("never read", encoding="utf-8")
    (tmp_path / "notes.rst").write_text("unsupported suffix, ignored in folders", encoding="utf-8")
    _jsonl(tmp_path / "b" / "a.jsonl", [{"text": "from jsonl"}])
    res = read_documents(tmp_path)
    # Sorted by relative POSIX path: "B.TXT" < "a.txt" < "b/a.jsonl" < "b/z.md".
    expected = ["upper-case suffix", "plain text\n", "from jsonl", "# Title\n\nBody"]
    assert [d.text for d in res.items] == expected
    assert res.items[1].id == "h" + content_hash("plain text\n")[:16]
    assert res.items[1].meta == {"source": str(tmp_path / "a.txt")}


def test_derived_ids_and_integer_ids(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "c.jsonl", [{"text": "abc"}, {"id": 7, "text": "x"}, {"doc": "q", "text": "y"}])
    docs = read_documents(path).items
    assert docs[0].id == "h" + hashlib.sha256(b"abc").hexdigest()[:16]
    assert docs[1].id == "7"
    assert docs[2].id.startswith("h")
    by_doc = read_documents(path, id_field="doc", skip_invalid=True)
    assert [d.id for d in by_doc.items][2] == "q"
    # id_field=None ignores any id column.
    assert read_documents(path, id_field=None).items[1].id == "h" + content_hash("x")[:16]
    assert read_documents(path, text_field="text").items[0].text == "abc"


def test_content_hash_is_sha256_of_utf8() -> None:
    assert content_hash("héllo") == hashlib.sha256("héllo".encode()).hexdigest()
    assert len(content_hash("")) == 64


def test_document_is_frozen() -> None:
    doc = Document("a", "t")
    assert doc.meta == {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        doc.text = "u"  # type: ignore[misc]
    full = Document("b", "text", {"source": "x.jsonl", "line": 3})
    assert pickle.loads(pickle.dumps(full)) == full
    assert not hasattr(full, "__dict__")  # slots: no per-instance dict for 10^7 documents


def test_custom_text_field(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "c.jsonl", [{"body": "x", "text": 1}])
    assert read_documents(path, text_field="body").items[0].text == "x"


# Each bad JSONL line: (line content, expected field or None, text in the message).
BAD_JSONL = [
    (b'{"id": "m", "text": "ok"', None, "malformed JSON"),
    (b'{"id": "f", "body": "b"}', "text", "missing (the record has: id, body)"),
    (b'{"id": "w", "text": 12}', "text", "expected a string, got int"),
    (b'{"id": "n", "text": null}', "text", "got null"),
    (b'{"id": "e", "text": "  \\n\\t "}', "text", "empty"),
    (b'{"id": "u", "text": "bad \xff\xfe byte"}', "text", "invalid UTF-8"),
    (b'{"id": "a", "text": "again"}', "id", "duplicate id"),
    (b'{"id": ["x"], "text": "t"}', "id", "expected a string or an integer, got list"),
    (b'{"id": "", "text": "t"}', "id", "empty id"),
    (b'["not", "an", "object"]', None, "expected a JSON object, got list"),
]


@pytest.mark.parametrize(("raw", "field", "needle"), BAD_JSONL)
def test_jsonl_bad_line_message(tmp_path: Path, raw: bytes, field: str | None, needle: str) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"id": "a", "text": "good"}\n\n' + raw + b'\n{"id": "z", "text": "after"}\n')
    with pytest.raises(DataError) as info:
        read_documents(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:3: ")
    assert needle in msg
    assert info.value.line == 3 and info.value.path == str(path) and info.value.field == field
    if field is not None:
        assert f'field "{field}"' in msg
    res = read_documents(path, skip_invalid=True)
    assert [d.id for d in res.items] == ["a", "z"]
    assert res.skipped == 1 and res.errors == [msg]


def test_skip_invalid_counts_all_and_keeps_first_100(tmp_path: Path) -> None:
    lines = [b'{"id": "ok", "text": "fine"}'] + [raw for raw, _, _ in BAD_JSONL] * 15
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    res = read_documents(path, skip_invalid=True)
    # Row "a" (line 2 of the first pass) is the first with id "a", so it is valid once.
    assert [d.id for d in res.items] == ["ok", "a"]
    assert res.skipped == len(lines) - 2
    assert len(res.errors) == MAX_ERRORS
    assert res.errors[0].startswith(f"{path}:2: malformed JSON")


def test_duplicate_text_without_ids(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "c.jsonl", [{"text": "same"}, {"text": "other"}, {"text": "same"}])
    with pytest.raises(DataError, match=r'c\.jsonl:3: field "text": duplicate text'):
        read_documents(path)
    assert [d.text for d in read_documents(path, skip_invalid=True).items] == ["same", "other"]


def test_duplicate_ids_across_files_of_a_folder(tmp_path: Path) -> None:
    _jsonl(tmp_path / "a.jsonl", [{"id": "x", "text": "one"}])
    _jsonl(tmp_path / "b.jsonl", [{"id": "y", "text": "two"}, {"id": "x", "text": "three"}])
    with pytest.raises(DataError, match=r'b\.jsonl:2: field "id": duplicate id \'x\''):
        read_documents(tmp_path)


def test_json_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('[\n  {"id": "a", "text": "x"},\n  {"id": "b", "text": 3},\n  "str"\n]', encoding="utf-8")
    with pytest.raises(DataError, match=r'c\.json:3: field "text": expected a string, got int'):
        read_documents(path)
    res = read_documents(path, skip_invalid=True)
    assert res.skipped == 2 and res.errors[1].startswith(f"{path}:4: expected a JSON object, got str")
    path.write_text('[\n  {"id": "a", "text": "x"},\n  {"id": "b" "text": 3}\n]', encoding="utf-8")
    with pytest.raises(DataError, match=r"c\.json:3: malformed JSON") as info:
        read_documents(path, skip_invalid=True)  # a broken document cannot be skipped row by row
    assert info.value.line == 3
    path.write_text('{"a": [], "b": []}', encoding="utf-8")
    with pytest.raises(DataError, match="exactly one list"):
        read_documents(path)
    path.write_text('"just a string"', encoding="utf-8")
    with pytest.raises(DataError, match="expected a list of objects"):
        read_documents(path)


def test_json_invalid_utf8_inside_a_record(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_bytes(
        b'[\n{"id": "a", "text": "x"},\n{"id": "b", "text": "\xff"},\n{"id": "c", "text": "y"}\n]'
    )
    with pytest.raises(DataError, match=r'c\.json:3: field "text": invalid UTF-8'):
        read_documents(path)
    assert [d.id for d in read_documents(path, skip_invalid=True).items] == ["a", "c"]
    path.write_bytes(b'[\n{"id": "a", "text": "x"}\xff]')
    with pytest.raises(DataError, match=r"c\.json:2: invalid UTF-8"):
        read_documents(path)


def test_csv_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(
        b'id,text\n1,"a\nmulti-line row"\n2,\n3,"bad \xff"\n4,"x",extra\n5\n6,fine\n'
    )
    with pytest.raises(DataError) as info:
        read_documents(path)
    assert str(info.value) == f'{path}:4: field "text": empty or whitespace-only text'
    res = read_documents(path, skip_invalid=True)
    assert [d.id for d in res.items] == ["1", "6"]
    assert res.skipped == 4
    assert res.errors[1] == f'{path}:5: field "text": invalid UTF-8'
    assert res.errors[2].startswith(f"{path}:6: row has 3 fields")
    assert res.errors[3] == f'{path}:7: field "text": missing (the record has: id)'
    path.write_text("id,body\n1,x\n", encoding="utf-8")
    with pytest.raises(DataError, match=r'c\.csv:1: field "text": missing from the header'):
        read_documents(path, skip_invalid=True)


def test_parquet_errors_name_the_row(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c", "a"], "text": ["x", None, " ", "y"]}), path)
    with pytest.raises(DataError) as info:
        read_documents(path)
    assert str(info.value) == f'{path}: row 2: field "text": expected a string, got null'
    assert info.value.line == 2 and info.value.field == "text"
    res = read_documents(path, skip_invalid=True)
    assert [d.id for d in res.items] == ["a"]
    assert res.errors == [
        f'{path}: row 2: field "text": expected a string, got null',
        f'{path}: row 3: field "text": empty or whitespace-only text',
        f"{path}: row 4: field \"id\": duplicate id 'a'",
    ]
    pq.write_table(pa.table({"id": ["a"], "body": ["x"]}), path)
    with pytest.raises(DataError, match=r'field "text": missing column'):
        read_documents(path)
    pq.write_table(pa.table({"text": [1, 2]}), path)
    with pytest.raises(DataError, match=r'row 1: field "text": expected a string, got int'):
        read_documents(path)


def test_text_file_errors(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("   \n", encoding="utf-8")
    (tmp_path / "b.md").write_bytes(b"line one\nline \xff two\n")
    (tmp_path / "c.txt").write_text("ok", encoding="utf-8")
    with pytest.raises(DataError, match=r'a\.txt: field "text": empty'):
        read_documents(tmp_path)
    res = read_documents(tmp_path, skip_invalid=True)
    assert [d.text for d in res.items] == ["ok"]
    assert res.errors[1].startswith(f"{tmp_path / 'b.md'}:2: invalid UTF-8")


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_documents(tmp_path / "missing.jsonl")
    (tmp_path / "x.xml").write_text("<a/>")
    with pytest.raises(DataError, match="unsupported file type"):
        read_documents(tmp_path / "x.xml")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no"):
        read_documents(empty)
    with pytest.raises(ValueError, match="meta_fields"):
        read_documents(tmp_path / "x.xml", meta_fields="url")


def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a", "text": "x"}\r\n{"id": "b", "text": "y"}\r\n')
    assert [d.id for d in read_documents(path).items] == ["a", "b"]
    csv_path = tmp_path / "c.csv"
    csv_path.write_bytes(b"\xef\xbb\xbfid,text\r\n1,x\r\n")
    assert read_documents(csv_path).items[0].text == "x"


def test_iter_documents_streams(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"text": "b"}\n{"text": 1}\n{"text": "c"}\n')
    stream = iter_documents(path)
    assert isinstance(stream, DocumentStream)
    # Rows before the bad line are delivered before it is reached: nothing is read ahead.
    assert next(stream).text == "a"
    assert next(stream).text == "b"
    with pytest.raises(DataError, match=":3:"):
        next(stream)
    skipping = iter_documents(path, skip_invalid=True)
    assert [d.text for d in skipping] == ["a", "b", "c"]
    assert skipping.skipped == 1 and len(skipping.errors) == 1


def test_large_jsonl_streams_lazily(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(20_000):
            fh.write(json.dumps({"id": i, "text": f"document number {i}"}) + "\n")
    stream = iter_documents(path)
    first = [next(stream) for _ in range(3)]
    assert [d.id for d in first] == ["0", "1", "2"]
    assert sum(1 for _ in stream) == 20_000 - 3


def test_long_csv_field(tmp_path: Path) -> None:
    text = "word " * 100_000  # 500 kB, over the csv module's default 128 KiB field limit
    path = tmp_path / "c.csv"
    path.write_text("id,text\n1," + text + "\n", encoding="utf-8")
    assert read_documents(path).items[0].text == text
