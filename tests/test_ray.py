"""Ray backends on a real local Ray cluster (2 CPUs): the same vectors, answers and run directory as a local run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from corpus_slice import corpus_slice

ray = pytest.importorskip("ray")

from equal.cluster import KMeans  # noqa: E402
from equal.config import ExtractConfig  # noqa: E402
from equal.distributed import (  # noqa: E402
    ActorRequest,
    RayEmbedder,
    RayLLM,
    RayResources,
    assign_clusters,
    kmeans_labels,
    ray_session,
    train_on_sample,
)
from equal.errors import ConfigError  # noqa: E402
from equal.llm import GenerationParams, get_llm  # noqa: E402
from equal.pipeline.extract import run_extract  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    # Ray's memory monitor kills workers when the *machine* runs low, whoever holds the memory; on a shared
    # test machine that is other jobs, so it is off for this cluster (read by the raylet when it starts)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_memory_monitor_refresh_ms", "0")
        with ray_session("local", num_cpus=2) as session:
            yield session


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    take = {"champ": 25, "python-faq": 25, "debian-faq": 20, "manpages": 20}
    return corpus_slice(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", take)


def test_embedder_gives_the_local_vectors(cluster: Any) -> None:
    from equal.embed import get_embedder

    texts = [json.loads(line)["text"][:400] for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines()][:70]
    remote = RayEmbedder("minilm", actors=2, batch_size=16)
    local = get_embedder("minilm", batch_size=16)
    assert remote.identity == local.identity and remote.dim == local.dim
    assert remote.request == ActorRequest(actors=2, num_cpus=1, num_gpus=0.0)  # no GPU here: CPU actors
    X = remote.encode(texts)
    assert remote.n_batches == 5 and remote.n_encoded == 70
    np.testing.assert_array_equal(X, local.encode(texts))  # same batches, same model: the same bits
    # two batches (a round's pairs) go to one long-lived actor instead of a new pool: the same vectors
    np.testing.assert_array_equal(remote.encode(texts[:20]), local.encode(texts[:20]))
    assert remote._small is not None and remote.n_batches == 7


def test_kmeans_labels_are_the_local_fit(cluster: Any, rng: np.random.Generator) -> None:
    X = rng.standard_normal((1003, 8)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)

    def km(**kw: Any) -> KMeans:  # a cap of 7 * 50 = 350 training rows: both paths train on a sample
        return KMeans(n_clusters=7, seed=5, batch_size=128, max_points_per_centroid=50, **kw)

    local = km().fit(X)
    assert local.train_size_ == 350
    np.testing.assert_array_equal(train_on_sample(km(), X).cluster_centers_, local.cluster_centers_)
    labels = kmeans_labels(X, km())  # 8 blocks of 128 rows over 2 actors
    np.testing.assert_array_equal(labels, local.labels_)
    # and both are the nearest centroid, by an independent float64 computation (spherical: largest cosine)
    np.testing.assert_array_equal(labels, (X.astype(np.float64) @ local.cluster_centers_.T.astype(np.float64))
                                  .argmax(axis=1))
    assert assign_clusters(X[:0], local).shape == (0,)

    # Euclidean k-means on unnormalised rows, all of them used for training
    Y = 3.0 * rng.standard_normal((300, 5)).astype(np.float32)
    euclid = KMeans(n_clusters=4, seed=1, spherical=False, batch_size=64).fit(Y)
    C = euclid.cluster_centers_.astype(np.float64)
    ref = ((Y.astype(np.float64)[:, None, :] - C[None]) ** 2).sum(-1).argmin(axis=1)
    np.testing.assert_array_equal(assign_clusters(Y, euclid, actors=1), ref)
    np.testing.assert_array_equal(euclid.labels_, ref)


def test_actor_requests_follow_the_cluster_resources() -> None:
    cpus = RayResources(cpus=8, gpus=0)
    assert cpus.request() == ActorRequest(actors=8, num_cpus=1, num_gpus=0.0)
    assert cpus.request(cpus_per_actor=3) == ActorRequest(actors=2, num_cpus=3, num_gpus=0.0)
    assert cpus.request(3, gpu=False) == ActorRequest(actors=3, num_cpus=1, num_gpus=0.0)
    with pytest.raises(ConfigError, match="no GPU"):
        cpus.request(gpu=True)
    with pytest.raises(ConfigError, match="ray_actors=0"):
        cpus.request(0)
    gpus = RayResources(cpus=16, gpus=2)
    assert gpus.request() == ActorRequest(actors=2, num_cpus=1, num_gpus=1.0)  # one actor per GPU
    assert gpus.request(1).num_gpus == 1.0 and gpus.request(1, gpu=True).gpu
    assert gpus.request(8) == ActorRequest(actors=8, num_cpus=1, num_gpus=0.25)  # more actors share the GPUs
    assert gpus.request(gpu=False) == ActorRequest(actors=16, num_cpus=1, num_gpus=0.0)


def test_llm_actors_answer_as_the_local_engine(cluster: Any) -> None:
    requests = [[{"role": "user", "content": f"Name one fact about {w}."}] for w in ("rain", "cats", "python")]
    params = GenerationParams(max_tokens=12)
    pool = RayLLM("local", actors=2)
    try:
        arrived: list[int] = []
        answers = pool.generate(requests, params, on_complete=lambda i, c: arrived.append(i))
        local = get_llm("local", threads=1)
        assert pool.model == local.model  # the request-cache key of a local run
        assert [a.text for a in answers] == [b.text for b in local.generate(requests, params)]
        assert sorted(arrived) == [0, 1, 2] and all(a.ok for a in answers)
    finally:
        pool.close()


def _config(corpus: Path, **kw: object) -> ExtractConfig:
    base: dict[str, object] = dict(corpus=str(corpus), target=str(EXAMPLES / "target.jsonl"), extractor="rules",
                                   budget_docs=24, clusters=6, clusters_per_round=2, docs_per_cluster=3, seed=3)
    base.update(kw)
    return ExtractConfig.from_flat(**base)


def _rounds(run: Path) -> list[dict[str, Any]]:
    # everything a round records but its wall-clock seconds
    rows = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]


def test_ray_run_writes_the_local_run_qa(cluster: Any, corpus: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import pyarrow.parquet as pq

    # each run with a cold cache of its own, so both embed every text in the same batches (vectors cached by
    # an earlier test, batched with other texts, can differ in the last bits) and the Ray actors embed every chunk
    monkeypatch.setenv("EQUAL_CACHE_DIR", str(tmp_path / "cold-local"))
    run_extract(_config(corpus), tmp_path / "local")
    monkeypatch.setenv("EQUAL_CACHE_DIR", str(tmp_path / "cold"))
    # a Ray run, stopped after one round and resumed: the same run directory and the same dataset
    with caplog.at_level("INFO", logger="equal.distributed._cluster"):
        run_extract(_config(corpus, ray="local", ray_actors=2), tmp_path / "ray", max_rounds=1)
    assert "in 1 Ray actors (1 blocks)" in caplog.text  # the clusters were assigned on Ray
    summary = run_extract(_config(corpus, ray="local", ray_actors=2), tmp_path / "ray")
    assert summary.resumed
    local = (tmp_path / "local" / "qa.jsonl").read_text()
    assert local and (tmp_path / "ray" / "qa.jsonl").read_text() == local
    # the same clusters (labels, sizes, neighbours, target gaps) and the same rounds
    assert pq.read_table(tmp_path / "ray" / "clusters.parquet").equals(
        pq.read_table(tmp_path / "local" / "clusters.parquet"))
    labels = [pq.read_table(tmp_path / r / "documents.parquet", columns=["cluster"]).column("cluster").to_pylist()
              for r in ("local", "ray")]
    assert len(set(labels[0])) == 6 and labels[0] == labels[1]
    assert len(_rounds(tmp_path / "local")) >= 4 and _rounds(tmp_path / "ray") == _rounds(tmp_path / "local")


def test_ray_llm_extract_writes_the_local_run_qa(cluster: Any, corpus: Path, tmp_path: Path) -> None:
    kw: dict[str, object] = dict(extractor="llm", budget_docs=3, clusters=3, clusters_per_round=1,
                                 docs_per_cluster=1, max_tokens=48, max_pairs=1)
    local = run_extract(_config(corpus, **kw), tmp_path / "local")
    remote = run_extract(_config(corpus, ray="local", ray_actors=2, **kw), tmp_path / "ray")
    assert remote.to_dict()["documents_read"] == local.to_dict()["documents_read"] == 3
    assert (tmp_path / "ray" / "qa.jsonl").read_text() == (tmp_path / "local" / "qa.jsonl").read_text()
