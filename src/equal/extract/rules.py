"""Rule-based QA extraction for documents that already carry question–answer structure.

No LLM is involved: :class:`RuleExtractor` finds pairs in

* structured records: ``meta`` (or a JSON document) with ``question``/``answer``, ``problem``/``solution``,
  ``instruction``/``output``, or StackExchange-like ``title`` + ``body`` with an ``accepted_answer`` (or an
  ``answers`` list with an accepted flag);
* FAQ headings ending in ``?`` followed by their section: reST/setext titles underlined with ``===``,
  ``---``, ``~~~``... (Python's FAQ), Markdown ``#`` headings, and numbered headings as in the Debian FAQ
  text (``"3.1.2. Will there be ...?"`` over an indented answer);
* ``Q:``/``A:`` and ``Question:``/``Answer:`` lines;
* ``Problem``/``Exercise``/``Example`` blocks followed by ``Solution``/``Proof``/``Answer`` (math texts).

Its output has the same form as :class:`~equal.extract.llm_extractor.LLMExtractor`'s, with
``extractor="rules"``, ``model=""`` and ``prompt_version=RULES_VERSION``.
"""

from __future__ import annotations

import html
import json
import re
import textwrap
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from equal.data.qa import QAPair
from equal.extract.base import DocumentLike, ExtractionResult, chunk_of, count, per_doc_clusters
from equal.extract.parse import normalize_for_compare, parse_text_pairs, validate_pair

__all__ = [
    "RULES_VERSION",
    "RuleExtractor",
    "find_pairs",
    "pairs_from_headings",
    "pairs_from_mapping",
    "pairs_from_problems",
    "pairs_from_title",
]

RULES_VERSION = "rules-v1"

# ---------------------------------------------------------------------------------------------------
# Structured records


