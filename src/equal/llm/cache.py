"""Request cache for any :class:`~equal.llm.base.LLM`: no successful request is ever paid for twice.

Cache key (STYLE rule 13)
-------------------------
``sha256`` of the canonical JSON (sorted keys, no whitespace, UTF-8, NaN refused) of::

    {"v": 1, "model": llm.model,
     "messages": [{"role": ..., "content": ...}, ...],     # every key of every message, in order
     "params": {"max_tokens", "temperature", "top_p", "seed", "stop"}}   # all GenerationParams fields

``params`` also holds ``"response_format": {"name", "schema", "strict"}`` when a
:class:`~equal.llm.base.ResponseFormat` is set, and ``"sample": n`` when ``GenerationParams.sample`` is
non-zero (the n-th draw of one prompt, for pass@k); with neither the key is exactly the recipe above, so
every key written before these fields existed stays valid.

Float parameters are written as floats (``temperature=0`` and ``0.0`` give one key) and ``stop`` as a list.
The endpoint (``identity``: URL, port) is stored with each row but is not part of the key, so the same model
served elsewhere still hits the cache. ``v`` changes only if this recipe changes.

Failures
--------
A failed request is recorded too (``status='error'`` with its error, attempt count and time), for audit, but
a later call sends it again: it was never answered, so retrying costs nothing that was already paid for, and
most failures (timeouts, rate limits, a server that was down) are transient. A later success replaces the
error row; a success is never overwritten.

Only a real answer is a success: a completion whose text is empty or blank (spaces, tabs, newlines) is stored
as an error row (reason ``empty_content``) whatever the backend said, so it is asked again on the next run,
and a row with blank text that an earlier version stored as ``ok`` is treated as a miss (and replaced by the
next answer). The completion handed back to the caller is the backend's own (:class:`~equal.llm.OpenAILLM`
already reports a blank answer as a failure; an in-process model's deterministic empty answer is left to
the caller).

Durability
----------
SQLite in WAL mode, one transaction per completion, committed the moment the backend reports it (backends of
:mod:`equal.llm` call ``on_complete`` per request), so killing the process mid-batch loses only unfinished
requests. One connection guarded by a lock makes an instance safe to use from several threads of a process;
several processes may share a file (WAL, 30 s busy timeout). Two concurrent calls that both miss on the same
new request both send it; the first answer stored is kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import os
import threading
import time
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

from equal.data.sqlite import connect_wal
from equal.llm.base import LLM, Completion, GenerationParams, Message, OnComplete

__all__ = ["CachedLLM", "LLMProgress", "cache_key", "canonical_request"]

logger = logging.getLogger(__name__)

_KEY_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    key           TEXT PRIMARY KEY,
    model         TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    text          TEXT,
    error         TEXT,
    tokens_in     INTEGER NOT NULL DEFAULT 0,
    tokens_out    INTEGER NOT NULL DEFAULT 0,
    seconds       REAL NOT NULL DEFAULT 0,
    finish_reason TEXT,
    extra         TEXT,
    identity      TEXT,
    request       TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 1,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
)
"""
_UPSERT = """
INSERT INTO completions (key, model, status, text, error, tokens_in, tokens_out, seconds, finish_reason,
                         extra, identity, request, attempts, created_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)
ON CONFLICT (key) DO UPDATE SET
    status = excluded.status, text = excluded.text, error = excluded.error,
    tokens_in = excluded.tokens_in, tokens_out = excluded.tokens_out, seconds = excluded.seconds,
    finish_reason = excluded.finish_reason, extra = excluded.extra, identity = excluded.identity,
    attempts = completions.attempts + 1, updated_at = excluded.updated_at
WHERE completions.status = 'error' OR TRIM(COALESCE(completions.text, ''), char(32, 9, 10, 13)) = ''
"""
_BLANK = " \t\n\r"  # what counts as blank text, the same in Python and in the SQL above
_FLOAT_FIELDS = frozenset(
    name for name, hint in typing.get_type_hints(GenerationParams).items() if hint is float
)


