"""One writer per run directory (``equal.runlock``): real processes, a real SIGKILL, leftover temp files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from equal.config import ExtractConfig
from equal.errors import EqualError, RunLockedError
from equal.pipeline.extract import run_extract
from equal.runlock import LOCK_NAME, read_lock_holder, remove_stale_temps, run_lock

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ARGS = ["--extractor", "rules", "--budget-docs", "24", "--clusters", "3", "--clusters-per-round", "2",
        "--docs-per-cluster", "2", "--seed", "3", "--json"]
CLI = [sys.executable, "-m", "equal.cli", "extract"]
# 40 documents in 3 clusters is below faiss's 39 points per centroid; irrelevant to locking
pytestmark = pytest.mark.filterwarnings("ignore::equal.ConvergenceWarning")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Slices of the example corpus and target (embedding all of them costs minutes on 2 shared cores)."""
    folder = tmp_path_factory.mktemp("lockdata")
    corpus, target = folder / "corpus.jsonl", folder / "target.jsonl"
    corpus.write_text("\n".join((EXAMPLES / "corpus.jsonl").read_text().splitlines()[:40]) + "\n")
    target.write_text("\n".join((EXAMPLES / "target.jsonl").read_text().splitlines()[:30]) + "\n")
    return corpus, target


def _args(inputs: tuple[Path, Path]) -> list[str]:
    return ["--corpus", str(inputs[0]), "--target", str(inputs[1]), *ARGS]


def _config(inputs: tuple[Path, Path]) -> ExtractConfig:
    return ExtractConfig.from_flat(corpus=str(inputs[0]), target=str(inputs[1]), extractor="rules", budget_docs=24,
                                   clusters=3, clusters_per_round=2, docs_per_cluster=2, seed=3)


@pytest.fixture(scope="module")
def embedder() -> Any:
    from equal.embed import get_embedder

    return get_embedder("minilm")


