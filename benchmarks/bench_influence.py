"""Cluster rewards of ``equal extract``: ``influence`` (Quad/LESS gradients) vs ``ot`` (EQUAL) vs ``random``.

The corpus is ``examples/corpus.jsonl`` (984 documents: competition maths with solutions, Python FAQ and
tutorial, Debian FAQ, manual pages) and the target ``examples/target.jsonl`` (150 GSM-style problems). Every
run uses the rule-based extractor (one document read = one LLM request an LLM run would pay), the same
clusters, the same budget and the same round shape; only the reward differs (``random`` reads documents in a
seeded random order, without a bandit). ``influence`` uses Quad's constants (threshold 0.0020, weighted
neighbour credit ``1 − d/τ`` with τ = 0.2, α = 0.0001); ``ot`` is the default EQUAL run.

Scores, per run: the exact OT distance of all kept pairs to the target (lower is better; what ``ot``
optimises, so it favours ``ot``), the share of the documents read that are maths (the target's domain;
neither reward sees it), pairs kept, and the wall seconds per round (extraction, embedding, reward, commit;
for ``influence`` mostly per-pair LoRA gradients on the CPU and their projection). The target's projected
gradients are computed once per run (and cached in the run directory): reported apart, as setup.

Run: ``python benchmarks/bench_influence.py [--quick] [--no-write]``; prints a table and writes its section of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _results import write_section

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from equal.config import ExtractConfig
from equal.embed import get_embedder
from equal.pipeline.extract import run_extract

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SECTION = "bench_influence"


def _config(reward: str, seed: int, budget: int, clusters: int, influence: dict[str, Any]) -> ExtractConfig:
    data: dict[str, Any] = {
        "data": {"corpus": str(EXAMPLES / "corpus.jsonl"), "target": str(EXAMPLES / "target.jsonl")},
        "run": {"budget_docs": budget, "seed": seed, "strategy": "random" if reward == "random" else "equal"},
        "cluster": {"clusters": clusters}, "extract": {"extractor": "rules"},
        "bandit": {"clusters_per_round": 4, "docs_per_cluster": 3},
    }
    if reward == "influence":
        data["bandit"]["ucb"] = {"alpha": 0.0001, "credit": "weighted", "tau": 0.2}
        data["reward"] = {"reward": "influence", "influence": influence}
    return ExtractConfig.from_dict(data)


def _maths_share(run: Path, source: dict[str, str]) -> float:
    docs = [d for line in (run / "rounds.jsonl").read_text().splitlines() for d in json.loads(line)["documents"]]
    return float(np.mean([source.get(d.split("#c")[0]) == "champ" for d in docs])) if docs else float("nan")


def _fmt(vals: list[float], digits: int = 4) -> str:
    a = np.asarray(vals, dtype=np.float64)
    if len(a) == 1:
        return f"{a[0]:.{digits}f}"
    return f"{a.mean():.{digits}f} ± {a.std(ddof=1):.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="One seed, a smaller budget and a cheap projection.")
    ap.add_argument("--budget", type=int, default=48, help="Documents (≈ LLM requests) per run.")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--clusters", type=int, default=40)
    ap.add_argument("--dim", type=int, default=8192, help="Projected dimension of the influence reward.")
    ap.add_argument("--max-target", type=int, default=64, help="Target examples in the influence reference set.")
    ap.add_argument("--max-length", type=int, default=128, help="Tokens per text for the gradients.")
    ap.add_argument("--lora-layers", default="", help="Comma-separated decoder layers with adapters (all: empty).")
    ap.add_argument("--no-write", action="store_true", help="Print only; leave RESULTS.md alone.")
    args = ap.parse_args()
    if args.quick:
        args.budget, args.seeds, args.dim, args.max_target, args.max_length = 24, 1, 1024, 16, 64
        args.lora_layers = args.lora_layers or "26,27,28,29"
    layers = [int(x) for x in args.lora_layers.split(",") if x.strip()]
    influence = {"dim": args.dim, "max_target": args.max_target, "max_length": args.max_length,
                 "lora_layers": layers}
    source = {json.loads(line)["id"]: json.loads(line)["source"]
              for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines()}

    work = Path(tempfile.mkdtemp(prefix="bench_influence_"))
    embedder = get_embedder("minilm")
    rewards = ["influence", "ot", "random"]
    res: dict[str, dict[str, list[float]]] = {r: {"ot": [], "maths": [], "pairs": [], "round_s": [], "setup_s": []}
                                             for r in rewards}
    for seed in range(args.seeds):
        for reward in rewards:
            run = work / f"{reward}-{seed}"
            stamps: list[float] = []
            t0 = time.perf_counter()

            def stamp(_info: object, stamps: list[float] = stamps) -> None:
                stamps.append(time.perf_counter())

            summary = run_extract(_config(reward, seed, args.budget, args.clusters, influence), run,
                                  embedder=embedder, on_round=stamp)
            # round 1 of influence also computes the target's gradients: counted as setup, not as a round
            times = np.diff([t0, *stamps])
            first = stamps[0] - t0 if stamps else float("nan")
            r = res[reward]
            r["ot"].append(float(summary.ot_distance or float("nan")))
            r["maths"].append(_maths_share(run, source))
            r["pairs"].append(summary.pairs)
            r["round_s"].append(float(times[1:].mean()) if len(times) > 1 else float("nan"))
            r["setup_s"].append(first)
            print(f"seed {seed} {reward:9s} docs {summary.documents_read:3d} pairs {summary.pairs:3d} "
                  f"OT {summary.ot_distance:.4f} maths {r['maths'][-1]:.2f} first round {first:6.1f} s "
                  f"later rounds {r['round_s'][-1]:6.1f} s", file=sys.stderr)

    rows = [f"| {rw} | {_fmt(res[rw]['ot'])} | {_fmt(res[rw]['maths'], 2)} | {_fmt(res[rw]['pairs'], 0)} "
            f"| {_fmt(res[rw]['round_s'], 1)} | {_fmt(res[rw]['setup_s'], 1)} |" for rw in rewards]
    per_seed = [f"| {s} | " + " | ".join(f"{res[rw]['ot'][s]:.4f} ({res[rw]['maths'][s]:.2f})" for rw in rewards)
                + " |" for s in range(args.seeds)]
    lora = f"layers {layers}" if layers else "all 30 layers"
    diff = np.asarray(res["influence"]["ot"]) - np.asarray(res["ot"]["ot"])
    wins = int((diff < 0).sum())
    paired = (f"Paired by seed, influence − ot in OT distance: {', '.join(f'{d:+.4f}' for d in diff)} (mean "
              f"{diff.mean():+.4f}{f', sd {diff.std(ddof=1):.4f}' if len(diff) > 1 else ''}); influence is lower in "
              f"{wins} of {len(diff)} seeds.")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"""## Cluster rewards: influence (Quad/LESS) vs OT (EQUAL) vs random (`benchmarks/bench_influence.py`)

