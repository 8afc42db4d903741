"""Deduplication, decontamination and QA parsing: speed, and quality against brute force.

1. ``near_dedup`` (MinHash + LSH in numpy, exact Jaccard verification) on synthetic corpora with planted
   near-duplicates: wall time, and on the smaller corpus its keep mask against the exact greedy algorithm
   over the brute-force all-pairs Jaccard matrix (Python sets of word 5-gram tuples), with the brute force
   timed too.
2. ``exact_dedup`` on the same texts.
3. ``NGramIndex`` (13-gram decontamination, hashed, vectorised) against a Python set of 13-gram tuples:
   time and identical flags.
4. ``semantic_dedup`` (blocked matmul) on unit vectors with planted near-copies.
5. ``parse_pairs`` throughput on a mix of messy model outputs.

Writes its table between the ``bench_dedup`` markers of benchmarks/RESULTS.md.

Usage: python benchmarks/bench_dedup.py [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from _results import write_section
from equal.data.decontam import NGramIndex
from equal.data.dedup import exact_dedup, lsh_params, near_dedup, semantic_dedup
from equal.extract.parse import parse_pairs

SECTION = "bench_dedup"


def make_corpus(n: int, seed: int = 0, dup_share: float = 0.2) -> list[str]:
    """Texts of 60-200 words (Zipf vocabulary); ``dup_share`` of them are edited copies of earlier ones."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(20000)])
    p = 1.0 / np.arange(1, vocab.size + 1) ** 0.8
    p /= p.sum()
    texts: list[str] = []
    for _ in range(n):
        if texts and rng.random() < dup_share:
            words = texts[int(rng.integers(0, len(texts)))].split()
            for _ in range(int(rng.integers(0, 6))):
                words[int(rng.integers(0, len(words)))] = str(rng.choice(vocab, p=p))
            texts.append(" ".join(words))
        else:
            texts.append(" ".join(rng.choice(vocab, int(rng.integers(60, 200)), p=p)))
    return texts


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    w = text.lower().split()
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)} if len(w) >= n else {tuple(w)}


def brute_force_greedy(texts: list[str], threshold: float) -> np.ndarray:
    sets = [shingles(t) for t in texts]
    keep = np.zeros(len(texts), dtype=bool)
    kept: list[int] = []
    for j, s in enumerate(sets):
        if not any(len(s & sets[i]) / len(s | sets[i]) >= threshold for i in kept):
            keep[j] = True
            kept.append(j)
    return keep


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


