"""Benchmark equal.cluster: faiss k-means (ours) vs scikit-learn, and pairwise Fréchet distances.

Data: clustered synthetic unit vectors (a mixture of 200 Gaussian blobs of varied size and spread on the
sphere, normalised), the shape of sentence embeddings. Inertia is always evaluated on *all* points, so a
k-means trained on a sample is judged on the full data.

    python benchmarks/bench_kmeans.py            # 100k x 384, k = 100 / 1000, Fréchet for k = 50 / 1000
    python benchmarks/bench_kmeans.py --quick    # 20k x 384, k = 20 / 200

Prints a table and rewrites its own section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from _results import write_section
from equal import ConvergenceWarning, l2_normalize
from equal.cluster import KMeans, cluster_gaussians, pairwise_frechet

SECTION = "bench_kmeans"
RESULTS = Path(__file__).with_name("RESULTS.md")


def make_data(n: int, d: int, n_blobs: int, seed: int) -> np.ndarray:
    """``n`` unit vectors in ``d`` dimensions from ``n_blobs`` blobs of Dirichlet sizes and varied spread."""
    rng = np.random.default_rng(seed)
    centres = l2_normalize(rng.standard_normal((n_blobs, d)))
    weights = rng.dirichlet(np.full(n_blobs, 2.0))
    blob = rng.choice(n_blobs, size=n, p=weights)
    spread = rng.uniform(0.02, 0.08, size=n_blobs)
    X = centres[blob] + spread[blob, None] * rng.standard_normal((n, d)).astype(np.float32)
    return l2_normalize(X)


def inertia(X: np.ndarray, centers: np.ndarray, labels: np.ndarray, batch: int = 20000) -> float:
    """Sum of squared Euclidean distances of every point to its assigned centre (float64)."""
    total = 0.0
    for s in range(0, len(X), batch):
        diff = X[s : s + batch].astype(np.float64) - centers[labels[s : s + batch]].astype(np.float64)
        total += float(np.einsum("ij,ij->", diff, diff))
    return total


def partition_sse(X: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Within-cluster sum of squares to the cluster *means*: compares partitions whatever the centroids."""
    sizes = np.bincount(labels, minlength=k).astype(np.float64)
    sums = np.zeros((k, X.shape[1]))
    np.add.at(sums, labels, X.astype(np.float64))
    total_sq = float(np.einsum("ij,ij->", X, X, dtype=np.float64))
    return total_sq - float(np.sum(np.einsum("ij,ij->i", sums, sums)[sizes > 0] / sizes[sizes > 0]))


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run(quick: bool, threads: int) -> tuple[list[list[str]], list[list[str]], dict[str, Any]]:
    n, d = (20_000, 384) if quick else (100_000, 384)
    k_main, k_big = (20, 200) if quick else (100, 1000)
    k_fd_small, k_fd_big = (20, 200) if quick else (50, 1000)
    n_iter = 25
    X = make_data(n, d, 200, seed=0)
    meta = {"n": n, "d": d, "k_main": k_main, "k_big": k_big, "n_iter": n_iter}

    km_rows: list[list[str]] = []

    def add(name: str, k: int, seconds: float, centers: np.ndarray, labels: np.ndarray, train: int) -> None:
        km_rows.append([name, str(k), f"{train:,}", f"{seconds:.2f}", f"{inertia(X, centers, labels):,.1f}",
                        f"{partition_sse(X, labels, k):,.1f}"])

    def ours(k: int, name: str, **kw: Any) -> KMeans:
        km, t = timed(lambda: KMeans(k, n_iter=n_iter, seed=0, **kw).fit(X))
        add(name, k, t, km.cluster_centers_, km.labels_, km.train_size_)
        return km

    warnings.simplefilter("ignore", ConvergenceWarning)
    ours(k_main, "equal KMeans (faiss, spherical, default sample)")
    ours(k_main, "equal KMeans (faiss, spherical, all points)", max_points_per_centroid=n)
    ours(k_main, "equal KMeans (faiss, Euclidean, all points)", spherical=False, max_points_per_centroid=n)

    from sklearn.cluster import KMeans as SkKMeans

    sk, t = timed(
        lambda: SkKMeans(k_main, init="random", n_init=1, max_iter=n_iter, tol=0.0, algorithm="lloyd",
                         random_state=0).fit(X)
    )
    add("scikit-learn KMeans (lloyd, random init, n_init=1)", k_main, t,
        sk.cluster_centers_.astype(np.float32), sk.labels_.astype(np.int64), n)
    km_big = ours(k_big, "equal KMeans (faiss, spherical, default sample)")

    fd_rows: list[list[str]] = []
    for k in (k_fd_small, k_fd_big):
        labels = km_big.labels_ if k == k_big else KMeans(k, n_iter=n_iter, seed=0).fit(X).labels_
        sizes = np.bincount(labels, minlength=k)
        g, t_fit = timed(lambda labels=labels, k=k: cluster_gaussians(X, labels, k))
        D, t_full = timed(lambda g=g: pairwise_frechet(g, n_jobs=threads))
        gd, t_fit_d = timed(lambda labels=labels, k=k: cluster_gaussians(X, labels, k, diagonal=True))
        Dd, t_diag = timed(lambda gd=gd: pairwise_frechet(gd))
        off = ~np.eye(k, dtype=bool)
        corr = float(np.corrcoef(D[off], Dd[off])[0, 1])
        fd_rows.append([str(k), f"{int(np.median(sizes))}", g.kind, f"{t_fit:.2f}", f"{t_full:.2f}",
                        f"{t_fit_d:.2f}", f"{t_diag:.3f}", f"{np.median(D[off]):.4f}", f"{corr:.3f}"])
    return km_rows, fd_rows, meta


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


