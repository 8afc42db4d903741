"""k-means clustering of embeddings with faiss: seeded, fit on a sample, assign every point in batches."""

from __future__ import annotations

import logging
import warnings
from numbers import Integral
from typing import Any

import numpy as np

from equal._validation import SeedLike, as_generator, check_embeddings
from equal.errors import ConvergenceWarning, EqualError

__all__ = ["MIN_POINTS_PER_CENTROID", "KMeans", "NotFittedError"]

logger = logging.getLogger(__name__)

MIN_POINTS_PER_CENTROID = 39
"""faiss's threshold (``faiss/Clustering.h``): below 39 training points per centroid it prints a warning."""


class NotFittedError(EqualError, ValueError, AttributeError):
    """An estimator was used before ``fit`` (as in scikit-learn: both a ValueError and an AttributeError)."""


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss is installed wherever the tests run
        raise ImportError("equal.cluster.KMeans needs faiss: pip install 'equal[faiss]'") from exc
    return faiss


def _faiss_gpu_count(faiss: Any) -> int:
    """Number of GPUs faiss can use (0 for faiss-cpu, whose ``get_num_gpus`` exists but returns 0)."""
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"{name}={value!r} must be an int >= {low}.")
    return int(value)


class KMeans:
    """k-means clustering of embeddings with faiss, in the scikit-learn estimator style.

    ``fit`` trains faiss k-means on at most ``min(sample_size, max_points_per_centroid * n_clusters)`` points
    drawn at random (seeded) and then assigns *every* point to its nearest centroid in batches of
    ``batch_size``, so memory stays bounded for corpora of millions of rows.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters ``k``.
    n_iter : int, default=25
        Maximum Lloyd iterations (faiss ``niter``; faiss stops earlier once the objective stops changing).
    seed : int, numpy Generator or None, default=1234
        Seeds both the training sample and faiss's centroid initialisation. The same int gives the same
        clustering; a Generator is consumed, so refitting with it gives a different clustering.
    spherical : bool, default=True
        Spherical k-means: rows of ``X`` must be L2-normalised, centroids are normalised after every
        iteration and points are assigned by maximum inner product (``IndexFlatIP``). ``False`` gives
        Euclidean k-means (``IndexFlatL2``) on any finite ``X``.
    max_points_per_centroid : int, default=256
        At most ``max_points_per_centroid * n_clusters`` points are used for training (faiss's default cap,
        made explicit: we draw the sample ourselves, with our seed, and log its size).
    sample_size : int or None, default=None
        A further cap on the number of training points; ``None`` means no cap beyond the one above.
    batch_size : int, default=65536
        Rows assigned per faiss search call in ``fit`` and ``predict``.
    n_redo : int, default=1
        Independent k-means runs; the one with the best objective is kept (faiss ``nredo``).
    gpu : {"auto", True, False}, default="auto"
        Use faiss's GPU implementation: "auto" uses every GPU faiss can see (none with faiss-cpu), True
        requires one, False never uses one.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, d), float32
        The centroids (unit norm when ``spherical``).
    labels_ : ndarray of shape (n,), int64
        Cluster of every row of the ``X`` passed to ``fit``.
    inertia_ : float
        Sum over all rows of the squared Euclidean distance to their centroid (for spherical k-means on unit
        vectors this is ``sum(2 - 2 * cos)``), comparable with scikit-learn's ``inertia_``.
    n_iter_ : int
        Lloyd iterations run (per restart, averaged over the ``n_redo`` restarts).
    sizes_ : ndarray of shape (n_clusters,), int64
        Number of rows in each cluster; sums to ``n``.
    n_features_in_ : int
        Dimension ``d`` seen in ``fit``.
    train_size_ : int
        Number of points the centroids were trained on.

    See Also
    --------
    cluster_gaussians : per-cluster means and covariances from ``labels_``.

    Notes
    -----
    faiss warns on stderr when it has fewer than 39 training points per centroid; this class raises a
    Python :class:`equal.ConvergenceWarning` instead and keeps faiss silent. Clusters left empty after the
    final assignment (usually caused by duplicate rows) also give a ConvergenceWarning with their count.

    Examples
    --------
    >>> import numpy as np
    >>> from equal import l2_normalize
    >>> from equal.cluster import KMeans
    >>> X = l2_normalize(np.random.default_rng(0).standard_normal((2000, 16)))
    >>> km = KMeans(n_clusters=4, seed=0).fit(X)
    >>> km.cluster_centers_.shape, km.labels_.dtype, int(km.sizes_.sum())
    ((4, 16), dtype('int64'), 2000)
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        n_iter: int = 25,
        seed: SeedLike = 1234,
        spherical: bool = True,
        max_points_per_centroid: int = 256,
        sample_size: int | None = None,
        batch_size: int = 65536,
        n_redo: int = 1,
        gpu: bool | str = "auto",
    ) -> None:
        self.n_clusters = n_clusters
        self.n_iter = n_iter
        self.seed = seed
        self.spherical = spherical
        self.max_points_per_centroid = max_points_per_centroid
        self.sample_size = sample_size
        self.batch_size = batch_size
        self.n_redo = n_redo
        self.gpu = gpu

    def __repr__(self) -> str:
        return (
            f"KMeans(n_clusters={self.n_clusters!r}, n_iter={self.n_iter!r}, seed={self.seed!r}, "
            f"spherical={self.spherical!r}, max_points_per_centroid={self.max_points_per_centroid!r}, "
            f"sample_size={self.sample_size!r}, batch_size={self.batch_size!r}, n_redo={self.n_redo!r}, "
            f"gpu={self.gpu!r})"
        )

    # ------------------------------------------------------------------ validation helpers
    def _validate_params(self) -> None:
        _check_int("n_clusters", self.n_clusters, 1)
        _check_int("n_iter", self.n_iter, 1)
        _check_int("max_points_per_centroid", self.max_points_per_centroid, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("n_redo", self.n_redo, 1)
        if self.sample_size is not None:
            _check_int("sample_size", self.sample_size, 1)
            if self.sample_size < self.n_clusters:
                raise ValueError(
                    f"sample_size={self.sample_size} should be >= n_clusters={self.n_clusters}."
                )
        if not isinstance(self.spherical, (bool, np.bool_)):
            raise ValueError(f"spherical={self.spherical!r} must be True or False.")
        if not (self.gpu == "auto" or isinstance(self.gpu, bool)):
            raise ValueError(f"gpu={self.gpu!r} must be 'auto', True or False.")

    def _n_gpus(self, faiss: Any) -> int:
        available = _faiss_gpu_count(faiss)
        if self.gpu is True and available == 0:
            raise ValueError(
                "gpu=True but faiss sees no GPU (faiss-cpu is installed or CUDA is unavailable); "
                "use gpu='auto' or gpu=False."
            )
        return 0 if self.gpu is False else available

    def _check_fitted(self) -> None:
        if not hasattr(self, "cluster_centers_"):
            raise NotFittedError("This KMeans instance is not fitted yet; call fit(X) before predict(X).")

    # ------------------------------------------------------------------ estimator API
    def fit(self, X: object, y: None = None) -> KMeans:
        """Train the centroids and assign every row of ``X``.

        Parameters
        ----------
        X : array-like of shape (n, d)
            Embeddings; rows must be L2-normalised when ``spherical`` (converted to float32).
        y : None
            Ignored; present for scikit-learn compatibility.

        Returns
        -------
        self : KMeans
            The fitted estimator.
        """
        self._validate_params()
        X = check_embeddings(X, name="X", normalized=bool(self.spherical))
        n, d = X.shape
        k = int(self.n_clusters)
        if n < k:
            raise ValueError(f"n_samples={n} should be >= n_clusters={k}.")
        faiss = _import_faiss()
        n_gpus = self._n_gpus(faiss)
        rng = as_generator(self.seed)
        faiss_seed = int(rng.integers(0, 2**31 - 1))

        cap = int(self.max_points_per_centroid) * k
        if self.sample_size is not None:
            cap = min(cap, int(self.sample_size))
        if n > cap:
            # Sorted indices keep the gather sequential, which matters for memory-mapped X.
            idx = np.sort(rng.choice(n, size=cap, replace=False))
            X_train = X[idx]
            logger.info("KMeans: training on a random sample of %d of %d points (k=%d).", cap, n, k)
        else:
            X_train = X
            logger.info("KMeans: training on all %d points (k=%d).", n, k)
        m = X_train.shape[0]
        if m < MIN_POINTS_PER_CENTROID * k:
            warnings.warn(
                f"KMeans is training n_clusters={k} centroids on {m} points, fewer than the "
                f"{MIN_POINTS_PER_CENTROID} per cluster ({MIN_POINTS_PER_CENTROID * k}) faiss recommends; "
                "centroids may be poor. Lower n_clusters or raise sample_size / max_points_per_centroid.",
                ConvergenceWarning,
                stacklevel=2,
            )

        km = faiss.Kmeans(
            d,
            k,
            niter=int(self.n_iter),
            nredo=int(self.n_redo),
            seed=faiss_seed,
            spherical=bool(self.spherical),
            verbose=False,
            # We sample and warn ourselves: keep faiss from subsampling again or printing to stderr.
            min_points_per_centroid=1,
            max_points_per_centroid=-(-m // k) + 1,
            gpu=n_gpus if n_gpus else False,
        )
        km.train(X_train)
        centers = np.ascontiguousarray(km.centroids, dtype=np.float32).reshape(k, d)
        n_iter_total = len(km.iteration_stats) if km.iteration_stats is not None else 0
        del km

        labels, sq_dist = self._assign(X, centers, faiss, n_gpus)
        sizes = np.bincount(labels, minlength=k).astype(np.int64)
        n_empty = int(np.count_nonzero(sizes == 0))
        if n_empty:
            n_distinct = int(np.unique(X.view(np.dtype((np.void, X.dtype.itemsize * d))).ravel()).size)
            warnings.warn(
                f"{n_empty} of n_clusters={k} clusters are empty after assignment; X has {n_distinct} "
                f"distinct rows out of {n} (duplicate points in X?). Lower n_clusters or deduplicate X.",
                ConvergenceWarning,
                stacklevel=2,
            )

        self.cluster_centers_ = centers
        self.labels_ = labels
        self.inertia_ = float(sq_dist)
        self.n_iter_ = n_iter_total // int(self.n_redo)
        self.sizes_ = sizes
        self.n_features_in_ = d
        self.train_size_ = m
        return self

    def predict(self, X: object) -> np.ndarray:
        """Index of the nearest centroid of each row of ``X``.

        Parameters
        ----------
        X : array-like of shape (n, d)
            Embeddings with the ``d`` seen in ``fit`` (L2-normalised when ``spherical``).

        Returns
        -------
        labels : ndarray of shape (n,), int64
        """
        self._check_fitted()
        X = check_embeddings(X, name="X", normalized=bool(self.spherical), dim=self.n_features_in_)
        faiss = _import_faiss()
        labels, _ = self._assign(X, self.cluster_centers_, faiss, self._n_gpus(faiss))
        return labels

    def fit_predict(self, X: object, y: None = None) -> np.ndarray:
        """Fit on ``X`` and return ``labels_``: ndarray of shape (n,), int64."""
        return self.fit(X).labels_

    # ------------------------------------------------------------------ internals
    def _assign(
        self, X: np.ndarray, centers: np.ndarray, faiss: Any, n_gpus: int
    ) -> tuple[np.ndarray, float]:
        """Nearest centroid of every row (batched) and the summed squared Euclidean distance."""
        n, d = X.shape
        index = faiss.IndexFlatIP(d) if self.spherical else faiss.IndexFlatL2(d)
        if n_gpus:
            index = faiss.index_cpu_to_all_gpus(index, ngpu=n_gpus)
        index.add(centers)
        center_sq = np.einsum("ij,ij->i", centers, centers, dtype=np.float64)
        labels = np.empty(n, dtype=np.int64)
        total = 0.0
        step = int(self.batch_size)
        for start in range(0, n, step):
            xb = np.ascontiguousarray(X[start : start + step])
            D, I = index.search(xb, 1)
            lab = I[:, 0].astype(np.int64)
            labels[start : start + step] = lab
            if self.spherical:
                # ‖x − c‖² = ‖x‖² + ‖c‖² − 2⟨x, c⟩ with the exact norms (inputs are unit only to 1e-3).
                x_sq = np.einsum("ij,ij->i", xb, xb, dtype=np.float64)
                sq = x_sq + center_sq[lab] - 2.0 * D[:, 0].astype(np.float64)
            else:
                sq = D[:, 0].astype(np.float64)
            total += float(np.clip(sq, 0.0, None).sum())
        return labels, total
