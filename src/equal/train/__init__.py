"""Supervised fine-tuning (LoRA or full) on TRL's ``SFTTrainer``: ``equal train``.

- :class:`TrainConfig`: frozen, validated settings; :func:`train` runs them into a CKPT folder, resumably.
- :func:`build_dataset`: SFT records (a path, an ``equal extract`` run, or records in memory) → tokens with an
  assistant-only loss mask, for callers that train inside their own loop.
- :func:`model_folder`: a loadable transformers folder for a CKPT, a model folder or ``"bundled"``.

torch, transformers, peft and trl are imported only when a function needs them.
"""

from __future__ import annotations

from equal.train._config import TrainConfig, TrainProgress, TrainResult
from equal.train._data import SFTDataset, build_dataset, data_sha256, encode, read_examples
from equal.train._trainer import build_trainer, load_tokenizer, model_folder, read_train_json, train, train_flops

__all__ = [
    "SFTDataset",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "build_dataset",
    "build_trainer",
    "data_sha256",
    "encode",
    "load_tokenizer",
    "model_folder",
    "read_examples",
    "read_train_json",
    "train",
    "train_flops",
]
