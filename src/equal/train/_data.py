"""Training data for ``equal train``: SFT records → chat-template tokens with an assistant-only loss mask.

Sources: an SFT file or folder in any form ``equal`` reads (messages, ShareGPT, Alpaca; JSONL or Parquet),
an ``equal extract`` run directory (its ``qa.jsonl``), or a list of records passed by a caller.

The loss mask
-------------
Every record is rendered with the model's own chat template. Each assistant turn ``i`` is trained on the
tokens between the rendering of ``messages[:i]`` with the generation prompt (``<|im_start|>assistant\\n``)
and the rendering of ``messages[:i + 1]``: the turn's content and its end-of-turn tokens, so the model learns
to stop. System and user turns, the template's default system prompt and the generation prompts are left
out (label -100). For a single exchange this is exactly TRL's conversational prompt–completion format
(``{"prompt": [...], "completion": [last assistant turn]}``, prompt length found as the common token prefix,
see ``trl.data_utils.common_prefix_length``); for multi-turn records it extends that rule to every assistant
turn in one sequence, instead of training only the last answer or paying one forward pass per turn. The
tokens are handed to ``SFTTrainer`` already tokenised (``input_ids`` + ``labels``), which it uses as is.

Turns after the last assistant turn carry no loss and are dropped before rendering.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from equal.data import Skips, detect_format, to_messages
from equal.data._sources import SFT_SUFFIXES, Loc, error, iter_files, rows
from equal.errors import DataError

__all__ = ["Example", "SFTDataset", "build_dataset", "data_sha256", "encode", "is_run_dir", "read_examples"]

logger = logging.getLogger(__name__)

IGNORE = -100

# Field that holds the turns, per SFT form (named in "no assistant turn" errors).
_TURNS_FIELD = {"messages": "messages", "sharegpt": "conversations", "alpaca": "output", "qa": "answer",
                "prompt_completion": "completion"}


@dataclass(frozen=True)
class Example:
    """One conversation and where it came from: a file location, or its index in a list of records."""

    messages: list[dict[str, str]]
    loc: Loc | None
    index: int
    field: str = "messages"

    def error(self, message: str) -> DataError:
        """A :class:`DataError` about this record's turns field, naming file and line (or ``records[i]``)."""
        if self.loc is None:
            return DataError(f'records[{self.index}]: field "{self.field}": {message}', field=self.field)
        return error(self.loc, message, self.field)


@dataclass(frozen=True)
class SFTDataset:
    """Tokenised training records.

    Attributes
    ----------
    input_ids, labels : list of list of int
        Per record; ``labels`` is ``input_ids`` with -100 on every token outside the assistant turns.
    path : str or None
        What was read (None for records passed in memory).
    sha256 : str
        sha256 of the canonical JSON (sorted keys, UTF-8, no spaces) of the list of messages lists as trained,
        i.e. after conversion to messages form and after skipping invalid records. The same conversations in
        another SFT form or file type hash the same; provenance keys do not count.
    records : int
        Records kept.
    skipped : int
        Invalid records skipped (``skip_invalid=True`` only).
    truncated : int
        Kept records longer than ``max_length`` tokens, cut to their first ``max_length`` tokens.
    errors : list of str
        The first messages of the skipped records.
    """

    input_ids: list[list[int]]
    labels: list[list[int]]
    path: str | None
    sha256: str
    records: int
    skipped: int
    truncated: int
    errors: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        """Tokens in one pass over the data."""
        return sum(len(ids) for ids in self.input_ids)

    def info(self) -> dict[str, Any]:
        """``train.json``'s ``data`` entry."""
        return {"path": self.path, "sha256": self.sha256, "records": self.records, "skipped": self.skipped,
                "truncated": self.truncated}

    def to_hf(self) -> Any:
        """A ``datasets.Dataset`` with ``input_ids`` and ``labels`` columns (what ``SFTTrainer`` takes)."""
        from datasets import Dataset

        return Dataset.from_dict({"input_ids": self.input_ids, "labels": self.labels})


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is an ``equal extract`` run directory (a folder with ``qa.jsonl`` and ``run.toml``)."""
    return path.is_dir() and (path / "qa.jsonl").is_file() and (path / "run.toml").is_file()


def _turns_field(record: Any) -> str:
    try:
        return _TURNS_FIELD[detect_format(record)] if isinstance(record, dict) else "messages"
    except DataError:
        return "messages"


def read_examples(
    data: str | os.PathLike[str] | Sequence[Any], *, skip_invalid: bool = False
) -> tuple[list[Example], str | None, int, list[str]]:
    """Read conversations from a file, folder, run directory or a list of records.

    Parameters
    ----------
    data : path or sequence of records
        An SFT file or folder (``.jsonl``, ``.ndjson``, ``.json``, ``.parquet``; any of the three forms, which
        may differ between files), an ``equal extract`` run directory, or records in memory (dicts in any
        form, or messages lists).
    skip_invalid : bool, default=False
        Skip and count malformed records instead of raising.

    Returns
    -------
    examples : list of Example
    path : str or None
    skipped : int
    errors : list of str

    Raises
    ------
    DataError
        A malformed record (``train.jsonl:7: field "messages[1].role": ...``) unless skipped; nothing to read.
    """
    examples: list[Example] = []
    skips = Skips(skip_invalid)
    if isinstance(data, (str, os.PathLike)):
        root = Path(data)
        if is_run_dir(root):
            from equal.pipeline.extract import load_pairs

            qa = root / "qa.jsonl"
            for i, pair in enumerate(load_pairs(root)):
                examples.append(Example(pair.to_record()["messages"], Loc(str(qa), i + 1, "line"), i))
            return examples, str(root), 0, []
        for file in iter_files(root, SFT_SUFFIXES):
            for loc, value in rows(file):
                try:
                    if isinstance(value, DataError):
                        raise value
                    try:
                        msgs = to_messages(value)
                    except DataError as exc:
                        raise error(loc, str(exc), exc.field, prefix=False) from None
                except DataError as exc:
                    skips.add(exc)
                    continue
                examples.append(Example(msgs, loc, len(examples), _turns_field(value)))
        return examples, str(root), skips.count, skips.errors
    if isinstance(data, (bytes, dict)) or not isinstance(data, Sequence):
        raise DataError(f"expected a path or a list of SFT records, got {type(data).__name__}")
    for i, record in enumerate(data):
        try:
            msgs = to_messages(record)
        except DataError as exc:
            skips.add(DataError(f"records[{i}]: {exc}", field=exc.field))
            continue
        examples.append(Example(msgs, None, i, _turns_field(record)))
    return examples, None, skips.count, skips.errors


def data_sha256(conversations: Sequence[Sequence[dict[str, str]]]) -> str:
    """sha256 of the canonical JSON of a list of messages lists (see :class:`SFTDataset`)."""
    canon = [[{"role": m["role"], "content": m["content"]} for m in conv] for conv in conversations]
    blob = json.dumps(canon, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _ids(tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool = False) -> list[int]:
    # The same call TRL's own tokenisation makes (trl.data_utils._tokenize), so the tokens match it.
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        add_generation_prompt=generation_prompt)
    return list(out["input_ids"])


def encode(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids and labels of one conversation (see the module docstring for the mask).

    Parameters
    ----------
    tokenizer : transformers tokenizer with a chat template
    messages : list of dict
        ``{"role", "content"}`` turns with at least one assistant turn.

    Returns
    -------
    input_ids, labels : list of int
        ``labels[j] == input_ids[j]`` on assistant tokens, -100 elsewhere. Not truncated.
    """
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant:
        raise ValueError("no assistant turn")
    msgs = messages[: assistant[-1] + 1]
    full = _ids(tokenizer, msgs)
    labels = [IGNORE] * len(full)
    for i in assistant:
        start = _common_prefix(_ids(tokenizer, msgs[:i], generation_prompt=True), full) if i else 0
        end = _common_prefix(_ids(tokenizer, msgs[: i + 1]), full)
        labels[start:end] = full[start:end]
    return full, labels


