"""``equal align``: contrastive document -> QA alignment of a sentence-transformers encoder, resumable.

OUT layout::

    OUT/                 a sentence-transformers directory (``--embedder st:OUT`` loads it)
    OUT/align.json       base model, data hash, settings, loss curve, seconds, "finished"
    OUT/checkpoints/     trainer checkpoints while training (removed once finished)

``align.json`` is written (atomically) with ``"finished": false`` before training and rewritten after the
weights with ``"finished": true``; a run killed in between is resumed by the same call from its last
complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from equal._threads import torch_threads
from equal.align._config import AlignConfig, AlignProgress, AlignResult
from equal.align._data import AlignExample, data_sha256, mine_rows, read_align_data
from equal.data.io import atomic_write_json
from equal.errors import ConfigError, DataError

__all__ = ["align", "read_align_json", "resolve_base"]

logger = logging.getLogger(__name__)

VERSION = 1
_RECORD = "align.json"


def resolve_base(base: str) -> Path:
    """The directory of ``"minilm"`` (bundled), ``"st:DIR"`` or a sentence-transformers directory.

    Raises
    ------
    ConfigError
        Anything else.
    """
    from equal.embed.sentence_transformer import default_model_path

    if base.strip().lower() in ("minilm", "default", "all-minilm-l6-v2"):
        return default_model_path()
    raw = base[3:] if base.lower().startswith("st:") else base
    path = Path(raw).expanduser()
    if path.is_dir() and any((path / f).is_file() for f in ("modules.json", "config_sentence_transformers.json")):
        return path
    raise ConfigError(f"align.base={base!r}: not 'minilm', 'st:DIR' or a sentence-transformers directory "
                      "(modules.json)")


def read_align_json(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``OUT/align.json``; ConfigError when missing or unreadable."""
    path = Path(out) / _RECORD
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable equal align record ({exc}).") from None


def _prepare_out(out: Path, config: AlignConfig, sha256: str, *, force: bool) -> dict[str, Any] | None:
    """Refuse or clear an OUT that holds another run; return its ``align.json`` when it is this run's."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder.")
    for tmp in out.glob(".tmp-*") if out.is_dir() else ():
        shutil.rmtree(tmp, ignore_errors=True)  # left by a process killed while it wrote the model
    if (out / _RECORD).is_file():
        stored = read_align_json(out)
        old = stored.get("config") or {}
        diffs = [f"{k}: {old.get(k)!r} → {v!r}" for k, v in config.identity().items() if old.get(k) != v]
        if (stored.get("data") or {}).get("sha256") != sha256:
            diffs.append("data: other pairs (sha256 differs)")
        if not diffs:
            return stored
        if not force:
            raise ConfigError(f"{out} holds an alignment run with other settings ({'; '.join(diffs)}); "
                              "use another --out or pass --force to start over.")
        for name in [*stored.get("files", []), "checkpoints", _RECORD]:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    elif out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()) and not force:
        raise ConfigError(f"{out} is not empty and holds no align.json: not an equal align output; "
                          "use another --out or pass --force.")
    return None


def _callback(on_progress: Callable[[AlignProgress], None] | None, prior_seconds: float) -> Any:
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    class AlignSeconds(TrainerCallback, ExportableState):  # type: ignore[misc]
        """Reports each step to ``on_progress`` and stores the training seconds in every checkpoint."""

        def __init__(self) -> None:
            self.t0 = time.perf_counter()

        def seconds(self) -> float:
            return prior_seconds + time.perf_counter() - self.t0

        def state(self) -> dict[str, Any]:
            return {"args": {}, "attributes": {"seconds": self.seconds()}}

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.t0 = time.perf_counter()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kw: Any) -> None:
            if on_progress is not None and logs and "loss" in logs:
                on_progress(AlignProgress(step=int(state.global_step), max_steps=int(state.max_steps),
                                          loss=float(logs["loss"]), elapsed=self.seconds()))

    return AlignSeconds()


def _total_steps(config: AlignConfig, n_rows: int) -> int:
    if config.max_steps is not None:
        return int(config.max_steps)
    return max(1, math.ceil(math.ceil(n_rows / config.batch_size) * config.epochs))


def build_trainer(config: AlignConfig, model: Any, rows: Any, out: Path, *, callbacks: Sequence[Any] = (),
                  cuda: bool = False) -> Any:
    """The ``SentenceTransformerTrainer`` :func:`align` runs (InfoNCE with scale 1/τ over ``rows``)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers import PrinterCallback

    from equal.align._loss import InfoNCELoss
    from equal.train._trainer import trainer_defaults

    total = _total_steps(config, len(rows))
    # a non-empty widget list makes the trainer skip computing Hub widget examples (a tqdm bar on stderr)
    model.model_card_data.widget = model.model_card_data.widget or [{}]
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=float(config.epochs),
        max_steps=config.max_steps if config.max_steps is not None else -1,
        per_device_train_batch_size=config.batch_size,
        learning_rate=float(config.lr),
        warmup_steps=round(config.warmup_ratio * total),
        **trainer_defaults(seed=config.seed, save_steps=config.save_steps),
        use_cpu=not cuda,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_dict(rows.columns),
                                         loss=InfoNCELoss(model, scale=config.scale), callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)  # with tqdm off the Trainer prints every log dict to stdout
    from sentence_transformers.base.model_card import BaseModelCardCallback

    for cb in list(trainer.callback_handler.callbacks):
        if isinstance(cb, BaseModelCardCallback):  # a Hub model card: seconds per run spent on widget examples
            trainer.remove_callback(cb)
    return trainer


