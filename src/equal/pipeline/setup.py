"""The fixed inputs of an extraction run: documents, target texts, their embeddings, clusters and neighbours.

Computed once and stored in the run directory (``documents.parquet``, ``embeddings/``, ``clusters.parquet``,
``setup.json``); a resumed run reads them back instead. Nothing here holds the corpus in memory:

1. ingest: the corpus is streamed (:class:`~equal.data.readers.DocumentStream`), chunked and written
   :data:`INGEST_BATCH_DOCS` documents at a time into ``documents.parquet`` (:func:`equal.data.store.
   ingest_documents`; written under a temporary name, so a kill restarts the ingest cleanly);
2. embed: :data:`EMBED_SHARD_ROWS` rows at a time into ``embeddings/shards/*.npy`` (a kill resumes at the
   first missing shard), then concatenated into ``embeddings/documents.npy``, which is memory-mapped;
3. cluster: k-means trained on a sample and assigned in batches (:class:`equal.cluster.KMeans`; with
   ``run.ray``, the batches are assigned in Ray actors, :func:`equal.distributed.kmeans_labels`, with the same
   labels); the labels are added to ``documents.parquet`` as its ``cluster`` column; ``setup.json`` is written
   last.

Rounds read their documents by row from a :class:`~equal.data.store.DocumentStore` over ``documents.parquet``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from equal.config import DataConfig, ExtractConfig
from equal.data.io import atomic_path, atomic_write_json, load_npy, save_npy
from equal.data.records import Document
from equal.data.store import INGEST_KEY, DocumentStore, ingest_documents
from equal.errors import ConfigError, DataError
from equal.pipeline.rundir import RunDir

__all__ = ["EMBED_SHARD_ROWS", "INGEST_BATCH_DOCS", "Inputs", "corpus_fingerprint", "embed_documents",
           "ingest_corpus", "prepare_inputs", "read_corpus", "read_target", "target_format"]

logger = logging.getLogger(__name__)

INGEST_BATCH_DOCS = 4096
"""Corpus documents read and chunked per write into ``documents.parquet`` (bounds the ingest's memory)."""

EMBED_SHARD_ROWS = 8192
"""Rows embedded per shard. A multiple of :class:`~equal.embed.CachedEmbedder`'s chunk (2048), so the model
sees the same batches as when the whole corpus is passed at once (a corpus without repeated texts)."""

RAY_EMBED_SHARD_ROWS = 8 * EMBED_SHARD_ROWS
"""Rows per shard with ``--ray``: each shard is one pool of actors, whose start (a model load per actor) is
amortised over more rows; still a multiple of the cache's chunk, so the same batches and vectors."""

ROW_GROUP_ROWS = 1024
"""Rows per Parquet row group of ``documents.parquet``: what a round reads to fetch one document."""

_SFT_KEYS = ("messages", "conversations", "instruction", "prompt", "question")  # = equal.data.sft.SFT_KEYS


@dataclass(frozen=True)
class Inputs:
    """What every round reads.

    Attributes
    ----------
    docs : sequence of Document
        The corpus after chunking, in row order: a :class:`~equal.data.store.DocumentStore` (documents read
        by row from ``documents.parquet``) or, for callers that build one by hand, a list.
    doc_emb : ndarray of shape (n_docs, d), float32
        Memory-mapped from ``embeddings/documents.npy`` (read-only).
    target_texts : list of str
    target_emb : ndarray of shape (m, d), float32
    labels : ndarray of shape (n_docs,), int64
        Cluster of each document.
    n_clusters : int
    neighbors : list of ndarray of int64
        Each cluster's neighbours, itself included.
    """

    docs: Sequence[Document]
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

    for file in iter_files(Path(data.target), SFT_SUFFIXES, split=data.target_split):
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
        res_sft = read_sft(data.target, skip_invalid=data.skip_invalid, split=data.target_split)
        return [render_text(r) for r in res_sft.records]
    res = read_documents(data.target, text_field=data.target_field or "text", id_field=None, split=data.target_split,
                         skip_invalid=data.skip_invalid)
    return [d.text for d in res.items]


def read_corpus(config: ExtractConfig) -> tuple[list[Document], int]:
    """The corpus after chunking, in row order, and the number of invalid rows skipped."""
    from equal.data import chunk_documents, read_documents

    d = config.data
    res = read_documents(d.corpus, text_field=d.text_field, id_field=d.id_field, skip_invalid=d.skip_invalid,
                         split=d.split, keep_fields=d.keep_fields)
    docs = chunk_documents(res.items, d.chunk_tokens, overlap=d.chunk_overlap)
    if not docs:
        raise DataError("the corpus has no documents", path=d.corpus)
    return docs, res.skipped


def corpus_fingerprint(data: DataConfig) -> list[list[Any]]:
    """``[relative path, size, mtime_ns]`` of every file the corpus reads: cheap evidence that it is unchanged."""
    from equal.data._sources import DOCUMENT_SUFFIXES, iter_files

    root = Path(data.corpus)
    files = iter_files(root, DOCUMENT_SUFFIXES, split=data.split)
    out: list[list[Any]] = []
    for f in files:
        st = f.stat()
        name = f.relative_to(root).as_posix() if root.is_dir() and f.is_relative_to(root) else f.name
        out.append([name, st.st_size, st.st_mtime_ns])
    return out


def _stream(data: DataConfig) -> Any:
    from equal.data import iter_documents

    return iter_documents(data.corpus, text_field=data.text_field, id_field=data.id_field,
                          skip_invalid=data.skip_invalid, split=data.split, keep_fields=data.keep_fields)


def ingest_corpus(config: ExtractConfig, run: RunDir, *, batch_size: int | None = None) -> DocumentStore:
    """The corpus as a :class:`~equal.data.store.DocumentStore` over ``run.documents``, ingested if needed.

    A complete ``documents.parquet`` made from the same corpus files (same sizes and modification times) is
    reused; otherwise the corpus is streamed, chunked and written ``batch_size`` documents at a time
    (default :data:`INGEST_BATCH_DOCS`). A kill during the ingest leaves only a temporary file: the next call
    (after ``remove_stale_temps``, which ``equal extract`` runs first) ingests again from the start.
    """
    d = config.data
    info = {"corpus": corpus_fingerprint(d), "keep_fields": list(d.keep_fields)}
    if run.documents.exists():
        try:
            store = DocumentStore(run.documents)
        except DataError:
            logger.warning("%s cannot be read; ingesting the corpus again", run.documents)
        else:
            same_files = store.info.get("corpus") == info["corpus"]
            # keep_fields changes no result (not in the fingerprint), only the meta stored with each row
            same_fields = store.info.get("keep_fields", []) == info["keep_fields"]
            if same_files and same_fields:
                return store
            if not same_files and run.setup_done.exists():
                _check_same_ids(config, store)  # touched files with the same rows pass; others are refused
                if same_fields:
                    return store
            logger.info("ingesting the corpus again (%s changed)", "its files" if not same_files else "keep_fields")
    result = ingest_documents(_stream(d), run.documents, max_tokens=d.chunk_tokens, overlap=d.chunk_overlap,
                              batch_size=batch_size or INGEST_BATCH_DOCS, row_group_size=ROW_GROUP_ROWS,
                              info=info)
    if result.rows == 0:
        run.documents.unlink(missing_ok=True)
        raise DataError("the corpus has no documents", path=d.corpus)
    return DocumentStore(run.documents)


def _check_same_ids(config: ExtractConfig, store: DocumentStore) -> None:
    """The corpus files changed on disk since the setup: refuse unless they still give the same rows."""
    from equal.data.store import chunk_with_offsets

    d = config.data
    ids = iter(store.column("id"))
    n = 0
    for doc in _stream(d):
        for chunk, _, _ in chunk_with_offsets(doc, d.chunk_tokens, overlap=d.chunk_overlap):
            if next(ids, None) != chunk.id:
                raise DataError("the corpus changed since this run started; use a new --out or --force",
                                path=d.corpus)
            n += 1
    if n != len(store):
        raise DataError("the corpus changed since this run started; use a new --out or --force", path=d.corpus)


def embed_documents(store: DocumentStore, folder: Path, embedder: Any, *, shard_rows: int | None = None,
                    show_progress: Any = True) -> np.ndarray:
    """Embed every row of ``store`` into ``folder/documents.npy``, a shard at a time; return it memory-mapped.

    Shards (``folder/shards/<first row>.npy``, float32, ``shard_rows`` rows, default :data:`EMBED_SHARD_ROWS`)
    are written atomically, so a killed call resumes at the first missing one; a shard folder made by another
    embedder or for another ingest is discarded. When all are there they are concatenated into
    ``documents.npy`` (atomically, without holding more than one shard in memory) and removed.

    Parameters
    ----------
    store : DocumentStore
    folder : Path
        The run's ``embeddings/`` folder.
    embedder : Embedder
        Its ``encode(texts, show_progress=...)`` returns unit-norm float32 rows.
    shard_rows : int, optional
    show_progress : bool or callable, default=True
        Passed to ``encode`` for each shard; a callable ``show_progress(done, total)`` (what ``on_embed``
        receives through the run's embedder) is given the corpus-wide count instead.

    Returns
    -------
    ndarray of shape (len(store), d), float32
        Read-only memory map of ``folder/documents.npy``.
    """
    step = int(shard_rows or EMBED_SHARD_ROWS)
    if step < 1:
        raise ValueError(f"shard_rows={shard_rows!r} must be >= 1.")
    n = len(store)
    final = folder / "documents.npy"
    shards = folder / "shards"
    expect = {"identity": getattr(embedder, "identity", str(embedder)), "rows": n, "shard_rows": step,
              "corpus": hashlib.sha256(json.dumps(store.info, sort_keys=True).encode()).hexdigest()}
    manifest = shards / "manifest.json"
    if shards.exists():
        try:
            old = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old != expect:
            logger.info("discarding embedding shards made for another embedder or corpus in %s", shards)
            shutil.rmtree(shards)
    shards.mkdir(parents=True, exist_ok=True)
    if not manifest.exists():
        atomic_write_json(manifest, expect)
    on_embed = getattr(embedder, "on_embed", None)  # the run's progress hook (pipeline.extract._EmbedProgress)
    starts = list(range(0, n, step))
    dim: int | None = None
    for start in starts:
        stop = min(n, start + step)
        path = shards / f"{start:012d}.npy"
        if path.exists():
            X = load_npy(path, mmap=True)
            if X.ndim == 2 and X.shape[0] == stop - start and X.dtype == np.float32:
                dim = int(X.shape[1])
                continue
        if callable(on_embed):
            def shown(done: int, _total: int, start: int = start) -> None:
                on_embed(start + done, n)
            progress: Any = shown
        else:
            progress = show_progress if len(starts) == 1 else False
        X = np.ascontiguousarray(embedder.encode(store.texts(start, stop), show_progress=progress),
                                 dtype=np.float32)
        if X.shape[0] != stop - start or (dim is not None and X.shape[1] != dim):
            raise DataError(f"the embedder returned {X.shape} for rows {start}-{stop}", path=str(path))
        dim = int(X.shape[1])
        save_npy(path, X)
        if callable(on_embed):
            on_embed(stop, n)  # cached texts are not counted by the embedder; the shard is done
        if len(starts) > 1:
            logger.info("embedded rows %d-%d of %d", start, stop, n)
    assert dim is not None  # n >= 1: ingest_corpus refuses an empty corpus
    with atomic_path(final) as tmp, open(tmp, "wb") as fh:
        # written by plain writes, shard after shard: a memory map of the output would put every page in RSS
        np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                  "fortran_order": False, "shape": (n, dim)})
        for start in starts:
            fh.write(np.ascontiguousarray(load_npy(shards / f"{start:012d}.npy", mmap=False)).tobytes())
    shutil.rmtree(shards)
    return load_npy(final, mmap=True)


