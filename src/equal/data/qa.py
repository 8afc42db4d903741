"""The question–answer pair record and its line format in ``RUN/qa.jsonl``.

A :class:`QAPair` carries the pair itself and its provenance (which document and chunk it came from,
which cluster and bandit round chose that document, which model and prompt version produced it). Its
``id`` is derived from the content (question and answer only), so the same pair extracted twice gets
the same id whatever its provenance, which is what deduplication keys on.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from equal.data.records import content_hash
from equal.errors import DataError

__all__ = ["QAPair", "attach_fields", "qa_id", "read_qa_pairs"]

_INT_FIELDS = ("chunk", "cluster", "round")
_STR_FIELDS = ("doc_id", "model", "prompt_version", "extractor")


def qa_id(question: str, answer: str) -> str:
    """Return the content id of a pair: the first 16 hex digits of the SHA-256 of ``[question, answer]``.

    The pair is serialised as a JSON list before hashing so that no choice of separator can make two
    different pairs collide (``("a\\nb", "c")`` and ``("a", "b\\nc")`` hash differently).

    Parameters
    ----------
    question, answer : str
        The pair, exactly as stored (no normalisation).

    Returns
    -------
    str
        16 lowercase hex characters.

    Examples
    --------
    >>> qa_id("What is 2 + 2?", "4") == qa_id("What is 2 + 2?", "4")
    True
    """
    return content_hash(json.dumps([question, answer], ensure_ascii=False))[:16]


@dataclass(frozen=True)
class QAPair:
    """One extracted question–answer pair with its provenance.

    Attributes
    ----------
    question, answer : str
        The pair; the question becomes the user turn and the answer the assistant turn.
    doc_id : str
        Id of the document (or chunk, as ``"{parent}#c{i}"``) the pair was extracted from.
    chunk : int, default=0
        Index of the chunk within its parent document (0 for unchunked documents).
    cluster : int, default=-1
        Cluster of the document when the bandit chose it (-1: not known / no clustering).
    round : int, default=-1
        Bandit round that sent the document to the extractor (-1: outside the loop).
    model : str, default=""
        Model that produced the pair ("" for rule-based extraction).
    prompt_version : str, default=""
        Version of the prompt (``"qa-v1"``, ``"qa-v1+refine-v1"``) or of the rules (``"rules-v1"``).
    extractor : str, default="llm"
        ``"llm"`` or ``"rules"``.
    id : str, default=derived
        Content id, :func:`qa_id` of question and answer when not given.
    fields : dict of str to object, default={}
        Corpus fields of the source document kept with ``--keep-fields`` (``{"license": "cc-by-4.0"}``);
        not part of ``id`` (the same pair from two documents is still one pair).
    """

    question: str
    answer: str
    doc_id: str
    chunk: int = 0
    cluster: int = -1
    round: int = -1
    model: str = ""
    prompt_version: str = ""
    extractor: str = "llm"
    id: str = field(default="")
    fields: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for name in ("question", "answer", *_STR_FIELDS, "id"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"QAPair.{name} must be a str; got {type(value).__name__} {value!r:.60}.")
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"QAPair.{name} must be an int; got {type(value).__name__} {value!r:.60}.")
        if not isinstance(self.fields, Mapping):
            raise TypeError(f"QAPair.fields must be a mapping; got {type(self.fields).__name__}.")
        if not self.id:
            # Frozen dataclass: the derived id is set once, here.
            object.__setattr__(self, "id", qa_id(self.question, self.answer))

    def render_text(self) -> str:
        """Return ``question + "\\n" + answer``, the text that gets embedded."""
        return self.question + "\n" + self.answer

    def to_messages(self) -> list[dict[str, str]]:
        """Return the pair as a two-turn chat: a user turn and an assistant turn."""
        return [
            {"role": "user", "content": self.question},
            {"role": "assistant", "content": self.answer},
        ]

    def to_record(self) -> dict[str, Any]:
        """Return the ``RUN/qa.jsonl`` line of this pair (a JSON-serialisable dict).

        Keys: ``messages`` (see :meth:`to_messages`), ``id``, ``doc_id``, ``chunk``, ``cluster``, ``round``,
        ``model``, ``prompt_version``, ``extractor``, and ``fields`` when some corpus fields were kept.
        """
        record = {
            "messages": self.to_messages(),
            "id": self.id,
            "doc_id": self.doc_id,
            "chunk": self.chunk,
            "cluster": self.cluster,
            "round": self.round,
            "model": self.model,
            "prompt_version": self.prompt_version,
            "extractor": self.extractor,
        }
        if self.fields:
            record["fields"] = dict(self.fields)
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, path: str | None = None,
                    line: int | None = None) -> QAPair:
        """Rebuild a pair from a :meth:`to_record` dict.

        Parameters
        ----------
        record : mapping
            A ``qa.jsonl`` line. ``messages`` (a user turn then an assistant turn) and ``doc_id`` are
            required; the other provenance keys take the dataclass defaults when absent. A stored
            ``id`` is kept as is.
        path, line : str and int, optional
            Where the record was read, for the error message.

        Raises
        ------
        DataError
            When the record is not a mapping, ``messages`` is not a user/assistant pair of strings, or
            a provenance field has the wrong type.
        """
        def fail(message: str, field_name: str | None = None) -> DataError:
            return DataError(message, path=path, line=line, field=field_name)

        if not isinstance(record, Mapping):
            raise fail(f"a QA record must be a JSON object; got {type(record).__name__}.")
        messages = record.get("messages")
        if not isinstance(messages, list) or len(messages) != 2:
            raise fail('"messages" must be a list of two turns (user, assistant).', "messages")
        roles = []
        contents = []
        for turn in messages:
            if not isinstance(turn, Mapping) or not isinstance(turn.get("content"), str):
                raise fail('each turn in "messages" needs a string "content".', "messages")
            roles.append(turn.get("role"))
            contents.append(turn["content"])
        if roles != ["user", "assistant"]:
            raise fail(f'"messages" roles must be ["user", "assistant"]; got {roles}.', "messages")
        if "doc_id" not in record:
            raise fail('missing "doc_id".', "doc_id")
        kwargs: dict[str, Any] = {}
        for name in (*_STR_FIELDS, "id"):
            if name in record:
                if not isinstance(record[name], str):
                    raise fail(f'"{name}" must be a string; got {record[name]!r:.60}.', name)
                kwargs[name] = record[name]
        for name in _INT_FIELDS:
            if name in record:
                value = record[name]
                if isinstance(value, bool) or not isinstance(value, int):
                    raise fail(f'"{name}" must be an integer; got {value!r:.60}.', name)
                kwargs[name] = value
        if record.get("fields") is not None:
            if not isinstance(record["fields"], Mapping):
                raise fail(f'"fields" must be an object; got {record["fields"]!r:.60}.', "fields")
            kwargs["fields"] = dict(record["fields"])
        return cls(question=contents[0], answer=contents[1], **kwargs)


def attach_fields(pairs: Iterable[QAPair], docs: Iterable[Any]) -> list[QAPair]:
    """The pairs with their document's kept corpus fields (``doc.meta["fields"]``) as ``fields``.

    Documents read with ``keep_fields`` (:func:`equal.data.read_documents`) hold them; a pair whose
    document holds none, or is not among ``docs``, is returned as it is.
    """
    kept = {d.id: d.meta["fields"] for d in docs if d.meta.get("fields")}
    if not kept:
        return list(pairs)
    return [dataclasses.replace(p, fields=dict(kept[p.doc_id])) if p.doc_id in kept and not p.fields else p
            for p in pairs]


def read_qa_pairs(path: str | os.PathLike[str]) -> list[QAPair]:
    """Read the pairs of a ``RUN/qa.jsonl`` log, in file order.

    A truncated last line (an interrupted append) is ignored as :func:`equal.data.iter_jsonl` does.

    Parameters
    ----------
    path : str or os.PathLike
        The log.

    Returns
    -------
    list of QAPair

    Raises
    ------
    DataError
        A line is not JSON, or not a QA record; the message names the file, the 1-based line and
        the field (``qa.jsonl:12: field "messages": ...``).
    """
    from equal.data.io import iter_jsonl_lines

    name = str(path)
    pairs = []
    for line, record in iter_jsonl_lines(path):
        try:
            pairs.append(QAPair.from_record(record, path=name, line=line))
        except DataError as exc:
            if exc.field is None or f'field "{exc.field}"' in str(exc):
                raise
            # from_record's messages quote the key already; add the house prefix for the field.
            msg = str(exc).removeprefix(f"{name}:{line}: ")
            raise DataError(f'field "{exc.field}": {msg}', path=name, line=line, field=exc.field) from None
    return pairs
