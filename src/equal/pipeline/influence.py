"""The ``influence`` reward (Quad, LESS): gradient similarity of a cluster's new pairs to the target set.

For every text (a new pair's ``question + "\\n" + answer``, or a target example rendered the same way) the
gradient of its causal-LM loss with respect to the LoRA parameters of the current model is computed, randomly
projected to ``dim`` dimensions (TRAK / LESS: a seeded Rademacher or Gaussian matrix, generated block by block
so the ``dim × P`` matrix never exists), and L2-normalised. The influence of a pair is the mean inner product
of its projected gradient with the target's; a cluster's reward is the mean influence of its new pairs minus
Quad's threshold (0.0020): positive when the cluster's pairs pull the model the way the target does.

The target's projected gradients are computed once per run and stored atomically in ``RUN/influence/``
(keyed by everything that changes them), so a resumed run reads them back.

Quad's weighted neighbour credit (every cluster within ``tau`` of the chosen one gets ``(1 − d / tau)`` of its
reward) is the UCB policy's ``[bandit.ucb] credit = "weighted"`` (with Quad's ``alpha = 0.0001``).

Differences from Quad: Quad scores documents by ``∇L_refᵀ (H + λI)⁻¹ ∇L_doc`` with an EK-FAC Hessian over the
full model; here the Hessian is the identity (LESS), the gradients are those of a LoRA adapter, and the
scored texts are the extracted pairs, not the raw documents.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from equal.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from equal.pipeline.parts import Group
    from equal.pipeline.registry import PartContext

__all__ = ["AGGREGATES", "PROJECTIONS", "GradientModel", "InfluenceReward", "InfluenceRewardConfig",
           "build_influence", "project"]

logger = logging.getLogger(__name__)

PROJECTIONS = ("rademacher", "gaussian", "sparse", "orthogonal")
"""``rademacher`` (TRAK's default) and ``gaussian``: dense JL matrices scaled by 1/sqrt(dim); ``sparse``: one
±1 per column (CountSketch, O(P) per gradient); ``orthogonal``: orthonormal columns, exact, needs dim >= P."""
AGGREGATES = ("pairs", "docs")
"""How a cluster's influence is averaged: over its pairs, or per document first (Quad scores documents)."""


# ----------------------------------------------------------------------------------------------- config
def _int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}={value!r}: must be an int >= {low}")
    return value


