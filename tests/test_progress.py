"""Progress that tells the truth: phase labels, per-batch embedding progress, completions per round, log lines
without a terminal, and Ctrl-C (a real SIGINT to a real `equal extract`) that keeps every completion received."""

from __future__ import annotations

import io
import json
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from equal.config import resolve_config
from equal.pipeline.extract import run_extract
from equal.pipeline.progress import ExtractProgress

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def embedder() -> Any:
    from equal.embed import get_embedder

    return get_embedder("minilm")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Short documents (cheap to embed and to extract from) and a small target."""
    root = tmp_path_factory.mktemp("progress")
    rows = [json.loads(line) for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines()][:24]
    for r in rows:
        r["text"] = r["text"][:300]
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    target = (EXAMPLES / "target.jsonl").read_text().splitlines()[:8]
    (root / "target.jsonl").write_text("\n".join(target) + "\n")
    return root / "corpus.jsonl", root / "target.jsonl"


def _settings(corpus: Path, target: Path, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(corpus=str(corpus), target=str(target), budget_docs=8, clusters=2,
                                clusters_per_round=2, docs_per_cluster=2, seed=0, extractor="rules")
    base.update(kw)
    return base


def test_embedding_progress_advances_per_batch(embedder: Any, tmp_path: Path) -> None:
    from equal.embed import CachedEmbedder

    texts = [f"text number {i} about topic {i % 3}" for i in range(10)]
    calls: list[tuple[int, int]] = []
    cached = CachedEmbedder(embedder, tmp_path / "cache")
    X = cached.encode(texts, batch_size=4, show_progress=lambda d, t: calls.append((d, t)))
    assert calls == [(4, 10), (8, 10), (10, 10)]  # every backend batch, not only every stored chunk
    calls.clear()
    Y = cached.encode([*texts, "one new text"], batch_size=4, show_progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 1)]  # only the missing texts are counted
    assert (Y[:10] == X).all()


def test_bars_follow_the_phases_and_lines_without_a_terminal(small: tuple[Path, Path], embedder: Any,
                                                             tmp_path: Path) -> None:
    from rich.console import Console

    cfg = resolve_config(None, _settings(*small), [])
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=150, color_system=None)
    seen: list[str] = []
    with ExtractProgress(console=console) as bar:
        assert bar.bars and not bar.lines

        def status(msg: str) -> None:
            seen.append(msg)
            bar.status(msg)

        def round_start(start: Any) -> None:
            seen.append(f"start {start.round + 1}/{start.rounds} {start.documents_read}/{start.budget_docs}")
            bar.round_start(start)

        embeds: list[tuple[int, int]] = []
        run_extract(cfg, tmp_path / "bars", embedder=embedder, on_status=status, on_round=bar.round,
                    on_round_start=round_start, on_embed=lambda d, t: (embeds.append((d, t)), bar.embed(d, t)))
    assert seen == ["reading corpus", "embedding 24 documents", "embedding 8 target examples",
                    "clustering into 2 clusters", "start 1/2 0/8", "start 2/2 4/8",
                    "writing the summary and the report"]
    assert embeds and embeds[-1] == (24, 24)
    drawn = screen.getvalue()
    for label in ("embedding 24 documents", "round 1/2", "round 2/2", "8/8", "writing the summary"):
        assert label in drawn

    # no terminal: one line per phase and per round, no bar
    cfg2 = resolve_config(None, _settings(*small, seed=1), [])
    log = io.StringIO()
    with ExtractProgress(console=Console(file=io.StringIO()), stream=log) as lines:
        assert lines.lines and not lines.bars
        run_extract(cfg2, tmp_path / "lines", embedder=embedder, on_status=lines.status, on_round=lines.round,
                    on_round_start=lines.round_start, on_embed=lines.embed)
    got = log.getvalue().splitlines()
    assert got[:4] == ["equal extract: reading corpus", "equal extract: embedding 24 documents",
                       "equal extract: embedding 8 target examples", "equal extract: clustering into 2 clusters"]
    assert got[4].startswith("equal extract: round 1/2: 4 of 8 documents read · ")
    assert got[5].startswith("equal extract: round 2/2: 8 of 8 documents read · ")
    assert got[6:] == ["equal extract: writing the summary and the report"]


def _cache_rows(path: Path) -> int:
    """Answers stored in a run's request cache, leaving out the preflight (a ``max_tokens=1`` request)."""
    if not path.exists():
        return 0
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute("SELECT request FROM completions WHERE status = 'ok'").fetchall()
        return sum(json.loads(r[0])["params"]["max_tokens"] != 1 for r in rows)
    except sqlite3.OperationalError:  # the table is not created yet
        return 0
    finally:
        con.close()


def test_sigint_mid_round_keeps_every_completion_and_resume_pays_nothing_twice(
        small: tuple[Path, Path], embedder: Any, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    corpus, target = small
    out = tmp_path / "run"
    settings = _settings(corpus, target, extractor="llm", budget_docs=4, clusters=1, clusters_per_round=1,
                         docs_per_cluster=4, max_tokens=16)
    args = ["extract", "--out", str(out)] + [
        a for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    proc = subprocess.Popen([sys.executable, "-m", "equal.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    cache = out / "llm_cache.sqlite"
    deadline = time.monotonic() + 240
    # two of the round's four answers are in (the preflight is never cached)
    while _cache_rows(cache) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "the run never got two completions"
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, (proc.returncode, err)
    assert stdout == ""
    assert f"Resume with:\n  {shlex.join(['equal', *args])}\n" in err
    assert "equal extract: reading corpus" in err and "equal extract: interrupted during round 1/1: " in err
    kept = _cache_rows(cache)
    assert 2 <= kept < 4  # the completions received before the signal; the round is not committed
    assert not (out / "qa.jsonl").exists() or (out / "qa.jsonl").read_text() == ""

    log = io.StringIO()
    from rich.console import Console

    with ExtractProgress(console=Console(file=io.StringIO()), stream=log) as p:
        s = run_extract(resolve_config(None, settings, []), out, embedder=embedder, on_status=p.status,
                        on_round=p.round, on_round_start=p.round_start, on_llm=p.llm)
    ledger = json.loads((out / "ledger.json").read_text())
    assert s.resumed and s.rounds == 1 and s.documents_read == 4
    assert ledger["requests"] == 4 and ledger["cached"] == kept  # what arrived before Ctrl-C: not paid again
    assert ledger["sent"] == 4 - kept
    assert _cache_rows(cache) == kept + ledger["sent"] == 4  # every request answered exactly once in both runs
    round_line = next(line for line in log.getvalue().splitlines() if line.startswith("equal extract: round 1/1"))
    assert "completions 4/4" in round_line and "tok/s" in round_line
