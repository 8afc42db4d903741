"""equal.select: exact NovelSelect against a direct float64 greedy, kMQ budgets, baselines."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from equal import l2_normalize
from equal.select import (
    METHODS,
    Selection,
    allocate_budget,
    deita_select,
    kcenter_greedy,
    km_closest,
    km_random,
    kmq,
    kmq_iterative_round,
    kmq_reweight,
    novelselect,
    random_select,
    select,
)

# ---------------------------------------------------------------------------------------------- NovelSelect


def ref_density(X: np.ndarray, K: int, beta: float) -> np.ndarray:
    X64 = X.astype(np.float64)
    R = np.unique(X64, axis=0)
    sq = ((X64[:, None, :] - R[None, :, :]) ** 2).sum(-1)
    sq.sort(axis=1)
    return 1.0 / (sq[:, 1 : K + 1].mean(axis=1) + 1e-9) ** beta


def direct_novelselect(X, k, first, K=10, beta=0.5, alpha=1.0, quality=None):
    """Direct float64 NovelSelect: recompute and re-sort every candidate's values at every step."""
    X64 = X.astype(np.float64)
    E = X64 / np.linalg.norm(X64, axis=1, keepdims=True)
    s = ref_density(X, K, beta)
    chosen = [first]
    scores = [np.nan]
    for t in range(1, k):
        vals = (1.0 - E @ E[chosen].T) * (s[:, None] + s[chosen][None, :])
        vals.sort(axis=1)
        score = vals @ (1.0 / np.arange(1, t + 1) ** alpha) / t
        if quality is not None:
            score = score * quality
        score[chosen] = -np.inf
        j = int(np.argmax(score))  # first maximum: lowest index on ties
        chosen.append(j)
        scores.append(score[j])
    return np.array(chosen), np.array(scores)


