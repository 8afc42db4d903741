"""Training data of ``equal align``: documents with the pairs they yielded, and the mined training rows.

A row is (anchor = the document, positive = one of its pairs rendered as the loop embeds pairs,
``question + "\\n" + answer``, negative_1..k = mined pairs of *other* documents), plus a ``label`` column of
document numbers (the anchor's, then each negative's) that :class:`~equal.align._loss.InfoNCELoss` uses to
keep a document's own pairs out of its negatives when rows share a batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from equal.errors import DataError

__all__ = ["AlignExample", "AlignRows", "data_sha256", "examples_from_pairs", "mine_rows", "read_align_data"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlignExample:
    """One document and the texts of the pairs it yielded.

    Attributes
    ----------
    document : str
        The document text (the anchor).
    pairs : tuple of str
        Its pairs, rendered as ``question + "\\n" + answer`` (the positives).
    doc_id : str, default=""
    """

    document: str
    pairs: tuple[str, ...]
    doc_id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "pairs", tuple(self.pairs))


def data_sha256(examples: Sequence[AlignExample]) -> str:
    """sha256 of the canonical JSON of ``[[document, [pairs...]], ...]`` (ids left out: they change nothing)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.document, list(ex.pairs)], ensure_ascii=False).encode("utf-8", "surrogatepass"))
        h.update(b"\n")
    return h.hexdigest()


def examples_from_pairs(documents: Mapping[str, str], pairs: Sequence[Any], *, path: str | None = None
                        ) -> list[AlignExample]:
    """Group QA pairs by their document (``pair.doc_id``), in order of first appearance.

    Parameters
    ----------
    documents : mapping of str to str
        Document id -> text.
    pairs : sequence of QAPair
    path : str, optional
        Named in the error of a pair whose document is unknown.
    """
    grouped: dict[str, list[str]] = {}
    for i, p in enumerate(pairs, start=1):
        if p.doc_id not in documents:
            raise DataError(f'field "doc_id": document {p.doc_id!r} is not in the corpus', path=path, line=i,
                            field="doc_id")
        texts = grouped.setdefault(p.doc_id, [])
        text = p.render_text()
        if text not in texts:
            texts.append(text)
    return [AlignExample(documents[d], tuple(t), d) for d, t in grouped.items()]


def _pair_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, Mapping):
        q, a = value.get("question"), value.get("answer")
        if isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip():
            return q + "\n" + a  # QAPair.render_text
        msgs = value.get("messages")
        if isinstance(msgs, list) and len(msgs) >= 2 and all(isinstance(m, Mapping) for m in msgs):
            user = next((m.get("content") for m in msgs if m.get("role") == "user"), None)
            bot = next((m.get("content") for m in msgs if m.get("role") == "assistant"), None)
            if isinstance(user, str) and isinstance(bot, str):
                return user + "\n" + bot
    return None


def _read_jsonl(path: Path, skip_invalid: bool) -> list[AlignExample]:
    from equal.data._sources import error, rows

    out: list[AlignExample] = []
    for loc, row in rows(path):
        try:
            if isinstance(row, DataError):
                raise row
            doc = row.get("document")
            if not isinstance(doc, str) or not doc.strip():
                raise error(loc, "must be a non-empty string", "document")
            pairs = row.get("pairs")
            if not isinstance(pairs, list) or not pairs:
                raise error(loc, "must be a non-empty list of pairs", "pairs")
            texts = []
            for j, item in enumerate(pairs):
                text = _pair_text(item)
                if text is None:
                    raise error(loc, f"item {j} must be a text, {{question, answer}} or {{messages}}", "pairs")
                if text not in texts:
                    texts.append(text)
            doc_id = row.get("id")
            out.append(AlignExample(doc, tuple(texts), str(doc_id) if doc_id is not None else str(loc.line)))
        except DataError:
            if not skip_invalid:
                raise
            logger.info("skipping an invalid row of %s", path)
    return out


def _read_run(run: Path) -> list[AlignExample]:
    """An ``equal extract`` run directory: its ``qa.jsonl`` joined to the run's corpus through ``doc_id``."""
    from equal.config import load_toml
    from equal.data import chunk_documents, read_documents
    from equal.data.io import iter_jsonl
    from equal.data.qa import QAPair

    cfg = load_toml(run / "run.toml").data
    res = read_documents(cfg.corpus, text_field=cfg.text_field, id_field=cfg.id_field,
                         skip_invalid=cfg.skip_invalid)
    docs = {d.id: d.text for d in chunk_documents(res.items, cfg.chunk_tokens)}
    qa = run / "qa.jsonl"
    pairs = [QAPair.from_record(r, path=str(qa), line=i) for i, r in enumerate(iter_jsonl(qa), start=1)]
    return examples_from_pairs(docs, pairs, path=str(qa))