@dataclass(frozen=True)
class InfluenceRewardConfig:
    """Settings of the ``influence`` reward (``[reward.influence]``).

    Parameters
    ----------
    model : str, default="bundled"
        The current model: ``"bundled"`` (SmolLM2-135M-Instruct), a ``.gguf`` file, a transformers folder or
        an ``equal train`` checkpoint (resolved by :func:`equal.train.model_folder`).
    threshold : float, default=0.0020
        Quad's influence threshold: reward = mean influence − threshold.
    dim : int, default=8192
        Projected dimension (Quad, LESS: 8192).
    projection : {"rademacher", "gaussian", "sparse", "orthogonal"}, default="rademacher"
        See :data:`PROJECTIONS`.
    block : int, default=2048
        Gradient coordinates per generated block of the projection (memory ``4 · dim · block`` bytes). Part of
        the projection's definition: changing it changes the matrix.
    lora_r, lora_alpha : int, default=8, 16
        The LoRA adapter whose gradients are taken (peft; dropout 0).
    lora_target : str, default="q_proj,v_proj"
        Comma-separated module names (peft ``target_modules``; peft's default for Llama models).
    lora_layers : tuple of int, default=()
        Only these decoder layers get an adapter (peft ``layers_to_transform``); empty: every layer.
    max_length : int, default=256
        Texts are cut to their first ``max_length`` tokens.
    max_target : int or None, default=256
        At most this many target examples (a seeded sample) form the reference set; None: all.
    aggregate : {"pairs", "docs"}, default="pairs"
        See :data:`AGGREGATES`.
    batch : int, default=32
        Gradients projected together (one pass over the projection per batch).
    seed : int or None, default=None
        Seed of the projection, the adapter's initialisation and the target sample; None: the run's seed.
    """

    model: str = "bundled"
    threshold: float = 0.0020
    dim: int = 8192
    projection: str = "rademacher"
    block: int = 2048
    lora_r: int = 8
    lora_alpha: int = 16
    lora_target: str = "q_proj,v_proj"
    lora_layers: tuple[int, ...] = ()
    max_length: int = 256
    max_target: int | None = 256
    aggregate: str = "pairs"
    batch: int = 32
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError(f"model={self.model!r}: must be 'bundled' or a model path")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not math.isfinite(self.threshold):
            raise ConfigError(f"threshold={self.threshold!r}: must be a finite number")
        object.__setattr__(self, "threshold", float(self.threshold))
        for name in ("dim", "block", "lora_r", "lora_alpha", "max_length", "batch"):
            _int(name, getattr(self, name), 2 if name == "max_length" else 1)
        if self.projection not in PROJECTIONS:
            raise ConfigError(f"projection={self.projection!r}: must be one of {', '.join(PROJECTIONS)}")
        if self.aggregate not in AGGREGATES:
            raise ConfigError(f"aggregate={self.aggregate!r}: must be one of {', '.join(AGGREGATES)}")
        if not isinstance(self.lora_target, str) or not [t for t in self.lora_target.split(",") if t.strip()]:
            raise ConfigError(f"lora_target={self.lora_target!r}: must name at least one module")
        if isinstance(self.lora_layers, (str, bytes)) or not isinstance(self.lora_layers, (list, tuple)):
            raise ConfigError(f"lora_layers={self.lora_layers!r}: must be a list of layer indices")
        object.__setattr__(self, "lora_layers", tuple(_int("lora_layers", x, 0) for x in self.lora_layers))
        if self.max_target is not None:
            _int("max_target", self.max_target, 1)
        if self.seed is not None:
            _int("seed", self.seed, 0)

    def targets(self) -> list[str]:
        """The peft ``target_modules`` list."""
        return [t.strip() for t in self.lora_target.split(",") if t.strip()]


# ----------------------------------------------------------------------------------------------- projection
def _block_generator(seed: int, index: int) -> torch.Generator:
    import torch

    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def _project_torch(G: torch.Tensor, dim: int, seed: int, kind: str, block: int) -> torch.Tensor:
    import torch

    n, P = G.shape
    if kind == "orthogonal":
        if dim < P:
            raise ValueError(f"projection='orthogonal' needs dim >= P; got dim={dim}, P={P}.")
        # Q (dim, P) with orthonormal columns: inner products are kept exactly
        g = _block_generator(seed, 0)
        A = torch.randn(dim, P, generator=g, dtype=torch.float64)
        Q, _ = torch.linalg.qr(A, mode="reduced")
        return (G.to(torch.float64) @ Q.T).to(G.dtype)
    Y = torch.zeros(n, dim, dtype=G.dtype)
    scale = 1.0 / math.sqrt(dim)
    for b, start in enumerate(range(0, P, block)):
        cols = G[:, start:start + block]
        g = _block_generator(seed, b)
        if kind == "sparse":  # CountSketch: column p lands in one row, with a random sign
            rows = torch.randint(0, dim, (cols.shape[1],), generator=g)
            signs = torch.randint(0, 2, (cols.shape[1],), generator=g, dtype=G.dtype).mul_(2).sub_(1)
            Y.index_add_(1, rows, cols * signs)
            continue
        if kind == "rademacher":
            R = torch.randint(0, 2, (dim, cols.shape[1]), generator=g, dtype=G.dtype).mul_(2 * scale).sub_(scale)
        else:
            R = torch.randn(dim, cols.shape[1], generator=g, dtype=G.dtype).mul_(scale)
        Y.addmm_(cols, R.T)
    return Y


