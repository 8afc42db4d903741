"""Decontamination: flag texts that share a long word n-gram with the target (evaluation) set.

Texts are normalised (lowercase, punctuation deleted, whitespace collapsed, as in lm-evaluation-harness'
decontamination) and split into words. Word n-grams are hashed to 64-bit integers: each word gets the
first 8 bytes of its BLAKE2b digest (stable across runs, machines and Python versions, unlike ``hash``),
and an n-gram is the polynomial combination of its word hashes modulo 2**64 followed by the splitmix64
finaliser, computed for all windows at once with numpy.

The rule (:class:`NGramIndex`): a text is contaminated when it shares a run of ``min(n, |text|,
|target|)`` consecutive normalised words with some target text, ``|x|`` being a word count. For texts
and targets of at least ``n`` words this is the usual shared n-gram (13 by default); a text shorter than
``n`` words is checked with its whole-text n-gram (all of its words, in order, appear inside a
target), and a target shorter than ``n`` words is found when all of its words appear in order inside the
text. Empty texts (nothing left after normalisation) are never contaminated.

The word-hashing and windowing helpers here are shared with :mod:`equal.data.dedup`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["NGramIndex", "normalize_words", "word_ngram_hashes"]

_PUNCT_RE = re.compile(r"[^\w\s]|_")
_ASCII_DELETE = {c: None for c in range(128) if not (chr(c).isalnum() or chr(c).isspace())}
_MASK64 = (1 << 64) - 1
# Odd 64-bit constants (the golden ratio and splitmix64's multipliers); any fixed odd values would do,
# but they must never change: they define the hashes.
_BASE = np.uint64(0x9E3779B97F4A7C15)
_LEN_SALT = 0xD6E8FEB86659FD93
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def normalize_words(text: str) -> list[str]:
    """Lowercase ``text``, delete punctuation (including ``_``) and split on whitespace.

    Examples
    --------
    >>> normalize_words("Don't  STOP-me now!")
    ['dont', 'stopme', 'now']
    """
    if text.isascii():
        # Same result as the regex for ASCII text (checked in the tests), about twice as fast.
        return text.lower().translate(_ASCII_DELETE).split()
    return _PUNCT_RE.sub("", text.lower()).split()


def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


class _WordHashes(dict):  # type: ignore[type-arg]
    """Word → 64-bit hash memo that fills itself on a miss."""

    def __missing__(self, word: str) -> int:
        h = self[word] = _word_hash(word)
        return h


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, in place on a uint64 array (wraparound arithmetic is intended)."""
    h ^= h >> np.uint64(30)
    h *= _M1
    h ^= h >> np.uint64(27)
    h *= _M2
    h ^= h >> np.uint64(31)
    return h


