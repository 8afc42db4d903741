"""Contrastive document -> QA alignment (EQUAL's warm-up): ``equal align``.

- :class:`AlignConfig`: frozen, validated settings; :func:`align` trains a sentence-transformers encoder so
  that each document lands near the QA pairs it yields, resumably, into a directory ``--embedder st:DIR``
  loads.
- :func:`read_align_data`: documents and their pairs from an ``equal extract`` run or a JSONL of
  ``{document, pairs}``; :func:`mine_rows`: the training rows with mined hard negatives.
- :class:`InfoNCELoss` (built on first use, it needs torch): the loss, with its float64 reference
  :func:`info_nce_reference`.

torch, sentence-transformers and datasets are imported only when a function needs them.
"""

from __future__ import annotations

from typing import Any

from equal.align._config import AlignConfig, AlignProgress, AlignResult, parse_negative_range
from equal.align._data import AlignExample, AlignRows, data_sha256, examples_from_pairs, mine_rows, read_align_data
from equal.align._loss import info_nce_reference
from equal.align._train import align, read_align_json, resolve_base

__all__ = [
    "AlignConfig",
    "AlignExample",
    "AlignProgress",
    "AlignResult",
    "AlignRows",
    "InfoNCELoss",
    "align",
    "data_sha256",
    "examples_from_pairs",
    "info_nce_reference",
    "mine_rows",
    "parse_negative_range",
    "read_align_data",
    "read_align_json",
    "resolve_base",
]


def __getattr__(name: str) -> Any:
    if name == "InfoNCELoss":
        from equal.align import _loss

        return _loss.InfoNCELoss
    raise AttributeError(name)
