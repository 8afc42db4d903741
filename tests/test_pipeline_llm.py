"""`equal extract` with the openai backend against a real llama.cpp server: resume and kill -9 pay no request twice.

The server's own access log counts the chat requests that reached it, independently of our counters.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from equal.config import ExtractConfig
from equal.pipeline.extract import run_extract
from test_llm_server import KEY, LlamaServer, server  # the same real llama.cpp server fixture

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
__all__ = ["server"]  # re-exported fixture: pytest starts one server for this module


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [json.loads(line) for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines()]
    picked = [r for r in rows if r["source"] == "champ"][:12] + [r for r in rows if r["source"] == "python-faq"][:12]
    path = tmp_path_factory.mktemp("c") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": r["id"], "text": r["text"][:1200]}) + "\n" for r in picked))
    return path


ARGS = dict(extractor="llm", llm="openai", model="smollm2", budget_docs=8, clusters=4, clusters_per_round=2,
            docs_per_cluster=2, max_tokens=96, seed=3, concurrency=1)


def _config(corpus: Path, server: LlamaServer) -> ExtractConfig:
    return ExtractConfig.from_flat(corpus=str(corpus), target=str(EXAMPLES / "target.jsonl"),
                                   base_url=server.url, **ARGS)


def test_resume_pays_no_request_twice(server: LlamaServer, corpus: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EQUAL_API_KEY", KEY)
    cfg = _config(corpus, server)
    before, posts = server.chat_answered(), server.chat_posts()
    whole = run_extract(cfg, tmp_path / "whole")
    paid = server.chat_answered() - before
    # + the preflight request (pipeline/dryrun.py): cached in the run, left out of the ledger
    assert paid == whole.llm_requests + 1 and whole.llm_requests == 8 and whole.tokens_out > 0
    # structured output: llama.cpp's server refuses json_schema once per process, then gets json_object
    assert server.chat_posts() - posts - paid <= 1

    before = server.chat_answered()
    run_extract(cfg, tmp_path / "parts", max_rounds=1)
    resumed = run_extract(cfg, tmp_path / "parts")
    assert server.chat_answered() - before == paid
    assert resumed.pairs == whole.pairs and resumed.llm_requests == whole.llm_requests
    assert (tmp_path / "whole" / "qa.jsonl").read_bytes() == (tmp_path / "parts" / "qa.jsonl").read_bytes()

    before = server.chat_posts()
    again = run_extract(cfg, tmp_path / "parts")  # finished: nothing is sent
    assert server.chat_posts() == before and again.pairs == whole.pairs
    # the key never reaches the run directory
    for path in (tmp_path / "parts").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_kill_9_mid_round_then_resume(server: LlamaServer, corpus: Path, tmp_path: Path) -> None:
    env = {**os.environ, "EQUAL_API_KEY": KEY}
    args = [sys.executable, "-m", "equal.cli", "extract", "--corpus", str(corpus), "--target",
            str(EXAMPLES / "target.jsonl"), "--llm", "openai", "--base-url", server.url, "--model", "smollm2",
            "--budget-docs", "8", "--clusters", "4", "--clusters-per-round", "2", "--docs-per-cluster", "2",
            "--max-tokens", "96", "--seed", "3", "--concurrency", "1", "--json"]
    before = server.chat_answered()
    ref = subprocess.run([*args, "--out", str(tmp_path / "ref")], env=env, capture_output=True, text=True,
                         timeout=600)
    assert ref.returncode == 0, ref.stderr
    paid = server.chat_answered() - before

    victim = tmp_path / "victim"
    before = server.chat_answered()
    proc = subprocess.Popen([*args, "--out", str(victim)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    cache = victim / "llm_cache.sqlite"
    deadline = time.monotonic() + 300
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:  # kill in the middle of the second round: some of its answers stored, the round not committed
            done = sqlite3.connect(cache, timeout=1).execute("select count(*) from completions").fetchone()[0]
        except sqlite3.Error:
            done = 0
        if done >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = subprocess.run([*args, "--out", str(victim)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    # every stored answer is reused; only a request in flight at the kill (concurrency 1: at most one) repeats
    assert paid <= server.chat_answered() - before <= paid + 1
    a, b = json.loads(ref.stdout), json.loads(out.stdout)
    assert (a["pairs"], a["documents_read"], a["llm_requests"]) == (b["pairs"], b["documents_read"], b["llm_requests"])
    assert (tmp_path / "ref" / "qa.jsonl").read_bytes() == (victim / "qa.jsonl").read_bytes()
