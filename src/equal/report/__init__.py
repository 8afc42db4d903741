"""HTML report of an ``equal extract`` run: summary, cost, and plots from the run directory's own files."""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

from equal.report.svg import bar_chart, line_chart

__all__ = ["render_run_report", "write_run_report"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:12px}pre{background:#f6f6f6;padding:8px;font-size:.85em;overflow:auto}
.qa{border-left:3px solid #1f77b4;padding-left:8px;margin:8px 0;white-space:pre-wrap;font-size:.9em}
"""


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    from equal.data.io import iter_jsonl

    return list(iter_jsonl(path)) if path.exists() else []


def render_run_report(run_dir: str | Path, *, sample_pairs: int = 10) -> str:
    """Return the HTML report of a run directory as a string (one self-contained page, inline SVG)."""
    root = Path(run_dir)
    summary = json.loads((root / "summary.json").read_text()) if (root / "summary.json").exists() else {}
    ledger = json.loads((root / "ledger.json").read_text()) if (root / "ledger.json").exists() else {}
    rounds = _read_jsonl(root / "rounds.jsonl")
    pairs = _read_jsonl(root / "qa.jsonl")
    config = (root / "run.toml").read_text() if (root / "run.toml").exists() else ""

    parts = [f"<!doctype html><meta charset='utf-8'><title>equal run {html.escape(root.name)}</title>"
             f"<style>{_CSS}</style><h1>equal extract: {html.escape(str(root))}</h1>"]
    keys = ("strategy", "rounds", "documents_read", "documents_total", "clusters", "pairs", "llm_requests",
            "llm_cache_hits", "tokens_in", "tokens_out", "ot_distance", "seconds")
    parts.append("<h2>Summary</h2>" + _table([(k, summary.get(k, ledger.get(k, ""))) for k in keys]))

    charts = []
    if rounds:
        req = [float(r.get("llm_requests", 0)) for r in rounds]
        docs = [float(r.get("documents_read", 0)) for r in rounds]
        ot = [float("nan") if r.get("ot_distance") is None else float(r["ot_distance"]) for r in rounds]
        x, xlabel = (req, "LLM requests") if any(req) else (docs, "documents read")
        charts.append(line_chart({"extracted set": (x, ot)}, title="OT distance to the target (lower is closer)",
                                 xlabel=xlabel, ylabel="OT distance (IPOT)"))
        mean_reward = [sum(r["rewards"]) / len(r["rewards"]) if r.get("rewards") else float("nan")
                       for r in rounds]
        if any(r.get("rewards") for r in rounds):
            charts.append(line_chart({"mean reward": ([float(r["round"]) for r in rounds], mean_reward)},
                                     title="Reward of the chosen clusters per round", xlabel="round",
                                     ylabel="1 − OT"))
        charts.append(line_chart({"pairs": (docs, [float(r.get("pairs", 0)) for r in rounds])},
                                 title="Pairs kept", xlabel="documents read", ylabel="pairs"))
        visits: Counter[int] = Counter(c for r in rounds for c in r.get("clusters", []))
        if visits:
            ids = sorted(visits)
            charts.append(bar_chart([str(c) for c in ids], [float(visits[c]) for c in ids],
                                    title="Rounds in which each cluster was chosen", ylabel="rounds"))
    parts.append("<h2>Progress</h2><div class='grid'>" + "".join(charts) + "</div>")

    drops = summary.get("drops") or {}
    if drops:
        parts.append("<h2>Pairs dropped, by reason</h2>" + _table(sorted(drops.items())))
    if ledger:
        parts.append("<h2>Cost ledger</h2>" + _table(sorted(ledger.items())))
    if pairs:
        shown = pairs[:sample_pairs]
        items = []
        for p in shown:
            msgs = p.get("messages", [])
            q = msgs[0]["content"] if msgs else ""
            a = msgs[1]["content"] if len(msgs) > 1 else ""
            items.append(f"<div class='qa'><b>Q</b> {html.escape(q)}\n<b>A</b> {html.escape(a)}\n"
                         f"<small>doc {html.escape(str(p.get('doc_id')))}, cluster {p.get('cluster')}, "
                         f"round {p.get('round')}</small></div>")
        parts.append(f"<h2>First {len(shown)} of {len(pairs)} pairs</h2>" + "".join(items))
    parts.append("<h2>Configuration (run.toml)</h2><pre>" + html.escape(config) + "</pre>")
    return "\n".join(parts)


def write_run_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` into the run directory (atomically) and return its path."""
    from equal.data.io import atomic_write_text

    out = Path(run_dir) / "report.html"
    atomic_write_text(out, render_run_report(run_dir))
    return out
