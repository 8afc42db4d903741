"""EQUAL's warm-up, the first part of ``equal extract --warmup-docs N``.

Stages, each resumable after a kill and each recorded in ``RUN/warmup/``::

    1. extract   N seeded random documents -> extractor -> the run's filters     warmup/pairs.jsonl, extract.json
    2. align     the embedder on those documents and their pairs (equal align)    warmup/model/ (align.json)
    3. start     the loop's first state: qa.jsonl holds the warm-up pairs, the documents and tokens are
                 counted in the budget and the ledger                             state.json

Between 2 and 3 :func:`~equal.pipeline.setup.prepare_inputs` embeds the documents and the target with the
aligned encoder and clusters them (its own resumable stage; embeddings are cached per model). The bandit then
never reads a warm-up document again (:meth:`Warmup.sampler`). The warm-up documents depend only on the seed
and the corpus size, so a resumed warm-up sends the same requests, which the run's LLM cache answers: no
request is paid twice. ``extract.json`` records the run's config fingerprint; a warm-up made under other
settings is redone (from the LLM cache).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from equal.config import ExtractConfig
from equal.data.io import atomic_write_json, atomic_write_text
from equal.data.records import Document
from equal.errors import ConfigError, DataError, LLMError
from equal.llm import Ledger
from equal.pipeline.rundir import RunDir
from equal.pipeline.state import RunState

__all__ = ["Warmup", "align_config", "run_warmup", "warmup_rows"]

logger = logging.getLogger(__name__)

WARMUP_ROUND = -1
"""``QAPair.round`` of a warm-up pair (outside the bandit's rounds)."""


def warmup_rows(n_docs: int, n: int, seed: int) -> np.ndarray:
    """The warm-up documents: ``min(n, n_docs)`` distinct rows drawn from the seed's own stream (int64)."""
    rng = np.random.default_rng([seed, 3])  # [seed, 1, c] orders clusters, [seed, 2] the corpus baselines
    return np.sort(rng.choice(n_docs, size=min(int(n), n_docs), replace=False)).astype(np.int64)


def align_config(config: ExtractConfig, base: str) -> Any:
    """The :class:`~equal.align.AlignConfig` of the warm-up: ``[embed] warmup_*`` settings, the run's seed."""
    from equal.align import AlignConfig

    e = config.embed
    return AlignConfig(base=base, epochs=float(e.warmup_epochs), batch_size=e.warmup_batch_size,
                       lr=float(e.warmup_lr), temperature=float(e.warmup_temperature),
                       hard_negatives=e.warmup_hard_negatives, negative_range=e.warmup_negative_range,
                       seed=config.run.seed)


@dataclass(frozen=True)
class Warmup:
    """A finished warm-up.

    Attributes
    ----------
    rows : ndarray of int64
        Corpus rows read by the warm-up.
    pairs : list of QAPair
        Pairs kept (round -1, cluster -1).
    drops : dict of str to int
    tokens_used : int
        Tokens (in + out) of the warm-up's completions, cached ones included.
    ledger : Ledger
        What the warm-up's requests cost.
    model_dir : Path
        The aligned sentence-transformers directory.
    embedder : Embedder
        It, loaded, behind the embedding cache.
    """

    rows: np.ndarray
    pairs: list[Any]
    drops: dict[str, int]
    tokens_used: int
    ledger: Ledger
    model_dir: Path
    embedder: Any

    def sampler(self, sampler: Any) -> Any:
        """``sampler`` without the warm-up documents (the bandit never reads one again)."""
        return sampler.without(self.rows)

    def start(self, run: RunDir, n_clusters: int, ledger: Ledger) -> RunState:
        """Write the warm-up pairs as the start of ``qa.jsonl`` and commit the loop's first state.

        Rewrites both logs whole, so a kill before the commit is redone the same way.
        """
        from equal.data.io import append_jsonl

        run.qa.write_bytes(b"")
        run.rounds.write_bytes(b"")
        if self.pairs:
            append_jsonl(run.qa, [p.to_record() for p in self.pairs])
        return run.commit(RunState(cursors=(0,) * n_clusters, documents_read=len(self.rows),
                                   pairs=len(self.pairs), tokens_used=self.tokens_used, drops=dict(self.drops),
                                   ledger=ledger, policy=None))


def _folder(run: RunDir) -> Path:
    return run.root / "warmup"


def _base_dir(embedder: Any, config: ExtractConfig) -> Path:
    if embedder is None:
        from equal.align import resolve_base

        try:
            return resolve_base(config.embed.embedder)
        except ConfigError:
            raise ConfigError(f"embed.warmup_docs needs a sentence-transformers embedder (minilm or st:DIR) to "
                              f"align; embed.embedder={config.embed.embedder!r} is not one") from None
    base = getattr(embedder, "embedder", embedder)  # CachedEmbedder wraps the model
    model_dir = getattr(base, "model_dir", None)
    from equal.embed.sentence_transformer import SentenceTransformerEmbedder

    if not isinstance(base, SentenceTransformerEmbedder) or model_dir is None:
        raise ConfigError(f"embed.warmup_docs needs a sentence-transformers embedder (minilm or st:DIR) to "
                          f"align; {getattr(base, 'identity', type(base).__name__)} is not one")
    return Path(model_dir)


def _filter(config: ExtractConfig, pairs: list[Any], docs: list[Document], target_texts: list[str],
            llm: Any, ledger: Ledger) -> tuple[list[Any], Counter[str]]:
    """The run's filters, fresh (the warm-up is the first thing the run reads), in order; drops by name."""
    from equal.pipeline.parts import Candidates
    from equal.pipeline.registry import FILTERS, PartContext

    ctx = PartContext(seed=config.run.seed, target_texts=target_texts, llm=llm, ledger=ledger)
    drops: Counter[str] = Counter()
    cands = Candidates(pairs, [p.render_text() for p in pairs], {d.id: d for d in docs}, WARMUP_ROUND)
    for name, cfg in config.filter_configs():
        if not len(cands):
            break
        f = FILTERS[name].builder()(cfg, ctx)
        mask = np.asarray(f.keep(cands), dtype=bool)
        drops[name] += int((~mask).sum())
        cands = cands.subset(mask)
    return list(cands.pairs), drops


def _extract(config: ExtractConfig, folder: Path, docs: list[Document], target_texts: list[str], llm: Any,
             progress: Callable[[str], None]) -> dict[str, Any]:
    """Stage 1: read the warm-up documents; commit ``pairs.jsonl`` then ``extract.json``."""
    from equal.pipeline.factory import _extractor

    t0 = time.perf_counter()
    rows = warmup_rows(len(docs), config.embed.warmup_docs, config.run.seed)
    chosen = [docs[i] for i in rows]
    progress(f"warm-up: extracting pairs from {len(chosen)} documents")
    ledger = Ledger()
    result = _extractor(config, llm).extract(chosen, cluster=-1, round=WARMUP_ROUND)
    ledger.add(result.completions)
    if result.failed_docs:
        errors = [c.error for c in result.completions if c.error][:3]
        raise LLMError(f"{len(result.failed_docs)} of {len(chosen)} warm-up extraction requests failed (first "
                       f"errors: {errors}); every completed request is cached: rerun the same command to resume")
    kept, drops = _filter(config, list(result.pairs), chosen, target_texts, llm, ledger)
    drops.update(result.drops)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "pairs.jsonl",
                      "".join(json.dumps(p.to_record(), ensure_ascii=False) + "\n" for p in kept))
    record = {
        "fingerprint": config.fingerprint(), "rows": rows.tolist(), "documents": [d.id for d in chosen],
        "pairs": len(kept), "drops": dict(sorted(drops.items())),
        "tokens_used": sum(c.tokens_in + c.tokens_out for c in result.completions if c.ok),
        "ledger": ledger.to_dict(), "seconds": round(time.perf_counter() - t0, 3),
    }
    atomic_write_json(folder / "extract.json", record)  # the stage's commit
    return record


