"""Tests of equal.embed: real bundled MiniLM, tiny random-weight causal LMs, a real local HTTP server."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from equal.embed import (
    CachedEmbedder,
    Embedder,
    EmbeddingError,
    HFEmbedder,
    OpenAIEmbedder,
    SentenceTransformerEmbedder,
    default_cache_dir,
    default_model_path,
    embed_texts,
    get_embedder,
)
from equal.errors import ConfigError, EqualError

TEXTS = [
    "The cat sat on the mat.",
    "A cat was sitting on the rug.",
    "Stock markets fell sharply after the interest rate decision.",
    "How do I reverse a list in Python?",
    "What is the quickest way to reverse a Python list?",
    "",
]


# ---------------------------------------------------------------- shared models


@pytest.fixture(scope="module")
def st() -> SentenceTransformerEmbedder:
    """The bundled MiniLM, loaded once for the module."""
    return SentenceTransformerEmbedder(device="cpu")


@pytest.fixture(scope="module")
def ref(st: SentenceTransformerEmbedder) -> np.ndarray:
    """MiniLM vectors of TEXTS, computed once (CPU forward passes dominate this file's run time)."""
    return st.encode(TEXTS)


@pytest.fixture(scope="module")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A word-level fast tokenizer with BOS/EOS and no pad token (like LLaMA's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        "the quick brown fox jumps over the lazy dog",
        "hello world embedding models pool token states",
        "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    ]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    assert fast.pad_token is None
    path = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(path)
    return path


def _save_causal_lm(kind: str, tok_dir: Path, out: Path, seed: int) -> Path:
    import shutil

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    vocab = len(json.loads((tok_dir / "tokenizer.json").read_text())["model"]["vocab"])
    torch.manual_seed(seed)
    if kind == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            bos_token_id=1, eos_token_id=2,
        )
        model: Any = LlamaForCausalLM(cfg)
    else:  # GPT-2 has absolute position embeddings, so left padding needs correct position ids
        cfg = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                         bos_token_id=1, eos_token_id=2)
        model = GPT2LMHeadModel(cfg)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for f in tok_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def llama_dir(tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_causal_lm("llama", tiny_tokenizer_dir, tmp_path_factory.mktemp("llama"), seed=0)


@pytest.fixture(scope="module")
def gpt2_dir(tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_causal_lm("gpt2", tiny_tokenizer_dir, tmp_path_factory.mktemp("gpt2"), seed=0)


CAUSAL_TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog", "a", "embedding models pool",
                ""]


# ---------------------------------------------------------------- default embedder


def test_default_embedder_contract(st: SentenceTransformerEmbedder, ref: np.ndarray) -> None:
    X = ref
    assert X.shape == (len(TEXTS), 384) and st.dim == 384
    assert X.dtype == np.float32 and X.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(st.encode(TEXTS), X)  # deterministic


def test_default_embedder_matches_sentence_transformers(
    st: SentenceTransformerEmbedder, ref: np.ndarray
) -> None:
    # Our length-sorted batching must return rows in input order, equal to a plain one-call encode.
    raw = st.model.encode(TEXTS, batch_size=3, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(ref, raw, atol=1e-5)
    order = [4, 0, 3, 1, 5, 2]
    assert len(order) == len(TEXTS)
    np.testing.assert_allclose(st.encode([TEXTS[i] for i in order], batch_size=2), ref[order], atol=1e-5)


def test_default_embedder_is_semantically_sane(ref: np.ndarray) -> None:
    X = ref[:5]
    cos = X @ X.T
    assert cos[0, 1] > cos[0, 2] + 0.3  # cat paraphrases vs finance
    assert cos[3, 4] > cos[3, 2] + 0.3  # Python paraphrases vs finance


def test_empty_input_and_bad_input(st: SentenceTransformerEmbedder) -> None:
    X = st.encode([])
    assert X.shape == (0, 384) and X.dtype == np.float32
    with pytest.raises(TypeError, match="wrap one text in a list"):
        st.encode("a bare string")
    with pytest.raises(TypeError, match=r"texts\[1\] must be str"):
        st.encode(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="batch_size=0"):
        st.encode(["a"], batch_size=0)


def test_show_progress_gives_same_vectors(st: SentenceTransformerEmbedder, ref: np.ndarray) -> None:
    np.testing.assert_allclose(st.encode(TEXTS[:3], show_progress=True), ref[:3], atol=1e-6)


def test_identity_names_the_settings(st: SentenceTransformerEmbedder) -> None:
    ident = st.identity
    for part in ("sentence-transformers", "all-MiniLM-L6-v2", "fp=", "pooling=mean", "max_length=256",
                 "normalize=1", "dim=384"):
        assert part in ident
    short = SentenceTransformerEmbedder(device="cpu", max_length=16)
    assert short.identity != ident and "max_length=16" in short.identity
    # Texts longer than max_length are truncated, not refused: only the first 16 tokens count.
    X = short.encode(["word " * 20, "word " * 200, "word " * 20 + "different ending"])
    np.testing.assert_allclose(X[0], X[1], atol=1e-6)
    np.testing.assert_allclose(X[0], X[2], atol=1e-6)
    assert SentenceTransformerEmbedder(device="cpu").identity == ident  # stable across loads


@pytest.mark.gpu
def test_cuda_matches_cpu(st: SentenceTransformerEmbedder, ref: np.ndarray) -> None:
    gpu = SentenceTransformerEmbedder(device="cuda")
    assert gpu.identity == st.identity
    np.testing.assert_allclose(gpu.encode(TEXTS), ref, atol=1e-4)
    hf = HFEmbedder(default_model_path(), device="cuda")
    assert "dtype=bfloat16" in hf.identity or "dtype=float16" in hf.identity
    np.testing.assert_allclose(hf.encode(TEXTS), ref, atol=3e-2)


# ---------------------------------------------------------------- HFEmbedder


def test_hf_mean_pooling_matches_sentence_transformers(ref: np.ndarray) -> None:
    for side in ("right", "left"):
        hf = HFEmbedder(default_model_path(), pooling="mean", max_length=256, device="cpu", padding_side=side)
        assert hf.dim == 384
        X = hf.encode(TEXTS, batch_size=3)
        assert X.dtype == np.float32 and X.flags.c_contiguous
        np.testing.assert_allclose(X, ref, atol=1e-5)


def test_hf_cls_pooling_is_first_token(st: SentenceTransformerEmbedder) -> None:
    import torch

    hf = HFEmbedder(default_model_path(), pooling="cls", normalize=False, device="cpu")
    ids = hf.tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = hf.model(**ids).last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(hf.encode(TEXTS[:3]), ref, atol=1e-5)


def _last_token_reference(path: Path, texts: list[str]) -> np.ndarray:
    """Independent reference: run each text alone (no padding) and take the state at its last token."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    rows = []
    for t in texts:
        ids = tok(t, return_tensors="pt")["input_ids"]
        if ids.shape[1] == 0:
            ids = torch.tensor([[tok.eos_token_id]])
        with torch.no_grad():
            rows.append(model(input_ids=ids).last_hidden_state[0, -1].numpy())
    return np.stack(rows)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_hf_last_token_pooling_under_both_paddings(
    kind: str, llama_dir: Path, gpt2_dir: Path
) -> None:
    path = llama_dir if kind == "llama" else gpt2_dir
    ref = _last_token_reference(path, CAUSAL_TEXTS)
    for side in ("left", "right"):
        hf = HFEmbedder(path, pooling="last", padding_side=side, normalize=False, device="cpu", batch_size=8)
        assert hf.tokenizer.pad_token == "</s>"  # missing pad token replaced by EOS
        assert hf.dim == 32
        np.testing.assert_allclose(hf.encode(CAUSAL_TEXTS), ref, atol=1e-5)
    unit = HFEmbedder(path, pooling="last", device="cpu").encode(CAUSAL_TEXTS)
    np.testing.assert_allclose(unit, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)


def test_hf_mean_pooling_causal_lm_left_padding(gpt2_dir: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    model = AutoModel.from_pretrained(gpt2_dir).eval()
    texts = CAUSAL_TEXTS[:4]
    with torch.no_grad():
        states = [model(**tok(t, return_tensors="pt")).last_hidden_state[0] for t in texts]
    ref = np.stack([h.mean(0).numpy() for h in states])
    hf = HFEmbedder(gpt2_dir, pooling="mean", padding_side="left", normalize=False, device="cpu")
    np.testing.assert_allclose(hf.encode(texts), ref, atol=1e-5)


def test_hf_identity_tracks_options_and_weights(
    gpt2_dir: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    idents = {
        HFEmbedder(gpt2_dir, pooling=p, max_length=m, normalize=n, device="cpu").identity
        for p in ("mean", "last", "cls") for m in (16, 256) for n in (True, False)
    }
    assert len(idents) == 12
    same = HFEmbedder(gpt2_dir, pooling="last", device="cpu").identity
    other = _save_causal_lm("gpt2", tiny_tokenizer_dir, tmp_path / "gpt2", seed=1)
    changed = HFEmbedder(other, pooling="last", device="cpu").identity
    assert same.split(";fp=")[1] != changed.split(";fp=")[1]  # same shapes, different weights


def test_hf_rejects_bad_options(gpt2_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pooling='max'"):
        HFEmbedder(gpt2_dir, pooling="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_length=0"):
        HFEmbedder(gpt2_dir, max_length=0)
    with pytest.raises(ValueError, match="dtype='float64'"):
        HFEmbedder(gpt2_dir, dtype="float64")
    with pytest.raises(ValueError, match="neither a local directory"):
        HFEmbedder(tmp_path / "missing-model")


# ---------------------------------------------------------------- OpenAI-compatible server


class _EmbeddingServer(ThreadingHTTPServer):
    """A real HTTP server answering POST /v1/embeddings with the MiniLM vectors, in shuffled order."""

    daemon_threads = True

    def __init__(self, embedder: Embedder) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.embedder = embedder
        self.fail_next: list[int] = []  # statuses to answer before serving normally
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: _EmbeddingServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append({"path": self.path, "payload": payload,
                                         "auth": self.headers.get("Authorization")})
            status = self.server.fail_next.pop(0) if self.server.fail_next else 200
        if self.path != "/v1/embeddings":
            self._reply(404, {"error": {"message": f"no route {self.path}"}})
        elif status == 429:
            self._reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
        elif status != 200:
            self._reply(status, {"error": {"message": f"forced failure {status}", "type": "test"}})
        elif not isinstance(payload.get("input"), list) or payload.get("model") != "minilm-test":
            self._reply(400, {"error": {"message": "bad request: input must be a list, model minilm-test"}})
        else:
            X = self.server.embedder.encode(payload["input"])
            data = [{"object": "embedding", "index": i, "embedding": X[i].tolist()} for i in range(len(X))]
            self._reply(200, {"object": "list", "data": data[::-1], "model": payload["model"],
                              "usage": {"prompt_tokens": 3 * len(X), "total_tokens": 3 * len(X)}})


@pytest.fixture(scope="module")
def server(st: SentenceTransformerEmbedder) -> Iterator[_EmbeddingServer]:
    srv = _EmbeddingServer(st)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def fresh_server(server: _EmbeddingServer) -> _EmbeddingServer:
    server.fail_next.clear()
    server.requests.clear()
    return server


def test_openai_backend_matches_local_model(
    fresh_server: _EmbeddingServer, ref: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EQUAL_API_KEY", "sk-test-secret")
    emb = OpenAIEmbedder("minilm-test", base_url=fresh_server.base_url, batch_size=4, retry_backoff=0.0)
    X = emb.encode(TEXTS)
    assert X.shape == (len(TEXTS), 384) and X.dtype == np.float32 and X.flags.c_contiguous
    # The server answers in reverse order; rows must follow input order.
    np.testing.assert_allclose(X, ref, atol=1e-6)
    assert emb.dim == 384 and emb.n_requests == 2 and emb.n_batches == 2 and emb.tokens_in == 3 * len(TEXTS)
    assert [len(r["payload"]["input"]) for r in fresh_server.requests] == [4, 2]
    assert all(r["auth"] == "Bearer sk-test-secret" for r in fresh_server.requests)
    assert fresh_server.requests[0]["payload"]["encoding_format"] == "float"
    assert "sk-test-secret" not in emb.identity and "sk-test-secret" not in repr(emb)


def test_openai_retries_server_errors_then_succeeds(fresh_server: _EmbeddingServer, ref: np.ndarray) -> None:
    fresh_server.fail_next[:] = [500, 429, 503]
    emb = OpenAIEmbedder("minilm-test", base_url=fresh_server.base_url, max_retries=3, retry_backoff=0.001)
    X = emb.encode(TEXTS[:2])
    np.testing.assert_allclose(X, ref[:2], atol=1e-6)
    assert emb.n_requests == 4 and len(fresh_server.requests) == 4


def test_openai_gives_up_after_max_retries(fresh_server: _EmbeddingServer) -> None:
    fresh_server.fail_next[:] = [500, 500, 500]
    emb = OpenAIEmbedder("minilm-test", base_url=fresh_server.base_url, max_retries=1, retry_backoff=0.001)
    with pytest.raises(EmbeddingError, match=r"after 2 attempt\(s\).*HTTP 500: forced failure 500"):
        emb.encode(["a"])
    assert len(fresh_server.requests) == 2


def test_openai_client_error_is_not_retried(
    fresh_server: _EmbeddingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-other-secret")
    monkeypatch.delenv("EQUAL_API_KEY", raising=False)
    emb = OpenAIEmbedder("wrong-model", base_url=fresh_server.base_url, max_retries=5)
    with pytest.raises(EmbeddingError, match="HTTP 400: bad request") as info:
        emb.encode(["a", "b"])
    assert len(fresh_server.requests) == 1
    assert fresh_server.requests[0]["auth"] == "Bearer sk-other-secret"
    assert "sk-other-secret" not in str(info.value)
    fresh_server.fail_next[:] = [401]
    with pytest.raises(EmbeddingError, match=r"HTTP 401.*EQUAL_API_KEY"):
        OpenAIEmbedder("minilm-test", base_url=fresh_server.base_url).encode(["a"])


def test_openai_transport_error_is_retried_then_reported() -> None:
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    emb = OpenAIEmbedder("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, retry_backoff=0.0,
                         timeout=5)
    with pytest.raises(EmbeddingError, match=r"after 2 attempt\(s\).*ConnectError"):
        emb.encode(["a"])
    assert emb.n_requests == 2


def test_openai_dim_probe_and_empty_input(fresh_server: _EmbeddingServer) -> None:
    emb = OpenAIEmbedder("minilm-test", base_url=fresh_server.base_url)
    X = emb.encode([])
    assert X.shape == (0, 384) and len(fresh_server.requests) == 1  # one probe to learn the dim
    assert OpenAIEmbedder("text-embedding-3-small", base_url=fresh_server.base_url).dim == 1536


def test_openai_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EQUAL_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="EQUAL_BASE_URL"):
        OpenAIEmbedder("m")
    with pytest.raises(ValueError, match="base_url='ftp://x'"):
        OpenAIEmbedder("m", base_url="ftp://x")
    monkeypatch.setenv("EQUAL_BASE_URL", "http://user:pw@127.0.0.1:9/v1?key=abc")
    emb = OpenAIEmbedder("m", dimensions=64)
    assert emb.identity == "openai:model=m;base_url=http://127.0.0.1:9/v1;dimensions=64;normalize=1"
    assert emb.dim == 64


# ---------------------------------------------------------------- cache


class CountingEmbedder(Embedder):
    """A cheap real embedder (character trigram hashing) that records every text it embeds."""

    def __init__(self, dim: int = 16, tag: str = "v1", fail_after_calls: int | None = None) -> None:
        super().__init__()
        self._dim, self.tag, self.fail_after_calls = dim, tag, fail_after_calls
        self.seen: list[str] = []

    @property
    def identity(self) -> str:
        return f"counting:{self.tag};dim={self._dim}"

    @property
    def dim(self) -> int:
        return self._dim

    def _encode(self, texts: list[str], batch_size: int, progress: Any) -> np.ndarray:
        if self.fail_after_calls is not None and self.n_batches >= self.fail_after_calls:
            raise RuntimeError("simulated crash")
        X = np.zeros((len(texts), self._dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for j in range(max(len(t) - 2, 1)):
                X[i, hash(t[j : j + 3]) % self._dim] += 1.0
            X[i, 0] += 0.5
        self.seen.extend(texts)
        self.n_batches += 1
        self.n_encoded += len(texts)
        return X


def test_cache_second_run_never_calls_the_model(
    st: SentenceTransformerEmbedder, ref: np.ndarray, tmp_path: Path
) -> None:
    cached = CachedEmbedder(st, tmp_path)
    assert cached.identity == st.identity and cached.dim == 384
    before = st.n_encoded
    X1 = cached.encode(TEXTS)
    assert st.n_encoded - before == len(TEXTS)
    assert (cached.cache_hits, cached.cache_misses) == (0, len(TEXTS))
    np.testing.assert_allclose(X1, ref, atol=1e-6)

    again = CachedEmbedder(st, tmp_path)  # a fresh instance reads the same file
    before = st.n_encoded
    X2 = again.encode(TEXTS)
    assert st.n_encoded == before
    assert (again.cache_hits, again.cache_misses) == (len(TEXTS), 0)
    np.testing.assert_array_equal(X2, X1)
    assert X2.dtype == np.float32 and X2.flags.c_contiguous
    assert again.stats() == {"hits": len(TEXTS), "misses": 0, "stored": len(TEXTS)}


def test_cache_embeds_only_new_unique_texts(tmp_path: Path) -> None:
    emb = CountingEmbedder()
    cached = CachedEmbedder(emb, tmp_path)
    cached.encode(["a", "b", "c"])
    X = cached.encode(["c", "d", "d", "a", "e", "d"])
    assert emb.seen == ["a", "b", "c", "d", "e"]
    assert (cached.cache_hits, cached.cache_misses) == (2, 5)
    np.testing.assert_array_equal(X, emb.encode(["c", "d", "d", "a", "e", "d"]))
    assert cached.encode([]).shape == (0, 16)


def test_cache_files_are_per_identity(tmp_path: Path) -> None:
    a = CachedEmbedder(CountingEmbedder(tag="v1"), tmp_path)
    b = CachedEmbedder(CountingEmbedder(tag="v2"), tmp_path)
    a.encode(["x"])
    b.encode(["x"])
    assert a.path != b.path and a.embedder.n_encoded == 1 and b.embedder.n_encoded == 1
    with sqlite3.connect(a.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        stored = conn.execute("SELECT value FROM meta WHERE key='identity'").fetchone()[0]
    assert stored == "counting:v1;dim=16"


def test_cache_commits_each_chunk_before_a_crash(tmp_path: Path) -> None:
    texts = [f"text number {i}" for i in range(10)]
    crashing = CachedEmbedder(CountingEmbedder(fail_after_calls=2), tmp_path, chunk_size=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.encode(texts)
    resumed = CountingEmbedder()
    X = CachedEmbedder(resumed, tmp_path, chunk_size=3).encode(texts)
    assert resumed.seen == texts[6:]  # the first two chunks of three survived
    np.testing.assert_array_equal(X, CountingEmbedder().encode(texts))


def test_cache_is_safe_across_concurrent_processes(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from equal.embed import CachedEmbedder, Embedder

        class E(Embedder):
            identity = "concurrent-test"
            dim = 8
            def _encode(self, texts, batch_size, progress):
                self.n_encoded += len(texts)
                return np.array([[len(t) + 1.0, *range(1, 8)] for t in texts], dtype=np.float32)

        start = int(sys.argv[2])
        texts = [f"t{i}" for i in range(start, start + 3000)]
        cached = CachedEmbedder(E(), sys.argv[1], chunk_size=100)
        X = cached.encode(texts)
        assert X.shape == (3000, 8)
        print(cached.cache_misses)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(start)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for start in (0, 1500)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    files = list(tmp_path.glob("*.sqlite"))
    assert len(files) == 1
    with sqlite3.connect(files[0]) as conn:
        assert conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 4500
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _encode_in_child(cached: CachedEmbedder, texts: list[str], hits: Any) -> None:
    cached.encode(texts)
    hits.value = cached.cache_hits


@pytest.mark.skipif(sys.platform == "win32", reason="needs fork")
def test_cache_connection_is_reopened_after_fork(tmp_path: Path) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    cached = CachedEmbedder(CountingEmbedder(), tmp_path)
    cached.encode(["a"])  # the parent holds an open connection now
    hits = ctx.Value("i", -1)
    child = ctx.Process(target=_encode_in_child, args=(cached, ["a", "b"], hits))
    child.start()
    child.join(60)
    assert child.exitcode == 0 and hits.value == 1  # "a" came from the file the parent wrote
    before = cached.embedder.n_encoded
    cached.encode(["b"])  # stored by the child, visible to the parent
    assert cached.embedder.n_encoded == before


def test_default_cache_dir_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EQUAL_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "embeddings"
    cached = CachedEmbedder(CountingEmbedder())
    cached.encode(["a"])
    assert cached.path.parent == tmp_path / "embeddings" and cached.path.exists()
    monkeypatch.delenv("EQUAL_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "equal" / "embeddings"


def test_nan_output_is_refused(tmp_path: Path) -> None:
    class Broken(CountingEmbedder):
        def _encode(self, texts: list[str], batch_size: int, progress: Any) -> np.ndarray:
            X = super()._encode(texts, batch_size, progress)
            X[1] = np.nan if texts[1] == "nan" else 0.0
            return X

    with pytest.raises(EmbeddingError, match=r"NaN or infinity .*texts\[1\]"):
        Broken().encode(["a", "nan"])
    with pytest.raises(EmbeddingError, match=r"cannot be normalised; texts\[1\]"):
        Broken().encode(["a", "zero"])
    assert issubclass(EmbeddingError, EqualError)


# ---------------------------------------------------------------- get_embedder / embed_texts


def test_get_embedder_forms(
    st: SentenceTransformerEmbedder, ref: np.ndarray, gpt2_dir: Path, fresh_server: _EmbeddingServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    default = get_embedder("minilm", device="cpu")
    assert isinstance(default, SentenceTransformerEmbedder) and default.identity == st.identity
    by_path = get_embedder(str(default_model_path()), device="cpu", max_length=64)
    assert isinstance(by_path, SentenceTransformerEmbedder) and "max_length=64" in by_path.identity

    hf = get_embedder(f"hf:{gpt2_dir}?pooling=last&max_length=16", device="cpu")
    assert isinstance(hf, HFEmbedder) and (hf.pooling, hf.max_length) == ("last", 16)
    hf_kw = get_embedder(f"hf:{gpt2_dir}", pooling="cls", device="cpu")
    assert isinstance(hf_kw, HFEmbedder) and hf_kw.pooling == "cls"
    with pytest.raises(ValueError, match="sets pooling='last' but the keyword gives pooling='cls'"):
        get_embedder(f"hf:{gpt2_dir}?pooling=last", pooling="cls")
    with pytest.raises(ValueError, match="max_length='x' must be an int"):
        get_embedder(f"hf:{gpt2_dir}?max_length=x")

    monkeypatch.setenv("EQUAL_BASE_URL", fresh_server.base_url)
    api = get_embedder("openai:minilm-test")
    assert isinstance(api, OpenAIEmbedder) and api.base_url == fresh_server.base_url
    np.testing.assert_allclose(api.encode(TEXTS[:2]), ref[:2], atol=1e-6)
    api_kw = get_embedder("openai:other?dimensions=8", base_url="http://127.0.0.1:1/v1")
    assert isinstance(api_kw, OpenAIEmbedder) and api_kw.dimensions == 8

    with pytest.raises(ValueError, match=r"Unknown embedder 'bert'.*Accepted forms: .*'st:PATH'.*'hf:PATH'"):
        get_embedder("bert")
    with pytest.raises(ValueError, match="for a plain Hugging Face model use 'hf:"):
        get_embedder(str(gpt2_dir))


def test_embed_texts_uses_the_cache(
    st: SentenceTransformerEmbedder, ref: np.ndarray, tmp_path: Path
) -> None:
    X = embed_texts(TEXTS[:4], embedder=st, cache=tmp_path)
    np.testing.assert_allclose(X, ref[:4], atol=1e-6)
    before = st.n_encoded
    np.testing.assert_array_equal(embed_texts(TEXTS[:4], embedder=st, cache=tmp_path), X)
    assert st.n_encoded == before
    np.testing.assert_allclose(embed_texts(TEXTS[:4], embedder=st, cache=False), X, atol=1e-6)
    assert st.n_encoded == before + 4
    assert embed_texts([], embedder=st).shape == (0, 384)


def test_embed_texts_default_model(ref: np.ndarray) -> None:
    X = embed_texts(TEXTS[:3])  # cache under EQUAL_CACHE_DIR, which conftest points at a temp folder
    assert X.shape == (3, 384) and X.dtype == np.float32
    assert list((default_cache_dir()).glob("*.sqlite"))
    np.testing.assert_allclose(X, ref[:3], atol=1e-6)
