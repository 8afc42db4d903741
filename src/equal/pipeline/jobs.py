"""File-level jobs behind the small commands (``embed``, ``cluster``, ``ot``, ``diversity``, ``select``).

Each job reads its inputs, calls the pure library functions and writes its outputs atomically with a
manifest, returning a JSON-able dict that the command line prints.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from equal.data.io import atomic_write_json, atomic_write_text, load_npy, save_npy
from equal.errors import ConfigError, DataError

__all__ = ["TextSource", "cluster_file", "embed_file", "load_embeddings", "ot_files", "read_texts"]

logger = logging.getLogger(__name__)

SFT_KEYS = ("messages", "conversations", "instruction")


@dataclass(frozen=True)
class TextSource:
    """Texts read from a dataset file, with their ids, the records (SFT pools) and how they were read."""

    ids: list[str]
    texts: list[str]
    kind: str  # "documents" or an SFT format name
    skipped: int
    records: list[dict[str, Any]] | None = None


def _first_record(path: Path) -> dict[str, Any] | None:
    """The first record of a file or folder, or None when it cannot be sniffed (the reader will say why)."""
    from equal.data._sources import DOCUMENT_SUFFIXES, iter_files, rows

    try:
        files = iter_files(path, DOCUMENT_SUFFIXES)
    except DataError:
        return None
    for file in files:
        for _loc, value in rows(file):
            return value if isinstance(value, dict) else None
    return None


def check_suffix(out: str | Path, allowed: tuple[str, ...], what: str) -> Path:
    """``out`` as a Path, or a :class:`ConfigError` (a usage error) when its suffix is not one of ``allowed``.

    Output files are written in exactly the format their name says, never another one under a misleading
    name (``--out c.txt`` holding Parquet), and never silently renamed.
    """
    path = Path(out)
    if path.suffix.lower() not in allowed:
        raise ConfigError(f"--out {path}: {what} is written as {' or '.join(allowed)}; "
                          f"name the file with that suffix")
    return path


def _write_records(out: Path, records: list[dict[str, Any]]) -> None:
    """Write plain records as Parquet (``.parquet``) or JSONL (anything else), atomically."""
    if out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        from equal.data.io import atomic_path

        with atomic_path(out) as tmp:
            pq.write_table(pa.Table.from_pylist(records), tmp)
    else:
        atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_texts(
    path: str | Path,
    *,
    field: str | None = None,
    id_field: str | None = "id",
    skip_invalid: bool = False,
) -> TextSource:
    """Read the texts to embed from ``path``.

    With ``field`` the input is a document corpus and that field holds the text. Without it, an SFT pool
    (OpenAI messages, ShareGPT or Alpaca; detected) is rendered to text as turns joined by newlines, and
    anything else is read as documents with a ``text`` field.
    """
    from equal.data import read_documents, read_sft, render_text

    p = Path(path)
    if field is None:
        first = _first_record(p)
        if first is not None and any(k in first for k in SFT_KEYS):
            sft = read_sft(p, skip_invalid=skip_invalid)
            ids = [str(r.get("id", i)) for i, r in enumerate(sft.records)]
            return TextSource(ids, [render_text(r) for r in sft.records], sft.format, sft.skipped, sft.records)
    text_field = field or "text"
    res = read_documents(p, text_field=text_field, id_field=id_field, skip_invalid=skip_invalid)
    # the documents as records under the input's own field names, so a selection can be written back
    records = [{id_field or "id": d.id, text_field: d.text} for d in res.items]
    return TextSource([d.id for d in res.items], [d.text for d in res.items], "documents", res.skipped, records)


def _manifest_path(npy: Path) -> Path:
    return npy.with_suffix(".json")


def embed_file(
    path: str | Path,
    out: str | Path,
    *,
    embedder: str | None = None,
    field: str | None = None,
    id_field: str | None = "id",
    skip_invalid: bool = False,
    batch_size: int | None = None,
    cache: bool = True,
    show_progress: bool = False,
    ray: str | None = None,
    ray_actors: int | None = None,
) -> dict[str, Any]:
    """Embed the texts of ``path`` into ``out`` (.npy, float32) with a manifest ``out.json`` and ids file.

    With ``ray`` (``"local"``, ``"auto"`` or an address) the model runs in Ray actors
    (:class:`equal.distributed.RayEmbedder`); the vectors, the cache and the files are those of a local run.
    """
    if ray:
        from equal.distributed import RayEmbedder, ray_session

        with ray_session(ray):
            return _embed_file(path, out, lambda: RayEmbedder(embedder, actors=ray_actors), field=field,
                               id_field=id_field, skip_invalid=skip_invalid, batch_size=batch_size, cache=cache,
                               show_progress=show_progress)
    from equal.embed import get_embedder

    return _embed_file(path, out, lambda: get_embedder(embedder), field=field, id_field=id_field,
                       skip_invalid=skip_invalid, batch_size=batch_size, cache=cache, show_progress=show_progress)


def _embed_file(path: str | Path, out: str | Path, make_model: Callable[[], Any], *, field: str | None,
                id_field: str | None, skip_invalid: bool, batch_size: int | None, cache: bool,
                show_progress: bool) -> dict[str, Any]:
    from equal.embed import CachedEmbedder

    out = check_suffix(out, (".npy",), "the embeddings file")
    src = read_texts(path, field=field, id_field=id_field, skip_invalid=skip_invalid)
    if not src.texts:
        why = f" ({src.skipped} invalid rows skipped)" if src.skipped else ""
        raise DataError(f"no texts to embed: the input is empty{why}", path=str(path))
    model = make_model()  # after the input is read, so bad input fails before any model loads
    enc = CachedEmbedder(model) if cache else model
    X = enc.encode(src.texts, batch_size=batch_size, show_progress=show_progress)
    save_npy(out, X)
    ids_path = out.with_suffix(".ids.txt")
    atomic_write_text(ids_path, "".join(f"{i}\n" for i in src.ids))
    info: dict[str, Any] = {
        "input": str(path), "output": str(out), "ids": str(ids_path), "n": int(X.shape[0]),
        "dim": int(X.shape[1]), "dtype": "float32", "normalized": True, "embedder": model.identity,
        "kind": src.kind, "skipped": src.skipped,
    }
    if cache and isinstance(enc, CachedEmbedder):
        info["cache_hits"] = enc.cache_hits
        info["cache_misses"] = enc.cache_misses
    atomic_write_json(_manifest_path(out), info)
    return info


def load_embeddings(path: str | Path, *, normalized: bool = False) -> np.ndarray:
    """Load an embeddings ``.npy`` file as C-contiguous float32 (the file's name in errors).

    Refused with a DataError naming the file (and the first bad row): not a ``.npy`` array, not 2-D, empty,
    not real numbers, NaN/inf, all-zero rows, absurd magnitudes, and with ``normalized`` rows not of unit norm.
    """
    p = Path(path)
    if not p.exists():
        raise DataError("no such file", path=str(p))
    try:
        X = load_npy(p, mmap=False)
    except Exception as exc:
        # Whatever numpy's header parser raises on damage: ValueError, EOFError (an empty file, which
        # click would report as "Aborted."), tokenize.TokenError, SyntaxError, MemoryError.
        raise DataError(f"not a .npy array: {' '.join(str(exc).split()) or type(exc).__name__}",
                        path=str(p)) from None
    if X.ndim != 2:
        raise DataError(f"expected a 2-D array of embeddings, got shape {X.shape}", path=str(p))
    from equal._validation import check_embeddings

    try:
        # NaN, inf, zero rows, complex or absurd values: refused here, naming the file and the row.
        return check_embeddings(X, name="embeddings", normalized=normalized)
    except ValueError as exc:
        raise DataError(str(exc).removeprefix("Input embeddings "), path=str(p)) from None


def _ids_for(npy: Path, n: int) -> list[str] | None:
    ids_path = npy.with_suffix(".ids.txt")
    if not ids_path.exists():
        return None
    ids = ids_path.read_text(encoding="utf-8").splitlines()
    return ids if len(ids) == n else None


def cluster_file(
    path: str | Path,
    out: str | Path,
    *,
    k: int,
    seed: int = 0,
    n_iter: int = 25,
    sample_size: int | None = None,
    neighbor_threshold: float | None = None,
    diagonal: bool = False,
) -> dict[str, Any]:
    """Cluster the embeddings in ``path``; write one row per document to ``out`` (.parquet) plus summaries.

    Writes ``out`` (columns ``row``, ``id`` when known, ``cluster``, ``similarity`` to its centroid),
    ``<out>.centroids.npy`` and ``<out>.json`` (sizes, inertia and, with ``neighbor_threshold``, each
    cluster's neighbours under the Fréchet distance between cluster Gaussians).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from equal.cluster import KMeans, cluster_gaussians, neighbor_graph, pairwise_frechet
    from equal.data.io import atomic_path

    out = check_suffix(out, (".parquet",), "the cluster assignment table")
    src = Path(path)
    X = load_embeddings(src, normalized=True)  # spherical k-means needs unit rows
    km = KMeans(n_clusters=k, seed=seed, n_iter=n_iter, sample_size=sample_size).fit(X)
    labels = np.asarray(km.labels_, dtype=np.int64)
    sim = np.einsum("ij,ij->i", X, km.cluster_centers_[labels])
    columns: dict[str, Any] = {"row": np.arange(len(X), dtype=np.int64)}
    ids = _ids_for(src, len(X))
    if ids is not None:
        columns["id"] = ids
    columns["cluster"] = labels
    columns["similarity"] = sim.astype(np.float32)
    out = Path(out)
    with atomic_path(out) as tmp:
        pq.write_table(pa.table(columns), tmp)
    centroids = out.with_suffix(".centroids.npy")
    save_npy(centroids, np.asarray(km.cluster_centers_, dtype=np.float32))
    sizes = np.bincount(labels, minlength=k)
    info: dict[str, Any] = {
        "input": str(src), "output": str(out), "centroids": str(centroids), "n": len(X), "k": k,
        "seed": seed, "inertia": float(km.inertia_), "sizes": sizes.tolist(),
        "empty_clusters": int((sizes == 0).sum()),
    }
    if neighbor_threshold is not None:
        D = pairwise_frechet(cluster_gaussians(X, labels, k, diagonal=diagonal))
        info["neighbor_threshold"] = neighbor_threshold
        info["neighbors"] = [n.tolist() for n in neighbor_graph(D, neighbor_threshold)]
    atomic_write_json(out.with_suffix(".json"), info)
    return info


def ot_files(a: str | Path, b: str | Path, *, method: str = "ipot", cost: str = "euclidean") -> dict[str, Any]:
    """OT distance between the embedding sets stored in two ``.npy`` files (uniform weights)."""
    from equal import l2_normalize
    from equal.ot import distance

    X, Y = load_embeddings(a), load_embeddings(b)
    if X.shape[1] != Y.shape[1]:
        raise DataError(f"dimension {X.shape[1]} differs from {b}'s {Y.shape[1]}", path=str(a))
    norms = np.linalg.norm(np.concatenate([X, Y]), axis=1)
    if np.abs(norms - 1).max() > 1e-3:
        logger.warning("embeddings are not unit-norm; normalising them (the costs assume unit vectors)")
        X, Y = l2_normalize(X), l2_normalize(Y)
    value = distance(X, Y, method=method, cost=cost)
    return {"distance": float(value), "method": method, "cost": cost, "n": len(X), "m": len(Y)}


def dumps(obj: Any) -> str:
    """JSON for stdout: indented, NaN-free."""
    return json.dumps(obj, indent=2, allow_nan=False, default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def embeddings_for(path: str | Path, *, embedder: str | None = None, field: str | None = None,
                   show_progress: bool = False) -> tuple[np.ndarray, TextSource | None]:
    """Embeddings of ``path``: an ``.npy`` file as stored, or a dataset embedded on the fly (cached)."""
    from equal.embed import CachedEmbedder, get_embedder

    p = Path(path)
    if p.suffix == ".npy":
        return load_embeddings(p), None
    src = read_texts(p, field=field)
    X = CachedEmbedder(get_embedder(embedder)).encode(src.texts, show_progress=show_progress)
    return X, src


def diversity_files(
    paths: list[str | Path],
    *,
    reference: str | Path | None = None,
    embedder: str | None = None,
    field: str | None = None,
    n_neighbors: int = 10,
    density_power: float = 0.5,
    distance_power: float = 1.0,
    variant: str = "code",
    n_clusters: int | None = None,
    seed: int = 42,
    show_progress: bool = False,
) -> list[dict[str, Any]]:
    """NovelSum and the classic diversity metrics of each dataset (``.npy`` embeddings or records)."""
    from equal.diversity import diversity_report

    ref = embeddings_for(reference, embedder=embedder, field=field)[0] if reference is not None else None
    out = []
    for path in paths:
        X, _ = embeddings_for(path, embedder=embedder, field=field, show_progress=show_progress)
        k = _neighbors_for(path if ref is None else reference, X if ref is None else ref, n_neighbors)
        report = diversity_report(X, reference=ref, n_neighbors=k, density_power=density_power,
                                  distance_power=distance_power, variant=variant, n_clusters=n_clusters, seed=seed)
        out.append({"dataset": str(path), "n": len(X), "n_neighbors": k,
                    **{key: float(v) for key, v in report.items()}})
    return out


def _neighbors_for(path: str | Path, R: np.ndarray, n_neighbors: int) -> int:
    """``n_neighbors``, lowered (with a warning) for a reference of fewer than ``n_neighbors + 1`` distinct rows.

    One small dataset among several must not fail the whole command: its density is taken over the neighbours
    it has. Fewer than two distinct rows leave no neighbour at all, which is an error naming the file.
    """
    from equal.diversity._density import unique_rows

    distinct = len(unique_rows(np.ascontiguousarray(R, dtype=np.float32)))
    if distinct < 2:
        raise DataError(f"{path}: NovelSum needs at least 2 distinct rows; it has {distinct}")
    if distinct <= n_neighbors:
        logger.warning("%s has %d distinct rows: n_neighbors lowered from %d to %d for it",
                       path, distinct, n_neighbors, distinct - 1)
        return distinct - 1
    return n_neighbors


def _quality(src: TextSource | None, field: str | None) -> np.ndarray | None:
    """Per-record quality scores from ``field`` of an SFT pool (a clear error on a missing or bad value)."""
    if field is None:
        return None
    if src is None or src.records is None:
        raise ValueError("--quality-field needs a dataset of records, not an .npy file")
    values = []
    for i, record in enumerate(src.records):
        value = record.get(field)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataError(f'record {i + 1}: field "{field}": expected a number, got {value!r}')
        values.append(float(value))
    return np.asarray(values, dtype=np.float64)


def select_file(
    pool: str | Path,
    out: str | Path,
    *,
    method: str,
    k: int,
    seed: int = 42,
    quality_field: str | None = None,
    embedder: str | None = None,
    field: str | None = None,
    n_clusters: int | None = None,
    n_neighbors: int = 10,
    density_power: float = 0.5,
    distance_power: float = 1.0,
    threshold: float | None = None,
    show_progress: bool = False,
    iterative: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Select ``k`` records of ``pool`` with ``method``; write them (pool's own format) and the indices.

    ``OUT.indices.json`` holds the row indices in selection order. For an ``.npy`` pool only the indices
    file is written. Options a method does not take are ignored (``--neighbors`` only affects NovelSelect,
    ``--clusters`` the k-means methods, which default to ``max(1, round(sqrt(n)))`` clusters).
    ``iterative`` holds the options of ``kmq-iterative`` (see :func:`_kmq_iterative`); its per-round
    allocation, weights and scores come back under ``"kmq_iterative"``.
    """
    import inspect

    from equal.data import write_sft
    from equal.select import METHODS, select

    if method not in METHODS:
        raise ValueError(f"method={method!r} must be one of {', '.join(METHODS)}.")
    if Path(pool).suffix != ".npy":  # an .npy pool writes only OUT.indices.json
        check_suffix(out, (".jsonl", ".ndjson", ".parquet"), "the selected records file")
    X, src = embeddings_for(pool, embedder=embedder, field=field, show_progress=show_progress)
    if k > len(X):
        raise ValueError(f"k={k} must be <= the pool size n={len(X)}.")
    quality = _quality(src, quality_field)
    kw: dict[str, Any] = {
        "seed": seed, "n_neighbors": n_neighbors, "density_power": density_power, "distance_power": distance_power,
        "n_clusters": n_clusters or max(1, round(float(np.sqrt(len(X))))), "quality": quality,
    }
    if threshold is not None:
        kw["threshold"] = threshold
    if method == "deita" and quality is None:
        raise ValueError("--method deita needs --quality-field (it sorts by quality)")
    fn = METHODS[method]
    target = {"kmq-iterative": "kmq_iterative_round", "random": "random_select"}.get(method)
    if target is not None:
        import equal.select as sel

        fn = getattr(sel, target)
    accepted = set(inspect.signature(fn).parameters)
    kw = {key: v for key, v in kw.items() if key in accepted and v is not None}
    if method != "novelselect":
        from equal import l2_normalize

        X = l2_normalize(X)  # the k-means and distance methods work on unit vectors
    rounds_info = None
    if method == "kmq-iterative":
        selection, rounds_info = _kmq_iterative(X, src, out, k=k, seed=seed, quality=quality,
                                                n_clusters=kw["n_clusters"], embedder=embedder,
                                                show_progress=show_progress, **(iterative or {}))
    else:
        selection = select(X, k, method=method, **kw)
    indices = [int(i) for i in selection.indices]
    out = Path(out)
    written = None
    if src is not None and src.records is not None:
        chosen = [src.records[i] for i in indices]
        if src.kind == "documents":
            _write_records(out, chosen)
        else:
            write_sft(out, chosen, src.kind)
        written = str(out)
    indices_path = Path(str(out) + ".indices.json")
    atomic_write_text(indices_path, json.dumps(indices) + "\n")
    info = {"pool": str(pool), "method": method, "k": k, "n": len(X), "output": written,
           "indices": str(indices_path), "params": {key: v for key, v in kw.items() if key != "quality"},
           "quality_field": quality_field}
    if rounds_info is not None:
        info["kmq_iterative"] = rounds_info
    return info


def _kmq_iterative(
    X: np.ndarray,
    src: TextSource | None,
    out: str | Path,
    *,
    k: int,
    seed: int,
    quality: np.ndarray | None,
    n_clusters: int,
    embedder: str | None,
    rounds: int = 1,
    model: str = "bundled",
    scorer: str = "embed",
    reweight: str = "softmax",
    work: str | Path | None = None,
    max_steps: int | None = None,
    max_length: int | None = None,
    max_new_tokens: int = 128,
    judge_model: str | None = None,
    judge_url: str | None = None,
    threads: int | None = None,
    force: bool = False,
    show_progress: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """``--method kmq-iterative``: :func:`equal.pipeline.kmq_iterative.iterative_kmq` on the pool's records.

    ``rounds=1`` is kMQ with uniform cluster weights (no training, nothing written beside OUT); more rounds
    keep their state in ``work`` (default ``OUT.rounds/``) and resume from it. The judge is the local model
    ``judge_model`` (default the bundled one) or, with ``judge_url``, that OpenAI-compatible server.
    """
    from equal.pipeline.kmq_iterative import IterativeKMQConfig, iterative_kmq
    from equal.select import Selection
    from equal.train import TrainConfig

    if rounds > 1 and (src is None or src.records is None or src.kind == "documents"):
        raise ConfigError("--rounds > 1 fine-tunes on the pool's records: give an SFT pool (messages, "
                          "ShareGPT or Alpaca), not embeddings or documents")
    train_kw: dict[str, Any] = {"model": model, "threads": threads}
    if max_steps is not None:
        train_kw["max_steps"] = max_steps
    if max_length is not None:
        train_kw["max_length"] = max_length
    config = IterativeKMQConfig(k=k, rounds=rounds, n_clusters=n_clusters, scorer=scorer, reweight=reweight,
                                max_new_tokens=max_new_tokens, seed=seed, train=TrainConfig(**train_kw))
    judge = None
    if rounds > 1 and scorer == "judge":
        from equal.llm import get_llm

        judge = (get_llm("openai", model=judge_model, base_url=judge_url) if judge_url
                 else get_llm("local", model=judge_model))
    enc = None
    if rounds > 1 and scorer == "embed":
        from equal.embed import CachedEmbedder, get_embedder

        enc = CachedEmbedder(get_embedder(embedder))
    records = src.records if src is not None and src.records is not None else [None] * len(X)
    work_dir = Path(work) if work is not None else Path(str(out) + ".rounds")
    from equal.pipeline.progress import TrainProgressBar

    with TrainProgressBar(enabled=show_progress and rounds > 1) as bar:
        res = iterative_kmq(records, X, config, work_dir=work_dir if rounds > 1 else None, quality=quality,
                            embedder=enc, judge=judge, force=force, on_train_progress=bar.update)
    params = {"k": k, "rounds": rounds, "n_clusters": res.n_clusters, "seed": seed}
    selection = Selection(res.indices, None if quality is None else quality[res.indices], "kmq-iterative", params)
    return selection, res.to_dict(details=False)
