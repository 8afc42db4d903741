"""equal.diversity against independent float64 implementations of the formulas."""

from __future__ import annotations

import numpy as np
import pytest

from equal.diversity import (
    cluster_inertia,
    diversity_report,
    local_density,
    log_determinant,
    mean_cosine_distance,
    novelsum,
    novelsum_rows,
    partition_entropy,
    radius,
    vendi_score,
)

# ---------------------------------------------------------------------------------------------- references


def ref_density(X: np.ndarray, R: np.ndarray, K: int, beta: float) -> np.ndarray:
    """σ^β as the reference code defines it, brute force in float64."""
    X = X.astype(np.float64)
    R = np.unique(R.astype(np.float64), axis=0)
    sq = ((X[:, None, :] - R[None, :, :]) ** 2).sum(-1)
    sq.sort(axis=1)
    return 1.0 / (sq[:, 1 : K + 1].mean(axis=1) + 1e-9) ** beta


def ref_cos_dist(X: np.ndarray) -> np.ndarray:
    X = X.astype(np.float64)
    E = X / np.linalg.norm(X, axis=1, keepdims=True)
    return 1.0 - E @ E.T


def ref_novelsum_code(X: np.ndarray, R: np.ndarray, K: int, beta: float, alpha: float) -> float:
    D = ref_cos_dist(X)
    s = ref_density(X, R, K, beta)
    n = len(X)
    w = 1.0 / np.arange(1, n + 1) ** alpha
    rows = [np.average(np.sort(D[i] * s[i]), weights=w) for i in range(n)]
    return float(np.mean(rows))


def ref_novelsum_paper(X: np.ndarray, R: np.ndarray, K: int, beta: float, alpha: float) -> float:
    D = ref_cos_dist(X)
    s = ref_density(X, R, K, beta)
    n = len(X)
    total = 0.0
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: (D[i, j], j))
        total += sum((1.0 / rank) ** alpha * s[j] * D[i, j] for rank, j in enumerate(others, start=1))
    return total


