"""Name → embedder resolution and the one-call :func:`embed_texts`."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np

from equal.embed.base import Embedder

__all__ = ["EMBEDDER_FORMS", "embed_texts", "get_embedder"]

EMBEDDER_FORMS = (
    "None or 'minilm' (the bundled all-MiniLM-L6-v2)",
    "'st:PATH' or a path to a sentence-transformers or model2vec directory",
    "'hf:PATH' or 'hf:PATH?pooling=last&max_length=256' (any Hugging Face model directory)",
    "'openai:MODEL' (base_url= or env EQUAL_BASE_URL)",
)
_DEFAULT_NAMES = ("minilm", "default", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
_INT_OPTIONS = ("max_length", "batch_size", "dimensions", "max_retries")
_BOOL_OPTIONS = ("normalize", "trust_remote_code")
_FLOAT_OPTIONS = ("timeout", "retry_backoff")


def _is_sentence_transformers_dir(path: Path) -> bool:
    from equal.embed.sentence_transformer import _is_model2vec_dir

    return path.is_dir() and (
        any((path / f).is_file() for f in ("modules.json", "config_sentence_transformers.json"))
        or _is_model2vec_dir(path)
    )


def _parse_options(query: str, name: str) -> dict[str, Any]:
    try:
        pairs = parse_qsl(query, keep_blank_values=False, strict_parsing=True)
    except ValueError as exc:
        raise ValueError(
            f"embedder name {name!r}: cannot parse options {query!r} (use key=value&...)."
        ) from exc
    opts: dict[str, Any] = {}
    for key, value in pairs:
        if key in _INT_OPTIONS:
            try:
                opts[key] = int(value)
            except ValueError as exc:
                raise ValueError(f"embedder name {name!r}: option {key}={value!r} must be an int.") from exc
        elif key in _FLOAT_OPTIONS:
            try:
                opts[key] = float(value)
            except ValueError as exc:
                raise ValueError(f"embedder name {name!r}: option {key}={value!r} must be a number.") from exc
        elif key in _BOOL_OPTIONS:
            low = value.lower()
            if low not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(f"embedder name {name!r}: option {key}={value!r} must be true or false.")
            opts[key] = low in ("1", "true", "yes")
        else:
            opts[key] = value
    return opts


def _merge(name: str, from_name: dict[str, Any], kw: dict[str, Any]) -> dict[str, Any]:
    for key, value in from_name.items():
        if key in kw and kw[key] != value:
            raise ValueError(
                f"embedder name {name!r} sets {key}={value!r} but the keyword gives {key}={kw[key]!r}; "
                "pass one."
            )
    return {**from_name, **kw}


def get_embedder(name: str | os.PathLike[str] | None = None, **kw: Any) -> Embedder:
    """Build an embedder from a short name.

    Parameters
    ----------
    name : str or path-like or None, default=None
        One of:

        - ``None`` or ``"minilm"``: the bundled all-MiniLM-L6-v2 (:class:`SentenceTransformerEmbedder`);
        - ``"st:PATH"`` or a path to a sentence-transformers directory;
        - ``"hf:PATH"``, with options as a query string, e.g. ``"hf:/models/llama?pooling=last"``
          (:class:`HFEmbedder`);
        - ``"openai:MODEL"`` (:class:`OpenAIEmbedder`; ``base_url`` from the keywords or env
          ``EQUAL_BASE_URL``). Options may follow as a query string too.
    **kw
        Keyword arguments for the backend's constructor (``device``, ``max_length``, ``pooling``,
        ``base_url``, ...). A keyword that contradicts an option in the name raises.

    Returns
    -------
    Embedder

    Raises
    ------
    ValueError
        For an unknown name; the message lists the accepted forms.
    """
    from equal.embed.hf import HFEmbedder
    from equal.embed.openai_api import OpenAIEmbedder
    from equal.embed.sentence_transformer import SentenceTransformerEmbedder

    if name is None:
        return SentenceTransformerEmbedder(**kw)
    raw = os.fspath(name)
    if raw.strip().lower() in _DEFAULT_NAMES:
        return SentenceTransformerEmbedder(**kw)
    prefix, sep, rest = raw.partition(":")
    prefix = prefix.lower()
    if sep and prefix in ("st", "hf", "openai") and rest:
        target, qmark, query = rest.partition("?")
        opts = _merge(raw, _parse_options(query, raw), kw) if qmark else dict(kw)
        if prefix == "st":
            return SentenceTransformerEmbedder(target, **opts)
        if prefix == "hf":
            return HFEmbedder(target, **opts)
        return OpenAIEmbedder(target, **opts)
    path = Path(raw).expanduser()
    if _is_sentence_transformers_dir(path):
        return SentenceTransformerEmbedder(path, **kw)
    hint = ""
    if path.is_dir():
        hint = f" {raw!r} is a directory without modules.json; for a plain Hugging Face model use 'hf:{raw}'."
    raise ValueError(f"Unknown embedder {raw!r}.{hint} Accepted forms: " + "; ".join(EMBEDDER_FORMS) + ".")


@functools.lru_cache(maxsize=4)
def _shared_embedder(name: str | None) -> Embedder:
    return get_embedder(name)


def embed_texts(
    texts: Sequence[str],
    *,
    embedder: Embedder | str | None = None,
    cache: bool | str | os.PathLike[str] = True,
    batch_size: int | None = None,
    show_progress: bool = False,
) -> np.ndarray:
    """Embed ``texts`` in one call.

    Parameters
    ----------
    texts : sequence of str
        The texts, of length n.
    embedder : Embedder or str or None, default=None
        An embedder, or a name for :func:`get_embedder` (``None`` is the bundled MiniLM). Models built from a
        name are kept loaded for the life of the process, so repeated calls do not reload them.
    cache : bool or path-like, default=True
        Read and write the disk cache (:class:`CachedEmbedder`); a path chooses its folder.
    batch_size : int or None, default=None
        Texts per model call; ``None`` is the embedder's default.
    show_progress : bool, default=False
        Rich progress bar on stderr.

    Returns
    -------
    ndarray of shape (n, dim), float32
        C-contiguous, L2-normalised rows (for normalising embedders).
    """
    from equal.embed.cache import CachedEmbedder

    emb = embedder if isinstance(embedder, Embedder) else _shared_embedder(embedder)
    if cache is not False and not isinstance(emb, CachedEmbedder):
        emb = CachedEmbedder(emb, None if cache is True else cache)
    try:
        return emb.encode(texts, batch_size=batch_size, show_progress=show_progress)
    finally:
        if isinstance(emb, CachedEmbedder) and emb is not embedder:
            emb.close()
