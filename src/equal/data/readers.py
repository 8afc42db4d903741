"""Reading corpus documents from JSONL, JSON, Parquet, CSV, text files and folders of them."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from equal.data._sources import DOCUMENT_SUFFIXES, Loc, error, iter_files, rows, type_name
from equal.data.records import Document, ReadResult, Skips, derived_id
from equal.errors import DataError

__all__ = ["DocumentStream", "iter_documents", "read_documents"]

logger = logging.getLogger(__name__)


def _to_document(
    rec: dict[str, Any], loc: Loc, text_field: str, id_field: str | None, meta_fields: Sequence[str],
    keep_fields: Sequence[str] = (),
) -> Document:
    if text_field not in rec:
        # Name what the record does have: the usual cause is a corpus whose text lives under another key.
        present = ", ".join(map(str, list(rec)[:8])) + (", ..." if len(rec) > 8 else "")
        raise error(loc, f"missing (the record has: {present})" if rec else "missing", text_field)
    text = rec[text_field]
    if not isinstance(text, str):
        raise error(loc, f"expected a string, got {type_name(text)}", text_field)
    if not text.strip():
        raise error(loc, "empty or whitespace-only text", text_field)
    if id_field is None or id_field not in rec:
        doc_id = derived_id(text)
    else:
        raw = rec[id_field]
        if isinstance(raw, str):
            if not raw.strip():
                raise error(loc, "empty id", id_field)
            doc_id = raw
        elif isinstance(raw, int) and not isinstance(raw, bool):
            # Integer ids are common in dumps; they become their decimal string.
            doc_id = str(raw)
        else:
            raise error(loc, f"expected a string or an integer, got {type_name(raw)}", id_field)
    meta: dict[str, Any] = {"source": loc.path}
    if loc.kind == "line":
        meta["line"] = loc.line
    elif loc.kind == "row":
        meta["row"] = loc.line - 1  # type: ignore[operator]
    for name in meta_fields:
        if name in rec:
            meta[name] = rec[name]
    if keep_fields:
        # Their own key, so a corpus column named "source" or "line" cannot overwrite the provenance;
        # a row without one holds None, so every pair carries the same keys (one Parquet schema).
        meta["fields"] = {name: rec.get(name) for name in keep_fields}
    return Document(doc_id, text, meta)


class DocumentStream(Iterator[Document]):
    """Iterator over the documents of a file or folder; :func:`iter_documents` returns one.

    Rows are read lazily (JSONL and CSV line by line, Parquet in batches of 4096 rows; a ``.json``
    file is parsed whole), so a corpus of 10^7 rows streams in constant memory apart from the set of
    ids seen so far, which uniqueness needs (about 100 bytes per id).

    Attributes
    ----------
    path : str
        The path being read.
    skipped : int
        Invalid rows dropped so far (``skip_invalid=True`` only).
    errors : list of str
        Messages of the first :data:`~equal.data.records.MAX_ERRORS` dropped rows.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        text_field: str = "text",
        id_field: str | None = "id",
        skip_invalid: bool = False,
        meta_fields: Sequence[str] = (),
        keep_fields: Sequence[str] = (),
        split: str | None = None,
    ) -> None:
        if not isinstance(text_field, str) or not text_field:
            raise ValueError(f"text_field={text_field!r} must be a non-empty string.")
        if id_field is not None and (not isinstance(id_field, str) or not id_field):
            raise ValueError(f"id_field={id_field!r} must be a non-empty string or None.")
        if isinstance(meta_fields, str):
            raise ValueError(f"meta_fields={meta_fields!r} must be a sequence of field names, not a string.")
        if isinstance(keep_fields, str):
            raise ValueError(f"keep_fields={keep_fields!r} must be a sequence of field names, not a string.")
        self.path = str(path)
        self._skips = Skips(bool(skip_invalid))
        self._files = iter_files(Path(path), DOCUMENT_SUFFIXES, split=split)
        self._gen = self._generate(text_field, id_field, tuple(meta_fields), tuple(keep_fields))

    @property
    def skipped(self) -> int:
        return self._skips.count

    @property
    def errors(self) -> list[str]:
        return self._skips.errors

    def __iter__(self) -> DocumentStream:
        return self

    def __next__(self) -> Document:
        return next(self._gen)

    def _generate(
        self, text_field: str, id_field: str | None, meta_fields: tuple[str, ...], keep_fields: tuple[str, ...]
    ) -> Iterator[Document]:
        seen: set[str] = set()
        columns = [text_field, *([id_field] if id_field else []), *meta_fields, *keep_fields]
        for file in self._files:
            for loc, value in rows(file, required=(text_field,), columns=columns, text_field=text_field):
                try:
                    if isinstance(value, DataError):
                        raise value
                    doc = _to_document(value, loc, text_field, id_field, meta_fields, keep_fields)
                    if doc.id in seen:
                        if id_field is not None and id_field in value:
                            raise error(loc, f"duplicate id {doc.id!r}", id_field)
                        raise error(
                            loc,
                            f"duplicate text: its derived id {doc.id!r} was already given to an identical "
                            f"text; skip_invalid=True drops exact duplicates",
                            text_field,
                        )
                    seen.add(doc.id)
                except DataError as exc:
                    self._skips.add(exc)
                    continue
                yield doc
        if self.skipped:
            logger.warning("%s: skipped %d invalid rows; first: %s", self.path, self.skipped, self.errors[0])


