"""The one interface every LLM backend implements.

A backend turns a batch of chat requests into completions. It never raises for a single failed request:
the failure is returned as a :class:`Completion` whose ``error`` is set and whose ``text`` is ``None``, so a
caller can never mistake a failed request for an empty answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["LLM", "Completion", "GenerationParams", "Message", "OnComplete"]

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": "..."}


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters; part of the request-cache key."""

    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens={self.max_tokens} must be >= 1.")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1].")


@dataclass(frozen=True)
class Completion:
    """The outcome of one request: ``text`` on success, ``error`` on failure (never both)."""

    text: str | None
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0
    cached: bool = False
    error: str | None = None
    finish_reason: str | None = None
    extra: dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None


OnComplete = Callable[[int, Completion], None]
"""Callback ``on_complete(index, completion)`` a backend may call as soon as request ``index`` is finished.

The backends of :mod:`equal.llm` accept it as an optional keyword of ``generate`` so that
:class:`~equal.llm.CachedLLM` can commit each answer the moment it arrives; backends without it still work
(their answers are committed when ``generate`` returns).
"""


@runtime_checkable
class LLM(Protocol):
    """A chat model.

    ``model`` (with the messages and :class:`GenerationParams`) forms the request-cache key. A backend may
    also expose ``identity``, a JSON-able dict describing where it runs (kind, endpoint, file hash), which
    is stored beside cached answers for audit but is not part of the key, so the same model behind a new
    URL or port still hits the cache. ``identity`` never holds credentials.
    """

    @property
    def model(self) -> str: ...

    def generate(
        self, requests: Sequence[Sequence[Message]], params: GenerationParams
    ) -> list[Completion]:
        """Return one :class:`Completion` per request, in order."""
        ...