def prepare_inputs(config: ExtractConfig, run: RunDir, embedder: Any, progress: Callable[[str], None], *,
                   corpus: tuple[list[Document], int] | None = None) -> Inputs:
    """Ingest the corpus, read the target; embed and cluster them, or load what an earlier call stored.

    ``corpus`` (``read_corpus(config)``, which the warm-up reads into memory) is accepted for the warm-up's
    sake but not used: the run's documents always come from ``documents.parquet``, streamed from the files.
    """
    del corpus  # the same documents: streamed again from the files rather than written from a list
    progress("reading corpus")
    store = ingest_corpus(config, run)
    target_texts = read_target(config.data)
    if not target_texts:
        raise DataError("the target has no examples", path=config.data.target)
    stored = _load_stored(run, store, embedder)
    if stored is not None:
        doc_emb, target_emb, labels, neighbors = stored
        return Inputs(store, doc_emb, target_texts, target_emb, labels, len(neighbors), neighbors)

    n_docs, n_source = len(store), int(store.info.get("documents", len(store)))
    progress(f"embedding {n_docs} documents" if n_source == n_docs
             else f"embedding {n_docs} chunks of {n_source} documents")
    doc_emb = embed_documents(store, run.embeddings, embedder,
                              shard_rows=RAY_EMBED_SHARD_ROWS if config.run.ray else None)
    progress(f"embedding {len(target_texts)} target examples")
    target_emb = embedder.encode(target_texts, show_progress=False)
    k = min(config.cluster.clusters, n_docs)
    progress(f"clustering into {k} clusters")
    labels, gap, dist, neighbors = _cluster(config, doc_emb, target_emb, k)
    _store(run, store, target_emb, labels, gap, dist, neighbors)
    atomic_write_json(run.setup_done, {
        "documents": n_docs, "clusters": k, "target": len(target_texts),
        "embedder": getattr(embedder, "identity", str(embedder)), "skipped_rows": int(store.info.get("skipped", 0)),
        "source_documents": n_source,
    })
    return Inputs(DocumentStore(run.documents), doc_emb, target_texts, target_emb, labels, k, neighbors)