def _move_into(src: Path, out: Path) -> list[str]:
    """Move every entry of ``src`` into ``out`` (replacing), return the names."""
    names = sorted(p.name for p in src.iterdir())
    for name in names:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(src / name, target)
    return names


def _record(config: AlignConfig, base_dir: Path, data: dict[str, Any], **fields: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"version": VERSION, "config": config.to_dict(), "base_model_dir": str(base_dir),
                           "data": data, "steps": 0, "seconds": 0.0, "final_loss": None, "loss_curve": [],
                           "finished": False}
    rec.update(fields)
    return rec


def _result(out: Path, rec: dict[str, Any], *, resumed: bool, device: str) -> AlignResult:
    return AlignResult(
        out=str(out), config=AlignConfig.from_dict(rec["config"]), base_model_dir=rec["base_model_dir"],
        data=dict(rec["data"]), steps=int(rec["steps"]), seconds=float(rec["seconds"]),
        final_loss=float(rec["final_loss"]), loss_curve=[(int(s), float(v)) for s, v in rec["loss_curve"]],
        resumed=resumed, device=device,
    )


def align(
    data: str | os.PathLike[str] | Sequence[AlignExample],
    out: str | os.PathLike[str],
    config: AlignConfig | None = None,
    *,
    force: bool = False,
    on_progress: Callable[[AlignProgress], None] | None = None,
    skip_invalid: bool = False,
) -> AlignResult:
    """Train an encoder so that documents land near the QA pairs they yield (EQUAL's warm-up), resumably.

    Parameters
    ----------
    data : path or sequence of AlignExample
        An ``equal extract`` run directory, a JSONL of ``{document, pairs}`` (see
        :func:`equal.align.read_align_data`), or examples in memory.
    out : str or Path
        The output folder: a sentence-transformers directory plus ``align.json`` (layout in the module
        docstring). Rerunning the same call resumes from the last checkpoint, or returns at once when finished.
    config : AlignConfig, optional
    force : bool, default=False
        Start over when ``out`` holds a run with other settings or data (otherwise :class:`ConfigError`).
    on_progress : callable, optional
        Called with an :class:`AlignProgress` after every optimizer step.
    skip_invalid : bool, default=False
        Skip invalid JSONL rows.

    Returns
    -------
    AlignResult

    Raises
    ------
    DataError
        Malformed data, or fewer than two documents with pairs (contrastive training needs negatives).
    ConfigError
        ``out`` holds another run (without ``force``); the base is not a sentence-transformers model.

    Notes
    -----
    Loss: :class:`~equal.align._loss.InfoNCELoss` (``MultipleNegativesRankingLoss`` with scale 1/τ, every
    in-batch positive and mined hard negative a candidate, the anchor document's own other pairs masked).
    Hard negatives are mined once with the base encoder (see :func:`~equal.align._data.mine_rows`), seeded,
    so a resumed run trains on the same rows; the trainer restores optimizer, scheduler and RNG states from
    the checkpoint.
    """
    import torch

    from equal.runlock import remove_stale_temps, run_lock

    config = AlignConfig() if config is None else config
    out = Path(out)
    examples = list(data) if not isinstance(data, (str, os.PathLike)) else read_align_data(
        data, skip_invalid=skip_invalid)
    examples = [ex for ex in examples if ex.pairs]
    if len(examples) < 2:
        raise DataError(f"{len(examples)} document(s) with pairs: alignment needs at least two (each document's "
                        "negatives are the other documents' pairs)", path=None if isinstance(data, Sequence)
                        and not isinstance(data, str) else str(data))
    base_dir = resolve_base(config.base)
    sha = data_sha256(examples)
    cuda = bool(torch.cuda.is_available())
    device = "cuda" if cuda else "cpu"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder.")
    with run_lock(out, "equal align"):  # one writer per OUT (equal.runlock)
        remove_stale_temps(out)
        stored = _prepare_out(out, config, sha, force=force)
        if stored is not None and stored.get("finished"):
            return _result(out, stored, resumed=True, device=device)
        return _train(examples, out, config, base_dir, sha, on_progress=on_progress, cuda=cuda, device=device)


