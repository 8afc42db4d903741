"""Record types of the data layer and the content hash used for ids and caches."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from equal.errors import DataError

__all__ = ["MAX_ERRORS", "Document", "ReadResult", "SFTReadResult", "Skips", "content_hash", "derived_id"]

#: How many error messages a reader keeps when ``skip_invalid=True`` (all skips are still counted).
MAX_ERRORS = 100


@dataclass
class Skips:
    """What ``--skip-invalid`` does with a bad row, in one place for every reader.

    ``add(exc)`` raises ``exc`` unless ``skip_invalid``; then it counts the row and keeps its message (the
    first :data:`MAX_ERRORS` of them).
    """

    skip_invalid: bool
    count: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, exc: DataError) -> None:
        if not self.skip_invalid:
            raise exc
        self.count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(str(exc))

    @property
    def first_error(self) -> str:
        """``"; first error: ..."`` for a "nothing valid" message, or ``""`` when nothing was skipped."""
        return f"; first error: {self.errors[0]}" if self.errors else ""


def content_hash(text: str) -> str:
    """Return the SHA-256 hex digest (64 lowercase hex characters) of ``text`` encoded as UTF-8.

    This is the project's one content hash: document ids, embedding caches and dedup all key on it.

    Parameters
    ----------
    text : str
        Any text.

    Returns
    -------
    str
        ``hashlib.sha256(text.encode("utf-8")).hexdigest()``.

    Examples
    --------
    >>> content_hash("abc")[:16]
    'ba7816bf8f01cfea'
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def derived_id(text: str) -> str:
    """Id given to a document that has none: ``"h"`` + the first 16 hex digits of its content hash.

    64 bits keep collisions negligible (about 3e-6 for 10^7 distinct texts), so two documents get
    the same derived id only when their texts are identical.
    """
    return "h" + content_hash(text)[:16]


@dataclass(frozen=True, slots=True)
class Document:
    """One corpus document (or chunk of one).

    Attributes
    ----------
    id : str
        Unique id within a corpus: the input's id field, else :func:`derived_id` of the text; chunks
        are ``"{parent id}#c{i}"``.
    text : str
        The text, exactly as read (not stripped).
    meta : dict of str to object
        Provenance: ``"source"`` (file path), ``"line"`` (1-based, JSONL/JSON/CSV) or ``"row"``
        (0-based, Parquet), fields copied with ``meta_fields``, and for chunks ``"parent_id"`` and
        ``"chunk"``.
    """

    id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)

    # Explicit pickling: Python 3.10 cannot unpickle frozen dataclasses with slots by itself, and
    # documents cross process boundaries (multiprocessing, Ray).
    def __getstate__(self) -> tuple[str, str, dict[str, Any]]:
        return (self.id, self.text, self.meta)

    def __setstate__(self, state: tuple[str, str, dict[str, Any]]) -> None:
        for name, value in zip(("id", "text", "meta"), state, strict=True):
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class ReadResult:
    """What :func:`equal.data.read_documents` returns.

    Attributes
    ----------
    items : list of Document
        The valid documents, in input order.
    skipped : int
        Number of invalid rows dropped (only non-zero with ``skip_invalid=True``).
    errors : list of str
        The first :data:`MAX_ERRORS` messages of the skipped rows, each ``"file:line: ..."``.
    path : str
        The path that was read.
    """

    items: list[Document]
    skipped: int
    errors: list[str]
    path: str


@dataclass(frozen=True)
class SFTReadResult:
    """What :func:`equal.data.read_sft` returns.

    Attributes
    ----------
    records : list of dict
        The valid records exactly as the file holds them (not converted).
    format : {"messages", "sharegpt", "alpaca", "qa", "prompt_completion"}
        The format shared by every record.
    skipped : int
        Number of invalid rows dropped (only non-zero with ``skip_invalid=True``).
    errors : list of str
        The first :data:`MAX_ERRORS` messages of the skipped rows.
    path : str
        The path that was read.
    """

    records: list[dict[str, Any]]
    format: str
    skipped: int
    errors: list[str]
    path: str