KM_HEADER = ["method", "k", "training points", "fit + assign (s)", "inertia to centroids",
             "SSE to cluster means"]
FD_HEADER = ["k", "median cluster size", "full kind", "gaussians full (s)", "pairwise full (s)",
             "gaussians diag (s)", "pairwise diag (s)", "median W2² (full)", "corr(full, diag)"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller run (20k points, k = 20 / 200)")
    parser.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for faiss, BLAS, scikit-learn and pairwise_frechet (default: all "
                             "cores); 1 gives stable numbers on a shared machine, where OpenMP spin-waiting "
                             "inflates multi-threaded timings several-fold")
    args = parser.parse_args(argv)

    import faiss
    import sklearn
    from threadpoolctl import threadpool_limits

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    threads = args.threads or cores
    faiss.omp_set_num_threads(threads)
    with threadpool_limits(limits=threads):
        km_rows, fd_rows, meta = run(args.quick, threads)
    env = (f"{platform.processor() or platform.machine()}, {cores} cores; python {sys.version.split()[0]}, "
           f"numpy {np.__version__}, faiss {faiss.__version__}, scikit-learn {sklearn.__version__}")
    text = "\n".join([
        "## k-means and cluster Fréchet distances (`benchmarks/bench_kmeans.py"
        + (" --quick" if args.quick else "") + "`)",
        "",
        f"Data: {meta['n']:,} × {meta['d']} clustered synthetic unit vectors (200 blobs); "
        f"{meta['n_iter']} Lloyd iterations everywhere; seed 0. Machine: {env}; {threads} thread(s) for "
        f"every library; load average at the end "
        f"{os.getloadavg()[0]:.1f} (timings on a shared machine are upper bounds).",
        "",
        "Inertia is measured on all points. Spherical k-means keeps unit-norm centroids, so its inertia to "
        "the centroids is larger by construction; the SSE to the cluster means compares the partitions.",
        "",
        table(KM_HEADER, km_rows),
        "",
        "Pairwise squared Fréchet (W2²) distance between the cluster Gaussians (`pairwise_frechet`), full "
        "covariances (factor path when clusters are smaller than d) vs diagonal covariances:",
        "",
        table(FD_HEADER, fd_rows),
        "",
    ])
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
        print(f"wrote section '{SECTION}' of {RESULTS}")


if __name__ == "__main__":
    main()
