"""OS errors, out-of-range options and output suffixes: one line on stderr, the right exit code, no traceback.

The disk-full and read-only cases use real file systems (a small tmpfs; a tmpfs mounted read-only) and need
root; they are skipped where ``mount`` is refused.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from equal.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["equal", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    _, err = capsys.readouterr()
    return int(exc.value.code or 0), err


def one_line(err: str) -> str:
    """The single line an error must be (a ConvergenceWarning goes through pytest's warning capture)."""
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: "), err
    return lines[0]


def _mount(target: Path, options: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (a real full disk is a small file system)."""
    where = tmp_path / "small"
    _mount(where, "size=64k")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def readonly(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "ro"
    _mount(where, "size=64k,ro")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def emb(tmp_path: Path) -> Path:
    """80 unit vectors in 8 dimensions (2 well separated groups), as ``equal embed`` writes them."""
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(40, 8)) + 5, rng.normal(size=(40, 8)) - 5]).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    path = tmp_path / "e.npy"
    np.save(path, X)
    return path


def _fill(folder: Path, leave: int) -> None:
    """Fill ``folder``'s file system to ``leave`` bytes short of full."""
    import os

    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    (folder / "ballast").write_bytes(b"\0" * max(0, free - leave))


def test_disk_full_is_one_line_naming_the_file(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                               emb: Path, tmpfs: Path) -> None:
    _fill(tmpfs, 0)
    code, err = run_cli(monkeypatch, capsys, "cluster", emb, "--k", 2, "--out", tmpfs / "c.parquet")
    line = one_line(err)
    assert code == 1 and f"{tmpfs}/c.parquet" in line and "(while running 'equal cluster')" in line, line
    assert "No space left on device" in line or "disk full" in line, line
    assert not (tmpfs / "c.parquet").exists()
    assert [p.name for p in tmpfs.iterdir()] == ["ballast"]  # no temporary file left behind


def test_disk_full_npy_short_write(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                   tmp_path: Path, tmpfs: Path) -> None:
    # a large array is written by numpy in one go: a short write with no errno, named here by equal
    from equal.data.io import save_npy

    _fill(tmpfs, 8192)
    with pytest.raises(OSError) as exc:
        save_npy(tmpfs / "big.npy", np.zeros(100_000, dtype=np.float32))
    assert exc.value.filename == str(tmpfs / "big.npy")


def test_embedding_cache_on_a_full_disk(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path, tmpfs: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": str(i), "text": f"text {i} " * 40}) + "\n" for i in range(30)))
    _fill(tmpfs, 0)
    monkeypatch.setenv("EQUAL_CACHE_DIR", str(tmpfs / "cache"))
    code, err = run_cli(monkeypatch, capsys, "embed", corpus, "--out", tmp_path / "e.npy")
    line = one_line(err)
    assert code == 1 and "embedding cache" in line and str(tmpfs / "cache") in line, line


def test_read_only_out(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], emb: Path,
                       readonly: Path, tmp_path: Path) -> None:
    code, err = run_cli(monkeypatch, capsys, "cluster", emb, "--k", 2, "--out", readonly / "c.parquet")
    line = one_line(err)
    assert code == 1 and line == (f"error: {readonly}/c.parquet: Read-only file system "
                                  "(while running 'equal cluster')")
    code, err = run_cli(monkeypatch, capsys, "extract", "--corpus", EXAMPLES / "corpus.jsonl", "--target",
                        EXAMPLES / "target.jsonl", "--extractor", "rules", "--budget-docs", 4,
                        "--out", readonly / "run")
    assert code == 1 and one_line(err) == (f"error: {readonly}/run: Read-only file system "
                                           "(while running 'equal extract')")


def test_out_is_a_file_or_a_folder(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                   emb: Path, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, err = run_cli(monkeypatch, capsys, "cluster", emb, "--k", 2, "--out", afile / "c.parquet")
    assert code == 1 and one_line(err) == (f"error: {afile}: is a file, but a folder is needed here "
                                           "(while running 'equal cluster')")
    folder = tmp_path / "d.parquet"
    folder.mkdir()
    code, err = run_cli(monkeypatch, capsys, "cluster", emb, "--k", 2, "--out", folder)
    assert code == 1 and one_line(err) == (f"error: {folder}: is a folder, but a file is needed here "
                                           "(while running 'equal cluster')")
    code, err = run_cli(monkeypatch, capsys, "extract", "--corpus", EXAMPLES / "corpus.jsonl", "--target",
                        EXAMPLES / "target.jsonl", "--extractor", "rules", "--budget-docs", 4, "--out", afile)
    assert code == 2 and "is a file; the run directory must be a folder" in one_line(err)


@pytest.mark.parametrize("args", [
    ["embed", "IN", "--out", "x.npy", "--batch-size", "0"],
    ["cluster", "EMB", "--k", "0", "--out", "c.parquet"],
    ["cluster", "EMB", "--k", "2", "--n-iter", "0", "--out", "c.parquet"],
    ["cluster", "EMB", "--k", "2", "--seed", "-1", "--out", "c.parquet"],
    ["diversity", "EMB", "--neighbors", "0"],
    ["diversity", "EMB", "--density-power", "-1"],
    ["select", "EMB", "--method", "kcenter", "--k", "0", "--out", "s.jsonl"],
    ["evaluate", "--predictions", "p.jsonl", "--task", "gsm8k", "--metric", "exact", "--temperature", "-1"],
    ["evaluate", "--predictions", "p.jsonl", "--task", "gsm8k", "--metric", "exact", "--samples", "0"],
    ["train", "IN", "--out", "ck", "--max-steps", "0"],
    ["train", "IN", "--out", "ck", "--lr", "-1"],
    ["extract", "--corpus", "IN", "--target", "IN", "--out", "r", "--budget-docs", "-1"],
    ["extract", "--corpus", "IN", "--target", "IN", "--out", "r", "--budget-docs", "4", "--temperature", "-1"],
])
def test_out_of_range_options_are_usage_errors(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str], emb: Path, tmp_path: Path,
                                               args: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    subst = {"IN": str(EXAMPLES / "target.jsonl"), "EMB": str(emb)}
    code, err = run_cli(monkeypatch, capsys, *[subst.get(a, a) for a in args])
    line = one_line(err)
    option = next(a for a in reversed(args) if a.startswith("--"))
    assert code == 2, line
    assert option in line or option.lstrip("-").replace("-", "_") in line, line
    assert not (tmp_path / "r").exists() and not (tmp_path / "ck").exists()


def test_config_error_of_a_run_directory_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.toml").write_text("[bandit]\nalpha = 0.001\n")
    (run / "bandit.json").write_text("{}")
    code, err = run_cli(monkeypatch, capsys, "extract", "--corpus", EXAMPLES / "corpus.jsonl", "--target",
                        EXAMPLES / "target.jsonl", "--extractor", "rules", "--budget-docs", 4, "--out", run)
    assert code == 2 and "older equal (bandit.json)" in one_line(err) and str(run) in err


def test_output_suffixes_must_match_the_format(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str], emb: Path,
                                               tmp_path: Path) -> None:
    code, err = run_cli(monkeypatch, capsys, "cluster", emb, "--k", 2, "--out", tmp_path / "c.txt")
    assert code == 2 and ".parquet" in one_line(err) and not (tmp_path / "c.txt").exists()
    code, err = run_cli(monkeypatch, capsys, "embed", EXAMPLES / "target.jsonl", "--out", tmp_path / "x.txt")
    assert code == 2 and ".npy" in one_line(err) and not (tmp_path / "x.txt").exists()
    run = tmp_path / "run"
    run.mkdir()
    (run / "qa.jsonl").write_text("")
    code, err = run_cli(monkeypatch, capsys, "export", run, "--format", "parquet", "--out", tmp_path / "x.jsonl")
    assert code == 2 and ".parquet" in one_line(err)
    assert not (tmp_path / "x.jsonl").exists() and not (tmp_path / "x.parquet").exists()
    code, err = run_cli(monkeypatch, capsys, "export", run, "--format", "sharegpt", "--out", tmp_path / "x.txt")
    assert code == 2 and ".jsonl" in one_line(err)
    code, err = run_cli(monkeypatch, capsys, "select", EXAMPLES / "pool.jsonl", "--method", "kcenter", "--k", 2,
                        "--out", tmp_path / "s.txt")
    assert code == 2 and ".jsonl" in one_line(err)
    # the named path, exactly, in the format the suffix says
    code, err = run_cli(monkeypatch, capsys, "export", run, "--format", "parquet", "--out", tmp_path / "x.parquet")
    assert code == 0 and (tmp_path / "x.parquet").read_bytes()[:4] == b"PAR1"


def test_embed_of_an_empty_file_is_a_data_error(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, err = run_cli(monkeypatch, capsys, "embed", empty, "--out", tmp_path / "e.npy")
    assert code == 1 and one_line(err) == f"error: {empty}: no texts to embed: the input is empty"
    assert not (tmp_path / "e.npy").exists()


def test_verbose_shows_the_traceback(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                     emb: Path, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, err = run_cli(monkeypatch, capsys, "-v", "cluster", emb, "--k", 2, "--out", afile / "c.parquet")
    assert code == 1 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: ")


def test_ctrl_c_in_extract_says_how_to_resume(tmp_path: Path) -> None:
    import signal
    import time

    from equal.runlock import read_lock_holder, run_lock

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "equal.cli", "extract", "--corpus", str(EXAMPLES / "corpus.jsonl"),
                             "--target", str(EXAMPLES / "target.jsonl"), "--extractor", "rules", "--budget-docs", "900",
                             "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while (read_lock_holder(out) or {}).get("pid") != proc.pid and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)  # inside run_extract: setup has just begun
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, (proc.returncode, err)
    assert err.strip().splitlines()[-1] == ("Aborted. Rerun the same command to resume; "
                                           "what was committed so far is kept.")
    with run_lock(out, "test"):  # the interrupted run let go of its directory
        pass
