"""NovelSum and NovelSelect: speed against the direct reference algorithms and against the sort floor.

One run, same inputs for every contender:

1. NovelSum, n = 10,000 × 384 float32: ``equal.diversity.novelsum`` vs (a) the floor, one
   ``np.sort(axis=1)`` of a 10,000 × 10,000 float32 matrix, and (b) a direct implementation of the
   reference code (blocked broadcast cosine into a full n × n matrix, faiss IndexFlatL2 density, per-row
   argsort and weighted average); values compared.
2. NovelSum, n = 100,000 × 384, exact, in a subprocess: wall time and peak RSS.
3. Approximate NovelSum: relative error against the exact value of step 2, and its time.
4. NovelSelect, n = 50,000, k = 1,000, d = 384: ``equal.select.novelselect`` vs a direct implementation
   (every step recomputes and re-sorts all candidates' density-weighted distances to the selected set,
   float32, batches of 10,000 rows as the reference). The direct total is the sum of its per-step costs,
   measured at several set sizes t and interpolated (a step's cost depends only on t); its first steps
   are also run for real from the same start, and must pick exactly what ``novelselect`` picks. A
   float64 direct run on a smaller pool checks identical selections end to end.

Data: a clustered, anisotropic Gaussian mixture with varied row norms, like raw LLM embeddings.
Writes its table between the ``bench_diversity`` markers of benchmarks/RESULTS.md.

Usage: python benchmarks/bench_diversity.py [--quick] [--million] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from _results import write_section
from equal.diversity import novelsum
from equal.diversity._density import density_weights
from equal.select import novelselect
from equal.select._novelselect import novelselect_lazy

SECTION = "bench_diversity"


def make_embeddings(n: int, d: int, seed: int = 0, n_clusters: int = 256) -> np.ndarray:
    """Raw-embedding-like data: Zipf-sized clusters, power-law spectrum, a shared offset, varied norms."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, d))
    p = 1.0 / np.arange(1, n_clusters + 1)
    p /= p.sum()
    spectrum = 1.0 / np.sqrt(np.arange(1, d + 1))
    offset = 0.8 * rng.standard_normal(d) * spectrum
    spread = rng.uniform(0.4, 1.2, n_clusters)
    X = np.empty((n, d), dtype=np.float32)
    for a in range(0, n, 20_000):
        b = min(a + 20_000, n)
        lab = rng.choice(n_clusters, size=b - a, p=p)
        noise = rng.standard_normal((b - a, d)) * spread[lab, None]
        rows = (0.7 * centers[lab] + noise) * spectrum + offset
        rows *= rng.lognormal(0.0, 0.3, size=(b - a, 1))
        X[a:b] = rows
    return X


def best_of(fn, repeats: int = 2) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def sort_floor(n: int) -> float:
    """Best of two timings of one np.sort(axis=1) of an n × n float32 matrix."""
    M = np.random.default_rng(0).random((n, n), dtype=np.float32)
    return best_of(lambda: np.sort(M, axis=1))[0]


# ------------------------------------------------------------------------------------------ direct baselines


def direct_novelsum(
    X: np.ndarray, n_neighbors: int = 10, density_power: float = 0.5, distance_power: float = 1.0
) -> float:
    """The reference code's algorithm on the CPU (torch blocks of 500, faiss, per-row Python sort)."""
    import faiss
    import torch

    t = torch.from_numpy(X).float()
    n = t.shape[0]
    D = torch.zeros((n, n))
    bs = 500
    for i in range(0, n, bs):
        for j in range(0, n, bs):
            sim = torch.nn.functional.cosine_similarity(t[i : i + bs].unsqueeze(1), t[j : j + bs].unsqueeze(0), dim=2)
            D[i : i + bs, j : j + bs] = 1 - sim
    D = D.numpy()
    ref = np.unique(X.astype(np.float32), axis=0)
    index = faiss.IndexFlatL2(X.shape[1])
    index.add(ref)
    dist, _ = index.search(X.astype(np.float32), n_neighbors + 1)
    dens = 1 / np.power(dist[:, 1:].mean(axis=1) + 1e-9, density_power)
    W = D * dens[:, None]
    weights = 1 / np.power(np.arange(1, n + 1), distance_power)

    def weighted_average(row: np.ndarray) -> float:
        return float(np.average(row[np.argsort(row)], weights=weights))

    return float(np.mean(np.apply_along_axis(weighted_average, 1, W)))