def iter_documents(
    path: str | os.PathLike[str],
    *,
    text_field: str = "text",
    id_field: str | None = "id",
    skip_invalid: bool = False,
    meta_fields: Sequence[str] = (),
    keep_fields: Sequence[str] = (),
    split: str | None = None,
) -> DocumentStream:
    """Stream the documents of a file or folder (see :func:`read_documents` for the rules).

    Returns
    -------
    DocumentStream
        An iterator of :class:`Document`; its ``skipped`` and ``errors`` attributes fill in as it
        is consumed. File-level problems (missing path, unsupported type) raise here, before
        iteration; row-level problems raise (or are skipped) when the row is reached.

    Examples
    --------
    >>> stream = iter_documents("corpus.jsonl", skip_invalid=True)       # doctest: +SKIP
    >>> n = sum(1 for _ in stream); stream.skipped                       # doctest: +SKIP
    0
    """
    return DocumentStream(
        path, text_field=text_field, id_field=id_field, skip_invalid=skip_invalid, meta_fields=meta_fields,
        keep_fields=keep_fields, split=split,
    )


def read_documents(
    path: str | os.PathLike[str],
    *,
    text_field: str = "text",
    id_field: str | None = "id",
    skip_invalid: bool = False,
    meta_fields: Sequence[str] = (),
    keep_fields: Sequence[str] = (),
    split: str | None = None,
) -> ReadResult:
    """Read all documents of a file or folder into memory.

    Formats, by suffix (case-insensitive; ``.gz`` allowed on all but Parquet):

    - ``.jsonl`` / ``.ndjson``: one JSON object a line; blank lines are ignored.
    - ``.json``: a list of objects, or an object with exactly one list-valued member holding them.
    - ``.parquet``: one row per document (needs pyarrow; only the used columns are read).
    - ``.csv``: a header row, then one row per document (stdlib ``csv``, quoted fields may span lines).
    - ``.txt`` / ``.md``: the whole file is one document.
    - a folder: every file above, recursively, in sorted relative-path order; names starting with
      ``.`` are skipped, and so is a dataset card (a top-level ``README.md`` opening with YAML front
      matter).
    - a Hugging Face folder: ``Dataset.save_to_disk`` (its Arrow files), ``DatasetDict.save_to_disk``
      (the Arrow files of ``split``), or the Hub layout (``data/*.parquet``, ``data/<split>-*.parquet``;
      the Parquet files of ``split``). Errors name the Arrow/Parquet file and ``row n``.

    Parameters
    ----------
    path : str or os.PathLike
        File or folder.
    text_field : str, default="text"
        Field holding the text; it must be a non-blank string.
    id_field : str or None, default="id"
        Field holding the id (a string or an integer). Rows without it, and every row when None, get
        ``"h" + content_hash(text)[:16]``. Ids must be unique across the whole input, so without an
        id field two identical texts collide: with ``skip_invalid=True`` the later one is dropped.
    skip_invalid : bool, default=False
        Drop invalid rows (counting them, keeping the first 100 messages) instead of raising.
    meta_fields : sequence of str, default=()
        Extra fields copied into ``Document.meta`` when present (e.g. ``("url", "title")``).
    keep_fields : sequence of str, default=()
        Fields kept as ``Document.meta["fields"]`` (``{name: value or None}``), the corpus provenance
        that ``equal extract --keep-fields`` carries into every pair made from the document.
    split : str or None, default=None
        Split of a Hugging Face folder with several (a DatasetDict, or Hub files of several splits);
        the error for a missing or unknown one lists the splits.

    Returns
    -------
    ReadResult
        ``items`` (the documents), ``skipped``, ``errors`` and ``path``. Each document's meta holds
        ``"source"`` (its file) and ``"line"`` (1-based; JSONL, JSON, CSV) or ``"row"`` (0-based;
        Parquet).

    Raises
    ------
    DataError
        On the first invalid row unless ``skip_invalid``: malformed JSON, invalid UTF-8, a missing
        field, a wrong type, blank text or a duplicate id. The message names the file, the 1-based
        line (for CSV the line the row starts on; for Parquet ``row n`` with n = row index + 1) and
        the field, e.g. ``corpus.jsonl:412: field "text": missing``. Always (even when skipping) for
        a file that cannot be read at all: missing path, unsupported suffix, a ``.json`` document
        that does not parse, a CSV header or Parquet schema without ``text_field``.
    """
    stream = iter_documents(
        path, text_field=text_field, id_field=id_field, skip_invalid=skip_invalid, meta_fields=meta_fields,
        keep_fields=keep_fields, split=split,
    )
    items = list(stream)
    return ReadResult(items=items, skipped=stream.skipped, errors=list(stream.errors), path=stream.path)
