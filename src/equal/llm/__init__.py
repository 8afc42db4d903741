"""LLM backends behind one interface, a persistent request cache and a cost ledger.

- :class:`LocalLLM`: transformers in-process; default the bundled SmolLM2-135M-Instruct GGUF.
- :class:`OpenAILLM`: any OpenAI-compatible ``/chat/completions`` server or API, async with retries and
  rate limits.
- :class:`CachedLLM`: SQLite cache in front of either; no successful request is paid for twice.
- :class:`Ledger`: requests, tokens, seconds, estimated FLOPs and money.

Heavy dependencies (torch, transformers, httpx) are imported only when a backend is used.
"""

from __future__ import annotations

import os
from typing import Any

from equal.errors import ConfigError
from equal.llm.base import LLM, Completion, GenerationParams, Message, OnComplete, ResponseFormat
from equal.llm.cache import CachedLLM, cache_key, canonical_request
from equal.llm.ledger import Ledger
from equal.llm.local import LocalLLM, bundled_gguf_path, default_cache_dir, model_dir
from equal.llm.remote import OpenAILLM, RateLimiter

__all__ = [
    "LLM",
    "CachedLLM",
    "Completion",
    "GenerationParams",
    "Ledger",
    "LocalLLM",
    "Message",
    "OnComplete",
    "OpenAILLM",
    "RateLimiter",
    "ResponseFormat",
    "bundled_gguf_path",
    "cache_key",
    "canonical_request",
    "default_cache_dir",
    "get_llm",
    "model_dir",
]

_DEFAULT_BASE_URL = "https://api.openai.com/v1"


def get_llm(kind: str = "local", *, model: str | None = None, base_url: str | None = None, **kw: Any) -> LLM:
    """Build a backend by name.

    Parameters
    ----------
    kind : {"local", "openai"}, default="local"
        ``"local"``: :class:`LocalLLM` with ``model`` as ``model_path`` (None = the bundled GGUF;
        ``model_path=`` is accepted as well).
        ``"openai"``: :class:`OpenAILLM`; ``model`` is required.
    model : str, optional
    base_url : str, optional
        For ``"openai"``: default ``$EQUAL_BASE_URL``, then ``$OPENAI_BASE_URL``, then
        ``https://api.openai.com/v1``. Not accepted for ``"local"``.
    **kw
        Passed to the backend's constructor (e.g. ``batch_size``, ``concurrency``, ``rpm``).

    Raises
    ------
    ConfigError
        Unknown ``kind``, missing ``model`` for ``"openai"``, or ``base_url`` given for ``"local"``.
    """
    if kind == "local":
        if base_url is not None:
            raise ConfigError(f"base_url={base_url!r} is only valid with kind='openai', not kind='local'.")
        model_path = kw.pop("model_path", None)
        if model is not None and model_path is not None and str(model) != str(model_path):
            raise ConfigError(f"model={model!r} and model_path={model_path!r} disagree; give one of them.")
        return LocalLLM(model if model is not None else model_path, **kw)
    if kind == "openai":
        if not model:
            raise ConfigError(f"model={model!r}: kind='openai' needs a model name.")
        env = os.environ.get("EQUAL_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        url = base_url or env or _DEFAULT_BASE_URL
        return OpenAILLM(model, base_url=url, **kw)
    raise ConfigError(f"kind={kind!r} must be 'local' or 'openai'.")
