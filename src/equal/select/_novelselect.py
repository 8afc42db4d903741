r"""NovelSelect (Yang et al., ACL 2025): greedy selection maximising NovelSum-style novelty.

Reference-code semantics (``novelselect.py`` of UmeanNever/NovelSum)::

    s    = σ^β for every pool row (local_density, the pool is its own reference)
    S    = [one seeded random row]
    repeat until |S| = k:
        for every x not in S:   X_xs = (1 − cos(x, s)) · (s_x + s_s)   for s in S
                                score(x) = q_x · (1/|S|) Σ_r r^−α X_x,(r)     (X_x sorted ascending)
        S.append(argmax score)      (ties: lowest index; rows already in S are excluded)

The reference keeps the densities in float16, which flips picks on near-ties; here everything the score
depends on is float64, so the picks equal those of an exact float64 implementation of the formula.

Fast exact path
---------------
The direct method recomputes and re-sorts all |S| values of every candidate at every step:
Θ(n k² (d + log k)) in total. Write F_t(x) = Σ_r w_r X_x,(r) with decreasing weights w_r = r^−α. By the
rearrangement inequality F_t(x) is the *smallest* w-weighted sum over all orderings of x's values, so
placing a newly added value v last gives

    F_{t+1}(x) <= F_t(x) + w_{t+1} · v.

Inserting v first is another ordering, so also F_{t+1}(x) <= w_1 v + G_1(x) with G_l = Σ_r w_{r+l} X_(r)
(bounded the same way); the smaller of the two is tight both for candidates far from the new pick (v
lands last) and for those next to it (v lands first).

Every step therefore costs one matrix–vector product (the new selected row against the pool) to keep
upper bounds UB(x) >= F_t(x) for all x, and the exact F_t is computed, from the coordinates in float64, only
for the candidates whose bound can still reach the best exact score found so far (CELF-style lazy
evaluation; an evaluated candidate's bounds are reset to exact values). The bound column is computed in
float32 and raised by a rigorous bound on its rounding error, so no candidate that could win or tie is
ever skipped: the selection is identical to the direct method's, ties (lowest index) included.
Cost: O(k n d) memory-bound work for the columns plus O(Σ_t m_t t d) for the m_t exact evaluations of
step t (about 80 per step at n = 50,000 in ``benchmarks/bench_diversity.py``), instead of Θ(n k² d).
"""

from __future__ import annotations

import itertools
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from equal._validation import SeedLike, as_generator, check_embeddings
from equal.diversity._density import _check_n_neighbors, _check_power, density_weights
from equal.diversity._device import resolve_device
from equal.diversity._parallel import available_cores, blas_single_thread
from equal.select._common import check_k, check_quality, seed_param
from equal.select._types import Selection

__all__ = ["novelselect"]

logger = logging.getLogger(__name__)

_U32 = 2.0**-24


