"""Typed settings of ``equal extract``: one frozen dataclass per section, their TOML form and their hash.

A run directory stores the resolved :class:`ExtractConfig` as ``run.toml``, one table per section::

    [bandit]
    policy = "ucb"
    clusters_per_round = 4

    [bandit.ucb]          # the settings of the chosen part (policy, reward, each filter) in a sub-table
    alpha = "decay"

A recipe (``equal extract --config RECIPE.toml``, e.g. ``recipes/equal-paper.toml``) has the same format and
may give any subset of it. Re-running the same command on the same directory resumes it; a config whose
:meth:`ExtractConfig.fingerprint` differs is refused unless forced. Settings that do not change results
(``llm.concurrency``, ``llm.batch_size``) are left out of the fingerprint.

Every plain setting has a unique name across sections (``clusters``, ``budget_docs``): the ``equal extract``
options and :meth:`ExtractConfig.from_flat` use these names; :data:`PART_ALIASES` adds flat names for a few
part settings (``alpha`` is ``bandit.ucb.alpha``). The part settings themselves are validated by the part's
own config class, looked up in :mod:`equal.pipeline.registry`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from equal.errors import ConfigError

__all__ = [
    "CLUSTER_ORDERS",
    "DOC_ORDERS",
    "PART_ALIASES",
    "SECTIONS",
    "STRATEGIES",
    "BanditConfig",
    "ClusterConfig",
    "DataConfig",
    "EmbedConfig",
    "ExtractConfig",
    "ExtractorConfig",
    "FiltersConfig",
    "LLMConfig",
    "RewardConfig",
    "RunConfig",
    "SamplerConfig",
    "flat_settings",
    "load_toml",
    "parse_value",
    "read_toml",
    "resolve_config",
    "set_path",
    "to_toml",
]

STRATEGIES = ("equal", "random", "all", "uniform-clusters")
# How clusters are numbered, which decides the bandit's first rounds (UCB breaks ties by index):
# "target" by the distance of the cluster's mean embedding to the target's, nearest first;
# "kmeans" k-means' own (arbitrary) numbering, as EQUAL's code has it.
CLUSTER_ORDERS = ("target", "kmeans")
DOC_ORDERS = ("random", "sequential")
TARGET_FORMATS = ("auto", "sft", "text")
EXTRACTORS = ("llm", "rules")
LLM_KINDS = ("local", "openai")
LOCAL_BACKENDS = ("auto", "llama.cpp", "transformers")
PROMPT_STYLES = ("auto", "json", "lines")
DEFAULT_FILTERS = ("exact", "near", "quality", "decontam")


def _opt(help: str, *, fingerprint: bool = True, choices: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"help": help, "fingerprint": fingerprint, "choices": choices}


def _bad(section: str, key: str, value: object, rule: str) -> ConfigError:
    from equal._redact import redact_text

    return ConfigError(redact_text(f"{section}.{key}={value!r}: {rule}"))


def _check_choices(section: str, obj: object) -> None:
    for f in fields(obj):  # type: ignore[arg-type]
        allowed = f.metadata.get("choices", ())
        if allowed and getattr(obj, f.name) not in allowed:
            raise _bad(section, f.name, getattr(obj, f.name), f"must be one of {', '.join(allowed)}")


def _check_min(section: str, obj: object, names: tuple[str, ...], low: int = 1) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < low:
            raise _bad(section, name, value, f"must be >= {low}")


# ----------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class DataConfig:
    """Where the corpus and the target sample are and how to read them."""

    corpus: str = field(metadata=_opt("Document corpus: JSONL, JSON, Parquet, CSV, or a folder."))
    target: str = field(metadata=_opt("Target-task sample: SFT records (messages/ShareGPT/Alpaca) or texts."))
    text_field: str = field(default="text", metadata=_opt("Text field of the corpus."))
    id_field: str = field(default="id", metadata=_opt("Id field of the corpus."))
    target_field: str | None = field(default=None, metadata=_opt("Text field of the target (implies text)."))
    target_format: str = field(default="auto", metadata=_opt(
        "auto (SFT when the first record has messages/conversations/instruction, else texts), sft or text.",
        choices=TARGET_FORMATS))
    skip_invalid: bool = field(default=False, metadata=_opt("Skip and count invalid rows instead of failing."))
    chunk_tokens: int = field(default=512, metadata=_opt("Longest document chunk, in tokens."))
    chunk_overlap: int = field(default=0, metadata=_opt(
        "Tokens a chunk repeats from the end of the previous one (< chunk_tokens)."))
    split: str | None = field(default=None, metadata=_opt(
        "Split of a Hugging Face corpus folder (save_to_disk DatasetDict, or Hub data/<split>-*.parquet)."))
    target_split: str | None = field(default=None, metadata=_opt("Split of a Hugging Face target folder."))
    # Carried into each pair's provenance only: they change no request, so they are not in the fingerprint.
    keep_fields: tuple[str, ...] = field(default=(), metadata=_opt(
        "Corpus fields carried into each pair's provenance (e.g. license,source).", fingerprint=False))

    def __post_init__(self) -> None:
        _check_choices("data", self)
        _check_min("data", self, ("chunk_tokens",))
        _check_min("data", self, ("chunk_overlap",), low=0)
        if self.chunk_overlap >= self.chunk_tokens:
            raise _bad("data", "chunk_overlap", self.chunk_overlap, f"must be < data.chunk_tokens={self.chunk_tokens}")
        if self.target_field and self.target_format == "sft":
            raise _bad("data", "target_field", self.target_field, "names a text field; not with target_format sft")
        keep = self.keep_fields
        keep = [k.strip() for k in keep.split(",") if k.strip()] if isinstance(keep, str) else keep
        object.__setattr__(self, "keep_fields", tuple(keep))
        if any(not isinstance(k, str) or not k for k in self.keep_fields):
            raise _bad("data", "keep_fields", list(self.keep_fields), "must be field names")


@dataclass(frozen=True)
class RunConfig:
    """Which strategy, how much to spend, which seed."""

    strategy: str = field(default="equal", metadata=_opt(
        "equal (bandit), random, all, uniform-clusters.", choices=STRATEGIES))
    budget_docs: int | None = field(default=None, metadata=_opt("Documents to send to the extractor."))
    budget_tokens: int | None = field(default=None, metadata=_opt("LLM tokens (in + out) to spend."))
    budget_usd: float | None = field(default=None, metadata=_opt(
        "Money to spend, at llm.price_in / llm.price_out (cached answers count, as with budget_tokens)."))
    seed: int = field(default=0, metadata=_opt("Random seed."))
    # where the work runs never changes what it produces, so neither key is part of the run's fingerprint
    ray: str | None = field(default=None, metadata=_opt(
        "Run embedding, cluster assignment and LLM requests on Ray: local (a cluster on this machine), "
        "auto (join `ray start`), or HOST:PORT.", fingerprint=False))
    ray_actors: int | None = field(default=None, metadata=_opt(
        "Ray actors per pool (default: one per GPU, else one per CPU of the cluster).", fingerprint=False))

    def __post_init__(self) -> None:
        _check_choices("run", self)
        _check_min("run", self, ("budget_docs", "budget_tokens", "ray_actors"))
        if self.ray is not None and not str(self.ray).strip():
            raise _bad("run", "ray", self.ray, "give local, auto or HOST:PORT")
        usd = self.budget_usd
        if usd is not None and (isinstance(usd, bool) or not isinstance(usd, (int, float)) or not usd > 0):
            raise _bad("run", "budget_usd", self.budget_usd, "must be > 0")
        if self.strategy != "all" and self.budget_docs is None and self.budget_tokens is None \
                and self.budget_usd is None:
            raise _bad("run", "budget_docs", None,
                       "give --budget-docs, --budget-tokens or --budget-usd (or use --strategy all)")


@dataclass(frozen=True)
class EmbedConfig:
    """The embedder, and EQUAL's warm-up: contrastive alignment on the pairs of the first documents read."""

    embedder: str = field(default="minilm", metadata=_opt("Embedder (see `equal embed --help`)."))
    warmup_docs: int = field(default=0, metadata=_opt(
        "Warm-up: read this many seeded random documents first (counted in the budget), align the embedder "
        "on their pairs (`equal align`), then embed and cluster with it (EQUAL); 0: off."))
    warmup_epochs: float = field(default=1.0, metadata=_opt("Warm-up alignment: passes over the pairs."))
    warmup_batch_size: int = field(default=16, metadata=_opt("Warm-up alignment: rows per step."))
    warmup_lr: float = field(default=5e-5, metadata=_opt("Warm-up alignment: peak learning rate."))
    warmup_temperature: float = field(default=0.02, metadata=_opt("Warm-up alignment: InfoNCE temperature."))
    warmup_hard_negatives: int = field(default=15, metadata=_opt(
        "Warm-up alignment: mined hard negatives per pair (0: in-batch negatives only)."))
    warmup_negative_range: str = field(default="2-200", metadata=_opt(
        "Warm-up alignment: ranks the hard negatives are drawn from, MIN-MAX."))

    def __post_init__(self) -> None:
        _check_min("embed", self, ("warmup_docs", "warmup_hard_negatives"), low=0)
        _check_min("embed", self, ("warmup_batch_size",), low=2)
        for name in ("warmup_epochs", "warmup_lr", "warmup_temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise _bad("embed", name, value, "must be > 0")
        from equal.align._config import parse_negative_range

        parse_negative_range(self.warmup_negative_range, key="embed.warmup_negative_range")


@dataclass(frozen=True)
class ClusterConfig:
    clusters: int = field(default=20, metadata=_opt("k-means clusters."))
    neighbor_threshold: float = field(default=0.2, metadata=_opt(
        "Clusters closer than this (Fréchet distance) share rewards."))
    diagonal_covariance: bool = field(default=False, metadata=_opt(
        "Fréchet distance of diagonal-covariance Gaussians (EQUAL's code) instead of full ones."))
    cluster_order: str = field(default="target", metadata=_opt(
        "Cluster numbering the bandit starts from: target (nearest the target first) or kmeans (EQUAL's).",
        choices=CLUSTER_ORDERS))

    def __post_init__(self) -> None:
        _check_choices("cluster", self)
        _check_min("cluster", self, ("clusters",))
        if self.neighbor_threshold < 0:
            raise _bad("cluster", "neighbor_threshold", self.neighbor_threshold, "must be >= 0")


@dataclass(frozen=True)
class BanditConfig:
    """The cluster policy and the round's shape; ``params`` holds the chosen policy's own settings."""

    policy: str = field(default="ucb", metadata=_opt("Bandit: ucb (EQUAL), exp3, thompson, epsilon-greedy, uniform."))
    clusters_per_round: int = field(default=4, metadata=_opt("Clusters read per round."))
    docs_per_cluster: int = field(default=3, metadata=_opt("Documents per chosen cluster per round."))
    empty_reward: float = field(default=-1.0, metadata=_opt("Reward of a chosen cluster that kept no pair."))
    neighbor_credit: bool = field(default=True, metadata=_opt(
        "Credit a reward to the cluster's neighbours too (policies that take neighbours)."))
    params: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"part": "policy"})

    def __post_init__(self) -> None:
        _check_min("bandit", self, ("clusters_per_round", "docs_per_cluster"))