class DirectNovelSelect:
    """NovelSelect as the reference runs it: each step recomputes and re-sorts everything (float32)."""

    def __init__(
        self,
        X: np.ndarray,
        s: np.ndarray,
        distance_power: float = 1.0,
        batch: int = 10_000,
        dtype: type = np.float32,
    ) -> None:
        X64 = X.astype(np.float64)
        self.E = (X64 / np.linalg.norm(X64, axis=1, keepdims=True)).astype(dtype)
        self.s = s.astype(dtype)
        self.alpha = distance_power
        self.batch = batch
        self.dtype = dtype

    def scores(self, chosen: list[int]) -> np.ndarray:
        t = len(chosen)
        w = (1.0 / np.arange(1, t + 1) ** self.alpha).astype(self.dtype)
        ES, sS = self.E[chosen], self.s[chosen]
        out = []
        for a in range(0, self.E.shape[0], self.batch):
            vals = (1 - self.E[a : a + self.batch] @ ES.T) * (self.s[a : a + self.batch, None] + sS[None, :])
            vals.sort(axis=1)
            out.append(vals @ w / t)
        score = np.concatenate(out)
        score[chosen] = -np.inf
        return score

    def run(self, first: int, k: int) -> list[int]:
        chosen = [first]
        for _ in range(1, k):
            chosen.append(int(np.argmax(self.scores(chosen))))
        return chosen


# ------------------------------------------------------------------------------------------ 100k subprocess

CHILD = """
import json, resource, sys, time
import numpy as np
from equal.diversity import novelsum
X = np.load({path!r})
t = time.perf_counter()
value = novelsum(X, device="cpu")
elapsed = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"value": value, "seconds": elapsed, "peak_rss": rss, "data_bytes": X.nbytes}}))
"""


