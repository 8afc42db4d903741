"""A fault-injecting, request-counting reverse proxy for OpenAI-compatible servers (testing utility).

:class:`FaultProxy` listens on 127.0.0.1 and forwards every request to a real upstream server (e.g. llama.cpp's
``llama_cpp.server``). It counts what it sees, per request-body hash, so a test can tell "sent twice" from
"paid twice", and it answers chosen requests with a :class:`Fault` instead of (or on top of) the upstream's
answer::

    from equal.testing import Fault, FaultProxy

    with FaultProxy(server.url, faults=[Fault.status(503), None, Fault.empty_content()]) as proxy:
        llm = OpenAILLM("m", base_url=proxy.url)
        ...
        assert proxy.requests == 4 and not proxy.duplicates()

Which faults reach the upstream
-------------------------------
A fault that models a server *refusing* a request never forwards it, so nothing is paid: ``status``,
``hang``, ``reset``, ``error_body``, ``dead``. A fault that models a server *answering badly* forwards the
request (the upstream computes the answer, which a hosted API would bill) and then spoils the answer:
``trickle``, ``malformed_json``, ``truncated_body``, ``empty_choices``, ``empty_content``, ``null_content``,
``no_usage``. :attr:`FaultProxy.paid` counts upstream 200 answers per body hash and :meth:`~FaultProxy.duplicates`
lists the bodies paid for more than once.

Only the standard library is used (``http.server``, ``http.client``), and nothing else in :mod:`equal`
imports this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

__all__ = ["FAULT_KINDS", "Fault", "FaultProxy", "FaultSchedule", "body_hash"]

logger = logging.getLogger(__name__)

#: Every fault kind, in the order the fault suite reports them.
FAULT_KINDS = ("status", "hang", "trickle", "malformed_json", "truncated_body", "reset", "empty_choices",
               "empty_content", "null_content", "error_body", "no_usage", "dead")
_FORWARDED = frozenset({"trickle", "malformed_json", "truncated_body", "empty_choices", "empty_content",
                        "null_content", "no_usage"})
_HOP_HEADERS = frozenset({"host", "connection", "content-length", "transfer-encoding", "keep-alive",
                          "proxy-connection", "te", "trailer", "upgrade", "accept-encoding"})


@dataclass(frozen=True)
class Fault:
    """One injected fault; build it with the class methods (``Fault.status(503)``, ``Fault.hang(5)``, ...).

    Attributes
    ----------
    kind : str
        One of :data:`FAULT_KINDS`.
    code : int, optional
        HTTP status for ``kind="status"``.
    retry_after : float, optional
        ``Retry-After`` header (seconds) sent with a ``status`` fault.
    seconds : float
        How long ``hang`` keeps the connection open without answering (then it is closed).
    rate : float
        Bytes per second for ``trickle``.
    """

    kind: str
    code: int | None = None
    retry_after: float | None = None
    seconds: float = 0.0
    rate: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"kind={self.kind!r} must be one of {', '.join(FAULT_KINDS)}.")
        if self.kind == "status" and (self.code is None or not 100 <= self.code <= 599):
            raise ValueError(f"code={self.code!r} must be an HTTP status (100-599) for a status fault.")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError(f"retry_after={self.retry_after!r} must be >= 0.")
        if self.kind == "hang" and not self.seconds > 0:
            raise ValueError(f"seconds={self.seconds!r} must be > 0 for a hang fault.")
        if self.kind == "trickle" and not self.rate > 0:
            raise ValueError(f"rate={self.rate!r} must be > 0 bytes/s for a trickle fault.")

    @classmethod
    def status(cls, code: int, retry_after: float | None = None) -> Fault:
        """Answer HTTP ``code`` (e.g. 500, 503, 429, 401) without forwarding; optional ``Retry-After``."""
        return cls("status", code=code, retry_after=retry_after)

    @classmethod
    def hang(cls, seconds: float) -> Fault:
        """Accept the request, answer nothing for ``seconds``, then close the connection."""
        return cls("hang", seconds=seconds)

    @classmethod
    def trickle(cls, bytes_per_s: float) -> Fault:
        """Forward, then send the real answer's body at ``bytes_per_s``."""
        return cls("trickle", rate=bytes_per_s)

    @classmethod
    def malformed_json(cls) -> Fault:
        """Forward, then answer 200 with a body that is not JSON."""
        return cls("malformed_json")

    @classmethod
    def truncated_body(cls) -> Fault:
        """Forward, then send half the real body under the full ``Content-Length`` and close."""
        return cls("truncated_body")

    @classmethod
    def reset(cls) -> Fault:
        """Close the connection with a TCP reset without answering or forwarding."""
        return cls("reset")

    @classmethod
    def empty_choices(cls) -> Fault:
        """Forward, then answer 200 with ``"choices": []``."""
        return cls("empty_choices")

    @classmethod
    def empty_content(cls) -> Fault:
        """Forward, then answer 200 with ``"content": ""``."""
        return cls("empty_content")

    @classmethod
    def null_content(cls) -> Fault:
        """Forward, then answer 200 with ``"content": null``."""
        return cls("null_content")

    @classmethod
    def error_body(cls) -> Fault:
        """Answer 200 with ``{"error": {...}}`` and no choices, without forwarding."""
        return cls("error_body")

    @classmethod
    def no_usage(cls) -> Fault:
        """Forward, then pass the real answer on without its ``usage`` (a success otherwise)."""
        return cls("no_usage")

    @classmethod
    def dead(cls) -> Fault:
        """The server dies: this and every later request (and answers still in flight) are reset until
        :meth:`FaultProxy.revive`."""
        return cls("dead")

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """From text: ``"status:503"``, ``"status:429:2"`` (Retry-After 2 s), ``"hang:5"``, ``"trickle:1"``,
        or a bare kind such as ``"empty_content"``."""
        kind, *args = spec.strip().split(":")
        try:
            if kind == "status":
                return cls.status(int(args[0]), float(args[1]) if len(args) > 1 else None)
            if kind == "hang":
                return cls.hang(float(args[0]))
            if kind == "trickle":
                return cls.trickle(float(args[0]))
        except (IndexError, ValueError) as exc:
            raise ValueError(f"fault spec {spec!r}: {exc}") from exc
        if args:
            raise ValueError(f"fault spec {spec!r}: kind {kind!r} takes no arguments.")
        return cls(kind)

    def __str__(self) -> str:
        if self.kind == "status":
            return f"status:{self.code}" + (f":{self.retry_after:g}" if self.retry_after is not None else "")
        if self.kind == "hang":
            return f"hang:{self.seconds:g}"
        if self.kind == "trickle":
            return f"trickle:{self.rate:g}"
        return self.kind


