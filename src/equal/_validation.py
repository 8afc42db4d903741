"""Input validation and randomness helpers used at every public entry point."""

from __future__ import annotations

import numpy as np

__all__ = ["SeedLike", "as_generator", "check_embeddings", "l2_normalize"]

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
    """
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise ValueError(f"Input {name} must be 2-D of shape (n, d); got ndim={arr.ndim}.")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"Input {name} must be numeric; got dtype={arr.dtype}.")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.shape[0] < min_rows:
        raise ValueError(f"Input {name} has n={arr.shape[0]} rows; at least {min_rows} required.")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"Input {name} has d={arr.shape[1]} columns; expected {dim}.")
    if not np.isfinite(arr).all():
        raise ValueError(f"Input {name} contains NaN or infinity.")
    if normalized and arr.size:
        norms = np.linalg.norm(arr, axis=1)
        bad = np.abs(norms - 1.0) > atol
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"Input {name} must have unit-norm rows (|‖x‖−1| <= {atol}); row {i} has norm {norms[i]:.4g}. "
                "Normalise it with equal.l2_normalize or pass normalized=False where allowed."
            )
    return arr
