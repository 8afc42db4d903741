"""Row sources shared by the document and SFT readers.

Each source turns one file into a stream of ``(Loc, value)`` pairs, where ``value`` is the row as a
dict or, for a row that cannot be read (malformed JSON, invalid UTF-8, not an object), a
:class:`~equal.errors.DataError` the caller raises or skips. Problems that make the whole file
unreadable (unsupported type, broken JSON document, missing CSV/Parquet column) are raised at once,
whatever ``skip_invalid`` says, because no row of such a file can be trusted.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from equal.errors import DataError

__all__ = [
    "DOCUMENT_SUFFIXES",
    "SFT_SUFFIXES",
    "Loc",
    "error",
    "file_kind",
    "iter_files",
    "rows",
    "type_name",
]

_BOM = b"\xef\xbb\xbf"

#: File kinds by suffix; a trailing ``.gz`` is allowed on the text formats.
_KINDS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".txt": "txt",
    ".md": "txt",
}
DOCUMENT_SUFFIXES = tuple(_KINDS)
SFT_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet")


class Loc:
    """Where a row came from: file, 1-based number and whether that number is a line or a row."""

    __slots__ = ("kind", "line", "path")

    def __init__(self, path: str, line: int | None, kind: str) -> None:
        self.path = path
        self.line = line
        self.kind = kind  # "line" (text formats), "row" (Parquet, number = row index + 1), "file"


def type_name(value: object) -> str:
    """JSON-flavoured name of a value's type for error messages (``null``, ``list``, ``int``...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return type(value).__name__


def error(loc: Loc, message: str, field: str | None = None, *, prefix: bool = True) -> DataError:
    """Build a DataError at ``loc``: ``file:line: field "f": message`` (``file: row n: ...`` for Parquet)."""
    if field is not None and prefix:
        message = f'field "{field}": {message}'
    if loc.kind == "row":
        err = DataError(f"row {loc.line}: {message}", path=loc.path, field=field)
        err.line = loc.line
        return err
    return DataError(message, path=loc.path, line=loc.line, field=field)


