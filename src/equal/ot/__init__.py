"""Optimal transport between embedding sets: IPOT, Sinkhorn, exact (POT), and the batched reward distance.

Solvers follow POT's argument order ``solver(a, b, M, reg_or_beta, *, ...)``: ``a`` (n,) and ``b`` (m,)
are the weights (None or empty means uniform), ``M`` (n, m) the cost matrix. Every solver returns an
:class:`OTResult`; a torch ``M`` is solved in torch on its device and gives a torch plan.

Which method when (measured in ``benchmarks/bench_ot.py``; numbers in ``benchmarks/RESULTS.md``):

* :func:`ipot` (the default of :func:`distance`): exact to a certified relative ``tol`` (1e-3), no POT
  needed, numpy or torch (CUDA), and batched for many small problems (:func:`distance_batch`, the
  bandit's reward step). On one CPU problem of up to ~1000 points per side it is as fast as POT's exact
  solver and 40–60× faster than EQUAL's code path.
* :func:`emd`: POT's network simplex, exact to machine precision; the fastest exact CPU solver for a
  single problem, and beyond ~1000 points per side faster than IPOT on a CPU.
* :func:`sinkhorn`: entropic OT; biased by ``reg`` (1.5–5% at reg = 0.01–0.05 on unit-vector costs), so
  use it only when a smoothed distance is what you want.

:class:`RunningDistance` follows the distance of a growing set (the pairs kept so far) to the target on a
fixed-size reservoir sample, so its cost per round does not grow with the run.
"""

from equal.ot._common import OTResult
from equal.ot._cost import COSTS, cost_matrix
from equal.ot._distance import METHODS, distance, distance_batch
from equal.ot._exact import emd
from equal.ot._ipot import ipot
from equal.ot._running import RunningDistance
from equal.ot._sinkhorn import sinkhorn

__all__ = [
    "COSTS",
    "METHODS",
    "OTResult",
    "RunningDistance",
    "cost_matrix",
    "distance",
    "distance_batch",
    "emd",
    "ipot",
    "sinkhorn",
]
