"""Exact, near (MinHash + LSH) and semantic (embedding) deduplication.

Every function returns a keep mask, ``True`` for the texts to keep, and keeps the *first* occurrence: a
text is dropped when it duplicates an earlier text that was kept. So no two kept texts are duplicates of
each other, and a text is only dropped because of a text that stays (a chain A ~ B ~ C with A !~ C keeps
A and C).

Near-duplicates are found with MinHash signatures over word n-gram shingles and LSH banding, written in
numpy; every candidate pair the bands propose is verified by the exact Jaccard similarity of the two
shingle sets, so there are no false positives. The band layout is chosen so that a pair *at* the
threshold becomes a candidate with probability >= 0.995 (higher above it); the exact check removes the
extra candidates this generous layout proposes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from equal._validation import SeedLike, as_generator, check_embeddings
from equal.data.decontam import _mix64, _whole_text_hashes, tokenize, word_ngram_hashes

__all__ = ["exact_dedup", "lsh_params", "near_dedup", "semantic_dedup", "shingle_sets"]

_MIN_CANDIDATE_PROB = 0.995
# Hash of the shingle set of an empty text: all empty texts are duplicates of each other.
_EMPTY_SHINGLE = np.uint64(0x5BD1E9955BD1E995)


def exact_dedup(texts: Sequence[str]) -> np.ndarray:
    """Keep the first of each group of texts equal up to case and whitespace.

    Texts are case-folded and their whitespace runs collapsed to one space (leading and trailing
    whitespace removed), then hashed (BLAKE2b, 128 bits).

    Parameters
    ----------
    texts : sequence of str
        The texts.

    Returns
    -------
    ndarray of shape (len(texts),), bool
        Keep mask.

    Examples
    --------
    >>> exact_dedup(["Hello  world", "hello world", "Hello"]).tolist()
    [True, False, True]
    """
    seen: set[bytes] = set()
    keep = np.zeros(len(texts), dtype=bool)
    for i, text in enumerate(texts):
        key = hashlib.blake2b(" ".join(text.casefold().split()).encode("utf-8"), digest_size=16).digest()
        if key not in seen:
            seen.add(key)
            keep[i] = True
    return keep


def shingle_sets(texts: Sequence[str], *, ngram: int = 5) -> list[np.ndarray]:
    """The set of hashed word ``ngram``-shingles of each text (normalised as in decontamination).

    A text with fewer than ``ngram`` words has one shingle, its whole word sequence; an empty text has
    one fixed shingle, so empty texts are duplicates of each other.

    Returns
    -------
    list of ndarray of uint64
        Sorted unique shingle hashes of each text.
    """
    if isinstance(ngram, bool) or not isinstance(ngram, int) or ngram < 1:
        raise ValueError(f"ngram={ngram!r} must be an int >= 1.")
    tokens, offsets = tokenize(texts)
    lengths = np.diff(offsets)
    hashes, owner = word_ngram_hashes(tokens, offsets, ngram)
    short = np.flatnonzero((lengths > 0) & (lengths < ngram))
    empty = np.flatnonzero(lengths == 0)
    if short.size or empty.size:
        extra = _whole_text_hashes(tokens, offsets, short)
        hashes = np.concatenate([hashes, extra, np.full(empty.size, _EMPTY_SHINGLE, dtype=np.uint64)])
        owner = np.concatenate([owner, short, empty])
    if short.size or empty.size:
        order = np.argsort(owner, kind="stable")
        hashes, owner = hashes[order], owner[order]
    bounds = np.searchsorted(owner, np.arange(len(texts) + 1))
    # Per-text np.unique on short slices is faster than one lexsort over (owner, hash).
    return [np.unique(hashes[bounds[t] : bounds[t + 1]]) for t in range(len(texts))]


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """Band layout ``(bands, rows)`` for near-duplicate search at Jaccard ``threshold``.

    The largest ``rows`` (fewest false candidates) such that a pair with similarity exactly
    ``threshold`` shares at least one band with probability ``1 - (1 - threshold**rows)**bands >=
    0.995``, with ``bands = num_perm // rows``.
    """
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold**rows) ** bands >= _MIN_CANDIDATE_PROB:
            return bands, rows
    return num_perm, 1


def _minhash(sets: list[np.ndarray], num_perm: int, rng: np.random.Generator,
             block: int = 1 << 14) -> np.ndarray:
    """MinHash signatures, shape (n, num_perm), uint32.

    Permutation k maps a 32-bit shingle x to ``((a_k * x + b_k) mod 2**64) >> 32`` with random 64-bit
    a_k (odd) and b_k: Dietzfelbinger's multiply-add-shift family, 2-independent on 32-bit keys.
    """
    n = len(sets)
    a = (rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) << np.uint64(1)
    a, b = a[:, None], b[:, None]
    sig = np.empty((n, num_perm), dtype=np.uint32)
    start = 0
    while start < n:
        # Group texts so that one (num_perm, shingles) product stays near `block` columns.
        stop, width = start, 0
        while stop < n and (stop == start or width + sets[stop].size <= block):
            width += sets[stop].size
            stop += 1
        x = np.concatenate(sets[start:stop]) & np.uint64(0xFFFFFFFF)
        sizes = np.array([s.size for s in sets[start:stop]], dtype=np.int64)
        h = a * x[None, :]  # wraps modulo 2**64, as the hash family intends
        h += b
        h >>= np.uint64(32)
        sig[start:stop] = np.minimum.reduceat(h.astype(np.uint32), np.cumsum(sizes) - sizes, axis=1).T
        start = stop
    return sig


def _band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 key per (text, band) from the band's ``rows`` signature values."""
    n = sig.shape[0]
    view = sig[:, : bands * rows].reshape(n, bands, rows).astype(np.uint64)
    key = np.zeros((n, bands), dtype=np.uint64)
    for r in range(rows):
        key *= np.uint64(0x100000001B3)
        key += view[:, :, r]
    return _mix64(key)


