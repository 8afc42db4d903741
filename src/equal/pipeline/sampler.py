"""Which documents a round reads: :class:`ClusterSampler` inside clusters, :class:`CorpusOrder` for baselines.

Both are pure functions of their settings and the cluster labels; the cursors (how many documents of each
cluster, or of the corpus, were handed out) live in the run state, so resuming needs no sampler state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from equal.config import DOC_ORDERS

if TYPE_CHECKING:
    from equal.pipeline.registry import PartContext

__all__ = ["ClusterSampler", "CorpusOrder", "build_sampler"]


class ClusterSampler:
    """The documents of each cluster in a fixed order, handed out a batch at a time.

    Parameters
    ----------
    labels : ndarray of shape (n_docs,), int
        Cluster of each document row.
    n_clusters : int
        Number of clusters (clusters without documents are never available).
    order : {"random", "sequential"}, default="random"
        ``"random"``: a seeded permutation per cluster, drawn from its own child stream ``[seed, 1, c]``
        so one cluster's order never depends on another's; ``"sequential"``: corpus order (EQUAL's code
        reads ``members[c][sampled*10 : (sampled+1)*10]``).
    partial : bool, default=True
        Whether a cluster with fewer unread documents than asked for may still be read. EQUAL takes only
        clusters with a full batch left (``partial=False``).
    seed : int, default=0

    Examples
    --------
    >>> s = ClusterSampler(np.array([0, 1, 0, 0, 1]), 2, order="sequential", partial=False)
    >>> s.take(0, 0, 2).tolist(), s.available([2, 0], 2).tolist()
    ([0, 2], [False, True])
    """

    def __init__(self, labels: Any, n_clusters: int, *, order: str = "random", partial: bool = True,
                 seed: int = 0) -> None:
        if order not in DOC_ORDERS:
            raise ValueError(f"order={order!r} must be one of {', '.join(DOC_ORDERS)}.")
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1 or (labels.size and (labels.min() < 0 or labels.max() >= n_clusters)):
            raise ValueError(f"labels must be a 1-D array of ints in [0, n_clusters={n_clusters}).")
        self.order = order
        self.partial = bool(partial)
        self.n_clusters = int(n_clusters)
        by_cluster = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[by_cluster], np.arange(self.n_clusters + 1))
        self._orders: list[np.ndarray] = []
        for c in range(self.n_clusters):
            members = by_cluster[bounds[c]: bounds[c + 1]]  # rows of cluster c, in corpus order
            if order == "random":
                members = members[np.random.default_rng([seed, 1, c]).permutation(len(members))]
            self._orders.append(members.astype(np.int64))
        self._sizes = np.asarray([len(o) for o in self._orders], dtype=np.int64)

    def size(self, cluster: int) -> int:
        """Number of documents in ``cluster``."""
        return int(self._sizes[cluster])

    def take(self, cluster: int, cursor: int, n: int) -> np.ndarray:
        """The next at most ``n`` document rows of ``cluster`` after the first ``cursor``: (m,) int64."""
        return self._orders[cluster][cursor: cursor + n]

    def available(self, cursors: Sequence[int], n: int) -> np.ndarray:
        """Bool (n_clusters,): clusters with unread documents (at least ``n`` of them unless ``partial``)."""
        left = self._sizes - np.asarray(cursors, dtype=np.int64)
        return left >= (1 if self.partial else max(int(n), 1))

    def without(self, rows: Any) -> ClusterSampler:
        """A copy whose orders skip ``rows`` (documents already read, e.g. by the warm-up), the rest in order."""
        import copy

        drop = np.asarray(rows, dtype=np.int64)
        out = copy.copy(self)
        out._orders = [o[~np.isin(o, drop)] for o in self._orders]
        out._sizes = np.asarray([len(o) for o in out._orders], dtype=np.int64)
        return out


class CorpusOrder:
    """One order over the whole corpus, for the baselines: seeded random (``random``) or as read (``all``)."""

    def __init__(self, n_docs: int, *, shuffle: bool, seed: int = 0) -> None:
        self.order = np.random.default_rng([seed, 2]).permutation(n_docs) if shuffle else np.arange(n_docs)
        self.order = self.order.astype(np.int64)

    def take(self, cursor: int, n: int) -> np.ndarray:
        return self.order[cursor: cursor + n]

    def without(self, rows: Any) -> CorpusOrder:
        """A copy whose order skips ``rows`` (documents already read, e.g. by the warm-up)."""
        import copy

        out = copy.copy(self)
        out.order = self.order[~np.isin(self.order, np.asarray(rows, dtype=np.int64))]
        return out


def build_sampler(config: Any, ctx: PartContext, *, labels: Any) -> ClusterSampler:
    """The registry builder: a :class:`ClusterSampler` from a :class:`~equal.config.SamplerConfig`."""
    return ClusterSampler(labels, ctx.n_clusters, order=config.doc_order, partial=config.partial_batches,
                          seed=ctx.seed)
