"""Frozen settings and results of ``equal train``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from equal._threads import available_cores
from equal.errors import ConfigError

__all__ = ["IDENTITY_EXCLUDED", "METHODS", "TrainConfig", "TrainProgress", "TrainResult"]

METHODS = ("lora", "full")

#: Default learning rates: LoRA adapters tolerate (and need) a much larger step than full fine-tuning.
_DEFAULT_LR = {"lora": 2e-4, "full": 2e-5}

#: Fields that do not change what is trained, so a rerun may change them on an existing CKPT.
IDENTITY_EXCLUDED = frozenset({"threads", "merge", "save_steps", "skip_invalid"})


def _int(name: str, value: object, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"train.{name}={value!r} must be an integer >= {lo}.")
    return value


def _positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):  # type: ignore[operator]
        rule = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"train.{name}={value!r} must be a finite number {rule}.")
    return float(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one fine-tuning run (LoRA or full) on TRL's ``SFTTrainer``.

    Parameters
    ----------
    model : str, default="bundled"
        ``"bundled"`` (SmolLM2-135M-Instruct, dequantised once from its GGUF by :func:`equal.llm.model_dir`),
        a local transformers causal-LM folder, or a ``.gguf`` file.
    method : {"lora", "full"}, default="lora"
    epochs : float, default=3.0
        Passes over the data; ignored when ``max_steps`` is set.
    max_steps : int or None, default=None
        Optimizer steps to run; overrides ``epochs``.
    lr : float or None, default=None
        Peak learning rate (linear decay, no warm-up). None: 2e-4 for LoRA, 2e-5 for full fine-tuning.
    batch_size : int, default=4
        Records per forward pass.
    grad_accum : int, default=1
        Forward passes per optimizer step (effective batch = ``batch_size * grad_accum``).
    max_length : int, default=1024
        Tokens per record; longer records are truncated (keeping the start) and counted.
    lora_r, lora_alpha : int, default=16, 32
        LoRA rank and scaling numerator (scale = alpha / r).
    lora_dropout : float, default=0.05
        Dropout on the LoRA branch.
    lora_target : str, default="all-linear"
        peft ``target_modules``: ``"all-linear"`` or comma-separated module names (``"q_proj,v_proj"``).
    seed : int, default=42
        Seeds model init of the adapter, data order (``seed`` and ``data_seed``) and dropout.
    save_steps : int, default=50
        A resumable checkpoint every this many optimizer steps (the last two are kept).
    merge : bool, default=False
        Also write ``CKPT/merged/``: the adapter merged into the base, a plain transformers folder.
    threads : int or None, default=None
        torch CPU threads; None = the cores available to this process.
    skip_invalid : bool, default=False
        Skip and count invalid records instead of failing on the first.

    Notes
    -----
    ``threads``, ``merge``, ``save_steps`` and ``skip_invalid`` do not change what is trained, so rerunning
    on an existing CKPT may change them; any other change is refused unless ``force=True``.
    """

    model: str = "bundled"
    method: str = "lora"
    epochs: float = 3.0
    max_steps: int | None = None
    lr: float | None = None
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 1024
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target: str = "all-linear"
    seed: int = 42
    save_steps: int = 50
    merge: bool = False
    threads: int | None = None
    skip_invalid: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError(f"train.model={self.model!r} must be 'bundled' or a model folder path.")
        if self.method not in METHODS:
            raise ConfigError(f"train.method={self.method!r} must be one of {', '.join(METHODS)}.")
        _positive("epochs", self.epochs)
        if self.max_steps is not None:
            _int("max_steps", self.max_steps, 1)
        if self.lr is None:
            object.__setattr__(self, "lr", _DEFAULT_LR[self.method])
        _positive("lr", self.lr)
        _int("batch_size", self.batch_size, 1)
        _int("grad_accum", self.grad_accum, 1)
        _int("max_length", self.max_length, 8)
        _int("lora_r", self.lora_r, 1)
        _int("lora_alpha", self.lora_alpha, 1)
        dropout = _positive("lora_dropout", self.lora_dropout, allow_zero=True)
        if dropout >= 1:
            raise ConfigError(f"train.lora_dropout={self.lora_dropout!r} must be in [0, 1).")
        if not isinstance(self.lora_target, str) or not self.lora_target.strip():
            raise ConfigError(f"train.lora_target={self.lora_target!r} must be 'all-linear' or module names.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"train.seed={self.seed!r} must be an integer.")
        _int("save_steps", self.save_steps, 1)
        for name in ("merge", "skip_invalid"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"train.{name}={getattr(self, name)!r} must be true or false.")
        if self.merge and self.method == "full":
            raise ConfigError("train.merge=True needs method='lora': a full fine-tune has no adapter to merge.")
        if self.threads is None:
            object.__setattr__(self, "threads", available_cores())
        _int("threads", self.threads, 1)

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-serialisable (``train.json``'s ``config``)."""
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that define what is trained (see Notes of the class)."""
        return {k: v for k, v in self.to_dict().items() if k not in IDENTITY_EXCLUDED}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild a config from :meth:`to_dict` (unknown keys raise :class:`ConfigError`)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"train.{unknown[0]}: unknown setting.")
        return cls(**data)


@dataclass(frozen=True)
class TrainProgress:
    """One optimizer step, as reported to ``on_progress``.

    Attributes
    ----------
    step, max_steps : int
        Steps done (counting those before a resume) and the total.
    loss : float
        Training loss of this step (mean over its assistant tokens).
    tokens_seen : int
        Non-padding tokens fed to the model so far.
    tokens_per_second : float
        Over this session (a resumed run counts from its restart).
    elapsed : float
        Seconds of training, previous sessions included.
    """

    step: int
    max_steps: int
    loss: float
    tokens_seen: int
    tokens_per_second: float
    elapsed: float


@dataclass(frozen=True)
class TrainResult:
    """What :func:`equal.train.train` returns (the content of ``CKPT/train.json``).

    Attributes
    ----------
    out : str
        The CKPT directory.
    weights : str
        ``CKPT/adapter`` (LoRA) or ``CKPT/model`` (full fine-tune).
    merged : str or None
        ``CKPT/merged`` when written.
    config : TrainConfig
    base_model_dir : str
        The transformers folder the base model was loaded from.
    data : dict
        ``path``, ``sha256`` (canonical JSON of the messages as trained), ``records``, ``skipped``, ``truncated``.
    steps, tokens_seen : int
    seconds : float
        Training seconds, summed over sessions when resumed.
    train_flops : float
        Estimated training FLOPs (see :func:`equal.train.train`'s Notes).
    final_loss : float
        Loss of the last optimizer step.
    loss_curve : list of (int, float)
    resumed : bool
        True when this call continued from a checkpoint (or found the run already finished).
    device : str
    """

    out: str
    weights: str
    merged: str | None
    config: TrainConfig
    base_model_dir: str
    data: dict[str, Any]
    steps: int
    tokens_seen: int
    seconds: float
    train_flops: float
    final_loss: float
    loss_curve: list[tuple[int, float]] = field(default_factory=list)
    resumed: bool = False
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (``config`` as a dict, the loss curve as ``[[step, loss], ...]``)."""
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        d["loss_curve"] = [[int(s), float(v)] for s, v in self.loss_curve]
        return d
