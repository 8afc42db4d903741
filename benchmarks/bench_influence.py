"""Cluster rewards of ``equal extract``: ``influence`` (Quad/LESS gradients) vs ``ot`` (EQUAL) vs ``random``.

The corpus is ``examples/corpus.jsonl`` (984 documents: competition maths with solutions, Python FAQ and
tutorial, Debian FAQ, manual pages) and the target ``examples/target.jsonl`` (150 GSM-style problems). Every
run uses the rule-based extractor (one document read = one LLM request an LLM run would pay), the same
clusters, the same budget and the same round shape; only the reward differs (``random`` reads documents in a
seeded random order, without a bandit). ``influence`` uses Quad's constants (threshold 0.0020, weighted
neighbour credit ``1 − d/τ`` with τ = 0.2, α = 0.0001); ``ot`` is the default EQUAL run.

Scores, per run:

- the held-out NLL after fine-tuning: the bundled SmolLM2-135M-Instruct is fine-tuned with one fixed LoRA
  recipe (the one ``benchmarks/bench_iterative.py`` uses) twice, (a) on all the pairs the run kept (what the
  budget bought) and (b) on its first N pairs, N the smallest pair count over all runs (the same amount of data:
  quality apart from quantity); then the mean per-token NLL of the reference answers of ``--heldout`` target
  problems that no influence run used as its reference set (:func:`equal.evaluate.nll_scores`; lower is
  better). The base model is scored on the same rows;
- the exact OT distance of all kept pairs to the target (lower is better; what ``ot`` optimises, so it favours
  ``ot``), the share of the documents read that are maths (the target's domain; neither reward sees it), pairs
  kept, and the wall seconds per round (extraction, embedding, reward, commit; for ``influence`` mostly per-pair
  LoRA gradients on the CPU and their projection). The target's projected gradients are computed once per run
  (and cached in the run directory): reported apart, as setup.

With ``--work DIR`` the run directories (``DIR/<reward>-<seed>``), checkpoints (``DIR/train/``) and measured
numbers (``DIR/bench/``) are kept, and a rerun reuses them: a finished extraction resumes at no cost, a finished
training and its NLL are read back. A run directory made with other settings is refused (never re-run quietly).

Run: ``python benchmarks/bench_influence.py [--quick] [--work DIR] [--no-write]``; prints a table and writes its
section of ``benchmarks/RESULTS.md`` (after every seed, so an interrupted run leaves its finished seeds; not with
``--quick``, a smoke run).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _results import write_section
from bench_iterative import heldout_nll  # one recipe and one scorer for both benchmarks

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from equal.config import ExtractConfig, load_toml
from equal.data.io import atomic_write_json
from equal.embed import get_embedder
from equal.errors import ConfigError
from equal.pipeline.extract import run_extract

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TARGET = EXAMPLES / "target.jsonl"
SECTION = "bench_influence"
REWARDS = ("influence", "ot", "random")
PAIRS = (("influence", "ot"), ("ot", "random"), ("influence", "random"))


def _config(reward: str, seed: int, budget: int, clusters: int, influence: dict[str, Any]) -> ExtractConfig:
    data: dict[str, Any] = {
        "data": {"corpus": str(EXAMPLES / "corpus.jsonl"), "target": str(TARGET)},
        "run": {"budget_docs": budget, "seed": seed, "strategy": "random" if reward == "random" else "equal"},
        "cluster": {"clusters": clusters}, "extract": {"extractor": "rules"},
        "bandit": {"clusters_per_round": 4, "docs_per_cluster": 3},
    }
    if reward == "influence":
        data["bandit"]["ucb"] = {"alpha": 0.0001, "credit": "weighted", "tau": 0.2}
        data["reward"] = {"reward": "influence", "influence": influence}
    return ExtractConfig.from_dict(data)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def influence_rows(config: ExtractConfig) -> list[int]:
    """The target rows (0-based) the influence reward of ``config`` uses as its reference set.

    Taken from :class:`equal.pipeline.influence.InfluenceReward` itself (its seeded ``max_target`` sample), not
    re-derived, so the held-out rows stay disjoint from it if that sampling ever changes.
    """
    from equal.pipeline.influence import InfluenceReward, InfluenceRewardConfig
    from equal.pipeline.setup import read_target

    texts = read_target(config.data)
    reward = InfluenceReward(InfluenceRewardConfig(**config.reward.params["influence"]), texts,
                             seed=config.run.seed)
    rows, j = [], 0
    for text in reward.target_texts:  # a sorted subsample of ``texts``: one forward scan maps it back to rows
        while texts[j] != text:
            j += 1
        rows.append(j)
        j += 1
    return rows


def _maths_share(run: Path, source: dict[str, str]) -> float:
    docs = [d for line in (run / "rounds.jsonl").read_text().splitlines() for d in json.loads(line)["documents"]]
    return float(np.mean([source.get(d.split("#c")[0]) == "champ" for d in docs])) if docs else float("nan")


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Store:
    """Numbers measured per run (``DIR/bench/<name>.json``), written atomically, so a rerun reads them back."""

    def __init__(self, root: Path) -> None:
        self.root = root / "bench"
        self.root.mkdir(parents=True, exist_ok=True)

    def get(self, name: str) -> dict[str, Any]:
        path = self.root / f"{name}.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def put(self, name: str, key: str, value: Any) -> None:
        data = self.get(name)
        data[key] = value
        atomic_write_json(self.root / f"{name}.json", data)


def _finished(run: Path, config: ExtractConfig) -> dict[str, Any] | None:
    """``summary.json`` of a finished run made with ``config``'s settings, read without reopening the run.

    None when the run is not finished (:func:`run_extract` then resumes it). A run made with other
    result-changing settings raises :class:`ConfigError` naming them, as :func:`run_extract` would.
    """
    toml, state, summary = run / "run.toml", run / "state.json", run / "summary.json"
    if not (toml.exists() and state.exists() and summary.exists()):
        return None
    changed = load_toml(toml).changed_keys(config)
    if changed:
        raise ConfigError(f"{run} holds a run with other settings ({', '.join(changed)})")
    if not json.loads(state.read_text(encoding="utf-8")).get("finished"):
        return None
    return json.loads(summary.read_text(encoding="utf-8"))


def extract(args: argparse.Namespace, work: Path, store: Store, embedder: Any, influence: dict[str, Any],
            source: dict[str, str]) -> dict[tuple[str, int], dict[str, Any]]:
    """Run (or resume) every extraction; return per run its summary numbers and round timings.

    ``embedder`` is a callable returning the embedder, so that a work dir of finished runs never loads it.
    """
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for seed in range(args.seeds):
        for reward in REWARDS:
            name = f"{reward}-{seed}"
            run = work / name
            fresh = not (run / "run.toml").exists()
            stamps: list[float] = []
            t0 = time.perf_counter()

            def stamp(_info: object, stamps: list[float] = stamps) -> None:
                stamps.append(time.perf_counter())

            config = _config(reward, seed, args.budget, args.clusters, influence)
            try:
                summary = _finished(run, config)
                if summary is None:
                    summary = dataclasses.asdict(run_extract(config, run, embedder=embedder(), on_round=stamp))
            except ConfigError as exc:  # made with other settings: say so, never re-extract it quietly
                sys.exit(f"bench_influence: {run} cannot be reused: {exc}")
            if fresh:  # timings only from an uninterrupted run; a resumed one keeps what was stored
                times = np.diff([t0, *stamps])
                store.put(name, "timing", {"first_s": float(times[0]) if len(times) else None,
                                           "round_s": float(times[1:].mean()) if len(times) > 1 else None})
            timing = store.get(name).get("timing", {})
            row = {"ot": float(summary["ot_distance"] if summary["ot_distance"] is not None else math.nan),
                   "maths": _maths_share(run, source), "pairs": int(summary["pairs"]),
                   "docs": int(summary["documents_read"]), "resumed": not fresh,
                   "first_s": timing.get("first_s"), "round_s": timing.get("round_s")}
            out[(reward, seed)] = row
            print(f"seed {seed} {reward:9s} docs {row['docs']:3d} pairs {row['pairs']:3d} OT {row['ot']:.4f} "
                  f"maths {row['maths']:.2f}{' (reused)' if row['resumed'] else ''}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="Smoke run: one seed, a smaller budget, a cheap projection, 16 held-out; writes nothing.")
    ap.add_argument("--budget", type=int, default=48, help="Documents (≈ LLM requests) per run.")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--clusters", type=int, default=40)
    ap.add_argument("--dim", type=int, default=8192, help="Projected dimension of the influence reward.")
    ap.add_argument("--max-target", type=int, default=32, help="Target examples in the influence reference set.")
    ap.add_argument("--max-length", type=int, default=96, help="Tokens per text for the gradients.")
    ap.add_argument("--lora-layers", default="", help="Comma-separated decoder layers with adapters (all: empty).")
    ap.add_argument("--heldout", type=int, default=64,
                    help="Held-out target problems scored (the first ones no influence run used).")
    ap.add_argument("--train-length", type=int, default=256, help="Max tokens per training example (the recipe).")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of training and scoring.")
    ap.add_argument("--work", type=Path, default=None,
                    help="Keep the runs here and reuse finished ones (default: a temp dir).")
    ap.add_argument("--no-write", action="store_true", help="Print only; leave RESULTS.md alone.")
    args = ap.parse_args()
    if args.quick:
        args.budget, args.seeds, args.dim, args.max_target, args.max_length = 24, 1, 1024, 16, 64
        args.lora_layers = args.lora_layers or "26,27,28,29"
        args.heldout = min(args.heldout, 16)
    layers = [int(x) for x in args.lora_layers.split(",") if x.strip()]
    influence = {"dim": args.dim, "max_target": args.max_target, "max_length": args.max_length,
                 "lora_layers": layers}
    source = {json.loads(line)["id"]: json.loads(line)["source"]
              for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines()}

    from equal.data.sft import to_messages
    from equal.train import TrainConfig, train

    t_start = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_influence_"))
    work.mkdir(parents=True, exist_ok=True)
    store = Store(work)
    loaded: list[Any] = []

    def embedder() -> Any:
        if not loaded:
            loaded.append(get_embedder("minilm"))
        return loaded[0]

    runs = extract(args, work, store, embedder, influence, source)

    # held-out: target rows outside every seed's influence reference set (the OT reward saw all of them, as
    # embeddings of the whole target distribution; influence saw the gradients of its own sample only)
    used = sorted({i for s in range(args.seeds)
                   for i in influence_rows(_config("influence", s, args.budget, args.clusters, influence))})
    target, excluded = read_jsonl(TARGET), set(used)
    held_rows = [i for i in range(len(target)) if i not in excluded][: args.heldout]
    held = [to_messages(target[i]) for i in held_rows]
    prompts, refs = [m[:-1] for m in held], [m[-1]["content"] for m in held]
    n_equal = min(r["pairs"] for r in runs.values())
    setup = {"heldout": held_rows, "used": used, "n_equal": n_equal, "runs": len(runs),
             "reused": sum(r["resumed"] for r in runs.values()), "shared": _shared(work, args.seeds, n_equal),
             "clusters": {name: [json.loads(line)["clusters"] for line in
                                 (work / name / "rounds.jsonl").read_text().splitlines()]
                          for name in ("influence-0", "ot-0")}}
    print(f"held-out rows: {len(held_rows)} (influence reference rows over all seeds: {len(used)}); "
          f"equal-N = {n_equal} pairs", file=sys.stderr, flush=True)

    eval_key = _key({"rows": held_rows, "model": "bundled", "batch_size": 8})
    base = store.get("base").get(eval_key)
    if base is None:
        base = heldout_nll("bundled", prompts, refs, args.threads)
        store.put("base", eval_key, base)
    print(f"base model held-out NLL {base:.4f}", file=sys.stderr, flush=True)

    rows: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        recipe = TrainConfig(method="lora", epochs=1.0, lr=2e-4, batch_size=4, max_length=args.train_length,
                             lora_r=8, lora_alpha=16, seed=seed, threads=args.threads, skip_invalid=True,
                             save_steps=1000)
        for reward in REWARDS:
            name = f"{reward}-{seed}"
            pairs = read_jsonl(work / name / "qa.jsonl")
            row = {"reward": reward, "seed": seed, **runs[(reward, seed)]}
            for label, data in (("all", pairs), ("equal", pairs[:n_equal])):
                if label == "equal" and len(data) == len(pairs):  # the run with fewest pairs: the same training
                    row[label] = row["all"]  # (same data, recipe and seed: deterministic), not paid twice
                    continue
                key = _key({"eval": eval_key, "recipe": dataclasses.asdict(recipe), "n": len(data),
                            "qa": hashlib.sha256((work / name / "qa.jsonl").read_bytes()).hexdigest()})
                got = store.get(name).get(f"nll-{key}")
                if got is None:
                    tr = train(data, work / "train" / f"{name}-{label}", recipe)
                    got = {"nll": heldout_nll(tr.out, prompts, refs, args.threads), "steps": tr.steps,
                           "records": tr.data["records"], "train_s": round(tr.seconds, 1)}
                    store.put(name, f"nll-{key}", got)
                row[label] = got
            print(json.dumps(row), flush=True)
            rows.append(row)
        text = render(rows, base, args, setup, layers, time.perf_counter() - t_start)
        if not (args.no_write or args.quick):  # after every seed, so an interrupted run still leaves its finished seeds
            write_section(SECTION, text)
    print(text)


def _shared(work: Path, seeds: int, n: int) -> dict[str, list[int]]:
    """Per pair of rewards, per seed: how many of the first ``n`` kept pairs the two runs have in common."""
    def first(name: str) -> set[str]:
        return {json.dumps(r["messages"], sort_keys=True) for r in read_jsonl(work / name / "qa.jsonl")[:n]}

    return {f"{a} ∩ {b}": [len(first(f"{a}-{s}") & first(f"{b}-{s}")) for s in range(seeds)] for a, b in PAIRS}


def _ms(vals: list[float], digits: int = 4) -> str:
    v = [x for x in vals if x is not None and not math.isnan(x)]
    if not v:
        return "—"
    return f"{statistics.mean(v):.{digits}f} ± {statistics.stdev(v):.{digits}f}" if len(v) > 1 \
        else f"{v[0]:.{digits}f}"


def _paired(rows: list[dict[str, Any]], label: str) -> list[str]:
    """Paired-by-seed NLL differences A − B (negative: A better), with the verdict against 2 standard errors."""
    out = []
    for a, b in PAIRS:
        nll = {(r["reward"], r["seed"]): r[label]["nll"] for r in rows}
        seeds = sorted({s for (_w, s) in nll if (a, s) in nll and (b, s) in nll})
        if not seeds:
            continue
        d = [nll[(a, s)] - nll[(b, s)] for s in seeds]
        line = (f"- {a} − {b}: {', '.join(f'{x:+.4f}' for x in d)} (mean {statistics.mean(d):+.4f}"
                f"{f' ± {statistics.stdev(d):.4f} std' if len(d) > 1 else ''}); {a} better in "
                f"{sum(x < 0 for x in d)} of {len(d)} seeds")
        if len(d) > 1:
            sem = statistics.stdev(d) / len(d) ** 0.5
            verdict = "beyond" if abs(statistics.mean(d)) > 2 * sem else "within"
            line += f"; the mean is {verdict} 2 standard errors ({2 * sem:.4f})"
        out.append(line + ".")
    return out


def render(rows: list[dict[str, Any]], base: float, args: argparse.Namespace, setup: dict[str, Any],
           layers: list[int], seconds: float) -> str:
    """The RESULTS.md section; seeds not done yet (a run cut short) are left out and counted."""
    by = {w: [r for r in rows if r["reward"] == w] for w in REWARDS if any(r["reward"] == w for r in rows)}
    seeds = sorted({r["seed"] for r in rows})
    n = setup["n_equal"]

    def col(w: str, f: str) -> list[float]:
        return [r[f] if r[f] is not None else math.nan for r in by[w]]

    table = []
    for w, rs in by.items():
        nll_all, nll_eq = [r["all"]["nll"] for r in rs], [r["equal"]["nll"] for r in rs]
        table.append(
            f"| {w} | {_ms(nll_all)} | {base - statistics.mean(nll_all):+.4f} | {_ms(nll_eq)} | "
            f"{base - statistics.mean(nll_eq):+.4f} | {_ms(col(w, 'ot'))} | {_ms(col(w, 'maths'), 2)} | "
            f"{_ms(col(w, 'pairs'), 0)} | {_ms([r['all']['steps'] for r in rs], 0)} | "
            f"{_ms(col(w, 'round_s'), 1)} | {_ms(col(w, 'first_s'), 1)} |")
    per_seed = []
    for r in rows:
        per_seed.append(f"| {r['seed']} | {r['reward']} | {r['all']['nll']:.4f} | {r['equal']['nll']:.4f} | "
                        f"{r['ot']:.4f} | {r['maths']:.2f} | {r['pairs']} | {r['all']['steps']} / "
                        f"{r['equal']['steps']} | {r['all']['train_s']:.0f} / {r['equal']['train_s']:.0f} |")
    stds = [statistics.stdev([r[lab]["nll"] for r in rs]) for rs in by.values() if len(rs) > 1
            for lab in ("all", "equal")]
    noise = (f"The seed-to-seed std of one reward's NLL is up to {max(stds):.4f} (a seed changes the extraction, "
             "the adapter's initialisation and the data order); with 3 seeds a paired difference says something "
             "only when it clears 2 standard errors." if stds else "")
    lora = f"layers {layers}" if layers else "all 30 layers"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    trainings = [r["all"] for r in rows] + [r["equal"] for r in rows if r["equal"] is not r["all"]]
    train_min = sum(t["train_s"] for t in trainings) / 60
    cmd = " ".join(["python benchmarks/bench_influence.py", *sys.argv[1:]])
    head = (f"| reward | held-out NLL, all pairs | gain | held-out NLL, first {n} | gain | OT of kept pairs (lower "
            "better) | maths share read | pairs kept | train steps (all) | s / round (2+) | s, round 1 |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    head_seed = (f"| seed | reward | NLL, all pairs | NLL, first {n} | OT of kept pairs | maths share | pairs | "
                 f"steps (all / {n}) | train s (all / {n}) |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    held = setup["heldout"]
    shared = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in setup["shared"].items())
    clusters = "; ".join(f"{k.split('-')[0]} {v}" for k, v in setup["clusters"].items())
    return f"""## Cluster rewards: influence (Quad/LESS) vs OT (EQUAL) vs random (`benchmarks/bench_influence.py`)

