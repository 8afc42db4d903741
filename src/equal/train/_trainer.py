"""``equal train``: LoRA or full supervised fine-tuning on TRL's ``SFTTrainer``, resumable, into a CKPT folder.

CKPT layout (shared with ``equal evaluate``)::

    CKPT/train.json      config, data hash, steps, tokens, seconds, FLOPs, loss curve, "finished"
    CKPT/adapter/        LoRA adapter (peft ``save_pretrained``) and tokenizer        (method="lora")
    CKPT/model/          full weights (``save_pretrained``) and tokenizer              (method="full")
    CKPT/merged/         adapter merged into the base: a plain transformers folder     (--merge, or model_folder)
    CKPT/checkpoints/    Trainer checkpoints (the last two) for resuming
    CKPT/report.html     loss curve and summary

``train.json`` is written (atomically) before training with ``"finished": false`` and rewritten at the end,
after the weights, with ``"finished": true``; a run killed in between is resumed by the same call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from equal._threads import torch_threads
from equal.data.io import atomic_write_json, atomic_write_text
from equal.errors import ConfigError, DataError
from equal.runlock import LOCK_NAME, remove_stale_temps, run_lock
from equal.train._config import TrainConfig, TrainProgress, TrainResult
from equal.train._data import SFTDataset, build_dataset

__all__ = ["build_trainer", "load_tokenizer", "model_folder", "read_train_json", "train", "train_flops"]

logger = logging.getLogger(__name__)

VERSION = 1
_OWNED = ("train.json", "adapter", "model", "merged", "checkpoints", "report.html")
_CKPT_RE = re.compile(r"checkpoint-(\d+)")


# -- model folders -------------------------------------------------------------------------------------------


def read_train_json(ckpt: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``CKPT/train.json``.

    Raises
    ------
    ConfigError
        Missing or unreadable.
    """
    path = Path(ckpt) / "train.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable equal train record ({exc}).") from None


def model_folder(path: str | os.PathLike[str]) -> Path:
    """A plain transformers causal-LM folder for a CKPT, a model folder, a ``.gguf`` file or ``"bundled"``.

    Parameters
    ----------
    path : str or Path
        ``"bundled"`` → :func:`equal.llm.model_dir` (the dequantised bundled model); a ``.gguf`` file → its
        dequantised folder; a folder with ``config.json`` → itself; a CKPT of :func:`train` → ``merged/`` if
        present, ``model/`` for a full fine-tune, else the adapter is merged into its base once, atomically,
        into ``CKPT/merged/``, which is returned.

    Returns
    -------
    Path
        Loadable by ``AutoModelForCausalLM.from_pretrained`` and :class:`equal.llm.LocalLLM`.

    Raises
    ------
    ConfigError
        Anything else, or a CKPT whose training has not finished.
    """
    from equal.llm import model_dir

    if str(path) == "bundled":
        return model_dir(None)
    p = Path(path).expanduser()
    if p.is_file() and p.suffix.lower() == ".gguf":
        return model_dir(p)
    if p.is_dir():
        if (p / "config.json").is_file():
            return p
        if (p / "train.json").is_file():
            if not read_train_json(p).get("finished"):
                raise ConfigError(f"{str(p)!r}: this equal train checkpoint has not finished training; "
                                  "rerun the same `equal train` command to finish it.")
            if (p / "merged" / "config.json").is_file():
                return p / "merged"
            if (p / "model" / "config.json").is_file():
                return p / "model"
            if (p / "adapter" / "adapter_config.json").is_file():
                return _merge_into(p)
            raise ConfigError(f"{str(p)!r}: this equal train checkpoint holds no weights (adapter/ or model/).")
    raise ConfigError(f"{str(path)!r} is not 'bundled', a .gguf file, a transformers model folder (config.json) "
                      "or an `equal train` checkpoint (train.json).")


def _base_of(ckpt: Path) -> Path:
    record = read_train_json(ckpt)
    base = record.get("base_model_dir")
    if base and (Path(base) / "config.json").is_file():
        return Path(base)
    model = (record.get("config") or {}).get("model", "bundled")
    return model_folder(model)  # the recorded cache folder moved: resolve the base again


