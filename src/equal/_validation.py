"""Input validation and randomness helpers used at every public entry point."""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_ABS", "SeedLike", "as_generator", "check_embeddings", "l2_normalize"]

SeedLike = int | np.random.Generator | np.random.SeedSequence | None


def as_generator(seed: SeedLike) -> np.random.Generator:
    """Return a ``numpy.random.Generator`` for ``seed`` (an int, a Generator, a SeedSequence or None).

    A Generator is passed through unchanged so callers can thread one stream through several steps.
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, (int, np.integer, np.random.SeedSequence)):
        return np.random.default_rng(seed)
    raise TypeError(f"seed={seed!r} must be an int, a numpy Generator, a SeedSequence or None.")


def l2_normalize(X: np.ndarray, *, eps: float = 1e-12) -> np.ndarray:
    """Return the rows of ``X`` scaled to unit L2 norm, as C-contiguous float32 (zero rows stay zero)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return np.ascontiguousarray(X / np.maximum(norms, eps), dtype=np.float32)


#: Largest absolute value an embedding entry may have. Real embeddings are O(1); past about 1e19
#: the float32 squared norms overflow to inf, and normalising then silently gives zeros (an OT
#: distance of exactly 1.0 for vectors near 1e30), so anything this far out is refused.
MAX_ABS = 1e15


def _check_values(arr: np.ndarray, name: str) -> None:
    """Refuse NaN/inf, absurd magnitudes and all-zero rows, naming the first bad row."""
    # Row blocks keep the temporaries small for a large (memory-mapped) matrix; each block is judged
    # on the input's own dtype, since a float64 1e300 would turn into inf in the float32 cast.
    step = max(1, (1 << 22) // arr.shape[1])
    for start in range(0, arr.shape[0], step):
        block = arr[start:start + step]
        if not np.issubdtype(block.dtype, np.floating):
            block = block.astype(np.float64)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            i = start + int(np.argmin(finite))
            raise ValueError(f"Input {name} contains NaN or infinity (row {i}).")
        peak = np.abs(block).max(axis=1)
        if peak.max() > MAX_ABS:
            i = int(np.argmax(peak > MAX_ABS))
            raise ValueError(
                f"Input {name} has an absurd magnitude: row {start + i} holds {float(peak[i]):.3g} "
                f"(|x| <= {MAX_ABS:.0e} expected of embeddings)."
            )
        if not peak.all():
            i = start + int(np.argmin(peak))
            raise ValueError(f"Input {name} has an all-zero row (row {i}): a zero vector has no direction.")


def check_embeddings(
    X: object,
    *,
    name: str = "X",
    normalized: bool = True,
    min_rows: int = 1,
    dim: int | None = None,
    atol: float = 1e-3,
) -> np.ndarray:
    """Validate an embedding matrix and return it as C-contiguous float32 of shape (n, d).

    Refused, with a ``ValueError`` naming ``name`` (and the first bad row, 0-based): a shape that
    is not (n, d) with d >= 1, fewer than ``min_rows`` rows, a dtype that is not real numbers
    (complex, object, bool, strings, records), NaN or infinity, an entry with ``|x| > MAX_ABS``
    (1e15), and an all-zero row (it has no direction, so no cosine or unit-vector cost).

    Parameters
    ----------
    X : array-like of shape (n, d)
        The embeddings.
    name : str, default="X"
        Name used in error messages.
    normalized : bool, default=True
        Require every row to have unit L2 norm (within ``atol``).
    min_rows : int, default=1
        Minimum number of rows.
    dim : int or None, default=None
        Required number of columns, if any.
    atol : float, default=1e-3
        Tolerance on ``|‖x‖ − 1|`` when ``normalized`` is true.

    Returns
    -------
    ndarray of shape (n, d), float32
        ``X`` itself when it already is C-contiguous float32, else a converted copy.
    """
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise ValueError(f"Input {name} must be 2-D of shape (n, d); got ndim={arr.ndim}.")
    if np.issubdtype(arr.dtype, np.complexfloating):
        # Casting would drop the imaginary parts without a word.
        raise ValueError(f"Input {name} must be real numbers; got dtype={arr.dtype}.")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"Input {name} must be numeric; got dtype={arr.dtype}.")
    if arr.shape[0] < min_rows:
        raise ValueError(f"Input {name} has n={arr.shape[0]} rows; at least {min_rows} required.")
    if arr.shape[1] < 1:
        raise ValueError(f"Input {name} has d=0 columns; embeddings need at least one.")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"Input {name} has d={arr.shape[1]} columns; expected {dim}.")
    if arr.size:
        _check_values(arr, name)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if normalized and arr.size:
        # Row blocks, as in _check_values: np.linalg.norm(arr, axis=1) squares the whole matrix into an
        # (n, d) temporary (1.5 GB at 10^6 x 384). Each row's norm is the same reduction either way.
        step = max(1, (1 << 22) // arr.shape[1])
        for start in range(0, arr.shape[0], step):
            norms = np.linalg.norm(arr[start:start + step], axis=1)
            bad = np.abs(norms - 1.0) > atol
            if bad.any():
                k = int(np.argmax(bad))
                i = start + k
                raise ValueError(
                    f"Input {name} must have unit-norm rows (|‖x‖−1| <= {atol}); row {i} has norm {norms[k]:.4g}. "
                    "Normalise it with equal.l2_normalize or pass normalized=False where allowed."
                )
    return arr
