"""Tolerant parsing and validation of the QA pairs a model writes.

Small models rarely write clean JSON. :func:`parse_pairs` reads what they do write:

* JSON inside Markdown fences or bare, with prose before or after it;
* a JSON object wrapping the list (``{"pairs": [...]}``), or JSON-lines of objects;
* trailing commas, single quotes, unquoted keys, Python literals, missing commas between objects,
  unescaped quotes and raw newlines inside strings, LaTeX backslashes (``\\frac``) inside strings;
* output cut off by the token limit: every object completed before the cut is kept, the cut one is not;
* keys ``question/answer``, ``q/a``, ``instruction/output`` (plus ``input``), ``Question/Answer``,
  ``prompt/response``, ``problem/solution``;
* when no JSON pair is found, ``Q: ... A: ...`` / ``Question: ... Answer: ...`` text.

:func:`validate_pair` then says why a parsed pair must be dropped (or ``None`` to keep it), so the caller
can count drops by reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "DROP_REASONS",
    "normalize_for_compare",
    "parse_json_pairs",
    "parse_pairs",
    "parse_text_pairs",
    "validate_pair",
]

#: Every reason :func:`validate_pair` can return.
DROP_REASONS = (
    "empty_question",
    "empty_answer",
    "placeholder",
    "question_too_short",
    "question_too_long",
    "answer_too_long",
    "answer_repeats_question",
    "copies_prompt",
    "copies_document",
)

_QUESTION_KEYS = frozenset({"question", "q", "ques", "instruction", "query", "prompt", "problem", "user"})
_ANSWER_KEYS = frozenset(
    {"answer", "a", "ans", "output", "response", "solution", "completion", "reply", "assistant"}
)
_MAX_DEPTH = 40
_MAX_STARTS = 400

# JSON escapes that collide with LaTeX commands a model writes unescaped inside a string ("\frac",
# "\times", "\neq"): when the escape letter starts one of these words, the backslash is kept literally.
_LATEX_AFTER_ESCAPE = {
    "b": ("beta", "binom", "bar", "bmod", "big", "bf", "boxed", "begin", "bullet", "backslash", "bot"),
    "f": ("frac", "forall", "flat", "frown"),
    "n": ("neq", "nabla", "not", "nu", "nmid", "notin", "newline", "neg", "nleq", "ngeq"),
    "r": ("right", "rho", "rangle", "rfloor", "rceil", "rightarrow", "rm", "rbrace"),
    "t": ("times", "text", "textbf", "theta", "tau", "tan", "tfrac", "tilde", "to", "top", "triangle",
          "therefore", "textit", "tt"),
}
_SIMPLE_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r",
                   "t": "\t"}
_NUMBER_RE = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_IDENT_RE = re.compile(r"[A-Za-z_][\w\- ]*?(?=\s*[:=])")
_WORD_RE = re.compile(r"[A-Za-z]+")
_WS = " \t\r\n\u00a0"
# A known key right after a closing quote ('"Is 7 prime?" answer: ...'): the comma between was omitted.
_NEXT_KEY_RE = re.compile(
    r"""["']?(?:question|answer|q|a|instruction|input|output|response|problem|solution)["']?\s*:""", re.I
)


class _Incomplete(Exception):
    """The text ended inside a string or number (the model hit its token limit)."""


class _OpenDict(dict):  # type: ignore[type-arg]
    """An object the text ended inside (or that broke off): holds only its complete members."""


