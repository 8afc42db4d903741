"""Exact / near / semantic deduplication and n-gram decontamination, checked against brute force."""

from __future__ import annotations

import re
import string

import numpy as np
import pytest

from equal.data.decontam import NGramIndex, normalize_words
from equal.data.dedup import (
    NearDupIndex,
    exact_dedup,
    lsh_params,
    near_dedup,
    semantic_dedup,
    shingle_sets,
)

# ----------------------------------------------------------------------------------------------------
# Independent reference implementations (plain Python sets of word tuples, no hashing).


def _ref_words(text: str) -> list[str]:
    # Same normalisation rule, written independently: lowercase, delete punctuation and "_", split.
    text = text.lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch.isspace())
    return text.split()


def _ref_shingles(text: str, n: int) -> set[tuple[str, ...]]:
    w = _ref_words(text)
    if len(w) < n:
        return {tuple(w)}
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def _ref_jaccard(a: set[tuple[str, ...]], b: set[tuple[str, ...]]) -> float:
    return len(a & b) / len(a | b)


def _ref_greedy(sim: np.ndarray, threshold: float) -> np.ndarray:
    n = sim.shape[0]
    keep = np.zeros(n, dtype=bool)
    for j in range(n):
        keep[j] = not any(keep[i] and sim[i, j] >= threshold for i in range(j))
    return keep


def _corpus(
    rng: np.random.Generator, n_base: int = 250, n_dup: int = 80
) -> tuple[list[str], list[tuple[int, int]]]:
    vocab = [f"w{i}" for i in range(4000)]
    texts = [" ".join(rng.choice(vocab, int(rng.integers(40, 120)))) for _ in range(n_base)]
    planted = []
    for _ in range(n_dup):
        i = int(rng.integers(0, len(texts)))
        words = texts[i].split()
        for _ in range(int(rng.integers(0, 4))):  # 0-3 substitutions: Jaccard from about 0.6 to 1
            words[int(rng.integers(0, len(words)))] = str(rng.choice(vocab))
        if rng.random() < 0.5:
            words = [w.upper() if rng.random() < 0.3 else w for w in words]  # case must not matter
        texts.append(" ".join(words) + ("." if rng.random() < 0.5 else ""))
        planted.append((i, len(texts) - 1))
    return texts, planted


# ----------------------------------------------------------------------------------------------------
# exact


def test_exact_dedup_keeps_first_up_to_case_and_whitespace() -> None:
    texts = ["Hello  world", "hello world", " HELLO\tWORLD\n", "Hello world!", "", "  "]
    np.testing.assert_array_equal(exact_dedup(texts), [True, False, False, True, True, False])
    assert exact_dedup([]).shape == (0,)
    assert exact_dedup(["a"]).dtype == bool


# ----------------------------------------------------------------------------------------------------
# near


def test_shingle_sets_match_reference_sizes(rng: np.random.Generator) -> None:
    texts = ["One two three four five six.", "one TWO three", "", "a b c d e", "x " * 3,
             "The cat; the cat; the cat"]
    sets = shingle_sets(texts, ngram=5)
    for text, s in zip(texts, sets, strict=True):
        assert s.dtype == np.uint64
        assert s.size == len(_ref_shingles(text, 5))
        assert np.all(np.diff(s.astype(np.float64)) >= 0) or s.size <= 1
    # Same shingles give the same hashes across texts; a short text is its own one shingle.
    assert np.intersect1d(sets[0], shingle_sets(["one two three four five"])[0]).size == 1
    np.testing.assert_array_equal(sets[2], shingle_sets([""])[0])


def test_lsh_params_meet_candidate_probability() -> None:
    for t in (0.5, 0.7, 0.8, 0.9, 0.95):
        for num_perm in (64, 128, 256):
            b, r = lsh_params(t, num_perm)
            assert b * r <= num_perm
            assert 1 - (1 - t**r) ** b >= 0.995
            # One more row per band would miss the target: r is the largest that meets it.
            if r < num_perm:
                b2 = num_perm // (r + 1)
                assert 1 - (1 - t ** (r + 1)) ** b2 < 0.995


