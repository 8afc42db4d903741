"""Benchmark ``equal extract`` end to end at 10^4, 10^5 and 10^6 documents: seconds per stage and peak memory.

Data: a seeded synthetic corpus (:func:`make_corpus`): 40 topics, each a Zipf distribution over its own 300
words of a 20,000-word vocabulary (whole words of MiniLM's WordPiece vocabulary) plus 150 common words;
documents of 1-12 paragraphs (geometric, mean 4) of 2-6 sentences of 6-20 words (about 200 words, 1.4 kB, on
average; the longest are chunked at 512 tokens), one in eight with a ``Q: ... ? / A: ...`` block the rules
extractor finds. The target: 200 SFT records on five of the topics.

Each size runs in a subprocess of its own: ``run_extract`` (the library call behind ``equal extract``) with the
rules extractor and a static embedder (sentence-transformers ``StaticEmbedding`` on MiniLM's tokenizer with a
seeded random 384-d table, built offline by :func:`build_static_model`; as fast as a distilled model2vec
table, whose values do not change the cost), 100 clusters (diagonal-covariance Fréchet distances), a budget
of 1000 documents. Stages are timed from the run's own progress callbacks: read+chunk (ingest into
``documents.parquet`` and reading the target), embed (corpus shards and target), cluster (k-means, Gaussians,
neighbours, writing the cluster column), rounds, write (summary and report). Peak RSS is
``getrusage(RUSAGE_SELF).ru_maxrss`` of that subprocess, read when each stage ends; "beyond embeddings" subtracts
the size of ``embeddings/documents.npy`` (n_rows x 384 x 4 bytes). The scaling exponent is the slope of a
least-squares fit of log(total seconds) on log(documents), in wall-clock seconds and in the process's CPU
seconds (``time.process_time``; on a machine shared with other jobs the CPU seconds are what compares).
:func:`run_size` is one size in this process (its ``ray`` argument is the run's ``run.ray``), :func:`run_child`
the same in a subprocess, :func:`render` the section.

    python benchmarks/bench_scale.py                          # 10^4, 10^5, 10^6
    python benchmarks/bench_scale.py --sizes 10000,100000     # a choice of sizes
    python benchmarks/bench_scale.py --ray --sizes 10000      # each size locally and on Ray (section scale-ray)

Prints a table and rewrites its own section (``scale``) of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _results import write_section

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SECTION = "scale"
RAY_SECTION = "scale-ray"
RESULTS = Path(__file__).with_name("RESULTS.md")
STAGES = ("read+chunk", "embed", "cluster", "rounds", "write")
DIM = 384


# ---------------------------------------------------------------------------------------------- data
def _vocabulary(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` whole English words of MiniLM's WordPiece vocabulary (ASCII letters, 3+ characters), shuffled."""
    from tokenizers import Tokenizer

    from equal.embed.sentence_transformer import default_model_path

    vocab = Tokenizer.from_file(str(default_model_path() / "tokenizer.json")).get_vocab()
    words = np.array(sorted(w for w in vocab if w.isascii() and w.isalpha() and len(w) >= 3))
    return words[rng.permutation(len(words))[:n]]


class _Topics:
    def __init__(self, seed: int, n_topics: int = 40, vocab: int = 20_000, own: int = 300, common: int = 150):
        rng = np.random.default_rng([seed, 0])
        self.words = _vocabulary(rng, vocab)
        self.common = self.words[:common]
        self.own = [self.words[rng.choice(np.arange(common, vocab), own, replace=False)] for _ in range(n_topics)]
        self.p_own = (1.0 / np.arange(1, own + 1)) / (1.0 / np.arange(1, own + 1)).sum()
        self.p_common = (1.0 / np.arange(1, common + 1)) / (1.0 / np.arange(1, common + 1)).sum()
        self.n_topics = n_topics
        # rng.choice(m, n, p=p) is cdf.searchsorted(rng.random(n), side="right") with this cdf: the same draws
        # (and the same stream), without validating p on each of the ~10^7 calls a 10^6 corpus makes
        self.cdf_own, self.cdf_common = (c / c[-1] for c in (self.p_own.cumsum(), self.p_common.cumsum()))

    def sentence_words(self, rng: np.random.Generator, topic: int, n: int) -> np.ndarray:
        own = self.own[topic][self.cdf_own.searchsorted(rng.random(n), side="right")]
        com = self.common[self.cdf_common.searchsorted(rng.random(n), side="right")]
        return np.where(rng.random(n) < 0.45, com, own)

    def paragraph(self, rng: np.random.Generator, topic: int) -> str:
        lengths = rng.integers(6, 21, int(rng.integers(2, 7)))
        words = self.sentence_words(rng, topic, int(lengths.sum()))
        out, pos = [], 0
        for m in lengths:
            s = " ".join(words[pos: pos + m])
            out.append(s[0].upper() + s[1:] + ".")
            pos += m
        return " ".join(out)

    def question(self, rng: np.random.Generator, topic: int) -> tuple[str, str]:
        q = " ".join(self.sentence_words(rng, topic, int(rng.integers(6, 14))))
        a = self.paragraph(rng, topic)
        return f"How does {q}?", a


