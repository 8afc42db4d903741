"""Per-cluster Gaussians, the Fréchet (2-Wasserstein) distance between them and the cluster neighbour graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Literal

import numpy as np

from equal._validation import check_embeddings

__all__ = [
    "ClusterGaussians",
    "cluster_gaussians",
    "frechet_distance",
    "neighbor_graph",
    "pairwise_frechet",
]

_BLOCK_ELEMENTS = 4_000_000
"""Float64 elements (32 MB) per temporary block in :func:`pairwise_frechet`."""


@dataclass(frozen=True, eq=False)
class ClusterGaussians:
    """Mean and covariance of the members of each cluster, in one of three representations.

    Exactly one of ``covs`` and ``factors`` is set:

    * ``covs`` of shape (k, d, d): full covariances (``kind == "full"``);
    * ``covs`` of shape (k, d): diagonal covariances, i.e. per-dimension variances (``kind == "diagonal"``);
    * ``factors``: a tuple of k arrays ``F_i`` of shape (r_i, d) with ``Σ_i = F_iᵀ F_i`` and ``r_i <= d``
      (``kind == "factor"``). For a cluster with fewer members than dimensions ``F_i`` is the centred member
      matrix divided by ``sqrt(n_i)``; otherwise it is the ``R`` factor of its QR decomposition (d rows).
      This is exact and needs ``sum_i min(n_i, d) * d`` numbers instead of ``k * d * d`` (k=1000, d=768:
      4.7 GB for full covariances).

    Parameters
    ----------
    means : ndarray of shape (k, d), float64
        Cluster means; rows of empty clusters are NaN.
    sizes : ndarray of shape (k,), int64
        Members per cluster.
    covs : ndarray of shape (k, d, d) or (k, d), float64, or None
        Full or diagonal covariances.
    factors : tuple of k ndarrays of shape (r_i, d), float64, or None
        Covariance factors.
    """

    means: np.ndarray
    sizes: np.ndarray
    covs: np.ndarray | None = None
    factors: tuple[np.ndarray, ...] | None = None

    def __post_init__(self) -> None:
        means = np.asarray(self.means, dtype=np.float64)
        if means.ndim != 2:
            raise ValueError(f"means must be 2-D of shape (k, d); got shape {means.shape}.")
        k, d = means.shape
        sizes = np.asarray(self.sizes)
        if sizes.shape != (k,) or not np.issubdtype(sizes.dtype, np.integer):
            raise ValueError(
                f"sizes must be an integer array of shape ({k},); got {sizes.dtype} of shape {sizes.shape}."
            )
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "sizes", sizes.astype(np.int64))
        if (self.covs is None) == (self.factors is None):
            raise ValueError("ClusterGaussians needs exactly one of covs and factors.")
        if self.covs is not None:
            covs = np.asarray(self.covs, dtype=np.float64)
            if covs.shape not in ((k, d, d), (k, d)):
                raise ValueError(f"covs must have shape ({k}, {d}, {d}) or ({k}, {d}); got {covs.shape}.")
            object.__setattr__(self, "covs", covs)
        else:
            factors = tuple(np.asarray(f, dtype=np.float64) for f in self.factors)  # type: ignore[union-attr]
            if len(factors) != k:
                raise ValueError(f"factors must hold k={k} arrays; got {len(factors)}.")
            for i, f in enumerate(factors):
                if f.ndim != 2 or f.shape[1] != d:
                    raise ValueError(f"factors[{i}] must have shape (r, {d}); got {f.shape}.")
            object.__setattr__(self, "factors", factors)

    @property
    def kind(self) -> Literal["full", "diagonal", "factor"]:
        """How the covariances are stored: "full", "diagonal" or "factor"."""
        if self.covs is None:
            return "factor"
        return "diagonal" if self.covs.ndim == 2 else "full"

    @property
    def n_clusters(self) -> int:
        return int(self.means.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.means.shape[1])

    def covariance(self, i: int) -> np.ndarray:
        """Covariance of cluster ``i``: (d, d) float64, or (d,) variances when ``kind == "diagonal"``."""
        if self.covs is not None:
            return self.covs[i]
        f = self.factors[i]  # type: ignore[index]
        return f.T @ f

    def variances(self) -> np.ndarray:
        """Diagonal of every covariance: ndarray of shape (k, d), float64."""
        if self.covs is None:
            return np.stack([np.einsum("rd,rd->d", f, f) for f in self.factors])  # type: ignore[union-attr]
        if self.covs.ndim == 2:
            return self.covs
        return np.einsum("kii->ki", self.covs).copy()

    def traces(self) -> np.ndarray:
        """Trace of every covariance: ndarray of shape (k,), float64."""
        return self.variances().sum(axis=1)


def _check_labels(labels: object, n: int, n_clusters: int) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.shape != (n,):
        raise ValueError(f"labels must have shape (n,) = ({n},) to match X; got {lab.shape}.")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be integers; got dtype={lab.dtype}.")
    if n and (lab.min() < 0 or lab.max() >= n_clusters):
        raise ValueError(
            f"labels must lie in [0, n_clusters={n_clusters}); got values in [{lab.min()}, {lab.max()}]."
        )
    return lab.astype(np.int64, copy=False)


def cluster_gaussians(
    X: object,
    labels: object,
    n_clusters: int,
    *,
    diagonal: bool = False,
    low_rank: bool | None = None,
) -> ClusterGaussians:
    """Fit one Gaussian (maximum likelihood) to the members of each cluster.

    The covariance is the maximum-likelihood one, ``Σ_c = (1 / n_c) Σ_{x ∈ c} (x − μ_c)(x − μ_c)ᵀ``
    (divided by ``n_c``, not ``n_c − 1``): a cluster of one point has zero covariance, and no cluster gets
    an undefined one.
    Empty clusters get NaN means, zero covariance and size 0; :func:`pairwise_frechet` puts them at infinite
    distance from every other cluster.

    Parameters
    ----------
    X : array-like of shape (n, d)
        Embeddings (need not be normalised); accumulated in float64.
    labels : array-like of shape (n,), int
        Cluster of each row, in ``[0, n_clusters)``.
    n_clusters : int
        Number of clusters ``k`` (clusters without members are allowed).
    diagonal : bool, default=False
        Keep only per-dimension variances (``covs`` of shape (k, d)).
    low_rank : bool or None, default=None
        Store covariance factors instead of (k, d, d) matrices (see :class:`ClusterGaussians`). ``None``
        chooses factors whenever some non-empty cluster has fewer members than dimensions, where they save
        memory and make :func:`pairwise_frechet` cheaper. Must not be True with ``diagonal=True``.

    Returns
    -------
    ClusterGaussians
        With ``means`` (k, d) float64, ``sizes`` (k,) int64 and ``covs`` or ``factors``.
    """
    X = check_embeddings(X, name="X", normalized=False)
    n, d = X.shape
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, Integral) or n_clusters < 1:
        raise ValueError(f"n_clusters={n_clusters!r} must be an int >= 1.")
    k = int(n_clusters)
    lab = _check_labels(labels, n, k)
    if diagonal and low_rank:
        raise ValueError("low_rank=True cannot be combined with diagonal=True.")
    sizes = np.bincount(lab, minlength=k).astype(np.int64)
    if low_rank is None:
        low_rank = (not diagonal) and bool(np.any((sizes > 0) & (sizes < d)))

    order = np.argsort(lab, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    means = np.full((k, d), np.nan)
    covs: np.ndarray | None = None
    factors: list[np.ndarray] | None = None
    if diagonal:
        covs = np.zeros((k, d))
    elif low_rank:
        factors = []
    else:
        covs = np.zeros((k, d, d))
    for c in range(k):
        n_c = int(sizes[c])
        if n_c == 0:
            if factors is not None:
                factors.append(np.zeros((0, d)))
            continue
        members = X[order[bounds[c] : bounds[c + 1]]].astype(np.float64)
        mu = members.mean(axis=0)
        means[c] = mu
        centred = members - mu
        if diagonal:
            covs[c] = np.einsum("nd,nd->d", centred, centred) / n_c  # type: ignore[index]
        elif factors is not None:
            if n_c < d:
                factors.append(centred / np.sqrt(n_c))
            else:
                # RᵀR = CᵀC, with d rows instead of n_c and without squaring the condition number.
                factors.append(np.linalg.qr(centred / np.sqrt(n_c), mode="r"))
        else:
            covs[c] = centred.T @ centred / n_c  # type: ignore[index]
    return ClusterGaussians(
        means=means, sizes=sizes, covs=covs, factors=None if factors is None else tuple(factors)
    )


def _psd_eigh(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """eigh of a symmetric PSD matrix with rounding-level eigenvalues (incl. negative ones) set to zero."""
    w, V = np.linalg.eigh((cov + cov.T) / 2.0)
    tol = (w[-1] if w.size else 0.0) * (cov.shape[0] * np.finfo(np.float64).eps)
    return np.where(w > tol, w, 0.0), V


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix via eigh."""
    w, V = _psd_eigh(cov)
    return (V * np.sqrt(w)) @ V.T


