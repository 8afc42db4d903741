"""Text embeddings behind one interface, with an on-disk cache.

Every embedder returns ``ndarray of shape (n, dim), float32``, C-contiguous, with unit-norm rows by default,
and has an :attr:`~Embedder.identity` string that changes whenever its vectors would; it keys the cache.

>>> from equal.embed import embed_texts
>>> X = embed_texts(["What is 2 + 2?", "Name a prime number."])  # doctest: +SKIP
>>> X.shape, X.dtype  # doctest: +SKIP
((2, 384), dtype('float32'))

Backends: :class:`SentenceTransformerEmbedder` (default: the bundled all-MiniLM-L6-v2, offline),
:class:`HFEmbedder` (any local Hugging Face model, mean / last-token / CLS pooling) and
:class:`OpenAIEmbedder` (any OpenAI-compatible ``/embeddings`` server). Heavy dependencies (torch,
transformers, sentence-transformers, httpx) are imported only when a backend is built.
"""

from equal.embed.base import Embedder, EmbeddingError
from equal.embed.cache import CachedEmbedder, default_cache_dir
from equal.embed.hf import HFEmbedder
from equal.embed.openai_api import OpenAIEmbedder
from equal.embed.registry import EMBEDDER_FORMS, embed_texts, get_embedder
from equal.embed.sentence_transformer import SentenceTransformerEmbedder, default_model_path

__all__ = [
    "EMBEDDER_FORMS",
    "CachedEmbedder",
    "Embedder",
    "EmbeddingError",
    "HFEmbedder",
    "OpenAIEmbedder",
    "SentenceTransformerEmbedder",
    "default_cache_dir",
    "default_model_path",
    "embed_texts",
    "get_embedder",
]
