"""OpenAI-compatible ``POST {base_url}/embeddings`` backend (OpenAI, vLLM, llama.cpp server, Ollama...)."""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from equal.embed.base import Embedder, EmbeddingError, ProgressFn, check_batch_size
from equal.errors import ConfigError

__all__ = ["DEFAULT_API_KEY_ENV", "OpenAIEmbedder"]

logger = logging.getLogger(__name__)

DEFAULT_API_KEY_ENV: tuple[str, ...] = ("EQUAL_API_KEY", "OPENAI_API_KEY")
BASE_URL_ENV = "EQUAL_BASE_URL"

# Output sizes of OpenAI's models, so ``dim`` needs no request for them.
_KNOWN_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
_RETRY_STATUS = frozenset({408, 429})
_MAX_RETRY_AFTER = 60.0


class OpenAIEmbedder(Embedder):
    """Embed through an OpenAI-compatible ``/embeddings`` endpoint.

    Parameters
    ----------
    model : str
        Model name sent to the server.
    base_url : str or None, default=None
        API root such as ``http://127.0.0.1:8000/v1``; ``None`` reads env ``EQUAL_BASE_URL``.
    api_key_env : str or tuple of str, default=("EQUAL_API_KEY", "OPENAI_API_KEY")
        Environment variables tried in order for the bearer key (the key is only ever read from the
        environment, and never logged or put in :attr:`identity`). No key sends no Authorization header,
        which local servers accept.
    batch_size : int, default=256
        Texts per request.
    dimensions : int or None, default=None
        Sent as ``dimensions`` (models that can shorten their output); ``None`` leaves it out.
    timeout : float, default=60
        Seconds per request.
    max_retries : int, default=5
        Retries after a transport error or HTTP 408/429/5xx; other statuses fail at once.
    retry_backoff : float, default=1.0
        First retry delay in seconds, doubled per attempt (capped at 30 s, with jitter); a ``Retry-After``
        header takes precedence (capped at 60 s).
    normalize : bool, default=True
        L2-normalise the vectors (servers usually do already).

    Attributes
    ----------
    n_requests : int
        HTTP requests sent, retries included.
    tokens_in : int
        Prompt tokens the server reported in ``usage``.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str | Sequence[str] = DEFAULT_API_KEY_ENV,
        batch_size: int = 256,
        dimensions: int | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        retry_backoff: float = 1.0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        import httpx

        if not isinstance(model, str) or not model:
            raise ValueError(f"model={model!r} must be a non-empty string.")
        base_url = base_url or os.environ.get(BASE_URL_ENV)
        if not base_url:
            raise ConfigError(
                f"OpenAIEmbedder needs base_url= or env {BASE_URL_ENV} "
                "(for example http://127.0.0.1:8000/v1 or https://api.openai.com/v1)."
            )
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https"):
            raise ValueError(f"base_url={base_url!r} must start with http:// or https://.")
        if dimensions is not None:
            check_batch_size(dimensions, "dimensions")
        if timeout <= 0:
            raise ValueError(f"timeout={timeout!r} must be > 0.")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries={max_retries!r} must be an int >= 0.")
        if retry_backoff < 0:
            raise ValueError(f"retry_backoff={retry_backoff!r} must be >= 0.")

        self.model = model
        self.batch_size = check_batch_size(batch_size)
        self.dimensions = dimensions
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.retry_backoff = float(retry_backoff)
        self.normalize = bool(normalize)
        self.url = url.copy_with(path=url.path.rstrip("/") + "/embeddings")
        # Credentials and query strings (which some providers use for keys) stay out of the identity.
        self.base_url = str(url.copy_with(userinfo=b"", query=None)).rstrip("/")
        envs = (api_key_env,) if isinstance(api_key_env, str) else tuple(api_key_env)
        self._api_key = next((os.environ[e] for e in envs if os.environ.get(e)), None)
        if self._api_key is None:
            logger.debug("no API key in %s; sending requests without Authorization", ", ".join(envs))
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        self._client = httpx.Client(timeout=self.timeout, headers=headers)
        self._dim: int | None = dimensions or _KNOWN_DIMS.get(model)
        self.n_requests = 0
        self.tokens_in = 0

    @property
    def identity(self) -> str:
        return (
            f"openai:model={self.model};base_url={self.base_url};dimensions={self.dimensions}"
            f";normalize={int(self.normalize)}"
        )

    @property
    def dim(self) -> int:
        """Vector length; for an unknown model it costs one request (embedding a short probe text)."""
        if self._dim is None:
            self._dim = int(self._request(["dimension probe"]).shape[1])
        return self._dim

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def __enter__(self) -> OpenAIEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _encode(self, texts: list[str], batch_size: int, progress: ProgressFn) -> np.ndarray:
        parts = []
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            parts.append(self._request(batch))
            self.n_batches += 1
            self.n_encoded += len(batch)
            progress(len(batch))
        X = np.concatenate(parts, axis=0)
        if self._dim is None:
            self._dim = int(X.shape[1])
        return X

    def _request(self, texts: list[str]) -> np.ndarray:
        """POST one batch, retrying transport errors and 408/429/5xx; return (len(texts), d) float32."""
        import httpx

        payload: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self.dimensions is not None:
            payload["dimensions"] = self.dimensions
        last_problem = ""
        last_retry_after: str | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self._retry_delay(attempt, last_retry_after)
                logger.warning(
                    "embeddings request to %s failed (%s); retry %d/%d in %.1fs",
                    self.base_url, last_problem, attempt, self.max_retries, delay,
                )
                time.sleep(delay)
                last_retry_after = None
            self.n_requests += 1
            try:
                resp = self._client.post(self.url, json=payload)
            except httpx.TransportError as exc:
                last_problem = f"{type(exc).__name__}: {exc}"
                continue
            if resp.status_code in _RETRY_STATUS or resp.status_code >= 500:
                last_problem = f"HTTP {resp.status_code}: {_error_message(resp)}"
                last_retry_after = resp.headers.get("retry-after")
                continue
            if resp.status_code >= 400:
                hint = ""
                if resp.status_code in (401, 403):
                    hint = " Set the API key in env EQUAL_API_KEY or OPENAI_API_KEY."
                raise EmbeddingError(
                    f"embeddings request to {self.base_url} (model={self.model!r}) failed with HTTP "
                    f"{resp.status_code}: {_error_message(resp)}.{hint}"
                )
            return self._parse(resp, len(texts))
        raise EmbeddingError(
            f"embeddings request to {self.base_url} (model={self.model!r}) failed after "
            f"{self.max_retries + 1} attempt(s); last error: {last_problem}"
        )

    def _retry_delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), _MAX_RETRY_AFTER)
            except ValueError:
                pass  # an HTTP date; fall back to exponential backoff
        base = min(self.retry_backoff * 2 ** (attempt - 1), 30.0)
        return base * (0.5 + random.random() / 2)  # jitter spreads out clients that failed together

    def _parse(self, resp: Any, n: int) -> np.ndarray:
        try:
            body = resp.json()
            items = sorted(body["data"], key=lambda item: item["index"])
            X = np.asarray([item["embedding"] for item in items], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbeddingError(
                f"embeddings response from {self.base_url} is not OpenAI-shaped "
                f"({type(exc).__name__}: {exc}); body starts {resp.text[:200]!r}"
            ) from exc
        if X.ndim != 2 or X.shape[0] != n:
            raise EmbeddingError(
                f"embeddings response from {self.base_url} has shape {X.shape}; expected {n} vectors."
            )
        if [item["index"] for item in items] != list(range(n)):
            raise EmbeddingError(
                f"embeddings response from {self.base_url} has indices other than 0..{n - 1}."
            )
        usage = body.get("usage") or {}
        self.tokens_in += int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0)
        return X


def _error_message(resp: Any) -> str:
    """The server's error message (OpenAI's ``{"error": {"message": ...}}`` or plain text), shortened."""
    try:
        body = resp.json()
        err = body.get("error", body) if isinstance(body, dict) else body
        msg = err.get("message", err) if isinstance(err, dict) else err
        text = str(msg)
    except ValueError:
        text = resp.text
    text = " ".join(text.split())
    return text[:500] if text else resp.reason_phrase
