"""Crash-safe file helpers used by the whole project (house rule 12).

Every artifact is written through these functions: the bytes go to a temporary file in the target's
folder, which is flushed and fsynced, moved over the target with ``os.replace`` (atomic on POSIX and
Windows) and then the folder itself is fsynced so the rename survives a power cut. A reader therefore
sees either the old file or the new one, never a half-written one.

Append-only logs (``qa.jsonl``, ``rounds.jsonl``) use :func:`append_jsonl`, which fsyncs after each
batch; a crash in the middle of an append can leave a truncated last line, which :func:`read_jsonl`
ignores (with a warning) and the next :func:`append_jsonl` cuts away before writing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from equal.data._sources import JSONProblem, parse_json
from equal.errors import DataError

__all__ = [
    "append_jsonl",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "iter_jsonl",
    "iter_jsonl_lines",
    "load_npy",
    "read_jsonl",
    "save_npy",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


def _fsync_dir(folder: Path) -> None:
    # The rename is only durable once the directory entry is on disk. Windows cannot open a folder
    # for fsync, and some file systems refuse it; atomicity does not depend on it, only durability.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_path(path: Path) -> Path:
    # Hidden, in the same folder (os.replace cannot cross file systems), unique per writer.
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Context manager giving a temporary path that replaces ``path`` atomically on success.

    Use it for writers that want a file name rather than bytes (``pyarrow.parquet.write_table``,
    ``np.save``). The temporary file lives in the same folder; when the ``with`` block ends without
    an exception it is fsynced and moved over ``path`` and the folder is fsynced. On an exception
    the temporary file is removed and ``path`` is left untouched. Parent folders are created.

    Parameters
    ----------
    path : str or os.PathLike
        Final location of the file.

    Yields
    ------
    pathlib.Path
        Where to write; it does not exist yet.

    Examples
    --------
    >>> import pyarrow as pa, pyarrow.parquet as pq                      # doctest: +SKIP
    >>> with atomic_path("out/table.parquet") as tmp:                    # doctest: +SKIP
    ...     pq.write_table(pa.table({"a": [1, 2]}), tmp)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(target)
    try:
        yield tmp
        # The writer has closed the file; fsync it so the rename cannot expose unwritten blocks.
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            # numpy's short write ("7680 requested and 4064 written") names no file and no errno
            raise OSError(exc.errno, f"{exc or type(exc).__name__} (is the disk full?)", str(target)) from exc
        raise
    _fsync_dir(target.parent)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, ``os.replace``, fsync folder).

    Parameters
    ----------
    path : str or os.PathLike
        Destination; parent folders are created.
    data : bytes
        The full new content.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(target)
    # os.open with mode 0o666 lets the umask decide the permissions, as a plain open() would
    # (tempfile.mkstemp would leave every artifact at 0o600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def atomic_write_text(path: PathLike, text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically, encoded with ``encoding`` (no newline translation).

    Parameters
    ----------
    path : str or os.PathLike
        Destination; parent folders are created.
    text : str
        The full new content.
    encoding : str, default="utf-8"
        Text encoding.
    """
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    """Write ``obj`` as JSON (UTF-8, non-ASCII kept as is, trailing newline) to ``path`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; parent folders are created.
    obj : JSON-serialisable object
        The value to write.
    indent : int or None, default=2
        Indentation passed to ``json.dumps``; None writes one line.
    sort_keys : bool, default=False
        Sort object keys (use it for files that are hashed or diffed).
    """
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False, allow_nan=False)
    atomic_write_text(path, text + "\n")


def save_npy(path: PathLike, array: np.ndarray) -> None:
    """Save ``array`` to a ``.npy`` file atomically (no pickled objects).

    Parameters
    ----------
    path : str or os.PathLike
        Destination, written exactly as given (``np.save`` would append ``.npy`` to a bare name).
    array : ndarray of any shape and (non-object) dtype
        The array; saved as is, so callers convert embeddings to C-contiguous float32 first.
    """
    arr = np.asarray(array)
    if arr.dtype == object:
        raise ValueError(f"array dtype={arr.dtype} cannot be saved: object arrays would need pickle.")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def load_npy(path: PathLike, mmap: bool = True) -> np.ndarray:
    """Load a ``.npy`` file, memory-mapped read-only by default.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    mmap : bool, default=True
        Map the file instead of reading it (``mmap_mode="r"``): large embedding matrices then cost no
        RAM until touched. The result is read-only; copy it to modify it.

    Returns
    -------
    ndarray
        The stored array, with its stored shape and dtype.
    """
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def _dumps_row(row: Any) -> bytes:
    line = json.dumps(row, ensure_ascii=False, allow_nan=False)
    return line.encode("utf-8") + b"\n"