`{cmd}` on {platform.machine()}, {os.cpu_count()} cores, this process pinned to {cores} (load average at the end
{load:.1f}; the machine was shared with other jobs, so the seconds are upper bounds). {seconds / 60:.1f} min for
this invocation; {setup["reused"]} of {setup["runs"]} extractions reused from `--work` (their seconds are those
measured when they ran); the {len(trainings)} trainings took {train_min:.1f} min in all (stored with each result,
whichever invocation ran them). Seeds done: {seeds} of {args.seeds}{" (--quick)" if args.quick else ""}.

Extraction: corpus `examples/corpus.jsonl` (984 documents, mixed domains; maths = the `champ` documents), target
`examples/target.jsonl` (150 GSM-style problems); extractor `rules`; {args.clusters} clusters, 4 clusters × 3
documents a round, budget {args.budget} documents. `influence`: LoRA r=8 on q_proj,v_proj ({lora}) of the bundled
SmolLM2-135M, Rademacher projection to d={args.dim}, {args.max_target} target examples (a seeded sample per
seed), texts cut to {args.max_length} tokens, threshold 0.0020, UCB α=0.0001 with weighted neighbour credit
(τ=0.2). "s, round 1" includes loading the model and the target's gradients (once per run, then cached in
`RUN/influence/`).

