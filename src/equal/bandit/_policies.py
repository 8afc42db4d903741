"""Bandit policies over clusters: UCB (EQUAL, Quad), EXP3 (LEAD), Thompson, epsilon-greedy, uniform."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from equal._validation import SeedLike
from equal.bandit._base import Policy, _as_int_lists, _check_float

__all__ = ["EXP3", "UCB", "EpsilonGreedy", "ThompsonSampling", "Uniform", "make_policy"]


class _CreditPolicy(Policy):
    """A policy that keeps per-arm reward sums and counts, crediting each reward to the arm's neighbours.

    For every played arm ``c`` with reward ``r`` and every ``j`` in ``neighbors[c]`` (which contains ``c``):
    ``sums[j] += w_cj · r``, ``counts[j] += 1`` and ``total += 1``, with ``w_cj = 1`` unless
    ``neighbor_weights`` are given (Quad: ``w_cj = 1 − d_cj / τ``; the count still grows by 1, as in Quad's
    code). Without ``neighbors`` each arm is its own only neighbour. ``pulls[c]`` counts real plays.
    """

    def __init__(
        self,
        n_arms: int,
        *,
        seed: SeedLike = None,
        neighbors: Sequence[Sequence[int]] | None = None,
        neighbor_weights: Sequence[Sequence[float]] | None = None,
    ) -> None:
        super().__init__(n_arms, seed=seed)
        self._neighbors = _as_int_lists("neighbors", neighbors, self.n_arms)
        self._weights: list[list[float]] | None = None
        if neighbor_weights is not None:
            if self._neighbors is None:
                raise ValueError("neighbor_weights needs neighbors (one weight per listed neighbour).")
            if len(neighbor_weights) != self.n_arms:
                raise ValueError(
                    f"neighbor_weights must hold one list per arm (n_arms={self.n_arms}); "
                    f"got {len(neighbor_weights)}."
                )
            weights = []
            for c, (nb, w) in enumerate(zip(self._neighbors, neighbor_weights, strict=True)):
                w_arr = np.asarray(w, dtype=np.float64)
                if w_arr.shape != (len(nb),) or not np.isfinite(w_arr).all():
                    raise ValueError(
                        f"neighbor_weights[{c}] must hold {len(nb)} finite weights (one per neighbour); "
                        f"got {list(w)!r}."
                    )
                weights.append([float(x) for x in w_arr])
            self._weights = weights
        self._sums = np.zeros(self.n_arms)
        self._counts = np.zeros(self.n_arms, dtype=np.int64)
        self._pulls = np.zeros(self.n_arms, dtype=np.int64)
        self._total = 0

    @property
    def sums(self) -> np.ndarray:
        """Credited reward sums: ndarray of shape (n_arms,), float64."""
        return self._sums.copy()

    @property
    def counts(self) -> np.ndarray:
        """Credited observation counts (including neighbour credit): ndarray of shape (n_arms,), int64."""
        return self._counts.copy()

    @property
    def pulls(self) -> np.ndarray:
        """Times each arm was played: ndarray of shape (n_arms,), int64."""
        return self._pulls.copy()

    @property
    def total(self) -> int:
        """Sum of ``counts`` (EQUAL's ``sum_chose``)."""
        return self._total

    def mean_rewards(self) -> np.ndarray:
        """``sums / counts``, 0 where an arm has no credit yet: ndarray of shape (n_arms,), float64."""
        safe = np.maximum(self._counts, 1)
        return np.where(self._counts > 0, self._sums / safe, 0.0)

    def _update(self, arms: np.ndarray, rewards: np.ndarray) -> None:
        for c, r in zip(arms.tolist(), rewards.tolist(), strict=True):
            self._pulls[c] += 1
            if self._neighbors is None:
                self._sums[c] += r
                self._counts[c] += 1
                self._total += 1
                continue
            nb = self._neighbors[c]
            w = self._weights[c] if self._weights is not None else None
            for t, j in enumerate(nb):
                self._sums[j] += r if w is None else w[t] * r
                self._counts[j] += 1
            self._total += len(nb)
        self._observe(rewards)

    def _observe(self, rewards: np.ndarray) -> None:
        """Hook for policies that also track the raw rewards."""

    def _params(self) -> dict[str, Any]:
        return {"neighbors": self._neighbors, "neighbor_weights": self._weights}

    def _get_state(self) -> dict[str, Any]:
        return {
            "sums": self._sums.tolist(),
            "counts": self._counts.tolist(),
            "pulls": self._pulls.tolist(),
            "total": self._total,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        sums = np.asarray(state["sums"], dtype=np.float64)
        counts = np.asarray(state["counts"], dtype=np.int64)
        pulls = np.asarray(state["pulls"], dtype=np.int64)
        for key, arr in (("sums", sums), ("counts", counts), ("pulls", pulls)):
            if arr.shape != (self.n_arms,):
                raise ValueError(f"state['state']['{key}'] must have {self.n_arms} entries; got {arr.shape}.")
        self._sums, self._counts, self._pulls = sums, counts, pulls
        self._total = int(state["total"])


class UCB(_CreditPolicy):
    r"""Upper confidence bound with neighbour credit: EQUAL's default cluster policy (and Quad's).

    .. math::

        \mathrm{UCB}_c = \bar r_c + \alpha \sqrt{\frac{2 \ln N}{n_c + 1}}

    where :math:`\bar r_c` = credited reward sum / credited count (0 before any credit), :math:`n_c` the
    credited count, :math:`N` the total of credited counts (EQUAL's ``sum_chose``; the log term is 0 while
    ``N = 0``). ``select`` is deterministic: the top ``n`` available arms by UCB, ties to the smaller index,
    so the first round picks arms 0, 1, 2, ... exactly like EQUAL's ``mab.py``.

    Parameters
    ----------
    n_arms : int
        Number of arms (clusters).
    seed : int, Generator or None, default=None
        Unused (UCB is deterministic); kept for the common interface.
    alpha : "decay" or float, default="decay"
        Exploration weight. "decay" is the paper's ``α = 1 / (N + 1)``; a float is a constant (EQUAL's
        released code uses 0.001, Quad's 0.0001).
    neighbors : list of k lists of int, or None, default=None
        ``neighbors[c]`` receives the credit of a reward of ``c`` and must contain ``c`` (e.g. from
        :func:`equal.cluster.neighbor_graph`). ``None``: each arm alone.
    neighbor_weights : list of k lists of float, or None, default=None
        Weight of each neighbour's share of the reward (aligned with ``neighbors``).
    distances : ndarray of shape (k, k) or None, default=None
        Quad's weighted credit: with ``tau``, sets ``neighbor_weights = 1 − d / tau`` and, when
        ``neighbors`` is None, ``neighbors[c] = {j : d_cj < tau} ∪ {c}``. Only the weights are stored.
    tau : float or None, default=None
        Quad's distance threshold (0.2 in Quad and EQUAL); required with ``distances``.

    Notes
    -----
    With ``alpha="decay"`` (or EQUAL's 0.001) the bonus is tiny next to reward differences, so the policy is
    nearly greedy: EQUAL explores through the many clusters it reads per round (50) and the neighbour
    credit, not through the bonus. Picking one arm per round with it can lock onto the first arm that
    earns a positive reward; use a constant ``alpha`` of the order of the reward spread (UCB1: 1 for
    rewards in [0, 1]) for classic exploration.
    """

    name = "ucb"

    def __init__(
        self,
        n_arms: int,
        *,
        seed: SeedLike = None,
        alpha: float | str = "decay",
        neighbors: Sequence[Sequence[int]] | None = None,
        neighbor_weights: Sequence[Sequence[float]] | None = None,
        distances: object = None,
        tau: float | None = None,
    ) -> None:
        if distances is not None:
            if neighbor_weights is not None:
                raise ValueError("Give either distances (with tau) or neighbor_weights, not both.")
            if tau is None:
                raise ValueError("distances needs tau (Quad's threshold, e.g. 0.2).")
            tau = _check_float("tau", tau, 0.0, low_open=True)
            D = np.asarray(distances, dtype=np.float64)
            if D.shape != (n_arms, n_arms):
                raise ValueError(
                    f"distances must have shape (n_arms, n_arms) = ({n_arms}, {n_arms}); got {D.shape}."
                )
            if neighbors is None:
                near = np.less(D, tau)
                np.fill_diagonal(near, True)
                neighbors = [np.flatnonzero(row).tolist() for row in near]
            # 1 − d/τ, Quad's weight; the arm itself gets 1 and arms beyond τ (if listed) get 0.
            neighbor_weights = [
                np.clip(1.0 - np.where(np.asarray(nb) == c, 0.0, D[c, list(nb)]) / tau, 0.0, None).tolist()
                for c, nb in enumerate(neighbors)
            ]
        elif tau is not None:
            raise ValueError("tau is only used together with distances.")
        if isinstance(alpha, str):
            if alpha != "decay":
                raise ValueError(f"alpha={alpha!r} must be 'decay' or a float >= 0.")
        else:
            alpha = _check_float("alpha", alpha, 0.0)
        self.alpha = alpha
        super().__init__(n_arms, seed=seed, neighbors=neighbors, neighbor_weights=neighbor_weights)

    def current_alpha(self) -> float:
        """The exploration weight the next :meth:`select` uses."""
        return 1.0 / (self._total + 1.0) if self.alpha == "decay" else float(self.alpha)

    def scores(self) -> np.ndarray:
        """UCB of every arm: ndarray of shape (n_arms,), float64."""
        log_total = np.log(self._total) if self._total > 0 else 0.0
        bonus = self.current_alpha() * np.sqrt(2.0 * log_total / (self._counts + 1.0))
        return self.mean_rewards() + bonus

    def _select(self, m: int, candidates: np.ndarray) -> np.ndarray:
        return self._top(self.scores(), candidates, m)

    def _params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, **super()._params()}


class EXP3(Policy):
    r"""EXP3 as in LEAD's ``exp3.py``: exponential weights with uniform exploration.

    .. math::

        p_i = (1 - \gamma) \frac{w_i}{\sum_j w_j} + \frac{\gamma}{K}, \qquad
        w_c \leftarrow w_c \exp\Big(\frac{\gamma}{K} \frac{\hat r}{p_c}\Big)

    with ``K = n_arms`` and ``r̂`` the reward rescaled to [−1, 1] by the min and max of every reward seen so
    far, the current one included (the raw reward while fewer than two have been seen; 0 while all are
    equal, where LEAD's code divides by zero). As in LEAD, ``p`` is recomputed from the current weights
    at each update and the rewards of a round are applied one after the other. Weights are kept as
    log-weights so they never overflow.

    ``select(n)`` draws ``n`` distinct arms without replacement from ``p`` restricted to the available arms
    (LEAD draws one arm per iteration). There is no neighbour credit.

    Parameters
    ----------
    n_arms : int
        Number of arms.
    seed : int, Generator or None, default=None
        Randomness of the draws.
    gamma : float, default=0.1
        Exploration rate in (0, 1] (LEAD's ``--beta``).
    """

    name = "exp3"

    def __init__(self, n_arms: int, *, seed: SeedLike = None, gamma: float = 0.1) -> None:
        super().__init__(n_arms, seed=seed)
        self.gamma = _check_float("gamma", gamma, 0.0, 1.0, low_open=True)
        self._log_w = np.zeros(self.n_arms)
        self._r_min: float | None = None
        self._r_max: float | None = None
        self._n_rewards = 0

    def probabilities(self) -> np.ndarray:
        """``p`` over all arms: ndarray of shape (n_arms,), float64, summing to 1."""
        w = np.exp(self._log_w - self._log_w.max())
        return (1.0 - self.gamma) * w / w.sum() + self.gamma / self.n_arms

    def scores(self) -> np.ndarray:
        """The selection probabilities ``p``: ndarray of shape (n_arms,), float64."""
        return self.probabilities()

    def _normalize(self, r: float) -> float:
        lo, hi = self._r_min, self._r_max
        if self._n_rewards < 2 or lo is None or hi is None:
            return r
        if hi == lo:
            return 0.0
        return 2.0 * (r - lo) / (hi - lo) - 1.0

    def _update(self, arms: np.ndarray, rewards: np.ndarray) -> None:
        for c, r in zip(arms.tolist(), rewards.tolist(), strict=True):
            self._n_rewards += 1
            self._r_min = r if self._r_min is None else min(self._r_min, r)
            self._r_max = r if self._r_max is None else max(self._r_max, r)
            r_hat = self._normalize(r)
            p_c = self.probabilities()[c]
            self._log_w[c] += (self.gamma / self.n_arms) * r_hat / p_c
        # Shift so the largest log-weight is 0; probabilities are unchanged.
        self._log_w -= self._log_w.max()

    def _select(self, m: int, candidates: np.ndarray) -> np.ndarray:
        p = self.probabilities()[candidates]
        return self._rng.choice(candidates, size=m, replace=False, p=p / p.sum())

    def _params(self) -> dict[str, Any]:
        return {"gamma": self.gamma}

    def _get_state(self) -> dict[str, Any]:
        return {
            "log_weights": self._log_w.tolist(),
            "reward_min": self._r_min,
            "reward_max": self._r_max,
            "n_rewards": self._n_rewards,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        log_w = np.asarray(state["log_weights"], dtype=np.float64)
        if log_w.shape != (self.n_arms,):
            raise ValueError(f"state['state']['log_weights'] must have {self.n_arms} entries.")
        self._log_w = log_w
        self._r_min = None if state["reward_min"] is None else float(state["reward_min"])
        self._r_max = None if state["reward_max"] is None else float(state["reward_max"])
        self._n_rewards = int(state["n_rewards"])


class ThompsonSampling(_CreditPolicy):
    r"""Gaussian Thompson sampling on each arm's mean reward, with a plug-in noise level.

    Rewards of arm ``c`` are modelled as ``N(θ_c, σ²)`` with prior ``θ_c ~ N(μ0, σ² / κ0)``, giving the
    posterior ``N((κ0 μ0 + S_c) / (κ0 + n_c), σ² / (κ0 + n_c))`` from the credited sum ``S_c`` and count
    ``n_c`` (neighbour credit as in :class:`UCB`). ``σ`` is ``noise_std`` when given, otherwise the standard
    deviation of all rewards observed so far (1 until two rewards are seen), so the policy needs no tuning
    to the reward scale (EQUAL's rewards ``1 − W`` vary by a few hundredths). This is the known-variance
    model with an empirical-Bayes variance, not a Normal–Gamma one. Each round draws one ``θ`` per arm
    and takes the ``n`` largest among the available arms.

    Parameters
    ----------
    n_arms : int
        Number of arms.
    seed : int, Generator or None, default=None
        Randomness of the posterior draws.
    prior_mean : float, default=0.0
        ``μ0``.
    prior_strength : float, default=1.0
        ``κ0`` (pseudo-observations), > 0.
    noise_std : float or None, default=None
        Known reward noise ``σ`` (> 0); ``None`` estimates it from the rewards.
    neighbors, neighbor_weights
        As in :class:`UCB`.
    """

    name = "thompson"

    def __init__(
        self,
        n_arms: int,
        *,
        seed: SeedLike = None,
        prior_mean: float = 0.0,
        prior_strength: float = 1.0,
        noise_std: float | None = None,
        neighbors: Sequence[Sequence[int]] | None = None,
        neighbor_weights: Sequence[Sequence[float]] | None = None,
    ) -> None:
        self.prior_mean = _check_float("prior_mean", prior_mean)
        self.prior_strength = _check_float("prior_strength", prior_strength, 0.0, low_open=True)
        self.noise_std = (
            None if noise_std is None else _check_float("noise_std", noise_std, 0.0, low_open=True)
        )
        super().__init__(n_arms, seed=seed, neighbors=neighbors, neighbor_weights=neighbor_weights)
        # Welford running moments of the raw rewards, for the plug-in noise level.
        self._n_obs = 0
        self._obs_mean = 0.0
        self._obs_m2 = 0.0

    def sigma(self) -> float:
        """The reward noise level in use."""
        if self.noise_std is not None:
            return self.noise_std
        if self._n_obs < 2:
            return 1.0
        return float(np.sqrt(self._obs_m2 / (self._n_obs - 1)))

    def posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of each arm's mean reward: two (n_arms,) float64 arrays."""
        strength = self.prior_strength + self._counts
        mean = (self.prior_strength * self.prior_mean + self._sums) / strength
        return mean, self.sigma() / np.sqrt(strength)

    def scores(self) -> np.ndarray:
        """Posterior means: ndarray of shape (n_arms,), float64."""
        return self.posterior()[0]

    def _select(self, m: int, candidates: np.ndarray) -> np.ndarray:
        mean, std = self.posterior()
        # One draw per arm (not only the available ones) keeps the random stream independent of availability.
        theta = mean + std * self._rng.standard_normal(self.n_arms)
        return self._top(theta, candidates, m)

    def _observe(self, rewards: np.ndarray) -> None:
        for r in rewards.tolist():
            self._n_obs += 1
            delta = r - self._obs_mean
            self._obs_mean += delta / self._n_obs
            self._obs_m2 += delta * (r - self._obs_mean)

    def _params(self) -> dict[str, Any]:
        return {
            "prior_mean": self.prior_mean,
            "prior_strength": self.prior_strength,
            "noise_std": self.noise_std,
            **super()._params(),
        }

    def _get_state(self) -> dict[str, Any]:
        return {
            **super()._get_state(),
            "n_obs": self._n_obs,
            "obs_mean": self._obs_mean,
            "obs_m2": self._obs_m2,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        super()._set_state(state)
        self._n_obs = int(state["n_obs"])
        self._obs_mean = float(state["obs_mean"])
        self._obs_m2 = float(state["obs_m2"])


class EpsilonGreedy(_CreditPolicy):
    """Epsilon-greedy: each of the ``n`` slots explores a random available arm with probability ``epsilon``.

    The number of exploring slots is drawn as Binomial(n, epsilon); the other slots take the available
    arms with the best mean credited reward, arms never credited first (ties to the smaller index); the
    exploring slots are filled uniformly from the remaining available arms.

    Parameters
    ----------
    n_arms : int
        Number of arms.
    seed : int, Generator or None, default=None
        Randomness of the exploration.
    epsilon : float, default=0.1
        Exploration probability in [0, 1].
    neighbors, neighbor_weights
        As in :class:`UCB`.
    """

    name = "epsilon-greedy"

    def __init__(
        self,
        n_arms: int,
        *,
        seed: SeedLike = None,
        epsilon: float = 0.1,
        neighbors: Sequence[Sequence[int]] | None = None,
        neighbor_weights: Sequence[Sequence[float]] | None = None,
    ) -> None:
        self.epsilon = _check_float("epsilon", epsilon, 0.0, 1.0)
        super().__init__(n_arms, seed=seed, neighbors=neighbors, neighbor_weights=neighbor_weights)

    def scores(self) -> np.ndarray:
        """Mean credited reward (0 for arms never credited): ndarray of shape (n_arms,), float64."""
        return self.mean_rewards()

    def _select(self, m: int, candidates: np.ndarray) -> np.ndarray:
        n_explore = int(self._rng.binomial(m, self.epsilon))
        values = np.where(self._counts > 0, self.mean_rewards(), np.inf)
        greedy = self._top(values, candidates, m - n_explore)
        if n_explore == 0:
            return greedy
        rest = np.setdiff1d(candidates, greedy, assume_unique=True)
        explore = self._rng.choice(rest, size=n_explore, replace=False)
        return np.concatenate([greedy, explore])

    def _params(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, **super()._params()}


class Uniform(_CreditPolicy):
    """Uniformly random available arms (the ``uniform-clusters`` baseline).

    Rewards are still recorded (with neighbour credit, if given) so :meth:`scores` can report the mean
    credited reward of each arm; they never influence the selection.

    Parameters
    ----------
    n_arms : int
        Number of arms.
    seed : int, Generator or None, default=None
        Randomness of the draws.
    neighbors, neighbor_weights
        As in :class:`UCB`; used only for :meth:`scores`.
    """

    name = "uniform"

    def scores(self) -> np.ndarray:
        """Mean credited reward (0 for arms never credited): ndarray of shape (n_arms,), float64."""
        return self.mean_rewards()

    def _select(self, m: int, candidates: np.ndarray) -> np.ndarray:
        return self._rng.choice(candidates, size=m, replace=False)


POLICIES: dict[str, type[Policy]] = {
    "ucb": UCB,
    "exp3": EXP3,
    "thompson": ThompsonSampling,
    "epsilon-greedy": EpsilonGreedy,
    "uniform": Uniform,
}


def make_policy(
    name: str,
    n_arms: int,
    *,
    seed: SeedLike,
    neighbors: Sequence[Sequence[int]] | None = None,
    **kw: Any,
) -> Policy:
    """Build a policy by name.

    Parameters
    ----------
    name : {"ucb", "exp3", "thompson", "epsilon-greedy", "uniform"}
        The policy (case-insensitive; "_" may replace "-").
    n_arms : int
        Number of arms (clusters).
    seed : int, Generator, SeedSequence or None
        Randomness of the policy.
    neighbors : list of k lists of int, or None, default=None
        Neighbour credit (each list includes its own arm); not supported by "exp3".
    **kw
        Further keyword arguments of the policy's class (``alpha``, ``gamma``, ``epsilon``, ...).

    Returns
    -------
    Policy
    """
    key = str(name).strip().lower().replace("_", "-")
    cls = POLICIES.get(key)
    if cls is None:
        raise ValueError(f"Unknown bandit policy name={name!r}; valid names: {', '.join(POLICIES)}.")
    if neighbors is not None:
        if cls is EXP3:
            raise ValueError("neighbors is not supported by policy 'exp3' (EXP3 has no neighbour credit).")
        kw["neighbors"] = neighbors
    return cls(n_arms, seed=seed, **kw)