@pytest.fixture(scope="module")
def planted_corpus() -> tuple[list[str], list[tuple[int, int]], np.ndarray]:
    """330 texts with 80 planted near-copies, and their exact pairwise Jaccard (brute force)."""
    texts, planted = _corpus(np.random.default_rng(0))
    shingles = [_ref_shingles(t, 5) for t in texts]
    n = len(texts)
    sim = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            sim[i, j] = sim[j, i] = _ref_jaccard(shingles[i], shingles[j])
    return texts, planted, sim


@pytest.mark.parametrize("threshold", [0.7, 0.8])
def test_near_dedup_against_brute_force_jaccard(
    planted_corpus: tuple[list[str], list[tuple[int, int]], np.ndarray], threshold: float
) -> None:
    texts, planted, sim = planted_corpus
    keep = near_dedup(texts, threshold=threshold, num_perm=128, ngram=5, seed=3)
    assert keep.dtype == bool and keep.shape == (len(texts),)

    # No pair at or above the threshold is kept twice (exact verification: no false keeps).
    kept = np.flatnonzero(keep)
    sub = sim[np.ix_(kept, kept)]
    np.fill_diagonal(sub, 0)
    assert sub.max() < threshold

    # Every drop is justified by an earlier kept text above the threshold (no false drops).
    for j in np.flatnonzero(~keep):
        assert any(keep[i] and sim[i, j] >= threshold for i in range(j))

    # Recall on the planted near-duplicates of a kept text whose true similarity reaches the threshold
    # (a copy of a text that was itself dropped may rightly stay).
    hits = [(i, j) for i, j in planted if sim[i, j] >= threshold and keep[i]]
    assert len(hits) >= 30
    recall = np.mean([not keep[j] for _i, j in hits])
    assert recall >= 0.95
    # And it agrees with the exact greedy algorithm (LSH misses are the only possible difference).
    assert np.mean(keep == _ref_greedy(sim, threshold)) >= 0.98


def test_near_dedup_seed_and_edge_cases(rng: np.random.Generator) -> None:
    texts, _ = _corpus(rng, n_base=60, n_dup=20)
    a = near_dedup(texts, seed=1)
    np.testing.assert_array_equal(a, near_dedup(texts, seed=1))
    assert near_dedup([]).shape == (0,)
    np.testing.assert_array_equal(near_dedup(["", "", "x"]), [True, False, True])
    np.testing.assert_array_equal(near_dedup(["Same text here.", "same TEXT here"]), [True, False])
    with pytest.raises(ValueError, match="threshold"):
        near_dedup(texts, threshold=0.0)
    with pytest.raises(ValueError, match="num_perm"):
        near_dedup(texts, num_perm=1)
    with pytest.raises(ValueError, match="ngram"):
        near_dedup(texts, ngram=0)


def test_near_dedup_keeps_chain_end_not_similar_to_kept() -> None:
    base = [f"t{i}" for i in range(40)]
    a = " ".join(base)
    b = " ".join([*base[:38], "x1", "x2"])  # last two words changed: J(a, b) = 34/38
    c = " ".join(["y1", "y2", *base[2:38], "x1", "x2"])  # and the first two: J(b, c) = 34/38, J(a, c) = 32/40
    sa, sb, sc = (_ref_shingles(t, 5) for t in (a, b, c))
    t = 0.85
    assert _ref_jaccard(sa, sb) >= t and _ref_jaccard(sb, sc) >= t and _ref_jaccard(sa, sc) < t
    # b goes (duplicate of a); c stays, since the only text it duplicates was itself dropped.
    np.testing.assert_array_equal(near_dedup([a, b, c], threshold=t, seed=0), [True, False, True])


# ----------------------------------------------------------------------------------------------------
# incremental near-duplicate index


