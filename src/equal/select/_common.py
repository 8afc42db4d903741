"""Argument checks shared by the selection methods."""

from __future__ import annotations

import numbers

import numpy as np

from equal._validation import SeedLike

__all__ = ["check_k", "check_positive_int", "check_quality", "seed_param"]


def check_positive_int(value: object, name: str, low: int = 1) -> int:
    """Return ``value`` as int, or raise ValueError naming it when it is not an integer >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}.")
    return int(value)


def check_k(k: object, n: int) -> int:
    """Validate the subset size against the pool size ``n``."""
    k = check_positive_int(k, "k")
    if k > n:
        raise ValueError(f"k={k} must be <= the pool size n={n}.")
    return k


def check_quality(quality: object, n: int, *, nonnegative: bool = False) -> np.ndarray | None:
    """Return quality scores as float64 (n,), or None."""
    if quality is None:
        return None
    q = np.asarray(quality, dtype=np.float64)
    if q.shape != (n,):
        raise ValueError(f"quality has shape {q.shape}; expected ({n},), one score per pool row.")
    if not np.isfinite(q).all():
        raise ValueError("quality contains NaN or infinity.")
    if nonnegative and (q < 0).any():
        i = int(np.argmin(q))
        raise ValueError(f"quality must be >= 0 (it multiplies the score); quality[{i}]={q[i]:.4g}.")
    return q


def seed_param(seed: SeedLike) -> object:
    """The seed as recorded in ``Selection.params``: an int, None, or "generator" (JSON-friendly)."""
    if seed is None or isinstance(seed, (int, np.integer)):
        return None if seed is None else int(seed)
    return "generator"
