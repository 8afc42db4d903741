"""``equal extract``: the driver that assembles an :class:`~equal.pipeline.loop.ExtractionLoop` and runs it.

``run_extract`` is the whole job behind ``equal extract``. It is resumable: the setup (documents,
embeddings, clusters) is redone cheaply from caches when incomplete, and the rounds continue from the last
commit in ``state.json`` (see :mod:`equal.pipeline.rundir`). Given the same settings it is deterministic, so
an interrupted and resumed run ends with the same pairs as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from equal.config import ExtractConfig
from equal.data.io import atomic_write_json
from equal.errors import ConfigError, DataError
from equal.pipeline.loop import ExtractionLoop, RoundInfo
from equal.pipeline.rundir import RunDir

__all__ = ["EXPORT_FORMATS", "ExtractSummary", "RoundInfo", "RoundStart", "export_run", "load_pairs", "run_extract"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractSummary:
    """The closing numbers of a run (``--json`` prints :meth:`to_dict`)."""

    run: str
    strategy: str
    rounds: int
    documents_read: int
    documents_total: int
    clusters: int
    pairs: int
    llm_requests: int
    llm_cache_hits: int
    llm_failed: int
    tokens_in: int
    tokens_out: int
    seconds: float
    ot_distance: float | None
    drops: dict[str, int] = field(default_factory=dict)
    llm_failures: dict[str, int] = field(default_factory=dict)  # llm_failed by reason (http_500, empty_content...)
    tokens_estimated: bool = False  # some token counts were computed locally: the server sent no usage
    source_documents: int = 0  # corpus documents before chunking (documents_* count chunks)
    skipped_rows: int = 0  # invalid corpus rows skipped under --skip-invalid
    est_flops: float | None = None  # Ledger.est_flops: 2 * n_params * tokens (local models)
    est_cost: float | None = None  # Ledger.est_cost: money at [llm] price_in / price_out
    cost_per_pair: float | None = None  # est_cost / pairs
    flops_per_pair: float | None = None  # est_flops / pairs
    dataset: str = ""
    report: str = ""
    resumed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _cluster(config: ExtractConfig) -> contextlib.AbstractContextManager[Any]:
    """Connected to Ray for the run when ``run.ray`` is set (equal.distributed); otherwise nothing."""
    if not config.run.ray:
        return contextlib.nullcontext()
    from equal.distributed import ray_session

    return ray_session(config.run.ray)


def _embedder(embedder: Any, config: ExtractConfig) -> Any:
    from equal.embed import CachedEmbedder, get_embedder

    if embedder is not None:
        base = embedder
    elif config.run.ray:  # one model per Ray actor; the same identity, so the same cache rows and vectors
        from equal.distributed import RayEmbedder

        base = RayEmbedder(config.embed.embedder, actors=config.run.ray_actors)
    else:
        base = get_embedder(config.embed.embedder)
    return base if isinstance(base, CachedEmbedder) else CachedEmbedder(base)


def run_extract(
    config: ExtractConfig,
    out: str | Path,
    *,
    force: bool = False,
    on_status: Callable[[str], None] | None = None,
    on_round: Callable[[RoundInfo], None] | None = None,
    max_rounds: int | None = None,
    embedder: Any = None,
    llm: Any = None,
    on_round_start: Callable[[RoundStart], None] | None = None,
    on_llm: Callable[[Any], None] | None = None,
    on_embed: Callable[[int, int], None] | None = None,
) -> ExtractSummary:
    """Run (or resume) ``equal extract`` into the run directory ``out``.

    Parameters
    ----------
    config : ExtractConfig
        The settings; stored as ``run.toml``.
    out : path
        The run directory.
    force : bool, default=False
        Restart a directory that holds a run with other settings (its LLM cache is kept).
    on_status, on_round : callables, optional
        Progress callbacks (the CLI draws its progress bar from them): ``on_status(phase)`` when a phase begins
        (reading, embedding, clustering, warm-up, writing), ``on_round(RoundInfo)`` after each committed round.
    on_round_start : callable, optional
        ``on_round_start(RoundStart)`` when a round begins (before its LLM requests).
    on_llm : callable, optional
        ``on_llm(LLMProgress)`` after each completion of the run's LLM (:class:`equal.llm.cache.LLMProgress`:
        done / total of the current batch, tokens, seconds).
    on_embed : callable, optional
        ``on_embed(done, total)`` after each batch the embedder computes for the corpus.
    max_rounds : int, optional
        Stop after this many rounds in this call (the run stays resumable); for tests and stepping.
    embedder : equal.embed.Embedder, optional
        Use this (already loaded) embedder instead of building ``config.embed.embedder``; it must be the
        same model (a resumed run checks its identity against the one that embedded the corpus).
    llm : equal.llm.LLM, optional
        Use this backend instead of building ``config.llm``; it is put behind the run's request cache.

    Returns
    -------
    ExtractSummary
    """
    from equal.runlock import remove_stale_temps, run_lock

    t0 = time.perf_counter()
    run = RunDir(Path(out))
    if run.root.exists() and not run.root.is_dir():
        raise ConfigError(f"--out {run.root} is a file; the run directory must be a folder (or not exist)")
    # One writer per directory, taken before anything in it is read, written or (with --force) deleted.
    with run_lock(run.root, "equal extract"), _cluster(config):
        removed = remove_stale_temps(run.root)
        if removed:
            logger.info("removed %d temporary file(s) left by an interrupted run in %s", removed, run.root)
        return _run_locked(config, run, t0, force=force, on_status=on_status, on_round=on_round,
                           max_rounds=max_rounds, embedder=embedder, llm=llm,
                           hooks=_Hooks(on_round_start, on_llm, on_embed))


def _run_locked(config: ExtractConfig, run: RunDir, t0: float, *, force: bool,
                on_status: Callable[[str], None] | None, on_round: Callable[[RoundInfo], None] | None,
                max_rounds: int | None, embedder: Any, llm: Any, hooks: _Hooks | None = None) -> ExtractSummary:
    from equal.llm import Ledger
    from equal.pipeline.factory import LLMSource, build_parts
    from equal.pipeline.setup import prepare_inputs

    resumed = run.prepare(config, force=force)
    state = run.read_state() if resumed else None
    finished = state is not None and state.finished
    source = LLMSource(config, run, llm)
    n_params = None
    if config.extract.extractor == "llm" and not finished:
        from equal.llm import LocalLLM
        from equal.pipeline.dryrun import check_preflight

        # before anything costly: a wrong URL, key or model fails here, in seconds (pipeline/dryrun.py); a
        # transformers model is not loaded here but in the background while the corpus is embedded
        n_params = check_preflight(source(), load=not isinstance(source().llm, LocalLLM), cache=run.llm_cache).n_params
        source.warm_up()
        if hooks is not None and hooks.on_llm is not None:
            source().on_progress = hooks.on_llm  # after the preflight: only the run's own requests are shown
    # with a warm-up the configured encoder is only the base that is aligned: not loaded unless given
    emb = embedder if config.embed.warmup_docs else _embedder(embedder, config)
    if hooks is not None and hooks.on_embed is not None and emb is not None:
        emb = _EmbedProgress(emb, hooks.on_embed)
    status = on_status or (lambda _msg: None)
    warm, corpus = None, None
    if config.embed.warmup_docs:  # EQUAL's warm-up: its own resumable stages, then the loop (pipeline/warmup.py)
        from equal.pipeline.setup import read_corpus, read_target
        from equal.pipeline.warmup import run_warmup

        status("reading corpus")
        corpus = read_corpus(config)
        warm = run_warmup(config, run, emb, source, docs=corpus[0], target_texts=read_target(config.data),
                          started=state is not None, progress=status)
        emb = warm.embedder
        if hooks is not None and hooks.on_embed is not None:
            emb = _EmbedProgress(emb, hooks.on_embed)
    inputs = prepare_inputs(config, run, emb, status, corpus=corpus)
    ledger = Ledger.from_dict((state.ledger if state is not None else warm.ledger if warm is not None
                               else Ledger()).to_dict())
    # money at this invocation's prices ([llm] price_in / price_out); FLOPs need the model's size
    ledger.price_in_per_1m, ledger.price_out_per_1m = config.llm.price_in, config.llm.price_out
    ledger.n_params = n_params or ledger.n_params
    parts = build_parts(config, inputs, llm=source, ledger=ledger, need_extractor=not finished)
    if warm is not None:
        parts.sampler = warm.sampler(parts.sampler)
        if state is None:
            state = warm.start(run, inputs.n_clusters, ledger)
            spent = ledger.price(warm.ledger.tokens_in, warm.ledger.tokens_out)
            if spent:  # the warm-up's money counts in run.budget_usd, as its tokens do in budget_tokens
                state = run.commit(dataclasses.replace(state, cost_used=spent))
    loop = ExtractionLoop(config, run, inputs=inputs, embedder=emb, extractor=parts.extractor,
                          sampler=parts.sampler, policy=parts.policy, reward=parts.reward, filters=parts.filters,
                          ledger=ledger, state=state, model=getattr(source.built, "model", None))
    if hooks is not None and hooks.on_round_start is not None and loop.extractor is not None:
        loop.extractor = _Announced(loop, hooks.on_round_start, _rounds_expected(config, loop))
    loop.run(max_rounds=max_rounds, on_round=on_round)
    if loop.state.finished:
        status("writing the summary and the report")
    return _finish(loop, run, config, t0, resumed)


@dataclass(frozen=True)
class _Hooks:
    """The finer progress callbacks of :func:`run_extract` (the CLI's display layer sets them)."""

    on_round_start: Callable[[RoundStart], None] | None = None
    on_llm: Callable[[Any], None] | None = None
    on_embed: Callable[[int, int], None] | None = None


@dataclass(frozen=True)
class RoundStart:
    """A round that begins (``on_round_start`` of :func:`run_extract`).

    Attributes
    ----------
    round : int
        0-based.
    rounds : int or None
        Rounds the run is expected to have in all (None when only a token or money budget bounds it).
    documents : int
        Documents sent to the extractor in this round.
    documents_read : int
        Documents read before this round.
    budget_docs : int or None
        The document budget.
    """

    round: int
    rounds: int | None
    documents: int
    documents_read: int
    budget_docs: int | None


def _rounds_expected(config: ExtractConfig, loop: ExtractionLoop) -> int | None:
    """Rounds the run will have in all, from the document budget (None when only tokens or money bound it).

    An estimate when clusters run dry (a round then reads fewer documents, so there can be more rounds).
    """
    if loop.budget_docs is None:
        return None
    per_round = config.bandit.clusters_per_round * config.bandit.docs_per_cluster
    left = max(0, min(loop.budget_docs, len(loop.inputs.docs)) - loop.state.documents_read)
    return loop.state.round + -(-left // per_round)


class _Announced:
    """An extractor that reports each round's start (``extract`` is called once per round, first thing)."""

    def __init__(self, loop: ExtractionLoop, on_start: Callable[[RoundStart], None], rounds: int | None) -> None:
        self.inner, self.loop, self.on_start, self.rounds = loop.extractor, loop, on_start, rounds

    def extract(self, docs: Any, **kw: Any) -> Any:
        r = int(kw.get("round", self.loop.state.round))
        rounds = None if self.rounds is None else max(self.rounds, r + 1)
        self.on_start(RoundStart(r, rounds, len(docs), self.loop.state.documents_read, self.loop.budget_docs))
        return self.inner.extract(docs, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _EmbedProgress:
    """The run's embedder with its corpus progress (``show_progress=True`` calls) sent to ``on_embed``."""

    def __init__(self, inner: Any, on_embed: Callable[[int, int], None]) -> None:
        self.inner, self.on_embed = inner, on_embed

    def encode(self, texts: Any, *, show_progress: Any = False, **kw: Any) -> Any:
        return self.inner.encode(texts, show_progress=self.on_embed if show_progress is True else show_progress, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _finish(loop: ExtractionLoop, run: RunDir, config: ExtractConfig, t0: float, resumed: bool) -> ExtractSummary:
    """Write ``summary.json`` (with the exact distance of every kept pair) and the report."""
    state, ledger = loop.state, loop.ledger
    loop.write_ledger()
    setup = json.loads(run.setup_done.read_text(encoding="utf-8")) if run.setup_done.exists() else {}
    summary = ExtractSummary(
        run=str(run.root), strategy=config.run.strategy, rounds=state.round,
        documents_read=state.documents_read, documents_total=len(loop.inputs.docs),
        clusters=loop.inputs.n_clusters, pairs=state.pairs, llm_requests=ledger.requests,
        llm_cache_hits=ledger.cached, llm_failed=ledger.failed, tokens_in=ledger.tokens_in,
        tokens_out=ledger.tokens_out, seconds=round(time.perf_counter() - t0, 3),
        ot_distance=loop.exact_distance(), drops=state.drops, llm_failures=dict(sorted(ledger.failures.items())),
        tokens_estimated=ledger.tokens_estimated > 0, dataset=str(run.qa), report=str(run.report),
        resumed=resumed,  # setup.json counts them at ingest: no pass over a corpus of millions here
        source_documents=int(setup.get("source_documents") or len({d.meta.get("parent_id", d.id)
                                                                    for d in loop.inputs.docs})),
        skipped_rows=int(setup.get("skipped_rows", 0)), est_flops=ledger.est_flops, est_cost=ledger.est_cost,
        **ledger.per_pair(state.pairs),
    )
    atomic_write_json(run.summary, summary.to_dict())
    try:
        from equal.report import write_run_report

        write_run_report(run.root)
    except Exception:  # a broken report must never cost a finished run
        logger.exception("could not write %s", run.report)
    return summary


def load_pairs(run: str | Path) -> list[Any]:
    """The QA pairs of a run directory, in commit order."""
    from equal.data.qa import read_qa_pairs

    rd = RunDir(Path(run))
    if not rd.qa.exists():
        raise DataError("no qa.jsonl: not an equal extract run directory, or no round finished yet",
                        path=str(rd.root))
    return read_qa_pairs(rd.qa)  # errors name qa.jsonl:line:field


#: ``equal export --format`` values: the SFT forms, Parquet (messages form) and hf (``save_to_disk``).
EXPORT_FORMATS = ("messages", "sharegpt", "alpaca", "parquet", "hf")


def export_run(run: str | Path, out: str | Path, fmt: str, *, card: bool = False) -> int:
    """Write a run's pairs to ``out`` in ``fmt``; every pair keeps its provenance (and its kept corpus fields).

    Parameters
    ----------
    run : path
        The run directory.
    out : path
        A ``.jsonl``/``.ndjson``/``.parquet`` file, or a folder for ``fmt="hf"`` and for ``card``.
    fmt : {"messages", "sharegpt", "alpaca", "parquet", "hf"}
        ``parquet`` is the messages form as Parquet; ``hf`` a ``datasets.save_to_disk`` folder in messages form
        (``datasets.load_from_disk(out)`` reads it).
    card : bool, default=False
        Write a Hub-ready folder instead: ``data/train-00000-of-00001.parquet`` (in ``fmt``'s form; messages for
        parquet and hf) and a dataset card ``README.md`` (see :mod:`equal.pipeline.card`);
        ``datasets.load_dataset(out)`` reads it.

    Returns
    -------
    int
        Records written.
    """
    from equal.data import write_sft
    from equal.pipeline.jobs import check_suffix

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format={fmt!r} must be one of {', '.join(EXPORT_FORMATS)}.")
    form = "messages" if fmt in ("parquet", "hf") else fmt
    if card or fmt == "hf":
        if Path(out).suffix.lower() in (".jsonl", ".ndjson", ".json", ".parquet"):
            what = "--card" if card else "--format hf"
            raise ConfigError(f"--out {out}: {what} writes a folder; name it without a file suffix")
        records = [p.to_record() for p in load_pairs(run)]
        if card:
            from equal.pipeline.card import write_card_folder

            return write_card_folder(run, out, records if form == "messages" else _converted(records, form),
                                     fmt=form)
        from equal.data.hf import save_to_disk

        return save_to_disk(out, records)
    # exactly the named file, in the format its suffix says (a sharegpt .parquet is fine, a parquet .jsonl not)
    allowed = (".parquet",) if fmt == "parquet" else (".jsonl", ".ndjson", ".parquet")
    out = check_suffix(out, allowed, f"--format {fmt}")
    pairs = load_pairs(run)
    records = [p.to_record() for p in pairs]
    return write_sft(out, records, form)


def _converted(records: list[dict[str, Any]], fmt: str) -> list[dict[str, Any]]:
    """The records in form ``fmt``, provenance keys kept (as :func:`equal.data.write_sft` converts them)."""
    from equal.data.sft import from_messages

    out = []
    for rec in records:
        new = from_messages(rec["messages"], fmt)
        new.update({k: v for k, v in rec.items() if k != "messages"})
        out.append(new)
    return out
