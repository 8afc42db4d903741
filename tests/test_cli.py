"""The command line, invoked in-process through the console-script entry point."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from equal.cli import main


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["equal", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    rows = [{"id": f"m{i}", "text": f"What is {i} plus {i + 1}? The sum of the two numbers is {2 * i + 1}."}
            for i in range(12)]
    rows += [{"id": f"p{i}", "text": f"How do I open file number {i} in Python? Use open() with a with block."}
             for i in range(12)]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_help_reads_well(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, "--help")
    assert code == 0
    for cmd in ("embed", "cluster", "ot", "extract", "export"):
        assert cmd in out
    for cmd in ("embed", "cluster", "ot", "extract"):
        code, out, _ = run_cli(monkeypatch, capsys, cmd, "--help")
        assert code == 0 and "Example" in out


def test_embed_cluster_ot_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                               corpus: Path, tmp_path: Path) -> None:
    emb = tmp_path / "emb.npy"
    code, out, err = run_cli(monkeypatch, capsys, "embed", corpus, "--out", emb, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["n"] == 24 and info["dim"] == 384
    X = np.load(emb)
    assert X.dtype == np.float32 and X.shape == (24, 384)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    # second run: served from the embedding cache, identical vectors
    code, out, _ = run_cli(monkeypatch, capsys, "embed", corpus, "--out", tmp_path / "emb2.npy", "--json")
    assert json.loads(out)["cache_misses"] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "emb2.npy"), X)

    clusters = tmp_path / "clusters.parquet"
    code, out, err = run_cli(monkeypatch, capsys, "cluster", emb, "--k", 2, "--out", clusters, "--seed", 3,
                             "--json", "--neighbors", 0.5)
    assert code == 0, err
    info = json.loads(out)
    table = pq.read_table(clusters).to_pydict()
    assert table["id"] == [f"m{i}" for i in range(12)] + [f"p{i}" for i in range(12)]
    assert sorted(set(table["cluster"])) == [0, 1] and sum(info["sizes"]) == 24
    # the two topics separate
    assert len(set(table["cluster"][:12])) == 1 and len(set(table["cluster"][12:])) == 1
    assert all(c in n for c, n in enumerate(info["neighbors"]))

    np.save(tmp_path / "a.npy", X[:12])
    np.save(tmp_path / "b.npy", X[12:])
    code, out, err = run_cli(monkeypatch, capsys, "ot", tmp_path / "a.npy", tmp_path / "b.npy", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert set(res) >= {"distance", "method"} and res["method"] == "ipot"
    import ot

    M = np.sqrt(np.clip(2 - 2 * X[:12].astype(np.float64) @ X[12:].T.astype(np.float64), 0, None))
    exact = ot.emd2(np.full(12, 1 / 12), np.full(12, 1 / 12), M)
    assert res["distance"] == pytest.approx(exact, rel=1e-3)


def test_bad_input_is_one_line_with_file_and_line(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n{"body": "no text"}\n')
    code, out, err = run_cli(monkeypatch, capsys, "embed", bad, "--out", tmp_path / "x.npy")
    assert code == 1 and out == ""
    assert "bad.jsonl:2" in err and "Traceback" not in err
    code, out, err = run_cli(monkeypatch, capsys, "embed", bad, "--out", tmp_path / "x.npy", "--skip-invalid",
                             "--json")
    assert code == 0, err
    assert json.loads(out)["skipped"] == 2


def test_usage_errors_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                             tmp_path: Path) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "ot", tmp_path / "a.npy", tmp_path / "b.npy", "--method", "x")
    assert code == 2 and "--method" in err
    code, _, err = run_cli(monkeypatch, capsys, "ot", tmp_path / "missing.npy", tmp_path / "b.npy")
    assert code == 1 and "missing.npy" in err


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    rows = [json.loads(line) for line in (EXAMPLES / "pool.jsonl").read_text().splitlines()[:60]]
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_diversity_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], pool: Path,
                        tmp_path: Path) -> None:
    from equal.diversity import novelsum

    X = np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    code, out, err = run_cli(monkeypatch, capsys, "diversity", tmp_path / "x.npy", pool, "--neighbors", 5, "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["dataset"] for r in rows] == [str(tmp_path / "x.npy"), str(pool)]
    assert {"novelsum", "vendi_score", "mean_cosine_distance"} <= set(rows[0])
    assert rows[0]["novelsum"] == pytest.approx(novelsum(X, n_neighbors=5), rel=1e-6)


@pytest.mark.parametrize("method", ["novelselect", "kmq", "kmq-iterative", "km-closest", "km-random", "kcenter",
                                    "random", "deita"])
def test_select_writes_records_and_indices(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                           pool: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / "picked.jsonl"
    code, stdout, err = run_cli(monkeypatch, capsys, "select", pool, "--method", method, "--k", 10, "--out", out,
                                "--quality-field", "quality", "--seed", 1, "--json")
    assert code == 0, err
    idx = json.loads(Path(str(out) + ".indices.json").read_text())
    assert len(idx) == len(set(idx)) == 10 and all(0 <= i < 60 for i in idx)
    source = pool.read_text().splitlines()
    picked = out.read_text().splitlines()
    assert [json.loads(x) for x in picked] == [json.loads(source[i]) for i in idx]
    assert json.loads(stdout)["method"] == method


def test_select_on_npy_writes_indices_only(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    from equal.select import novelselect

    X = np.random.default_rng(1).normal(size=(50, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    out = tmp_path / "sel"
    code, _, err = run_cli(monkeypatch, capsys, "select", tmp_path / "x.npy", "--method", "novelselect", "--k", 7,
                           "--out", out, "--neighbors", 4)
    assert code == 0, err
    assert not out.exists()
    idx = json.loads(Path(str(out) + ".indices.json").read_text())
    assert idx == novelselect(X, 7, n_neighbors=4, seed=42).indices.tolist()
