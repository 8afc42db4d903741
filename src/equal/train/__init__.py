"""Supervised fine-tuning (LoRA or full) on TRL's ``SFTTrainer``: ``equal train``.

- :class:`TrainConfig`: frozen, validated settings; :func:`train` runs them into a CKPT folder, resumably.
- :func:`build_dataset`: SFT records (a path, an ``equal extract`` run, or records in memory) → tokens with an
  assistant-only loss mask, for callers that train inside their own loop.
- :func:`train_lead`: LEAD's in-training selection (``equal train --select lead``), see :mod:`equal.train._lead`.
- :func:`model_folder`: a loadable transformers folder for a CKPT, a model folder or ``"bundled"``.

torch, transformers, peft and trl are imported only when a function needs them.
"""

from __future__ import annotations

from equal.train._config import TrainConfig, TrainProgress, TrainResult
from equal.train._data import SFTDataset, build_dataset, data_sha256, encode, read_examples
from equal.train._lead import (
    IDUUpdate,
    LeadConfig,
    LeadResult,
    difficulty_clusters,
    idu_update,
    lead_reward,
    optimal_beta,
    per_sample_ce,
    train_lead,
    utility_change,
)
from equal.train._trainer import build_trainer, load_tokenizer, model_folder, read_train_json, train, train_flops

__all__ = [
    "IDUUpdate",
    "LeadConfig",
    "LeadResult",
    "SFTDataset",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "build_dataset",
    "build_trainer",
    "data_sha256",
    "difficulty_clusters",
    "encode",
    "idu_update",
    "lead_reward",
    "load_tokenizer",
    "model_folder",
    "optimal_beta",
    "per_sample_ce",
    "read_examples",
    "read_train_json",
    "train",
    "train_flops",
    "train_lead",
    "utility_change",
]
