"""Local density σ^β of NovelSum / NovelSelect: inverse mean squared L2 distance to K reference neighbours.

Reference-code semantics (UmeanNever/NovelSum ``utils.FaissIndex.local_density``): the reference pool is
de-duplicated with ``np.unique``, searched with exact squared L2 on the *raw* (not normalised) vectors for
K + 1 neighbours, the first neighbour is dropped (it is the query itself when the query is in the pool),
and σ^β = 1 / (mean of the K remaining squared distances + 1e-9)^β.

The neighbours are found from a float32 Gram block, like faiss ``IndexFlatL2``; their distances are then
recomputed from the coordinates in float64. faiss reports the float32 expansion ‖q‖² + ‖r‖² − 2 q·r,
which loses most of its digits for close neighbours of long vectors; the recomputed value is the exact one
the formula asks for.
"""

from __future__ import annotations

import numbers

import numpy as np

from equal._validation import check_embeddings
from equal.diversity._parallel import map_blocks

__all__ = ["local_density", "nearest_sq_distances", "unique_rows"]

_REGULARIZATION = 1e-9
# Extra candidates taken from the float32 ranking before the exact float64 re-ranking, so that neighbours
# whose float32 distances are within rounding of the K-th one are not lost.
_EXTRA_CANDIDATES = 8
_BLOCK_BYTES = 64 * 2**20


def _check_n_neighbors(n_neighbors: object) -> int:
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, numbers.Integral) or n_neighbors < 1:
        raise ValueError(f"n_neighbors={n_neighbors!r} must be an integer >= 1.")
    return int(n_neighbors)


def _check_power(power: object, name: str) -> float:
    if isinstance(power, bool) or not isinstance(power, numbers.Real) or not np.isfinite(float(power)):
        raise ValueError(f"{name}={power!r} must be a finite real number.")
    return float(power)


def unique_rows(R: np.ndarray) -> np.ndarray:
    """Distinct rows of ``R`` (as ``np.unique(R, axis=0)``, order not kept).

    Parameters
    ----------
    R : ndarray of shape (N, d), float32

    Returns
    -------
    ndarray of shape (N', d), float32
        ``R`` itself when it has no repeated row, else its distinct rows.
    """
    R = np.ascontiguousarray(R, dtype=np.float32)
    if R.shape[0] < 2:
        return R
    # Adding +0.0 turns -0.0 into +0.0 so the byte view compares like the floats do.
    canon = np.ascontiguousarray(R + np.float32(0.0))
    rows = canon.view(np.dtype((np.void, canon.dtype.itemsize * canon.shape[1]))).ravel()
    _, first = np.unique(rows, return_index=True)
    if first.size == R.shape[0]:
        return R
    return R[np.sort(first)]


def _smallest_indices(key: np.ndarray, c: int, *, largest: bool = False) -> np.ndarray:
    """Column indices of the ``c`` smallest (or largest) entries of each row of ``key``, unordered, (b, c)."""
    n = key.shape[1]
    if c >= n:
        return np.broadcast_to(np.arange(n), key.shape).copy()
    try:
        import torch
    except ImportError:
        return np.argpartition(-key if largest else key, c - 1, axis=1)[:, :c]
    # torch.topk selects with a partial sort about 5x faster than np.argpartition on CPU.
    _, idx = torch.topk(torch.from_numpy(key), c, dim=1, largest=largest, sorted=False)
    return idx.numpy().astype(np.int64, copy=False)