@dataclass(frozen=True)
class SamplerConfig:
    """Which documents of a chosen cluster a round reads."""

    sampler: str = field(default="cluster", metadata=_opt("Document sampler inside a cluster.", choices=("cluster",)))
    doc_order: str = field(default="random", metadata=_opt(
        "random (a seeded order per cluster) or sequential (corpus order, EQUAL's).", choices=DOC_ORDERS))
    partial_batches: bool = field(default=True, metadata=_opt(
        "Read a cluster with fewer unread documents than docs_per_cluster (EQUAL: no)."))

    def __post_init__(self) -> None:
        _check_choices("sampler", self)


@dataclass(frozen=True)
class RewardConfig:
    reward: str = field(default="ot", metadata=_opt(
        "Cluster reward: ot (EQUAL), judge (LLM scoring) or influence (Quad: LoRA-gradient similarity)."))
    params: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"part": "reward"})


@dataclass(frozen=True)
class FiltersConfig:
    filters: tuple[str, ...] = field(default=DEFAULT_FILTERS, metadata=_opt(
        "Pair filters, in order: exact, near, decontam, quality, judge."))
    params: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"part": "filter"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "filters", tuple(self.filters))
        if len(set(self.filters)) != len(self.filters):
            raise _bad("filters", "filters", list(self.filters), "lists a filter twice")


