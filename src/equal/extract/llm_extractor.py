"""QA extraction with an LLM: one batched request per document, then an optional refinement pass."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence

from equal.data.qa import QAPair
from equal.errors import LLMError
from equal.extract.base import DocumentLike, ExtractionResult, chunk_of, count, per_doc_clusters
from equal.extract.parse import normalize_for_compare, parse_pairs, validate_pair
from equal.extract.prompts import (
    DEFAULT_MAX_DOC_CHARS,
    PAIRS_FORMAT,
    PROMPT_STYLES,
    REFINE_VERSION,
    build_extract_messages,
    build_refine_messages,
    extract_instructions,
    prompt_version,
    refine_instructions,
    truncate_text,
)
from equal.llm.base import LLM, Completion, GenerationParams

__all__ = ["LLMExtractor"]

logger = logging.getLogger(__name__)

_EMPTY_JSON_LIST = "[]"


class LLMExtractor:
    """Extract QA pairs from documents with an LLM.

    Each :meth:`extract` call sends one request per document in a single ``llm.generate`` batch, parses
    every output tolerantly (:func:`~equal.extract.parse.parse_pairs`), validates each pair
    (:func:`~equal.extract.parse.validate_pair`) and fills in the provenance. With ``refine=True`` a
    second batch asks the model to correct each document's draft pairs against the document (fix the
    format, fill missing answers, fix wrong answers, drop unsupported pairs); the refined pairs replace
    the drafts, and when a refinement request fails the validated drafts are kept.

    Parameters
    ----------
    llm : LLM
        Any backend implementing :class:`equal.llm.base.LLM`.
    params : GenerationParams or None, default=None
        Sampling parameters; ``None`` means ``GenerationParams(max_tokens=512)`` (greedy).
    max_pairs : int, default=3
        Most pairs asked for, and kept, per document.
    refine : bool, default=False
        Run the refinement pass.
    min_chars : int, default=8
        Shortest question kept.
    max_chars : int, default=4000
        Longest question or answer kept.
    max_doc_chars : int, default=3000
        Character budget of a document inside the prompt (the bundled model has a 2k-token context).
    prompt_style : {"json", "lines"}, default="json"
        Ask for a JSON list (capable models) or ``Question:``/``Answer:`` lines (small models such as the
        bundled SmolLM2-135M); see :func:`equal.extract.prompts.build_extract_messages`.
    structured : bool, default=False
        With ``prompt_style="json"``, ask for structured output (:data:`~equal.extract.prompts.PAIRS_FORMAT`,
        ``{"pairs": [...]}``) unless ``params`` already carry a ``response_format``. Served backends
        constrain the answer to it (falling back to a plain request when the server refuses); the local
        backend ignores it; parsing stays tolerant either way. Off by default because it changes the
        request-cache key of existing JSON-style runs, and a server that refuses the first wire form
        (llama-cpp-python answers ``json_schema`` with HTTP 500) gets one extra request per process.
    template : str, optional
        A prompt template (:func:`~equal.extract.prompts.load_prompt_template`) for the user turn.
    examples : sequence of str, default=()
        Few-shot target examples shown in every extraction request.
    """

    def __init__(
        self,
        llm: LLM,
        *,
        params: GenerationParams | None = None,
        max_pairs: int = 3,
        refine: bool = False,
        min_chars: int = 8,
        max_chars: int = 4000,
        max_doc_chars: int = DEFAULT_MAX_DOC_CHARS,
        prompt_style: str = "json",
        structured: bool = False,
        template: str | None = None,
        examples: Sequence[str] = (),
    ) -> None:
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style={prompt_style!r} must be one of {', '.join(PROMPT_STYLES)}.")
        self.prompt_style = prompt_style
        if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1:
            raise ValueError(f"max_pairs={max_pairs!r} must be an int >= 1.")
        if min_chars < 0:
            raise ValueError(f"min_chars={min_chars} must be >= 0.")
        if max_chars < max(min_chars, 1):
            raise ValueError(f"max_chars={max_chars} must be >= max(min_chars={min_chars}, 1).")
        if max_doc_chars < 1:
            raise ValueError(f"max_doc_chars={max_doc_chars} must be >= 1.")
        self.llm = llm
        self.params = params if params is not None else GenerationParams(max_tokens=512)
        if not isinstance(structured, bool):
            raise ValueError(f"structured={structured!r} must be True or False.")
        self.structured = structured
        if structured and prompt_style == "json" and self.params.response_format is None:
            self.params = dataclasses.replace(self.params, response_format=PAIRS_FORMAT)
        self.max_pairs = max_pairs
        self.refine = refine
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.max_doc_chars = max_doc_chars
        self.template = template
        self.examples = tuple(examples)
        self._version = prompt_version(prompt_style, template=template, n_examples=len(self.examples))

    @property
    def prompt_version(self) -> str:
        """Version stored in the pairs: ``"qa-v1"``, or ``"qa-v1+refine-v1"`` for refined pairs."""
        return self._version + "+" + REFINE_VERSION if self.refine else self._version

    def extract_requests(self, docs: Sequence[DocumentLike]) -> list[list[dict[str, str]]]:
        """The extraction requests :meth:`extract` sends for ``docs`` (one per document; the dry run counts them)."""
        return [build_extract_messages(d.text, max_pairs=self.max_pairs, max_doc_chars=self.max_doc_chars,
                                       style=self.prompt_style, template=self.template, examples=self.examples)
                for d in docs]

    def _generate(self, requests: list[list[dict[str, str]]]) -> list[Completion]:
        if not requests:
            return []
        completions = list(self.llm.generate(requests, self.params))
        if len(completions) != len(requests):
            raise LLMError(
                f"LLM backend {type(self.llm).__name__} returned {len(completions)} completions "
                f"for {len(requests)} requests."
            )
        return completions

    def _select(
        self,
        raw: list[tuple[str, str]],
        doc_text: str,
        instructions: str,
        drops: Counter[str],
    ) -> list[tuple[str, str]]:
        kept: list[tuple[str, str]] = []
        seen: set[str] = set()
        for question, answer in raw:
            reason = validate_pair(
                question, answer, doc_text=doc_text, prompt_text=instructions,
                min_chars=self.min_chars, max_chars=self.max_chars,
            )
            if reason is None:
                key = normalize_for_compare(question)
                if key in seen:
                    reason = "duplicate"
                elif len(kept) >= self.max_pairs:
                    reason = "over_max_pairs"
                else:
                    seen.add(key)
                    kept.append((question.strip(), answer.strip()))
                    continue
            count(drops, reason)
        return kept

    def extract(
        self, docs: Sequence[DocumentLike], *, cluster: int | Sequence[int] = -1, round: int = -1
    ) -> ExtractionResult:
        """Extract QA pairs from ``docs``.

        Parameters
        ----------
        docs : sequence of Document
            Objects with ``id``, ``text`` and ``meta`` (``meta["chunk"]`` becomes ``QAPair.chunk``).
        cluster : int or sequence of int, default=-1
            Cluster of every document, or one per document, copied into the pairs.
        round : int, default=-1
            Bandit round, copied into the pairs.

        Returns
        -------
        ExtractionResult
            Pairs with provenance, all completions (extraction then refinement), drops by reason and
            the ids of documents whose request failed.

        Raises
        ------
        LLMError
            When the backend returns a different number of completions than requests.
        """
        docs = list(docs)
        clusters = per_doc_clusters(cluster, len(docs))
        views = [truncate_text(doc.text, self.max_doc_chars) for doc in docs]
        first = self._generate(self.extract_requests(docs))
        completions = list(first)

        instructions = extract_instructions(max_pairs=self.max_pairs, style=self.prompt_style, template=self.template)
        drops: Counter[str] = Counter()
        failed: list[str] = []
        chosen: list[tuple[list[tuple[str, str]], str]] = [([], self._version) for _ in docs]
        first_drops: list[Counter[str]] = [Counter() for _ in docs]
        drafts: dict[int, list[tuple[str, str]]] = {}
        for i, (doc, comp) in enumerate(zip(docs, first, strict=True)):
            if not comp.ok:
                failed.append(doc.id)
                logger.debug("extraction request for %s failed: %s", doc.id, comp.error)
                continue
            raw = parse_pairs(comp.text, truncated=comp.finish_reason == "length")
            if not raw:
                count(drops, "no_pairs_parsed")
                continue
            chosen[i] = (self._select(raw, views[i], instructions, first_drops[i]), self._version)
            if self.refine:
                usable = [(q, a) for q, a in raw if q.strip()][: self.max_pairs]
                if usable:
                    drafts[i] = usable

        refine_failed: list[str] = []
        if drafts:
            order = sorted(drafts)
            second = self._generate(
                [build_refine_messages(docs[i].text, drafts[i], max_doc_chars=self.max_doc_chars)
                 for i in order]
            )
            completions.extend(second)
            refine_text = refine_instructions()
            for i, comp in zip(order, second, strict=True):
                refined = parse_pairs(comp.text, truncated=comp.finish_reason == "length") if comp.ok else []
                if refined:
                    refine_drops: Counter[str] = Counter()
                    chosen[i] = (self._select(refined, views[i], refine_text, refine_drops),
                                 self._version + "+" + REFINE_VERSION)
                    first_drops[i] = refine_drops
                elif comp.ok and _EMPTY_JSON_LIST in "".join((comp.text or "").split()):
                    # The model judged no draft supported by the document: that is a result, not a failure.
                    count(drops, "refine_removed", len(drafts[i]))
                    chosen[i] = ([], self._version + "+" + REFINE_VERSION)
                    first_drops[i] = Counter()
                else:
                    refine_failed.append(docs[i].id)

        pairs: list[QAPair] = []
        model = str(self.llm.model)
        for i, doc in enumerate(docs):
            drops.update(first_drops[i])
            kept, version = chosen[i]
            for question, answer in kept:
                pairs.append(QAPair(
                    question=question, answer=answer, doc_id=str(doc.id), chunk=chunk_of(doc),
                    cluster=clusters[i], round=int(round), model=model, prompt_version=version,
                    extractor="llm",
                ))
        return ExtractionResult(
            pairs=pairs, completions=completions, drops=dict(drops), failed_docs=failed,
            refine_failed=refine_failed,
        )
