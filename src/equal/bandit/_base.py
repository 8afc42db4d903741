"""The interface every cluster-choosing bandit policy implements, and its JSON-able state."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import Any, ClassVar

import numpy as np

from equal._validation import SeedLike, as_generator

__all__ = ["STATE_FORMAT", "Policy"]

STATE_FORMAT = 1
"""Version of the dict written by :meth:`Policy.state_dict`."""


def _to_jsonable(value: Any) -> Any:
    """Turn numpy scalars and arrays (e.g. inside a bit generator's state) into plain Python values."""
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _rng_from_state(state: dict[str, Any]) -> np.random.Generator:
    name = state.get("bit_generator")
    bit_generator_cls = getattr(np.random, str(name), None)
    if bit_generator_cls is None or not isinstance(bit_generator_cls, type):
        raise ValueError(f"state['rng']['bit_generator']={name!r} is not a numpy bit generator.")
    bit_generator = bit_generator_cls()
    restored = dict(state)
    inner = restored.get("state")
    if isinstance(inner, dict) and isinstance(inner.get("key"), list):
        # MT19937 keeps its key as a uint32 array; JSON made it a list.
        restored["state"] = {**inner, "key": np.asarray(inner["key"], dtype=np.uint32)}
    bit_generator.state = restored
    return np.random.Generator(bit_generator)


class Policy:
    """A multi-armed bandit policy over ``n_arms`` arms (clusters), pure and serialisable.

    Every round the caller asks :meth:`select` for up to ``n`` distinct arms among those still available,
    plays them, and reports one reward per played arm to :meth:`update`. :meth:`scores` returns what the
    policy ranks by, for reports. :meth:`state_dict` returns JSON-able values from which :meth:`from_state`
    rebuilds a policy whose future selections are identical (random state included).

    Parameters
    ----------
    n_arms : int
        Number of arms, >= 1.
    seed : int, numpy Generator, SeedSequence or None, default=None
        Randomness of the policy (unused by deterministic policies, kept for a uniform interface).
    """

    name: ClassVar[str] = ""
    _registry: ClassVar[dict[str, type[Policy]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            Policy._registry[cls.name] = cls

    def __init__(self, n_arms: int, *, seed: SeedLike = None) -> None:
        if isinstance(n_arms, bool) or not isinstance(n_arms, Integral) or n_arms < 1:
            raise ValueError(f"n_arms={n_arms!r} must be an int >= 1.")
        self.n_arms = int(n_arms)
        self._rng = as_generator(seed)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items() if k not in _LONG_PARAMS)
        return f"{type(self).__name__}(n_arms={self.n_arms}{', ' if params else ''}{params})"

    # ------------------------------------------------------------------ public interface
    def select(self, n: int, *, available: object = None) -> np.ndarray:
        """Choose up to ``n`` distinct arms among the available ones.

        Parameters
        ----------
        n : int
            Number of arms wanted, >= 0.
        available : array-like of shape (n_arms,), bool, or None, default=None
            Arms that may be chosen (e.g. clusters with unread documents); ``None`` means all.

        Returns
        -------
        arms : ndarray of shape (m,), int64
            ``m = min(n, number of available arms)`` distinct arms, in the policy's order of preference.
        """
        if isinstance(n, bool) or not isinstance(n, Integral) or n < 0:
            raise ValueError(f"n={n!r} must be an int >= 0.")
        candidates = self._available(available)
        m = min(int(n), candidates.size)
        if m == 0:
            return np.zeros(0, dtype=np.int64)
        return np.asarray(self._select(m, candidates), dtype=np.int64)

    def update(self, arms: object, rewards: object) -> None:
        """Record the rewards of the arms played this round.

        Parameters
        ----------
        arms : array-like of shape (m,), int
            Arms played (normally the output of :meth:`select`).
        rewards : array-like of shape (m,), float
            Finite reward of each arm, higher is better.
        """
        arm_arr = np.asarray(arms)
        reward_arr = np.asarray(rewards, dtype=np.float64)
        if arm_arr.ndim != 1 or (arm_arr.size and not np.issubdtype(arm_arr.dtype, np.integer)):
            raise ValueError(
                f"arms must be a 1-D integer array; got dtype={arm_arr.dtype}, shape {arm_arr.shape}."
            )
        if reward_arr.shape != arm_arr.shape:
            raise ValueError(
                f"rewards must have the shape of arms {arm_arr.shape}; got {reward_arr.shape}."
            )
        if arm_arr.size and (arm_arr.min() < 0 or arm_arr.max() >= self.n_arms):
            raise ValueError(
                f"arms must lie in [0, n_arms={self.n_arms}); got values {arm_arr.min()}..{arm_arr.max()}."
            )
        if not np.isfinite(reward_arr).all():
            raise ValueError("rewards must be finite (no NaN or infinity).")
        self._update(arm_arr.astype(np.int64), reward_arr)

    def scores(self) -> np.ndarray:
        """What the policy ranks arms by: ndarray of shape (n_arms,), float64."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """JSON-able snapshot: policy name, parameters, learnt statistics and random state."""
        return {
            "policy": self.name,
            "format": STATE_FORMAT,
            "n_arms": self.n_arms,
            "params": _to_jsonable(self._params()),
            "state": _to_jsonable(self._get_state()),
            "rng": _to_jsonable(self._rng.bit_generator.state),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a snapshot from :meth:`state_dict` of a policy of the same kind and parameters."""
        self._check_state_header(state)
        if state["n_arms"] != self.n_arms:
            raise ValueError(f"state['n_arms']={state['n_arms']} does not match n_arms={self.n_arms}.")
        mine = _to_jsonable(self._params())
        theirs = state.get("params", {})
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key) != theirs.get(key):
                raise ValueError(
                    f"state['params']['{key}'] differs from this policy's {key}; build the policy with "
                    f"{type(self).__name__}.from_state(state) instead."
                )
        self._set_state(state["state"])
        self._rng = _rng_from_state(state["rng"])

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Policy:
        """Build the policy a :meth:`state_dict` snapshot describes (``Policy.from_state`` for any kind)."""
        cls._check_state_header(state)
        sub = Policy._registry.get(state["policy"])
        if sub is None:
            raise ValueError(
                f"state['policy']={state['policy']!r} is unknown; valid: {sorted(Policy._registry)}."
            )
        if not issubclass(sub, cls):
            raise ValueError(f"state['policy']={state['policy']!r} is not a {cls.__name__}.")
        policy = sub(state["n_arms"], seed=None, **state.get("params", {}))
        policy.load_state_dict(state)
        return policy

    # ------------------------------------------------------------------ for subclasses
    def _select(self, m: int, candidates: np.ndarray) -> np.ndarray:
        """``m`` (1 <= m <= len(candidates)) distinct arms from ``candidates`` (sorted int64)."""
        raise NotImplementedError

    def _update(self, arms: np.ndarray, rewards: np.ndarray) -> None:
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        """Constructor keyword arguments (besides n_arms and seed) as JSON-able values."""
        return {}

    def _get_state(self) -> dict[str, Any]:
        return {}

    def _set_state(self, state: dict[str, Any]) -> None:
        pass

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_state_header(state: object) -> None:
        if not isinstance(state, dict) or "policy" not in state or "n_arms" not in state:
            raise ValueError("state must be a dict from Policy.state_dict() (keys 'policy', 'n_arms', ...).")
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"state['format']={state.get('format')!r} is not supported (expected {STATE_FORMAT})."
            )

    def _available(self, available: object) -> np.ndarray:
        if available is None:
            return np.arange(self.n_arms, dtype=np.int64)
        mask = np.asarray(available)
        if mask.shape != (self.n_arms,) or mask.dtype != np.bool_:
            raise ValueError(
                f"available must be a bool array of shape (n_arms,) = ({self.n_arms},); "
                f"got dtype={mask.dtype}, shape {mask.shape}."
            )
        return np.flatnonzero(mask).astype(np.int64)

    @staticmethod
    def _top(values: np.ndarray, candidates: np.ndarray, m: int) -> np.ndarray:
        """The ``m`` candidates with the largest ``values``; ties go to the smaller arm index."""
        v = values[candidates]
        order = np.lexsort((candidates, -v))
        return candidates[order[:m]]


