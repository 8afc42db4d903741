"""``equal extract --baseline random``: the same budget spent by another strategy, from the run's own setup.

The baseline lives in ``RUN/baseline-<strategy>/``, a run directory of its own (resumable like any other).
Before it starts, the parent's setup (``documents.parquet``, ``embeddings/``, ``clusters.parquet``,
``setup.json``) is copied into it, so the corpus and the target are not embedded again and both runs are
measured against the same target vectors. Its LLM requests go through the parent's ``llm_cache.sqlite``:
a document both strategies read is paid for once.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from equal.config import STRATEGIES, ExtractConfig
from equal.errors import ConfigError
from equal.pipeline.rundir import RunDir

__all__ = ["BASELINE_PREFIX", "baseline_dirs", "check_baseline", "run_baseline"]

logger = logging.getLogger(__name__)

BASELINE_PREFIX = "baseline-"
"""A baseline of ``RUN`` for strategy ``S`` is the run directory ``RUN/baseline-S``."""


def baseline_dirs(run: str | Path) -> list[Path]:
    """The baseline run directories inside ``run`` (those holding a ``run.toml``), sorted by name."""
    root = Path(run)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(BASELINE_PREFIX)
                  and (p / "run.toml").exists())


def _setup_files(run: RunDir) -> list[Path]:
    return [run.documents, run.clusters, run.setup_done, *sorted(run.embeddings.glob("*.npy"))]


def _copy_setup(parent: RunDir, sub: RunDir) -> None:
    """Copy the parent's setup into ``sub`` unless ``sub`` already holds the same one."""
    same = sub.setup_done.exists() and sub.setup_done.read_bytes() == parent.setup_done.read_bytes() and all(
        (sub.root / p.relative_to(parent.root)).exists() for p in _setup_files(parent))
    if same:
        return
    from equal.data.io import atomic_path

    for src in _setup_files(parent):
        if src == parent.setup_done:
            continue
        dst = sub.root / src.relative_to(parent.root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    # setup.json last: it is what says the setup is complete (see pipeline.setup._load_stored)
    with atomic_path(sub.setup_done) as tmp:
        shutil.copyfile(parent.setup_done, tmp)


def check_baseline(config: ExtractConfig, strategy: str) -> None:
    """Raise ConfigError (before anything runs) when ``strategy`` cannot be a baseline of ``config``'s run."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"--baseline {strategy!r} must be one of {', '.join(STRATEGIES)}")
    if strategy == config.run.strategy:
        raise ConfigError(f"--baseline {strategy} is the run's own strategy; choose another one")
    if config.embed.warmup_docs:
        raise ConfigError("--baseline with embed.warmup_docs > 0 is not supported: the warm-up aligns the "
                          "embedder per run, so the two runs would not share their embeddings")


def run_baseline(
    config: ExtractConfig,
    out: str | Path,
    strategy: str = "random",
    *,
    force: bool = False,
    on_status: Callable[[str], None] | None = None,
    on_round: Callable[[Any], None] | None = None,
    embedder: Any = None,
    llm: Any = None,
) -> Any:
    """Run (or resume) ``strategy`` at the budget of the finished run in ``out``, into ``out/baseline-<strategy>``.

    Parameters
    ----------
    config : ExtractConfig
        The settings of the run in ``out``; only ``run.strategy`` is changed.
    out : path
        The parent run directory; its setup must be complete (run :func:`run_extract` on it first).
    strategy : str, default="random"
        Any strategy of :data:`equal.config.STRATEGIES` other than the parent's.
    force : bool, default=False
        Restart the baseline (its LLM requests are still served from the parent's cache).
    on_status, on_round : callables, optional
        Progress callbacks, as for :func:`~equal.pipeline.extract.run_extract`.
    embedder : equal.embed.Embedder, optional
        The (already loaded) embedder of the parent run; it embeds only the baseline's kept pairs.
    llm : equal.llm.LLM, optional
        The backend; it is put behind the parent's request cache.

    Returns
    -------
    equal.pipeline.extract.ExtractSummary
        The baseline's summary (also in ``out/baseline-<strategy>/summary.json``).
    """
    from equal.llm import CachedLLM
    from equal.pipeline.extract import run_extract
    from equal.pipeline.factory import LLMSource
    from equal.runlock import run_lock

    check_baseline(config, strategy)
    parent = RunDir(Path(out))
    sub = RunDir(parent.root / f"{BASELINE_PREFIX}{strategy}")
    cfg = config.replace(strategy=strategy)
    # The parent is held while its setup and LLM cache are read and its baseline is written.
    with run_lock(parent.root, f"equal extract --baseline {strategy}"):
        if not parent.setup_done.exists() or not (parent.embeddings / "documents.npy").exists():
            raise ConfigError(f"{parent.root} has no finished setup; run `equal extract` on it first")
        with run_lock(sub.root, "equal extract (baseline setup)"):
            # A new baseline, one forced, or one whose parent was restarted with other settings starts over
            # (run.toml written first: RunDir.prepare discards the setup of a directory without one).
            if force or not sub.config.exists() or sub._changed(cfg):
                sub.prepare(cfg, force=True)
            _copy_setup(parent, sub)
        if cfg.extract.extractor == "llm":
            base = llm if llm is not None else LLMSource(cfg, parent)()
            llm = base if isinstance(base, CachedLLM) else CachedLLM(base, parent.llm_cache)
        logger.info("baseline %s at the budget of %s (into %s)", strategy, parent.root, sub.root)
        summary = run_extract(cfg, sub.root, on_status=on_status, on_round=on_round, embedder=embedder, llm=llm)
        try:  # the parent's report, written when it finished, now gets the baseline beside it
            from equal.report import write_run_report

            write_run_report(parent.root)
        except Exception:  # a broken report must never cost a finished run
            logger.exception("could not write %s", parent.report)
        return summary
