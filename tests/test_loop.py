"""The loop's parts against plain reference computations: sampler, filters (streamed), reward, registries."""

from __future__ import annotations

import numpy as np
import pytest

from equal.data.dedup import exact_dedup, near_dedup
from equal.data.qa import QAPair
from equal.pipeline.filters import DecontamConfig, DecontamFilter, ExactFilter, NearConfig, NearFilter
from equal.pipeline.parts import Candidates, ClusterSampler, Group, PairFilter, Reward
from equal.pipeline.registry import FILTERS, POLICIES, REWARDS, SAMPLERS, part_config
from equal.pipeline.rewards import OTReward, OTRewardConfig, RunningOT
from equal.pipeline.sampler import ClusterSampler as Sampler
from equal.pipeline.sampler import CorpusOrder


def _cands(texts: list[str]) -> Candidates:
    pairs = [QAPair(question=t.split("\n")[0], answer=t.split("\n")[-1], doc_id="d") for t in texts]
    return Candidates(pairs, texts, {}, 0)


def _stream(filt: PairFilter, batches: list[list[str]]) -> list[bool]:
    """Run ``filt`` as the loop does: keep on each batch, then add what was kept."""
    out: list[bool] = []
    for batch in batches:
        c = _cands(batch)
        mask = filt.keep(c)
        assert filt.keep(c).tolist() == mask.tolist()  # keep does not change the filter
        filt.add(c.subset(mask))
        out += mask.tolist()
    return out


@pytest.fixture(scope="module")
def texts() -> list[str]:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    base = [" ".join(rng.choice(words, size=12)) for _ in range(30)]
    out = []
    for _ in range(120):
        t = base[rng.integers(len(base))]
        kind = rng.integers(3)
        if kind == 1:  # a near copy: one word changed
            parts = t.split()
            parts[rng.integers(len(parts))] = "zz"
            t = " ".join(parts)
        elif kind == 2:
            t = t.upper() + "  "
        out.append("Q " + t + "\nA " + t)
    return out


def _batches(texts: list[str], seed: int) -> list[list[str]]:
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, len(texts)), size=9, replace=False))
    return [b.tolist() for b in np.split(np.asarray(texts, dtype=object), cuts)]


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_filter_streamed_equals_exact_dedup(texts: list[str], seed: int) -> None:
    assert _stream(ExactFilter(), _batches(texts, seed)) == exact_dedup(texts).tolist()


@pytest.mark.parametrize("seed", [0, 1])
def test_near_filter_streamed_equals_near_dedup(texts: list[str], seed: int) -> None:
    got = _stream(NearFilter(NearConfig(threshold=0.7), seed=3), _batches(texts, seed))
    want = near_dedup(texts, threshold=0.7, seed=3).tolist()
    assert got == want and 0 < sum(want) < len(texts)


def test_decontam_filter_is_the_ngram_index() -> None:
    from equal.data.decontam import NGramIndex

    target = ["the quick brown fox jumps over the lazy dog near the river", "what is two plus two"]
    cand = ["Q the quick brown fox jumps over\nA the lazy dog near the river bank", "Q what is two plus two",
            "Q something else\nA entirely"]
    f = DecontamFilter(DecontamConfig(ngram=5), target)
    want = ~NGramIndex.from_texts(target, n=5).contaminated(cand)
    np.testing.assert_array_equal(f.keep(_cands(cand)), want)
    assert want.tolist() == [False, False, True]


def test_cluster_sampler_orders_and_availability() -> None:
    labels = np.random.default_rng(1).integers(0, 4, size=40)
    s = Sampler(labels, 5, order="random", seed=7)
    assert isinstance(s, ClusterSampler)
    for c in range(4):
        members = np.flatnonzero(labels == c)
        want = members[np.random.default_rng([7, 1, c]).permutation(len(members))]
        np.testing.assert_array_equal(np.concatenate([s.take(c, i, 3) for i in range(0, len(members), 3)]), want)
        assert s.size(c) == len(members)
    seq = Sampler(labels, 5, order="sequential", partial=False)
    np.testing.assert_array_equal(seq.take(2, 1, 4), np.flatnonzero(labels == 2)[1:5])
    sizes = np.bincount(labels, minlength=5)
    cursors = [max(int(n) - 3, 0) for n in sizes]  # 3 left (or none) in each cluster
    np.testing.assert_array_equal(seq.available(cursors, 4), [False] * 5)
    np.testing.assert_array_equal(seq.available(cursors, 3), sizes >= 3)
    np.testing.assert_array_equal(s.available(cursors, 4), sizes > 0)  # partial batches allowed
    np.testing.assert_array_equal(CorpusOrder(6, shuffle=False).take(4, 5), [4, 5])


def test_ot_reward_is_one_minus_distance(rng: np.random.Generator) -> None:
    from equal.ot import distance

    def unit(n: int) -> np.ndarray:
        X = rng.normal(size=(n, 8))
        return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)

    T, A, B = unit(10), unit(4), unit(6)
    reward = OTReward(T, OTRewardConfig(offset=0.05))
    assert isinstance(reward, Reward)
    got = reward.score([Group(3, [], [], A), Group(5, [], [], B), Group(6, [], [], np.zeros((0, 8), np.float32))])
    np.testing.assert_allclose(got[:2], [1 - distance(A, T) - 0.05, 1 - distance(B, T) - 0.05], rtol=1e-6)
    assert np.isnan(got[2])
    run = RunningOT(T)
    assert run.value() is None
    run.add(A)
    run.add(B)
    # below capacity the reservoir holds every row: the same distance, to IPOT's certified tolerance
    np.testing.assert_allclose(run.value(), distance(np.concatenate([A, B]), T), rtol=2e-3)
    np.testing.assert_allclose(run.exact(), distance(np.concatenate([A, B]), T), rtol=1e-9)


def test_every_registered_part_has_a_config_and_builder() -> None:
    from equal.bandit import POLICIES as BANDIT_POLICIES

    assert set(POLICIES) == set(BANDIT_POLICIES)
    for table in (POLICIES, REWARDS, FILTERS, SAMPLERS):
        for name, spec in table.items():
            assert spec.name == name and callable(spec.builder())
            if spec.kind != "sampler":
                cfg = part_config(spec.kind, name, {})  # every part runs on its defaults
                assert type(cfg) is spec.config_class()
    assert not POLICIES["exp3"].neighbors and POLICIES["ucb"].neighbors


def test_quality_filter_wraps_the_rule_function() -> None:
    from equal.extract.quality import quality_reason
    from equal.pipeline.filters import QualityFilter

    cfg = part_config("filter", "quality", {})
    pairs = [QAPair(question="How do I set bounds on a variable in the optimiser?", answer="The answer is:",
                    doc_id="d"),
             QAPair(question="What does chmod 644 do?",
                    answer="It gives the owner read and write permission and everyone else read permission.",
                    doc_id="d")]
    c = Candidates(pairs, [p.render_text() for p in pairs], {}, 0)
    want = [quality_reason(p.question, p.answer, config=cfg) is None for p in pairs]
    assert QualityFilter(cfg).keep(c).tolist() == want == [False, True]
