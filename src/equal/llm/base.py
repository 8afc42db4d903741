"""The one interface every LLM backend implements.

A backend turns a batch of chat requests into completions. It never raises for a single failed request:
the failure is returned as a :class:`Completion` whose ``error`` is set and whose ``text`` is ``None``, so a
caller can never mistake a failed request for an empty answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["LLM", "Completion", "GenerationParams", "Message", "OnComplete", "ResponseFormat"]

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": "..."}


@dataclass(frozen=True)
class ResponseFormat:
    """Structured output: ask the server to constrain the answer to JSON matching a JSON schema.

    Served backends (:class:`~equal.llm.OpenAILLM`) send it as OpenAI's
    ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`` (vLLM, SGLang, llama.cpp's
    ``llama-server``, OpenAI) and fall back to weaker forms, then to a plain request, when the server
    refuses it; :class:`~equal.llm.LocalLLM` ignores it. Callers must therefore still parse the answer
    tolerantly: the format makes clean JSON likely, not certain.

    Attributes
    ----------
    name : str
        Schema name (letters, digits, ``_`` and ``-``, as OpenAI requires).
    schema_json : str
        The JSON schema as canonical JSON text (sorted keys), so the params stay hashable and the cache key
        is stable; build it with :meth:`from_schema`.
    strict : bool, default=True
    """

    name: str
    schema_json: str
    strict: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.name):
            raise ValueError(f"name={self.name!r} must be 1-64 letters, digits, '_' or '-'.")
        try:
            schema = json.loads(self.schema_json)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"schema_json is not valid JSON: {exc}") from exc
        if not isinstance(schema, dict):
            raise ValueError(f"schema_json must encode a JSON object; got {type(schema).__name__}.")

    @classmethod
    def from_schema(cls, name: str, schema: dict[str, Any], *, strict: bool = True) -> ResponseFormat:
        """Build from a schema dict (serialised canonically)."""
        return cls(name, json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
                   strict)

    @property
    def schema(self) -> dict[str, Any]:
        """The schema as a fresh dict."""
        out: dict[str, Any] = json.loads(self.schema_json)
        return out


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters; part of the request-cache key.

    ``response_format`` (default None) asks for structured output (:class:`ResponseFormat`); it enters
    the cache key only when set, so keys of requests without it are unchanged. :class:`~equal.llm.LocalLLM`
    ignores it (it samples unconstrained; the caller's tolerant parser reads the answer).

    ``sample`` (default 0) numbers repeated draws of one prompt (pass@k takes n samples of each problem):
    it enters the cache key only when non-zero, so n samples are n cache rows and every existing key (all
    with ``sample=0``) is unchanged. Backends do not read it; callers that want different draws also vary
    ``seed`` (e.g. ``seed + sample``).
    """

    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0
    stop: tuple[str, ...] = ()
    response_format: ResponseFormat | None = None
    sample: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.sample, bool) or not isinstance(self.sample, int) or self.sample < 0:
            raise ValueError(f"sample={self.sample!r} must be an integer >= 0.")
        if self.response_format is not None and not isinstance(self.response_format, ResponseFormat):
            raise ValueError(f"response_format={self.response_format!r:.80} must be a ResponseFormat or None.")
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
