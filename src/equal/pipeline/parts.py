"""The parts the extraction loop is assembled from, and what each one promises.

``ExtractionLoop.step()`` runs one round::

    policy.select(available) -> sampler.take(cluster, n) -> extractor.extract(docs)
      -> for f in filters: f.keep(candidates)        (drops counted under f.name)
      -> embedder.encode(new pairs) -> reward.score(groups) -> policy.update(arms, rewards)
      -> for f in filters: f.add(kept)               (the filters' own incremental indexes)
      -> run_dir.commit(RunState)

Every part is a small object built by the factory from its own frozen config section. A part that keeps
an index (near duplicates, the running distance) updates it with what was kept only, so a round costs the
same at the 10th round and the 1,000th. On resume the loop calls ``add`` once with every pair already in
``qa.jsonl`` (in commit order) to rebuild the indexes; a part must give the same answers after that as it
gave in the uninterrupted run. A part that calls an LLM does so through :class:`~equal.llm.CachedLLM` (no
request is paid twice) and adds its completions to the :class:`~equal.llm.Ledger` it was given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from equal.data.qa import QAPair
from equal.data.records import Document

__all__ = ["Candidates", "ClusterSampler", "Group", "PairFilter", "Reward"]


@dataclass(frozen=True)
class Candidates:
    """The pairs a round's extractor produced that are still in play, with what a filter may need.

    Attributes
    ----------
    pairs : list of QAPair
        In extraction order.
    texts : list of str
        ``pair.render_text()`` of each pair (the text that is embedded and deduplicated).
    documents : mapping of str to Document
        The documents of this round, by id (``pair.doc_id`` looks its document up).
    round : int
        The round number (0-based).
    """

    pairs: list[QAPair]
    texts: list[str]
    documents: Mapping[str, Document]
    round: int

    def __len__(self) -> int:
        return len(self.pairs)

    def subset(self, mask: np.ndarray) -> Candidates:
        """The candidates where ``mask`` (bool, one per pair) is True."""
        keep = [i for i, k in enumerate(np.asarray(mask, dtype=bool).tolist()) if k]
        return Candidates([self.pairs[i] for i in keep], [self.texts[i] for i in keep], self.documents,
                          self.round)


@runtime_checkable
class PairFilter(Protocol):
    """Decides which candidate pairs are kept; drops are counted under :attr:`name`.

    ``keep`` must not change the filter's state (a round may be redone after a crash); ``add`` records the
    pairs finally kept by all filters, in order, so the next round's ``keep`` sees them.
    """

    name: str

    def keep(self, candidates: Candidates) -> np.ndarray:
        """Bool array of shape (len(candidates),): True for the pairs to keep.

        Duplicates *within* ``candidates`` count too: of several equal new pairs the first is kept.
        """
        ...

    def add(self, kept: Candidates) -> None:
        """Insert the kept pairs into the filter's index (no-op for stateless filters)."""
        ...


@dataclass(frozen=True)
class Group:
    """One chosen cluster's new kept pairs in a round, as a reward sees them.

    Attributes
    ----------
    cluster : int
    pairs : list of QAPair
    texts : list of str
    X : ndarray of shape (len(pairs), d), float32
        Unit-norm embeddings of ``texts``.
    """

    cluster: int
    pairs: list[QAPair]
    texts: list[str]
    X: np.ndarray


@runtime_checkable
class Reward(Protocol):
    """Scores each chosen cluster of a round from its new pairs (higher is better).

    ``score`` returns float64 of shape (len(groups),); NaN for a group with no pairs (the loop turns NaN
    into ``bandit.empty_reward``). It must be a pure function of the groups and the reward's fixed inputs
    (target set, model), so a redone round gets the same rewards.
    """

    name: str

    def score(self, groups: Sequence[Group]) -> np.ndarray: ...


@runtime_checkable
class ClusterSampler(Protocol):
    """Which documents of a cluster a round reads next.

    The sampler is a pure function of its config and the cluster labels: ``take(cluster, cursor, n)``
    returns the next at most ``n`` document rows of ``cluster`` after the first ``cursor`` it has handed
    out (int64). The cursors live in the run state, never in the sampler, so resume needs no sampler state.
    """

    def size(self, cluster: int) -> int:
        """Number of documents in ``cluster``."""
        ...

    def take(self, cluster: int, cursor: int, n: int) -> np.ndarray: ...

    def available(self, cursors: Sequence[int], n: int) -> np.ndarray:
        """Bool array, one per cluster: True where a round may still take documents from it.

        With ``partial=False`` (EQUAL) only clusters with at least ``n`` unread documents are available.
        """
        ...