def _strip_html(text: str) -> str:
    if not re.search(r"</?(?:p|br|code|pre|a|em|strong|li|ul|ol|div|span|h\d|blockquote)\b", text, re.I):
        return text.strip()
    text = re.sub(r"<pre[^>]*>\s*<code[^>]*>(.*?)</code>\s*</pre>",
                  lambda m: "\n```\n" + m.group(1) + "\n```\n", text, flags=re.S | re.I)
    text = re.sub(r"<br\s*/?>", "\n", text, flags=re.I)
    text = re.sub(r"</(?:p|div|li|h\d|blockquote|ul|ol)>", "\n\n", text, flags=re.I)
    text = re.sub(r"<li[^>]*>", "- ", text, flags=re.I)
    text = re.sub(r"</?code[^>]*>", "`", text, flags=re.I)
    text = re.sub(r"<[^>]+>", "", text)
    text = html.unescape(text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _field_text(value: object) -> str:
    if isinstance(value, str):
        return _strip_html(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, Mapping):
        for key in ("body", "text", "content", "markdown", "answer"):
            if isinstance(value.get(key), str):
                return _strip_html(value[key])
    return ""


def _lower_keys(m: Mapping[Any, Any]) -> dict[str, Any]:
    return {k.lower(): v for k, v in m.items() if isinstance(k, str)}


def pairs_from_mapping(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Return the pair held by a structured record, or ``[]``.

    Recognised (keys case-insensitive): ``question`` + ``answer`` / ``accepted_answer``;
    ``problem`` + ``solution``; ``instruction`` (+ ``input``) + ``output``; ``title`` (+ ``body``) +
    ``accepted_answer`` or ``answers`` (a list of answers where one has ``is_accepted``/``accepted``
    true). Values may be strings (HTML is reduced to text) or objects with a ``body``/``text`` field.
    A question without an accepted answer yields nothing.
    """
    m = _lower_keys(record)
    question = ""
    for q_key, extra_key in (("question", None), ("problem", None), ("instruction", "input"),
                             ("title", "body")):
        if q_key in m:
            question = _field_text(m[q_key])
            if isinstance(m[q_key], Mapping):
                sub = _lower_keys(m[q_key])
                title, body = _field_text(sub.get("title")), _field_text(sub.get("body"))
                question = (title + "\n\n" + body).strip() if title else body
            extra = _field_text(m.get(extra_key)) if extra_key else ""
            if extra:
                question = (question + "\n\n" + extra).strip()
            if question:
                break
    if not question:
        return []
    answer = ""
    for a_key in ("accepted_answer", "answer", "solution", "output", "response"):
        if a_key in m:
            answer = _field_text(m[a_key])
            if answer:
                break
    if not answer and isinstance(m.get("answers"), list):
        for item in m["answers"]:
            if isinstance(item, Mapping):
                flags = _lower_keys(item)
                if flags.get("is_accepted") is True or flags.get("accepted") is True:
                    answer = _field_text(item)
                    break
    return [(question, answer)] if answer else []


# ---------------------------------------------------------------------------------------------------
# Headings

_ADORNMENT_RE = re.compile(r"^([=\-~^\"'`#*+_:.<>])\1{2,}[ \t]*$")
_ATX_RE = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_FENCE_RE = re.compile(r"^ {0,3}(```|~~~)")
_NUMBERED_RE = re.compile(r"^(\d+(?:\.\d+)*)\.?[ \t]+(\S.*)$")
_QUESTION_PREFIX_RE = re.compile(r"^(?:\*\*|__)?(?:Q(?:uestion)?[ \t]*\d*[ \t]*[:.)])[ \t]*", re.I)


def _clean_title(title: str) -> str:
    title = _clean_rest_inline(title.strip())
    title = _QUESTION_PREFIX_RE.sub("", title)
    title = re.sub(r"^(?:\*\*|__)(.*)(?:\*\*|__)$", r"\1", title)
    return title.strip()


def _is_question(title: str) -> bool:
    # "...?", "...?!" and a question followed by an exclamation ("How can I ...? I'd like to know!").
    title = title.rstrip(" *_\"')")
    return title.endswith("?") or (title.endswith("!") and "?" in title)


def _rest_sections(lines: list[str]) -> list[tuple[int, int, str]]:
    """(first line of the heading incl. overline, first body line, title) of reST/setext titles."""
    out = []
    for i in range(len(lines) - 1):
        title, under = lines[i], lines[i + 1]
        if not title.strip() or title[:1] in " \t" or _ADORNMENT_RE.match(title):
            continue
        if not _ADORNMENT_RE.match(under):
            continue
        char = under.strip()[0]
        # reST wants the underline at least as long as the title; Markdown setext (= and -) does not.
        if len(under.rstrip()) < len(title.rstrip()) and char not in "=-":
            continue
        above = lines[i - 1] if i > 0 else ""
        overline = bool(above.strip()) and _ADORNMENT_RE.match(above) is not None and above.strip()[0] == char
        if above.strip() and not overline:
            continue  # a line inside a paragraph followed by a rule is not a title
        out.append((i - 1 if overline else i, i + 2, title.strip()))
    return out


def _atx_sections(lines: list[str]) -> list[tuple[int, int, str, int]]:
    out = []
    fence: str | None = None
    for i, line in enumerate(lines):
        f = _FENCE_RE.match(line)
        if f:
            fence = None if fence == f.group(1) else (fence or f.group(1))
            continue
        if fence:
            continue
        m = _ATX_RE.match(line)
        if m:
            out.append((i, i + 1, m.group(2).strip(), len(m.group(1))))
    return out


_REST_ROLE_RE = re.compile(r":(?:[\w-]+:)+`([^`]+)`")
_REST_LINK_RE = re.compile(r"`([^`<]+?)\s*<([^>]+)>`__?")
_REST_REF_RE = re.compile(r"`([^`]+)`__?")
_REST_DIRECTIVE_RE = re.compile(r"^\s*\.\.\s+[\w:-]+::.*$")
_REST_COMMENT_RE = re.compile(r"^(\s*)\.\.(?:\s+(?![\w:-]+::)(?!_)(?!\[)(?!\|).*)?$")


def _role_text(m: re.Match[str]) -> str:
    inner = m.group(1)
    label = re.match(r"^(.*?)\s*<[^>]*>$", inner, re.S)
    if label and label.group(1):
        return label.group(1)
    inner = inner.lstrip("!")
    if inner.startswith("~"):
        inner = inner[1:].rsplit(".", 1)[-1]
    return inner


def _clean_rest_inline(text: str) -> str:
    text = _REST_ROLE_RE.sub(_role_text, text)
    text = _REST_LINK_RE.sub(lambda m: f"{m.group(1)} ({m.group(2)})", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    text = re.sub(r"(?<![`\w])`([^`]+)`__?", r"\1", text)
    return text


def _clean_rest_body(lines: list[str]) -> str:
    kept: list[str] = []
    skip_indent: int | None = None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            # A reST comment swallows the blank and more-indented lines that follow it.
            if not line.strip() or indent > skip_indent:
                continue
            skip_indent = None
        if _REST_DIRECTIVE_RE.match(line):
            continue
        c = _REST_COMMENT_RE.match(line)
        if c:
            skip_indent = len(c.group(1))
            continue
        if line.strip() == "::":
            continue
        if line.rstrip().endswith("::"):
            line = line.rstrip()[:-2].rstrip() + ":" if line.rstrip()[:-2].strip() else ""
        kept.append(line)
    text = _clean_rest_inline("\n".join(kept))
    text = textwrap.dedent(text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _numbered_sections(lines: list[str]) -> list[tuple[str, str]]:
    """Debian-FAQ style: a numbered title at column 0 (wrapped over several lines), then its body."""
    out = []
    n = len(lines)
    i = 0
    while i < n:
        m = _NUMBERED_RE.match(lines[i])
        if not m:
            i += 1
            continue
        title_parts = [m.group(2).strip()]
        j = i + 1
        while j < n and lines[j].strip() and lines[j][:1] not in " \t" and not _NUMBERED_RE.match(lines[j]):
            title_parts.append(lines[j].strip())
            j += 1
        title = " ".join(title_parts)
        if not _is_question(title):
            i = j
            continue
        k = j
        while k < n and not lines[k].strip():
            k += 1
        body: list[str] = []
        if k < n and lines[k][:1] in " \t":
            # Indented body: it runs until the next line at column 0.
            while k < n and (not lines[k].strip() or lines[k][:1] in " \t"):
                body.append(lines[k])
                k += 1
        else:
            while k < n:
                nm = _NUMBERED_RE.match(lines[k])
                if nm and _is_question(nm.group(2)):
                    break
                body.append(lines[k])
                k += 1
        answer = re.sub(r"\n{3,}", "\n\n", textwrap.dedent("\n".join(body))).strip()
        out.append((_clean_title(title), answer))
        i = max(k, j)
    return out


def pairs_from_headings(text: str) -> list[tuple[str, str]]:
    """Return ``(heading, section body)`` for every heading that ends in ``?``.

    Three heading styles are read: reST/setext titles (a title line over an adornment line of ``=``,
    ``-``, ``~``, ``^``... and an optional matching overline; the section runs to the next title),
    Markdown ``#`` headings outside code fences (the section runs to the next heading of the same or a
    higher level), and numbered headings at column 0 (``"3.1. Which ...?"``, possibly wrapped over
    several lines; an indented body runs to the next line at column 0, an unindented one to the next
    numbered question). reST markup in titles and bodies is reduced to plain text (roles, literals,
    links, comments, directive lines).
    """
    text = text.replace("\u00a0", " ").replace("\r\n", "\n")
    lines = text.split("\n")
    pairs: list[tuple[str, str]] = []
    rest = _rest_sections(lines)
    for idx, (_start, body_start, title) in enumerate(rest):
        if _is_question(title):
            end = rest[idx + 1][0] if idx + 1 < len(rest) else len(lines)
            pairs.append((_clean_title(title), _clean_rest_body(lines[body_start:end])))
    atx = _atx_sections(lines)
    for idx, (_start, body_start, title, level) in enumerate(atx):
        if _is_question(title):
            end = next((s for s, _b, _t, lv in atx[idx + 1 :] if lv <= level), len(lines))
            pairs.append((_clean_title(title), "\n".join(lines[body_start:end]).strip()))
    pairs.extend(_numbered_sections(lines))
    return pairs


# ---------------------------------------------------------------------------------------------------
# Problem / Solution blocks

_BLOCK_RE = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*|__)?(?P<kind>problem|exercise|example|solution|proof|answer)\b"
    r"(?:[ \t]+(?P<num>\d+(?:\.\d+)*[a-z]?))?[ \t]*(?:\*\*|__)?[ \t]*(?P<sep>[:.)])?(?:[ \t]*(?:\*\*|__))?",
    re.I | re.M,
)
_PROBLEM_KINDS = ("problem", "exercise", "example")


def pairs_from_problems(text: str) -> list[tuple[str, str]]:
    """Return ``(problem, solution)`` pairs from ``Problem``/``Exercise``/``Example`` blocks.

    A block starts at a line beginning ``Problem 3.``, ``Exercise 2.1:``, ``**Example 4.**`` or
    ``Problem:`` (a number or a ``:``/``.`` is required, so ``"Example usage"`` is not a block) and is
    answered by the next ``Solution.``, ``Proof.`` or ``Answer:`` line before another problem starts;
    the solution runs to the next problem or the end of the text. Problems without a solution are
    skipped.
    """
    marks = []
    for m in _BLOCK_RE.finditer(text):
        kind = m.group("kind").lower()
        sep = m.group("sep")
        if kind in _PROBLEM_KINDS:
            if not (m.group("num") or sep in (":", ".")):
                continue
        elif sep not in (":", "."):
            continue
        marks.append((m.start(), m.end(), "P" if kind in _PROBLEM_KINDS else "S"))
    pairs = []
    for idx, (_s, end, kind) in enumerate(marks):
        if kind != "P":
            continue
        nxt = marks[idx + 1] if idx + 1 < len(marks) else None
        if nxt is None or nxt[2] != "S":
            continue
        stop = next((s for s, _e, k in marks[idx + 2 :] if k == "P"), len(text))
        problem = text[end : nxt[0]].strip()
        solution = text[nxt[1] : stop].strip()
        if problem and solution:
            pairs.append((problem, solution))
    return pairs


# ---------------------------------------------------------------------------------------------------


def pairs_from_title(text: str) -> list[tuple[str, str]]:
    """Return ``[(title, body)]`` when the document opens with a one-line question as its title.

    Corpora built from FAQ pages often keep one question per document with the markup stripped
    (``"How do I read a file?\n\nUse open() ..."``): the first paragraph is a single line of at most
    200 characters ending in ``?`` (or ``?!``) and the rest of the document answers it.
    """
    head, sep, body = text.strip().partition("\n\n")
    head = head.strip()
    if not sep or "\n" in head or len(head) > 200 or not _is_question(head) or not body.strip():
        return []
    return [(_clean_title(head), body.strip())]


def find_pairs(text: str, meta: Mapping[str, Any] | None = None) -> list[tuple[str, str]]:
    """Return every ``(question, answer)`` pair the rules find in one document.

    A structured record (``meta``, then the text itself when it is a JSON object) wins outright.
    Otherwise the text-structure rules all run (headings, ``Q:``/``A:`` lines, problem/solution
    blocks) and their pairs are merged in that order, one pair per question (compared after
    lowercasing and removing punctuation), preferring a pair with an answer.
    """
    if meta:
        found = pairs_from_mapping(meta)
        if found:
            return found
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            record = json.loads(stripped)
        except ValueError:
            record = None
        if isinstance(record, Mapping):
            return pairs_from_mapping(record)
    merged: dict[str, tuple[str, str]] = {}
    found = [*pairs_from_headings(text), *parse_text_pairs(text), *pairs_from_problems(text)]
    for q, a in found or pairs_from_title(text):
        key = normalize_for_compare(q)
        if key not in merged or (not merged[key][1].strip() and a.strip()):
            merged[key] = (q, a)
    return list(merged.values())


class RuleExtractor:
    """Extract QA pairs that documents already contain, without an LLM (see :func:`find_pairs`).

    Parameters
    ----------
    min_chars : int, default=8
        Shortest question kept.
    max_chars : int, default=8000
        Longest question or answer kept (FAQ answers can be long).
    max_pairs : int or None, default=None
        Most pairs kept per document (None: all).
    """

    def __init__(self, *, min_chars: int = 8, max_chars: int = 8000, max_pairs: int | None = None) -> None:
        if min_chars < 0:
            raise ValueError(f"min_chars={min_chars} must be >= 0.")
        if max_chars < max(min_chars, 1):
            raise ValueError(f"max_chars={max_chars} must be >= max(min_chars={min_chars}, 1).")
        if max_pairs is not None and max_pairs < 1:
            raise ValueError(f"max_pairs={max_pairs} must be >= 1 or None.")
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.max_pairs = max_pairs

    def extract(
        self, docs: Sequence[DocumentLike], *, cluster: int | Sequence[int] = -1, round: int = -1
    ) -> ExtractionResult:
        """Extract pairs from ``docs`` (same interface as :meth:`LLMExtractor.extract`).

        Documents in which no rule finds a pair count once under ``drops["no_pairs_parsed"]``; pairs the
        rules find but validation rejects count under their reason. ``completions`` and
        ``failed_docs`` are always empty.
        """
        docs = list(docs)
        clusters = per_doc_clusters(cluster, len(docs))
        drops: Counter[str] = Counter()
        pairs: list[QAPair] = []
        for doc, c in zip(docs, clusters, strict=True):
            found = find_pairs(doc.text, getattr(doc, "meta", None))
            if not found:
                count(drops, "no_pairs_parsed")
                continue
            kept = 0
            for question, answer in found:
                reason = validate_pair(question, answer, min_chars=self.min_chars, max_chars=self.max_chars)
                if reason is None and self.max_pairs is not None and kept >= self.max_pairs:
                    reason = "over_max_pairs"
                if reason is not None:
                    count(drops, reason)
                    continue
                kept += 1
                pairs.append(QAPair(
                    question=question.strip(), answer=answer.strip(), doc_id=str(doc.id), chunk=chunk_of(doc),
                    cluster=c, round=int(round), model="", prompt_version=RULES_VERSION, extractor="rules",
                ))
        return ExtractionResult(pairs=pairs, completions=[], drops=dict(drops), failed_docs=[])
