"""LLM-as-judge parts: a pair filter (correct and useful?) and a reward (relevant to the target task?).

Both ask the model for one score from 1 to 10 per pair, as structured output (``{"score": n}`` through
:class:`~equal.llm.ResponseFormat`; served backends constrain the answer, the local backend ignores the
format) and read it tolerantly (:func:`parse_score`), so they work with and without a server that honours
the format.

Failures
--------
A *failed request* (the backend returned an error after its retries) raises :class:`~equal.errors.LLMError`
after the completions were added to the ledger: the round is not committed, and a rerun redoes it with the
answered requests served by the :class:`~equal.llm.CachedLLM` the loop wraps the model in. Dropping or
keeping an unrated pair would silently change what the judge decides. An *unparseable* rating (the model
answered, but no score 1-10 can be read) is a property of the pair and the model, stable under reruns: the
filter drops the pair (reason ``judge_unparsed``, see :meth:`JudgeFilter.judge`) and the reward leaves the
pair out of its mean.

Prompts are versioned (:data:`JUDGE_PROMPTS`); the version is a config field, recorded in the run config,
and its text enters the request cache key through the messages.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from equal.errors import ConfigError, LLMError
from equal.extract.prompts import truncate_text
from equal.llm.base import LLM, Completion, GenerationParams, Message, ResponseFormat
from equal.llm.ledger import Ledger
from equal.pipeline.parts import Candidates, Group

__all__ = [
    "FILTER_PROMPT_VERSION",
    "JUDGE_PROMPTS",
    "REWARD_PROMPT_VERSION",
    "SCORE_FORMAT",
    "JudgeFilter",
    "JudgeFilterConfig",
    "JudgeReward",
    "JudgeRewardConfig",
    "JudgeVerdicts",
    "build_filter_messages",
    "build_reward_messages",
    "parse_score",
]

logger = logging.getLogger(__name__)

FILTER_PROMPT_VERSION = "judge-filter-v1"
REWARD_PROMPT_VERSION = "judge-reward-v1"

#: The structured answer both judges ask for.
SCORE_FORMAT = ResponseFormat.from_schema("judge_score", {
    "type": "object",
    "properties": {"score": {"type": "integer", "enum": list(range(1, 11))}},
    "required": ["score"],
    "additionalProperties": False,
})

#: Prompt texts by version: ``(system, user template)``. A wording change needs a new version.
JUDGE_PROMPTS: dict[str, tuple[str, str]] = {
    FILTER_PROMPT_VERSION: (
        "You are a strict teacher grading question-answer pairs written from a document.",
        "Document:\n<<<\n{document}\n>>>\n\n"
        "Question: {question}\nAnswer: {answer}\n\n"
        "Grade the answer from 1 to 10.\n"
        "10: the answer is correct according to the document and fully answers the question.\n"
        "5: the answer is partly correct or incomplete.\n"
        "1: the answer is wrong, empty, a placeholder, off topic, or does not answer the question.\n"
        'Reply with only JSON like {{"score": 4}}.',
    ),
    REWARD_PROMPT_VERSION: (
        "You judge how useful a training example is for a target task.",
        "Examples of the target task:\n\n{examples}\n\n"
        "New training example:\nQuestion: {question}\nAnswer: {answer}\n\n"
        "How useful is the new example for training a model on the target task, from 1 to 10?\n"
        "10: the same kind of task as the examples, with a correct and complete answer.\n"
        "1: unrelated to the target task, or useless.\n"
        'Reply with only JSON like {{"score": 4}}.',
    ),
}

_SCORE_KEYS = ("score", "rating", "grade")
_LABELLED_RE = re.compile(r"(?:score|rating|grade)\W{0,4}(10|[1-9])(?:\.0)?(?!\d)", re.I)
_BARE_RE = re.compile(r"^\W*(10|[1-9])(?:\.0)?\s*(?:/\s*10)?\W*$")
_OBJECT_RE = re.compile(r"\{[^{}]*\}")


def parse_score(text: str | None) -> int | None:
    """Read a 1-10 score from a judge's answer, or None when there is none.

    Tried in order: a JSON object with ``score`` (or ``rating``, ``grade``) holding an integer 1-10 (also
    ``"7"`` or ``7.0``); ``score: 7`` / ``Rating - 7`` anywhere; an answer that is only a number
    (``"7"``, ``"7/10"``). Anything else, or a number outside 1-10, gives None.

    Examples
    --------
    >>> parse_score('{"score": 8}'), parse_score("Score: 3/10"), parse_score("9"), parse_score("great")
    (8, 3, 9, None)
    """
    if not text:
        return None
    for match in _OBJECT_RE.finditer(text):
        try:
            obj = json.loads(match.group(0))
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        for key in _SCORE_KEYS:
            value = obj.get(key)
            if isinstance(value, bool) or value is None:
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if number.is_integer() and 1 <= number <= 10:
                return int(number)
            return None
    m = _LABELLED_RE.search(text) or _BARE_RE.match(text)
    return int(m.group(1)) if m else None


def _check_common(section: str, max_tokens: object, temperature: object, max_chars: tuple[str, object]) -> None:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 4:
        raise ConfigError(f"{section}.max_tokens={max_tokens!r} must be an integer >= 4.")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
        raise ConfigError(f"{section}.temperature={temperature!r} must be a number >= 0.")
    name, value = max_chars
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{section}.{name}={value!r} must be an integer >= 1.")


@dataclass(frozen=True)
class JudgeFilterConfig:
    """Settings of :class:`JudgeFilter`.

    Attributes
    ----------
    threshold : int, default=7
        Lowest score (1-10) kept.
    max_tokens : int, default=16
        Answer budget (``{"score": 10}`` is about 6 tokens).
    temperature : float, default=0.0
        Greedy by default, so a rerun asks the identical request and hits the cache.
    max_doc_chars : int, default=1500
        Character budget of the document in the prompt (the bundled model has a 2k-token context).
    prompt_version : str, default="judge-filter-v1"
        A key of :data:`JUDGE_PROMPTS` for the filter.
    structured : bool, default=True
        Ask for ``{"score": n}`` as structured output (:data:`SCORE_FORMAT`).
    prescreen : bool, default=True
        Drop the pairs that fail the quality rules (:func:`equal.extract.quality.quality_reason` with its
        default :class:`~equal.extract.quality.QualityConfig`) before asking: no request is spent on a stub,
        circular or empty answer, and such pairs are dropped even by a judge too weak to notice them (the
        bundled 135M model gives every pair the same score). Counted as ``judge_prescreen``.
    """

    threshold: int = 7
    max_tokens: int = 16
    temperature: float = 0.0
    max_doc_chars: int = 1500
    prompt_version: str = FILTER_PROMPT_VERSION
    structured: bool = True
    prescreen: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.prescreen, bool):
            raise ConfigError(f"judge_filter.prescreen={self.prescreen!r} must be true or false.")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int) or not 1 <= self.threshold <= 10:
            raise ConfigError(f"judge_filter.threshold={self.threshold!r} must be an integer in 1..10.")
        _check_common("judge_filter", self.max_tokens, self.temperature, ("max_doc_chars", self.max_doc_chars))
        if not self.prompt_version.startswith("judge-filter-") or self.prompt_version not in JUDGE_PROMPTS:
            known = ", ".join(v for v in JUDGE_PROMPTS if v.startswith("judge-filter-"))
            raise ConfigError(f"judge_filter.prompt_version={self.prompt_version!r} must be one of {known}.")
        if not isinstance(self.structured, bool):
            raise ConfigError(f"judge_filter.structured={self.structured!r} must be true or false.")

    def params(self) -> GenerationParams:
        return GenerationParams(max_tokens=self.max_tokens, temperature=float(self.temperature),
                                response_format=SCORE_FORMAT if self.structured else None)


def build_filter_messages(question: str, answer: str, document: str, *, config: JudgeFilterConfig) -> list[Message]:
    """The chat request asking the judge to grade one pair against its document."""
    system, user = JUDGE_PROMPTS[config.prompt_version]
    doc = truncate_text(document, config.max_doc_chars)
    return [{"role": "system", "content": system},
            {"role": "user", "content": user.format(document=doc, question=question.strip(),
                                                    answer=answer.strip())}]


def _ask(llm: LLM, requests: list[list[Message]], params: GenerationParams, ledger: Ledger | None,
         what: str) -> list[int | None]:
    """Send the requests, count them, raise on failures, return the parsed scores."""
    if not requests:
        return []
    out: list[Completion] = list(llm.generate(requests, params))
    if len(out) != len(requests):
        raise LLMError(f"LLM backend {type(llm).__name__} returned {len(out)} completions for "
                       f"{len(requests)} {what} requests.")
    if ledger is not None:
        ledger.add(out)
    failed = [c for c in out if not c.ok]
    if failed:
        raise LLMError(f"{len(failed)} of {len(out)} {what} requests failed (first: {failed[0].error}); "
                       "rerun to retry them (answered ones are cached).")
    return [parse_score(c.text) for c in out]


@dataclass(frozen=True)
class JudgeVerdicts:
    """What :meth:`JudgeFilter.judge` decided for each candidate.

    Attributes
    ----------
    scores : ndarray of shape (n,), float64
        The score 1-10, NaN where none could be read.
    keep : ndarray of shape (n,), bool
    reasons : list of str or None
        None (kept), ``"judge_low"`` (below the threshold) or ``"judge_unparsed"``.
    """

    scores: np.ndarray
    keep: np.ndarray
    reasons: list[str | None]


class JudgeFilter:
    """Pair filter: an LLM grades each pair 1-10 against its document; pairs at or above the threshold stay.

    Parameters
    ----------
    llm : LLM
        The judge; the loop passes a :class:`~equal.llm.CachedLLM`, so a redone round pays nothing.
    config : JudgeFilterConfig, optional
    ledger : Ledger, optional
        Every completion (cached, failed or not) is added to it.

    Notes
    -----
    One request per pair, sent as one batch per round. A pair whose document is not in
    ``candidates.documents`` is graded without one (an empty document), which the prompt's wording makes a
    low grade; the loop always supplies the documents. See the module docstring for failures.
    """

    name = "judge"

    def __init__(self, llm: LLM, config: JudgeFilterConfig | None = None, ledger: Ledger | None = None) -> None:
        self.llm = llm
        self.config = config if config is not None else JudgeFilterConfig()
        self.ledger = ledger

    def __repr__(self) -> str:
        return f"JudgeFilter({self.llm!r}, {self.config!r})"

    def judge(self, candidates: Candidates) -> JudgeVerdicts:
        """Grade every candidate (one batch of requests); see :class:`JudgeVerdicts`.

        Raises
        ------
        LLMError
            When a request failed (see the module docstring).
        """
        from equal.extract.quality import QualityConfig, quality_reason

        quality = QualityConfig()
        pre = [quality_reason(p.question, p.answer, config=quality) if self.config.prescreen else None
               for p in candidates.pairs]
        ask = [i for i, r in enumerate(pre) if r is None]
        requests = []
        for i in ask:
            pair = candidates.pairs[i]
            doc = candidates.documents.get(pair.doc_id)
            requests.append(build_filter_messages(pair.question, pair.answer, doc.text if doc is not None else "",
                                                  config=self.config))
        parsed = _ask(self.llm, requests, self.config.params(), self.ledger, "judge-filter") if requests else []
        scores = np.full(len(candidates), np.nan, dtype=np.float64)
        for i, s in zip(ask, parsed, strict=True):
            scores[i] = np.nan if s is None else float(s)
        keep = np.nan_to_num(scores, nan=0.0) >= self.config.threshold
        reasons: list[str | None] = [
            None if k else ("judge_prescreen" if p is not None else "judge_unparsed" if np.isnan(x) else "judge_low")
            for x, k, p in zip(scores.tolist(), keep.tolist(), pre, strict=True)
        ]
        n_unparsed = sum(r == "judge_unparsed" for r in reasons)
        if n_unparsed:
            logger.info("judge filter: %d of %d ratings unparseable (dropped)", n_unparsed, len(reasons))
        return JudgeVerdicts(scores=scores, keep=keep, reasons=reasons)

    def keep(self, candidates: Candidates) -> np.ndarray:
        """True for the pairs graded at or above ``config.threshold`` (bool, shape (len(candidates),))."""
        return self.judge(candidates).keep

    def add(self, kept: Candidates) -> None:
        """Nothing to index: each pair is graded on its own."""


@dataclass(frozen=True)
class JudgeRewardConfig:
    """Settings of :class:`JudgeReward`.

    Attributes
    ----------
    n_examples : int, default=3
        Target examples shown in every prompt, chosen once with ``seed`` (without replacement).
    seed : int, default=0
    max_example_chars : int, default=400
        Character budget of each target example.
    max_pairs : int or None, default=None
        Score at most this many pairs of a group (the first ones), to bound the cost; None: all.
    max_tokens : int, default=16
    temperature : float, default=0.0
    prompt_version : str, default="judge-reward-v1"
    structured : bool, default=True
    """

    n_examples: int = 3
    seed: int = 0
    max_example_chars: int = 400
    max_pairs: int | None = None
    max_tokens: int = 16
    temperature: float = 0.0
    prompt_version: str = REWARD_PROMPT_VERSION
    structured: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.n_examples, bool) or not isinstance(self.n_examples, int) or self.n_examples < 1:
            raise ConfigError(f"judge_reward.n_examples={self.n_examples!r} must be an integer >= 1.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"judge_reward.seed={self.seed!r} must be an integer >= 0.")
        if self.max_pairs is not None and (isinstance(self.max_pairs, bool) or not isinstance(self.max_pairs, int)
                                           or self.max_pairs < 1):
            raise ConfigError(f"judge_reward.max_pairs={self.max_pairs!r} must be an integer >= 1 or None.")
        _check_common("judge_reward", self.max_tokens, self.temperature,
                      ("max_example_chars", self.max_example_chars))
        if not self.prompt_version.startswith("judge-reward-") or self.prompt_version not in JUDGE_PROMPTS:
            known = ", ".join(v for v in JUDGE_PROMPTS if v.startswith("judge-reward-"))
            raise ConfigError(f"judge_reward.prompt_version={self.prompt_version!r} must be one of {known}.")
        if not isinstance(self.structured, bool):
            raise ConfigError(f"judge_reward.structured={self.structured!r} must be true or false.")

    def params(self) -> GenerationParams:
        return GenerationParams(max_tokens=self.max_tokens, temperature=float(self.temperature),
                                response_format=SCORE_FORMAT if self.structured else None)


def build_reward_messages(question: str, answer: str, examples: Sequence[str], *,
                          config: JudgeRewardConfig) -> list[Message]:
    """The chat request asking how useful one pair is for the target task shown by ``examples``."""
    system, user = JUDGE_PROMPTS[config.prompt_version]
    shown = "\n\n".join(f"Example {i + 1}:\n{truncate_text(t, config.max_example_chars)}"
                        for i, t in enumerate(examples))
    return [{"role": "system", "content": system},
            {"role": "user", "content": user.format(examples=shown, question=question.strip(),
                                                    answer=answer.strip())}]


class JudgeReward:
    """Reward: an LLM scores each new pair of a cluster for relevance to the target task (EQUAL's
    "LLM-scoring" baseline).

    The reward of a group is the mean of its pairs' scores mapped linearly from 1..10 onto [0, 1],
    ``(s - 1) / 9``, so 0 is "unrelated or useless" and 1 is "the target task, done right"; pairs whose
    score cannot be read are left out of the mean. A group without pairs, or without any readable score,
    gets NaN (the loop's empty reward).

    Parameters
    ----------
    llm : LLM
        The judge (the loop passes a :class:`~equal.llm.CachedLLM`).
    target_texts : sequence of str
        The target set as text (e.g. rendered question and answer); ``config.n_examples`` of them, drawn
        once with ``config.seed``, are shown in every prompt, so the reward is a fixed function of a pair.
    config : JudgeRewardConfig, optional
    ledger : Ledger, optional
        Every completion is added to it.
    """

    name = "judge"

    def __init__(self, llm: LLM, target_texts: Sequence[str], config: JudgeRewardConfig | None = None,
                 ledger: Ledger | None = None) -> None:
        texts = [t for t in target_texts if isinstance(t, str) and t.strip()]
        if not texts:
            raise ConfigError("judge_reward: target_texts must hold at least one non-empty text.")
        self.llm = llm
        self.config = config if config is not None else JudgeRewardConfig()
        self.ledger = ledger
        rng = np.random.default_rng(self.config.seed)
        picked = rng.choice(len(texts), size=min(self.config.n_examples, len(texts)), replace=False)
        #: The target examples every prompt shows, in prompt order.
        self.examples: list[str] = [texts[int(i)].strip() for i in picked]

    def __repr__(self) -> str:
        return f"JudgeReward({self.llm!r}, {self.config!r})"

    def pair_scores(self, groups: Sequence[Group]) -> list[np.ndarray]:
        """Per group, the raw 1-10 score of each scored pair (float64, NaN where unreadable)."""
        limit = self.config.max_pairs
        spans: list[tuple[int, int]] = []
        requests: list[list[Message]] = []
        for g in groups:
            pairs = g.pairs if limit is None else g.pairs[:limit]
            start = len(requests)
            requests.extend(build_reward_messages(p.question, p.answer, self.examples, config=self.config)
                            for p in pairs)
            spans.append((start, len(requests)))
        parsed = _ask(self.llm, requests, self.config.params(), self.ledger, "judge-reward")
        flat = np.array([np.nan if s is None else float(s) for s in parsed], dtype=np.float64)
        return [flat[a:b] for a, b in spans]

    def score(self, groups: Sequence[Group]) -> np.ndarray:
        """Reward per group, float64 of shape (len(groups),), in [0, 1] or NaN (see the class docstring).

        Raises
        ------
        LLMError
            When a request failed.
        """
        out = np.full(len(groups), np.nan, dtype=np.float64)
        for i, s in enumerate(self.pair_scores(groups)):
            s = s[~np.isnan(s)]
            if s.size:
                out[i] = float(np.mean((s - 1.0) / 9.0))
            elif len(groups[i].pairs):
                logger.info("judge reward: no readable score for cluster %d (%d pairs)", groups[i].cluster,
                            len(groups[i].pairs))
        return out
