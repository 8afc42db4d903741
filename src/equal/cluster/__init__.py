"""Clustering of embeddings: faiss k-means, per-cluster Gaussians, Fréchet (W2) distances, neighbour graph.

Typical use (EQUAL's step 4)::

    km = KMeans(n_clusters=1000, seed=0).fit(X)
    g = cluster_gaussians(X, km.labels_, km.n_clusters)
    D = pairwise_frechet(g)                # squared W2 between the cluster Gaussians
    neighbors = neighbor_graph(D, 0.2)     # EQUAL's threshold; each list includes the cluster itself
"""

from equal.cluster._gaussians import (
    ClusterGaussians,
    cluster_gaussians,
    frechet_distance,
    neighbor_graph,
    pairwise_frechet,
)
from equal.cluster._kmeans import MIN_POINTS_PER_CENTROID, KMeans, NotFittedError

__all__ = [
    "MIN_POINTS_PER_CENTROID",
    "ClusterGaussians",
    "KMeans",
    "NotFittedError",
    "cluster_gaussians",
    "frechet_distance",
    "neighbor_graph",
    "pairwise_frechet",
]
