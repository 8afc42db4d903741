"""Bad-input suite at scale (issue 11): generated malformed inputs per reader and per command.

Every reader of ``equal`` (documents in each format, the streaming reader, SFT pools, ``qa.jsonl``, the
JSONL logs, evaluation tasks, training data, the corpus and target of ``equal extract``) and the commands
that read files (``embed``, ``ot``, ``cluster``, ``diversity``, ``select``, ``export``, ``evaluate``) get N seeded
mutations of a valid input each: truncation at a random byte, byte flips and insertions (NUL, BOM, invalid
UTF-8), dropped lines, non-object lines, wrong types and nasty values per field (NaN, 1e999, 400-digit
integers, lone surrogates, 3000-deep nesting), missing fields, duplicate keys, gzip damage (plain text
named ``.gz``, a truncated or flipped stream), and for ``.npy`` inputs NaN/inf, zero rows, 1e30, complex,
object, wrong ndim and empty arrays. Readers run with ``skip_invalid`` on for every other input.

The mutators and the checks are those of ``tests/test_bad_inputs.py`` (the test runs ~12 inputs per
reader). A reader's input counts as a *one-line error* when it raised a ``DataError`` whose message is one
line starting with the file's path, as *naming file:line* when that message starts ``file:line:`` (or
``file: row n:`` for Parquet), and as a *traceback* for anything else (another exception, a message that
does not name the file, several lines). A command's input must exit 0, or exit 1 with exactly one
``error:`` line on stderr naming an input (under ``--skip-invalid`` logged warnings may precede it) and no
traceback. The goal is 0 tracebacks.

Writes its table between the ``reliability-inputs`` markers of benchmarks/RESULTS.md.

Usage: python benchmarks/bench_badinput.py [--n 200] [--seed 0] [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_bad_inputs as bad  # the suite's mutators and checks
from _results import write_section

SECTION = "reliability-inputs"


def run_readers(n: int, seed: int, work: Path) -> tuple[list[str], list[str]]:
    rows, failures = [], []
    # The readers log one warning per file with skipped rows: thousands of lines that tell nothing here.
    logging.getLogger("equal").setLevel(logging.ERROR)
    try:
        _readers(n, seed, work, rows, failures)
    finally:
        logging.getLogger("equal").setLevel(logging.NOTSET)
    return rows, failures


def _readers(n: int, seed: int, work: Path, rows: list[str], failures: list[str]) -> None:
    for k, reader in enumerate(bad.READERS):
        names = sorted(reader.mutators())
        counts: Counter[str] = Counter()
        t0 = time.perf_counter()
        for i in range(n):
            rng = random.Random(f"{seed}:{k}:{i}")
            mutator = names[i % len(names)] if i < len(names) else rng.choice(names)
            folder = work / f"r{k}-{i}"
            folder.mkdir()
            outcome, detail = bad.run_reader_case(reader, folder, mutator, rng, skip=i % 2 == 1)
            counts[outcome] += 1
            if outcome == "bad" and len(failures) < 20:
                failures.append(f"{reader.name} / {mutator}: {detail}")
            shutil.rmtree(folder)
        seconds = time.perf_counter() - t0
        errors = counts["line"] + counts["file"]
        rows.append(f"| {reader.name} | {n} | {counts['valid']} | {errors} | {counts['line']} | {counts['bad']} "
                    f"| {seconds:.1f} |")
        print(rows[-1], flush=True)


def run_commands(n: int, seed: int, work: Path) -> tuple[list[str], list[str]]:
    rows, failures = [], []
    for k, command in enumerate(bad.COMMANDS + bad.SLOW_COMMANDS):
        names = sorted(command.mutators())
        counts: Counter[str] = Counter()
        t0 = time.perf_counter()
        for i in range(n):
            rng = random.Random(f"{seed}:cmd{k}:{i}")
            folder = work / f"c{k}-{i}"
            (folder / command.filename).parent.mkdir(parents=True)
            try:
                outcome = bad.run_command_case(command, folder, rng.choice(names), rng)
            except AssertionError as exc:
                outcome = "bad"
                if len(failures) < 20:
                    failures.append(f"{command.name}: {' | '.join(str(exc).splitlines())[:300]}")
            counts[outcome] += 1
            shutil.rmtree(folder)
        seconds = time.perf_counter() - t0
        errors = counts["line"] + counts["file"]
        rows.append(f"| `equal {command.name}` | {n} | {counts['ok']} | {errors} | {counts['line']} "
                    f"| {counts['bad']} | {seconds:.1f} |")
        print(rows[-1], flush=True)
    return rows, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="inputs per reader and per command")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="30 inputs each")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()
    n = 30 if args.quick else args.n
    work = Path(tempfile.mkdtemp(prefix="bench_badinput-"))
    os.environ["EQUAL_CACHE_DIR"] = str(work / "cache")
    head = ("| input | inputs | valid | one-line errors | naming file:line | tracebacks | seconds |\n"
            "|---|---|---|---|---|---|---|")
    print(head)
    try:
        reader_rows, reader_fail = run_readers(n, args.seed, work)
        command_rows, command_fail = run_commands(n, args.seed, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = sum(int(r.split("|")[6]) for r in reader_rows + command_rows)
    inputs = n * (len(reader_rows) + len(command_rows))
    lines = [
        f"Generated malformed inputs (seed {args.seed}, {n} per row; `python benchmarks/bench_badinput.py"
        f"{'' if n == 200 else f' --n {n}'}`), Python {platform.python_version()}. A reader row counts library "
        "calls (DataError on one line naming the file, or a valid result); a command row runs `equal.cli.main` "
        "in-process (exit 0, or exit 1 with one `error:` line naming an input). *naming file:line* counts the "
        "errors that also give a line (`file:line:` or Parquet's `file: row n:`); the others are file-level "
        "(not gzip, truncated gzip stream before the first line, not Parquet, bad .npy arrays, no valid "
        "record, ...). Goal: 0 tracebacks.",
        "",
        head,
        *reader_rows,
        *command_rows,
        "",
        f"**{total} tracebacks in {inputs:,} inputs.**",
    ]
    failures = reader_fail + command_fail
    if failures:
        lines += ["", "First failures:", "", *(f"- {f}" for f in failures)]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_section(SECTION, table)


if __name__ == "__main__":
    main()
