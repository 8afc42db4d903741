"""Structured output and the LLM judge parts against a real llama.cpp server running the bundled 135M GGUF.

llama-cpp-python's server is a real server that refuses OpenAI's ``json_schema`` form (HTTP 500 naming
``response_format``) and accepts ``json_object`` with a schema, which it enforces with a grammar; so the
step-down from the first form to the second is tested without any fake. The step down to a plain request
needs a server that refuses every form: a tiny proxy in front of the real server refuses bodies carrying
``response_format`` and forwards the rest (a fake of the refusal only; the answers are real).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

from equal.data.qa import QAPair
from equal.data.records import Document
from equal.errors import ConfigError, LLMError
from equal.extract import LLMExtractor, parse_pairs
from equal.extract.prompts import PAIRS_FORMAT
from equal.llm import CachedLLM, GenerationParams, Ledger, OpenAILLM, ResponseFormat, canonical_request
from equal.pipeline.judge import (
    JudgeFilter,
    JudgeFilterConfig,
    JudgeReward,
    JudgeRewardConfig,
    build_filter_messages,
    parse_score,
)
from equal.pipeline.parts import Candidates, Group
from test_llm_server import KEY, LlamaServer, server  # the same real llama.cpp server fixture

__all__ = ["server"]  # re-exported fixture

COLOUR = ResponseFormat.from_schema("colour", {
    "type": "object",
    "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}, "n": {"type": "integer"}},
    "required": ["colour", "n"], "additionalProperties": False,
})
HAIKU = [{"role": "user", "content": "Write a haiku about the sea."}]


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EQUAL_API_KEY", KEY)


# ---------------------------------------------------------------- pure parts


@pytest.mark.parametrize(("text", "score"), [
    ('{"score": 8}', 8), ('{ "score" : 10 }', 10), ('{"rating": "3"}', 3), ('{"score": 7.0}', 7),
    ("Score: 3/10", 3), ("rating - 9", 9), ("7", 7), ("  6/10.", 6), ('```json\n{"score": 2}\n```', 2),
    ('{"score": 0}', None), ('{"score": 11}', None), ('{"score": 7.5}', None), ('{"score": true}', None),
    ("great answer", None), ("", None), (None, None), ("I give it 12", None),
])
def test_parse_score(text: str | None, score: int | None) -> None:
    assert parse_score(text) == score


def test_cache_key_has_the_format_only_when_set() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    plain = json.loads(canonical_request("m", msgs, GenerationParams(max_tokens=8)))
    assert "response_format" not in plain["params"]  # keys without a format are unchanged
    with_fmt = json.loads(canonical_request("m", msgs, GenerationParams(max_tokens=8, response_format=COLOUR)))
    assert with_fmt["params"]["response_format"] == {"name": "colour", "schema": COLOUR.schema, "strict": True}
    again = ResponseFormat.from_schema("colour", dict(reversed(list(COLOUR.schema.items()))))
    assert canonical_request("m", msgs, GenerationParams(max_tokens=8, response_format=again)) == \
        canonical_request("m", msgs, GenerationParams(max_tokens=8, response_format=COLOUR))
    other = ResponseFormat.from_schema("colour", {"type": "object"})
    assert canonical_request("m", msgs, GenerationParams(max_tokens=8, response_format=other)) != \
        canonical_request("m", msgs, GenerationParams(max_tokens=8, response_format=COLOUR))


def test_config_validation_names_the_key() -> None:
    for bad in (0, 11, 7.5, True):
        with pytest.raises(ConfigError, match=r"judge_filter\.threshold"):
            JudgeFilterConfig(threshold=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"judge_filter\.prompt_version"):
        JudgeFilterConfig(prompt_version="judge-reward-v1")
    with pytest.raises(ConfigError, match=r"judge_reward\.n_examples"):
        JudgeRewardConfig(n_examples=0)
    with pytest.raises(ConfigError, match=r"judge_reward\.max_pairs"):
        JudgeRewardConfig(max_pairs=0)
    with pytest.raises(ValueError, match="name="):
        ResponseFormat("bad name", "{}")
    with pytest.raises(ValueError, match="must be a ResponseFormat"):
        GenerationParams(response_format={"type": "json_object"})  # type: ignore[arg-type]


def test_reward_examples_are_a_seeded_choice() -> None:
    targets = [f"target example {i}" for i in range(20)]
    a = JudgeReward(object(), targets, JudgeRewardConfig(n_examples=3, seed=1))  # type: ignore[arg-type]
    b = JudgeReward(object(), targets, JudgeRewardConfig(n_examples=3, seed=1))  # type: ignore[arg-type]
    c = JudgeReward(object(), targets, JudgeRewardConfig(n_examples=3, seed=2))  # type: ignore[arg-type]
    assert a.examples == b.examples and a.examples != c.examples and len(set(a.examples)) == 3
    with pytest.raises(ConfigError, match="target_texts"):
        JudgeReward(object(), ["", "  "])  # type: ignore[arg-type]


# ---------------------------------------------------------------- structured output, real server


def test_structured_output_is_enforced(server: LlamaServer) -> None:
    llm = OpenAILLM("smollm2", base_url=server.url, concurrency=1)
    before = server.chat_posts()
    out = llm.generate([HAIKU, [{"role": "user", "content": "Tell me a joke."}]],
                       GenerationParams(max_tokens=24, response_format=COLOUR))
    for c in out:
        assert c.ok and c.finish_reason == "stop", c
        obj = json.loads(c.text or "")
        assert set(obj) == {"colour", "n"} and obj["colour"] in ("red", "green", "blue")
        assert isinstance(obj["n"], int)
        assert c.extra["response_format"] == "json_object"
    # json_schema was refused once (a real HTTP 500 naming response_format), then remembered.
    assert server.chat_posts() - before == 3
    assert llm.stats()["format_fallbacks"] == 1 and llm.response_format_style == "json_object"
    # Without the format the same prompt is prose: the JSON above came from the constraint.
    (plain,) = llm.generate([HAIKU], GenerationParams(max_tokens=24))
    assert plain.ok and "response_format" not in plain.extra
    with pytest.raises(ValueError):
        json.loads(plain.text or "")


def test_unrelated_400_is_not_taken_for_a_refusal(server: LlamaServer) -> None:
    llm = OpenAILLM("smollm2", base_url=server.url, max_retries=2, backoff_base=0.01)
    too_long = [{"role": "user", "content": "word " * 3000}]  # beyond --n_ctx 2048
    (c,) = llm.generate([too_long], GenerationParams(max_tokens=8, response_format=COLOUR))
    assert c.text is None and "HTTP 400" in (c.error or "") and "context" in (c.error or "")
    # No form led to a success, so none is remembered as refused.
    assert llm.response_format_style == "json_schema" and llm.stats()["retries"] == 0


class _RefusingProxy:
    """Forwards chat requests to the real server, except those with ``response_format``: HTTP 400."""

    def __init__(self, upstream: str, *, structured_body: bool) -> None:
        self.upstream = upstream
        self.structured_body = structured_body
        self.bodies: list[dict[str, object]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                proxy.bodies.append(body)
                if "response_format" in body:
                    err = ({"error": {"message": "unsupported", "type": "invalid_request_error",
                                      "param": "response_format"}} if proxy.structured_body else "bad request")
                    self._send(400, json.dumps(err).encode())
                    return
                r = httpx.post(proxy.upstream + "/chat/completions", json=body, timeout=60,
                               headers={"Authorization": self.headers.get("Authorization", "")})
                self._send(r.status_code, r.content)

            def _send(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def refusing(server: LlamaServer, request: pytest.FixtureRequest) -> Iterator[_RefusingProxy]:
    proxy = _RefusingProxy(server.url, structured_body=request.param)
    yield proxy
    proxy.close()


@pytest.mark.parametrize("refusing", [True, False], ids=["error-param", "no-evidence"], indirect=True)
def test_falls_back_to_a_plain_request(refusing: _RefusingProxy, tmp_path: Path) -> None:
    llm = OpenAILLM("smollm2", base_url=refusing.url, concurrency=1)
    params = GenerationParams(max_tokens=8, response_format=COLOUR)
    with CachedLLM(llm, tmp_path / "c.sqlite") as cached:
        first = cached.generate([[{"role": "user", "content": "Name a colour."}]], params)
        second = cached.generate([[{"role": "user", "content": "Name a fruit."}]], params)
        again = cached.generate([[{"role": "user", "content": "Name a colour."}]], params)
    assert first[0].ok and second[0].ok and first[0].extra["response_format"] == "none"
    assert again[0].cached and again[0].text == first[0].text
    kinds = [b.get("response_format", {}).get("type") for b in refusing.bodies]  # type: ignore[union-attr]
    # First request: both forms refused, then plain; the refusal is remembered for the second.
    assert kinds == ["json_schema", "json_object", None, None]
    assert llm.response_format_style == "none" and llm.stats()["format_fallbacks"] == 2


def test_extractor_asks_for_structured_pairs(server: LlamaServer) -> None:
    llm = OpenAILLM("smollm2", base_url=server.url, concurrency=1)
    ex = LLMExtractor(llm, params=GenerationParams(max_tokens=64), prompt_style="json", structured=True,
                      max_doc_chars=300)
    assert ex.params.response_format == PAIRS_FORMAT
    assert LLMExtractor(llm, prompt_style="lines", structured=True).params.response_format is None
    doc = Document(id="d0", text="The Eiffel Tower is in Paris. It was finished in 1889 and is 330 metres tall.",
                   meta={})
    res = ex.extract([doc])
    (c,) = res.completions
    assert c.ok and c.extra["response_format"] == "json_object"
    if c.finish_reason == "stop":  # a grammar-complete answer is JSON of the schema
        obj = json.loads(c.text or "")
        assert set(obj) == {"pairs"} and all(set(p) == {"question", "answer"} for p in obj["pairs"])
        assert parse_pairs(c.text) == [(p["question"].strip(), p["answer"].strip()) for p in obj["pairs"]
                                       if p["question"].strip()][: len(parse_pairs(c.text))]


# ---------------------------------------------------------------- the judge parts, real server

DOCS = {
    "tower": "The Eiffel Tower is in Paris. It was finished in 1889 and is 330 metres tall.",
    "py": "Python strings are immutable: once created, a string cannot be changed in place.",
    "moon": "The Moon orbits the Earth about once every 27 days.",
}
GOOD = [QAPair("When was the Eiffel Tower finished?", "In 1889.", "tower"),
        QAPair("Can a Python string be changed in place?", "No, Python strings are immutable.", "py"),
        QAPair("How long does the Moon take to orbit the Earth?", "About 27 days.", "moon")]
JUNK = [QAPair("When was the Eiffel Tower finished?", "The answer is:", "tower"),
        QAPair("Can a Python string be changed in place?", "Bananas are yellow.", "py"),
        QAPair("How long does the Moon take to orbit the Earth?", "In 1889, in Paris.", "moon")]


def _candidates(pairs: list[QAPair]) -> Candidates:
    docs = {k: Document(id=k, text=v, meta={}) for k, v in DOCS.items()}
    return Candidates(pairs, [p.render_text() for p in pairs], docs, 0)


def test_judge_filter_mechanics(server: LlamaServer, tmp_path: Path) -> None:
    cand = _candidates(GOOD[:2] + JUNK[:2])
    llm = OpenAILLM("smollm2", base_url=server.url, concurrency=1)
    with CachedLLM(llm, tmp_path / "c.sqlite") as cached:
        ledger = Ledger.for_llm(cached)
        before = server.chat_posts()
        v = JudgeFilter(cached, JudgeFilterConfig(prescreen=False), ledger).judge(cand)
        paid = server.chat_posts() - before
        # Structured output: every rating parses to an integer 1..10.
        assert v.scores.dtype == np.float64 and v.scores.shape == (4,)
        assert np.all((v.scores >= 1) & (v.scores <= 10) & (v.scores == np.round(v.scores)))
        np.testing.assert_array_equal(v.keep, v.scores >= 7)
        assert v.reasons == [None if k else "judge_low" for k in v.keep.tolist()]
        assert ledger.requests == 4 and ledger.cached == 0 and ledger.failed == 0 and ledger.tokens_out > 0
        assert paid == 4 + 1  # one request per pair, plus the refused json_schema form

        # Rerun at other thresholds: the threshold is applied to the same (cached) ratings, nothing is sent.
        before = server.chat_posts()
        for threshold in (1, int(v.scores.max()), int(v.scores.max()) + 1 if v.scores.max() < 10 else 10):
            f = JudgeFilter(cached, JudgeFilterConfig(threshold=threshold, prescreen=False), ledger)
            np.testing.assert_array_equal(f.keep(cand), v.scores >= threshold)
        assert server.chat_posts() == before
        assert ledger.requests == 4 * 4 and ledger.cached == 4 * 3 and ledger.sent == 4
        assert JudgeFilter(cached).keep(_candidates([])).shape == (0,)


def test_judge_filter_prescreens_with_the_quality_rules(server: LlamaServer, tmp_path: Path) -> None:
    # a stub answer is dropped before any request; the others are graded by the model as usual
    cand = _candidates([JUNK[0], GOOD[0], GOOD[1]])
    with CachedLLM(OpenAILLM("smollm2", base_url=server.url, concurrency=1), tmp_path / "c.sqlite") as cached:
        ledger = Ledger()
        v = JudgeFilter(cached, JudgeFilterConfig(threshold=1), ledger).judge(cand)
    assert v.reasons[0] == "judge_prescreen" and not v.keep[0] and np.isnan(v.scores[0])
    assert v.keep[1:].all() and np.all(v.scores[1:] >= 1)  # threshold 1 keeps every graded pair
    assert ledger.requests == 2


def test_judge_filter_raises_on_failed_requests(server: LlamaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EQUAL_API_KEY", "sk-wrong")  # HTTP 401: a failed request, not a rating
    ledger = Ledger()
    f = JudgeFilter(OpenAILLM("smollm2", base_url=server.url, max_retries=0), ledger=ledger)
    with pytest.raises(LLMError, match="1 of 1 judge-filter requests failed"):
        f.keep(_candidates(GOOD[:1]))
    assert ledger.requests == 1 and ledger.failed == 1


def test_judge_reward(server: LlamaServer, tmp_path: Path) -> None:
    targets = ["Q: What is 12 + 30?\nA: 42", "Q: What is 7 times 6?\nA: 42", "Q: What is 100 - 58?\nA: 42"]
    llm = OpenAILLM("smollm2", base_url=server.url, concurrency=1)
    with CachedLLM(llm, tmp_path / "c.sqlite") as cached:
        ledger = Ledger()
        reward = JudgeReward(cached, targets, JudgeRewardConfig(n_examples=2, max_pairs=1), ledger)
        X = np.zeros((0, 4), dtype=np.float32)
        groups = [Group(0, GOOD[:1], [p.render_text() for p in GOOD[:1]], X),
                  Group(1, [], [], X),
                  Group(2, JUNK[:3], [p.render_text() for p in JUNK[:3]], X)]
        r = reward.score(groups)
        assert r.dtype == np.float64 and r.shape == (3,)
        assert math.isnan(r[1]) and np.all((r[[0, 2]] >= 0) & (r[[0, 2]] <= 1))
        assert ledger.requests == 2  # max_pairs=1 caps the third group; the empty one costs nothing
        raw = reward.pair_scores(groups)
        np.testing.assert_allclose(r[[0, 2]], [np.mean((raw[0] - 1) / 9), np.mean((raw[2] - 1) / 9)])
        assert ledger.cached == 2  # pair_scores asked the same requests again, from the cache
        assert np.all(np.isnan(JudgeReward(cached, targets).score([Group(0, [], [], X)])))
        assert JudgeReward(cached, targets).score([]).shape == (0,)


def test_filter_prompt_keeps_the_document_short() -> None:
    msgs = build_filter_messages("Q?", "A.", "word " * 1000, config=JudgeFilterConfig(max_doc_chars=100))
    assert len(msgs) == 2 and len(msgs[1]["content"]) < 900 and "[...]" in msgs[1]["content"]