def canonical_request(model: str, messages: Sequence[Message], params: GenerationParams) -> str:
    """The canonical JSON string hashed by :func:`cache_key` (see the module docstring)."""
    p = dataclasses.asdict(params)
    for name in _FLOAT_FIELDS:
        p[name] = float(p[name])
    p["stop"] = list(p["stop"])
    # Structured output enters the key only when asked for, so every key without it is unchanged.
    del p["response_format"]
    fmt = params.response_format
    if fmt is not None:
        p["response_format"] = {"name": fmt.name, "schema": fmt.schema, "strict": fmt.strict}
    # Likewise the sample index: draw 0 keeps the old key, draws 1..n-1 get keys of their own.
    del p["sample"]
    if params.sample:
        p["sample"] = params.sample
    payload = {"v": _KEY_VERSION, "model": model, "messages": [dict(m) for m in messages], "params": p}
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def cache_key(model: str, messages: Sequence[Message], params: GenerationParams) -> str:
    """sha256 hex digest of :func:`canonical_request` encoded as UTF-8."""
    return hashlib.sha256(canonical_request(model, messages, params).encode("utf-8")).hexdigest()


def _accepts_on_complete(llm: object) -> bool:
    try:
        sig = inspect.signature(llm.generate)  # type: ignore[attr-defined]
    except (TypeError, ValueError, AttributeError):
        return False
    return "on_complete" in sig.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()
    )


@dataclasses.dataclass(frozen=True)
class LLMProgress:
    """Where one :meth:`CachedLLM.generate` call stands, handed to ``CachedLLM.on_progress`` per answer.

    Attributes
    ----------
    done : int
        Requests of the call answered so far (cache hits and failures included).
    total : int
        Requests in the call.
    cached : int
        Of ``done``, answered from the cache.
    tokens_out : int
        Tokens generated for the fresh answers of the call so far.
    seconds : float
        Since the call began.
    """

    done: int
    total: int
    cached: int
    tokens_out: int
    seconds: float


