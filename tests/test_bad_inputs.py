"""Bad-input suite (issue 11): malformed files for every reader and the commands that read them.

Each case mutates a valid file (truncation at a random byte, byte flips, deep nesting, lone
surrogates, NaN and huge numbers, duplicate keys, wrong types, missing fields, gzip damage...) and
requires either a valid result or a :class:`~equal.errors.DataError` on one line that names the file
(and ``file:line`` where it has a line): never another exception. The command-line part runs
``equal.cli.main`` itself, in-process for most cases and in a subprocess for a few, and requires exit
code 0, or exit code 1 with exactly one ``error:`` line on stderr that names an input, and no traceback.

The mutators and :func:`classify` are plain functions of a ``random.Random`` so that
``benchmarks/bench_badinput.py`` runs the same classes at a larger scale.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import os
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from equal.errors import DataError

# ---------------------------------------------------------------------------------------- valid bases

DOCS = [
    {"id": "d1", "text": "First document about gradient descent.", "url": "http://a"},
    {"id": 2, "text": "Second one,\nwith a newline and ünïcode."},
    {"id": "d3", "text": 'Third, "quoted", text', "meta": {"k": [1, 2.5, None]}},
]
MESSAGES = [
    {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
                  {"role": "assistant", "content": "Paris"}], "quality": 0.5},
]
SHAREGPT = [
    {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    {"conversations": [{"from": "human", "value": "Sum 1 and 2"}, {"from": "gpt", "value": "3"}]},
]
ALPACA = [
    {"instruction": "Add.", "input": "2+2", "output": "4"},
    {"instruction": "Name a colour.", "input": "", "output": "Blue"},
]
QA = [
    {"messages": [{"role": "user", "content": "Q1?"}, {"role": "assistant", "content": "A1"}], "id": "a1",
     "doc_id": "d1", "chunk": 0, "cluster": 1, "round": 0, "model": "", "prompt_version": "rules-v1",
     "extractor": "rules"},
    {"messages": [{"role": "user", "content": "Q2?"}, {"role": "assistant", "content": "A2"}], "id": "a2",
     "doc_id": "d2", "chunk": 0, "cluster": 0, "round": 1, "model": "", "prompt_version": "rules-v1",
     "extractor": "rules"},
]
LOG = [{"round": 0, "clusters": [1, 2], "rewards": [0.25, 0.5], "cost": {"docs": 4}},
       {"round": 1, "clusters": [0], "rewards": [0.75], "cost": {"docs": 2}}]
TASK = [{"id": "g1", "question": "Tom has 3 apples and eats 1. How many are left?", "answer": "3 - 1 = 2\n#### 2"},
        {"id": "g2", "question": "What is 5 times 4?", "answer": "5 * 4 = 20\n#### 20"}]


def jsonl_bytes(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    import csv

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["id", "text"], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def npy_bytes(X: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, X, allow_pickle=True)
    return buf.getvalue()


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    X = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------ mutators
# Each takes the file's bytes and a random.Random and returns new bytes.

NASTY_VALUES: list[str] = [
    "12", "null", "true", "[]", "{}", '""', '"   "', "NaN", "-Infinity", "1e999", "9" * 400,
    '"\\ud800"', '"a\\udfffb"', '"\\u0000"', "[" * 3000 + "]" * 3000, '{"a":' * 500 + "1" + "}" * 500,
    '["x", {"y": [null]}]', "-0.0", "123456789012345678901234567890",
]


def m_truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def m_flip(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return b"\xff"
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        b[rng.randrange(len(b))] = rng.randrange(256)
    return bytes(b)


def m_insert_bytes(data: bytes, rng: random.Random) -> bytes:
    junk = rng.choice([b"\x00", b"\xff\xfe", b"\xef\xbb\xbf", b"\xc3", b"\xed\xa0\x80", b"\r", b'"', b"\n\n",
                       b"{", b"]", b",", b"\\", b"\x1b[31m"])
    i = rng.randrange(len(data) + 1)
    return data[:i] + junk + data[i:]


def m_drop_line(data: bytes, rng: random.Random) -> bytes:
    lines = data.splitlines(keepends=True)
    if lines:
        del lines[rng.randrange(len(lines))]
    return b"".join(lines)


def m_line_not_object(data: bytes, rng: random.Random) -> bytes:
    lines = data.splitlines(keepends=True)
    top = rng.choice([b"[1, 2]", b'"text"', b"42", b"null", b"true", b"[" * 2000 + b"]" * 2000])
    lines.insert(rng.randrange(len(lines) + 1), top + b"\n")
    return b"".join(lines)


def _json_edit(data: bytes, rng: random.Random, edit: Callable[[dict[str, Any], random.Random], str]) -> bytes:
    """Replace one JSON line (JSONL) or element (a .json list) with an edited, re-serialised record."""
    text = data.decode("utf-8", "replace")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except ValueError:
            return data
        if not rows:
            return data
        i = rng.randrange(len(rows))
        parts = [json.dumps(r, ensure_ascii=False) for r in rows]
        parts[i] = edit(dict(rows[i]) if isinstance(rows[i], dict) else {}, rng)
        return ("[\n" + ",\n".join(parts) + "\n]").encode("utf-8")
    lines = text.splitlines(keepends=True)
    idx = [i for i, line in enumerate(lines) if line.strip()]
    if not idx:
        return data
    i = rng.choice(idx)
    try:
        rec = json.loads(lines[i])
    except ValueError:
        return data
    lines[i] = edit(rec if isinstance(rec, dict) else {}, rng) + "\n"
    return "".join(lines).encode("utf-8")


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _set_raw(rec: dict[str, Any], path: tuple[Any, ...], raw: str) -> str:
    """``rec`` serialised with the value at ``path`` replaced by the raw JSON text ``raw``."""
    marker = "\x01MARK\x01"
    target: Any = rec
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = marker
    return json.dumps(rec, ensure_ascii=False).replace(json.dumps(marker), raw, 1)


def m_wrong_value(data: bytes, rng: random.Random) -> bytes:
    def edit(rec: dict[str, Any], rng: random.Random) -> str:
        paths = _paths(rec)
        if not paths:
            return "{" + f'"text": {rng.choice(NASTY_VALUES)}' + "}"
        return _set_raw(rec, rng.choice(paths), rng.choice(NASTY_VALUES))

    return _json_edit(data, rng, edit)


def m_missing_field(data: bytes, rng: random.Random) -> bytes:
    def edit(rec: dict[str, Any], rng: random.Random) -> str:
        paths = [p for p in _paths(rec)]
        if paths:
            path = rng.choice(paths)
            target: Any = rec
            for key in path[:-1]:
                target = target[key]
            del target[path[-1]]
        return json.dumps(rec, ensure_ascii=False)

    return _json_edit(data, rng, edit)


def m_duplicate_key(data: bytes, rng: random.Random) -> bytes:
    def edit(rec: dict[str, Any], rng: random.Random) -> str:
        if not rec:
            return '{"text": "a", "text": "b"}'
        key = rng.choice(list(rec))
        body = json.dumps(rec, ensure_ascii=False)
        return body[:-1] + f", {json.dumps(key)}: {rng.choice(NASTY_VALUES[:12])}" + "}"

    return _json_edit(data, rng, edit)


def m_surrogate(data: bytes, rng: random.Random) -> bytes:
    def edit(rec: dict[str, Any], rng: random.Random) -> str:
        body = json.dumps(rec, ensure_ascii=True)
        spots = [i for i, c in enumerate(body) if c == '"']
        esc = rng.choice(["\\ud800", "\\udc00", "\\udbff", "\\ud83d"])
        if not spots:
            return '{"text": "' + esc + '"}'
        i = rng.choice(spots) + 1
        return body[:i] + esc + body[i:]

    return _json_edit(data, rng, edit)


def m_deep(data: bytes, rng: random.Random) -> bytes:
    def edit(rec: dict[str, Any], rng: random.Random) -> str:
        n = rng.choice([101, 500, 999, 1500, 20000])
        paths = _paths(rec)
        raw = "[" * n + "]" * n
        if not paths:
            return '{"text": ' + raw + "}"
        return _set_raw(rec, rng.choice(paths), raw)

    return _json_edit(data, rng, edit)


def m_empty(data: bytes, rng: random.Random) -> bytes:
    return rng.choice([b"", b"\n", b"   \n\n", b"\xef\xbb\xbf", b"\x00" * 16, b"\xff\xfe{\x00}\x00"])


BYTE_MUTATORS = {"truncate": m_truncate, "flip": m_flip, "insert": m_insert_bytes, "empty": m_empty}
LINE_MUTATORS = {"drop_line": m_drop_line, "not_object": m_line_not_object}
JSON_MUTATORS = {"wrong_value": m_wrong_value, "missing_field": m_missing_field, "duplicate_key": m_duplicate_key,
                 "surrogate": m_surrogate, "deep": m_deep}


def gzip_mutator(inner: dict[str, Callable[[bytes, random.Random], bytes]]
                 ) -> Callable[[bytes, random.Random], bytes]:
    """Mutate the content then gzip it, or damage the gzip stream itself (not gzip, truncated, flipped)."""
    def mutate(data: bytes, rng: random.Random) -> bytes:
        content = gzip.decompress(data)
        kind = rng.randrange(4)
        if kind == 0:  # content damage, well compressed
            return gzip.compress(rng.choice(list(inner.values()))(content, rng), mtime=0)
        if kind == 1:  # plain text named .gz
            return content
        if kind == 2:  # a truncated stream
            return data[: rng.randrange(len(data))]
        return m_flip(data, rng)

    return mutate


def npy_mutator(data: bytes, rng: random.Random) -> bytes:
    """Damaged .npy bytes, or a well-formed .npy of an array no command should accept silently."""
    X = np.load(io.BytesIO(data))
    kind = rng.randrange(12)
    if kind == 0:
        return m_truncate(data, rng)
    if kind == 1:
        return m_flip(data, rng)
    Y = X.astype(np.float64).copy()
    i = rng.randrange(len(Y))
    if kind == 2:
        Y[i, rng.randrange(Y.shape[1])] = rng.choice([np.nan, np.inf, -np.inf])
    elif kind == 3:
        Y[i] = 0.0
    elif kind == 4:
        Y[i, 0] = rng.choice([1e16, 1e30, -1e300])
    elif kind == 5:
        return npy_bytes(Y.astype(np.complex64) * (1 + 1j))
    elif kind == 6:
        return npy_bytes(np.array([["a", 1]], dtype=object))
    elif kind == 7:
        return npy_bytes(Y[0])
    elif kind == 8:
        return npy_bytes(Y[None])
    elif kind == 9:
        return npy_bytes(Y[:0])
    elif kind == 10:
        return npy_bytes(Y[:, :0])
    else:
        return npy_bytes(Y.astype(rng.choice([np.int8, np.float16, bool, np.uint64])))
    return npy_bytes(Y)


def text_mutators() -> dict[str, Callable[[bytes, random.Random], bytes]]:
    return {**BYTE_MUTATORS, **LINE_MUTATORS}


def json_mutators() -> dict[str, Callable[[bytes, random.Random], bytes]]:
    return {**BYTE_MUTATORS, **LINE_MUTATORS, **JSON_MUTATORS}


# -------------------------------------------------------------------------------------------- readers


@dataclass(frozen=True)
class Reader:
    """A reader under test: file name, valid content, mutators, and the call (path, skip_invalid)."""

    name: str
    filename: str
    base: Callable[[], bytes]
    mutators: Callable[[], dict[str, Callable[[bytes, random.Random], bytes]]]
    call: Callable[[Path, bool], Any]


def _docs(path: Path, skip: bool) -> Any:
    from equal.data import read_documents

    return read_documents(path, skip_invalid=skip, meta_fields=("url", "meta"))


def _stream(path: Path, skip: bool) -> Any:
    from equal.data import iter_documents

    return sum(1 for _ in iter_documents(path, skip_invalid=skip))


def _sft(path: Path, skip: bool) -> Any:
    from equal.data import read_sft

    return read_sft(path, skip_invalid=skip)


def _qa(path: Path, skip: bool) -> Any:
    from equal.data.qa import read_qa_pairs

    return read_qa_pairs(path)


def _log(path: Path, skip: bool) -> Any:
    from equal.data import read_jsonl

    return read_jsonl(path)


def _task(path: Path, skip: bool) -> Any:
    from equal.evaluate import load_task

    return load_task(path, metric="exact-match", skip_invalid=skip)


def _extract_target(path: Path, skip: bool) -> Any:
    from equal.config import DataConfig
    from equal.pipeline.setup import read_target

    return read_target(DataConfig(corpus=str(path), target=str(path), skip_invalid=skip))


def _extract_corpus(path: Path, skip: bool) -> Any:
    from equal.data import chunk_documents, read_documents

    # What `equal extract` does first with --corpus (pipeline.setup._read_corpus): read, then chunk.
    return chunk_documents(read_documents(path, skip_invalid=skip).items, 8)


def _train(path: Path, skip: bool) -> Any:
    from equal.train import read_examples

    return read_examples(path, skip_invalid=skip)


READERS = [
    Reader("documents.jsonl", "corpus.jsonl", lambda: jsonl_bytes(DOCS), json_mutators, _docs),
    Reader("documents.json", "corpus.json", lambda: json.dumps(DOCS, indent=1).encode(), json_mutators, _docs),
    Reader("documents.csv", "corpus.csv", lambda: csv_bytes(DOCS), text_mutators, _docs),
    Reader("documents.parquet", "corpus.parquet", lambda: parquet_bytes([{"id": "a", "text": "x"},
                                                                          {"id": "b", "text": "y"}]),
           lambda: dict(BYTE_MUTATORS), _docs),
    Reader("documents.txt", "doc.txt", lambda: b"A text file.\nTwo lines.\n", text_mutators, _docs),
    Reader("documents.jsonl.gz", "corpus.jsonl.gz", lambda: gzip.compress(jsonl_bytes(DOCS), mtime=0),
           lambda: {"gzip": gzip_mutator(json_mutators())}, _docs),
    Reader("documents.csv.gz", "corpus.csv.gz", lambda: gzip.compress(csv_bytes(DOCS), mtime=0),
           lambda: {"gzip": gzip_mutator(text_mutators())}, _docs),
    Reader("iter_documents", "stream.jsonl", lambda: jsonl_bytes(DOCS), json_mutators, _stream),
    Reader("sft.messages", "pool.jsonl", lambda: jsonl_bytes(MESSAGES), json_mutators, _sft),
    Reader("sft.sharegpt", "pool.json", lambda: json.dumps(SHAREGPT).encode(), json_mutators, _sft),
    Reader("sft.alpaca.gz", "pool.jsonl.gz", lambda: gzip.compress(jsonl_bytes(ALPACA), mtime=0),
           lambda: {"gzip": gzip_mutator(json_mutators())}, _sft),
    Reader("sft.parquet", "pool.parquet", lambda: parquet_bytes(ALPACA), lambda: dict(BYTE_MUTATORS), _sft),
    Reader("qa.jsonl", "qa.jsonl", lambda: jsonl_bytes(QA), json_mutators, _qa),
    Reader("iter_jsonl", "rounds.jsonl", lambda: jsonl_bytes(LOG), json_mutators, _log),
    Reader("evaluate.task", "task.jsonl", lambda: jsonl_bytes(TASK), json_mutators, _task),
    Reader("extract.corpus", "corpus.jsonl", lambda: jsonl_bytes(DOCS), json_mutators, _extract_corpus),
    Reader("extract.target", "target.jsonl", lambda: jsonl_bytes(MESSAGES), json_mutators, _extract_target),
    Reader("train.data", "train.jsonl", lambda: jsonl_bytes(MESSAGES), json_mutators, _train),
]
READER_BY_NAME = {r.name: r for r in READERS}


def classify(call: Callable[[], Any], paths: list[Path]) -> tuple[str, str]:
    """Run ``call``: ``("valid", "")``, ``("line", msg)`` for a one-line DataError naming ``file:line``,
    ``("file", msg)`` for one naming a file without a line, or ``("bad", why)`` for anything else."""
    try:
        call()
    except DataError as exc:
        msg = str(exc)
        if "\n" in msg or "\r" in msg:
            return "bad", f"multi-line DataError: {msg!r}"
        named = [p for p in paths if msg.startswith(str(p))]
        if not named:
            return "bad", f"DataError not naming the file: {msg!r}"
        if exc.line is not None:
            p = str(named[0])
            if not (msg.startswith(f"{p}:{exc.line}: ") or msg.startswith(f"{p}: row {exc.line}: ")):
                return "bad", f"DataError with line={exc.line} not written as file:line: {msg!r}"
            return "line", msg
        return "file", msg
    except Exception as exc:  # the point of the suite: nothing else may escape
        return "bad", f"{type(exc).__name__}: {exc}"[:300]
    return "valid", ""


def run_reader_case(reader: Reader, folder: Path, mutator: str, rng: random.Random, skip: bool) -> tuple[str, str]:
    path = folder / reader.filename
    path.write_bytes(reader.mutators()[mutator](reader.base(), rng))
    return classify(lambda: reader.call(path, skip), [path])


# ----------------------------------------------------------------------------------- library tests


@pytest.mark.parametrize("name", [r.name for r in READERS])
def test_reader_bases_are_valid(tmp_path: Path, name: str) -> None:
    reader = READER_BY_NAME[name]
    path = tmp_path / reader.filename
    path.write_bytes(reader.base())
    assert classify(lambda: reader.call(path, False), [path]) == ("valid", "")


@pytest.mark.parametrize("name", [r.name for r in READERS])
def test_mutated_files_give_a_result_or_a_one_line_data_error(tmp_path_factory: pytest.TempPathFactory,
                                                             name: str) -> None:
    reader = READER_BY_NAME[name]
    names = sorted(reader.mutators())

    @settings(max_examples=30, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutator=st.sampled_from(names), rng=st.randoms(use_true_random=False), skip=st.booleans())
    def check(mutator: str, rng: random.Random, skip: bool) -> None:
        folder = tmp_path_factory.mktemp("case")
        outcome, detail = run_reader_case(reader, folder, mutator, rng, skip)
        assert outcome != "bad", f"{mutator} (skip_invalid={skip}): {detail}"

    check()


SPECIFIC = [
    # (file name, bytes, needle in the message, line named)
    ("deep.jsonl", b'{"text": "x", "m": ' + b"[" * 5000 + b"]" * 5000 + b"}\n", "nested deeper than 100", 1),
    ("surrogate.jsonl", b'{"text": "ok"}\n{"text": "a\\ud800b"}\n', 'field "text": lone surrogate U+D800', 2),
    ("nan.jsonl", b'{"text": "ok", "id": NaN}\n', 'field "id": NaN is not valid JSON', 1),
    ("inf.jsonl", b'{"text": "ok", "id": 1e400}\n', 'field "id": number 1e400 is out of range', 1),
    ("huge.jsonl", b'{"text": "ok", "id": ' + b"7" * 5000 + b"}\n", "integer of 5000 digits", 1),
    ("dup.jsonl", b'{"text": "a", "text": "b"}\n', 'field "text": duplicate key', 1),
    ("notgz.jsonl.gz", b'{"text": "plain"}\n', "not a valid gzip file", 1),
    ("nul.csv", b"id,text\n1,a\x00b\n", 'field "text": NUL byte', 2),
    ("utf16.jsonl", '{"text": "x"}\n'.encode("utf-16"), "UTF-16", 1),
    ("deep.json", b"[" + b"[" * 3000 + b"]" * 3000 + b"]", "nested deeper than 100", 1),
    ("newline-key.jsonl", b'{"te\\nxt": "a"}\n', "te\\nxt", 1),
    ("dup-column.csv", b"id,text,text\n1,a,b\n", 'field "text": duplicate column', 1),
    ("bom-mid.jsonl", b'{"text": "a"}\n{"text": "b", "id": 1, "id": 2}\n', 'field "id": duplicate key', 2),
]


@pytest.mark.parametrize(("name", "raw", "needle", "line"), SPECIFIC)
def test_specific_classes_name_file_line_and_field(tmp_path: Path, name: str, raw: bytes, needle: str,
                                                   line: int) -> None:
    from equal.data import read_documents

    path = tmp_path / name
    path.write_bytes(raw)
    for skip in (False, True):
        with pytest.raises(DataError) as info:
            res = read_documents(path, skip_invalid=skip)
            if res.skipped:  # skipped rows are counted with the same message, and nothing valid is left
                assert needle in res.errors[-1]
                raise DataError(res.errors[-1])
        msg = str(info.value)
        assert msg.startswith(f"{path}:{line}: ") and needle in msg and "\n" not in msg, msg


def test_truncated_gzip_names_the_line_reached(tmp_path: Path) -> None:
    from equal.data import read_documents

    rows = [{"id": f"d{i}", "text": os.urandom(40).hex()} for i in range(2000)]
    data = gzip.compress(jsonl_bytes(rows), mtime=0)
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    for skip in (False, True):
        with pytest.raises(DataError, match="truncated gzip file") as info:
            read_documents(path, skip_invalid=skip)
        assert info.value.path == str(path) and 1 < info.value.line < 2000  # type: ignore[operator]
        assert str(info.value).startswith(f"{path}:{info.value.line}: ")


def test_skip_invalid_skips_refused_rows_and_keeps_the_rest(tmp_path: Path) -> None:
    from equal.data import read_documents, read_sft

    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"text": "a\\ud800"}\n{"text": "good"}\n{"text": "x", "id": NaN}\n'
                     b'{"text": ' + b"[" * 200 + b"]" * 200 + b'}\n{"text": "\\ud83d\\ude00 fine"}\n')
    res = read_documents(path, skip_invalid=True)
    assert [d.text for d in res.items] == ["good", "\U0001F600 fine"]
    assert res.skipped == 3 and [e.split(": ")[0] for e in res.errors] == [f"{path}:1", f"{path}:3", f"{path}:4"]
    pool = tmp_path / "p.json"
    pool.write_text('[{"instruction": "a", "output": "b"},\n{"instruction": "c\\udc00", "output": "d"}]')
    got = read_sft(pool, skip_invalid=True)
    assert len(got.records) == 1 and got.errors[0].startswith(f'{pool}:2: field "instruction": lone surrogate')


def test_qa_log_errors_name_line_and_field(tmp_path: Path) -> None:
    from equal.data.qa import read_qa_pairs

    path = tmp_path / "qa.jsonl"
    bad = dict(QA[1], round="one")
    path.write_bytes(jsonl_bytes([QA[0], bad]))
    with pytest.raises(DataError) as info:
        read_qa_pairs(path)
    assert str(info.value).startswith(f'{path}:2: field "round": ') and info.value.field == "round"
    path.write_bytes(jsonl_bytes(QA) + b'{"messages": [], "doc_id": "x"')  # a torn last append is ignored
    assert [p.id for p in read_qa_pairs(path)] == ["a1", "a2"]


BAD_ARRAYS = {
    "nan": (np.array([[1.0, 0.0], [np.nan, 1.0]]), "NaN or infinity (row 1)"),
    "inf": (np.array([[np.inf, 0.0]]), "NaN or infinity (row 0)"),
    "zero": (np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), "all-zero row (row 2)"),
    "huge": (np.array([[1.0, 0.0], [1e30, 1.0]]), "absurd magnitude: row 1"),
    "huge64": (np.array([[1e300, 0.0]]), "absurd magnitude: row 0"),
    "complex": (np.ones((2, 2), dtype=np.complex64), "must be real numbers"),
    "object": (np.array([[1.0, "a"]], dtype=object), "must be numeric"),
    "1d": (np.ones(3), "2-D"),
    "empty": (np.zeros((0, 3)), "n=0 rows"),
    "no-columns": (np.zeros((2, 0)), "d=0 columns"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARRAYS))
def test_check_embeddings_refuses_bad_arrays(case: str) -> None:
    from equal import check_embeddings

    X, needle = BAD_ARRAYS[case]
    with pytest.raises(ValueError, match=r"^Input X ") as info:
        check_embeddings(X, normalized=False)
    assert needle in str(info.value)


def test_check_embeddings_still_accepts_what_it_did() -> None:
    from equal import check_embeddings

    X = unit_rows(10, 4)
    assert check_embeddings(X) is X or np.array_equal(check_embeddings(X), X)
    assert check_embeddings(np.array([[3, 4]], dtype=np.int64), normalized=False).dtype == np.float32
    assert check_embeddings(np.zeros((0, 4)), min_rows=0, normalized=False).shape == (0, 4)
    big = np.ones((1 << 20 // 4 + 3, 4), dtype=np.float32)  # more than one row block
    big[-1] = 0
    with pytest.raises(ValueError, match=f"row {len(big) - 1}"):
        check_embeddings(big, normalized=False)


@pytest.mark.parametrize("case", sorted(BAD_ARRAYS))
def test_load_embeddings_names_the_file(tmp_path: Path, case: str) -> None:
    from equal.pipeline.jobs import load_embeddings

    path = tmp_path / f"{case}.npy"
    path.write_bytes(npy_bytes(BAD_ARRAYS[case][0]))
    with pytest.raises(DataError) as info:
        load_embeddings(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


# -------------------------------------------------------------------------------------- command line


def run_main(args: list[str]) -> tuple[int, str, str]:
    """Run ``equal.cli.main`` in this process with ``args``: (exit code, stdout, stderr)."""
    from equal.cli import main

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers = list(root.handlers)
    argv = sys.argv
    sys.argv = ["equal", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # a traceback from the real entry point
                import traceback

                traceback.print_exc(file=err)
                code = 99
    finally:
        sys.argv = argv
        for h in root.handlers[:]:  # the -v callback's basicConfig bound a handler to our buffer
            if h not in handlers:
                root.removeHandler(h)
    return code, out.getvalue(), err.getvalue()


def check_cli(code: int, stderr: str, inputs: list[Path], skip: bool = False) -> str:
    """``"ok"``, ``"line"``/``"file"`` (a clean error naming an input, with or without its line), or raise."""
    assert "Traceback" not in stderr, stderr
    if code == 0:
        return "ok"
    assert code == 1, (code, stderr)
    lines = stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    # Under --skip-invalid a logged warning about the skipped rows may come first; nothing else may.
    others = [line for line in lines if not line.startswith("error: ")]
    assert len(errors) == 1 and (not others if not skip else all(o.startswith("WARNING") for o in others)), stderr
    msg = errors[0][len("error: "):]
    assert any(str(p) in msg for p in inputs), msg
    return "line" if any((msg.startswith(f"{p}:") and msg[len(str(p)) + 1:].split(":")[0].isdigit())
                         or f"{p}: row " in msg for p in inputs) else "file"


@dataclass(frozen=True)
class Command:
    """A command-line case: which input file is mutated, its valid content and mutators, the arguments."""

    name: str
    filename: str
    base: Callable[[], bytes]
    mutators: Callable[[], dict[str, Callable[[bytes, random.Random], bytes]]]
    args: Callable[[Path, Path], list[str]]  # (mutated file, folder) -> argv
    setup: Callable[[Path], None] = lambda folder: None


def _npy_base() -> bytes:
    return npy_bytes(unit_rows(100, 8))


def _write_run(folder: Path) -> None:
    (folder / "run").mkdir(exist_ok=True)


def _write_predictions(folder: Path) -> None:
    (folder / "pred.jsonl").write_bytes(jsonl_bytes([{"id": "g1", "generation": "2"}]))


def _write_ok_npy(folder: Path) -> None:
    (folder / "ok.npy").write_bytes(npy_bytes(unit_rows(20, 8, seed=1)))


COMMANDS = [
    Command("ot", "a.npy", _npy_base, lambda: {"npy": npy_mutator},
            lambda f, d: ["ot", str(f), str(d / "ok.npy"), "--json"], _write_ok_npy),
    Command("cluster", "a.npy", _npy_base, lambda: {"npy": npy_mutator},
            lambda f, d: ["cluster", str(f), "--k", "2", "--out", str(d / "c.parquet"), "--json"]),
    Command("diversity", "a.npy", _npy_base, lambda: {"npy": npy_mutator},
            lambda f, d: ["diversity", str(f), "--json"]),
    Command("select", "a.npy", _npy_base, lambda: {"npy": npy_mutator},
            lambda f, d: ["select", str(f), "--method", "random", "--k", "2", "--out", str(d / "s.jsonl"),
                          "--json"]),
    Command("export", "run/qa.jsonl", lambda: jsonl_bytes(QA), json_mutators,
            lambda f, d: ["export", str(d / "run"), "--out", str(d / "x.jsonl"), "--json"], _write_run),
    Command("evaluate", "task.jsonl", lambda: jsonl_bytes(TASK), json_mutators,
            lambda f, d: ["evaluate", "--predictions", str(d / "pred.jsonl"), "--task", str(f),
                          "--metric", "exact-match", "--json"], _write_predictions),
    Command("evaluate.skip", "task.jsonl.gz", lambda: gzip.compress(jsonl_bytes(TASK), mtime=0),
            lambda: {"gzip": gzip_mutator(json_mutators())},
            lambda f, d: ["evaluate", "--predictions", str(d / "pred.jsonl"), "--task", str(f),
                          "--metric", "exact-match", "--skip-invalid", "--json"], _write_predictions),
]
COMMAND_BY_NAME = {c.name: c for c in COMMANDS}
# Run by benchmarks/bench_badinput.py only: a valid input loads the MiniLM model (about a second per
# case, a minute for the first), too slow for the unit tests, which run `embed` in a subprocess instead.
SLOW_COMMANDS = [
    Command("embed", "corpus.jsonl", lambda: jsonl_bytes(DOCS), json_mutators,
            lambda f, d: ["embed", str(f), "--out", str(d / "e.npy"), "--json"]),
    Command("embed.skip", "pool.jsonl.gz", lambda: gzip.compress(jsonl_bytes(MESSAGES), mtime=0),
            lambda: {"gzip": gzip_mutator(json_mutators())},
            lambda f, d: ["embed", str(f), "--out", str(d / "e.npy"), "--skip-invalid", "--json"]),
]


def run_command_case(command: Command, folder: Path, mutator: str, rng: random.Random) -> str:
    command.setup(folder)
    path = folder / command.filename
    path.write_bytes(command.mutators()[mutator](command.base(), rng))
    code, _, stderr = run_main(command.args(path, folder))
    inputs = [path, path.parent, folder / "pred.jsonl", folder / "ok.npy"]
    return check_cli(code, stderr, inputs, skip="--skip-invalid" in command.args(path, folder))


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EQUAL_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("name", sorted(COMMAND_BY_NAME))
def test_command_bases_succeed(tmp_path: Path, name: str, cache_dir: None) -> None:
    command = COMMAND_BY_NAME[name]
    command.setup(tmp_path)
    path = tmp_path / command.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(command.base())
    code, stdout, stderr = run_main(command.args(path, tmp_path))
    assert code == 0, stderr
    json.loads(stdout)


@pytest.mark.parametrize("name", sorted(COMMAND_BY_NAME))
def test_commands_on_mutated_inputs_exit_0_or_print_one_line(tmp_path_factory: pytest.TempPathFactory,
                                                             name: str, cache_dir: None) -> None:
    command = COMMAND_BY_NAME[name]
    names = sorted(command.mutators())

    @settings(max_examples=10, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutator=st.sampled_from(names), rng=st.randoms(use_true_random=False))
    def check(mutator: str, rng: random.Random) -> None:
        folder = tmp_path_factory.mktemp("cli")
        (folder / command.filename).parent.mkdir(parents=True, exist_ok=True)
        run_command_case(command, folder, mutator, rng)

    check()


SUBPROCESS_CASES = [
    # (input file, its bytes, argv after "equal" with {f} for the file and {d} for the folder, needle)
    ("c.jsonl.gz", gzip.compress(jsonl_bytes([{"text": os.urandom(30).hex()} for _ in range(3000)]))[:20000],
     ["embed", "{f}", "--out", "{d}/e.npy"], "truncated gzip file"),
    ("c.jsonl.gz", jsonl_bytes(DOCS), ["embed", "{f}", "--out", "{d}/e.npy", "--skip-invalid"],
     "not a valid gzip file"),
    # `extract` and `train` are covered by the in-process reader cases (their setup readers): their
    # subprocesses load an embedder or a tokenizer for 20-25 s before they read the data.
    ("z.npy", npy_bytes(np.array([[1.0, 0.0], [0.0, 0.0]], dtype=np.float32)), ["ot", "{f}", "{f}"],
     "all-zero row (row 1)"),
    ("pool.jsonl", b'{"instruction": "a", "output": NaN}\n',
     ["select", "{f}", "--method", "random", "--k", "1", "--out", "{d}/s.jsonl"], "NaN is not valid JSON"),
]


@pytest.mark.parametrize(("name", "raw", "argv", "needle"), SUBPROCESS_CASES,
                         ids=[c[2][0] + "-" + c[3].split()[0] for c in SUBPROCESS_CASES])
def test_real_entry_point_prints_one_line(tmp_path: Path, name: str, raw: bytes, argv: list[str],
                                          needle: str) -> None:
    path = tmp_path / name
    path.write_bytes(raw)
    args = [a.replace("{f}", str(path)).replace("{d}", str(tmp_path)) for a in argv]
    env = {**os.environ, "EQUAL_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "equal.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}:") and needle in lines[0], proc.stderr
    assert proc.stdout == ""
