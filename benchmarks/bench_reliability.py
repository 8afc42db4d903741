"""Reliability of ``equal extract`` under ``kill -9``, two writers, a full disk and a read-only ``--out``.

Every run is a real subprocess (``python -m equal.cli extract``), killed with SIGKILL at a seeded random
moment and then resumed with the same command; the resumed run directory is compared with an uninterrupted
run of the same settings:

* ``qa.jsonl`` byte for byte (and as a multiset of canonical rows: pairs lost, pairs duplicated);
* ``rounds.jsonl`` and ``state.json`` without the fields that legitimately differ after a resume (the ledger
  counts only what was paid for, so its request and token counters differ, and with them the logs' lengths);
* no temporary file (``.NAME.<hex>.tmp``, ``.tmp-*``) left behind.

Kill moments. A first timed clean run gives each phase's duration; a kill is aimed at one phase by an
anchor and a seeded delay after it: ``start`` (setup: imports, reading the corpus), the ``-v`` log line of
the embedder loading (embedding), the k-means log line (clustering and storing the inputs), ``setup.json``
appearing (the rounds), or ``rounds.jsonl`` growing (a round's rows are on disk, its ``state.json`` rename
not yet: the commit). Which phase a kill really hit is read afterwards from the killed directory (``state.json``
finished, rows past the committed length, ``setup.json``) and the log lines seen before the kill; that is
what the table reports. Some trials are killed twice (the second time during the resume).

LLM path. A real llama.cpp server (``tests/test_llm_server.py``'s ``LlamaServer``, the bundled SmolLM2 GGUF)
behind :class:`equal.testing.FaultProxy`, which counts upstream 200 answers per request-body hash. A body
answered twice is *paid twice* when its first answer was already stored in the run's ``llm_cache.sqlite``
at the kill (or both answers came within one process); otherwise it was in flight at the kill and its
answer was lost with the process: an *in-flight repeat*, reported apart.

Other scenarios: two ``equal extract`` started at once on one ``--out`` (the second must refuse at once,
naming the other's pid, and the dataset be right); ``--out`` and the embedding cache (``EQUAL_CACHE_DIR``) on
a 2 MiB tmpfs (one-line error, exit 1, and after remounting it larger the resumed run matches); ``--out`` on
a read-only mount (one-line error). The mounts need root.

Run: ``python benchmarks/bench_reliability.py [--quick] [--no-llm] [--no-write]``; prints a table and writes
the ``reliability-kill`` section of ``benchmarks/RESULTS.md``. ``tests/test_kill.py`` runs a small version.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import platform
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SECTION = "reliability-kill"
PHASES = ("setup", "embedding", "clustering", "mid-round", "commit", "finish")

EMBED_MARK = "Loading SentenceTransformer model"  # -v log line: the embedder loads (embedding starts)
KMEANS_MARK = "KMeans: training"  # -v log line: clustering starts
_TEMP_RE = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$|^\.tmp-")
# Fields that differ between an uninterrupted and a resumed run by design: the ledger counts only requests
# paid for (a resumed run's cache hits are not), and the log lengths follow from those counters.
_ROUND_VOLATILE = ("llm_requests", "tokens_in", "tokens_out", "llm_cached", "llm_seconds")
_STATE_VOLATILE = ("ledger", "rounds_bytes")


# ------------------------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Job:
    """One ``equal extract`` setting: its options (all but ``--out``) and extra environment."""

    name: str
    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


def rules_job(name: str, corpus: Path, target: Path, *, budget: int, clusters: int, per_round: int = 4,
              per_cluster: int = 3) -> Job:
    return Job(name, ("--corpus", str(corpus), "--target", str(target), "--extractor", "rules",
                      "--budget-docs", str(budget), "--clusters", str(clusters),
                      "--clusters-per-round", str(per_round), "--docs-per-cluster", str(per_cluster)))


def llm_job(name: str, corpus: Path, target: Path, base_url: str, api_key: str, *, budget: int, clusters: int,
            per_round: int = 2, per_cluster: int = 2, max_tokens: int = 64) -> Job:
    return Job(name, ("--corpus", str(corpus), "--target", str(target), "--extractor", "llm", "--llm", "openai",
                      "--base-url", base_url, "--model", "smollm2", "--max-tokens", str(max_tokens),
                      "--concurrency", "2", "--budget-docs", str(budget), "--clusters", str(clusters),
                      "--clusters-per-round", str(per_round), "--docs-per-cluster", str(per_cluster)),
               env={"EQUAL_API_KEY": api_key})


def base_env(cache_dir: Path) -> dict[str, str]:
    """The environment of every run: offline, one BLAS thread, the given embedding cache."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "EQUAL_CACHE_DIR": str(cache_dir), "PYTHONUNBUFFERED": "1"}
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    return env


