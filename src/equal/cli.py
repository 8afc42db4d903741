"""The ``equal`` command line: parse, call one library function, print. No logic lives here."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from equal.errors import EqualError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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


def _print_json(obj: Any) -> None:
    from equal.pipeline.jobs import dumps

    sys.stdout.write(dumps(obj) + "\n")


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False) -> None:
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
                      batch_size=batch_size, cache=not no_cache, show_progress=not json_ and sys.stderr.isatty())
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
    json_: JsonOpt = False,
) -> None:
    """Select a subset of a pool; write it in the pool's own format plus OUT.indices.json.

    \b
    Example:
      equal select examples/pool.jsonl --method novelselect --k 100 --out picked.jsonl
    """
    from equal.pipeline.jobs import select_file

    info = select_file(pool, out, method=method, k=k, seed=seed, quality_field=quality_field, embedder=embedder,
                       n_clusters=clusters, n_neighbors=neighbors, density_power=density_power,
                       distance_power=distance_power, threshold=threshold,
                       show_progress=not json_ and sys.stderr.isatty())
    if json_:
        _print_json(info)
    else:
        where = info["output"] or info["indices"]
        _console().print(f"selected {k} of {info['n']} with {method} → {where}")


@app.command()
def extract(
    corpus: Annotated[Path, typer.Option(help="Document corpus: JSONL, JSON, Parquet, CSV, or a folder.")],
    target: Annotated[Path, typer.Option(help="Target-task sample: SFT records (messages/ShareGPT/Alpaca).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (rerun the same command to resume).")],
    strategy: Annotated[str, typer.Option(help="equal (bandit), random, all, uniform-clusters.")] = "equal",
    budget_docs: Annotated[int | None, typer.Option(help="Documents to send to the LLM.")] = None,
    budget_tokens: Annotated[int | None, typer.Option(help="LLM tokens (in + out) to spend.")] = None,
    llm: Annotated[str, typer.Option(help="local (bundled SmolLM2-135M) or openai (any compatible server).")] = "local",
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL (…/v1).")] = None,
    model: Annotated[str | None, typer.Option(help="Model name (openai) or GGUF/HF path (local).")] = None,
    extractor: Annotated[str, typer.Option(help="llm, or rules for documents that carry Q&A already.")] = "llm",
    clusters: Annotated[int, typer.Option(help="k-means clusters.")] = 20,
    clusters_per_round: Annotated[int, typer.Option(help="Clusters read per round.")] = 4,
    docs_per_cluster: Annotated[int, typer.Option(help="Documents per chosen cluster per round.")] = 3,
    cluster_order: Annotated[str, typer.Option(
        help="Cluster numbering the bandit starts from: target (nearest the target first) or kmeans (EQUAL's)."
    )] = "target",
    policy: Annotated[str, typer.Option(help="Bandit: ucb (EQUAL), exp3, thompson, epsilon-greedy, uniform.")] = "ucb",
    embedder: Annotated[str, typer.Option(help="Embedder (see `equal embed --help`).")] = "minilm",
    text_field: Annotated[str, typer.Option(help="Text field of the corpus.")] = "text",
    max_pairs: Annotated[int, typer.Option(help="Pairs asked for per document.")] = 3,
    max_tokens: Annotated[int, typer.Option(help="Generation limit per request.")] = 256,
    prompt_style: Annotated[str, typer.Option(
        help="auto (lines for the local model, json for served ones), json or lines.")] = "auto",
    refine: Annotated[bool, typer.Option(help="Run a refinement pass over the drafted pairs.")] = False,
    concurrency: Annotated[int, typer.Option(help="Parallel requests (openai).")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    force: Annotated[bool, typer.Option(help="Restart OUT if it holds a run with other settings.")] = False,
    skip_invalid: SkipOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Extract QA pairs from the clusters of CORPUS that land closest to TARGET, within a budget.

    \b
    Example:
      equal extract --corpus examples/corpus.jsonl --target examples/target.jsonl \\
                    --out runs/demo --budget-docs 48
    """
    from equal.config import ExtractConfig
    from equal.pipeline.extract import run_extract
    from equal.pipeline.progress import ExtractProgress

    config = ExtractConfig(
        corpus=str(corpus), target=str(target), strategy=strategy, budget_docs=budget_docs,
        budget_tokens=budget_tokens, llm=llm, base_url=base_url, model=model, extractor=extractor,
        clusters=clusters, clusters_per_round=clusters_per_round, docs_per_cluster=docs_per_cluster,
        cluster_order=cluster_order,
        policy=policy, embedder=embedder, text_field=text_field, max_pairs=max_pairs, max_tokens=max_tokens,
        refine=refine, prompt_style=prompt_style, concurrency=concurrency, seed=seed, skip_invalid=skip_invalid,
    )
    with ExtractProgress(enabled=not json_) as progress:
        summary = run_extract(config, out, force=force, on_status=progress.status, on_round=progress.round)
    if json_:
        _print_json(summary.to_dict())
    else:
        progress.print_summary(summary)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run directory of `equal extract`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file (.jsonl, or .parquet).")],
    format: Annotated[str, typer.Option("--format", "-f", help="messages, sharegpt, alpaca or parquet.")] = "messages",
    json_: JsonOpt = False,
) -> None:
    """Write a run's QA pairs as an SFT dataset (provenance fields kept).

    \b
    Example:
      equal export runs/demo --format sharegpt --out demo.sharegpt.jsonl
    """
    from equal.pipeline.extract import export_run

    if format not in ("messages", "sharegpt", "alpaca", "parquet"):
        raise typer.BadParameter(f"{format!r} is not one of messages, sharegpt, alpaca, parquet",
                                 param_hint="--format")
    n = export_run(run, out, format)
    if json_:
        _print_json({"run": str(run), "output": str(out), "format": format, "records": n})
    else:
        _console().print(f"wrote {n} records ({format}) to {out}")


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="Run directory of `equal extract`.")],
) -> None:
    """(Re)write RUN/report.html: summary, cost ledger, OT distance and reward plots."""
    from equal.report import write_run_report

    typer.echo(str(write_run_report(run)))


def main() -> None:
    """Console-script entry point: library errors become one line on stderr and exit code 1."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=sys.argv[1:], prog_name="equal", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("Aborted.\n")
        sys.exit(1)
    except typer.TyperException as exc:  # usage errors: message (and usage) on stderr, exit code 2
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            sys.stderr.write(f"error: {exc}\n")
        sys.exit(getattr(exc, "exit_code", 2))
    except (EqualError, ValueError, FileNotFoundError, ImportError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