MESSY = [
    '```json\n[{"question": "What is 2 + 2?", "answer": "4"},\n'
    ' {"question": "Why?", "answer": "Arithmetic."},]\n```',
    "Sure! Q: What does ATP stand for?\nA: Adenosine triphosphate.\n"
    "Q: Where is it made?\nA: In mitochondria.",
    '[{"question": "What is $\\frac{1}{2}$ of 8?", "answer": "4"}, {"question": "What is 3 * 3?", "ans',
    "{'question': 'What is the capital of France?', 'answer': 'Paris'}",
    "I'm sorry, but I cannot help with that.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()
    sizes = [2000, 10000] if args.quick else [2000, 20000, 50000]
    rows: list[str] = []

    threshold = 0.8
    bands, band_rows = lsh_params(threshold, 128)
    near_rows = []
    for n in sizes:
        texts = make_corpus(n, seed=n)
        keep, t_near = timed(near_dedup, texts, threshold=threshold, num_perm=128, ngram=5, seed=0)
        _, t_exact = timed(exact_dedup, texts)
        agree = t_brute = "-"
        if n <= 2000:
            ref, tb = timed(brute_force_greedy, texts, threshold)
            agree = f"{np.mean(keep == ref):.4f} ({int((keep != ref).sum())} differ)"
            t_brute = f"{tb:.2f}"
        near_rows.append(f"| {n:,} | {t_near:.2f} | {n / t_near:,.0f} | {int((~keep).sum()):,} "
                         f"| {t_exact:.3f} | {t_brute} | {agree} |")

    targets = make_corpus(1000, seed=7, dup_share=0.0)
    n_q = sizes[-1]
    queries = make_corpus(n_q, seed=8, dup_share=0.0)
    rng = np.random.default_rng(1)
    for i in rng.choice(n_q, n_q // 20, replace=False):  # 5% quote 13+ target words
        src = targets[int(rng.integers(0, len(targets)))].split()
        s = int(rng.integers(0, len(src) - 14))
        queries[i] = queries[i] + " " + " ".join(src[s : s + 13 + int(rng.integers(0, 3))])
    index, t_build = timed(NGramIndex.from_texts, targets, n=13)
    flags, t_query = timed(index.contaminated, queries)

    def ref_flags() -> np.ndarray:
        grams: set[tuple[str, ...]] = set()
        for t in targets:
            w = t.lower().split()
            grams.update(tuple(w[i : i + 13]) for i in range(len(w) - 12))
        return np.array([any(tuple(w[i : i + 13]) in grams for i in range(len(w) - 12))
                         for w in (q.lower().split() for q in queries)])

    ref, t_ref = timed(ref_flags)

    n_sem, d = (10000, 384) if args.quick else (30000, 384)
    X = rng.standard_normal((n_sem, d)).astype(np.float32)
    idx = rng.choice(n_sem, n_sem // 10, replace=False)
    src, dst = idx[: idx.size // 2], idx[idx.size // 2 :]  # disjoint: each copy has an untouched source
    X[dst] = X[src] + 0.1 * rng.standard_normal((dst.size, d)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    sem_keep, t_sem = timed(semantic_dedup, X, 0.95)

    outputs = MESSY * 400
    parsed, t_parse = timed(lambda: [parse_pairs(o) for o in outputs])

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows.append("## Deduplication, decontamination and QA parsing (`benchmarks/bench_dedup.py`)")
    rows.append("")
    rows.append(
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}, "
        f"numpy {np.__version__}; load average at the end {load:.1f} (a shared machine: timings are upper "
        "bounds)."
    )
    rows.append("")
    rows.append(
        f"Near dedup: Jaccard >= {threshold} on word 5-gram shingles, 128 permutations, LSH {bands} bands x "
        f"{band_rows} rows, every candidate verified exactly. Corpus: 60-200 words per text (Zipf vocabulary "
        "of 20,000), 20% edited copies (0-5 word substitutions). Agreement is with the exact greedy "
        "keep-first algorithm over brute-force all-pairs Jaccard."
    )
    rows.append("")
    rows.append("| texts | near_dedup (s) | texts/s | dropped | exact_dedup (s) | brute force (s) "
                "| agreement |")
    rows.append("|---|---|---|---|---|---|---|")
    rows.extend(near_rows)
    rows.append("")
    rows.append("| task | size | equal (s) | reference (s) | check |")
    rows.append("|---|---|---|---|---|")
    rows.append(f"| NGramIndex 13-gram decontamination | {len(targets):,} targets, {n_q:,} texts "
                f"| build {t_build:.2f} + query {t_query:.2f} | {t_ref:.2f} (Python set of tuples) "
                f"| identical flags: {bool(np.array_equal(flags, ref))}, {int(flags.sum()):,} flagged |")
    rows.append(f"| semantic_dedup, cos >= 0.95 | {n_sem:,} x {d} | {t_sem:.2f} | - "
                f"| {int((~sem_keep).sum()):,} dropped of {dst.size:,} planted |")
    rows.append(f"| parse_pairs, messy outputs | {len(outputs):,} outputs | {t_parse:.2f} "
                f"({len(outputs) / t_parse:,.0f}/s) | - | {sum(len(p) for p in parsed):,} pairs |")
    table = "\n".join(rows)
    print(table)
    if not args.no_write:
        write_section(SECTION, table)


if __name__ == "__main__":
    main()