def make_corpus(path: Path, n: int, seed: int = 0) -> Path:
    """Write ``n`` synthetic documents (JSONL, ``id`` and ``text``) to ``path``; same seed, same file."""
    topics = _Topics(seed)
    rng = np.random.default_rng([seed, 1])
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for i in range(n):
            t = int(rng.integers(topics.n_topics))
            paras = [topics.paragraph(rng, t) for _ in range(min(int(rng.geometric(0.25)), 12))]
            if rng.random() < 0.125:
                q, a = topics.question(rng, t)
                paras.insert(int(rng.integers(len(paras) + 1)), f"Q: {q}\nA: {a}")
            fh.write(json.dumps({"id": f"doc{i:08d}", "text": "\n\n".join(paras)}) + "\n")
    os.replace(tmp, path)
    return path


def make_target(path: Path, seed: int = 0, n: int = 200) -> Path:
    """``n`` SFT records (``instruction``/``output``) on topics 0-4 of the corpus of the same seed."""
    topics = _Topics(seed)
    rng = np.random.default_rng([seed, 2])
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n):
            q, a = topics.question(rng, int(rng.integers(5)))
            fh.write(json.dumps({"instruction": q, "output": a}) + "\n")
    return path


def build_static_model(out: Path, dim: int = DIM, seed: int = 0) -> Path:
    """A sentence-transformers ``StaticEmbedding`` directory: MiniLM's tokenizer, a seeded random table."""
    if (out / "modules.json").exists():
        return out
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer

    from equal.embed.sentence_transformer import default_model_path

    tok = Tokenizer.from_file(str(default_model_path() / "tokenizer.json"))
    table = np.random.default_rng(seed).standard_normal((tok.get_vocab_size(), dim)).astype(np.float32)
    SentenceTransformer(modules=[StaticEmbedding(tok, embedding_weights=torch.from_numpy(table))],
                        device="cpu").save(str(out))
    return out


# ---------------------------------------------------------------------------------------------- one size
def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_size(n: int, work: Path, *, budget: int = 1000, clusters: int = 100, ray: str | None = None) -> dict[str, Any]:
    """One end-to-end run at ``n`` documents, in this process; returns its stage times and memory.

    ``ray`` is the run's ``run.ray`` (None: a local run with the embedder loaded here; else the run builds its
    own, a :class:`equal.distributed.RayEmbedder`). ``seconds`` are wall-clock, ``cpu_seconds`` this process's
    CPU time (user + system; Ray workers' time is not in it) per stage: on a machine shared with other jobs
    the CPU seconds are the comparable number.
    """
    from equal.config import ExtractConfig
    from equal.embed import get_embedder
    from equal.pipeline.extract import run_extract

    corpus, target = work / f"corpus-{n}.jsonl", work / "target.jsonl"
    model = work / "static-384"
    out = work / f"run-{n}"
    shutil.rmtree(out, ignore_errors=True)
    os.environ["EQUAL_CACHE_DIR"] = str(work / f"cache-{n}")
    shutil.rmtree(work / f"cache-{n}", ignore_errors=True)
    cfg = ExtractConfig.from_flat(corpus=str(corpus), target=str(target), extractor="rules", budget_docs=budget,
                                  clusters=clusters, clusters_per_round=4, docs_per_cluster=5, seed=0,
                                  embedder=f"st:{model}", diagonal_covariance=True, ray=ray)
    emb = None if ray else get_embedder(f"st:{model}", device="cpu")
    marks: list[tuple[str, float, float, float]] = []

    def mark(stage: str) -> None:
        marks.append((stage, time.perf_counter(), _rss_mb(), time.process_time()))

    def status(msg: str) -> None:
        if msg.startswith("reading corpus"):
            mark("read+chunk")
        elif msg.startswith("embedding") and "target" not in msg:
            mark("embed")
        elif msg.startswith("clustering"):
            mark("cluster")
        elif msg.startswith("writing"):
            mark("write")

    def round_start(*_: Any) -> None:
        if not any(m[0] == "rounds" for m in marks):
            mark("rounds")

    rss0 = _rss_mb()
    s = run_extract(cfg, out, embedder=emb, on_status=status, on_round_start=round_start)
    marks.append(("end", time.perf_counter(), _rss_mb(), time.process_time()))
    seconds = {a[0]: b[1] - a[1] for a, b in itertools.pairwise(marks)}
    cpu = {a[0]: b[3] - a[3] for a, b in itertools.pairwise(marks)}
    peak = {a[0]: b[2] for a, b in itertools.pairwise(marks)}  # max RSS when the stage ended
    emb_bytes = (out / "embeddings" / "documents.npy").stat().st_size
    result = {"n": n, "rows": s.documents_total, "pairs": s.pairs, "rounds": s.rounds, "seconds": seconds,
              "cpu_seconds": cpu, "peak_mb": peak, "start_mb": rss0, "embeddings_mb": emb_bytes / 2**20,
              "total_s": marks[-1][1] - marks[0][1], "total_cpu_s": marks[-1][3] - marks[0][3], "ray": ray}
    shutil.rmtree(work / f"cache-{n}", ignore_errors=True)
    # what a Ray run of the same size must reproduce (--ray compares them with the local run's)
    import pyarrow.parquet as pq

    labels = pq.read_table(out / "documents.parquet", columns=["cluster"]).column("cluster").to_numpy()
    result["qa_sha256"] = hashlib.sha256((out / "qa.jsonl").read_bytes()).hexdigest()
    result["labels_sha256"] = hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()
    return result