def file_kind(path: Path) -> str | None:
    """The reader kind of ``path`` from its suffix (case-insensitive, optional ``.gz``), or None."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
        kind = _KINDS.get(os.path.splitext(name)[1])
        return None if kind == "parquet" else kind
    return _KINDS.get(os.path.splitext(name)[1])


def _open_binary(path: Path) -> IO[bytes]:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def iter_files(path: Path, suffixes: Sequence[str]) -> list[Path]:
    """The files to read for ``path``: itself, or a folder's supported files in sorted order.

    Folders are walked recursively; names starting with a dot (``.git``, editor temp files) are
    skipped; the order is the sorted relative POSIX path, so it does not depend on the file system.
    """
    if not path.exists():
        raise DataError("no such file or directory", path=str(path))
    allowed = {_KINDS[s] for s in suffixes}
    if path.is_file():
        kind = file_kind(path)
        if kind is None or kind not in allowed:
            raise DataError(
                f"unsupported file type; expected one of {', '.join(suffixes)} (optionally .gz, not parquet)",
                path=str(path),
            )
        return [path]
    found: list[tuple[str, Path]] = []
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            p = Path(root, name)
            kind = file_kind(p)
            if kind is not None and kind in allowed:
                found.append((p.relative_to(path).as_posix(), p))
    if not found:
        raise DataError(f"folder holds no {', '.join(suffixes)} files", path=str(path))
    return [p for _, p in sorted(found)]


def rows(
    path: Path,
    *,
    required: Sequence[str] = (),
    columns: Sequence[str] | None = None,
    text_field: str = "text",
) -> Iterator[tuple[Loc, dict[str, Any] | DataError]]:
    """Rows of one file, dispatched on its kind.

    Parameters
    ----------
    path : Path
        A file whose kind :func:`file_kind` knows.
    required : sequence of str
        Columns a CSV header or Parquet schema must have (checked once, as a file-level error).
    columns : sequence of str or None
        Parquet columns worth reading (those present); None reads all.
    text_field : str
        Key under which a ``.txt``/``.md`` file's content is returned.
    """
    kind = file_kind(path)
    if kind == "jsonl":
        return _jsonl_rows(path)
    if kind == "json":
        return _json_rows(path)
    if kind == "csv":
        return _csv_rows(path, required)
    if kind == "parquet":
        return _parquet_rows(path, required, columns)
    if kind == "txt":
        return _txt_rows(path, text_field)
    raise DataError("unsupported file type", path=str(path))


def _jsonl_rows(path: Path) -> Iterator[tuple[Loc, dict[str, Any] | DataError]]:
    name = str(path)
    # Bytes, decoded line by line: an invalid UTF-8 sequence then costs one row, and its message
    # can name the line, instead of failing the whole file at the first bad byte.
    with _open_binary(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[3:]
            loc = Loc(name, lineno, "line")
            bad_byte = -1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad_byte = exc.start
                text = raw.decode("utf-8", "surrogateescape")
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except ValueError as exc:
                if bad_byte >= 0:
                    yield loc, error(loc, f"invalid UTF-8 (byte {bad_byte} of the line)")
                    continue
                msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                col = f" at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
                yield loc, error(loc, f"malformed JSON: {msg}{col}")
                continue
            if bad_byte >= 0:
                where = f" (byte {bad_byte} of the line)"
                if isinstance(obj, dict):
                    yield loc, _utf8_error(loc, obj, where)
                else:
                    yield loc, error(loc, f"invalid UTF-8{where}")
                continue
            if not isinstance(obj, dict):
                yield loc, error(loc, f"expected a JSON object, got {type_name(obj)}")
                continue
            yield loc, obj


_WS = re.compile(r"[ \t\n\r]*")


def _skip_ws(text: str, i: int) -> int:
    return _WS.match(text, i).end()  # type: ignore[union-attr]


def _array_items(text: str, i: int, decoder: json.JSONDecoder) -> tuple[list[tuple[int, Any]], int]:
    """Elements of the (valid) JSON array starting at ``text[i] == "["`` with their start offsets."""
    items: list[tuple[int, Any]] = []
    i = _skip_ws(text, i + 1)
    if text[i] == "]":
        return items, i + 1
    while True:
        obj, j = decoder.raw_decode(text, i)
        items.append((i, obj))
        i = _skip_ws(text, j)
        if text[i] == ",":
            i = _skip_ws(text, i + 1)
            continue
        return items, i + 1


def _object_lists(text: str, i: int, decoder: json.JSONDecoder) -> list[tuple[str, list[tuple[int, Any]]]]:
    """List-valued members of the (valid) JSON object at ``text[i] == "{"``, elements with offsets."""
    found: list[tuple[str, list[tuple[int, Any]]]] = []
    i = _skip_ws(text, i + 1)
    if text[i] == "}":
        return found
    while True:
        key, i = decoder.raw_decode(text, i)
        i = _skip_ws(text, i)
        i = _skip_ws(text, i + 1)  # the ":"
        if text[i] == "[":
            items, i = _array_items(text, i, decoder)
            found.append((key, items))
        else:
            _, i = decoder.raw_decode(text, i)
        i = _skip_ws(text, i)
        if text[i] == ",":
            i = _skip_ws(text, i + 1)
            continue
        return found


def _has_surrogates(obj: Any) -> bool:
    # Bytes that were not UTF-8 were decoded with surrogateescape into lone surrogates, which
    # cannot be encoded back; this finds them anywhere inside a value.
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _utf8_error(loc: Loc, obj: dict[str, Any], where: str) -> DataError:
    """The invalid-UTF-8 error for a record decoded with surrogateescape, naming the bad field."""
    for key, value in obj.items():
        if _has_surrogates(key) or _has_surrogates(value):
            return error(loc, f"invalid UTF-8{where}", str(key).encode("utf-8", "replace").decode("utf-8"))
    return error(loc, f"invalid UTF-8{where}")


def _json_rows(path: Path) -> Iterator[tuple[Loc, dict[str, Any] | DataError]]:
    name = str(path)
    with _open_binary(path) as fh:
        data = fh.read()
    if data.startswith(_BOM):
        data = data[3:]
    bad_utf8: tuple[int, int] | None = None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_utf8 = (data.count(b"\n", 0, exc.start) + 1, exc.start)
        text = data.decode("utf-8", "surrogateescape")
    del data
    try:
        # Validate the whole document first so the scanner below can assume well-formed JSON.
        top = json.loads(text)
    except json.JSONDecodeError as exc:
        if bad_utf8 is not None:
            msg = f"invalid UTF-8 (byte {bad_utf8[1]} of the file)"
            raise DataError(msg, path=name, line=bad_utf8[0]) from None
        msg = f"malformed JSON: {exc.msg} at column {exc.colno}"
        raise DataError(msg, path=name, line=exc.lineno) from None
    decoder = json.JSONDecoder()
    start = _skip_ws(text, 0)
    if isinstance(top, list):
        items, _ = _array_items(text, start, decoder)
    elif isinstance(top, dict):
        lists = _object_lists(text, start, decoder)
        if len(lists) != 1:
            keys = ", ".join(repr(k) for k, _ in lists) or "none"
            raise DataError(
                f"expected a list of objects, or an object holding exactly one list; "
                f"this object holds {len(lists)} lists (keys: {keys})",
                path=name, line=1,
            )
        items = lists[0][1]
    else:
        raise DataError(f"expected a list of objects, got a JSON {type_name(top)}", path=name, line=1)
    del top
    line, last = 1, 0
    for pos, obj in items:
        # Offsets only grow, so the line count is one pass over the text.
        line += text.count("\n", last, pos)
        last = pos
        loc = Loc(name, line, "line")
        if not isinstance(obj, dict):
            yield loc, error(loc, f"expected a JSON object, got {type_name(obj)}")
        elif bad_utf8 is not None and _has_surrogates(obj):
            yield loc, _utf8_error(loc, obj, "")
        else:
            yield loc, obj


_CSV_LIMIT = min(sys.maxsize, 2**31 - 1)


def _csv_rows(path: Path, required: Sequence[str]) -> Iterator[tuple[Loc, dict[str, Any] | DataError]]:
    name = str(path)
    # The stdlib default caps a field at 128 KiB, far below a long document. The limit is
    # process-wide; raising it never breaks another reader.
    if csv.field_size_limit() < _CSV_LIMIT:
        csv.field_size_limit(_CSV_LIMIT)
    bad_lines: list[int] = []

    def lines(fh: IO[bytes]) -> Iterator[str]:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[3:]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                bad_lines.append(lineno)
                yield raw.decode("utf-8", "surrogateescape")

    with _open_binary(path) as fh:
        reader = csv.reader(lines(fh))
        try:
            header = next(reader, None)
            if header is None:
                return
            if bad_lines:
                raise DataError("invalid UTF-8 in the header", path=name, line=1)
            missing = [c for c in required if c not in header]
            if missing:
                raise DataError(
                    f'field "{missing[0]}": missing from the header (columns: {", ".join(header)})',
                    path=name, line=1, field=missing[0],
                )
            prev = reader.line_num
            for row in reader:
                # line_num counts physical lines read so far, so a row spans (prev, line_num];
                # a quoted field may hold newlines.
                first, prev = prev + 1, reader.line_num
                if not row:
                    continue
                loc = Loc(name, first, "line")
                if len(row) > len(header):
                    yield loc, error(loc, f"row has {len(row)} fields but the header has {len(header)}")
                    continue
                rec = dict(zip(header, row, strict=False))  # a short row lacks its last keys
                if bad_lines and bad_lines[-1] >= first:
                    yield loc, _utf8_error(loc, rec, "")
                    continue
                yield loc, rec
        except csv.Error as exc:
            raise DataError(f"malformed CSV: {exc}", path=name, line=reader.line_num) from None


def _parquet_rows(
    path: Path, required: Sequence[str], columns: Sequence[str] | None
) -> Iterator[tuple[Loc, dict[str, Any] | DataError]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is a core dependency
        raise ImportError("reading Parquet needs pyarrow: pip install pyarrow") from exc
    name = str(path)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"not a readable Parquet file: {exc}", path=name) from None
    names = pf.schema_arrow.names
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(
            f'field "{missing[0]}": missing column (columns: {", ".join(names)})', path=name, field=missing[0]
        )
    cols = None if columns is None else [c for c in dict.fromkeys(columns) if c in names]
    number = 0
    with pf:
        for batch in pf.iter_batches(batch_size=4096, columns=cols):
            try:
                records: list[Any] = batch.to_pylist()
            except UnicodeDecodeError:
                # Only files from non-validating writers hold invalid UTF-8; find the rows one by one.
                records = []
                for i in range(batch.num_rows):
                    try:
                        records.append(batch.slice(i, 1).to_pylist()[0])
                    except UnicodeDecodeError:
                        records.append(None)
            for rec in records:
                number += 1
                loc = Loc(name, number, "row")
                if rec is None:
                    yield loc, error(loc, "invalid UTF-8")
                else:
                    yield loc, rec


def _txt_rows(path: Path, text_field: str) -> Iterator[tuple[Loc, dict[str, Any] | DataError]]:
    name = str(path)
    with _open_binary(path) as fh:
        data = fh.read()
    if data.startswith(_BOM):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        loc = Loc(name, data.count(b"\n", 0, exc.start) + 1, "line")
        yield loc, error(loc, f"invalid UTF-8 (byte {exc.start} of the file)")
        return
    yield Loc(name, None, "file"), {text_field: text}
