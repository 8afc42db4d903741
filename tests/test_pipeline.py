"""The EQUAL loop end to end with the rule-based extractor (no LLM): run directory, resume, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corpus_slice import corpus_slice
from equal.bandit import POLICIES
from equal.config import ExtractConfig
from equal.errors import ConfigError, DataError
from equal.pipeline.extract import ExtractSummary, export_run
from equal.pipeline.extract import run_extract as _run_extract

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def embedder() -> object:
    """One MiniLM for the whole module (loading it is most of a small run's time)."""
    from equal.embed import get_embedder

    return get_embedder("minilm")


@pytest.fixture(autouse=True)
def _shared_embedder(embedder: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_SHARED, "embedder", embedder)


_SHARED: dict[str, object] = {}


def run_extract(config: ExtractConfig, out: Path, **kw: object) -> ExtractSummary:
    return _run_extract(config, out, embedder=_SHARED["embedder"], **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mixed-domain slice of the example corpus: maths problems among FAQs and manual pages."""
    take = {"champ": 50, "python-faq": 40, "debian-faq": 40, "manpages": 40, "python-tutorial": 30}
    return corpus_slice(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", take)


def _config(corpus: Path, **kw: object) -> ExtractConfig:
    base: dict[str, object] = dict(corpus=str(corpus), target=str(EXAMPLES / "target.jsonl"), extractor="rules",
                                   budget_docs=40, clusters=10, clusters_per_round=2, docs_per_cluster=4, seed=1)
    base.update(kw)
    return ExtractConfig.from_flat(**base)


def test_run_directory_contents(small_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    s = run_extract(_config(small_corpus), out)
    assert s.documents_read == 40 and s.rounds == 5 and s.pairs > 0
    for name in ("run.toml", "documents.parquet", "embeddings/documents.npy", "clusters.parquet",
                 "state.json", "qa.jsonl", "rounds.jsonl", "ledger.json", "report.html", "summary.json"):
        assert (out / name).exists(), name
    pairs = [json.loads(line) for line in (out / "qa.jsonl").read_text().splitlines()]
    assert len(pairs) == s.pairs
    for p in pairs:
        assert [m["role"] for m in p["messages"]] == ["user", "assistant"]
        assert {"doc_id", "cluster", "round", "extractor", "prompt_version"} <= set(p)
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == list(range(5))
    assert all(len(r["clusters"]) == len(r["rewards"]) == 2 for r in rounds)
    assert "<svg" in (out / "report.html").read_text()
    # export in each form
    for fmt in ("messages", "sharegpt", "alpaca"):
        assert export_run(out, tmp_path / f"x.{fmt}.jsonl", fmt) == s.pairs
    assert export_run(out, tmp_path / "x.parquet", "parquet") == s.pairs


def test_resume_equals_uninterrupted(small_corpus: Path, tmp_path: Path) -> None:
    cfg = _config(small_corpus)
    whole = run_extract(cfg, tmp_path / "a")
    part = run_extract(cfg, tmp_path / "b", max_rounds=2)
    assert part.rounds == 2
    # simulate a crash in the middle of the next round's append: garbage after the committed length
    with open(tmp_path / "b" / "qa.jsonl", "a") as fh:
        fh.write('{"messages": [{"role": "user", "content": "half a li')
    resumed = run_extract(cfg, tmp_path / "b")
    assert resumed.resumed and resumed.pairs == whole.pairs
    assert (tmp_path / "a" / "qa.jsonl").read_bytes() == (tmp_path / "b" / "qa.jsonl").read_bytes()
    assert (tmp_path / "a" / "state.json").read_text() == (tmp_path / "b" / "state.json").read_text()
    # a finished run reruns as a no-op
    again = run_extract(cfg, tmp_path / "b")
    assert again.pairs == whole.pairs and again.rounds == whole.rounds


def test_changed_config_refused_unless_forced(small_corpus: Path, tmp_path: Path) -> None:
    run_extract(_config(small_corpus, budget_docs=8), tmp_path / "r")
    with pytest.raises(ConfigError, match=r"run\.seed"):
        run_extract(_config(small_corpus, budget_docs=8, seed=5), tmp_path / "r")
    s = run_extract(_config(small_corpus, budget_docs=8, seed=5), tmp_path / "r", force=True)
    assert s.documents_read == 8 and not s.resumed


def test_run_that_failed_in_setup_restarts_with_new_settings(small_corpus: Path, tmp_path: Path) -> None:
    # A corpus whose text is under another key stops the run before setup; fixing the command needs no --force.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "body": "some text"}\n')
    with pytest.raises(DataError, match=r'bad\.jsonl:1: field "text": missing \(the record has: id, body\)'):
        run_extract(_config(bad, budget_docs=8), tmp_path / "r")
    assert (tmp_path / "r" / "run.toml").exists()
    s = run_extract(_config(small_corpus, budget_docs=8), tmp_path / "r")
    assert s.documents_read == 8 and not s.resumed


@pytest.mark.parametrize("strategy", ["random", "all", "uniform-clusters"])
def test_baseline_strategies(small_corpus: Path, tmp_path: Path, strategy: str) -> None:
    budget = None if strategy == "all" else 24
    s = run_extract(_config(small_corpus, strategy=strategy, budget_docs=budget), tmp_path / strategy)
    assert s.documents_read == (s.documents_total if strategy == "all" else 24)
    ids = [json.loads(line)["documents"] for line in (tmp_path / strategy / "rounds.jsonl").read_text().splitlines()]
    flat = [d for r in ids for d in r]
    assert len(flat) == len(set(flat))  # no document read twice


def test_equal_beats_random_at_same_budget(small_corpus: Path, tmp_path: Path) -> None:
    eq = run_extract(_config(small_corpus, budget_docs=40), tmp_path / "eq")
    rnd = run_extract(_config(small_corpus, budget_docs=40, strategy="random"), tmp_path / "rnd")
    assert eq.ot_distance is not None and rnd.ot_distance is not None
    assert eq.pairs > rnd.pairs
    assert eq.ot_distance <= rnd.ot_distance


def test_cluster_order(small_corpus: Path, tmp_path: Path) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    from equal.cluster import KMeans

    runs = {}
    for order in ("target", "kmeans"):
        out = tmp_path / order
        run_extract(_config(small_corpus, cluster_order=order, budget_docs=8), out)
        labels = pq.read_table(out / "documents.parquet").column("cluster").to_numpy()
        gap = pq.read_table(out / "clusters.parquet").column("target_gap").to_numpy()
        X = np.load(out / "embeddings" / "documents.npy").astype(np.float64)
        T = np.load(out / "embeddings" / "target.npy").astype(np.float64)
        # the stored gap, recomputed plainly from the stored labels and embeddings
        expect = [np.linalg.norm(X[labels == c].mean(axis=0) - T.mean(axis=0)) for c in range(len(gap))]
        np.testing.assert_allclose(gap, expect, rtol=1e-9)
        runs[order] = (labels, gap, X)
    labels_t, gap_t, X = runs["target"]
    labels_k, gap_k, _ = runs["kmeans"]
    assert np.all(np.diff(gap_t) >= 0)  # cluster 0 is the one nearest the target
    np.testing.assert_array_equal(labels_k, KMeans(n_clusters=10, seed=1).fit(X.astype(np.float32)).labels_)
    # the same partition, renumbered: cluster c of "kmeans" is cluster rank[c] of "target"
    rank = np.argsort(np.argsort(gap_k, kind="stable"), kind="stable")
    np.testing.assert_array_equal(labels_t, rank[labels_k])
    first = json.loads((tmp_path / "target" / "rounds.jsonl").read_text().splitlines()[0])
    assert first["clusters"] == [0, 1]


def test_kill_9_then_resume_equals_uninterrupted(small_corpus: Path, tmp_path: Path) -> None:
    args = ["--corpus", str(small_corpus), "--target", str(EXAMPLES / "target.jsonl"), "--extractor", "rules",
            "--budget-docs", "120", "--clusters", "10", "--clusters-per-round", "2", "--docs-per-cluster", "2",
            "--seed", "1", "--json"]
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "equal.cli", "extract"]
    ref = subprocess.run([*cmd, *args, "--out", str(tmp_path / "ref")], env=env, capture_output=True, text=True,
                         timeout=600)
    assert ref.returncode == 0, ref.stderr
    victim = tmp_path / "victim"
    proc = subprocess.Popen([*cmd, *args, "--out", str(victim)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    rounds = victim / "rounds.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if rounds.exists() and rounds.read_text().count("\n") >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run([*cmd, *args, "--out", str(victim)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    a, b = json.loads(ref.stdout), json.loads(done.stdout)
    for key in ("documents_read", "pairs", "rounds", "ot_distance"):
        assert a[key] == b[key], key
    assert (tmp_path / "ref" / "qa.jsonl").read_bytes() == (victim / "qa.jsonl").read_bytes()


@pytest.mark.parametrize("policy", list(POLICIES))
def test_every_policy_runs_end_to_end(small_corpus: Path, tmp_path: Path, policy: str) -> None:
    # exp3 takes no neighbour credit: the factory passes neighbours only to the policies that take them
    s = run_extract(_config(small_corpus, policy=policy, budget_docs=16), tmp_path / policy)
    assert s.documents_read == 16 and s.rounds == 2
    state = json.loads((tmp_path / policy / "state.json").read_text())
    assert state["policy"]["policy"] == policy
    assert sum(state["cursors"]) == 16  # one cursor step per document read
    rounds = [json.loads(line) for line in (tmp_path / policy / "rounds.jsonl").read_text().splitlines()]
    assert all(len(r["clusters"]) == len(r["rewards"]) == 2 for r in rounds)


def test_old_run_directory_is_refused_in_one_line(small_corpus: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / "run.toml").write_text("[bandit]\nalpha = 0.001\nreward_offset = 0.0\n")
    (old / "bandit.json").write_text('{"round": 3, "cursor": [1, 2]}')
    (old / "llm_cache.sqlite").write_bytes(b"paid for")
    with pytest.raises(ConfigError, match=r"older equal \(bandit\.json\).*--force") as err:
        run_extract(_config(small_corpus, budget_docs=8), old)
    assert "\n" not in str(err.value)
    s = run_extract(_config(small_corpus, budget_docs=8), old, force=True)
    assert s.documents_read == 8 and not (old / "bandit.json").exists()
    assert (old / "llm_cache.sqlite").read_bytes() == b"paid for"


def test_out_naming_a_file_is_refused(small_corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        run_extract(_config(small_corpus, budget_docs=8), tmp_path / "f")



def test_summary_counts_chunks_and_skipped_rows(small_corpus: Path, tmp_path: Path) -> None:
    from equal.pipeline.progress import _read_row

    rows = small_corpus.read_text().splitlines()
    corpus = tmp_path / "c.jsonl"
    long_doc = json.dumps({"id": "long", "text": "A sentence about ships and sails. " * 400})
    corpus.write_text("\n".join([*rows[:60], '{"id": "bad", "text": 3}', long_doc]) + "\n")
    s = run_extract(_config(corpus, skip_invalid=True, chunk_tokens=128, budget_docs=8), tmp_path / "run")
    assert s.skipped_rows == 1 and s.source_documents == 61
    assert s.documents_total > 61  # the long document became several chunks
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["skipped_rows"] == 1
    label, text = _read_row(s)
    assert label == "chunks read" and "(of 61 documents)" in text and "1 invalid rows skipped" in text
