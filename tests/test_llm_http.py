"""OpenAILLM against a scripted stdlib HTTP server on 127.0.0.1: retries, backoff, limits, key hygiene.

The server speaks just enough of ``/v1/chat/completions`` (an echo model) and can be told to answer the next
requests with given statuses and headers, so each retry rule is checked against real HTTP traffic.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from equal.llm import CachedLLM, GenerationParams, Ledger, OpenAILLM, RateLimiter, get_llm
from equal.llm.remote import parse_retry_after

SECRET = "sk-test-THIS-IS-A-SECRET-0123456789"


class Scripted(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        # Answers for the next requests; a callable header value is evaluated when answering.
        self.script: list[tuple[int, dict[str, Any], str]] = []
        self.log: list[dict[str, Any]] = []  # every request: body, headers, arrival time
        self.delay = 0.0
        self.hold = threading.Event()  # requests whose content is "hold" wait for it
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    server: Scripted

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(n))
        srv = self.server
        with srv.lock:
            srv.log.append({"body": body, "auth": self.headers.get("Authorization"), "t": time.monotonic()})
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
            scripted = srv.script.pop(0) if srv.script else None
        time.sleep(srv.delay)
        if body["messages"][-1]["content"] == "hold":
            srv.hold.wait(20)
        if scripted is None:
            content = "echo: " + body["messages"][-1]["content"]
            status, headers = 200, {}
            payload = json.dumps({
                "id": "x", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(body["messages"]), "completion_tokens": len(content.split()),
                          "total_tokens": 0},
            })
        else:
            status, headers, payload = scripted
        with srv.lock:
            srv.in_flight -= 1  # before answering, so the count never exceeds the client's
        data = payload.encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v() if callable(v) else v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server() -> Iterator[Scripted]:
    srv = Scripted()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.hold.set()
    srv.shutdown()
    srv.server_close()


def _req(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


P = GenerationParams(max_tokens=8)


def test_echo_usage_and_order(server: Scripted) -> None:
    llm = OpenAILLM("echo-model", base_url=server.url, concurrency=4)
    reqs = [_req(f"q{i}") for i in range(6)]
    out = llm.generate(reqs, P)
    assert [c.text for c in out] == [f"echo: q{i}" for i in range(6)]
    assert all(c.ok and c.tokens_in == 1 and c.tokens_out == 2 and c.finish_reason == "stop" for c in out)
    body = server.log[0]["body"]
    assert body["model"] == "echo-model" and body["max_tokens"] == 8 and body["seed"] == 0
    assert llm.stats()["sent"] == 6 and llm.stats()["failed"] == 0
    assert reqs[0] == _req("q0")  # caller's payload untouched


def test_concurrency_limit_seen_by_server(server: Scripted) -> None:
    server.delay = 0.15
    llm = OpenAILLM("m", base_url=server.url, concurrency=3)
    out = llm.generate([_req(str(i)) for i in range(9)], P)
    assert all(c.ok for c in out)
    assert server.max_in_flight == 3
    assert llm.stats()["max_in_flight"] == 3


def test_429_retry_after_seconds_is_honoured(server: Scripted) -> None:
    server.script = [(429, {"Retry-After": "1"}, '{"error": "slow down"}')]
    llm = OpenAILLM("m", base_url=server.url, backoff_base=0.01, max_retries=3)
    t0 = time.monotonic()
    (c,) = llm.generate([_req("a")], P)
    assert c.ok and c.text == "echo: a" and c.extra["attempts"] == 2
    gap = server.log[1]["t"] - server.log[0]["t"]
    assert 1.0 <= gap < 2.5, gap  # the 10 ms backoff alone would retry at once
    assert time.monotonic() - t0 >= 1.0


def test_429_retry_after_http_date_is_honoured(server: Scripted) -> None:
    def in_two_seconds() -> str:  # whole seconds, so the client waits between 1 and 2 s
        return email.utils.formatdate(time.time() + 2, usegmt=True)

    server.script = [(429, {"Retry-After": in_two_seconds}, "{}")]
    llm = OpenAILLM("m", base_url=server.url, backoff_base=0.01, max_retries=3)
    (c,) = llm.generate([_req("a")], P)
    assert c.ok
    assert server.log[1]["t"] - server.log[0]["t"] >= 0.9


def test_parse_retry_after() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 7, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=now) == pytest.approx(7.0)
    assert parse_retry_after({"retry-after": email.utils.formatdate(now - 5, usegmt=True)}, now=now) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_500_then_success_is_retried(server: Scripted) -> None:
    server.script = [(500, {}, '{"error": "boom"}'), (503, {}, "unavailable")]
    llm = OpenAILLM("m", base_url=server.url, backoff_base=0.02, max_retries=3)
    (c,) = llm.generate([_req("a")], P)
    assert c.ok and c.extra["attempts"] == 3
    assert len(server.log) == 3 and llm.stats()["retries"] == 2


def test_persistent_5xx_fails_after_bounded_retries(server: Scripted) -> None:
    server.script = [(502, {}, "bad gateway")] * 5
    llm = OpenAILLM("m", base_url=server.url, backoff_base=0.01, max_retries=2)
    (c,) = llm.generate([_req("a")], P)
    assert c.text is None and not c.ok
    assert "HTTP 502" in (c.error or "") and "after 3 attempts" in (c.error or "")
    assert len(server.log) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_not_retried(server: Scripted, status: int) -> None:
    server.script = [(status, {}, '{"error": {"message": "bad request"}}')]
    llm = OpenAILLM("m", base_url=server.url, backoff_base=0.01, max_retries=5)
    (c,) = llm.generate([_req("a")], P)
    assert c.text is None and f"HTTP {status}" in (c.error or "") and "bad request" in (c.error or "")
    assert len(server.log) == 1 and llm.stats()["retries"] == 0


def test_408_is_retried(server: Scripted) -> None:
    server.script = [(408, {}, "timeout")]
    llm = OpenAILLM("m", base_url=server.url, backoff_base=0.01)
    (c,) = llm.generate([_req("a")], P)
    assert c.ok and len(server.log) == 2


def test_read_timeout_is_retried_then_fails(server: Scripted) -> None:
    server.delay = 0.6
    llm = OpenAILLM("m", base_url=server.url, timeout=0.15, backoff_base=0.01, max_retries=1)
    (c,) = llm.generate([_req("a")], P)
    assert c.text is None and "Timeout" in (c.error or "") and "after 2 attempts" in (c.error or "")
    assert len(server.log) == 2


def test_connection_refused_is_retried_then_fails() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    llm = OpenAILLM("m", base_url=f"http://127.0.0.1:{port}/v1", backoff_base=0.01, max_retries=2)
    out = llm.generate([_req("a"), _req("b")], P)
    assert all(c.text is None and "ConnectError" in (c.error or "") for c in out)
    assert llm.stats()["sent"] == 6 and llm.stats()["failed"] == 2


def test_malformed_200_is_a_failure_not_an_empty_answer(server: Scripted) -> None:
    bad = [(200, {}, "not json"), (200, {}, '{"choices": [{"message": {"content": null}}]}'),
           (200, {}, '{"choices": []}'), (200, {}, '{"error": {"message": "overloaded"}}'),
           (200, {}, '{"choices": [{"message": {"content": "  "}, "finish_reason": "stop"}]}')]
    server.script = list(bad)
    llm = OpenAILLM("m", base_url=server.url, max_retries=0, concurrency=1)
    out = [llm.generate([_req(q)], P)[0] for q in "abcde"]  # one by one: the script order is fixed
    assert [c.text for c in out] == [None] * 5
    assert [c.extra["reason"] for c in out] == ["malformed_json", "null_content", "empty_choices", "error_body",
                                                "empty_content"]
    assert "not JSON" in (out[0].error or "") and "no message content" in (out[1].error or "")
    assert len(server.log) == 5 and llm.stats()["failed"] == 5
    # Retried like a transport error: each unusable 200 is followed by a real answer.
    llm = OpenAILLM("m", base_url=server.url, max_retries=1, backoff_base=0.01, concurrency=1)
    again = []
    for q, answer in zip("abcde", bad, strict=True):
        server.script = [answer]
        again.append(llm.generate([_req(q)], P)[0])
    assert [c.text for c in again] == [f"echo: {q}" for q in "abcde"]
    assert all(c.extra["attempts"] == 2 for c in again) and llm.stats()["retries"] == 5


def test_api_key_never_leaks(
    server: Scripted, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    monkeypatch.setenv("EQUAL_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    # A server that echoes the key back in its error, as some APIs do, then fails for good.
    server.script = [(401, {}, json.dumps({"error": f"Incorrect API key provided: {SECRET}"})),
                     (500, {}, f"internal error for key {SECRET}"), (500, {}, f"again {SECRET}")]
    llm = get_llm("openai", model="m", base_url=server.url, backoff_base=0.01, max_retries=1, concurrency=1)
    cached = CachedLLM(llm, tmp_path / "cache.sqlite")
    out = [cached.generate([_req(q)], P)[0] for q in "abc"]  # one by one: the script order is fixed
    assert server.log[0]["auth"] == f"Bearer {SECRET}"  # the key was used...
    assert [c.ok for c in out] == [False, False, True]
    assert "***" in (out[0].error or "")
    ledger = Ledger.for_llm(cached)
    ledger.add(out)
    cached.close()
    haystacks = {
        "errors": " ".join(c.error or "" for c in out),
        "logs": caplog.text,
        "repr": repr(llm) + repr(cached),
        "identity": json.dumps(llm.identity),
        "ledger": json.dumps(ledger.to_dict()),
        "state": repr(vars(llm)),
    }
    for name, text in haystacks.items():
        assert SECRET not in text, name
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # database, WAL and shm files
    assert SECRET.encode() not in raw
    assert b"Incorrect API key provided" in raw  # ...the error itself was stored, redacted


def test_rpm_limiter_spaces_requests(server: Scripted) -> None:
    llm = OpenAILLM("m", base_url=server.url, rpm=600, concurrency=8)  # 10 per second
    limiter = llm.rpm_limiter
    assert limiter is not None
    assert limiter.try_acquire(limiter.capacity) == 0.0  # spend the burst allowance
    t0 = time.monotonic()
    out = llm.generate([_req(str(i)) for i in range(5)], P)
    assert all(c.ok for c in out)
    elapsed = time.monotonic() - t0
    assert 0.45 <= elapsed < 2.0, elapsed
    # The bucket was empty at t0, so the k-th request can leave no earlier than t0 + k / 10 s.
    times = sorted(r["t"] for r in server.log)
    for k, t in enumerate(times, start=1):
        assert t - t0 >= k / 10 - 0.01, (k, t - t0)


def test_tpm_limiter_is_corrected_by_usage(server: Scripted) -> None:
    llm = OpenAILLM("m", base_url=server.url, tpm=60_000)
    limiter = llm.tpm_limiter
    assert limiter is not None
    out = llm.generate([_req("x")] * 3, GenerationParams(max_tokens=5000))
    assert all(c.ok for c in out)
    # Estimated 3 x 5000 tokens before sending; the server reported 3 x 4 used, which is what stays spent.
    assert limiter.available() >= limiter.capacity - 3 * 4 - 1e-6


def test_rate_limiter_waits_for_refill() -> None:
    import asyncio

    limiter = RateLimiter(per_minute=1200)  # 20 per second
    limiter.try_acquire(1200)
    t0 = time.monotonic()
    asyncio.run(limiter.acquire(10))
    assert 0.45 <= time.monotonic() - t0 < 1.5
    assert limiter.try_acquire(limiter.capacity * 10) > 0  # oversize requests wait for a full bucket
    with pytest.raises(ValueError, match="per_minute"):
        RateLimiter(0)


def test_generate_from_running_loop_and_thread(server: Scripted) -> None:
    import asyncio

    llm = OpenAILLM("m", base_url=server.url)

    async def inside_loop() -> list[str | None]:
        return [c.text for c in llm.generate([_req("loop")], P)]

    assert asyncio.run(inside_loop()) == ["echo: loop"]
    box: list[str | None] = []
    t = threading.Thread(target=lambda: box.extend(c.text for c in llm.generate([_req("thread")], P)))
    t.start()
    t.join()
    assert box == ["echo: thread"]


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="concurrency=0"):
        OpenAILLM("m", base_url="http://x/v1", concurrency=0)
    with pytest.raises(ValueError, match="base_url"):
        OpenAILLM("m", base_url="ftp://x")
    with pytest.raises(ValueError, match="max_retries=-1"):
        OpenAILLM("m", base_url="http://x/v1", max_retries=-1)
    with pytest.raises(ValueError, match="model=None"):
        get_llm("openai", base_url="http://x/v1")
    with pytest.raises(ValueError, match="kind='nope'"):
        get_llm("nope")
    llm = OpenAILLM("m", base_url="http://user:pw@host:8000/v1?key=abc")
    assert "pw" not in repr(llm) and "abc" not in json.dumps(llm.identity)


# -- CachedLLM over real HTTP ----------------------------------------------------------------------------


def test_cache_hits_are_not_resent(server: Scripted, tmp_path: Any) -> None:
    llm = OpenAILLM("m", base_url=server.url)
    reqs = [_req("a"), _req("b"), _req("a")]  # a duplicate inside one call is sent once
    with CachedLLM(llm, tmp_path / "c.sqlite") as cached:
        first = cached.generate(reqs, P)
        assert [c.text for c in first] == ["echo: a", "echo: b", "echo: a"]
        assert [c.cached for c in first] == [False, False, True]
        assert len(server.log) == 2
        assert cached.stats() == {"hits": 1, "misses": 3, "sent": 2, "failed": 0, "stored_ok": 2,
                                  "stored_error": 0}
    # A new process-like instance on the same file: everything is a hit, nothing reaches the server.
    with CachedLLM(OpenAILLM("m", base_url=server.url), tmp_path / "c.sqlite") as again:
        second = again.generate(reqs, P)
        assert [c.text for c in second] == [c.text for c in first]
        assert all(c.cached for c in second)
        assert [c.tokens_out for c in second] == [c.tokens_out for c in first]
        assert len(server.log) == 2 and again.stats()["sent"] == 0 and again.stats()["hits"] == 3
        # Any change of model, params or seed is a different request.
        again.generate([_req("a")], GenerationParams(max_tokens=8, seed=1))
        assert len(server.log) == 3
    ledger = Ledger()
    ledger.add(first)
    ledger.add(second)
    assert (ledger.requests, ledger.cached, ledger.sent, ledger.tokens_out) == (6, 4, 2, 4)


def test_cache_records_failures_and_retries_them(server: Scripted, tmp_path: Any) -> None:
    server.script = [(400, {}, '{"error": "context too long"}')]
    llm = OpenAILLM("m", base_url=server.url, concurrency=1)
    with CachedLLM(llm, tmp_path / "c.sqlite") as cached:
        (bad,) = cached.generate([_req("a")], P)
        assert bad.text is None and "context too long" in (bad.error or "")
        assert cached.stats()["stored_error"] == 1 and cached.stats()["failed"] == 1
        (good,) = cached.generate([_req("a")], P)  # failures were never paid for: sent again
        assert good.ok and not good.cached and len(server.log) == 2
        assert cached.stats()["stored_error"] == 0 and cached.stats()["stored_ok"] == 1
        (hit,) = cached.generate([_req("a")], P)
        assert hit.cached and len(server.log) == 2
    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        status, attempts, error = db.execute("SELECT status, attempts, error FROM completions").fetchone()
    assert (status, attempts, error) == ("ok", 2, None)


class _PlainBackend:
    """A backend without ``on_complete`` (as third-party ones may be): answers are stored at the end."""

    def __init__(self, inner: OpenAILLM) -> None:
        self.inner = inner

    @property
    def model(self) -> str:
        return self.inner.model

    def generate(self, requests: Any, params: GenerationParams) -> list[Any]:
        return self.inner.generate(requests, params)


def test_cache_works_with_backends_without_callback(server: Scripted, tmp_path: Any) -> None:
    backend = _PlainBackend(OpenAILLM("m", base_url=server.url))
    seen: list[int] = []
    with CachedLLM(backend, tmp_path / "c.sqlite") as cached:
        out = cached.generate([_req("x"), _req("y")], P, on_complete=lambda i, c: seen.append(i))
        assert [c.text for c in out] == ["echo: x", "echo: y"] and sorted(seen) == [0, 1]
        assert cached.generate([_req("y")], P)[0].cached


_CHILD = """
import sys
from equal.llm import CachedLLM, GenerationParams, OpenAILLM
llm = CachedLLM(OpenAILLM("m", base_url=sys.argv[1], concurrency=8), sys.argv[2])
reqs = [[{"role": "user", "content": q}] for q in ["a", "b", "c", "hold"]]
llm.generate(reqs, GenerationParams(max_tokens=8))
print("finished", flush=True)
"""


def test_kill_9_mid_batch_keeps_finished_answers(server: Scripted, tmp_path: Any) -> None:
    path = tmp_path / "c.sqlite"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, server.url, str(path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 30
        done = 0
        while time.monotonic() < deadline and child.poll() is None:
            if path.exists():
                with sqlite3.connect(path, timeout=5) as db:
                    try:
                        done = db.execute("SELECT COUNT(*) FROM completions WHERE status='ok'").fetchone()[0]
                    except sqlite3.OperationalError:  # table not created yet
                        done = 0
                if done == 3:
                    break
            time.sleep(0.05)
        assert done == 3, child.communicate(timeout=5) if child.poll() is not None else done
        os.kill(child.pid, signal.SIGKILL)  # "hold" is still in flight
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    server.hold.set()
    with CachedLLM(OpenAILLM("m", base_url=server.url), path) as cached:
        out = cached.generate([_req(q) for q in ["a", "b", "c", "hold"]], P)
        assert [c.cached for c in out] == [True, True, True, False]
        assert cached.stats()["sent"] == 1 and out[3].text == "echo: hold"
