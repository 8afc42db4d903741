"""The fast paths behind benchmarks/bench_scale.py, each checked against the straightforward computation.

- ``_StaticTokens`` (word-by-word WordPiece ids of a static-embedding model) equals the tokenizer's own ids, and
  the embedder's vectors through it equal sentence-transformers' ``encode`` bit for bit;
- ``check_embeddings``' norm check in row blocks finds the same row and norm as the whole-matrix one, and its
  peak memory does not grow with the rows;
- ``DocumentStore.take`` reads each row group once per call, whatever the cache holds;
- ``approx_token_count``'s byte-class count of an ASCII text equals the regex count.
"""

from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from equal._validation import check_embeddings
from equal.data.records import Document
from equal.data.store import DocumentStore, ingest_documents
from equal.embed.sentence_transformer import SentenceTransformerEmbedder, _StaticTokens, default_model_path


def _texts() -> list[str]:
    rng = random.Random(0)
    plain = ["the", "apples", "unbelievably", "tokenization", "x" * 120, "2024", "e-mail", "[unk]", "co-op's",
             "antidisestablishmentarianism", "3.14", "ABC", "q&a", "Hello", "WORLD"]
    odd = [*plain, "Zürich", "naïve", "[CLS]", "[MASK]"]  # one in ten texts: characters the fast path declines
    ascii_marks = list(".,;:!?()[]{}<>/\\|@#$%^&*-_+=~`'\"")
    out = ["How many apples are left?", "a", "Hello,world!!", "tab\tand\r\nbreaks", "   spaced   out   ",
           "ends with a long word " + "y" * 400, "CJK 中文 text", "control\x01char", "nul\x00byte", "bell\x07",
           "x" * 5000, ("word " * 300).strip(), ("many-marks!? " * 200), "soft\u00a0space", "emoji 🙂 here"]
    for j in range(150):
        n, words = rng.randint(1, 300), odd if j % 10 == 0 else plain
        out.append(" ".join(rng.choice(words) if rng.random() < 0.7 else rng.choice(ascii_marks) * rng.randint(1, 3)
                            for _ in range(n)))
    return out


@pytest.mark.parametrize("limit", [128, 7, None])
def test_static_tokens_equal_the_tokenizer(limit: int | None) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(default_model_path() / "tokenizer.json"))
    tok.no_padding()
    if limit is None:
        tok.no_truncation()
    else:
        tok.enable_truncation(limit)
    fast = _StaticTokens(tok, json.loads(tok.to_str()))
    texts = _texts()
    got = [fast.ids(t) for t in texts]
    want = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    handled = [i for i, g in enumerate(got) if g is not None]
    assert len(handled) > 0.75 * len(texts)  # the fast path takes plain ASCII prose
    for i in handled:
        assert got[i] == want[i], texts[i][:80]
    # what it declines (other characters, an added token's text) goes to the tokenizer
    assert got[texts.index("CJK 中文 text")] is None and got[texts.index("control\x01char")] is None
    assert all(g is None for t, g in zip(texts, got, strict=True) if "[CLS]" in t or "[MASK]" in t)


@pytest.fixture(scope="module")
def static_embedder(tmp_path_factory: pytest.TempPathFactory) -> SentenceTransformerEmbedder:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer

    from equal.embed import get_embedder

    tok = Tokenizer.from_file(str(default_model_path() / "tokenizer.json"))
    tok.enable_truncation(64)
    table = np.random.default_rng(0).standard_normal((tok.get_vocab_size(), 16)).astype(np.float32)
    folder = tmp_path_factory.mktemp("static-fast") / "st"
    SentenceTransformer(modules=[StaticEmbedding(tok, embedding_weights=torch.from_numpy(table))],
                        device="cpu").save(str(folder))
    emb = get_embedder(f"st:{folder}", device="cpu")
    assert isinstance(emb, SentenceTransformerEmbedder)
    return emb


