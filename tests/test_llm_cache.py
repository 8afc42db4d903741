"""Request-cache key and cost ledger: hand-checked values."""

from __future__ import annotations

import hashlib
import json

import pytest

from equal.llm import Completion, GenerationParams, Ledger, cache_key, canonical_request

MSGS = [{"role": "user", "content": "héllo"}]


def test_cache_key_is_sha256_of_hand_written_canonical_json() -> None:
    expected_json = (
        '{"messages":[{"content":"héllo","role":"user"}],"model":"m",'
        '"params":{"max_tokens":8,"seed":0,"stop":[],"temperature":0.0,"top_p":1.0},"v":1}'
    )
    params = GenerationParams(max_tokens=8)
    assert canonical_request("m", MSGS, params) == expected_json
    assert cache_key("m", MSGS, params) == hashlib.sha256(expected_json.encode("utf-8")).hexdigest()


def test_cache_key_sensitivity() -> None:
    base = cache_key("m", MSGS, GenerationParams(max_tokens=8))
    # Same request written differently: int vs float temperature, key order inside a message.
    assert cache_key("m", MSGS, GenerationParams(max_tokens=8, temperature=0)) == base
    assert cache_key("m", [{"content": "héllo", "role": "user"}], GenerationParams(max_tokens=8)) == base
    different = [
        cache_key("m2", MSGS, GenerationParams(max_tokens=8)),
        cache_key("m", MSGS, GenerationParams(max_tokens=9)),
        cache_key("m", MSGS, GenerationParams(max_tokens=8, seed=1)),
        cache_key("m", MSGS, GenerationParams(max_tokens=8, seed=None)),
        cache_key("m", MSGS, GenerationParams(max_tokens=8, temperature=0.5)),
        cache_key("m", MSGS, GenerationParams(max_tokens=8, stop=("\n",))),
        cache_key("m", [{"role": "system", "content": ""}, *MSGS], GenerationParams(max_tokens=8)),
    ]
    assert len({base, *different}) == 1 + len(different)


def test_ledger_counts_and_estimates() -> None:
    ledger = Ledger(n_params=1000, price_in_per_1m=2.0, price_out_per_1m=10.0)
    ledger.add([
        Completion(text="a", tokens_in=100, tokens_out=20, seconds=1.5),
        Completion(text="b", tokens_in=50, tokens_out=5, seconds=0.5, cached=True),  # paid earlier
        Completion(text=None, error="HTTP 500", seconds=2.0),
    ])
    assert (ledger.requests, ledger.cached, ledger.failed, ledger.sent) == (3, 1, 1, 2)
    assert (ledger.tokens_in, ledger.tokens_out) == (100, 20)
    assert ledger.seconds == pytest.approx(3.5)
    assert ledger.est_flops == 2 * 1000 * 120
    assert ledger.est_cost == pytest.approx((100 * 2.0 + 20 * 10.0) / 1e6)


def test_ledger_round_trip_and_unknowns() -> None:
    ledger = Ledger(price_in_per_1m=1.0)
    ledger.add([Completion(text="x", tokens_in=3, tokens_out=4, seconds=0.25)])
    d = json.loads(json.dumps(ledger.to_dict()))
    assert d["sent"] == 1 and d["est_flops"] is None and d["est_cost"] == pytest.approx(3e-6)
    assert Ledger.from_dict(d) == ledger
    assert Ledger().est_cost is None
    with pytest.raises(ValueError, match="tokens_in=-1"):
        Ledger(tokens_in=-1)
    with pytest.raises(ValueError, match="n_params='big'"):
        Ledger(n_params="big")  # type: ignore[arg-type]


def test_ledger_counts_failures_by_reason_and_estimates() -> None:
    ledger = Ledger()
    ledger.add([
        Completion(text=None, error="HTTP 500", extra={"reason": "http_500"}),
        Completion(text=None, error="empty", extra={"reason": "empty_content"}),
        Completion(text=None, error="empty", extra={"reason": "empty_content"}),
        Completion(text=None, error="no reason given"),
        Completion(text="a", tokens_in=3, tokens_out=1, extra={"tokens_estimated": True}),
        Completion(text="b", tokens_in=3, tokens_out=1, cached=True, extra={"tokens_estimated": True}),
    ])
    assert ledger.failed == 4 and ledger.failures == {"http_500": 1, "empty_content": 2, "error": 1}
    assert ledger.tokens_estimated == 1  # the cached one cost nothing this time
    d = json.loads(json.dumps(ledger.to_dict()))
    assert list(d["failures"]) == ["empty_content", "error", "http_500"]
    assert Ledger.from_dict(d) == ledger
    with pytest.raises(ValueError, match="failures="):
        Ledger(failures={"x": -1})


def test_redact_url() -> None:
    from equal._redact import is_redacted, redact_text, redact_url, resolve_url

    assert redact_url("http://user:SECRET@host:8000/v1") == "http://user:***@host:8000/v1"
    assert redact_url("https://TOKEN@host/v1") == "https://***@host/v1"
    assert redact_url("http://h/v1?api_key=K&model=m&token=T") == "http://h/v1?api_key=***&model=m&token=***"
    assert redact_url("http://h/v1?x-api-key=K") == "http://h/v1?x-api-key=***"
    assert redact_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert redact_url("not a url") == "not a url"
    text = "failed: ConnectError for http://u:SECRET@h/v1/chat and 'https://h/?key=K2'"
    assert "SECRET" not in redact_text(text) and "K2" not in redact_text(text) and "http://u:***@h" in redact_text(text)
    assert is_redacted("http://u:***@h/v1") and not is_redacted("http://u:pw@h/v1")
    assert resolve_url("http://u:pw@h/v1") == "http://u:pw@h/v1"


def test_redacted_url_is_resolved_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from equal._redact import resolve_url
    from equal.errors import ConfigError

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("EQUAL_BASE_URL", "http://u:REAL@h/v1")
    assert resolve_url("http://u:***@h/v1") == "http://u:REAL@h/v1"
    with pytest.raises(ConfigError, match=r"secret masked.*--base-url"):
        resolve_url("http://u:***@other/v1")
