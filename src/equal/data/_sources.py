"""Row sources shared by the document and SFT readers.

Each source turns one file into a stream of ``(Loc, value)`` pairs, where ``value`` is the row as a
dict or, for a row that cannot be read (malformed JSON, invalid UTF-8, not an object, or a value
:func:`parse_json` refuses: nesting deeper than :data:`MAX_DEPTH`, ``NaN``/``Infinity``, numbers that
overflow, duplicate keys, lone surrogates; a NUL byte in CSV or text), a
:class:`~equal.errors.DataError` the caller raises or skips. Problems that make the whole file
unreadable (unsupported type, broken JSON document, missing or duplicate CSV/Parquet column, a
damaged or truncated gzip stream, UTF-16 text, a corrupt Parquet page) are raised at once, whatever
``skip_invalid`` says, because no row of such a file can be trusted. Every message is one line.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import re
import sys
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from equal.errors import DataError

__all__ = [
    "DOCUMENT_SUFFIXES",
    "MAX_DEPTH",
    "SFT_SUFFIXES",
    "JSONProblem",
    "Loc",
    "error",
    "file_kind",
    "hf_layout",
    "iter_files",
    "parse_json",
    "read_error",
    "rows",
    "type_name",
]

_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

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
# Arrow IPC files are read only as the data files of a `datasets.save_to_disk` folder (never found by a
# folder walk: a loose .arrow file is more likely a cache of something else than a corpus).
_KINDS_HF = {".arrow": "arrow"}


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
    # One line per error, whatever the data holds: keys and values quoted in a message may carry
    # line breaks (or stray surrogates, which stderr cannot encode).
    message = _printable(message.replace("\r", "\\r").replace("\n", "\\n"))
    if loc.kind == "row":
        err = DataError(f"row {loc.line}: {message}", path=loc.path, field=field)
        err.line = loc.line
        return err
    return DataError(message, path=loc.path, line=loc.line, field=field)


#: Deepest nesting of JSON arrays and objects a value may have. Real records nest a few levels
#: (messages, a turn, its content parts); far deeper input is garbage, and the stdlib's recursive C
#: scanner would raise RecursionError (not a ValueError) around depth 1000.
MAX_DEPTH = 100

#: Longest JSON integer, in digits, that is accepted: beyond about 308 digits it cannot become a
#: float (OverflowError in any code that averages or scores it), and past 4300 ``int()`` refuses it.
_MAX_INT_DIGITS = 300

# A JSON string token (so brackets inside strings are not counted) or one bracket.
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
# What a JSON text must contain for a parsed value to hold a lone surrogate: an escaped one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class JSONProblem(ValueError):
    """A JSON text that is syntactically valid but not data ``equal`` accepts.

    Attributes
    ----------
    field : str or None
        Path of the offending value inside the parsed value (``messages[1].content``), None for the
        value as a whole.
    pos : int or None
        Offset in the text, when known (nesting depth).
    """

    def __init__(self, message: str, field: str | None = None, pos: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.pos = pos


class _Bad:
    """Placeholder the parser hooks put in place of a refused value, so the walk can name its field."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


class _Flag(threading.local):
    bad = False


_flag = _Flag()


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # Which value would win is a guess about the writer's intent; refuse rather than guess.
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                obj[key] = _Bad("duplicate key in one object")
            seen.add(key)
        _flag.bad = True
    return obj


def _constant(name: str) -> _Bad:
    _flag.bad = True
    return _Bad(f"{name} is not valid JSON (numbers must be finite)")


def _float(text: str) -> float | _Bad:
    value = float(text)
    if math.isfinite(value):
        return value
    _flag.bad = True
    return _Bad(f"number {text[:24]} is out of range (it would be {value})")


def _int(text: str) -> int | _Bad:
    digits = len(text) - text.startswith("-")
    if digits <= _MAX_INT_DIGITS:
        return int(text)
    _flag.bad = True
    return _Bad(f"integer of {digits} digits is out of range (at most {_MAX_INT_DIGITS})")


