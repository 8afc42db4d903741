"""``kill -9``, two writers and a full disk on ``equal extract``: the small version of ``bench_reliability.py``.

Real ``python -m equal.cli extract`` subprocesses on a 124-document slice of the example corpus. One run is
killed with SIGKILL three times, at seeded moments aimed at the setup, the rounds and a commit (a round's
rows are written, ``state.json`` not yet renamed), resumed after each kill, and must end byte-identical to an
uninterrupted run. The uninterrupted run is itself the two-writer case: two ``equal extract`` started at once
on one ``--out``; one must refuse at once with one line naming the other's pid, and the other's dataset is
the reference the killed run is compared with (so a dataset the rival had spoiled would fail that test).
The LLM extractor runs against the real llama.cpp server (``test_llm_server.LlamaServer``) behind
:class:`equal.testing.FaultProxy`: killed mid-round and resumed, no answer stored before the kill is paid
for again, and the result equals an uninterrupted run given the same answers. Last, the embedding cache on a
full tmpfs raises an :class:`~equal.embed.EmbeddingError` naming the cause (root only).

The harness (subprocess with time-stamped stderr, kill plans, comparison, paid-twice accounting) is the
benchmark's, imported from ``benchmarks/bench_reliability.py``.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEED = 7


def _load_bench() -> ModuleType:
    path = ROOT / "benchmarks" / "bench_reliability.py"
    spec = importlib.util.spec_from_file_location("bench_reliability", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(mod)
    return mod


bench = _load_bench()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    # the session's embedding cache (tests/conftest.py points EQUAL_CACHE_DIR there for in-process tests)
    return bench.base_env(tmp_path_factory.getbasetemp() / "equal-cache")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every 8th row of the example corpus: FAQ, tutorial, man-page and math documents alike."""
    rows = (ROOT / "examples" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[::8]
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def rules_job(corpus: Path) -> Any:
    return bench.rules_job("rules", corpus, ROOT / "examples" / "target.jsonl", budget=36, clusters=6,
                           per_round=3, per_cluster=2)


@pytest.fixture(scope="module")
def reference(rules_job: Any, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """The uninterrupted run, made by two writers started at once on one ``--out``."""
    out = tmp_path_factory.mktemp("two-writers") / "run"
    return out, bench.two_writers(rules_job, out, env)


def test_second_writer_refuses_at_once_naming_the_first(reference: tuple[Path, Any]) -> None:
    out, res = reference
    assert sorted(res.exit_codes) == [0, 1], res.message
    assert res.ok, res.message  # one line, "error: ...", naming the winner's pid
    assert "in use by another run" in res.message
    # it refused before the winner had even finished its setup
    assert res.times is not None and res.refused_after_s < res.times["rounds"]
    state = json.loads((out / "state.json").read_text(encoding="utf-8"))
    qa = (out / "qa.jsonl").read_text(encoding="utf-8").splitlines()
    rounds = [json.loads(x) for x in (out / "rounds.jsonl").read_text(encoding="utf-8").splitlines()]
    assert state["finished"] and state["documents_read"] == 36 and len(qa) == state["pairs"] > 0
    assert [r["round"] for r in rounds] == list(range(state["round"]))  # no round written twice
    assert len({json.dumps(json.loads(x)["messages"]) for x in qa}) == len(qa)
    assert bench.temp_files(out) == []


def test_killed_three_times_then_resumed_is_identical(reference: tuple[Path, Any], rules_job: Any,
                                                      env: dict[str, str], tmp_path: Path) -> None:
    ref, res = reference
    assert res.times is not None
    rng = random.Random(SEED)
    out = tmp_path / "run"
    ref_qa = (ref / "qa.jsonl").read_bytes()
    hit = []
    # The mid-round kill comes within 50 ms of the resume's first round (its rounds, every embedding cached,
    # take tens of ms each; the reference's timing is that of a cold cache), the commit kill the moment the
    # next resume's first round is written.
    plans = [bench.plan_kill(rng, "setup", res.times),
             bench.KillPlan("mid-round", "rounds", rng.uniform(0, 0.05)),
             bench.KillPlan("commit", "round", 0.0, nth=1)]
    for plan in plans:
        kill = bench.run_and_kill(rules_job, out, env, plan)
        aim = plan.aim
        assert kill.killed, f"{aim}: the run ended before the kill"
        hit.append(kill.phase)
        state = bench._state(out)
        if state is not None:  # what is committed is a prefix of the uninterrupted run's dataset
            assert (out / "qa.jsonl").read_bytes()[: state["qa_bytes"]] == ref_qa[: state["qa_bytes"]]
    assert hit[0] == "setup" and hit[1] in ("mid-round", "commit") and hit[2] in ("mid-round", "commit"), hit
    bench.resume(rules_job, out, env)
    c = bench.compare(out, ref)
    assert (c.lost, c.duplicated, c.temps) == (0, 0, ())
    assert c.qa_bytes_identical and c.rounds_identical and c.state_identical, (hit, c)


# ------------------------------------------------------------------------------------------- the LLM path


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, str]]:
    """(FaultProxy in front of a real llama.cpp server, its body recorder, the API key)."""
    llama = pytest.importorskip("test_llm_server", reason="needs the llama.cpp server test fixture")
    from equal.testing import FaultProxy

    server = llama.LlamaServer(llama._free_port(), tmp_path_factory.mktemp("llama-kill"))
    server.start()
    recorder = bench.BodyRecorder()
    try:
        with FaultProxy(server.url, faults=recorder) as proxy:
            yield proxy, recorder, llama.KEY
    finally:
        server.kill()


