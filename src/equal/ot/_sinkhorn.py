"""Entropic optimal transport (Sinkhorn), stabilised by absorbing the scalings into the potentials."""

from __future__ import annotations

import math
import warnings
from typing import Any

from equal.errors import ConvergenceWarning
from equal.ot._backend import blas_limit, get_ops
from equal.ot._common import OTResult, check_float, check_int, check_problem, expand, restrict

__all__ = ["sinkhorn"]

_ABSORB = 1e50
"""Absorb the scalings into the potentials once one leaves [1/_ABSORB, _ABSORB] (float64 is safe to 1e308)."""


def sinkhorn(
    a: Any,
    b: Any,
    M: Any,
    reg: float,
    *,
    max_iter: int = 1000,
    tol: float = 1e-9,
    check_every: int = 10,
    warn: bool = True,
) -> OTResult:
    r"""Entropy-regularised optimal transport by Sinkhorn's algorithm, stabilised.

    Solves :math:`\min_{\Gamma \in \Pi(a, b)} \langle M, \Gamma \rangle - \mathrm{reg}\, H(\Gamma)` by
    alternating scalings :math:`u = a / K v,\ v = b / K^\top u` of the kernel
    :math:`K_{ij} = e^{(f_i + g_j - M_{ij})/\mathrm{reg}}`. The potentials start at the row minima of ``M``
    and the column minima of the remainder, so every row and column of ``K`` holds a 1, and whenever a
    scaling leaves [1e-50, 1e50] it is absorbed into ``f, g`` and ``K`` is recomputed (Schmitzer 2019).
    A small ``reg`` therefore slows convergence but does not overflow or give NaN; POT's default
    ``ot.sinkhorn`` divides by zero once a whole row of ``exp(−M/reg)`` underflows (``M/reg`` > ~745).

    The cost is biased upward by the entropy term (by about ``reg·log(n·m)`` at most); use :func:`ipot` or
    :func:`emd` for the exact value.

    Parameters
    ----------
    a : array-like of shape (n,), or None
        Source weights; None or empty means uniform.
    b : array-like of shape (m,), or None
        Target weights with the same total mass; None or empty means uniform.
    M : ndarray of shape (n, m), or torch.Tensor of shape (n, m)
        Cost matrix; a tensor is solved in torch on its device.
    reg : float
        Entropic regularisation (> 0), in the units of ``M``.
    max_iter : int, default=1000
        Maximum number of Sinkhorn iterations (one ``u`` and one ``v`` update each).
    tol : float, default=1e-9
        Stop when the L1 violation of the row marginal, ``‖Γ1 − a‖₁``, is at most ``tol`` (the column
        marginal is exact after each ``v`` update). Same default as POT's ``stopThr``.
    check_every : int, default=10
        Iterations between two marginal checks.
    warn : bool, default=True
        Emit :class:`equal.ConvergenceWarning` if ``tol`` was not reached.

    Returns
    -------
    OTResult
        ``plan`` (n, m) float64 (type and device of ``M``), ``cost = ⟨M, plan⟩`` (no entropy term, like
        ``ot.sinkhorn2``), ``n_iter``, ``converged``, ``err`` the final marginal violation.

    Raises
    ------
    ValueError
        On bad shapes or weights, a NaN/inf cost, or an out-of-range parameter.

    See Also
    --------
    ipot : exact OT with Sinkhorn-like steps.
    ot.sinkhorn2 : POT's version (same value for the same ``reg``).

    References
    ----------
    1. M. Cuturi. "Sinkhorn Distances: Lightspeed Computation of Optimal Transport." NeurIPS 2013.
    2. B. Schmitzer. "Stabilized Sparse Scaling Algorithms for Entropy Regularized Transport Problems."
       SIAM J. Sci. Comput. 41(3), 2019.

    Examples
    --------
    >>> import numpy as np
    >>> M = np.array([[0.0, 1.0], [1.0, 0.0]])
    >>> round(sinkhorn([0.5, 0.5], [0.5, 0.5], M, 0.1).cost, 6)
    4.5e-05
    """
    reg = check_float("reg", reg, positive=True)
    max_iter = check_int("max_iter", max_iter, 1)
    tol = check_float("tol", tol, positive=False)
    check_every = check_int("check_every", check_every, 1)
    ops = get_ops(M)
    a_, b_, M_ = check_problem(a, b, M, ops)
    rows, cols, Ms = restrict(ops, a_, b_, M_)
    mu = ops.asarray(a_[rows], ops.float64)
    nu = ops.asarray(b_[cols], ops.float64)
    tiny = 1e-300

    with blas_limit(ops):
        f = ops.amin(Ms, 1)
        g = ops.amin(Ms - f[:, None], 0)

        def kernel() -> Any:
            K = f[:, None] + g[None, :] - Ms
            K *= 1.0 / reg
            return ops.exp_(K)

        K = kernel()
        u = ops.full((rows.size,), 1.0, ops.float64)
        v = ops.full((cols.size,), 1.0, ops.float64)
        err = float("inf")
        converged = False
        broke = False
        t = 0
        for t in range(1, max_iter + 1):
            u = mu / ops.clamp_min_(K @ v, tiny)
            v = nu / ops.clamp_min_(K.T @ u, tiny)
            if t % check_every == 0 or t == max_iter:
                err = ops.item(abs(u * (K @ v) - mu).sum())
                if not math.isfinite(err):
                    broke = True
                    break
                if err <= tol:
                    converged = True
                    break
            if ops.extreme(u, v) > _ABSORB:
                f = f + reg * ops.log(u)
                g = g + reg * ops.log(v)
                K = kernel()
                u = ops.full((rows.size,), 1.0, ops.float64)
                v = ops.full((cols.size,), 1.0, ops.float64)
        plan = K
        plan *= u[:, None]
        plan *= v[None, :]
        cost = ops.item((plan * Ms).sum())
    if warn and not converged:
        why = "numerical breakdown, increase reg" if broke else "raise max_iter or reg"
        warnings.warn(
            f"Sinkhorn did not reach tol={tol:g} in max_iter={max_iter} iterations (marginal violation "
            f"{err:.3g}); {why}.",
            ConvergenceWarning,
            stacklevel=2,
        )
    return OTResult(
        plan=expand(ops, plan, rows, cols, a_.size, b_.size),
        cost=cost,
        n_iter=t,
        converged=converged,
        err=err,
    )
