"""Running OT distance of a growing set to a target, on a fixed-size reservoir sample (cost per round O(1) in n)."""

from __future__ import annotations

from typing import Any

import numpy as np

from equal._validation import SeedLike, as_generator, check_embeddings
from equal.ot._common import check_int
from equal.ot._cost import Cost, check_cost
from equal.ot._distance import Method, _check_method, distance

__all__ = ["RUNNING_BETA", "RunningDistance"]

RUNNING_BETA = 0.25
"""IPOT's proximal step in :class:`RunningDistance` unless ``beta=`` is given (the value, not the path, matters)."""

# splitmix64 constants (Steele et al. 2014); they define the reservoir's choices, so they never change.
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _uniform(key: np.uint64, index: np.ndarray) -> np.ndarray:
    """A uniform float64 in [0, 1) for each stream position, a pure function of (key, position)."""
    with np.errstate(over="ignore"):
        h = index.astype(np.uint64) * _GAMMA + key  # wraps modulo 2**64, as splitmix64 intends
        h ^= h >> np.uint64(30)
        h *= _M1
        h ^= h >> np.uint64(27)
        h *= _M2
        h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


class RunningDistance:
    """OT distance of everything added so far to a fixed target, estimated on a reservoir sample.

    Embeddings are streamed in with :meth:`add`; a uniform random sample of at most ``capacity`` of them
    is kept (reservoir sampling, Algorithm R) and :meth:`value` is the OT distance
    (:func:`equal.ot.distance`) of that sample to the target: exact while everything fits, an estimate
    afterwards whose cost per call does not grow with the number added.

    Parameters
    ----------
    target : ndarray of shape (m, d), float32
        The target embeddings.
    capacity : int, default=2048
        Reservoir size.
    seed : int, Generator or None, default=0
        Seed of the reservoir's choices (one key is drawn from it here).
    method : {"ipot", "sinkhorn", "exact"}, default="ipot"
        OT solver of :func:`equal.ot.distance`.
    cost : {"euclidean", "cosine", "sqeuclidean"}, default="euclidean"
        Ground cost; unit-norm rows are required only for ``"cosine"``.
    device : str or None, default=None
        Torch device for the solver (None: numpy).
    **kw
        Other solver settings, passed to :func:`equal.ot.distance` (``tol``, ``max_iter``, ...). IPOT's
        ``beta`` defaults to :data:`RUNNING_BETA` (0.25): the same distance to IPOT's certified ``tol``
        as the reward's β=1, in about a quarter of the iterations.

    Attributes
    ----------
    n_seen : int
        Rows added so far.

    Notes
    -----
    Stream position ``i >= capacity`` draws ``j = floor(u_i (i + 1))`` and replaces slot ``j`` when
    ``j < capacity`` (Vitter's Algorithm R), so every row seen is in the sample with probability
    ``capacity / n_seen``. ``u_i`` is a hash (splitmix64) of the seed's key and ``i``, not the next draw
    of a generator: the sample depends only on the sequence of rows and the seed, not on how the
    sequence was cut into :meth:`add` calls, and a run resumed by re-adding its rows (or from
    :meth:`state_dict`) continues identically. :meth:`add` costs O(rows added x d); :meth:`value` solves
    one ``min(n_seen, capacity) x m`` problem, only when the sample changed since the last call.

    By the triangle inequality for the Euclidean cost, ``|value() - W(all, target)| <= W(sample, all)``,
    which shrinks as the capacity grows (see ``tests/test_running_ot.py`` and ``benchmarks/bench_loop.py``).

    Examples
    --------
    >>> import numpy as np
    >>> Y = np.eye(3, dtype=np.float32)
    >>> rd = RunningDistance(Y, capacity=2)
    >>> rd.add(Y[:1])
    >>> round(rd.value(), 4), rd.n_seen
    (0.9428, 1)
    """

    def __init__(
        self,
        target: Any,
        *,
        capacity: int = 2048,
        seed: SeedLike = 0,
        method: Method = "ipot",
        cost: Cost = "euclidean",
        device: str | None = None,
        **kw: Any,
    ) -> None:
        self.method = _check_method(method)
        self.cost = check_cost(cost)
        self.target = check_embeddings(target, name="target", normalized=self.cost == "cosine")
        self.capacity = check_int("capacity", capacity, 1)
        self.device = device
        self._kw = dict(kw)
        if self.method == "ipot":
            # IPOT converges to the exact OT cost for any beta; 0.25 needs about 4x fewer iterations than
            # the reward's beta=1 for the same certified tolerance (β >= ~0.2 suffices for costs in [0, 2]).
            self._kw.setdefault("beta", RUNNING_BETA)
        self._key = as_generator(seed).integers(0, 2**64, dtype=np.uint64)
        self._buf = np.empty((self.capacity, self.target.shape[1]), dtype=np.float32)
        self.n_seen = 0
        self._value: float | None = None

    def add(self, X: Any) -> None:
        """Stream rows into the reservoir.

        Parameters
        ----------
        X : ndarray of shape (n, d), float32
            New embeddings (n may be 0), same ``d`` as the target.
        """
        X_ = check_embeddings(X, name="X", normalized=self.cost == "cosine", min_rows=0, dim=self.target.shape[1])
        n, start, cap = X_.shape[0], self.n_seen, self.capacity
        fill = min(max(cap - start, 0), n)
        if fill:
            self._buf[start : start + fill] = X_[:fill]
            self._value = None
        if fill < n:
            pos = np.arange(start + fill, start + n, dtype=np.int64)
            slot = np.minimum(np.floor(_uniform(self._key, pos) * (pos + 1)).astype(np.int64), pos)
            hit = np.flatnonzero(slot < cap)
            if hit.size:
                # Sequential semantics: of several rows drawn into one slot, the last one stays.
                rev = hit[::-1]
                _, first = np.unique(slot[rev], return_index=True)
                last = rev[first]
                self._buf[slot[last]] = X_[fill + last]
                self._value = None
        self.n_seen = start + n

    @property
    def sample(self) -> np.ndarray:
        """The reservoir, shape (min(n_seen, capacity), d), float32 (a copy)."""
        return self._buf[: min(self.n_seen, self.capacity)].copy()

    @property
    def exact(self) -> bool:
        """Whether the sample holds every row added (``n_seen <= capacity``)."""
        return self.n_seen <= self.capacity

    def value(self) -> float | None:
        """OT distance of the sample to the target; None before any row was added.

        Returns
        -------
        float or None
            ``distance(sample, target, method=..., cost=..., **kw)``, recomputed only when the sample
            changed.
        """
        if self.n_seen == 0:
            return None
        if self._value is None:
            sample = self._buf[: min(self.n_seen, self.capacity)]
            self._value = distance(sample, self.target, method=self.method, cost=self.cost,  # type: ignore[arg-type]
                                   device=self.device, **self._kw)
        return self._value

    def state_dict(self) -> dict[str, Any]:
        """The reservoir's state: ``{"n_seen": int, "sample": ndarray (min(n_seen, capacity), d) float32}``."""
        return {"n_seen": self.n_seen, "sample": self.sample}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (into an instance built with the same target, capacity and seed).

        Raises
        ------
        ValueError
            When ``sample`` does not have ``min(n_seen, capacity)`` rows of the target's ``d``.
        """
        n_seen = check_int("n_seen", state.get("n_seen"), 0)
        rows = min(n_seen, self.capacity)
        sample = check_embeddings(state.get("sample"), name="sample", normalized=self.cost == "cosine",
                                  min_rows=0, dim=self.target.shape[1])
        if sample.shape[0] != rows:
            raise ValueError(f"sample has {sample.shape[0]} rows; expected min(n_seen={n_seen}, "
                             f"capacity={self.capacity}) = {rows}.")
        self._buf[:rows] = sample
        self.n_seen = n_seen
        self._value = None
