"""Crash-safe file helpers of equal.data.io."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from equal.data import (
    append_jsonl,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    iter_jsonl,
    load_npy,
    read_jsonl,
    save_npy,
)
from equal.errors import DataError


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_writes_leave_only_the_target(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "b.txt", "héllo\n")
    atomic_write_json(tmp_path / "c.json", {"b": 1, "a": [1, 2], "é": "ü"}, sort_keys=True)
    save_npy(tmp_path / "d.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    assert _names(tmp_path) == ["a.bin", "b.txt", "c.json", "d.npy"]
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_bytes() == "héllo\n".encode()
    text = (tmp_path / "c.json").read_text(encoding="utf-8")
    assert text == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1,\n  "é": "ü"\n}\n'


def test_atomic_write_replaces_and_creates_parents(tmp_path: Path) -> None:
    target = tmp_path / "x" / "y" / "f.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert _names(target.parent) == ["f.txt"]


def test_atomic_write_respects_umask(tmp_path: Path) -> None:
    # A temp file from mkstemp would be 0o600; artifacts should look like plain open() output.
    target = tmp_path / "f.txt"
    atomic_write_text(target, "x")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_failed_write_keeps_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"v": object()})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("writer crashed")
    assert json.loads(target.read_text()) == {"v": 1}
    assert _names(tmp_path) == ["f.json"]


def test_atomic_path_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "t.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and not tmp.exists()
        tmp.write_bytes(b"abc")
        assert not target.exists()
    assert target.read_bytes() == b"abc"
    assert _names(tmp_path) == ["t.bin"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_save_load_npy_roundtrip(tmp_path: Path, rng: np.random.Generator, dtype: type) -> None:
    arr = (rng.standard_normal((7, 5)) * 100).astype(dtype)
    path = tmp_path / "emb.npy"
    save_npy(path, arr)
    mapped = load_npy(path)
    assert isinstance(mapped, np.memmap)
    assert mapped.dtype == arr.dtype and mapped.shape == (7, 5)
    np.testing.assert_array_equal(mapped, arr)
    with pytest.raises(ValueError):
        mapped[0, 0] = 1  # read-only map
    loaded = load_npy(path, mmap=False)
    assert not isinstance(loaded, np.memmap)
    np.testing.assert_array_equal(loaded, arr)
    assert _names(tmp_path) == ["emb.npy"]


def test_save_npy_keeps_exact_name_and_refuses_objects(tmp_path: Path) -> None:
    save_npy(tmp_path / "emb.bin", np.zeros(3))
    assert _names(tmp_path) == ["emb.bin"]
    with pytest.raises(ValueError, match="object"):
        save_npy(tmp_path / "o.npy", np.array([{}, 1], dtype=object))


def test_append_and_read_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "log" / "qa.jsonl"
    assert append_jsonl(path, [{"a": 1}, {"b": "é"}]) == 2
    assert append_jsonl(path, iter([{"c": [1, 2]}])) == 1
    assert append_jsonl(path, []) == 0
    assert read_jsonl(path) == [{"a": 1}, {"b": "é"}, {"c": [1, 2]}]
    assert path.read_bytes().count(b"\n") == 3


def test_read_jsonl_ignores_truncated_last_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "rounds.jsonl"
    append_jsonl(path, [{"round": 0}, {"round": 1}])
    with open(path, "ab") as fh:
        fh.write(b'{"round": 2, "rew')  # the process died mid-append
    with caplog.at_level(logging.WARNING, logger="equal.data.io"):
        rows = read_jsonl(path)
    assert rows == [{"round": 0}, {"round": 1}]
    assert any("truncated" in r.getMessage() and "rounds.jsonl:3" in r.getMessage() for r in caplog.records)


def test_read_jsonl_truncated_inside_multibyte_char(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_bytes(b'{"q": "a"}\n{"q": "\xc3')
    assert read_jsonl(path) == [{"q": "a"}]


def test_read_jsonl_keeps_complete_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": 2}')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_read_jsonl_raises_on_corrupt_middle_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(DataError, match=r"x\.jsonl:2: malformed JSON") as info:
        read_jsonl(path)
    assert info.value.line == 2
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(DataError, match=r"x\.jsonl:2: invalid UTF-8"):
        list(iter_jsonl(path))


def test_append_after_crash_cuts_the_partial_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "qa.jsonl"
    append_jsonl(path, [{"i": 0}])
    with open(path, "ab") as fh:
        fh.write(b'{"i": 1, "te')
    with caplog.at_level(logging.WARNING, logger="equal.data.io"):
        append_jsonl(path, [{"i": 2}])
    assert read_jsonl(path) == [{"i": 0}, {"i": 2}]
    assert path.read_bytes() == b'{"i": 0}\n{"i": 2}\n'
    assert any("truncated" in r.getMessage() for r in caplog.records)


def test_append_terminates_complete_last_line(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_bytes(b'{"i": 0}')  # written by another tool without a final newline
    append_jsonl(path, [{"i": 1}])
    assert read_jsonl(path) == [{"i": 0}, {"i": 1}]


def test_append_cuts_partial_line_longer_than_a_block(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    append_jsonl(path, [{"i": 0}])
    with open(path, "ab") as fh:
        fh.write(b'{"t": "' + b"x" * 200_000)
    append_jsonl(path, [{"i": 1}])
    assert read_jsonl(path) == [{"i": 0}, {"i": 1}]
    # A file that is nothing but a partial line is emptied first.
    other = tmp_path / "b.jsonl"
    other.write_bytes(b'{"t": "' + b"y" * 70_000)
    append_jsonl(other, [{"i": 5}])
    assert other.read_bytes() == b'{"i": 5}\n'


def test_append_unserialisable_row_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    append_jsonl(path, [{"i": 0}])
    with pytest.raises(TypeError):
        append_jsonl(path, [{"i": 1}, {"i": object()}])
    with pytest.raises(ValueError):
        append_jsonl(path, [{"i": float("nan")}])
    assert read_jsonl(path) == [{"i": 0}]
    assert os.listdir(tmp_path) == ["qa.jsonl"]
