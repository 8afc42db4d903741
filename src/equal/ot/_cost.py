"""Ground-cost matrices between embedding sets, from one matrix product."""

from __future__ import annotations

from typing import Literal

import numpy as np

from equal.ot._backend import SINGLE_THREAD_MAX_FLOPS, Array, Ops, blas_limit, get_ops

__all__ = ["COSTS", "Cost", "cost_matrix"]

Cost = Literal["euclidean", "cosine", "sqeuclidean"]
COSTS: tuple[str, ...] = ("euclidean", "cosine", "sqeuclidean")

_UNIT_ATOL = 1e-3
"""Tolerance on ``|‖x‖ − 1|`` for the cosine cost, the same as :func:`equal.check_embeddings`."""


def check_cost(cost: object) -> str:
    """``cost`` if it names a supported cost, else a ValueError listing them."""
    if cost not in COSTS:
        raise ValueError(f"cost={cost!r} must be one of {', '.join(COSTS)}.")
    return str(cost)


def cost_matrix(X: Array, Y: Array, cost: Cost = "euclidean") -> Array:
    r"""Pairwise cost between the rows of ``X`` and the rows of ``Y``.

    All three costs come from one matrix product ``X Yᵀ``, computed in float64:

    .. math::

        \text{cosine: } C_{ij} = \max(0,\ 1 - x_i^\top y_j) \qquad
        \text{sqeuclidean: } C_{ij} = \max(0,\ \|x_i\|^2 + \|y_j\|^2 - 2 x_i^\top y_j) \qquad
        \text{euclidean: } C_{ij} = \sqrt{\text{sqeuclidean}_{ij}}

    For unit vectors the Euclidean cost is ``sqrt(2 − 2 cos)``, EQUAL's reward cost. The Euclidean costs
    use the norm expansion, so they are right for vectors of any norm; the cosine cost assumes unit rows
    and raises otherwise (normalise with :func:`equal.l2_normalize`). The clipping at 0 removes the
    rounding error of the expansion, which is largest for (near-)duplicate rows.

    Parameters
    ----------
    X : ndarray of shape (n, d), float32 or float64, or torch.Tensor
        First set, one row per point.
    Y : ndarray of shape (m, d), float32 or float64, or torch.Tensor
        Second set, same ``d`` (and, for tensors, the same device as ``X``).
    cost : {"euclidean", "cosine", "sqeuclidean"}, default="euclidean"
        The ground cost.

    Returns
    -------
    ndarray of shape (n, m), float64
        The cost matrix; a float64 tensor on ``X``'s device when ``X`` is a torch tensor.

    Raises
    ------
    ValueError
        If an input is not 2-D, is empty, holds NaN/inf, the dimensions differ, ``cost`` is unknown, or
        ``cost="cosine"`` and a row is not unit-norm.

    See Also
    --------
    scipy.spatial.distance.cdist : the same values, computed pair by pair.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> cost_matrix(X, X, "cosine")
    array([[0., 1.],
           [1., 0.]])
    """
    cost = check_cost(cost)
    ops = get_ops(X)
    X_ = _as_points(ops, X, "X")
    Y_ = _as_points(ops, Y, "Y")
    if X_.shape[1] != Y_.shape[1]:
        raise ValueError(f"X has d={X_.shape[1]} columns but Y has d={Y_.shape[1]}; they must match.")
    if cost == "cosine":
        _check_unit(ops, X_, "X")
        _check_unit(ops, Y_, "Y")
    return costs_from_points(ops, X_, Y_, cost)


def _as_points(ops: Ops, X: Array, name: str) -> Array:
    shape = tuple(getattr(X, "shape", np.shape(X)))
    if len(shape) != 2 or shape[0] < 1:
        raise ValueError(f"{name} must be 2-D of shape (n, d) with n >= 1; got shape {shape}.")
    if ops.name == "numpy" and not np.issubdtype(np.asarray(X).dtype, np.number):
        raise ValueError(f"{name} must be numeric; got dtype={np.asarray(X).dtype}.")
    X_ = ops.asarray(X, ops.float64)
    if not ops.isfinite_all(X_):
        raise ValueError(f"{name} contains NaN or infinity.")
    return X_


def _check_unit(ops: Ops, X: Array, name: str) -> None:
    sq = (X * X).sum(1)
    dev = ops.to_numpy(abs(sq**0.5 - 1.0))
    if dev.size and dev.max() > _UNIT_ATOL:
        i = int(np.argmax(dev))
        raise ValueError(
            f"{name} must have unit-norm rows for cost='cosine' (|‖x‖−1| <= {_UNIT_ATOL}); row {i} has norm "
            f"{float(ops.to_numpy(sq)[i]) ** 0.5:.4g}. Normalise it with equal.l2_normalize or use a "
            "Euclidean cost."
        )


def costs_from_points(ops: Ops, X: Array, Y: Array, cost: str) -> Array:
    """Cost matrix from float64 points, without validation.

    Parameters
    ----------
    ops : Ops
        Array backend of ``X`` and ``Y``.
    X : array of shape (..., n, d), float64
        One set, or a stack of sets (the leading dimensions are folded into one matrix product).
    Y : array of shape (m, d), float64
        The other set.
    cost : str
        One of :data:`COSTS`.

    Returns
    -------
    array of shape (..., n, m), float64
    """
    lead = tuple(X.shape[:-1])
    X2 = X.reshape(-1, X.shape[-1])
    with blas_limit(ops, X2.shape[0] * X2.shape[1] * Y.shape[0] <= SINGLE_THREAD_MAX_FLOPS):
        G = X2 @ Y.T
    if cost == "cosine":
        C = ops.clamp_min_(1.0 - G, 0.0)
    else:
        G *= -2.0
        G += (X2 * X2).sum(1)[:, None]
        G += (Y * Y).sum(1)[None, :]
        C = ops.clamp_min_(G, 0.0)
        if cost == "euclidean":
            C = ops.sqrt_(C)
    return C.reshape(*lead, Y.shape[0])
