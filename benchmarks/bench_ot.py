"""Benchmark equal.ot: IPOT (numpy, torch) vs EQUAL's reference code path, POT Sinkhorn and POT exact.

Data: clustered synthetic unit vectors (two samples drawn from different mixtures of the same 20
Gaussian blobs, normalised), the shape of sentence embeddings; Euclidean cost, uniform weights.
Every time includes the cost matrix. The relative error is against ``ot.emd2`` on the same costs.

EQUAL's path is reimplemented here as its ``otscore.py`` runs it: cost by broadcasting
``np.linalg.norm(X[:, None] - Y[None], axis=2)`` on float32 embeddings, then ``ipot_WD(beta=1,
max_iter=500, L=10)``, which materialises ``Q`` and ``Γ`` and evaluates ``⟨C, Γ⟩`` at every iteration.

Also timed: the bandit's reward step, 50 candidate sets of 40–60 points against 100 targets at
d=768, with ``distance_batch`` against a loop of EQUAL-style calls.

    python benchmarks/bench_ot.py            # n = m = 500, 1000, 2000 at d = 384 (a few minutes)
    python benchmarks/bench_ot.py --quick    # n = m = 300, 500; reward step with 3 repeats

Prints a table and rewrites its own section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from _results import write_section
from equal import ConvergenceWarning, l2_normalize
from equal.ot import cost_matrix, distance, distance_batch, ipot, sinkhorn

SECTION = "bench_ot"

BROADCAST_MAX_BYTES = 2 << 30
"""Above this the broadcast (n, m, d) float32 difference array is timed on a row block and scaled up."""


def make_sets(n: int, m: int, d: int, seed: int, k: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Two unit-vector samples (float32) from different mixtures of the same ``k`` blobs."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    X = centres[rng.choice(k, n, p=rng.dirichlet(np.ones(k)))] + 0.6 * rng.standard_normal((n, d))
    Y = centres[rng.choice(k, m, p=rng.dirichlet(np.ones(k)))] + 0.6 * rng.standard_normal((m, d))
    return l2_normalize(X), l2_normalize(Y)


# ---------------------------------------------------------------- EQUAL's reference code path


def equal_cost(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """EQUAL's ``compute_cost_matrix_2d``: broadcast difference and norm (float32 in, float32 out)."""
    return np.linalg.norm(X[:, np.newaxis, :] - Y[np.newaxis, :, :], axis=2)


def equal_ipot(a1: np.ndarray, a2: np.ndarray, C: np.ndarray, beta: float = 1, max_iter: int = 500,
               L: int = 10, epsilon: float = 1e-8) -> float:
    """EQUAL's ``ipot_WD`` as called by ``get_optimal_score`` (use_path=True, return_loss=True)."""
    ns, nt = len(a1), len(a2)
    v = np.ones(nt)
    P = np.ones((ns, nt)) / (ns * nt)
    K = np.exp(-C / beta)
    loss = []
    for _ in range(max_iter):
        Q = K * P
        for _ in range(L):
            Qv = np.matmul(Q, v) + epsilon
            u = a1 / Qv
            Qtu = np.matmul(Q.T, u) + epsilon
            v = a2 / Qtu
        P = np.outer(u, v) * Q
        loss.append(np.sum(P * C))
    return float(loss[-1])


