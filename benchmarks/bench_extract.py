"""EQUAL vs random vs all: OT distance of the extracted set to the target as a function of LLM requests.

The corpus is ``examples/corpus.jsonl`` (984 documents: competition maths with solutions, Python FAQ and
tutorial, Debian FAQ, manual pages) and the target ``examples/target.jsonl`` (150 GSM-style problems), so
only some clusters (the maths ones) match the target. Every strategy runs through ``run_extract`` in one
process on the same embeddings, with the same budget and several seeds.

By default the pairs come from the rule-based extractor, which costs nothing and is deterministic, and each
document read counts as one LLM request: the LLM extractor sends exactly one request per document (two with
``--refine``), so the x axis is the request count an LLM run would pay. ``--extractor llm`` runs the real
LLM instead (``--llm openai --base-url ... --model ...`` for a served model; the bundled CPU model is slow).

Run: ``python benchmarks/bench_extract.py [--quick]``; writes its section of ``benchmarks/RESULTS.md`` and
``benchmarks/extract_curve.svg``.
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

import numpy as np

from _results import write_section

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from equal.config import ExtractConfig
from equal.pipeline.extract import run_extract
from equal.report.svg import line_chart

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SECTION = "bench_extract"


def curve(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(requests, OT distance) after each round; requests = documents sent to the extractor."""
    rows = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    x = np.array([r["llm_requests"] if r["llm_requests"] else r["documents_read"] for r in rows], dtype=float)
    y = np.array([np.nan if r["ot_distance"] is None else r["ot_distance"] for r in rows], dtype=float)
    return x, y


def first_reach(x: np.ndarray, y: np.ndarray, level: float) -> float:
    """Requests after which the curve is at or below ``level`` for the first time (inf if never)."""
    hit = np.flatnonzero(np.nan_to_num(y, nan=np.inf) <= level)
    return float(x[hit[0]]) if len(hit) else float("inf")


