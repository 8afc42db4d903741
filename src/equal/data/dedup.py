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

__all__ = ["NearDupIndex", "exact_dedup", "lsh_params", "near_dedup", "semantic_dedup", "shingle_sets"]

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


def _permutations(num_perm: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random ``(a, b)`` of the MinHash hash family, each of shape (num_perm, 1), uint64 (a odd)."""
    a = (rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) << np.uint64(1)
    return a[:, None], b[:, None]


def _minhash(sets: list[np.ndarray], a: np.ndarray, b: np.ndarray, block: int = 1 << 14) -> np.ndarray:
    """MinHash signatures, shape (n, num_perm), uint32.

    Permutation k maps a 32-bit shingle x to ``((a_k * x + b_k) mod 2**64) >> 32`` with random 64-bit
    a_k (odd) and b_k (from :func:`_permutations`): Dietzfelbinger's multiply-add-shift family,
    2-independent on 32-bit keys.
    """
    n = len(sets)
    sig = np.empty((n, a.shape[0]), dtype=np.uint32)
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


def _check_near(threshold: float, num_perm: int, ngram: int) -> None:
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold} must be in (0, 1].")
    if isinstance(num_perm, bool) or not isinstance(num_perm, int) or num_perm < 2:
        raise ValueError(f"num_perm={num_perm!r} must be an int >= 2.")
    if isinstance(ngram, bool) or not isinstance(ngram, int) or ngram < 1:
        raise ValueError(f"ngram={ngram!r} must be an int >= 1.")


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
    _check_near(threshold, num_perm, ngram)
    rng = as_generator(seed)
    n = len(texts)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    sets = shingle_sets(texts, ngram=ngram)
    bands, rows = lsh_params(threshold, num_perm)
    a, b = _permutations(num_perm, rng)
    keys = _band_keys(_minhash(sets, a, b), bands, rows).tolist()
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


class _Growable:
    """An append-only 1-D numpy buffer with amortised doubling (no copy of the whole on every append)."""

    def __init__(self, dtype: type[np.generic], initial: int = 1024) -> None:
        self._buf = np.empty(initial, dtype=dtype)
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        need = self.size + values.size
        if need > self._buf.size:
            grown = np.empty(max(need, 2 * self._buf.size), dtype=self._buf.dtype)
            grown[: self.size] = self._buf[: self.size]
            self._buf = grown
        self._buf[self.size : need] = values
        self.size = need

    @property
    def data(self) -> np.ndarray:
        return self._buf[: self.size]

    @property
    def nbytes(self) -> int:
        return int(self._buf.nbytes)


class NearDupIndex:
    """Incremental near-duplicate index: :func:`near_dedup`'s rule, paying only for the new texts.

    ``query(batch)`` marks the texts of ``batch`` that are near duplicates (Jaccard of word-shingle sets
    >= ``threshold``, verified exactly) of a text already added, or of an earlier text of the same batch
    that is not itself a duplicate; it leaves the index unchanged. ``add(texts)`` inserts texts. Querying
    each batch and adding its non-duplicates reproduces :func:`near_dedup` over the whole stream: with the
    same settings and an int seed, the duplicates of batch t are exactly
    ``~near_dedup(all texts up to batch t)[len(texts before batch t):]``, because both use the same hash
    functions and band layout (so LSH proposes the same candidates) and keep the first of each group.

    Parameters
    ----------
    threshold : float, default=0.8
        Jaccard similarity at or above which two texts are duplicates, in (0, 1].
    num_perm : int, default=128
        Number of MinHash permutations.
    ngram : int, default=5
        Shingle length in words (see :func:`shingle_sets`).
    seed : int, Generator or None, default=0
        Seed of the MinHash permutations, drawn once here (as one :func:`near_dedup` call draws them).

    Attributes
    ----------
    bands, rows : int
        LSH band layout (:func:`lsh_params`).
    nbytes : int
        Bytes held by the index's arrays.

    Notes
    -----
    What is kept per added text: its ``bands`` LSH band keys (uint64) with its id (uint32) in one sorted
    array per band, and its sorted shingle hashes (uint64, about one per word) in one flat buffer, which
    the exact Jaccard check of a proposed candidate needs. The MinHash signatures themselves and the texts
    are not kept. Band tables are a log-structured set of sorted levels (a new level per ``add``, merged
    with the previous one while it is less than twice as large), so a query costs
    O(batch x bands x levels x log n) lookups plus the exact checks of its candidates, and an insert
    amortised O(batch x bands x log n); neither rescans what was added.

    Examples
    --------
    >>> index = NearDupIndex(threshold=0.8)
    >>> base = "the quick brown fox jumps over the lazy dog near the river bank today"
    >>> index.query([base, base + ".", "something else entirely different from the rest"]).tolist()
    [False, True, False]
    >>> index.add([base])
    >>> index.query([base.upper()]).tolist(), len(index)
    ([True], 1)
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, ngram: int = 5, seed: SeedLike = 0) -> None:
        _check_near(threshold, num_perm, ngram)
        self.threshold = float(threshold)
        self.num_perm = int(num_perm)
        self.ngram = int(ngram)
        self.bands, self.rows = lsh_params(self.threshold, self.num_perm)
        self._a, self._b = _permutations(self.num_perm, as_generator(seed))
        # Sorted levels, oldest (largest) first: band keys (bands, m) sorted per band, and the ids in that order.
        self._levels: list[tuple[np.ndarray, np.ndarray]] = []
        self._shingles = _Growable(np.uint64)
        self._offsets = _Growable(np.int64)
        self._offsets.extend(np.zeros(1, dtype=np.int64))
        # The last query's shingle sets and band keys, so that adding its non-duplicates does not recompute them.
        self._memo: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return self._offsets.size - 1

    @property
    def nbytes(self) -> int:
        return self._shingles.nbytes + self._offsets.nbytes + sum(k.nbytes + i.nbytes for k, i in self._levels)

    def _hash(self, texts: Sequence[str]) -> tuple[list[np.ndarray], np.ndarray]:
        sets = shingle_sets(texts, ngram=self.ngram)
        if not sets:
            return sets, np.zeros((0, self.bands), dtype=np.uint64)
        return sets, _band_keys(_minhash(sets, self._a, self._b), self.bands, self.rows)

    def _candidates(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Added texts sharing a band key with each query row, as CSR ``(indptr, ids)`` (ids unique per row)."""
        n = keys.shape[0]
        rows_out: list[np.ndarray] = []
        ids_out: list[np.ndarray] = []
        for level_keys, level_ids in self._levels:
            for band in range(self.bands):
                lo = np.searchsorted(level_keys[band], keys[:, band], side="left")
                hi = np.searchsorted(level_keys[band], keys[:, band], side="right")
                count = hi - lo
                total = int(count.sum())
                if total == 0:
                    continue
                start = np.cumsum(count) - count
                pos = np.arange(total) - np.repeat(start, count) + np.repeat(lo, count)
                rows_out.append(np.repeat(np.arange(n), count))
                ids_out.append(level_ids[band, pos].astype(np.int64))
        if not rows_out:
            return np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
        pair = np.unique(np.concatenate(rows_out) * len(self) + np.concatenate(ids_out))
        row, ids = np.divmod(pair, len(self))
        return np.searchsorted(row, np.arange(n + 1)), ids

    def _stored(self, i: int) -> np.ndarray:
        off = self._offsets.data
        return self._shingles.data[off[i] : off[i + 1]]

    def query(self, texts: Sequence[str]) -> np.ndarray:
        """Which of ``texts`` are near duplicates of an added text or of an earlier non-duplicate in ``texts``.

        Parameters
        ----------
        texts : sequence of str
            The new texts.

        Returns
        -------
        ndarray of shape (len(texts),), bool
            True for a near duplicate (the opposite of :func:`near_dedup`'s keep mask). The index is not
            changed: add the texts to keep with :meth:`add`.
        """
        texts = list(texts)
        sets, keys = self._hash(texts)
        self._memo = {t: (sets[j], keys[j]) for j, t in enumerate(texts)}
        dup = np.zeros(len(texts), dtype=bool)
        if not texts:
            return dup
        indptr, cand = self._candidates(keys)
        # Non-duplicates of this batch go into per-call tables, as near_dedup's tables take its kept texts.
        local: list[dict[int, list[int]]] = [{} for _ in range(self.bands)]
        thr = self.threshold
        for j, row in enumerate(keys.tolist()):
            x = sets[j]
            if any(_jaccard(x, self._stored(int(i))) >= thr for i in cand[indptr[j] : indptr[j + 1]]):
                dup[j] = True
                continue
            earlier: set[int] = set()
            for band, key in enumerate(row):
                bucket = local[band].get(key)
                if bucket:
                    earlier.update(bucket)
            if any(_jaccard(x, sets[i]) >= thr for i in earlier):
                dup[j] = True
                continue
            for band, key in enumerate(row):
                local[band].setdefault(key, []).append(j)
        return dup

    def add(self, texts: Sequence[str]) -> None:
        """Insert ``texts`` (all of them, duplicates or not; usually the non-duplicates of a query).

        Parameters
        ----------
        texts : sequence of str
            Texts to insert, in order; they get the ids ``len(self), len(self) + 1, ...``.
        """
        texts = list(texts)
        if not texts:
            return
        if len(self) + len(texts) > np.iinfo(np.uint32).max:
            raise ValueError(f"NearDupIndex holds at most {np.iinfo(np.uint32).max} texts.")
        missing = [t for t in texts if t not in self._memo]
        fresh_sets, fresh_keys = self._hash(missing)
        fresh = {t: (fresh_sets[j], fresh_keys[j]) for j, t in enumerate(missing)}
        got = [self._memo.get(t) or fresh[t] for t in texts]
        sets = [g[0] for g in got]
        keys = np.stack([g[1] for g in got])
        first = len(self)
        self._shingles.extend(np.concatenate(sets))
        self._offsets.extend(self._offsets.data[-1] + np.cumsum([s.size for s in sets], dtype=np.int64))
        ids = np.arange(first, first + len(texts), dtype=np.uint32)
        level_keys = np.ascontiguousarray(keys.T)
        order = np.argsort(level_keys, axis=1, kind="stable")
        self._levels.append((np.take_along_axis(level_keys, order, axis=1), ids[order]))
        # Merge while the previous level is under twice the newest: O(log n) levels, each text re-sorted
        # O(log n) times in all. Stable sorts of two sorted runs merge them in linear time.
        while len(self._levels) > 1 and self._levels[-2][0].shape[1] < 2 * self._levels[-1][0].shape[1]:
            (k1, i1), (k2, i2) = self._levels[-2], self._levels.pop()
            k, i = np.concatenate([k1, k2], axis=1), np.concatenate([i1, i2], axis=1)
            order = np.argsort(k, axis=1, kind="stable")
            self._levels[-1] = (np.take_along_axis(k, order, axis=1), np.take_along_axis(i, order, axis=1))


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
