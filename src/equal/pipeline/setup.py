"""The fixed inputs of an extraction run: documents, target texts, their embeddings, clusters and neighbours.

Computed once and stored in the run directory (``documents.parquet``, ``embeddings/``, ``clusters.parquet``,
``setup.json``); a resumed run reads them back instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from equal.config import DataConfig, ExtractConfig
from equal.data.io import atomic_write_json, load_npy, save_npy
from equal.data.records import Document
from equal.errors import ConfigError, DataError
from equal.pipeline.rundir import RunDir

__all__ = ["Inputs", "prepare_inputs", "read_corpus", "read_target", "target_format"]

logger = logging.getLogger(__name__)

_SFT_KEYS = ("messages", "conversations", "instruction")


@dataclass(frozen=True)
class Inputs:
    """What every round reads.

    Attributes
    ----------
    docs : list of Document
        The corpus after chunking, in row order.
    doc_emb : ndarray of shape (n_docs, d), float32
    target_texts : list of str
    target_emb : ndarray of shape (m, d), float32
    labels : ndarray of shape (n_docs,), int64
        Cluster of each document.
    n_clusters : int
    neighbors : list of ndarray of int64
        Each cluster's neighbours, itself included.
    """

    docs: list[Document]
    doc_emb: np.ndarray
    target_texts: list[str]
    target_emb: np.ndarray
    labels: np.ndarray
    n_clusters: int
    neighbors: list[np.ndarray]


def target_format(data: DataConfig) -> str:
    """``"sft"`` or ``"text"``: decided before reading, from the settings or the first record's keys."""
    if data.target_field:
        return "text"
    if data.target_format != "auto":
        return data.target_format
    from equal.data._sources import SFT_SUFFIXES, iter_files, rows

    for file in iter_files(Path(data.target), SFT_SUFFIXES):
        for _loc, value in rows(file):
            if isinstance(value, dict):
                return "sft" if any(k in value for k in _SFT_KEYS) else "text"
            if not data.skip_invalid:
                raise value
    return "sft"  # nothing readable: read_sft names the problem


def read_target(data: DataConfig) -> list[str]:
    """Target examples as texts: SFT records rendered as text, or a text field."""
    from equal.data import read_documents, read_sft, render_text

    if target_format(data) == "sft":
        return [render_text(r) for r in read_sft(data.target, skip_invalid=data.skip_invalid).records]
    res = read_documents(data.target, text_field=data.target_field or "text", id_field=None,
                         skip_invalid=data.skip_invalid)
    return [d.text for d in res.items]


def read_corpus(config: ExtractConfig) -> tuple[list[Document], int]:
    """The corpus after chunking, in row order, and the number of invalid rows skipped."""
    from equal.data import chunk_documents, read_documents

    d = config.data
    res = read_documents(d.corpus, text_field=d.text_field, id_field=d.id_field, skip_invalid=d.skip_invalid)
    docs = chunk_documents(res.items, d.chunk_tokens)
    if not docs:
        raise DataError("the corpus has no documents", path=d.corpus)
    return docs, res.skipped


def prepare_inputs(config: ExtractConfig, run: RunDir, embedder: Any, progress: Callable[[str], None], *,
                   corpus: tuple[list[Document], int] | None = None) -> Inputs:
    """Read the corpus and target; embed and cluster them, or load what an earlier call stored.

    ``corpus`` is ``read_corpus(config)`` when the caller has read it already (the warm-up does).
    """
    if corpus is None:
        progress("reading corpus")
        corpus = read_corpus(config)
    docs, skipped = corpus
    target_texts = read_target(config.data)
    if not target_texts:
        raise DataError("the target has no examples", path=config.data.target)
    stored = _load_stored(config, run, docs, embedder)
    if stored is not None:
        doc_emb, target_emb, labels, neighbors = stored
        return Inputs(docs, doc_emb, target_texts, target_emb, labels, len(neighbors), neighbors)

    n_source = len({d.meta.get("parent_id", d.id) for d in docs})
    progress(f"embedding {len(docs)} documents" if n_source == len(docs)
             else f"embedding {len(docs)} chunks of {n_source} documents")
    doc_emb = embedder.encode([d.text for d in docs], show_progress=True)
    progress(f"embedding {len(target_texts)} target examples")
    target_emb = embedder.encode(target_texts, show_progress=False)
    k = min(config.cluster.clusters, len(docs))
    progress(f"clustering into {k} clusters")
    labels, gap, dist, neighbors = _cluster(config, doc_emb, target_emb, k)
    _store(run, docs, doc_emb, target_emb, labels, gap, dist, neighbors)
    atomic_write_json(run.setup_done, {
        "documents": len(docs), "clusters": k, "target": len(target_texts),
        "embedder": getattr(embedder, "identity", str(embedder)), "skipped_rows": skipped,
    })
    return Inputs(docs, doc_emb, target_texts, target_emb, labels, k, neighbors)


