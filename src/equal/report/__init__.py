"""HTML report of ``equal extract`` runs: did the bandit help?

One self-contained page (inline SVG, a few lines of plain JavaScript for the pair table, no network) drawn
only from the files of the run directories: ``summary.json``, ``ledger.json``, ``rounds.jsonl``,
``qa.jsonl``, ``clusters.parquet``, ``documents.parquet``, ``embeddings/`` and ``run.toml`` (and the corpus
it names, for a sample document of each cluster). Several runs are drawn side by side: the run itself,
its baselines (``RUN/baseline-*``, written by ``equal extract --baseline``) and any run given to compare.

Anything missing (a run that has not finished a round, a directory of an older ``equal``, a file that
does not parse) becomes a note in the page, never an exception.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from equal.report.svg import heatmap, histogram, line_chart, scatter, stacked_bars

__all__ = ["RunData", "load_run", "render_report", "render_run_report", "write_run_report"]

logger = logging.getLogger(__name__)

MAX_PAIRS_SHOWN = 5000
"""Rows of the pair table per run (kept and dropped together); the rest are counted in a note."""

FIRST_PASS = ("In its first pass the bandit reads every cluster once (it cannot rank clusters it has not "
              "tried), so the distance can rise before it falls: those early rounds add pairs from clusters "
              "far from the target too.")

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1300px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ccc}h3{font-size:1.05em}
table{border-collapse:collapse;font-size:.85em;margin:.4em 0}td,th{border:1px solid #ddd;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}pre{background:#f6f6f6;padding:8px;
font-size:.8em;overflow:auto;max-height:30em}.note{background:#fff8e1;border-left:4px solid #f0b400;
padding:6px 10px;margin:6px 0;font-size:.9em}.verdict{background:#e8f4fd;border-left:4px solid #1f77b4;
padding:8px 12px;font-size:1.05em}.explain{color:#555;font-size:.9em;max-width:60em}
#pairs td{max-width:28em;white-space:pre-wrap;word-break:break-word}#pairs th{cursor:pointer;user-select:none}
#pairs tr.dropped td{background:#fdf0f0}#pairs div.c{max-height:7.5em;overflow:auto}
.wrap{max-height:42em;overflow:auto;border:1px solid #ddd}
small{color:#666}details>summary{cursor:pointer;font-weight:600;margin:.6em 0}
"""

