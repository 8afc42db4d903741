"""Embedding as Ray Data ``map_batches`` over a pool of actors, one model per actor."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from equal.distributed._session import import_ray, resources, worker_threads
from equal.embed.base import Embedder, ProgressFn, check_batch_size, check_texts, finalize, length_sorted_batches

__all__ = ["RayEmbedder"]

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
        vectors = self.encode([list(t) for t in batch["texts"]])
        return {"chunk": np.asarray(batch["chunk"], dtype=np.int64), "rows": np.array(rows, dtype=object),
                "vectors": np.array([np.asarray(v, dtype=np.float32) for v in vectors], dtype=object)}

    def encode(self, batches: list[list[str]]) -> list[np.ndarray]:
        """The vectors of each batch, each batch encoded as one."""
        return [self.embedder._encode(t, len(t), lambda _k: None) for t in batches]


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
    small_batches : int, default=4
        Calls of at most this many batches (a round's new pairs) go to one long-lived actor instead of a new
        pool of actors (CPU clusters; with GPUs every call uses the pool, whose actors hold the GPUs).
    **options
        Passed to the wrapped embedder's constructor in every actor.
    """

    def __init__(self, name: str | None = None, *, actors: int | None = None, cpus_per_actor: int = 1,
                 batch_size: int | None = None, small_batches: int = 4, **options: Any) -> None:
        super().__init__()
        ray = import_ray()
        self.name, self.options = name, dict(options)
        device = options.get("device")
        # device="cuda" needs GPU actors, another device none; by default they are GPU actors when there are GPUs
        self.request = resources().request(actors, cpus_per_actor=cpus_per_actor,
                                           gpu={None: None, "cuda": True}.get(device, False))
        self.gpu, self.actors, self.cpus_per_actor = self.request.gpu, self.request.actors, cpus_per_actor
        describe = ray.remote(num_cpus=cpus_per_actor, num_gpus=self.request.num_gpus)(_describe)
        self._identity, self._dim, self.normalize, default_bs = ray.get(describe.remote(name, self.options))
        self.batch_size = batch_size or default_bs
        self.small_batches = small_batches
        self._small: Any = None  # the actor of small calls, started by the first one

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def dim(self) -> int:
        return self._dim

    def _encode(self, texts: list[str], batch_size: int, progress: ProgressFn) -> np.ndarray:
        batches = list(length_sorted_batches([len(t) for t in texts], batch_size))
        if len(batches) <= self.small_batches and not self.gpu:
            return self._encode_small(texts, batches, progress)
        return next(self._pool([texts], [batches], progress))

    def encode_chunks(self, chunks: Sequence[Sequence[str]], *, batch_size: int | None = None,
                      advance: ProgressFn | None = None) -> Iterator[np.ndarray]:
        """All the chunks through one pool of actors (one start-up), each chunk batched as :meth:`encode` would.

        Starting a pool loads the model in every actor, which costs far more than embedding one cache chunk
        (2,048 texts); so the chunks of one call share a pool, and their vectors come back chunk by chunk, in
        order, each as soon as its last batch has.
        """
        texts = [check_texts(c) for c in chunks]
        bs = self.batch_size if batch_size is None else check_batch_size(batch_size)
        plans = [list(length_sorted_batches([len(t) for t in c], bs)) for c in texts]
        if sum(len(p) for p in plans) <= self.small_batches and not self.gpu:
            yield from super().encode_chunks(texts, batch_size=bs, advance=advance)
            return
        for c, X in zip(texts, self._pool(texts, plans, advance or (lambda _k: None)), strict=True):
            yield finalize(X, n=len(c), dim=self._dim, normalize=self.normalize, source=self.identity)

    def _pool(self, chunks: list[list[str]], plans: list[list[np.ndarray]],
              progress: ProgressFn) -> Iterator[np.ndarray]:
        """Raw vectors of each chunk, in chunk order, from one Ray Data ``map_batches`` over an actor pool."""
        import_ray()
        import ray.data

        items = [{"chunk": c, "rows": idx, "texts": [chunks[c][i] for i in idx]}
                 for c, plan in enumerate(plans) for idx in plan]
        outs = [np.empty((len(c), self._dim), dtype=np.float32) for c in chunks]
        left = [len(plan) for plan in plans]
        ready = 0
        if items:
            ds = ray.data.from_items(items, override_num_blocks=len(items))
            mapped = ds.map_batches(
                _EmbedActor, batch_size=1, batch_format="numpy",
                fn_constructor_args=(self.name, self.options, worker_threads(self.cpus_per_actor)),
                compute=ray.data.ActorPoolStrategy(size=self.actors),
                num_cpus=self.cpus_per_actor, num_gpus=self.request.num_gpus,
            )
            # results stream back as actors finish; every batch names its chunk and rows, and a chunk is handed
            # on once all of its batches (and those of the chunks before it) are in
            for result in mapped.iter_batches(batch_size=None, batch_format="numpy"):
                for c, rows, vectors in zip(result["chunk"], result["rows"], result["vectors"], strict=True):
                    rows = np.asarray(rows, dtype=np.int64)
                    outs[int(c)][rows] = np.asarray(vectors, dtype=np.float32)
                    left[int(c)] -= 1
                    self.n_batches += 1
                    self.n_encoded += len(rows)
                    progress(len(rows))
                while ready < len(outs) and left[ready] == 0:
                    yield outs[ready]
                    ready += 1
        yield from outs[ready:]  # empty chunks

    def _encode_small(self, texts: list[str], batches: list[np.ndarray], progress: ProgressFn) -> np.ndarray:
        # A round's new pairs are a batch or two: starting a pool (a model load per actor) for them would cost
        # more than the embedding, every round. One long-lived actor encodes them instead, batch by batch as the
        # pool would, so the vectors are the same. It reserves no CPU (like the LLM actors: the loop never runs
        # it while a pool computes, and a reservation would keep a pool actor from being placed).
        ray = import_ray()
        if self._small is None:
            remote = ray.remote(num_cpus=0)(_EmbedActor)
            self._small = remote.remote(self.name, self.options, worker_threads(self.cpus_per_actor))
        vectors = ray.get(self._small.encode.remote([[texts[i] for i in idx] for idx in batches]))
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        for idx, v in zip(batches, vectors, strict=True):
            out[np.asarray(idx, dtype=np.int64)] = np.asarray(v, dtype=np.float32)
            self.n_batches += 1
            self.n_encoded += len(idx)
            progress(len(idx))
        return out

