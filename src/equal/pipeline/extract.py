"""``equal extract``: the driver that assembles an :class:`~equal.pipeline.loop.ExtractionLoop` and runs it.

``run_extract`` is the whole job behind ``equal extract``. It is resumable: the setup (documents,
embeddings, clusters) is redone cheaply from caches when incomplete, and the rounds continue from the last
commit in ``state.json`` (see :mod:`equal.pipeline.rundir`). Given the same settings it is deterministic, so
an interrupted and resumed run ends with the same pairs as an uninterrupted one.
"""

from __future__ import annotations

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

__all__ = ["ExtractSummary", "RoundInfo", "export_run", "load_pairs", "run_extract"]

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
    dataset: str = ""
    report: str = ""
    resumed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _embedder(embedder: Any, config: ExtractConfig) -> Any:
    from equal.embed import CachedEmbedder, get_embedder

    base = embedder if embedder is not None else get_embedder(config.embed.embedder)
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
        Progress callbacks (the CLI draws its progress bar from them).
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
    with run_lock(run.root, "equal extract"):
        removed = remove_stale_temps(run.root)
        if removed:
            logger.info("removed %d temporary file(s) left by an interrupted run in %s", removed, run.root)
        return _run_locked(config, run, t0, force=force, on_status=on_status, on_round=on_round,
                           max_rounds=max_rounds, embedder=embedder, llm=llm)


def _run_locked(config: ExtractConfig, run: RunDir, t0: float, *, force: bool,
                on_status: Callable[[str], None] | None, on_round: Callable[[RoundInfo], None] | None,
                max_rounds: int | None, embedder: Any, llm: Any) -> ExtractSummary:
    from equal.llm import Ledger
    from equal.pipeline.factory import LLMSource, build_parts
    from equal.pipeline.setup import prepare_inputs

    resumed = run.prepare(config, force=force)
    state = run.read_state() if resumed else None
    finished = state is not None and state.finished
    source = LLMSource(config, run, llm)
    if config.extract.extractor == "llm" and not finished:
        source.warm_up()
    # with a warm-up the configured encoder is only the base that is aligned: not loaded unless given
    emb = embedder if config.embed.warmup_docs else _embedder(embedder, config)
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
    inputs = prepare_inputs(config, run, emb, status, corpus=corpus)
    ledger = Ledger.from_dict((state.ledger if state is not None else warm.ledger if warm is not None
                               else Ledger()).to_dict())
    parts = build_parts(config, inputs, llm=source, ledger=ledger, need_extractor=not finished)
    if warm is not None:
        parts.sampler = warm.sampler(parts.sampler)
        if state is None:
            state = warm.start(run, inputs.n_clusters, ledger)
    loop = ExtractionLoop(config, run, inputs=inputs, embedder=emb, extractor=parts.extractor,
                          sampler=parts.sampler, policy=parts.policy, reward=parts.reward, filters=parts.filters,
                          ledger=ledger, state=state, model=getattr(source.built, "model", None))
    loop.run(max_rounds=max_rounds, on_round=on_round)
    return _finish(loop, run, config, t0, resumed)


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
        resumed=resumed, source_documents=len({d.meta.get("parent_id", d.id) for d in loop.inputs.docs}),
        skipped_rows=int(setup.get("skipped_rows", 0)),
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


def export_run(run: str | Path, out: str | Path, fmt: str) -> int:
    """Write a run's pairs to ``out`` in ``fmt`` (messages, sharegpt, alpaca, or parquet in messages form)."""
    from equal.data import write_sft
    from equal.pipeline.jobs import check_suffix

    if fmt not in ("messages", "sharegpt", "alpaca", "parquet"):
        raise ValueError(f"format={fmt!r} must be one of messages, sharegpt, alpaca, parquet.")
    # exactly the named file, in the format its suffix says (a sharegpt .parquet is fine, a parquet .jsonl not)
    allowed = (".parquet",) if fmt == "parquet" else (".jsonl", ".ndjson", ".parquet")
    out = check_suffix(out, allowed, f"--format {fmt}")
    pairs = load_pairs(run)
    records = [p.to_record() for p in pairs]
    return write_sft(out, records, "messages" if fmt == "parquet" else fmt)
