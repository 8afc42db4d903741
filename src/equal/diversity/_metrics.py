"""Classic dataset-diversity metrics that the NovelSum paper compares against, and a one-call report.

Unless a function says otherwise, rows are L2-normalised first (cosine geometry, as everywhere in
``equal``), and every O(n²) quantity is computed through the d × d Gram matrix EᵀE, so n can be large.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from equal._validation import SeedLike, check_embeddings, l2_normalize
from equal.diversity._novelsum import novelsum

__all__ = [
    "cluster_inertia",
    "diversity_report",
    "log_determinant",
    "mean_cosine_distance",
    "partition_entropy",
    "radius",
    "vendi_score",
]


def _unit_rows(X: object, name: str = "X", min_rows: int = 1) -> np.ndarray:
    return l2_normalize(check_embeddings(X, name=name, normalized=False, min_rows=min_rows))


def _gram_eigenvalues(E: np.ndarray) -> np.ndarray:
    """Eigenvalues of E Eᵀ (n × n) that can be non-zero, from the smaller of E Eᵀ and EᵀE, float64."""
    E64 = E.astype(np.float64)
    G = E64 @ E64.T if E.shape[0] <= E.shape[1] else E64.T @ E64
    return np.clip(np.linalg.eigvalsh(G), 0.0, None)


def mean_cosine_distance(X: np.ndarray, *, include_self: bool = False) -> float:
    r"""Mean pairwise cosine distance :math:`\frac{1}{n(n-1)}\sum_{i\ne j} (1 - \cos(x_i, x_j))`.

    Parameters
    ----------
    X : array-like of shape (n, d)
        Embeddings (normalised here), n >= 2.
    include_self : bool, default=False
        Average over all n² pairs, self-pairs (distance 0) included: the reference code's
        ``cos_distance`` column, equal to ``(n − 1) / n`` times the default.

    Returns
    -------
    float
        Computed in O(n d) from ‖Σ_i x_i‖².
    """
    E = _unit_rows(X, min_rows=2).astype(np.float64)
    n = E.shape[0]
    total = E.sum(axis=0)
    sum_all = float(total @ total)  # Σ_ij cos
    self_sum = float(np.einsum("ij,ij->", E, E))
    if include_self:
        return float(n * n - sum_all) / (n * n)
    return float(n * (n - 1) - (sum_all - self_sum)) / (n * (n - 1))


def vendi_score(X: np.ndarray) -> float:
    r"""Vendi score (Friedman & Dieng, 2023) with the cosine-similarity kernel.

    .. math:: \mathrm{VS} = \exp\Bigl(-\sum_i \lambda_i \log \lambda_i\Bigr),
              \quad \lambda = \mathrm{eig}(K / n),\ K_{ij} = \cos(x_i, x_j)

    The "effective number" of distinct samples, between 1 and min(n, d). Computed from the d × d matrix
    EᵀE / n when n > d (same non-zero eigenvalues).

    Parameters
    ----------
    X : array-like of shape (n, d)
        Embeddings (normalised here).

    Returns
    -------
    float
    """
    E = _unit_rows(X)
    lam = _gram_eigenvalues(E) / E.shape[0]
    lam = lam[lam > 0]
    return float(np.exp(-np.sum(lam * np.log(lam))))


def radius(X: np.ndarray) -> float:
    r"""Radius (Lai et al., 2020): geometric mean of the per-dimension standard deviations.

    .. math:: R = \Bigl(\prod_{j=1}^{d} \sigma_j\Bigr)^{1/d}

    the mean radius of the axis-aligned ellipsoid that the embeddings fill; σ_j is the population
    (ddof = 0) standard deviation of coordinate j of the normalised rows. Computed in log space; 0 when
    some coordinate is constant.

    Parameters
    ----------
    X : array-like of shape (n, d)
        Embeddings (normalised here).

    Returns
    -------
    float
    """
    E = _unit_rows(X).astype(np.float64)
    sd = E.std(axis=0)
    if (sd <= 0).any():
        return 0.0
    return float(np.exp(np.mean(np.log(sd))))


def log_determinant(X: np.ndarray, *, reg: float = 1.0) -> float:
    r"""Log-determinant of the regularised cosine-similarity kernel (the DPP diversity).

    .. math:: \log\det(K + \mathrm{reg}\, I_n),\quad K_{ij} = \cos(x_i, x_j)

    K has rank at most d, so without the ridge the determinant is 0 as soon as n > d; ``reg = 1`` gives
    the usual log det(I + K). Computed as n log reg + log det(I_d + EᵀE / reg) (Sylvester), O(n d²).

    Parameters
    ----------
    X : array-like of shape (n, d)
        Embeddings (normalised here).
    reg : float, default=1.0
        Ridge added to the diagonal, > 0.

    Returns
    -------
    float
    """
    if isinstance(reg, bool) or not isinstance(reg, numbers.Real) or not reg > 0:
        raise ValueError(f"reg={reg!r} must be a real number > 0.")
    E = _unit_rows(X)
    lam = _gram_eigenvalues(E)
    n = E.shape[0]
    return float(n * np.log(reg) + np.sum(np.log1p(lam / reg)))


def _check_clusters(n_clusters: object, n_fit: int, name: str) -> int:
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, numbers.Integral) or n_clusters < 1:
        raise ValueError(f"n_clusters={n_clusters!r} must be an integer >= 1.")
    if n_clusters > n_fit:
        raise ValueError(f"n_clusters={n_clusters} must be <= the {n_fit} rows of {name} it is fitted on.")
    return int(n_clusters)


def cluster_inertia(X: np.ndarray, n_clusters: int, *, seed: SeedLike = 42) -> float:
    """k-means inertia (Du & Black, 2019): sum of squared Euclidean distances to the nearest centroid.

    Euclidean k-means (:class:`equal.cluster.KMeans`, ``spherical=False``) on the L2-normalised rows;
    the sum (not mean) over rows, as in the NovelSum paper, so compare datasets of equal size.

    Parameters
    ----------
    X : array-like of shape (n, d)
        Embeddings (normalised here).
    n_clusters : int
        Number of clusters, <= n.
    seed : int, Generator or None, default=42

    Returns
    -------
    float
    """
    from equal.cluster import KMeans

    E = _unit_rows(X)
    K = _check_clusters(n_clusters, E.shape[0], "X")
    return float(KMeans(K, seed=seed, spherical=False).fit(E).inertia_)


def partition_entropy(
    X: np.ndarray, reference: np.ndarray | None = None, n_clusters: int = 100, *, seed: SeedLike = 42
) -> float:
    r"""Partition entropy (NovelSum's ``entropy.py``): entropy of X's histogram over reference clusters.

    Euclidean k-means with 20 iterations on the *raw* reference vectors (the reference code's
    ``faiss.Kmeans(niter=20, seed=42)``), every row of X assigned to its nearest centroid, and

    .. math:: H = -\sum_c p_c \log_2 p_c

    over the clusters that X occupies (at most log2(n_clusters) bits).

    Parameters
    ----------
    X : array-like of shape (n, d)
        Raw embeddings of the dataset.
    reference : array-like of shape (N, d) or None, default=None
        Pool the clusters are fitted on; None fits them on X.
    n_clusters : int, default=100
        Number of clusters, <= N.
    seed : int, Generator or None, default=42

    Returns
    -------
    float
    """
    from equal.cluster import KMeans

    Xc = check_embeddings(X, name="X", normalized=False)
    R = Xc if reference is None else check_embeddings(reference, name="reference", normalized=False, dim=Xc.shape[1])
    K = _check_clusters(n_clusters, R.shape[0], "the reference" if reference is not None else "X")
    km = KMeans(K, n_iter=20, seed=seed, spherical=False).fit(R)
    labels = km.labels_ if reference is None else km.predict(Xc)
    counts = np.bincount(labels, minlength=K)
    p = counts[counts > 0] / counts.sum()
    return float(-np.sum(p * np.log2(p)))


_ALL = (
    "novelsum",
    "mean_cosine_distance",
    "vendi_score",
    "radius",
    "log_determinant",
    "cluster_inertia",
    "partition_entropy",
)


def diversity_report(
    X: np.ndarray,
    *,
    reference: np.ndarray | None = None,
    n_neighbors: int = 10,
    density_power: float = 0.5,
    distance_power: float = 1.0,
    variant: str = "code",
    n_clusters: int | None = None,
    seed: SeedLike = 42,
    device: str = "auto",
    metrics: Sequence[str] | None = None,
) -> dict[str, float]:
    """NovelSum and the classic metrics of one dataset, in one call.

    Parameters
    ----------
    X : array-like of shape (n, d)
        Raw embeddings of the dataset (NovelSum's density and the partition entropy use the raw vectors,
        the other metrics normalise the rows).
    reference : array-like of shape (N, d) or None, default=None
        Reference pool for NovelSum's density and the partition entropy's clusters.
    n_neighbors, density_power, distance_power, variant, device
        Passed to :func:`novelsum`.
    n_clusters : int or None, default=None
        Clusters of ``cluster_inertia`` and ``partition_entropy``; None takes
        ``min(100, max(1, m // 39))`` for the m rows each is fitted on (faiss wants >= 39 per cluster).
    seed : int, Generator or None, default=42
        Seeds the two k-means.
    metrics : sequence of str or None, default=None
        Subset of ``novelsum``, ``mean_cosine_distance``, ``vendi_score``, ``radius``, ``log_determinant``,
        ``cluster_inertia``, ``partition_entropy`` (None: all).

    Returns
    -------
    dict[str, float]
        One entry per metric, in the order above.
    """
    names = list(_ALL if metrics is None else metrics)
    unknown = [m for m in names if m not in _ALL]
    if unknown:
        raise ValueError(f"metrics={unknown!r} not known; choose from {', '.join(_ALL)}.")
    Xc = check_embeddings(X, name="X", normalized=False, min_rows=2)
    out: dict[str, float] = {}
    for name in _ALL:
        if name not in names:
            continue
        if name == "novelsum":
            out[name] = novelsum(
                Xc,
                reference=reference,
                n_neighbors=n_neighbors,
                density_power=density_power,
                distance_power=distance_power,
                variant=variant,
                device=device,
            )
        elif name == "mean_cosine_distance":
            out[name] = mean_cosine_distance(Xc)
        elif name == "vendi_score":
            out[name] = vendi_score(Xc)
        elif name == "radius":
            out[name] = radius(Xc)
        elif name == "log_determinant":
            out[name] = log_determinant(Xc)
        elif name == "cluster_inertia":
            K = n_clusters if n_clusters is not None else min(100, max(1, Xc.shape[0] // 39))
            out[name] = cluster_inertia(Xc, K, seed=seed)
        else:
            m = Xc.shape[0] if reference is None else np.asarray(reference).shape[0]
            K = n_clusters if n_clusters is not None else min(100, max(1, m // 39))
            out[name] = partition_entropy(Xc, reference, K, seed=seed)
    return out