@dataclass(frozen=True)
class ExtractorConfig:
    extractor: str = field(default="llm", metadata=_opt(
        "llm, or rules for documents that carry Q&A already.", choices=EXTRACTORS))
    max_pairs: int = field(default=3, metadata=_opt("Pairs asked for per document."))
    refine: bool = field(default=False, metadata=_opt("Run a refinement pass over the drafted pairs."))
    prompt_style: str = field(default="auto", metadata=_opt(
        "auto (lines for the local model, json for served ones), json or lines.", choices=PROMPT_STYLES))
    structured: bool = field(default=True, metadata=_opt(
        "With the json prompt, ask for structured output (a JSON schema; a server that refuses it gets the "
        "plain request)."))
    prompt_template: str | None = field(default=None, metadata=_opt(
        "Template file of the extraction request, with {document}, {n_pairs} and {examples} (see the README)."))
    few_shot: int = field(default=0, metadata=_opt(
        "Seeded target examples shown in the extraction prompt (0: the built-in prompt unchanged)."))

    def __post_init__(self) -> None:
        _check_choices("extract", self)
        _check_min("extract", self, ("max_pairs",))
        _check_min("extract", self, ("few_shot",), low=0)
        if self.prompt_template is not None:
            from equal.extract.prompts import load_prompt_template

            load_prompt_template(self.prompt_template, need_examples=self.few_shot > 0)  # names file and placeholder