# The number hooks cost about as much as a regex pre-scan for long numbers would (measured: a
# pre-scan doubled the parse time of a text corpus), so every number goes through them.
_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant, parse_float=_float,
                            parse_int=_int)


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _one_line(exc: BaseException) -> str:
    """A library's error text on one line (pyarrow's span several)."""
    return " ".join(_printable(str(exc)).split())


def _find_bad(value: Any, path: str, surrogates: bool) -> tuple[str, str] | None:
    """``(field path, message)`` of the first refused value inside ``value``, or None."""
    if isinstance(value, _Bad):
        return path, value.message
    if isinstance(value, str):
        if surrogates:
            m = _SURROGATE.search(value)
            if m is not None:
                return path, f"lone surrogate U+{ord(m.group()):04X}: an escape that is not valid Unicode"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            sub = f"{path}.{_printable(key)}" if path else _printable(key)
            if surrogates and _SURROGATE.search(key):
                return sub, "lone surrogate in a key: an escape that is not valid Unicode"
            found = _find_bad(item, sub, surrogates)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _find_bad(item, f"{path}[{i}]", surrogates)
            if found is not None:
                return found
    return None


def _depth_problem(text: str, start: int = 0, end: int | None = None) -> JSONProblem | None:
    stop = len(text) if end is None else end
    # Counting is C speed; only text with many brackets pays for the token scan.
    if text.count("[", start, stop) + text.count("{", start, stop) <= MAX_DEPTH:
        return None
    depth = 0
    for m in _STRING_OR_BRACKET.finditer(text, start, stop):
        c = text[m.start()]
        if c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return JSONProblem(f"nested deeper than {MAX_DEPTH} levels", pos=m.start())
        elif c in "]}":
            depth -= 1
    return None


def parse_json(text: str) -> Any:
    """Parse one JSON text strictly: the value, or an error naming what is wrong and where.

    Beyond :func:`json.loads` it refuses values nested deeper than :data:`MAX_DEPTH`, ``NaN`` and
    ``Infinity`` literals and numbers that overflow a float, integers longer than 300 digits,
    duplicate keys in one object, and lone UTF-16 surrogates (``"\\ud800"``), which Python keeps in a
    ``str`` but no encoder, tokenizer or writer accepts later.

    Parameters
    ----------
    text : str
        The JSON text (one JSONL line, or a whole ``.json`` document).

    Returns
    -------
    object
        The parsed value.

    Raises
    ------
    JSONProblem
        A refused value; ``field`` is its path (``messages[0].content``) or None.
    json.JSONDecodeError
        The text is not JSON.
    """
    if text.startswith("\ufeff"):
        # JSONDecoder.decode (unlike json.loads) does not name a byte-order mark; say what it is.
        raise json.JSONDecodeError("Unexpected UTF-8 BOM", text, 0)
    if text.count("[") + text.count("{") > MAX_DEPTH:  # inlined: this runs once per row
        problem = _depth_problem(text)
        if problem is not None:
            raise problem
    _flag.bad = False
    try:
        value = _DECODER.decode(text)
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise JSONProblem("nested too deeply to parse") from None
    surrogates = "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None
    if _flag.bad or surrogates:
        found = _find_bad(value, "", surrogates)
        if found is not None:
            raise JSONProblem(found[1], found[0] or None)
    return value


