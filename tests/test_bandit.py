"""Tests of equal.bandit: UCB against EQUAL's mab.py, EXP3 against LEAD's exp3.py, every policy's contract."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from equal.bandit import (
    EXP3,
    POLICIES,
    UCB,
    EpsilonGreedy,
    Policy,
    ThompsonSampling,
    Uniform,
    make_policy,
)

# ----------------------------------------------------------------------------------------------- UCB vs EQUAL


def _equal_mab_scores(neighbors: list[list[int]], rounds: list[tuple[list[int], list[float]]],
                      alpha: float) -> list[float]:
    """EQUAL's ``mab.py`` update loop transcribed with dicts, as in the released code."""
    k = len(neighbors)
    cluster_score = dict.fromkeys(range(k), 0.0)
    cluster_chose = dict.fromkeys(range(k), 0)
    cluster_ucb = dict.fromkeys(range(k), 0.0)
    sum_chose = 0
    for chosen, rewards in rounds:
        for i, reward in zip(chosen, rewards, strict=True):
            for cluster in neighbors[i]:
                sum_chose += 1
                cluster_score[cluster] += reward
                cluster_chose[cluster] += 1
        for key in cluster_ucb:
            avg = cluster_score[key] / cluster_chose[key] if cluster_chose[key] != 0 else 0
            bonus = alpha * math.sqrt(2 * math.log(float(sum_chose)) / float(cluster_chose[key] + 1))
            cluster_ucb[key] = avg + bonus
    return [cluster_ucb[c] for c in range(k)]


def test_ucb_hand_computed_four_arm_toy() -> None:
    neighbors = [[0, 1], [0, 1], [2], [2, 3]]
    policy = UCB(4, alpha=0.001, neighbors=neighbors)
    first = policy.select(2)
    np.testing.assert_array_equal(first, [0, 1])  # EQUAL's first round: clusters in index order
    policy.update(first, [0.5, 0.2])
    # Arm 0's reward goes to 0 and 1, arm 1's to 0 and 1: sums 0.7, 0.7; counts 2, 2; total 4.
    np.testing.assert_allclose(policy.sums, [0.7, 0.7, 0.0, 0.0])
    np.testing.assert_array_equal(policy.counts, [2, 2, 0, 0])
    assert policy.total == 4
    b = 0.001 * math.sqrt(2 * math.log(4))
    np.testing.assert_allclose(policy.scores(), [0.35 + b / math.sqrt(3), 0.35 + b / math.sqrt(3), b, b])
    np.testing.assert_array_equal(policy.select(3), [0, 1, 2])
    policy.update([3], [0.9])  # credited to 2 and 3
    np.testing.assert_allclose(policy.sums, [0.7, 0.7, 0.9, 0.9])
    np.testing.assert_array_equal(policy.counts, [2, 2, 1, 1])
    b = 0.001 * math.sqrt(2 * math.log(6))
    np.testing.assert_allclose(policy.scores(), [0.35 + b / math.sqrt(3)] * 2 + [0.9 + b / math.sqrt(2)] * 2)
    np.testing.assert_array_equal(policy.select(2), [2, 3])
    np.testing.assert_array_equal(policy.pulls, [1, 1, 0, 1])


def test_ucb_reproduces_equal_mab_loop(rng: np.random.Generator) -> None:
    k = 12
    near = rng.random((k, k)) < 0.25
    near = near | near.T
    np.fill_diagonal(near, True)
    neighbors = [np.flatnonzero(row).tolist() for row in near]
    policy = UCB(k, alpha=0.001, neighbors=neighbors)
    history = []
    for _ in range(15):
        arms = policy.select(3)
        rewards = rng.uniform(-0.2, 0.4, size=3).tolist()
        policy.update(arms, rewards)
        history.append((arms.tolist(), rewards))
        np.testing.assert_allclose(policy.scores(), _equal_mab_scores(neighbors, history, 0.001), rtol=1e-12)
        # Selection is the deterministic top by UCB (ties to the lower index).
        ucb = policy.scores()
        expected = sorted(range(k), key=lambda c: (-ucb[c], c))[:3]
        np.testing.assert_array_equal(policy.select(3), expected)


