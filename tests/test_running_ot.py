"""RunningDistance: a chunk-independent reservoir (Algorithm R) and the OT distance of its sample."""

from __future__ import annotations

import numpy as np
import pytest

from equal import l2_normalize
from equal.ot import RunningDistance, distance
from equal.ot._running import _uniform


def _mixture(rng: np.random.Generator, n: int, weights: np.ndarray, d: int = 16) -> np.ndarray:
    centers = l2_normalize(np.random.default_rng(42).standard_normal((len(weights), d)))
    labels = rng.choice(len(weights), size=n, p=weights)
    return l2_normalize(centers[labels] + 0.35 * rng.standard_normal((n, d)))


def _algorithm_r(X: np.ndarray, capacity: int, key: np.uint64) -> np.ndarray:
    """Vitter's Algorithm R, one row at a time, with the same per-position uniforms."""
    sample: list[np.ndarray] = []
    for i, x in enumerate(X):
        if i < capacity:
            sample.append(x)
            continue
        u = float(_uniform(key, np.array([i]))[0])
        j = min(int(u * (i + 1)), i)
        if j < capacity:
            sample[j] = x
    return np.array(sample, dtype=np.float32)


def test_reservoir_is_independent_of_chunking_and_matches_algorithm_r(rng: np.random.Generator) -> None:
    Y = _mixture(rng, 30, np.full(4, 0.25))
    X = _mixture(rng, 700, np.full(4, 0.25))
    samples = []
    for chunk in (1, 7, 700):
        rd = RunningDistance(Y, capacity=50, seed=5)
        for start in range(0, len(X), chunk):
            rd.add(X[start : start + chunk])
        rd.add(X[:0])  # an empty add changes nothing
        assert rd.n_seen == 700 and not rd.exact
        samples.append(rd.sample)
    np.testing.assert_array_equal(samples[0], samples[1])
    np.testing.assert_array_equal(samples[0], samples[2])
    np.testing.assert_array_equal(samples[0], _algorithm_r(X, 50, rd._key))
    # Rows of the sample are distinct rows of X (no row written twice, none invented).
    assert len({r.tobytes() for r in samples[0]}) == 50
    assert {r.tobytes() for r in samples[0]} <= {r.tobytes() for r in X}
    # Same seed, same sample; another seed, another sample.
    other = RunningDistance(Y, capacity=50, seed=6)
    other.add(X)
    assert not np.array_equal(other.sample, samples[0])


def test_reservoir_inclusion_is_uniform() -> None:
    # Each of n rows must be in the sample with probability capacity / n, early rows and late rows alike.
    n, cap, trials = 40, 8, 1500
    X = l2_normalize(np.eye(n, dtype=np.float32))
    Y = X[:2]
    counts = np.zeros(n)
    for seed in range(trials):
        rd = RunningDistance(Y, capacity=cap, seed=seed)
        rd.add(X)
        counts[np.argmax(rd.sample, axis=1)] += 1
    freq = counts / trials
    # binomial sd = sqrt(0.2 * 0.8 / 1500) ~ 0.0103; 5 sd
    np.testing.assert_allclose(freq, cap / n, atol=0.052)
    assert abs(freq[:cap].mean() - freq[cap:].mean()) < 0.02


def test_value_exact_below_capacity_and_sampled_above(rng: np.random.Generator) -> None:
    Y = _mixture(rng, 100, np.array([0.4, 0.3, 0.1, 0.1, 0.05, 0.05]))
    X = _mixture(rng, 2000, np.full(6, 1 / 6))
    rd = RunningDistance(Y, capacity=300, seed=0)
    assert rd.value() is None and rd.n_seen == 0 and rd.sample.shape == (0, 16)
    rd.add(X[:120])
    rd.add(X[120:250])
    assert rd.exact
    np.testing.assert_allclose(rd.value(), distance(X[:250], Y, beta=0.25), rtol=1e-9)
    # beta only changes the path: the same distance as the reward's beta=1 within IPOT's tol.
    np.testing.assert_allclose(rd.value(), distance(X[:250], Y), rtol=2e-3)
    rd.add(X[250:])
    assert rd.sample.shape == (300, 16) and rd.n_seen == 2000
    v = rd.value()
    np.testing.assert_allclose(v, distance(rd.sample, Y, beta=0.25), rtol=1e-9)
    assert rd.value() == v  # cached until the sample changes
    full = distance(X, Y)
    # Triangle inequality (W1 is a metric for the Euclidean cost), with IPOT's 1e-3 relative tolerance.
    assert abs(v - full) <= distance(rd.sample, X) + 3e-3 * full
    # On this case a 300-row sample of 2000 is within 5% of the full distance (measured: 0.5-1.2%
    # over three data seeds).
    assert abs(v - full) / full < 0.05
    # Other solvers and costs pass through to distance().
    exact = RunningDistance(Y, capacity=600, seed=0, method="exact", cost="cosine")
    exact.add(X[:300])
    np.testing.assert_allclose(exact.value(), distance(X[:300], Y, method="exact", cost="cosine"), rtol=1e-12)


def test_state_dict_roundtrip_and_validation(rng: np.random.Generator) -> None:
    Y = _mixture(rng, 20, np.full(2, 0.5))
    X = _mixture(rng, 300, np.full(2, 0.5))
    a = RunningDistance(Y, capacity=64, seed=1)
    a.add(X[:150])
    b = RunningDistance(Y, capacity=64, seed=1)
    b.load_state_dict(a.state_dict())
    a.add(X[150:])
    b.add(X[150:])
    np.testing.assert_array_equal(a.sample, b.sample)
    assert a.value() == b.value()
    with pytest.raises(ValueError, match="rows"):
        b.load_state_dict({"n_seen": 10, "sample": X[:3]})
    with pytest.raises(ValueError, match="capacity"):
        RunningDistance(Y, capacity=0)
    with pytest.raises(ValueError, match="method"):
        RunningDistance(Y, method="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="columns"):
        a.add(np.ones((2, 3), dtype=np.float32) / np.sqrt(3))