def read_align_data(path: str | Path, *, skip_invalid: bool = False) -> list[AlignExample]:
    """Documents and their pairs from an ``equal extract`` run directory or a JSONL of ``{document, pairs}``.

    Parameters
    ----------
    path : str or Path
        A run directory (``qa.jsonl`` and ``run.toml``; documents are read from the run's corpus and
        joined through each pair's ``doc_id``), or a JSONL file whose rows are
        ``{"document": str, "pairs": [str | {"question", "answer"} | {"messages"}], "id"?: str}``.
    skip_invalid : bool, default=False
        Skip invalid JSONL rows instead of raising.

    Raises
    ------
    DataError
        A malformed row (file, line and field named) or a pair whose document is not in the corpus.
    """
    p = Path(path)
    if p.is_dir():
        if not (p / "qa.jsonl").is_file() or not (p / "run.toml").is_file():
            raise DataError("not an equal extract run directory (no qa.jsonl and run.toml)", path=str(p))
        return _read_run(p)
    if not p.is_file():
        raise DataError("no such file or directory", path=str(p))
    return _read_jsonl(p, skip_invalid)


# ----------------------------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class AlignRows:
    """The columns of the training dataset (``anchor``, ``positive``, ``negative_1..k``, ``label``).

    Attributes
    ----------
    columns : dict of str to list
    hard_negatives : int
        k: negatives per row actually mined (at most the number asked; fewer when the data is small).
    """

    columns: dict[str, list[Any]]
    hard_negatives: int

    def __len__(self) -> int:
        return len(self.columns["anchor"])


@contextlib.contextmanager
def _seeded_random(seed: int) -> Iterator[None]:
    """``mine_hard_negatives`` samples with the stdlib's global ``random``: seed it, then restore its state."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def mine_rows(examples: Sequence[AlignExample], model: Any, *, hard_negatives: int, negative_range: tuple[int, int],
              seed: int, batch_size: int = 64) -> AlignRows:
    """One row per (document, pair), with hard negatives mined among the other documents' pairs.

    Negatives are drawn at random (seeded) from ranks ``negative_range`` of every pair text by cosine
    similarity to the document under ``model``, after the document's own pairs are taken out (EQUAL's
    FlagEmbedding ``hn_mine``: ``--range_for_sampling 2-200 --negative_number 15``), with
    :func:`sentence_transformers.util.mine_hard_negatives`. When fewer candidates exist than asked for, k is
    lowered so that every row keeps the same number of negatives (none are dropped).
    """
    texts_owner: dict[str, int] = {}
    for g, ex in enumerate(examples):
        for t in ex.pairs:
            texts_owner.setdefault(t, g)
    doc_group: dict[str, int] = {}
    for g, ex in enumerate(examples):
        doc_group.setdefault(ex.document, g)
    # positives per distinct document text (equal texts are one query to the miner)
    positives: dict[str, set[str]] = {}
    for ex in examples:
        positives.setdefault(ex.document, set()).update(ex.pairs)
    anchors = [ex.document for ex in examples for _ in ex.pairs]
    pos = [t for ex in examples for t in ex.pairs]
    n_corpus = len(texts_owner)
    lo, hi = negative_range
    max_pos = max(len(s) for s in positives.values())
    window = min(hi + max_pos, n_corpus)
    available = min(min(hi, window - len(s)) for s in positives.values()) - lo
    k = min(int(hard_negatives), max(available, 0))
    if k < hard_negatives:
        logger.info("mining %d hard negatives per row, not %d: only %d pairs of other documents in ranks %d-%d",
                    k, hard_negatives, max(available, 0), lo, hi)
    if k == 0:
        cols: dict[str, list[Any]] = {"anchor": anchors, "positive": pos,
                                      "label": [[doc_group[a]] for a in anchors]}
        return AlignRows(cols, 0)

    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    # it prints a score table on stdout and tqdm bars on stderr whatever ``verbose`` says: library code is silent
    with _seeded_random(seed), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        mined = mine_hard_negatives(
            Dataset.from_dict({"anchor": anchors, "positive": pos}), model, range_min=lo, range_max=hi,
            num_negatives=k, sampling_strategy="random", output_format="n-tuple", batch_size=batch_size,
            verbose=False,
        )
    cols = {name: list(mined[name]) for name in mined.column_names}
    if len(cols["anchor"]) != len(anchors):  # cannot happen with k as computed above; never train on less silently
        raise RuntimeError(f"hard-negative mining kept {len(cols['anchor'])} of {len(anchors)} rows")
    negs = [f"negative_{j}" for j in range(1, k + 1)]
    neg_rows = list(zip(*(cols[n] for n in negs), strict=True))
    for a, row in zip(cols["anchor"], neg_rows, strict=True):
        if any(t in positives[a] for t in row):  # the miner's contract, checked: never a document's own pair
            raise RuntimeError("a document's own pair was mined as its negative")
    cols["label"] = [[doc_group[a], *(texts_owner[t] for t in row)]
                     for a, row in zip(cols["anchor"], neg_rows, strict=True)]
    return AlignRows(cols, k)
