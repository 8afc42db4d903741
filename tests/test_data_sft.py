"""SFT formats of equal.data: detection, conversion, rendering, reading and writing."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from equal.data import (
    FORMATS,
    detect_format,
    from_messages,
    read_sft,
    render_text,
    to_messages,
    write_sft,
)
from equal.errors import DataError

MSGS = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ]
}
SHAREGPT = {
    "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "What is 2+2?"},
        {"from": "gpt", "value": "4"},
    ]
}
ALPACA = {"instruction": "Add the numbers.", "input": "2 and 2", "output": "4"}
MULTI_TURN = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Goodbye."},
]


def test_detect_format() -> None:
    assert detect_format(MSGS) == "messages"
    assert detect_format(SHAREGPT) == "sharegpt"
    assert detect_format(ALPACA) == "alpaca"
    assert detect_format({"instruction": "only a prompt"}) == "alpaca"
    assert detect_format({"prompt": "x", "completion": "y"}) == "prompt_completion"  # TRL
    with pytest.raises(DataError, match=r"not an SFT record.*'query'"):
        detect_format({"query": "x", "response": "y"})
    with pytest.raises(DataError, match="got list"):
        detect_format([1])  # type: ignore[arg-type]


def test_to_messages_each_format() -> None:
    assert to_messages(MSGS) == MSGS["messages"]
    assert to_messages(SHAREGPT) == MSGS["messages"]
    assert to_messages(ALPACA) == [
        {"role": "user", "content": "Add the numbers.\n\n2 and 2"},
        {"role": "assistant", "content": "4"},
    ]
    assert to_messages({"instruction": "Say hi.", "input": "", "output": "hi"})[0] == {
        "role": "user",
        "content": "Say hi.",
    }
    nulls = {"instruction": "Q?", "input": None, "output": None}  # nulls as a Parquet column gives them
    assert to_messages(nulls) == [{"role": "user", "content": "Q?"}]
    assert to_messages({**ALPACA, "system": "S"})[0] == {"role": "system", "content": "S"}
    # Turns keep only role and content; the input record is not modified.
    rec = {"messages": [{"role": "user", "content": "x", "name": "bob"}]}
    assert to_messages(rec) == [{"role": "user", "content": "x"}]
    assert rec["messages"][0]["name"] == "bob"
    content = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    parts = {"messages": [{"role": "user", "content": content}]}
    assert to_messages(parts) == [{"role": "user", "content": "a\nb"}]
    assert to_messages(MSGS["messages"]) == MSGS["messages"]


def test_to_messages_explicit_format() -> None:
    assert to_messages(SHAREGPT, "sharegpt") == MSGS["messages"]
    with pytest.raises(DataError, match='field "messages": missing'):
        to_messages(SHAREGPT, "messages")
    with pytest.raises(ValueError, match="fmt='chatml'"):
        to_messages(SHAREGPT, "chatml")


@pytest.mark.parametrize(
    ("record", "field", "needle"),
    [
        ({"messages": "hi"}, "messages", "expected a list of turns, got str"),
        ({"messages": []}, "messages", "no turns"),
        ({"messages": ["hi"]}, "messages[0]", "expected an object, got str"),
        ({"messages": [{"content": "x"}]}, "messages[0].role", "missing"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role", "got 'bot'"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "missing"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "got int"),
        ({"messages": [{"role": "user", "content": " "}]}, "messages", "every turn is empty"),
        ({"conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]},
         "conversations[1].from", "got 'robot'"),
        ({"conversations": [{"from": "human"}]}, "conversations[0].value", "missing"),
        ({"instruction": 3, "output": "x"}, "instruction", "expected a string, got int"),
        ({"instruction": "x", "input": ["a"]}, "input", "got list"),
        ({"instruction": "", "output": ""}, "instruction", "every turn is empty"),
    ],
)
def test_to_messages_errors_name_the_field(record: dict, field: str, needle: str) -> None:
    with pytest.raises(DataError) as info:
        to_messages(record)
    assert info.value.field == field
    assert str(info.value).startswith(f'field "{field}": ')
    assert needle in str(info.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_through_every_format(fmt: str) -> None:
    single = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]
    for msgs in (single, MSGS["messages"], [{"role": "user", "content": "prompt only"}]):
        assert to_messages(from_messages(msgs, fmt)) == msgs
    if fmt != "alpaca":
        assert to_messages(from_messages(MULTI_TURN, fmt)) == MULTI_TURN


def test_from_messages_shapes() -> None:
    assert from_messages(MSGS["messages"], "sharegpt") == SHAREGPT
    assert from_messages(MSGS["messages"], "messages") == MSGS
    assert from_messages(MSGS["messages"], "alpaca") == {
        "system": "Be brief.",
        "instruction": "What is 2+2?",
        "input": "",
        "output": "4",
    }
    # Alpaca -> messages -> alpaca folds input into instruction but keeps the conversation.
    back = from_messages(to_messages(ALPACA), "alpaca")
    assert back == {"instruction": "Add the numbers.\n\n2 and 2", "input": "", "output": "4"}
    assert to_messages(back) == to_messages(ALPACA)
    no_input = {"instruction": "Say hi.", "input": "", "output": "hi"}
    assert from_messages(to_messages(no_input), "alpaca") == no_input


def test_sharegpt_alpaca_sharegpt_cycle() -> None:
    sg = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    alp = from_messages(to_messages(sg), "alpaca")
    assert from_messages(to_messages(alp), "sharegpt") == sg
    assert from_messages(to_messages({"conversations": [{"from": "user", "value": "Q"}]}), "sharegpt") == {
        "conversations": [{"from": "human", "value": "Q"}]
    }


def test_from_messages_alpaca_refuses_multi_turn() -> None:
    with pytest.raises(DataError, match="alpaca holds one exchange"):
        from_messages(MULTI_TURN, "alpaca")
    with pytest.raises(DataError, match="alpaca holds one exchange"):
        from_messages([{"role": "assistant", "content": "A"}], "alpaca")
    with pytest.raises(ValueError, match="fmt="):
        from_messages(MULTI_TURN, "openai")


def test_render_text() -> None:
    assert render_text(MSGS) == "Be brief.\nWhat is 2+2?\n4"
    assert render_text(SHAREGPT) == "Be brief.\nWhat is 2+2?\n4"
    assert render_text(ALPACA) == "Add the numbers.\n\n2 and 2\n4"
    assert render_text(MULTI_TURN) == "Hi\nHello!\nBye\nGoodbye."


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(("record", "fmt"), [(MSGS, "messages"), (SHAREGPT, "sharegpt"), (ALPACA, "alpaca")])
def test_read_sft_jsonl_json_parquet(tmp_path: Path, record: dict, fmt: str) -> None:
    rows = [{**record, "id": i} for i in range(3)]
    jl = _write_jsonl(tmp_path / "d.jsonl", rows)
    js = tmp_path / "d.json"
    js.write_text(json.dumps(rows), encoding="utf-8")
    pqf = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), pqf)
    for path in (jl, js, pqf):
        res = read_sft(path)
        assert res.format == fmt and res.skipped == 0 and res.path == str(path)
        assert res.records == rows  # the user's own dicts, extra keys kept


def test_read_sft_errors_name_file_line_and_field(tmp_path: Path) -> None:
    rows = [
        MSGS,
        {"messages": [{"role": "user", "content": 3}]},
        SHAREGPT,
        {"foo": 1},
    ]
    path = _write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError) as info:
        read_sft(path)
    assert str(info.value).startswith(f'{path}:2: field "messages[0].content": expected a string')
    assert info.value.line == 2 and info.value.field == "messages[0].content"
    res = read_sft(path, skip_invalid=True)
    assert res.records == [MSGS] and res.format == "messages" and res.skipped == 3
    assert res.errors[1] == f"{path}:3: mixed SFT formats: this record is sharegpt, but {path}:1 is messages"
    assert res.errors[2].startswith(f"{path}:4: not an SFT record")


def test_read_sft_format_from_first_valid_row_and_explicit_fmt(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "t.jsonl", [{"conversations": []}, ALPACA, ALPACA])
    res = read_sft(path, skip_invalid=True)
    assert res.format == "alpaca" and res.skipped == 1 and len(res.records) == 2
    with pytest.raises(DataError, match=r't\.jsonl:1: field "messages": missing'):
        read_sft(path, fmt="messages", skip_invalid=False)
    assert read_sft(path, fmt="alpaca", skip_invalid=True).skipped == 1
    with pytest.raises(DataError, match="no valid SFT records"):
        read_sft(path, fmt="messages", skip_invalid=True)


def test_read_sft_parquet_row_and_bad_utf8(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"instruction": ["a", None], "output": ["x", "y"]}), path)
    expected = r'd\.parquet: row 2: field "instruction": expected a string, got null'
    with pytest.raises(DataError, match=expected):
        read_sft(path)
    bad = tmp_path / "b.jsonl"
    bad.write_bytes(b'{"instruction": "ok", "output": "x"}\n{"instruction": "\xff", "output": "x"}\n')
    with pytest.raises(DataError, match=r'b\.jsonl:2: field "instruction": invalid UTF-8'):
        read_sft(bad)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_write_then_read_sft(tmp_path: Path, suffix: str, fmt: str) -> None:
    records = [
        {**MSGS, "doc_id": "d1", "round": 0},
        {**SHAREGPT, "doc_id": "d2", "round": 1},
        {**ALPACA, "doc_id": "d3", "round": 2},
        [{"role": "user", "content": "Plain list?"}, {"role": "assistant", "content": "Yes."}],
    ]
    path = tmp_path / f"out{suffix}"
    assert write_sft(path, records, fmt) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    res = read_sft(path)
    assert res.format == fmt
    for original, written in zip(records, res.records, strict=True):
        assert to_messages(written) == to_messages(original)
        if isinstance(original, dict):
            assert written["doc_id"] == original["doc_id"] and written["round"] == original["round"]
    if suffix == ".jsonl":
        # Records already in the target form are written unchanged.
        same = {"messages": MSGS, "sharegpt": SHAREGPT, "alpaca": ALPACA}[fmt]
        idx = {"messages": 0, "sharegpt": 1, "alpaca": 2}[fmt]
        assert res.records[idx] == {**same, "doc_id": f"d{idx + 1}", "round": idx}


def test_write_sft_errors_leave_no_file(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    with pytest.raises(DataError, match=r"records\[1\]: alpaca holds one exchange"):
        write_sft(path, [MSGS, {"messages": MULTI_TURN}], "alpaca")
    with pytest.raises(DataError, match=r"records\[0\]: key 'conversations'"):
        write_sft(path, [{**MSGS, "conversations": "provenance clash"}], "sharegpt")
    with pytest.raises(DataError, match=r"records\[0\]: cannot be written as JSON"):
        write_sft(path, [{**MSGS, "x": object()}], "messages")
    with pytest.raises(ValueError, match="must end in"):
        write_sft(tmp_path / "o.csv", [MSGS], "messages")
    with pytest.raises(ValueError, match="fmt="):
        write_sft(path, [MSGS], "chatml")
    assert list(tmp_path.iterdir()) == []


def test_write_sft_keeps_old_file_on_error(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    write_sft(path, [MSGS], "messages")
    before = path.read_bytes()
    with pytest.raises(DataError):
        write_sft(path, [MSGS, {"bad": 1}], "messages")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["o.jsonl"]
