"""The corpus on disk: streaming ingestion into ``documents.parquet`` and a :class:`DocumentStore` over it.

:func:`ingest_documents` reads documents from any iterable (a :class:`~equal.data.readers.DocumentStream`),
chunks them and writes them batch by batch into one Parquet file of small row groups, so a corpus of 10^6
documents is never held in memory. The file is written under a temporary name and renamed when complete:
an ingest killed half-way leaves only a temporary file (``remove_stale_temps`` deletes it) and starts over.

:class:`DocumentStore` reads documents back by row: the row group holding a row is read once and kept in a
small LRU cache, so a round that samples a few documents costs a few row-group reads, not the corpus.

Columns of ``documents.parquet``: ``row`` (int64), ``id``, ``parent_id``, ``chunk`` (int64), ``start`` and
``end`` (int64, the chunk's character offsets in its parent's text), ``hash`` (sha256 of the text),
``chars`` (int64), ``text``, ``meta`` (the document's meta as JSON); ``equal extract`` adds ``cluster``
(int64) once the corpus is clustered. The schema's metadata holds ``equal.ingest`` (JSON: documents read,
rows written, rows skipped, and what the caller passed as ``info``).
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from equal.data.chunking import approx_token_count, chunk_spans
from equal.data.records import Document, content_hash
from equal.errors import DataError

__all__ = ["INGEST_KEY", "DocumentStore", "IngestResult", "chunk_with_offsets", "ingest_documents"]

logger = logging.getLogger(__name__)

INGEST_KEY = b"equal.ingest"
"""Key of the ingest record in the Parquet schema metadata."""

_COLUMNS = ("row", "id", "parent_id", "chunk", "start", "end", "hash", "chars", "text", "meta")


def _schema(extra: dict[bytes, bytes] | None = None) -> Any:
    import pyarrow as pa

    i64, s = pa.int64(), pa.string()
    fields = [pa.field(name, i64 if name in ("row", "chunk", "start", "end", "chars") else s) for name in _COLUMNS]
    return pa.schema(fields, metadata=extra)


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest_documents` wrote.

    Attributes
    ----------
    rows : int
        Rows (documents after chunking) in the file.
    documents : int
        Documents read (before chunking).
    skipped : int
        Invalid rows the reader skipped (its ``skipped`` attribute, 0 when it has none).
    path : str
    """

    rows: int
    documents: int
    skipped: int
    path: str


def chunk_with_offsets(doc: Document, max_tokens: int, count_tokens: Callable[[str], int] | None = None, *,
                       overlap: int = 0) -> list[tuple[Document, int, int]]:
    """``doc`` chunked as :func:`~equal.data.chunking.chunk_documents` does, with each chunk's offsets.

    Returns
    -------
    list of (Document, start, end)
        The chunks (ids, texts and meta exactly as ``chunk_documents([doc], max_tokens, count_tokens,
        overlap=overlap)``) and their character spans: ``doc.text[start:end] == chunk.text``.
    """
    count = approx_token_count if count_tokens is None else count_tokens
    if count(doc.text) <= max_tokens:
        return [(Document(doc.id, doc.text, {**doc.meta, "parent_id": doc.id, "chunk": 0}), 0, len(doc.text))]
    spans = chunk_spans(doc.text, max_tokens, count_tokens=count_tokens, overlap=overlap)
    return [(Document(f"{doc.id}#c{i}", doc.text[a:b], {**doc.meta, "parent_id": doc.id, "chunk": i}), a, b)
            for i, (a, b) in enumerate(spans)]


def _batch_table(rows: list[tuple[Document, int, int]], first_row: int, schema: Any) -> Any:
    import pyarrow as pa

    docs = [d for d, _, _ in rows]
    return pa.table({
        "row": np.arange(first_row, first_row + len(rows), dtype=np.int64),
        "id": [d.id for d in docs],
        "parent_id": [str(d.meta.get("parent_id", d.id)) for d in docs],
        "chunk": np.asarray([int(d.meta.get("chunk", 0)) for d in docs], dtype=np.int64),
        "start": np.asarray([a for _, a, _ in rows], dtype=np.int64),
        "end": np.asarray([b for _, _, b in rows], dtype=np.int64),
        "hash": [content_hash(d.text) for d in docs],
        "chars": np.asarray([len(d.text) for d in docs], dtype=np.int64),
        "text": [d.text for d in docs],
        # default=str: a meta field copied from Parquet or CSV may hold a value JSON has no type for
        "meta": [json.dumps(d.meta, ensure_ascii=False, default=str) for d in docs],
    }, schema=schema)


