"""LEAD (Lin et al., 2025): choose what to train on *while* training, from the training forward pass itself.

``equal train DATA --select lead --budget N`` clusters the pool (k-means on equal's embeddings), and then
repeats one *iteration* until ``N`` samples have been trained:

1. an EXP3 bandit over the clusters (:class:`equal.bandit.EXP3`, γ = 0.1, rewards rescaled to [−1, 1] as in
   LEAD's ``exp3.py``) draws one cluster ``c``;
2. the ``samples_per_iter`` samples of ``c`` with the highest utility (used fewer than ``max_uses`` times, LEAD's
   cap of 4) are trained for one pass with the ``equal train`` trainer (TRL's ``SFTTrainer``);
3. each trained sample's *instance uncertainty* IU (mean cross-entropy of its response tokens) is read from the
   per-token log-probabilities of that very training forward pass (a forward hook on the model; no second pass),
   and its utility becomes the *instance-level dynamic uncertainty* (:func:`idu_update`)

   .. math::

       U_t(x) = b\\,U_{t-1}(x) + (1 - b)\\,\\big[\\mathrm{IU}_t(x) + \\Delta L'_t\\big],\\qquad
       \\Delta L'_t = -\\eta_t\\big[\\beta^2 \\delta_{c} + (1-\\beta)^2 \\delta_{t-1}
                     + 2\\beta(1-\\beta)\\sqrt{\\delta_{c}\\,\\delta_{t-1}}\\cos\\varphi\\big]

   with ``b`` the smoothing, ``η_t`` the learning rate, ``δ_{t−1}`` the utility change of the previous iteration,
   ``δ_c`` that of the first iteration that trained cluster ``c``, ``φ`` the angle between the parameter updates
   of those two iterations and LEAD's optimal ``β`` (:func:`optimal_beta`); a cluster trained for the first time
   gets ``ΔL' = −η δ_{t−1}`` (LEAD's code);
4. the cluster's reward is its *utility gain*: the mean drop ``U_{t−1}(x) − U_t(x)`` of the samples it just
   trained (:func:`lead_reward`), i.e. how much training on it lowered what is left to learn there.

Where equal differs from LEAD's released code (``src/online/run_lead.py``, read at commit cbb922f)
--------------------------------------------------------------------------------------------------
- **Reward.** The code rewards the bandit with ``current_reward / len(selected)`` where ``current_reward`` is set
  to 0 and never incremented: every reward is 0, so after normalisation EXP3 never moves from uniform. equal
  implements the intended reward above; its rewards are not all zero (tested).
- **δ (the code's ``theta``).** The code sets ``δ = mean(approximated loss) − mean(epoch loss)`` with the epoch loss
  undefined (``epoch_loss`` is never assigned) and the approximated loss built from δ itself, so from δ = 0 it
  stays 0. equal measures it: ``δ_t = mean(IU_last(x) − IU_t(x)) / η_t`` over the trained samples, the drop of
  their loss since it was last measured per unit learning rate (:func:`utility_change`), so ``η δ`` is back in
  loss units.
- **cos φ.** The code takes the cosine of two *scalars* (L2 norms of the last layer's LoRA changes), which is
  always ±1; equal takes it between the two change *vectors* (the same last-layer LoRA parameters).
- **Smoothing.** The code parses ``--b`` (0.1), sets ``gamma = 1 − b`` and never uses it (``U_t = IU_t + ΔL'``,
  i.e. ``b = 0``); equal applies the exponential smoothing the paper describes (``smoothing=0`` is the code).
- **Negative δ.** The code's ``sqrt(δ_c δ_{t−1})`` fails when a δ is negative (a loss that rose); equal uses
  ``sqrt(max(δ_c, 0) max(δ_{t−1}, 0))``, the first-order reading of δ as a squared gradient norm.
- **Clusters.** LEAD clusters by difficulty (k-means on 1-D IFD scores, K = 7) × source task; equal clusters the
  records' embeddings with k-means (K = 7 by default), or (``cluster_by="difficulty"``) the base model's IU with
  1-D k-means, without the task split.
- **Learning rate.** LEAD decays it as ``0.995^(step // 8)``; equal keeps ``equal train``'s linear decay, over the
  budget: ``η = lr · (1 − trained / budget)`` at each optimizer step, so it reaches 0 exactly at the budget
  however the iterations split it.
- **Budget.** LEAD stops at a number of *unique* samples; equal's budget counts trained samples (a sample trained
  twice counts twice), the quantity a random baseline is compared at.

CKPT layout (besides ``equal train``'s ``train.json``, ``adapter/`` or ``model/``, ``report.html``)::

    CKPT/lead/state.json          iteration, utilities, use counts, δ's, bandit state (committed last, atomically)
    CKPT/lead/iterations.jsonl    one line per iteration: cluster, p, samples (row indices), their IU, β, ΔL', δ,
                                  reward, normalised reward
    CKPT/lead/iter-NNNNN/         trainer state after iteration N: weights, optimizer, RNG, update directions
    CKPT/lead/clusters.json       cluster of every record

A run killed at any point (``kill -9`` included) resumes from its last committed iteration with the same call.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from equal._threads import torch_threads
from equal.data.io import atomic_write_json, atomic_write_text
from equal.errors import ConfigError, DataError
from equal.runlock import remove_stale_temps, run_lock
from equal.train._config import TrainConfig, TrainProgress, TrainResult
from equal.train._data import SFTDataset, build_dataset, read_examples

__all__ = [
    "CLUSTER_BY",
    "IDUUpdate",
    "LeadConfig",
    "LeadResult",
    "difficulty_clusters",
    "idu_update",
    "lead_reward",
    "optimal_beta",
    "per_sample_ce",
    "train_lead",
    "utility_change",
]

logger = logging.getLogger(__name__)

CLUSTER_BY = ("kmeans", "difficulty")
_STATE_VERSION = 1
_ITER_RE = re.compile(r"iter-(\d+)")


def _lead_int(name: str, value: object, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"lead.{name}={value!r} must be an integer >= {lo}.")
    return value


def _lead_float(name: str, value: object, lo: float, hi: float, *, lo_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < lo or value > hi or (lo_open and value == lo):  # type: ignore[operator]
        rule = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise ConfigError(f"lead.{name}={value!r} must be a number in {rule}.")
    return float(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LeadConfig:
    """Settings of LEAD's in-training selection (the training itself is a :class:`TrainConfig`).

    Parameters
    ----------
    budget : int
        Samples to train, counted with repeats (a sample trained twice counts twice); the run stops there.
    n_clusters : int, default=7
        k-means clusters of the pool = bandit arms (LEAD: K = 7 difficulty clusters).
    samples_per_iter : int, default=32
        Top-utility samples of the drawn cluster trained per iteration (fewer when the cluster or the budget
        has fewer left). A multiple of ``batch_size * grad_accum`` keeps every optimizer step full.
    smoothing : float, default=0.1
        ``b`` of the exponential smoothing of the utility (LEAD's ``--b``), in [0, 1); 0 is LEAD's code.
    gamma : float, default=0.1
        EXP3 exploration rate (LEAD's ``--beta``), in (0, 1].
    max_uses : int, default=4
        A sample is trained at most this many times (LEAD's cap).
    cluster_by : {"kmeans", "difficulty"}, default="kmeans"
        How the pool is clustered: k-means on the records' embeddings, or LEAD's difficulty clusters
        (:func:`difficulty_clusters` of the base model's IU; LEAD uses IFD and splits them further by source task).
    embedder : str or None, default=None
        Embedder of the records for k-means (None: equal's default, the bundled all-MiniLM-L6-v2); embeddings
        are cached on disk.
    """

    budget: int
    n_clusters: int = 7
    samples_per_iter: int = 32
    smoothing: float = 0.1
    gamma: float = 0.1
    max_uses: int = 4
    cluster_by: str = "kmeans"
    embedder: str | None = None

    def __post_init__(self) -> None:
        _lead_int("budget", self.budget, 1)
        _lead_int("n_clusters", self.n_clusters, 1)
        _lead_int("samples_per_iter", self.samples_per_iter, 1)
        _lead_float("smoothing", self.smoothing, 0.0, 1.0)
        if self.smoothing == 1.0:
            raise ConfigError("lead.smoothing=1.0 must be < 1: the utility would never change.")
        _lead_float("gamma", self.gamma, 0.0, 1.0, lo_open=True)
        _lead_int("max_uses", self.max_uses, 1)
        if self.cluster_by not in CLUSTER_BY:
            raise ConfigError(f"lead.cluster_by={self.cluster_by!r} must be one of {', '.join(CLUSTER_BY)}.")
        if self.embedder is not None and (not isinstance(self.embedder, str) or not self.embedder.strip()):
            raise ConfigError(f"lead.embedder={self.embedder!r} must be an embedder name or None.")

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-serialisable."""
        return dataclasses.asdict(self)


# -- the pure parts ------------------------------------------------------------------------------------------


def optimal_beta(delta_first: float, delta_prev: float, cos: float) -> float:
    """LEAD's optimal mixing weight of the two utility changes.

    ``β* = (δ_{t−1} − a) / (δ_c + δ_{t−1} − 2a)`` with ``a = sqrt(δ_c⁺ δ_{t−1}⁺) cos φ`` (``x⁺ = max(x, 0)``),
    the stationary point of ``β² δ_c + (1 − β)² δ_{t−1} + 2 β (1 − β) a``; 0 when the denominator is 0, as in
    LEAD's code. Not clipped to [0, 1] (neither is LEAD's).

    Parameters
    ----------
    delta_first : float
        ``δ_c``: the utility change of the first iteration that trained the cluster.
    delta_prev : float
        ``δ_{t−1}``: the utility change of the previous iteration.
    cos : float
        ``cos φ`` between the parameter updates of those two iterations.

    Returns
    -------
    float
    """
    a = math.sqrt(max(delta_first, 0.0) * max(delta_prev, 0.0)) * cos
    den = delta_first + delta_prev - 2.0 * a
    return (delta_prev - a) / den if den != 0 else 0.0


@dataclass(frozen=True)
class IDUUpdate:
    """One iteration's utility update (:func:`idu_update`).

    Attributes
    ----------
    utility : ndarray of shape (m,), float64
        New utilities of the trained samples.
    loss_change : float
        ``ΔL'``, the estimated loss change added to every trained sample's IU.
    beta : float or None
        LEAD's ``β`` (None for a cluster trained for the first time).
    """

    utility: np.ndarray
    loss_change: float
    beta: float | None


def idu_update(
    utility: Sequence[float] | np.ndarray,
    iu: Sequence[float] | np.ndarray,
    *,
    lr: float,
    smoothing: float,
    delta_prev: float,
    delta_first: float | None = None,
    cos: float = 1.0,
) -> IDUUpdate:
    """Instance-level dynamic uncertainty of the samples trained in one iteration (LEAD's IDU).

    .. math::

        U_t = b\\,U_{t-1} + (1-b)\\,(\\mathrm{IU}_t + \\Delta L'),\\quad
        \\Delta L' = -\\eta\\,[\\beta^2\\delta_c + (1-\\beta)^2\\delta_{t-1} + 2\\beta(1-\\beta)
                    \\sqrt{\\delta_c^+\\delta_{t-1}^+}\\cos\\varphi]

    with ``β`` from :func:`optimal_beta`; for a cluster never trained before (``delta_first=None``)
    ``ΔL' = −η δ_{t−1}``.

    Parameters
    ----------
    utility : array-like of shape (m,)
        ``U_{t−1}`` of the trained samples.
    iu : array-like of shape (m,)
        ``IU_t``: their mean response-token cross-entropy in this iteration's training forward pass.
    lr : float
        ``η``, the learning rate of the iteration.
    smoothing : float
        ``b`` in [0, 1).
    delta_prev : float
        ``δ_{t−1}`` (0 before any iteration).
    delta_first : float or None, default=None
        ``δ_c`` of the cluster, None when it has not been trained yet.
    cos : float, default=1.0
        ``cos φ`` between the update of the cluster's first iteration and the previous one.

    Returns
    -------
    IDUUpdate
    """
    u = np.asarray(utility, dtype=np.float64)
    x = np.asarray(iu, dtype=np.float64)
    if u.shape != x.shape or u.ndim != 1:
        raise ValueError(f"utility and iu must be 1-D of the same shape; got {u.shape} and {x.shape}.")
    if delta_first is None:
        beta = None
        change = -lr * delta_prev
    else:
        beta = optimal_beta(delta_first, delta_prev, cos)
        cross = math.sqrt(max(delta_first, 0.0) * max(delta_prev, 0.0)) * cos
        change = -lr * (beta**2 * delta_first + (1 - beta) ** 2 * delta_prev + 2 * beta * (1 - beta) * cross)
    return IDUUpdate(utility=smoothing * u + (1.0 - smoothing) * (x + change), loss_change=float(change), beta=beta)


def utility_change(previous_iu: Sequence[float] | np.ndarray, iu: Sequence[float] | np.ndarray, lr: float) -> float:
    """``δ_t = mean(IU_last − IU_t) / η``: how much the trained samples' loss fell since last measured, per unit lr.

    Parameters
    ----------
    previous_iu : array-like of shape (m,)
        The samples' IU when last measured (the base model's, before their first training).
    iu : array-like of shape (m,)
        Their IU in this iteration.
    lr : float
        ``η`` > 0.

    Returns
    -------
    float
    """
    prev = np.asarray(previous_iu, dtype=np.float64)
    now = np.asarray(iu, dtype=np.float64)
    if prev.shape != now.shape or prev.size == 0:
        raise ValueError(f"previous_iu and iu must be non-empty and of one shape; got {prev.shape}, {now.shape}.")
    if not lr > 0:
        raise ValueError(f"lr={lr!r} must be > 0.")
    return float(np.mean(prev - now) / lr)


def lead_reward(utility_before: Sequence[float] | np.ndarray, utility_after: Sequence[float] | np.ndarray) -> float:
    """The cluster's utility gain: ``mean(U_{t−1} − U_t)`` over the samples it trained (what LEAD intends).

    LEAD's released code passes ``current_reward / len(selected)`` with ``current_reward`` never incremented,
    i.e. always 0.
    """
    before = np.asarray(utility_before, dtype=np.float64)
    after = np.asarray(utility_after, dtype=np.float64)
    if before.shape != after.shape or before.size == 0:
        raise ValueError(f"utilities must be non-empty and of one shape; got {before.shape}, {after.shape}.")
    return float(np.mean(before - after))


def per_sample_ce(log_probs: Any, label_mask: Any) -> Any:
    """Mean response-token cross-entropy of each row, from per-token log-probabilities.

    Parameters
    ----------
    log_probs : torch.Tensor of shape (B, T)
        Log-probability of each next-token label, 0 where it is ignored (TRL's fused LM head output).
    label_mask : torch.Tensor of shape (B, T), bool
        Which labels count.

    Returns
    -------
    torch.Tensor of shape (B,), float64
        ``−Σ log p / n`` per row (NaN for a row without labels).
    """
    import torch

    lp = log_probs.detach().to(dtype=torch.float64)
    n = label_mask.sum(dim=1).to(lp.dtype)
    return -(lp * label_mask.to(lp.dtype)).sum(dim=1) / n


# -- results ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeadResult:
    """What :func:`train_lead` returns.

    Attributes
    ----------
    train : TrainResult
        The training record (``CKPT/train.json``), loadable by ``equal evaluate CKPT``.
    lead : LeadConfig
    iterations : int
    samples_trained : int
        Trained samples, with repeats (= the budget when finished).
    unique_samples : int
        Distinct records trained at least once.
    choices : list of int
        The cluster of each iteration.
    rewards : list of float
        The raw reward (utility gain) of each iteration.
    log : str
        ``CKPT/lead/iterations.jsonl``.
    """

    train: TrainResult
    lead: LeadConfig
    iterations: int
    samples_trained: int
    unique_samples: int
    choices: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    log: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return {**self.train.to_dict(), "lead": self.lead.to_dict(), "iterations": self.iterations,
                "samples_trained": self.samples_trained, "unique_samples": self.unique_samples,
                "choices": list(self.choices), "rewards": list(self.rewards), "log": self.log}


# -- I/O and loop -------------------------------------------------------------------------------------------


def difficulty_clusters(iu: Sequence[float] | np.ndarray, n_clusters: int, *, seed: int = 42) -> np.ndarray:
    """LEAD's difficulty clusters: 1-D k-means of a per-sample difficulty score, numbered from easiest.

    LEAD clusters the IFD score (K = 7); equal uses the base model's IU, which it has already computed as the
    initial utility (IFD needs a second scoring pass without the prompt).

    Parameters
    ----------
    iu : array-like of shape (n,)
        Difficulty per sample (finite).
    n_clusters : int
        ``k`` (at most the number of distinct values is useful).
    seed : int, default=42

    Returns
    -------
    ndarray of shape (n,), int64
        Cluster of each sample; cluster 0 has the lowest mean difficulty.
    """
    from equal.cluster import KMeans

    x = np.asarray(iu, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"iu must be a non-empty 1-D array of finite values; got shape {x.shape}.")
    k = max(1, min(int(n_clusters), np.unique(x).size))
    if k == 1:
        return np.zeros(x.size, dtype=np.int64)
    # rescaled to [1, 2]: k-means is shift-invariant, and equal's input checks refuse all-zero rows
    X = np.ascontiguousarray((1.0 + (x - x.min()) / (x.max() - x.min()))[:, None], dtype=np.float32)
    labels = np.asarray(KMeans(n_clusters=k, seed=seed, spherical=False).fit(X).labels_, dtype=np.int64)
    means = np.array([x[labels == c].mean() if (labels == c).any() else np.inf for c in range(k)])
    rank = np.empty(k, dtype=np.int64)
    rank[np.argsort(means, kind="stable")] = np.arange(k)
    return rank[labels]


def _kept_messages(data: str | os.PathLike[str] | Sequence[Any], tokenizer: Any, dataset: SFTDataset,
                   config: TrainConfig) -> list[list[dict[str, str]]]:
    """The conversations of ``dataset``'s rows, in order (for embedding them)."""
    examples, _, _, _ = read_examples(data, skip_invalid=config.skip_invalid)
    if len(examples) == dataset.records:
        return [ex.messages for ex in examples]
    kept = []  # build_dataset skipped untrainable records: find which, the same way
    for ex in examples:
        try:
            build_dataset([ex.messages], tokenizer, max_length=config.max_length)
        except DataError:
            continue
        kept.append(ex.messages)
    if len(kept) != dataset.records:  # pragma: no cover - the two readings agree by construction
        raise DataError(f"could not align {dataset.records} training rows with the records read", path=dataset.path)
    return kept


def _cluster(messages: list[list[dict[str, str]]], lead: LeadConfig, seed: int) -> np.ndarray:
    from equal.cluster import KMeans
    from equal.embed import CachedEmbedder, get_embedder

    texts = ["\n".join(m["content"] for m in msgs) for msgs in messages]
    X = CachedEmbedder(get_embedder(lead.embedder)).encode(texts)
    k = min(lead.n_clusters, len(texts))
    if k < lead.n_clusters:
        logger.warning("lead.n_clusters=%d > %d records: using %d clusters", lead.n_clusters, len(texts), k)
    return np.asarray(KMeans(n_clusters=k, seed=seed).fit(X).labels_, dtype=np.int64)


def _last_layer_params(model: Any) -> list[tuple[str, Any]]:
    """Trainable parameters of the last transformer layer (LEAD's ``get_model_params_vector``), else all."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    layers = [int(m.group(1)) for n, _ in named if (m := re.search(r"\.layers\.(\d+)\.", n))]
    if not layers:
        return named
    tag = f".layers.{max(layers)}."
    return [(n, p) for n, p in named if tag in n]


def _param_vector(params: list[tuple[str, Any]]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.cat([p.detach().reshape(-1).float().cpu() for _, p in params]).numpy()


def _cosine(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None or b is None:
        return 1.0
    a, b = a.astype(np.float64), b.astype(np.float64)
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na < 1e-12 or nb < 1e-12:
        return 0.0
    return float(np.clip(a @ b / (na * nb), -1.0, 1.0))


class _Capture:
    """Forward hook that keeps each sample's mean response-token CE from the trainer's own forward outputs."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, module: Any, args: Any, output: Any) -> None:
        log_probs = getattr(output, "log_probs", None)
        mask = getattr(output, "label_mask", None)
        if log_probs is not None and mask is not None:
            self.values.append(per_sample_ce(log_probs, mask).cpu())


def _batches(idx: Sequence[int], size: int) -> list[list[int]]:
    return [list(idx[i:i + size]) for i in range(0, len(idx), size)]


def _label_tokens(dataset: SFTDataset, rows: Sequence[int]) -> int:
    # tokens that carry a loss: labels after the shift by one (position t predicts t + 1)
    return sum(sum(1 for t in dataset.labels[i][1:] if t != -100) for i in rows)


class _Lead:
    """The LEAD loop on one trainer; ``state`` is what ``lead/state.json`` holds."""

    def __init__(self, trainer: Any, dataset: SFTDataset, config: TrainConfig, lead: LeadConfig, out: Path,
                 on_progress: Callable[[TrainProgress], None] | None) -> None:
        self.trainer, self.dataset, self.config, self.lead, self.out = trainer, dataset, config, lead, out
        self.dir = out / "lead"
        self.clusters = np.zeros(dataset.records, dtype=np.int64)  # set by _run once the pool is clustered
        self.n = dataset.records
        self.on_progress = on_progress
        self.capture = _Capture()
        self.params = _last_layer_params(trainer.model)
        self._dirs_cache: dict[str, np.ndarray] = {}
        flag = getattr(trainer, "loss_is_scaled_for_ga", None)
        self._scaled = bool(flag if flag is not None else
                            trainer.model_accepts_loss_kwargs or trainer.compute_loss_func is not None)
        group = config.batch_size * config.grad_accum
        self.max_steps = sum(math.ceil(min(lead.samples_per_iter, lead.budget - s) / group)
                             for s in range(0, lead.budget, lead.samples_per_iter))

    # -- state -------------------------------------------------------------------------------------------
    def fresh_state(self, iu0: np.ndarray) -> dict[str, Any]:
        from equal.bandit import EXP3

        k = int(self.clusters.max()) + 1
        policy = EXP3(k, seed=self.config.seed, gamma=self.lead.gamma)
        return {"version": _STATE_VERSION, "iteration": 0, "trained": 0, "steps": 0, "tokens_seen": 0,
                "seconds": 0.0, "utility": iu0.tolist(), "iu_last": iu0.tolist(), "uses": [0] * self.n,
                "delta_prev": 0.0, "delta_first": {}, "policy": policy.state_dict(), "loss_curve": [],
                "choices": [], "rewards": [], "checkpoint": None}

    def score_all(self) -> np.ndarray:
        """The base model's IU of every record (LEAD's initial utility, ``iu_score.py``), no gradients."""
        import torch

        model = self.trainer.model
        model.eval()
        order = sorted(range(self.n), key=lambda i: len(self.dataset.input_ids[i]))
        out = np.zeros(self.n, dtype=np.float64)
        with torch.no_grad():
            for rows in _batches(order, max(1, 2 * self.config.batch_size)):
                inputs = self._inputs(rows)
                self.capture.values.clear()
                with self.trainer.accelerator.autocast():
                    model(**inputs, fused_lm_head=True)
                out[rows] = self.capture.values[-1].numpy()
        return out

    def _inputs(self, rows: Sequence[int]) -> dict[str, Any]:
        items = [{"input_ids": self.dataset.input_ids[i], "labels": self.dataset.labels[i]} for i in rows]
        return self.trainer._prepare_inputs(self.trainer.data_collator(items))

    # -- one iteration -----------------------------------------------------------------------------------
    def lr_at(self, trained: int) -> float:
        return float(self.config.lr) * (1.0 - trained / self.lead.budget)  # type: ignore[arg-type]

    def iterate(self, state: dict[str, Any], t0: float, prior_seconds: float) -> dict[str, Any]:
        import torch

        from equal.bandit import Policy

        policy = Policy.from_state(state["policy"])
        uses = np.asarray(state["uses"], dtype=np.int64)
        utility = np.asarray(state["utility"], dtype=np.float64)
        iu_last = np.asarray(state["iu_last"], dtype=np.float64)
        eligible = uses < self.lead.max_uses
        available = np.zeros(policy.n_arms, dtype=bool)
        available[np.unique(self.clusters[eligible])] = True
        probabilities = policy.scores().tolist()
        c = int(policy.select(1, available=available)[0])
        cand = np.flatnonzero(eligible & (self.clusters == c))
        take = min(self.lead.samples_per_iter, self.lead.budget - int(state["trained"]), cand.size)
        rows = cand[np.lexsort((cand, -utility[cand]))][:take]  # highest utility first, ties to the lower index
        before = _param_vector(self.params)

        model, opt = self.trainer.model, self.trainer.optimizer
        group = self.config.batch_size * self.config.grad_accum
        iu_now = np.zeros(rows.size, dtype=np.float64)
        lr_iter = self.lr_at(int(state["trained"]))
        trained, steps, tokens = int(state["trained"]), int(state["steps"]), int(state["tokens_seen"])
        curve = list(state["loss_curve"])
        pos = 0
        for g in _batches(rows.tolist(), group):
            lr = self.lr_at(trained)
            for pg in opt.param_groups:
                pg["lr"] = lr
            n_items = torch.tensor(_label_tokens(self.dataset, g), device=self.trainer.args.device)
            micro = _batches(g, self.config.batch_size)
            # TRL's loss is already sum / n_items over the whole group: the Trainer must not divide it again
            self.trainer.current_gradient_accumulation_steps = len(micro) if self._scaled else 1
            loss_sum = 0.0
            for b in micro:
                self.capture.values.clear()
                with self.trainer.accelerator.autocast():  # bf16 on CUDA as in equal train; no-op on CPU
                    loss_sum += float(self.trainer.training_step(model, self._inputs(b), n_items))
                iu_now[pos:pos + len(b)] = self.capture.values[-1].numpy()
                pos += len(b)
                tokens += sum(len(self.dataset.input_ids[i]) for i in b)
            if self.trainer.args.max_grad_norm and self.trainer.args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.trainer.args.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            trained += len(g)
            steps += 1
            curve.append([steps, loss_sum])
            if self.on_progress is not None:
                dt = time.perf_counter() - t0
                self.on_progress(TrainProgress(step=steps, max_steps=self.max_steps, loss=loss_sum,
                                               tokens_seen=tokens, tokens_per_second=tokens / dt if dt > 0 else 0.0,
                                               elapsed=prior_seconds + dt))
        direction = _param_vector(self.params) - before  # float32: one vector per cluster is kept on disk

        delta_first = state["delta_first"].get(str(c))
        first_dir = self._direction(f"first-{c}") if delta_first is not None else None
        prev_dir = self._direction("prev") if int(state["iteration"]) > 0 else None
        cos = _cosine(first_dir, prev_dir)
        upd = idu_update(utility[rows], iu_now, lr=lr_iter, smoothing=self.lead.smoothing,
                         delta_prev=float(state["delta_prev"]), delta_first=delta_first, cos=cos)
        reward = lead_reward(utility[rows], upd.utility)
        delta = utility_change(iu_last[rows], iu_now, lr_iter) if lr_iter > 0 else 0.0
        policy.update(np.array([c]), np.array([reward]))
        utility[rows] = upd.utility
        iu_last[rows] = iu_now
        uses[rows] += 1
        firsts = dict(state["delta_first"])
        new_dirs = {"prev": direction}
        if delta_first is None:
            firsts[str(c)] = delta
            new_dirs[f"first-{c}"] = direction
        # the reward EXP3 applied, rescaled by the min and max seen so far (this one included)
        normalize = getattr(policy, "_normalize", None)
        norm = float(normalize(reward)) if normalize is not None else reward
        record = {"iteration": int(state["iteration"]), "cluster": c, "probabilities": probabilities,
                  "samples": rows.tolist(), "lr": lr_iter, "beta": upd.beta, "cos": cos,
                  "loss_change": upd.loss_change, "delta": delta, "iu": iu_now.tolist(),
                  "mean_iu": float(iu_now.mean()), "reward": reward, "normalized_reward": norm, "trained": trained,
                  "utility_mean": float(utility.mean())}
        return {**state, "iteration": int(state["iteration"]) + 1, "trained": trained, "steps": steps,
                "tokens_seen": tokens, "utility": utility.tolist(), "iu_last": iu_last.tolist(),
                "uses": uses.tolist(), "delta_prev": delta, "delta_first": firsts, "policy": policy.state_dict(),
                "loss_curve": curve, "choices": [*state["choices"], c], "rewards": [*state["rewards"], reward],
                "_record": record, "_dirs": new_dirs}

    # -- checkpoints -------------------------------------------------------------------------------------
    def _direction(self, name: str) -> np.ndarray | None:
        return self._dirs_cache.get(name)

    def load_checkpoint(self, state: dict[str, Any]) -> None:
        import torch

        self._dirs_cache = {}
        name = state.get("checkpoint")
        if name is None:
            return
        ckpt = self.dir / name
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = load_file(str(ckpt / "trainable.safetensors"))
        if self.config.method == "lora":
            set_peft_model_state_dict(self.trainer.model, weights)
        else:
            self.trainer.model.load_state_dict(weights, strict=False)
        self.trainer.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=False))
        torch.set_rng_state(torch.load(ckpt / "rng.pt", weights_only=False))
        with np.load(ckpt / "directions.npz") as z:
            self._dirs_cache = {k: z[k] for k in z.files}

    def commit(self, state: dict[str, Any]) -> dict[str, Any]:
        """Write the trainer state of this iteration, its log line, then ``state.json`` (the commit)."""
        import torch
        from safetensors.torch import save_file

        from equal.data.io import append_jsonl
        from equal.train._trainer import _atomic_dir

        record = state.pop("_record")
        self._dirs_cache.update(state.pop("_dirs"))
        name = f"iter-{state['iteration']:05d}"
        with _atomic_dir(self.dir / name) as tmp:
            if self.config.method == "lora":
                from peft import get_peft_model_state_dict

                weights = get_peft_model_state_dict(self.trainer.model)
            else:
                weights = {n: p for n, p in self.trainer.model.named_parameters() if p.requires_grad}
            save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()},
                      str(tmp / "trainable.safetensors"))
            torch.save(self.trainer.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(torch.get_rng_state(), tmp / "rng.pt")
            np.savez(tmp / "directions.npz", **self._dirs_cache)
        append_jsonl(self.dir / "iterations.jsonl", [record])
        state = {**state, "checkpoint": name}
        atomic_write_json(self.dir / "state.json", state, indent=None)
        for p in self.dir.glob("iter-*"):  # older iterations are no longer needed
            if p.name != name:
                shutil.rmtree(p, ignore_errors=True)
        return state


def _read_state(folder: Path) -> dict[str, Any] | None:
    path = folder / "state.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{path}: unreadable LEAD state ({exc}); pass --force to start over.") from None


def _trim_log(folder: Path, iterations: int) -> None:
    """Drop log lines of iterations that were not committed (written just before a kill)."""
    log = folder / "iterations.jsonl"
    if not log.is_file():
        return
    lines = [ln for ln in log.read_text(encoding="utf-8").splitlines() if ln.strip()]
    keep = []
    for ln in lines:
        try:
            if int(json.loads(ln)["iteration"]) < iterations:
                keep.append(ln)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by the kill
    if len(keep) != len(lines) or not log.read_text(encoding="utf-8").endswith("\n"):
        atomic_write_text(log, "".join(f"{ln}\n" for ln in keep))


def _prepare(out: Path, config: TrainConfig, lead: LeadConfig, dataset: SFTDataset, *,
             force: bool) -> dict[str, Any] | None:
    from equal.train._trainer import _prepare_out

    return _prepare_out(out, config, dataset, force=force, lead=lead.to_dict())


def train_lead(
    data: str | os.PathLike[str] | Sequence[Any],
    out: str | os.PathLike[str],
    config: TrainConfig | None,
    lead: LeadConfig,
    *,
    force: bool = False,
    on_progress: Callable[[TrainProgress], None] | None = None,
) -> LeadResult:
    """Fine-tune on a pool with LEAD's in-training selection until ``lead.budget`` samples are trained.

    Parameters
    ----------
    data : path or sequence of records
        The pool: an SFT file or folder, an ``equal extract`` run directory, or records in memory.
    out : str or Path
        The CKPT folder (see the module docstring); rerunning the same call resumes from the last iteration.
    config : TrainConfig or None
        The training settings (``epochs`` and ``max_steps`` are unused: the budget decides); None = defaults.
    lead : LeadConfig
    force : bool, default=False
        Start over when ``out`` holds a run with other settings or data.
    on_progress : callable, optional
        Called with a :class:`TrainProgress` after every optimizer step.

    Returns
    -------
    LeadResult

    Raises
    ------
    ConfigError
        ``budget`` larger than ``records × max_uses``; ``out`` holds another run (without ``force``).
    DataError
        As :func:`equal.train.train`.
    """
    import torch

    from equal.train._trainer import _quiet, build_trainer, load_tokenizer, model_folder

    config = TrainConfig() if config is None else config
    out = Path(out)
    base_dir = model_folder(config.model)
    tokenizer = load_tokenizer(base_dir)
    dataset = build_dataset(data, tokenizer, max_length=config.max_length, skip_invalid=config.skip_invalid)
    if lead.budget > dataset.records * lead.max_uses:
        raise ConfigError(f"lead.budget={lead.budget} exceeds what the pool allows: {dataset.records} records × "
                          f"lead.max_uses={lead.max_uses} = {dataset.records * lead.max_uses}.")
    cuda = bool(torch.cuda.is_available())
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder.")
    with run_lock(out, "equal train --select lead"):
        remove_stale_temps(out)
        stored = _prepare(out, config, lead, dataset, force=force)
        if stored is not None and stored.get("finished"):
            return _lead_result(out, stored, lead, resumed=True, device="cuda" if cuda else "cpu")
        out.mkdir(parents=True, exist_ok=True)
        lead_dir = out / "lead"
        lead_dir.mkdir(exist_ok=True)
        clusters_path = lead_dir / "clusters.json"

        def clusters(iu0: np.ndarray) -> np.ndarray:
            if clusters_path.is_file():
                return np.asarray(json.loads(clusters_path.read_text(encoding="utf-8")), dtype=np.int64)
            if lead.cluster_by == "difficulty":
                labels = difficulty_clusters(iu0, lead.n_clusters, seed=config.seed)
            else:
                labels = _cluster(_kept_messages(data, tokenizer, dataset, config), lead, config.seed)
            atomic_write_json(clusters_path, labels.tolist(), indent=None)
            return labels

        from equal.train._trainer import _record

        atomic_write_json(out / "train.json", _record(config, base_dir, dataset, lead=lead.to_dict()))
        with torch_threads(int(config.threads)), _quiet():  # type: ignore[arg-type]
            trainer = build_trainer(config, base_dir, tokenizer, dataset, out, cuda=cuda)
            return _run(trainer, config, lead, out, base_dir, tokenizer, dataset, clusters, cuda=cuda,
                        on_progress=on_progress)


def _run(trainer: Any, config: TrainConfig, lead: LeadConfig, out: Path, base_dir: Path, tokenizer: Any,
         dataset: SFTDataset, clusters: Callable[[np.ndarray], np.ndarray], *, cuda: bool,
         on_progress: Callable[[TrainProgress], None] | None) -> LeadResult:
    from equal.train._trainer import _atomic_dir, _merge_into, _record, train_flops

    trainer.create_optimizer()
    loop = _Lead(trainer, dataset, config, lead, out, on_progress)
    hook = trainer.model.register_forward_hook(loop.capture)
    try:
        state = _read_state(loop.dir)
        resumed = state is not None
        if state is None:
            loop.load_checkpoint({})
            iu0 = loop.score_all()
            loop.clusters = clusters(iu0)
            state = loop.fresh_state(iu0)
            atomic_write_json(loop.dir / "state.json", state, indent=None)
        else:
            logger.info("resuming %s from LEAD iteration %d", out, state["iteration"])
            loop.clusters = clusters(np.asarray(state["iu_last"]))  # read back from clusters.json
            loop.load_checkpoint(state)
        _trim_log(loop.dir, int(state["iteration"]))
        for p in loop.dir.glob("iter-*"):  # written by an iteration that was killed before its commit
            if p.name != state.get("checkpoint"):
                shutil.rmtree(p, ignore_errors=True)
        t0 = time.perf_counter()
        prior = float(state["seconds"])
        while int(state["trained"]) < lead.budget:
            state = loop.iterate(state, t0, prior)
            state["seconds"] = round(prior + time.perf_counter() - t0, 3)
            state = loop.commit(state)
    finally:
        hook.remove()
    model = trainer.model
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    weights = out / ("adapter" if config.method == "lora" else "model")
    with _atomic_dir(weights) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    curve = [(int(s), float(v)) for s, v in state["loss_curve"]]
    uses = np.asarray(state["uses"])
    rec = _record(config, base_dir, dataset, steps=int(state["steps"]), tokens_seen=int(state["tokens_seen"]),
                  seconds=float(state["seconds"]),
                  train_flops=train_flops(n_params, n_trainable, int(state["tokens_seen"])),
                  final_loss=curve[-1][1] if curve else float("nan"), loss_curve=[list(c) for c in curve],
                  finished=True, device="cuda" if cuda else "cpu", n_params=n_params, n_trainable=n_trainable,
                  resumed_from=None, lead=lead.to_dict(),
                  lead_summary={"iterations": int(state["iteration"]), "samples_trained": int(state["trained"]),
                                "unique_samples": int((uses > 0).sum()), "choices": state["choices"],
                                "rewards": state["rewards"], "resumed": resumed})
    if config.merge:
        _merge_into(out)
    from equal.train._report import render_train_report

    atomic_write_text(out / "report.html", render_train_report(rec, out))
    atomic_write_json(out / "train.json", rec)
    return _lead_result(out, rec, lead, resumed=resumed, device="cuda" if cuda else "cpu")


def _lead_result(out: Path, rec: dict[str, Any], lead: LeadConfig, *, resumed: bool, device: str) -> LeadResult:
    from equal.train._trainer import _result

    summary = rec.get("lead_summary") or {}
    return LeadResult(train=_result(out, rec, resumed=resumed, device=device), lead=lead,
                      iterations=int(summary.get("iterations", 0)),
                      samples_trained=int(summary.get("samples_trained", 0)),
                      unique_samples=int(summary.get("unique_samples", 0)),
                      choices=[int(c) for c in summary.get("choices", [])],
                      rewards=[float(r) for r in summary.get("rewards", [])],
                      log=str(out / "lead" / "iterations.jsonl"))
