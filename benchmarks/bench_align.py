"""EQUAL's warm-up: does contrastive alignment bring documents nearer their own QA pairs, and does it help?

Part 1, retrieval, on pairs worded unlike their documents (rule-extracted pairs are near-verbatim copies of
their documents, which the base encoder already ranks perfectly): FAQ sections with the question heading
stripped from the document (the heading is the pair), and CHAMP problems (the solution is the document, the
problem statement its pair); optionally (``--llm-docs N``) manpage sections with the pairs the bundled SmolLM2
extracts. MiniLM is aligned (`equal.align.align`) on the Python FAQ and half the CHAMP problems (seeded
split); each held-out document (the Debian FAQ: a source never trained on; the other CHAMP half; the manpages)
then queries all pairs of its held-out set, and we report recall@1 / recall@10 (its own pair ranks first / in
the top 10) and MRR (1 / rank of its pair), base vs aligned, per seed, and the training time.

Part 2, the loop. ``equal extract`` with the rule extractor on a slice of the example corpus: ``equal``
with ``--warmup-docs`` vs plain ``equal`` vs ``random``, at the same total document budget (the warm-up's
documents are part of it), 3 seeds; the exact OT distance of the kept pairs to the target (lower is better;
each run is scored with the plain MiniLM so the numbers compare).

CPU only. Run: ``python benchmarks/bench_align.py [--quick] [--no-write]``; prints the tables and writes the
``bench_align`` section of ``benchmarks/RESULTS.md``.
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

from _results import write_section

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

SECTION = "align"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _corpus_rows() -> list[dict]:
    return [json.loads(line) for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines()]


def faq_examples(source: str) -> list:
    """FAQ sections with the question heading stripped from the document; the heading is the pair.

    A section split in parts ("... (continued)") keeps its first part only, so no two documents share a pair.
    """
    from equal.align import AlignExample

    out = []
    for row in _corpus_rows():
        if row["source"] != source:
            continue
        head, sep, body = row["text"].partition("\n\n")
        if not sep or not body.strip() or head.rstrip().endswith("(continued)"):
            continue
        out.append(AlignExample(body.strip(), (" ".join(head.split()),), row["id"]))
    return out


def champ_examples() -> list:
    """CHAMP problems: the solution is the document, the problem statement its one pair."""
    from equal.align import AlignExample

    out = []
    for row in _corpus_rows():
        if row["source"] != "champ":
            continue
        _, _, rest = row["text"].partition("Problem:")
        problem, sep, solution = rest.partition("Solution:")
        if sep and problem.strip() and solution.strip():
            out.append(AlignExample(solution.strip(), (problem.strip(),), row["id"]))
    return out


def llm_examples(n_docs: int) -> list:
    """Manpage sections and the pairs the bundled SmolLM2 extracts from them (``equal extract --strategy all``).

    The run lives in ``benchmarks/_out/align/llm-<n>`` (git-ignored) with its LLM cache, so a rerun is free.
    """
    from equal.align import read_align_data
    from equal.config import ExtractConfig
    from equal.pipeline.extract import run_extract

    cache = Path(__file__).resolve().parent / "_out" / "align"
    cache.mkdir(parents=True, exist_ok=True)
    corpus = cache / f"manpages-{n_docs}.jsonl"
    rows = [r for r in _corpus_rows() if r["source"] == "manpages"]
    step = max(1, len(rows) // n_docs)  # spread over the man pages, not the first few pages' sections
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows[::step][:n_docs]))
    cfg = ExtractConfig.from_flat(corpus=str(corpus), target=str(EXAMPLES / "target.jsonl"), strategy="all",
                                  budget_docs=n_docs, seed=0)
    run = cache / f"llm-{n_docs}"
    run_extract(cfg, run)
    return read_align_data(run)


def retrieval(model_dir: str | None, held: list, max_length: int) -> dict[str, float]:
    """recall@1, recall@10 and MRR of each held-out document's own pairs among all pairs of ``held``."""
    from equal.embed import SentenceTransformerEmbedder

    emb = SentenceTransformerEmbedder(model_dir, max_length=max_length)
    pairs = [t for e in held for t in e.pairs]
    owner = np.asarray([g for g, e in enumerate(held) for _ in e.pairs], dtype=np.int64)
    S = emb.encode([e.document for e in held]) @ emb.encode(pairs).T
    first = np.empty(len(held))
    for i in range(len(held)):
        order = np.argsort(-S[i], kind="stable")
        first[i] = int(np.flatnonzero(owner[order] == i)[0]) + 1
    return {"recall@1": float(np.mean(first == 1)), "recall@10": float(np.mean(first <= 10)),
            "mrr": float(np.mean(1.0 / first))}


