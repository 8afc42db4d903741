"""Registries of the extraction loop's parts: name -> the part's config class and builder.

A new part (a reward, a filter, a policy, a sampler) is one new entry here: its frozen config dataclass
(validated in ``__post_init__``) and a builder ``build(config, ctx) -> part`` that gets the shared
:class:`PartContext`. Both are given as ``"module:attribute"`` strings and imported only when the part is
used, so a part whose module or optional dependency is missing costs nothing until it is chosen.

The settings of a chosen part live in its section's sub-table of the config (``[filters.near]``,
``[bandit.ucb]``); :func:`resolve_params` checks them against the config class and fills in defaults.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from equal.errors import ConfigError

__all__ = ["FILTERS", "POLICIES", "REWARDS", "SAMPLERS", "PartContext", "PartSpec", "part_config",
           "resolve_params"]


@dataclass(frozen=True)
class PartSpec:
    """One registered part.

    Attributes
    ----------
    kind : {"policy", "reward", "filter", "sampler"}
    name : str
        Registry name (the value of ``bandit.policy``, ``reward.reward``, an entry of ``filters.filters``).
    config : str
        ``"module:Class"`` of the part's frozen config dataclass.
    build : str
        ``"module:function"`` with signature ``build(config, ctx: PartContext) -> part``.
    neighbors : bool
        Policies only: whether the policy takes neighbour credit.
    """

    kind: str
    name: str
    config: str
    build: str
    neighbors: bool = False

    def config_class(self) -> type:
        return _load(self.config)

    def builder(self) -> Callable[[Any, PartContext], Any]:
        return _load(self.build)  # type: ignore[no-any-return]


@dataclass
class PartContext:
    """What builders may need: the run's fixed inputs, its seed, an LLM on demand and the shared ledger.

    Attributes
    ----------
    seed : int
    n_clusters : int
    neighbors : list of ndarray, or None
        Each cluster's neighbours (itself included), from the cluster graph.
    target_texts : list of str
    target_emb : ndarray of shape (m, d), float32
    llm : callable returning an LLM, or None
        Builds (once) the run's cached LLM; parts that call an LLM use it with ``ledger``.
    ledger : equal.llm.Ledger, or None
        The run's ledger; a part that calls an LLM adds its completions to it.
    run_dir : RunDir, or None
        The run directory, for parts that keep files of their own (``RUN/influence/``) or read the run's
        setup (``RUN/embeddings/cluster_distances.npy``).
    """

    seed: int
    n_clusters: int = 0
    neighbors: list[Any] | None = None
    target_texts: list[str] = dataclasses.field(default_factory=list)
    target_emb: Any = None
    llm: Callable[[], Any] | None = None
    ledger: Any = None
    run_dir: Any = None


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _spec(kind: str, name: str, config: str, build: str, **kw: Any) -> tuple[str, PartSpec]:
    return name, PartSpec(kind, name, config, build, **kw)


_P = "equal.pipeline.policies"
POLICIES: dict[str, PartSpec] = dict([
    _spec("policy", "ucb", f"{_P}:UCBConfig", f"{_P}:build_policy", neighbors=True),
    _spec("policy", "exp3", f"{_P}:EXP3Config", f"{_P}:build_policy", neighbors=False),
    _spec("policy", "thompson", f"{_P}:ThompsonConfig", f"{_P}:build_policy", neighbors=True),
    _spec("policy", "epsilon-greedy", f"{_P}:EpsilonGreedyConfig", f"{_P}:build_policy", neighbors=True),
    _spec("policy", "uniform", f"{_P}:UniformConfig", f"{_P}:build_policy", neighbors=True),
])
REWARDS: dict[str, PartSpec] = dict([
    _spec("reward", "ot", "equal.pipeline.rewards:OTRewardConfig", "equal.pipeline.rewards:build_ot"),
    _spec("reward", "judge", "equal.pipeline.judge:JudgeRewardConfig", "equal.pipeline.rewards:build_judge"),
    _spec("reward", "influence", "equal.pipeline.influence:InfluenceRewardConfig",
          "equal.pipeline.influence:build_influence"),
])
_F = "equal.pipeline.filters"
FILTERS: dict[str, PartSpec] = dict([
    _spec("filter", "exact", f"{_F}:ExactConfig", f"{_F}:build_exact"),
    _spec("filter", "near", f"{_F}:NearConfig", f"{_F}:build_near"),
    _spec("filter", "decontam", f"{_F}:DecontamConfig", f"{_F}:build_decontam"),
    _spec("filter", "quality", "equal.extract.quality:QualityConfig", f"{_F}:build_quality"),
    _spec("filter", "judge", "equal.pipeline.judge:JudgeFilterConfig", f"{_F}:build_judge"),
])
SAMPLERS: dict[str, PartSpec] = dict([
    _spec("sampler", "cluster", "equal.config:SamplerConfig", "equal.pipeline.sampler:build_sampler"),
])
_KINDS = {"policy": POLICIES, "reward": REWARDS, "filter": FILTERS, "sampler": SAMPLERS}


def spec(kind: str, name: str) -> PartSpec:
    """The registered part ``name`` of ``kind``; ConfigError listing the known names otherwise."""
    table = _KINDS[kind]
    if name not in table:
        raise ConfigError(f"unknown {kind} {name!r} (known: {', '.join(table)})")
    return table[name]


def part_config(kind: str, name: str, params: Mapping[str, Any]) -> Any:
    """Build the config object of part ``name`` from its settings (ConfigError naming the bad one)."""
    entry = spec(kind, name)
    try:
        cls = entry.config_class()
    except ImportError as exc:
        raise ConfigError(f"{kind} {name!r} is not available: {exc}") from exc
    try:
        return cls(**dict(params))
    except TypeError as exc:
        known = ", ".join(f.name for f in dataclasses.fields(cls)) or "none"
        unknown = sorted(set(params) - {f.name for f in dataclasses.fields(cls)})
        raise ConfigError(f"unknown setting(s) {', '.join(unknown) or exc} (known: {known})") from None
    except ValueError as exc:  # ConfigError is a ValueError too
        raise ConfigError(str(exc)) from None


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def resolve_params(kind: str, section: str, chosen: Sequence[str],
                   params: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Check the settings of the ``chosen`` parts of a section; return every setting of each, defaults filled.

    Settings given for a part that is not chosen are refused: they would change nothing but the config's
    fingerprint, and usually mean the wrong part was chosen.
    """
    field_name = {"policy": "policy", "reward": "reward", "filter": "filters"}[kind]
    extra = sorted(set(params) - set(chosen))
    if extra:
        raise ConfigError(
            f"{section}.{extra[0]}: settings given for a {kind} that is not chosen "
            f"({section}.{field_name}={list(chosen) if kind == 'filter' else chosen[0]!r})"
        )
    out: dict[str, dict[str, Any]] = {}
    for name in chosen:
        try:
            cfg = part_config(kind, name, params.get(name, {}))
        except ConfigError as exc:
            where = f"{section}.{name}" if name in params else f"{section}.{field_name}"
            raise ConfigError(f"{where}: {exc}") from None
        out[name] = {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    return out
