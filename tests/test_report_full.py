"""The report answers "did the bandit help?": a real tiny run, its random baseline, --compare, escaping, old dirs.

Every page is parsed with :mod:`html.parser`; the runs are real (rule-based extractor, MiniLM).
"""

from __future__ import annotations

import json
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from equal.config import ExtractConfig
from equal.pipeline.baseline import run_baseline
from equal.pipeline.extract import ExtractSummary, run_extract
from equal.report import FIRST_PASS, load_run, render_report, write_run_report

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# the corpora here are tiny on purpose: k-means' warning about few points per centroid is expected
pytestmark = pytest.mark.filterwarnings("ignore:KMeans is training")
HOSTILE = "<script>alert('pwned')</script>"


class Page(HTMLParser):
    """What the tests look at: headings, SVGs and their titles, tables, script blocks, URLs, text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.headings: list[str] = []
        self.svg_titles: list[str] = []
        self.scripts: list[str] = []
        self.text: list[str] = []
        self.pair_rows: list[list[str]] = []
        self.header_cells: list[str] = []
        self._stack: list[str] = []
        self._in_pairs = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._stack.append(tag)
        if tag == "table" and dict(attrs).get("id") == "pairs":
            self._in_pairs = True
        if self._in_pairs and tag == "tr":
            self._row = []
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            if self._row is not None:
                self._row.append("".join(self._cell))
            self._cell = None
        if tag == "tr" and self._row is not None:
            if self._row and self._in_pairs and not self.header_cells:
                self.header_cells = self._row
            elif self._row:
                self.pair_rows.append(self._row)
            self._row = None
        if tag == "table":
            self._in_pairs = False
        while self._stack and self._stack.pop() != tag:
            pass

    def handle_data(self, data: str) -> None:
        top = self._stack[-1] if self._stack else ""
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if top in ("h1", "h2", "h3", "h4"):
            self.headings.append(data.strip())
        elif top == "script":
            self.scripts.append(data)
        elif top == "text" and "svg" in self._stack:
            self.svg_titles.append(data.strip())

    @property
    def all_text(self) -> str:
        return " ".join(self.text)

    def urls(self) -> list[str]:
        return [v for _t, a in self.tags for k, v in a.items() if k in ("src", "href") and v]


@pytest.fixture(scope="module")
def embedder() -> Any:
    """MiniLM behind an embedding cache, shared by the module (its counters tell what was embedded)."""
    from equal.embed import CachedEmbedder, get_embedder

    return CachedEmbedder(get_embedder("minilm"))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """32 short documents (maths problems, two FAQs) and 24 target examples."""
    rows = [json.loads(line) for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines()]
    take = {"champ": 16, "python-faq": 8, "debian-faq": 8}
    picked = []
    for row in rows:
        if take.get(row["source"], 0) > 0 and len(row["text"]) < 700:
            take[row["source"]] -= 1
            picked.append(row)
    root = tmp_path_factory.mktemp("data")
    corpus, target = root / "corpus.jsonl", root / "target.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in picked))
    target.write_text("".join(line + "\n" for line in (EXAMPLES / "target.jsonl").read_text().splitlines()[:24]))
    return corpus, target


def _config(corpus: Path, target: Path, **kw: Any) -> ExtractConfig:
    base: dict[str, Any] = dict(corpus=str(corpus), target=str(target), extractor="rules", budget_docs=12,
                                clusters=4, clusters_per_round=2, docs_per_cluster=2, seed=3)
    base.update(kw)
    return ExtractConfig.from_flat(**base)


@pytest.fixture(scope="module")
def runs(data: tuple[Path, Path], embedder: Any,
         tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExtractSummary, ExtractSummary, dict[str, int]]:
    """A finished EQUAL run with its random baseline; the embedding counters of the baseline alone."""
    out = tmp_path_factory.mktemp("runs") / "run"
    cfg = _config(*data)
    main = run_extract(cfg, out, embedder=embedder)
    before = embedder.stats()
    base = run_baseline(cfg, out, "random", embedder=embedder)
    after = embedder.stats()
    return out, main, base, {k: after[k] - before[k] for k in ("hits", "misses")}


def test_report_of_a_real_run_has_every_section(runs: tuple[Path, ExtractSummary, ExtractSummary, Any]) -> None:
    out, main, base, _ = runs
    page = Page((out / "report.html").read_text(encoding="utf-8"))
    for heading in ("Runs", "OT distance to the target against the budget", "Question and answer lengths (kept pairs)",
                    "Per cluster", "Choices and the map", "Drops", "Cost", "All pairs, with provenance",
                    "Cost per round (requests and tokens paid; cache hits cost nothing)"):
        assert heading in page.headings, heading
    # one section per run: the run and its baseline (written into the parent's report by run_baseline)
    assert "equal (run)" in page.headings and "random (baseline-random)" in page.headings
    for title in ("OT distance of the kept pairs to the target", "Question length", "Answer length",
                  "Documents read per cluster × round (the bandit's choices)",
                  "Corpus map (PCA of the document embeddings)", "cluster centres (area ∝ size)", "target mean",
                  "kept pairs (at their source document)", "Pairs (or outputs) dropped per round, by reason"):
        assert title in page.svg_titles, title
    assert FIRST_PASS in page.all_text and "Did the bandit help?" in page.all_text
    # the per-cluster table: one row per cluster, every column
    for col in ("cluster", "size", "target gap", "times chosen", "mean reward", "pairs kept", "sample document"):
        assert col in page.all_text
    # each cluster's sample document: its id and the start of its text
    import pyarrow.parquet as pq

    docs = pq.read_table(out / "documents.parquet", columns=["id", "text", "cluster"]).to_pylist()
    for c in range(4):
        first = next(d for d in docs if d["cluster"] == c)
        assert f"{first['id']}: {' '.join(first['text'].split())[:60]}" in page.all_text, c
    # every kept pair of both runs is in the pair table, with its provenance
    assert page.header_cells[:3] == ["run", "status", "reason"]
    kept = [r for r in page.pair_rows if r[1] == "kept"]
    assert len(kept) == main.pairs + base.pairs
    qa = [json.loads(line) for line in (out / "qa.jsonl").read_text().splitlines()]
    assert {r[5] for r in kept if r[0] == "equal (run)"} == {p["doc_id"] for p in qa}
    assert all("extractor=rules" in r[8] for r in kept)
    # self-contained: one inline script, no external resource
    assert [t for t, _a in page.tags if t == "script"] == ["script"]
    assert not [u for u in page.urls() if "//" in u]
    assert sum(1 for t, _a in page.tags if t == "svg") >= 9  # OT, 2 histograms, 3 per run


def test_baseline_runs_random_at_the_same_budget_without_reembedding(
        runs: tuple[Path, ExtractSummary, ExtractSummary, dict[str, int]], data: tuple[Path, Path],
        embedder: Any) -> None:
    out, main, base, embedded = runs
    sub = out / "baseline-random"
    assert base.strategy == "random" and base.documents_read == main.documents_read == 12
    assert base.run == str(sub) and (sub / "qa.jsonl").exists() and (sub / "summary.json").exists()
    # the corpus and target were not embedded again: the baseline embedded only its kept pairs' texts
    assert embedded["hits"] + embedded["misses"] == base.pairs < 32
    for name in ("embeddings/documents.npy", "embeddings/target.npy", "documents.parquet", "clusters.parquet"):
        assert (sub / name).read_bytes() == (out / name).read_bytes(), name
    # its documents are the corpus in its seeded random order, not the bandit's choices
    rounds = [json.loads(line) for line in (sub / "rounds.jsonl").read_text().splitlines()]
    assert all(r["clusters"] == [] for r in rounds)
    # resumable: a second call is a no-op that embeds nothing new
    before = embedder.stats()["misses"]
    again = run_baseline(_config(*data), out, "random", embedder=embedder)
    assert again.resumed and again.pairs == base.pairs and embedder.stats()["misses"] == before
    with pytest.raises(Exception, match="the run's own strategy"):
        run_baseline(_config(*data), out, "equal", embedder=embedder)


def test_compare_draws_runs_side_by_side(runs: tuple[Path, ExtractSummary, ExtractSummary, Any],
                                         data: tuple[Path, Path], embedder: Any, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from equal.cli import main

    out, _main, _base, _ = runs
    other = tmp_path / "uniform"
    run_extract(_config(*data, strategy="uniform-clusters"), other, embedder=embedder)
    html_out = tmp_path / "cmp.html"
    monkeypatch.setattr(sys, "argv", ["equal", "report", str(out), "--compare", str(other), "--out", str(html_out)])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code in (0, None) and capsys.readouterr().out.strip() == str(html_out)
    page = Page(html_out.read_text(encoding="utf-8"))
    # the OT chart's legend names all three runs; the summary table has a column for each
    for label in ("equal (run)", "random (baseline-random)", "uniform-clusters (uniform)"):
        assert label in page.svg_titles and label in page.headings, label
    assert page.all_text.count("at the same budget") == 2  # the verdict compares the run with each other one
    assert {r[0] for r in page.pair_rows} == {"equal (run)", "random (baseline-random)", "uniform-clusters (uniform)"}


def test_pair_text_is_escaped(embedder: Any, tmp_path: Path, data: tuple[Path, Path]) -> None:
    corpus = tmp_path / "hostile.jsonl"
    docs = [{"id": f"<img src=x onerror=alert({i})>", "text": f"Q: What does {HOSTILE} do number {i}?\n"
             f"A: It runs code & shows \"{i}\" <b>bold</b> {HOSTILE}."} for i in range(3)]
    docs.append({"id": "copy-of-0", "text": docs[0]["text"]})  # its pair is dropped by the exact filter
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    out = tmp_path / "run"
    s = run_extract(_config(corpus, data[1], strategy="all", budget_docs=None, clusters=2), out, embedder=embedder)
    assert s.pairs == 3 and s.drops["exact"] == 1
    text = (out / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert [t for t, _a in page.tags if t == "script"] == ["script"]  # only the report's own
    assert not [t for t, _a in page.tags if t == "img"]
    assert [t for t, _a in page.tags if t == "b"] == ["b"]  # the verdict's, not the answers'
    assert HOSTILE in page.all_text and "<img src=x onerror=alert(0)>" in page.all_text
    assert 'It runs code & shows "1" <b>bold</b>' in page.all_text
    assert {r[5] for r in page.pair_rows} == {d["id"] for d in docs}
    dropped = [r for r in page.pair_rows if r[1] == "dropped"]
    assert [(r[2], r[5]) for r in dropped] == [("exact", "copy-of-0")] and HOSTILE in dropped[0][6]
    assert "alert('pwned')" not in "".join(page.scripts)


def test_old_and_partial_run_dirs_render_with_notes(runs: tuple[Path, ExtractSummary, ExtractSummary, Any],
                                                    tmp_path: Path) -> None:
    out = runs[0]
    # a run stopped before its first round: settings only
    early = tmp_path / "early"
    early.mkdir()
    shutil.copy(out / "run.toml", early / "run.toml")
    page = Page(render_report([early]))
    assert "no round is committed yet: there is no progress to draw" in page.all_text
    assert "No run has a committed round with an OT distance yet." in page.all_text
    assert "No kept pair yet." in page.all_text
    # an older equal's directory: bandit.json, rounds without drops or dropped pairs, a line that does not parse
    old = tmp_path / "old"
    shutil.copytree(out, old, ignore=shutil.ignore_patterns("baseline-*", "state.json", "summary.json",
                                                             "clusters.parquet"))
    (old / "bandit.json").write_text("{}")
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    legacy = [{k: v for k, v in r.items() if k in ("round", "clusters", "rewards", "pairs", "ot_distance")}
              for r in rows]
    (old / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in legacy) + "{not json}\n")
    (old / "ledger.json").write_text("[1, 2")
    page = Page(write_run_report(old).read_text(encoding="utf-8"))
    text = page.all_text
    for note in ("written by an older equal (bandit.json)", "rounds.jsonl: 1 line(s) could not be read",
                 "ledger.json could not be read", "no summary.json", "no clusters.parquet",
                 "records no drops per round", "dropped pairs are not listed"):
        assert note in text, note
    assert "could not be drawn" not in text  # every gap is a note, none an exception
    # a folder that is no run at all: a one-line DataError from write_run_report, notes from render_report
    from equal.errors import DataError

    with pytest.raises(DataError, match="not a run directory"):
        write_run_report(tmp_path / "missing")
    assert "is not a directory" in Page(render_report([tmp_path / "missing"])).all_text
    assert load_run(tmp_path / "missing").rounds == []


def test_baseline_option_is_checked_before_anything_runs(data: tuple[Path, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from equal.cli import main

    for strategy, message in (("equal", "is the run's own strategy"), ("nope", "must be one of")):
        monkeypatch.setattr(sys, "argv", ["equal", "extract", "--corpus", str(data[0]), "--target", str(data[1]),
                                          "--out", str(tmp_path / "r"), "--budget-docs", "4", "--baseline", strategy])
        with pytest.raises(SystemExit) as exc:
            main()
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_cluster_centres_match_a_direct_mean() -> None:
    import numpy as np

    from equal.report import _centres

    rng = np.random.default_rng(0)
    for _ in range(30):
        n, k = int(rng.integers(1, 40)), int(rng.integers(1, 8))
        X = rng.normal(size=(n, 5)).astype(np.float32)
        labels = rng.integers(0, k, size=n).astype(np.int64)
        want = np.array([X[labels == c].astype(np.float64).mean(axis=0) if (labels == c).any()
                         else np.full(5, np.nan) for c in range(k)])
        np.testing.assert_allclose(_centres(X, labels, k), want, rtol=1e-12, atol=1e-12)