def test_ucb_decaying_alpha_and_available_mask() -> None:
    policy = UCB(5)
    assert policy.current_alpha() == 1.0
    available = np.array([True, False, True, True, False])
    np.testing.assert_array_equal(policy.select(10, available=available), [0, 2, 3])
    policy.update([0, 2], [1.0, 0.5])
    assert policy.current_alpha() == pytest.approx(1 / 3)
    bonus = (1 / 3) * np.sqrt(2 * np.log(2) / (np.array([1, 0, 1, 0, 0]) + 1.0))
    np.testing.assert_allclose(policy.scores(), np.array([1.0, 0, 0.5, 0, 0]) + bonus)
    available = np.array([False, True, True, True, True])
    np.testing.assert_array_equal(policy.select(2, available=available), [2, 1])
    assert policy.select(3, available=np.zeros(5, dtype=bool)).size == 0


def test_ucb_exhausted_arms_never_selected(rng: np.random.Generator) -> None:
    policy = UCB(8, alpha=0.5)
    exhausted = np.zeros(8, dtype=bool)
    for t in range(40):
        if t % 5 == 4:
            exhausted[rng.integers(8)] = True
        arms = policy.select(3, available=~exhausted)
        assert not exhausted[arms].any()
        assert arms.size == min(3, int((~exhausted).sum())) and len(set(arms.tolist())) == arms.size
        policy.update(arms, rng.random(arms.size))


def test_ucb_quad_weighted_neighbour_credit() -> None:
    D = np.array([[0.0, 0.1, 0.5], [0.1, 0.0, 0.15], [0.5, 0.15, 0.0]])
    policy = UCB(3, alpha=0.0001, distances=D, tau=0.2)
    assert policy.state_dict()["params"]["neighbors"] == [[0, 1], [0, 1, 2], [1, 2]]
    policy.update([1], [0.8])
    # Quad: score[j] += r·(1 − d/τ), count[j] += 1.
    np.testing.assert_allclose(policy.sums, [0.8 * 0.5, 0.8, 0.8 * 0.25])
    np.testing.assert_array_equal(policy.counts, [1, 1, 1])
    with pytest.raises(ValueError, match="distances needs tau"):
        UCB(3, distances=D)
    with pytest.raises(ValueError, match=r"neighbors\[1\] must include arm 1"):
        UCB(3, neighbors=[[0], [0], [2]])
    with pytest.raises(ValueError, match="alpha='fast'"):
        UCB(3, alpha="fast")


# ----------------------------------------------------------------------------------------------- EXP3 vs LEAD


def test_exp3_update_matches_lead_by_hand() -> None:
    K, gamma = 4, 0.1
    policy = EXP3(K, seed=0, gamma=gamma)
    weights = np.ones(K)
    history: list[float] = []
    for arm, reward in [(2, 0.3), (1, 0.9), (2, 0.5), (0, 0.1)]:
        # LEAD's exp3.py: append, normalise by history min/max (raw below two rewards), p from weights.
        history.append(reward)
        if len(history) < 2:
            r_hat = reward
        else:
            r_hat = 2 * (reward - min(history)) / (max(history) - min(history)) - 1
        p = (1 - gamma) * weights / weights.sum() + gamma / K
        weights[arm] *= math.exp((gamma / K) * r_hat / p[arm])
        policy.update([arm], [reward])
        np.testing.assert_allclose(policy.probabilities(), (1 - gamma) * weights / weights.sum() + gamma / K)
    np.testing.assert_allclose(policy.scores().sum(), 1.0)


