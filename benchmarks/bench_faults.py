"""Endpoint fault suite: each fault of :class:`equal.testing.FaultProxy` against a small LLM extract run.

A real llama.cpp server (``tests/test_llm_server.py``'s ``LlamaServer``, the bundled SmolLM2 GGUF) sits behind
the proxy; each row runs ``equal extract`` (``run_extract``, the library call behind the command, with
``llm=openai``, ``base_url`` = the proxy) into a fresh directory with one fault injected, and, when that run
stops, runs the same command again with the fault gone (a user's rerun). Reported per fault: requests the
proxy received, upstream answers paid for, bodies paid more than once, the first run's outcome (with the
failure reasons the summary or the error counts), whether the rerun recovered, and whether the pairs are
byte-identical to a clean run's.

Faults are *transient* (the first attempt of requests 0 and 2 only) unless marked *persistent* (every attempt
of request 0) or *every answer* (``no_usage``); ``dead`` kills the server at request 2 for the rest of the
first run. Usage::

    python benchmarks/bench_faults.py            # prints the table, writes section reliability-faults
    python benchmarks/bench_faults.py --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SECTION = "reliability-faults"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _corpus(work: Path) -> Path:
    rows = [json.loads(line) for line in (ROOT / "examples" / "corpus.jsonl").read_text().splitlines()]
    picked = [r for r in rows if r["source"] == "champ"][:8] + [r for r in rows if r["source"] == "python-faq"][:8]
    path = work / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": r["id"], "text": r["text"][:600]}) + "\n" for r in picked))
    return path


def _cases() -> list[tuple[str, Callable[[Any], Callable[[int, dict[str, Any]], Any]], dict[str, Any]]]:
    """(label, schedule factory taking the proxy, OpenAILLM overrides)."""
    from equal.testing import Fault, body_hash

    def transient(fault: Fault) -> Callable[[Any], Callable[[int, dict[str, Any]], Any]]:
        def make(proxy: Any) -> Callable[[int, dict[str, Any]], Any]:
            order: dict[str, int] = {}

            def schedule(n: int, body: dict[str, Any]) -> Fault | None:
                sha = body_hash(body)
                order.setdefault(sha, len(order))
                return fault if order[sha] in (0, 2) and proxy.counts[sha] == 1 else None

            return schedule
        return make

    def persistent(fault: Fault) -> Callable[[Any], Callable[[int, dict[str, Any]], Any]]:
        def make(proxy: Any) -> Callable[[int, dict[str, Any]], Any]:
            first: list[str] = []

            def schedule(n: int, body: dict[str, Any]) -> Fault | None:
                sha = body_hash(body)
                # llama.cpp answers the first json_schema request with a 500 and equal falls back to json_object
                # for good: that body is never sent again, so the fault goes to the first body sent after it
                if not first and (body.get("response_format") or {}).get("type") != "json_schema":
                    first.append(sha)
                return fault if first and sha == first[0] else None

            return schedule
        return make

    def always(fault: Fault) -> Callable[[Any], Callable[[int, dict[str, Any]], Any]]:
        return lambda proxy: (lambda n, body: fault)

    def dead_at(k: int) -> Callable[[Any], Callable[[int, dict[str, Any]], Any]]:
        return lambda proxy: (lambda n, body: Fault.dead() if n == k else None)

    cases: list[tuple[str, Callable[[Any], Callable[[int, dict[str, Any]], Any]], dict[str, Any]]] = [
        ("none (clean)", lambda proxy: (lambda n, body: None), {}),
    ]
    for f in (Fault.status(500), Fault.status(503), Fault.status(429, retry_after=1), Fault.hang(20),
              Fault.trickle(400), Fault.malformed_json(), Fault.truncated_body(), Fault.reset(),
              Fault.empty_choices(), Fault.empty_content(), Fault.null_content(), Fault.error_body()):
        cases.append((str(f), transient(f), {"timeout": 8.0} if f.kind == "hang" else {}))
    cases += [
        ("status:401 (persistent)", persistent(Fault.status(401)), {}),
        ("trickle:1 (persistent, deadline 4 s)", persistent(Fault.trickle(1)), {"deadline_s": 4.0}),
        ("empty_content (persistent)", persistent(Fault.empty_content()), {}),
        ("null_content (persistent)", persistent(Fault.null_content()), {}),
        ("no_usage (every answer)", always(Fault.no_usage()), {}),
        ("dead at request 2", dead_at(2), {}),
    ]
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-write", action="store_true", help="Print only; do not touch RESULTS.md.")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from equal.config import ExtractConfig
    from equal.embed import CachedEmbedder, get_embedder
    from equal.errors import LLMError
    from equal.llm import OpenAILLM
    from equal.pipeline.extract import run_extract
    from equal.testing import FaultProxy
    from test_llm_server import KEY, LlamaServer, _free_port  # the project's one llama.cpp fixture

    os.environ["EQUAL_API_KEY"] = KEY
    work = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    corpus = _corpus(work)
    server = LlamaServer(_free_port(), work)
    server.start()
    settings = dict(corpus=str(corpus), target=str(ROOT / "examples" / "target.jsonl"), extractor="llm",
                    llm="openai", model="smollm2", budget_docs=4, clusters=4, clusters_per_round=2,
                    docs_per_cluster=1, max_tokens=48, seed=3, concurrency=2)
    embedder = CachedEmbedder(get_embedder(ExtractConfig.from_flat(**settings, base_url=server.url).embed.embedder))
    rows: list[dict[str, Any]] = []
    reference: bytes | None = None
    t_all = time.perf_counter()
    try:
        for i, (label, make, overrides) in enumerate(_cases()):
            out = work / f"run{i}"
            proxy = FaultProxy(server.url)
            proxy.faults = make(proxy)
            t0 = time.perf_counter()
            with proxy:
                cfg = ExtractConfig.from_flat(**settings, base_url=proxy.url)
                kw = {"max_retries": 2, "backoff_base": 0.05, "concurrency": 2, **overrides}
                try:
                    s = run_extract(cfg, out, embedder=embedder,
                                    llm=OpenAILLM("smollm2", base_url=proxy.url, **kw))
                    reasons = ", ".join(f"{k} {v}" for k, v in s.llm_failures.items())
                    outcome = "ok" + (" (tokens estimated)" if s.tokens_estimated else "")
                    outcome += f"; failed {reasons}" if reasons else ""
                    recovered = "not needed"
                except LLMError as exc:
                    msg = str(exc)
                    outcome = "stopped: " + msg[msg.index("(") + 1: msg.index(";")] if "(" in msg else msg[:60]
                    proxy.faults = None
                    proxy.revive()
                    s = run_extract(cfg, out, embedder=embedder, llm=OpenAILLM("smollm2", base_url=proxy.url))
                    recovered = "yes" if s.documents_read == settings["budget_docs"] else "no"
                snap = proxy.snapshot()
            qa = (out / "qa.jsonl").read_bytes()
            if reference is None:
                reference = qa
            rows.append({"fault": label, "requests": snap["requests"], "paid": snap["answered"],
                         "paid_twice": snap["duplicates"], "outcome": outcome, "recovered": recovered,
                         "pairs": s.pairs, "identical": qa == reference,
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.kill()
    total = time.perf_counter() - t_all
    head = "| fault | requests | paid | paid twice | first run | rerun recovered | pairs | identical to clean | s |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['fault']} | {r['requests']} | {r['paid']} | {r['paid_twice']} | {r['outcome']} | "
                     f"{r['recovered']} | {r['pairs']} | {'yes' if r['identical'] else 'NO'} | {r['seconds']} |")
    table = "\n".join(lines)
    print(table)
    text = (
        "## Reliability: endpoint faults\n\n"
        "`python benchmarks/bench_faults.py`: a 4-document LLM extract run (bundled SmolLM2 on a real llama.cpp "
        "server behind `equal.testing.FaultProxy`; `max_retries=2`, concurrency 2) per fault; a run that stops "
        "is rerun with the fault gone. *paid*: upstream 200 answers (what a hosted API bills; spoilt answers "
        "are forwarded, so paid); *paid twice*: request bodies the upstream answered more than once over both "
        "runs (a spoilt answer retried counts here: the retry is the point).\n\n"
        f"{table}\n\n"
        f"{len(rows)} runs in {total:.0f} s on {platform.machine()}, {os.cpu_count()} CPUs "
        f"(load average {os.getloadavg()[0]:.1f} at the end).\n"
    )
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).parent))
        from _results import write_section

        write_section(SECTION, text)


if __name__ == "__main__":
    main()
