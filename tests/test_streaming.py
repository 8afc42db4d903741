"""Streaming setup of ``equal extract``: batch ingestion, the row-addressed store, sharded embeddings, kill -9.

The reference for ingestion is the in-memory path (``read_documents`` + ``chunk_documents``); for embeddings,
one ``encode`` of every text; for a whole run, ``tests/data/streaming_qa.jsonl``, written by the in-memory
setup this one replaced, on the example corpus with the settings of ``_config`` and the static embedder of
``static_dir`` (a StaticEmbedding on MiniLM's tokenizer with a seeded random 64-d table).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from equal.config import ExtractConfig
from equal.data import Document, chunk_documents, content_hash, iter_documents, read_documents
from equal.data.store import DocumentStore, ingest_documents
from equal.pipeline import setup
from equal.pipeline.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
EXPECTED_QA = Path(__file__).parent / "data" / "streaming_qa.jsonl"


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer

    from equal.embed.sentence_transformer import default_model_path

    tok = Tokenizer.from_file(str(default_model_path() / "tokenizer.json"))
    table = np.random.default_rng(0).standard_normal((tok.get_vocab_size(), 64)).astype(np.float32)
    out = tmp_path_factory.mktemp("static") / "static"
    SentenceTransformer(modules=[StaticEmbedding(tok, embedding_weights=torch.from_numpy(table))],
                        device="cpu").save(str(out))
    return out


@pytest.fixture(scope="module")
def embedder(static_dir: Path) -> object:
    from equal.embed import get_embedder

    return get_embedder(f"st:{static_dir}", device="cpu")


def _config(corpus: Path, static_dir: Path, **kw: object) -> ExtractConfig:
    base: dict[str, object] = dict(corpus=str(corpus), target=str(EXAMPLES / "target.jsonl"), extractor="rules",
                                   budget_docs=200, clusters=8, clusters_per_round=4, docs_per_cluster=3,
                                   chunk_tokens=128, seed=3, embedder=f"st:{static_dir}")
    base.update(kw)
    return ExtractConfig.from_flat(**base)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Document], Path]:
    """The example corpus chunked in memory (the reference) and ingested in batches of 37 documents."""
    ref = chunk_documents(read_documents(EXAMPLES / "corpus.jsonl").items, 128, overlap=16)
    path = tmp_path_factory.mktemp("ingest") / "d.parquet"
    res = ingest_documents(iter_documents(EXAMPLES / "corpus.jsonl"), path, max_tokens=128, overlap=16,
                           batch_size=37, row_group_size=50, info={"corpus": "x"})
    assert (res.rows, res.documents, res.skipped) == (len(ref), 984, 0)
    return ref, path


def test_batch_ingestion_equals_in_memory(ingested: tuple[list[Document], Path]) -> None:
    import pyarrow.parquet as pq

    ref, path = ingested
    parents = {d.id: d.text for d in read_documents(EXAMPLES / "corpus.jsonl").items}
    assert len(ref) > 984  # some documents were chunked
    store = DocumentStore(path)
    assert store.info == {"corpus": "x", "documents": 984, "rows": len(ref), "skipped": 0}
    assert list(store) == ref  # ids, texts and meta (parent_id, chunk, source, line), in order
    t = pq.read_table(path)
    np.testing.assert_array_equal(t.column("row").to_numpy(), np.arange(len(ref)))
    for doc, start, end, h in zip(ref, t.column("start").to_pylist(), t.column("end").to_pylist(),
                                  t.column("hash").to_pylist(), strict=True):
        assert parents[doc.meta["parent_id"]][start:end] == doc.text  # the chunk offsets
        assert h == content_hash(doc.text)
    assert max(pq.ParquetFile(path).metadata.row_group(i).num_rows for i in range(store.num_row_groups)) <= 50


def test_skipped_rows_are_counted(tmp_path: Path) -> None:
    src = tmp_path / "c.jsonl"
    src.write_text('{"id": "a", "text": "one"}\n{"id": "b"}\nnot json\n{"id": "c", "text": "two"}\n')
    res = ingest_documents(iter_documents(src, skip_invalid=True), tmp_path / "d.parquet", max_tokens=8)
    assert (res.rows, res.documents, res.skipped) == (2, 2, 2)
    assert DocumentStore(tmp_path / "d.parquet").info["skipped"] == 2


def test_store_fetches_by_row(ingested: tuple[list[Document], Path]) -> None:
    ref, path = ingested
    store = DocumentStore(path, cache_groups=3)
    assert len(store) == len(ref) and store.num_row_groups >= len(ref) // 50
    rows = np.random.default_rng(0).integers(0, len(ref), 300)
    assert store.take(rows) == [ref[i] for i in rows]
    assert len(store._cache) <= 3  # the LRU stays bounded
    assert store[-1] == ref[-1] and store[10:13] == ref[10:13]
    assert store.texts(130, 700) == [d.text for d in ref[130:700]]
    assert store.column("id") == [d.id for d in ref]
    with pytest.raises(IndexError, match="out of range"):
        store[len(ref)]
    again = pickle.loads(pickle.dumps(store))  # crosses processes as its path
    assert again[5] == ref[5] and len(again) == len(ref)


class _Counting:
    """The real embedder, counting the texts it is asked for and failing after ``stop_after`` calls."""

    def __init__(self, inner: object, stop_after: int | None = None) -> None:
        self.inner, self.stop_after, self.calls, self.texts = inner, stop_after, 0, 0
        self.identity = inner.identity  # type: ignore[attr-defined]

    def encode(self, texts: list[str], **kw: object) -> np.ndarray:
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt("stopped")
        self.calls += 1
        self.texts += len(texts)
        return self.inner.encode(texts, **kw)  # type: ignore[attr-defined]


def test_sharded_embeddings_equal_one_call_and_resume(tmp_path: Path, embedder: object) -> None:
    src = tmp_path / "c.jsonl"
    src.write_text("".join((EXAMPLES / "corpus.jsonl").read_text(encoding="utf-8").splitlines(True)[:300]))
    ingest_documents(iter_documents(src), tmp_path / "d.parquet", max_tokens=128)
    store = DocumentStore(tmp_path / "d.parquet")
    whole = embedder.encode(store.texts())  # type: ignore[attr-defined]
    folder = tmp_path / "emb"
    stopped = _Counting(embedder, stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        setup.embed_documents(store, folder, stopped, shard_rows=250)
    assert len(list((folder / "shards").glob("*.npy"))) == 2 and not (folder / "documents.npy").exists()
    resumed = _Counting(embedder)
    X = setup.embed_documents(store, folder, resumed, shard_rows=250)
    assert resumed.texts == len(store) - 500  # the two shards on disk were not embedded again
    assert isinstance(X, np.memmap) and X.dtype == np.float32 and X.shape == whole.shape
    np.testing.assert_allclose(X, whole, rtol=0, atol=1e-6)
    assert not (folder / "shards").exists()
    # shards of another embedder are discarded, not mixed in
    (folder / "shards").mkdir()
    (folder / "shards" / "manifest.json").write_text('{"identity": "other"}')
    np.save(folder / "shards" / f"{0:012d}.npy", np.zeros((250, 64), np.float32))
    np.testing.assert_allclose(setup.embed_documents(store, folder, embedder, shard_rows=250), whole, atol=1e-6)


def _corpus(path: Path, n: int) -> Path:
    rng = np.random.default_rng(1)
    words = np.array(["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "zeta", "theta", "rho"])
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            text = "\n\n".join(" ".join(rng.choice(words, 40)) + "." for _ in range(int(rng.integers(1, 5))))
            fh.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
    return path


_CHILD = """
import sys
from pathlib import Path
from equal.config import ExtractConfig
from equal.pipeline.rundir import RunDir
from equal.pipeline.setup import ingest_corpus
cfg = ExtractConfig.from_flat(corpus=sys.argv[1], target=sys.argv[1], extractor="rules", budget_docs=1,
                              chunk_tokens=64)
