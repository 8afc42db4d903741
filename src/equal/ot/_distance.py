"""OT distance between embedding sets: one pair, or many candidate sets against one target at once."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from equal._validation import check_embeddings
from equal.errors import ConvergenceWarning
from equal.ot._backend import Ops, torch_ops
from equal.ot._common import OTResult, check_float, check_int
from equal.ot._cost import Cost, check_cost, cost_matrix, costs_from_points
from equal.ot._exact import emd
from equal.ot._ipot import ipot, ipot_stack
from equal.ot._sinkhorn import sinkhorn

__all__ = ["METHODS", "distance", "distance_batch"]

Method = Literal["ipot", "sinkhorn", "exact"]
METHODS: tuple[str, ...] = ("ipot", "sinkhorn", "exact")

DEFAULT_REG = 0.05
"""Sinkhorn's ``reg`` when ``distance(method="sinkhorn")`` gets none (unit-vector costs lie in [0, 2])."""

_STACK = 1 << 24
"""Cost entries (128 MB in float64) per stack in :func:`distance_batch`; larger inputs run in chunks."""

_IPOT_KEYS = ("beta", "max_iter", "inner_iter", "tol", "check_every")


def _check_method(method: object) -> str:
    if method not in METHODS:
        raise ValueError(f"method={method!r} must be one of {', '.join(METHODS)}.")
    return str(method)


def _check_pair(X: Any, Y: Any, cost: str) -> tuple[np.ndarray, np.ndarray]:
    # only the cosine formula assumes unit vectors; the Euclidean ones use the norm expansion
    unit = cost == "cosine"
    X_ = check_embeddings(X, name="X", normalized=unit)
    Y_ = check_embeddings(Y, name="Y", normalized=unit)
    if X_.shape[1] != Y_.shape[1]:
        raise ValueError(f"X has d={X_.shape[1]} columns but Y has d={Y_.shape[1]}; they must match.")
    return X_, Y_


def _solve(method: str, a: Any, b: Any, M: Any, kw: dict[str, Any]) -> OTResult:
    if method == "ipot":
        return ipot(a, b, M, **kw)
    if method == "sinkhorn":
        reg = kw.pop("reg", DEFAULT_REG)
        return sinkhorn(a, b, M, reg, **kw)
    return emd(a, b, M, **kw)


def distance(
    X: Any,
    Y: Any,
    *,
    method: Method = "ipot",
    cost: Cost = "euclidean",
    a: Any = None,
    b: Any = None,
    device: str | None = None,
    **kw: Any,
) -> float:
    """Optimal-transport distance between two embedding sets: the single entry point.

    Builds the cost matrix (:func:`~equal.ot._cost_matrix`) and solves the transport problem. EQUAL's
    reward uses the defaults: IPOT with β=1 on the Euclidean cost of unit vectors, uniform weights
    (reward = 1 − distance − offset).

    Parameters
    ----------
    X : ndarray of shape (n, d), float32
        First set (e.g. the QA pairs extracted from one cluster). Unit-norm rows are required only for
        ``cost="cosine"``.
    Y : ndarray of shape (m, d), float32
        Second set (e.g. the target sample), same ``d``.
    method : {"ipot", "sinkhorn", "exact"}, default="ipot"
        :func:`~equal.ot._ipot` (exact to its ``tol``, relative 1e-3 by default), :func:`~equal.ot._sinkhorn`
        (entropic, biased by ``reg``, default ``reg=0.05``) or :func:`~equal.ot.emd` (POT's network simplex).
    cost : {"euclidean", "cosine", "sqeuclidean"}, default="euclidean"
        Ground cost.
    a : array-like of shape (n,), or None
        Weights of ``X``; None means uniform.
    b : array-like of shape (m,), or None
        Weights of ``Y``; None means uniform.
    device : str or None, default=None
        None computes in numpy; a torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``) computes the cost matrix
        and the IPOT/Sinkhorn iterations in torch there (``"exact"`` always runs on the CPU).
    **kw
        Passed to the solver: ``beta, max_iter, inner_iter, tol, check_every, warn`` (ipot);
        ``reg, max_iter, tol, check_every, warn`` (sinkhorn); ``max_iter, warn`` (exact).

    Returns
    -------
    float
        The transport cost ``⟨C, plan⟩``.

    Raises
    ------
    ValueError
        On an unknown ``method`` or ``cost``, inputs that are not 2-D finite embeddings of the same ``d``,
        non-unit rows with ``cost="cosine"``, or bad weights or solver settings.

    Warns
    -----
    ConvergenceWarning
        When the solver stopped before its tolerance (see its ``max_iter``).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    >>> round(distance(X, X[::-1]), 6)
    0.0
    """
    method = _check_method(method)
    cost = check_cost(cost)
    X_, Y_ = _check_pair(X, Y, cost)
    warn = bool(kw.pop("warn", True))
    if device is not None and method != "exact":
        ops = torch_ops(device)
        M = costs_from_points(ops, ops.asarray(X_, ops.float64), ops.asarray(Y_, ops.float64), cost)
    else:
        M = cost_matrix(X_, Y_, cost)
    res = _solve(method, a, b, M, {**kw, "warn": False})
    if warn and not res.converged:
        warnings.warn(
            f"distance(method={method!r}) did not converge (err={res.err:.3g} after {res.n_iter} "
            "iterations); raise max_iter.",
            ConvergenceWarning,
            stacklevel=2,
        )
    return float(res.cost)