def run_child(n: int, work: Path, *, budget: int, clusters: int, ray: str | None = None) -> dict[str, Any]:
    """:func:`run_size` in a fresh subprocess (so each size's peak RSS is its own); its result."""
    cmd = [sys.executable, __file__, "--child", str(n), "--work", str(work), "--budget", str(budget),
           "--clusters", str(clusters), *(["--child-ray", ray] if ray else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"size {n} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line[-1][len("RESULT "):])


# ---------------------------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated document counts")
    parser.add_argument("--budget", type=int, default=1000, help="documents sent to the extractor")
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--work", type=Path, default=None, help="folder for corpora and runs (default: a temp)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-ray", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ray", action="store_true",
                        help="run each size locally and on a local Ray cluster (this machine's cores) and write "
                             "the comparison (section scale-ray) instead of the scale section")
    args = parser.parse_args(argv)
    if args.child is not None:
        r = run_size(args.child, args.work, budget=args.budget, clusters=args.clusters, ray=args.child_ray)
        print("RESULT " + json.dumps(r), flush=True)
        return

    import tempfile

    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_scale-"))
    work.mkdir(parents=True, exist_ok=True)
    build_static_model(work / "static-384")
    make_target(work / "target.jsonl")
    results = []
    ray_results: list[dict[str, Any]] = []
    for n in sizes:
        corpus = work / f"corpus-{n}.jsonl"
        if not corpus.exists():
            t = time.perf_counter()
            make_corpus(corpus, n)
            print(f"generated {n} documents ({corpus.stat().st_size / 2**20:.0f} MiB) in "
                  f"{time.perf_counter() - t:.0f} s", file=sys.stderr)
        r = run_child(n, work, budget=args.budget, clusters=args.clusters)
        results.append(r)
        print(json.dumps(r), file=sys.stderr)
        if args.ray:
            rr = run_child(n, work, budget=args.budget, clusters=args.clusters, ray="local")
            ray_results.append(rr)
            print(json.dumps(rr), file=sys.stderr)
        shutil.rmtree(work / f"run-{n}", ignore_errors=True)
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)

    if args.ray:
        text = render_ray(results, ray_results, sizes, budget=args.budget, clusters=args.clusters)
        print(text)
        if not args.no_write:
            write_section(RAY_SECTION, text)
            print(f"wrote section '{RAY_SECTION}' of {RESULTS}")
        return
    text = render(results, sizes, budget=args.budget, clusters=args.clusters)
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
        print(f"wrote section '{SECTION}' of {RESULTS}")


def _slopes(results: list[dict[str, Any]], key: str, total: str) -> tuple[float, dict[str, float]]:
    """Log-log slope of ``total`` on documents, and of each stage's ``key`` seconds."""
    x = np.log([r["n"] for r in results])
    slope = float(np.polyfit(x, np.log([r[total] for r in results]), 1)[0])
    per = {s: float(np.polyfit(x, np.log([max(r[key].get(s, 0.0), 1e-3) for r in results]), 1)[0])
           for s in ("read+chunk", "embed", "cluster", "rounds")}
    return slope, per