def build_dataset(
    data: str | os.PathLike[str] | Sequence[Any],
    tokenizer: Any,
    *,
    max_length: int = 1024,
    skip_invalid: bool = False,
) -> SFTDataset:
    """Read records and tokenise them into an :class:`SFTDataset` with the assistant-only loss mask.

    Parameters
    ----------
    data : path or sequence of records
        See :func:`read_examples`: a file, folder or run directory, or records in memory (messages lists or
        dicts in any SFT form), so a caller training inside a loop need not write a file.
    tokenizer : transformers tokenizer
        Must have a chat template.
    max_length : int, default=1024
        Longer records are cut to their first ``max_length`` tokens and counted in ``truncated``.
    skip_invalid : bool, default=False
        Skip and count bad records instead of raising.

    Returns
    -------
    SFTDataset

    Raises
    ------
    DataError
        No records; a record without an assistant turn (``data.jsonl:3: field "messages": no assistant turn``)
        or whose assistant turns all start past ``max_length``, unless skipped; nothing left after skipping.
    """
    examples, path, skipped, errors = read_examples(data, skip_invalid=skip_invalid)
    skips = Skips(skip_invalid, skipped, errors)  # records that cannot be trained on count beside bad rows
    where = path if path is not None else "records"
    if not examples and not skipped:
        raise DataError("no SFT records: the data is empty", path=where)
    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    kept: list[list[dict[str, str]]] = []
    truncated = 0
    for ex in examples:
        problem: str | None = None
        cut = False
        if not any(m["role"] == "assistant" and m["content"].strip() for m in ex.messages):
            problem = "no assistant turn: nothing to train on"
        else:
            ids, lab = encode(tokenizer, ex.messages)
            if len(ids) > max_length:
                ids, lab, cut = ids[:max_length], lab[:max_length], True
                if all(t == IGNORE for t in lab):
                    problem = (f"the prompt fills max_length={max_length} tokens: no assistant token is left "
                               "to train on (raise --max-length)")
        if problem is not None:
            skips.add(ex.error(problem))
            continue
        truncated += cut
        input_ids.append(ids)
        labels.append(lab)
        kept.append(ex.messages)
    if truncated:
        logger.info("%d of %d records were longer than max_length=%d tokens and were truncated",
                    truncated, len(kept), max_length)
    if not kept:
        raise DataError(f"no trainable SFT records{skips.first_error}", path=where)
    return SFTDataset(input_ids=input_ids, labels=labels, path=path, sha256=data_sha256(kept), records=len(kept),
                      skipped=skips.count, truncated=truncated, errors=skips.errors)
