"""``equal extract --dry-run``: what a run would read, ask, cost and compute, before any LLM call; and the preflight.

:func:`dry_run` reads and chunks the corpus and reads the target (nothing is embedded and nothing is written:
no run directory is created), builds the extractor a real run builds (same prompt builder, template and
few-shot examples) and counts the input tokens of the real extraction requests of a seeded sample of
chunks with the model's own tokenizer:

- the local llama.cpp model: llama.cpp's tokenizer on the prompt rendered with the GGUF's chat template,
  as ``create_chat_completion`` renders it (so the count is the ``usage`` a run records);
- the local transformers model: its tokenizer and chat template;
- a served model: :meth:`equal.llm.OpenAILLM.count_tokens`, the counting behind ``[llm] tokenizer`` (the
  tokenizer named there, else the model when it is a local file or folder, else ``ceil(chars / 4)``).

Which chunks: ``all`` reads every chunk and ``random`` a seeded order that is known in advance, so for
these the sample is (up to ``sample`` of) the very chunks the run will read; the bandit strategies choose
as they go, so for them the sample is a seeded uniform one of the whole corpus.

Estimates (documented, not measured): the documents read are ``budget_docs`` (warm-up included) capped by
the corpus; under ``budget_tokens`` / ``budget_usd`` alone, as many as the budget buys at the estimated
tokens per request, rounded up to whole rounds. Output tokens: ``max_tokens`` per request is the upper
bound; the estimate is ``min(max_tokens, OUTPUT_TOKENS_PER_PAIR * max_pairs)``. A refinement pass adds at
most one request per document, whose prompt is the document plus the drafts (estimated as the extraction
prompt plus the estimated output). Requests of an LLM judge (filter or reward) are not estimated. Money is
at ``[llm] price_in`` / ``price_out`` per million tokens; FLOPs are :attr:`equal.llm.Ledger.est_flops`
(``2 * n_params * tokens``; known for local models).

:func:`preflight` is one cheap check of the LLM: for a served model one request with ``max_tokens=1`` and
no retries (:meth:`equal.llm.OpenAILLM.probe_client`), for a local model loading it. A real run makes it
before it embeds anything (see :func:`equal.pipeline.extract.run_extract`), through the run's request cache:
it is paid for once per run directory (a resumed run, whose setup is on disk, gets it from the cache and
fails as cheaply on its first real request), and once per dry run, which writes nothing. It is left out of
the ledger (a dozen prompt tokens and one generated token), so the ledger holds exactly the run's own
requests and compares with the dry run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from equal.config import ExtractConfig
from equal.errors import LLMError

__all__ = ["OUTPUT_TOKENS_PER_PAIR", "DryRun", "Preflight", "check_preflight", "dry_run", "preflight"]

logger = logging.getLogger(__name__)

#: The output estimate per pair asked for (a question and a short answer, with their labels).
OUTPUT_TOKENS_PER_PAIR = 64

_SAMPLE = 256


@dataclass(frozen=True)
class Preflight:
    """The result of :func:`preflight`.

    Attributes
    ----------
    ok : bool
    backend : str
        ``openai``, ``llama.cpp``, ``transformers`` or the class name of a given backend.
    target : str
        The URL (secrets masked) or the model.
    seconds : float
    detail : str
        What was checked, or the error.
    n_params : int or None
        Model parameters, when known (local models).
    """

    ok: bool
    backend: str
    target: str
    seconds: float
    detail: str
    n_params: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DryRun:
    """What ``equal extract`` would do with these settings (``--dry-run --json`` prints :meth:`to_dict`).

    Attributes
    ----------
    source_documents, documents : int
        Corpus documents, and the chunks they make (the units the run reads).
    skipped_rows, target_examples : int
    documents_to_read : int
        Chunks expected to be sent to the extractor (the warm-up's included).
    warmup_docs : int
    requests : int
        Expected LLM requests: ``extraction_requests + refine_requests``.
    extraction_requests, refine_requests : int
        One per document read; at most one per document for the refinement pass.
    sample_size : int
        Requests whose input tokens were counted.
    tokens_in_per_request : float
        Mean input tokens of the sampled extraction requests.
    tokens_in : int
        Expected input tokens of all requests.
    tokens_out_max, tokens_out : int
        Output tokens: the upper bound (``max_tokens`` per request) and the estimate.
    tokenizer : str
        How the tokens were counted.
    price_in, price_out : float or None
        Per million tokens.
    est_cost, est_cost_max : float or None
        Money for the estimate and for the upper bound of output tokens.
    n_params : int or None
    est_flops : float or None
    preflight : dict or None
        :meth:`Preflight.to_dict` (None with the rules extractor: no LLM).
    notes : list of str
    """

    strategy: str
    extractor: str
    model: str | None
    source_documents: int
    documents: int
    skipped_rows: int
    target_examples: int
    documents_to_read: int
    warmup_docs: int
    requests: int
    extraction_requests: int
    refine_requests: int
    sample_size: int
    tokens_in_per_request: float
    tokens_in: int
    tokens_out_max: int
    tokens_out: int
    tokenizer: str
    price_in: float | None
    price_out: float | None
    est_cost: float | None
    est_cost_max: float | None
    n_params: int | None
    est_flops: float | None
    preflight: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self) -> list[tuple[str, str]]:
        """The table ``equal extract --dry-run`` prints: (label, value)."""
        from equal.report.cost import format_flops, format_money

        chunks = f"{self.documents:,}" + (f" chunks of {self.source_documents:,} documents"
                                          if self.documents != self.source_documents else " documents")
        pf = self.preflight
        money = ("n/a (set --price-in / --price-out)" if self.est_cost is None
                 else f"{format_money(self.est_cost)} (at most {format_money(self.est_cost_max)})")
        out = [
            ("Corpus", chunks + (f", {self.skipped_rows:,} rows skipped" if self.skipped_rows else "")),
            ("Target examples", f"{self.target_examples:,}"),
            ("Strategy / extractor",
             f"{self.strategy} / {self.extractor}" + (f" ({self.model})" if self.model else "")),
            ("Documents to read", f"{self.documents_to_read:,}"
             + (f" ({self.warmup_docs:,} in the warm-up)" if self.warmup_docs else "")),
            ("LLM requests", f"{self.requests:,}" + (f" ({self.refine_requests:,} at most for refinement)"
                                                     if self.refine_requests else "")),
            ("Input tokens", f"{self.tokens_in:,} ({self.tokens_in_per_request:,.1f} per request over "
                             f"{self.sample_size:,} counted; {self.tokenizer})"),
            ("Output tokens", f"{self.tokens_out:,} estimated, {self.tokens_out_max:,} at most (max_tokens)"),
            ("Money", money),
            ("FLOPs", format_flops(self.est_flops) if self.est_flops is not None else "n/a (model size unknown)"),
            ("Preflight", "skipped" if pf is None else f"{'ok' if pf['ok'] else 'FAILED'}: {pf['backend']} "
             f"{pf['target']}: {pf['detail']} ({pf['seconds']:.2f} s)"),
        ]
        return out + [("Note", n) for n in self.notes]


# ----------------------------------------------------------------------------------------------- preflight


def _unwrap(llm: Any) -> Any:
    """The backend behind wrappers such as :class:`~equal.llm.CachedLLM`."""
    for _ in range(8):
        inner = getattr(llm, "llm", None)
        if inner is None or inner is llm:
            break
        llm = inner
    return llm


_PROBE = [{"role": "user", "content": "Reply with OK."}]


def _probe(llm: Any, cache: Path | None) -> Any:
    """The preflight request (``max_tokens=1``), through the run's request cache when there is one."""
    from equal.llm import CachedLLM, GenerationParams

    params = GenerationParams(max_tokens=1, seed=0)
    if cache is None:
        return llm.generate([_PROBE], params)[0]
    with CachedLLM(llm, cache) as cached:
        return cached.generate([_PROBE], params)[0]


def preflight(llm: Any, *, load: bool = True, timeout: float = 60.0, cache: Path | None = None) -> Preflight:
    """One cheap check that the LLM can answer, before anything costly.

    Parameters
    ----------
    llm : equal.llm.LLM
        The backend (wrappers such as :class:`~equal.llm.CachedLLM` are looked through).
    load : bool, default=True
        For a local model: load it (the check); False only checks that it was constructed (its file exists).
    timeout : float, default=60
        Seconds the request of a served model may take (it is sent once, without retries).
    cache : path, optional
        The run's ``llm_cache.sqlite``: the request is answered from it when it was made before (so a resumed
        run does not pay for it again) and stored in it. None (the dry run): always sent.

    Returns
    -------
    Preflight
        ``ok`` False with the error in ``detail`` when the check failed (see :func:`check_preflight`).
    """
    from equal._redact import redact_url
    from equal.llm import LlamaCppLLM, LocalLLM, OpenAILLM
    from equal.llm.ledger import _n_params_of

    base = _unwrap(llm)
    t0 = time.perf_counter()
    if isinstance(base, (LlamaCppLLM, LocalLLM)):
        kind = "llama.cpp" if isinstance(base, LlamaCppLLM) else "transformers"
        try:
            if load:
                base.load()
            n_params = _n_params_of(base) if (load or isinstance(base, LocalLLM)) else None
        except Exception as exc:  # the model file is there but does not load: say so before any work
            return Preflight(False, kind, base.model, round(time.perf_counter() - t0, 3),
                             f"cannot load the model: {type(exc).__name__}: {exc}")
        return Preflight(True, kind, base.model, round(time.perf_counter() - t0, 3),
                         "model loaded" if load else "model file found", n_params)
    served = isinstance(base, OpenAILLM)
    kind = "openai" if served else type(base).__name__
    target = redact_url(str(base.identity.get("base_url", ""))) if served else str(getattr(base, "model", ""))
    try:
        c = _probe(base.probe_client(timeout=timeout) if served else base, cache)
    except Exception as exc:  # a backend of the caller's that raises instead of failing the completion
        return Preflight(False, kind, target, round(time.perf_counter() - t0, 3), f"{type(exc).__name__}: {exc}")
    # one token may well be the end of the answer: an empty answer still proves URL, key and model
    ok = c.ok or c.extra.get("reason") == "empty_content"
    detail = (f"model {base.model} answered" + (" (from the run's cache)" if c.cached else "")) if ok else str(c.error)
    return Preflight(ok, kind, target, round(time.perf_counter() - t0, 3), detail,
                     None if served else _n_params_of(base))


def check_preflight(llm: Any, *, load: bool = True, timeout: float = 60.0, cache: Path | None = None) -> Preflight:
    """:func:`preflight`, raising :class:`~equal.errors.LLMError` (one line: what failed and what to check)."""
    result = preflight(llm, load=load, timeout=timeout, cache=cache)
    if not result.ok:
        hint = ("check --base-url, --model and the API key ($EQUAL_API_KEY or $OPENAI_API_KEY)"
                if result.backend == "openai" else "check --model")
        raise LLMError(f"preflight of the LLM ({result.backend} {result.target}) failed: {result.detail}; {hint}. "
                       "Nothing was embedded and no extraction request was sent.")
    return result


# ----------------------------------------------------------------------------------------------- counting


def _llama_counter(llama: Any) -> Callable[[Sequence[Any]], int]:
    """Prompt tokens as llama-cpp-python's ``create_chat_completion`` makes them (the GGUF's chat template)."""
    from llama_cpp import llama_chat_format

    eos_id, bos_id = llama.token_eos(), llama.token_bos()
    formatter = llama_chat_format.Jinja2ChatFormatter(
        template=llama.metadata["tokenizer.chat_template"],
        eos_token=llama._model.token_get_text(eos_id) if eos_id != -1 else "",
        bos_token=llama._model.token_get_text(bos_id) if bos_id != -1 else "",
    )

    def count(messages: Sequence[Any]) -> int:
        result = formatter(messages=[dict(m) for m in messages])
        return len(llama.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True))

    return count