def _stream(rng: np.random.Generator, n: int = 500) -> list[str]:
    """Short texts over a small vocabulary, 40% of them near copies (0-3 substitutions, case and
    punctuation changes) of an earlier text, so copies land in the same batch and in later ones."""
    vocab = [f"v{i}" for i in range(300)]
    texts: list[str] = []
    for _ in range(n):
        if texts and rng.random() < 0.4:
            words = texts[int(rng.integers(max(0, len(texts) - 80), len(texts)))].rstrip(".").split()
            for _ in range(int(rng.integers(0, 4))):
                words[int(rng.integers(0, len(words)))] = str(rng.choice(vocab))
            if rng.random() < 0.3:
                words = [w.upper() for w in words]
            texts.append(" ".join(words) + ("." if rng.random() < 0.5 else ""))
        else:
            texts.append(" ".join(rng.choice(vocab, int(rng.integers(2, 30)))))
    texts[5:5] = ["", "", "   "]  # empty texts are duplicates of each other
    return texts


def _batches(rng: np.random.Generator, n: int) -> list[slice]:
    cuts, pos = [], 0
    while pos < n:
        k = int(rng.choice([0, 1, 2, 7, 30, 90]))
        cuts.append(slice(pos, min(pos + k, n)))
        pos += k
    return cuts


@pytest.mark.parametrize(("seed", "threshold"), [(0, 0.8), (1, 0.8), (2, 0.5), (3, 0.9)])
def test_near_dup_index_stream_equals_near_dedup(seed: int, threshold: float) -> None:
    rng = np.random.default_rng(100 + seed)
    texts = _stream(rng)
    index = NearDupIndex(threshold=threshold, seed=seed)
    before: list[str] = []
    masks = []
    for part in _batches(rng, len(texts)):
        batch = texts[part]
        dup = index.query(batch)
        assert dup.dtype == bool and dup.shape == (len(batch),)
        # Against the one-shot function on everything so far, and on what was kept plus this batch.
        np.testing.assert_array_equal(~dup, near_dedup(texts[: part.stop], threshold=threshold,
                                                       seed=seed)[part.start :])
        np.testing.assert_array_equal(~dup, near_dedup(before + batch, threshold=threshold,
                                                       seed=seed)[len(before) :])
        kept = [t for t, d in zip(batch, dup, strict=True) if not d]
        index.add(kept)
        before += kept
        masks.append(~dup)
    keep = np.concatenate(masks)
    assert len(index) == int(keep.sum()) == len(before)
    assert (~keep).sum() >= 30  # the planted copies are found
    # Independent check: exact greedy first-of-group on brute-force Jaccard (LSH misses aside).
    sh = [_ref_shingles(t, 5) for t in texts]
    sim = np.array([[_ref_jaccard(a, b) for b in sh] for a in sh])
    assert np.mean(keep == _ref_greedy(sim, threshold)) >= 0.98


def test_near_dup_index_generator_seed_matches_near_dedup(rng: np.random.Generator) -> None:
    texts = _stream(rng, 150)
    index = NearDupIndex(seed=np.random.default_rng(9))
    dup = index.query(texts)
    np.testing.assert_array_equal(~dup, near_dedup(texts, seed=np.random.default_rng(9)))
    # A different seed changes the hash functions (the same duplicates, up to rare LSH misses).
    other = NearDupIndex(seed=10)
    assert not np.array_equal(index._a, other._a)


