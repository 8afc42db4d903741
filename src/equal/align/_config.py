"""Frozen settings, progress and result of ``equal align``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from equal._threads import available_cores
from equal.errors import ConfigError

__all__ = ["IDENTITY_EXCLUDED", "AlignConfig", "AlignProgress", "AlignResult", "parse_negative_range"]

#: Fields that do not change what is trained, so a rerun may change them on an existing OUT.
IDENTITY_EXCLUDED = frozenset({"threads", "save_steps"})


def parse_negative_range(value: str | tuple[int, int] | list[int], *, key: str = "align.negative_range"
                         ) -> tuple[int, int]:
    """``"2-200"`` (or ``(2, 200)``) -> ``(2, 200)``: the ranks hard negatives are drawn from, ``min < max``."""
    if isinstance(value, str):
        lo_text, sep, hi_text = value.partition("-")
        try:
            if not sep:
                raise ValueError(value)
            lo, hi = int(lo_text), int(hi_text)
        except ValueError:
            raise ConfigError(f"{key}={value!r}: must be MIN-MAX, e.g. 2-200") from None
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        lo, hi = int(value[0]), int(value[1])
    else:
        raise ConfigError(f"{key}={value!r}: must be MIN-MAX, e.g. 2-200")
    if lo < 0 or hi <= lo:
        raise ConfigError(f"{key}={value!r}: must be 0 <= MIN < MAX")
    return lo, hi


def _int(name: str, value: object, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"align.{name}={value!r} must be an integer >= {lo}.")


def _positive(name: str, value: object) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value <= 0:  # type: ignore[operator]
        raise ConfigError(f"align.{name}={value!r} must be a finite number > 0.")
    return float(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class AlignConfig:
    """Settings of one contrastive alignment run (EQUAL's warm-up) on sentence-transformers' trainer.

    Parameters
    ----------
    base : str, default="minilm"
        The encoder to start from: ``"minilm"`` (the bundled all-MiniLM-L6-v2), ``"st:DIR"`` or a
        sentence-transformers directory.
    epochs : float, default=1.0
        Passes over the (document, pair) rows; ignored when ``max_steps`` is set. EQUAL: 2.
    max_steps : int or None, default=None
        Optimizer steps to run (overrides ``epochs``).
    batch_size : int, default=16
        Rows per step; every other row's positive and hard negatives are in-batch negatives.
    lr : float, default=5e-5
        Peak learning rate (linear decay after a ``warmup_ratio`` warm-up). EQUAL fine-tunes a larger
        encoder with 1e-5; a few hundred pairs on MiniLM need the larger step.
    warmup_ratio : float, default=0.1
        Fraction of the steps with a linearly rising learning rate (EQUAL: 0.1).
    temperature : float, default=0.02
        InfoNCE temperature τ (the loss's scale is 1/τ); EQUAL's 0.02.
    hard_negatives : int, default=15
        Mined hard negatives per row (EQUAL: 15); 0 trains on in-batch negatives only.
    negative_range : (int, int), default=(2, 200)
        Ranks (0-based, the document's own pairs left out) the hard negatives are drawn from at random
        (EQUAL: ``--range_for_sampling 2-200``).
    max_length : int or None, default=None
        Tokens per text; None keeps the model's own limit (256 for MiniLM).
    seed : int, default=0
        Seeds the negatives drawn, the row order and the dropout.
    save_steps : int, default=50
        A resumable checkpoint every this many steps.
    threads : int or None, default=None
        torch CPU threads; None = the cores available to this process.
    """

    base: str = "minilm"
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 16
    lr: float = 5e-5
    warmup_ratio: float = 0.1
    temperature: float = 0.02
    hard_negatives: int = 15
    negative_range: tuple[int, int] = (2, 200)
    max_length: int | None = None
    seed: int = 0
    save_steps: int = 50
    threads: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.base, str) or not self.base.strip():
            raise ConfigError(f"align.base={self.base!r} must be 'minilm', 'st:DIR' or a model directory.")
        _positive("epochs", self.epochs)
        if self.max_steps is not None:
            _int("max_steps", self.max_steps, 1)
        _int("batch_size", self.batch_size, 2)
        _positive("lr", self.lr)
        if not isinstance(self.warmup_ratio, (int, float)) or not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"align.warmup_ratio={self.warmup_ratio!r} must be in [0, 1).")
        _positive("temperature", self.temperature)
        _int("hard_negatives", self.hard_negatives, 0)
        object.__setattr__(self, "negative_range", parse_negative_range(self.negative_range))
        if self.max_length is not None:
            _int("max_length", self.max_length, 8)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"align.seed={self.seed!r} must be an integer.")
        _int("save_steps", self.save_steps, 1)
        if self.threads is None:
            object.__setattr__(self, "threads", available_cores())
        _int("threads", self.threads, 1)

    @property
    def scale(self) -> float:
        """The InfoNCE logit scale, 1/τ."""
        return 1.0 / self.temperature

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-serialisable (``align.json``'s ``config``)."""
        d = dataclasses.asdict(self)
        d["negative_range"] = list(self.negative_range)
        return d

    def identity(self) -> dict[str, Any]:
        """The fields that define what is trained."""
        return {k: v for k, v in self.to_dict().items() if k not in IDENTITY_EXCLUDED}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlignConfig:
        """Inverse of :meth:`to_dict` (unknown keys raise :class:`ConfigError`)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"align.{unknown[0]}: unknown setting.")
        kw = dict(data)
        if isinstance(kw.get("negative_range"), list):
            kw["negative_range"] = tuple(kw["negative_range"])
        return cls(**kw)


@dataclass(frozen=True)
class AlignProgress:
    """One optimizer step, as reported to ``on_progress``: steps done and total, its loss, seconds so far."""

    step: int
    max_steps: int
    loss: float
    elapsed: float


@dataclass(frozen=True)
class AlignResult:
    """What :func:`equal.align.align` returns (the content of ``OUT/align.json``).

    Attributes
    ----------
    out : str
        The sentence-transformers directory written (``--embedder st:OUT`` loads it).
    config : AlignConfig
    base_model_dir : str
        The directory the base encoder was loaded from.
    data : dict
        ``sha256`` (canonical JSON of the examples), ``documents``, ``pairs``, ``rows``, ``hard_negatives``
        (per row, as mined: fewer than asked when the data is small).
    steps : int
    seconds : float
        Training seconds, summed over sessions when resumed.
    final_loss : float
    loss_curve : list of (int, float)
    resumed : bool
        This call continued from a checkpoint (or found the run finished).
    device : str
    """

    out: str
    config: AlignConfig
    base_model_dir: str
    data: dict[str, Any]
    steps: int
    seconds: float
    final_loss: float
    loss_curve: list[tuple[int, float]] = field(default_factory=list)
    resumed: bool = False
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        d["loss_curve"] = [[int(s), float(v)] for s, v in self.loss_curve]
        return d