FaultSchedule = Callable[[int, dict[str, Any]], "Fault | None"]
"""``schedule(n, body)`` → the fault for the ``n``-th POST (0-based) with JSON ``body``, or None."""


def body_hash(body: Any) -> str:
    """sha256 of a request body as canonical JSON (sorted keys), so key order does not matter; raw bytes
    that are not JSON are hashed as they are."""
    if isinstance(body, (bytes, bytearray)):
        try:
            body = json.loads(body)
        except ValueError:
            return hashlib.sha256(bytes(body)).hexdigest()
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    proxy: FaultProxy


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: a fault never leaks into the next request

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("proxy %s: " + format, self.address_string(), *args)

    def finish(self) -> None:
        # The socket may have been reset on purpose, or the client went away.
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        self.server.proxy._handle(self, None)

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        self.server.proxy._handle(self, self.rfile.read(n))


class FaultProxy:
    """Reverse proxy on 127.0.0.1 that counts requests and injects :class:`Fault` s.

    Parameters
    ----------
    upstream_url : str
        The real server's API root, e.g. ``http://127.0.0.1:8000/v1``; its path is kept, so
        :attr:`url` is ``http://127.0.0.1:PORT/v1`` and a client needs only its ``base_url`` changed.
    faults : callable or sequence, optional
        ``faults(n, body) -> Fault | None`` for the ``n``-th POST (0-based, counted from construction or
        :meth:`reset_counts`), or a sequence whose ``n``-th item is used (None or past the end: no fault).
        May be replaced at any time through the :attr:`faults` attribute.
    port : int, default=0
        Port to listen on (0: a free one).
    upstream_timeout : float, default=600
        Seconds the proxy waits for the upstream.
    upstream_headers : dict, optional
        Headers set on every forwarded request, replacing the client's (e.g. the upstream's own
        ``Authorization`` when the client authenticates to the proxy with basic auth, as behind a gateway).

    Attributes
    ----------
    requests : int
        POSTs received.
    counts : collections.Counter
        POSTs received per :func:`body_hash`.
    paid : collections.Counter
        Upstream 200 answers per body hash: what a hosted API would bill.
    delivered : collections.Counter
        Intact, unspoilt 200 answers handed to the client, per body hash (``no_usage`` counts as intact).
    faults_injected : collections.Counter
        Faults injected, by kind.
    log : list of dict
        One record per POST: ``n``, ``sha``, ``fault`` (its text or None), ``upstream`` (status or None),
        ``t`` (monotonic arrival time).
    max_in_flight : int
        Most POSTs open at once.
    authorization : collections.Counter
        ``Authorization`` header values the clients sent (None when absent), per POST.
    """

    def __init__(
        self,
        upstream_url: str,
        faults: FaultSchedule | Sequence[Fault | None] | None = None,
        *,
        port: int = 0,
        upstream_timeout: float = 600.0,
        upstream_headers: dict[str, str] | None = None,
    ) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream_url={upstream_url!r} must be an http:// URL with a host.")
        self._up_host = parts.hostname
        self._up_port = parts.port or 80
        self._prefix = parts.path.rstrip("/")
        self.faults = faults
        self.upstream_timeout = float(upstream_timeout)
        self.upstream_headers = dict(upstream_headers or {})
        self._port = int(port)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._dead = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.reset_counts()

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Start serving in a daemon thread (idempotent); returns ``self``."""
        if self._server is not None:
            return self
        self._stop.clear()
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.proxy = self
        self._server = server
        self._port = int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"FaultProxy:{self._port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and wake every hanging or trickling answer (they are dropped)."""
        self._stop.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The proxied API root (``http://127.0.0.1:PORT`` + the upstream's path)."""
        if self._server is None:
            raise RuntimeError("FaultProxy is not started; call start() or use it as a context manager.")
        return f"http://127.0.0.1:{self._port}{self._prefix}"

    def kill(self) -> None:
        """Server death: every request from now on, and every answer still in flight, is reset."""
        with self._lock:
            self._dead = True

    def revive(self) -> None:
        """Undo :meth:`kill` (or a ``dead`` fault)."""
        with self._lock:
            self._dead = False

    @property
    def is_dead(self) -> bool:
        with self._lock:
            return self._dead

    # -- counters -------------------------------------------------------------------------------------

    def reset_counts(self) -> None:
        """Zero every counter and the log; the schedule's ``n`` restarts at 0."""
        with getattr(self, "_lock", threading.Lock()):
            self.requests = 0
            self.counts: Counter[str] = Counter()
            self.paid: Counter[str] = Counter()
            self.delivered: Counter[str] = Counter()
            self.faults_injected: Counter[str] = Counter()
            self.log: list[dict[str, Any]] = []
            self.authorization: Counter[str | None] = Counter()
            self.in_flight = 0
            self.max_in_flight = 0

    @property
    def answered(self) -> int:
        """Upstream 200 answers in all (the sum of :attr:`paid`)."""
        with self._lock:
            return sum(self.paid.values())

    def duplicates(self) -> dict[str, int]:
        """Body hashes the upstream answered (was paid for) more than once, with their counts."""
        with self._lock:
            return {sha: n for sha, n in self.paid.items() if n > 1}

    def snapshot(self) -> dict[str, Any]:
        """The counters as a JSON-ready dict."""
        with self._lock:
            return {"requests": self.requests, "distinct": len(self.counts),
                    "answered": sum(self.paid.values()), "delivered": sum(self.delivered.values()),
                    "duplicates": sum(n - 1 for n in self.paid.values() if n > 1),
                    "faults": dict(self.faults_injected), "max_in_flight": self.max_in_flight}

    # -- serving --------------------------------------------------------------------------------------

    def _fault_for(self, n: int, body: Any) -> Fault | None:
        faults = self.faults
        if faults is None:
            return None
        if callable(faults):
            fault = faults(n, body if isinstance(body, dict) else {})
        else:
            fault = faults[n] if n < len(faults) else None
        if fault is not None and not isinstance(fault, Fault):
            raise TypeError(f"fault schedule returned {fault!r}, not a Fault or None.")
        return fault

    def _handle(self, h: _Handler, raw: bytes | None) -> None:
        h.close_connection = True
        if raw is None:  # GET (e.g. /v1/models): passed through, not counted
            if self.is_dead:
                _reset(h)
                return
            self._forward_and_send(h, "GET", None)
            return
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        sha = body_hash(body) if body is not None else hashlib.sha256(raw).hexdigest()
        with self._lock:
            n = self.requests
            self.requests += 1
            self.counts[sha] += 1
            self.authorization[h.headers.get("Authorization")] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            record: dict[str, Any] = {"n": n, "sha": sha, "fault": None, "upstream": None, "t": time.monotonic()}
            self.log.append(record)
        try:
            try:
                fault = self._fault_for(n, body)
            except Exception:
                logger.exception("fault schedule raised for request %d", n)
                fault = None
            if fault is not None:
                record["fault"] = str(fault)
                with self._lock:
                    self.faults_injected[fault.kind] += 1
                    if fault.kind == "dead":
                        self._dead = True
            if self.is_dead:
                _reset(h)
                return
            if fault is not None and fault.kind not in _FORWARDED:
                self._refuse(h, fault)
                return
            self._forward_and_send(h, "POST", raw, sha=sha, record=record, fault=fault)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _refuse(self, h: _Handler, fault: Fault) -> None:
        if fault.kind == "reset":
            _reset(h)
        elif fault.kind == "hang":
            self._stop.wait(fault.seconds)
            _reset(h)
        elif fault.kind == "status":
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            text = http.client.responses.get(fault.code or 0, "error")
            payload = {"error": {"message": f"injected HTTP {fault.code} ({text})", "type": "injected"}}
            _send(h, int(fault.code or 500), json.dumps(payload).encode(), headers)
        elif fault.kind == "error_body":
            payload = {"error": {"message": "injected error body", "type": "server_error", "code": 500}}
            _send(h, 200, json.dumps(payload).encode(), {})

    def _forward_and_send(
        self, h: _Handler, method: str, raw: bytes | None, *, sha: str | None = None,
        record: dict[str, Any] | None = None, fault: Fault | None = None,
    ) -> None:
        override = {k.lower() for k in self.upstream_headers}
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP_HEADERS | override}
        headers.update(self.upstream_headers)
        conn = http.client.HTTPConnection(self._up_host, self._up_port, timeout=self.upstream_timeout)
        try:
            conn.request(method, h.path, body=raw, headers=headers)
            resp = conn.getresponse()
            status, data = resp.status, resp.read()
            resp_headers = {k.lower(): v for k, v in resp.getheaders() if k.lower() not in _HOP_HEADERS}
        except OSError as exc:  # upstream down: the client sees a 502, like behind a real gateway
            logger.debug("upstream %s:%d failed: %s", self._up_host, self._up_port, exc)
            _send(h, 502, json.dumps({"error": {"message": f"upstream unreachable: {exc}"}}).encode(), {})
            return
        finally:
            conn.close()
        if record is not None:
            record["upstream"] = status
            if status == 200 and sha is not None:
                with self._lock:
                    self.paid[sha] += 1
        if self.is_dead:  # died while the upstream was computing: the answer never leaves
            _reset(h)
            return
        if fault is None or status != 200:
            _send(h, status, data, resp_headers)
            if status == 200 and sha is not None:
                with self._lock:
                    self.delivered[sha] += 1
            return
        kind = fault.kind
        if kind == "malformed_json":
            _send(h, 200, b'{"id": "x", "choices": [{"message": {"content": "unterminated', resp_headers)
        elif kind == "truncated_body":
            _send(h, 200, data, resp_headers, cut=max(1, len(data) // 2))
        elif kind == "trickle":
            if _send(h, 200, data, resp_headers, rate=fault.rate, stop=self._stop) and sha is not None:
                with self._lock:
                    self.delivered[sha] += 1
        else:
            try:
                payload = json.loads(data)
            except ValueError:
                payload = None
            if not isinstance(payload, dict):
                _send(h, status, data, resp_headers)
                return
            if kind == "no_usage":
                payload.pop("usage", None)
            elif kind == "empty_choices":
                payload["choices"] = []
            elif kind in ("empty_content", "null_content"):
                for choice in payload.get("choices") or []:
                    if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
                        choice["message"]["content"] = "" if kind == "empty_content" else None
            _send(h, 200, json.dumps(payload).encode(), resp_headers)
            if kind == "no_usage" and sha is not None:
                with self._lock:
                    self.delivered[sha] += 1


def _reset(h: _Handler) -> None:
    """Close the client's connection with a TCP RST (SO_LINGER 0), without a response."""
    try:
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()
    except OSError:
        pass


def _send(
    h: _Handler, status: int, data: bytes, headers: dict[str, str], *, cut: int | None = None,
    rate: float | None = None, stop: threading.Event | None = None,
) -> bool:
    """Write a response; ``cut`` sends only that many body bytes, ``rate`` trickles the body.

    Returns whether the whole body was sent.
    """
    try:
        h.send_response(status)
        for k, v in headers.items():
            if k.lower() not in ("content-type", "date", "server"):
                h.send_header(k, v)
        h.send_header("Content-Type", headers.get("content-type", "application/json"))
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if cut is not None:
            h.wfile.write(data[:cut])
            h.wfile.flush()
            _reset(h)
            return False
        if rate is not None:
            step = max(1, int(rate * 0.05))
            for start in range(0, len(data), step):
                h.wfile.write(data[start:start + step])
                h.wfile.flush()
                if stop is not None and stop.wait(step / rate):
                    _reset(h)
                    return False
            return True
        h.wfile.write(data)
        return True
    except OSError:  # the client gave up (deadline, reset): nothing more to send
        return False
