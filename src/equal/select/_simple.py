"""k-center greedy, uniform random and Deita-style (quality first, diversity threshold) selection."""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from equal._validation import SeedLike, as_generator, check_embeddings
from equal.select._common import check_k, check_positive_int, check_quality, seed_param
from equal.select._types import Selection

__all__ = ["deita_select", "kcenter_greedy", "random_select"]


def kcenter_greedy(X: np.ndarray, k: int, *, seed: SeedLike = 42) -> Selection:
    r"""k-center greedy (Sener & Savarese, 2018): repeatedly take the row farthest from the selected set.

    .. math:: x_{t+1} = \arg\max_{x} \min_{s \in S} \bigl(1 - \cos(x, s)\bigr)

    On unit vectors this is the same order as Euclidean k-center (‖x − s‖² = 2 − 2 cos).

    Parameters
    ----------
    X : array-like of shape (n, d)
        L2-normalised embeddings.
    k : int
        Number of rows.
    seed : int, Generator or None, default=42
        Seeds the random first row.

    Returns
    -------
    Selection
        Rows in selection order; ``scores[t]`` the cosine distance of pick t to the set before it
        (NaN for the first). Ties go to the lowest index. Similarities are computed in float64.
    """
    X = check_embeddings(X, name="X")
    n, d = X.shape
    k = check_k(k, n)
    rng = as_generator(seed)
    first = int(rng.integers(n))
    E = X.astype(np.float64) if n * d <= 50_000_000 else X
    mind = np.full(n, np.inf)
    indices = np.empty(k, dtype=np.int64)
    scores = np.full(k, np.nan)
    j = first
    for t in range(k):
        indices[t] = j
        if t == k - 1:
            break
        dist = 1.0 - (E @ E[j]).astype(np.float64)
        np.minimum(mind, dist, out=mind)
        mind[indices[: t + 1]] = -np.inf
        j = int(np.argmax(mind))
        scores[t + 1] = mind[j]
    return Selection(indices, scores, "kcenter", {"k": k, "seed": seed_param(seed)})


def random_select(n: int, k: int, *, seed: SeedLike = 42) -> Selection:
    """``k`` distinct rows of ``range(n)`` uniformly at random (in draw order).

    Parameters
    ----------
    n : int
        Pool size.
    k : int
        Number of rows.
    seed : int, Generator or None, default=42

    Returns
    -------
    Selection
        ``scores`` is None.
    """
    n = check_positive_int(n, "n")
    k = check_k(k, n)
    rng = as_generator(seed)
    indices = rng.choice(n, size=k, replace=False).astype(np.int64)
    return Selection(indices, None, "random", {"k": k, "seed": seed_param(seed)})


def deita_select(
    X: np.ndarray,
    k: int,
    *,
    quality: np.ndarray,
    threshold: float = 0.9,
    seed: SeedLike = 42,
    chunk: int = 256,
) -> Selection:
    """Deita-style selection (Liu et al., 2024, "Repr Filter"): best quality first, skip near-duplicates.

    Rows are visited by decreasing quality; a row is accepted when its cosine *similarity* to its
    nearest already-accepted row is below ``threshold`` (Deita's τ = 0.9), i.e. when its cosine distance
    to every accepted row exceeds ``1 − threshold``. Stops at ``k`` accepted rows.

    Parameters
    ----------
    X : array-like of shape (n, d)
        L2-normalised embeddings.
    k : int
        Number of rows wanted.
    quality : array-like of shape (n,)
        Quality scores (e.g. Deita complexity × quality); higher first.
    threshold : float, default=0.9
        Maximum cosine similarity to an accepted row, in (-1, 1].
    seed : int, Generator or None, default=42
        Breaks ties in quality (a seeded random order among equal scores).
    chunk : int, default=256
        Candidates screened against the accepted set per matrix product.

    Returns
    -------
    Selection
        Accepted rows in acceptance order; ``scores`` their quality. Fewer than ``k`` rows (with a
        ``UserWarning``) when the pool runs out of rows that pass the threshold.
    """
    X = check_embeddings(X, name="X")
    n, d = X.shape
    k = check_k(k, n)
    q = check_quality(quality, n)
    if q is None:
        raise ValueError("deita_select needs quality scores (quality=...).")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not -1.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold!r} must be a cosine similarity in (-1, 1].")
    chunk = check_positive_int(chunk, "chunk")
    rng = as_generator(seed)
    tie = rng.permutation(n)
    order = np.lexsort((tie, -q))
    thr = float(threshold)
    acc = np.empty((k, d), dtype=np.float64)
    accepted: list[int] = []
    for a in range(0, n, chunk):
        C = order[a : a + chunk]
        EC = X[C].astype(np.float64)
        m = len(accepted)
        if m:
            ok = (EC @ acc[:m].T).max(axis=1) < thr
            C, EC = C[ok], EC[ok]
        if C.size == 0:
            continue
        G = EC @ EC.T
        new: list[int] = []
        for i in range(C.size):
            if not new or G[i, new].max() < thr:
                new.append(i)
                acc[len(accepted)] = EC[i]
                accepted.append(int(C[i]))
                if len(accepted) == k:
                    break
        if len(accepted) == k:
            break
    if len(accepted) < k:
        warnings.warn(
            f"deita_select accepted only {len(accepted)} of k={k} rows: every other row has cosine "
            f"similarity >= threshold={thr} to an accepted one. Raise the threshold to get more.",
            UserWarning,
            stacklevel=2,
        )
    indices = np.asarray(accepted, dtype=np.int64)
    params = {"k": k, "threshold": thr, "seed": seed_param(seed)}
    return Selection(indices, q[indices], "deita", params)