# Plain JavaScript: filter the pair table by a search string and sort it by a clicked column. It only moves
# existing rows and reads textContent, so no pair text is ever parsed as HTML.
_JS = """
(function(){
  var table=document.getElementById('pairs'); if(!table) return;
  var body=table.tBodies[0], rows=Array.prototype.slice.call(body.rows);
  var box=document.getElementById('pair-search'), count=document.getElementById('pair-count');
  function filter(){
    var q=box.value.toLowerCase(), n=0;
    rows.forEach(function(r){var show=!q||r.textContent.toLowerCase().indexOf(q)>=0;
      r.style.display=show?'':'none'; if(show) n++;});
    count.textContent=n+' of '+rows.length+' rows';
  }
  box.addEventListener('input', filter);
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function(th, col){
    th.addEventListener('click', function(){
      var asc=th.getAttribute('data-dir')!=='asc'; th.setAttribute('data-dir', asc?'asc':'desc');
      var num=th.hasAttribute('data-num');
      rows.sort(function(a,b){
        var x=a.cells[col].textContent, y=b.cells[col].textContent;
        var c=num?(parseFloat(x)||0)-(parseFloat(y)||0):x.localeCompare(y);
        return asc?c:-c;});
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
  filter();
})();
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.3e}"
    return str(value)


def _note(text: str) -> str:
    return f"<div class='note'>{_e(text)}</div>"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, numeric: Sequence[bool] | None = None,
           table_id: str | None = None) -> str:
    num = list(numeric) if numeric is not None else [False] * len(header)
    head = "".join(f"<th{' data-num' if num[i] else ''}>{_e(h)}</th>" for i, h in enumerate(header))
    body = []
    for row in rows:
        cells = "".join(f"<td{' class=n' if i < len(num) and num[i] else ''}>{_e(_fmt(v))}</td>"
                        for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    tid = f" id='{_e(table_id)}'" if table_id else ""
    return f"<table{tid}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# ----------------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class RunData:
    """What the report reads from one run directory; every field may be empty, with a note saying why.

    Attributes
    ----------
    root : pathlib.Path
    label : str
        The name the report shows (strategy and folder).
    strategy : str
    summary, ledger : dict
        ``summary.json`` and ``ledger.json``.
    rounds : list of dict
        The committed rows of ``rounds.jsonl``.
    pairs : list of dict
        The records of ``qa.jsonl``.
    clusters : list of dict
        ``cluster``, ``size`` and ``target_gap`` of each cluster (``clusters.parquet``).
    doc_ids : list of str
        Document (chunk) ids in row order (``documents.parquet``).
    doc_parent : list of str
        The corpus document of each row.
    doc_labels : ndarray of shape (n_docs,), int64, or None
    doc_emb : ndarray of shape (n_docs, d), float32, or None
    target_emb : ndarray of shape (m, d), float32, or None
    doc_text : dict of str to str
        Start of the text of each cluster's sample document, by row (``"#12"``) or, for an older run
        directory, by corpus id.
    config_text : str
        ``run.toml``.
    notes : list of str
        What is missing or could not be read.
    """

    root: Path
    label: str
    strategy: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    ledger: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    clusters: list[dict[str, Any]] = field(default_factory=list)
    doc_ids: list[str] = field(default_factory=list)
    doc_parent: list[str] = field(default_factory=list)
    doc_labels: np.ndarray | None = None
    doc_emb: np.ndarray | None = None
    target_emb: np.ndarray | None = None
    doc_text: dict[str, str] = field(default_factory=dict)
    config_text: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def is_bandit(self) -> bool:
        """True when clusters were chosen (strategy ``equal`` or ``uniform-clusters``)."""
        return any(r.get("clusters") for r in self.rounds)

    @property
    def dropped(self) -> list[dict[str, Any]]:
        """Pairs a filter dropped, each with its ``reason`` (recorded by equal from issue 15 on)."""
        return [d for r in self.rounds for d in (r.get("dropped") or []) if isinstance(d, dict)]


def _read_json(path: Path, notes: list[str]) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name} could not be read ({exc}); shown without it")
        return {}
    return value if isinstance(value, dict) else {}


def _read_jsonl(path: Path, notes: list[str], *, limit: int | None = None) -> list[dict[str, Any]]:
    """The dict lines of ``path`` (its first ``limit`` bytes); unreadable lines are skipped with a note."""
    if not path.exists():
        return []
    try:
        data = path.read_bytes()
    except OSError as exc:
        notes.append(f"{path.name} could not be read ({exc})")
        return []
    if limit is not None:
        data = data[:limit]  # rows past the last commit belong to a round that was interrupted
    out, bad = [], 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(value, dict):
            out.append(value)
        else:
            bad += 1
    if bad:
        notes.append(f"{path.name}: {bad} line(s) could not be read and are left out")
    return out


def _label_of(root: Path, strategy: str) -> str:
    return f"{strategy or '?'} ({root.name})"


def load_run(run_dir: str | Path, *, label: str | None = None, sample_chars: int = 220) -> RunData:
    """Read what the report needs from ``run_dir``; missing or unreadable parts become ``notes``.

    Parameters
    ----------
    run_dir : path
        A run directory of ``equal extract``.
    label : str, optional
        The name shown for this run (default: strategy and folder name).
    sample_chars : int, default=220
        Characters of each cluster's sample document kept.

    Returns
    -------
    RunData
    """
    root = Path(run_dir)
    notes: list[str] = []
    if not root.is_dir():
        return RunData(root=root, label=label or root.name, notes=[f"{root} is not a directory"])
    if (root / "bandit.json").exists():
        notes.append("this run directory was written by an older equal (bandit.json): only what its files "
                     "still share with today's format is shown")
    summary = _read_json(root / "summary.json", notes)
    ledger = _read_json(root / "ledger.json", notes)
    state = _read_json(root / "state.json", notes)
    config_text = ""
    strategy = str(summary.get("strategy", ""))
    corpus: dict[str, Any] = {}
    if (root / "run.toml").exists():
        config_text = (root / "run.toml").read_text(encoding="utf-8", errors="replace")
        try:
            from equal.config import read_toml

            raw = read_toml(root / "run.toml")
            strategy = strategy or str(raw.get("run", {}).get("strategy", ""))
            corpus = dict(raw.get("data", {}))
        except Exception as exc:  # written by another version: shown as text only
            notes.append(f"run.toml could not be read as settings ({exc})")
    else:
        notes.append("no run.toml: the settings of this run are unknown")
    limit = state.get("rounds_bytes") if isinstance(state.get("rounds_bytes"), int) else None
    rounds = _read_jsonl(root / "rounds.jsonl", notes, limit=limit)
    qa_limit = state.get("qa_bytes") if isinstance(state.get("qa_bytes"), int) else None
    pairs = _read_jsonl(root / "qa.jsonl", notes, limit=qa_limit)
    if not rounds:
        notes.append("no round is committed yet: there is no progress to draw")
    if not summary:
        notes.append("no summary.json: the run has not finished (figures are those of its last committed round)")

    clusters: list[dict[str, Any]] = []
    doc_ids: list[str] = []
    doc_parent: list[str] = []
    labels = doc_emb = target_emb = None
    try:
        import pyarrow.parquet as pq

        if (root / "clusters.parquet").exists():
            t = pq.read_table(root / "clusters.parquet")
            cols = set(t.column_names)
            n = t.num_rows
            clusters = [{"cluster": int(c), "size": int(s), "target_gap": (float(g) if g is not None else None)}
                        for c, s, g in zip(t.column("cluster").to_pylist(),
                                           t.column("size").to_pylist() if "size" in cols else [0] * n,
                                           t.column("target_gap").to_pylist() if "target_gap" in cols
                                           else [None] * n, strict=True)]
        if (root / "documents.parquet").exists():
            names = pq.ParquetFile(root / "documents.parquet").schema_arrow.names
            t = pq.read_table(root / "documents.parquet",  # not the texts: a corpus may be gigabytes
                              columns=[c for c in ("id", "parent_id", "cluster") if c in names])
            doc_ids = [str(x) for x in t.column("id").to_pylist()]
            doc_parent = ([str(x) for x in t.column("parent_id").to_pylist()] if "parent_id" in t.column_names
                          else list(doc_ids))
            if "cluster" in t.column_names:
                labels = np.asarray(t.column("cluster").to_numpy(), dtype=np.int64)
    except Exception as exc:
        notes.append(f"the run's clusters or documents could not be read ({exc})")
    if not clusters:
        notes.append("no clusters.parquet: the run's setup (embedding, clustering) is not done")
    try:
        from equal.data.io import load_npy

        if (root / "embeddings" / "documents.npy").exists():
            doc_emb = np.asarray(load_npy(root / "embeddings" / "documents.npy", mmap=True))
        if (root / "embeddings" / "target.npy").exists():
            target_emb = np.asarray(load_npy(root / "embeddings" / "target.npy", mmap=False))
    except Exception as exc:
        notes.append(f"the run's embeddings could not be read ({exc})")
    if doc_emb is not None and labels is not None and len(doc_emb) != len(labels):
        notes.append("embeddings/documents.npy and documents.parquet disagree in length; the map is left out")
        doc_emb = None

    doc_text = _sample_texts(corpus, doc_parent, labels, len(clusters), sample_chars, notes, root)
    return RunData(root=root, label=label or _label_of(root, strategy), strategy=strategy, summary=summary,
                   ledger=ledger, rounds=rounds, pairs=pairs, clusters=clusters, doc_ids=doc_ids,
                   doc_parent=doc_parent, doc_labels=labels, doc_emb=doc_emb, target_emb=target_emb,
                   doc_text=doc_text, config_text=config_text, notes=notes)


def _clip(text: str, chars: int) -> str:
    text = " ".join(text.split())
    return text[:chars] + ("…" if len(text) > chars else "")


def _sample_texts(corpus: dict[str, Any], doc_parent: list[str], labels: np.ndarray | None, k: int,
                  chars: int, notes: list[str], root: Path) -> dict[str, str]:
    """The start of the first document of each cluster, by row (``"#3"``) or by corpus id.

    Read from ``documents.parquet`` when it holds the texts (a document store); for an older run directory,
    from the corpus its ``run.toml`` names, if that is still there.
    """
    if labels is None or not doc_parent:
        return {}
    firsts = [int(np.flatnonzero(labels == c)[0]) for c in range(k) if np.any(labels == c)]
    try:
        from equal.data.store import DocumentStore

        store = DocumentStore(root / "documents.parquet")
        return {f"#{row}": _clip(doc.text, chars) for row, doc in zip(firsts, store.take(firsts), strict=True)}
    except Exception:  # no text column (an older equal): look the documents up in the corpus
        logger.debug("documents.parquet holds no texts; reading the corpus", exc_info=True)
    if not corpus.get("corpus"):
        return {}
    wanted = {doc_parent[r] for r in firsts}
    path = Path(str(corpus["corpus"]))
    if not path.is_absolute() and not path.exists():
        path = root / path  # a relative corpus path is relative to where extract ran; try the run too
    if not path.exists():
        notes.append(f"the corpus {corpus['corpus']} is not found from here: clusters show document ids only")
        return {}
    try:
        from equal.data import read_documents

        res = read_documents(path, text_field=str(corpus.get("text_field", "text")),
                             id_field=corpus.get("id_field") or None, skip_invalid=True)
    except Exception as exc:
        notes.append(f"the corpus {path} could not be read ({exc}): clusters show document ids only")
        return {}
    return {d.id: _clip(d.text, chars) for d in res.items if d.id in wanted}


# ----------------------------------------------------------------------------------------- figures
def _final_distance(run: RunData) -> float | None:
    value = run.summary.get("ot_distance")
    if value is None and run.rounds:
        value = run.rounds[-1].get("ot_distance")
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _docs_read(run: RunData) -> int:
    value = run.summary.get("documents_read")
    if value is None and run.rounds:
        value = run.rounds[-1].get("documents_read")
    return int(value) if isinstance(value, int | float) else 0


def _verdict(runs: Sequence[RunData]) -> str:
    """One or two sentences comparing the final distances (lower is closer to the target)."""
    done = [(r, _final_distance(r)) for r in runs]
    known = [(r, d) for r, d in done if d is not None]
    if len(runs) < 2:
        return ("Only one run is drawn: run `equal extract ... --baseline random` or pass `--compare RUN2` to "
                "see whether the bandit's choices beat another strategy at the same budget.")
    if len(known) < 2:
        return "Fewer than two of these runs have a final OT distance yet: nothing to compare."
    main, dm = known[0]
    parts = []
    for other, do in known[1:]:
        better = "closer to" if dm < do else "farther from" if dm > do else "as close to"
        same = _docs_read(main) == _docs_read(other)
        budget = "at the same budget" if same else (
            f"(budgets differ: {_docs_read(main)} vs {_docs_read(other)} documents read)")
        pct = abs(do - dm) / do * 100 if do else 0.0
        side = "lower" if dm < do else "higher"
        parts.append(f"{main.label} ended {better} the target than {other.label} {budget}: OT distance "
                     f"{dm:.4f} vs {do:.4f} ({pct:.1f}% {side}).")
    return " ".join(parts)


def _first_pass_rounds(run: RunData) -> int | None:
    """Rounds until every non-empty cluster had been chosen once (None if that never happened)."""
    k = sum(1 for c in run.clusters if c.get("size", 1)) or None
    seen: set[int] = set()
    for i, r in enumerate(run.rounds):
        seen.update(int(c) for c in r.get("clusters") or [])
        if k is not None and len(seen) >= k:
            return i + 1
    return None


def _ot_section(runs: Sequence[RunData]) -> str:
    series = {}
    for r in runs:
        pts = [(float(x["documents_read"]), float(x["ot_distance"])) for x in r.rounds
               if isinstance(x.get("documents_read"), int | float) and isinstance(x.get("ot_distance"), int | float)]
        if pts:
            series[r.label] = ([p[0] for p in pts], [p[1] for p in pts])
    out = ["<h2>OT distance to the target against the budget</h2>"]
    if not series:
        return out[0] + _note("No run has a committed round with an OT distance yet.")
    out.append(f"<p class='explain'>Lower is closer to the target. {_e(FIRST_PASS)}")
    marks = []
    for r in runs:
        n = _first_pass_rounds(r)
        if r.is_bandit and n is not None:
            docs = r.rounds[n - 1].get("documents_read", "?")
            out.append(f" In {_e(r.label)} the first pass took rounds 0–{n - 1} ({_e(docs)} documents).")
            if isinstance(docs, int | float):
                marks.append((float(docs), f"first pass of {r.label} ends"))
    out.append("</p>")
    charts = [line_chart(series, title="OT distance of the kept pairs to the target", xlabel="documents read",
                         ylabel="OT distance (IPOT)", width=640, height=340, marks=marks)]
    tok = {}
    for r in runs:
        pts = [(float(x.get("tokens_in", 0)) + float(x.get("tokens_out", 0)), float(x["ot_distance"]))
               for x in r.rounds if isinstance(x.get("ot_distance"), int | float)]
        if pts and any(p[0] for p in pts):
            tok[r.label] = ([p[0] for p in pts], [p[1] for p in pts])
    if tok:
        charts.append(line_chart(tok, title="OT distance against LLM tokens paid", xlabel="tokens (in + out) paid",
                                 ylabel="OT distance (IPOT)", width=640, height=340))
    out.append("<div class='grid'>" + "".join(charts) + "</div>")
    return "".join(out)


def _summary_section(runs: Sequence[RunData]) -> str:
    keys = [("strategy", "strategy"), ("rounds", "rounds"), ("documents read", "documents_read"),
            ("documents (chunks) in corpus", "documents_total"), ("clusters", "clusters"), ("pairs kept", "pairs"),
            ("LLM requests", "llm_requests"), ("LLM cache hits", "llm_cache_hits"), ("LLM failed", "llm_failed"),
            ("tokens in", "tokens_in"), ("tokens out", "tokens_out"), ("seconds", "seconds"),
            ("final OT distance (exact)", "ot_distance")]
    rows = []
    for name, key in keys:
        row: list[Any] = [name]
        for r in runs:
            v = r.summary.get(key, r.ledger.get(key))
            if v is None and r.rounds:
                v = r.rounds[-1].get(key)
            row.append(v if key != "strategy" else r.strategy or v)
        rows.append(row)
    rows.append(["folder", *[str(r.root) for r in runs]])
    return ("<h2>Runs</h2>" + _table(["", *[r.label for r in runs]], rows,
                                     numeric=[False] + [True] * len(runs)))


def _per_cluster_rows(run: RunData) -> list[list[Any]]:
    k = len(run.clusters)
    chosen: Counter[int] = Counter()
    rewards: dict[int, list[float]] = {}
    for r in run.rounds:
        chosen.update(int(c) for c in r.get("clusters") or [])
        for c, w in zip(r.get("clusters") or [], r.get("rewards") or [], strict=False):
            rewards.setdefault(int(c), []).append(float(w))
    read: Counter[int] = Counter()
    if run.doc_labels is not None and run.doc_ids:
        row_of = {d: i for i, d in enumerate(run.doc_ids)}
        for r in run.rounds:
            for d in r.get("documents") or []:
                if d in row_of:
                    read[int(run.doc_labels[row_of[d]])] += 1
    kept: Counter[int] = Counter(int(p["cluster"]) for p in run.pairs if isinstance(p.get("cluster"), int))
    rows = []
    for c in run.clusters:
        cid = c["cluster"]
        sample = ""
        if run.doc_labels is not None and cid < k and np.any(run.doc_labels == cid):
            first = int(np.flatnonzero(run.doc_labels == cid)[0])
            text = run.doc_text.get(f"#{first}", run.doc_text.get(run.doc_parent[first]))
            sample = f"{run.doc_ids[first]}: {text}" if text else run.doc_ids[first]
        w = rewards.get(cid)
        rows.append([cid, c.get("size"), c.get("target_gap"), chosen.get(cid, 0) if run.is_bandit else None,
                     read.get(cid, 0), float(np.mean(w)) if w else None, kept.get(cid, 0), sample])
    return rows


def _heat(run: RunData) -> str:
    if run.doc_labels is None or not run.rounds or not run.clusters:
        return _note("No cluster × round map: the run has no committed round or no clusters yet.")
    k, n = len(run.clusters), len(run.rounds)
    row_of = {d: i for i, d in enumerate(run.doc_ids)}
    grid = [[0.0] * n for _ in range(k)]
    for j, r in enumerate(run.rounds):
        for d in r.get("documents") or []:
            if d in row_of:
                c = int(run.doc_labels[row_of[d]])
                if 0 <= c < k:
                    grid[c][j] += 1
    title = ("Documents read per cluster × round (the bandit's choices)" if run.is_bandit
             else "Documents read per cluster × round (no cluster choices)")
    cell = max(5, min(26, 900 // max(n, 1)))
    return heatmap(grid, row_labels=[str(c) for c in range(k)], col_labels=[str(j) for j in range(n)],
                   title=title, xlabel="round", ylabel="cluster", cell=cell)


def _centres(X: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Mean of each cluster's rows, float64 (k, d); NaN for an empty cluster. One pass over ``X``.

    In blocks of rows, so a memory-mapped (10^6, d) matrix is never copied whole (nor cast to float64).
    """
    labels = np.asarray(labels, dtype=np.int64)
    sums = np.zeros((k, X.shape[1]))
    counts = np.zeros(k, dtype=np.int64)
    step = max(1, (1 << 22) // max(X.shape[1], 1))
    for start in range(0, len(labels), step):
        lab = labels[start:start + step]
        keep = (lab >= 0) & (lab < k)
        order = np.flatnonzero(keep)[np.argsort(lab[keep], kind="stable")]
        if not len(order):
            continue
        sorted_labels = lab[order]
        present, starts = np.unique(sorted_labels, return_index=True)
        rows = np.asarray(X[start:start + step])[order]
        sums[present] += np.add.reduceat(rows, starts, axis=0, dtype=np.float64)
        counts[present] += np.diff(np.append(starts, len(order)))
    out = np.full((k, X.shape[1]), np.nan)
    have = counts > 0
    out[have] = sums[have] / counts[have, None]
    return out


def _pca_map(run: RunData, seed: int = 0) -> str:
    if run.doc_emb is None or run.doc_labels is None or not run.clusters:
        return _note("No map: the run's embeddings or clusters are not there (setup not done).")
    X = run.doc_emb  # float32, memory-mapped: only a sample and a few rows are read as float64
    rng = np.random.default_rng(seed)
    sample = np.arange(len(X)) if len(X) <= 5000 else np.sort(rng.choice(len(X), 5000, replace=False))
    fit = np.asarray(X[sample], dtype=np.float64)
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    basis = vt[:2].T if vt.shape[0] >= 2 else np.pad(vt.T, ((0, 0), (0, 2 - vt.shape[0])))

    def proj(A: np.ndarray) -> np.ndarray:
        return (np.asarray(A, dtype=np.float64) - mean) @ basis

    k = len(run.clusters)
    labels = np.asarray(run.doc_labels, dtype=np.int64)
    sizes = np.bincount(labels, minlength=k)[:k]
    pc = proj(_centres(X, labels, k))
    chosen: Counter[int] = Counter(int(c) for r in run.rounds for c in r.get("clusters") or [])
    rmax = float(np.sqrt(sizes.max())) if sizes.max() else 1.0
    layers: list[dict[str, object]] = []
    if run.target_emb is not None and len(run.target_emb):
        pt = proj(run.target_emb)
        layers.append({"name": "target examples", "x": pt[:, 0].tolist(), "y": pt[:, 1].tolist(), "r": 2.0,
                       "color": "#d62728", "opacity": 0.35})
    layers.append({"name": "cluster centres (area ∝ size)", "x": pc[:, 0].tolist(), "y": pc[:, 1].tolist(),
                   "r": [4 + 10 * math.sqrt(s) / rmax for s in sizes], "color": "#1f77b4", "opacity": 0.45,
                   "labels": [f"cluster {c}: {sizes[c]} documents, chosen {chosen.get(c, 0)} times"
                              for c in range(k)],
                   "text": [str(c) for c in range(k)]})
    row_of = {d: i for i, d in enumerate(run.doc_ids)}
    src = [row_of[p["doc_id"]] for p in run.pairs if p.get("doc_id") in row_of]
    if src:
        pp = proj(X[src])
        tips = [f"{p.get('doc_id')} (cluster {p.get('cluster')}, round {p.get('round')})" for p in run.pairs
                if p.get("doc_id") in row_of]
        layers.append({"name": "kept pairs (at their source document)", "x": pp[:, 0].tolist(),
                       "y": pp[:, 1].tolist(), "r": 2.5, "color": "#2ca02c", "labels": tips, "opacity": 0.9})
    if run.target_emb is not None and len(run.target_emb):
        tm = proj(np.asarray(run.target_emb, dtype=np.float64).mean(axis=0, keepdims=True))
        layers.append({"name": "target mean", "x": tm[:, 0].tolist(), "y": tm[:, 1].tolist(), "r": 9.0,
                       "color": "#ff7f0e", "shape": "star", "labels": ["mean of the target examples"]})
    return scatter(layers, title="Corpus map (PCA of the document embeddings)", xlabel="PC 1", ylabel="PC 2",
                   width=640, height=460)


def _drops_by_round(run: RunData) -> str:
    if not run.rounds:
        return _note("No drops to show: no committed round.")
    reasons = sorted({k for r in run.rounds for k in (r.get("drops") or {})})
    if not reasons:
        return _note("This run's rounds.jsonl records no drops per round (written by an older equal).")
    stacks = {k: [float((r.get("drops") or {}).get(k, 0)) for r in run.rounds] for k in reasons}
    stacks = {k: v for k, v in stacks.items() if any(v)} or stacks
    return stacked_bars([str(r.get("round", i)) for i, r in enumerate(run.rounds)], stacks,
                        title="Pairs (or outputs) dropped per round, by reason", xlabel="round", ylabel="dropped")


def _cost_rows_fn() -> Callable[[dict[str, Any]], Any] | None:
    try:
        from equal.report.cost import cost_rows  # written by the money part of issue 15; optional
    except Exception:
        return None
    return cost_rows  # type: ignore[no-any-return]


def _rows_of(value: Any) -> list[tuple[str, Any]]:
    """``cost_rows``' answer as (name, value) rows, whatever its shape (pairs, dicts or a mapping)."""
    if isinstance(value, dict):
        return [(str(k), v) for k, v in value.items()]
    rows: list[tuple[str, Any]] = []
    for item in value or []:
        if isinstance(item, dict):
            vals = list(item.values())
            rows.append((str(vals[0]) if vals else "", " ".join(_fmt(v) for v in vals[1:])))
        elif isinstance(item, list | tuple) and item:
            rows.append((str(item[0]), " ".join(_fmt(v) for v in item[1:])))
    return rows


def _cost_section(run: RunData) -> str:
    out = []
    fn = _cost_rows_fn()
    if run.ledger:
        rows = None
        if fn is not None:
            try:
                rows = _rows_of(fn(run.ledger))
            except Exception as exc:
                logger.debug("cost_rows failed", exc_info=True)
                out.append(_note(f"the cost breakdown could not be computed ({exc}); the raw ledger is shown"))
        if not rows:
            keep = ("requests", "cached", "failed", "tokens_in", "tokens_out", "seconds", "est_flops", "est_cost",
                    "price_in_per_1m", "price_out_per_1m", "model")
            rows = [(k, run.ledger[k]) for k in keep if k in run.ledger]
        out.append(_table(["ledger", "value"], rows, numeric=[False, True]))
    else:
        out.append(_note("no ledger.json: no request has been accounted for yet"))
    if not run.rounds:
        return "".join(out)
    price_in = run.ledger.get("price_in_per_1m")
    price_out = run.ledger.get("price_out_per_1m")
    priced = isinstance(price_in, int | float) and isinstance(price_out, int | float)
    has_secs = any("llm_seconds" in r for r in run.rounds)
    header = ["round", "documents", "pairs kept", "LLM requests", "cache hits", "tokens in", "tokens out",
              "LLM seconds"] + (["money"] if priced else [])
    rows, prev = [], {"documents_read": 0, "llm_requests": 0, "llm_cached": 0, "tokens_in": 0, "tokens_out": 0,
                      "llm_seconds": 0.0}
    for r in run.rounds:
        def d(key: str, r: dict[str, Any] = r, prev: dict[str, Any] = prev) -> Any:
            now = r.get(key)
            if not isinstance(now, int | float):
                return None
            return now - prev.get(key, 0)
        row = [r.get("round"), d("documents_read"), r.get("pairs_new"), d("llm_requests"), d("llm_cached"),
               d("tokens_in"), d("tokens_out"), round(d("llm_seconds"), 2) if has_secs and d("llm_seconds")
               is not None else None]
        if priced:
            ti, to = d("tokens_in") or 0, d("tokens_out") or 0
            row.append(ti * float(price_in) / 1e6 + to * float(price_out) / 1e6)  # type: ignore[arg-type]
        rows.append(row)
        prev = {k: r.get(k, prev[k]) if isinstance(r.get(k), int | float) else prev[k] for k in prev}
    out.append("<h4>Cost per round (requests and tokens paid; cache hits cost nothing)</h4>")
    if not has_secs:
        out.append(_note("this run's rounds.jsonl records no per-round seconds or cache hits (older equal)"))
    out.append("<div class='wrap' style='max-height:22em'>"
               + _table(header, rows, numeric=[True] * len(header)) + "</div>")
    return "".join(out)


def _lengths_section(runs: Sequence[RunData]) -> str:
    q: dict[str, list[float]] = {}
    a: dict[str, list[float]] = {}
    for r in runs:
        qs, ans = [], []
        for p in r.pairs:
            msgs = p.get("messages") or []
            if len(msgs) >= 2 and isinstance(msgs[0], dict) and isinstance(msgs[-1], dict):
                qs.append(float(len(str(msgs[0].get("content", "")))))
                ans.append(float(len(str(msgs[-1].get("content", "")))))
        if qs:
            q[r.label], a[r.label] = qs, ans
    head = "<h2>Question and answer lengths (kept pairs)</h2>"
    if not q:
        return head + _note("No kept pair yet.")
    return head + "<div class='grid'>" + histogram(q, title="Question length", xlabel="characters") + histogram(
        a, title="Answer length", xlabel="characters") + "</div>"


def _pair_rows(run: RunData) -> tuple[list[str], int]:
    def row(p: dict[str, Any], status: str, reason: str) -> str:
        msgs = p.get("messages") or []
        q = msgs[0].get("content", "") if msgs and isinstance(msgs[0], dict) else ""
        a = msgs[-1].get("content", "") if len(msgs) > 1 and isinstance(msgs[-1], dict) else ""
        prov = "; ".join(f"{k}={p[k]}" for k in ("id", "model", "extractor", "prompt_version", "chunk")
                         if p.get(k) is not None)
        extra = [k for k in p if k not in ("messages", "id", "model", "extractor", "prompt_version", "chunk",
                                           "doc_id", "cluster", "round", "reason")]
        if extra:
            prov += "; " + "; ".join(f"{k}={json.dumps(p[k], ensure_ascii=False)[:120]}" for k in extra)
        cls = " class='dropped'" if status != "kept" else ""
        cells = [run.label, status, reason, p.get("round", ""), p.get("cluster", ""), p.get("doc_id", ""), q, a, prov]
        num, long = {3, 4}, {6, 7, 8}
        return f"<tr{cls}>" + "".join(
            f"<td{' class=n' if i in num else ''}>{f'<div class=c>{_e(v)}</div>' if i in long else _e(v)}</td>"
            for i, v in enumerate(cells)) + "</tr>"

    items = [(p, "kept", "") for p in run.pairs] + [(d, "dropped", str(d.get("reason", "?"))) for d in run.dropped]
    shown = items[:MAX_PAIRS_SHOWN]
    return [row(p, s, why) for p, s, why in shown], len(items) - len(shown)


def _pairs_section(runs: Sequence[RunData]) -> str:
    rows: list[str] = []
    notes = []
    for r in runs:
        got, left = _pair_rows(r)
        rows.extend(got)
        if left:
            notes.append(_note(f"{r.label}: {left} more rows are not shown (the table holds {MAX_PAIRS_SHOWN} per "
                               "run); qa.jsonl has them all"))
        if r.rounds and not any("dropped" in x for x in r.rounds):
            notes.append(_note(f"{r.label}: dropped pairs are not listed (its rounds.jsonl predates their "
                               "recording); their counts are in the drops chart"))
    header = ["run", "status", "reason", "round", "cluster", "document", "question", "answer", "provenance"]
    head = "".join(f"<th{' data-num' if h in ('round', 'cluster') else ''}>{_e(h)}</th>" for h in header)
    out = ["<h2>All pairs, with provenance</h2>",
           "<p class='explain'>Kept pairs and the pairs a filter dropped (with the filter's name as reason). "
           "Outputs dropped by the extractor itself (nothing parsed, an empty answer) carry no pair and are "
           "only counted. Type to filter; click a column to sort.</p>", *notes]
    if not rows:
        return "".join(out) + _note("No pair yet.")
    out.append("<p><input id='pair-search' type='search' placeholder='filter pairs…' size='40'> "
               "<small id='pair-count'></small></p>")
    out.append(f"<div class='wrap'><table id='pairs'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}"
               "</tbody></table></div>")
    return "".join(out)


def _run_section(run: RunData, *, index: int) -> str:
    out = [f"<h2>{_e(run.label)}</h2>", f"<p><small>{_e(run.root)}</small></p>"]
    out.extend(_note(n) for n in run.notes)
    sections: list[tuple[str, Callable[[], str]]] = [
        ("Per cluster", lambda: _table(
            ["cluster", "size", "target gap", "times chosen", "documents read", "mean reward", "pairs kept",
             "sample document"], _per_cluster_rows(run),
            numeric=[True] * 7 + [False]) if run.clusters else _note("No clusters yet.")),
        ("Choices and the map", lambda: "<div class='grid'>" + _heat(run) + _pca_map(run) + "</div>"),
        ("Drops", lambda: _drops_by_round(run)),
        ("Cost", lambda: _cost_section(run)),
        ("Configuration (run.toml)", lambda: f"<details><summary>run.toml</summary><pre>{_e(run.config_text)}"
                                              "</pre></details>" if run.config_text else _note("no run.toml")),
    ]
    for title, draw in sections:
        out.append(f"<h3>{_e(title)}</h3>")
        out.append(_safe(draw, f"{run.label}: {title}"))
    return f"<section id='run-{index}'>" + "".join(out) + "</section>"


def _safe(draw: Callable[[], str], what: str) -> str:
    """Draw a section; a failure becomes a note in the page (a report must never cost a finished run)."""
    try:
        return draw()
    except Exception as exc:
        logger.warning("report section %s failed: %s", what, exc, exc_info=True)
        return _note(f"this section could not be drawn ({type(exc).__name__}: {exc})")


def render_report(runs: Sequence[RunData | str | Path], *, title: str | None = None) -> str:
    """The HTML page for ``runs`` (the first is the main run, the others are drawn beside it).

    Parameters
    ----------
    runs : sequence of RunData or path
        Run directories (or what :func:`load_run` read from them).
    title : str, optional
        The page's heading (default: the first run's folder).

    Returns
    -------
    str
        One self-contained HTML document: inline SVG and CSS, plain JavaScript, no external resource.
    """
    data = [r if isinstance(r, RunData) else load_run(r) for r in runs]
    if not data:
        raise ValueError("runs must name at least one run directory")
    seen: Counter[str] = Counter()
    unique = []
    for r in data:  # two runs with the same strategy and folder name would share a legend entry
        seen[r.label] += 1
        unique.append(r if seen[r.label] == 1 else RunData(**{**r.__dict__, "label": f"{r.label} #{seen[r.label]}"}))
    data = unique
    heading = title or f"equal extract: {data[0].root}"
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(heading)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{_e(heading)}</h1>",
             f"<p class='verdict'><b>Did the bandit help?</b> {_e(_verdict(data))}</p>",
             "<p class='explain'>The OT distance measures how far the kept pairs' embeddings sit from the "
             "target examples' (optimal transport, lower is closer); the same target vectors are used for "
             "every run of a baseline. Each run below has its clusters, the documents it read per round, a "
             "map of the corpus, what it dropped and what it cost.</p>"]
    parts.append(_safe(lambda: _summary_section(data), "summary"))
    parts.append(_safe(lambda: _ot_section(data), "OT distance"))
    parts.append(_safe(lambda: _lengths_section(data), "lengths"))
    for i, r in enumerate(data):
        parts.append(_run_section(r, index=i))
    parts.append(_safe(lambda: _pairs_section(data), "pairs"))
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts)


