"""Iterative kMQ (3 rounds) vs kMQ vs random at the same data budget: held-out NLL after one fixed recipe.

Diversify-and-Conquer's Table 2 ordering (iterative kMQ > kMQ > random) at toy scale, on CPU:

1. The pool ``examples/pool.jsonl`` (961 SFT records: GSM-style maths, Python FAQ, Debian FAQ, ...) is embedded
   once with the bundled MiniLM.
2. Each method selects ``--budget`` records: ``random`` (uniform), ``kmq`` (:func:`equal.select.kmq`, the paper's
   size-proportional budgets, softmax of the pool's ``quality`` field inside clusters) and ``iterative``
   (:func:`equal.pipeline.kmq_iterative.iterative_kmq`, 3 rounds, uniform weights in round 1, the same quality
   sampling; between rounds it fine-tunes on the rows so far with the recipe below, generates greedy answers to
   the round's rows and scores them with ``--scorer``; cluster weights by ``--reweight``).
3. The bundled SmolLM2-135M-Instruct is fine-tuned on each selection with one fixed LoRA recipe (same epochs, so
   the same number of steps for every method), and the mean per-token NLL of the reference answers of the held-out
   ``examples/target.jsonl`` problems (never selected: they are not in the pool) is measured with
   :func:`equal.evaluate.nll_scores` (lower is better). The base model is scored too.

Repeated for ``--seeds`` seeds (selection and training seed alike). Reported: mean ± std per method, and the
per-seed paired differences, so the noise of a 135M model trained for a few dozen steps is visible.

Run: ``python benchmarks/bench_iterative.py [--quick] [--seeds 3] [--budget 24]``; writes its section of
``benchmarks/RESULTS.md`` (``--quick``: a smoke run, nothing written unless ``--write``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
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
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT / "examples" / "pool.jsonl"
TARGET = ROOT / "examples" / "target.jsonl"
SECTION = "iterative"
METHODS = ("random", "kmq", "iterative")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def heldout_nll(ckpt: str, prompts: list[list[dict[str, str]]], refs: list[str], threads: int) -> float:
    from equal.evaluate import nll_scores
    from equal.train import model_folder

    folder = model_folder(ckpt)
    nll = nll_scores(folder, prompts, refs, batch_size=8, threads=threads).nll
    if ckpt != "bundled" and folder.name == "merged":
        shutil.rmtree(folder)  # 0.5 GB per model; the adapter stays
    return nll


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 seed, budget 12, 4 clusters, 20 held-out (smoke).")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=int, default=24, help="Records selected per method.")
    ap.add_argument("--clusters", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scorer", default="embed", choices=("embed", "ppl", "judge"))
    ap.add_argument("--reweight", default="softmax", choices=("softmax", "paper"))
    ap.add_argument("--heldout", type=int, default=40, help="Held-out target problems scored.")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine).")
    ap.add_argument("--work", type=Path, default=None, help="Keep the runs here (default: a temp dir).")
    ap.add_argument("--write", action="store_true", help="Write RESULTS.md even with --quick.")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.budget, args.clusters, args.heldout = 1, 12, 4, 20

    from equal import l2_normalize
    from equal.data import render_text
    from equal.data.sft import to_messages
    from equal.embed import CachedEmbedder, get_embedder
    from equal.pipeline.kmq_iterative import IterativeKMQConfig, iterative_kmq
    from equal.select import kmq, random_select
    from equal.train import TrainConfig, train

    t_start = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-iterative-"))
    work.mkdir(parents=True, exist_ok=True)
    pool = read_jsonl(POOL)
    quality = np.asarray([float(r["quality"]) for r in pool], dtype=np.float64)
    embedder = CachedEmbedder(get_embedder(None))
    X = l2_normalize(embedder.encode([render_text(r) for r in pool]))
    held = [to_messages(r) for r in read_jsonl(TARGET)[: args.heldout]]
    prompts, refs = [m[:-1] for m in held], [m[-1]["content"] for m in held]
    base_nll = heldout_nll("bundled", prompts, refs, args.threads)
    print(f"base model held-out NLL {base_nll:.4f}", flush=True)

    rows: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        recipe = TrainConfig(method="lora", epochs=args.epochs, lr=2e-4, batch_size=4, max_length=args.max_length,
                             lora_r=8, lora_alpha=16, seed=seed, threads=args.threads, skip_invalid=True,
                             save_steps=1000)
        for method in METHODS:
            t0 = time.perf_counter()
            extra: dict[str, Any] = {}
            if method == "random":
                idx = random_select(len(pool), args.budget, seed=seed).indices
            elif method == "kmq":
                idx = kmq(X, args.budget, n_clusters=args.clusters, quality=quality, seed=seed).indices
            else:
                cfg = IterativeKMQConfig(k=args.budget, rounds=args.rounds, n_clusters=args.clusters,
                                         scorer=args.scorer, reweight=args.reweight,
                                         max_new_tokens=args.max_new_tokens, seed=seed, train=recipe)
                res = iterative_kmq(pool, X, cfg, work_dir=work / f"iter-s{seed}", quality=quality,
                                    embedder=embedder)
                idx = res.indices
                extra = {"per_round": [{"budgets": r.budgets, "weights_after": r.weights_after,
                                        "cluster_scores": r.cluster_scores} for r in res.rounds]}
            select_s = time.perf_counter() - t0
            assert len(set(idx.tolist())) == args.budget
            tr = train([pool[int(i)] for i in idx], work / f"{method}-s{seed}.ckpt", recipe)
            nll = heldout_nll(tr.out, prompts, refs, args.threads)
            row = {"method": method, "seed": seed, "nll": nll, "steps": tr.steps, "records": tr.data["records"],
                   "select_s": round(select_s, 1), "train_s": round(tr.seconds, 1),
                   "sources": _sources(pool, idx), **extra}
            print(json.dumps(row), flush=True)
            rows.append(row)

    lines = render(rows, base_nll, args, time.perf_counter() - t_start)
    print("\n".join(lines))
    if not args.quick or args.write:
        write_section(SECTION, "\n".join(lines))


def _sources(pool: list[dict[str, Any]], idx: np.ndarray) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in idx:
        src = str(pool[int(i)].get("source", "?")).split("/")[0]
        out[src] = out.get(src, 0) + 1
    return dict(sorted(out.items()))


def render(rows: list[dict[str, Any]], base_nll: float, args: argparse.Namespace, seconds: float,
           note: str = "") -> list[str]:
    """The RESULTS.md section; methods or seeds missing from ``rows`` (a run cut short) are left out."""
    by = {m: [r for r in rows if r["method"] == m] for m in METHODS if any(r["method"] == m for r in rows)}
    seeds = sorted({r["seed"] for r in rows})

    def ms(v: list[float]) -> str:
        return f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}" if len(v) > 1 else f"{v[0]:.4f}"

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cmd = " ".join(["python benchmarks/bench_iterative.py", *sys.argv[1:]])
    out = [
        "## Iterative kMQ vs kMQ vs random (`benchmarks/bench_iterative.py`)",
        "",
        f"`{cmd}` on {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores (load average at the end {load:.1f}), {seconds / 60:.1f} min in all. "
        f"Pool `examples/pool.jsonl` ({POOL.read_text().count(chr(10))} records), budget **{args.budget}** records "
        f"per method, k-means K={args.clusters}; iterative: {args.rounds} rounds, scorer `{args.scorer}`, reweight "
        f"`{args.reweight}`, greedy max {args.max_new_tokens} new tokens. One recipe for every selection (and for "
        f"the fine-tunes between rounds): bundled SmolLM2-135M-Instruct, LoRA r=8 α=16, lr 2e-4, batch 4, "
        f"{args.epochs:g} epochs, max length {args.max_length}, {args.threads} torch thread(s). Held-out: the first "
        f"{args.heldout} problems of `examples/target.jsonl` (not in the pool), mean NLL per reference-answer token "
        f"(lower is better); base model **{base_nll:.4f}**. {len(seeds)} seed(s).{note}",
        "",
        "| method | held-out NLL (mean ± std) | gain over base | train steps | selection seconds (mean) |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in by:
        v = [r["nll"] for r in by[m]]
        out.append(f"| {m} | {ms(v)} | {base_nll - statistics.mean(v):+.4f} | {by[m][0]['steps']} | "
                   f"{statistics.mean(r['select_s'] for r in by[m]):.1f} |")
    out.append("")
    for a, b in (("iterative", "kmq"), ("kmq", "random"), ("iterative", "random")):
        both = [s for s in seeds if any(r["seed"] == s for r in by.get(a, [])) and
                any(r["seed"] == s for r in by.get(b, []))]
        if not both:
            continue
        d = [next(r["nll"] for r in by[b] if r["seed"] == s) - next(r["nll"] for r in by[a] if r["seed"] == s)
             for s in both]
        wins = sum(x > 0 for x in d)
        spread = f" ± {statistics.stdev(d):.4f} (std over seeds)" if len(d) > 1 else ""
        out.append(f"- {a} vs {b}: NLL({b}) − NLL({a}) = {statistics.mean(d):+.4f}{spread}; {a} better in "
                   f"{wins} of {len(d)} seeds.")
        if len(d) > 1:
            sem = statistics.stdev(d) / len(d) ** 0.5
            verdict = ("beyond" if abs(statistics.mean(d)) > 2 * sem else "within")
            out[-1] += f" The mean is {verdict} 2 standard errors ({2 * sem:.4f}) of the paired differences."
    stds = [statistics.stdev([r["nll"] for r in by[m]]) for m in by if len(by[m]) > 1]
    if stds:
        out.append(f"- Noise: the seed-to-seed std of one method's NLL is up to {max(stds):.4f} (seeds change both "
                   "the selection and the training order). With 3 seeds a paired difference needs to be clear of "
                   "2 standard errors before it says anything; the paper's gaps come from a 7B model on 10k rows.")
    out.append("")
    def srcs(r: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v}" for k, v in r["sources"].items())

    per_seed = "; ".join(f"{r['method']} s{r['seed']}: {r['nll']:.4f} ({srcs(r)})" for r in rows)
    out.append(f"Per-seed NLL (and the sources of the selected rows): {per_seed}.")
    it = [r for r in rows if r["method"] == "iterative"]
    if it:
        rounds = " / ".join(str(p["budgets"]) for p in it[0]["per_round"])
        out.append("")
        out.append(f"Iterative allocation, seed {it[0]['seed']} (rows per cluster, round by round): {rounds}; weights "
                   f"after round 1: {[round(w, 3) for w in it[0]['per_round'][0]['weights_after']]}.")
    return out


if __name__ == "__main__":
    main()
