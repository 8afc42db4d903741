"""kMQ and iterative kMQ (Yu et al., "Diversify and Conquer", arXiv 2409.11378) and the kM baselines.

kMQ clusters the pool with k-means, gives every cluster a budget (proportional to its size, or equal),
and samples each cluster's budget *without replacement* with probability ∝ softmax(quality) (the official
code) or ∝ quality. kM-random samples uniformly inside clusters; kM-closest takes the rows nearest to
each centroid. Iterative kMQ picks b/N rows per round with learned cluster weights; the weight update is
:func:`kmq_reweight`, the round is :func:`kmq_iterative_round` (the fine-tune / generate / score loop
between rounds, which trains and touches files, is :func:`equal.pipeline.kmq_iterative.iterative_kmq`).
"""

from __future__ import annotations

import numbers

import numpy as np

from equal._validation import SeedLike, as_generator, check_embeddings
from equal.select._common import check_k, check_positive_int, check_quality, seed_param
from equal.select._types import Selection

__all__ = [
    "allocate_budget",
    "km_closest",
    "km_random",
    "kmq",
    "kmq_iterative_round",
    "kmq_labels",
    "kmq_reweight",
]


def _fit_labels(X: np.ndarray, n_clusters: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means labels (n,) int64 and centroids (K, d) float32."""
    from equal.cluster import KMeans

    km = KMeans(n_clusters, seed=rng, spherical=True).fit(X)
    return km.labels_, km.cluster_centers_


def kmq_labels(X: np.ndarray, n_clusters: int, *, seed: SeedLike = 42) -> np.ndarray:
    """The cluster labels :func:`kmq` and :func:`kmq_iterative_round` fit on ``X`` for ``seed``.

    Both spawn two children of ``seed`` (k-means, draws) and fit the spherical k-means with the first, so
    passing these labels to :func:`kmq_iterative_round` with the same ``seed`` reproduces its draws on the
    embeddings exactly; the iterative loop keeps them to reweight clusters between rounds.

    Parameters
    ----------
    X : array-like of shape (n, d)
        L2-normalised embeddings.
    n_clusters : int
    seed : int, Generator or None, default=42

    Returns
    -------
    ndarray of shape (n,), int64
    """
    X = check_embeddings(X, name="X")
    K = check_positive_int(n_clusters, "n_clusters")
    km_rng, _ = as_generator(seed).spawn(2)
    labels, _ = _fit_labels(X, K, km_rng)
    return np.asarray(labels, dtype=np.int64)


def allocate_budget(k: int, capacity: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Split ``k`` picks over groups in proportion to ``weights``, never above ``capacity``.

    Largest-remainder rounding of ``k · w_j / Σ w``; a group that hits its capacity passes its excess
    on to the others, again in proportion to their weights (water-filling), so the budgets sum to ``k``
    whenever ``capacity.sum() >= k``. Remainder ties go to the lower group index.

    Parameters
    ----------
    k : int
        Total number of picks.
    capacity : ndarray of shape (G,), int64
        Rows available per group.
    weights : ndarray of shape (G,), float64, >= 0
        Relative shares; groups with weight 0 get nothing unless the others are full.

    Returns
    -------
    ndarray of shape (G,), int64
        Budget per group, ``0 <= budget <= capacity``, sum ``min(k, capacity.sum())``.
    """
    cap = np.asarray(capacity, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float64)
    budget = np.zeros(cap.shape, dtype=np.int64)
    remaining = int(min(k, cap.sum()))
    while remaining > 0:
        room = cap - budget
        active = room > 0
        ww = np.where(active, w, 0.0)
        if ww.sum() <= 0:
            ww = active.astype(np.float64)  # only zero-weight groups have room left: share equally
        share = remaining * ww / ww.sum()
        take = np.minimum(np.floor(share).astype(np.int64), room)
        left = remaining - int(take.sum())
        if left > 0:
            frac = np.where(active & (take < room), share - np.floor(share), -np.inf)
            # largest remainder first, lower index on ties
            order = np.lexsort((np.arange(frac.size), -frac))
            for g in order[:left]:
                if frac[g] == -np.inf:
                    break
                take[g] += 1
        budget += take
        if int(take.sum()) == 0:  # pragma: no cover - defensive, cannot happen while room > 0
            break
        remaining -= int(take.sum())
    return budget


def _cluster_budgets(labels: np.ndarray, n_clusters: int, k: int, budget: str) -> np.ndarray:
    sizes = np.bincount(labels, minlength=n_clusters).astype(np.int64)
    if budget == "proportional":
        return allocate_budget(k, sizes, sizes.astype(np.float64))
    if budget == "equal":
        return allocate_budget(k, sizes, (sizes > 0).astype(np.float64))
    raise ValueError(f"budget={budget!r} must be 'proportional' or 'equal'.")


def _softmax(x: np.ndarray, temperature: float) -> np.ndarray:
    z = x / temperature
    z = np.exp(z - z.max())
    return z / z.sum()


def _sample_in_group(
    members: np.ndarray,
    b: int,
    quality: np.ndarray | None,
    sampling: str,
    temperature: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw ``b`` distinct members, ∝ softmax(quality / T), ∝ quality, or uniformly without quality."""
    if b == 0:
        return members[:0]
    if b >= members.size:
        return rng.permutation(members)
    if quality is None:
        return rng.choice(members, size=b, replace=False)
    q = quality[members]
    if sampling == "softmax":
        p = _softmax(q, temperature)
    else:
        p = q / q.sum() if q.sum() > 0 else np.full(q.size, 1.0 / q.size)
    positive = np.count_nonzero(p > 0)
    if positive >= b:
        return rng.choice(members, size=b, replace=False, p=p)
    # Fewer rows with positive probability than the budget: take them all, fill uniformly from the rest.
    pos = members[p > 0]
    rest = rng.choice(members[p <= 0], size=b - pos.size, replace=False)
    return np.concatenate([rng.permutation(pos), rest])


def _check_sampling(sampling: str, temperature: float, quality: np.ndarray | None) -> None:
    if sampling not in ("softmax", "proportional"):
        raise ValueError(f"sampling={sampling!r} must be 'softmax' or 'proportional'.")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
        raise ValueError(f"temperature={temperature!r} must be a real number > 0.")
    if sampling == "proportional" and quality is not None and (quality < 0).any():
        raise ValueError("sampling='proportional' needs quality >= 0 (probabilities ∝ quality).")


def kmq(
    X: np.ndarray,
    k: int,
    *,
    n_clusters: int,
    quality: np.ndarray | None = None,
    budget: str = "proportional",
    sampling: str = "softmax",
    temperature: float = 1.0,
    seed: SeedLike = 42,
) -> Selection:
    """kMQ: k-means, then quality-weighted sampling without replacement inside every cluster.

    Parameters
    ----------
    X : array-like of shape (n, d)
        L2-normalised embeddings.
    k : int
        Number of rows to select.
    n_clusters : int
        Clusters of the (spherical, seeded) k-means, :class:`equal.cluster.KMeans`.
    quality : array-like of shape (n,) or None, default=None
        Quality scores (e.g. Deita scores); None samples uniformly (kM-random).
    budget : {"proportional", "equal"}, default="proportional"
        Per-cluster budget: ∝ cluster size (paper) or equal, capped at the cluster size with the excess
        passed on (the official code's ``min(k/K, |D_j|)``, made to sum to k). See :func:`allocate_budget`.
    sampling : {"softmax", "proportional"}, default="softmax"
        p(x) ∝ exp(quality / temperature) (official code) or ∝ quality (needs quality >= 0).
    temperature : float, default=1.0
        Softmax temperature.
    seed : int, Generator or None, default=42
        Seeds the k-means and the sampling.

    Returns
    -------
    Selection
        ``indices`` grouped by cluster (label order), in draw order inside a cluster; ``scores`` the
        quality of each pick (None without quality); ``params["labels"]`` is not stored (large), but
        ``params["budgets"]`` lists the per-cluster budgets.

    Notes
    -----
    The paper samples with replacement from Multinomial(D_j, p); the official code (``kmeansrandom.py``)
    samples without replacement with softmax probabilities, which is what is implemented.
    """
    X = check_embeddings(X, name="X")
    n = X.shape[0]
    k = check_k(k, n)
    K = check_positive_int(n_clusters, "n_clusters")
    q = check_quality(quality, n)
    _check_sampling(sampling, temperature, q)
    if budget not in ("proportional", "equal"):
        raise ValueError(f"budget={budget!r} must be 'proportional' or 'equal'.")
    rng = as_generator(seed)
    km_rng, draw_rng = rng.spawn(2)
    labels, _ = _fit_labels(X, K, km_rng)
    budgets = _cluster_budgets(labels, K, k, budget)
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(K + 1))
    picks = [
        _sample_in_group(order[starts[j] : starts[j + 1]], int(budgets[j]), q, sampling, temperature, draw_rng)
        for j in range(K)
    ]
    indices = np.concatenate(picks).astype(np.int64)
    params = {
        "k": k,
        "n_clusters": K,
        "budget": budget,
        "sampling": sampling,
        "temperature": temperature,
        "quality": q is not None,
        "seed": seed_param(seed),
        "budgets": budgets.tolist(),
    }
    return Selection(indices, None if q is None else q[indices], "kmq", params)


def km_random(
    X: np.ndarray, k: int, *, n_clusters: int, budget: str = "proportional", seed: SeedLike = 42
) -> Selection:
    """kM-random: k-means, then uniform sampling without replacement inside every cluster.

    Same as :func:`kmq` without quality; parameters as there.
    """
    sel = kmq(X, k, n_clusters=n_clusters, quality=None, budget=budget, seed=seed)
    params = {key: v for key, v in sel.params.items() if key not in ("sampling", "temperature", "quality")}
    return Selection(sel.indices, None, "km-random", params)


def km_closest(
    X: np.ndarray, k: int, *, n_clusters: int, budget: str = "proportional", seed: SeedLike = 42
) -> Selection:
    """kM-closest: k-means, then the rows nearest to each centroid (highest cosine) fill its budget.

    Parameters
    ----------
    X : array-like of shape (n, d)
        L2-normalised embeddings.
    k : int
        Number of rows.
    n_clusters : int
        Clusters of the spherical k-means.
    budget : {"proportional", "equal"}, default="proportional"
        Per-cluster budget, see :func:`kmq`.
    seed : int, Generator or None, default=42
        Seeds the k-means.

    Returns
    -------
    Selection
        Per cluster (label order) the rows by decreasing cosine to the centroid (ties: lower index);
        ``scores`` that cosine.
    """
    X = check_embeddings(X, name="X")
    n = X.shape[0]
    k = check_k(k, n)
    K = check_positive_int(n_clusters, "n_clusters")
    if budget not in ("proportional", "equal"):
        raise ValueError(f"budget={budget!r} must be 'proportional' or 'equal'.")
    rng = as_generator(seed)
    km_rng, _ = rng.spawn(2)
    labels, centers = _fit_labels(X, K, km_rng)
    budgets = _cluster_budgets(labels, K, k, budget)
    cos = np.einsum("ij,ij->i", X.astype(np.float64), centers[labels].astype(np.float64))
    # by cluster, then decreasing cosine, then index
    order = np.lexsort((np.arange(n), -cos, labels))
    starts = np.searchsorted(labels[order], np.arange(K + 1))
    indices = np.concatenate([order[starts[j] : starts[j] + budgets[j]] for j in range(K)]).astype(np.int64)
    params = {
        "k": k,
        "n_clusters": K,
        "budget": budget,
        "seed": seed_param(seed),
        "budgets": budgets.tolist(),
    }
    return Selection(indices, cos[indices], "km-closest", params)


def kmq_reweight(
    weights: np.ndarray,
    labels: np.ndarray,
    sample_indices: np.ndarray,
    scores: np.ndarray,
    *,
    rule: str = "paper",
    temperature: float = 1.0,
) -> np.ndarray:
    r"""Iterative kMQ's cluster reweighting from per-sample scores (Eqs. 5–6 of the paper).

    With :math:`s_j` the mean score of the scored samples of cluster j (score = reward(gold) −
    reward(generated), or the negative log perplexity ratio; higher means the model still has more to
    learn there):

    - ``rule="paper"``: :math:`w_j \leftarrow w_j \, s_j / \sum_c s_c`, renormalised to sum 1. Negative
      cluster means are clipped to 0 (the model already beats the gold answers there, so the cluster
      gets no further weight); if every mean is <= 0 the weights are returned unchanged (renormalised).
    - ``rule="softmax"`` (official code): :math:`w_j = \mathrm{softmax}_j(s_j / T)`, independent of the
      previous weights.

    A cluster without any scored sample takes the mean of the scored clusters' :math:`s_j` (its weight
    relative to an average cluster is left as it was); the official code has no rule for this case.

    Parameters
    ----------
    weights : array-like of shape (K,)
        Current cluster weights, >= 0.
    labels : array-like of shape (n,), int
        Cluster of every pool row, in ``[0, K)``.
    sample_indices : array-like of shape (m,), int
        Pool rows that were scored.
    scores : array-like of shape (m,)
        Their scores.
    rule : {"paper", "softmax"}, default="paper"
    temperature : float, default=1.0
        Softmax temperature (``rule="softmax"``).

    Returns
    -------
    ndarray of shape (K,), float64
        New weights, non-negative, summing to 1.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be a non-empty 1-D array of finite values >= 0 with a positive sum.")
    K = w.size
    lab = np.asarray(labels)
    if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer) or lab.size == 0:
        raise ValueError("labels must be a non-empty 1-D integer array.")
    if lab.min() < 0 or lab.max() >= K:
        raise ValueError(f"labels must lie in [0, {K}) for {K} cluster weights; got [{lab.min()}, {lab.max()}].")
    idx = np.asarray(sample_indices, dtype=np.int64)
    sc = np.asarray(scores, dtype=np.float64)
    if idx.ndim != 1 or sc.shape != idx.shape:
        raise ValueError(f"sample_indices {idx.shape} and scores {sc.shape} must be 1-D of the same length.")
    if idx.size and (idx.min() < 0 or idx.max() >= lab.size):
        raise ValueError(f"sample_indices must lie in [0, {lab.size}).")
    if not np.isfinite(sc).all():
        raise ValueError("scores contains NaN or infinity.")
    if rule not in ("paper", "softmax"):
        raise ValueError(f"rule={rule!r} must be 'paper' or 'softmax'.")
    if idx.size == 0:
        return w / w.sum()
    cl = lab[idx]
    count = np.bincount(cl, minlength=K)
    total = np.bincount(cl, weights=sc, minlength=K)
    seen = count > 0
    mean = np.where(seen, total / np.maximum(count, 1), 0.0)
    mean[~seen] = mean[seen].mean()
    if rule == "softmax":
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
            raise ValueError(f"temperature={temperature!r} must be a real number > 0.")
        return _softmax(mean, float(temperature))
    s = np.clip(mean, 0.0, None)
    new = w * s / s.sum() if s.sum() > 0 else w.copy()
    if new.sum() <= 0:
        new = w.copy()
    return new / new.sum()


def kmq_iterative_round(
    X_or_labels: np.ndarray,
    k: int,
    weights: np.ndarray | None = None,
    already_selected: np.ndarray | None = None,
    *,
    n_clusters: int | None = None,
    quality: np.ndarray | None = None,
    sampling: str = "softmax",
    temperature: float = 1.0,
    seed: SeedLike = 42,
) -> Selection:
    """One round of iterative kMQ: ``k`` new rows, spread over clusters by ``weights``.

    Cluster j receives about ``k · w_j`` rows from its not-yet-selected members (largest-remainder
    rounding, excess of a full cluster passed on in proportion to the weights; see
    :func:`allocate_budget`), drawn as in :func:`kmq` (∝ softmax(quality) without replacement, or
    uniformly without quality).

    Parameters
    ----------
    X_or_labels : array-like of shape (n, d) or (n,)
        L2-normalised embeddings (clustered here with ``n_clusters`` and ``seed``; the same seed gives the
        same clusters every round) or precomputed integer cluster labels.
    k : int
        Rows to add this round (b / N in the paper).
    weights : array-like of shape (K,) or None, default=None
        Cluster weights (None: uniform, the first round). Update them with :func:`kmq_reweight`.
    already_selected : array-like of int or None, default=None
        Rows chosen in earlier rounds; never picked again.
    n_clusters : int or None
        Required with embeddings; with labels, K defaults to ``labels.max() + 1`` or ``len(weights)``.
    quality, sampling, temperature
        As in :func:`kmq`.
    seed : int, Generator or None, default=42
        Seeds the k-means (embeddings input) and the draws; pass a different seed per round.

    Returns
    -------
    Selection
        The new rows only, grouped by cluster; ``scores`` their quality (None without quality).

    Notes
    -----
    The paper's Algorithm 1 allots b/N rows per round by the weights; the official code draws cluster
    labels from Multinomial(w) with replacement and divides the round size by K as well (a bug). Here the
    allotment is the deterministic rounding of k · w.
    """
    arr = np.asarray(X_or_labels)
    rng = as_generator(seed)
    km_rng, draw_rng = rng.spawn(2)
    if arr.ndim == 2:
        if n_clusters is None:
            raise ValueError("n_clusters is required when X_or_labels holds embeddings.")
        X = check_embeddings(arr, name="X")
        K = check_positive_int(n_clusters, "n_clusters")
        labels, _ = _fit_labels(X, K, km_rng)
    elif arr.ndim == 1 and np.issubdtype(arr.dtype, np.integer):
        labels = arr.astype(np.int64)
        if labels.size and labels.min() < 0:
            raise ValueError("labels must be >= 0.")
        K = int(labels.max()) + 1 if labels.size else 0
        if n_clusters is not None:
            K = max(K, check_positive_int(n_clusters, "n_clusters"))
        if weights is not None:
            K = max(K, np.asarray(weights).size)
    else:
        raise ValueError(f"X_or_labels must be embeddings (n, d) or integer labels (n,); got shape {arr.shape}.")
    n = labels.size
    w = np.full(K, 1.0 / K) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (K,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must have shape ({K},), be finite, >= 0 and not all 0.")
    q = check_quality(quality, n)
    _check_sampling(sampling, temperature, q)
    taken = np.zeros(n, dtype=bool)
    if already_selected is not None:
        prev = np.asarray(already_selected, dtype=np.int64)
        if prev.size and (prev.min() < 0 or prev.max() >= n):
            raise ValueError(f"already_selected must lie in [0, {n}).")
        taken[prev] = True
    free = np.flatnonzero(~taken)
    k = check_positive_int(k, "k")
    if k > free.size:
        raise ValueError(f"k={k} must be <= the {free.size} rows not selected yet.")
    free_labels = labels[free]
    capacity = np.bincount(free_labels, minlength=K).astype(np.int64)
    budgets = allocate_budget(k, capacity, w)
    order = free[np.argsort(free_labels, kind="stable")]
    starts = np.searchsorted(labels[order], np.arange(K + 1))
    picks = [
        _sample_in_group(order[starts[j] : starts[j + 1]], int(budgets[j]), q, sampling, temperature, draw_rng)
        for j in range(K)
    ]
    indices = np.concatenate(picks).astype(np.int64)
    params = {
        "k": k,
        "n_clusters": K,
        "sampling": sampling,
        "temperature": temperature,
        "quality": q is not None,
        "seed": seed_param(seed),
        "budgets": budgets.tolist(),
        "weights": w.tolist(),
    }
    return Selection(indices, None if q is None else q[indices], "kmq-iterative", params)
