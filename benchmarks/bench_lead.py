"""LEAD vs random at the same number of trained samples: held-out NLL after training, and wall time.

``examples/pool.jsonl`` is split once, seeded: ``--heldout`` records are only ever evaluated, and ``--pool`` of the
others form the pool. For each seed, the bundled SmolLM2-135M-Instruct is fine-tuned with one LoRA recipe on
``--budget`` trained samples chosen two ways:

- ``lead``: ``equal.train.train_lead`` (``equal train --select lead``): k-means clusters of the pool, EXP3 over
  them, the drawn cluster's top-utility samples each iteration, utilities from the training forward pass;
- ``random``: ``equal.train.train`` for one epoch on ``--budget`` records drawn uniformly from the pool.

Both use the same recipe (LoRA r=8, α=16, lr 2e-4 with linear decay to 0 at the budget, batch 4) and the same
number of trained samples, hence the same number of optimizer steps. The held-out NLL is the mean per-token NLL
of the reference answers (``equal.evaluate.nll_scores``; lower is better). Wall time counts everything a method
does (LEAD: scoring the pool with the base model, embedding and clustering it, training; random: training).

Run: ``python benchmarks/bench_lead.py [--quick] [--seeds 3] [--budget 96] [--pool 300]``; writes its section of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from _results import write_section

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT / "examples" / "pool.jsonl"
SECTION = "lead"


def trainable(rows: list[dict[str, Any]], max_length: int) -> list[dict[str, Any]]:
    """The records with an assistant token inside the first ``max_length`` tokens (both methods can train them)."""
    from equal.train import encode, load_tokenizer, model_folder

    tokenizer = load_tokenizer(model_folder("bundled"))
    return [r for r in rows if any(t != -100 for t in encode(tokenizer, r["messages"])[1][:max_length])]


def split(n_heldout: int, n_pool: int, max_length: int, seed: int = 1234) -> tuple[list[dict[str, Any]],
                                                                                  list[dict[str, Any]]]:
    rows = [json.loads(line) for line in POOL.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = trainable(rows, max_length)
    order = np.random.default_rng(seed).permutation(len(rows))
    held = [rows[i] for i in sorted(order[:n_heldout].tolist())]
    pool = [rows[i] for i in sorted(order[n_heldout:n_heldout + n_pool].tolist())]
    return held, pool


def heldout_nll(model: str, held: list[dict[str, Any]], threads: int) -> float:
    from equal.evaluate import nll_scores
    from equal.train import model_folder

    prompts = [r["messages"][:-1] for r in held]
    refs = [r["messages"][-1]["content"] for r in held]
    return nll_scores(model_folder(model), prompts, refs, max_length=512, threads=threads).nll


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="One seed, a small pool and budget (a smoke run).")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=int, default=96, help="Trained samples per method (with repeats for LEAD).")
    ap.add_argument("--pool", type=int, default=300, help="Pool records LEAD chooses from (random draws from).")
    ap.add_argument("--heldout", type=int, default=80)
    ap.add_argument("--clusters", type=int, default=4)
    ap.add_argument("--samples-per-iter", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", type=Path, default=None, help="Keep checkpoints here (default: a temp dir).")
    ap.add_argument("--no-write", action="store_true", help="Print the table without writing RESULTS.md.")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.budget, args.pool, args.heldout, args.samples_per_iter = 1, 16, 48, 24, 8

    from equal._threads import available_cores
    from equal.train import LeadConfig, TrainConfig, train, train_lead

    threads = args.threads or available_cores()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_lead-"))
    work.mkdir(parents=True, exist_ok=True)
    held, pool = split(args.heldout, args.pool, args.max_length)
    t_start = time.perf_counter()
    base_nll = heldout_nll("bundled", held, threads)
    print(json.dumps({"base_nll": base_nll}), flush=True)
    rows: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        recipe = TrainConfig(epochs=1, lr=2e-4, batch_size=4, max_length=args.max_length, lora_r=8, lora_alpha=16,
                             seed=seed, threads=threads, save_steps=10_000)
        lead = LeadConfig(budget=args.budget, n_clusters=args.clusters, samples_per_iter=args.samples_per_iter)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # k-means on a few hundred points: faiss's 39-per-centroid notice
            res = train_lead(pool, work / f"lead-s{seed}", recipe, lead, force=True)
        wall = time.perf_counter() - t0
        rows.append({"method": "lead", "seed": seed, "unique": res.unique_samples, "trained": res.samples_trained,
                     "steps": res.train.steps, "train_s": res.train.seconds, "wall_s": wall,
                     "choices": res.choices, "nonzero_rewards": sum(abs(r) > 1e-9 for r in res.rewards),
                     "nll": heldout_nll(res.train.out, held, threads)})
        print(json.dumps(rows[-1]), flush=True)

        pick = np.random.default_rng(seed).choice(len(pool), size=min(args.budget, len(pool)), replace=False)
        t0 = time.perf_counter()
        tr = train([pool[i] for i in sorted(pick.tolist())], work / f"random-s{seed}", recipe, force=True)
        wall = time.perf_counter() - t0
        rows.append({"method": "random", "seed": seed, "unique": len(pick), "trained": len(pick),
                     "steps": tr.steps, "train_s": tr.seconds, "wall_s": wall,
                     "nll": heldout_nll(tr.out, held, threads)})
        print(json.dumps(rows[-1]), flush=True)
        lines = render(rows, base_nll, args, threads, time.perf_counter() - t_start)
        if not args.no_write:  # after every seed, so a long run interrupted still leaves its finished seeds
            write_section(SECTION, "\n".join(lines))
    print("\n".join(lines))


def _command() -> str:
    """This run's command line, without ``--work DIR`` (a local path)."""
    argv, shown = sys.argv[1:], []
    skip = False
    for a in argv:
        if skip or a == "--work":
            skip = a == "--work"
            continue
        shown.append(a)
    return " ".join(["python benchmarks/bench_lead.py", *shown])


