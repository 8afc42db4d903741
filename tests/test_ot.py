"""Tests of equal.ot against POT, scipy and a plain float64 transcription of the IPOT formula."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from equal import ConvergenceWarning, l2_normalize
from equal.ot import OTResult, cost_matrix, distance, distance_batch, emd, ipot, sinkhorn

ot = pytest.importorskip("ot")
torch = pytest.importorskip("torch")


def clustered(n: int, m: int, d: int, seed: int, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Two unit-vector samples from different mixtures of the same k clusters (a non-trivial OT problem)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d))
    X = centers[rng.choice(k, n, p=rng.dirichlet(np.ones(k)))] + 0.8 * rng.standard_normal((n, d))
    Y = centers[rng.choice(k, m, p=rng.dirichlet(np.ones(k)))] + 0.8 * rng.standard_normal((m, d))
    return l2_normalize(X), l2_normalize(Y)


def weights(size: int, seed: int) -> np.ndarray:
    w = np.random.default_rng(seed).random(size) + 0.05
    return w / w.sum()


def reference_ipot(
    a: np.ndarray, b: np.ndarray, M: np.ndarray, beta: float, n_outer: int, n_inner: int
) -> np.ndarray:
    """The IPOT loop exactly as written in the paper and EQUAL's code (float64, materialised Γ)."""
    n, m = M.shape
    G = np.exp(-M / beta)
    plan = np.full((n, m), 1.0 / (n * m))
    bb = np.ones(m)
    for _ in range(n_outer):
        Q = G * plan
        for _ in range(n_inner):
            aa = a / (Q @ bb)
            bb = b / (Q.T @ aa)
        plan = aa[:, None] * Q * bb[None, :]
    return plan