ingest_corpus(cfg, RunDir(Path(sys.argv[2])), batch_size=20)
"""


def test_kill_mid_ingest_then_resume_gives_the_same_documents(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from equal.runlock import remove_stale_temps

    corpus = _corpus(tmp_path / "c.jsonl", 2500)
    cfg = ExtractConfig.from_flat(corpus=str(corpus), target=str(corpus), extractor="rules", budget_docs=1,
                                  chunk_tokens=64)
    ref = RunDir(tmp_path / "ref")
    ref.root.mkdir()
    setup.ingest_corpus(cfg, ref, batch_size=20)

    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(corpus), str(run.root)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    temps: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        temps = [p for p in run.root.glob(".documents.parquet.*.tmp") if p.stat().st_size > 20_000]
        if temps:
            break
        time.sleep(0.01)
    assert temps, "the ingest finished (or never started) before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not run.documents.exists()  # nothing half-written under the real name
    assert remove_stale_temps(run.root) == 1
    store = setup.ingest_corpus(cfg, run, batch_size=20)
    assert len(store) == len(DocumentStore(ref.documents))
    assert pq.read_table(run.documents).equals(pq.read_table(ref.documents))
    # a complete ingest of the same files is reused, not redone
    mtime = run.documents.stat().st_mtime_ns
    setup.ingest_corpus(cfg, run, batch_size=20)
    assert run.documents.stat().st_mtime_ns == mtime
    # other kept fields (not a result-changing setting) are ingested again into each row's meta
    assert setup.ingest_corpus(cfg.replace(keep_fields="id"), run, batch_size=20)[0].meta["fields"] == {"id": "d0"}


def test_run_larger_than_a_batch_gives_the_same_pairs(tmp_path: Path, static_dir: Path, embedder: object,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    from equal.pipeline.extract import run_extract

    cfg = _config(EXAMPLES / "corpus.jsonl", static_dir)
    # 10 ingest batches, row groups of 64 rows, 4 embedding shards
    monkeypatch.setattr(setup, "INGEST_BATCH_DOCS", 100)
    monkeypatch.setattr(setup, "ROW_GROUP_ROWS", 64)
    monkeypatch.setattr(setup, "EMBED_SHARD_ROWS", 1000)
    out = tmp_path / "run"
    s = run_extract(cfg, out, embedder=embedder, max_rounds=5)
    s = run_extract(cfg, out, embedder=embedder)  # resumed from the stored setup
    assert s.resumed and s.documents_total == 3182 and s.source_documents == 984
    assert (out / "qa.jsonl").read_bytes() == EXPECTED_QA.read_bytes()
    t = pq.read_table(out / "documents.parquet", columns=["id", "cluster"])
    assert t.num_rows == 3182 and set(t.column("cluster").to_pylist()) == set(range(8))
    assert np.load(out / "embeddings" / "documents.npy", mmap_mode="r").shape == (3182, 64)
    assert not (out / "embeddings" / "shards").exists()
