"""``equal export --card``: a run's pairs as a Hub-ready folder, Parquet data plus a dataset card.

The folder is the layout ``datasets.load_dataset(DIR)`` and the Hub read::

    DIR/README.md                            dataset card: YAML front matter, then the description
    DIR/data/train-00000-of-00001.parquet    the pairs, one row each, provenance columns kept

The front matter declares the ``default`` config and its data files, the licence(s) (the values of a
``license`` field kept with ``--keep-fields``; ``unknown`` when none was kept), the task categories and the
size category. The body says how the data was made: the settings (``run.toml``), the sources, the licences
with their pair counts, the counts (rounds, documents, pairs, drops) and the strategy with its cost
(``ledger.json``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from equal.data.hf import HUB_DATA_FILE, write_folder

__all__ = ["dataset_card", "size_category", "write_card_folder"]

#: Keys of a pair's kept fields read as its licence (the first present wins).
LICENSE_KEYS = ("license", "licence", "licenses", "license_name")

# the Hub's size_categories buckets, upper bounds exclusive
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` value for ``n`` rows (``"n<1K"``, ``"1K<n<10K"``, ...)."""
    for bound, name in _SIZES:
        if n < bound:
            return name
    return "n>1T" if n >= 10**12 else "1B<n<10B"


def _yaml(value: Any) -> str:
    # A JSON string or number is a YAML scalar with the same meaning, whatever characters it holds.
    return json.dumps(value, ensure_ascii=False)


def _license_of(record: Mapping[str, Any]) -> str | None:
    fields = record.get("fields") or {}
    for key in LICENSE_KEYS:
        value = fields.get(key)
        if isinstance(value, list):
            value = ", ".join(map(str, value)) if value else None
        if value is not None and str(value).strip():
            return str(value).strip()
    return None


#: Licence identifiers the Hub knows (the common ones); any other licence is declared ``other`` with its name.
HUB_LICENSES = frozenset({
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0",
    "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
    "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0",
    "etalab-2.0", "eupl-1.1", "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1",
    "lgpl-3.0", "isc", "h-research", "intel-research", "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr",
    "mpl-2.0", "odc-by", "odbl", "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib",
    "pddl", "lgpl-lr", "deepfloyd-if-license", "fair-noncommercial-research-license", "llama2", "llama3",
    "llama3.1", "llama3.2", "llama3.3", "llama4", "gemma", "unknown", "other",
})


def _license_id(name: str) -> str:
    """The Hub's licence identifiers are lowercase (``cc-by-4.0``, ``apache-2.0``, ``mit``)."""
    return name.strip().lower().replace(" ", "-")