def round_to_marginals(plan: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Altschuler et al. (2017), Algorithm 2, written out directly."""
    plan = np.minimum(1.0, a / plan.sum(1))[:, None] * plan
    plan = plan * np.minimum(1.0, b / plan.sum(0))[None, :]
    er, ec = a - plan.sum(1), b - plan.sum(0)
    return plan + np.outer(er, ec) / er.sum()


# ---------------------------------------------------------------- cost matrices


@pytest.mark.parametrize("cost, metric", [("euclidean", "euclidean"), ("sqeuclidean", "sqeuclidean"),
                                          ("cosine", "cosine")])
def test_cost_matrix_matches_cdist(cost: str, metric: str) -> None:
    X, Y = clustered(40, 30, 16, 0)
    C = cost_matrix(X, Y, cost)
    assert C.shape == (40, 30) and C.dtype == np.float64
    np.testing.assert_allclose(C, cdist(X.astype(np.float64), Y.astype(np.float64), metric), atol=1e-6)


def test_cost_matrix_euclidean_on_unnormalised_vectors(rng: np.random.Generator) -> None:
    X, Y = 3.0 * rng.standard_normal((20, 5)), rng.standard_normal((15, 5))
    np.testing.assert_allclose(cost_matrix(X, Y), cdist(X, Y), rtol=1e-10, atol=1e-7)
    np.testing.assert_allclose(cost_matrix(X, Y, "sqeuclidean"), cdist(X, Y, "sqeuclidean"),
                               rtol=1e-10, atol=1e-7)


def test_cost_matrix_duplicates_are_zero_not_nan() -> None:
    X, _ = clustered(10, 1, 8, 1)
    C = cost_matrix(X, X)
    assert np.isfinite(C).all() and (C >= 0).all()
    np.testing.assert_allclose(np.diag(C), 0.0, atol=1e-3)


def test_cost_matrix_torch_matches_numpy() -> None:
    X, Y = clustered(12, 9, 6, 2)
    C = cost_matrix(torch.from_numpy(X), torch.from_numpy(Y))
    assert isinstance(C, torch.Tensor) and C.dtype == torch.float64
    np.testing.assert_allclose(C.numpy(), cost_matrix(X, Y), rtol=1e-12)


def test_cost_matrix_rejects_bad_input(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="unit-norm"):
        cost_matrix(2.0 * np.eye(3), np.eye(3), "cosine")
    with pytest.raises(ValueError, match="d=3 columns but Y has d=4"):
        cost_matrix(np.eye(3), np.eye(4))
    with pytest.raises(ValueError, match="2-D"):
        cost_matrix(np.ones(3), np.eye(3))
    with pytest.raises(ValueError, match="cost='manhattan'"):
        cost_matrix(np.eye(3), np.eye(3), "manhattan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        cost_matrix(np.full((2, 3), np.nan), np.eye(3))


# ---------------------------------------------------------------- IPOT


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cost", ["euclidean", "cosine"])
@pytest.mark.parametrize("uniform", [True, False])
def test_ipot_matches_emd(seed: int, cost: str, uniform: bool) -> None:
    X, Y = clustered(240, 200, 32, seed)
    M = cost_matrix(X, Y, cost)
    a = np.full(240, 1 / 240) if uniform else weights(240, seed + 10)
    b = np.full(200, 1 / 200) if uniform else weights(200, seed + 20)
    exact = ot.emd2(a, b, M)
    res = ipot(None if uniform else a, None if uniform else b, M)
    assert isinstance(res, OTResult) and res.converged and 0 < res.n_iter <= 2000
    rel = (res.cost - exact) / exact
    assert abs(rel) <= 1e-3
    # the certificate: the plan is feasible (cost >= OT) and err bounds the relative error
    assert -1e-7 <= rel <= res.err + 1e-7
    assert res.plan.dtype == np.float64 and res.plan.shape == (240, 200) and (res.plan >= 0).all()
    np.testing.assert_allclose(res.plan.sum(1), a, atol=1e-6)
    np.testing.assert_allclose(res.plan.sum(0), b, atol=1e-6)
    np.testing.assert_allclose(res.cost, (res.plan * M).sum(), rtol=1e-6)


@pytest.mark.parametrize("beta, scale, n_outer, n_inner",
                         [(1.0, 1.0, 40, 1), (0.3, 1.0, 60, 3), (1.0, 1.0, 25, 10), (2.0, 30.0, 80, 1)])
def test_ipot_iterates_equal_the_reference_loop(
    beta: float, scale: float, n_outer: int, n_inner: int
) -> None:
    # scale=30 gives reduced costs spanning > 20·β: the float64 hot loop with absorptions of the scalings
    X, Y = clustered(50, 35, 8, 3)
    M = scale * cost_matrix(X, Y)
    a, b = weights(50, 1), weights(35, 2)
    expected = round_to_marginals(reference_ipot(a, b, M, beta, n_outer, n_inner), a, b)
    res = ipot(a, b, M, beta, tol=0, max_iter=n_outer, inner_iter=n_inner)
    assert res.n_iter == n_outer and res.converged
    np.testing.assert_allclose(res.plan, expected, atol=1e-7)
    np.testing.assert_allclose(res.cost, (expected * M).sum(), rtol=1e-6)


def test_ipot_two_by_two_by_hand() -> None:
    # row 0 sends 0.25 to column 0 (cost 0) and 0.25 to column 1 (cost 1); row 1 sends 0.5 to column 1
    M = np.array([[0.0, 1.0], [2.0, 0.0]])
    res = ipot([0.5, 0.5], [0.25, 0.75], M, tol=1e-6)
    np.testing.assert_allclose(res.cost, 0.25, rtol=1e-6)
    np.testing.assert_allclose(res.plan, [[0.25, 0.25], [0.0, 0.5]], atol=1e-6)


def test_ipot_torch_equals_numpy() -> None:
    X, Y = clustered(80, 60, 16, 4)
    M = cost_matrix(X, Y)
    a, b = weights(80, 3), weights(60, 4)
    res_np = ipot(a, b, M)
    res_t = ipot(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(M))
    assert isinstance(res_t.plan, torch.Tensor) and res_t.plan.dtype == torch.float64
    assert res_t.plan.device == torch.device("cpu")
    assert res_t.n_iter == res_np.n_iter
    np.testing.assert_allclose(res_t.cost, res_np.cost, rtol=1e-6)
    np.testing.assert_allclose(res_t.plan.numpy(), res_np.plan, atol=1e-8)


@pytest.mark.gpu
def test_ipot_cuda_equals_numpy() -> None:
    X, Y = clustered(300, 200, 32, 5)
    M = cost_matrix(X, Y)
    res_np = ipot(None, None, M)
    res_c = ipot(None, None, torch.from_numpy(M).cuda())
    assert res_c.plan.is_cuda
    np.testing.assert_allclose(res_c.cost, res_np.cost, rtol=1e-6)
    np.testing.assert_allclose(distance_batch([X[:40], X[40:90]], Y, device="cuda"),
                               distance_batch([X[:40], X[40:90]], Y), rtol=1e-6)


def test_ipot_zero_mass_points_get_nothing() -> None:
    X, Y = clustered(30, 20, 8, 6)
    M = cost_matrix(X, Y)
    a = weights(30, 1)
    a[[3, 7]] = 0.0
    a /= a.sum()
    b = weights(20, 2)
    b[5] = 0.0
    b /= b.sum()
    res = ipot(a, b, M, tol=1e-4)
    assert res.converged and (res.plan[[3, 7]] == 0).all() and (res.plan[:, 5] == 0).all()
    np.testing.assert_allclose(res.cost, ot.emd2(a, b, M), rtol=1e-4)
    np.testing.assert_allclose(res.plan.sum(0), b, atol=1e-6)


def test_ipot_large_offset_does_not_underflow() -> None:
    # exp(-M) underflows for every entry here; the reduced costs keep G finite
    X, Y = clustered(40, 30, 8, 7)
    M = cost_matrix(X, Y) + 1000.0
    res = ipot(None, None, M, tol=1e-6)
    assert res.converged and np.isfinite(res.plan).all()
    np.testing.assert_allclose(res.cost, ot.emd2([], [], M), rtol=1e-6)


def test_ipot_identical_sets_converge_to_zero() -> None:
    X, _ = clustered(25, 1, 8, 8)
    res = ipot(None, None, cost_matrix(X, X))
    assert res.converged and res.cost < 1e-3


def test_ipot_forced_non_convergence_warns() -> None:
    M = cost_matrix(*clustered(30, 20, 8, 9))
    with pytest.warns(ConvergenceWarning, match="raise max_iter") as record:
        res = ipot(None, None, M, max_iter=1)
    assert record[0].filename == __file__  # stacklevel points at the caller
    assert not res.converged and res.n_iter == 1 and res.err > 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ipot(None, None, M, max_iter=1, warn=False)
        ipot(None, None, M, max_iter=3, tol=0)  # a fixed-count run is not a failure


@pytest.mark.parametrize("args, kwargs, match", [
    ((None, None, np.ones(3)), {}, "2-D cost matrix"),
    ((None, None, np.ones((0, 2))), {}, "2-D cost matrix"),
    (([0.5, 0.5, 0.0], None, np.ones((2, 2))), {}, r"a has shape \(3,\)"),
    ((None, [1.5, -0.5], np.ones((2, 2))), {}, "non-negative"),
    (([0.5, 0.5], [0.2, 0.2], np.ones((2, 2))), {}, "same total mass"),
    (([0.0, 0.0], None, np.ones((2, 2))), {}, "positive total mass"),
    ((None, None, np.array([[0.0, np.inf], [1.0, 0.0]])), {}, "NaN or infinity"),
    ((None, None, np.ones((2, 2)), 0.0), {}, "beta=0.0"),
    ((None, None, np.ones((2, 2))), {"max_iter": 0}, "max_iter=0"),
    ((None, None, np.ones((2, 2))), {"tol": -1.0}, "tol=-1.0"),
    ((None, None, np.ones((2, 2))), {"inner_iter": 1.5}, "inner_iter=1.5"),
])
def test_ipot_rejects_bad_input(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ipot(*args, **kwargs)


# ---------------------------------------------------------------- Sinkhorn and exact


@pytest.mark.parametrize("reg", [0.1, 0.05])
def test_sinkhorn_matches_pot(reg: float) -> None:
    X, Y = clustered(150, 120, 16, 10)
    M = cost_matrix(X, Y)
    a, b = weights(150, 5), weights(120, 6)
    res = sinkhorn(a, b, M, reg, max_iter=5000)
    assert res.converged and res.err <= 1e-9
    np.testing.assert_allclose(res.cost, ot.sinkhorn2(a, b, M, reg, numItermax=5000), rtol=1e-6)
    np.testing.assert_allclose(res.plan, ot.sinkhorn(a, b, M, reg, numItermax=5000), atol=1e-9)
    np.testing.assert_allclose(res.plan.sum(1), a, atol=1e-6)
    np.testing.assert_allclose(res.plan.sum(0), b, atol=1e-6)
    res_t = sinkhorn(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(M), reg, max_iter=5000)
    assert isinstance(res_t.plan, torch.Tensor)
    np.testing.assert_allclose(res_t.cost, res.cost, rtol=1e-9)


def test_sinkhorn_small_reg_stays_finite() -> None:
    # far below POT's plain-Sinkhorn limit (max(M)/reg > 700); the absorptions keep it finite
    X, Y = clustered(60, 50, 8, 11)
    M = cost_matrix(X, Y)
    res = sinkhorn(None, None, M, 1e-3, max_iter=3000, tol=1e-6, warn=False)
    assert np.isfinite(res.plan).all() and np.isfinite(res.cost)
    exact = ot.emd2([], [], M)
    assert abs(res.cost - exact) < abs(sinkhorn(None, None, M, 0.05).cost - exact)


def test_sinkhorn_forced_non_convergence_warns() -> None:
    M = cost_matrix(*clustered(30, 20, 8, 12))
    with pytest.warns(ConvergenceWarning, match="raise max_iter") as record:
        res = sinkhorn(None, None, M, 0.05, max_iter=1)
    assert record[0].filename == __file__
    assert not res.converged


def test_sinkhorn_two_by_two_by_hand() -> None:
    # symmetric 2x2: the entropic plan puts mass 0.5/(1+e^{-1/reg}) on the diagonal
    M = np.array([[0.0, 1.0], [1.0, 0.0]])
    res = sinkhorn([0.5, 0.5], [0.5, 0.5], M, 0.5)
    off = 0.5 * np.exp(-2.0) / (1 + np.exp(-2.0))
    np.testing.assert_allclose(res.plan, [[0.5 - off, off], [off, 0.5 - off]], rtol=1e-8)
    np.testing.assert_allclose(res.cost, 2 * off, rtol=1e-8)


def test_emd_matches_pot_and_hand_case() -> None:
    X, Y = clustered(100, 80, 16, 13)
    M = cost_matrix(X, Y)
    a, b = weights(100, 7), weights(80, 8)
    res = emd(a, b, M)
    assert res.converged and res.err == 0.0
    np.testing.assert_allclose(res.cost, ot.emd2(a, b, M), rtol=1e-12)
    np.testing.assert_allclose(res.plan.sum(1), a, atol=1e-12)
    small = emd([0.5, 0.5], [0.25, 0.75], np.array([[0.0, 1.0], [2.0, 0.0]]))
    np.testing.assert_allclose(small.plan, [[0.25, 0.25], [0.0, 0.5]])
    assert small.cost == pytest.approx(0.25)
    res_t = emd(None, None, torch.from_numpy(M))
    assert isinstance(res_t.plan, torch.Tensor)
    np.testing.assert_allclose(res_t.cost, ot.emd2([], [], M), rtol=1e-12)


def test_emd_forced_non_convergence_warns() -> None:
    M = cost_matrix(*clustered(60, 60, 8, 14))
    with pytest.warns(ConvergenceWarning, match="raise max_iter") as record:
        res = emd(None, None, M, max_iter=2)
    assert record[0].filename == __file__
    assert not res.converged


# ---------------------------------------------------------------- distance and distance_batch


def test_distance_methods_agree() -> None:
    X, Y = clustered(120, 90, 32, 15)
    exact = ot.emd2([], [], cost_matrix(X, Y))
    assert distance(X, Y, method="exact") == pytest.approx(exact, rel=1e-12)
    assert distance(X, Y) == pytest.approx(exact, rel=1e-3)
    assert distance(X, Y, method="ipot", tol=1e-5, max_iter=20_000) == pytest.approx(exact, rel=1e-5)
    assert distance(X, Y, device="cpu") == pytest.approx(distance(X, Y), rel=1e-6)
    reg = 0.05
    assert distance(X, Y, method="sinkhorn", reg=reg) == pytest.approx(
        ot.sinkhorn2([], [], cost_matrix(X, Y), reg), rel=1e-6)
    cos_exact = ot.emd2([], [], cost_matrix(X, Y, "cosine"))
    assert distance(X, Y, cost="cosine", method="exact") == pytest.approx(cos_exact, rel=1e-12)


def test_distance_validates_inputs() -> None:
    X, Y = clustered(10, 8, 4, 16)
    with pytest.raises(ValueError, match="unit-norm"):
        distance(2 * X, Y, cost="cosine")
    assert distance(2 * X, Y, method="exact") > 0  # Euclidean costs accept any norm
    with pytest.raises(ValueError, match="method='wasserstein'"):
        distance(X, Y, method="wasserstein")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="d=4 columns but Y has d=3"):
        distance(X, Y[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        distance(np.full((2, 4), np.nan), Y)
    with pytest.warns(ConvergenceWarning, match="raise max_iter") as record:
        distance(X, Y, max_iter=1)
    assert record[0].filename == __file__


def test_distance_batch_equals_loop() -> None:
    _, Y = clustered(1, 100, 64, 17)
    sizes = [1, 7, 23, 50, 50, 31]
    Xs = [clustered(n, 1, 64, 100 + i)[0] for i, n in enumerate(sizes)]
    loop = np.array([distance(X, Y) for X in Xs])
    batch = distance_batch(Xs, Y)
    assert batch.shape == (len(sizes),) and batch.dtype == np.float64
    np.testing.assert_allclose(batch, loop, rtol=1e-6)
    np.testing.assert_allclose(distance_batch(Xs, Y, device="cpu"), loop, rtol=1e-6)
    cos = np.array([distance(X, Y, cost="cosine", beta=0.5) for X in Xs])
    np.testing.assert_allclose(distance_batch(Xs, Y, cost="cosine", beta=0.5), cos, rtol=1e-6)
    b = weights(100, 9)
    np.testing.assert_allclose(distance_batch(Xs[:3], Y, b=b), [distance(X, Y, b=b) for X in Xs[:3]],
                               rtol=1e-6)
    np.testing.assert_allclose(distance_batch(Xs[:3], Y, method="exact"),
                               [distance(X, Y, method="exact") for X in Xs[:3]], rtol=1e-12)
    assert distance_batch([], Y).shape == (0,)


def test_distance_batch_chunks_like_one_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    import equal.ot._distance as mod

    _, Y = clustered(1, 40, 16, 18)
    Xs = [clustered(n, 1, 16, 200 + n)[0] for n in (5, 30, 12, 9, 30)]
    whole = distance_batch(Xs, Y)
    monkeypatch.setattr(mod, "_STACK", 2 * 30 * 40)  # at most two sets per stack
    np.testing.assert_allclose(distance_batch(Xs, Y), whole, rtol=1e-6)


def test_distance_batch_validates_and_warns() -> None:
    _, Y = clustered(1, 20, 8, 19)
    X, _ = clustered(5, 1, 8, 20)
    with pytest.raises(ValueError, match=r"Xs\[1\] has d=4"):
        distance_batch([X, X[:, :4]], Y)
    with pytest.raises(ValueError, match=r"Xs\[0\] has n=0 rows"):
        distance_batch([X[:0]], Y)
    with pytest.raises(ValueError, match="b must sum to 1"):
        distance_batch([X], Y, b=np.ones(20))
    with pytest.raises(TypeError, match="reg"):
        distance_batch([X], Y, reg=0.1)
    with pytest.warns(ConvergenceWarning, match="1 of 1 problems did not converge") as record:
        distance_batch([X], Y, max_iter=1)
    assert record[0].filename == __file__
    with pytest.warns(ConvergenceWarning, match="2 of 2 problems did not converge") as record:
        distance_batch([X, X], Y, method="sinkhorn", max_iter=1)
    assert len(record) == 1 and record[0].filename == __file__
