"""Embedding and cluster assignment as Ray Data ``map_batches`` over a pool of actors."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from equal.distributed._session import import_ray, resources, worker_threads
from equal.embed.base import Embedder, ProgressFn, length_sorted_batches

__all__ = ["RayEmbedder", "assign_clusters"]

logger = logging.getLogger(__name__)


class _EmbedActor:
    """One model per actor, loaded once; each call embeds one batch the driver formed."""

    def __init__(self, name: str | None, options: dict[str, Any], threads: int) -> None:
        import torch

        from equal.embed import get_embedder

        torch.set_num_threads(threads)
        self.embedder = get_embedder(name, **options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [np.asarray(r, dtype=np.int64) for r in batch["rows"]]
        texts = [list(t) for t in batch["texts"]]
        vectors = [self.embedder._encode(t, len(t), lambda _k: None) for t in texts]
        return {"rows": np.array(rows, dtype=object),
                "vectors": np.array([np.asarray(v, dtype=np.float32) for v in vectors], dtype=object)}


def _describe(name: str | None, options: dict[str, Any]) -> tuple[str, int, bool, int]:
    from equal.embed import get_embedder

    emb = get_embedder(name, **options)
    return emb.identity, emb.dim, emb.normalize, emb.batch_size


class RayEmbedder(Embedder):
    """An embedder whose model runs in Ray actors, one model per actor (GPU actors when the cluster has GPUs).

    The vectors are the wrapped embedder's own: :attr:`identity` is its identity, so a Ray run and a local run
    share the embedding cache and produce the same vectors. The driver forms the batches exactly as the local
    backend does (length-sorted, longest first) and Ray Data sends one batch per ``map_batches`` call to an
    idle actor; the vectors come back in input order.

    Parameters
    ----------
    name : str or None
        The embedder, as :func:`equal.embed.get_embedder` takes it (``None`` = bundled MiniLM). It is built
        inside each actor, so its files must be readable on every node.
    actors : int, optional
        Actors in the pool; default one per GPU, else one per ``cpus_per_actor`` CPUs of the cluster.
    cpus_per_actor : int, default=1
        CPUs each actor holds (and its torch threads).
    batch_size : int, optional
        Texts per batch; default the wrapped embedder's.
    **options
        Passed to the wrapped embedder's constructor in every actor.
    """

    def __init__(self, name: str | None = None, *, actors: int | None = None, cpus_per_actor: int = 1,
                 batch_size: int | None = None, **options: Any) -> None:
        super().__init__()
        ray = import_ray()
        self.name, self.options = name, dict(options)
        res = resources()
        self.gpu = res.gpus > 0 and options.get("device") in (None, "cuda")
        self.actors = res.actors(actors, cpus_per_actor=cpus_per_actor, gpu=self.gpu)
        self.cpus_per_actor = cpus_per_actor
        describe = ray.remote(num_cpus=cpus_per_actor, num_gpus=1 if self.gpu else 0)(_describe)
        self._identity, self._dim, self.normalize, default_bs = ray.get(describe.remote(name, self.options))
        self.batch_size = batch_size or default_bs

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def dim(self) -> int:
        return self._dim

    def _encode(self, texts: list[str], batch_size: int, progress: ProgressFn) -> np.ndarray:
        import_ray()
        import ray.data

        batches = [idx for idx in length_sorted_batches([len(t) for t in texts], batch_size)]
        items = [{"rows": idx, "texts": [texts[i] for i in idx]} for idx in batches]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        mapped = ds.map_batches(
            _EmbedActor, batch_size=1, batch_format="numpy",
            fn_constructor_args=(self.name, self.options, worker_threads(self.cpus_per_actor)),
            compute=ray.data.ActorPoolStrategy(size=self.actors),
            num_cpus=self.cpus_per_actor, num_gpus=1 if self.gpu else 0,
        )
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        # results stream back as actors finish; order does not matter since every batch names its rows
        for result in mapped.iter_batches(batch_size=None, batch_format="numpy"):
            for rows, vectors in zip(result["rows"], result["vectors"], strict=True):
                out[np.asarray(rows, dtype=np.int64)] = np.asarray(vectors, dtype=np.float32)
                self.n_batches += 1
                self.n_encoded += len(rows)
                progress(len(rows))
        return out


def _nearest(batch: dict[str, np.ndarray], x_ref: Any, c_ref: Any) -> dict[str, np.ndarray]:
    import ray

    X, centroids = ray.get([x_ref, c_ref])  # zero-copy views of the object store's arrays
    rows = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in zip(batch["start"], batch["stop"], strict=True)])
    x = np.asarray(X[rows], dtype=np.float32)
    c = np.asarray(centroids, dtype=np.float32)
    # squared L2 up to the per-row constant ‖x‖², the quantity faiss's IndexFlatL2 ranks by
    d = (c * c).sum(axis=1)[None, :] - 2.0 * (x @ c.T)
    return {"row": rows, "label": d.argmin(axis=1).astype(np.int64)}


def assign_clusters(X: np.ndarray, centroids: np.ndarray, *, batch_size: int = 65536) -> np.ndarray:
    """Nearest centroid (squared L2) of every row of ``X``, computed as Ray Data ``map_batches`` tasks.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    centroids : ndarray of shape (k, d)
    batch_size : int, default=65536
        Rows per task.

    Returns
    -------
    ndarray of shape (n,), int64
    """
    import_ray()  # a clear error when ray is missing
    import ray.data

    X = np.ascontiguousarray(X, dtype=np.float32)
    n = X.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # the rows go to the object store once (zero-copy reads in every task); the tasks get row ranges
    ray = import_ray()
    x_ref, c_ref = ray.put(X), ray.put(np.asarray(centroids, dtype=np.float32))
    ranges = [{"start": a, "stop": min(n, a + batch_size)} for a in range(0, n, batch_size)]
    ds = ray.data.from_items(ranges, override_num_blocks=len(ranges))
    labels = np.empty(n, dtype=np.int64)
    mapped = ds.map_batches(_nearest, fn_args=(x_ref, c_ref), batch_size=1, batch_format="numpy")
    for result in mapped.iter_batches(batch_size=None, batch_format="numpy"):
        labels[result["row"]] = result["label"]
    return labels