def _hf_counter(model_dir: Any) -> Callable[[Sequence[Any]], int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))

    def count(messages: Sequence[Any]) -> int:
        prompt = tok.apply_chat_template([dict(m) for m in messages], tokenize=False, add_generation_prompt=True)
        return len(tok(str(prompt), add_special_tokens=False)["input_ids"])

    return count


def _counter(llm: Any) -> tuple[Callable[[Sequence[Any]], int], str]:
    """``(count(messages) -> prompt tokens, how)`` for the backend ``llm``."""
    from equal.llm import LlamaCppLLM, LocalLLM, OpenAILLM

    base = _unwrap(llm)
    if isinstance(base, LlamaCppLLM):
        return _llama_counter(base.llama), "llama.cpp tokenizer and the GGUF's chat template"
    if isinstance(base, LocalLLM):
        return _hf_counter(base.model_dir()), "the model's tokenizer and chat template"
    if isinstance(base, OpenAILLM):
        how = base.token_counting
        label = "[llm] tokenizer" if how == "tokenizer" else "estimate: ceil(chars / 4) (set [llm] tokenizer)"
        return (lambda m: base.count_tokens(m)[0]), label
    return (lambda m: math.ceil(sum(len(str(x.get("content", ""))) for x in m) / 4)), "estimate: ceil(chars / 4)"