@contextlib.contextmanager
def _atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` in one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _merge_into(ckpt: Path) -> Path:
    """Merge ``CKPT/adapter`` into its base and write ``CKPT/merged`` (atomically); return that folder."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = ckpt / "merged"
    base_dir = _base_of(ckpt)
    t0 = time.perf_counter()
    with _quiet():
        base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
        merged = PeftModel.from_pretrained(base, str(ckpt / "adapter")).merge_and_unload()
        tokenizer = AutoTokenizer.from_pretrained(str(ckpt / "adapter"))
        with _atomic_dir(target) as tmp:
            merged.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
    logger.info("merged %s into %s in %.1f s", ckpt / "adapter", target, time.perf_counter() - t0)
    return target


def load_tokenizer(folder: str | os.PathLike[str]) -> Any:
    """The tokenizer of a model folder, checked to have a chat template (pad token defaults to EOS).

    Raises
    ------
    DataError
        The tokenizer has no chat template (names ``tokenizer_config.json`` and the ``chat_template`` field).
    """
    from transformers import AutoTokenizer

    with _quiet():
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if not getattr(tokenizer, "chat_template", None):
        raise DataError('field "chat_template": the tokenizer has no chat template, and equal train renders '
                        "every record with the model's own template; use an instruct/chat model",
                        path=str(Path(folder) / "tokenizer_config.json"), field="chat_template")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# -- helpers ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Library code prints nothing: silence transformers' and datasets' loggers and bars, then restore them."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    ds_logging: Any = None
    with contextlib.suppress(ImportError):
        from datasets.utils import logging as ds_logging
    ds_bars = ds_logging.is_progress_bar_enabled() if ds_logging is not None else False
    ds_verbosity = ds_logging.get_verbosity() if ds_logging is not None else None
    if ds_logging is not None:
        ds_logging.disable_progress_bar()
        ds_logging.set_verbosity_error()
    trl_logger = logging.getLogger("trl")
    trl_level = trl_logger.level
    trl_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # deprecation notices of the stack's own internal calls (transformers ↔ peft ↔ trl), not the user's
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        if ds_logging is not None:
            ds_logging.set_verbosity(ds_verbosity)
            if ds_bars:
                ds_logging.enable_progress_bar()
        trl_logger.setLevel(trl_level)


def _complete_checkpoints(folder: Path) -> list[Path]:
    """Trainer checkpoints whose ``trainer_state.json`` (written last) is complete, oldest first.

    A checkpoint killed while being written is removed, so the Trainer's own rotation never counts it.
    """
    found: list[tuple[int, Path]] = []
    if not folder.is_dir():
        return []
    for p in folder.iterdir():
        m = _CKPT_RE.fullmatch(p.name)
        if m is None or not p.is_dir():
            continue
        try:
            ok = json.loads((p / "trainer_state.json").read_text()).get("global_step") == int(m.group(1))
        except (OSError, ValueError):
            ok = False
        if ok:
            found.append((int(m.group(1)), p))
        else:
            logger.warning("removing the incomplete checkpoint %s (interrupted while it was written)", p)
            shutil.rmtree(p, ignore_errors=True)
    return [p for _, p in sorted(found)]


def _identity_diff(stored: dict[str, Any], config: TrainConfig, sha256: str) -> list[str]:
    old = {k: v for k, v in (stored.get("config") or {}).items()}
    diffs = [f"{k}: {old.get(k)!r} → {v!r}" for k, v in config.identity().items() if old.get(k) != v]
    if (stored.get("data") or {}).get("sha256") != sha256:
        diffs.append("data: other records (sha256 differs)")
    return diffs


def _prepare_out(out: Path, config: TrainConfig, data: SFTDataset, *, force: bool,
                 lead: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Refuse or clear a CKPT that holds another run; return its ``train.json`` when it is this run's.

    ``lead`` is the LEAD settings of a ``train_lead`` run (None: training on every record); a CKPT written with
    other LEAD settings, or by the other kind of run, is another run.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder.")
    for tmp in out.glob(".tmp-*") if out.is_dir() else ():
        shutil.rmtree(tmp, ignore_errors=True)  # left by a process killed while it wrote adapter/ or merged/
    record_path = out / "train.json"
    if record_path.is_file():
        stored = read_train_json(out)
        diffs = _identity_diff(stored, config, data.sha256)
        if stored.get("lead") != lead:
            diffs.append("select: lead → every record" if lead is None else f"lead: {stored.get('lead')!r} → {lead!r}")
        if not diffs:
            return stored
        if not force:
            raise ConfigError(f"{out} holds a training run with other settings ({'; '.join(diffs)}); "
                              "use another --out or pass --force to start over.")
    elif out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()) and not force:
        raise ConfigError(f"{out} is not empty and holds no train.json: not an equal train checkpoint; "
                          "use another --out or pass --force.")
    for name in (*_OWNED, "lead"):  # --force: remove only what equal train (and train_lead) writes
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    return None


def _record(config: TrainConfig, base_dir: Path, data: SFTDataset, **fields: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"version": VERSION, "config": config.to_dict(), "base_model_dir": str(base_dir),
                           "data": data.info(), "steps": 0, "tokens_seen": 0, "seconds": 0.0, "train_flops": 0.0,
                           "final_loss": None, "loss_curve": [], "finished": False}
    rec.update(fields)
    return rec


def _result(out: Path, rec: dict[str, Any], *, resumed: bool, device: str) -> TrainResult:
    config = TrainConfig.from_dict(rec["config"])
    weights = out / ("adapter" if config.method == "lora" else "model")
    merged = out / "merged"
    return TrainResult(
        out=str(out), weights=str(weights), merged=str(merged) if (merged / "config.json").is_file() else None,
        config=config, base_model_dir=rec["base_model_dir"], data=dict(rec["data"]), steps=int(rec["steps"]),
        tokens_seen=int(rec["tokens_seen"]), seconds=float(rec["seconds"]), train_flops=float(rec["train_flops"]),
        final_loss=float(rec["final_loss"]), loss_curve=[(int(s), float(v)) for s, v in rec["loss_curve"]],
        resumed=resumed, device=device,
    )


def train_flops(n_params: int, n_trainable: int, tokens: int) -> float:
    """Training FLOPs: ``(4 · n_params + 2 · n_trainable) · tokens``.

    Forward 2·N per token, backward 2·N for the activation gradients through every weight plus 2·N_trainable
    for the weight gradients (Kaplan et al., 2020, with the weight-gradient half counted only for trainable
    weights). Full fine-tuning gives the usual 6·N·tokens; LoRA about 4·N·tokens. Attention-score FLOPs
    (quadratic in the length) are left out.
    """
    return float((4 * n_params + 2 * n_trainable) * tokens)


# -- training --------------------------------------------------------------------------------------------------


def _callback(on_progress: Callable[[TrainProgress], None] | None, prior_seconds: float) -> Any:
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    class EqualProgress(TrainerCallback, ExportableState):  # type: ignore[misc]
        """Reports each step to ``on_progress`` and stores the training seconds in every checkpoint."""

        def __init__(self) -> None:
            self.t0 = time.perf_counter()
            self.tokens0 = 0
            self.session_seconds = 0.0

        def seconds(self) -> float:
            return prior_seconds + time.perf_counter() - self.t0

        def state(self) -> dict[str, Any]:  # saved in checkpoint-N/trainer_state.json
            return {"args": {}, "attributes": {"seconds": self.seconds()}}

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.t0 = time.perf_counter()
            self.tokens0 = int(state.num_input_tokens_seen)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kw: Any) -> None:
            if on_progress is None or not logs or "loss" not in logs:
                return
            dt = time.perf_counter() - self.t0
            tokens = int(state.num_input_tokens_seen)
            on_progress(TrainProgress(
                step=int(state.global_step), max_steps=int(state.max_steps), loss=float(logs["loss"]),
                tokens_seen=tokens, tokens_per_second=(tokens - self.tokens0) / dt if dt > 0 else 0.0,
                elapsed=self.seconds(),
            ))

    return EqualProgress()


def trainer_defaults(*, seed: int, save_steps: int) -> dict[str, Any]:
    """The Trainer arguments ``equal train`` and ``equal align`` share: seeded, a loss every step, two
    resumable checkpoints kept, equal's own progress instead of tqdm and no reporting integrations."""
    return dict(lr_scheduler_type="linear", weight_decay=0.0, seed=seed, data_seed=seed, dataloader_num_workers=0,
                logging_strategy="steps", logging_steps=1, save_strategy="steps", save_steps=save_steps,
                save_total_limit=2, report_to="none", disable_tqdm=True, log_level="error")


def _sft_config(config: TrainConfig, out: Path, *, cuda: bool) -> Any:
    import torch
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=float(config.epochs),
        max_steps=config.max_steps if config.max_steps is not None else -1,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=float(config.lr),  # type: ignore[arg-type]
        warmup_steps=0,
        **trainer_defaults(seed=config.seed, save_steps=config.save_steps),
        # TRL defaults to bf16 everywhere; on CPU float32 is both faster and exact (and pre-Ampere GPUs lack bf16)
        bf16=cuda and torch.cuda.is_bf16_supported(),
        fp16=False,
        use_cpu=not cuda,
        activation_checkpointing=False,  # TRL's default trades ~20% speed for memory a small model does not need
        max_length=config.max_length,
        packing=False,
        include_num_input_tokens_seen="non_padding",
    )


def build_trainer(
    config: TrainConfig,
    base_dir: Path,
    tokenizer: Any,
    dataset: SFTDataset,
    out: Path,
    *,
    callbacks: Sequence[Any] = (),
    cuda: bool = False,
) -> Any:
    """The ``trl.SFTTrainer`` :func:`train` runs: base model loaded in float32, peft LoRA unless full.

    Call it inside the thread and logging settings of :func:`train`; exposed for tests and for callers that
    train inside their own loop (iterative kMQ, LEAD) and need the trainer itself.
    """
    import torch
    from transformers import AutoModelForCausalLM, PrinterCallback, set_seed
    from trl import SFTTrainer

    peft_config = None
    if config.method == "lora":
        from peft import LoraConfig

        target: str | list[str] = config.lora_target
        if target != "all-linear":
            target = [t.strip() for t in target.split(",") if t.strip()]
        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                 target_modules=target, task_type="CAUSAL_LM")
    with _quiet():
        # SFTTrainer wraps the model with peft before Trainer seeds anything: seed the adapter init here.
        set_seed(config.seed)
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
        trainer = SFTTrainer(model=model, args=_sft_config(config, out, cuda=cuda), train_dataset=dataset.to_hf(),
                             processing_class=tokenizer, peft_config=peft_config, callbacks=list(callbacks))
    # With tqdm disabled the Trainer prints every log dict to stdout; progress goes through on_progress.
    trainer.remove_callback(PrinterCallback)
    return trainer


def train(
    data: str | os.PathLike[str] | Sequence[Any],
    out: str | os.PathLike[str],
    config: TrainConfig | None = None,
    *,
    force: bool = False,
    on_progress: Callable[[TrainProgress], None] | None = None,
) -> TrainResult:
    """Fine-tune a causal LM on SFT records with TRL's ``SFTTrainer`` (LoRA via peft, or full), resumably.

    Parameters
    ----------
    data : path or sequence of records
        An SFT file or folder (messages / ShareGPT / Alpaca, JSONL / Parquet), an ``equal extract`` run
        directory, or records in memory (see :func:`equal.train.build_dataset`).
    out : str or Path
        The CKPT folder (layout in the module docstring). Rerunning the same call on it resumes from the last
        checkpoint, or returns at once when the run has finished.
    config : TrainConfig, optional
        Default ``TrainConfig()``.
    force : bool, default=False
        Start over when ``out`` holds a run with other settings or data (otherwise :class:`ConfigError`).
    on_progress : callable, optional
        Called with a :class:`TrainProgress` after every optimizer step.

    Returns
    -------
    TrainResult

    Raises
    ------
    DataError
        Empty data, a record without an assistant turn, a prompt that fills ``max_length``, a model without a
        chat template (one line naming file, line and field; records are skipped and counted with
        ``skip_invalid``).
    ConfigError
        ``out`` holds another run (without ``force``); the model path is not a model.

    Notes
    -----
    Loss: mean cross-entropy over assistant tokens only, rendered with the model's chat template (see
    :mod:`equal.train._data`). Deterministic for a seed: the adapter init, data order (``seed``/``data_seed``)
    and dropout are seeded, data loading runs in-process, and a resumed run restores the optimizer, scheduler
    and RNG states, so it ends with the loss and weights of an uninterrupted run. CUDA runs use bf16 mixed
    precision; CPU runs float32 on ``config.threads`` torch threads.

    ``train_flops`` is :func:`train_flops` of the model's parameters (base plus adapter), the trainable ones and
    the non-padding tokens seen (``tokens_seen``); it is not the Trainer's ``total_flos``, which counts 6·N
    per token whatever is trainable.
    """
    import torch

    config = TrainConfig() if config is None else config
    out = Path(out)
    base_dir = model_folder(config.model)
    tokenizer = load_tokenizer(base_dir)
    dataset = build_dataset(data, tokenizer, max_length=config.max_length, skip_invalid=config.skip_invalid)
    cuda = bool(torch.cuda.is_available())
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder.")
    # One writer per CKPT, taken before anything in it is read or (with --force) deleted.
    with run_lock(out, "equal train"):
        remove_stale_temps(out)
        return _train_locked(config, out, base_dir, tokenizer, dataset, cuda=cuda, force=force,
                             on_progress=on_progress)


def _train_locked(config: TrainConfig, out: Path, base_dir: Path, tokenizer: Any, dataset: SFTDataset, *,
                  cuda: bool, force: bool, on_progress: Callable[[TrainProgress], None] | None) -> TrainResult:
    device = "cuda" if cuda else "cpu"
    stored = _prepare_out(out, config, dataset, force=force)
    if stored is not None and stored.get("finished"):
        if config.merge and config.method == "lora" and not (out / "merged" / "config.json").is_file():
            _merge_into(out)
        return _result(out, stored, resumed=True, device=device)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "train.json", _record(config, base_dir, dataset))

    checkpoints = _complete_checkpoints(out / "checkpoints")
    resume = checkpoints[-1] if checkpoints else None
    prior_seconds = 0.0
    if resume is not None:
        state = json.loads((resume / "trainer_state.json").read_text())
        cb_state = (state.get("stateful_callbacks") or {}).get("EqualProgress") or {}
        prior_seconds = float((cb_state.get("attributes") or {}).get("seconds", 0.0))
        logger.info("resuming %s from %s", out, resume.name)

    with torch_threads(int(config.threads)), _quiet():  # type: ignore[arg-type]
        callback = _callback(on_progress, prior_seconds)
        trainer = build_trainer(config, base_dir, tokenizer, dataset, out, callbacks=[callback], cuda=cuda)
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
        seconds = callback.seconds()
        state = trainer.state
        n_params = sum(p.numel() for p in trainer.model.parameters())
        n_trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        weights = out / ("adapter" if config.method == "lora" else "model")
        with _atomic_dir(weights) as tmp:
            trainer.model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
    del trainer
    curve = [(int(e["step"]), float(e["loss"])) for e in state.log_history if "loss" in e and "step" in e]
    tokens = int(state.num_input_tokens_seen)
    rec = _record(config, base_dir, dataset, steps=int(state.global_step), tokens_seen=tokens,
                  seconds=round(seconds, 3), train_flops=train_flops(n_params, n_trainable, tokens),
                  final_loss=curve[-1][1] if curve else float("nan"), loss_curve=[list(c) for c in curve],
                  finished=True, device=device, n_params=n_params, n_trainable=n_trainable,
                  resumed_from=resume.name if resume is not None else None)
    if config.merge:
        _merge_into(out)
    from equal.train._report import render_train_report

    atomic_write_text(out / "report.html", render_train_report(rec, out))
    atomic_write_json(out / "train.json", rec)  # last: its "finished" marks the CKPT complete
    return _result(out, rec, resumed=resume is not None, device=device)