def _load_stored(config: ExtractConfig, run: RunDir, docs: list[Document],
                 embedder: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]] | None:
    import json

    import pyarrow.parquet as pq

    doc_path, target_path = run.embeddings / "documents.npy", run.embeddings / "target.npy"
    if not (run.setup_done.exists() and doc_path.exists() and target_path.exists() and run.documents.exists()):
        return None
    made_with = json.loads(run.setup_done.read_text(encoding="utf-8")).get("embedder")
    given = getattr(embedder, "identity", None)
    if made_with and given and made_with != given:
        raise ConfigError(f"{run.root} was embedded with {made_with}, not with the given embedder {given}; "
                          "use a new --out or --force")
    table = pq.read_table(run.documents, columns=["id", "cluster"])
    if table.num_rows != len(docs) or table.column("id").to_pylist() != [d.id for d in docs]:
        raise DataError("the corpus changed since this run started; use a new --out or --force",
                        path=config.data.corpus)
    labels = np.asarray(table.column("cluster").to_numpy(), dtype=np.int64)
    neighbors = [np.asarray(n, dtype=np.int64)
                 for n in pq.read_table(run.clusters, columns=["neighbors"]).column("neighbors").to_pylist()]
    return (np.ascontiguousarray(load_npy(doc_path, mmap=False)),
            np.ascontiguousarray(load_npy(target_path, mmap=False)), labels, neighbors)


def _cluster(config: ExtractConfig, doc_emb: np.ndarray, target_emb: np.ndarray,
             k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    from equal.cluster import KMeans, cluster_gaussians, neighbor_graph, pairwise_frechet

    c = config.cluster
    km = KMeans(n_clusters=k, seed=config.run.seed).fit(doc_emb)
    labels = np.asarray(km.labels_, dtype=np.int64)
    gauss = cluster_gaussians(doc_emb, labels, k, diagonal=c.diagonal_covariance)
    dist = pairwise_frechet(gauss)
    # distance of each cluster's mean to the target's mean (NaN for an empty cluster)
    gap = np.linalg.norm(gauss.means - target_emb.astype(np.float64).mean(axis=0), axis=1)
    if c.cluster_order == "target":
        labels, gap, dist = _renumber_by(gap, labels, dist)
    return labels, gap, dist, neighbor_graph(dist, c.neighbor_threshold)


def _renumber_by(
    gap: np.ndarray, labels: np.ndarray, dist: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renumber clusters by ``gap``, smallest first: new labels, and ``gap`` and ``dist`` in the new order.

    EQUAL's first round reads clusters 0, 1, 2, ... and its later ties also go to the smaller index, so with
    this numbering a run that cannot yet tell clusters apart by reward starts with the ones whose documents
    already sit nearest the target, instead of in k-means' arbitrary order. The policy itself is unchanged.
    """
    order = np.argsort(gap, kind="stable")
    rank = np.empty(len(gap), dtype=np.int64)
    rank[order] = np.arange(len(gap))
    return rank[labels], gap[order], dist[np.ix_(order, order)]


def _store(run: RunDir, docs: list[Document], doc_emb: np.ndarray, target_emb: np.ndarray, labels: np.ndarray,
           gap: np.ndarray, dist: np.ndarray, neighbors: list[np.ndarray]) -> None:
    import pyarrow as pa

    from equal.data import content_hash

    run.embeddings.mkdir(parents=True, exist_ok=True)
    save_npy(run.embeddings / "documents.npy", doc_emb)
    save_npy(run.embeddings / "target.npy", target_emb)
    save_npy(run.embeddings / "cluster_distances.npy", np.asarray(dist, dtype=np.float64))
    _write_parquet(run.documents, pa.table({
        "row": np.arange(len(docs), dtype=np.int64),
        "id": [d.id for d in docs],
        "parent_id": [str(d.meta.get("parent_id", d.id)) for d in docs],
        "chunk": np.asarray([int(d.meta.get("chunk", 0)) for d in docs], dtype=np.int64),
        "hash": [content_hash(d.text) for d in docs],
        "cluster": labels,
        "chars": np.asarray([len(d.text) for d in docs], dtype=np.int64),
    }))
    _write_parquet(run.clusters, pa.table({
        "cluster": np.arange(len(gap), dtype=np.int64),
        "size": np.bincount(labels, minlength=len(gap)).astype(np.int64),
        "neighbors": [n.tolist() for n in neighbors],
        "target_gap": gap,
    }))


def _write_parquet(path: Path, table: Any) -> None:
    import pyarrow.parquet as pq

    from equal.data.io import atomic_path

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