@dataclass(frozen=True)
class LLMConfig:
    llm: str = field(default="local", metadata=_opt(
        "local (bundled SmolLM2-135M) or openai (any compatible server).", choices=LLM_KINDS))
    model: str | None = field(default=None, metadata=_opt("Model name (openai) or GGUF/HF path (local)."))
    base_url: str | None = field(default=None, metadata=_opt("OpenAI-compatible base URL (…/v1)."))
    max_tokens: int = field(default=256, metadata=_opt("Generation limit per request."))
    temperature: float = field(default=0.0, metadata=_opt("Sampling temperature."))
    concurrency: int = field(default=8, metadata=_opt("Parallel requests (openai).", fingerprint=False))
    batch_size: int = field(default=8, metadata=_opt("Prompts per batch (local).", fingerprint=False))
    deadline_s: float = field(default=600.0, metadata=_opt(
        "Seconds one request may take in all, retries included (openai).", fingerprint=False))
    tokenizer: str | None = field(default=None, metadata=_opt(
        "Tokenizer (folder, hub name or .gguf) counting tokens when the server sends no usage; "
        "default: estimate chars/4 (openai).", fingerprint=False))
    backend: str = field(default="auto", metadata=_opt(
        "Local engine: auto (llama.cpp for a .gguf file, transformers for a model folder), llama.cpp or "
        "transformers.", choices=LOCAL_BACKENDS))
    threads: int | None = field(default=None, metadata=_opt(
        "CPU threads of a local model (default: llama.cpp the idle cores, transformers all).", fingerprint=False))
    price_in: float | None = field(default=None, metadata=_opt(
        "Price per million prompt tokens (money in the ledger, the dry run and --budget-usd).", fingerprint=False))
    price_out: float | None = field(default=None, metadata=_opt(
        "Price per million generated tokens.", fingerprint=False))

    def __post_init__(self) -> None:
        _check_choices("llm", self)
        for name in ("price_in", "price_out"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise _bad("llm", name, value, "must be a number >= 0 (per million tokens)")
        _check_min("llm", self, ("max_tokens", "concurrency", "batch_size", "threads"))
        if self.temperature < 0:
            raise _bad("llm", "temperature", self.temperature, "must be >= 0")
        if isinstance(self.deadline_s, bool) or not isinstance(self.deadline_s, (int, float)) \
                or not self.deadline_s > 0:
            raise _bad("llm", "deadline_s", self.deadline_s, "must be > 0 seconds")


SECTIONS: dict[str, type] = {
    "data": DataConfig, "run": RunConfig, "embed": EmbedConfig, "cluster": ClusterConfig,
    "bandit": BanditConfig, "sampler": SamplerConfig, "reward": RewardConfig, "filters": FiltersConfig,
    "extract": ExtractorConfig, "llm": LLMConfig,
}
"""Section name (TOML table) -> its config class, in the order ``run.toml`` lists them."""

PART_ALIASES: dict[str, tuple[str, str, str, type, str]] = {
    "alpha": ("bandit", "ucb", "alpha", float, "UCB exploration weight (default: decaying 1/(N+1))."),
    "gamma": ("bandit", "exp3", "gamma", float, "EXP3 exploration rate (default 0.1)."),
    "epsilon": ("bandit", "epsilon-greedy", "epsilon", float, "Epsilon-greedy exploration (default 0.1)."),
    "reward_offset": ("reward", "ot", "offset", float, "OT reward = 1 - W - offset (EQUAL: 0.12)."),
    "near_dup_threshold": ("filters", "near", "threshold", float, "Jaccard at which pairs are near duplicates."),
    "decontam_ngram": ("filters", "decontam", "ngram", int, "Word n-gram shared with the target that drops a pair."),
}
"""Flat names of part settings: name -> (section, part, key, type, help)."""


def _section_fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in fields(cls) if "part" not in f.metadata]


