"""Typed settings of ``equal extract``, their TOML form and their hash.

A run directory stores the resolved :class:`ExtractConfig` as ``run.toml``. Re-running the same command on the
same directory resumes it; a config whose :meth:`ExtractConfig.fingerprint` differs is refused unless forced.
Settings that do not change results (progress output, concurrency) are left out of the fingerprint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from equal.errors import ConfigError

__all__ = ["STRATEGIES", "ExtractConfig", "load_toml", "to_toml"]

STRATEGIES = ("equal", "random", "all", "uniform-clusters")
POLICIES = ("ucb", "exp3", "thompson", "epsilon-greedy", "uniform")
# How clusters are numbered, which decides the bandit's first rounds (UCB breaks ties by index):
# "target" by the distance of the cluster's mean embedding to the target's, nearest first;
# "kmeans" k-means' own (arbitrary) numbering, as EQUAL's code has it.
CLUSTER_ORDERS = ("target", "kmeans")
EXTRACTORS = ("llm", "rules")
LLM_KINDS = ("local", "openai")


def _section(name: str, *, fingerprint: bool = True) -> dict[str, Any]:
    return {"section": name, "fingerprint": fingerprint}


@dataclass(frozen=True)
class ExtractConfig:
    """Every setting of one extraction run; validated on construction (messages name the key path)."""

    corpus: str = field(metadata=_section("data"))
    target: str = field(metadata=_section("data"))
    text_field: str = field(default="text", metadata=_section("data"))
    id_field: str = field(default="id", metadata=_section("data"))
    target_field: str | None = field(default=None, metadata=_section("data"))
    skip_invalid: bool = field(default=False, metadata=_section("data"))
    chunk_tokens: int = field(default=512, metadata=_section("data"))

    strategy: str = field(default="equal", metadata=_section("run"))
    budget_docs: int | None = field(default=None, metadata=_section("run"))
    budget_tokens: int | None = field(default=None, metadata=_section("run"))
    seed: int = field(default=0, metadata=_section("run"))

    embedder: str = field(default="minilm", metadata=_section("embed"))

    clusters: int = field(default=20, metadata=_section("cluster"))
    neighbor_threshold: float = field(default=0.2, metadata=_section("cluster"))
    diagonal_covariance: bool = field(default=False, metadata=_section("cluster"))
    cluster_order: str = field(default="target", metadata=_section("cluster"))

    policy: str = field(default="ucb", metadata=_section("bandit"))
    alpha: float | None = field(default=None, metadata=_section("bandit"))
    clusters_per_round: int = field(default=4, metadata=_section("bandit"))
    docs_per_cluster: int = field(default=3, metadata=_section("bandit"))
    reward_offset: float = field(default=0.0, metadata=_section("bandit"))
    empty_reward: float = field(default=-1.0, metadata=_section("bandit"))

    extractor: str = field(default="llm", metadata=_section("extract"))
    max_pairs: int = field(default=3, metadata=_section("extract"))
    refine: bool = field(default=False, metadata=_section("extract"))
    prompt_style: str = field(default="auto", metadata=_section("extract"))
    decontam_ngram: int = field(default=13, metadata=_section("extract"))
    near_dup_threshold: float = field(default=0.8, metadata=_section("extract"))

    llm: str = field(default="local", metadata=_section("llm"))
    model: str | None = field(default=None, metadata=_section("llm"))
    base_url: str | None = field(default=None, metadata=_section("llm"))
    max_tokens: int = field(default=256, metadata=_section("llm"))
    temperature: float = field(default=0.0, metadata=_section("llm"))
    concurrency: int = field(default=8, metadata=_section("llm", fingerprint=False))
    batch_size: int = field(default=8, metadata=_section("llm", fingerprint=False))

    def __post_init__(self) -> None:
        def bad(key: str, value: object, rule: str) -> ConfigError:
            section = next(f.metadata["section"] for f in fields(self) if f.name == key)
            return ConfigError(f"{section}.{key}={value!r}: {rule}")

        choices = {"strategy": STRATEGIES, "policy": POLICIES, "extractor": EXTRACTORS, "llm": LLM_KINDS,
                   "prompt_style": ("auto", "json", "lines"), "cluster_order": CLUSTER_ORDERS}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise bad(key, getattr(self, key), f"must be one of {', '.join(allowed)}")
        for key in ("clusters", "clusters_per_round", "docs_per_cluster", "max_pairs", "chunk_tokens",
                    "decontam_ngram", "max_tokens", "concurrency", "batch_size"):
            if getattr(self, key) < 1:
                raise bad(key, getattr(self, key), "must be >= 1")
        for key in ("budget_docs", "budget_tokens"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise bad(key, value, "must be >= 1 when given")
        if self.strategy != "all" and self.budget_docs is None and self.budget_tokens is None:
            raise bad("budget_docs", None, "give --budget-docs or --budget-tokens (or use --strategy all)")
        if not 0 < self.near_dup_threshold <= 1:
            raise bad("near_dup_threshold", self.near_dup_threshold, "must be in (0, 1]")
        if self.neighbor_threshold < 0:
            raise bad("neighbor_threshold", self.neighbor_threshold, "must be >= 0")
        if self.temperature < 0:
            raise bad("temperature", self.temperature, "must be >= 0")
        if self.llm == "openai" and self.extractor == "llm" and not (self.base_url and self.model):
            raise bad("base_url", self.base_url, "--llm openai needs --base-url and --model")

    @property
    def resolved_prompt_style(self) -> str:
        """``auto`` means Question:/Answer: lines for the bundled small local model, JSON for served models."""
        if self.prompt_style != "auto":
            return self.prompt_style
        return "lines" if self.llm == "local" else "json"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of the settings that change results."""
        keep = {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["fingerprint"]}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()

    def changed_keys(self, other: ExtractConfig) -> list[str]:
        """Names of the result-changing settings where ``other`` differs from this config."""
        return [
            f"{f.metadata['section']}.{f.name}"
            for f in fields(self)
            if f.metadata["fingerprint"] and getattr(self, f.name) != getattr(other, f.name)
        ]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExtractConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        return cls(**data)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(config: ExtractConfig) -> str:
    """Render ``config`` as TOML, one table per section; ``None`` values are left out (TOML has no null)."""
    sections: dict[str, list[str]] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if value is None:
            continue
        sections.setdefault(f.metadata["section"], []).append(f"{f.name} = {_toml_value(value)}")
    body = [f"[{name}]\n" + "\n".join(lines) for name, lines in sections.items()]
    return "# equal extract: resolved configuration of this run\n\n" + "\n\n".join(body) + "\n"


def load_toml(path: str | Path) -> ExtractConfig:
    """Read a config written by :func:`to_toml` (sections are flattened)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc
    flat: dict[str, Any] = {}
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: top-level key {section!r} must be a table")
        flat.update(table)
    return ExtractConfig.from_dict(flat)