def time_equal(X: np.ndarray, Y: np.ndarray) -> tuple[float, float, float, str]:
    """Seconds for EQUAL's cost matrix and its IPOT, the value, and a note on what was extrapolated."""
    n, m, d = len(X), len(Y), X.shape[1]
    note = ""
    if n * m * d * 4 > BROADCAST_MAX_BYTES:
        rows = max(1, BROADCAST_MAX_BYTES // (m * d * 4) // 2)
        t0 = time.perf_counter()
        equal_cost(X[:rows], Y)
        t_cost = (time.perf_counter() - t0) * n / rows
        C = cost_matrix(X, Y).astype(np.float32)  # same values, for the IPOT part
        note = f"cost matrix timed on {rows} of {n} rows and scaled"
    else:
        t0 = time.perf_counter()
        C = equal_cost(X, Y)
        t_cost = time.perf_counter() - t0
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    if n * m > 1_500_000:
        outer = 25
        t0 = time.perf_counter()
        equal_ipot(a, b, C, max_iter=outer)
        t_ipot = (time.perf_counter() - t0) * 500 / outer
        # our IPOT with the same settings runs the same iterates (tests/test_ot.py), so it gives the value
        value = ipot(a, b, C.astype(np.float64), tol=0, max_iter=500, inner_iter=10).cost
        note += ("; " if note else "") + f"IPOT timed for {outer} of 500 iterations and scaled"
    else:
        t0 = time.perf_counter()
        value = equal_ipot(a, b, C)
        t_ipot = time.perf_counter() - t0
    return t_cost, t_ipot, value, note


# ---------------------------------------------------------------- timing helpers


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Fastest of ``repeats`` runs (the machine is shared, so the minimum is the least disturbed)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def torch_threads() -> list[int]:
    """torch CPU thread counts to time: all cores (as configured) and one (robust on a busy machine)."""
    cores = os.cpu_count() or 1
    return [cores, 1] if cores > 1 else [1]


@contextlib.contextmanager
def torch_threads_set(threads: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_size(n: int, d: int, repeats: int, seed: int) -> list[dict[str, Any]]:
    import ot
    import torch

    X, Y = make_sets(n, n, d, seed)
    rows: list[dict[str, Any]] = []
    t_exact, exact = best_of(lambda: float(ot.emd2([], [], cost_matrix(X, Y), numItermax=10**7)), repeats)

    def add(method: str, seconds: float, value: float, iters: Any = "", note: str = "") -> None:
        rows.append({"n": n, "method": method, "seconds": seconds, "rel_err": (value - exact) / exact,
                     "iters": iters, "note": note})

    t_cost, t_ipot, value, note = time_equal(X, Y)
    add("EQUAL reference (broadcast cost + IPOT 500×10)", t_cost + t_ipot, value, 500,
        f"cost {t_cost:.2f} s + IPOT {t_ipot:.2f} s" + (f"; {note}" if note else ""))

    def ours() -> Any:
        return ipot(None, None, cost_matrix(X, Y))

    t, res = best_of(ours, repeats)
    add("equal ipot, numpy (tol=1e-3)", t, res.cost, res.n_iter, f"certified err {res.err:.1e}")
    t, res = best_of(lambda: ipot(None, None, cost_matrix(X, Y), tol=0, max_iter=500, inner_iter=10), repeats)
    add("equal ipot, numpy, EQUAL's fixed 500×10 (tol=0)", t, res.cost, res.n_iter)

    def ours_torch() -> Any:
        M = cost_matrix(torch.from_numpy(X), torch.from_numpy(Y))
        return ipot(None, None, M)

    for threads in torch_threads():
        with torch_threads_set(threads):
            t, res = best_of(ours_torch, repeats)
        add(f"equal ipot, torch CPU ({threads} thread{'s' if threads > 1 else ''})", t, res.cost, res.n_iter)

    for reg in (0.05, 0.01):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t, value = best_of(lambda reg=reg: float(ot.sinkhorn2([], [], cost_matrix(X, Y), reg)), repeats)
        conv = "" if not caught else "not converged in POT's default 1000 iterations"
        add(f"POT sinkhorn2 reg={reg}", t, value, "", conv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t, res = best_of(lambda: sinkhorn(None, None, cost_matrix(X, Y), 0.05), repeats)
    add("equal sinkhorn reg=0.05 (stabilised)", t, res.cost, res.n_iter)
    add("POT emd2 (exact, network simplex)", t_exact, exact, "")
    return rows


def run_reward(repeats: int, seed: int) -> list[dict[str, Any]]:
    """50 candidate sets of 40–60 points vs 100 targets at d=768: the bandit's reward step."""
    import ot

    rng = np.random.default_rng(seed)
    sizes = rng.integers(40, 61, size=50)
    Xs = [make_sets(int(s), 1, 768, seed + 1 + i)[0] for i, s in enumerate(sizes)]
    _, Y = make_sets(1, 100, 768, seed)
    exact = np.array([ot.emd2([], [], cost_matrix(X, Y)) for X in Xs])
    rows: list[dict[str, Any]] = []

    def add(method: str, seconds: float, values: np.ndarray, note: str = "") -> None:
        rows.append({"method": method, "seconds": seconds,
                     "rel_err": float(np.max(np.abs(values - exact) / exact)), "note": note})

    t, v = best_of(lambda: distance_batch(Xs, Y), repeats)
    add("equal distance_batch, numpy", t, v)
    for threads in torch_threads():
        with torch_threads_set(threads):
            t, v = best_of(lambda: distance_batch(Xs, Y, device="cpu"), repeats)
        add(f"equal distance_batch, torch CPU ({threads} thread{'s' if threads > 1 else ''})", t, v)
    t, v = best_of(lambda: np.array([distance(X, Y) for X in Xs]), repeats)
    add("equal distance, loop over sets", t, v)

    def equal_loop() -> np.ndarray:
        out = []
        for X in Xs:  # as otscore.py: reference (target) rows first
            C = equal_cost(Y, X)
            out.append(equal_ipot(np.full(len(Y), 1 / len(Y)), np.full(len(X), 1 / len(X)), C))
        return np.array(out)

    t, v = best_of(equal_loop, 1)
    add("EQUAL reference, loop over sets", t, v, f"{t / len(Xs):.3f} s per set")
    t, v = best_of(lambda: np.array([ot.emd2([], [], cost_matrix(X, Y)) for X in Xs]), repeats)
    add("POT emd2, loop over sets", t, v)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (300, 500), fewer repeats")
    ap.add_argument("--sizes", type=int, nargs="*", help="n = m values (default 500 1000 2000)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=None, help="runs per timing, best kept (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = ap.parse_args()

    import ot
    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    sizes = args.sizes or ([300, 500] if args.quick else [500, 1000, 2000])
    repeats = args.repeats or (2 if args.quick else 3)

    rows = []
    for n in sizes:
        print(f"n = m = {n} ...", flush=True)
        rows += run_size(n, args.dim, repeats, args.seed)
    print("reward step ...", flush=True)
    reward = run_reward(repeats, args.seed)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    lines = [
        "## Optimal transport (`benchmarks/bench_ot.py`)",
        "",
        f"Data: clustered synthetic unit vectors (20 blobs), d={args.dim}, n = m, Euclidean cost, uniform "
        f"weights, seed {args.seed}; time = best of {repeats} runs, cost matrix included; error relative to "
        f"`ot.emd2`. Machine: {platform.machine()}, {threads} cores; numpy {np.__version__}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), POT {ot.__version__}; load average at the "
        f"end {load:.1f} (a shared machine: timings are upper bounds, ratios within one run are what count).",
        "",
        "| n = m | method | seconds | × vs EQUAL | × vs POT exact | rel. error vs exact | outer iters "
        "| note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        group = [r for r in rows if r["n"] == n]
        t_equal = group[0]["seconds"]
        t_exact = next(r["seconds"] for r in group if r["method"].startswith("POT emd2"))
        for r in group:
            lines.append(
                f"| {n} | {r['method']} | {r['seconds']:.3f} | {t_equal / r['seconds']:.1f} | "
                f"{t_exact / r['seconds']:.2f} | {r['rel_err']:+.1e} | {r['iters']} | {r['note']} |"
            )
    lines += [
        "",
        "Reward step (EQUAL's bandit): 50 candidate sets of 40–60 points each against 100 target points, "
        "d=768, all 50 OT distances:",
        "",
        "| method | seconds (all 50) | × vs EQUAL loop | max rel. error vs exact |",
        "|---|---|---|---|",
    ]
    t_eq = next(r["seconds"] for r in reward if r["method"].startswith("EQUAL"))
    for r in reward:
        note = f" ({r['note']})" if r["note"] else ""
        lines.append(f"| {r['method']}{note} | {r['seconds']:.3f} | {t_eq / r['seconds']:.1f} | "
                     f"{r['rel_err']:.1e} |")
    lines += ["", RECOMMENDATION]
    text = "\n".join(lines)
    print()
    print(text)
    if not args.no_write:
        write_section(SECTION, text)


RECOMMENDATION = """\
Which method when (CPU, this machine):

* **One problem of up to ~1000 points per side:** `ipot` (numpy, the default of `distance`) and POT's
  exact `emd` take about the same time, cost matrix included, and both are 40–60× faster than EQUAL's
  code path (0.25 s against 10.5 s at 1000 × 1000 in the run above). `emd` is exact to machine
  precision; `ipot` is exact to its certified `tol` (relative 1e-3: the plan is feasible and a dual
  bound closes the gap) and needs no POT. Beyond ~1000 points the matrices leave the cache, IPOT's loop
  becomes memory-bound (one multiply pass and two matrix-vector products per iteration) and POT's
  network simplex is faster on a CPU; run IPOT in torch on a GPU there.
* **The reward step (many small sets against one target):** `distance_batch` solves all 50 in one
  vectorised loop, within the 0.1 s budget and about 35× faster than EQUAL's loop. A loop of POT's
  exact solver (`distance_batch(..., method="exact")`) is as fast at these sizes and exact, so prefer it
  where POT is installed; `beta=0.2` roughly halves IPOT's time (5× fewer iterations).
* **torch on the CPU** is slower than numpy on 2 cores, and with torch's default thread count it
  thrashes when the machine is busy (2–40× slower in our runs); keep the numpy path on the CPU (it runs
  BLAS single-threaded for the same reason) or call `torch.set_num_threads(1)`. The torch path is for
  CUDA.
* **Sinkhorn** (`method="sinkhorn"`): only when an entropic (smoothed) distance is wanted. Its value is
  biased by 1.5–5% at reg = 0.01–0.05 on unit-vector costs, and shrinking reg multiplies the iterations
  (POT's plain version does not converge in its default 1000 iterations at reg=0.01); `equal.ot.sinkhorn`
  is stabilised, so a small reg is slow but never NaN."""


if __name__ == "__main__":
    main()
