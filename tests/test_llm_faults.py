"""Endpoint faults through :class:`equal.testing.FaultProxy` in front of the real llama.cpp server.

Each fault the proxy injects (HTTP statuses, hangs, trickles, malformed, truncated or empty answers, resets,
missing ``usage``, server death) is checked for its outcome: retried and recovered, or a failure that is
counted by reason and never cached as done, so the next run asks again and nothing is paid twice.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from equal.config import ExtractConfig
from equal.llm import CachedLLM, GenerationParams, Ledger, OpenAILLM, bundled_gguf_path
from equal.pipeline.extract import run_extract
from equal.testing import Fault, FaultProxy, body_hash
from test_llm_server import KEY, LlamaServer, server  # the suite's one real server fixture

__all__ = ["server"]  # re-exported fixture: pytest starts one server for this module

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
P = GenerationParams(max_tokens=8)
SECRET = "S3cr3t-PASSWORD-q8z"


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EQUAL_API_KEY", KEY)


def _req(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _llm(proxy: FaultProxy, **kw: Any) -> OpenAILLM:
    kw = {"max_retries": 2, "backoff_base": 0.01, "concurrency": 2, **kw}
    return OpenAILLM("smollm2", base_url=proxy.url, **kw)


def test_5xx_is_retried_then_ok(server: LlamaServer) -> None:
    with FaultProxy(server.url, faults=[Fault.status(500), Fault.status(503)]) as proxy:
        (c,) = _llm(proxy).generate([_req("five hundred")], P)
    assert c.ok and c.text and c.extra["attempts"] == 3
    assert proxy.requests == 3 and proxy.answered == 1 and not proxy.duplicates()


def test_429_retry_after_is_honoured(server: LlamaServer) -> None:
    with FaultProxy(server.url, faults=[Fault.status(429, retry_after=1)]) as proxy:
        (c,) = _llm(proxy).generate([_req("slow down")], P)
    assert c.ok and c.extra["attempts"] == 2
    gap = proxy.log[1]["t"] - proxy.log[0]["t"]
    assert 1.0 <= gap < 2.5, gap  # the 10 ms backoff alone would retry at once


def test_401_is_not_retried(server: LlamaServer) -> None:
    with FaultProxy(server.url, faults=lambda n, body: Fault.status(401)) as proxy:
        llm = _llm(proxy, max_retries=5)
        (c,) = llm.generate([_req("who am i")], GenerationParams(max_tokens=8))
    assert not c.ok and c.extra["reason"] == "http_401" and "\n" not in (c.error or "")
    assert proxy.requests == 1 and llm.stats()["retries"] == 0


@pytest.mark.parametrize("fault", [Fault.hang(30), Fault.trickle(1)], ids=str)
def test_hang_and_trickle_hit_the_deadline(server: LlamaServer, fault: Fault) -> None:
    # A 30 s per-read timeout never fires on a trickle; the 1.5 s deadline does, and on a hang too.
    with FaultProxy(server.url, faults=lambda n, body: fault) as proxy:
        llm = _llm(proxy, timeout=30, deadline_s=1.5)
        t0 = time.monotonic()
        (c,) = llm.generate([_req(f"deadline {fault}")], P)
        took = time.monotonic() - t0
    assert not c.ok and c.extra["reason"] == "deadline" and "deadline of 1.5 s" in (c.error or "")
    assert 1.4 <= took < 4.0, took
    assert proxy.requests == 1


SPOILED = {  # fault -> the reason a persistent one is recorded under
    "malformed_json": {"malformed_json"}, "truncated_body": {"protocol_error", "network_error"},
    "reset": {"protocol_error", "network_error"}, "empty_choices": {"empty_choices"},
    "empty_content": {"empty_content"}, "null_content": {"null_content"}, "error_body": {"error_body"},
}


def test_spoiled_answers_are_retried(server: LlamaServer) -> None:
    kinds = list(SPOILED)
    prompts = {f"spoiled {k}": k for k in kinds}
    proxy = FaultProxy(server.url)

    def first_attempt_only(n: int, body: dict[str, Any]) -> Fault | None:
        kind = prompts[body["messages"][-1]["content"]]
        return Fault(kind) if proxy.counts[body_hash(body)] == 1 else None

    proxy.faults = first_attempt_only
    with proxy:
        out = _llm(proxy).generate([_req(p) for p in prompts], P)
    assert all(c.ok and c.text for c in out), [c.error for c in out]
    assert [c.extra["attempts"] for c in out] == [2] * len(kinds)
    assert proxy.requests == 2 * len(kinds) and sum(proxy.delivered.values()) == len(kinds)


def test_persistent_spoiled_answers_are_counted_failures_never_cached(server: LlamaServer, tmp_path: Path) -> None:
    prompts = {f"always {k}": k for k in SPOILED}
    faults = lambda n, body: Fault(prompts[body["messages"][-1]["content"]])  # noqa: E731
    reqs = [_req(p) for p in prompts]
    with FaultProxy(server.url, faults=faults) as proxy, CachedLLM(_llm(proxy, max_retries=1),
                                                                   tmp_path / "c.sqlite") as cached:
        out = cached.generate(reqs, P)
        stats = cached.stats()
        ledger = Ledger()
        ledger.add(out)
    assert not any(c.ok for c in out) and (stats["stored_ok"], stats["stored_error"]) == (0, len(prompts))
    for c, kind in zip(out, prompts.values(), strict=True):
        assert c.text is None and c.extra["reason"] in SPOILED[kind], (kind, c.error)
        assert c.extra["attempts"] == 2
    assert ledger.failed == len(prompts) and sum(ledger.failures.values()) == len(prompts)
    assert ledger.failures["empty_content"] == 1 and ledger.failures["error_body"] == 1
    # The next run asks again (nothing was stored as done) and gets real answers.
    with FaultProxy(server.url) as clean, CachedLLM(_llm(clean), tmp_path / "c.sqlite") as cached:
        again = cached.generate(reqs, P)
        assert cached.stats()["sent"] == len(prompts) and cached.stats()["stored_error"] == 0
    assert all(c.ok and c.text and not c.cached for c in again) and clean.requests == len(prompts)


def test_old_cache_rows_with_empty_text_are_misses(server: LlamaServer, tmp_path: Path) -> None:
    """A row an older version stored as a success with empty text is asked again and replaced."""
    reqs = [_req("stored empty by an old version"), _req("stored fine")]
    with FaultProxy(server.url) as proxy, CachedLLM(_llm(proxy), tmp_path / "c.sqlite") as cached:
        first = cached.generate(reqs, P)
        cached._conn.execute("UPDATE completions SET text = '' WHERE text = ?", (first[0].text,))
        again = cached.generate(reqs, P)
        assert proxy.requests == 3  # only the emptied one was sent again
        assert again[0].ok and not again[0].cached and again[0].text == first[0].text and again[1].cached
        assert cached.generate(reqs, P)[0].cached  # and the real answer replaced the empty row
    assert proxy.requests == 3


def test_missing_usage_is_counted_with_the_tokenizer(server: LlamaServer, caplog: pytest.LogCaptureFixture) -> None:
    reqs = [_req("count my tokens please"), _req("and mine, a little longer than that")]
    direct = OpenAILLM("smollm2", base_url=server.url).generate(reqs, P)  # the server's own usage
    caplog.set_level(logging.WARNING, logger="equal.llm.remote")
    with FaultProxy(server.url, faults=lambda n, body: Fault.no_usage()) as proxy:
        llm = _llm(proxy, tokenizer=str(bundled_gguf_path()))
        out = llm.generate(reqs, P) + llm.generate(reqs[:1], P)
        rough = _llm(proxy, tokenizer="estimate").generate(reqs[:1], P)[0]
    assert all(c.ok and c.extra.get("tokens_estimated") for c in out)
    for c, ref in zip(out, direct, strict=False):
        assert c.text == ref.text  # greedy: the same answer
        assert abs(c.tokens_in - ref.tokens_in) <= 3, (c.tokens_in, ref.tokens_in)
        assert abs(c.tokens_out - ref.tokens_out) <= 1, (c.tokens_out, ref.tokens_out)
    assert rough.tokens_in == math.ceil(len(reqs[0][0]["content"]) / 4)
    assert rough.tokens_out == math.ceil(len(rough.text or "") / 4)
    warnings = [r for r in caplog.records if "sends no token usage" in r.getMessage()]
    assert len(warnings) == 2  # once per client, not once per request
    ledger = Ledger()
    ledger.add(out)
    assert ledger.tokens_estimated == 3 and ledger.tokens_in == sum(c.tokens_in for c in out) > 0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [json.loads(line) for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines()]
    picked = [r for r in rows if r["source"] == "champ"][:8] + [r for r in rows if r["source"] == "python-faq"][:8]
    path = tmp_path_factory.mktemp("c") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": r["id"], "text": r["text"][:600]}) + "\n" for r in picked))
    return path


ARGS = dict(extractor="llm", llm="openai", model="smollm2", clusters=4, clusters_per_round=2, docs_per_cluster=1,
            max_tokens=24, seed=3, concurrency=2)


def test_token_budget_holds_without_usage(server: LlamaServer, corpus: Path, tmp_path: Path) -> None:
    with FaultProxy(server.url, faults=lambda n, body: Fault.no_usage()) as proxy:
        cfg = ExtractConfig.from_flat(corpus=str(corpus), target=str(EXAMPLES / "target.jsonl"),
                                      base_url=proxy.url, budget_tokens=500, **ARGS)
        s = run_extract(cfg, tmp_path / "run")
    rounds = [json.loads(line) for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    per_round = [b["tokens_in"] + b["tokens_out"] - a["tokens_in"] - a["tokens_out"]
                 for a, b in zip([{"tokens_in": 0, "tokens_out": 0}, *rounds], rounds, strict=False)]
    # Without counting, every one of the 16 documents would be read (the 40 of 40).
    assert s.documents_read < 16 and s.tokens_estimated and s.tokens_in > 0
    assert sum(per_round[:-1]) < 500 <= s.tokens_in + s.tokens_out  # stopped by the first round past it
    ledger = json.loads((tmp_path / "run" / "ledger.json").read_text())
    assert ledger["tokens_estimated"] == ledger["requests"] - ledger["cached"] > 0


def test_server_death_mid_batch_then_rerun_pays_only_in_flight_twice(server: LlamaServer, tmp_path: Path) -> None:
    reqs = [_req(f"death {i}") for i in range(6)]
    with FaultProxy(server.url, faults=lambda n, body: Fault.dead() if n == 3 else None) as proxy:
        with CachedLLM(_llm(proxy, max_retries=1), tmp_path / "c.sqlite") as cached:
            out = cached.generate(reqs, P)
        paid, delivered = dict(proxy.paid), dict(proxy.delivered)
        ok = [c.ok for c in out]
        assert 1 <= sum(ok) <= 3 and not all(ok)
        assert all(c.extra["reason"] in ("network_error", "protocol_error") for c in out if not c.ok)
        in_flight = {sha for sha, n in paid.items() if n > delivered.get(sha, 0)}  # answered, never delivered
        proxy.revive()
        with CachedLLM(_llm(proxy), tmp_path / "c.sqlite") as cached:
            again = cached.generate(reqs, P)
    assert all(c.ok for c in again) and [c.cached for c in again] == ok
    assert set(proxy.duplicates()) == in_flight and len(in_flight) <= 1  # concurrency 2: one other in flight
    assert all(proxy.paid[body_hash(b)] == 1 for b, c in zip(_bodies(reqs), ok, strict=True) if c)


def _bodies(reqs: list[list[dict[str, str]]]) -> list[dict[str, Any]]:
    """The bodies OpenAILLM sends for ``reqs`` (to look their hashes up in the proxy's counters)."""
    llm = OpenAILLM("smollm2", base_url="http://127.0.0.1:1/v1")
    return [llm._body(r, P) for r in reqs]


def test_secret_in_base_url_is_never_written(server: LlamaServer, corpus: Path, tmp_path: Path) -> None:
    upstream = {"Authorization": f"Bearer {KEY}"}  # the proxy plays a gateway taking basic auth
    with FaultProxy(server.url, upstream_headers=upstream) as proxy:
        url = proxy.url.replace("http://", f"http://user:{SECRET}@")
        env = {**os.environ, "EQUAL_API_KEY": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        args = [sys.executable, "-m", "equal.cli", "-v", "extract", "--corpus", str(corpus), "--target",
                str(EXAMPLES / "target.jsonl"), "--out", str(tmp_path / "run"), "--llm", "openai", "--model",
                "smollm2", "--base-url", url, "--budget-docs", "2", "--clusters", "4", "--clusters-per-round",
                "2", "--docs-per-cluster", "1", "--max-tokens", "16", "--json"]
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        # the secret was used: as basic auth, never inside a URL
        basic = "Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode()
        assert proxy.authorization[basic] == proxy.requests > 0
    assert SECRET not in done.stderr and SECRET not in done.stdout
    assert "user:***@127.0.0.1" in (tmp_path / "run" / "run.toml").read_text()
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert len(files) > 5 and not [p for p in files if SECRET.encode() in p.read_bytes()]
    # Resuming compares the settings with the secret masked on both sides: the same command resumes.
    from equal.pipeline.rundir import RunDir

    cfg = ExtractConfig.from_flat(corpus=str(corpus), target=str(EXAMPLES / "target.jsonl"), base_url=url,
                                  budget_docs=2, clusters=4, clusters_per_round=2, docs_per_cluster=1,
                                  max_tokens=16, extractor="llm", llm="openai", model="smollm2")
    assert RunDir(tmp_path / "run").prepare(cfg) is True