class CachedLLM:
    """Wrap an :class:`~equal.llm.base.LLM` with a persistent SQLite request cache.

    Parameters
    ----------
    llm : LLM
        The backend answering cache misses.
    cache_path : str or Path
        SQLite file (created with its parent folder if missing), e.g. ``RUN/llm_cache.sqlite``.

    Notes
    -----
    A cached success comes back with ``cached=True`` and its original token counts and seconds (a
    :class:`~equal.llm.Ledger` does not count them again). Identical requests within one call are sent
    once; the copies of a success come back with ``cached=True``. See the module docstring for the key
    and for why failures are retried.

    ``on_progress``, when set (by the display layer), is called with an :class:`LLMProgress` after every
    answer of a :meth:`generate` call, once the answer is stored.
    """

    on_progress: Callable[[LLMProgress], None] | None = None

    def __init__(self, llm: LLM, cache_path: str | os.PathLike[str]) -> None:
        if not hasattr(llm, "generate") or not hasattr(llm, "model"):
            raise TypeError(f"llm={llm!r} must implement the equal.llm.LLM protocol (model, generate).")
        self.llm = llm
        self.path = Path(cache_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = connect_wal(self.path, timeout=30.0)
        self._conn.execute(_SCHEMA)
        self._identity = json.dumps(getattr(llm, "identity", {"model": llm.model}), sort_keys=True,
                                    default=str)
        self._stats = {"hits": 0, "misses": 0, "sent": 0, "failed": 0}

    @property
    def model(self) -> str:
        return self.llm.model

    @property
    def identity(self) -> object:
        return getattr(self.llm, "identity", {"model": self.llm.model})

    def __repr__(self) -> str:
        return f"CachedLLM({self.llm!r}, cache_path={str(self.path)!r})"

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> CachedLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, int]:
        """Counters since construction plus the rows on disk.

        ``hits``: requests answered from the cache (including in-call duplicates); ``misses``: requests
        not found; ``sent``: distinct requests forwarded to the backend; ``failed``: of those, how many
        failed; ``stored_ok`` / ``stored_error``: rows in the file now.
        """
        with self._lock:
            rows = dict(self._conn.execute("SELECT status, COUNT(*) FROM completions GROUP BY status"))
            stored = {"stored_ok": int(rows.get("ok", 0)), "stored_error": int(rows.get("error", 0))}
            return {**self._stats, **stored}

    def _lookup(self, keys: list[str]) -> dict[str, Completion]:
        found: dict[str, Completion] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for row in self._conn.execute(
                    "SELECT key, text, tokens_in, tokens_out, seconds, finish_reason, extra FROM completions "
                    f"WHERE status = 'ok' AND key IN ({marks})", chunk,
                ):
                    key, text, t_in, t_out, secs, finish, extra = row
                    if not (text or "").strip(_BLANK):
                        continue  # stored as a success by an older version: not an answer, ask again
                    found[key] = Completion(
                        text=text, tokens_in=int(t_in), tokens_out=int(t_out), seconds=float(secs),
                        cached=True, finish_reason=finish, extra=json.loads(extra) if extra else {},
                    )
        return found

    def _store(self, key: str, request: str, c: Completion) -> None:
        now = time.time()
        ok = c.ok and bool((c.text or "").strip(_BLANK))
        error = None if ok else (c.error or ("empty answer" if c.ok else "no text returned"))
        info = dict(c.extra)
        if not ok:
            info.setdefault("reason", "empty_content" if c.ok else "error")
        extra = json.dumps(info, sort_keys=True, default=str) if info else None
        with self._lock:
            self._conn.execute(_UPSERT, (
                key, self.llm.model, "ok" if ok else "error", c.text if ok else None,
                error, int(c.tokens_in), int(c.tokens_out),
                float(c.seconds), c.finish_reason, extra, self._identity, request, now, now,
            ))

    def generate(
        self,
        requests: Sequence[Sequence[Message]],
        params: GenerationParams,
        *,
        on_complete: OnComplete | None = None,
    ) -> list[Completion]:
        """Answer from the cache where possible, send the rest, store every result as it arrives.

        ``on_complete(index, completion)`` is called for each request once its result is stored (cache
        hits first).
        """
        model = self.llm.model
        on_complete = self._observed(len(requests), on_complete)
        canon = [canonical_request(model, msgs, params) for msgs in requests]
        keys = [hashlib.sha256(c.encode("utf-8")).hexdigest() for c in canon]
        results: list[Completion | None] = [None] * len(requests)
        hits = self._lookup(sorted(set(keys)))
        pending: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            if key in hits:
                results[i] = hits[key]
                with self._lock:
                    self._stats["hits"] += 1
                if on_complete is not None:
                    on_complete(i, hits[key])
            else:
                pending.setdefault(key, []).append(i)
        if not pending:
            return [c for c in results if c is not None]
        send_keys = list(pending)
        first = [pending[k][0] for k in send_keys]
        with self._lock:
            self._stats["misses"] += sum(len(v) for v in pending.values())
            self._stats["sent"] += len(send_keys)
        done: set[int] = set()

        def finish(j: int, c: Completion) -> None:
            if j in done:
                return
            key = send_keys[j]
            self._store(key, canon[pending[key][0]], c)
            done.add(j)
            with self._lock:
                if c.ok:
                    self._stats["hits"] += len(pending[key]) - 1
                else:
                    self._stats["failed"] += 1
            for n, i in enumerate(pending[key]):
                # Copies of a request in the same call share its answer; only a success counts as cached.
                results[i] = c if n == 0 or not c.ok else dataclasses.replace(c, cached=True)
                if on_complete is not None:
                    on_complete(i, results[i])  # type: ignore[arg-type]

        batch = [requests[i] for i in first]
        if _accepts_on_complete(self.llm):
            out = self.llm.generate(batch, params, on_complete=finish)  # type: ignore[call-arg]
        else:
            out = self.llm.generate(batch, params)
        if len(out) != len(batch):
            raise RuntimeError(f"{self.llm!r} returned {len(out)} completions for {len(batch)} requests.")
        for j, c in enumerate(out):
            finish(j, c)  # no-op for those already stored through on_complete
        return [c for c in results if c is not None]

    def _observed(self, total: int, on_complete: OnComplete | None) -> OnComplete | None:
        """``on_complete`` plus the ``on_progress`` report (counting each request once)."""
        listener = self.on_progress
        if listener is None:
            return on_complete
        t0 = time.perf_counter()
        seen: set[int] = set()
        counts = {"cached": 0, "tokens": 0}

        def report(i: int, c: Completion) -> None:
            if on_complete is not None:
                on_complete(i, c)
            if i in seen:
                return
            seen.add(i)
            if c.cached:
                counts["cached"] += 1
            elif c.ok:
                counts["tokens"] += int(c.tokens_out)
            listener(LLMProgress(len(seen), total, counts["cached"], counts["tokens"], time.perf_counter() - t0))

        listener(LLMProgress(0, total, 0, 0, 0.0))
        return report
