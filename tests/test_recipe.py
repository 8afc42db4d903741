"""recipes/equal-paper.toml: its bandit, built by the factory, picks what EQUAL's mab.py picks on the same rewards."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from equal.cluster import neighbor_graph
from equal.config import resolve_config
from equal.data.records import Document
from equal.llm import Ledger
from equal.pipeline.factory import LLMSource, build_parts
from equal.pipeline.loop import plan_round
from equal.pipeline.rundir import RunDir
from equal.pipeline.setup import Inputs
from equal.pipeline.state import RunState

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "equal-paper.toml"


def equal_mab(members: list[list[int]], dist: np.ndarray, rewards: np.ndarray, *, alpha: float = 0.001,
              batch: int = 50, real_batchsize: int = 10, threshold: float = 0.2) -> list[tuple[list[int], list[int]]]:
    """EQUAL's ``data extraction/mab.py`` loop, transcribed with plain lists (research notes §1.5).

    ``rewards[k, c]`` stands for ``1 - IPOT(ref, QA_embs(docs)) - 0.12`` of cluster ``c`` in iteration ``k``.
    Returns, per iteration, the chosen clusters (in the order chosen) and the documents read.
    """
    k_clusters = len(members)
    neighbours = [[j for j in range(k_clusters) if dist[i][j] < threshold] for i in range(k_clusters)]
    score = [0.0] * k_clusters
    chose = [0] * k_clusters
    sampled = [0] * k_clusters
    ucb = [0.0] * k_clusters
    sum_chose = 0
    out = []
    for k in range(rewards.shape[0]):
        order = list(range(k_clusters)) if k == 0 else sorted(range(k_clusters), key=lambda c: ucb[c], reverse=True)
        picked = []
        for c in order:
            if len(members[c]) - sampled[c] * real_batchsize >= real_batchsize:  # else: exhausted, -9999999
                picked.append(c)
            if len(picked) == batch:
                break
        if not picked:
            break
        docs = []
        for c in picked:
            docs += members[c][sampled[c] * real_batchsize: (sampled[c] + 1) * real_batchsize]
        for c in picked:
            sampled[c] += 1
            for n in neighbours[c]:
                score[n] += rewards[k, c]
                chose[n] += 1
                sum_chose += 1
        for c in range(k_clusters):
            avg = score[c] / chose[c] if chose[c] != 0 else 0
            ucb[c] = avg + alpha * math.sqrt(2 * math.log(sum_chose) / (chose[c] + 1))
        out.append((picked, docs))
    return out


def _inputs(rng: np.random.Generator, k: int) -> tuple[Inputs, np.ndarray, list[list[int]]]:
    sizes = rng.integers(0, 60, size=k)
    labels = rng.permutation(np.repeat(np.arange(k), sizes)).astype(np.int64)
    # squared-Fréchet-like distances: symmetric, zero diagonal, about one cluster in six within the threshold
    D = np.abs(rng.normal(0.6, 0.3, size=(k, k)))
    D = (D + D.T) / 2
    np.fill_diagonal(D, 0.0)
    docs = [Document(id=f"d{i}", text=f"document {i}") for i in range(len(labels))]
    target = np.eye(4, 8, dtype=np.float32)
    inputs = Inputs(docs, np.zeros((len(docs), 8), np.float32), ["a target text"], target, labels, k,
                    neighbor_graph(D, 0.2))
    members = [np.flatnonzero(labels == c).tolist() for c in range(k)]
    return inputs, D, members


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recipe_bandit_picks_equal_equal_mab_py(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = 150
    inputs, D, members = _inputs(rng, k)
    rewards = rng.uniform(-0.3, 0.2, size=(40, k))  # around EQUAL's 1 - W - 0.12 scale
    expected = equal_mab(members, D, rewards)
    assert len(expected) > 5 and any(len(p) < 50 for p, _ in expected)  # clusters run out during the run

    config = resolve_config(RECIPE, {"corpus": "c.jsonl", "target": "t.jsonl", "extractor": "rules"})
    parts = build_parts(config, inputs, llm=LLMSource(config, RunDir(tmp_path)), ledger=Ledger(),
                        need_extractor=False)
    state = RunState(cursors=(0,) * k)
    b = config.bandit
    for r, (picked, docs) in enumerate(expected):
        rows, arms = plan_round(parts.policy, parts.sampler, state, clusters=b.clusters_per_round,
                                docs_per_cluster=b.docs_per_cluster, limit=10**9)
        chosen = sorted(set(arms), key=arms.index)
        assert chosen == picked, f"round {r}"
        assert rows == docs, f"round {r}"
        parts.policy.update(np.asarray(chosen), rewards[r, chosen])
        cursors = list(state.cursors)
        for c in arms:
            cursors[c] += 1
        state = dataclasses.replace(state, cursors=tuple(cursors))
    rows, _ = plan_round(parts.policy, parts.sampler, state, clusters=b.clusters_per_round,
                         docs_per_cluster=b.docs_per_cluster, limit=10**9)
    assert len(expected) == 40 or rows == []


def test_recipe_reward_is_equals_ot_score() -> None:
    from equal.ot import ipot
    from equal.pipeline.parts import Group
    from equal.pipeline.rewards import OTReward

    config = resolve_config(RECIPE, {"corpus": "c.jsonl", "target": "t.jsonl"})
    rng = np.random.default_rng(0)

    def unit(n: int) -> np.ndarray:
        X = rng.normal(size=(n, 16))
        return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)

    T, A, B = unit(12), unit(7), unit(3)
    reward = OTReward(T, config.part_config("reward"))
    got = reward.score([Group(0, [], [], A), Group(1, [], [], np.zeros((0, 16), np.float32)), Group(2, [], [], B)])
    for i, X in ((0, A), (2, B)):
        C = np.sqrt(np.clip(2 - 2 * X.astype(np.float64) @ T.T.astype(np.float64), 0, None))
        w = ipot(None, None, C, 1.0, max_iter=500, inner_iter=10, tol=0.0, warn=False).cost
        np.testing.assert_allclose(got[i], 1 - w - 0.12, rtol=1e-5)
    assert np.isnan(got[1])
