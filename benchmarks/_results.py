"""The one writer of ``benchmarks/RESULTS.md``: each benchmark owns a marked section and rewrites only that."""

from __future__ import annotations

import os
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")

__all__ = ["RESULTS", "write_section"]


def write_section(name: str, text: str, path: Path = RESULTS) -> None:
    """Replace the section ``name`` of ``path`` (between its BEGIN/END markers) with ``text``, atomically.

    A section not there yet is appended. The file is written to a temporary name and renamed into place, so a
    benchmark killed mid-write never leaves a half-written RESULTS.md.
    """
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)