def _jaccard(x: np.ndarray, y: np.ndarray) -> float:
    inter = np.intersect1d(x, y, assume_unique=True).size
    return inter / (x.size + y.size - inter)


def near_dedup(
    texts: Sequence[str],
    *,
    threshold: float = 0.8,
    num_perm: int = 128,
    ngram: int = 5,
    seed: SeedLike = 0,
) -> np.ndarray:
    """Keep the first of each group of near-duplicate texts (Jaccard of word-shingle sets >= threshold).

    Texts are visited in order; each is compared (exactly, on its shingle set) with the kept texts that
    share an LSH band with it, and dropped if any has Jaccard >= ``threshold``. Kept texts are therefore
    pairwise below the threshold, up to the rare similar pair LSH fails to propose (probability <=
    0.005 at the threshold, falling fast above it).

    Parameters
    ----------
    texts : sequence of str
        The texts.
    threshold : float, default=0.8
        Jaccard similarity at or above which two texts are duplicates, in (0, 1].
    num_perm : int, default=128
        Number of MinHash permutations.
    ngram : int, default=5
        Shingle length in words (see :func:`shingle_sets`).
    seed : int, Generator or None, default=0
        Seed of the MinHash permutations (only affects which pairs LSH proposes, not the exact check).

    Returns
    -------
    ndarray of shape (len(texts),), bool
        Keep mask.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold} must be in (0, 1].")
    if isinstance(num_perm, bool) or not isinstance(num_perm, int) or num_perm < 2:
        raise ValueError(f"num_perm={num_perm!r} must be an int >= 2.")
    rng = as_generator(seed)
    n = len(texts)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    sets = shingle_sets(texts, ngram=ngram)
    bands, rows = lsh_params(threshold, num_perm)
    keys = _band_keys(_minhash(sets, num_perm, rng), bands, rows).tolist()
    tables: list[dict[int, list[int]]] = [{} for _ in range(bands)]
    for j in range(n):
        row = keys[j]
        candidates: set[int] = set()
        for band, key in enumerate(row):
            bucket = tables[band].get(key)
            if bucket:
                candidates.update(bucket)
        if any(_jaccard(sets[j], sets[i]) >= threshold for i in sorted(candidates)):
            continue
        keep[j] = True
        # Only kept texts enter the tables: a later text is compared with what stays, nothing else.
        for band, key in enumerate(row):
            tables[band].setdefault(key, []).append(j)
    return keep


def semantic_dedup(X: np.ndarray, threshold_cos: float = 0.95, *, block_size: int = 2048) -> np.ndarray:
    """Keep the first of each group of embeddings with cosine similarity >= ``threshold_cos``.

    Rows are visited in order and a row is dropped when its cosine with an earlier kept row reaches the
    threshold. Similarities are computed by blocked matrix products against the kept rows only, so
    memory is O(block_size x kept) and time O(n x kept x d).

    Parameters
    ----------
    X : ndarray of shape (n, d), float32
        L2-normalised embeddings.
    threshold_cos : float, default=0.95
        Cosine similarity at or above which two rows are duplicates, in [-1, 1].
    block_size : int, default=2048
        Rows per block.

    Returns
    -------
    ndarray of shape (n,), bool
        Keep mask.
    """
    X = check_embeddings(X, name="X", min_rows=0)
    if not -1.0 <= threshold_cos <= 1.0:
        raise ValueError(f"threshold_cos={threshold_cos} must be in [-1, 1].")
    if block_size < 1:
        raise ValueError(f"block_size={block_size} must be >= 1.")
    n = X.shape[0]
    keep = np.zeros(n, dtype=bool)
    kept_rows: list[int] = []
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        block = X[start:stop]
        if kept_rows:
            dup = (block @ X[kept_rows].T >= threshold_cos).any(axis=1)
        else:
            dup = np.zeros(stop - start, dtype=bool)
        inner = block @ block.T
        local: list[int] = []
        for r in range(stop - start):
            if dup[r] or (local and (inner[r, local] >= threshold_cos).any()):
                continue
            local.append(r)
        keep[[start + r for r in local]] = True
        kept_rows.extend(start + r for r in local)
    return keep