def read_error(path: Path, exc: BaseException, line: int) -> DataError:
    """The DataError for a file that broke while being read, after ``line`` complete lines.

    A truncated gzip raises ``EOFError`` (which the command line would otherwise report as
    ``Aborted.``), a damaged one ``BadGzipFile`` or ``zlib.error``, a failing disk ``OSError``.
    """
    gz = path.name.lower().endswith(".gz")
    if isinstance(exc, EOFError):
        what = "truncated gzip file: the compressed data ends early" if gz else "the file ends early"
    elif isinstance(exc, gzip.BadGzipFile):
        what = f"not a valid gzip file ({_one_line(exc)})"
    elif isinstance(exc, zlib.error):
        what = f"corrupt gzip data ({_one_line(exc)})"
    elif isinstance(exc, OSError):
        what = f"cannot read the file: {exc.strerror or exc}"
    else:  # pragma: no cover - callers pass only the errors above
        what = f"cannot read the file: {_one_line(exc)}"
    done = f"{line} lines read before it" if line else "nothing could be read"
    return DataError(f"{what}; {done}", path=str(path), line=line + 1)


_READ_ERRORS = (OSError, EOFError, zlib.error)


def _read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """The raw lines of a file (gunzipped for ``.gz``), numbered from 1; a damaged file is a DataError."""
    lineno = 0
    try:
        with _open_binary(path) as fh:
            for raw in fh:
                lineno += 1
                yield lineno, raw
    except _READ_ERRORS as exc:
        raise read_error(path, exc, lineno) from None


def _read_all(path: Path) -> bytes:
    """The whole content of a file (gunzipped for ``.gz``); a damaged file is a DataError."""
    chunks: list[bytes] = []
    try:
        with _open_binary(path) as fh:
            while chunk := fh.read(1 << 22):
                chunks.append(chunk)
    except _READ_ERRORS as exc:
        raise read_error(path, exc, sum(c.count(b"\n") for c in chunks)) from None
    return b"".join(chunks)