_LONG_PARAMS = frozenset({"neighbors", "neighbor_weights"})


def _check_float(name: str, value: object, low: float | None = None, high: float | None = None,
                 *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}={value!r} must be a real number.")
    x = float(value)
    if not np.isfinite(x):
        raise ValueError(f"{name}={value!r} must be finite.")
    if low is not None and (x < low or (low_open and x == low)):
        bound = ">" if low_open else ">="
        raise ValueError(f"{name}={value!r} must be {bound} {low}.")
    if high is not None and x > high:
        raise ValueError(f"{name}={value!r} must be <= {high}.")
    return x


def _as_int_lists(name: str, lists: Sequence[Sequence[int]] | None, n_arms: int) -> list[list[int]] | None:
    if lists is None:
        return None
    if len(lists) != n_arms:
        raise ValueError(f"{name} must hold one list per arm (n_arms={n_arms}); got {len(lists)}.")
    out = []
    for c, row in enumerate(lists):
        arr = np.asarray(row)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"{name}[{c}] must be a 1-D list of ints; got {row!r}.")
        if arr.size and (arr.min() < 0 or arr.max() >= n_arms):
            raise ValueError(f"{name}[{c}] has arms outside [0, n_arms={n_arms}).")
        if arr.size != np.unique(arr).size:
            raise ValueError(f"{name}[{c}] lists an arm twice.")
        if c not in arr:
            raise ValueError(
                f"{name}[{c}] must include arm {c} itself (an arm is credited with its own reward, as in "
                "EQUAL where d_cc = 0 < threshold)."
            )
        out.append([int(x) for x in arr])
    return out