def _exact_sq_dists(Q: np.ndarray, R: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Squared L2 distances ‖Q_i − R_idx[i, j]‖² in float64 from the coordinates, shape of ``idx``."""
    b, c = idx.shape
    d = Q.shape[1]
    out = np.empty((b, c), dtype=np.float64)
    step = max(1, (8 * 2**20) // max(1, c * d * 8))
    for a in range(0, b, step):
        z = min(a + step, b)
        diff = R[idx[a:z]].astype(np.float64) - Q[a:z, None, :].astype(np.float64)
        out[a:z] = np.einsum("bcd,bcd->bc", diff, diff)
    return out


def nearest_sq_distances(
    Q: np.ndarray, R: np.ndarray, k: int, *, block_size: int | None = None, workers: int | None = None
) -> np.ndarray:
    """Exact squared L2 distances from each row of ``Q`` to its ``k`` nearest rows of ``R``, ascending.

    Parameters
    ----------
    Q : ndarray of shape (m, d), float32
        Queries.
    R : ndarray of shape (N, d), float32
        Reference vectors, ``N >= k``.
    k : int
        Number of neighbours.
    block_size : int or None, default=None
        Query rows per block (None: about 64 MiB of float32 distances per block).
    workers : int or None, default=None
        Threads (None: one per available core).

    Returns
    -------
    ndarray of shape (m, k), float64
        Row i holds the k smallest ‖Q_i − R_j‖², sorted ascending.
    """
    m, N = Q.shape[0], R.shape[0]
    if not 1 <= k <= N:
        raise ValueError(f"k={k} must be between 1 and the number of reference rows N={N}.")
    if block_size is None:
        block_size = max(16, min(4096, _BLOCK_BYTES // (4 * max(N, 1))))
    c = min(N, k + _EXTRA_CANDIDATES)
    # ‖q‖² is constant along a row, so r² − 2 q·r ranks the reference rows like ‖q − r‖²; with
    # [q, 1] · [−2r, ‖r‖²] the matrix product yields that key directly, without passes over the block.
    R_aug = np.empty((R.shape[1] + 1, N), dtype=np.float32)
    R_aug[:-1] = R.T
    R_aug[:-1] *= np.float32(-2.0)
    R_aug[-1] = np.einsum("ij,ij->i", R, R, dtype=np.float32)

    def work(a: int, b: int) -> np.ndarray:
        Q_aug = np.empty((b - a, Q.shape[1] + 1), dtype=np.float32)
        Q_aug[:, :-1] = Q[a:b]
        Q_aug[:, -1] = 1.0
        key = Q_aug @ R_aug
        idx = _smallest_indices(key, c)
        del key
        dist = _exact_sq_dists(Q[a:b], R, idx)
        dist.sort(axis=1)
        return dist[:, :k]

    if m == 0:
        return np.empty((0, k), dtype=np.float64)
    return np.concatenate(map_blocks(work, m, block_size, workers=workers), axis=0)


def density_weights(
    X: np.ndarray,
    reference: np.ndarray | None,
    n_neighbors: int,
    power: float,
    *,
    workers: int | None = None,
) -> np.ndarray:
    """σ^β for each row of ``X`` in float64 (inputs already validated as float32 (n, d))."""
    R = unique_rows(X if reference is None else reference)
    if R.shape[0] < n_neighbors + 1:
        src = "X (its own reference)" if reference is None else "reference"
        raise ValueError(
            f"n_neighbors={n_neighbors} needs at least n_neighbors + 1 = {n_neighbors + 1} distinct "
            f"reference vectors; {src} has {R.shape[0]}."
        )
    if power == 0.0:
        # 1 / (avg + 1e-9) ** 0 == 1 whatever the neighbours are.
        return np.ones(X.shape[0], dtype=np.float64)
    dist = nearest_sq_distances(X, R, n_neighbors + 1, workers=workers)
    avg = dist[:, 1:].mean(axis=1)
    return 1.0 / np.power(avg + _REGULARIZATION, power)


def local_density(
    X_raw: np.ndarray,
    reference: np.ndarray | None = None,
    *,
    n_neighbors: int = 10,
    power: float = 0.5,
) -> np.ndarray:
    r"""Local density term σ^β of NovelSum and NovelSelect.

    .. math::

        \sigma_i^\beta = \Bigl(\frac{1}{K}\sum_{k=2}^{K+1} \lVert x_i - r_{(k)}(x_i)\rVert_2^2
        + 10^{-9}\Bigr)^{-\beta}

    where :math:`r_{(k)}(x_i)` is the k-th nearest distinct reference vector to :math:`x_i` in squared L2
    on the raw vectors; the nearest one (k = 1, the sample itself when it is in the pool) is skipped.

    Parameters
    ----------
    X_raw : array-like of shape (n, d)
        Raw (not normalised) embeddings of the samples.
    reference : array-like of shape (N, d) or None, default=None
        Reference pool; None uses ``X_raw`` itself. Repeated rows are counted once.
    n_neighbors : int, default=10
        K, the number of neighbours averaged.
    power : float, default=0.5
        β, the density power; 0 gives 1 everywhere.

    Returns
    -------
    ndarray of shape (n,), float32
        σ^β for every row of ``X_raw``.

    Raises
    ------
    ValueError
        If the reference holds fewer than K + 1 distinct vectors, or a parameter is out of range.

    Notes
    -----
    Same as ``FaissIndex.local_density`` of the NovelSum reference code, with the distances of the found
    neighbours recomputed exactly in float64 (faiss returns float32 ‖q‖² + ‖r‖² − 2 q·r).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    >>> local_density(X, n_neighbors=1, power=1.0).round(3)
    array([1.  , 1.  , 0.25], dtype=float32)
    """
    X = check_embeddings(X_raw, name="X_raw", normalized=False)
    ref = None
    if reference is not None:
        ref = check_embeddings(reference, name="reference", normalized=False, dim=X.shape[1])
    k = _check_n_neighbors(n_neighbors)
    beta = _check_power(power, "power")
    return density_weights(X, ref, k, beta).astype(np.float32)