class _Lenient:
    """A forgiving recursive-descent reader of JSON-like text.

    ``value(i)`` returns ``(value, end, ok)``. Containers always return what they hold so far, so the
    complete members of a truncated or damaged list survive; a string or number cut by the end of the
    text is never returned (it could be the truncated half of an answer). ``ok`` is False when reading
    stopped early (end of text or a character that fits nowhere).
    """

    def __init__(self, text: str) -> None:
        self.s = text
        self.n = len(text)

    def skip(self, i: int, extra: str = "") -> int:
        s, n = self.s, self.n
        while i < n and (s[i] in _WS or s[i] in extra):
            i += 1
        return i

    def value(self, i: int, depth: int = 0) -> tuple[object, int, bool]:
        i = self.skip(i)
        if i >= self.n:
            raise _Incomplete
        c = self.s[i]
        if c == "{":
            return self.obj(i + 1, depth + 1)
        if c == "[":
            return self.arr(i + 1, depth + 1)
        if c in "\"'":
            text, end = self.string(i)
            return text, end, True
        m = _NUMBER_RE.match(self.s, i)
        if m:
            if m.end() >= self.n:
                raise _Incomplete
            return m.group(0), m.end(), True
        for word, val in (("true", True), ("false", False), ("null", None), ("True", True),
                          ("False", False), ("None", None)):
            if self.s.startswith(word, i):
                return val, i + len(word), True
            if self.n - i < len(word) and word.startswith(self.s[i:]):
                raise _Incomplete
        return None, i, False

    def obj(self, i: int, depth: int) -> tuple[object, int, bool]:
        out: dict[str, object] = _OpenDict()
        if depth > _MAX_DEPTH:
            return out, i, False
        while True:
            i = self.skip(i, ",")
            if i >= self.n:
                return out, i, False
            c = self.s[i]
            if c == "}":
                return dict(out), i + 1, True
            if c in "\"'":
                try:
                    key, i = self.string(i)
                except _Incomplete:
                    return out, self.n, False
            else:
                m = _IDENT_RE.match(self.s, i)
                if not m:
                    return out, i, False
                key, i = m.group(0).strip(), m.end()
            i = self.skip(i)
            if i >= self.n:
                return out, i, False
            if self.s[i] not in ":=":
                return out, i, False
            try:
                val, i, ok = self.value(i + 1, depth)
            except _Incomplete:
                return out, self.n, False
            if isinstance(val, (dict, list)) or ok:
                out[key] = val
            if not ok:
                return out, i, False

    def arr(self, i: int, depth: int) -> tuple[object, int, bool]:
        out: list[object] = []
        if depth > _MAX_DEPTH:
            return out, i, False
        while True:
            i = self.skip(i, ",")
            if i >= self.n:
                return out, i, False
            if self.s[i] == "]":
                return out, i + 1, True
            try:
                val, i, ok = self.value(i, depth)
            except _Incomplete:
                return out, self.n, False
            if isinstance(val, (dict, list)) or ok:
                out.append(val)
            if not ok:
                return out, i, False

    def _closes(self, j: int) -> bool:
        # A quote ends the string when what follows fits JSON (",:}]" or the end), a line break comes
        # first (a missing comma between lines), or a known key follows (a missing comma on one line).
        # Otherwise it is an unescaped quote inside the text.
        s, n = self.s, self.n
        newline = False
        while j < n and s[j] in _WS:
            newline = newline or s[j] == "\n"
            j += 1
        return j >= n or newline or s[j] in ",:}]" or _NEXT_KEY_RE.match(s, j) is not None

    def string(self, i: int) -> tuple[str, int]:
        s, n = self.s, self.n
        quote = s[i]
        i += 1
        parts: list[str] = []
        while True:
            if i >= n:
                raise _Incomplete
            c = s[i]
            if c == quote:
                if self._closes(i + 1):
                    return "".join(parts), i + 1
                parts.append(c)
                i += 1
            elif c == "\\":
                if i + 1 >= n:
                    raise _Incomplete
                e = s[i + 1]
                if e == "u":
                    code = s[i + 2 : i + 6]
                    if len(code) < 4:
                        raise _Incomplete
                    try:
                        point = int(code, 16)
                    except ValueError:
                        parts.append("\\u")
                        i += 2
                        continue
                    i += 6
                    if 0xD800 <= point < 0xDC00 and s.startswith("\\u", i):
                        # A UTF-16 surrogate pair (json.dumps writes emoji this way).
                        try:
                            low = int(s[i + 2 : i + 6], 16)
                        except ValueError:
                            low = -1
                        if 0xDC00 <= low < 0xE000:
                            point = 0x10000 + ((point - 0xD800) << 10) + (low - 0xDC00)
                            i += 6
                    parts.append(chr(point))
                    continue
                if e in _LATEX_AFTER_ESCAPE:
                    m = _WORD_RE.match(s, i + 1)
                    if m and m.group(0) in _LATEX_AFTER_ESCAPE[e]:
                        parts.append("\\" + m.group(0))
                        i = m.end()
                        continue
                if e in _SIMPLE_ESCAPES:
                    parts.append(_SIMPLE_ESCAPES[e])
                else:
                    # An unknown escape ("\(", "\sqrt") is LaTeX or a typo: keep it verbatim.
                    parts.append("\\" + e)
                i += 2
            else:
                parts.append(c)
                i += 1