def split(seed: int, llm: list) -> tuple[list, dict[str, list]]:
    """Training documents (Python FAQ, half the CHAMP problems) and the held-out sets.

    Held out: the Debian FAQ (a source never trained on), the other half of CHAMP (documents never trained
    on) and, when given, the SmolLM2-extracted manpage pairs (a source and a pair style never trained on).
    """
    champ = champ_examples()
    order = np.random.default_rng(seed).permutation(len(champ))
    half = len(champ) // 2
    train = faq_examples("python-faq") + [champ[i] for i in order[:half]]
    held = {"Debian FAQ, unseen source": faq_examples("debian-faq"),
            "CHAMP, unseen problems": [champ[i] for i in order[half:]]}
    if llm:
        held["manpages with SmolLM2 pairs, unseen source"] = llm
    return train, held


def _mean_sd(xs: list[float]) -> str:
    a = np.asarray(xs, dtype=np.float64)
    return f"{a.mean():.3f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.3f}"


def score_table(scores: dict[tuple[str, str], list[dict[str, float]]], sizes: dict[str, int]) -> str:
    """Markdown table of ``scores[(held-out set, "base" | "aligned")]`` = one metrics dict per seed."""
    lines = ["| held-out set (documents) | encoder | recall@1 | recall@10 | MRR | Δ recall@10 | Δ MRR |",
             "|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(name for name, _ in scores):
        base, aligned = scores[(name, "base")], scores[(name, "aligned")]
        for enc, rs in (("MiniLM (base)", base), ("MiniLM aligned", aligned)):
            delta = ("", "") if rs is base else tuple(
                _mean_sd([a[m] - b[m] for a, b in zip(aligned, base, strict=True)]) for m in ("recall@10", "mrr"))
            lines.append(f"| {name} ({sizes[name]}) | {enc} | {_mean_sd([r['recall@1'] for r in rs])} | "
                         f"{_mean_sd([r['recall@10'] for r in rs])} | {_mean_sd([r['mrr'] for r in rs])} | "
                         f"{delta[0]} | {delta[1]} |")
    return "\n".join(lines)


def part1(args: argparse.Namespace, work: Path) -> tuple[str, dict]:
    from equal.align import AlignConfig, align

    llm = llm_examples(args.llm_docs) if args.llm_docs else []
    scores: dict[tuple[str, str], list[dict[str, float]]] = {}
    runs = []
    base_cache: dict[tuple[str, ...], dict[str, float]] = {}
    for seed in args.seeds:
        train, held = split(seed, llm)
        config = AlignConfig(epochs=args.epochs, batch_size=args.batch_size, hard_negatives=args.hard_negatives,
                             temperature=args.temperature, lr=args.lr, max_length=args.max_length, seed=seed,
                             save_steps=10_000)
        t0 = time.perf_counter()
        result = align(train, work / f"aligned-{seed}", config)
        wall = time.perf_counter() - t0
        runs.append({"seed": seed, "train_docs": len(train), "rows": result.data["rows"], "steps": result.steps,
                     "hard_negatives": result.data["hard_negatives"], "seconds": result.seconds, "wall": wall,
                     "loss": [result.loss_curve[0][1], result.final_loss]})
        for name, docs in held.items():
            key = tuple(e.doc_id for e in docs)  # the base encoder's scores of a set do not change with the seed
            if key not in base_cache:
                base_cache[key] = retrieval(None, docs, args.max_length)
            scores.setdefault((name, "base"), []).append(base_cache[key])
            scores.setdefault((name, "aligned"), []).append(
                retrieval(str(work / f"aligned-{seed}"), docs, args.max_length))
        print(runs[-1], {k: v[-1] for k, v in scores.items()}, flush=True)
    sizes = {name: len(docs) for name, docs in split(args.seeds[0], llm)[1].items()}
    table = score_table(scores, sizes)
    print(table)
    return table, {"runs": runs, "scores": {f"{k[0]} / {k[1]}": v for k, v in scores.items()}}


def _slice(work: Path, n: int) -> tuple[Path, Path]:
    rows = [json.loads(line) for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines()]
    per = {"champ": n // 4, "python-faq": n // 4, "debian-faq": n // 4, "manpages": n // 8, "python-tutorial": n // 8}
    picked = []
    for row in rows:
        if per.get(row["source"], 0) > 0:
            per[row["source"]] -= 1
            picked.append(row)
    corpus = work / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in picked))
    return corpus, EXAMPLES / "target.jsonl"