def render(results: list[dict[str, Any]], sizes: list[int], *, budget: int, clusters: int,
           notes: list[str] | None = None) -> str:
    """The ``scale`` section of RESULTS.md for ``results`` (what :func:`run_size` returned, one per size).

    ``notes``: paragraphs added after the table (what a person measured around the run).
    """
    header = ["documents", "rows (chunks)", *[f"{s} s" for s in STAGES], "total s", "total CPU s", "peak RSS MiB",
              "embeddings MiB", "peak beyond embeddings MiB", "pairs"]
    rows = []
    for r in results:
        peak = max(r["peak_mb"].values())
        rows.append([f"{r['n']:,}", f"{r['rows']:,}", *[f"{r['seconds'].get(s, 0.0):.1f}" for s in STAGES],
                     f"{r['total_s']:.1f}", f"{r.get('total_cpu_s', float('nan')):.1f}", f"{peak:.0f}",
                     f"{r['embeddings_mb']:.0f}", f"{peak - r['embeddings_mb']:.0f}", str(r["pairs"])])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *["| " + " | ".join(x) + " |" for x in rows]]
    lines += ["", "CPU seconds of the run's process per stage: " + "; ".join(
        f"{r['n']:,}: " + ", ".join(f"{s} {r.get('cpu_seconds', {}).get(s, 0.0):.1f}" for s in STAGES)
        for r in results) + "."]
    if len(results) >= 2:
        slope, per = _slopes(results, "seconds", "total_s")
        cslope, cper = _slopes(results, "cpu_seconds", "total_cpu_s")
        lines += ["", f"Scaling exponent (log-log fit of total seconds on documents): **{slope:.2f}** (goal <= 1.1); "
                  + ", ".join(f"{s} {v:.2f}" for s, v in per.items()) + f". On CPU seconds: **{cslope:.2f}**; "
                  + ", ".join(f"{s} {v:.2f}" for s, v in cper.items()) + "."]
    peak_rows = ["", "Peak RSS (MiB) when each stage ended: " + "; ".join(
        f"{r['n']:,}: " + ", ".join(f"{s} {r['peak_mb'].get(s, 0):.0f}" for s in STAGES) for r in results) + "."]
    text = "\n".join([
        "## Scale (equal extract end to end, benchmarks/bench_scale.py)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs: compare rows, not runs). "
        f"Rules extractor, static 384-d embedder (random StaticEmbedding table on MiniLM's tokenizer), "
        f"{clusters} clusters (diagonal covariance), budget {budget} documents "
        "(4 clusters x 5 documents a round).",
        "",
        *lines,
        *peak_rows,
        *[x for note in (notes or []) for x in ("", note)],
        "",
        "Command: `python benchmarks/bench_scale.py --sizes " + ",".join(str(n) for n in sizes) + "`",
    ]) + "\n"
    return text


def render_ray(local: list[dict[str, Any]], ray: list[dict[str, Any]], sizes: list[int], *, budget: int,
               clusters: int, notes: list[str] | None = None) -> str:
    """The ``scale-ray`` section: each size run locally and on Ray, seconds per stage and whether they agree.

    ``notes``: paragraphs added after the table (what a person measured around the run).
    """
    header = ["documents", "run", *[f"{s} s" for s in STAGES], "total s", "driver CPU s", "driver peak RSS MiB",
              "pairs", "same pairs", "same labels"]
    rows = []
    for lo, rr in zip(local, ray, strict=True):
        for name, r in (("local", lo), ("Ray", rr)):
            same = ["", ""] if r is lo else ["yes" if rr["qa_sha256"] == lo["qa_sha256"] else "**no**",
                                               "yes" if rr["labels_sha256"] == lo["labels_sha256"] else "**no**"]
            rows.append([f"{r['n']:,}", name, *[f"{r['seconds'].get(s, 0.0):.1f}" for s in STAGES],
                         f"{r['total_s']:.1f}", f"{r.get('total_cpu_s', float('nan')):.1f}",
                         f"{max(r['peak_mb'].values()):.0f}", str(r["pairs"]), *same])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *["| " + " | ".join(x) + " |" for x in rows]]
    return "\n".join([
        "## Scale: local vs Ray (benchmarks/bench_scale.py --ray)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs). The settings of the "
        f"scale section ({clusters} clusters, budget {budget} documents, rules extractor, static 384-d embedder); "
        "each size run twice in fresh processes: locally, and with `ray=\"local\"` (a Ray cluster on this "
        "machine with one CPU per core, so 2 actors per pool here: embedding as Ray Data `map_batches` over an "
        "actor pool, k-means trained in the driver on the local run's sample and every row assigned in Ray "
        "actors, one block of 65,536 rows per task). \"same pairs\": `qa.jsonl` byte for byte equal to the local "
        "run's; \"same labels\": the `cluster` column of `documents.parquet` equal. Driver CPU and RSS are the "
        "run's own process (the Ray workers' are not in them).",
        "",
        *lines,
        *[x for note in (notes or []) for x in ("", note)],
        "",
        "Command: `python benchmarks/bench_scale.py --ray --sizes " + ",".join(str(n) for n in sizes) + "`",
    ]) + "\n"


if __name__ == "__main__":
    main()