def test_near_dup_index_query_does_not_mutate_and_keeps_chain_rule() -> None:
    base = [f"t{i}" for i in range(40)]
    a = " ".join(base)
    b = " ".join([*base[:38], "x1", "x2"])
    c = " ".join(["y1", "y2", *base[2:38], "x1", "x2"])  # J(a,b) = J(b,c) = 34/38, J(a,c) = 32/40
    index = NearDupIndex(threshold=0.85)
    # In one call: b duplicates a; c only duplicates b, which is itself a duplicate, so c stays.
    np.testing.assert_array_equal(index.query([a, b, c]), [False, True, False])
    assert len(index) == 0 and index.query([b]).tolist() == [False]
    index.add([a])
    size = index.nbytes
    for _ in range(2):
        np.testing.assert_array_equal(index.query([b, c, "something else entirely"]), [True, False, False])
    np.testing.assert_array_equal(index.query([c]), [False])
    assert len(index) == 1 and index.nbytes == size
    index.add([])
    assert len(index) == 1
    assert index.query([]).shape == (0,)
    np.testing.assert_array_equal(index.query(["", " ", a.upper() + "!"]), [False, True, True])
    with pytest.raises(ValueError, match="threshold"):
        NearDupIndex(threshold=1.5)
    with pytest.raises(ValueError, match="num_perm"):
        NearDupIndex(num_perm=1)
    with pytest.raises(ValueError, match="ngram"):
        NearDupIndex(ngram=0)


def test_near_dup_index_storage_is_compact_and_levelled(rng: np.random.Generator) -> None:
    vocab = [f"u{i}" for i in range(5000)]
    index = NearDupIndex()
    words = 0
    for _ in range(60):
        batch = [" ".join(rng.choice(vocab, 20)) for _ in range(int(rng.integers(1, 40)))]
        index.add(batch)
        words += 16 * len(batch)  # 20 words -> 16 distinct 5-shingles
        levels = index._levels
        assert len(levels) <= int(np.log2(len(index))) + 1
        assert sum(k.shape[1] for k, _ in levels) == len(index)
        for keys, ids in levels:
            assert keys.dtype == np.uint64 and ids.dtype == np.uint32 and keys.shape == (index.bands, ids.shape[1])
            assert (np.diff(keys, axis=1) >= 0).all() if keys.shape[1] > 1 else True
    # Band keys + ids (12 bytes per text and band), shingles (8 bytes each), buffers at most doubled.
    assert index.nbytes <= 2 * (len(index) * index.bands * 12 + 8 * words + 8 * len(index)) + 16384


# ----------------------------------------------------------------------------------------------------
# semantic


def test_semantic_dedup_against_brute_force(rng: np.random.Generator) -> None:
    base = rng.standard_normal((120, 16))
    noisy = base[rng.integers(0, 120, 60)] + 0.05 * rng.standard_normal((60, 16))
    X = np.concatenate([base, noisy])
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    X = X[rng.permutation(len(X))]
    sim = X.astype(np.float64) @ X.astype(np.float64).T
    for thr in (0.9, 0.99):
        expected = _ref_greedy(sim, thr)
        for block in (7, 64, 4096):
            np.testing.assert_array_equal(semantic_dedup(X, thr, block_size=block), expected)
    assert semantic_dedup(np.zeros((0, 4), dtype=np.float32)).shape == (0,)
    with pytest.raises(ValueError, match="unit-norm"):
        semantic_dedup(X * 2)
    with pytest.raises(ValueError, match="threshold_cos"):
        semantic_dedup(X, 1.5)


# ----------------------------------------------------------------------------------------------------
# decontamination

_TARGET = (
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins "
    "for her friends every day with four. She sells the remainder at the farmers' market daily for $2 "
    "per fresh duck egg. How much in dollars does she make every day at the farmers' market?"
)
_FILLER = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november"


def _quote(k: int, start: int = 5) -> str:
    words = _TARGET.split()[start : start + k]
    return _FILLER + " " + " ".join(words) + " " + _FILLER.upper()


def test_ngram_13_flagged_12_not() -> None:
    index = NGramIndex.from_texts([_TARGET], n=13)
    assert index.overlaps(_quote(13))
    assert not index.overlaps(_quote(12))
    assert not index.overlaps(_FILLER)
    np.testing.assert_array_equal(index.contaminated([_quote(13), _quote(12), _TARGET, ""]),
                                  [True, False, True, False])


