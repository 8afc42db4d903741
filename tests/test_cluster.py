"""Tests of equal.cluster: faiss k-means, cluster Gaussians, Fréchet distances, neighbour graph."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import scipy.linalg
from sklearn.metrics import adjusted_rand_score

from equal import ConvergenceWarning, l2_normalize
from equal.cluster import (
    ClusterGaussians,
    KMeans,
    NotFittedError,
    cluster_gaussians,
    frechet_distance,
    neighbor_graph,
    pairwise_frechet,
)

# ----------------------------------------------------------------------------------------------- fixtures


def _blobs(rng: np.random.Generator, k: int = 4, per: int = 200, d: int = 8, noise: float = 0.05,
           spherical: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``k`` well-separated blobs (orthogonal centres), shuffled, with their true labels."""
    centres = np.eye(d)[:k] * (1.0 if spherical else 10.0)
    truth = np.repeat(np.arange(k), per)
    X = centres[truth] + noise * rng.standard_normal((k * per, d))
    perm = rng.permutation(k * per)
    X, truth = X[perm], truth[perm]
    if spherical:
        X = l2_normalize(X)
    return X.astype(np.float32), truth


def _reference_frechet(mu1: np.ndarray, c1: np.ndarray, mu2: np.ndarray, c2: np.ndarray) -> float:
    """Independent W2² with scipy's general matrix square root: tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2})."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # singular products: checked loosely
        covmean = scipy.linalg.sqrtm(c1 @ c2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2.0 * np.trace(covmean).real)


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    A = rng.standard_normal((d, d))
    return A @ A.T / d + 0.05 * np.eye(d)


# ----------------------------------------------------------------------------------------------- KMeans


@pytest.mark.parametrize("spherical", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kmeans_recovers_separated_blobs(rng: np.random.Generator, spherical: bool, dtype: type) -> None:
    X, truth = _blobs(rng, spherical=spherical)
    km = KMeans(n_clusters=4, seed=0, spherical=spherical).fit(X.astype(dtype))
    assert adjusted_rand_score(truth, km.labels_) == pytest.approx(1.0)
    assert km.cluster_centers_.dtype == np.float32 and km.cluster_centers_.shape == (4, 8)
    assert km.labels_.dtype == np.int64 and km.labels_.shape == (800,)
    assert km.labels_.min() >= 0 and km.labels_.max() < 4  # each point in exactly one of the k clusters
    assert km.sizes_.dtype == np.int64
    np.testing.assert_array_equal(km.sizes_, np.bincount(km.labels_, minlength=4))
    assert km.sizes_.sum() == 800
    assert 1 <= km.n_iter_ <= 25 and km.n_features_in_ == 8 and km.train_size_ == 800
    if spherical:
        np.testing.assert_allclose(np.linalg.norm(km.cluster_centers_, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("spherical", [True, False])
def test_kmeans_assignment_and_inertia_match_brute_force(rng: np.random.Generator, spherical: bool) -> None:
    X = rng.standard_normal((1500, 12)).astype(np.float32)
    if spherical:
        X = l2_normalize(X)
    km = KMeans(n_clusters=7, seed=3, spherical=spherical, batch_size=256).fit(X)
    X64, C64 = X.astype(np.float64), km.cluster_centers_.astype(np.float64)
    sq = ((X64[:, None, :] - C64[None, :, :]) ** 2).sum(axis=2)
    score = X64 @ C64.T if spherical else -sq
    best = score.max(axis=1)
    chosen = score[np.arange(len(X)), km.labels_]
    # Every point sits in (one of) its best clusters; float32 search may break exact ties differently.
    np.testing.assert_allclose(chosen, best, atol=1e-5)
    np.testing.assert_allclose(km.inertia_, sq[np.arange(len(X)), km.labels_].sum(), rtol=1e-5)
    np.testing.assert_array_equal(km.predict(X), km.labels_)


def test_kmeans_fit_predict_equals_fit_labels(rng: np.random.Generator) -> None:
    X, _ = _blobs(rng)
    np.testing.assert_array_equal(KMeans(4, seed=5).fit_predict(X), KMeans(4, seed=5).fit(X).labels_)


def test_kmeans_sample_then_assign(rng: np.random.Generator, caplog: pytest.LogCaptureFixture) -> None:
    X, truth = _blobs(rng, per=500)
    with caplog.at_level(logging.INFO, logger="equal.cluster._kmeans"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 200 training points < 39 * 4 is intended here
        km = KMeans(n_clusters=4, seed=0, sample_size=200).fit(X)
    assert km.train_size_ == 200
    assert "random sample of 200 of 2000 points" in caplog.text
    assert km.labels_.shape == (2000,) and km.sizes_.sum() == 2000
    assert adjusted_rand_score(truth, km.labels_) == pytest.approx(1.0)

    km = KMeans(n_clusters=4, seed=0, max_points_per_centroid=50).fit(X)
    assert km.train_size_ == 200


def test_kmeans_seed_reproducible_and_seed_sensitive(rng: np.random.Generator) -> None:
    X = l2_normalize(rng.standard_normal((2000, 16)))
    a = KMeans(10, seed=11, sample_size=1000).fit(X)
    b = KMeans(10, seed=11, sample_size=1000).fit(X)
    c = KMeans(10, seed=12, sample_size=1000).fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert not np.array_equal(a.cluster_centers_, c.cluster_centers_)


def test_kmeans_errors_and_warnings(rng: np.random.Generator) -> None:
    X = l2_normalize(rng.standard_normal((3, 4)))
    with pytest.raises(ValueError, match=r"n_samples=3 should be >= n_clusters=5"):
        KMeans(5).fit(X)
    X = l2_normalize(rng.standard_normal((100, 4)))
    with pytest.warns(ConvergenceWarning, match=r"fewer than the 39 per cluster"):
        KMeans(5, seed=0).fit(X)
    with pytest.raises(ValueError, match="unit-norm"):
        KMeans(2).fit(X * 3)
    KMeans(2, spherical=False).fit(X * 3)  # Euclidean k-means accepts any scale
    with pytest.raises(NotFittedError, match="not fitted"):
        KMeans(2).predict(X)
    with pytest.raises(ValueError, match="n_clusters=0"):
        KMeans(0).fit(X)
    with pytest.raises(ValueError, match="sample_size=1 should be >= n_clusters=2"):
        KMeans(2, sample_size=1).fit(X)
    with pytest.raises(ValueError, match="gpu='yes'"):
        KMeans(2, gpu="yes").fit(X)
    km = KMeans(2, seed=0).fit(X)
    with pytest.raises(ValueError, match="expected 4"):
        km.predict(l2_normalize(rng.standard_normal((5, 3))))


def test_kmeans_duplicates_warn_with_empty_cluster_count(rng: np.random.Generator) -> None:
    distinct = l2_normalize(rng.standard_normal((3, 6)))
    X = np.repeat(distinct, 200, axis=0)
    with pytest.warns(ConvergenceWarning, match=r"clusters are empty after assignment; X has 3 distinct"):
        km = KMeans(6, seed=0).fit(X)
    assert (km.sizes_ == 0).sum() >= 3
    assert km.sizes_.sum() == 600


def test_kmeans_init_only_stores_params() -> None:
    km = KMeans(3, n_iter=7, seed=9, spherical=False, gpu=False)
    assert (km.n_clusters, km.n_iter, km.seed, km.spherical, km.gpu) == (3, 7, 9, False, False)
    assert not hasattr(km, "labels_")
    assert "n_clusters=3" in repr(km)


@pytest.mark.gpu
def test_kmeans_gpu_matches_cpu_partition(rng: np.random.Generator) -> None:
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        pytest.skip("faiss has no GPU support here")
    X, truth = _blobs(rng)
    km = KMeans(4, seed=0, gpu=True).fit(X)
    assert adjusted_rand_score(truth, km.labels_) == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------- Gaussians


def test_cluster_gaussians_match_numpy_per_cluster(rng: np.random.Generator) -> None:
    X = rng.standard_normal((300, 5)).astype(np.float32)
    labels = rng.integers(0, 4, size=300)
    labels[0] = 4  # cluster 4 has exactly one member
    g = cluster_gaussians(X, labels, 6, low_rank=False)  # cluster 5 is empty
    gd = cluster_gaussians(X, labels, 6, diagonal=True)
    assert g.kind == "full" and gd.kind == "diagonal"
    np.testing.assert_array_equal(g.sizes, np.bincount(labels, minlength=6))
    for c in range(5):
        members = X[labels == c].astype(np.float64)
        np.testing.assert_allclose(g.means[c], members.mean(axis=0), rtol=1e-12, atol=1e-12)
        expected = np.cov(members, rowvar=False, bias=True) if len(members) > 1 else np.zeros((5, 5))
        np.testing.assert_allclose(g.covs[c], expected, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(gd.covs[c], np.diag(expected), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(g.covs[4], 0.0)
    assert np.isnan(g.means[5]).all() and g.sizes[5] == 0
    D = pairwise_frechet(g)
    assert np.isinf(D[5, :5]).all() and np.isinf(D[:5, 5]).all() and D[5, 5] == 0.0
    assert np.isfinite(D[:5, :5]).all()


def test_cluster_gaussians_factor_representation(rng: np.random.Generator) -> None:
    d = 10
    X = rng.standard_normal((60, d))
    labels = np.repeat([0, 1, 2], [4, 16, 40])  # 4 and 16 members: fewer and more than d
    g = cluster_gaussians(X, labels, 3)
    assert g.kind == "factor"  # automatic: some cluster has fewer members than dimensions
    assert [f.shape for f in g.factors] == [(4, d), (d, d), (d, d)]
    full = cluster_gaussians(X, labels, 3, low_rank=False)
    for c in range(3):
        np.testing.assert_allclose(g.covariance(c), full.covs[c], atol=1e-12)
    np.testing.assert_allclose(g.variances(), np.einsum("kii->ki", full.covs), atol=1e-12)
    np.testing.assert_allclose(g.traces(), np.trace(full.covs, axis1=1, axis2=2), atol=1e-12)
    assert cluster_gaussians(X, np.repeat([0, 1], 30), 2).kind == "full"  # every cluster larger than d
    with pytest.raises(ValueError, match="low_rank=True cannot be combined"):
        cluster_gaussians(X, labels, 3, diagonal=True, low_rank=True)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, n_clusters=2\)"):
        cluster_gaussians(X, labels, 2)
    with pytest.raises(ValueError, match="exactly one of covs and factors"):
        ClusterGaussians(means=np.zeros((1, 2)), sizes=np.ones(1, dtype=np.int64))


# ----------------------------------------------------------------------------------------------- Fréchet


@pytest.mark.parametrize("d", [1, 2, 5, 8])
def test_frechet_distance_matches_scipy_sqrtm(rng: np.random.Generator, d: int) -> None:
    for _ in range(3):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        c1, c2 = _random_spd(rng, d), _random_spd(rng, d)
        got = frechet_distance(mu1, c1, mu2, c2)
        np.testing.assert_allclose(got, _reference_frechet(mu1, c1, mu2, c2), rtol=1e-6)
        np.testing.assert_allclose(frechet_distance(mu2, c2, mu1, c1), got, rtol=1e-10)  # symmetric
        assert frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-10)


def test_frechet_distance_hand_values_and_diagonal_variant(rng: np.random.Generator) -> None:
    # N(0, I) vs N(1, 4I) in 2-D: ‖μ‖² = 2, tr(I + 4I − 2·2I) = 2.
    assert frechet_distance(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2)) == pytest.approx(4.0)
    # 1-D: (m1 − m2)² + (s1 − s2)².
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    s1, s2 = rng.uniform(0.1, 2.0, 6), rng.uniform(0.1, 2.0, 6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    np.testing.assert_allclose(
        frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)), rtol=1e-12
    )
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    np.testing.assert_allclose(frechet_distance(mu1, s1, mu2, s2), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="both have shape"):
        frechet_distance(mu1, s1, mu2, np.diag(s2))


def test_frechet_is_not_elementwise_sqrt() -> None:
    # EQUAL's code uses element-wise sqrt/products; with correlated covariances the two differ.
    c1 = np.array([[1.0, 0.9], [0.9, 1.0]])
    c2 = np.array([[1.0, -0.9], [-0.9, 1.0]])
    elementwise = np.trace(c1 + c2 - 2 * np.sqrt(np.sqrt(np.abs(c1)) * c2 * np.sqrt(np.abs(c1)) + 0j)).real
    got = frechet_distance(np.zeros(2), c1, np.zeros(2), c2)
    np.testing.assert_allclose(got, _reference_frechet(np.zeros(2), c1, np.zeros(2), c2), rtol=1e-6)
    assert abs(got - elementwise) > 0.5


# ----------------------------------------------------------------------------------------------- pairwise


def _loop(g: ClusterGaussians) -> np.ndarray:
    k = g.n_clusters
    return np.array(
        [[frechet_distance(g.means[i], g.covariance(i), g.means[j], g.covariance(j)) for j in range(k)]
         for i in range(k)]
    )


def test_pairwise_frechet_full_equals_loop_and_sqrtm(rng: np.random.Generator) -> None:
    d = 6
    X = rng.standard_normal((400, d)) * rng.uniform(0.5, 2.0, d)
    labels = rng.integers(0, 5, size=400)  # ~80 members per cluster: full-rank covariances
    g = cluster_gaussians(X, labels, 5)
    assert g.kind == "full"
    D = pairwise_frechet(g)
    np.testing.assert_allclose(D, _loop(g), rtol=1e-9, atol=1e-12)
    ref = np.array([[_reference_frechet(g.means[i], g.covs[i], g.means[j], g.covs[j]) for j in range(5)]
                    for i in range(5)])
    np.testing.assert_allclose(D, ref, rtol=1e-6, atol=1e-10)
    np.testing.assert_array_equal(D, D.T)
    np.testing.assert_array_equal(np.diag(D), 0.0)
    assert (D >= 0).all()


def test_pairwise_frechet_factor_path_equals_sqrtm_path(rng: np.random.Generator) -> None:
    d = 12
    sizes = [3, 5, 8, 11, 12, 20, 30, 1]  # mostly fewer members than dimensions: low-rank covariances
    labels = np.repeat(np.arange(len(sizes)), sizes)
    X = l2_normalize(rng.standard_normal((labels.size, d)) + 2.0 * rng.standard_normal(d))
    factor = cluster_gaussians(X, labels, len(sizes))
    full = cluster_gaussians(X, labels, len(sizes), low_rank=False)
    assert factor.kind == "factor" and full.kind == "full"
    D_factor = pairwise_frechet(factor, n_jobs=1)
    np.testing.assert_allclose(pairwise_frechet(factor, n_jobs=2), D_factor, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(pairwise_frechet(full), D_factor, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(_loop(full), D_factor, rtol=1e-9, atol=1e-12)
    # Independent check with scipy's sqrtm; singular covariances make sqrtm itself less accurate.
    k = len(sizes)
    ref = np.array([[_reference_frechet(full.means[i], full.covs[i], full.means[j], full.covs[j])
                     for j in range(k)] for i in range(k)])
    np.fill_diagonal(ref, 0.0)
    np.testing.assert_allclose(D_factor, ref, rtol=1e-6, atol=1e-7)


def test_pairwise_frechet_diagonal(rng: np.random.Generator) -> None:
    X = rng.standard_normal((300, 7))
    labels = rng.integers(0, 6, size=300)
    gd = cluster_gaussians(X, labels, 6, diagonal=True)
    D = pairwise_frechet(gd)
    np.testing.assert_allclose(D, _loop(gd), rtol=1e-10, atol=1e-12)
    g = cluster_gaussians(X, labels, 6)
    np.testing.assert_allclose(pairwise_frechet(g, diagonal=True), D, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="diagonal=False needs full or factor"):
        pairwise_frechet(gd, diagonal=False)


# ----------------------------------------------------------------------------------------------- graph


def test_neighbor_graph_semantics() -> None:
    D = np.array(
        [
            [0.0, 0.1, 0.3, np.nan],
            [0.1, 0.0, 0.2, 0.05],
            [0.3, 0.2, 0.0, 0.19],
            [np.nan, 0.05, 0.19, 0.0],
        ]
    )
    nb = neighbor_graph(D, 0.2)
    assert [x.tolist() for x in nb] == [[0, 1], [0, 1, 3], [2, 3], [1, 2, 3]]
    assert all(x.dtype == np.int64 for x in nb)
    assert [x.tolist() for x in neighbor_graph(D, 0.0)] == [[0], [1], [2], [3]]  # i itself always kept
    with pytest.raises(ValueError, match="square"):
        neighbor_graph(np.zeros((2, 3)), 0.2)