Corpus `examples/corpus.jsonl` (984 documents, mixed domains; maths = the `champ` documents), target
`examples/target.jsonl` (150 GSM-style problems); extractor `rules`; {args.clusters} clusters, 4 clusters × 3
documents a round, budget {args.budget} documents, seeds {list(range(args.seeds))}{" (--quick)" if args.quick else ""}.
`influence`: LoRA r=8 on q_proj,v_proj ({lora}) of the bundled SmolLM2-135M, Rademacher projection to
d={args.dim}, {args.max_target} target examples, texts cut to {args.max_length} tokens, threshold 0.0020, UCB α=0.0001
with weighted neighbour credit (τ=0.2). Machine: {platform.machine()}, {os.cpu_count()} cores, this process on
{cores} (torch threads follow; the machine was shared with other jobs, so the seconds are upper bounds).
Mean ± standard deviation over seeds. "s, round 1" includes loading the model and the target's gradients
(once per run, then cached in `RUN/influence/`).

| reward | OT of kept pairs (lower better) | maths share read | pairs kept | s / round (2+) | s, round 1 |
|---|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

Per seed, OT distance (maths share):

| seed | {" | ".join(rewards)} |
|---:|{"---:|" * len(rewards)}
{chr(10).join(per_seed)}

{paired}
"""
    print(text)
    if not args.no_write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
