"""Small defects a new user met (issue 15, part 6): version, help labels, small diversity sets, document selection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from equal.pipeline.jobs import diversity_files, select_file

ROOT = Path(__file__).resolve().parents[1]


def _equal(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "equal.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    res = _equal("--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"equal {version('equal')}"


@pytest.mark.parametrize("command", ["extract", "train", "diversity"])
def test_flags_are_shown_without_a_type_label(command: str) -> None:
    res = _equal(command, "--help")
    assert res.returncode == 0
    assert "--json" in res.stdout and "--help" in res.stdout
    assert "<bool>" not in res.stdout
    assert "<int>" in res.stdout or "<path>" in res.stdout  # options that take a value keep their label


def test_diversity_lowers_k_for_a_small_set_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "small.npy", rng.normal(size=(5, 8)).astype(np.float32))
    np.save(tmp_path / "big.npy", rng.normal(size=(40, 8)).astype(np.float32))
    with caplog.at_level("WARNING"):
        rows = diversity_files([tmp_path / "small.npy", tmp_path / "big.npy"], n_neighbors=10)
    assert [r["n_neighbors"] for r in rows] == [4, 10]
    assert "lowered from 10 to 4" in caplog.text
    # the lowered set's score is NovelSum with k = 4, computed directly
    direct = diversity_files([tmp_path / "small.npy"], n_neighbors=4)[0]
    assert rows[0]["novelsum"] == pytest.approx(direct["novelsum"], rel=1e-12)


def test_diversity_of_a_single_distinct_row_names_the_file(tmp_path: Path) -> None:
    from equal.errors import DataError

    np.save(tmp_path / "same.npy", np.ones((3, 8), dtype=np.float32))
    with pytest.raises(DataError, match=r"same\.npy.*2 distinct rows"):
        diversity_files([tmp_path / "same.npy"])


def test_select_on_a_document_corpus_writes_the_documents(tmp_path: Path) -> None:
    corpus = tmp_path / "docs.jsonl"
    docs = [{"id": f"d{i}", "body": f"document number {i} about {'cats' if i % 2 else 'ships'}"} for i in range(12)]
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    out = tmp_path / "picked.jsonl"
    res = select_file(corpus, out, method="kcenter", k=4, field="body")
    assert res["output"] == str(out)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    indices = json.loads(Path(res["indices"]).read_text(encoding="utf-8"))
    assert rows == [docs[i] for i in indices]  # the input's own field names and texts, in selection order
    pq_out = tmp_path / "picked.parquet"
    select_file(corpus, pq_out, method="kcenter", k=4, field="body")
    import pyarrow.parquet as pq

    assert pq.read_table(pq_out).to_pylist() == rows