def _psd_factor(cov: np.ndarray) -> np.ndarray:
    """``F`` of shape (r, d) with ``FᵀF = cov``, from eigh; zero eigenvalues dropped (r = rank)."""
    w, V = _psd_eigh(cov)
    keep = w > 0.0
    return (V[:, keep] * np.sqrt(w[keep])).T


def frechet_distance(
    mu1: object, cov1: object, mu2: object, cov2: object
) -> float:
    r"""Squared 2-Wasserstein (Fréchet) distance between two Gaussians.

    .. math::

        W_2^2 = \|\mu_1 - \mu_2\|^2 + \operatorname{tr}\big(\Sigma_1 + \Sigma_2
                - 2 (\Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2})^{1/2}\big)

    with true (symmetric, eigh-based) matrix square roots; small negative eigenvalues from rounding are
    clipped to zero and the result is clipped at 0. With diagonal covariances (variance vectors ``s``) this
    is :math:`\|\mu_1 - \mu_2\|^2 + \sum (\sqrt{s_1} - \sqrt{s_2})^2`.

    The *squared* distance is returned, as FID does and as EQUAL thresholds its ``d_ij`` (at 0.2). EQUAL's
    released code takes element-wise square roots and products instead of matrix ones, which is not W2 and
    can give NaN; this function computes the true distance.

    Parameters
    ----------
    mu1, mu2 : array-like of shape (d,)
        Means.
    cov1, cov2 : array-like of shape (d, d), or of shape (d,) for diagonal covariances
        Symmetric positive semi-definite covariances; both full or both diagonal.

    Returns
    -------
    float
        The squared distance, >= 0.

    Examples
    --------
    >>> import numpy as np
    >>> round(frechet_distance(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2)), 6)
    4.0
    """
    m1 = np.asarray(mu1, dtype=np.float64)
    m2 = np.asarray(mu2, dtype=np.float64)
    c1 = np.asarray(cov1, dtype=np.float64)
    c2 = np.asarray(cov2, dtype=np.float64)
    if m1.ndim != 1 or m1.shape != m2.shape:
        raise ValueError(f"mu1 and mu2 must be 1-D of the same shape (d,); got {m1.shape} and {m2.shape}.")
    d = m1.shape[0]
    if c1.shape != c2.shape or c1.shape not in ((d, d), (d,)):
        raise ValueError(
            f"cov1 and cov2 must both have shape ({d}, {d}) (full) or ({d},) (diagonal); "
            f"got {c1.shape} and {c2.shape}."
        )
    diff = m1 - m2
    mean_term = float(diff @ diff)
    if c1.ndim == 1:
        if (c1 < 0).any() or (c2 < 0).any():
            raise ValueError("Diagonal covariances (variances) must be non-negative.")
        return max(mean_term + float(np.sum((np.sqrt(c1) - np.sqrt(c2)) ** 2)), 0.0)
    s1 = _psd_sqrt(c1)
    prod = s1 @ c2 @ s1
    tr_sqrt = float(_sum_sqrt_eig((prod + prod.T) / 2.0))
    return max(mean_term + float(np.trace(c1) + np.trace(c2)) - 2.0 * tr_sqrt, 0.0)


