"""Negative log-likelihood of reference answers under a causal LM (transformers), assistant tokens only.

Each example is rendered with the model's chat template twice: the prompt turns with the generation prompt
(``<|im_start|>assistant\\n``), and the prompt turns plus the reference as an assistant turn. The scored
tokens are those of the second rendering after the common token prefix of the two: the reference's content
and its end-of-turn tokens. This is the loss mask of ``equal train`` and of TRL's conversational
prompt-completion format, so the NLL measured here is the training loss on held-out data.

The mean per-token NLL is token-weighted, ``sum of all scored tokens' NLL / number of scored tokens`` (the
quantity a language-model loss and perplexity ``exp(nll)`` are defined on); the per-example means are kept
as well. Sequences longer than ``max_length`` lose their first tokens (the prompt's start), so the reference
is scored as far as the window allows; such examples are counted as truncated.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from equal._threads import torch_threads
from equal.errors import ConfigError

__all__ = ["NLLScores", "nll_scores", "score_tokens"]

logger = logging.getLogger(__name__)

_DTYPES = ("float32", "float64", "bfloat16", "float16")


@dataclass(frozen=True)
class NLLScores:
    """Per-example NLL of the reference tokens.

    Attributes
    ----------
    nll_sum : ndarray of shape (n,), float64
        Summed NLL (nats) of each example's scored tokens.
    tokens : ndarray of shape (n,), int64
        Scored tokens per example.
    truncated : ndarray of shape (n,), bool
        Whether the example was cut to ``max_length``.
    """

    nll_sum: np.ndarray
    tokens: np.ndarray
    truncated: np.ndarray

    @property
    def nll(self) -> float:
        """Token-weighted mean NLL (nats per token)."""
        total = int(self.tokens.sum())
        return float(self.nll_sum.sum() / total) if total else float("nan")

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.nll))


def score_tokens(tokenizer: Any, prompt: Sequence[dict[str, str]], reference: str) -> tuple[list[int], int]:
    """Token ids of ``prompt + [assistant: reference]`` and the index of the first scored token.

    Parameters
    ----------
    tokenizer : transformers tokenizer with a chat template
    prompt : list of dict
        The turns before the reference.
    reference : str
        The assistant answer to score.

    Returns
    -------
    (list of int, int)
        ``ids`` and ``start``: tokens ``ids[start:]`` are scored.
    """
    msgs = [dict(m) for m in prompt]
    prompt_text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template([*msgs, {"role": "assistant", "content": reference}],
                                              tokenize=False)
    p_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    start = 0
    for a, b in zip(p_ids, ids, strict=False):
        if a != b:
            break
        start += 1
    if start < len(p_ids):
        logger.warning("the chat template's prompt is not a token prefix of prompt + answer (%d of %d tokens "
                       "shared); scoring from the first difference", start, len(p_ids))
    return list(ids), start


def _load(model_dir: Path, dtype: str, device: str) -> tuple[Any, Any, Any]:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("--metric nll needs torch and transformers: pip install 'equal[llm]'") from exc
    from transformers.utils import logging as hf_logging

    if device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # library code prints nothing
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype))
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"model={str(model_dir)!r}: the tokenizer has no chat template.")
    model.to(dev)
    model.eval()
    return tokenizer, model, dev


def nll_scores(
    model_dir: str | os.PathLike[str],
    prompts: Sequence[Sequence[dict[str, str]]],
    references: Sequence[str],
    *,
    batch_size: int = 8,
    max_batch_tokens: int = 4096,
    max_length: int | None = None,
    dtype: str = "float32",
    device: str = "auto",
    threads: int | None = None,
    on_progress: Any = None,
) -> NLLScores:
    """NLL of each reference given its prompt (see the module docstring), batched, without gradients.

    Parameters
    ----------
    model_dir : str or Path
        A transformers causal-LM folder with a chat template.
    prompts : sequence of message lists
    references : sequence of str
        One reference answer per prompt.
    batch_size : int, default=8
        Most sequences per forward pass.
    max_batch_tokens : int, default=4096
        Most (padded) tokens per forward pass, which bounds the logits' memory.
    max_length : int, optional
        Context window; default the model's ``max_position_embeddings``.
    dtype : {"float32", "float64", "bfloat16", "float16"}, default="float32"
    device : str, default="auto"
        CUDA when available, else CPU; or any torch device.
    threads : int, optional
        torch CPU threads (default: the available cores; restored afterwards).
    on_progress : callable, optional
        ``on_progress(done, total)`` after each batch.

    Returns
    -------
    NLLScores
    """
    if len(prompts) != len(references):
        raise ValueError(f"{len(prompts)} prompts but {len(references)} references.")
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype={dtype!r} must be one of {', '.join(_DTYPES)}.")
    for name, value in (("batch_size", batch_size), ("max_batch_tokens", max_batch_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r} must be an integer >= 1.")
    import torch

    n = len(prompts)
    nll_sum = np.zeros(n, dtype=np.float64)
    tokens = np.zeros(n, dtype=np.int64)
    truncated = np.zeros(n, dtype=bool)
    with torch_threads(threads):
        tokenizer, model, dev = _load(Path(model_dir), dtype, device)
        window = max_length or int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        seqs: list[tuple[list[int], int]] = []
        for i, (prompt, ref) in enumerate(zip(prompts, references, strict=True)):
            ids, start = score_tokens(tokenizer, prompt, ref)
            if window is not None and len(ids) > window:
                cut = len(ids) - window
                ids, start, truncated[i] = ids[cut:], max(1, start - cut), True
            seqs.append((ids, max(1, start)))  # the first token has no context to be predicted from
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        order = sorted(range(n), key=lambda i: -len(seqs[i][0]))
        done = 0
        pos = 0
        while pos < n:
            longest = len(seqs[order[pos]][0])
            rows = max(1, min(batch_size, max_batch_tokens // max(longest, 1)))
            idx = order[pos:pos + rows]
            pos += len(idx)
            input_ids = torch.full((len(idx), longest), int(pad), dtype=torch.long)
            attn = torch.zeros((len(idx), longest), dtype=torch.long)
            labels = torch.full((len(idx), longest), -100, dtype=torch.long)
            for r, i in enumerate(idx):
                ids, start = seqs[i]
                t = torch.tensor(ids, dtype=torch.long)
                input_ids[r, :len(ids)] = t
                attn[r, :len(ids)] = 1
                labels[r, start:len(ids)] = t[start:]
            with torch.inference_mode():
                logits = model(input_ids=input_ids.to(dev), attention_mask=attn.to(dev)).logits
                # position t predicts token t + 1; right padding leaves real positions unchanged
                shift_logits = logits[:, :-1, :].float() if logits.dtype != torch.float64 else logits[:, :-1, :]
                shift_labels = labels[:, 1:].to(dev)
                nll = torch.nn.functional.cross_entropy(
                    shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                    ignore_index=-100, reduction="none",
                ).view(len(idx), -1)
                per_row = nll.to(torch.float64).sum(dim=1).cpu().numpy()
                counts = (shift_labels != -100).sum(dim=1).cpu().numpy()
            for r, i in enumerate(idx):
                nll_sum[i] = float(per_row[r])
                tokens[i] = int(counts[r])
            done += len(idx)
            if on_progress is not None:
                on_progress(done, n)
    return NLLScores(nll_sum=nll_sum, tokens=tokens, truncated=truncated)