def _read_record(folder: Path, config: ExtractConfig) -> dict[str, Any] | None:
    path = folder / "extract.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("fingerprint") == config.fingerprint() else None


def run_warmup(config: ExtractConfig, run: RunDir, base_embedder: Any | None, llm: Any, *, docs: Sequence[Document],
               target_texts: list[str], started: bool, progress: Callable[[str], None],
               on_align: Callable[[Any], None] | None = None) -> Warmup:
    """Do (or finish, or read back) the warm-up of ``run``; return it with the aligned embedder.

    Parameters
    ----------
    config : ExtractConfig
        ``config.embed.warmup_docs`` > 0.
    run : RunDir
    base_embedder : Embedder or None
        The encoder that is aligned (a sentence-transformers model); None: ``config.embed.embedder``'s
        directory, not loaded.
    llm : LLMSource
        The run's cached LLM (built on first use).
    docs : sequence of Document
        The corpus after chunking, in row order.
    target_texts : list of str
        For the filters (decontamination).
    started : bool
        The loop has committed a state: the warm-up must be complete and is only read back.
    progress : callable
        Status lines.
    on_align : callable, optional
        ``on_progress`` of :func:`equal.align.align`.

    Raises
    ------
    DataError
        The warm-up kept pairs of fewer than two documents (nothing to contrast).
    ConfigError
        A started run whose warm-up records are missing, or a base embedder that cannot be aligned.
    """
    from equal.align import align, examples_from_pairs
    from equal.data.qa import read_qa_pairs
    from equal.embed import CachedEmbedder
    from equal.embed.sentence_transformer import SentenceTransformerEmbedder

    folder = _folder(run)
    model_dir = folder / "model"
    record = _read_record(folder, config)
    if started and (record is None or not (model_dir / "align.json").is_file()):
        raise ConfigError(f"{run.root} has started its rounds but its warm-up records ({folder}) are missing or "
                          "were made with other settings; use --force to restart it (the LLM cache is kept)")
    if record is None:
        if folder.exists():
            logger.info("redoing the warm-up of %s: made with other settings or interrupted", run.root)
            shutil.rmtree(folder)
        record = _extract(config, folder, list(docs), target_texts, llm, progress)
    pairs = read_qa_pairs(folder / "pairs.jsonl")
    by_id = {d.id: d.text for d in docs}
    examples = examples_from_pairs(by_id, pairs, path=str(folder / "pairs.jsonl"))
    if len(examples) < 2:
        raise DataError(f"the warm-up kept pairs from {len(examples)} of {len(record['rows'])} documents; "
                        "alignment needs two or more: raise --warmup-docs", path=str(folder / "pairs.jsonl"))
    finished = started or _finished(model_dir)
    if not finished:
        progress(f"warm-up: aligning the embedder on {len(pairs)} pairs of {len(examples)} documents")
        align(examples, model_dir, align_config(config, str(_base_dir(base_embedder, config))), on_progress=on_align)
    embedder = CachedEmbedder(SentenceTransformerEmbedder(model_dir))
    return Warmup(rows=np.asarray(record["rows"], dtype=np.int64), pairs=pairs, drops=dict(record["drops"]),
                  tokens_used=int(record["tokens_used"]), ledger=Ledger.from_dict(record["ledger"]),
                  model_dir=model_dir, embedder=embedder)