def test_exp3_samples_from_restricted_probabilities() -> None:
    policy = EXP3(3, seed=0, gamma=0.3)
    for _ in range(30):
        policy.update([0], [1.0])
        policy.update([2], [0.0])
    p = policy.probabilities()
    counts = np.zeros(3)
    available = np.array([True, False, True])
    for _ in range(3000):
        arm = policy.select(1, available=available)
        assert arm[0] != 1
        counts[arm] += 1
    np.testing.assert_allclose(counts[[0, 2]] / 3000, p[[0, 2]] / p[[0, 2]].sum(), atol=0.03)
    np.testing.assert_array_equal(np.sort(policy.select(5)), [0, 1, 2])


# ----------------------------------------------------------------------------------------------- others


def test_thompson_posterior_by_hand() -> None:
    policy = ThompsonSampling(3, seed=0, prior_mean=0.0, prior_strength=1.0)
    assert policy.sigma() == 1.0
    policy.update([0, 1, 0], [1.0, 0.0, 2.0])
    rewards = np.array([1.0, 0.0, 2.0])
    assert policy.sigma() == pytest.approx(rewards.std(ddof=1))
    mean, std = policy.posterior()
    np.testing.assert_allclose(mean, [3.0 / 3, 0.0 / 2, 0.0])
    np.testing.assert_allclose(std, rewards.std(ddof=1) / np.sqrt([3, 2, 1]))
    fixed = ThompsonSampling(3, seed=0, noise_std=0.5)
    assert fixed.sigma() == 0.5


def test_epsilon_greedy_zero_epsilon_is_greedy_untried_first() -> None:
    policy = EpsilonGreedy(4, seed=0, epsilon=0.0)
    np.testing.assert_array_equal(policy.select(2), [0, 1])
    policy.update([0, 1], [0.2, 0.7])
    np.testing.assert_array_equal(policy.select(3), [2, 3, 1])  # never-credited arms first
    policy.update([2, 3], [0.1, 0.3])
    np.testing.assert_array_equal(policy.select(4), [1, 3, 0, 2])
    np.testing.assert_allclose(policy.scores(), [0.2, 0.7, 0.1, 0.3])


def test_uniform_selects_distinct_available_and_reports_means(rng: np.random.Generator) -> None:
    policy = Uniform(6, seed=1)
    available = np.array([True, True, False, True, False, True])
    seen = set()
    for _ in range(50):
        arms = policy.select(3, available=available)
        assert len(set(arms.tolist())) == 3 and available[arms].all()
        seen.update(arms.tolist())
    assert seen == {0, 1, 3, 5}
    policy.update([0, 0, 3], [1.0, 0.0, 0.5])
    np.testing.assert_allclose(policy.scores(), [0.5, 0, 0, 0.5, 0, 0])


# ----------------------------------------------------------------------------------------------- all policies


def _policy_factories() -> dict[str, object]:
    nb = [[0, 1], [0, 1, 2], [1, 2], [3], [4, 5], [4, 5]]
    return {
        "ucb": lambda seed: UCB(6, seed=seed, alpha=0.3, neighbors=nb),
        "exp3": lambda seed: EXP3(6, seed=seed),
        "thompson": lambda seed: ThompsonSampling(6, seed=seed, neighbors=nb),
        "epsilon-greedy": lambda seed: EpsilonGreedy(6, seed=seed, epsilon=0.4),
        "uniform": lambda seed: Uniform(6, seed=seed),
    }


def _play(policy: Policy, rounds: int, rng: np.random.Generator) -> list[list[int]]:
    picks = []
    for t in range(rounds):
        available = np.ones(6, dtype=bool)
        available[t % 6] = False
        arms = policy.select(2, available=available)
        policy.update(arms, rng.random(arms.size) + 0.1 * arms)
        picks.append(arms.tolist())
    return picks


@pytest.mark.parametrize("name", list(POLICIES))
def test_state_dict_round_trip_gives_identical_future(name: str) -> None:
    policy = _policy_factories()[name](7)
    _play(policy, 10, np.random.default_rng(1))
    state = json.loads(json.dumps(policy.state_dict()))  # JSON-able all the way down
    restored = Policy.from_state(state)
    assert type(restored) is type(policy)
    np.testing.assert_allclose(restored.scores(), policy.scores(), rtol=0, atol=0)
    assert _play(restored, 15, np.random.default_rng(2)) == _play(policy, 15, np.random.default_rng(2))
    # load_state_dict into a fresh instance with the same parameters works too.
    fresh = _policy_factories()[name](999)
    fresh.load_state_dict(state)
    again = Policy.from_state(state)
    assert _play(fresh, 5, np.random.default_rng(3)) == _play(again, 5, np.random.default_rng(3))