def _inverse_norms(X: np.ndarray) -> np.ndarray:
    """1 / ‖x‖ in float64 per row (0 for zero rows, which then have cosine 0 with everything)."""
    n = X.shape[0]
    out = np.empty(n, dtype=np.float64)
    step = max(1, (32 * 2**20) // max(1, 8 * X.shape[1]))
    for a in range(0, n, step):
        blk = X[a : a + step].astype(np.float64)
        out[a : a + step] = np.sqrt(np.einsum("ij,ij->i", blk, blk))
    with np.errstate(divide="ignore"):
        inv = np.where(out > 0, 1.0 / out, 0.0)
    return inv


def novelselect_lazy(
    X: np.ndarray,
    s: np.ndarray,
    k: int,
    first: int,
    distance_power: float,
    quality: np.ndarray | None,
    *,
    batch: int = 32,
    levels: int = 2,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Exact NovelSelect from start row ``first`` by lazy evaluation (see the module docstring).

    Parameters
    ----------
    X : ndarray of shape (n, d), float32
        Raw pool embeddings (normalised here, in float64 for exact scores).
    s : ndarray of shape (n,), float64
        Densities σ^β.
    k : int
        Number of rows to select, 1 <= k <= n.
    first : int
        The first selected row.
    distance_power : float
        α of the rank weights r^−α. The bounds need non-increasing weights; with α < 0 every candidate
        is evaluated at every step (the direct method).
    quality : ndarray of shape (n,), float64, >= 0, or None
        Multiplier of the score.
    batch : int, default=32
        Candidates evaluated in the first round of a step.
    levels : int, default=2
        Extra bounds kept per candidate on the shifted sums G_l = Σ_r w_{r+l} X_(r), l = 1..levels.
        Inserting the new value first is another ordering, so F_{t+1} <= w_1 v + G_1 (and likewise
        G_l <= w_{l+1} v + G_{l+1}); this is tight for candidates close to the new pick, where
        F_t + w_{t+1} v is loosest.

    Returns
    -------
    indices : ndarray of shape (k,), int64
    scores : ndarray of shape (k,), float64
        Score of each pick when taken (NaN for the random first pick).
    stats : dict
        ``evaluations`` (exact candidate scores computed) and ``rounds``.
    """
    workers = available_cores()
    with blas_single_thread(), ThreadPoolExecutor(max_workers=workers) as pool:
        return _lazy(X, s, k, first, distance_power, quality, batch, levels, pool, workers)


def _level_update(U: np.ndarray, v: np.ndarray, w: np.ndarray, t: int, L: int) -> None:
    """Raise the bounds U (L + 1, m) after a value bounded by v (m,) joins every candidate's list."""
    for lev in range(L + 1):  # ascending, so U[lev + 1] is still the old bound
        new = U[lev] + w[t + lev] * v
        if lev < L:
            np.minimum(new, U[lev + 1] + w[lev] * v, out=new)
        U[lev] = new


def _lazy(
    X: np.ndarray,
    s: np.ndarray,
    k: int,
    first: int,
    distance_power: float,
    quality: np.ndarray | None,
    batch: int,
    levels: int,
    pool: ThreadPoolExecutor,
    workers: int,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    n, d = X.shape
    L = levels
    inv = _inverse_norms(X)
    w = np.arange(1, k + L + 1, dtype=np.float64) ** (-distance_power)
    monotone = distance_power >= 0
    # A float32 dot product of two raw rows errs by at most γ_d Σ|x_i y_i| <= γ_d ‖x‖‖y‖ (γ_d ≈ d u), so
    # after dividing by the norms the cosine is off by at most γ_d, plus a few u for the conversions.
    margin = (d + 6) * _U32 * 1.01

    ES = np.empty((k, d), dtype=np.float64)  # selected rows, normalised in float64
    sS = np.empty(k, dtype=np.float64)
    indices = np.empty(k, dtype=np.int64)
    scores = np.full(k, np.nan)
    taken = np.zeros(n, dtype=bool)
    # UB[0] bounds F_t = Σ_r w_r X_(r); UB[l] bounds G_l = Σ_r w_{r+l} X_(r).
    UB = np.zeros((L + 1, n), dtype=np.float64)
    stats = {"evaluations": 0, "rounds": 0}
    # The column update is memory-bound; one slice of the pool per core.
    cuts = np.linspace(0, n, workers + 1).astype(int)

    def add(j: int, t: int) -> None:
        ES[t] = X[j].astype(np.float64) * inv[j]
        sS[t] = s[j]
        indices[t] = j
        taken[j] = True
        if not monotone:
            return
        xj = X[j]

        def update(a: int, b: int) -> None:
            # the value X_xj of every candidate, rounded up by the float32 error margin
            v = (X[a:b] @ xj).astype(np.float64)
            v *= inv[a:b]
            v *= -inv[j]
            v += 1.0 + margin
            v *= s[a:b] + s[j]
            _level_update(UB[:, a:b], v, w, t, L)

        for fut in [pool.submit(update, int(a), int(b)) for a, b in itertools.pairwise(cuts)]:
            fut.result()

    def exact(C: np.ndarray, t: int) -> np.ndarray:
        EC = X[C].astype(np.float64) * inv[C, None]
        A = 1.0 - EC @ ES[:t].T
        A *= s[C, None] + sS[None, :t]
        A.sort(axis=1)
        return np.stack([A @ w[lev : lev + t] for lev in range(L + 1)])

    add(first, 0)
    for t in range(1, k):
        bounds = UB[0] * quality if quality is not None else UB[0].copy()
        bounds[taken] = -np.inf
        if not monotone:
            bounds[~taken] = np.inf
        best_val, best_idx = -np.inf, -1
        m = min(batch, n - t)
        while True:
            C = np.argpartition(-bounds, m - 1)[:m] if m < n else np.arange(n)
            C = C[bounds[C] > -np.inf]
            if C.size == 0:
                break
            Fs = exact(C, t)
            stats["evaluations"] += int(C.size)
            stats["rounds"] += 1
            UB[:, C] = Fs
            bounds[C] = -np.inf
            vals = Fs[0] * quality[C] if quality is not None else Fs[0]
            top = vals.max()
            j = int(C[vals == top].min())
            if top > best_val or (top == best_val and j < best_idx):
                best_val, best_idx = float(top), j
            # Whatever is left with a bound below the best (minus a float64 rounding allowance) can
            # neither beat nor tie it; the rest is evaluated in the next round.
            m = int(np.count_nonzero(bounds >= best_val - 1e-12 * abs(best_val)))
            if m == 0:
                break
        add(best_idx, t)
        scores[t] = best_val / t
    return indices, scores, stats


def novelselect(
    X: np.ndarray,
    k: int,
    *,
    n_neighbors: int = 10,
    density_power: float = 0.5,
    distance_power: float = 1.0,
    quality: np.ndarray | None = None,
    seed: SeedLike = 42,
    device: str = "auto",
) -> Selection:
    r"""Select ``k`` rows greedily by NovelSelect (reference-code semantics, exact float64 scores).

    .. math::

        x_{t+1} = \arg\max_{x \notin S} \; q_x \frac{1}{|S|} \sum_{r=1}^{|S|} r^{-\alpha} X_{x,(r)},
        \qquad X_{xs} = (1 - \cos(x, s))\,(\sigma_x^\beta + \sigma_s^\beta)

    with :math:`X_{x,(r)}` the values of x against the selected set sorted ascending.

    Parameters
    ----------
    X : array-like of shape (n, d)
        Raw pool embeddings (normalised internally for the cosine; the density uses the raw vectors).
    k : int
        Number of rows to select, 1 <= k <= n.
    n_neighbors : int, default=10
        K of the density σ (the pool is its own reference).
    density_power : float, default=0.5
        β.
    distance_power : float, default=1.0
        α of the rank weights r^−α.
    quality : array-like of shape (n,) or None, default=None
        Non-negative quality scores; they multiply the novelty score.
    seed : int, Generator or None, default=42
        Seeds the random first pick.
    device : {"auto", "cpu", "cuda", "cuda:N"}, default="auto"
        Validated for API symmetry with :func:`equal.diversity.novelsum`; the lazy exact algorithm runs on
        the CPU (its cost is dominated by one memory-bound matrix–vector product per step), and a CUDA
        request is logged and served on the CPU.

    Returns
    -------
    Selection
        ``indices`` in selection order (the first is the random start); ``scores[t]`` is the score of pick
        t when it was taken (NaN for the first).

    Notes
    -----
    Identical picks to the direct method that recomputes and re-sorts every candidate's values at every
    step, at a small fraction of the cost (see the module docstring and ``benchmarks/bench_diversity.py``).
    The reference code's first pick is ``np.random.randint`` under ``np.random.seed(42)``; ours comes from
    ``numpy.random.default_rng(seed)``, so the start row differs from the reference for the same seed.
    The reference (before its Sep 2025 fix) could re-select a row; here selected rows are excluded.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).standard_normal((100, 16)).astype(np.float32)
    >>> sel = novelselect(X, 5, seed=0)
    >>> sel.indices.shape, len(set(sel.indices.tolist()))
    ((5,), 5)
    """
    X = check_embeddings(X, name="X", normalized=False)
    n = X.shape[0]
    k = check_k(k, n)
    K = _check_n_neighbors(n_neighbors)
    beta = _check_power(density_power, "density_power")
    alpha = _check_power(distance_power, "distance_power")
    q = check_quality(quality, n, nonnegative=True)
    if resolve_device(device) != "numpy":
        logger.warning("novelselect runs on the CPU; device=%r is ignored.", device)
    rng = as_generator(seed)
    s = density_weights(X, None, K, beta)
    first = int(rng.integers(n))
    indices, scores, _ = novelselect_lazy(X, s, k, first, alpha, q)
    params = {
        "k": k,
        "n_neighbors": K,
        "density_power": beta,
        "distance_power": alpha,
        "quality": q is not None,
        "seed": seed_param(seed),
    }
    return Selection(indices=indices, scores=scores, method="novelselect", params=params)
