"""The example corpus cut to a few documents per source, for tests that run the loop on a small mixed corpus."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def corpus_slice(path: Path, take: Mapping[str, int]) -> Path:
    """Write the first ``take[source]`` documents of each source of ``examples/corpus.jsonl`` to ``path``."""
    left = dict(take)
    picked = []
    for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines():
        row = json.loads(line)
        if left.get(row["source"], 0) > 0:
            left[row["source"]] -= 1
            picked.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in picked))
    return path