def part2(args: argparse.Namespace, work: Path) -> tuple[str, list]:
    from equal.config import ExtractConfig
    from equal.embed import get_embedder
    from equal.ot import distance
    from equal.pipeline.extract import load_pairs, run_extract
    from equal.pipeline.setup import read_target

    corpus, target = _slice(work, args.corpus_docs)
    minilm = get_embedder("minilm")
    results = []
    for seed in args.seeds:
        for name, kw in (("equal --warmup-docs", {"warmup_docs": args.warmup_docs}), ("equal", {}),
                         ("random", {"strategy": "random"})):
            cfg = ExtractConfig.from_flat(corpus=str(corpus), target=str(target), extractor="rules",
                                          budget_docs=args.budget, clusters=args.clusters, clusters_per_round=2,
                                          docs_per_cluster=3, seed=seed, warmup_hard_negatives=args.hard_negatives,
                                          warmup_temperature=args.temperature, warmup_epochs=args.epochs, **kw)
            out = work / f"run-{name.split()[0]}-{'w' if kw.get('warmup_docs') else 'p'}-{seed}"
            t0 = time.perf_counter()
            summary = run_extract(cfg, out, embedder=None if kw.get("warmup_docs") else minilm)
            seconds = time.perf_counter() - t0
            texts = [p.render_text() for p in load_pairs(out)]
            tgt = minilm.encode(read_target(cfg.data))
            w = float(distance(minilm.encode(texts), tgt)) if texts else float("nan")
            results.append((name, seed, summary.pairs, w, seconds))
            print(name, seed, summary.pairs, round(w, 4), round(seconds, 1), flush=True)
    lines = ["| strategy | pairs (mean) | OT distance to target, mean ± sd (lower is better) | seconds (mean) |",
             "|---|---|---|---|"]
    for name in ("equal --warmup-docs", "equal", "random"):
        rs = [r for r in results if r[0] == name]
        ws = np.array([r[3] for r in rs])
        lines.append(f"| {name} | {np.mean([r[2] for r in rs]):.1f} | {ws.mean():.4f} ± {ws.std():.4f} | "
                     f"{np.mean([r[4] for r in rs]):.0f} |")
    table = "\n".join(lines)
    print(table)
    return table, results


def main() -> None:
    from equal.align import AlignConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="Part 1 only, one seed.")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--part", choices=["1", "2", "both"], default="both")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=AlignConfig.lr)
    ap.add_argument("--hard-negatives", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=0.02)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--llm-docs", type=int, default=0,
                    help="Also hold out N manpage sections with SmolLM2-extracted pairs (slow on CPU: ~10 s a "
                         "document; cached in benchmarks/_out/align).")
    ap.add_argument("--corpus-docs", type=int, default=240)
    ap.add_argument("--budget", type=int, default=60)
    ap.add_argument("--warmup-docs", type=int, default=24)
    ap.add_argument("--clusters", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    if args.quick:
        args.part, args.seeds = "1", args.seeds[:1]
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("EQUAL_CACHE_DIR", str(work / "cache"))
        t1, info = part1(args, work) if args.part != "2" else ("(not run)", {"runs": []})
        t2 = part2(args, work)[0] if args.part != "1" else "(not run)"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    runs = info["runs"]
    train_s = f"{np.mean([r['seconds'] for r in runs]):.0f}" if runs else "–"
    steps = runs[0]["steps"] if runs else "–"
    rows = runs[0]["rows"] if runs else "–"
    hn = runs[0]["hard_negatives"] if runs else "–"
    cmd = " ".join(["python benchmarks/bench_align.py", *sys.argv[1:]])
    text = f"""## EQUAL's warm-up: contrastive alignment (`benchmarks/bench_align.py`)

**Retrieval of held-out documents' own pairs** (recall@1 / recall@10: a document's own pair ranks first / in
the top 10 among all pairs of its held-out set; MRR: mean 1/rank). Pairs worded unlike their documents: FAQ
sections with the question heading stripped from the document (the heading is the pair), and CHAMP problems
with the solution as the document and the problem statement as its pair. MiniLM is aligned on the Python FAQ
and half the CHAMP problems ({rows} rows, {hn} mined hard negatives each from ranks 2-200, τ={args.temperature},
lr {args.lr:g}, {args.epochs:g} epoch, batch {args.batch_size}, max length {args.max_length}: {steps} steps,
{train_s} s of training on average); it is scored on the Debian FAQ (a source it never saw) and on the other
CHAMP half (documents it never saw). Seeds {', '.join(map(str, args.seeds))} (each draws its own CHAMP split,
negatives, order and dropout); mean ± sample sd over seeds, Δ = aligned − base of the same seed.

{t1}

**OT distance of the extracted set to the target at the same budget** ({args.budget} documents of a
{args.corpus_docs}-document slice, {args.warmup_docs} of them the warm-up's, {args.clusters} clusters, rule extractor,
seeds {', '.join(map(str, args.seeds))}; each set scored with the plain MiniLM):

{t2}

Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (load average {load:.1f} at the end:
other jobs shared them), {time.perf_counter() - t_all:.0f} s in all. No GPU run.

These numbers: `{cmd}`.
"""
    if not args.no_write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