def _last_line_start(fh: Any, size: int) -> int:
    """Offset just after the last ``\\n`` of an open binary file of ``size`` bytes (0 if none)."""
    block = 1 << 16
    end = size
    while end > 0:
        start = max(0, end - block)
        fh.seek(start)
        chunk = fh.read(end - start)
        idx = chunk.rfind(b"\n")
        if idx >= 0:
            return start + idx + 1
        end = start
    return 0


def _parses(raw: bytes) -> bool:
    try:
        json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return False
    return True


def append_jsonl(path: PathLike, rows: Iterable[Any]) -> int:
    """Append ``rows`` to a JSONL file, one compact JSON value a line, then flush and fsync.

    This is the write path of the append-only logs. If an earlier process died in the middle of an
    append, the file ends with a partial line; it is cut away first (with a warning) so the new rows
    start on a line of their own. A last line that is complete JSON but lacks its newline is kept and
    terminated.

    Parameters
    ----------
    path : str or os.PathLike
        The log file; created (with its parent folders) if missing.
    rows : iterable of JSON-serialisable values
        Rows to append, usually dicts. They are all serialised before anything is written, so a row
        that cannot be serialised leaves the file unchanged.

    Returns
    -------
    int
        Number of rows appended.
    """
    target = Path(path)
    lines = [_dumps_row(row) for row in rows]
    payload = b"".join(lines)
    target.parent.mkdir(parents=True, exist_ok=True)
    created = not target.exists()
    with open(target, "a+b") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size > 0:
            fh.seek(size - 1)
            if fh.read(1) != b"\n":
                start = _last_line_start(fh, size)
                fh.seek(start)
                tail = fh.read(size - start)
                if _parses(tail):
                    payload = b"\n" + payload
                else:
                    logger.warning(
                        "%s: removing a truncated last line (%d bytes) left by an interrupted append",
                        target, size - start,
                    )
                    fh.truncate(start)
        fh.seek(0, os.SEEK_END)
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    if created:
        _fsync_dir(target.parent)
    return len(lines)


def iter_jsonl(path: PathLike) -> Iterator[Any]:
    """Yield the JSON values of a JSONL file line by line, tolerating a truncated last line.

    Blank lines are skipped. A last line that has no trailing newline and does not parse (a crash in
    the middle of :func:`append_jsonl`) is ignored with a logged warning.

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Yields
    ------
    object
        One parsed value per non-blank line.

    Raises
    ------
    DataError
        A line other than a truncated last one is not valid UTF-8 or not valid JSON, or holds what
        no log line can (``NaN``, a duplicate key, a lone surrogate, nesting deeper than
        :data:`~equal.data._sources.MAX_DEPTH`); the message names the file, the 1-based line and
        the field.
    """
    for _lineno, value in iter_jsonl_lines(path):
        yield value


def iter_jsonl_lines(path: PathLike) -> Iterator[tuple[int, Any]]:
    """Like :func:`iter_jsonl`, with each value's 1-based line number: ``(line, value)`` pairs.

    Callers that validate the values (``QAPair.from_record``) use the number to name the line.
    """
    name = str(path)
    with open(path, "rb") as fh:
        pending: tuple[int, bytes] | None = None
        for lineno, raw in enumerate(fh, start=1):
            # Parse one line behind so the last line can be judged knowing it is the last.
            if pending is not None:
                value = _parse_log_line(name, *pending)
                if value is not _SKIP:
                    yield pending[0], value
            pending = (lineno, raw)
        if pending is None:
            return
        lineno, raw = pending
        if not raw.endswith(b"\n") and raw.strip() and not _parses(raw):
            logger.warning(
                "%s:%d: ignoring a truncated last line (%d bytes, no newline): an append was interrupted",
                name, lineno, len(raw),
            )
            return
        value = _parse_log_line(name, lineno, raw)
        if value is not _SKIP:
            yield lineno, value


_SKIP = object()


def _parse_log_line(name: str, lineno: int, raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"invalid UTF-8 at byte {exc.start} of the line", path=name, line=lineno) from None
    if not text.strip():
        return _SKIP
    try:
        # The strict parser: a log written by append_jsonl never holds NaN, duplicate keys, lone
        # surrogates or absurd nesting, so such a line is damage, reported where it is.
        return parse_json(text)
    except JSONProblem as exc:
        field = f'field "{exc.field}": ' if exc.field else ""
        raise DataError(f"{field}{exc}", path=name, line=lineno, field=exc.field) from None
    except ValueError as exc:
        raise DataError(f"malformed JSON: {exc}", path=name, line=lineno) from None


def read_jsonl(path: PathLike) -> list[Any]:
    """Read a whole JSONL file into a list, tolerating a truncated last line.

    See :func:`iter_jsonl` for the rules; the truncated line is dropped and reported as a logged
    warning (logger ``equal.data.io``).

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    list
        The parsed values, in file order, blank lines skipped.
    """
    return list(iter_jsonl(path))