def test_static_fast_path_gives_the_same_bits(static_embedder: SentenceTransformerEmbedder) -> None:
    emb = static_embedder
    assert emb._fast is not None  # a StaticEmbedding on a BERT-uncased WordPiece tokenizer takes the fast path
    texts = [t for t in _texts() if t.strip() and "\x00" not in t]
    fast = emb.encode(texts, batch_size=16)
    saved, emb._fast = emb._fast, None  # the sentence-transformers path, batch for batch
    try:
        slow = emb.encode(texts, batch_size=16)
    finally:
        emb._fast = saved
    assert fast.dtype == np.float32 and fast.shape == slow.shape
    np.testing.assert_array_equal(fast, slow)


def _unit(n: int, d: int) -> np.ndarray:
    return np.full((n, d), 1.0 / np.sqrt(d), dtype=np.float32)  # unit rows (to float32 rounding), quick to make


def test_norm_check_in_blocks_names_the_same_row() -> None:
    d = 512
    X = _unit(2 * (1 << 22) // d + 17, d)  # more than two blocks of rows
    check_embeddings(X)
    bad = X.shape[0] - 5  # in the last block
    X[bad] *= 1.01
    norms = np.linalg.norm(X, axis=1)  # the whole-matrix computation
    with pytest.raises(ValueError, match=rf"row {bad} has norm {norms[bad]:.4g}"):
        check_embeddings(X)
    X[bad] /= 1.01
    X[100] = 0.0
    with pytest.raises(ValueError, match="all-zero row \\(row 100\\)"):
        check_embeddings(X)
    X[100] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity \\(row 100\\)"):
        check_embeddings(X)


def test_norm_check_memory_stays_bounded(tmp_path: Path) -> None:
    d = 128
    path = tmp_path / "X.npy"
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(60_000, d))  # 29 MiB
    for s in range(0, big.shape[0], 10_000):
        big[s: s + 10_000] = _unit(10_000, d)
    big.flush()
    del big
    X = np.load(path, mmap_mode="r")
    tracemalloc.start()
    try:
        out = check_embeddings(X)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (60_000, d)
    assert peak < 24 * 2**20  # blocks of 2^22 entries, not an (n, d) temporary


def test_take_reads_each_row_group_once(tmp_path: Path) -> None:
    docs = [Document(f"d{i}", f"text number {i}", {"k": i}) for i in range(400)]
    path = tmp_path / "documents.parquet"
    ingest_documents(docs, path, max_tokens=64, row_group_size=10)
    store = DocumentStore(path, cache_groups=2)
    reads: list[int] = []
    inner = store._file.read_row_group

    def counted(g: int, **kw: Any) -> Any:
        reads.append(g)
        return inner(g, **kw)

    store._file.read_row_group = counted  # type: ignore[method-assign]
    rows = [int(r) for r in np.random.default_rng(0).permutation(400)[:60]]
    got = store.take(rows)
    assert [d.id for d in got] == [f"d{r}" for r in rows]
    assert [d.meta["k"] for d in got] == rows and [d.text for d in got] == [f"text number {r}" for r in rows]
    assert sorted(reads) == sorted(set(r // 10 for r in rows))  # each group once, though only 2 are cached
    assert store.take([]) == [] and store.take([np.int64(3)])[0].id == "d3" and store[-1].id == "d399"


def test_approx_token_count_ascii_path_equals_the_regex() -> None:
    from equal.data.chunking import _TOKEN, approx_token_count

    rng = random.Random(0)
    texts = ["", "a", " a", "a ", "Hello, world! 2+2=4.", "__init__ x_y", "\x1c\x1f\x0b\x0c", "tab\tsep\r\n."]
    texts += ["".join(chr(rng.randrange(128)) for _ in range(rng.randrange(60))) for _ in range(5000)]
    texts += ["naïve café 中文 text", "emoji 🙂!"]  # not ASCII: the regex itself
    for t in texts:
        assert approx_token_count(t) == len(_TOKEN.findall(t)), repr(t)
