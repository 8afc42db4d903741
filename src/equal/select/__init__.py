"""Subset selection from a pool of embeddings.

Every method returns a frozen :class:`Selection` (indices in selection order, optional per-pick scores,
method name, parameters) and is seeded and reproducible.

- :func:`novelselect` — NovelSelect (NovelSum-greedy), exact and fast (lazy bounds).
- :func:`kmq`, :func:`km_random`, :func:`km_closest` — k-means based (Diversify and Conquer).
- :func:`kmq_iterative_round`, :func:`kmq_reweight`, :func:`kmq_labels` — the steps of iterative kMQ around
  training (the loop itself: :func:`equal.pipeline.kmq_iterative.iterative_kmq`).
- :func:`kcenter_greedy`, :func:`random_select`, :func:`deita_select` — baselines.
- :func:`select` — any of them by name.
"""

from equal.select._dispatch import METHODS, select
from equal.select._kmq import (
    allocate_budget,
    km_closest,
    km_random,
    kmq,
    kmq_iterative_round,
    kmq_labels,
    kmq_reweight,
)
from equal.select._novelselect import novelselect
from equal.select._simple import deita_select, kcenter_greedy, random_select
from equal.select._types import Selection

__all__ = [
    "METHODS",
    "Selection",
    "allocate_budget",
    "deita_select",
    "kcenter_greedy",
    "km_closest",
    "km_random",
    "kmq",
    "kmq_iterative_round",
    "kmq_labels",
    "kmq_reweight",
    "novelselect",
    "random_select",
    "select",
]