def project(G: Any, *, dim: int, seed: int, kind: str = "rademacher", block: int = 2048) -> Any:
    r"""Random projection of gradients, ``Y = G Rᵀ``, with ``R`` (dim, P) generated block by block.

    .. math:: R_{kp} = \pm 1/\sqrt{d}\ \text{(Rademacher)},\quad R_{kp} \sim N(0, 1/d)\ \text{(Gaussian)}

    so ``E‖Rg‖² = ‖g‖²`` and inner products are kept up to a JL error of order ``‖g‖‖h‖/sqrt(d)``. Block
    ``b`` (columns ``b·block`` to ``(b+1)·block``) is drawn from a generator seeded with ``(seed, b)``, so the
    same ``(seed, block, dim)`` gives the same matrix for any number of rows of ``G``, and only ``dim × block``
    of it exists at a time.

    Parameters
    ----------
    G : ndarray or torch.Tensor of shape (n, P), float32 or float64
        One flattened gradient per row.
    dim : int
        Projected dimension ``d``.
    seed : int
        Seed of the matrix.
    kind : {"rademacher", "gaussian", "sparse", "orthogonal"}, default="rademacher"
        ``sparse``: CountSketch (one ±1 per column); ``orthogonal``: orthonormal columns (exact inner products,
        builds the whole matrix, needs ``dim >= P``).
    block : int, default=2048

    Returns
    -------
    ndarray or torch.Tensor of shape (n, dim)
        Same type and dtype as ``G``.

    References
    ----------
    .. [1] Park et al., "TRAK: Attributing Model Behavior at Scale", ICML 2023.
    .. [2] Xia et al., "LESS: Selecting Influential Data for Targeted Instruction Tuning", ICML 2024.
    """
    import torch

    if kind not in PROJECTIONS:
        raise ValueError(f"kind={kind!r} must be one of {', '.join(PROJECTIONS)}.")
    if dim < 1 or block < 1:
        raise ValueError(f"dim={dim} and block={block} must be >= 1.")
    is_np = isinstance(G, np.ndarray)
    T = torch.from_numpy(np.ascontiguousarray(G)) if is_np else G
    if T.ndim != 2:
        raise ValueError(f"G must be 2-D (n, P); got shape {tuple(T.shape)}.")
    with torch.no_grad():
        Y = _project_torch(T.detach(), dim, seed, kind, block)
    return Y.numpy() if is_np else Y


def _normalize(Y: torch.Tensor) -> torch.Tensor:
    import torch

    norms = torch.linalg.vector_norm(Y, dim=1, keepdim=True)
    return Y / torch.clamp(norms, min=1e-12)  # a zero gradient stays zero: influence 0


# ----------------------------------------------------------------------------------------------- gradients
_MODELS: dict[tuple[Any, ...], GradientModel] = {}
_MODELS_LOCK = threading.Lock()