@pytest.mark.parametrize("name", list(POLICIES))
def test_seeded_reproducibility(name: str) -> None:
    make = _policy_factories()[name]
    a = _play(make(3), 20, np.random.default_rng(0))
    b = _play(make(3), 20, np.random.default_rng(0))
    assert a == b
    if name in ("exp3", "thompson", "epsilon-greedy", "uniform"):
        assert _play(make(4), 20, np.random.default_rng(0)) != a


def test_state_dict_mismatch_is_refused() -> None:
    state = UCB(3, alpha=0.1).state_dict()
    with pytest.raises(ValueError, match=r"state\['params'\]\['alpha'\] differs"):
        UCB(3, alpha=0.2).load_state_dict(state)
    with pytest.raises(ValueError, match="n_arms"):
        UCB(4, alpha=0.1).load_state_dict(state)
    with pytest.raises(ValueError, match="is not a EXP3"):
        EXP3.from_state(state)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("ucb", {"alpha": 1.0}),
        ("exp3", {}),
        ("thompson", {}),
        ("epsilon-greedy", {"epsilon": 0.1}),
    ],
)
def test_learning_policies_find_the_best_bernoulli_arm(name: str, kwargs: dict[str, float]) -> None:
    means = np.array([0.2, 0.3, 0.25, 0.35, 0.3, 0.2, 0.3, 0.85])
    best = int(np.argmax(means))

    def best_count(policy: Policy) -> int:
        env = np.random.default_rng(123)
        count = 0
        for _ in range(400):
            arm = policy.select(1)
            count += int(arm[0] == best)
            policy.update(arm, (env.random(1) < means[arm]).astype(float))
        return count

    uniform = best_count(make_policy("uniform", 8, seed=0))
    learned = best_count(make_policy(name, 8, seed=0, **kwargs))
    assert uniform < 80  # about 400 / 8
    assert learned > 2.5 * uniform and learned > 150


def test_make_policy() -> None:
    assert isinstance(make_policy("UCB", 3, seed=0), UCB)
    assert isinstance(make_policy("epsilon_greedy", 3, seed=0, epsilon=0.2), EpsilonGreedy)
    policy = make_policy("ucb", 3, seed=0, neighbors=[[0, 1], [1], [2]], alpha=0.001)
    assert policy.alpha == 0.001
    with pytest.raises(ValueError, match="ucb, exp3, thompson, epsilon-greedy, uniform"):
        make_policy("softmax", 3, seed=0)
    with pytest.raises(ValueError, match="not supported by policy 'exp3'"):
        make_policy("exp3", 3, seed=0, neighbors=[[0], [1], [2]])


def test_input_validation() -> None:
    policy = UCB(3)
    with pytest.raises(ValueError, match="n_arms=0"):
        UCB(0)
    with pytest.raises(ValueError, match="n=-1"):
        policy.select(-1)
    with pytest.raises(ValueError, match="available must be a bool array"):
        policy.select(1, available=np.array([1, 0, 1]))
    with pytest.raises(ValueError, match="rewards must have the shape"):
        policy.update([0, 1], [0.5])
    with pytest.raises(ValueError, match="finite"):
        policy.update([0], [float("nan")])
    with pytest.raises(ValueError, match=r"arms must lie in \[0, n_arms=3\)"):
        policy.update([3], [0.5])
    with pytest.raises(ValueError, match="gamma=0"):
        EXP3(3, gamma=0)
    with pytest.raises(ValueError, match=r"epsilon=1\.5"):
        EpsilonGreedy(3, epsilon=1.5)
