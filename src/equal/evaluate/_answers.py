"""Final-answer extraction from a worked solution, and equivalence checked with Hugging Face's math-verify.

:func:`extract_answer` tries, in order (each the *last* occurrence in the text, since worked solutions
restate intermediate values before the result):

1. ``#### x`` (GSM8K's answer line): the rest of that line;
2. ``\\boxed{x}`` / ``\\fbox{x}`` (MATH and most reasoning models), with nested braces;
3. "the (final) answer is x" / "Answer: x": up to the end of that line, a trailing period dropped;
4. the last number in the text (integers, decimals, thousands separators, fractions ``a/b``, a sign).

It returns the answer text lightly cleaned (surrounding ``$...$``, a currency ``$``, thousands separators
and a trailing period removed) or ``None`` when none of the four matches. :func:`answers_match` parses
both sides with ``math_verify.parse`` and compares them with ``math_verify.verify`` (symbolic and numeric
equivalence: ``\\frac{1}{2}`` equals ``0.5``, ``70`` equals ``70.0``), falling back to comparing the
cleaned strings when math-verify finds no expression in either side.
"""

from __future__ import annotations

import re
import threading
from typing import Any

__all__ = ["answers_match", "extract_answer", "normalize_answer"]

_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(
    r"(?:\bfinal answer\b|\bthe answer\b|\banswer\b)[ \t]*(?:is\b|:|=)[ \t]*:?[ \t]*([^\n]+)", re.IGNORECASE
)
# A number: optional sign, digits with optional thousands separators, optional decimals; or a fraction a/b.
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?(?![\d])|(?<![\w.])-?\.\d+")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_BOXED = ("\\boxed{", "\\fbox{")


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces), or None."""
    start = max(text.rfind(tag) for tag in _BOXED)
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None  # unbalanced: the generation was cut off inside the box


def normalize_answer(answer: str) -> str:
    """Clean an extracted answer: strip, outer ``$...$``, currency ``$``, thousands commas, end period.

    Examples
    --------
    >>> normalize_answer(" $1,234$. ")
    '1234'
    >>> normalize_answer("\\\\$5")
    '5'
    """
    s = answer.strip()
    for _ in range(3):  # "$\\$5$." needs several passes
        before = s
        s = s.strip().rstrip(".").strip()
        if len(s) >= 2 and s.startswith("$") and s.endswith("$"):
            s = s.strip("$").strip()
        if s.startswith("\\$"):
            s = s[2:].strip()
        elif s.startswith("$") and s[1:2].isdigit():
            s = s[1:]
        if s.startswith("**") and s.endswith("**"):  # markdown bold around the answer
            s = s[2:-2].strip()
        if s == before:
            break
    return _THOUSANDS.sub("", s)


def extract_answer(text: str | None) -> str | None:
    """The final answer of a worked solution (see the module docstring for the rules), or None.

    Parameters
    ----------
    text : str or None
        A model generation or a reference solution.

    Returns
    -------
    str or None
        The cleaned answer text; None when ``text`` is None or holds no answer and no number.

    Examples
    --------
    >>> extract_answer("3 + 4 = 7 apples\\n#### 1,234")
    '1234'
    >>> extract_answer("so $x = \\\\boxed{\\\\frac{1}{2}}$")
    '\\\\frac{1}{2}'
    >>> extract_answer("The answer is $42$.")
    '42'
    >>> extract_answer("Then 3 more, 10 in all")
    '10'
    """
    if not text:
        return None
    hashes = _HASHES.findall(text)
    for cand in reversed(hashes):
        if cand.strip():
            return normalize_answer(cand)
    boxed = _last_boxed(text)
    if boxed is not None and boxed.strip():
        return normalize_answer(boxed)
    said = _ANSWER_IS.findall(text)
    if said:
        cand = said[-1]
        inner = _last_boxed(cand)
        value = normalize_answer(inner if inner is not None else cand)
        if value:
            return value
    numbers = _NUMBER.findall(text)
    if numbers:
        return normalize_answer(re.sub(r"\s+", "", numbers[-1]))
    return None


def _parse(s: str) -> list[Any]:
    from math_verify import parse

    # math-verify times out with signal.alarm, which only works in the main thread.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    parsed = parse(s, parsing_timeout=timeout)  # type: ignore[arg-type]
    if not parsed:
        # Plain parsing misses some LaTeX-only forms ("\\text{(A)}"); retry inside math delimiters.
        parsed = parse(f"${s}$", parsing_timeout=timeout)  # type: ignore[arg-type]
    return list(parsed)


def answers_match(predicted: str | None, gold: str | None) -> bool:
    """Whether two final answers are equivalent, by ``math_verify.verify`` (gold first).

    Parameters
    ----------
    predicted, gold : str or None
        Extracted answers (see :func:`extract_answer`); None never matches.

    Returns
    -------
    bool
        math-verify's verdict when it parses both sides; otherwise whether the cleaned strings are equal
        (case-insensitive).
    """
    if predicted is None or gold is None:
        return False
    p, g = normalize_answer(predicted), normalize_answer(gold)
    if not p or not g:
        return False
    try:
        from math_verify import verify
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("exact-match evaluation needs math-verify: pip install 'equal[evaluate]'") from exc
    gold_parsed, pred_parsed = _parse(g), _parse(p)
    if gold_parsed and pred_parsed:
        timeout = 5 if threading.current_thread() is threading.main_thread() else None
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    return p.casefold() == g.casefold()
