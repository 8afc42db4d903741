"""Iterative kMQ (Yu et al., "Diversify and Conquer", arXiv 2409.11378, Alg. 1) as a real training loop.

Round 1 is kMQ with uniform cluster weights (:func:`equal.select.kmq_iterative_round`, which with uniform
weights draws exactly what ``kmq(..., budget="equal")`` draws for the same seed). After every round but the
last the loop

1. fine-tunes the base model on *everything selected so far* with :func:`equal.train.train` (from the base
   model each round, as the official code retrains on the cumulative subset),
2. generates a response to the prompt of each of that round's samples with the fine-tuned model (greedy,
   ``max_new_tokens``),
3. scores each sample by reward(gold) − reward(generated) with the chosen scorer (higher: the model still has
   more to learn from it):

   - ``embed``: reward(y) = cos(e(y), e(gold)) with the pool's embedder, so S = 1 − cos(e(gen), e(gold));
     the cheapest, no second model.
   - ``ppl``: the paper's perplexity variant S = −log(PPL(x⊕y_gen) / PPL(x⊕y_gold)) = NLL(gold) − NLL(gen),
     mean per-token NLL of the response tokens under the current model.
   - ``judge``: an LLM judge (any :class:`equal.llm.LLM`, wrapped in :class:`equal.llm.CachedLLM` under the
     work directory) rates each response 1–10 (:data:`JUDGE_PROMPT_VERSION`): S = J(gold) − J(gen). A
     rating that cannot be read leaves the sample out of its cluster's mean.

4. reweights the clusters with :func:`equal.select.kmq_reweight` — ``softmax`` (the official code,
   ``selection/iter.py``: w_j = softmax_j(mean S_j), independent of the previous weights; the default,
   because it is what produced the published numbers) or ``paper`` (Eq. 6, w_j ← w_j·s_j / Σ_c s_c), and
5. draws the next round from the rows not selected yet, spread over clusters by the new weights.

Work directory (one writer at a time, :func:`equal.runlock.run_lock`)::

    WORK/config.json            the settings and the pool's fingerprint (another pool or setting is refused)
    WORK/labels.npy             the k-means cluster of every pool row
    WORK/round-R/selection.json the rows drawn in round R, their per-cluster budgets and the weights used
    WORK/round-R/ckpt/          the equal train CKPT of round R (resumes by itself after a kill)
    WORK/round-R/generations.json  the fine-tuned model's responses to the scored samples
    WORK/round-R/round.json     written last: scores, cluster means, the weights after the round
    WORK/judge-cache.sqlite     the judge's answers (never asked twice)
    WORK/result.json            every round, when the loop has finished

Every file is written atomically. A round whose ``round.json`` exists is never recomputed; a round killed
part-way reuses its drawn rows, its training resumes from the trainer's own checkpoints, and its generations
are reused once written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from equal.data.io import atomic_write_json, save_npy
from equal.errors import ConfigError, DataError, LLMError
from equal.train import TrainConfig

__all__ = [
    "JUDGE_PROMPT_VERSION",
    "REWEIGHTS",
    "SCORERS",
    "IterativeKMQConfig",
    "IterativeKMQResult",
    "KMQRound",
    "iterative_kmq",
    "judge_messages",
    "round_sizes",
]

logger = logging.getLogger(__name__)

SCORERS = ("embed", "ppl", "judge")
REWEIGHTS = ("softmax", "paper")
SCORE_ROWS = ("round", "selected")
VERSION = 1

JUDGE_PROMPT_VERSION = "kmq-judge-v1"
_JUDGE_SYSTEM = "You are a strict teacher grading answers to instructions."
_JUDGE_USER = (
    "Instruction:\n<<<\n{prompt}\n>>>\n\nAnswer:\n<<<\n{answer}\n>>>\n\n"
    "Grade the answer from 1 to 10.\n"
    "10: correct, complete and helpful.\n"
    "5: partly correct or incomplete.\n"
    "1: wrong, empty, off topic, or no answer to the instruction.\n"
    'Reply with only JSON like {{"score": 4}}.'
)
_JUDGE_PROMPT_CHARS = 2000  # the bundled judge has a 2k-token context


def _check_int(name: str, value: object, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"kmq_iterative.{name}={value!r} must be an integer >= {lo}.")
    return value


@dataclass(frozen=True)
class IterativeKMQConfig:
    """Settings of :func:`iterative_kmq`.

    Parameters
    ----------
    k : int
        Total rows to select (the data budget b); round R draws ``round_sizes(k, rounds)[R - 1]`` of them.
    rounds : int, default=3
        Rounds N (the paper's choice). 1 is plain kMQ with uniform cluster weights: no training at all.
    n_clusters : int or None, default=None
        k-means clusters; None = ``max(1, round(sqrt(n)))``.
    scorer : {"embed", "ppl", "judge"}, default="embed"
        How a sample is scored (see the module docstring).
    reweight : {"softmax", "paper"}, default="softmax"
        The cluster-weight update (:func:`equal.select.kmq_reweight`); softmax is the official code's rule.
    reweight_temperature : float, default=1.0
        Softmax temperature (the official code uses 1 on raw reward differences).
    score_rows : {"round", "selected"}, default="round"
        Score the round's new samples only, or everything selected so far (the paper's Alg. 1 and the code).
    max_new_tokens : int, default=128
        Generation bound per response (the paper uses 512 with a 7B model; greedy either way).
    gen_batch_size : int, default=8
        Prompts per generation batch.
    sampling : {"softmax", "proportional"}, default="softmax"
        Quality sampling inside a cluster, as in :func:`equal.select.kmq` (only with quality scores).
    quality_temperature : float, default=1.0
        Temperature of that softmax.
    seed : int, default=42
        Seeds the k-means and every round's draws (round 1 exactly as ``kmq`` with this seed).
    train : TrainConfig
        The fine-tuning recipe of every round (``equal train``'s settings).
    judge_max_tokens : int, default=16
        Answer budget of a judge rating.
    """

    k: int
    rounds: int = 3
    n_clusters: int | None = None
    scorer: str = "embed"
    reweight: str = "softmax"
    reweight_temperature: float = 1.0
    score_rows: str = "round"
    max_new_tokens: int = 128
    gen_batch_size: int = 8
    sampling: str = "softmax"
    quality_temperature: float = 1.0
    seed: int = 42
    train: TrainConfig = field(default_factory=TrainConfig)
    judge_max_tokens: int = 16

    def __post_init__(self) -> None:
        _check_int("k", self.k, 1)
        _check_int("rounds", self.rounds, 1)
        if self.rounds > self.k:
            raise ConfigError(f"kmq_iterative.rounds={self.rounds} must be <= k={self.k}: every round draws "
                              "at least one row.")
        if self.n_clusters is not None:
            _check_int("n_clusters", self.n_clusters, 1)
        for name, allowed in (("scorer", SCORERS), ("reweight", REWEIGHTS), ("score_rows", SCORE_ROWS),
                              ("sampling", ("softmax", "proportional"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"kmq_iterative.{name}={getattr(self, name)!r} must be one of "
                                  f"{', '.join(allowed)}.")
        for name in ("reweight_temperature", "quality_temperature"):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value <= 0:
                raise ConfigError(f"kmq_iterative.{name}={value!r} must be a finite number > 0.")
        _check_int("max_new_tokens", self.max_new_tokens, 1)
        _check_int("gen_batch_size", self.gen_batch_size, 1)
        _check_int("judge_max_tokens", self.judge_max_tokens, 4)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"kmq_iterative.seed={self.seed!r} must be an integer.")
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(f"kmq_iterative.train={self.train!r:.60} must be a TrainConfig.")

    def identity(self) -> dict[str, Any]:
        """The settings that decide what is selected (``config.json``; a rerun must match them)."""
        d = dataclasses.asdict(self)
        d["train"] = self.train.identity()
        d.pop("gen_batch_size")  # batching does not change greedy answers beyond float noise
        return d


@dataclass(frozen=True)
class KMQRound:
    """One round of the loop.

    Attributes
    ----------
    round : int
        1-based.
    indices : ndarray of shape (m,), int64
        The rows this round added, grouped by cluster.
    budgets : list of int
        Rows drawn per cluster (length K).
    weights : list of float
        The cluster weights the round was drawn with (uniform in round 1).
    scored_rows : ndarray of int64 or None
        Rows scored after the round (None for the last round, which is not scored).
    scores : ndarray of float64 or None
        Their scores, NaN where a judge rating could not be read.
    generations : list of str or None
        The fine-tuned model's response to each scored row.
    cluster_scores : list of float or None
        Mean score per cluster (None where no row of the cluster was scored).
    weights_after : list of float or None
        The weights the next round is drawn with.
    train : dict or None
        ``steps``, ``records``, ``final_loss``, ``seconds`` and ``ckpt`` of the round's fine-tuning.
    resumed : bool
        The round was read back from the work directory, not computed by this call.
    """

    round: int
    indices: np.ndarray
    budgets: list[int]
    weights: list[float]
    scored_rows: np.ndarray | None = None
    scores: np.ndarray | None = None
    generations: list[str] | None = None
    cluster_scores: list[float | None] | None = None
    weights_after: list[float] | None = None
    train: dict[str, Any] | None = None
    resumed: bool = False

    def to_dict(self, *, details: bool = True) -> dict[str, Any]:
        """JSON-able; ``details=False`` leaves out the per-row generations."""
        d: dict[str, Any] = {
            "round": self.round, "n": int(self.indices.size), "indices": [int(i) for i in self.indices],
            "budgets": list(self.budgets), "weights": list(self.weights),
            "scored_rows": None if self.scored_rows is None else [int(i) for i in self.scored_rows],
            "scores": None if self.scores is None else [None if not np.isfinite(s) else float(s)
                                                        for s in self.scores],
            "cluster_scores": self.cluster_scores, "weights_after": self.weights_after, "train": self.train,
            "resumed": self.resumed,
        }
        if details:
            d["generations"] = self.generations
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, resumed: bool = False) -> KMQRound:
        def arr(v: Any, dtype: Any) -> np.ndarray | None:
            return None if v is None else np.asarray([np.nan if x is None else x for x in v], dtype=dtype)

        return cls(round=int(d["round"]), indices=np.asarray(d["indices"], dtype=np.int64),
                   budgets=list(d["budgets"]), weights=list(d["weights"]),
                   scored_rows=arr(d.get("scored_rows"), np.int64), scores=arr(d.get("scores"), np.float64),
                   generations=d.get("generations"), cluster_scores=d.get("cluster_scores"),
                   weights_after=d.get("weights_after"), train=d.get("train"), resumed=resumed)


@dataclass(frozen=True)
class IterativeKMQResult:
    """What :func:`iterative_kmq` returns.

    Attributes
    ----------
    indices : ndarray of shape (k,), int64
        Every selected row, round by round (each round grouped by cluster).
    rounds : list of KMQRound
    labels : ndarray of shape (n,), int64
        The k-means cluster of every pool row.
    n_clusters : int
    config : IterativeKMQConfig
    work_dir : str or None
        None for ``rounds=1`` (nothing to resume, nothing written).
    """

    indices: np.ndarray
    rounds: list[KMQRound]
    labels: np.ndarray
    n_clusters: int
    config: IterativeKMQConfig
    work_dir: str | None

    def to_dict(self, *, details: bool = False) -> dict[str, Any]:
        """JSON-able summary (per round: allocation, weights, scores; ``details`` adds generations)."""
        return {"k": int(self.indices.size), "n_clusters": self.n_clusters, "rounds": self.config.rounds,
                "scorer": self.config.scorer, "reweight": self.config.reweight, "work_dir": self.work_dir,
                "cluster_sizes": np.bincount(self.labels, minlength=self.n_clusters).tolist(),
                "per_round": [r.to_dict(details=details) for r in self.rounds]}


def round_sizes(k: int, rounds: int) -> list[int]:
    """Rows per round: b/N each, the remainder to the first rounds (``round_sizes(10, 3) == [4, 3, 3]``)."""
    base, extra = divmod(int(k), int(rounds))
    return [base + (1 if r < extra else 0) for r in range(rounds)]


def _round_seed(seed: int, r: int) -> int | np.random.SeedSequence:
    # Round 1 uses the seed itself, so that it draws what kmq draws; later rounds get their own streams.
    return seed if r == 1 else np.random.SeedSequence([seed, r])


def _split(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """The prompt turns and the gold response: everything before the last assistant turn, and that turn."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return [dict(m) for m in messages[:last]], messages[last]["content"]


def _conversations(records: Sequence[Any]) -> list[list[dict[str, str]]]:
    from equal.data.sft import to_messages

    out = []
    for i, record in enumerate(records):
        try:
            msgs = to_messages(record)
        except DataError as exc:
            raise DataError(f"records[{i}]: {exc}", field=exc.field) from None
        if not any(m["role"] == "assistant" for m in msgs) or msgs[0]["role"] == "assistant":
            raise DataError(f"records[{i}]: iterative kMQ needs a prompt and an assistant response",
                            field="messages")
        out.append(msgs)
    return out


def _fingerprint(X: np.ndarray, conversations: list[list[dict[str, str]]],
                 quality: np.ndarray | None) -> str:
    from equal.train import data_sha256

    h = hashlib.sha256()
    h.update(np.ascontiguousarray(X, dtype=np.float32).tobytes())
    h.update(data_sha256(conversations).encode())
    if quality is not None:
        h.update(np.ascontiguousarray(quality, dtype=np.float64).tobytes())
    return h.hexdigest()


# -- the fine-tuned model: generation and response NLL ----------------------------------------------------------


def _load_trained(result: Any) -> tuple[Any, Any, Any]:
    """Tokenizer, model (adapter merged in memory, no folder written) and device of a finished CKPT."""
    import warnings

    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from equal.train import load_tokenizer

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            # deprecation notices of the stack's own calls (peft -> transformers), not the user's
            warnings.simplefilter("ignore", FutureWarning)
            tokenizer = load_tokenizer(result.weights)
            if result.config.method == "lora":
                from peft import PeftModel

                base = AutoModelForCausalLM.from_pretrained(result.base_model_dir, dtype=torch.float32)
                model = PeftModel.from_pretrained(base, result.weights).merge_and_unload()
            else:
                model = AutoModelForCausalLM.from_pretrained(result.weights, dtype=torch.float32)
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
    model.to(dev)
    model.eval()
    return tokenizer, model, dev


def _generate(tokenizer: Any, model: Any, dev: Any, prompts: list[list[dict[str, str]]], *,
              max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy responses, batched by prompt length, left-padded (decoder-only generation)."""
    import torch

    texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    out: list[str] = [""] * len(texts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    eos = model.generation_config.eos_token_id
    eos = eos if eos is not None else tokenizer.eos_token_id
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(dev)
            with torch.inference_mode():
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                     top_p=None, top_k=None, pad_token_id=int(tokenizer.pad_token_id),
                                     eos_token_id=eos)
            new = gen[:, enc["input_ids"].shape[1]:]
            for i, row in zip(idx, new.tolist(), strict=True):
                out[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    finally:
        tokenizer.padding_side = side
    return out


def _response_nll(tokenizer: Any, model: Any, dev: Any, prompts: list[list[dict[str, str]]],
                  responses: list[str]) -> np.ndarray:
    """Mean NLL per response token (the ``equal evaluate`` scoring of :func:`equal.evaluate.score_tokens`)."""
    import torch

    from equal.evaluate import score_tokens

    out = np.zeros(len(prompts), dtype=np.float64)
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        ids, start = score_tokens(tokenizer, prompt, response)
        start = max(1, start)  # the first token has no context to be predicted from
        t = torch.tensor([ids], dtype=torch.long, device=dev)
        with torch.inference_mode():
            logits = model(input_ids=t).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits[start - 1:], t[0, start:], reduction="mean")
        out[i] = float(nll)
    return out


# -- scorers ------------------------------------------------------------------------------------------------------


def _embed_scores(embedder: Any, gold: list[str], generated: list[str]) -> np.ndarray:
    E = np.asarray(embedder.encode(list(gold) + list(generated)), dtype=np.float64)
    E /= np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
    g, y = E[:len(gold)], E[len(gold):]
    return 1.0 - np.einsum("ij,ij->i", g, y)


def judge_messages(prompt: list[dict[str, str]], answer: str) -> list[dict[str, str]]:
    """The judge request rating ``answer`` as a response to ``prompt`` (:data:`JUDGE_PROMPT_VERSION`)."""
    from equal.extract.prompts import truncate_text

    text = "\n\n".join(f"{m['role']}: {m['content']}" for m in prompt)
    return [{"role": "system", "content": _JUDGE_SYSTEM},
            {"role": "user", "content": _JUDGE_USER.format(prompt=truncate_text(text, _JUDGE_PROMPT_CHARS),
                                                           answer=truncate_text(answer.strip(),
                                                                                _JUDGE_PROMPT_CHARS))}]


def _judge_scores(judge: Any, prompts: list[list[dict[str, str]]], gold: list[str], generated: list[str],
                  max_tokens: int) -> np.ndarray:
    from equal.llm import GenerationParams
    from equal.pipeline.judge import SCORE_FORMAT, parse_score

    params = GenerationParams(max_tokens=max_tokens, temperature=0.0, response_format=SCORE_FORMAT)
    requests = [judge_messages(p, a) for p, a in zip(prompts, gold, strict=True)]
    requests += [judge_messages(p, a) for p, a in zip(prompts, generated, strict=True)]
    completions = judge.generate(requests, params)
    failed = [c for c in completions if not c.ok]
    if failed:
        # the answered requests are cached: a rerun asks only for these
        raise LLMError(f"{len(failed)} of {len(requests)} judge requests failed (first: {failed[0].error}); "
                       "rerun to retry them")
    ratings = np.asarray([np.nan if (s := parse_score(c.text)) is None else s for c in completions],
                         dtype=np.float64)
    m = len(prompts)
    return ratings[:m] - ratings[m:]


# -- the loop -------------------------------------------------------------------------------------------------


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _prepare_work(work: Path, ident: dict[str, Any], *, force: bool) -> None:
    path = work / "config.json"
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            stored = None
        if stored != ident:
            if not force:
                a, b = _flat(stored if isinstance(stored, dict) else {}), _flat(ident)
                diff = sorted(key for key in set(a) | set(b) if a.get(key) != b.get(key))
                raise ConfigError(f"--work {work}: holds an iterative kMQ run with other settings or another "
                                  f"pool ({', '.join(diff) or 'unreadable config.json'}); use another folder "
                                  "or --force to start over.")
            for child in work.iterdir():
                if child.name.startswith("round-") or child.name in ("result.json", "labels.npy",
                                                                     "judge-cache.sqlite"):
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
    atomic_write_json(path, ident)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:  # cannot happen with atomic writes, unless edited by hand: recompute it
        logger.warning("%s is not valid JSON; recomputing it", path)
        return None
    return data if isinstance(data, dict) else None


def iterative_kmq(
    records: Sequence[Any],
    X: np.ndarray,
    config: IterativeKMQConfig,
    *,
    work_dir: str | os.PathLike[str] | None = None,
    quality: np.ndarray | None = None,
    embedder: Any = None,
    judge: Any = None,
    force: bool = False,
    on_round: Callable[[KMQRound], None] | None = None,
    on_train_progress: Callable[[Any], None] | None = None,
) -> IterativeKMQResult:
    """Iterative kMQ: ``config.rounds`` rounds of kMQ draws, fine-tuning and cluster reweighting in between.

    Parameters
    ----------
    records : sequence of SFT records
        The pool (messages, ShareGPT or Alpaca dicts, or messages lists), row i embedded as ``X[i]``.
    X : array-like of shape (n, d), float32
        L2-normalised embeddings of the records.
    config : IterativeKMQConfig
    work_dir : str or Path, optional
        The work directory (layout in the module docstring); required for ``rounds > 1``. Rerunning the same
        call resumes it.
    quality : array-like of shape (n,), optional
        Quality scores for the in-cluster sampling (as in :func:`equal.select.kmq`).
    embedder : Embedder, optional
        For ``scorer="embed"``; default the bundled MiniLM with its disk cache. Use the pool's embedder.
    judge : LLM, optional
        For ``scorer="judge"``; default the bundled local model. Wrapped in a :class:`~equal.llm.CachedLLM`
        at ``WORK/judge-cache.sqlite``.
    force : bool, default=False
        Start over when the work directory holds a run with other settings or another pool.
    on_round : callable, optional
        Called with each :class:`KMQRound` once it is committed (also for rounds read back on resume).
    on_train_progress : callable, optional
        Passed to :func:`equal.train.train` as ``on_progress`` (a :class:`~equal.train.TrainProgress` per step).

    Returns
    -------
    IterativeKMQResult

    Raises
    ------
    ConfigError
        ``k`` larger than the pool; ``work_dir`` missing for ``rounds > 1`` or holding another run.
    DataError
        A record without a prompt and an assistant response (``rounds > 1``).
    LLMError
        Judge requests failed after their retries (the round is not committed; a rerun resumes it).
    """
    from equal._validation import check_embeddings
    from equal.select import kmq_iterative_round, kmq_labels

    X = check_embeddings(X, name="X")
    n = X.shape[0]
    if len(records) != n:
        raise ValueError(f"{len(records)} records but {n} embedding rows; they must be aligned.")
    if config.k > n:
        raise ConfigError(f"kmq_iterative.k={config.k} must be <= the pool size n={n}.")
    q = None if quality is None else np.asarray(quality, dtype=np.float64)
    K = config.n_clusters or max(1, round(math.sqrt(n)))
    sizes = round_sizes(config.k, config.rounds)
    labels = kmq_labels(X, K, seed=config.seed)
    draw = {"n_clusters": K, "quality": q, "sampling": config.sampling, "temperature": config.quality_temperature}

    if config.rounds == 1:
        sel = kmq_iterative_round(labels, config.k, seed=config.seed, **draw)
        rd = KMQRound(1, sel.indices, list(sel.params["budgets"]), list(sel.params["weights"]))
        if on_round is not None:
            on_round(rd)
        return IterativeKMQResult(sel.indices, [rd], labels, K, config, None)
    if work_dir is None:
        raise ConfigError("kmq_iterative: rounds > 1 needs a work directory (it trains and keeps state).")

    from equal.runlock import remove_stale_temps, run_lock

    conversations = _conversations(records)
    work = Path(work_dir)
    ident = {"version": VERSION, "config": config.identity(), "n": n, "n_clusters": K,
             "pool_sha256": _fingerprint(X, conversations, q)}
    done_rounds: list[KMQRound] = []
    with run_lock(work, "equal select --method kmq-iterative"):
        remove_stale_temps(work)
        _prepare_work(work, ident, force=force)
        save_npy(work / "labels.npy", labels)
        weights: np.ndarray | None = None
        selected = np.zeros(0, dtype=np.int64)
        for r in range(1, config.rounds + 1):
            rdir = work / f"round-{r}"
            stored = _read_json(rdir / "round.json")
            if stored is not None:
                rd = KMQRound.from_dict(stored, resumed=True)
                logger.info("round %d: already done, read back", r)
            else:
                rd = _run_round(r, rdir, config, conversations, records, labels, K, sizes, weights, selected,
                                draw, embedder=embedder, judge=judge, work=work, on_progress=on_train_progress)
                atomic_write_json(rdir / "round.json", rd.to_dict(details=True))  # last: marks the round done
            done_rounds.append(rd)
            selected = np.concatenate([selected, rd.indices])
            weights = None if rd.weights_after is None else np.asarray(rd.weights_after, dtype=np.float64)
            if on_round is not None:
                on_round(rd)
        result = IterativeKMQResult(selected, done_rounds, labels, K, config, str(work))
        atomic_write_json(work / "result.json", result.to_dict(details=False))
    return result


def _run_round(r: int, rdir: Path, config: IterativeKMQConfig, conversations: list[list[dict[str, str]]],
               records: Sequence[Any], labels: np.ndarray, K: int, sizes: list[int], weights: np.ndarray | None,
               selected: np.ndarray, draw: dict[str, Any], *, embedder: Any, judge: Any,
               work: Path, on_progress: Callable[[Any], None] | None) -> KMQRound:
    """Draw round ``r``, and unless it is the last: fine-tune, generate, score and reweight."""
    from equal._threads import torch_threads
    from equal.select import kmq_iterative_round, kmq_reweight
    from equal.train import train

    rdir.mkdir(parents=True, exist_ok=True)
    sel_path = rdir / "selection.json"
    sel_stored = _read_json(sel_path)
    if sel_stored is None:
        sel = kmq_iterative_round(labels, sizes[r - 1], weights, selected, seed=_round_seed(config.seed, r),
                                  **draw)
        sel_stored = {"indices": [int(i) for i in sel.indices], "budgets": list(sel.params["budgets"]),
                      "weights": list(sel.params["weights"])}
        atomic_write_json(sel_path, sel_stored)
    new = np.asarray(sel_stored["indices"], dtype=np.int64)
    logger.info("round %d: %d rows drawn, budgets %s", r, new.size, sel_stored["budgets"])
    rd = KMQRound(r, new, list(sel_stored["budgets"]), list(sel_stored["weights"]))
    if r == config.rounds:
        return rd

    upto = np.concatenate([selected, new])
    tr = train([records[int(i)] for i in upto], rdir / "ckpt", config.train, on_progress=on_progress)
    rows = new if config.score_rows == "round" else upto
    prompts, gold = zip(*(_split(conversations[int(i)]) for i in rows), strict=True)
    prompts_l, gold_l = list(prompts), list(gold)
    gen_path = rdir / "generations.json"
    gen_stored = _read_json(gen_path)
    model = None
    if gen_stored is not None and gen_stored.get("rows") == [int(i) for i in rows]:
        generations = list(gen_stored["texts"])
    else:
        with torch_threads(config.train.threads):
            model = _load_trained(tr)
            generations = _generate(*model, prompts_l, max_new_tokens=config.max_new_tokens,
                                    batch_size=config.gen_batch_size)
        atomic_write_json(gen_path, {"rows": [int(i) for i in rows], "texts": generations})

    if config.scorer == "embed":
        if embedder is None:
            from equal.embed import CachedEmbedder, get_embedder

            embedder = CachedEmbedder(get_embedder(None))
        scores = _embed_scores(embedder, gold_l, generations)
    elif config.scorer == "ppl":
        with torch_threads(config.train.threads):
            model = model or _load_trained(tr)
            scores = _response_nll(*model, prompts_l, gold_l) - _response_nll(*model, prompts_l, generations)
    else:
        from equal.llm import CachedLLM, get_llm

        base = judge if judge is not None else get_llm("local")
        with CachedLLM(base, work / "judge-cache.sqlite") as cached:
            scores = _judge_scores(cached, prompts_l, gold_l, generations, config.judge_max_tokens)
    del model

    ok = np.isfinite(scores)
    w_prev = np.full(K, 1.0 / K) if weights is None else weights
    w_after = kmq_reweight(w_prev, labels, rows[ok], scores[ok], rule=config.reweight,
                           temperature=config.reweight_temperature)
    cl = labels[rows[ok]]
    count = np.bincount(cl, minlength=K)
    total = np.bincount(cl, weights=scores[ok], minlength=K)
    cluster_scores = [float(total[j] / count[j]) if count[j] else None for j in range(K)]
    train_info = {"steps": tr.steps, "records": int(upto.size), "final_loss": tr.final_loss,
                  "seconds": tr.seconds, "ckpt": tr.out}
    logger.info("round %d: %d rows scored (%s), weights -> %s", r, int(ok.sum()), config.scorer,
                np.round(w_after, 4).tolist())
    return dataclasses.replace(rd, scored_rows=rows, scores=scores, generations=generations,
                               cluster_scores=cluster_scores, weights_after=[float(w) for w in w_after],
                               train=train_info)
