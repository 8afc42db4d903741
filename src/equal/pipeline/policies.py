"""Per-policy configs of the extraction loop and the builder that turns one into an :mod:`equal.bandit` policy.

Each policy of :data:`equal.bandit.POLICIES` has a frozen config here with its own settings (``[bandit.ucb]
alpha``, ``[bandit.exp3] gamma`` ...). Neighbour credit is passed only to the policies whose registry entry
says they take it (EXP3 has none), so every policy runs with the same command.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from equal.errors import ConfigError

if TYPE_CHECKING:
    from equal.bandit import Policy
    from equal.pipeline.registry import PartContext

__all__ = ["EXP3Config", "EpsilonGreedyConfig", "ThompsonConfig", "UCBConfig", "UniformConfig", "build_policy"]


def _real(name: str, value: object, low: float | None = None, high: float | None = None,
          *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name}={value!r}: must be a finite number")
    if low is not None and (value < low or (low_open and value == low)):
        raise ConfigError(f"{name}={value!r}: must be {'>' if low_open else '>='} {low}")
    if high is not None and value > high:
        raise ConfigError(f"{name}={value!r}: must be <= {high}")
    return float(value)


@dataclass(frozen=True)
class UCBConfig:
    """UCB (EQUAL): ``alpha`` is ``"decay"`` (the paper's 1/(N+1)) or a constant (EQUAL's code: 0.001).

    ``credit`` is how a reward reaches the cluster's neighbours: ``"uniform"`` (EQUAL: each neighbour in the
    run's graph gets it whole) or ``"weighted"`` (Quad: every cluster ``j`` with Fréchet distance
    ``d_cj < tau`` gets ``(1 − d_cj / tau) · r``; Quad's code also uses ``alpha=0.0001``).
    """

    alpha: float | str = "decay"
    credit: str = "uniform"
    tau: float = 0.2

    def __post_init__(self) -> None:
        if isinstance(self.alpha, str):
            if self.alpha != "decay":
                raise ConfigError(f"alpha={self.alpha!r}: must be 'decay' or a number >= 0")
        else:
            object.__setattr__(self, "alpha", _real("alpha", self.alpha, 0.0))
        if self.credit not in ("uniform", "weighted"):
            raise ConfigError(f"credit={self.credit!r}: must be 'uniform' or 'weighted'")
        object.__setattr__(self, "tau", _real("tau", self.tau, 0.0, low_open=True))


@dataclass(frozen=True)
class EXP3Config:
    """EXP3 (LEAD): exploration rate ``gamma`` in (0, 1]."""

    gamma: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "gamma", _real("gamma", self.gamma, 0.0, 1.0, low_open=True))


@dataclass(frozen=True)
class ThompsonConfig:
    """Gaussian Thompson sampling: prior mean and strength, and a known noise level (None: estimated)."""

    prior_mean: float = 0.0
    prior_strength: float = 1.0
    noise_std: float | None = None

    def __post_init__(self) -> None:
        _real("prior_mean", self.prior_mean)
        _real("prior_strength", self.prior_strength, 0.0, low_open=True)
        if self.noise_std is not None:
            _real("noise_std", self.noise_std, 0.0, low_open=True)


@dataclass(frozen=True)
class EpsilonGreedyConfig:
    """Epsilon-greedy: exploration probability in [0, 1]."""

    epsilon: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", _real("epsilon", self.epsilon, 0.0, 1.0))


@dataclass(frozen=True)
class UniformConfig:
    """Uniformly random clusters (no settings)."""


def build_policy(config: Any, ctx: PartContext, *, name: str | None = None, neighbor_credit: bool = True) -> Policy:
    """The bandit policy for ``config`` over ``ctx.n_clusters`` arms, seeded with ``ctx.seed``.

    ``name`` defaults to the registry name of ``config``'s class; neighbours from ``ctx`` are passed only
    when that policy takes them and ``neighbor_credit`` is on.
    """
    from equal.bandit import make_policy
    from equal.pipeline.registry import POLICIES

    if name is None:
        name = next(n for n, s in POLICIES.items() if s.config.endswith(":" + type(config).__name__))
    takes = POLICIES[name].neighbors and neighbor_credit and ctx.neighbors is not None
    kw: dict[str, Any] = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    if isinstance(config, UCBConfig):
        credit, tau = kw.pop("credit"), kw.pop("tau")
        if takes and credit == "weighted":  # Quad: neighbours and weights from the distances themselves
            kw.update(distances=_cluster_distances(ctx), tau=tau)
            return make_policy(name, ctx.n_clusters, seed=ctx.seed, **kw)
    return make_policy(name, ctx.n_clusters, seed=ctx.seed, neighbors=ctx.neighbors if takes else None, **kw)


def _cluster_distances(ctx: PartContext) -> Any:
    """The run's cluster distance matrix (``RUN/embeddings/cluster_distances.npy``, written by the setup)."""
    import numpy as np

    from equal.data.io import load_npy

    run = ctx.run_dir  # a RunDir, or a plain folder
    root = run if run is None or isinstance(run, (str, Path)) else run.root
    path = None if root is None else Path(root) / "embeddings" / "cluster_distances.npy"
    if path is None or not path.exists():
        raise ConfigError("bandit.ucb.credit='weighted' needs the run's cluster distances "
                          f"({path or 'RUN/embeddings/cluster_distances.npy'}); restart the run with --force")
    D = np.asarray(load_npy(path, mmap=False), dtype=np.float64)
    if D.shape != (ctx.n_clusters, ctx.n_clusters):
        raise ConfigError(f"{path}: shape {D.shape} does not match the run's {ctx.n_clusters} clusters")
    return D
