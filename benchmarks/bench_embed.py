"""Benchmark equal.embed: length-sorted batching vs input-order batching, and the disk cache.

Data: synthetic texts of words drawn from MiniLM's vocabulary, with log-normal lengths (median ~40 words,
a tail past the 256-token limit), the length spread of documents and QA pairs. Vectors of both batchings are
checked equal (max abs difference printed).

    python benchmarks/bench_embed.py            # 2000 texts
    python benchmarks/bench_embed.py --quick    # 400 texts

Prints a table and rewrites its own section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from _results import write_section

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from equal.embed import (
    CachedEmbedder,
    Embedder,
    HFEmbedder,
    SentenceTransformerEmbedder,
    default_model_path,
    get_embedder,
)

SECTION = "bench_embed"
RESULTS = Path(__file__).with_name("RESULTS.md")


def make_texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = (default_model_path() / "vocab.txt").read_text().split()
    vocab = [w for w in words if w.isalpha() and len(w) > 2]
    lengths = np.clip(rng.lognormal(mean=np.log(40), sigma=0.9, size=n).astype(int), 1, 600)
    return [" ".join(rng.choice(vocab, size=k)) for k in lengths]


def input_order(emb: Embedder, texts: list[str], batch_size: int) -> np.ndarray:
    """Batches in input order (one encode call per batch): what batching without a global sort costs."""
    return np.concatenate([emb.encode(texts[s : s + batch_size]) for s in range(0, len(texts), batch_size)])


def timed(fn: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def padding_fraction(lengths: np.ndarray, batch_size: int, sort: bool) -> float:
    """Share of padded positions in the batches (1 − real tokens / batch tokens)."""
    seq = np.sort(lengths)[::-1] if sort else lengths
    total = sum(int(seq[s : s + batch_size].max()) * len(seq[s : s + batch_size])
                for s in range(0, len(seq), batch_size))
    return 1.0 - float(lengths.sum()) / total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="400 texts instead of 2000")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    n, bs = (400 if args.quick else 2000), args.batch_size
    texts = make_texts(n, seed=0)

    st = SentenceTransformerEmbedder(batch_size=bs)
    hf = HFEmbedder(default_model_path(), pooling="mean", max_length=256, batch_size=bs)
    lengths = np.array([len(s) for s in hf._tokenize(texts)])
    st.encode(texts[:8])  # warm-up
    rows = []
    for name, emb in (("sentence-transformers", st), ("HFEmbedder mean", hf)):
        t_sorted, X_sorted = timed(lambda emb=emb: emb.encode(texts))
        t_plain, X_plain = timed(lambda emb=emb: input_order(emb, texts, bs))
        diff = float(np.abs(X_sorted - X_plain).max())
        rows.append([name, "length-sorted", f"{t_sorted:.2f}", f"{n / t_sorted:.0f}", f"{diff:.1e}"])
        rows.append([name, "input order", f"{t_plain:.2f}", f"{n / t_plain:.0f}", ""])

    with tempfile.TemporaryDirectory() as tmp:
        cached = CachedEmbedder(st, tmp)
        t_cold, X_cold = timed(lambda: cached.encode(texts))
        t_warm, X_warm = timed(lambda: CachedEmbedder(st, tmp).encode(texts))
        assert np.array_equal(X_cold, X_warm)
    rows.append(["CachedEmbedder(st)", "cold (all misses)", f"{t_cold:.2f}", f"{n / t_cold:.0f}", ""])
    rows.append(["CachedEmbedder(st)", "warm (all hits)", f"{t_warm:.3f}", f"{n / t_warm:.0f}", "0"])

    # A static model (no attention: the mean of token rows), the kind benchmarks/bench_scale.py runs: a
    # sentence-transformers StaticEmbedding on MiniLM's tokenizer with a seeded random 384-d table, built
    # offline (a distilled model2vec table would cost the same; only its values differ).
    from bench_scale import build_static_model

    with tempfile.TemporaryDirectory() as tmp:
        static = get_embedder(f"st:{build_static_model(Path(tmp) / 'static')}", device="cpu", batch_size=bs)
        static.encode(texts[:8])  # warm-up
        t_static, X_static = timed(lambda: static.encode(texts))
        t_order, X_order = timed(lambda: input_order(static, texts, bs))
    rows.append(["StaticEmbedding 384-d (random table)", "length-sorted", f"{t_static:.2f}", f"{n / t_static:.0f}",
                 f"{float(np.abs(X_static - X_order).max()):.1e}"])
    rows.append(["StaticEmbedding 384-d (random table)", "input order", f"{t_order:.2f}", f"{n / t_order:.0f}", ""])

    header = ["backend", "batching / cache", "seconds", "texts/s", "max abs diff vs other order"]
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, device={st.device}; {n} texts, "
        f"batch_size={bs}, tokens per text median {int(np.median(lengths))}, max {int(lengths.max())} "
        "(truncated at 256).",
        f"Padded share of batch positions: length-sorted {padding_fraction(lengths, bs, True):.1%}, "
        f"input order {padding_fraction(lengths, bs, False):.1%}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
        "Load on the machine was not controlled (other jobs shared the 2 cores); compare rows, not runs.",
        "",
        "Command: `python benchmarks/bench_embed.py" + (" --quick" if args.quick else "") + "`",
    ]
    text = "## Embeddings (equal.embed)\n\n" + "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
        print(f"wrote section '{SECTION}' of {RESULTS}")


if __name__ == "__main__":
    main()
