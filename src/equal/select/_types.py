"""Result type shared by every selection method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Selection"]


@dataclass(frozen=True)
class Selection:
    """A chosen subset of a pool.

    Attributes
    ----------
    indices : ndarray of shape (k,), int64
        Pool rows, in the order they were selected (methods without an order give them ascending within
        each cluster, clusters in label order).
    scores : ndarray of shape (k,), float64, or None
        The method's score of each pick when it was taken (see each method), or None.
    method : str
        Name of the method, as accepted by :func:`equal.select.select`.
    params : dict
        The parameters the method ran with (seed included), for provenance.
    """

    indices: np.ndarray
    scores: np.ndarray | None
    method: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        idx = np.ascontiguousarray(self.indices, dtype=np.int64)
        idx.setflags(write=False)
        object.__setattr__(self, "indices", idx)
        if self.scores is not None:
            sc = np.ascontiguousarray(self.scores, dtype=np.float64)
            if sc.shape != idx.shape:
                raise ValueError(f"scores has shape {sc.shape}; expected {idx.shape} like indices.")
            sc.setflags(write=False)
            object.__setattr__(self, "scores", sc)

    def __len__(self) -> int:
        return int(self.indices.shape[0])