def distance_batch(
    Xs: Sequence[Any],
    Y: Any,
    *,
    method: Method = "ipot",
    cost: Cost = "euclidean",
    b: Any = None,
    device: str | None = None,
    **kw: Any,
) -> np.ndarray:
    """OT distance of each of many small sets to one target set, solved together (the bandit's reward step).

    With ``method="ipot"`` the candidate sets are padded to a common size with zero-mass rows (uniform
    weights over each set's real rows), all cost matrices come from one matrix product, and IPOT runs on
    the whole (B, n_max, m) stack: one vectorised loop instead of B Python loops. Zero-mass rows do not
    change a problem's iterates, so each value equals ``distance(Xs[i], Y, ...)`` (to rounding; a problem
    leaves the stack as soon as its own duality gap meets ``tol``). Other methods loop over
    :func:`distance`.

    Parameters
    ----------
    Xs : sequence of B ndarrays of shape (n_i, d), float32
        Candidate sets, each with at least one row; unit-norm rows needed only for ``cost="cosine"``.
    Y : ndarray of shape (m, d), float32
        Target set.
    method : {"ipot", "sinkhorn", "exact"}, default="ipot"
        Solver (only "ipot" is batched).
    cost : {"euclidean", "cosine", "sqeuclidean"}, default="euclidean"
        Ground cost.
    b : array-like of shape (m,), or None
        Weights of ``Y``, summing to 1; None means uniform. Each candidate set has uniform weights.
    device : str or None, default=None
        None computes in numpy; a torch device (``"cpu"``, ``"cuda"``) computes in torch there.
    **kw
        Solver settings, as in :func:`distance`.

    Returns
    -------
    ndarray of shape (B,), float64
        ``out[i]`` is the OT cost between ``Xs[i]`` and ``Y``.

    Raises
    ------
    ValueError
        As :func:`distance`, naming the offending set ``Xs[i]``.

    Warns
    -----
    ConvergenceWarning
        Once, if any problem stopped before ``tol``.

    Examples
    --------
    >>> import numpy as np
    >>> Y = np.eye(3, dtype=np.float32)
    >>> np.round(distance_batch([Y[:1], Y], Y), 4)
    array([0.9428, 0.    ])
    """
    method = _check_method(method)
    cost = check_cost(cost)
    unit = cost == "cosine"
    Y_ = check_embeddings(Y, name="Y", normalized=unit)
    sets = []
    for i, X in enumerate(Xs):
        X_ = check_embeddings(X, name=f"Xs[{i}]", normalized=unit)
        if X_.shape[1] != Y_.shape[1]:
            raise ValueError(
                f"Xs[{i}] has d={X_.shape[1]} columns but Y has d={Y_.shape[1]}; they must match."
            )
        sets.append(X_)
    if not sets:
        return np.zeros(0, dtype=np.float64)
    warn = bool(kw.pop("warn", True))
    if method != "ipot":
        out = np.empty(len(sets))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            for i, X_ in enumerate(sets):
                out[i] = distance(X_, Y_, method=method, cost=cost, b=b, device=device, **kw)  # type: ignore[arg-type]
        if warn and any(issubclass(w.category, ConvergenceWarning) for w in caught):
            _warn_batch(method, sum(issubclass(w.category, ConvergenceWarning) for w in caught), len(sets))
        return out

    unknown = set(kw) - set(_IPOT_KEYS)
    if unknown:
        raise TypeError(f"distance_batch(method='ipot') got unexpected keyword arguments {sorted(unknown)}.")
    settings = {
        "beta": check_float("beta", kw.get("beta", 1.0), positive=True),
        "max_iter": check_int("max_iter", kw.get("max_iter", 2000), 1),
        "inner_iter": check_int("inner_iter", kw.get("inner_iter", 1), 1),
        "tol": check_float("tol", kw.get("tol", 1e-3), positive=False),
        "check_every": check_int("check_every", kw.get("check_every", 20), 1),
    }
    ops: Ops = torch_ops(device) if device is not None else Ops()
    m = Y_.shape[0]
    nu = _target_weights(b, m)
    cols = np.flatnonzero(nu > 0)
    Yc = ops.asarray(Y_[cols], ops.float64)
    nu_ = ops.asarray(nu[cols][None], ops.float64)

    # chunks of similar sizes keep the padding small when the input does not fit one stack
    order = np.argsort([len(X_) for X_ in sets], kind="stable")
    out = np.empty(len(sets))
    converged = np.ones(len(sets), dtype=bool)
    start = 0
    while start < len(order):
        stop = start + 1
        # sizes ascend, so the last set added fixes the padded size of the chunk
        while stop < len(order) and (stop + 1 - start) * len(sets[order[stop]]) * cols.size <= _STACK:
            stop += 1
        idx = order[start:stop]
        n_max = max(len(sets[i]) for i in idx)
        Xp = np.zeros((len(idx), n_max, Y_.shape[1]), dtype=np.float64)
        mu = np.zeros((len(idx), n_max))
        for k, i in enumerate(idx):
            Xp[k, : len(sets[i])] = sets[i]
            mu[k, : len(sets[i])] = 1.0 / len(sets[i])
        M = costs_from_points(ops, ops.asarray(Xp, ops.float64), Yc, cost)
        res = ipot_stack(ops, M, ops.asarray(mu, ops.float64), nu_, want_plans=False, **settings)  # type: ignore[arg-type]
        out[idx] = res.cost
        converged[idx] = res.converged
        start = stop
    if warn and not converged.all():
        _warn_batch(method, int((~converged).sum()), len(sets))
    return out


def _target_weights(b: Any, m: int) -> np.ndarray:
    if b is None or (hasattr(b, "__len__") and len(b) == 0):
        return np.full(m, 1.0 / m)
    arr = np.asarray(b, dtype=np.float64)
    if arr.shape != (m,):
        raise ValueError(f"b has shape {arr.shape}; expected ({m},) to match Y's rows.")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError("b must be finite and non-negative.")
    if abs(arr.sum() - 1.0) > 1e-6:
        raise ValueError(
            f"b must sum to 1 like each candidate set's uniform weights; got sum(b)={arr.sum():.10g}."
        )
    return arr


def _warn_batch(method: str, bad: int, total: int) -> None:
    warnings.warn(
        f"distance_batch(method={method!r}): {bad} of {total} problems did not converge; raise max_iter.",
        ConvergenceWarning,
        stacklevel=3,
    )