@pytest.fixture(scope="module")
def reference(inputs: tuple[Path, Path], embedder: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted in-process run; it also fills the session's embedding cache for the subprocesses."""
    with pytest.MonkeyPatch.context() as mp:  # the autouse cache fixture is function-scoped; same folder
        mp.setenv("EQUAL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "equal-cache"))
        out = tmp_path_factory.mktemp("ref") / "run"
        run_extract(_config(inputs), out, embedder=embedder)
    return out


def _wait_for_holder(out: Path, pid: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = read_lock_holder(out)
        if holder is not None and holder.get("pid") == pid:
            return
        assert proc.poll() is None, "the first run ended before it took the lock"
        time.sleep(0.01)
    pytest.fail("the first run never took the lock")


def _hold_in_child(directory: Path) -> subprocess.Popen[str]:
    """A separate Python process that takes the lock, says so, and sleeps."""
    code = textwrap.dedent(f"""
        import sys, time
        from equal.runlock import run_lock
        with run_lock({str(directory)!r}, "holder test"):
            print("locked", flush=True)
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_second_lock_is_refused_naming_the_holder(tmp_path: Path) -> None:
    with run_lock(tmp_path / "new" / "dir", "equal extract") as lock:
        assert lock.path == tmp_path / "new" / "dir" / LOCK_NAME
        holder = json.loads(lock.path.read_text())
        assert holder["pid"] == os.getpid() and holder["command"] == "equal extract"
        assert holder["started"].endswith("Z")
        with pytest.raises(RunLockedError) as exc, run_lock(tmp_path / "new" / "dir", "equal train"):
            pass
        msg = str(exc.value)
        assert f"pid {os.getpid()}" in msg and "'equal extract'" in msg and "wait for it or stop it" in msg
        assert isinstance(exc.value, EqualError) and exc.value.holder == holder
    with run_lock(tmp_path / "new" / "dir", "again"):  # released at the end of the block
        pass


def test_lock_of_a_process_killed_with_sigkill_is_taken_over(tmp_path: Path) -> None:
    proc = _hold_in_child(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=f"pid {proc.pid}, 'holder test'"), run_lock(tmp_path, "x"):
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert read_lock_holder(tmp_path)["pid"] == proc.pid  # the dead holder's note is still there ...
    with run_lock(tmp_path, "next") as lock:  # ... but the kernel dropped its lock
        assert read_lock_holder(tmp_path) == lock.holder()


def test_remove_stale_temps_removes_only_ours(tmp_path: Path) -> None:
    from equal.data.io import atomic_write_json

    atomic_write_json(tmp_path / "state.json", {"a": 1})
    ours = [tmp_path / ".state.json.0123456789ab.tmp", tmp_path / "embeddings" / ".documents.npy.a1b2c3d4e5f6.tmp"]
    staging = tmp_path / ".tmp-adapter-k3j2h1"
    kept = [tmp_path / "notes.tmp", tmp_path / "llm_cache.sqlite-wal", tmp_path / ".state.json.xyz.tmp",
            tmp_path / "state.json"]
    for p in [*ours, *kept[:-1]]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    (staging / "sub").mkdir(parents=True)
    (staging / "sub" / "w.bin").write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == 3
    assert not any(p.exists() for p in [*ours, staging])
    assert all(p.exists() for p in kept)
    assert remove_stale_temps(tmp_path / "missing") == 0


def test_two_concurrent_extracts_one_refuses_at_once(inputs: tuple[Path, Path], reference: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = subprocess.Popen([*CLI, *_args(inputs), "--out", str(out)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        _wait_for_holder(out, first.pid, first)
        # Freeze the holder: a stopped process keeps its lock, so the race below is decided, not timed.
        first.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        second = subprocess.run([*CLI, *_args(inputs), "--out", str(out)], capture_output=True,
                                text=True, timeout=120)
        refused_in = time.monotonic() - t0
    finally:
        first.send_signal(signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=300)
    assert second.returncode == 1, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in second.stderr and second.stdout == ""
    assert lines[0] == (f"error: {out} is in use by another run (pid {first.pid}, 'equal extract', "
                        f"started {read_lock_holder(out)['started']}); wait for it or stop it")
    assert refused_in < 30  # at once: no model load, no embedding (typically ~2 s of imports)
    assert first.returncode == 0, stderr.decode()
    summary = json.loads(stdout)
    ref = json.loads((reference / "summary.json").read_text())
    for key in ("documents_read", "pairs", "rounds", "ot_distance"):
        assert summary[key] == ref[key], key
    assert (out / "qa.jsonl").read_bytes() == (reference / "qa.jsonl").read_bytes()
    assert (out / "rounds.jsonl").read_text().count("\n") == ref["rounds"]


def test_extract_takes_over_a_killed_holder_and_removes_its_temp_files(
        inputs: tuple[Path, Path], reference: Path, embedder: Any, tmp_path: Path) -> None:
    out = tmp_path / "victim"
    run_extract(_config(inputs), out, embedder=embedder, max_rounds=2)  # an unfinished run ...
    holder = _hold_in_child(out)  # ... whose next writer is killed while it holds the lock
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    # what a writer killed between writing its temp file and the rename leaves behind
    leftovers = [out / ".state.json.00aa11bb22cc.tmp", out / "embeddings" / ".documents.npy.ffeeddccbbaa.tmp"]
    for p in leftovers:
        p.write_bytes(b"half")
    s = run_extract(_config(inputs), out, embedder=embedder)
    assert s.resumed and not any(p.exists() for p in leftovers)
    assert (out / "qa.jsonl").read_bytes() == (reference / "qa.jsonl").read_bytes()
    assert s.pairs == json.loads((reference / "summary.json").read_text())["pairs"]


def test_extract_force_deletes_nothing_under_another_writers_lock(inputs: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = _config(inputs)
    out.mkdir()
    (out / "qa.jsonl").write_text("kept\n")
    (out / "run.toml").write_text("not toml [")
    with run_lock(out, "equal extract"), pytest.raises(RunLockedError):
        run_extract(cfg, out, force=True)
    assert (out / "qa.jsonl").read_text() == "kept\n"  # --force deleted nothing under someone else's lock


def _word_level_model(folder: Path) -> Path:
    """A real (tiny) fast tokenizer with a chat template: ``train`` reads it before it takes the lock."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder.mkdir()
    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>", "user", "assistant", ":", "2+2?", "4"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <eos> {% endfor %}"
                "{% if add_generation_prompt %}assistant : {% endif %}")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<eos>", "unk_token": "<unk>",
        "chat_template": template}))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


def test_train_refuses_a_concurrent_writer(tmp_path: Path) -> None:
    from equal.train import TrainConfig, train

    base = _word_level_model(tmp_path / "model")
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "2+2?"},
                                             {"role": "assistant", "content": "4"}]}) + "\n")
    ckpt = tmp_path / "ckpt"
    with run_lock(ckpt, "equal train") as lock, pytest.raises(RunLockedError, match=f"pid {lock.pid}"):
        train(data, ckpt, TrainConfig(model=str(base), max_steps=1))
    assert [p.name for p in ckpt.iterdir()] == [LOCK_NAME]  # nothing was written under the other's lock
    # once free, a folder holding only the lock file counts as empty (not "holds no train.json")
    from equal.train._trainer import _prepare_out, build_dataset, load_tokenizer

    dataset = build_dataset(data, load_tokenizer(base))
    assert _prepare_out(ckpt, TrainConfig(model=str(base), max_steps=1), dataset, force=False) is None