def _sq_euclidean(A: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances between rows of ``A`` (exact differences, not the Gram trick)."""
    from scipy.spatial.distance import cdist

    return cdist(A, A, "sqeuclidean")


def _rank_buckets(ranks_sorted: np.ndarray) -> list[tuple[int, int, int]]:
    """Split rank-sorted clusters into consecutive buckets ``(start, end, padded_rank)``.

    A bucket's factors are zero-padded to its largest rank (zero rows leave ``FᵀF`` unchanged), so a bucket
    is one dense batch; ranks in a bucket stay within ~25% of each other to keep the padding cheap.
    """
    buckets = []
    k = len(ranks_sorted)
    start = 0
    while start < k:
        r0 = int(ranks_sorted[start])
        end = start + 1
        while end < k:
            r = int(ranks_sorted[end])
            if r > 1.25 * r0 + 4 or (end - start + 1) * max(r, 1) ** 2 > _BLOCK_ELEMENTS:
                break
            end += 1
        buckets.append((start, end, int(ranks_sorted[end - 1])))
        start = end
    return buckets


def _sum_sqrt_eig(G: np.ndarray) -> np.ndarray:
    """``Σ sqrt(λ)`` over the eigenvalues of each symmetric PSD matrix in the stack ``G`` (..., r, r).

    Eigenvalues below ``r · eps · λ_max`` are rounding noise of true zeros (low-rank products are the rule
    here) and are dropped: their square roots would otherwise add up to ~1e-8·sqrt(λ_max) each.
    """
    eig = np.linalg.eigvalsh(G)
    r = G.shape[-1]
    tol = eig[..., -1:] * (r * np.finfo(np.float64).eps) if r else 0.0
    return np.sqrt(np.where(eig > tol, eig, 0.0)).sum(axis=-1)


def _rank_buckets(ranks_sorted: np.ndarray) -> list[tuple[int, int, int]]:
    """Split rank-sorted clusters into consecutive buckets ``(start, end, padded_rank)``.

    A bucket's factors are zero-padded to its largest rank (zero rows leave ``FᵀF`` unchanged), so a bucket
    is one dense batch; ranks in a bucket stay within ~25% of each other to keep the padding cheap.
    """
    buckets = []
    k = len(ranks_sorted)
    start = 0
    while start < k:
        r0 = int(ranks_sorted[start])
        end = start + 1
        while end < k:
            r = int(ranks_sorted[end])
            if r > 1.25 * r0 + 4 or (end - start + 1) * max(r, 1) ** 2 > _BLOCK_ELEMENTS:
                break
            end += 1
        buckets.append((start, end, int(ranks_sorted[end - 1])))
        start = end
    return buckets


def _n_threads(n_jobs: int | None) -> int:
    if n_jobs is None or n_jobs == -1:
        from equal._threads import available_cores

        return available_cores()
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, Integral) or n_jobs < 1:
        raise ValueError(f"n_jobs={n_jobs!r} must be None, -1 or an int >= 1.")
    return int(n_jobs)


def _pairwise_nuclear(factors: Sequence[np.ndarray], n_threads: int = 1) -> np.ndarray:
    """Nuclear norms ``N[i, j] = ‖F_i F_jᵀ‖_*`` for every pair, as a symmetric (k, k) float64 array.

    ``‖F_i F_jᵀ‖_* = tr((Σ_i^{1/2} Σ_j Σ_i^{1/2})^{1/2})`` for ``Σ = FᵀF``. Clusters are visited in order of
    increasing rank, so for every later ``j`` the Gram matrix ``G = M Mᵀ`` of ``M = F_i F_jᵀ`` is on the
    smaller side (r_i × r_i) and all of them share one shape: each bucket of later clusters costs one GEMM,
    one batched matmul and one batched eigvalsh. Rows ``i`` are spread over ``n_threads`` threads (numpy
    releases the GIL in BLAS and LAPACK), each pair being computed by exactly one thread.
    """
    k = len(factors)
    nuc = np.zeros((k, k))
    if k < 2:
        return nuc
    d = factors[0].shape[1]
    ranks = np.array([f.shape[0] for f in factors], dtype=np.int64)
    order = np.argsort(ranks, kind="stable")
    buckets = _rank_buckets(ranks[order])
    padded = []
    for start, end, r_pad in buckets:
        P = np.zeros((end - start, r_pad, d))
        for t, j in enumerate(order[start:end]):
            P[t, : ranks[j]] = factors[j]
        padded.append(P.reshape(-1, d))

    def row(a: int) -> None:
        i = order[a]
        r_i = int(ranks[i])
        if r_i == 0:
            return
        F_i = factors[i]
        for (start, end, r_pad), P in zip(buckets, padded, strict=True):
            if end <= a + 1 or r_pad == 0:
                continue
            lo = max(start, a + 1)
            nb = end - lo
            M = F_i @ P[(lo - start) * r_pad :].T  # (r_i, nb * r_pad)
            M = M.reshape(r_i, nb, r_pad).transpose(1, 0, 2)  # (nb, r_i, r_pad)
            vals = _sum_sqrt_eig(np.matmul(M, M.transpose(0, 2, 1)))  # Gram (nb, r_i, r_i)
            js = order[lo:end]
            nuc[i, js] = vals
            nuc[js, i] = vals

    with _single_threaded_blas():
        if n_threads <= 1:
            for a in range(k - 1):
                row(a)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=n_threads) as pool:
                list(pool.map(row, range(k - 1)))
    return nuc


def _single_threaded_blas() -> contextlib.AbstractContextManager[object]:
    """Limit BLAS to one thread (threads only pay off here across rows; inside tiny GEMMs they contend)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn, optional here
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def pairwise_frechet(
    gaussians: ClusterGaussians, *, diagonal: bool | None = None, n_jobs: int | None = None
) -> np.ndarray:
    """Squared Fréchet (2-Wasserstein) distance between every pair of cluster Gaussians.

    ``D[i, j] = frechet_distance(means[i], cov_i, means[j], cov_j)`` for all pairs, computed without the loop:

    * diagonal: ``‖[μ_i, √s_i] − [μ_j, √s_j]‖²``, one vectorised pairwise distance;
    * full / factor: with ``Σ_i = F_iᵀ F_i``, ``tr((Σ_i^{1/2} Σ_j Σ_i^{1/2})^{1/2}) = ‖F_i F_jᵀ‖_*`` (nuclear
      norm), exact, computed from the eigenvalues of the smaller Gram matrix of ``F_i F_jᵀ``. For factor
      Gaussians of small clusters this costs O(r_i r_j d) per pair instead of O(d³); full covariances are
      first turned into factors with one eigh each.

    Parameters
    ----------
    gaussians : ClusterGaussians
        From :func:`cluster_gaussians`.
    diagonal : bool or None, default=None
        ``None`` uses the representation of ``gaussians``; ``True`` uses only the variances (also of full or
        factor Gaussians); ``False`` requires full or factor Gaussians.
    n_jobs : int or None, default=None
        Threads for the full/factor computation; ``None`` or -1 uses every available core.

    Returns
    -------
    D : ndarray of shape (k, k), float64
        Symmetric, zero diagonal, >= 0; ``inf`` between an empty cluster and any other.
    """
    if not isinstance(gaussians, ClusterGaussians):
        raise TypeError(f"gaussians must be a ClusterGaussians; got {type(gaussians).__name__}.")
    kind = gaussians.kind
    if diagonal is None:
        diagonal = kind == "diagonal"
    if not diagonal and kind == "diagonal":
        raise ValueError("diagonal=False needs full or factor covariances; these Gaussians are diagonal.")
    k = gaussians.n_clusters
    empty = gaussians.sizes == 0
    means = np.where(empty[:, None], 0.0, gaussians.means)
    if diagonal:
        var = np.clip(gaussians.variances(), 0.0, None)
        D = _sq_euclidean(np.concatenate([means, np.sqrt(var)], axis=1))
    else:
        n_threads = _n_threads(n_jobs)
        factors = (
            list(gaussians.factors)  # type: ignore[arg-type]
            if kind == "factor"
            else [_psd_factor(c) for c in gaussians.covs]  # type: ignore[union-attr]
        )
        traces = np.array([float(np.einsum("rd,rd->", f, f)) for f in factors])
        nuc = _pairwise_nuclear(factors, n_threads)
        D = _sq_euclidean(means) + traces[:, None] + traces[None, :] - 2.0 * nuc
    D = np.clip((D + D.T) / 2.0, 0.0, None)
    D[empty, :] = np.inf
    D[:, empty] = np.inf
    np.fill_diagonal(D, 0.0)
    return D.reshape(k, k)


def neighbor_graph(D: object, threshold: float) -> list[np.ndarray]:
    """Neighbours of every cluster: ``j`` with ``D[i, j] < threshold``, always including ``i`` itself.

    This is EQUAL's ``N(i) = {j : d_ij < threshold}`` (threshold 0.2 on the squared Fréchet distance), which
    contains ``i`` because ``d_ii = 0``; ``i`` is kept even when ``threshold <= 0``.

    Parameters
    ----------
    D : array-like of shape (k, k)
        Pairwise cluster distances (e.g. from :func:`pairwise_frechet`); NaN never counts as near.
    threshold : float
        Strict upper bound on the distance of a neighbour.

    Returns
    -------
    list of k ndarrays of int64
        Sorted neighbour indices of each cluster.
    """
    arr = np.asarray(D, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"D must be a square 2-D matrix of shape (k, k); got shape {arr.shape}.")
    if isinstance(threshold, bool) or not isinstance(threshold, Real) or np.isnan(threshold):
        raise ValueError(f"threshold={threshold!r} must be a real number.")
    near = arr < threshold
    np.fill_diagonal(near, True)
    return [np.flatnonzero(row).astype(np.int64) for row in near]