def novelsum_subprocess(X: np.ndarray) -> dict:
    """Exact NovelSum of X in a fresh interpreter (data loaded from a .npy file): value, time, peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "X.npy")
        np.save(path, X)
        code = CHILD.format(path=path)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    ap.add_argument("--million", action="store_true", help="also time approximate NovelSum at n = 1,000,000")
    ap.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    ap.add_argument(
        "--scale",
        nargs=2,
        type=int,
        metavar=("N", "K"),
        action="append",
        default=[],
        help="also time one full novelselect(N × 384, K) (repeatable)",
    )
    args = ap.parse_args()
    quick = args.quick
    d = 384
    n_sum = 3000 if quick else 10_000
    n_big = 20_000 if quick else 100_000
    n_sel, k_sel = (10_000, 200) if quick else (50_000, 1000)
    real_steps = 30 if quick else 100
    lines: list[str] = []

    def say(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    # 1. NovelSum at n_sum ---------------------------------------------------------------------------
    X = make_embeddings(n_sum, d, seed=1)
    t_floor = sort_floor(n_sum)
    t_ours, v_ours = best_of(lambda: novelsum(X, device="cpu"))
    t0 = time.perf_counter()
    v_direct = direct_novelsum(X)
    t_direct = time.perf_counter() - t0
    rel = abs(v_ours - v_direct) / abs(v_direct)
    ns_row = (
        "NovelSum (code variant)",
        f"{n_sum:,} × {d}",
        f"{t_direct:.2f}",
        f"{t_ours:.2f}",
        f"{t_floor:.2f}",
        f"{t_direct / t_ours:.0f}×",
        f"**{t_ours / t_floor:.2f}**",
        f"{rel:.1e}",
    )
    print(ns_row, flush=True)

    # 2. NovelSum at n_big, subprocess ---------------------------------------------------------------
    Xb = make_embeddings(n_big, d, seed=2)
    big = novelsum_subprocess(Xb)
    print("exact big", big, flush=True)

    # 3. approximate mode -------------------------------------------------------------------------------
    approx_rows = []
    for nprobe in (8, 16):
        t0 = time.perf_counter()
        va = novelsum(Xb, approximate=True, nprobe=nprobe, seed=0)
        ta = time.perf_counter() - t0
        err = abs(va - big["value"]) / big["value"]
        approx_rows.append((f"{n_big:,}", nprobe, f"{ta:.1f}", f"{big['seconds']:.1f}", f"{err:.1e}"))
        print(approx_rows[-1], flush=True)
    del Xb
    million = None
    if args.million:
        Xm = make_embeddings(1_000_000, d, seed=3)
        t0 = time.perf_counter()
        vm = novelsum(Xm, approximate=True, seed=0)
        million = (time.perf_counter() - t0, vm)
        print("1M approx", million, flush=True)
        del Xm

    # 4. NovelSelect ---------------------------------------------------------------------------------------
    Xs = make_embeddings(n_sel, d, seed=4)
    first = int(np.random.default_rng(42).integers(n_sel))  # novelselect(..., seed=42)'s first pick
    t0 = time.perf_counter()
    s = density_weights(Xs, None, 10, 0.5)
    t_density = time.perf_counter() - t0
    t0 = time.perf_counter()
    picks, _, stats = novelselect_lazy(Xs, s, k_sel, first, 1.0, None)
    t_loop = time.perf_counter() - t0
    direct = DirectNovelSelect(Xs, s)
    t0 = time.perf_counter()
    real = direct.run(first, real_steps + 1)
    t_real = time.perf_counter() - t0
    same_prefix = real == picks[: real_steps + 1].tolist()
    # per-step cost of the direct method as a function of |S| = t, interpolated over t = 1..k-1
    grid = np.unique(np.linspace(1, k_sel - 1, 6).astype(int))
    pick_rng = np.random.default_rng(1)
    cost = []
    for t in grid:
        chosen = pick_rng.choice(n_sel, size=int(t), replace=False).tolist()
        t0 = time.perf_counter()
        direct.scores(chosen)
        cost.append(time.perf_counter() - t0)
    t_direct_loop = float(np.interp(np.arange(1, k_sel), grid, cost).sum())
    predicted_real = float(np.interp(np.arange(1, real_steps + 1), grid, cost).sum())
    print("novelselect", t_density, t_loop, t_direct_loop, same_prefix, t_real, predicted_real, flush=True)
    del Xs, direct

    # full identical-selection check against a float64 direct implementation, through the public API
    n_chk, k_chk = (2000, 100) if quick else (5000, 300)
    Xc = make_embeddings(n_chk, d, seed=5)
    sc = novelselect(Xc, k_chk, seed=7)
    sref = density_weights(Xc, None, 10, 0.5)
    ref64 = DirectNovelSelect(Xc, sref, dtype=np.float64).run(int(sc.indices[0]), k_chk)
    identical64 = ref64 == sc.indices.tolist()
    print("float64 identical", identical64, flush=True)

    scale_rows = []
    for n_s, k_s in args.scale:
        Xl = make_embeddings(n_s, d, seed=6)
        t0 = time.perf_counter()
        s_l = density_weights(Xl, None, 10, 0.5)
        t_dl = time.perf_counter() - t0
        first_l = int(np.random.default_rng(42).integers(n_s))
        t0 = time.perf_counter()
        _, _, st_l = novelselect_lazy(Xl, s_l, k_s, first_l, 1.0, None)
        t_ll = time.perf_counter() - t0
        scale_rows.append(
            (
                f"{n_s:,}",
                f"{k_s:,}",
                f"{t_dl:.0f}",
                f"{t_ll:.0f}",
                f"{t_dl + t_ll:.0f}",
                f"{st_l['evaluations'] / max(1, k_s - 1):.0f}",
            )
        )
        print("scale", scale_rows[-1], flush=True)
        del Xl, s_l

    # ------------------------------------------------------------------------------------------ table
    load = os.getloadavg()[0]
    env = (
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, no GPU (none lent to this task); python "
        f"{platform.python_version()}, numpy {np.__version__}; load average at the end {load:.1f} "
        "(a shared machine: absolute times are upper bounds, ratios are from the same run)."
    )
    gib = 2**30
    out = [
        "## NovelSum and NovelSelect (`benchmarks/bench_diversity.py" + (" --quick" if quick else "") + "`)",
        "",
        env,
        "",
        "Data: clustered anisotropic Gaussian mixture (256 Zipf-sized clusters, power-law spectrum, shared "
        "offset, log-normal row norms), float32, d = 384. NovelSum defaults K = 10, β = 0.5, α = 1. "
        "Direct reference = the official code's algorithm on the CPU: 500 × 500 broadcast cosine blocks "
        "into a full n × n matrix (torch), faiss `IndexFlatL2` density, per-row argsort + weighted average.",
        "",
        "| metric | n × d | direct reference (s) | equal (s) | floor: one np.sort(axis=1), n × n f32 (s) "
        "| speed-up vs direct | equal / floor | relative difference of the value |",
        "|---|---|---|---|---|---|---|---|",
        "| " + " | ".join(ns_row) + " |",
        "",
        f"Exact NovelSum at n = {n_big:,} × {d} (fresh subprocess that loads the data from a .npy file, "
        f"`device='cpu'`): **{big['seconds']:.1f} s**, "
        f"peak RSS **{big['peak_rss'] / gib:.2f} GiB** (interpreter, numpy, torch and the "
        f"{big['data_bytes'] / gib:.2f} GiB of data included; 2 worker threads); value {big['value']:.6f}.",
        "",
        "Approximate NovelSum (`approximate=True`, defaults: one faiss IVF-Flat search with nlist ≈ 4√n "
        "gives each row its 256 nearest ranks with exact distances, and candidates for the density's "
        "neighbours, re-measured exactly; the other ranks come from a quantile curve through 4096 sampled "
        "columns per block) against the exact value above:",
        "",
        "| n | nprobe | approximate (s) | exact (s) | relative error |",
        "|---|---|---|---|---|",
        *["| " + " | ".join(str(c) for c in r) + " |" for r in approx_rows],
    ]
    if million is not None:
        out += [
            "",
            f"Approximate NovelSum at n = 1,000,000 × {d} (default nprobe = 8): {million[0]:.0f} s "
            f"(value {million[1]:.6f}); the exact computation is out of reach here.",
        ]
    speed_loop = t_direct_loop / t_loop
    speed_all = (t_direct_loop + t_density) / (t_loop + t_density)
    out += [
        "",
        f"NovelSelect, n = {n_sel:,}, k = {k_sel:,}, d = {d} (K = 10, β = 0.5, α = 1, seed 42). Both methods "
        f"need the exact densities first (a K-nearest-neighbour search over the pool, O(n² d)): "
        f"{t_density:.1f} s here, the floor of any exact method.",
        "",
        "| method | greedy loop (s) | with density (s) | speed-up, loop | speed-up, with density |",
        "|---|---|---|---|---|",
        f"| direct: every step recomputes and re-sorts all candidates' values (float32, batches of 10,000); "
        f"estimated from its per-step cost at selected-set sizes {', '.join(str(int(g)) for g in grid)} "
        f"| {t_direct_loop:.0f} | {t_direct_loop + t_density:.0f} | 1× | 1× |",
        f"| equal `novelselect`: lazy exact bounds, float64 scores "
        f"({stats['evaluations'] / (k_sel - 1):.0f} exact evaluations per step) "
        f"| {t_loop:.1f} | {t_loop + t_density:.1f} | **{speed_loop:.0f}×** | **{speed_all:.1f}×** |",
        "",
        f"The direct method's first {real_steps} steps, run for real from the same start, took "
        f"{t_real:.1f} s (the per-step model predicts {predicted_real:.1f} s) and picked "
        f"{'exactly the same rows' if same_prefix else 'DIFFERENT rows'} as `novelselect`. "
        f"End to end on n = {n_chk:,}, k = {k_chk}: `novelselect` and a float64 direct implementation "
        f"pick {'identical' if identical64 else 'DIFFERENT'} selections.",
    ]
    if scale_rows:
        out += [
            "",
            "Larger NovelSelect runs (`--scale N K`, d = 384, same data generator):",
            "",
            "| n | k | density (s) | greedy loop (s) | total (s) | exact evaluations per step |",
            "|---|---|---|---|---|---|",
            *["| " + " | ".join(r) + " |" for r in scale_rows],
        ]
    text = "\n".join(out)
    print()
    print(text)
    if not args.no_write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
