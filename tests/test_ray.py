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

from equal.config import ExtractConfig  # noqa: E402
from equal.distributed import RayEmbedder, RayLLM, assign_clusters, ray_session  # noqa: E402
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
    X = remote.encode(texts)
    assert remote.n_batches == 5 and remote.n_encoded == 70
    np.testing.assert_array_equal(X, local.encode(texts))  # same batches, same model: the same bits


def test_assign_clusters_matches_brute_force(cluster: Any, rng: np.random.Generator) -> None:
    X = rng.standard_normal((1003, 8)).astype(np.float32)
    C = rng.standard_normal((7, 8)).astype(np.float32)
    ref = ((X.astype(np.float64)[:, None, :] - C.astype(np.float64)[None]) ** 2).sum(-1).argmin(axis=1)
    np.testing.assert_array_equal(assign_clusters(X, C, batch_size=128), ref)
    assert assign_clusters(X[:0], C).shape == (0,)


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


def test_ray_run_writes_the_local_run_qa(cluster: Any, corpus: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    run_extract(_config(corpus), tmp_path / "local")
    monkeypatch.setenv("EQUAL_CACHE_DIR", str(tmp_path / "cold"))  # so the Ray actors embed every chunk
    # a Ray run, stopped after one round and resumed: the same run directory and the same dataset
    run_extract(_config(corpus, ray="local", ray_actors=2), tmp_path / "ray", max_rounds=1)
    summary = run_extract(_config(corpus, ray="local", ray_actors=2), tmp_path / "ray")
    assert summary.resumed
    local = (tmp_path / "local" / "qa.jsonl").read_text()
    assert local and (tmp_path / "ray" / "qa.jsonl").read_text() == local


def test_ray_llm_extract_writes_the_local_run_qa(cluster: Any, corpus: Path, tmp_path: Path) -> None:
    kw: dict[str, object] = dict(extractor="llm", budget_docs=3, clusters=3, clusters_per_round=1,
                                 docs_per_cluster=1, max_tokens=48, max_pairs=1)
    local = run_extract(_config(corpus, **kw), tmp_path / "local")
    remote = run_extract(_config(corpus, ray="local", ray_actors=2, **kw), tmp_path / "ray")
    assert remote.to_dict()["documents_read"] == local.to_dict()["documents_read"] == 3
    assert (tmp_path / "ray" / "qa.jsonl").read_text() == (tmp_path / "local" / "qa.jsonl").read_text()