def value_at(x: np.ndarray, y: np.ndarray, at: float) -> float:
    """The curve's value after the last round with at most ``at`` requests."""
    idx = np.flatnonzero(x <= at)
    return float(y[idx[-1]]) if len(idx) else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="One seed and a smaller budget.")
    ap.add_argument("--budget", type=int, default=250, help="Documents (≈ LLM requests) per strategy.")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--extractor", default="rules", choices=["rules", "llm"])
    ap.add_argument("--llm", default="local", choices=["local", "openai"])
    ap.add_argument("--base-url", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--clusters", type=int, default=40)
    ap.add_argument("--no-write", action="store_true", help="Print only; leave RESULTS.md alone.")
    args = ap.parse_args()
    budget = 120 if args.quick else args.budget
    seeds = list(range(1 if args.quick else args.seeds))

    work = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    # "equal" numbers clusters nearest-the-target first (equal's default); "equal-kmeans" keeps k-means'
    # arbitrary numbering, as EQUAL's code does. Same policy, same budget; only the first rounds differ.
    runs = {"equal": ("equal", "target"), "equal-kmeans": ("equal", "kmeans"), "random": ("random", "target"),
            "all": ("all", "target")}
    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {name: [] for name in runs}
    times: dict[str, float] = {}
    pairs: dict[str, list[int]] = {k: [] for k in curves}
    for seed in seeds:
        for name, (strategy, order) in runs.items():
            if strategy == "all" and seed != seeds[0]:
                continue  # "all" reads every document; its curve depends on the seed only through clustering
            cfg = ExtractConfig.from_flat(
                corpus=str(EXAMPLES / "corpus.jsonl"), target=str(EXAMPLES / "target.jsonl"),
                strategy=strategy, budget_docs=None if strategy == "all" else budget, extractor=args.extractor,
                llm=args.llm, base_url=args.base_url, model=args.model, clusters=args.clusters,
                clusters_per_round=4, docs_per_cluster=3, cluster_order=order, seed=seed,
            )
            t0 = time.perf_counter()
            summary = run_extract(cfg, work / f"{name}-{seed}")
            times[name] = times.get(name, 0.0) + time.perf_counter() - t0
            curves[name].append(curve(work / f"{name}-{seed}"))
            pairs[name].append(summary.pairs)
            print(f"seed {seed} {name:12s} docs {summary.documents_read:4d} pairs {summary.pairs:4d} "
                  f"OT {summary.ot_distance:.4f}", file=sys.stderr)

    # per seed: requests each EQUAL run needs to reach random's distance at the full budget
    rows: dict[str, list[tuple[float, float, float]]] = {"equal": [], "equal-kmeans": []}
    for name, per_seed_rows in rows.items():
        for (xe, ye), (xr, yr) in zip(curves[name], curves["random"], strict=True):
            level = value_at(xr, yr, budget)
            per_seed_rows.append((level, first_reach(xe, ye, level), value_at(xe, ye, budget)))
    ratios = {name: [need / budget for _lvl, need, _end in r] for name, r in rows.items()}
    xa, ya = curves["all"][0]

    checkpoints = [b for b in (12, 24, 48, 96, 120, 180, 250, 500) if b <= budget] + [int(xa[-1])]
    table = ["| LLM requests | equal (mean OT) | equal, k-means order (mean OT) | random (mean OT) | all (OT) |",
             "|---:|---:|---:|---:|---:|"]
    fmt = lambda v: "–" if np.isnan(v) else f"{v:.4f}"  # noqa: E731
    for b in sorted(set(checkpoints)):
        cells = [
            np.nanmean([value_at(x, y, b) for x, y in curves[name]]) if b <= budget else float("nan")
            for name in ("equal", "equal-kmeans", "random")
        ]
        table.append(f"| {b} | {' | '.join(fmt(v) for v in cells)} | {fmt(value_at(xa, ya, b))} |")

    chart = line_chart(
        {
            "equal (seed 0)": tuple(map(list, curves["equal"][0])),  # type: ignore[dict-item]
            "equal, k-means order (seed 0)": tuple(map(list, curves["equal-kmeans"][0])),  # type: ignore[dict-item]
            "random (seed 0)": tuple(map(list, curves["random"][0])),  # type: ignore[dict-item]
            "all": (list(xa), list(ya)),
        },
        title="OT distance of the extracted set to the target",
        xlabel="LLM requests (documents read)", ylabel="OT distance (IPOT, lower = closer)", width=640,
    )
    svg_path = ROOT / "benchmarks" / "extract_curve.svg"

    per_seed = "\n".join(
        f"| {s} | {lvl:.4f} | {need:.0f} ({need / budget:.2f}) | {eq_end:.4f} | {k_need:.0f} ({k_need / budget:.2f}) "
        f"| {k_end:.4f} |"
        for s, (lvl, need, eq_end), (_l, k_need, k_end) in zip(seeds, rows["equal"], rows["equal-kmeans"],
                                                                strict=True)
    )
    reach_header = (f"| seed | random's OT at {budget} | equal reaches it after (ratio) | equal's OT at {budget} "
                    f"| k-means order reaches it after (ratio) | k-means order's OT at {budget} |")
    text = f"""## EQUAL vs random vs all (`benchmarks/bench_extract.py{' --quick' if args.quick else ''}`)

Corpus `examples/corpus.jsonl` (984 documents, mixed domains), target `examples/target.jsonl` (150 GSM-style
problems); extractor `{args.extractor}`{' (one document = one LLM request)' if args.extractor == 'rules' else ''},
{args.clusters} clusters, 4 clusters × 3 documents a round, budget {budget} requests, seeds {seeds}.
`equal` is the default run (clusters numbered nearest-the-target first, `--cluster-order target`);
`equal, k-means order` is the same policy on k-means' arbitrary numbering, as EQUAL's code has it
(`--cluster-order kmeans`). Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores.

{chr(10).join(table)}

Requests each EQUAL run needs to reach random's distance at the full budget (goal: at most a fifth,
ratio ≤ 0.20); the curves are read after each round of 12 requests:

{reach_header}
|---:|---:|---:|---:|---:|---:|
{per_seed}

Mean ratio: equal **{np.mean(ratios['equal']):.2f}**, k-means order **{np.mean(ratios['equal-kmeans']):.2f}**.
Pairs kept (mean): equal {np.mean(pairs['equal']):.0f}, k-means order {np.mean(pairs['equal-kmeans']):.0f},
random {np.mean(pairs['random']):.0f}, all {np.mean(pairs['all']):.0f}. Wall time: equal {times['equal']:.0f} s,
k-means order {times['equal-kmeans']:.0f} s, random {times['random']:.0f} s, all {times['all']:.0f} s
(embedding, clustering and OT included; the first run embeds the corpus, the others read the cache).

![OT distance vs requests](extract_curve.svg)
"""
    print(text)
    if not args.no_write:
        svg_path.write_text(chart)
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
