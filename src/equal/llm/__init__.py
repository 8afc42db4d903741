"""LLM backends behind one interface, a persistent request cache and a cost ledger.

- :class:`LlamaCppLLM`: a GGUF file in-process with llama.cpp; what ``get_llm("local")`` builds for a
  ``.gguf`` file (default: the bundled SmolLM2-135M-Instruct).
- :class:`LocalLLM`: transformers in-process, for model folders (and a GGUF file dequantised, on request).
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
from equal.llm.llamacpp import LlamaCppLLM, llama_cpp_available
from equal.llm.local import LocalLLM, bundled_gguf_path, default_cache_dir, model_dir
from equal.llm.remote import OpenAILLM, RateLimiter

__all__ = [
    "LLM",
    "CachedLLM",
    "Completion",
    "GenerationParams",
    "Ledger",
    "LlamaCppLLM",
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
    "local_backend",
    "model_dir",
]

_DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_BACKENDS = ("auto", "llama.cpp", "transformers")


def local_backend(model_path: str | os.PathLike[str] | None = None, backend: str = "auto") -> str:
    """The engine ``get_llm("local", ...)`` uses for ``model_path``: ``"llama.cpp"`` or ``"transformers"``.

    ``"auto"`` picks llama.cpp for a ``.gguf`` file (None = the bundled one) when llama-cpp-python is
    installed, transformers otherwise (a model folder, or no llama-cpp-python).
    """
    if backend not in LOCAL_BACKENDS:
        raise ConfigError(f"backend={backend!r} must be one of {', '.join(LOCAL_BACKENDS)}.")
    if backend != "auto":
        return backend
    is_gguf = model_path is None or str(model_path).lower().endswith(".gguf")
    return "llama.cpp" if is_gguf and llama_cpp_available() else "transformers"


def get_llm(kind: str = "local", *, model: str | None = None, base_url: str | None = None,
            backend: str = "auto", **kw: Any) -> LLM:
    """Build a backend by name.

    Parameters
    ----------
    kind : {"local", "openai"}, default="local"
        ``"local"``: ``model`` (or ``model_path=``) is a ``.gguf`` file or a transformers folder (None = the
        bundled GGUF), run by :class:`LlamaCppLLM` or :class:`LocalLLM` as ``backend`` decides.
        ``"openai"``: :class:`OpenAILLM`; ``model`` is required.
    model : str, optional
    base_url : str, optional
        For ``"openai"``: default ``$EQUAL_BASE_URL``, then ``$OPENAI_BASE_URL``, then
        ``https://api.openai.com/v1``. Not accepted for ``"local"``.
    backend : {"auto", "llama.cpp", "transformers"}, default="auto"
        The local engine (see :func:`local_backend`). The two name the same file differently (``+llama.cpp``),
        so their answers never share request-cache rows.
    **kw
        Passed to the backend's constructor (e.g. ``threads`` for llama.cpp, ``batch_size`` for transformers,
        ``concurrency`` for openai).

    Raises
    ------
    ConfigError
        Unknown ``kind`` or ``backend``, missing ``model`` for ``"openai"``, or ``base_url`` given for
        ``"local"``.
    """
    if kind == "local":
        if base_url is not None:
            raise ConfigError(f"base_url={base_url!r} is only valid with kind='openai', not kind='local'.")
        model_path = kw.pop("model_path", None)
        if model is not None and model_path is not None and str(model) != str(model_path):
            raise ConfigError(f"model={model!r} and model_path={model_path!r} disagree; give one of them.")
        path = model if model is not None else model_path
        if local_backend(path, backend) == "llama.cpp":
            return LlamaCppLLM(path, **kw)
        return LocalLLM(path, **kw)
    if kind == "openai":
        if backend != "auto":
            raise ConfigError(f"backend={backend!r} is only valid with kind='local', not kind='openai'.")
        if not model:
            raise ConfigError(f"model={model!r}: kind='openai' needs a model name.")
        env = os.environ.get("EQUAL_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        url = base_url or env or _DEFAULT_BASE_URL
        return OpenAILLM(model, base_url=url, **kw)
    raise ConfigError(f"kind={kind!r} must be 'local' or 'openai'.")