def _train(examples: list[AlignExample], out: Path, config: AlignConfig, base_dir: Path, sha: str, *,
           on_progress: Callable[[AlignProgress], None] | None, cuda: bool, device: str) -> AlignResult:
    from sentence_transformers import SentenceTransformer
    from transformers import set_seed

    from equal.train._trainer import _complete_checkpoints, _quiet

    checkpoints = _complete_checkpoints(out / "checkpoints")
    resume = checkpoints[-1] if checkpoints else None
    prior_seconds = 0.0
    if resume is not None:
        state = json.loads((resume / "trainer_state.json").read_text())
        cb_state = (state.get("stateful_callbacks") or {}).get("AlignSeconds") or {}
        prior_seconds = float((cb_state.get("attributes") or {}).get("seconds", 0.0))
        logger.info("resuming %s from %s", out, resume.name)

    with torch_threads(int(config.threads)), _quiet():  # type: ignore[arg-type]
        set_seed(config.seed)
        model = SentenceTransformer(str(base_dir), device=device, local_files_only=True)
        if config.max_length is not None:
            model.max_seq_length = int(config.max_length)
        rows = mine_rows(examples, model, hard_negatives=config.hard_negatives,
                         negative_range=config.negative_range, seed=config.seed)
        info = {"sha256": sha, "documents": len(examples), "pairs": sum(len(ex.pairs) for ex in examples),
                "rows": len(rows), "hard_negatives": rows.hard_negatives}
        atomic_write_json(out / _RECORD, _record(config, base_dir, info))
        callback = _callback(on_progress, prior_seconds)
        trainer = build_trainer(config, model, rows, out, callbacks=[callback], cuda=cuda)
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
        seconds = callback.seconds()
        state = trainer.state
        # a kill while saving leaves only a .tmp-model-* folder (removed by the next call) and "finished": false
        staging = Path(tempfile.mkdtemp(prefix=".tmp-model-", dir=out))
        try:
            trainer.model.save_pretrained(str(staging), create_model_card=False)
            files = _move_into(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    del trainer
    curve = [(int(e["step"]), float(e["loss"])) for e in state.log_history if "loss" in e and "step" in e]
    rec = _record(config, base_dir, info, steps=int(state.global_step), seconds=round(seconds, 3),
                  final_loss=curve[-1][1] if curve else float("nan"), loss_curve=[list(c) for c in curve],
                  finished=True, device=device, files=files,
                  resumed_from=resume.name if resume is not None else None)
    atomic_write_json(out / _RECORD, rec)  # last: its "finished" marks OUT complete
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return _result(out, rec, resumed=resume is not None, device=device)
