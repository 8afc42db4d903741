"""Result type and input checks shared by the OT solvers."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np

from equal.ot._backend import Array, Ops

__all__ = ["OTResult"]

_MASS_RTOL = 1e-6
"""Relative tolerance on ``|sum(a) − sum(b)|``: OT needs both marginals to carry the same mass."""


@dataclass(frozen=True, eq=False)
class OTResult:
    """Outcome of an optimal-transport solve.

    Attributes
    ----------
    plan : ndarray of shape (n, m), float64, or torch.Tensor of shape (n, m), float64
        The transport plan, of the same array type (and torch device) as the cost matrix. Its marginals
        are ``a`` and ``b`` (IPOT rounds the last iterate onto them; Sinkhorn's row marginal is off by at
        most ``err``).
    cost : float
        ``⟨M, plan⟩``, the transport cost of ``plan`` (no entropy term).
    n_iter : int
        Outer iterations run (0 for :func:`~equal.ot.emd`, whose network simplex does not report it).
    converged : bool
        Whether the stopping rule was met before ``max_iter`` (always true for a fixed-count run, ``tol=0``).
    err : float
        The quantity the stopping rule compares with ``tol``: IPOT's relative duality gap (a bound on the
        relative error of ``cost``), Sinkhorn's L1 marginal violation, 0 for an exact solve.
    """

    plan: Any
    cost: float
    n_iter: int
    converged: bool
    err: float


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}.")
    return int(value)


def check_float(name: str, value: object, *, positive: bool) -> float:
    """``value`` as a finite float that is > 0 (``positive``) or >= 0, or a ValueError naming ``name``."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and np.isfinite(float(value))
    if ok:
        ok = float(value) > 0 if positive else float(value) >= 0
    if not ok:
        rule = "> 0" if positive else ">= 0"
        raise ValueError(f"{name}={value!r} must be a finite number {rule}.")
    return float(value)


def _weights(w: object, size: int, name: str, other: str) -> np.ndarray:
    if w is None or (hasattr(w, "__len__") and len(w) == 0):  # type: ignore[arg-type]
        return np.full(size, 1.0 / size)
    if hasattr(w, "detach"):  # a torch tensor: validate on the host, it is a vector
        w = w.detach().cpu().numpy()  # type: ignore[attr-defined]
    arr = np.asarray(w, dtype=np.float64)
    if arr.shape != (size,):
        raise ValueError(f"{name} has shape {arr.shape}; expected ({size},) to match M's {other} dimension.")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"{name} must be finite and non-negative.")
    if arr.sum() <= 0:
        raise ValueError(f"{name} must have positive total mass; got sum({name})={arr.sum():.6g}.")
    return arr


def check_problem(a: object, b: object, M: object, ops: Ops) -> tuple[np.ndarray, np.ndarray, Array]:
    """Validate an OT problem and return ``(a, b, M)``: weights as float64 numpy, M as float64 ``ops`` array.

    Parameters
    ----------
    a : array-like of shape (n,) or None
        Source weights; None or empty means uniform ``1/n``.
    b : array-like of shape (m,) or None
        Target weights; None or empty means uniform ``1/m``.
    M : array-like of shape (n, m)
        Cost matrix.
    ops : Ops
        Array backend the solver runs in.
    """
    shape = tuple(getattr(M, "shape", np.shape(M)))
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"M must be a 2-D cost matrix of shape (n, m) with n, m >= 1; got shape {shape}.")
    n, m = int(shape[0]), int(shape[1])
    if ops.name == "numpy" and not np.issubdtype(np.asarray(M).dtype, np.number):
        raise ValueError(f"M must be numeric; got dtype={np.asarray(M).dtype}.")
    M_ = ops.asarray(M, ops.float64)
    if not ops.isfinite_all(M_):
        raise ValueError("M contains NaN or infinity.")
    a_ = _weights(a, n, "a", "first")
    b_ = _weights(b, m, "b", "second")
    sa, sb = float(a_.sum()), float(b_.sum())
    if abs(sa - sb) > _MASS_RTOL * max(sa, sb):
        raise ValueError(
            f"a and b must have the same total mass (within relative {_MASS_RTOL:g}); "
            f"got sum(a)={sa:.10g}, sum(b)={sb:.10g}."
        )
    return a_, b_, M_


def restrict(ops: Ops, a: np.ndarray, b: np.ndarray, M: Array) -> tuple[np.ndarray, np.ndarray, Array]:
    """Rows and columns with positive mass, and ``M`` restricted to them (zero-mass points carry nothing)."""
    rows = np.flatnonzero(a > 0)
    cols = np.flatnonzero(b > 0)
    if rows.size < a.size:
        M = ops.take(M, rows)
    if cols.size < b.size:
        M = ops.take(M.T, cols).T
    return rows, cols, M


def expand(ops: Ops, plan: Array, rows: np.ndarray, cols: np.ndarray, n: int, m: int) -> Array:
    """Put a plan solved on ``rows × cols`` back into an (n, m) zero matrix."""
    if rows.size == n and cols.size == m:
        return plan
    sub = ops.full((n, cols.size), 0.0, ops.float64)
    sub[ops.index(rows)] = plan
    big = ops.full((n, m), 0.0, ops.float64)
    big[:, ops.index(cols)] = sub
    return big
