"""Client for any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, SGLang, llama.cpp, Ollama, APIs).

Requests run concurrently on an asyncio event loop with ``httpx.AsyncClient``; :meth:`OpenAILLM.generate` is
synchronous and owns its loop, so callers need not know about asyncio.

Retries (STYLE rule 14) cover only what can succeed on a second try: transport errors (connect errors,
timeouts, connection resets, broken responses), HTTP 408, 429 and 5xx, and a 200 that carries no usable
answer (a body that is not JSON, no ``choices``, an ``{"error": ...}`` body, ``content`` null or empty).
Each waits a jittered exponential backoff, ``d = min(backoff_max, backoff_base * 2**attempt)`` then ``d/2 +
uniform(0, d/2)``, unless the server sent ``Retry-After`` (seconds or an HTTP date) or ``retry-after-ms``,
which is honoured (capped at ``backoff_max``) and also pauses the other requests of the batch. Any other 4xx
is the caller's mistake and is returned at once as a failed :class:`~equal.llm.base.Completion`. Every
failure carries a short reason in ``Completion.extra["reason"]`` (``http_503``, ``timeout``,
``empty_content``, ``deadline``, ...), which the :class:`~equal.llm.Ledger` counts.

Deadline: httpx's timeout is per read, so a server trickling one byte a second would hold a request forever;
``deadline_s`` bounds each request as a whole, from its first send to its answer, retries and waits
included. A request cut off by it fails with reason ``deadline``.

Token counts come from the response's ``usage``. A server that omits it gets its tokens counted locally
(``tokenizer``: a transformers tokenizer when one is known, else ``ceil(chars / 4)`` of the prompt and the
answer; the completion is marked ``extra["tokens_estimated"] = True``), with one warning per instance, so
token budgets and the ledger hold without ``usage``.

Structured output: when ``params.response_format`` is set, the request carries a ``response_format`` in
the first wire form the instance has not seen refused, in the order ``json_schema`` (OpenAI's
``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``: vLLM, SGLang, llama.cpp's
``llama-server``, OpenAI), then ``json_object`` with the schema inline (``{"type": "json_object", "schema":
...}``: llama-cpp-python's server, Anyscale-style APIs), then none (a plain request, read by the caller's
tolerant parser). A form counts as refused when the server answers a non-retryable 4xx whose JSON body
names ``response_format`` as the offending parameter (OpenAI's ``error.param``, FastAPI's ``detail[].loc``).
A 4xx that names no parameter, or a 5xx whose body mentions ``response_format``/``json_schema``
(llama-cpp-python answers an unknown format with HTTP 500, and there the text is the only evidence), is
treated as a refusal provisionally: it is taken back when even the plain request then fails with a 4xx
(the error was about something else, e.g. a prompt longer than the context). A refusal is remembered for
the instance, so later requests (and the queued requests of the same batch) go straight to the accepted
form; stepping down is immediate and not counted as a retry. The form actually sent is recorded in
``Completion.extra["response_format"]``.

The API key is read from the environment at each request and kept nowhere else: not on the object, not in
``repr``, ``identity``, logs or error messages (an error body that echoes it is redacted).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from equal._redact import redact_text, redact_url
from equal.errors import ConfigError
from equal.llm.base import Completion, GenerationParams, Message, OnComplete, ResponseFormat

__all__ = ["STRUCTURED_OUTPUT_MODES", "OpenAILLM", "RateLimiter"]

logger = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({408, 429})
#: Wire forms of a structured-output request, strongest first (see the module docstring).
_FORMAT_STYLES = ("json_schema", "json_object")
STRUCTURED_OUTPUT_MODES = {"auto": _FORMAT_STYLES, "json_schema": ("json_schema",),
                           "json_object": ("json_object",), "off": ()}
_CHARS_PER_TOKEN = 4  # rough prompt-size estimate for the tokens-per-minute limiter, corrected by `usage`


class RateLimiter:
    """Token bucket refilled continuously at ``per_minute / 60`` units per second, holding at most
    ``per_minute`` units (so a full minute's allowance may be spent at once, never more).

    Parameters
    ----------
    per_minute : float
        Units (requests or tokens) allowed per minute; must be > 0.

    Notes
    -----
    State is plain numbers guarded by a thread lock, so one limiter keeps its budget across calls of
    :meth:`OpenAILLM.generate`, each of which runs its own event loop. A request larger than the bucket
    waits for a full bucket instead of forever.
    """

    def __init__(self, per_minute: float) -> None:
        if not per_minute > 0:
            raise ConfigError(f"per_minute={per_minute!r} must be > 0.")
        self.capacity = float(per_minute)
        self.rate = float(per_minute) / 60.0
        self._level = self.capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    def try_acquire(self, n: float) -> float:
        """Take ``n`` units if available and return 0, else return the seconds to wait before retrying."""
        n = min(float(n), self.capacity)
        with self._lock:
            self._refill()
            if self._level >= n:
                self._level -= n
                return 0.0
            return (n - self._level) / self.rate

    async def acquire(self, n: float = 1.0) -> None:
        """Wait until ``n`` units are available and take them."""
        while True:
            wait = self.try_acquire(n)
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    def available(self) -> float:
        """Units in the bucket now (negative after a request cost more than estimated)."""
        with self._lock:
            self._refill()
            return self._level

    def adjust(self, delta: float) -> None:
        """Take ``delta`` more units (or give back ``-delta``) once the true cost of a request is known."""
        with self._lock:
            self._refill()
            self._level = max(-self.capacity, min(self.capacity, self._level - delta))


@dataclass
class _CallState:
    """Per-call state shared by the requests of one ``generate``: the global pause after a 429."""

    pause_until: float = 0.0


_redact_url = redact_url  # the one redaction rule, shared with the config and run-directory writers


class _Unusable(Exception):
    """A 200 response without a usable answer; ``reason`` names what was wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _transport_reason(exc: BaseException) -> str:
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect_error"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "protocol_error"
    return "network_error"


def _read_answer(resp: Any) -> tuple[dict[str, Any], dict[str, Any], str]:
    """``(data, choice, text)`` of a 200 response, or :class:`_Unusable` saying why there is no answer."""
    try:
        data = resp.json()
    except ValueError:
        raise _Unusable("malformed_json", f"response is not JSON: {resp.text[:300]!r}") from None
    if not isinstance(data, dict):
        raise _Unusable("malformed_json", f"response is not a JSON object: {resp.text[:300]!r}")
    choices = data.get("choices")
    if data.get("error") is not None and not choices:
        raise _Unusable("error_body", f"error in a 200 response: {str(data['error'])[:300]}")
    if not isinstance(choices, list) or not choices:
        raise _Unusable("empty_choices", f"response has no choices: {resp.text[:300]!r}")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise _Unusable("malformed_json", f"choices[0] has no message: {str(choice)[:300]}")
    content = message.get("content")
    finish = choice.get("finish_reason")
    if content is None:
        raise _Unusable("null_content", f"response has no message content (finish_reason={finish})")
    if not isinstance(content, str):
        raise _Unusable("malformed_json", f"message content is a {type(content).__name__}, not text")
    # An answer of nothing (or only whitespace) is not an answer, whatever else came with it (tool calls,
    # a refusal field): the callers of this client read text only.
    if not content.strip():
        raise _Unusable("empty_content", f"response has empty message content (finish_reason={finish})")
    return data, choice, content


def _n_tokens(tok: Any, text: str) -> int:
    """Tokens of ``text`` (special-token markup in it counts as one token each; none are added)."""
    try:
        ids = tok(text, add_special_tokens=False)["input_ids"]
    except TypeError:  # a tokenizer that is not callable the transformers way
        ids = tok.encode(text)
    return len(ids)


def _estimate_tokens(text: str) -> int:
    """The documented estimate when no tokenizer is known: ``ceil(len(text) / 4)``."""
    return math.ceil(len(text) / _CHARS_PER_TOKEN)


def _split_userinfo(base_url: str) -> tuple[str, tuple[str, str] | None]:
    """``(chat URL without user info, (user, password) or None)``: the secret travels as basic auth only,
    never inside a URL that httpx or a traceback could print."""
    parts = urlsplit(base_url)
    netloc, auth = parts.netloc, None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        auth = (unquote(user), unquote(password))
    path = parts.path.rstrip("/") + "/chat/completions"
    return urlunsplit((parts.scheme, netloc, path, parts.query, "")), auth


class _RedactingFilter(logging.Filter):
    """Masks URL secrets in the records of a logger this package does not own (httpx)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's to report, not ours
            return True
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def _guard_httpx_log() -> None:
    for name in ("httpx", "httpcore"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _RedactingFilter) for f in log.filters):
            log.addFilter(_RedactingFilter())


def _names_response_format(resp: Any) -> bool | None:
    """Whether an error body names ``response_format`` as its parameter (None: it names none).

    Reads the structure only: OpenAI-style ``{"error": {"param": ...}}`` and FastAPI-style
    ``{"detail": [{"loc": [...]}, ...]}``.
    """
    try:
        data = resp.json()
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    err = data.get("error")
    if isinstance(err, dict) and isinstance(err.get("param"), str) and err["param"]:
        return bool(re.match(r"response_format\b", err["param"]))
    detail = data.get("detail")
    if isinstance(detail, list):
        locs = [d["loc"] for d in detail if isinstance(d, dict) and isinstance(d.get("loc"), list)]
        if locs:
            return any("response_format" in loc for loc in locs)
    return None


def _format_payload(style: str, fmt: ResponseFormat) -> dict[str, Any]:
    if style == "json_schema":
        return {"type": "json_schema",
                "json_schema": {"name": fmt.name, "schema": fmt.schema, "strict": fmt.strict}}
    return {"type": "json_object", "schema": fmt.schema}


def parse_retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (delta-seconds or an HTTP date).

    Returns ``None`` when neither header is present or parseable.
    """
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now_dt = datetime.now(timezone.utc) if now is None else datetime.fromtimestamp(now, timezone.utc)
    return max(0.0, (when - now_dt).total_seconds())


class OpenAILLM:
    """Chat model behind an OpenAI-compatible HTTP API.

    Parameters
    ----------
    model : str
        Model name sent in each request (and the cache-key component).
    base_url : str
        API root; requests go to ``base_url + "/chat/completions"`` (so include ``/v1`` where the server
        expects it, e.g. ``http://127.0.0.1:8000/v1``).
    api_key_env : str or tuple of str, default=("EQUAL_API_KEY", "OPENAI_API_KEY")
        Environment variables tried in order for the key; none set means no ``Authorization`` header
        (fine for local servers).
    concurrency : int, default=8
        Most requests in flight at once.
    timeout : float, default=120
        Seconds per attempt (connect, read and write each).
    deadline_s : float, default=600
        Seconds one request may take in all, from its first send to its answer, retries included (a server
        trickling its answer never exceeds ``timeout`` per read, but hits this).
    max_retries : int, default=5
        Retries after the first attempt, for retryable failures only.
    backoff_base, backoff_max : float, default=1.0, 60
        Exponential backoff parameters in seconds (see the module docstring).
    rpm, tpm : float, optional
        Requests- and tokens-per-minute limits (token buckets). Tokens are estimated as
        ``len(prompt chars) / 4 + max_tokens`` before sending and corrected with ``usage`` afterwards.
    extra_body : dict, optional
        Additional JSON fields merged into every request body (e.g. ``{"top_k": 20}`` for vLLM).
    structured_output : {"auto", "json_schema", "json_object", "off"}, default="auto"
        Wire forms tried for ``params.response_format`` (see the module docstring): ``"auto"`` tries
        ``json_schema`` then ``json_object``; ``"off"`` always sends plain requests.
    tokenizer : str, path or object, optional
        Counts tokens when a response has no ``usage``: a transformers tokenizer (an object with
        ``encode``), a folder or hub name for ``AutoTokenizer.from_pretrained``, a ``.gguf`` file (its
        dequantised folder, see :func:`equal.llm.model_dir`), or ``"estimate"`` for ``ceil(chars / 4)``.
        Default: ``model`` itself when it is a local folder or ``.gguf`` file, else the estimate. Loaded
        only when a response lacks ``usage``.

    Notes
    -----
    :meth:`generate` never raises for a failed request (each is logged at INFO; the caller reports them, as
    the extraction loop does with one line of counts by reason): after the retries it returns
    ``Completion(text=None, error="...", extra={"reason": ...})`` carrying the last status or exception.
    Token counts come from the response's ``usage`` (else see ``tokenizer``) and add up every answered
    attempt of the request, since each was paid for; ``seconds`` is the request's latency including
    retries and waits.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key_env: str | Sequence[str] = ("EQUAL_API_KEY", "OPENAI_API_KEY"),
        concurrency: int = 8,
        timeout: float = 120.0,
        deadline_s: float = 600.0,
        max_retries: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        rpm: float | None = None,
        tpm: float | None = None,
        extra_body: dict[str, Any] | None = None,
        structured_output: str = "auto",
        tokenizer: Any = None,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ConfigError(f"model={model!r} must be a non-empty string.")
        if not isinstance(base_url, str) or urlsplit(base_url).scheme not in ("http", "https"):
            raise ConfigError(f"base_url={redact_url(str(base_url))!r} must be an http(s) URL.")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"concurrency={concurrency!r} must be an integer >= 1.")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries={max_retries!r} must be an integer >= 0.")
        if not timeout > 0:
            raise ConfigError(f"timeout={timeout!r} must be > 0 seconds.")
        if isinstance(deadline_s, bool) or not isinstance(deadline_s, (int, float)) or not deadline_s > 0:
            raise ConfigError(f"deadline_s={deadline_s!r} must be > 0 seconds.")
        if backoff_base < 0 or backoff_max < 0:
            raise ConfigError(f"backoff_base={backoff_base!r} and backoff_max={backoff_max!r} must be >= 0.")
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and not value > 0:
                raise ConfigError(f"{name}={value!r} must be > 0 (or None for no limit).")
        if structured_output not in STRUCTURED_OUTPUT_MODES:
            raise ConfigError(f"structured_output={structured_output!r} must be one of "
                              f"{', '.join(STRUCTURED_OUTPUT_MODES)}.")
        envs = (api_key_env,) if isinstance(api_key_env, str) else tuple(api_key_env)
        if not envs or not all(isinstance(e, str) and e for e in envs):
            raise ConfigError(f"api_key_env={api_key_env!r} must name one or more environment variables.")
        self._model = model
        self._base_url = base_url.rstrip("/")
        self._url, self._auth = _split_userinfo(self._base_url)
        if redact_url(self._url) != self._url:
            _guard_httpx_log()  # httpx logs each request's URL, query (and its api_key=) included
        self._api_key_env = envs
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.deadline_s = float(deadline_s)
        self.max_retries = max_retries
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.extra_body = dict(extra_body or {})
        #: Token buckets for requests and tokens per minute (``None`` = unlimited); kept across calls.
        self.rpm_limiter = RateLimiter(rpm) if rpm is not None else None
        self.tpm_limiter = RateLimiter(tpm) if tpm is not None else None
        self._jitter = random.Random()  # jitter only spreads retries; it never affects results
        self._counter_lock = threading.Lock()
        self._in_flight = 0
        self._counters = {"requests": 0, "sent": 0, "retries": 0, "failed": 0, "max_in_flight": 0,
                          "format_fallbacks": 0, "tokens_estimated": 0}
        self._tokenizer_spec = tokenizer
        self._tokenizer: Any = None  # resolved on the first response without usage
        self._tokenizer_lock = threading.Lock()
        self._warned_usage = False
        self.structured_output = structured_output
        self._styles: tuple[str, ...] = (*STRUCTURED_OUTPUT_MODES[structured_output], "none")
        self._style_floor = 0  # index into _styles of the strongest form not refused yet (per instance)

    # -- identity -------------------------------------------------------------------------------------

    @property
    def model(self) -> str:
        return self._model

    @property
    def identity(self) -> dict[str, object]:
        return {"kind": "openai", "model": self._model, "base_url": redact_url(self._base_url)}

    def __repr__(self) -> str:
        return (f"OpenAILLM(model={self._model!r}, base_url={redact_url(self._base_url)!r}, "
                f"concurrency={self.concurrency})")

    def stats(self) -> dict[str, int]:
        """Counters since construction.

        ``requests``: completions asked for; ``sent``: HTTP requests made (attempts, retries included);
        ``retries``; ``failed``: completions returned with an error; ``max_in_flight``: peak concurrency;
        ``format_fallbacks``: requests resent in a weaker structured-output form after a refusal;
        ``tokens_estimated``: answers without ``usage`` whose tokens were counted locally.
        """
        with self._counter_lock:
            return dict(self._counters)

    def _count(self, key: str, n: int = 1) -> None:
        with self._counter_lock:
            self._counters[key] += n

    def _api_key(self) -> str | None:
        for name in self._api_key_env:
            value = os.environ.get(name)
            if value:
                return value
        return None

    def _redact(self, text: str) -> str:
        key = self._api_key()
        if key and key in text:
            text = text.replace(key, "***")
        password = urlsplit(self._base_url).password
        if password and password in text:
            text = text.replace(password, "***")
        return redact_text(text)

    # -- token counting without usage ----------------------------------------------------------------

    def _resolve_tokenizer(self) -> Any:
        """The tokenizer for responses without ``usage``, or None for the chars/4 estimate (cached)."""
        with self._tokenizer_lock:
            if self._tokenizer is not None:
                return self._tokenizer or None
            spec = self._tokenizer_spec
            tok: Any = False  # False: resolved to "estimate"
            if spec is None and os.path.exists(self._model):
                spec = self._model
            if spec is not None and not (isinstance(spec, str) and spec == "estimate"):
                if not isinstance(spec, (str, os.PathLike)) and hasattr(spec, "encode"):
                    tok = spec  # a tokenizer object
                else:
                    try:
                        tok = self._load_tokenizer(spec)
                    except Exception as exc:  # no tokenizer is no reason to fail a run: estimate instead
                        logger.warning("cannot load tokenizer %s (%s); estimating tokens as chars/4", spec, exc)
            self._tokenizer = tok
            return tok or None

    @staticmethod
    def _load_tokenizer(spec: Any) -> Any:
        from transformers import AutoTokenizer

        path = str(spec)
        if path.endswith(".gguf"):
            from equal.llm.local import model_dir

            path = str(model_dir(path))
        return AutoTokenizer.from_pretrained(path)

    def _count_tokens(self, messages: Sequence[Message], text: str) -> tuple[int, int]:
        """``(prompt, completion)`` tokens of an answer whose response had no ``usage``."""
        tok = self._resolve_tokenizer()
        if tok is not None:
            try:
                msgs = [dict(m) for m in messages]
                if getattr(tok, "chat_template", None):
                    # the prompt as the server renders it, template and special tokens included
                    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
                    n_in = _n_tokens(tok, str(prompt))
                else:
                    n_in = sum(_n_tokens(tok, str(m.get("content", ""))) for m in msgs)
                return n_in, _n_tokens(tok, text)
            except Exception as exc:  # a tokenizer that cannot read these messages: estimate them
                logger.debug("tokenizer failed (%s); estimating tokens as chars/4", exc)
        prompt_chars = "".join(str(m.get("content", "")) for m in messages)
        return _estimate_tokens(prompt_chars), _estimate_tokens(text)

    def _warn_no_usage(self) -> None:
        with self._counter_lock:
            if self._warned_usage:
                return
            self._warned_usage = True
        how = "with its tokenizer" if self._resolve_tokenizer() is not None else "as ceil(chars / 4)"
        logger.warning("%s sends no token usage; counting tokens locally %s (budgets and the ledger use "
                       "these counts)", redact_url(self._base_url), how)

    def count_tokens(self, messages: Sequence[Message], text: str = "") -> tuple[int, int]:
        """``(prompt, completion)`` tokens of ``messages`` and ``text``, counted as for an answer without
        ``usage`` (``tokenizer``, else ``ceil(chars / 4)``); ``equal extract --dry-run`` counts prompts with it."""
        return self._count_tokens(messages, text)

    @property
    def token_counting(self) -> str:
        """How :meth:`count_tokens` counts: ``"tokenizer"`` or ``"estimate"`` (``ceil(chars / 4)``)."""
        return "tokenizer" if self._resolve_tokenizer() is not None else "estimate"

    def probe_client(self, *, timeout: float = 60.0) -> OpenAILLM:
        """A copy of this client for a preflight request: no retries, ``timeout`` seconds in all, plain output.

        Same model (hence the same request-cache keys), URL, key variables and ``extra_body``, so a wrong URL
        fails in one connect attempt and a wrong key or model with the server's 4xx; this instance's counters
        and structured-output state are untouched. See :func:`equal.pipeline.dryrun.preflight`.
        """
        return OpenAILLM(self._model, base_url=self._base_url, api_key_env=self._api_key_env, max_retries=0,
                         timeout=min(self.timeout, timeout), deadline_s=min(self.deadline_s, timeout),
                         extra_body=self.extra_body, structured_output="off", tokenizer="estimate")

    # -- requests -------------------------------------------------------------------------------------

    @property
    def response_format_style(self) -> str:
        """The structured-output form this instance sends now: ``json_schema``, ``json_object`` or ``none``."""
        with self._counter_lock:
            return self._styles[self._style_floor]

    def _lower_floor(self, index: int) -> None:
        with self._counter_lock:
            if index > self._style_floor:
                logger.warning("server refused response_format %r; sending %r from now on",
                               self._styles[self._style_floor], self._styles[index])
                self._style_floor = index

    def _restore_floor(self, index: int) -> None:
        with self._counter_lock:
            if index < self._style_floor:
                logger.info("response_format %r was not the problem; sending it again", self._styles[index])
                self._style_floor = index

    def _body(
        self, messages: Sequence[Message], params: GenerationParams, style: str = "none"
    ) -> dict[str, Any]:
        # A fresh body per request: the caller's messages are copied, never modified (rule 14).
        body: dict[str, Any] = dict(self.extra_body)
        body.update({
            "model": self._model,
            "messages": [dict(m) for m in messages],
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        })
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if params.response_format is not None and style != "none":
            body["response_format"] = _format_payload(style, params.response_format)
        return body

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max)
        d = min(self.backoff_max, self.backoff_base * (2.0 ** attempt))
        return d / 2.0 + self._jitter.uniform(0.0, d / 2.0)

    async def _one(
        self, client: Any, sem: asyncio.Semaphore, state: _CallState,
        messages: Sequence[Message], params: GenerationParams,
    ) -> Completion:
        import httpx

        fmt = params.response_format
        with self._counter_lock:
            style_i = self._style_floor if fmt is not None else len(self._styles) - 1
        # After an ambiguous error the next form is tried at once and, provisionally, by every request
        # (so a batch does not pay one refusal per request); if even the plain request fails with a 4xx,
        # the error was not about the format and the old floor is restored.
        probe_from: int | None = None
        body = self._body(messages, params, self._styles[style_i])
        estimate = sum(len(str(m.get("content", ""))) for m in body["messages"]) // _CHARS_PER_TOKEN
        estimate += params.max_tokens
        t0 = time.perf_counter()
        deadline: float | None = None  # set at the first send: time queued behind others does not count
        paid = [0, 0]  # tokens of answered attempts that were unusable: paid for all the same
        attempt = 0
        self._count("requests")
        while True:
            pause = state.pause_until - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            if self.rpm_limiter is not None:
                await self.rpm_limiter.acquire(1)
            if self.tpm_limiter is not None:
                await self.tpm_limiter.acquire(estimate)
            headers = {"Content-Type": "application/json"}
            key = self._api_key()
            if key:
                headers["Authorization"] = f"Bearer {key}"
            status: int | None = None
            retry_after: float | None = None
            reason = "error"
            async with sem:
                if fmt is not None and probe_from is None:
                    # Another request may have learnt of a refusal while this one waited for a slot.
                    with self._counter_lock:
                        floor = self._style_floor
                    if floor > style_i:
                        style_i = floor
                        body = self._body(messages, params, self._styles[style_i])
                if deadline is None:
                    deadline = time.monotonic() + self.deadline_s
                with self._counter_lock:
                    self._in_flight += 1
                    self._counters["sent"] += 1
                    self._counters["max_in_flight"] = max(self._counters["max_in_flight"], self._in_flight)
                try:
                    left = deadline - time.monotonic()
                    resp = await asyncio.wait_for(client.post(self._url, json=body, headers=headers),
                                                  timeout=max(left, 0.001))
                    status = resp.status_code
                except asyncio.TimeoutError:
                    self._count("failed")
                    error = f"no answer within the deadline of {self.deadline_s:g} s"
                    logger.info("request failed: %s", error)
                    return self._failed(error, t0, attempt, None, "deadline", paid)
                except httpx.TransportError as exc:  # connect/read/write errors, timeouts, resets
                    error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    reason = _transport_reason(exc)
                except httpx.RequestError as exc:  # undecodable body, redirect loop: retrying cannot help
                    self._count("failed")
                    return self._failed(f"{type(exc).__name__}: {exc}", t0, attempt, None, "request_error", paid)
                finally:
                    with self._counter_lock:
                        self._in_flight -= 1
            if status is not None:
                if 200 <= status < 300:
                    try:
                        done = self._parse(resp, messages, t0, attempt, estimate, paid)
                    except _Unusable as bad:
                        # Answered but unusable: retried like a transport error, never cached as done.
                        error, reason = str(bad), bad.reason
                    else:
                        if fmt is not None:
                            done.extra["response_format"] = self._styles[style_i]
                        return done
                else:
                    error = f"HTTP {status}: {resp.text[:500]}"
                    reason = f"http_{status}"
                    retry_after = parse_retry_after(resp.headers)
                    if self.tpm_limiter is not None:
                        self.tpm_limiter.adjust(-estimate)  # a rejected request used no tokens
                    refused = self._refused(status, resp) if style_i < len(self._styles) - 1 else False
                    if refused is not False:
                        if refused is None and probe_from is None:
                            probe_from = style_i
                        self._lower_floor(style_i + 1)
                        style_i += 1
                        body = self._body(messages, params, self._styles[style_i])
                        self._count("format_fallbacks")
                        continue
                    if not (status in _RETRY_STATUS or status >= 500):
                        if probe_from is not None:
                            self._restore_floor(probe_from)
                        self._count("failed")
                        logger.info("request failed, not retried: HTTP %d", status)
                        return self._failed(error, t0, attempt, status, reason, paid)
            elif self.tpm_limiter is not None:
                self.tpm_limiter.adjust(-estimate)
            if attempt >= self.max_retries:
                self._count("failed")
                logger.info("request failed after %d attempts: %s", attempt + 1, self._redact(error)[:200])
                return self._failed(error, t0, attempt, status, reason, paid)
            delay = self._backoff(attempt, retry_after)
            if time.monotonic() + delay >= deadline:
                self._count("failed")
                error = f"{error} (deadline of {self.deadline_s:g} s reached before the next attempt)"
                logger.info("request failed: %s", self._redact(error)[:200])
                return self._failed(error, t0, attempt, status, "deadline", paid)
            if retry_after is not None:
                # The server asked everyone to wait, not just this request.
                state.pause_until = max(state.pause_until, time.monotonic() + delay)
            logger.info("retrying in %.2f s (attempt %d of %d): %s", delay, attempt + 2,
                        self.max_retries + 1, self._redact(error)[:200])
            self._count("retries")
            attempt += 1
            await asyncio.sleep(delay)

    @staticmethod
    def _refused(status: int, resp: Any) -> bool | None:
        """Whether an error answers the structured-output form: True sure, None maybe (probe), False no."""
        if status in _RETRY_STATUS or status in (401, 403):  # rate limits and auth are never about the format
            return False
        named = _names_response_format(resp)
        if status < 500:
            return True if named else (None if named is None else False)
        if named:
            return True
        # llama-cpp-python's server answers an unknown format with a 500 whose message is the only clue.
        return None if named is None and re.search(r"response_format|json_schema", resp.text) else False

    def _failed(self, error: str, t0: float, attempt: int, status: int | None, reason: str = "error",
                paid: Sequence[int] = (0, 0)) -> Completion:
        suffix = f" (after {attempt + 1} attempts)" if attempt else ""
        return Completion(
            text=None, error=self._redact(error) + suffix, tokens_in=int(paid[0]), tokens_out=int(paid[1]),
            seconds=time.perf_counter() - t0,
            extra={"attempts": attempt + 1, "status": status, "reason": reason},
        )

    def _parse(self, resp: Any, messages: Sequence[Message], t0: float, attempt: int, estimate: int,
               paid: list[int]) -> Completion:
        """The completion of a 2xx response; raises :class:`_Unusable` when it holds no answer.

        Tokens of an unusable answer are added to ``paid`` (the request's running total) before raising.
        """
        try:
            data, choice, content = _read_answer(resp)
        except _Unusable:
            try:
                usage = resp.json().get("usage") or {}
                paid[0] += int(usage.get("prompt_tokens") or 0)
                paid[1] += int(usage.get("completion_tokens") or 0)
            except (ValueError, AttributeError, TypeError):
                pass
            raise
        usage = data.get("usage")
        extra: dict[str, object] = {"attempts": attempt + 1, "served_model": data.get("model")}
        if isinstance(usage, dict) and (usage.get("prompt_tokens") or usage.get("completion_tokens")):
            tokens_in = int(usage.get("prompt_tokens") or 0)
            tokens_out = int(usage.get("completion_tokens") or 0)
        else:
            self._warn_no_usage()
            tokens_in, tokens_out = self._count_tokens(messages, content)
            extra["tokens_estimated"] = True
            self._count("tokens_estimated")
        if self.tpm_limiter is not None:
            self.tpm_limiter.adjust(tokens_in + tokens_out - estimate)
        return Completion(
            text=content, tokens_in=tokens_in + paid[0], tokens_out=tokens_out + paid[1],
            seconds=time.perf_counter() - t0, finish_reason=choice.get("finish_reason"), extra=extra,
        )

    async def agenerate(
        self,
        requests: Sequence[Sequence[Message]],
        params: GenerationParams,
        *,
        on_complete: OnComplete | None = None,
    ) -> list[Completion]:
        """Async version of :meth:`generate`, for callers that already run an event loop."""
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - httpx comes with the llm extra
            raise ImportError("OpenAILLM needs httpx: pip install 'equal[llm]'") from exc

        results: list[Completion | None] = [None] * len(requests)
        if not requests:
            return []
        sem = asyncio.Semaphore(self.concurrency)
        state = _CallState()
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        auth = httpx.BasicAuth(*self._auth) if self._auth is not None else None
        async with httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), limits=limits, auth=auth) as client:

            async def run(i: int, messages: Sequence[Message]) -> None:
                c = await self._one(client, sem, state, messages, params)
                results[i] = c
                if on_complete is not None:
                    on_complete(i, c)

            await asyncio.gather(*(run(i, m) for i, m in enumerate(requests)))
        return [c for c in results if c is not None]

    def generate(
        self,
        requests: Sequence[Sequence[Message]],
        params: GenerationParams,
        *,
        on_complete: OnComplete | None = None,
    ) -> list[Completion]:
        """Send every request (``concurrency`` at a time) and return one completion per request, in order.

        ``on_complete(index, completion)`` is called as each one finishes. Works from any thread; inside a
        running event loop (e.g. Jupyter) the requests run on a private loop in a worker thread.
        """
        coro = self.agenerate(requests, params, on_complete=on_complete)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, coro).result()
