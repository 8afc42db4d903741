"""Plain Hugging Face backend: any local model directory (encoders and causal LMs) with explicit pooling.

NovelSum embeds instruction data with base LLMs (LLaMA-3-8B, Qwen-2.5-7B through vLLM ``task="embed"``,
truncated to 256 tokens); ``HFEmbedder(path, pooling="last", max_length=256)`` reproduces that setting.
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any, Literal

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

__all__ = ["POOLINGS", "HFEmbedder", "pool_hidden_states"]

logger = logging.getLogger(__name__)

Pooling = Literal["mean", "last", "cls"]
POOLINGS: tuple[str, ...] = ("mean", "last", "cls")
_DTYPES = ("float32", "float16", "bfloat16")


def pool_hidden_states(hidden: Any, mask: Any, pooling: str) -> Any:
    """Pool token states into one vector per sequence.

    Parameters
    ----------
    hidden : torch.Tensor of shape (b, L, h)
        Last-layer token states.
    mask : torch.Tensor of shape (b, L), int
        Attention mask (1 = token, 0 = padding); padding may sit on either side.
    pooling : {"mean", "last", "cls"}
        ``mean`` averages the unmasked tokens; ``last`` takes the last unmasked token (under both left and
        right padding); ``cls`` takes the first unmasked token (the [CLS] token of BERT-style encoders).

    Returns
    -------
    torch.Tensor of shape (b, h), float32
    """
    import torch

    hidden = hidden.float()
    if pooling == "mean":
        m = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    if pooling == "last":
        # Position of the last 1 in each mask row: right padding puts it at len-1, left padding at L-1.
        L = mask.shape[1]
        last = (L - 1) - torch.flip(mask, dims=[1]).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "cls":
        # First unmasked token: position 0 under right padding, the first real token under left padding.
        first = mask.argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]
    raise ValueError(f"pooling={pooling!r} must be one of {POOLINGS}.")


class HFEmbedder(Embedder):
    """Embed with any local Hugging Face model through ``AutoModel`` and explicit pooling.

    Parameters
    ----------
    path : str or path-like
        A local model directory (or a hub name already in the local Hugging Face cache).
    pooling : {"mean", "last", "cls"}, default="mean"
        How token states become one vector; use ``"last"`` for causal LMs embedded like vLLM's
        ``task="embed"``.
    max_length : int, default=256
        Tokens kept per text (truncated from the right).
    normalize : bool, default=True
        L2-normalise the vectors.
    dtype : {"float32", "float16", "bfloat16"} or None, default=None
        Weights and compute dtype; ``None`` is float32 on CPU and bfloat16 on CUDA (float16 where bf16 is
        unsupported). Pooling and normalisation always run in float32.
    device : str or None, default=None
        Torch device; ``None`` or ``"auto"`` picks CUDA when available, else CPU.
    batch_size : int, default=32
        Texts per forward pass.
    padding_side : {"left", "right"} or None, default=None
        Override the tokenizer's padding side. Both give the same vectors: with left padding the position
        ids are computed from the attention mask, as generation does.
    trust_remote_code : bool, default=False
        Passed to ``from_pretrained``.

    Notes
    -----
    A tokenizer without a pad token gets the EOS token (else UNK, BOS, or token id 0) as pad; padded
    positions are masked, so the choice does not change the vectors. Encoder–decoder models use their encoder.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        pooling: Pooling = "mean",
        max_length: int = 256,
        normalize: bool = True,
        dtype: str | None = None,
        device: str | None = None,
        batch_size: int = 32,
        padding_side: Literal["left", "right"] | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} must be one of {POOLINGS}.")
        if padding_side not in (None, "left", "right"):
            raise ValueError(f"padding_side={padding_side!r} must be 'left', 'right' or None.")
        if dtype is not None and dtype not in _DTYPES:
            raise ValueError(f"dtype={dtype!r} must be one of {_DTYPES} or None.")
        self.pooling = pooling
        self.max_length = check_batch_size(max_length, "max_length")
        self.batch_size = check_batch_size(batch_size)
        self.normalize = bool(normalize)
        self.model_dir = resolve_model_dir(path)
        self.device = resolve_device(device)
        ensure_offline()
        try:
            import torch
            import transformers
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            raise ImportError("HFEmbedder needs torch and transformers: pip install 'equal[embed]'.") from exc

        if dtype is None:
            if self.device.startswith("cuda"):
                dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
            else:
                dtype = "float32"
        self.dtype = dtype

        self.tokenizer = AutoTokenizer.from_pretrained(
            str(self.model_dir), local_files_only=True, trust_remote_code=trust_remote_code
        )
        if padding_side is not None:
            self.tokenizer.padding_side = padding_side
        if self.tokenizer.pad_token is None:
            tok = self.tokenizer
            fallback = tok.eos_token or tok.unk_token or tok.bos_token or tok.convert_ids_to_tokens(0)
            tok.pad_token = fallback
            logger.info("tokenizer of %s has no pad token; padding with %r", self.model_dir, fallback)

        # transformers renamed torch_dtype to dtype in 4.56; pyproject allows older versions.
        major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
        dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
        model = AutoModel.from_pretrained(
            str(self.model_dir),
            local_files_only=True,
            trust_remote_code=trust_remote_code,
            **{dtype_kw: getattr(torch, dtype)},
        )
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        self.model = model.to(self.device).eval()
        self._takes_position_ids = "position_ids" in inspect.signature(self.model.forward).parameters
        hidden_size = getattr(self.model.config, "hidden_size", None)
        self._dim = int(hidden_size or self.model.get_input_embeddings().weight.shape[1])
        self._identity = (
            f"hf:name={model_display_name(self.model_dir)};fp={fingerprint_dir(self.model_dir)};pooling={self.pooling}"
            f";max_length={self.max_length};dtype={self.dtype};normalize={int(self.normalize)};dim={self._dim}"
        )
        logger.debug("loaded %s on %s", self._identity, self.device)

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def dim(self) -> int:
        return self._dim

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        ids: list[list[int]] = self.tokenizer(
            texts, truncation=True, max_length=self.max_length, padding=False, return_attention_mask=False
        )["input_ids"]
        # Some tokenizers (GPT-2 style) return no token at all for "", which would leave nothing to pool.
        tok = self.tokenizer
        filler = next(t for t in (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id, 0) if t is not None)
        return [seq if seq else [filler] for seq in ids]

    def _encode(self, texts: list[str], batch_size: int, progress: ProgressFn) -> np.ndarray:
        import torch

        ids = self._tokenize(texts)
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        left = self.tokenizer.padding_side == "left"
        with torch.inference_mode():
            for idx in length_sorted_batches([len(s) for s in ids], batch_size):
                batch = self.tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
                input_ids = batch["input_ids"].to(self.device)
                mask = batch["attention_mask"].to(self.device)
                kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask}
                if left and self._takes_position_ids:
                    # Without this, left-padded rows start at position = number of pads and drift from the
                    # unpadded vectors (HF's generate() does the same correction).
                    kwargs["position_ids"] = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
                hidden = self.model(**kwargs).last_hidden_state
                pooled = pool_hidden_states(hidden, mask, self.pooling)
                out[idx] = pooled.cpu().numpy()
                self.n_batches += 1
                self.n_encoded += len(idx)
                progress(len(idx))
        return out