def _load_stored(run: RunDir, store: DocumentStore,
                 embedder: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]] | None:
    import pyarrow.parquet as pq

    doc_path, target_path = run.embeddings / "documents.npy", run.embeddings / "target.npy"
    if not (run.setup_done.exists() and doc_path.exists() and target_path.exists() and run.clusters.exists()):
        return None
    made_with = json.loads(run.setup_done.read_text(encoding="utf-8")).get("embedder")
    given = getattr(embedder, "identity", None)
    if made_with and given and made_with != given:
        raise ConfigError(f"{run.root} was embedded with {made_with}, not with the given embedder {given}; "
                          "use a new --out or --force")
    try:
        labels = np.asarray(store.column("cluster"), dtype=np.int64)
    except KeyError:  # setup.json without the cluster column: written by hand or half-copied; redo the setup
        return None
    doc_emb = load_npy(doc_path, mmap=True)
    if doc_emb.shape[0] != len(store):
        return None
    neighbors = [np.asarray(n, dtype=np.int64)
                 for n in pq.read_table(run.clusters, columns=["neighbors"]).column("neighbors").to_pylist()]
    return doc_emb, np.ascontiguousarray(load_npy(target_path, mmap=False)), labels, neighbors


def _cluster(config: ExtractConfig, doc_emb: np.ndarray, target_emb: np.ndarray,
             k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    from equal.cluster import KMeans, cluster_gaussians, neighbor_graph, pairwise_frechet

    c = config.cluster
    km = KMeans(n_clusters=k, seed=config.run.seed)
    if config.run.ray:  # trained here on the same sample, every row assigned in Ray actors: the same labels
        from equal.distributed import kmeans_labels

        labels = kmeans_labels(doc_emb, km, actors=config.run.ray_actors)
    else:
        labels = np.asarray(km.fit(doc_emb).labels_, dtype=np.int64)
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


def _store(run: RunDir, store: DocumentStore, target_emb: np.ndarray, labels: np.ndarray,
           gap: np.ndarray, dist: np.ndarray, neighbors: list[np.ndarray]) -> None:
    import pyarrow as pa

    run.embeddings.mkdir(parents=True, exist_ok=True)
    save_npy(run.embeddings / "target.npy", target_emb)
    save_npy(run.embeddings / "cluster_distances.npy", np.asarray(dist, dtype=np.float64))
    _add_clusters(store, run.documents, labels)
    _write_parquet(run.clusters, pa.table({
        "cluster": np.arange(len(gap), dtype=np.int64),
        "size": np.bincount(labels, minlength=len(gap)).astype(np.int64),
        "neighbors": [n.tolist() for n in neighbors],
        "target_gap": gap,
    }))


def _add_clusters(store: DocumentStore, path: Path, labels: np.ndarray) -> None:
    """Rewrite ``documents.parquet`` row group by row group with the ``cluster`` column (atomically)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = pq.ParquetFile(store.path)
    schema = src.schema_arrow
    if "cluster" in schema.names:
        schema = schema.remove(schema.get_field_index("cluster"))
    schema = schema.append(pa.field("cluster", pa.int64()))
    if src.metadata.num_rows != len(labels):
        raise DataError(f"{len(labels)} cluster labels for {src.metadata.num_rows} documents", path=str(path))
    pos = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for g in range(src.metadata.num_row_groups):
            t = src.read_row_group(g)
            if "cluster" in t.column_names:
                t = t.drop_columns(["cluster"])
            t = t.append_column("cluster", pa.array(labels[pos: pos + t.num_rows], type=pa.int64()))
            writer.write_table(t.replace_schema_metadata(schema.metadata), row_group_size=max(t.num_rows, 1))
            pos += t.num_rows
        # the ingest record (DocumentStore.info) goes with the rows
        kept = {k.decode(): v.decode() for k, v in (src.metadata.metadata or {}).items() if k == INGEST_KEY}
        writer.add_key_value_metadata(kept)


def _write_parquet(path: Path, table: Any) -> None:
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
