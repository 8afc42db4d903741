"""Static-embedding models (no maximum length): a StaticEmbedding directory and a model2vec directory.

Both are built offline from the bundled MiniLM's tokenizer with small random tables, and checked
against a direct numpy computation (mean of the token rows, L2-normalised).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from equal.embed import CachedEmbedder, get_embedder
from equal.embed.sentence_transformer import default_model_path

TEXTS = ["How many apples are left?", "The answer is 42.", "a", "Static embeddings have no length limit. " * 40]


@pytest.fixture(scope="module")
def static_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """(StaticEmbedding dir, model2vec dir, table of the first, table of the second)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer

    root = tmp_path_factory.mktemp("static")
    tokenizer = Tokenizer.from_file(str(default_model_path() / "tokenizer.json"))
    vocab = tokenizer.get_vocab_size()
    gen = np.random.default_rng(0)
    table = gen.standard_normal((vocab, 32)).astype(np.float32)
    st_dir = root / "st"
    model = SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_weights=torch.from_numpy(table))],
                                device="cpu")
    model.save(str(st_dir))

    # A model2vec directory as StaticModel.save_pretrained writes it: no modules.json, an "embeddings" key.
    from safetensors.numpy import save_file

    m2v_dir = root / "m2v"
    m2v_dir.mkdir()
    table2 = gen.standard_normal((vocab, 24)).astype(np.float32)
    save_file({"embeddings": table2}, str(m2v_dir / "model.safetensors"))
    tokenizer.no_truncation()  # this one reads whole texts
    tokenizer.save(str(m2v_dir / "tokenizer.json"))
    (m2v_dir / "config.json").write_text(json.dumps({"model_type": "model2vec", "normalize": True,
                                                     "hidden_dim": 24}))
    return st_dir, m2v_dir, table, table2


def _reference(directory: Path, table: np.ndarray, texts: list[str], limit: int | None) -> np.ndarray:
    """Mean of the token rows (no special tokens, at most ``limit`` tokens), L2-normalised, in float64."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    out = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids[:limit]
        v = table[ids].astype(np.float64).mean(axis=0)
        out.append(v / np.linalg.norm(v))
    return np.array(out)


def test_static_embedding_dir_loads_and_encodes(static_dirs: tuple[Path, Path, np.ndarray, np.ndarray],
                                                tmp_path: Path) -> None:
    st_dir, _, table, _ = static_dirs
    emb = get_embedder(f"st:{st_dir}", device="cpu")
    assert emb.dim == 32
    X = emb.encode(TEXTS)
    assert X.dtype == np.float32 and X.shape == (len(TEXTS), 32) and X.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    # Truncated where its tokenizer truncates (MiniLM's tokenizer.json: 128 tokens), as the reference is.
    assert emb.max_length == 128  # type: ignore[attr-defined]
    np.testing.assert_allclose(X, _reference(st_dir, table, TEXTS, 128), atol=1e-5)
    # A bare path resolves to the same model, and the cache identity is stable and names the limit.
    again = get_embedder(str(st_dir), device="cpu")
    assert again.identity == emb.identity and "max_length=128" in emb.identity
    cached = CachedEmbedder(emb, tmp_path / "cache")
    first = cached.encode(TEXTS)
    second = cached.encode(TEXTS)
    assert cached.cache_misses == len(TEXTS) and cached.cache_hits == len(TEXTS)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, X)
    cached.close()
    # max_length sets the tokenizer's truncation, and enters the identity.
    short = get_embedder(f"st:{st_dir}?max_length=16", device="cpu")
    assert short.max_length == 16 and short.identity != emb.identity  # type: ignore[attr-defined]
    np.testing.assert_allclose(short.encode(TEXTS), _reference(st_dir, table, TEXTS, 16), atol=1e-5)


def test_model2vec_dir_loads_and_encodes(static_dirs: tuple[Path, Path, np.ndarray, np.ndarray]) -> None:
    st_dir, m2v_dir, _, table2 = static_dirs
    emb = get_embedder(f"st:{m2v_dir}", device="cpu")
    assert emb.dim == 24
    X = emb.encode(TEXTS)
    assert X.dtype == np.float32 and X.shape == (len(TEXTS), 24)
    assert emb.max_length is None and "max_length=None" in emb.identity  # type: ignore[attr-defined]
    np.testing.assert_allclose(X, _reference(m2v_dir, table2, TEXTS, None), atol=1e-5)
    # Different weights, different cache identity.
    assert emb.identity != get_embedder(f"st:{st_dir}", device="cpu").identity
    assert get_embedder(str(m2v_dir), device="cpu").identity == emb.identity