def _finished(model_dir: Path) -> bool:
    try:
        return bool(json.loads((model_dir / "align.json").read_text(encoding="utf-8")).get("finished"))
    except (OSError, ValueError):
        return False


class AlignProgressBar:
    """``equal align``'s display: a rich bar on stderr (step, loss, ETA), off when disabled or not a terminal."""

    def __init__(self, *, enabled: bool = True) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> AlignProgressBar:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("aligning"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("loss {task.fields[loss]}"), TextColumn("ETA"),
                                      TimeRemainingColumn(), console=self.console, transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task("align", total=None, loss="–")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)  # type: ignore[arg-type]

    def update(self, p: Any) -> None:
        """``on_progress`` of :func:`equal.align.align`."""
        if self._progress is not None:
            self._progress.update(self._task, total=p.max_steps, completed=p.step, loss=f"{p.loss:.4f}")

    def print_summary(self, r: Any) -> None:
        """Where the model is and what it was trained on (stderr)."""
        d = r.data
        self.console.print(
            f"aligned {r.config.base} on {d['pairs']} pairs of {d['documents']} documents "
            f"({d['hard_negatives']} hard negatives per pair) in {r.steps} steps, {r.seconds:.1f} s, "
            f"final loss {r.final_loss:.4f}{' (resumed)' if r.resumed else ''} → {r.out} (use --embedder st:{r.out})")