Training and held-out NLL: one recipe for every run, the one of `bench_iterative.py`: bundled
SmolLM2-135M-Instruct, LoRA r=8 α=16, lr 2e-4 (linear decay), batch 4, 1 epoch, max length {args.train_length},
{args.threads} torch thread(s), seed = the run's seed; (a) on all the pairs the run kept, (b) on its first
**N = {n}** pairs (the smallest pair count of all runs: the same data for every run, so quality apart from
quantity; the run with N pairs is trained once, its two columns are the same training). Held-out: the first
{len(held)} target problems of `examples/target.jsonl` (0-based rows {held[0]} to {held[-1]}) in no seed's influence
reference set (the {len(setup['used'])} rows some seed used are excluded), mean NLL per
reference-answer token (lower is better); base model **{base:.4f}**. Caveat on "held out": the `ot` reward saw the
MiniLM embeddings of all 150 target rows, these included (it matches the target distribution, not the rows'
answers), and `influence` the LoRA gradients of its {args.max_target} rows only (none of these). Mean ± standard
deviation over seeds; gain = base − NLL.

{head}
{chr(10).join(table)}

Paired by seed, held-out NLL difference (negative: the first is better), all pairs:

{chr(10).join(_paired(rows, "all"))}

Same, first {n} pairs of each run:

{chr(10).join(_paired(rows, "equal"))}

Overlap: of the first {n} pairs, the runs share {shared} (per seed). `influence` and `ot` begin with the same
round (no reward is known yet: clusters 0–3, the nearest to the target, and the same seeded documents), so their
equal-N trainings share about half their data (their NLLs there are not independent). Clusters read per round,
seed 0: {clusters}. (With these settings `ot`'s UCB visits each of the 16 nearest clusters once in its 4 rounds,
while `influence`, α=0.0001, keeps returning to the clusters it scored best.)

{noise}

Per seed:

{head_seed}
{chr(10).join(per_seed)}
"""


if __name__ == "__main__":
    main()