def _table(rows: Sequence[tuple[str, Any]], header: tuple[str, str]) -> list[str]:
    out = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    out += [f"| {k} | {v} |" for k, v in rows]
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def dataset_card(run: str | Path, records: Sequence[Mapping[str, Any]], *, fmt: str = "messages") -> str:
    """The README.md of a run's export: YAML front matter and a Markdown body.

    Parameters
    ----------
    run : path
        The run directory (its ``run.toml``, ``summary.json`` and ``ledger.json`` are read when present).
    records : sequence of dict
        The exported records (their ``fields`` give the licences).
    fmt : str, default="messages"
        The records' form, named in the card.

    Returns
    -------
    str
    """
    from equal.pipeline.rundir import RunDir

    rd = RunDir(Path(run))
    config_text = rd.config.read_text(encoding="utf-8") if rd.config.exists() else ""
    summary, ledger = _read_json(rd.summary), _read_json(rd.ledger)
    try:
        from equal.config import load_toml

        cfg: Any = load_toml(rd.config) if rd.config.exists() else None
    except Exception:  # a card describes what it can; the settings are quoted below either way
        cfg = None
    n = len(records)
    licences = Counter(_license_of(r) or "unknown" for r in records)
    named = sorted({_license_id(k) for k in licences if k != "unknown"})
    ids = sorted({x if x in HUB_LICENSES else "other" for x in named})
    license_yaml = ([f"license: {_yaml(ids[0])}"] if len(ids) == 1
                    else ["license:", *(f"- {_yaml(x)}" for x in ids)] if ids else ["license: unknown"])
    others = [x for x in named if x not in HUB_LICENSES]
    if others:  # the Hub's way to name a licence it has no identifier for
        license_yaml.append(f"license_name: {_yaml(', '.join(others))}")
    strategy = summary.get("strategy") or (cfg.run.strategy if cfg is not None else "unknown")
    corpus = cfg.data.corpus if cfg is not None else "unknown"
    target = cfg.data.target if cfg is not None else "unknown"
    name = Path(run).resolve().name
    front = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        f"    path: {_yaml('data/train-*.parquet')}",
        *license_yaml,
        "task_categories:",
        "- question-answering",
        "- text-generation",
        "size_categories:",
        f"- {_yaml(size_category(n))}",
        "tags:",
        "- synthetic",
        "- sft",
        "- equal",
        f"pretty_name: {_yaml(name)}",
        "---",
    ]
    body = [
        "", f"# {name}", "",
        f"{n} question–answer pairs ({fmt} form) extracted by `equal extract` with the `{strategy}` strategy "
        f"from the documents of `{corpus}` whose clusters land closest to the target sample `{target}`.",
        "", "## Sources", "",
        f"- corpus: `{corpus}`" + (f" ({summary['documents_read']} of {summary['documents_total']} documents or "
                                   "chunks sent to the LLM)" if "documents_read" in summary else ""),
        f"- target: `{target}`",
    ]
    if cfg is not None and cfg.data.keep_fields:
        body.append(f"- corpus fields kept in each pair's `fields`: {', '.join(cfg.data.keep_fields)}")
    body += ["", "## Licences", ""]
    body += _table(sorted(licences.items(), key=lambda kv: (-kv[1], kv[0])), ("licence", "pairs"))
    if licences.get("unknown"):
        body += ["", "Pairs marked unknown come from documents without a licence field: rerun "
                 "`equal extract` with `--keep-fields license` on a corpus that has one."]
    counts = [("pairs", n)]
    for key in ("rounds", "documents_read", "documents_total", "source_documents", "clusters", "skipped_rows"):
        if key in summary:
            counts.append((key.replace("_", " "), summary[key]))
    for reason, k in sorted((summary.get("drops") or {}).items()):
        counts.append((f"dropped: {reason}", k))
    body += ["", "## Counts", "", *_table(counts, ("what", "count"))]
    cost: list[tuple[str, Any]] = [("strategy", f"`{strategy}`")]
    if summary.get("ot_distance") is not None:
        cost.append(("OT distance of the pairs to the target", f"{summary['ot_distance']:.4f}"))
    for key, value in ledger.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, str)) or value is None:
            continue
        cost.append((key.replace("_", " "), f"{value:.4g}" if isinstance(value, float) else value))
    body += ["", "## Strategy and cost", "", *_table(cost, ("what", "value"))]
    columns = sorted({k for r in records for k in r})
    body += ["", "## Fields", "", "Each row holds " + ", ".join(f"`{c}`" for c in columns) + ": the pair and its "
             "provenance (the document and chunk it came from, the cluster and round that chose it, the model and "
             "prompt version).", ""]
    if config_text:
        body += ["## Settings", "", "The `run.toml` of the run (rerun with `equal extract --config run.toml`):", "",
                 "```toml", config_text.rstrip("\n"), "```", ""]
    return "\n".join(front + body)


def write_card_folder(run: str | Path, out: str | Path, records: Sequence[dict[str, Any]], *,
                      fmt: str = "messages") -> int:
    """Write ``out/`` as a Hub-ready folder: ``data/train-00000-of-00001.parquet`` and ``README.md``.

    Parameters
    ----------
    run : path
        The run directory the records come from (for the card).
    out : path
        The folder; replaced when it holds an earlier export, refused when it holds other files.
    records : sequence of dict
        Records in form ``fmt`` (provenance keys kept).
    fmt : str, default="messages"

    Returns
    -------
    int
        Rows written.
    """
    from equal.data import write_sft

    card = dataset_card(run, records, fmt=fmt)

    def fill(tmp: Path) -> None:
        write_sft(tmp / HUB_DATA_FILE, records, fmt)
        (tmp / "README.md").write_text(card, encoding="utf-8")

    write_folder(out, fill)
    return len(records)