def render_run_report(run_dir: str | Path, *, compare: Sequence[str | Path] = ()) -> str:
    """The HTML report of ``run_dir``, with its baselines (``RUN/baseline-*``) and the ``compare`` runs beside it."""
    from equal.pipeline.baseline import baseline_dirs

    root = Path(run_dir)
    runs: list[RunData | str | Path] = [root, *(_baseline(root, b) for b in baseline_dirs(root)), *compare]
    return render_report(runs)


def _baseline(parent: Path, sub: Path) -> RunData:
    """A baseline's data, with a note when it was made for other settings of its parent than today's."""
    run = load_run(sub)
    try:
        from equal.config import load_toml

        mine, theirs = load_toml(sub / "run.toml"), load_toml(parent / "run.toml")
        changed = [k for k in theirs.replace(strategy=mine.run.strategy).changed_keys(mine)]
    except Exception:  # either run.toml is missing or of another version: nothing to compare
        return run
    if changed:
        run.notes.append(f"this baseline was made for other settings of {parent.name} ({', '.join(changed)}); "
                         "rerun `equal extract ... --baseline` to redo it")
    return run


def write_run_report(run_dir: str | Path, *, compare: Sequence[str | Path] = (),
                     out: str | Path | None = None) -> Path:
    """Write the report (default ``RUN/report.html``) atomically and return its path.

    Raises
    ------
    equal.errors.DataError
        ``run_dir`` (or a ``compare`` run) is not a directory.
    """
    from equal.data.io import atomic_write_text
    from equal.errors import DataError

    for path in (run_dir, *compare):
        if not Path(path).is_dir():
            raise DataError("not a run directory (no such folder)", path=str(path))
    target = Path(out) if out is not None else Path(run_dir) / "report.html"
    atomic_write_text(target, render_run_report(run_dir, compare=compare))
    return target