def _ms(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def render(rows: list[dict[str, Any]], base_nll: float, args: argparse.Namespace, threads: int,
           seconds: float) -> list[str]:
    out = [
        "## LEAD vs random at the same number of trained samples (`benchmarks/bench_lead.py`)",
        "",
        f"`{_command()}` on {platform.machine()}, "
        f"{threads} torch threads, {seconds / 60:.1f} min in all (a shared machine: wall times carry its load). "
        f"`examples/pool.jsonl` split once: {args.heldout} held-out records (evaluated only), a pool of {args.pool} "
        f"others. Bundled SmolLM2-135M-Instruct, LoRA r=8 α=16, lr 2e-4 linear to 0, batch 4, max length "
        f"{args.max_length}; {args.budget} trained samples per method; LEAD with {args.clusters} k-means clusters, "
        f"{args.samples_per_iter} samples per iteration, smoothing 0.1, EXP3 γ 0.1, at most 4 uses per sample; "
        f"{len({r['seed'] for r in rows})} of {args.seeds} seed(s) done. Held-out NLL per reference-answer token "
        "(lower is better); base model "
        f"**{base_nll:.4f}**.",
        "",
        "| method | held-out NLL (mean ± std) | gain over base | unique samples | train s | wall s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["method"], []).append(r)
    for method, rs in by.items():
        nll = [r["nll"] for r in rs]
        out.append(f"| {method} | {_ms(nll)} | {base_nll - statistics.mean(nll):+.4f} | "
                   f"{statistics.mean(r['unique'] for r in rs):.0f} | "
                   f"{statistics.mean(r['train_s'] for r in rs):.1f} | "
                   f"{statistics.mean(r['wall_s'] for r in rs):.1f} |")
    out.append("")
    if "lead" in by and "random" in by:
        diffs = [r["nll"] - q["nll"] for r, q in zip(by["random"], by["lead"], strict=True)]
        better = "LEAD better" if statistics.mean(diffs) > 0 else "random better"
        spread = f" ± {statistics.stdev(diffs):.4f}" if len(diffs) > 1 else ""
        clear = ""
        if len(diffs) > 1:  # a paired difference says something only once it is clear of 2 standard errors
            se2 = 2 * statistics.stdev(diffs) / len(diffs) ** 0.5
            clear = (f" The mean is {'clear of' if abs(statistics.mean(diffs)) > se2 else 'within'} 2 standard "
                     f"errors ({se2:.4f}) of the paired differences.")
        out.append(f"- Paired by seed, random − LEAD NLL: {statistics.mean(diffs):+.4f}{spread} ({better} on "
                   f"average; {sum(d > 0 for d in diffs)} of {len(diffs)} seeds favour LEAD).{clear}")
        out.append(f"- LEAD's rewards: {', '.join(str(r['nonzero_rewards']) for r in by['lead'])} non-zero per run "
                   "(LEAD's released code passes 0 every time); a first iteration of one optimizer step has reward 0 "
                   "by construction (its batch is scored before any update).")
    out.append("- LEAD trains the samples it finds hardest (highest loss-based utility) and may train one several "
               "times; random trains each of its samples once. Same samples trained, same optimizer steps.")
    out.append("- Noise: seeds change both LEAD's draws and the training order; with one 135M model, a few hundred "
               "samples and 3 seeds, a gap within 2 standard errors is not evidence either way. LEAD's published "
               "gains come from 7-8B models (LLaMA-3.1-8B, Mistral-7B, Qwen2-7B) selecting 15,000 unique samples "
               "of a 600k pool, where repeating a hard sample is a small share of the budget; here its repeats "
               "leave it fewer unique samples than random (the unique column).")
    per_seed = "; ".join(f"{r['method']} s{r['seed']}: NLL {r['nll']:.4f}, {r['unique']} unique"
                         + (f", clusters {r['choices']}" if r["method"] == "lead" else "") for r in rows)
    out += ["", f"Per-seed rows: {per_seed}."]
    return out


if __name__ == "__main__":
    sys.exit(main())
