"""One entry point for every selection method, by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from equal.select._kmq import km_closest, km_random, kmq, kmq_iterative_round
from equal.select._novelselect import novelselect
from equal.select._simple import deita_select, kcenter_greedy, random_select
from equal.select._types import Selection

__all__ = ["METHODS", "select"]


def _random(X: np.ndarray, k: int, **kw: Any) -> Selection:
    return random_select(int(np.asarray(X).shape[0]), k, **kw)


def _iterative(X: np.ndarray, k: int, **kw: Any) -> Selection:
    # Round 1 of iterative kMQ; the training loop between rounds is equal.pipeline.kmq_iterative.
    return kmq_iterative_round(X, k, **kw)


METHODS: dict[str, Callable[..., Selection]] = {
    "novelselect": novelselect,
    "kmq": kmq,
    "kmq-iterative": _iterative,
    "km-closest": km_closest,
    "km-random": km_random,
    "kcenter": kcenter_greedy,
    "random": _random,
    "deita": deita_select,
}


def select(X: np.ndarray, k: int, method: str = "novelselect", **kw: Any) -> Selection:
    """Select ``k`` rows of ``X`` with the named method.

    Parameters
    ----------
    X : array-like of shape (n, d)
        Embeddings: raw for ``novelselect`` (it normalises internally and needs raw vectors for the
        density), L2-normalised for the others; ``random`` only uses ``len(X)``.
    k : int
        Number of rows.
    method : str, default="novelselect"
        One of ``novelselect``, ``kmq``, ``kmq-iterative``, ``km-closest``, ``km-random``, ``kcenter``,
        ``random``, ``deita``. ``kmq-iterative`` here is its first round only
        (:func:`~equal.select.kmq_iterative_round` with uniform weights, which draws what ``kmq`` with
        ``budget="equal"`` draws for the same seed): the rounds after it fine-tune a model on the rows
        selected so far, so they live in :func:`equal.pipeline.kmq_iterative.iterative_kmq` (``equal select
        --method kmq-iterative --rounds N``).
    **kw
        Keyword arguments of the method's function (``n_clusters``, ``quality``, ``seed``, ...).

    Returns
    -------
    Selection
    """
    try:
        fn = METHODS[method]
    except KeyError:
        raise ValueError(f"method={method!r} must be one of {', '.join(METHODS)}.") from None
    return fn(X, k, **kw)
