"""SFT records in the common forms, and conversion between them.

=================  ============================================================================
messages           ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``
sharegpt           ``{"conversations": [{"from": "system"|"human"|"gpt", "value": str}, ...]}``
alpaca             ``{"instruction": str, "input": str, "output": str}`` (optional ``system``)
qa                 ``{"question": str, "answer": str}`` (GSM8K and most Q&A datasets)
prompt_completion  TRL's ``{"prompt": str, "completion": str}``, or conversational: ``prompt`` a list
                   of messages, ``completion`` a list of assistant messages
=================  ============================================================================

The canonical in-memory form is the messages list ``[{"role": ..., "content": ...}, ...]``; every
conversion goes through it. Alpaca maps to one user turn (``instruction``, plus ``"\\n\\n" + input``
when ``input`` is not blank) and one assistant turn (``output``, left out when empty). Going back,
the whole user turn becomes ``instruction`` and ``input`` is ``""``: the split between instruction
and input cannot be recovered, but the conversation is the same.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, cast

from equal.data._sources import SFT_SUFFIXES, error, iter_files, rows, type_name
from equal.data.io import atomic_path
from equal.data.records import SFTReadResult, Skips
from equal.errors import DataError

__all__ = [
    "FORMATS",
    "INPUT_FORMATS",
    "SFT_KEYS",
    "SFTFormat",
    "detect_format",
    "from_messages",
    "read_sft",
    "render_text",
    "to_messages",
    "write_sft",
]

SFTFormat = Literal["messages", "sharegpt", "alpaca", "qa", "prompt_completion"]
#: The forms any conversation can be written in.
FORMATS: tuple[str, ...] = ("messages", "sharegpt", "alpaca")
#: Every form read (and written, for the conversations it can hold): FORMATS plus the single-exchange ones.
INPUT_FORMATS: tuple[str, ...] = (*FORMATS, "qa", "prompt_completion")
#: Keys that make a record an SFT record (:func:`detect_format`), for callers that tell SFT from text.
SFT_KEYS: tuple[str, ...] = ("messages", "conversations", "instruction", "prompt", "question")
ROLES = ("system", "user", "assistant")

# ShareGPT dumps use several speaker names; FastChat's own are human/gpt/system.
_FROM_ROLE = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
}
_ROLE_FROM = {"system": "system", "user": "human", "assistant": "gpt"}

# Keys each format consumes; the others (provenance, ids...) are carried over on conversion.
_FORMAT_KEYS: dict[str, frozenset[str]] = {
    "messages": frozenset({"messages"}),
    "sharegpt": frozenset({"conversations"}),
    "alpaca": frozenset({"instruction", "input", "output", "system"}),
    "qa": frozenset({"question", "answer"}),
    "prompt_completion": frozenset({"prompt", "completion"}),
}

_MISSING = object()


def _field_error(field: str, message: str) -> DataError:
    return DataError(f'field "{field}": {message}', field=field)


def _check_fmt(fmt: object) -> str:
    if fmt not in INPUT_FORMATS:
        raise ValueError(f"fmt={fmt!r} must be one of {', '.join(map(repr, INPUT_FORMATS))}.")
    return cast(str, fmt)


def detect_format(record: dict[str, Any]) -> SFTFormat:
    """Tell which SFT form a record is in, from its keys.

    ``"messages"`` if it has a ``messages`` key, else ``"sharegpt"`` if it has ``conversations``,
    else ``"alpaca"`` if it has ``instruction``, else ``"prompt_completion"`` if it has ``prompt``,
    else ``"qa"`` if it has ``question``. Only the keys are looked at; :func:`to_messages` checks
    the content.

    Parameters
    ----------
    record : dict
        One SFT record.

    Returns
    -------
    {"messages", "sharegpt", "alpaca", "qa", "prompt_completion"}

    Raises
    ------
    DataError
        ``record`` is not a dict or has none of those keys.
    """
    if not isinstance(record, dict):
        raise DataError(f"expected an SFT record (an object), got {type_name(record)}")
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record:
        return "alpaca"
    if "prompt" in record:
        return "prompt_completion"
    if "question" in record:
        return "qa"
    keys = ", ".join(repr(k) for k in list(record)[:10]) or "none"
    raise DataError(
        'not an SFT record: expected "messages" (OpenAI), "conversations" (ShareGPT), '
        '"instruction"/"input"/"output" (Alpaca), "prompt"/"completion" (TRL) or "question"/"answer"; '
        f"got keys {keys}"
    )


def _content(value: Any, field: str) -> str:
    if isinstance(value, str):
        return value
    if value is _MISSING:
        raise _field_error(field, "missing")
    if isinstance(value, list):
        # OpenAI's multi-part content: only text parts can be rendered; they are joined by "\n".
        texts = []
        for j, part in enumerate(value):
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                raise _field_error(f"{field}[{j}]", "only text parts are supported")
        return "\n".join(texts)
    raise _field_error(field, f"expected a string, got {type_name(value)}")


def _turns(record: dict[str, Any], key: str) -> list[Any]:
    turns = record.get(key, _MISSING)
    if turns is _MISSING:
        raise _field_error(key, "missing")
    if not isinstance(turns, list):
        raise _field_error(key, f"expected a list of turns, got {type_name(turns)}")
    if not turns:
        raise _field_error(key, "no turns")
    return turns


def _check_messages(turns: list[Any], key: str = "messages") -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise _field_error(f"{key}[{i}]", f"expected an object, got {type_name(turn)}")
        role = turn.get("role", _MISSING)
        if role is _MISSING:
            raise _field_error(f"{key}[{i}].role", "missing")
        if role not in ROLES:
            allowed = ", ".join(map(repr, ROLES))
            raise _field_error(f"{key}[{i}].role", f"must be one of {allowed}; got {role!r}")
        out.append({"role": role, "content": _content(turn.get("content", _MISSING), f"{key}[{i}].content")})
    return out


def _sharegpt(record: dict[str, Any]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for i, turn in enumerate(_turns(record, "conversations")):
        if not isinstance(turn, dict):
            raise _field_error(f"conversations[{i}]", f"expected an object, got {type_name(turn)}")
        speaker = turn.get("from", _MISSING)
        if speaker is _MISSING:
            raise _field_error(f"conversations[{i}].from", "missing")
        role = _FROM_ROLE.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise _field_error(
                f"conversations[{i}].from", f"must be 'human', 'gpt' or 'system'; got {speaker!r}"
            )
        content = _content(turn.get("value", _MISSING), f"conversations[{i}].value")
        out.append({"role": role, "content": content})
    return out


def _optional_str(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if value is None:  # absent, or null in a Parquet column
        return ""
    if not isinstance(value, str):
        raise _field_error(key, f"expected a string, got {type_name(value)}")
    return value


def _alpaca(record: dict[str, Any]) -> list[dict[str, str]]:
    if "instruction" not in record:
        raise _field_error("instruction", "missing")
    instruction = record["instruction"]
    if not isinstance(instruction, str):
        raise _field_error("instruction", f"expected a string, got {type_name(instruction)}")
    inp = _optional_str(record, "input")
    output = _optional_str(record, "output")
    system = _optional_str(record, "system")
    user = instruction
    if inp.strip():
        user = f"{instruction}\n\n{inp}" if instruction.strip() else inp
    out = [{"role": "system", "content": system}] if system else []
    out.append({"role": "user", "content": user})
    if output:
        out.append({"role": "assistant", "content": output})
    return out


def _required_str(record: dict[str, Any], key: str) -> str:
    value = record.get(key, _MISSING)
    if value is _MISSING or value is None:
        raise _field_error(key, "missing")
    if not isinstance(value, str):
        raise _field_error(key, f"expected a string, got {type_name(value)}")
    return value


def _qa(record: dict[str, Any]) -> list[dict[str, str]]:
    return [{"role": "user", "content": _required_str(record, "question")},
            {"role": "assistant", "content": _required_str(record, "answer")}]


def _prompt_completion(record: dict[str, Any]) -> list[dict[str, str]]:
    prompt = record.get("prompt", _MISSING)
    completion = record.get("completion", _MISSING)
    if completion is _MISSING or completion is None:
        # TRL's prompt-only records (preference data, GRPO prompts) hold no answer to learn from.
        raise _field_error("completion", "missing (a prompt-only record is not SFT data)")
    if isinstance(prompt, list):
        if not prompt:
            raise _field_error("prompt", "no turns")
        out = _check_messages(prompt, "prompt")
    else:
        out = [{"role": "user", "content": _required_str(record, "prompt")}]
    if isinstance(completion, list):
        if not completion:
            raise _field_error("completion", "no turns")
        turns = _check_messages(completion, "completion")
        for i, turn in enumerate(turns):
            if turn["role"] != "assistant":
                raise _field_error(f"completion[{i}].role", f"must be 'assistant'; got {turn['role']!r}")
        out.extend(turns)
    elif isinstance(completion, str):
        out.append({"role": "assistant", "content": completion})
    else:
        raise _field_error("completion", f"expected a string or a list of messages, got {type_name(completion)}")
    return out


def to_messages(
    record: dict[str, Any] | list[dict[str, Any]], fmt: str | None = None
) -> list[dict[str, str]]:
    """Convert an SFT record to the canonical messages list.

    Parameters
    ----------
    record : dict or list of dict
        A record in any of the forms of :data:`INPUT_FORMATS`, or already a messages list.
    fmt : {"messages", "sharegpt", "alpaca", "qa", "prompt_completion"} or None, default=None
        The record's form; None detects it with :func:`detect_format`.

    Returns
    -------
    list of dict
        New dicts ``{"role": "system"|"user"|"assistant", "content": str}`` (other keys of the turns
        are not copied). ShareGPT speakers map human→user, gpt→assistant, system→system.

    Raises
    ------
    DataError
        The record is malformed; the message and ``.field`` name the offending field, e.g.
        ``field "messages[2].role": must be one of ...``. A conversation whose turns are all blank
        is malformed too.

    Examples
    --------
    >>> to_messages({"instruction": "Add.", "input": "2+2", "output": "4"})
    [{'role': 'user', 'content': 'Add.\\n\\n2+2'}, {'role': 'assistant', 'content': '4'}]
    """
    if isinstance(record, list):
        if fmt not in (None, "messages"):
            raise ValueError(f"fmt={fmt!r} does not apply to a list; a list is a messages list.")
        if not record:
            raise _field_error("messages", "no turns")
        msgs, key = _check_messages(record), "messages"
    else:
        fmt = detect_format(record) if fmt is None else _check_fmt(fmt)
        if not isinstance(record, dict):
            raise DataError(f"expected an SFT record (an object), got {type_name(record)}")
        if fmt == "messages":
            msgs, key = _check_messages(_turns(record, "messages")), "messages"
        elif fmt == "sharegpt":
            msgs, key = _sharegpt(record), "conversations"
        elif fmt == "qa":
            msgs, key = _qa(record), "question"
        elif fmt == "prompt_completion":
            msgs, key = _prompt_completion(record), "prompt"
        else:
            msgs, key = _alpaca(record), "instruction"
    if not any(m["content"].strip() for m in msgs):
        raise _field_error(key, "every turn is empty")
    return msgs


def from_messages(messages: Sequence[dict[str, Any]], fmt: str) -> dict[str, Any]:
    """Build a record in form ``fmt`` from a messages list (the inverse of :func:`to_messages`).

    Parameters
    ----------
    messages : list of dict
        ``[{"role": ..., "content": ...}, ...]``.
    fmt : {"messages", "sharegpt", "alpaca", "qa", "prompt_completion"}
        Target form.

    Returns
    -------
    dict
        A new record; ``to_messages(from_messages(m, fmt)) == m`` for every valid ``m`` that ``fmt``
        can hold.

    Raises
    ------
    DataError
        ``messages`` is malformed, or ``fmt="alpaca"`` and it is not a single exchange: an optional
        system turn, one user turn and at most one assistant turn.
    ValueError
        ``fmt`` is not a known form.
    """
    fmt = _check_fmt(fmt)
    msgs = to_messages(list(messages))
    if fmt == "messages":
        return {"messages": msgs}
    if fmt == "sharegpt":
        return {"conversations": [{"from": _ROLE_FROM[m["role"]], "value": m["content"]} for m in msgs]}
    roles_all = [m["role"] for m in msgs]
    if fmt == "qa":
        if roles_all != ["user", "assistant"]:
            raise DataError(f"qa holds one user turn and one assistant turn; got roles {roles_all}",
                            field="messages")
        return {"question": msgs[0]["content"], "answer": msgs[1]["content"]}
    if fmt == "prompt_completion":
        if roles_all[-1] != "assistant" or len(msgs) < 2:
            raise DataError(f"prompt_completion needs a prompt and a final assistant turn; got roles {roles_all}",
                            field="messages")
        if roles_all == ["user", "assistant"]:
            return {"prompt": msgs[0]["content"], "completion": msgs[1]["content"]}
        return {"prompt": msgs[:-1], "completion": msgs[-1:]}  # TRL's conversational form
    system = msgs[0]["content"] if msgs[0]["role"] == "system" else None
    rest = msgs[1:] if system is not None else msgs
    roles = [m["role"] for m in rest]
    if roles not in (["user"], ["user", "assistant"]) or (len(rest) == 2 and not rest[1]["content"]):
        raise DataError(
            "alpaca holds one exchange (optional system turn, one user turn, one non-empty assistant "
            f"turn); got roles {[m['role'] for m in msgs]}: write multi-turn data as messages or sharegpt",
            field="messages",
        )
    out: dict[str, Any] = {}
    if system:
        out["system"] = system
    out["instruction"] = rest[0]["content"]
    out["input"] = ""
    out["output"] = rest[1]["content"] if len(rest) == 2 else ""
    return out


def render_text(record_or_messages: dict[str, Any] | list[dict[str, Any]]) -> str:
    """The text of a conversation as NovelSum embeds it: every turn's content joined by ``"\\n"``.

    System turns are included; roles are not written.

    Parameters
    ----------
    record_or_messages : dict or list of dict
        A record in any form (detected) or a messages list.

    Returns
    -------
    str

    Examples
    --------
    >>> render_text({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]})
    'Hi\\nHello'
    """
    return "\n".join(m["content"] for m in to_messages(record_or_messages))


def read_sft(
    path: str | os.PathLike[str], *, skip_invalid: bool = False, fmt: str | None = None, split: str | None = None
) -> SFTReadResult:
    """Read SFT records from a ``.jsonl``/``.ndjson``/``.json``/``.parquet`` file or a folder of them.

    Every record is validated with :func:`to_messages` but kept as the file's own dict, extra keys
    included. All records must share one form: ``fmt`` if given, else the form of the first valid
    record.

    Parameters
    ----------
    path : str or os.PathLike
        File or folder (read recursively in sorted order, hidden names skipped).
    skip_invalid : bool, default=False
        Drop invalid records (counted, first 100 messages kept) instead of raising.
    fmt : {"messages", "sharegpt", "alpaca", "qa", "prompt_completion"} or None, default=None
        Required form; None detects it.
    split : str or None, default=None
        Split of a Hugging Face folder (``save_to_disk`` DatasetDict, or Hub ``data/<split>-*.parquet``).

    Returns
    -------
    SFTReadResult
        ``records``, ``format``, ``skipped``, ``errors``, ``path``. Parquet rows come back with
        ``None`` for columns a row did not have.

    Raises
    ------
    DataError
        An invalid record (unless skipped), e.g. ``train.jsonl:7: field "conversations[1].value":
        missing``; a record in another form than the first (``mixed SFT formats``); no valid record.
    """
    want = None if fmt is None else _check_fmt(fmt)
    detect = want is None
    files = iter_files(Path(path), SFT_SUFFIXES, split=split)
    records: list[dict[str, Any]] = []
    skips = Skips(skip_invalid)
    first: str | None = None  # where the detected format came from
    for file in files:
        for loc, value in rows(file):
            try:
                if isinstance(value, DataError):
                    raise value
                try:
                    if not detect:
                        to_messages(value, want)
                    else:
                        got = detect_format(value)
                        if first is not None and got != want:
                            raise DataError(f"mixed SFT formats: this record is {got}, but {first} is {want}")
                        to_messages(value, got)
                        if first is None:
                            sep = " row " if loc.kind == "row" else ":"
                            want, first = got, f"{loc.path}{sep}{loc.line}"
                except DataError as exc:
                    raise error(loc, str(exc), exc.field, prefix=False) from None
            except DataError as exc:
                skips.add(exc)
                continue
            records.append(value)
    if not records:
        raise DataError(f"no valid SFT records{skips.first_error}", path=str(path))
    fmt_found = cast(str, want)
    return SFTReadResult(records=records, format=fmt_found, skipped=skips.count, errors=skips.errors,
                         path=str(path))


def _convert(record: Any, fmt: str) -> dict[str, Any]:
    if isinstance(record, list):
        return from_messages(record, fmt)
    src = detect_format(record)
    if src == fmt:
        to_messages(record, fmt)
        return record
    new = from_messages(to_messages(record, src), fmt)
    extras = {k: v for k, v in record.items() if k not in _FORMAT_KEYS[src]}
    clash = [k for k in extras if k in new]
    if clash:
        raise DataError(f"key {clash[0]!r} of the {src} record would be overwritten by the {fmt} form")
    new.update(extras)
    return new


def write_sft(path: str | os.PathLike[str], records: Iterable[Any], fmt: str) -> int:
    """Write SFT records in form ``fmt`` to ``.jsonl``/``.ndjson`` or ``.parquet``, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; the suffix picks the file type. Parent folders are created.
    records : iterable of (dict or list of dict)
        Records in any form (converted to ``fmt``; keys that are not part of their form, such as
        provenance, are kept) or messages lists. Records already in ``fmt`` are written unchanged.
    fmt : {"messages", "sharegpt", "alpaca", "qa", "prompt_completion"}
        Form to write.

    Returns
    -------
    int
        Number of records written.

    Raises
    ------
    DataError
        A record is malformed, cannot be held by ``fmt`` (multi-turn to alpaca), has an extra key
        that the converted form also uses, or cannot be serialised; the message names its 0-based
        index as ``records[i]``. Nothing is written then.
    ValueError
        Unknown ``fmt`` or suffix.
    """
    fmt = _check_fmt(fmt)
    target = Path(path)
    name = target.name.lower()
    if name.endswith((".jsonl", ".ndjson")):
        kind = "jsonl"
    elif name.endswith(".parquet"):
        kind = "parquet"
    else:
        raise ValueError(f"path={str(path)!r} must end in .jsonl, .ndjson or .parquet.")

    def converted() -> Iterable[tuple[int, dict[str, Any]]]:
        for i, record in enumerate(records):
            try:
                yield i, _convert(record, fmt)
            except DataError as exc:
                raise DataError(f"records[{i}]: {exc}", path=str(path), field=exc.field) from None

    if kind == "jsonl":
        n = 0
        with atomic_path(target) as tmp, open(tmp, "wb") as fh:
            for i, rec in converted():
                try:
                    line = json.dumps(rec, ensure_ascii=False, allow_nan=False)
                except (TypeError, ValueError) as exc:
                    msg = f"records[{i}]: cannot be written as JSON: {exc}"
                    raise DataError(msg, path=str(path)) from None
                fh.write(line.encode("utf-8") + b"\n")
                n += 1
        return n

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = [rec for _, rec in converted()]
    keys: dict[str, None] = {}
    for rec in out:
        keys.update(dict.fromkeys(rec))
    try:
        # Columns from the union of all keys (from_pylist would take the first row's keys only).
        table = pa.table({k: pa.array([rec.get(k) for rec in out]) for k in keys}) if keys else pa.table({})
        with atomic_path(target) as tmp:
            pq.write_table(table, tmp)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"cannot be written as Parquet: {exc}", path=str(path)) from None
    return len(out)