def raw_data(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return (rng.standard_normal((n, d)) * rng.uniform(0.3, 4.0, size=(n, 1)) + 0.3).astype(np.float32)


@pytest.mark.parametrize(
    ("n", "d", "k", "seed", "alpha", "beta"),
    [
        (150, 8, 40, 0, 1.0, 0.5),
        (300, 16, 80, 1, 1.0, 0.5),
        (250, 32, 60, 2, 2.0, 0.25),
        (200, 4, 50, 3, 0.5, 0.0),
        (120, 8, 120, 4, 1.0, 0.5),
        (200, 12, 50, 5, 0.0, 0.5),
    ],
)
def test_novelselect_identical_to_direct(n, d, k, seed, alpha, beta):
    rng = np.random.default_rng(100 + seed)
    X = raw_data(rng, n, d)
    sel = novelselect(X, k, seed=seed, density_power=beta, distance_power=alpha)
    assert sel.indices[0] == np.random.default_rng(seed).integers(n)
    expected, exp_scores = direct_novelselect(X, k, int(sel.indices[0]), beta=beta, alpha=alpha)
    np.testing.assert_array_equal(sel.indices, expected)
    np.testing.assert_allclose(sel.scores[1:], exp_scores[1:], rtol=1e-9)
    assert np.isnan(sel.scores[0]) and sel.method == "novelselect"


def test_novelselect_with_quality(rng):
    X = raw_data(rng, 200, 10)
    q = rng.uniform(0.0, 3.0, 200)
    q[::7] = 0.0
    sel = novelselect(X, 60, quality=q, seed=7)
    expected, _ = direct_novelselect(X, 60, int(sel.indices[0]), quality=q)
    np.testing.assert_array_equal(sel.indices, expected)
    with pytest.raises(ValueError, match="quality must be >= 0"):
        novelselect(X, 5, quality=-q)
    with pytest.raises(ValueError, match="quality has shape"):
        novelselect(X, 5, quality=q[:10])


def test_novelselect_ties_go_to_lowest_index(rng):
    base = raw_data(rng, 40, 6)
    X = np.concatenate([base, base, base])  # every row three times: exact ties everywhere
    sel = novelselect(X, 30, n_neighbors=3, seed=11)
    expected, _ = direct_novelselect(X, 30, int(sel.indices[0]), K=3)
    np.testing.assert_array_equal(sel.indices, expected)


def test_novelselect_negative_power_falls_back_to_full_evaluation(rng):
    X = raw_data(rng, 80, 5)
    sel = novelselect(X, 20, distance_power=-0.5, seed=1)
    expected, _ = direct_novelselect(X, 20, int(sel.indices[0]), alpha=-0.5)
    np.testing.assert_array_equal(sel.indices, expected)


def test_novelselect_select_all_and_reproducible(rng):
    X = raw_data(rng, 60, 5)
    sel = novelselect(X, 60, seed=3)
    assert sorted(sel.indices.tolist()) == list(range(60))
    np.testing.assert_array_equal(novelselect(X, 20, seed=3).indices, sel.indices[:20])
    assert not np.array_equal(novelselect(X, 20, seed=4).indices, sel.indices[:20])
    with pytest.raises(ValueError, match="k=61"):
        novelselect(X, 61)


def test_novelselect_lazy_evaluates_few_candidates(rng):
    from equal.diversity._density import density_weights
    from equal.select._novelselect import novelselect_lazy

    X = raw_data(rng, 3000, 16)
    s = density_weights(X, None, 10, 0.5)
    _, _, stats = novelselect_lazy(X, s, 100, 0, 1.0, None)
    # The direct method evaluates all ~3000 candidates per step.
    assert stats["evaluations"] < 0.25 * 3000 * 99


# ---------------------------------------------------------------------------------------------- kMQ family


def test_allocate_budget_proportional_and_capped():
    sizes = np.array([50, 30, 15, 5])
    b = allocate_budget(20, sizes, sizes.astype(float))
    np.testing.assert_array_equal(b, [10, 6, 3, 1])
    b = allocate_budget(7, sizes, sizes.astype(float))
    assert b.sum() == 7 and (np.abs(b - 7 * sizes / 100) < 1).all()
    eq = allocate_budget(40, sizes, np.ones(4))  # equal shares, the small cluster caps at 5
    np.testing.assert_array_equal(eq, [12, 12, 11, 5])
    assert allocate_budget(1000, sizes, np.ones(4)).tolist() == sizes.tolist()
    assert allocate_budget(3, sizes, np.array([0.0, 0.0, 1.0, 0.0])).tolist() == [0, 0, 3, 0]


def _labels_like_kmq(X, n_clusters, seed):
    from equal.cluster import KMeans

    km_rng, _ = np.random.default_rng(seed).spawn(2)
    return KMeans(n_clusters, seed=km_rng, spherical=True).fit(X).labels_


@pytest.fixture(scope="module")
def pool() -> np.ndarray:
    rng = np.random.default_rng(5)
    centers = l2_normalize(rng.standard_normal((6, 16)))
    sizes = [400, 250, 150, 100, 60, 40]
    lab = np.repeat(np.arange(6), sizes)
    return l2_normalize(centers[lab] + 0.15 * rng.standard_normal((lab.size, 16)))


@pytest.mark.parametrize("budget", ["proportional", "equal"])
def test_kmq_budgets(pool, budget):
    pytest.importorskip("faiss")
    q = np.random.default_rng(0).standard_normal(len(pool))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sel = kmq(pool, 100, n_clusters=6, quality=q, budget=budget, seed=9)
        labels = _labels_like_kmq(pool, 6, 9)
    assert len(sel) == 100 and len(set(sel.indices.tolist())) == 100
    counts = np.bincount(labels[sel.indices], minlength=6)
    np.testing.assert_array_equal(counts, sel.params["budgets"])
    sizes = np.bincount(labels, minlength=6)
    if budget == "proportional":
        assert (np.abs(counts - 100 * sizes / sizes.sum()) < 1).all()
    else:
        assert (sizes > 100 // 6 + 1).all()  # no cluster is too small for its equal share
        assert counts.max() - counts.min() <= 1
    np.testing.assert_allclose(sel.scores, q[sel.indices])


def test_kmq_reproducible_and_seed_dependent(pool):
    pytest.importorskip("faiss")
    q = np.random.default_rng(1).standard_normal(len(pool))
    a = kmq(pool, 80, n_clusters=5, quality=q, seed=1)
    b = kmq(pool, 80, n_clusters=5, quality=q, seed=1)
    c = kmq(pool, 80, n_clusters=5, quality=q, seed=2)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert set(a.indices.tolist()) != set(c.indices.tolist())


def test_kmq_softmax_prefers_high_quality(pool):
    pytest.importorskip("faiss")
    q = np.zeros(len(pool))
    top = np.arange(0, len(pool), 5)
    q[top] = 50.0  # softmax makes these almost certain
    sel = kmq(pool, 60, n_clusters=4, quality=q, seed=0)
    assert np.isin(sel.indices, top).all()


def test_within_cluster_sampling_probabilities():
    labels = np.zeros(4, dtype=np.int64)
    q = np.array([0.0, 1.0, 2.0, 3.0])
    for sampling, p in (("softmax", np.exp(q) / np.exp(q).sum()), ("proportional", q / q.sum())):
        draws = [
            kmq_iterative_round(labels, 1, quality=q, sampling=sampling, seed=s).indices[0]
            for s in range(3000)
        ]
        freq = np.bincount(draws, minlength=4) / 3000
        np.testing.assert_allclose(freq, p, atol=0.03)


def test_km_random_and_closest(pool):
    pytest.importorskip("faiss")
    r = km_random(pool, 50, n_clusters=5, seed=4)
    assert r.scores is None and len(set(r.indices.tolist())) == 50 and r.method == "km-random"
    c = km_closest(pool, 50, n_clusters=5, seed=4)
    labels = _labels_like_kmq(pool, 5, 4)
    np.testing.assert_array_equal(np.bincount(labels[c.indices], minlength=5), c.params["budgets"])
    # inside each cluster the picks are the rows with the highest cosine to the centroid
    centers = np.stack([l2_normalize(pool[labels == j].mean(0, keepdims=True))[0] for j in range(5)])
    for j in range(5):
        members = np.flatnonzero(labels == j)
        picked = c.indices[labels[c.indices] == j]
        assert picked.size > 0
        rest = np.setdiff1d(members, picked)
        assert (pool[picked] @ centers[j]).min() >= (pool[rest] @ centers[j]).max() - 1e-3


def test_kmq_reweight_rules():
    labels = np.array([0, 0, 1, 1, 2, 2, 3])
    w = np.array([0.25, 0.25, 0.25, 0.25])
    idx = np.array([0, 1, 2, 4])
    scores = np.array([1.0, 3.0, 1.0, -2.0])  # means: c0 2, c1 1, c2 -2 (clipped to 0), c3 unscored
    new = kmq_reweight(w, labels, idx, scores)
    s = np.array([2.0, 1.0, 0.0, (2.0 + 1.0 - 2.0) / 3])
    np.testing.assert_allclose(new, w * s / (w * s).sum())
    soft = kmq_reweight(w, labels, idx, scores, rule="softmax")
    m = np.array([2.0, 1.0, -2.0, 1.0 / 3])
    np.testing.assert_allclose(soft, np.exp(m) / np.exp(m).sum())
    np.testing.assert_allclose(kmq_reweight(w, labels, idx, -np.abs(scores)), w)  # all <= 0: unchanged
    with pytest.raises(ValueError, match="rule="):
        kmq_reweight(w, labels, idx, scores, rule="x")
    with pytest.raises(ValueError, match="labels must lie"):
        kmq_reweight(w[:2], labels, idx, scores)


def test_kmq_iterative_round_respects_weights_and_history():
    labels = np.repeat(np.arange(4), 50)
    prev = np.arange(0, 200, 3)
    sel = kmq_iterative_round(labels, 40, np.array([0.5, 0.25, 0.25, 0.0]), prev, seed=0)
    assert not np.isin(sel.indices, prev).any() and len(set(sel.indices.tolist())) == 40
    np.testing.assert_array_equal(np.bincount(labels[sel.indices], minlength=4), [20, 10, 10, 0])
    again = kmq_iterative_round(labels, 40, np.array([0.5, 0.25, 0.25, 0.0]), prev, seed=0)
    np.testing.assert_array_equal(sel.indices, again.indices)
    with pytest.raises(ValueError, match="k=190"):
        kmq_iterative_round(labels, 190, None, prev)


# ---------------------------------------------------------------------------------------------- baselines


def test_kcenter_greedy_matches_brute_force(rng):
    X = l2_normalize(rng.standard_normal((300, 10)))
    sel = kcenter_greedy(X, 40, seed=5)
    E = X.astype(np.float64)
    chosen = [int(sel.indices[0])]
    for _ in range(39):
        mind = (1.0 - E @ E[chosen].T).min(axis=1)
        mind[chosen] = -np.inf
        chosen.append(int(np.argmax(mind)))
    np.testing.assert_array_equal(sel.indices, chosen)
    assert np.all(np.diff(sel.scores[1:]) <= 1e-12)  # farthest-point distances never increase


def test_random_select():
    a = random_select(1000, 100, seed=1)
    assert len(set(a.indices.tolist())) == 100 and a.indices.max() < 1000
    np.testing.assert_array_equal(a.indices, random_select(1000, 100, seed=1).indices)
    assert not np.array_equal(a.indices, random_select(1000, 100, seed=2).indices)


def test_deita_threshold_property(rng):
    X = l2_normalize(rng.standard_normal((400, 4)))  # low dimension: many near neighbours
    q = rng.standard_normal(400)
    sel = deita_select(X, 30, quality=q, threshold=0.8)
    E = X.astype(np.float64)
    G = E[sel.indices] @ E[sel.indices].T
    np.fill_diagonal(G, -1)
    assert G.max() < 0.8
    assert np.all(np.diff(sel.scores) <= 0)  # best quality first
    # every better row that was skipped is too close to an accepted row of at least its quality
    skipped = np.setdiff1d(np.flatnonzero(q >= sel.scores.min()), sel.indices)
    assert ((E[skipped] @ E[sel.indices].T).max(axis=1) >= 0.8).all()
    with pytest.warns(UserWarning, match="accepted only"):
        few = deita_select(X, 300, quality=q, threshold=0.0)
    assert len(few) < 300


def test_select_dispatch_and_selection_type(rng):
    X = l2_normalize(rng.standard_normal((100, 8)))
    assert set(METHODS) == {
        "novelselect",
        "kmq",
        "kmq-iterative",
        "km-closest",
        "km-random",
        "kcenter",
        "random",
        "deita",
    }
    s = select(X, 10, "kcenter", seed=0)
    assert isinstance(s, Selection) and s.method == "kcenter" and s.indices.dtype == np.int64
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.method = "x"
    with pytest.raises(ValueError):
        s.indices[0] = 3
    assert select(X, 10, "random", seed=0).method == "random"
    with pytest.raises(ValueError, match="method='nope'"):
        select(X, 10, "nope")