class GradientModel:
    """A causal LM with a fresh, seeded LoRA adapter, and the per-text gradients of its LoRA parameters.

    The adapter is peft's default initialisation (``A`` Kaiming-uniform, ``B = 0``) under ``seed``. With
    ``B = 0`` the gradient of every ``A`` is exactly zero, so only the ``B`` matrices are differentiated:
    ``∇_B L = (∇_W L) Aᵀ``, the full weight gradient seen through the random ``A``.

    Parameters
    ----------
    config : InfluenceRewardConfig
    seed : int
    """

    def __init__(self, config: InfluenceRewardConfig, seed: int) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from equal._threads import torch_threads
        from equal.train import model_folder
        from equal.train._trainer import _quiet

        self.folder = model_folder(config.model)
        self.max_length = config.max_length
        with torch_threads(), _quiet():
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
            base = AutoModelForCausalLM.from_pretrained(str(self.folder), dtype=torch.float32)
            lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                              target_modules=config.targets(),
                              layers_to_transform=list(config.lora_layers) or None, task_type="CAUSAL_LM")
            with torch.random.fork_rng(devices=[]):  # seed the adapter without touching the caller's RNG
                torch.manual_seed(seed)
                self.model = get_peft_model(base, lora)
        self.model.eval()
        self.names: list[str] = []
        self.params: list[torch.nn.Parameter] = []
        for name, p in self.model.named_parameters():
            p.requires_grad_(False)
            if "lora_B" in name:
                self.names.append(name)
                self.params.append(p)
        if not self.params:
            raise ConfigError(f"reward.influence.lora_target={config.lora_target!r}: no module of "
                              f"{self.folder} matched")
        self.n_params = int(sum(p.numel() for p in self.params))

    @classmethod
    def shared(cls, config: InfluenceRewardConfig, seed: int) -> GradientModel:
        """One instance per (model, adapter settings, seed) in this process (a model load costs seconds)."""
        key = (config.model, config.lora_r, config.lora_alpha, config.lora_target, config.lora_layers,
               config.max_length, seed)
        with _MODELS_LOCK:
            if key not in _MODELS:
                _MODELS[key] = cls(config, seed)
            return _MODELS[key]

    def token_ids(self, text: str) -> list[int]:
        """The token ids of ``text``, cut to ``max_length``."""
        return list(self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"])

    def gradients(self, texts: Sequence[str]) -> torch.Tensor:
        """Per-text gradient of the mean next-token cross-entropy w.r.t. the LoRA ``B`` parameters.

        Returns
        -------
        torch.Tensor of shape (len(texts), n_params), float32
            Rows in :attr:`names` order; a text of fewer than two tokens (no next token) gets zeros.
        """
        import torch

        from equal._threads import torch_threads

        out = torch.zeros(len(texts), self.n_params, dtype=torch.float32)
        with torch_threads():
            for i, text in enumerate(texts):
                ids = self.token_ids(text)
                if len(ids) < 2:
                    continue
                for p in self.params:
                    p.requires_grad_(True)
                try:
                    x = torch.tensor([ids], dtype=torch.long)
                    loss = self.model(input_ids=x, labels=x).loss
                    grads = torch.autograd.grad(loss, self.params)
                finally:
                    for p in self.params:
                        p.requires_grad_(False)
                out[i] = torch.cat([g.reshape(-1) for g in grads])
        return out


# ----------------------------------------------------------------------------------------------- the reward
def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class InfluenceReward:
    """Quad's cluster reward: mean influence of the cluster's new pairs on the target, minus a threshold.

    ``influence(z) = (1/m) Σ_j ⟨ĝ(z), ĝ(t_j)⟩`` with ``ĝ`` the L2-normalised projected LoRA gradient
    (:func:`project`) and ``t_1 … t_m`` the target sample. The model is loaded, and the target's gradients
    computed (or read from ``cache_dir``), on the first :meth:`score`.

    Parameters
    ----------
    config : InfluenceRewardConfig
    target_texts : list of str
    seed : int
        Used when ``config.seed`` is None.
    cache_dir : Path or None
        Where the target's projected gradients are stored (``RUN/influence``); None: kept in memory only.
    """

    name = "influence"

    def __init__(self, config: InfluenceRewardConfig, target_texts: Sequence[str], *, seed: int,
                 cache_dir: Path | None = None) -> None:
        if not target_texts:
            raise ConfigError("reward.reward='influence' needs target examples")
        self.config = config
        self.seed = int(config.seed if config.seed is not None else seed)
        texts = list(target_texts)
        if config.max_target is not None and len(texts) > config.max_target:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, 1]))
            keep = np.sort(rng.choice(len(texts), size=config.max_target, replace=False))
            texts = [texts[i] for i in keep]
        self.target_texts = texts
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._target: np.ndarray | None = None
        self._mean: Any = None

    @property
    def model(self) -> GradientModel:
        return GradientModel.shared(self.config, self.seed)

    def _key(self) -> str:
        c = self.config
        return _sha({
            "model": str(self.model.folder), "seed": self.seed, "dim": c.dim, "projection": c.projection,
            "block": c.block, "lora": [c.lora_r, c.lora_alpha, c.targets(), list(c.lora_layers)],
            "max_length": c.max_length, "targets": [_sha(t) for t in self.target_texts], "version": 1,
        })[:24]

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised projected gradients of ``texts``: (len(texts), dim) float32, rows of norm 1 (or 0)."""
        from equal._threads import torch_threads

        c = self.config
        out = np.zeros((len(texts), c.dim), dtype=np.float32)
        for start in range(0, len(texts), c.batch):
            G = self.model.gradients(texts[start:start + c.batch])
            with torch_threads():
                Y = _normalize(project(G, dim=c.dim, seed=self.seed, kind=c.projection, block=c.block))
            out[start:start + len(G)] = Y.numpy()
        return out

    def target_vectors(self) -> np.ndarray:
        """The target's normalised projected gradients, (m, dim) float32: computed once, then read back."""
        if self._target is not None:
            return self._target
        from equal.data.io import atomic_write_json, load_npy, save_npy

        path = self.cache_dir / f"target-{self._key()}.npy" if self.cache_dir is not None else None
        if path is not None and path.exists():
            arr = np.ascontiguousarray(load_npy(path, mmap=False), dtype=np.float32)
            if arr.shape == (len(self.target_texts), self.config.dim):
                self._target = arr
                return arr
            logger.warning("%s has shape %s, expected %s; recomputing", path, arr.shape,
                           (len(self.target_texts), self.config.dim))
        logger.info("computing projected gradients of %d target examples (P=%d, dim=%d)",
                    len(self.target_texts), self.model.n_params, self.config.dim)
        arr = self.vectors(self.target_texts)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_npy(path, arr)
            atomic_write_json(path.with_suffix(".json"), {
                "shape": list(arr.shape), "dtype": "float32", "model": str(self.model.folder),
                "n_params": self.model.n_params, "seed": self.seed,
                "config": dataclasses.asdict(self.config),
            })
        self._target = arr
        return arr

    def influence(self, texts: Sequence[str]) -> np.ndarray:
        """Influence of each text on the target: (len(texts),) float64, in [-1, 1]."""
        if not len(texts):
            return np.zeros(0, dtype=np.float64)
        mean = self.target_vectors().astype(np.float64).mean(axis=0)
        return self.vectors(texts).astype(np.float64) @ mean

    def score(self, groups: Sequence[Group]) -> np.ndarray:
        """``mean influence − threshold`` per group (NaN for a group with no pairs): (len(groups),) float64."""
        texts = [t for g in groups for t in g.texts]
        infl = self.influence(texts)
        out = np.full(len(groups), np.nan)
        at = 0
        for i, g in enumerate(groups):
            vals = infl[at:at + len(g.texts)]
            at += len(g.texts)
            if not len(vals):
                continue
            if self.config.aggregate == "docs":
                docs: dict[str, list[float]] = {}
                for p, v in zip(g.pairs, vals.tolist(), strict=True):
                    docs.setdefault(p.doc_id, []).append(v)
                mean = float(np.mean([np.mean(v) for v in docs.values()]))
            else:
                mean = float(vals.mean())
            out[i] = mean - self.config.threshold
        return out


def _run_root(ctx: PartContext) -> Path | None:
    run = ctx.run_dir  # a RunDir, or a plain folder
    if run is None:
        return None
    return Path(run) if isinstance(run, (str, Path)) else Path(run.root)


def build_influence(config: InfluenceRewardConfig, ctx: PartContext) -> InfluenceReward:
    root = _run_root(ctx)
    return InfluenceReward(config, ctx.target_texts, seed=ctx.seed,
                           cache_dir=root / "influence" if root is not None else None)