def command(job: Job, out: Path, *, verbose: bool = True) -> list[str]:
    return [sys.executable, "-m", "equal.cli", *(["-v"] if verbose else []), "extract", *job.args,
            "--out", str(out), "--json"]


class Proc:
    """``equal extract`` as a subprocess, its stderr lines time-stamped as they arrive."""

    def __init__(self, cmd: Sequence[str], env: dict[str, str]) -> None:
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(list(cmd), env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[tuple[float, str]] = []
        self.stdout = b""
        self._threads = [threading.Thread(target=self._read_err, daemon=True),
                         threading.Thread(target=self._read_out, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_err(self) -> None:
        assert self.p.stderr is not None
        for raw in iter(self.p.stderr.readline, b""):
            self.lines.append((time.monotonic() - self.t0, raw.decode("utf-8", "replace").rstrip("\n")))

    def _read_out(self) -> None:
        assert self.p.stdout is not None
        self.stdout = self.p.stdout.read()

    @property
    def pid(self) -> int:
        return self.p.pid

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def seen(self, marker: str) -> float | None:
        """Seconds after the start at which a stderr line containing ``marker`` arrived, or None."""
        return next((t for t, line in list(self.lines) if marker in line), None)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait()
        self._join()

    def wait(self, timeout: float) -> int:
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"equal extract ran past {timeout:.0f} s") from None
        self._join()
        return rc

    def _join(self) -> None:
        for t in self._threads:
            t.join(timeout=10)

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)


def run_clean(job: Job, out: Path, env: dict[str, str], *, timeout: float = 900) -> dict[str, float]:
    """An uninterrupted run; returns its phase times (seconds after the start) from log lines and file times."""
    shutil.rmtree(out, ignore_errors=True)
    wall0 = time.time()
    proc = Proc(command(job, out), {**env, **job.env})
    rc = proc.wait(timeout)
    if rc != 0:
        raise RuntimeError(f"clean run {job.name} failed (exit {rc}): {proc.stderr[-2000:]}")
    return phase_times(proc, out, wall0)


def phase_times(proc: Proc, out: Path, wall0: float) -> dict[str, float]:
    """Seconds after ``wall0`` (the start) at which each phase of a finished run began, and its end."""
    setup_done = (out / "setup.json").stat().st_mtime - wall0
    return {"embedding": proc.seen(EMBED_MARK) or 0.0, "clustering": proc.seen(KMEANS_MARK) or setup_done,
            "rounds": setup_done, "last_round": (out / "qa.jsonl").stat().st_mtime - wall0,
            "end": proc.elapsed(), "growths": float(_growths(out))}


def _growths(out: Path) -> int:
    """Rounds appended to ``rounds.jsonl`` (each is one chance to kill between its append and its commit)."""
    return sum(1 for x in (out / "rounds.jsonl").read_text(encoding="utf-8").splitlines() if x.strip())


# ------------------------------------------------------------------------------------------- kills


@dataclass(frozen=True)
class KillPlan:
    """Kill ``delay`` seconds after ``anchor``: start, embedding, clustering, rounds (the first round of the
    process), or round (the ``nth`` time ``rounds.jsonl`` grows: a round's rows are on disk and its commit,
    the rename of ``state.json``, comes next)."""

    aim: str
    anchor: str
    delay: float
    nth: int = 1


def plan_kill(rng: random.Random, aim: str, times: dict[str, float]) -> KillPlan:
    """A seeded random moment inside phase ``aim`` of a run whose clean phase times are ``times``."""
    if aim == "setup":
        return KillPlan(aim, "start", rng.uniform(0.3, max(0.4, 0.95 * times["embedding"])))
    if aim == "embedding":
        return KillPlan(aim, "embedding", rng.uniform(0.0, max(0.05, times["clustering"] - times["embedding"])))
    if aim == "clustering":
        return KillPlan(aim, "clustering", rng.uniform(0.0, max(0.01, times["rounds"] - times["clustering"])))
    if aim == "mid-round":
        return KillPlan(aim, "rounds", rng.uniform(0.0, max(0.05, times["last_round"] - times["rounds"])))
    if aim == "commit":
        return KillPlan(aim, "round", 0.0, nth=rng.randint(1, max(1, int(times["growths"]))))
    if aim == "finish":
        return KillPlan(aim, "rounds", (times["last_round"] - times["rounds"])
                        + rng.uniform(0.0, max(0.05, times["end"] - times["last_round"]) * 0.8))
    raise ValueError(f"aim={aim!r} must be one of {PHASES}")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def _state(out: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def temp_files(out: Path) -> list[str]:
    """Temporary files and folders of interrupted writes anywhere under ``out``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(out):
        for name in [*filenames, *dirnames]:
            if _TEMP_RE.match(name):
                found.append(str(Path(dirpath, name).relative_to(out)))
    return sorted(found)


def classify(out: Path, proc: Proc, start_round: int | None, grew: bool) -> str:
    """The phase a kill hit, read from the killed directory and the log lines seen before the kill.

    ``start_round`` is the committed round when the process started on a set-up directory (None for a new
    one); ``grew`` says whether ``rounds.jsonl`` grew while it ran (it wrote a round).
    """
    st = _state(out)
    if st is not None and st.get("finished"):
        return "finish"
    torn = st is not None and (_size(out / "qa.jsonl") > st["qa_bytes"]
                               or _size(out / "rounds.jsonl") > st["rounds_bytes"])
    if start_round is not None:  # a resume: in its rounds once it wrote or committed one
        advanced = st is not None and int(st.get("round", 0)) > start_round
        return ("commit" if torn else "mid-round") if advanced or grew else "setup"
    if (out / "setup.json").exists():
        return "commit" if torn or any(t.startswith(".state.json.") for t in temp_files(out)) else "mid-round"
    if proc.seen(KMEANS_MARK) is not None:
        return "clustering"
    if proc.seen(EMBED_MARK) is not None:
        return "embedding"
    return "setup"


@dataclass
class KillResult:
    killed: bool
    phase: str
    at: float
    temps_left: int
    mono: float  # time.monotonic() of the kill


def run_and_kill(job: Job, out: Path, env: dict[str, str], plan: KillPlan, *, timeout: float = 900) -> KillResult:
    """Start ``job`` on ``out`` (new or resumed) and SIGKILL it at ``plan``; a run that ends first is not killed."""
    st = _state(out)
    start_round = int(st.get("round", 0)) if (out / "setup.json").exists() and st is not None else None
    proc = Proc(command(job, out), {**env, **job.env})
    log = out / "rounds.jsonl"
    last, growths, t_anchor = _size(log), 0, None
    while proc.p.poll() is None:
        now = proc.elapsed()
        if now > timeout:
            proc.kill()
            raise RuntimeError(f"{job.name}: ran past {timeout:.0f} s without reaching {plan}")
        size = _size(log)
        if size > last >= 0:
            growths += 1
        last = size
        if t_anchor is None:
            if plan.anchor == "start":
                t_anchor = 0.0
            elif plan.anchor == "embedding":
                t_anchor = proc.seen(EMBED_MARK)
            elif plan.anchor == "clustering":
                t_anchor = proc.seen(KMEANS_MARK)
            elif plan.anchor == "rounds":
                # a resume reads its stored setup back first: its rounds have begun once it wrote one
                ready = growths > 0 if start_round is not None else (
                    (out / "setup.json").exists() and _state(out) is not None)
                t_anchor = now if ready else None
            elif plan.anchor == "round" and growths >= plan.nth:
                t_anchor = now
        if t_anchor is not None and now >= t_anchor + plan.delay:
            mono = time.monotonic()
            proc.kill()
            return KillResult(True, classify(out, proc, start_round, growths > 0), now, len(temp_files(out)),
                              mono)
        time.sleep(0.0005 if plan.anchor == "round" else 0.002)
    proc.wait(timeout)
    return KillResult(False, "not killed (ended first)", proc.elapsed(), len(temp_files(out)), time.monotonic())


def resume(job: Job, out: Path, env: dict[str, str], *, timeout: float = 900) -> Proc:
    proc = Proc(command(job, out), {**env, **job.env})
    rc = proc.wait(timeout)
    if rc != 0:
        raise RuntimeError(f"resume of {job.name} failed (exit {rc}): {proc.stderr[-2000:]}")
    return proc


# ------------------------------------------------------------------------------------------- comparison


def _jsonl(path: Path) -> list[Any]:
    return [json.loads(x) for x in path.read_bytes().decode("utf-8").splitlines() if x.strip()]


def _canon(row: Any) -> str:
    return json.dumps(row, sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True)
class Comparison:
    """A finished run directory against the uninterrupted reference."""

    qa_bytes_identical: bool
    rows: int
    lost: int
    duplicated: int  # copies of a row beyond those the reference has
    extra: int  # rows the reference does not have at all
    rounds_identical: bool
    state_identical: bool
    temps: tuple[str, ...]

    @property
    def identical(self) -> bool:
        return (self.qa_bytes_identical and self.rounds_identical and self.state_identical and not self.lost
                and not self.duplicated and not self.extra and not self.temps)


def compare(out: Path, ref: Path) -> Comparison:
    got, want = _jsonl(out / "qa.jsonl"), _jsonl(ref / "qa.jsonl")
    cg, cw = Counter(map(_canon, got)), Counter(map(_canon, want))
    lost = sum((cw - cg).values())
    duplicated = sum(n - cw[row] for row, n in cg.items() if cw[row] and n > cw[row]) + sum(
        n - 1 for row, n in cg.items() if not cw[row] and n > 1)
    extra = sum(1 for row in cg if not cw[row])

    def rounds(path: Path) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k not in _ROUND_VOLATILE} for r in _jsonl(path / "rounds.jsonl")]

    def state(path: Path) -> dict[str, Any]:
        return {k: v for k, v in (_state(path) or {}).items() if k not in _STATE_VOLATILE}

    return Comparison(
        qa_bytes_identical=(out / "qa.jsonl").read_bytes() == (ref / "qa.jsonl").read_bytes(),
        rows=len(got), lost=lost, duplicated=duplicated, extra=extra,
        rounds_identical=rounds(out) == rounds(ref), state_identical=state(out) == state(ref) != {},
        temps=tuple(temp_files(out)),
    )


# ------------------------------------------------------------------------------------------- LLM accounting


class BodyRecorder:
    """A FaultProxy schedule that injects nothing and remembers each request's messages by its number."""

    def __init__(self) -> None:
        self.messages: dict[int, str] = {}

    def __call__(self, n: int, body: dict[str, Any]) -> None:
        self.messages[n] = _canon(body.get("messages"))
        return None


def stored_messages(cache: Path) -> set[str]:
    """Messages of every answer stored as done in a run's ``llm_cache.sqlite``."""
    if not cache.exists():
        return set()
    con = sqlite3.connect(cache)
    try:
        rows = con.execute("SELECT request FROM completions WHERE status = 'ok'").fetchall()
    except sqlite3.DatabaseError:
        return set()
    finally:
        con.close()
    return {_canon(json.loads(r[0]).get("messages")) for r in rows}


def paid_twice(proxy: Any, recorder: BodyRecorder, kills: Sequence[tuple[float, set[str]]]) -> tuple[int, int]:
    """(paid twice, in-flight repeats) among the upstream 200 answers the proxy saw in one trial.

    ``kills`` holds, per kill, its ``time.monotonic()`` and the messages stored in the cache at that moment.
    The second answer of a body is paid twice if the first came in the same process (no kill between), or if
    the first was stored before the kill that separates them; otherwise the first was lost in flight.
    """
    answered: dict[str, list[tuple[float, str]]] = {}
    for rec in list(proxy.log):
        if rec.get("upstream") == 200:
            answered.setdefault(rec["sha"], []).append((rec["t"], recorder.messages.get(rec["n"], "")))
    twice = in_flight = 0

    def segment(t: float) -> int:
        return sum(1 for k, _ in kills if k <= t)

    for seen in answered.values():
        seen.sort()
        for (t1, msg), (t2, _) in itertools.pairwise(seen):
            s1, s2 = segment(t1), segment(t2)
            if s1 == s2 or any(msg in stored for _, stored in kills[s1:s2]):
                twice += 1
            else:
                in_flight += 1
    return twice, in_flight


# ------------------------------------------------------------------------------------------- trials


@dataclass
class Trial:
    scenario: str
    job: str
    phases: list[str]
    comparison: Comparison | None
    paid_twice: int = 0
    in_flight: int = 0
    temps_after_kill: int = 0
    note: str = ""
    same_answers: Comparison | None = None  # LLM: against an uninterrupted run given the trial's answers


def kill_trial(job: Job, out: Path, ref: Path | None, env: dict[str, str], plans: Sequence[KillPlan], *,
               proxy: Any = None, recorder: BodyRecorder | None = None) -> Trial:
    """Run ``job`` killed at each of ``plans`` in turn (a resume between), then resume it to the end.

    The result is compared with the uninterrupted run ``ref`` (if given) and, with a ``proxy`` (the LLM
    path), with an uninterrupted run given the answers the trial stored.
    """
    shutil.rmtree(out, ignore_errors=True)
    if proxy is not None:
        proxy.reset_counts()
        if recorder is not None:
            recorder.messages.clear()
    phases, kills, temps = [], [], 0
    for plan in plans:
        res = run_and_kill(job, out, env, plan)
        phases.append(res.phase)
        temps += res.temps_left
        if res.killed:
            kills.append((res.mono, stored_messages(out / "llm_cache.sqlite")))
    resume(job, out, env)
    twice, flight = paid_twice(proxy, recorder, kills) if proxy is not None and recorder is not None else (0, 0)
    trial = Trial("kill -9", job.name, phases, compare(out, ref) if ref is not None else None, twice, flight,
                  temps)
    if proxy is not None:
        # An in-flight request asked again may get another answer: llama.cpp reuses the KV cache of the
        # previous prompt's common prefix, and a different predecessor shifts the logits by rounding, enough to
        # flip a greedy token now and then. So the resumed run is also compared with an uninterrupted run that
        # gets the very answers the trial stored (its cache copied in): that one must be byte-identical.
        answered = proxy.answered
        twin = out.with_name(out.name + "-same-answers")
        shutil.rmtree(twin, ignore_errors=True)
        twin.mkdir(parents=True)
        for suffix in ("", "-wal", "-shm"):  # a WAL not yet checkpointed holds answers too
            if (out / f"llm_cache.sqlite{suffix}").exists():
                shutil.copy2(out / f"llm_cache.sqlite{suffix}", twin / f"llm_cache.sqlite{suffix}")
        resume(job, twin, env)
        trial.same_answers = compare(out, twin)
        if proxy.answered != answered:
            trial.note = f"the same-answers run was answered {proxy.answered - answered} request(s)"
    return trial


@dataclass
class TwoWriters:
    """Two ``equal extract`` started together on one ``--out``."""

    exit_codes: list[int]
    ok: bool  # one ran to the end, the other refused with one line naming the first's pid
    refused_after_s: float | None
    message: str
    times: dict[str, float] | None  # the winner's phase times (see phase_times)


def two_writers(job: Job, out: Path, env: dict[str, str]) -> TwoWriters:
    """Start two ``equal extract`` on a fresh ``out`` at once; the one that does not get the lock must refuse."""
    shutil.rmtree(out, ignore_errors=True)
    wall0 = time.time()
    procs = [Proc(command(job, out, verbose=False), {**env, **job.env}) for _ in range(2)]
    refused_at: dict[int, float] = {}
    while any(p.p.poll() is None for p in procs):
        for p in procs:
            if p.p.poll() is not None and p.pid not in refused_at:
                refused_at[p.pid] = p.elapsed()
        time.sleep(0.01)
    for p in procs:
        refused_at.setdefault(p.pid, p.elapsed())
    codes = [p.wait(900) for p in procs]
    winners = [p for p, c in zip(procs, codes, strict=True) if c == 0]
    losers = [p for p, c in zip(procs, codes, strict=True) if c != 0]
    if len(winners) != 1 or len(losers) != 1:
        return TwoWriters(codes, False, None, " | ".join(_last_line(p.stderr) for p in procs), None)
    win, lose = winners[0], losers[0]
    ok = lose.p.returncode == 1 and one_line(lose.stderr) and f"pid {win.pid}" in lose.stderr
    return TwoWriters(codes, ok, round(refused_at[lose.pid], 2), lose.stderr.strip()[:300],
                      phase_times(win, out, wall0))


def one_line(stderr: str) -> bool:
    """A clean error: no traceback, and the last stderr line is the only one starting with ``error:``.

    Warnings and progress lines before it are allowed; they are not the error.
    """
    lines = [x for x in stderr.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error:")]
    return "Traceback" not in stderr and len(errors) == 1 and lines[-1] == errors[0]


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (root only), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(path)], check=True)


@dataclass
class ErrorCase:
    scenario: str
    rc: int
    one_line: bool
    message: str
    resumed_identical: bool | None = None


def _last_line(stderr: str) -> str:
    """The last non-empty stderr line (the error; progress lines before it would break the table)."""
    lines = [x for x in stderr.splitlines() if x.strip()]
    return lines[-1][:200] if lines else ""


def _plain(job: Job, out: Path, env: dict[str, str]) -> Proc:
    proc = Proc(command(job, out, verbose=False), {**env, **job.env})
    proc.wait(900)
    return proc


def disk_cases(job: Job, ref: Path, work: Path, env: dict[str, str], small_job: Job,
               small_ref: Path) -> list[ErrorCase]:
    """``--out`` on a full tmpfs, the embedding cache on a full tmpfs, and ``--out`` read-only."""
    cases = []
    with tmpfs(work / "mnt-out", "2m") as mnt:
        out = mnt / "run"
        p = _plain(job, out, env)
        case = ErrorCase("disk full: --out (2 MiB tmpfs)", p.p.returncode, one_line(p.stderr), _last_line(p.stderr))
        remount(mnt, "size=64m")
        q = _plain(job, out, env)
        case.resumed_identical = q.p.returncode == 0 and compare(out, ref).identical
        cases.append(case)
    with tmpfs(work / "mnt-cache", "256k") as mnt:
        cenv = {**env, "EQUAL_CACHE_DIR": str(mnt / "cache")}
        out = work / "cache-full-run"
        shutil.rmtree(out, ignore_errors=True)
        p = _plain(small_job, out, cenv)
        case = ErrorCase("disk full: embedding cache (256 KiB tmpfs)", p.p.returncode, one_line(p.stderr),
                         _last_line(p.stderr))
        remount(mnt, "size=64m")
        out2 = work / "cache-full-run2"
        shutil.rmtree(out2, ignore_errors=True)
        q = _plain(small_job, out2, cenv)  # --out elsewhere, the same (now larger) cache
        case.resumed_identical = q.p.returncode == 0 and compare(out2, small_ref).identical
        cases.append(case)
    with tmpfs(work / "mnt-ro", "16m") as mnt:
        done = mnt / "done-run"
        shutil.copytree(ref, done)
        remount(mnt, "ro")
        for label, out in (("read-only: new --out", mnt / "new-run"), ("read-only: existing run", done)):
            p = _plain(job, out, env)
            cases.append(ErrorCase(label, p.p.returncode, one_line(p.stderr), _last_line(p.stderr)))
    return cases


# ------------------------------------------------------------------------------------------- corpora


def pool_corpus(path: Path, n: int) -> Path:
    """A second corpus: ``n`` rows of ``examples/pool.jsonl`` rendered as Question/Answer texts."""
    rows = []
    for line in (ROOT / "examples" / "pool.jsonl").read_text(encoding="utf-8").splitlines()[:n]:
        rec = json.loads(line)
        msgs = rec["messages"]
        q = next(m["content"] for m in msgs if m["role"] == "user")
        a = next(m["content"] for m in msgs if m["role"] == "assistant")
        rows.append({"id": rec["id"], "text": f"Question: {q}\n\nAnswer: {a}"})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def short_corpus(path: Path, n: int = 60) -> Path:
    """``n`` short documents (under 700 characters) of ``examples/corpus.jsonl``: quick prompts for the LLM."""
    rows = [r for r in (ROOT / "examples" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
            if len(json.loads(r)["text"]) < 700][::3][:n]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def aims(n: int, rng: random.Random, phases: Sequence[str] = PHASES) -> list[str]:
    """``n`` phases covering each of ``phases`` at least once (when n allows), the rest drawn at random."""
    out = list(phases)[:n] + [rng.choice(list(phases)) for _ in range(max(0, n - len(phases)))]
    rng.shuffle(out)
    return out


def kill_suite(job: Job, work: Path, env: dict[str, str], *, trials: int, twice: int, seed: int,
               phases: Sequence[str] = PHASES, cold_embedding: bool = False, proxy: Any = None,
               recorder: BodyRecorder | None = None, log: Callable[[str], None] = print) -> list[Trial]:
    """A reference run, a timed clean run, then ``trials`` kill trials (the first ``twice`` killed twice).

    Kill moments are drawn from the timed run, made with the embedding cache the reference filled (as every
    trial runs). With ``cold_embedding`` the trials aimed at the embedding phase get an empty embedding cache
    of their own (so the kill lands while documents are really embedded and cached), timed by one more clean
    run on an empty cache, which must match the reference too.
    """
    rng = random.Random(seed)
    ref = work / f"{job.name}-ref"
    if proxy is not None:
        proxy.reset_counts()
    run_clean(job, ref, env)
    times = run_clean(job, work / f"{job.name}-timed", env)
    if not compare(work / f"{job.name}-timed", ref).identical:
        log(f"{job.name}: WARNING two uninterrupted runs differ")
    log(f"{job.name}: clean run {times['end']:.1f} s; embedding at {times['embedding']:.1f} s, clustering at "
        f"{times['clustering']:.1f} s, rounds {times['rounds']:.1f}-{times['last_round']:.1f} s")
    cold_times = None
    if cold_embedding:
        cold_env = {**env, "EQUAL_CACHE_DIR": str(_fresh(work / f"{job.name}-cold-cache"))}
        cold_times = run_clean(job, work / f"{job.name}-cold", cold_env)
        log(f"{job.name}: cold-cache run {cold_times['end']:.1f} s, embedding {cold_times['embedding']:.1f}-"
            f"{cold_times['clustering']:.1f} s; identical={compare(work / f'{job.name}-cold', ref).identical}")
    out = []
    for i, aim in enumerate(aims(trials, rng, phases)):
        t_env, t_times = env, times
        if aim == "embedding" and cold_times is not None:
            t_env = {**env, "EQUAL_CACHE_DIR": str(_fresh(work / f"{job.name}-kill{i}-cache"))}
            t_times = cold_times
        plans = [plan_kill(rng, aim, t_times)]
        if i < twice:  # the second kill lands in the resume: its reload, its rounds, or its first commit
            second = plan_kill(rng, rng.choice(["setup", "mid-round", "commit"]), times)
            plans.append(dataclasses.replace(second, nth=1, delay=second.delay / 3)
                         if second.aim != "setup" else second)
        t = kill_trial(job, work / f"{job.name}-kill{i}", ref, t_env, plans, proxy=proxy, recorder=recorder)
        c = t.comparison
        log(f"  trial {i}: aimed {[p.aim for p in plans]} hit {t.phases}: {c}; same answers: {t.same_answers}; "
            f"paid_twice={t.paid_twice} in_flight={t.in_flight} "
            f"temps after kill={t.temps_after_kill}")
        out.append(t)
    return out


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# ------------------------------------------------------------------------------------------- main


def _table(rows: list[list[Any]], head: list[str]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def _summarise(name: str, trials: list[Trial]) -> list[Any]:
    """One table row; for the LLM trials the counts are against the same-answers run, the first run in notes."""
    comps = [t.same_answers or t.comparison for t in trials]
    comps = [c for c in comps if c is not None]
    hits = Counter(p for t in trials for p in t.phases)
    notes = ", ".join(f"{p} {hits[p]}" for p in [*PHASES, "not killed (ended first)"] if hits[p])
    twice = sum(len(t.phases) > 1 for t in trials)
    notes = f"kills hit: {notes}; {twice} trial(s) killed twice"
    if any(t.same_answers is not None for t in trials):
        firsts = [t.comparison for t in trials if t.comparison is not None]
        notes += (f"; identical to the first uninterrupted run {sum(c.identical for c in firsts)}/{len(firsts)} "
                  f"(rows lost {sum(c.lost for c in firsts)}, other rows {sum(c.extra for c in firsts)}: "
                  "in-flight requests answered anew)")
    notes += "".join(f"; {t.note}" for t in trials if t.note)
    return [name, len(trials), f"{sum(c.identical for c in comps)}/{len(comps)}", sum(c.lost for c in comps),
            sum(c.duplicated for c in comps), sum(t.paid_twice for t in trials), sum(t.in_flight for t in trials),
            "–", notes]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few trials per scenario")
    ap.add_argument("--no-llm", action="store_true", help="skip the llama.cpp server part")
    ap.add_argument("--no-disk", action="store_true", help="skip the tmpfs scenarios (they need root)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--work", type=Path, default=Path("/tmp/equal-bench-reliability"))
    args = ap.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    env = base_env(work / "cache")
    t0 = time.perf_counter()
    examples = ROOT / "examples"
    target = examples / "target.jsonl"
    corpus_b = pool_corpus(work / "pool_corpus.jsonl", 400)
    job_a = rules_job("rules-corpus", examples / "corpus.jsonl", target, budget=240, clusters=20)
    job_b = rules_job("rules-pool", corpus_b, target, budget=120, clusters=12)
    n_a, n_b, twice_a, twice_b, n_llm = (4, 3, 1, 1, 3) if args.quick else (16, 10, 6, 4, 8)

    rows, details = [], []
    trials_a = kill_suite(job_a, work, env, trials=n_a, twice=twice_a, seed=args.seed)
    trials_b = kill_suite(job_b, work, env, trials=n_b, twice=twice_b, seed=args.seed + 1, cold_embedding=True)
    rows.append(_summarise(f"kill -9, rules, {job_a.name}", trials_a))
    rows.append(_summarise(f"kill -9, rules, {job_b.name}", trials_b))
    details += trials_a + trials_b

    if not args.no_llm:
        sys.path.insert(0, str(ROOT / "tests"))
        from equal.testing import FaultProxy
        from test_llm_server import KEY, LlamaServer, _free_port  # the project's one llama.cpp fixture

        server = LlamaServer(_free_port(), work)
        server.start()
        recorder = BodyRecorder()
        try:
            with FaultProxy(server.url, faults=recorder) as proxy:
                job_l = llm_job("llm-short-docs", short_corpus(work / "short_corpus.jsonl"), target, proxy.url,
                                KEY, budget=12, clusters=6, max_tokens=48)
                trials_l = kill_suite(job_l, work, env, trials=n_llm, twice=2 if not args.quick else 1,
                                      seed=args.seed + 2, phases=("setup", "clustering", "mid-round", "commit"),
                                      proxy=proxy, recorder=recorder)
        finally:
            server.kill()
        rows.append(_summarise(f"kill -9, LLM (llama.cpp), {job_l.name}", trials_l))
        details += trials_l

    ref_a = work / f"{job_a.name}-ref"
    conc = [two_writers(job_a, work / f"two-writers-{i}", env) for i in range(3)]
    comps = [compare(work / f"two-writers-{i}", ref_a) for i in range(3)]
    rows.append(["two writers, one --out", len(conc), f"{sum(c.identical for c in comps)}/{len(comps)}",
                 sum(c.lost for c in comps), sum(c.duplicated for c in comps), "–", "–",
                 f"{sum(c.ok for c in conc)}/{len(conc)}",
                 "refused after " + ", ".join(f"{c.refused_after_s} s" for c in conc) + f"; «{conc[0].message}»"])
    for c in conc:
        print("  two writers:", c.exit_codes, c.ok, c.refused_after_s, c.message)

    errors: list[ErrorCase] = []
    if not args.no_disk:
        try:
            errors = disk_cases(job_a, ref_a, work, env, job_b, work / f"{job_b.name}-ref")
        except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:  # no root, no mount
            rows.append(["disk full / read-only", 0, "–", "–", "–", "–", "–", "–", f"not run: {exc}"])
        for e in errors:
            rows.append([e.scenario, 1, "–" if e.resumed_identical is None else f"{int(e.resumed_identical)}/1",
                         "–", "–", "–", "–", f"{int(e.one_line and e.rc == 1)}/1", f"exit {e.rc}: {e.message}"])

    head = ["scenario", "trials", "identical", "lost", "duplicated", "paid twice", "in-flight repeats",
            "one-line errors", "notes"]
    table = _table(rows, head)
    print(table)
    minutes = (time.perf_counter() - t0) / 60
    text = "\n".join([
        "## Reliability: kill -9, two writers, disk full, read-only (`benchmarks/bench_reliability.py`)",
        "",
        f"Real `python -m equal.cli extract` subprocesses killed with SIGKILL at seeded moments (seed {args.seed}) "
        "aimed at each phase from a clean run's timing, resumed with the same command and compared with an "
        "uninterrupted run (`qa.jsonl` byte for byte, `rounds.jsonl` and `state.json` without the ledger's "
        "paid-only counters, no temp file left). Corpora: `examples/corpus.jsonl` (1139 chunks, budget 240) and "
        "400 rows of `examples/pool.jsonl` as Question/Answer texts (budget 120), rules extractor; the LLM "
        "extractor against the bundled SmolLM2 on a real llama.cpp server behind `equal.testing.FaultProxy` "
        "(60 short documents of the example corpus, budget 12, 2 concurrent requests; 'identical' there is "
        "against an uninterrupted run given the trial's stored answers, the first run's figure is in the notes). "
        "'paid twice': a body answered again after its first answer was "
        "stored (or twice in one process); 'in-flight repeats': answered at the kill but lost with the process.",
        "",
        table,
        "",
        f"{platform.machine()}, {os.cpu_count()} CPU, Python {platform.python_version()}; "
        f"{minutes:.0f} min in all.",
    ])
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).parent))
        from _results import write_section

        write_section(SECTION, text)


if __name__ == "__main__":
    main()
