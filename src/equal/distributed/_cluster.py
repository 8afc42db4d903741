"""Cluster assignment as Ray Data ``map_batches`` over a pool of actors, with the labels of a local run.

k-means is trained in the driver on the same seeded sample :meth:`equal.cluster.KMeans.fit` draws; every row
is then assigned to its nearest centroid in actors that hold the fitted model. Each task is one of the batches
the local assignment searches (``KMeans.batch_size`` rows, at the same offsets) and runs the same faiss search
on it (:meth:`~equal.cluster.KMeans.predict`), so the labels, ties included, are those of a local run: a
numpy re-implementation would rank near-ties by differently rounded scores.
"""

from __future__ import annotations

import logging
import warnings
from numbers import Integral
from typing import TYPE_CHECKING, Any

import numpy as np

from equal.distributed._session import import_ray, resources, worker_threads
from equal.errors import ConvergenceWarning

if TYPE_CHECKING:
    from equal.cluster import KMeans

__all__ = ["assign_clusters", "kmeans_labels", "train_on_sample"]

logger = logging.getLogger(__name__)


class _AssignActor:
    """One fitted model per actor; each call assigns the row blocks its batch names."""

    def __init__(self, model: KMeans, blocks: list[tuple[int, Any]], threads: int) -> None:
        import faiss

        faiss.omp_set_num_threads(threads)
        self.model, self.blocks = model, blocks

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import ray

        rows, labels = [], []
        for p in batch["block"]:
            start, ref = self.blocks[int(p)]
            # one block is one search of the local assignment: the same rows, so the same faiss calls and scores
            lab = self.model.predict(ray.get(ref))
            rows.append(np.arange(start, start + len(lab), dtype=np.int64))
            labels.append(lab)
        return {"row": np.concatenate(rows), "label": np.concatenate(labels).astype(np.int64)}


def train_on_sample(model: KMeans, X: np.ndarray) -> KMeans:
    """A copy of ``model`` with the centroids ``model.fit(X)`` would train, fitted on its sample only.

    :meth:`KMeans.fit` draws faiss's seed and then (when ``X`` has more rows than the training cap) a sorted
    sample of rows from one generator seeded with ``model.seed``. The same draws are made here, and the copy
    is fitted on the sample, which is then under the cap: it draws the same faiss seed and trains on every
    sample row, so its centroids are bit-identical to the full fit's, at the cost of the sample alone.

    Parameters
    ----------
    model : KMeans
        Unfitted settings; ``seed`` must be an int (a Generator would be consumed differently).
    X : ndarray of shape (n, d)
        Every row (a memory map is read only at the sampled rows).

    Returns
    -------
    KMeans
        Fitted: ``cluster_centers_`` as ``model.fit(X)`` would have them (``labels_`` are the sample's).
    """
    from equal._validation import as_generator
    from equal.cluster import KMeans

    seed = model.seed
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise ValueError(f"seed={seed!r}: training on a sample like KMeans.fit needs an int seed")
    params = {"n_clusters": model.n_clusters, "n_iter": model.n_iter, "seed": int(seed),
              "spherical": model.spherical, "max_points_per_centroid": model.max_points_per_centroid,
              "sample_size": model.sample_size, "batch_size": model.batch_size, "n_redo": model.n_redo,
              "gpu": model.gpu}
    n = X.shape[0]
    cap = int(model.max_points_per_centroid) * int(model.n_clusters)
    if model.sample_size is not None:
        cap = min(cap, int(model.sample_size))
    sample = X
    if n > cap:
        rng = as_generator(int(seed))
        rng.integers(0, 2**31 - 1)  # faiss's seed: KMeans.fit's first draw
        sample = X[np.sort(rng.choice(n, size=cap, replace=False))]
        logger.info("KMeans: training on a random sample of %d of %d points in the driver", cap, n)
    with warnings.catch_warnings():
        # empty clusters are judged on every row, after the assignment (kmeans_labels), not on the sample
        warnings.filterwarnings("ignore", message=r".*clusters are empty after assignment", category=ConvergenceWarning)
        return KMeans(**params).fit(sample)


def assign_clusters(X: np.ndarray, model: KMeans, *, actors: int | None = None, gpu: bool | None = None) -> np.ndarray:
    """Nearest centroid of every row of ``X`` under the fitted ``model``, as Ray Data ``map_batches`` tasks.

    Equal to ``model.predict(X)``, row for row: each task assigns ``model.batch_size`` rows at the offsets the
    local assignment uses, with the same faiss search.

    Parameters
    ----------
    X : ndarray of shape (n, d)
        Rows to assign (L2-normalised when ``model.spherical``); a memory map is read one block at a time.
    model : KMeans
        Fitted (by :meth:`KMeans.fit` or :func:`train_on_sample`).
    actors : int, optional
        Actors in the pool; default one per GPU, else one per CPU of the cluster (never more than blocks).
    gpu : bool, optional
        Whether the actors ask for a GPU; default: when the cluster has one (see
        :meth:`~equal.distributed.RayResources.request`). An actor with a GPU searches on it when faiss there
        has GPU support (``model.gpu="auto"``), as a local run on that machine would.

    Returns
    -------
    ndarray of shape (n,), int64
    """
    import_ray()  # a clear error when ray is missing
    import ray.data

    n = int(X.shape[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    step = int(model.batch_size)
    starts = list(range(0, n, step))
    # each block goes to the object store on its own: a node fetches only the blocks its actor assigns
    blocks = [(a, ray.put(np.ascontiguousarray(X[a: a + step], dtype=np.float32))) for a in starts]
    req = resources().request(actors, gpu=gpu)
    size = min(req.actors, len(blocks))
    logger.info("assigning %d rows to %d clusters in %d Ray actors (%d blocks)", n, model.n_clusters, size,
                len(blocks))
    ds = ray.data.from_items([{"block": i} for i in range(len(blocks))], override_num_blocks=len(blocks))
    mapped = ds.map_batches(
        _AssignActor, batch_size=1, batch_format="numpy",
        fn_constructor_args=(model, blocks, worker_threads(req.num_cpus)),
        compute=ray.data.ActorPoolStrategy(size=size), num_cpus=req.num_cpus, num_gpus=req.num_gpus,
    )
    labels = np.empty(n, dtype=np.int64)
    done = 0
    for result in mapped.iter_batches(batch_size=None, batch_format="numpy"):
        labels[result["row"]] = result["label"]
        done += len(result["row"])
    if done != n:  # pragma: no cover - Ray Data returns every row of every block
        raise RuntimeError(f"the assignment actors returned {done} labels for {n} rows")
    return labels


def kmeans_labels(X: np.ndarray, model: KMeans, *, actors: int | None = None, gpu: bool | None = None) -> np.ndarray:
    """``model.fit(X).labels_``, trained in the driver on the sample and assigned on Ray.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    model : KMeans
        Unfitted settings with an int seed.
    actors, gpu
        As :func:`assign_clusters`.

    Returns
    -------
    ndarray of shape (n,), int64
        The labels of ``model.fit(X)``, bit for bit (see the module's note).
    """
    fitted = train_on_sample(model, X)
    labels = assign_clusters(X, fitted, actors=actors, gpu=gpu)
    empty = int(np.count_nonzero(np.bincount(labels, minlength=int(model.n_clusters)) == 0))
    if empty:  # KMeans.fit's warning, which the sample's fit cannot give for the whole of X
        warnings.warn(f"{empty} of n_clusters={model.n_clusters} clusters are empty after assignment "
                      "(duplicate points in X?). Lower n_clusters or deduplicate X.", ConvergenceWarning,
                      stacklevel=2)
    return labels