def _norm_key(key: object) -> str:
    if not isinstance(key, str):
        return ""
    key = re.sub(r"[\s_\-]+", "", key.lower())
    return re.sub(r"\d+$", "", key)


def _as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(v.strip() for v in value).strip()
    return ""


def _collect(value: object, out: list[tuple[str, str]], depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, dict):
        keys = {_norm_key(k): k for k in value}
        q_key = next((keys[k] for k in keys if k in _QUESTION_KEYS), None)
        a_key = next((keys[k] for k in keys if k in _ANSWER_KEYS), None)
        # An object cut by the end of the output is a pair only if both of its strings were completed.
        complete = not isinstance(value, _OpenDict) or a_key is not None
        if q_key is not None and complete and isinstance(value[q_key], (str, list)):
            question = _as_text(value[q_key])
            extra = _as_text(value.get(keys["input"])) if "input" in keys else ""
            if extra:
                question = question + "\n\n" + extra
            answer = _as_text(value[a_key]) if a_key is not None else ""
            if question or answer:
                out.append((question, answer))
            return
        if q_key is None:
            for v in value.values():
                _collect(v, out, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _collect(v, out, depth + 1)


def parse_json_pairs(text: str) -> list[tuple[str, str]]:
    """Return the QA pairs found in JSON-like parts of ``text`` (see the module docstring).

    Every ``{`` or ``[`` is tried as the start of a value, left to right; a value that yields pairs is
    skipped over as a whole. Pairs with a question but no answer come back with ``answer == ""``.

    Parameters
    ----------
    text : str
        Raw model output.

    Returns
    -------
    list of (str, str)
        ``(question, answer)`` in order of appearance, stripped, exact repeats removed.
    """
    reader = _Lenient(text)
    pairs: list[tuple[str, str]] = []
    i = 0
    for _ in range(_MAX_STARTS):
        starts = [p for p in (text.find("{", i), text.find("[", i)) if p >= 0]
        if not starts:
            break
        j = min(starts)
        try:
            value, end, ok = reader.value(j)
        except _Incomplete:  # pragma: no cover - containers catch it themselves
            break
        found: list[tuple[str, str]] = []
        _collect(value, found)
        pairs.extend(found)
        # A complete value (or one that yielded pairs) is consumed whole; otherwise try the next bracket,
        # which may open the real JSON after a stray bracket in the prose.
        i = end if (found or ok) and end > j else j + 1
    return _unique(pairs)


# Line-start markers of text-form pairs: "Q:", "Q1:", "**Question 2:**", "1. Question:", "- A:", "### Answer".
_MARKER_RE = re.compile(
    r"^[ \t]*(?:[-*•>][ \t]*|\d+[.)][ \t]*|#{1,6}[ \t]*)?(?:\*\*|__)?"
    r"(?P<kind>Q(?:uestion)?|A(?:nswer)?)(?:[ \t]*#?[ \t]*\d+)?[ \t]*(?:\*\*|__)?"
    r"(?:[ \t]*[:：](?:[ \t]*(?:\*\*|__))?|[ \t]*$)",
    re.IGNORECASE | re.MULTILINE,
)
# "Q: What is 2 + 2? A: 4" on one line: an answer marker right after a question mark.
_INLINE_ANSWER_RE = re.compile(r"(?<=\?)[ \t]+(?=(?:\*\*)?A(?:nswer)?[ \t]*(?:\*\*)?[:：])", re.IGNORECASE)


def parse_text_pairs(text: str) -> list[tuple[str, str]]:
    """Return ``(question, answer)`` pairs written as ``Q: ... A: ...`` or ``Question: ... Answer: ...``.

    Markers must start a line (after optional list numbering, bullets, ``#`` or bold ``**``), except an
    answer marker directly after a question mark on the question's line. A question followed by another
    question (or by nothing) gets ``answer == ""``; an answer with no question before it is ignored.
    """
    text = _INLINE_ANSWER_RE.sub("\n", text)
    marks = [(m.start(), m.end(), m.group("kind")[0].upper()) for m in _MARKER_RE.finditer(text)]
    pairs: list[tuple[str, str]] = []
    pending: str | None = None
    for idx, (_start, end, kind) in enumerate(marks):
        stop = marks[idx + 1][0] if idx + 1 < len(marks) else len(text)
        body = _clean_segment(text[end:stop])
        if kind == "Q":
            if pending is not None:
                pairs.append((pending, ""))
            pending = body
        elif pending is not None:
            pairs.append((pending, body))
            pending = None
    if pending is not None:
        pairs.append((pending, ""))
    return _unique([(q, a) for q, a in pairs if q or a])


def _clean_segment(segment: str) -> str:
    segment = segment.strip()
    # Bold markers left dangling by the marker regex ("**Q:** text" leaves nothing, "Q: **text**" keeps
    # its pair), and a trailing horizontal rule between pairs.
    segment = re.sub(r"^(?:\*\*|__)\s*|\s*(?:\*\*|__)$", "", segment) if segment.count("**") % 2 else segment
    segment = re.sub(r"\n\s*(?:-{3,}|\*{3,}|_{3,})\s*$", "", segment)
    return segment.strip()


def _unique(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in pairs:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def parse_pairs(text: str | None, *, truncated: bool = False) -> list[tuple[str, str]]:
    """Parse a model's output into ``(question, answer)`` pairs, tolerating sloppy formats.

    JSON is tried first (:func:`parse_json_pairs`); when it yields nothing, the ``Q:``/``A:`` text form
    (:func:`parse_text_pairs`). Garbage gives ``[]``.

    Parameters
    ----------
    text : str or None
        Raw model output (None gives ``[]``).
    truncated : bool, default=False
        The output was cut by the token limit (``finish_reason == "length"``). JSON salvage already
        keeps only complete objects; for the text form the last pair is dropped, since its answer may
        be cut mid-sentence.

    Returns
    -------
    list of (str, str)
        Stripped pairs in order, exact repeats removed; an answer may be ``""`` (validation drops it).

    Examples
    --------
    >>> parse_pairs('```json\\n[{"question": "What is 2+2?", "answer": "4"},]\\n```')
    [('What is 2+2?', '4')]
    >>> parse_pairs("Q: Who wrote Hamlet?\\nA: Shakespeare.")
    [('Who wrote Hamlet?', 'Shakespeare.')]
    """
    if not text or not text.strip():
        return []
    pairs = parse_json_pairs(text)
    if pairs:
        return pairs
    pairs = parse_text_pairs(text)
    if truncated and pairs:
        pairs = pairs[:-1]
    return pairs


_NONWORD_RE = re.compile(r"[^\w\s]|_")
_PLACEHOLDER_RE = re.compile(
    r"^(?:(?:your|the|a|an|insert|example|sample|generated|write)\s+)*"
    r"(?:question|answer|response|output|n a|todo|tbd|xxx|lorem ipsum)"
    r"(?:\s*\d+)?(?:\s+(?:here|goes here|text))?$"
)
_BRACKETED_RE = re.compile(r"^\s*(?:<[^<>]*>|\[[^\[\]]*\]|\{[^{}]*\})\s*$")


def normalize_for_compare(text: str) -> str:
    """Lowercase, replace punctuation by spaces and collapse whitespace (for copy and equality checks)."""
    return " ".join(_NONWORD_RE.sub(" ", text.lower()).split())


def _is_placeholder(text: str) -> bool:
    if not any(ch.isalnum() for ch in text):
        return True  # "...", "?", "—"
    if _BRACKETED_RE.match(text):
        return True  # "<question>", "[answer]", "{question}"
    return bool(_PLACEHOLDER_RE.match(normalize_for_compare(text)))


def _prompt_sentences(prompt_text: str, min_words: int = 6) -> list[str]:
    pieces = re.split(r"[.!?;:\n]+", prompt_text)
    out = []
    for piece in pieces:
        norm = normalize_for_compare(piece)
        if len(norm.split()) >= min_words:
            out.append(norm)
    return out


def _copies_document(field: str, doc_text: str, *, ngram: int = 5, min_doc_words: int = 20,
                     coverage: float = 0.9) -> bool:
    doc_words = normalize_for_compare(doc_text).split()
    if len(doc_words) < min_doc_words:
        return False
    field_words = normalize_for_compare(field).split()
    if len(field_words) < coverage * len(doc_words):
        return False
    doc_grams = {tuple(doc_words[i : i + ngram]) for i in range(len(doc_words) - ngram + 1)}
    field_grams = {tuple(field_words[i : i + ngram]) for i in range(len(field_words) - ngram + 1)}
    return len(doc_grams & field_grams) >= coverage * len(doc_grams)


def validate_pair(
    question: str,
    answer: str,
    *,
    doc_text: str | None = None,
    prompt_text: str | None = None,
    min_chars: int = 8,
    max_chars: int = 4000,
) -> str | None:
    """Return why a pair must be dropped, or ``None`` to keep it.

    Checks, in order (the first failing one is returned; every reason is in :data:`DROP_REASONS`):

    ``empty_question`` / ``empty_answer``
        Nothing but whitespace.
    ``placeholder``
        Either side is a template placeholder rather than content: no letter or digit (``"..."``), a
        bracketed slot (``"<question>"``, ``"[answer]"``), or words like ``"question"``, ``"your answer
        here"``, ``"answer 1"``, ``"N/A"``.
    ``question_too_short``
        The question has fewer than ``min_chars`` characters. Answers have no minimum: ``"4"`` is a
        correct answer to an arithmetic question.
    ``question_too_long`` / ``answer_too_long``
        More than ``max_chars`` characters.
    ``answer_repeats_question``
        Question and answer are equal after lowercasing and removing punctuation.
    ``copies_prompt``
        Either side contains a sentence (6 or more words) of ``prompt_text``, the instructions given to
        the model without the document: the model echoed its instructions.
    ``copies_document``
        Either side reproduces the whole document: at least 90% of the document's word 5-grams and at
        least 90% of its length. Only checked for documents of 20 words or more, where a pair covering
        all of it is a copy rather than a short fact.

    Parameters
    ----------
    question, answer : str
        The pair.
    doc_text : str or None, default=None
        The document the model saw (None skips ``copies_document``).
    prompt_text : str or None, default=None
        The instructions without the document (None skips ``copies_prompt``); see
        :func:`equal.extract.prompts.extract_instructions`.
    min_chars : int, default=8
        Shortest question kept.
    max_chars : int, default=4000
        Longest question or answer kept.

    Returns
    -------
    str or None
        The reason, or None when the pair is kept.
    """
    if min_chars < 0:
        raise ValueError(f"min_chars={min_chars} must be >= 0.")
    if max_chars < max(min_chars, 1):
        raise ValueError(f"max_chars={max_chars} must be >= max(min_chars={min_chars}, 1).")
    q = question.strip()
    a = answer.strip()
    if not q:
        return "empty_question"
    if not a:
        return "empty_answer"
    if _is_placeholder(q) or _is_placeholder(a):
        return "placeholder"
    if len(q) < min_chars:
        return "question_too_short"
    if len(q) > max_chars:
        return "question_too_long"
    if len(a) > max_chars:
        return "answer_too_long"
    nq, na = normalize_for_compare(q), normalize_for_compare(a)
    if nq == na:
        return "answer_repeats_question"
    if prompt_text:
        for sentence in _prompt_sentences(prompt_text):
            if sentence in nq or sentence in na:
                return "copies_prompt"
    if doc_text and (_copies_document(q, doc_text) or _copies_document(a, doc_text)):
        return "copies_document"
    return None