# ----------------------------------------------------------------------------------------------- the dry run


def _sample_rows(config: ExtractConfig, n: int, to_read: int, sample: int) -> list[int]:
    """Rows whose requests are counted: the very rows of ``all`` / ``random``, else a seeded uniform sample."""
    from equal._validation import as_generator

    strategy = config.run.strategy
    if strategy in ("all", "random") and not config.embed.warmup_docs:
        from equal.pipeline.sampler import CorpusOrder

        rows = [int(r) for r in CorpusOrder(n, shuffle=strategy == "random", seed=config.run.seed).take(0, to_read)]
    else:
        rows = list(range(n))
    if len(rows) <= sample:
        return rows
    picked = as_generator(config.run.seed).choice(len(rows), size=sample, replace=False)
    return [rows[int(i)] for i in sorted(picked)]


def _documents_to_read(config: ExtractConfig, n: int, per_doc_tokens: float, per_doc_cost: float | None) -> int:
    r = config.run
    read = n if r.budget_docs is None else min(n, r.budget_docs)
    per_round = config.bandit.clusters_per_round * config.bandit.docs_per_cluster
    # a token or money budget is checked between rounds: the round that crosses it is read whole
    if r.budget_tokens is not None and per_doc_tokens > 0:
        read = min(read, math.ceil(math.ceil(r.budget_tokens / per_doc_tokens) / per_round) * per_round)
    if r.budget_usd is not None and per_doc_cost:
        read = min(read, math.ceil(math.ceil(r.budget_usd / per_doc_cost) / per_round) * per_round)
    return max(0, min(read, n))