def ingest_documents(
    docs: Iterable[Document],
    path: str | os.PathLike[str],
    *,
    max_tokens: int,
    count_tokens: Callable[[str], int] | None = None,
    overlap: int = 0,
    batch_size: int = 4096,
    row_group_size: int = 1024,
    info: dict[str, Any] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> IngestResult:
    """Chunk ``docs`` and write them, ``batch_size`` documents at a time, into the Parquet file ``path``.

    Parameters
    ----------
    docs : iterable of Document
        Documents in corpus order (e.g. :func:`~equal.data.iter_documents`); consumed once. Its ``skipped``
        attribute, when it has one, is recorded.
    path : path-like
        The file; replaced atomically when the whole iterable is written (a failure leaves it untouched).
    max_tokens, count_tokens, overlap
        As in :func:`~equal.data.chunking.chunk_documents`.
    batch_size : int, default=4096
        Documents read and chunked before a write; bounds the memory of the ingest.
    row_group_size : int, default=1024
        Rows per Parquet row group: the unit :class:`DocumentStore` reads.
    info : dict, optional
        JSON-serialisable facts stored with the file's ``equal.ingest`` record (e.g. a corpus fingerprint).
    on_batch : callable, optional
        ``on_batch(documents, rows)`` after each write, with the totals so far.

    Returns
    -------
    IngestResult
    """
    import pyarrow.parquet as pq

    from equal.data.io import atomic_path

    for name, value in (("batch_size", batch_size), ("row_group_size", row_group_size), ("max_tokens", max_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an int >= 1.")
    schema = _schema()
    n_rows = n_docs = 0
    with atomic_path(path) as tmp:
        writer = pq.ParquetWriter(tmp, schema)
        try:
            batch: list[tuple[Document, int, int]] = []
            pending = 0
            for doc in docs:
                batch.extend(chunk_with_offsets(doc, max_tokens, count_tokens, overlap=overlap))
                n_docs += 1
                pending += 1
                if pending >= batch_size:
                    writer.write_table(_batch_table(batch, n_rows, schema), row_group_size=row_group_size)
                    n_rows += len(batch)
                    batch, pending = [], 0
                    if on_batch is not None:
                        on_batch(n_docs, n_rows)
            if batch:
                writer.write_table(_batch_table(batch, n_rows, schema), row_group_size=row_group_size)
                n_rows += len(batch)
                if on_batch is not None:
                    on_batch(n_docs, n_rows)
            skipped = int(getattr(docs, "skipped", 0))
            record = {"documents": n_docs, "rows": n_rows, "skipped": skipped, **(info or {})}
            writer.add_key_value_metadata({INGEST_KEY.decode(): json.dumps(record, sort_keys=True)})
        finally:
            writer.close()
    logger.info("ingested %d documents as %d rows into %s", n_docs, n_rows, path)
    return IngestResult(rows=n_rows, documents=n_docs, skipped=skipped, path=str(path))


class DocumentStore(Sequence[Document]):
    """Read-only, row-addressed view of a ``documents.parquet`` written by :func:`ingest_documents`.

    ``store[i]`` is the :class:`Document` of row ``i`` (id, text and meta as ingested); the row group holding it
    is read once and kept among the ``cache_groups`` most recently used ones. Iterating reads the row groups in
    order without filling the cache.

    Parameters
    ----------
    path : path-like
        The Parquet file.
    cache_groups : int, default=16
        Row groups kept in memory (each about ``row_group_size`` texts).

    Attributes
    ----------
    path : pathlib.Path
    info : dict
        The file's ``equal.ingest`` record (``documents``, ``rows``, ``skipped``, ...); empty when absent.
    """

    def __init__(self, path: str | os.PathLike[str], *, cache_groups: int = 16) -> None:
        import pyarrow.parquet as pq

        if isinstance(cache_groups, bool) or not isinstance(cache_groups, int) or cache_groups < 1:
            raise ValueError(f"cache_groups={cache_groups!r} must be an int >= 1.")
        self.path = Path(path)
        try:
            self._file = pq.ParquetFile(self.path)
        except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) on a damaged file
            raise DataError(f"cannot read the document store: {exc}", path=str(self.path)) from exc
        meta = self._file.metadata
        missing = [c for c in ("id", "text", "meta") if c not in self._file.schema_arrow.names]
        if missing:
            raise DataError(f"not a document store: no column {missing[0]!r}", path=str(self.path))
        counts = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self._bounds = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        self._n = int(self._bounds[-1])
        self._cache_groups = cache_groups
        # Arrow tables, not Python lists: a fetch converts only the rows it returns, so a round that reads
        # one document from each of many row groups costs a decompress per group, not 3 x 1024 str objects.
        self._cache: OrderedDict[int, Any] = OrderedDict()
        raw = (meta.metadata or {}).get(INGEST_KEY)  # the file's key-value metadata
        self.info: dict[str, Any] = json.loads(raw) if raw else {}

    def __getstate__(self) -> dict[str, Any]:
        # a store crosses process boundaries (Ray, multiprocessing) as its path: each side opens the file itself
        return {"path": str(self.path), "cache_groups": self._cache_groups}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], cache_groups=state["cache_groups"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"DocumentStore({str(self.path)!r}, rows={self._n})"

    def __len__(self) -> int:
        return self._n

    @property
    def num_row_groups(self) -> int:
        return len(self._bounds) - 1

    def _group(self, g: int) -> Any:
        hit = self._cache.get(g)
        if hit is not None:
            self._cache.move_to_end(g)
            return hit
        t = self._file.read_row_group(g, columns=["id", "text", "meta"])
        self._cache[g] = t
        if len(self._cache) > self._cache_groups:
            self._cache.popitem(last=False)
        return t

    @staticmethod
    def _doc(t: Any, k: int) -> Document:
        return Document(t.column(0)[k].as_py(), t.column(1)[k].as_py(), json.loads(t.column(2)[k].as_py()))

    def _row(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"row index must be an int; got {type(i).__name__}")
        j = int(i) + self._n if i < 0 else int(i)
        if not 0 <= j < self._n:
            raise IndexError(f"row {i} is out of range for a store of {self._n} rows")
        return j

    @overload
    def __getitem__(self, i: int) -> Document: ...

    @overload
    def __getitem__(self, i: slice) -> list[Document]: ...

    def __getitem__(self, i: int | slice) -> Document | list[Document]:
        if isinstance(i, slice):
            return self.take(range(*i.indices(self._n)))
        j = self._row(i)
        g = int(np.searchsorted(self._bounds, j, side="right")) - 1
        return self._doc(self._group(g), j - int(self._bounds[g]))

    def take(self, rows: Iterable[int]) -> list[Document]:
        """The documents of ``rows``, in the order given; each row group involved is read once.

        Cheaper than ``[store[r] for r in rows]`` when ``rows`` spans more row groups than the cache holds
        (a round of a large corpus): those would evict each other and be read again.
        """
        js = [self._row(int(r)) for r in rows]
        if not js:
            return []
        groups = np.searchsorted(self._bounds, np.asarray(js, dtype=np.int64), side="right") - 1
        out: list[Document | None] = [None] * len(js)
        order = np.argsort(groups, kind="stable")
        for pos in order:  # group by group: a group is fetched (or found in the cache) once in a row
            g = int(groups[pos])
            out[pos] = self._doc(self._group(g), js[pos] - int(self._bounds[g]))
        return out  # type: ignore[return-value]

    def __iter__(self) -> Iterator[Document]:
        for g in range(self.num_row_groups):
            t = self._file.read_row_group(g, columns=["id", "text", "meta"])
            for doc_id, text, meta in zip(t.column("id").to_pylist(), t.column("text").to_pylist(),
                                          t.column("meta").to_pylist(), strict=True):
                yield Document(doc_id, text, json.loads(meta))

    def texts(self, start: int = 0, stop: int | None = None) -> list[str]:
        """The texts of rows ``start`` to ``stop`` (exclusive), read by row group without the cache."""
        stop = self._n if stop is None else min(int(stop), self._n)
        start = max(0, int(start))
        if start >= stop:
            return []
        g0 = int(np.searchsorted(self._bounds, start, side="right")) - 1
        g1 = int(np.searchsorted(self._bounds, stop - 1, side="right")) - 1
        t = self._file.read_row_groups(list(range(g0, g1 + 1)), columns=["text"])
        off = int(self._bounds[g0])
        return t.column("text").slice(start - off, stop - start).to_pylist()

    def column(self, name: str) -> Any:
        """One whole column, as a numpy array (numbers) or a list (strings); e.g. ``"id"`` or ``"cluster"``."""
        if name not in self._file.schema_arrow.names:
            raise KeyError(f"{self.path.name} has no column {name!r}")
        col = self._file.read(columns=[name]).column(name)
        import pyarrow as pa

        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
            return col.to_numpy()
        return col.to_pylist()