def file_kind(path: Path) -> str | None:
    """The reader kind of ``path`` from its suffix (case-insensitive, optional ``.gz``), or None."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
        kind = _KINDS.get(os.path.splitext(name)[1])
        return None if kind == "parquet" else kind
    suffix = os.path.splitext(name)[1]
    return _KINDS.get(suffix) or _KINDS_HF.get(suffix)


def _open_binary(path: Path) -> IO[bytes]:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def iter_files(path: Path, suffixes: Sequence[str], *, split: str | None = None) -> list[Path]:
    """The files to read for ``path``: itself, or a folder's supported files in sorted order.

    Folders are walked recursively; names starting with a dot (``.git``, editor temp files) are
    skipped; the order is the sorted relative POSIX path, so it does not depend on the file system.
    Hugging Face folders are recognised first (see :func:`hf_layout`): a ``datasets.save_to_disk``
    folder gives its Arrow data files, a ``DatasetDict`` folder those of the split ``split``, and a
    Hub-layout folder (``data/*.parquet``) the Parquet files of ``split`` (its ``README.md`` dataset
    card and other files are not data). A dataset card at the top of any other folder (a
    ``README.md`` that opens with YAML front matter) is skipped too.

    Parameters
    ----------
    path : Path
        A file or a folder.
    suffixes : sequence of str
        The file types a plain folder walk reads.
    split : str or None
        Split of a Hugging Face folder; needed when it holds several. Refused for other paths.
    """
    if not path.exists():
        raise DataError("no such file or directory", path=str(path))
    layout = hf_layout(path) if path.is_dir() else None
    if layout is not None:
        return _hf_files(path, layout, split)
    if split is not None:
        raise DataError(f"split={split!r} given, but this is not a Hugging Face dataset folder "
                        "(datasets.save_to_disk, or data/*.parquet)", path=str(path))
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
                if root == str(path) and name.lower() == "readme.md" and _is_dataset_card(p):
                    continue
                found.append((p.relative_to(path).as_posix(), p))
    if not found:
        raise DataError(f"folder holds no {', '.join(suffixes)} files", path=str(path))
    return [p for _, p in sorted(found)]


def _is_dataset_card(path: Path) -> bool:
    """A Hugging Face dataset card: a Markdown file opening with a YAML front-matter block."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096).removeprefix(_BOM)
    except OSError:
        return False
    return head.startswith((b"---\n", b"---\r\n")) and b"\n---" in head[3:]


_SHARD = re.compile(r"^(?P<split>[A-Za-z0-9_.]+?)(?:-\d{5}-of-\d{5})?$")


def hf_layout(path: Path) -> str | None:
    """Which Hugging Face folder ``path`` is: ``"dataset"``, ``"dataset_dict"``, ``"hub"`` or None.

    ``"dataset"``: written by ``Dataset.save_to_disk`` (``state.json`` listing Arrow files);
    ``"dataset_dict"``: by ``DatasetDict.save_to_disk`` (``dataset_dict.json`` listing the splits, one
    ``"dataset"`` folder each); ``"hub"``: the Hub's repository layout, Parquet files under ``data/``.
    """
    if not path.is_dir():
        return None
    if (path / "dataset_dict.json").is_file():
        return "dataset_dict"
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        return "dataset"
    data = path / "data"
    if data.is_dir() and any(p.name.lower().endswith(".parquet") for p in data.rglob("*.parquet")):
        return "hub"
    return None


def _read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"not a readable Hugging Face metadata file: {_one_line(exc)}", path=str(path)) from None


def _pick_split(path: Path, split: str | None, splits: Sequence[str], folders: bool = False) -> str:
    listed = ", ".join(splits) or "none"
    if split is None:
        if len(splits) == 1:
            return splits[0]
        # commands without a split option can still read a DatasetDict: each split is a Dataset folder
        alt = f", or give the split's folder ({path / splits[0]})" if folders and splits else ""
        raise DataError(f"a dataset with several splits ({listed}): choose one with --split NAME "
                        f"(split=NAME){alt}", path=str(path))
    if split not in splits:
        raise DataError(f"no split {split!r}; the splits are {listed}", path=str(path))
    return split


def _hf_files(path: Path, layout: str, split: str | None) -> list[Path]:
    if layout == "dataset_dict":
        meta = _read_json_file(path / "dataset_dict.json")
        splits = meta.get("splits") if isinstance(meta, dict) else None
        if not isinstance(splits, list) or not all(isinstance(x, str) for x in splits):
            raise DataError('field "splits": expected a list of split names', path=str(path / "dataset_dict.json"),
                            field="splits")
        chosen = _pick_split(path, split, splits, folders=True)
        sub = path / chosen
        if hf_layout(sub) != "dataset":
            raise DataError(f"split {chosen!r} has no save_to_disk folder (state.json)", path=str(sub))
        return _hf_files(sub, "dataset", None)
    if layout == "dataset":
        if split is not None:
            raise DataError(f"split={split!r} given, but this save_to_disk folder holds one Dataset "
                            "(no splits)", path=str(path))
        state = _read_json_file(path / "state.json")
        entries = state.get("_data_files") if isinstance(state, dict) else None
        if not isinstance(entries, list) or not entries:
            raise DataError('field "_data_files": expected a list of Arrow files', path=str(path / "state.json"),
                            field="_data_files")
        files = []
        for i, entry in enumerate(entries):
            name = entry.get("filename") if isinstance(entry, dict) else None
            if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
                raise DataError(f'field "_data_files[{i}].filename": expected a file name',
                                path=str(path / "state.json"), field=f"_data_files[{i}].filename")
            p = path / name
            if not p.is_file():
                raise DataError("Arrow data file listed in state.json is missing", path=str(p))
            files.append(p)
        return files
    # Hub layout: data/<split>-00000-of-00001.parquet, data/<split>.parquet or data/<split>/*.parquet
    by_split: dict[str, list[Path]] = {}
    data = path / "data"
    for p in data.rglob("*.parquet"):
        rel = p.relative_to(data)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if len(rel.parts) > 1:
            name = rel.parts[0]
        else:
            m = _SHARD.match(p.name[: -len(".parquet")])
            name = m.group("split") if m else "train"
        by_split.setdefault(name, []).append(p)
    chosen = _pick_split(path, split, sorted(by_split))
    return sorted(by_split[chosen], key=lambda p: p.relative_to(data).as_posix())


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
    if kind == "arrow":
        return _arrow_rows(path, required, columns)
    if kind == "txt":
        return _txt_rows(path, text_field)
    raise DataError("unsupported file type", path=str(path))


def _jsonl_rows(path: Path) -> Iterator[tuple[Loc, dict[str, Any] | DataError]]:
    name = str(path)
    # Bytes, decoded line by line: an invalid UTF-8 sequence then costs one row, and its message
    # can name the line, instead of failing the whole file at the first bad byte.
    for lineno, raw in _read_lines(path):
        if raw.startswith(_BOM):
            # Any line, not only the first: `cat a.jsonl b.jsonl` keeps each file's byte-order mark.
            raw = raw[3:]
        elif lineno == 1 and raw.startswith(_UTF16_BOMS):
            raise DataError("UTF-16 text (it starts with a UTF-16 byte-order mark); convert the file to UTF-8",
                            path=name, line=1)
        loc = Loc(name, lineno, "line")
        bad_byte = -1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad_byte = exc.start
            text = raw.decode("utf-8", "surrogateescape")
        if not text.strip():
            continue
        if bad_byte >= 0:
            where = f" (byte {bad_byte} of the line)"
            try:
                obj = json.loads(text)  # only to name the field holding the bad bytes
            except (ValueError, RecursionError):
                yield loc, error(loc, f"invalid UTF-8{where}")
                continue
            yield loc, _utf8_error(loc, obj, where) if isinstance(obj, dict) else error(loc, f"invalid UTF-8{where}")
            continue
        try:
            obj = parse_json(text)
        except JSONProblem as exc:
            yield loc, error(loc, str(exc), exc.field)
            continue
        except ValueError as exc:
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            col = f" at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            yield loc, error(loc, f"malformed JSON: {msg}{col}")
            continue
        if not isinstance(obj, dict):
            yield loc, error(loc, f"expected a JSON object, got {type_name(obj)}")
            continue
        yield loc, obj


_WS = re.compile(r"[ \t\n\r]*")


def _skip_ws(text: str, i: int) -> int:
    return _WS.match(text, i).end()  # type: ignore[union-attr]


Item = tuple[int, int, Any]  # start and end offsets of an array element in the text, and its value


def _array_items(text: str, i: int, decoder: json.JSONDecoder) -> tuple[list[Item], int]:
    """Elements of the (valid) JSON array starting at ``text[i] == "["`` with their offsets."""
    items: list[Item] = []
    i = _skip_ws(text, i + 1)
    if text[i] == "]":
        return items, i + 1
    while True:
        obj, j = decoder.raw_decode(text, i)
        items.append((i, j, obj))
        i = _skip_ws(text, j)
        if text[i] == ",":
            i = _skip_ws(text, i + 1)
            continue
        return items, i + 1


def _object_lists(text: str, i: int, decoder: json.JSONDecoder) -> list[tuple[str, list[Item]]]:
    """List-valued members of the (valid) JSON object at ``text[i] == "{"``, elements with offsets."""
    found: list[tuple[str, list[Item]]] = []
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
    data = _read_all(path)
    if data.startswith(_BOM):
        data = data[3:]
    elif data.startswith(_UTF16_BOMS):
        raise DataError("UTF-16 text (it starts with a UTF-16 byte-order mark); convert the file to UTF-8",
                        path=name, line=1)
    bad_utf8: tuple[int, int] | None = None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_utf8 = (data.count(b"\n", 0, exc.start) + 1, exc.start)
        text = data.decode("utf-8", "surrogateescape")
    del data
    strict = bad_utf8 is None
    top: Any = None
    if strict:
        # The common case: the whole document passes the strict parser, so every element does too.
        try:
            top = parse_json(text)
        except JSONProblem:
            strict = False
        except json.JSONDecodeError as exc:
            msg = f"malformed JSON: {exc.msg} at column {exc.colno}"
            raise DataError(msg, path=name, line=exc.lineno) from None
    if not strict:
        # Some element is refused (or holds invalid UTF-8): parse leniently to find the elements,
        # then judge each on its own, so skip_invalid costs only the bad ones.
        depth = _depth_problem(text)
        try:
            top = json.loads(text)
        except RecursionError:
            line = 1 if depth is None or depth.pos is None else text.count("\n", 0, depth.pos) + 1
            raise DataError(f"malformed JSON: nested deeper than {MAX_DEPTH} levels", path=name,
                            line=line) from None
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
    for pos, end, obj in items:
        # Offsets only grow, so the line count is one pass over the text.
        line += text.count("\n", last, pos)
        last = pos
        loc = Loc(name, line, "line")
        if not isinstance(obj, dict):
            yield loc, error(loc, f"expected a JSON object, got {type_name(obj)}")
        elif bad_utf8 is not None and _has_surrogates(obj):
            yield loc, _utf8_error(loc, obj, "")
        elif not strict:
            try:
                yield loc, parse_json(text[pos:end])
            except JSONProblem as exc:
                yield loc, error(loc, str(exc), exc.field)
        else:
            yield loc, obj


_CSV_LIMIT = min(sys.maxsize, 2**31 - 1)


def _duplicate(names: Sequence[str]) -> str | None:
    """The first column name that occurs twice (a row dict would silently keep only the last), or None."""
    seen: set[str] = set()
    for n in names:
        if n in seen:
            return _printable(n.replace("\n", "\\n"))
        seen.add(n)
    return None


def _csv_rows(path: Path, required: Sequence[str]) -> Iterator[tuple[Loc, dict[str, Any] | DataError]]:
    name = str(path)
    # The stdlib default caps a field at 128 KiB, far below a long document. The limit is
    # process-wide; raising it never breaks another reader.
    if csv.field_size_limit() < _CSV_LIMIT:
        csv.field_size_limit(_CSV_LIMIT)
    bad_lines: list[int] = []
    nul_lines: list[int] = []

    def lines() -> Iterator[str]:
        for lineno, raw in _read_lines(path):
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[3:]
            elif lineno == 1 and raw.startswith(_UTF16_BOMS):
                raise DataError("UTF-16 text (it starts with a UTF-16 byte-order mark); convert the file to UTF-8",
                                path=name, line=1)
            if b"\x00" in raw:
                nul_lines.append(lineno)
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                bad_lines.append(lineno)
                yield raw.decode("utf-8", "surrogateescape")

    reader = csv.reader(lines())
    try:
        header = next(reader, None)
        if header is None:
            return
        if bad_lines:
            raise DataError("invalid UTF-8 in the header", path=name, line=1)
        if nul_lines:
            raise DataError("NUL byte in the header: a binary file, not CSV text", path=name, line=1)
        dup = _duplicate(header)
        if dup is not None:
            raise DataError(f'field "{dup}": duplicate column in the header', path=name, line=1, field=dup)
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
            if nul_lines and nul_lines[-1] >= first:
                bad = next((k for k, v in rec.items() if "\x00" in v), None)
                yield loc, error(loc, "NUL byte in the value: binary data, not text", bad)
                continue
            yield loc, rec
    except csv.Error as exc:
        raise DataError(f"malformed CSV: {_one_line(exc)}", path=name, line=reader.line_num) from None


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
        names = pf.schema_arrow.names
    except (pa.ArrowException, OSError, ValueError) as exc:  # ValueError: undecodable metadata
        raise DataError(f"not a readable Parquet file: {_one_line(exc)}", path=name) from None
    cols = _checked_columns(names, required, columns, name)
    number = 0
    with pf:
        batches = pf.iter_batches(batch_size=4096, columns=cols)
        while True:
            try:
                batch = next(batches, None)
                if batch is None:
                    return
                records = _batch_records(batch)
            except (pa.ArrowException, OSError, EOFError, ValueError) as exc:
                # A damaged page (a valid footer over corrupt data): the rest of the file is lost.
                raise DataError(f"row {number + 1}: corrupt Parquet data: {_one_line(exc)}", path=name) from None
            for rec in records:
                number += 1
                loc = Loc(name, number, "row")
                if rec is None:
                    yield loc, error(loc, "invalid UTF-8")
                else:
                    yield loc, rec


def _checked_columns(names: Sequence[str], required: Sequence[str], columns: Sequence[str] | None,
                     name: str) -> list[str] | None:
    """Refuse duplicate or missing columns of a columnar file; the wanted columns it has (None: all)."""
    dup = _duplicate(names)
    if dup is not None:
        raise DataError(f'field "{dup}": duplicate column', path=name, field=dup)
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(
            f'field "{missing[0]}": missing column (columns: {", ".join(names)})', path=name, field=missing[0]
        )
    return None if columns is None else [c for c in dict.fromkeys(columns) if c in names]


def _arrow_rows(
    path: Path, required: Sequence[str], columns: Sequence[str] | None
) -> Iterator[tuple[Loc, dict[str, Any] | DataError]]:
    """Rows of an Arrow IPC file as ``datasets.save_to_disk`` writes them (the streaming format)."""
    import pyarrow as pa

    name = str(path)
    try:
        source = pa.memory_map(name, "r")
        try:
            reader: Any = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:  # the random-access file format, from other writers
            reader = pa.ipc.open_file(source)
        names = reader.schema.names
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(f"not a readable Arrow file: {_one_line(exc)}", path=name) from None
    cols = _checked_columns(names, required, columns, name)
    if hasattr(reader, "num_record_batches"):
        batches: Iterator[Any] = (reader.get_batch(i) for i in range(reader.num_record_batches))
    else:
        batches = iter(reader)
    number = 0
    with source:
        while True:
            try:
                batch = next(batches, None)
                if batch is None:
                    return
                if cols is not None:
                    batch = batch.select(cols)
                records = _batch_records(batch)
            except (pa.ArrowException, OSError, EOFError, ValueError) as exc:
                raise DataError(f"row {number + 1}: corrupt Arrow data: {_one_line(exc)}", path=name) from None
            for rec in records:
                number += 1
                loc = Loc(name, number, "row")
                yield (loc, error(loc, "invalid UTF-8")) if rec is None else (loc, rec)


def _batch_records(batch: Any) -> list[Any]:
    try:
        return batch.to_pylist()  # type: ignore[no-any-return]
    except UnicodeDecodeError:
        # Only files from non-validating writers hold invalid UTF-8; find the rows one by one.
        records: list[Any] = []
        for i in range(batch.num_rows):
            try:
                records.append(batch.slice(i, 1).to_pylist()[0])
            except UnicodeDecodeError:
                records.append(None)
        return records


def _txt_rows(path: Path, text_field: str) -> Iterator[tuple[Loc, dict[str, Any] | DataError]]:
    name = str(path)
    data = _read_all(path)
    if data.startswith(_BOM):
        data = data[3:]
    elif data.startswith(_UTF16_BOMS):
        raise DataError("UTF-16 text (it starts with a UTF-16 byte-order mark); convert the file to UTF-8",
                        path=name, line=1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        loc = Loc(name, data.count(b"\n", 0, exc.start) + 1, "line")
        yield loc, error(loc, f"invalid UTF-8 (byte {exc.start} of the file)")
        return
    nul = text.find("\x00")
    if nul >= 0:
        loc = Loc(name, text.count("\n", 0, nul) + 1, "line")
        yield loc, error(loc, f"NUL byte (character {nul} of the file): binary data, not text")
        return
    yield Loc(name, None, "file"), {text_field: text}
