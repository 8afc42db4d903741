"""Pair filters of the extraction loop (see :class:`equal.pipeline.parts.PairFilter`).

- ``exact``: the same text (up to case and whitespace) as a kept pair or an earlier new one.
- ``near``: a near duplicate (MinHash-LSH, Jaccard of word shingles) of a kept pair or an earlier new one;
  incremental: only the new pairs are inserted and queried.
- ``decontam``: shares a word n-gram with the target sample (or is one of its texts).
- ``quality``: rule checks of :func:`equal.extract.quality.quality_reason` (answer adds information, no
  placeholder or circular answer, length bounds).
- ``judge``: an LLM rates each pair (:mod:`equal.pipeline.judge`).

Each filter is built from its own frozen config by the registry; drops are counted under its name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from equal.errors import ConfigError

if TYPE_CHECKING:
    from equal.pipeline.parts import Candidates
    from equal.pipeline.registry import PartContext

__all__ = ["DecontamConfig", "DecontamFilter", "ExactConfig", "ExactFilter", "NearConfig", "NearFilter",
           "QualityFilter", "exact_key"]


def exact_key(text: str) -> bytes:
    """The key under which :func:`equal.data.dedup.exact_dedup` compares texts (case and whitespace folded)."""
    return hashlib.blake2b(" ".join(text.casefold().split()).encode("utf-8"), digest_size=16).digest()


@dataclass(frozen=True)
class ExactConfig:
    """The ``exact`` filter has no settings."""


class ExactFilter:
    """Drops a pair whose text equals (up to case and whitespace) a kept pair's or an earlier new pair's."""

    name = "exact"

    def __init__(self, config: ExactConfig | None = None) -> None:
        self.config = config or ExactConfig()
        self._seen: set[bytes] = set()

    def keep(self, candidates: Candidates) -> np.ndarray:
        seen: set[bytes] = set()
        out = np.zeros(len(candidates), dtype=bool)
        for i, text in enumerate(candidates.texts):
            key = exact_key(text)
            if key not in self._seen and key not in seen:
                seen.add(key)
                out[i] = True
        return out

    def add(self, kept: Candidates) -> None:
        self._seen.update(exact_key(t) for t in kept.texts)


@dataclass(frozen=True)
class NearConfig:
    """MinHash-LSH near duplicates: Jaccard of word ``ngram`` shingles >= ``threshold``."""

    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 5

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0 < self.threshold <= 1:
            raise ConfigError(f"threshold={self.threshold!r}: must be in (0, 1]")
        for name in ("num_perm", "ngram"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "num_perm" else 1):
                raise ConfigError(f"{name}={value!r}: must be an int >= {2 if name == 'num_perm' else 1}")


class NearFilter:
    """Drops near duplicates of kept pairs and of earlier new pairs.

    With :class:`equal.data.dedup.NearDupIndex` (incremental MinHash-LSH) a round costs the same however
    many pairs were kept; without it, :func:`~equal.data.dedup.near_dedup` over all kept texts plus the
    new ones (the same answers, at a cost that grows with the run).
    """

    name = "near"

    def __init__(self, config: NearConfig, *, seed: int = 0) -> None:
        self.config = config
        self.seed = seed
        try:
            from equal.data.dedup import NearDupIndex  # type: ignore[attr-defined]
        except ImportError:
            self._index: Any = None
            self._kept: list[str] = []
        else:
            self._index = NearDupIndex(threshold=config.threshold, num_perm=config.num_perm, ngram=config.ngram,
                                       seed=seed)

    def keep(self, candidates: Candidates) -> np.ndarray:
        if not len(candidates):
            return np.zeros(0, dtype=bool)
        if self._index is not None:
            return ~np.asarray(self._index.query(candidates.texts), dtype=bool)
        from equal.data.dedup import near_dedup

        mask = near_dedup(self._kept + list(candidates.texts), threshold=self.config.threshold,
                          num_perm=self.config.num_perm, ngram=self.config.ngram, seed=self.seed)
        return mask[len(self._kept):]

    def add(self, kept: Candidates) -> None:
        if not len(kept):
            return
        if self._index is not None:
            self._index.add(list(kept.texts))
        else:
            self._kept.extend(kept.texts)


@dataclass(frozen=True)
class DecontamConfig:
    """Drop a pair sharing a word ``ngram``-gram with a target text (whole short target texts count too)."""

    ngram: int = 13

    def __post_init__(self) -> None:
        if isinstance(self.ngram, bool) or not isinstance(self.ngram, int) or self.ngram < 1:
            raise ConfigError(f"ngram={self.ngram!r}: must be an int >= 1")


class DecontamFilter:
    """Drops pairs that overlap the target sample (:class:`equal.data.decontam.NGramIndex`); stateless."""

    name = "decontam"

    def __init__(self, config: DecontamConfig, target_texts: list[str]) -> None:
        from equal.data.decontam import NGramIndex

        self.config = config
        self._index = NGramIndex.from_texts(target_texts, n=config.ngram)

    def keep(self, candidates: Candidates) -> np.ndarray:
        if not len(candidates):
            return np.zeros(0, dtype=bool)
        return ~np.asarray(self._index.contaminated(candidates.texts), dtype=bool)

    def add(self, kept: Candidates) -> None:
        """Nothing to record: the target does not change."""


class QualityFilter:
    """Drops pairs that fail the rule checks of :func:`equal.extract.quality.quality_reason`; stateless."""

    name = "quality"

    def __init__(self, config: Any) -> None:
        from equal.extract.quality import quality_reason

        self.config = config
        self._reason = quality_reason

    def keep(self, candidates: Candidates) -> np.ndarray:
        return np.asarray([self._reason(p.question, p.answer, config=self.config) is None
                           for p in candidates.pairs], dtype=bool)

    def add(self, kept: Candidates) -> None:
        """Nothing to record."""


def build_exact(config: ExactConfig, ctx: PartContext) -> ExactFilter:
    return ExactFilter(config)


def build_near(config: NearConfig, ctx: PartContext) -> NearFilter:
    return NearFilter(config, seed=ctx.seed)


def build_decontam(config: DecontamConfig, ctx: PartContext) -> DecontamFilter:
    return DecontamFilter(config, ctx.target_texts)


def build_quality(config: Any, ctx: PartContext) -> QualityFilter:
    return QualityFilter(config)


def build_judge(config: Any, ctx: PartContext) -> Any:
    from equal.pipeline.judge import JudgeFilter

    if ctx.llm is None:
        raise ConfigError("filters: 'judge' needs an LLM")
    return JudgeFilter(ctx.llm(), config, ledger=ctx.ledger)