@pytest.fixture(scope="module")
def short_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bench.short_corpus(tmp_path_factory.mktemp("short") / "corpus.jsonl")


def test_llm_killed_mid_round_pays_nothing_twice(proxied: tuple[Any, Any, str], short_corpus: Path,
                                                 env: dict[str, str], tmp_path: Path) -> None:
    proxy, recorder, key = proxied
    job = bench.llm_job("llm", short_corpus, ROOT / "examples" / "target.jsonl", proxy.url, key, budget=6,
                        clusters=3, per_round=1, per_cluster=2, max_tokens=32)
    # killed 0.3 s after the first round's rows are written, while the second round's requests are out
    trial = bench.kill_trial(job, tmp_path / "run", None, env, [bench.KillPlan("mid-round", "round", 0.3)],
                             proxy=proxy, recorder=recorder)
    assert trial.phases in (["mid-round"], ["commit"]), trial.phases
    assert trial.paid_twice == 0
    assert trial.in_flight <= 2  # --concurrency 2: only what was in flight at the kill may be asked again
    # 6 extraction requests and the one-token preflight, each paid once (a resumed run's preflight is cached)
    assert len(proxy.paid) == 7 and proxy.answered == 7 + trial.in_flight
    assert not trial.note  # the same-answers run was served from the cache: it paid nothing
    # Against an uninterrupted run given the same answers: byte-identical. (Against a fresh run, the in-flight
    # requests' new answers may differ: llama.cpp's greedy tokens depend, rarely, on the previous prompt.)
    c = trial.same_answers
    assert c is not None and (c.lost, c.duplicated, c.extra, c.temps) == (0, 0, 0, ())
    assert c.qa_bytes_identical and c.rounds_identical and c.state_identical, c


# ------------------------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (root only), unmounted afterwards."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_embedding_cache_on_a_full_disk_is_an_equal_error(small_tmpfs: Path) -> None:
    """SQLite rolls back a failed COMMIT itself; the cache's own ROLLBACK used to raise and hide the cause."""
    import subprocess

    import numpy as np

    from equal.embed import CachedEmbedder, EmbeddingError
    from test_embed import CountingEmbedder

    texts = [f"text number {i}: " + "lorem ipsum " * (i % 7) for i in range(3000)]
    with pytest.raises(EmbeddingError, match="database or disk is full"):
        CachedEmbedder(CountingEmbedder(dim=64), small_tmpfs).encode(texts)
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_tmpfs)], check=True)
    base = CountingEmbedder(dim=64)
    got = CachedEmbedder(base, small_tmpfs).encode(texts)  # the same cache file, now with room
    np.testing.assert_allclose(got, CountingEmbedder(dim=64).encode(texts), rtol=0, atol=1e-6)
    assert base.n_encoded == len(texts)  # nothing of the failed transaction was kept