def raw_data(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Unnormalised rows of varied length, like raw LLM embeddings."""
    return (rng.standard_normal((n, d)) * rng.uniform(0.3, 4.0, size=(n, 1)) + 0.5).astype(np.float32)


# ---------------------------------------------------------------------------------------------- density


@pytest.mark.parametrize("with_reference", [False, True])
@pytest.mark.parametrize(("K", "beta"), [(1, 1.0), (5, 0.5), (10, 0.25)])
def test_local_density_matches_brute_force(rng, with_reference, K, beta):
    X = raw_data(rng, 120, 12)
    R = raw_data(rng, 200, 12) if with_reference else X
    got = local_density(X, R if with_reference else None, n_neighbors=K, power=beta)
    assert got.dtype == np.float32 and got.shape == (120,)
    np.testing.assert_allclose(got, ref_density(X, R, K, beta), rtol=1e-6)


def test_local_density_deduplicates_reference(rng):
    X = raw_data(rng, 60, 6)
    X = np.concatenate([X, X[:15], X[:5]])  # repeated rows
    np.testing.assert_allclose(local_density(X, n_neighbors=4, power=0.5), ref_density(X, X, 4, 0.5), rtol=1e-6)


def test_local_density_agrees_with_faiss(rng):
    faiss = pytest.importorskip("faiss")
    X = raw_data(rng, 300, 16)
    index = faiss.IndexFlatL2(16)
    index.add(X)
    D, _ = index.search(X, 11)
    expected = 1.0 / (D[:, 1:].mean(axis=1) + 1e-9) ** 0.5
    np.testing.assert_allclose(local_density(X, n_neighbors=10, power=0.5), expected, rtol=1e-4)


def test_local_density_exact_for_close_neighbours_of_long_vectors():
    # Long vectors with tiny gaps: the float32 expansion ‖q‖² + ‖r‖² − 2 q·r loses every digit here.
    base = np.full((1, 8), 300.0)
    steps = np.arange(12)[:, None] * np.eye(8)[0] * 0.01
    X = (base + steps).astype(np.float32)
    got = local_density(X, n_neighbors=3, power=1.0)
    np.testing.assert_allclose(got, ref_density(X, X, 3, 1.0), rtol=1e-5)


def test_local_density_power_zero_is_one_and_checks(rng):
    X = raw_data(rng, 20, 4)
    np.testing.assert_array_equal(local_density(X, n_neighbors=3, power=0.0), np.ones(20, dtype=np.float32))
    with pytest.raises(ValueError, match="n_neighbors=20 needs at least"):
        local_density(X, n_neighbors=20)
    with pytest.raises(ValueError, match="n_neighbors=0"):
        local_density(X, n_neighbors=0)
    with pytest.raises(ValueError, match="power="):
        local_density(X, power=float("nan"))
    with pytest.raises(ValueError, match="columns"):
        local_density(X, raw_data(rng, 30, 5))


# ---------------------------------------------------------------------------------------------- NovelSum


PARAMS = [(10, 0.5, 1.0), (5, 0.25, 2.0), (3, 0.0, 0.0), (10, 0.5, 0.0), (7, 1.0, 0.5)]


@pytest.mark.parametrize("with_reference", [False, True])
@pytest.mark.parametrize(("K", "beta", "alpha"), PARAMS)
def test_novelsum_code_variant(rng, with_reference, K, beta, alpha):
    X = raw_data(rng, 150, 24)
    R = raw_data(rng, 220, 24) if with_reference else X
    got = novelsum(
        X,
        reference=R if with_reference else None,
        n_neighbors=K,
        density_power=beta,
        distance_power=alpha,
        device="cpu",
        block_size=32,
    )
    np.testing.assert_allclose(got, ref_novelsum_code(X, R, K, beta, alpha), rtol=1e-5)


@pytest.mark.parametrize("with_reference", [False, True])
@pytest.mark.parametrize(("K", "beta", "alpha"), PARAMS)
def test_novelsum_paper_variant(rng, with_reference, K, beta, alpha):
    X = raw_data(rng, 90, 16)
    R = raw_data(rng, 150, 16) if with_reference else X
    got = novelsum(
        X,
        reference=R if with_reference else None,
        n_neighbors=K,
        density_power=beta,
        distance_power=alpha,
        variant="paper",
        device="cpu",
        block_size=25,
    )
    np.testing.assert_allclose(got, ref_novelsum_paper(X, R, K, beta, alpha), rtol=1e-5)


def test_novelsum_with_duplicate_rows(rng):
    X = raw_data(rng, 80, 10)
    X = np.concatenate([X, X[:20]])
    for variant, ref in (("code", ref_novelsum_code), ("paper", ref_novelsum_paper)):
        got = novelsum(X, n_neighbors=5, variant=variant, device="cpu")
        np.testing.assert_allclose(got, ref(X, X, 5, 0.5, 1.0), rtol=1e-5)


def test_novelsum_on_unit_rows(rng):
    # Equal norms: the fused pass ranks the density's neighbours by cosine alone.
    X = raw_data(rng, 160, 12)
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    expected = ref_novelsum_code(X, X, 10, 0.5, 1.0)
    np.testing.assert_allclose(novelsum(X, device="cpu", block_size=50), expected, rtol=1e-5)


def test_novelsum_without_torch(rng, monkeypatch):
    import sys

    X = raw_data(rng, 120, 8)
    expected = ref_novelsum_code(X, X, 10, 0.5, 1.0)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    np.testing.assert_allclose(novelsum(X, device="cpu"), expected, rtol=1e-5)
    np.testing.assert_allclose(local_density(X), ref_density(X, X, 10, 0.5), rtol=1e-6)


def test_novelsum_rows_mean_and_sum(rng):
    X = raw_data(rng, 100, 8)
    v = novelsum_rows(X, device="cpu")
    assert v.shape == (100,) and v.dtype == np.float64
    np.testing.assert_allclose(v.mean(), novelsum(X, device="cpu"), rtol=1e-12)
    vp = novelsum_rows(X, variant="paper", device="cpu")
    np.testing.assert_allclose(vp.sum(), novelsum(X, variant="paper", device="cpu"), rtol=1e-12)


def test_novelsum_block_size_and_scale_invariance(rng):
    X = raw_data(rng, 200, 16)
    a = novelsum(X, device="cpu", block_size=7)
    b = novelsum(X, device="cpu", block_size=1000)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    # The cosine part ignores the scale, the density scales by c^(-2β): NovelSum(cX) = c^-1 NovelSum(X).
    np.testing.assert_allclose(novelsum(3.0 * X, device="cpu"), a / 3.0, rtol=1e-5)


def test_novelsum_torch_kernel_matches_numpy(rng):
    pytest.importorskip("torch")
    from equal.diversity._density import density_weights
    from equal.diversity._novelsum import _code_rows_numpy, _paper_rows_numpy, _rows_torch, rank_weights

    X = raw_data(rng, 130, 12)
    E = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    s = density_weights(X, None, 5, 0.5)
    w = rank_weights(130, 1.0)
    np.testing.assert_allclose(_rows_torch(E, s, w, "code", 40, "cpu"), _code_rows_numpy(E, w, 40, 1)[0], rtol=1e-6)
    np.testing.assert_allclose(_rows_torch(E, s, w, "paper", 40, "cpu"), _paper_rows_numpy(E, s, w, 40, 2), rtol=1e-6)


@pytest.mark.gpu
def test_novelsum_cuda_matches_cpu(rng):
    X = raw_data(rng, 500, 32)
    for variant in ("code", "paper"):
        np.testing.assert_allclose(
            novelsum(X, variant=variant, device="cuda"), novelsum(X, variant=variant, device="cpu"), rtol=1e-5
        )


def test_novelsum_approximate_is_exact_when_everything_is_sampled(rng):
    pytest.importorskip("faiss")
    X = raw_data(rng, 1500, 16)
    U = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    R = raw_data(rng, 800, 16)
    # All columns sampled and every IVF list probed: the quantile curve hits every rank exactly, and with
    # equal norms (or an explicit reference) the density's neighbours are exact too.
    full = {"n_exact_ranks": 64, "n_sampled_columns": 1500, "nprobe": 10_000}
    np.testing.assert_allclose(novelsum(U, approximate=True, **full), novelsum(U, device="cpu"), rtol=1e-6)
    np.testing.assert_allclose(
        novelsum(X, reference=R, approximate=True, **full), novelsum(X, reference=R, device="cpu"), rtol=1e-6
    )
    for alpha in (0.0, 2.0):
        np.testing.assert_allclose(
            novelsum(U, approximate=True, distance_power=alpha, **full),
            novelsum(U, distance_power=alpha, device="cpu"),
            rtol=1e-6,
        )
    # raw rows, a small sample and the default probes: close, not exact
    rough = novelsum(X, approximate=True, n_exact_ranks=64, n_sampled_columns=256, seed=1)
    np.testing.assert_allclose(rough, novelsum(X, device="cpu"), rtol=2e-2)


def test_novelsum_argument_errors(rng):
    X = raw_data(rng, 30, 4)
    with pytest.raises(ValueError, match="variant="):
        novelsum(X, variant="other")
    with pytest.raises(ValueError, match="device="):
        novelsum(X, device="tpu")
    with pytest.raises(ValueError, match="block_size="):
        novelsum(X, block_size=0)
    with pytest.raises(ValueError, match="at least 2"):
        novelsum(X[:1])
    with pytest.raises(ValueError, match="approximate=True is implemented"):
        novelsum(X, approximate=True, variant="paper")


# ------------------------------------------------------------------------------------------ classic metrics


def unit(X: np.ndarray) -> np.ndarray:
    X = X.astype(np.float64)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_mean_cosine_distance(rng):
    X = raw_data(rng, 70, 9)
    D = ref_cos_dist(X)
    n = len(X)
    np.testing.assert_allclose(mean_cosine_distance(X), (D.sum() - np.trace(D)) / (n * (n - 1)), rtol=1e-6)
    np.testing.assert_allclose(mean_cosine_distance(X, include_self=True), D.mean(), rtol=1e-6)


@pytest.mark.parametrize(("n", "d"), [(40, 64), (300, 10)])
def test_vendi_score_matches_kernel_eigenvalues(rng, n, d):
    X = raw_data(rng, n, d)
    E = unit(X)
    lam = np.clip(np.linalg.eigvalsh(E @ E.T / n), 0, None)
    lam = lam[lam > 1e-15]
    np.testing.assert_allclose(vendi_score(X), np.exp(-(lam * np.log(lam)).sum()), rtol=1e-6)


def test_vendi_score_bounds():
    E = np.eye(5, dtype=np.float32)
    np.testing.assert_allclose(vendi_score(E), 5.0, rtol=1e-6)  # orthogonal: 5 distinct samples
    np.testing.assert_allclose(vendi_score(np.ones((6, 3), dtype=np.float32)), 1.0, rtol=1e-6)


def test_radius_is_geometric_mean_of_stds(rng):
    X = raw_data(rng, 200, 6)
    sd = unit(X).std(axis=0)
    np.testing.assert_allclose(radius(X), np.prod(sd) ** (1 / 6), rtol=1e-6)
    Y = np.ones((10, 3), dtype=np.float32)
    assert radius(Y) == 0.0


@pytest.mark.parametrize(("n", "reg"), [(30, 1.0), (200, 0.5)])
def test_log_determinant_matches_slogdet(rng, n, reg):
    X = raw_data(rng, n, 20)
    E = unit(X)
    sign, logdet = np.linalg.slogdet(E @ E.T + reg * np.eye(n))
    assert sign > 0
    np.testing.assert_allclose(log_determinant(X, reg=reg), logdet, rtol=1e-6)
    with pytest.raises(ValueError, match="reg="):
        log_determinant(X, reg=0.0)


def blobs(
    rng: np.random.Generator, sizes: list[int], d: int = 8, spread: float = 0.02
) -> tuple[np.ndarray, np.ndarray]:
    centers = np.eye(d)[: len(sizes)] * 5.0
    labels = np.repeat(np.arange(len(sizes)), sizes)
    X = centers[labels] + spread * rng.standard_normal((labels.size, d))
    return X.astype(np.float32), labels


def test_cluster_inertia_on_separated_blobs(rng):
    pytest.importorskip("faiss")
    X, labels = blobs(rng, [100, 100])
    E = unit(X)
    expected = sum(((E[labels == c] - E[labels == c].mean(0)) ** 2).sum() for c in range(2))
    np.testing.assert_allclose(cluster_inertia(X, 2, seed=0), expected, rtol=1e-3)


def test_partition_entropy(rng):
    pytest.importorskip("faiss")
    R, _ = blobs(rng, [100, 100, 100, 100])
    np.testing.assert_allclose(partition_entropy(R, n_clusters=4, seed=3), 2.0, atol=1e-9)
    Q, _ = blobs(rng, [50, 50])  # occupies two of the four reference clusters equally
    np.testing.assert_allclose(partition_entropy(Q, R, n_clusters=4, seed=3), 1.0, atol=1e-9)
    with pytest.raises(ValueError, match="n_clusters=500"):
        partition_entropy(Q, R, n_clusters=500)


def test_diversity_report_keys(rng):
    pytest.importorskip("faiss")
    X = raw_data(rng, 120, 8)
    rep = diversity_report(X, device="cpu")
    assert list(rep) == [
        "novelsum",
        "mean_cosine_distance",
        "vendi_score",
        "radius",
        "log_determinant",
        "cluster_inertia",
        "partition_entropy",
    ]
    assert all(isinstance(v, float) and np.isfinite(v) for v in rep.values())
    np.testing.assert_allclose(rep["novelsum"], novelsum(X, device="cpu"), rtol=1e-12)
    assert list(diversity_report(X, metrics=["radius"])) == ["radius"]
    with pytest.raises(ValueError, match="not known"):
        diversity_report(X, metrics=["nope"])
