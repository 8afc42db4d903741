"""Cluster rewards of the extraction loop (see :class:`equal.pipeline.parts.Reward`) and the running distance.

``ot`` is EQUAL's reward: ``1 − W − offset`` with ``W`` the OT distance between a cluster's new pairs and
the target sample (IPOT, Euclidean cost on unit vectors, uniform weights), all clusters of a round solved
in one batch. ``judge`` (an LLM scores the pairs' relevance) lives in :mod:`equal.pipeline.judge`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from equal.errors import ConfigError

if TYPE_CHECKING:
    from equal.pipeline.parts import Group
    from equal.pipeline.registry import PartContext

__all__ = ["OTReward", "OTRewardConfig", "RunningOT", "build_judge", "build_ot"]


@dataclass(frozen=True)
class OTRewardConfig:
    """Settings of the ``ot`` reward: ``reward = 1 − W − offset``.

    ``method``/``cost`` and the solver settings are those of :func:`equal.ot.distance`; the defaults stop
    IPOT at a certified relative error of 1e-3. EQUAL's code runs ``beta=1, max_iter=500, inner_iter=10``
    with no stopping rule (``tol=0``) and ``offset=0.12``.
    """

    offset: float = 0.0
    method: str = "ipot"
    cost: str = "euclidean"
    beta: float = 1.0
    max_iter: int = 2000
    inner_iter: int = 1
    tol: float = 1e-3

    def __post_init__(self) -> None:
        from equal.ot import COSTS, METHODS

        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r}: must be one of {', '.join(METHODS)}")
        if self.cost not in COSTS:
            raise ConfigError(f"cost={self.cost!r}: must be one of {', '.join(COSTS)}")
        for name in ("max_iter", "inner_iter"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int) \
                    or getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be an int >= 1")
        if not self.beta > 0:
            raise ConfigError(f"beta={self.beta!r}: must be > 0")
        if not self.tol >= 0:
            raise ConfigError(f"tol={self.tol!r}: must be >= 0")

    def solver_kw(self) -> dict[str, Any]:
        """Keyword arguments of :func:`equal.ot.distance` / ``distance_batch`` for these settings."""
        kw: dict[str, Any] = {"method": self.method, "cost": self.cost}
        if self.method == "ipot":
            kw.update(beta=self.beta, max_iter=self.max_iter, inner_iter=self.inner_iter, tol=self.tol)
        elif self.method == "sinkhorn":
            kw.update(max_iter=self.max_iter, tol=self.tol)
        else:
            kw.update(max_iter=self.max_iter)
        return kw


def _values(result: Any) -> np.ndarray:
    """``distance_batch`` returns an array of costs, or a batched result holding them in ``cost``."""
    return np.asarray(getattr(result, "cost", result), dtype=np.float64).reshape(-1)


class OTReward:
    """EQUAL's reward: ``1 − OT(new pairs of the cluster, target) − offset``; NaN for a cluster that kept none.

    Parameters
    ----------
    target_emb : ndarray of shape (m, d), float32
        Unit-norm embeddings of the target sample.
    config : OTRewardConfig
    """

    name = "ot"

    def __init__(self, target_emb: np.ndarray, config: OTRewardConfig) -> None:
        self.target_emb = np.ascontiguousarray(target_emb, dtype=np.float32)
        self.config = config

    def distances(self, groups: Sequence[Group]) -> np.ndarray:
        """OT distance of each group to the target (NaN for an empty group): (len(groups),) float64."""
        from equal.ot import distance_batch

        w = np.full(len(groups), np.nan)
        nonempty = [i for i, g in enumerate(groups) if len(g.X)]
        if nonempty:
            w[nonempty] = _values(distance_batch([groups[i].X for i in nonempty], self.target_emb,
                                                 **self.config.solver_kw()))
        return w

    def score(self, groups: Sequence[Group]) -> np.ndarray:
        return 1.0 - self.distances(groups) - self.config.offset


def build_ot(config: OTRewardConfig, ctx: PartContext) -> OTReward:
    return OTReward(ctx.target_emb, config)


def build_judge(config: Any, ctx: PartContext) -> Any:
    from equal.pipeline.judge import JudgeReward

    if ctx.llm is None:
        raise ConfigError("reward.reward='judge' needs an LLM (extract.extractor=llm or llm settings)")
    return JudgeReward(ctx.llm(), ctx.target_texts, config, ledger=ctx.ledger)


class RunningOT:
    """OT distance of everything kept so far to the target, at a per-round cost that does not grow.

    Each round reads :class:`equal.ot.RunningDistance` (a fixed-size seeded reservoir sample of what was
    added; exact while fewer than ``capacity`` rows were added). The rows themselves are kept too, so that
    the exact distance of every kept pair can be computed once, at the end of the run.
    """

    def __init__(self, target_emb: np.ndarray, *, capacity: int = 2048, seed: int = 0) -> None:
        from equal.ot import RunningDistance

        self.target_emb = np.ascontiguousarray(target_emb, dtype=np.float32)
        self._rows: list[np.ndarray] = []
        self.n = 0
        self._running = RunningDistance(self.target_emb, capacity=capacity, seed=seed, method="ipot")

    def add(self, X: np.ndarray) -> None:
        if not len(X):
            return
        self.n += len(X)
        self._rows.append(np.ascontiguousarray(X, dtype=np.float32))
        self._running.add(X)

    def all_rows(self) -> np.ndarray:
        """Every row added, in order: (n, d) float32."""
        if not self._rows:
            return np.zeros((0, self.target_emb.shape[1]), dtype=np.float32)
        if len(self._rows) > 1:
            self._rows = [np.concatenate(self._rows)]
        return self._rows[0]

    def value(self) -> float | None:
        """The running distance (None before any row)."""
        return None if self.n == 0 else float(self._running.value())

    def exact(self) -> float | None:
        """The exact distance of all rows (computed once, at the end of a run)."""
        from equal.ot import distance

        return float(distance(self.all_rows(), self.target_emb)) if self.n else None
