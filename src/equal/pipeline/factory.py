"""Builds the parts of an extraction run from the config's sections, through the registries.

Nothing here decides anything a part decides; the factory only maps settings to constructors:
``bandit`` -> the policy, ``sampler`` -> the document sampler, ``reward`` -> the reward, ``filters`` ->
the filters, ``extract`` and ``llm`` -> the extractor and its cached LLM.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from equal.config import ExtractConfig
from equal.llm import Ledger
from equal.pipeline.registry import FILTERS, POLICIES, REWARDS, SAMPLERS, PartContext
from equal.pipeline.rundir import RunDir
from equal.pipeline.sampler import ClusterSampler, CorpusOrder
from equal.pipeline.setup import Inputs

__all__ = ["LLMSource", "Parts", "build_llm", "build_parts"]

logger = logging.getLogger(__name__)


def build_llm(config: ExtractConfig) -> Any:
    """The backend ``config.llm`` names, without a cache (nothing is loaded or sent yet)."""
    from equal.llm import get_llm

    c = config.llm
    if c.llm == "openai":
        from equal._redact import resolve_url

        options = {"model": c.model, "concurrency": c.concurrency, "deadline_s": c.deadline_s,
                   "tokenizer": c.tokenizer}
        if config.run.ray:  # a pool of endpoints serving one model: base_url "URL1,URL2,..."
            from equal.distributed import RayLLM

            urls = [resolve_url(u.strip()) for u in (c.base_url or "").split(",") if u.strip()]
            return RayLLM("openai", base_urls=urls or None, actors=config.run.ray_actors, **options)
        return get_llm("openai", base_url=resolve_url(c.base_url), **options)
    from equal.llm import local_backend

    # llama.cpp answers one request at a time; batch_size is the transformers engine's
    engine = local_backend(c.model, c.backend)
    kw: dict[str, Any] = {"threads": c.threads}
    if engine == "transformers":
        kw["batch_size"] = c.batch_size
    if c.model:
        kw["model_path"] = c.model
    if config.run.ray:  # one engine per Ray actor, its threads those the actor holds
        from equal.distributed import RayLLM

        return RayLLM("local", actors=config.run.ray_actors, backend=engine, **kw)
    return get_llm("local", backend=engine, **kw)


class LLMSource:
    """The run's LLM, built on first use: the given backend or the configured one, behind the run's cache.

    Every request goes through :class:`~equal.llm.CachedLLM` on ``RUN/llm_cache.sqlite`` (a backend that is
    already a ``CachedLLM`` is used as it is), so no request is paid for twice.
    """

    def __init__(self, config: ExtractConfig, run: RunDir, llm: Any = None) -> None:
        self.config, self.run, self._given = config, run, llm
        self._llm: Any = None

    @property
    def built(self) -> Any:
        """The LLM if it was built, else None."""
        return self._llm

    def __call__(self) -> Any:
        if self._llm is None:
            from equal.llm import CachedLLM

            base = self._given if self._given is not None else build_llm(self.config)
            self._llm = base if isinstance(base, CachedLLM) else CachedLLM(base, self.run.llm_cache)
        return self._llm

    def warm_up(self) -> None:
        """Load a local model in a background thread while the corpus is embedded.

        Dequantising the bundled GGUF the first time is mostly single-threaded Python and numpy work, the
        embedding mostly torch kernels that release the GIL, so on a cold machine the two overlap well. The
        first ``generate`` waits for the thread (``LocalLLM.load`` is thread-safe); a failure here is only
        logged, because that ``generate`` loads again and raises it where it can be reported.
        """
        base = getattr(self(), "llm", None)
        if not callable(getattr(base, "load", None)):
            return

        def load() -> None:
            try:
                base.load()
            except Exception:
                logger.debug("background model load failed; retried on first use", exc_info=True)

        threading.Thread(target=load, name="equal-llm-warm-up", daemon=True).start()


@dataclass
class Parts:
    """The parts of one run, as :class:`~equal.pipeline.loop.ExtractionLoop` takes them."""

    extractor: Any
    sampler: ClusterSampler | CorpusOrder
    policy: Any
    reward: Any
    filters: list[Any]


def _extractor(config: ExtractConfig, llm: LLMSource | Callable[[], Any]) -> Any:
    if config.extract.extractor == "rules":
        from equal.extract import RuleExtractor

        return RuleExtractor()
    from equal.extract import LLMExtractor
    from equal.extract.prompts import load_prompt_template, select_examples
    from equal.llm import GenerationParams

    params = GenerationParams(max_tokens=config.llm.max_tokens, temperature=config.llm.temperature,
                              seed=config.run.seed)
    e = config.extract
    template = load_prompt_template(e.prompt_template, need_examples=e.few_shot > 0) if e.prompt_template else None
    examples: list[str] = []
    if e.few_shot:
        from equal.pipeline.setup import read_target

        examples = select_examples(read_target(config.data), e.few_shot, seed=config.run.seed)
    return LLMExtractor(llm(), params=params, max_pairs=e.max_pairs, refine=e.refine,
                        prompt_style=config.resolved_prompt_style, structured=e.structured, template=template,
                        examples=examples)


def _policy(config: ExtractConfig, ctx: PartContext) -> Any:
    from equal.pipeline.policies import UniformConfig, build_policy

    if config.run.strategy == "equal":
        name = config.bandit.policy
        return POLICIES[name].builder()(config.part_config("policy"), ctx, name=name,
                                        neighbor_credit=config.bandit.neighbor_credit)
    if config.run.strategy == "uniform-clusters":  # the baseline: uniform picks, no neighbour credit
        return build_policy(UniformConfig(), ctx, name="uniform", neighbor_credit=False)
    return None


def build_parts(config: ExtractConfig, inputs: Inputs, *, llm: LLMSource, ledger: Ledger,
                need_extractor: bool = True) -> Parts:
    """Every part of the run, from ``config`` (the extractor only when ``need_extractor``)."""
    ctx = PartContext(seed=config.run.seed, n_clusters=inputs.n_clusters, neighbors=inputs.neighbors,
                      target_texts=inputs.target_texts, target_emb=inputs.target_emb, llm=llm, ledger=ledger,
                      run_dir=getattr(llm, "run", None))
    policy = _policy(config, ctx)
    if policy is not None:
        sampler: ClusterSampler | CorpusOrder = SAMPLERS[config.sampler.sampler].builder()(
            config.sampler, ctx, labels=inputs.labels)  # type: ignore[call-arg]
        reward = REWARDS[config.reward.reward].builder()(config.part_config("reward"), ctx)
    else:
        sampler = CorpusOrder(len(inputs.docs), shuffle=config.run.strategy == "random", seed=config.run.seed)
        reward = None
    filters = [FILTERS[name].builder()(cfg, ctx) for name, cfg in config.filter_configs()]
    extractor = _extractor(config, llm) if need_extractor else None
    return Parts(extractor=extractor, sampler=sampler, policy=policy, reward=reward, filters=filters)