def dry_run(config: ExtractConfig, *, llm: Any = None, sample: int = _SAMPLE, check: bool = True,
            on_status: Callable[[str], None] | None = None) -> DryRun:
    """What ``equal extract`` would read, ask, spend and compute with ``config``; no LLM request but the preflight.

    Parameters
    ----------
    config : ExtractConfig
    llm : equal.llm.LLM, optional
        Use this backend instead of building ``config.llm`` (as :func:`~equal.pipeline.extract.run_extract`).
    sample : int, default=256
        Most extraction requests whose input tokens are counted.
    check : bool, default=True
        Run :func:`preflight` (a served model gets one ``max_tokens=1`` request; a local one is loaded).
    on_status : callable, optional
        Phase messages for a progress display.

    Returns
    -------
    DryRun
        Nothing is written: no run directory is created.
    """
    from equal.llm import Ledger
    from equal.pipeline.factory import _extractor, build_llm
    from equal.pipeline.setup import read_corpus, read_target

    status = on_status or (lambda _msg: None)
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
        raise ValueError(f"sample={sample!r} must be an int >= 1.")
    status("reading corpus")
    docs, skipped = read_corpus(config)
    n_target = len(read_target(config.data))
    n = len(docs)
    n_source = len({d.meta.get("parent_id", d.id) for d in docs})
    c, e = config.llm, config.extract
    prices = Ledger(price_in_per_1m=c.price_in, price_out_per_1m=c.price_out)
    notes: list[str] = []
    uses_llm = e.extractor == "llm"
    if not uses_llm:
        notes.append("the rules extractor sends no LLM request")
    if "judge" in config.filters.filters or config.reward.reward == "judge":
        notes.append("requests of the LLM judge are not included")

    base = (llm if llm is not None else build_llm(config)) if uses_llm else None
    result: Preflight | None = None
    if base is not None and check:
        status("preflight: checking the LLM")
        result = preflight(base, load=True)
        if not result.ok:
            notes.append(f"preflight failed: {result.detail}")
    per_request, counted, how = 0.0, 0, "none (no LLM)"
    out_est = 0
    if base is not None and result is not None and not result.ok and result.backend in ("llama.cpp", "transformers"):
        how = "not counted: the model did not load"
    elif base is not None:
        extractor = _extractor(config, lambda: base)
        status("counting prompt tokens")
        count, how = _counter(base)
        # documents read are decided below from the tokens per request; count a first sample of the rows
        provisional = n if config.run.budget_docs is None else min(n, config.run.budget_docs)
        rows = _sample_rows(config, n, provisional, sample)
        tokens = [count(m) for m in extractor.extract_requests([docs[i] for i in rows])]
        counted = len(tokens)
        per_request = sum(tokens) / counted if counted else 0.0
        out_est = min(c.max_tokens, OUTPUT_TOKENS_PER_PAIR * e.max_pairs)
    per_doc = (per_request + out_est) * (2 if e.refine else 1) + (out_est if e.refine else 0)
    per_doc_cost = prices.price(per_request + (per_request + out_est if e.refine else 0),
                                out_est * (2 if e.refine else 1))
    to_read = _documents_to_read(config, n, per_doc, per_doc_cost) if uses_llm else (
        _documents_to_read(config, n, 0.0, None))
    extraction = to_read if uses_llm else 0
    refine = extraction if (uses_llm and e.refine) else 0
    tokens_in = round(extraction * per_request + refine * (per_request + out_est))
    tokens_out = (extraction + refine) * out_est
    tokens_out_max = (extraction + refine) * (c.max_tokens if uses_llm else 0)
    n_params = result.n_params if result is not None else None
    flops = Ledger(n_params=n_params, tokens_in=tokens_in, tokens_out=tokens_out).est_flops
    if config.run.strategy not in ("all", "random") or config.embed.warmup_docs:
        notes.append("the bandit chooses documents as it goes: input tokens are a seeded sample's mean")
    return DryRun(
        strategy=config.run.strategy, extractor=e.extractor, model=str(getattr(base, "model", "")) or None,
        source_documents=n_source, documents=n, skipped_rows=skipped, target_examples=n_target,
        documents_to_read=to_read, warmup_docs=config.embed.warmup_docs, requests=extraction + refine,
        extraction_requests=extraction, refine_requests=refine, sample_size=counted,
        tokens_in_per_request=round(per_request, 2), tokens_in=tokens_in, tokens_out_max=tokens_out_max,
        tokens_out=tokens_out, tokenizer=how, price_in=c.price_in, price_out=c.price_out,
        est_cost=prices.price(tokens_in, tokens_out), est_cost_max=prices.price(tokens_in, tokens_out_max),
        n_params=n_params, est_flops=flops, preflight=result.to_dict() if result is not None else None,
        notes=notes,
    )