def test_ngram_normalisation_invariant() -> None:
    index = NGramIndex.from_texts([_TARGET])
    quoted = _quote(13, start=20)
    variants = [
        quoted.upper(),
        re.sub(r" ", "   \n\t", quoted),
        quoted.replace("farmers'", "FARMERS"),
        "".join(ch + ("," if ch == " " else "") for ch in quoted),  # punctuation sprinkled in
    ]
    for v in [quoted, *variants]:
        assert index.overlaps(v), v
    assert normalize_words("Don't  STOP-me_now!") == ["dont", "stopmenow"]
    # The ASCII fast path and the Unicode path agree: every ASCII character, alone and inside words.
    for c in map(chr, range(128)):
        assert normalize_words(f"x{c}y é") == re.sub(r"[^\w\s]|_", "", f"x{c}y é".lower()).split()
        assert normalize_words(f"x{c}y") == re.sub(r"[^\w\s]|_", "", f"x{c}y".lower()).split()
    assert normalize_words("Ça, c'est «très» bien — n'est-ce pas?") == [
        "ça", "cest", "très", "bien", "nestce", "pas"]
    assert normalize_words(string.punctuation) == []


def test_ngram_short_text_rules() -> None:
    short_target = "What is the capital of France?"
    index = NGramIndex.from_texts([_TARGET, short_target], n=13)
    # A text shorter than n words is checked with its whole text: all its words, in order, in a target.
    assert index.overlaps("She eats three for breakfast")
    assert not index.overlaps("She eats four for breakfast")
    # A target shorter than n words is found whole inside a longer text.
    assert index.overlaps("Tell me, what is the capital of France? The answer is Paris, of course.")
    assert not index.overlaps("What is the capital of Spain? It is Madrid, the largest city in Spain.")
    assert "what IS the capital of france" in index


def test_ngram_index_against_brute_force(rng: np.random.Generator) -> None:
    vocab = [f"v{i}" for i in range(60)]  # small vocabulary: many partial overlaps
    targets = [" ".join(rng.choice(vocab, int(rng.integers(3, 30)))) for _ in range(15)]
    queries = [" ".join(rng.choice(vocab, int(rng.integers(1, 30)))) for _ in range(150)]
    queries += [" ".join(t.split()[2:9]) for t in targets[:5]] + targets[5:8]
    n = 6

    def grams(words: list[str], m: int) -> set[tuple[str, ...]]:
        return {tuple(words[i : i + m]) for i in range(len(words) - m + 1)}

    def ref(q: str) -> bool:
        qw = _ref_words(q)
        for t in targets:
            tw = _ref_words(t)
            m = min(n, len(qw), len(tw))
            if m and grams(qw, m) & grams(tw, m):
                return True
        return False

    index = NGramIndex.from_texts(targets, n=n)
    expected = np.array([ref(q) for q in queries])
    assert 10 < expected.sum() < len(queries) - 10
    np.testing.assert_array_equal(index.contaminated(queries), expected)
    np.testing.assert_array_equal([index.overlaps(q) for q in queries[:40]], expected[:40])


def test_ngram_hashes_are_stable() -> None:
    # Word hashes are BLAKE2b (fixed across processes and machines), never Python's randomised hash().
    import hashlib

    from equal.data.decontam import tokenize, word_ngram_hashes

    tokens, offsets = tokenize(["A, b! c"])
    expected = [int.from_bytes(hashlib.blake2b(w, digest_size=8).digest(), "little")
                for w in (b"a", b"b", b"c")]
    assert tokens.tolist() == expected
    np.testing.assert_array_equal(offsets, [0, 3])
    hashes, owner = word_ngram_hashes(tokens, offsets, 2)
    assert owner.tolist() == [0, 0]
    # The same bigrams inside other texts hash identically; windows never cross a text boundary.
    again, owner2 = word_ngram_hashes(*tokenize(["x y", "a b c"]), 2)
    np.testing.assert_array_equal(again[1:], hashes)
    assert owner2.tolist() == [0, 1, 1]
    assert NGramIndex.from_texts([_TARGET]).size == len(_TARGET.split()) - 13 + 1
    with pytest.raises(ValueError, match="n="):
        NGramIndex(n=0)