def tokenize(texts: Iterable[str], cache: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Word hashes of all ``texts``, concatenated, with the offsets of each text.

    Parameters
    ----------
    texts : iterable of str
        The texts.
    cache : dict or None
        Word → hash memo shared between calls (a fresh one when None).

    Returns
    -------
    tokens : ndarray of shape (total_words,), uint64
        Hash of every normalised word, text after text.
    offsets : ndarray of shape (n_texts + 1,), int64
        Text ``t`` owns ``tokens[offsets[t]:offsets[t + 1]]``.
    """
    memo = cache if isinstance(cache, _WordHashes) else _WordHashes(cache or {})
    lookup = memo.__getitem__
    flat: list[int] = []
    offsets = [0]
    for text in texts:
        # map() over the memo's C-level __getitem__ keeps the per-word cost to a dict lookup.
        flat.extend(map(lookup, normalize_words(text)))
        offsets.append(len(flat))
    if cache is not None and memo is not cache:
        cache.update(memo)
    return np.array(flat, dtype=np.uint64), np.array(offsets, dtype=np.int64)


def _windows(tokens: np.ndarray, m: int) -> np.ndarray:
    """Hash of every length-``m`` window of ``tokens`` (shape (len - m + 1,)), uint64."""
    count = tokens.shape[0] - m + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(count, dtype=np.uint64)
    for j in range(m):
        h *= _BASE
        h += tokens[j : j + count]
    # The length enters the hash so that grams of different lengths never compare equal.
    h += np.uint64((m * _LEN_SALT) & _MASK64)
    return _mix64(h)


def word_ngram_hashes(
    tokens: np.ndarray, offsets: np.ndarray, m: int, *, texts: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the length-``m`` word windows of each text that has at least ``m`` words.

    Parameters
    ----------
    tokens, offsets : ndarray
        Output of :func:`tokenize`.
    m : int
        Window length in words, >= 1.
    texts : ndarray of int64 or None
        Restrict to these text indices (all when None).

    Returns
    -------
    hashes : ndarray of shape (k,), uint64
        One hash per window, windows never crossing a text boundary.
    owner : ndarray of shape (k,), int64
        Index of the text each window belongs to.
    """
    if m < 1:
        raise ValueError(f"m={m} must be >= 1.")
    lengths = np.diff(offsets)
    n_windows = np.maximum(lengths - m + 1, 0)
    if texts is not None:
        keep = np.zeros(lengths.shape[0], dtype=bool)
        keep[texts] = True
        n_windows = np.where(keep, n_windows, 0)
    total = int(n_windows.sum())
    if total == 0:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    owner = np.repeat(np.arange(lengths.shape[0], dtype=np.int64), n_windows)
    # Window k of text t starts at offsets[t] + (k - first window index of t).
    first = np.cumsum(n_windows) - n_windows
    starts = offsets[:-1][owner] + (np.arange(total, dtype=np.int64) - first[owner])
    return _windows(tokens, m)[starts], owner


def _whole_text_hashes(tokens: np.ndarray, offsets: np.ndarray, texts: np.ndarray) -> np.ndarray:
    """Hash of each given text as one gram of its own length (same hash as an equal window elsewhere)."""
    out = np.zeros(texts.shape[0], dtype=np.uint64)
    for k, t in enumerate(texts.tolist()):
        out[k] = _windows(tokens[offsets[t] : offsets[t + 1]], int(offsets[t + 1] - offsets[t]))[0]
    return out


def _isin_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if sorted_set.size == 0 or values.size == 0:
        return np.zeros(values.shape[0], dtype=bool)
    idx = np.searchsorted(sorted_set, values)
    idx[idx == sorted_set.size] = 0
    return sorted_set[idx] == values


class NGramIndex:
    """The set of hashed word n-grams of a target set, for decontamination (rule in the module docstring).

    Build it with :meth:`from_texts`; query with :meth:`overlaps` (one text) or :meth:`contaminated`
    (many, vectorised).

    Attributes
    ----------
    n : int
        Gram length in words.
    n_targets : int
        Number of target texts.
    size : int
        Number of distinct target n-grams (plus whole-text grams of short targets).
    """

    def __init__(self, n: int = 13) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r} must be an int >= 1.")
        self.n = n
        self._cache: dict[str, int] = _WordHashes()
        self._tokens = np.zeros(0, dtype=np.uint64)
        self._offsets = np.zeros(1, dtype=np.int64)
        self._grams: dict[int, np.ndarray] = {}  # m -> sorted unique hashes of all m-grams of the targets
        self._short: dict[int, np.ndarray] = {}  # k < n -> sorted whole-text hashes of k-word targets

    @classmethod
    def from_texts(cls, target_texts: Iterable[str], n: int = 13) -> NGramIndex:
        """Index ``target_texts`` (their n-grams, and the whole text of targets shorter than ``n`` words).

        Parameters
        ----------
        target_texts : iterable of str
            The target (evaluation) examples, e.g. question plus answer of each.
        n : int, default=13
            Gram length in words.
        """
        index = cls(n)
        index._tokens, index._offsets = tokenize(target_texts, index._cache)
        lengths = np.diff(index._offsets)
        hashes, _ = word_ngram_hashes(index._tokens, index._offsets, n)
        index._grams[n] = np.unique(hashes)
        short = np.flatnonzero((lengths > 0) & (lengths < n))
        if short.size:
            whole = _whole_text_hashes(index._tokens, index._offsets, short)
            for k in np.unique(lengths[short]).tolist():
                index._short[int(k)] = np.unique(whole[lengths[short] == k])
        return index

    @property
    def n_targets(self) -> int:
        return int(self._offsets.shape[0] - 1)

    @property
    def size(self) -> int:
        return int(self._grams[self.n].size + sum(v.size for v in self._short.values())) if self._grams else 0

    def _grams_of_length(self, m: int) -> np.ndarray:
        # Only needed for texts shorter than n words; built on first use and kept.
        if m not in self._grams:
            hashes, _ = word_ngram_hashes(self._tokens, self._offsets, m)
            self._grams[m] = np.unique(hashes)
        return self._grams[m]

    def contaminated(self, texts: Sequence[str]) -> np.ndarray:
        """Flag each text that overlaps the target.

        Parameters
        ----------
        texts : sequence of str
            Texts to check (e.g. ``QAPair.render_text()`` of each pair).

        Returns
        -------
        ndarray of shape (len(texts),), bool
            True where the text is contaminated.
        """
        tokens, offsets = tokenize(texts, self._cache)
        lengths = np.diff(offsets)
        flagged = np.zeros(lengths.shape[0], dtype=bool)
        if not self._grams:
            return flagged
        # Shared n-gram.
        hashes, owner = word_ngram_hashes(tokens, offsets, self.n)
        flagged[owner[_isin_sorted(hashes, self._grams[self.n])]] = True
        # A whole short target inside the text.
        for k, whole in self._short.items():
            hashes, owner = word_ngram_hashes(tokens, offsets, k)
            flagged[owner[_isin_sorted(hashes, whole)]] = True
        # A whole short text inside a target.
        short = np.flatnonzero((lengths > 0) & (lengths < self.n) & ~flagged)
        if short.size:
            whole = _whole_text_hashes(tokens, offsets, short)
            for k in np.unique(lengths[short]).tolist():
                sel = lengths[short] == k
                hit = _isin_sorted(whole[sel], self._grams_of_length(int(k)))
                flagged[short[sel][hit]] = True
        return flagged

    def overlaps(self, text: str) -> bool:
        """True when ``text`` is contaminated (see :meth:`contaminated`)."""
        return bool(self.contaminated([text])[0])

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and self.overlaps(text)

    def __repr__(self) -> str:
        return f"NGramIndex(n={self.n}, n_targets={self.n_targets}, size={self.size})"
