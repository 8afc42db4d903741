"""Local generation speed: equal's llama.cpp backend vs llama-cpp-python called directly vs transformers.

The same extraction requests (``equal.extract.build_extract_messages`` in the ``lines`` style the bundled
model gets, on the first ``--prompts`` documents of ``examples/corpus.jsonl``), greedy, ``--max-tokens``
each, seed 0, on the bundled SmolLM2-135M-Instruct Q4_1 GGUF:

- ``equal LlamaCppLLM``: ``equal.llm.get_llm("local")`` (what ``equal extract --llm local`` runs), one request
  per ``generate`` call;
- ``llama_cpp.Llama direct``: ``create_chat_completion`` with the same sampling arguments on a second model
  loaded with the same threads (llama-cpp-python's default reuse of the cached prompt prefix);
- ``transformers LocalLLM``: the dequantised model, batched (``--batch-size``), on the same number of torch
  threads, on the first ``--transformers-prompts`` requests only (it is about ten times slower).

The first two alternate request by request, so a change in the machine's load hits both alike. tokens/s is
generated tokens over wall time (prompt processing included). Goal: equal ≥ 90% of direct.

    python benchmarks/bench_llm.py              # 16 prompts, 128 tokens
    python benchmarks/bench_llm.py --quick      # 4 prompts, 64 tokens

Prints a table and rewrites its own section (``llm``) of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from _results import write_section

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from equal._threads import available_cores
from equal.extract.prompts import build_extract_messages
from equal.llm import GenerationParams, LlamaCppLLM, LocalLLM, bundled_gguf_path, get_llm

SECTION = "llm"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def prompts(n: int) -> list[list[dict[str, str]]]:
    rows = [json.loads(line) for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines()]
    return [build_extract_messages(r["text"], style="lines") for r in rows[:n]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 prompts of 64 tokens")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="default: equal's llama.cpp default")
    parser.add_argument("--transformers-prompts", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4, help="transformers batch")
    parser.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    n, max_tokens = (4, 64) if args.quick else (args.prompts, args.max_tokens)
    reqs = prompts(n)
    params = GenerationParams(max_tokens=max_tokens, temperature=0.0, seed=0)

    ours = get_llm("local", threads=args.threads)
    assert isinstance(ours, LlamaCppLLM), ours
    threads = ours.threads
    import llama_cpp

    direct = llama_cpp.Llama(model_path=str(bundled_gguf_path()), n_ctx=ours.n_ctx, n_threads=threads,
                             n_threads_batch=ours.threads_batch, verbose=False)
    ours.generate(reqs[:1], GenerationParams(max_tokens=4))  # warm-up: page the weights in, both
    direct.create_chat_completion(messages=reqs[0], max_tokens=4, temperature=0.0)

    t_ours = t_direct = 0.0
    tok_ours = tok_direct = same = 0
    for msgs in reqs:
        t = time.perf_counter()
        (c,) = ours.generate([msgs], params)
        t_ours += time.perf_counter() - t
        tok_ours += c.tokens_out
        # equal's default decoding threads follow the idle cores (re-chosen every 30 s): the direct call gets
        # the same, so the rows compare the calls, not two thread counts
        llama_cpp.llama_set_n_threads(direct.ctx, ours.threads, ours.threads_batch)
        t = time.perf_counter()
        ref = direct.create_chat_completion(
            messages=msgs, max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=0, min_p=0.0,
            typical_p=1.0, repeat_penalty=1.0, seed=0)
        t_direct += time.perf_counter() - t
        tok_direct += ref["usage"]["completion_tokens"]
        same += c.text == ref["choices"][0]["message"]["content"]

    m = min(args.transformers_prompts, n)
    t_hf = 0.0
    tok_hf = 0
    if m:
        hf = LocalLLM(batch_size=args.batch_size, threads=threads)
        hf.load()
        hf.generate(reqs[:1], GenerationParams(max_tokens=4))
        t = time.perf_counter()
        out = hf.generate(reqs[:m], params)
        t_hf = time.perf_counter() - t
        tok_hf = sum(c.tokens_out for c in out)

    rate_direct = tok_direct / t_direct
    rows = [
        ["equal LlamaCppLLM", str(n), str(tok_ours), f"{t_ours:.2f}", f"{tok_ours / t_ours:.1f}",
         f"{tok_ours / t_ours / rate_direct:.0%}"],
        ["llama_cpp.Llama direct", str(n), str(tok_direct), f"{t_direct:.2f}", f"{rate_direct:.1f}", "100%"],
    ]
    if m:
        rows.append([f"transformers LocalLLM (batch {args.batch_size})", str(m), str(tok_hf), f"{t_hf:.2f}",
                     f"{tok_hf / t_hf:.1f}", f"{tok_hf / t_hf / rate_direct:.0%}"])
    header = ["backend", "prompts", "tokens out", "seconds", "tokens/s", "vs direct"]
    try:
        load = f"{os.getloadavg()[0]:.1f}"
    except OSError:
        load = "n/a"
    lines = [
        f"Machine: {platform.machine()}, {available_cores()} cores available; llama.cpp {threads} decoding / "
        f"{ours.threads_batch} prompt thread(s), torch {threads}; load average at the end {load}. "
        "Bundled SmolLM2-135M-Instruct Q4_1 GGUF, greedy, "
        f"max_tokens={max_tokens}, llama-cpp-python {llama_cpp.__version__}.",
        f"equal's answers identical to the direct call's: {same} of {n}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
        "equal and direct alternate request by request; the machine is shared, so compare rows, not runs.",
        "The direct call reuses the cached prefix of the previous prompt; equal starts every request from an "
        "empty cache, so that an answer depends on its request alone (the prefix reuse evaluates the prompt "
        "in other batch shapes, which can change a greedy answer: the answers that differ above). Re-reading "
        "the prompt is what equal's row pays for that.",
        "",
        "Command: `python benchmarks/bench_llm.py" + (" --quick" if args.quick else "") + "`",
    ]
    text = "## Local generation: llama.cpp vs transformers (`benchmarks/bench_llm.py`)\n\n" + "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
        print(f"wrote section '{SECTION}' of benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
