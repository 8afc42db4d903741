"""What every extractor returns, and the small helpers the extractors share."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from equal.data.qa import QAPair
from equal.llm.base import Completion

__all__ = ["DocumentLike", "ExtractionResult", "Extractor"]


@runtime_checkable
class DocumentLike(Protocol):
    """Anything with ``id``, ``text`` and ``meta`` (``equal.data.records.Document`` is one)."""

    @property
    def id(self) -> str: ...

    @property
    def text(self) -> str: ...

    @property
    def meta(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ExtractionResult:
    """The outcome of one :meth:`Extractor.extract` call.

    Attributes
    ----------
    pairs : list of QAPair
        The pairs kept, grouped by document in input order.
    completions : list of Completion
        Every completion received, in request order (extraction first, then refinement), for the cost
        ledger. Empty for extractors that use no LLM.
    drops : dict of str to int
        Counts of what was thrown away, by reason: the pair-level reasons of
        :func:`equal.extract.parse.validate_pair`, plus ``duplicate`` (same question twice from one
        document), ``over_max_pairs`` (pairs beyond the number asked for), ``refine_removed`` (drafts
        the refinement pass judged unsupported, answering an empty list), and the completion-level
        ``no_pairs_parsed`` (an output in which no pair could be found; counts outputs, not pairs).
    failed_docs : list of str
        Ids of documents whose extraction request failed (``Completion.error`` set). A failure is not an
        empty answer: these documents yielded no pairs and can be retried.
    refine_failed : list of str
        Ids of documents whose refinement request failed or gave nothing parseable; their first-pass
        pairs are kept.
    """

    pairs: list[QAPair]
    completions: list[Completion]
    drops: dict[str, int]
    failed_docs: list[str]
    refine_failed: list[str] = field(default_factory=list)

    @property
    def n_pairs(self) -> int:
        """Number of pairs kept."""
        return len(self.pairs)


@runtime_checkable
class Extractor(Protocol):
    """Turns documents into QA pairs."""

    def extract(
        self, docs: Sequence[DocumentLike], *, cluster: int | Sequence[int] = -1, round: int = -1
    ) -> ExtractionResult:
        """Extract pairs from ``docs``; ``cluster`` (one value or one per document) and ``round`` are
        copied into the pairs' provenance."""
        ...


def per_doc_clusters(cluster: int | Sequence[int], n_docs: int) -> list[int]:
    """Expand ``cluster`` (one int, or one per document) into a list of ``n_docs`` ints."""
    if isinstance(cluster, (int,)) and not isinstance(cluster, bool):
        return [int(cluster)] * n_docs
    values = [int(c) for c in cluster]
    if len(values) != n_docs:
        raise ValueError(f"cluster has {len(values)} values; expected one per document ({n_docs}).")
    return values


def chunk_of(doc: DocumentLike) -> int:
    """Chunk index recorded in ``doc.meta["chunk"]`` (0 when absent or not an integer)."""
    meta = getattr(doc, "meta", None) or {}
    value = meta.get("chunk", 0)
    if isinstance(value, bool):
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def count(drops: Counter[str], reason: str, k: int = 1) -> None:
    """Add ``k`` to the ``reason`` counter (kept as a function so every site spells keys the same)."""
    if k:
        drops[reason] += k