def flat_settings() -> dict[str, tuple[str, dataclasses.Field[Any], Any]]:
    """Every plain setting by its flat name: ``name -> (section, field, type)`` (type resolved)."""
    out: dict[str, tuple[str, dataclasses.Field[Any], Any]] = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in _section_fields(cls):
            out[f.name] = (section, f, hints[f.name])
    return out


# ----------------------------------------------------------------------------------------------- the config


@dataclass(frozen=True)
class ExtractConfig:
    """Every setting of one extraction run, by section; validated on construction (messages name the key).

    Build it from sections, from a nested dict (:meth:`from_dict`, the TOML form) or from flat names
    (:meth:`from_flat`, e.g. ``ExtractConfig.from_flat(corpus=..., target=..., budget_docs=40)``).
    The settings of the chosen parts (policy, reward, filters) are resolved against their config classes:
    missing ones get the part's defaults, so ``run.toml`` shows every value in use.
    """

    data: DataConfig
    run: RunConfig
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    bandit: BanditConfig = field(default_factory=BanditConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    extract: ExtractorConfig = field(default_factory=ExtractorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name}: expected a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        warm, budget = self.embed.warmup_docs, self.run.budget_docs
        if warm and budget is not None and warm >= budget:
            raise _bad("embed", "warmup_docs", self.embed.warmup_docs,
                       f"must be < run.budget_docs={self.run.budget_docs} (the warm-up is part of the budget)")
        if self.llm.llm == "openai" and self.extract.extractor == "llm" and not (self.llm.base_url and self.llm.model):
            raise _bad("llm", "base_url", self.llm.base_url, "--llm openai needs --base-url and --model")
        if self.run.budget_usd is not None and self.llm.price_in is None and self.llm.price_out is None:
            raise _bad("run", "budget_usd", self.run.budget_usd, "needs llm.price_in or llm.price_out")
        from equal.pipeline.registry import resolve_params

        # resolved part settings replace what was given (defaults filled in, unknown keys refused)
        object.__setattr__(self, "bandit", dataclasses.replace(
            self.bandit, params=resolve_params("policy", "bandit", [self.bandit.policy], self.bandit.params)))
        object.__setattr__(self, "reward", dataclasses.replace(
            self.reward, params=resolve_params("reward", "reward", [self.reward.reward], self.reward.params)))
        object.__setattr__(self, "filters", dataclasses.replace(
            self.filters, params=resolve_params("filter", "filters", list(self.filters.filters),
                                                self.filters.params)))

    # ---------------------------------------------------------------- views
    @property
    def resolved_prompt_style(self) -> str:
        """``auto`` means Question:/Answer: lines for the bundled small local model, JSON for served models."""
        if self.extract.prompt_style != "auto":
            return self.extract.prompt_style
        return "lines" if self.llm.llm == "local" else "json"

    def part_config(self, kind: str) -> Any:
        """The config object of the chosen policy (``"policy"``) or reward (``"reward"``)."""
        from equal.pipeline.registry import part_config

        if kind == "policy":
            return part_config("policy", self.bandit.policy, self.bandit.params[self.bandit.policy])
        if kind == "reward":
            return part_config("reward", self.reward.reward, self.reward.params[self.reward.reward])
        raise ValueError(f"kind={kind!r} must be 'policy' or 'reward' (filters: filter_configs()).")

    def filter_configs(self) -> list[tuple[str, Any]]:
        """``(name, config)`` of each enabled filter, in order."""
        from equal.pipeline.registry import part_config

        return [(n, part_config("filter", n, self.filters.params[n])) for n in self.filters.filters]

    # ---------------------------------------------------------------- dict / TOML forms
    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict: section -> {key: value, part: {key: value}} (the TOML layout)."""
        out: dict[str, Any] = {}
        for name in SECTIONS:
            sec = getattr(self, name)
            table: dict[str, Any] = {}
            for f in fields(sec):
                value = getattr(sec, f.name)
                if "part" in f.metadata:
                    table.update(copy.deepcopy(value))
                else:
                    table[f.name] = list(value) if isinstance(value, tuple) else value
            out[name] = table
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExtractConfig:
        """Build from the nested form (``run.toml``, a recipe merged with overrides); unknown keys are refused."""
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown section(s): {', '.join(unknown)} (sections: {', '.join(SECTIONS)})")
        if "data" not in data:
            raise ConfigError("data.corpus: missing (give --corpus and --target)")
        kwargs: dict[str, Any] = {}
        for name, sec_cls in SECTIONS.items():
            table = data.get(name, {})
            if not isinstance(table, Mapping):
                raise ConfigError(f"{name}: must be a table, got {table!r}")
            plain = {f.name for f in _section_fields(sec_cls)}
            has_parts = any("part" in f.metadata for f in fields(sec_cls))
            args: dict[str, Any] = {}
            params: dict[str, dict[str, Any]] = {}
            for key, value in table.items():
                if key in plain:
                    args[key] = value
                elif has_parts and isinstance(value, Mapping):
                    params[key] = dict(value)
                else:
                    raise ConfigError(f"{name}.{key}: unknown setting (known: {', '.join(sorted(plain))})")
            if has_parts:
                args["params"] = params
            try:
                kwargs[name] = sec_cls(**args)
            except TypeError as exc:  # a required key is missing
                raise ConfigError(f"{name}: {exc}") from None
        return cls(**kwargs)

    @classmethod
    def from_flat(cls, **settings: Any) -> ExtractConfig:
        """Build from flat names (``clusters=10, alpha=0.001``); ``None`` means the default."""
        return cls.from_dict(nest_flat(settings))

    def replace(self, **settings: Any) -> ExtractConfig:
        """A copy with some flat settings changed (``None`` restores nothing: it is ignored)."""
        data = self.to_dict()
        for path, value in _flat_paths(settings):
            set_path(data, path, value)
        return ExtractConfig.from_dict(data)

    # ---------------------------------------------------------------- fingerprint
    def _result_settings(self) -> dict[str, Any]:
        data = self.to_dict()
        if data["llm"].get("base_url"):
            # run.toml holds the URL with its secret masked: compare the masked forms on both sides
            from equal._redact import redact_url

            data["llm"]["base_url"] = redact_url(data["llm"]["base_url"])
        for name, sec_cls in SECTIONS.items():
            for f in _section_fields(sec_cls):
                if not f.metadata.get("fingerprint", True):
                    data[name].pop(f.name, None)
        return data

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of the settings that change results."""
        return hashlib.sha256(json.dumps(self._result_settings(), sort_keys=True).encode()).hexdigest()

    def changed_keys(self, other: ExtractConfig) -> list[str]:
        """Dotted names of the result-changing settings where ``other`` differs from this config."""
        a, b = _flatten(self._result_settings()), _flatten(other._result_settings())
        return [k for k in list(a) + [k for k in b if k not in a] if a.get(k) != b.get(k)]


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _flat_paths(settings: Mapping[str, Any]) -> list[tuple[tuple[str, ...], Any]]:
    known = flat_settings()
    out: list[tuple[tuple[str, ...], Any]] = []
    for key, value in settings.items():
        if value is None:
            continue
        if key in known:
            out.append(((known[key][0], key), value))
        elif key in PART_ALIASES:
            section, part, name, _t, _h = PART_ALIASES[key]
            out.append(((section, part, name), value))
        else:
            raise ConfigError(f"unknown setting {key!r}")
    return out


def nest_flat(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Flat names -> the nested dict form (``None`` values left out)."""
    data: dict[str, Any] = {}
    for path, value in _flat_paths(settings):
        set_path(data, path, value)
    return data


def set_path(data: dict[str, Any], path: tuple[str, ...] | str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for the dotted ``path`` ``"a.b.c"``, creating tables on the way."""
    keys = tuple(path.split(".")) if isinstance(path, str) else path
    if len(keys) < 2 or not all(keys):
        raise ConfigError(f"{'.'.join(keys)}: a setting is named section.key (e.g. bandit.clusters_per_round)")
    node = data
    for key in keys[:-1]:
        nxt = node.setdefault(key, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{'.'.join(keys)}: {key} is a value, not a table")
        node = nxt
    node[keys[-1]] = value


def parse_value(text: str) -> Any:
    """A ``--set`` value: a TOML value (``0.1``, ``true``, ``["exact", "near"]``, ``"x"``), else the raw string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        from equal._redact import redact_text

        # no secret of a URL (user:password@, ?api_key=) is ever written; see equal._redact
        return json.dumps(redact_text(value), ensure_ascii=False)  # JSON escapes are valid TOML escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(config: ExtractConfig) -> str:
    """Render ``config`` as TOML, one table per section and a sub-table per part; ``None`` values are left out."""
    blocks: list[str] = []
    for name, table in config.to_dict().items():
        plain = [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None and not isinstance(v, dict)]
        blocks.append(f"[{name}]\n" + "\n".join(plain))
        for part, sub in table.items():
            if isinstance(sub, dict):
                lines = [f"{k} = {_toml_value(v)}" for k, v in sub.items() if v is not None]
                blocks.append(f"[{name}.{part}]" + ("\n" + "\n".join(lines) if lines else ""))
    return "# equal extract: resolved configuration of this run\n\n" + "\n\n".join(blocks) + "\n"


def read_toml(path: str | Path) -> dict[str, Any]:
    """The nested dict of a TOML file (a recipe or ``run.toml``), not yet validated."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc


def load_toml(path: str | Path) -> ExtractConfig:
    """Read a config written by :func:`to_toml` (or a complete recipe)."""
    try:
        return ExtractConfig.from_dict(read_toml(path))
    except ConfigError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ConfigError(f"{path}: {exc}") from exc


def resolve_config(recipe: str | Path | None = None, options: Mapping[str, Any] | None = None,
                   sets: list[str] | tuple[str, ...] = ()) -> ExtractConfig:
    """The config of a command line: a recipe file, then the options given, then ``--set section.key=value``.

    Parameters
    ----------
    recipe : path, optional
        A TOML file in the format of ``run.toml`` (any subset of it).
    options : mapping of str to value, optional
        Flat settings (:func:`flat_settings` names and :data:`PART_ALIASES`); ``None`` values are not given.
        A tuple setting (``filters``) may be given as a comma-separated string.
    sets : list of str
        ``section.key=value`` (or ``section.part.key=value``) overrides; the value is read as TOML.

    Raises
    ------
    ConfigError
        A bad recipe, a malformed ``--set``, an option and a ``--set`` that disagree, or an invalid setting.
    """
    data: dict[str, Any] = copy.deepcopy(read_toml(recipe)) if recipe is not None else {}
    known = flat_settings()
    given: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if value is None:
            continue
        if key in known and typing.get_origin(known[key][2]) is tuple and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        for path, v in _flat_paths({key: value}):
            given[".".join(path)] = (key, v)
            set_path(data, path, v)
    for item in sets:
        path, eq, raw = item.partition("=")
        path = path.strip()
        if not eq or not path:
            raise ConfigError(f"--set {item!r}: expected section.key=value (e.g. bandit.clusters_per_round=8)")
        value = parse_value(raw.strip())
        if path in given and given[path][1] != value:
            flag = "--" + given[path][0].replace("_", "-")
            raise ConfigError(f"{flag} {given[path][1]!r} and --set {path}={value!r} disagree; give one of them")
        set_path(data, path, value)
    return ExtractConfig.from_dict(data)
