"""Versioned prompts for QA extraction and refinement.

The prompts are deliberately short: the bundled local model (SmolLM2-135M-Instruct) has a 2k-token
context, which must hold the instructions, the document and the answer. Documents are therefore cut to a
character budget (:func:`truncate_text`) on a paragraph, sentence or word boundary.

Changing the wording of a prompt changes what the model returns, so every change must bump its version:
the version is stored with every pair (``QAPair.prompt_version``) and enters the request cache key via
the messages.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from equal.llm.base import Message, ResponseFormat

__all__ = [
    "DEFAULT_MAX_DOC_CHARS",
    "PAIRS_FORMAT",
    "PROMPT_LINES_VERSION",
    "PROMPT_STYLES",
    "PROMPT_VERSION",
    "REFINE_VERSION",
    "build_extract_messages",
    "build_refine_messages",
    "extract_instructions",
    "refine_instructions",
    "truncate_text",
]

PROMPT_VERSION = "qa-v1"
#: The plain-text prompt for small models, which follow "Question:/Answer:" far better than JSON.
PROMPT_LINES_VERSION = "qa-lines-v1"
PROMPT_STYLES = {"json": PROMPT_VERSION, "lines": PROMPT_LINES_VERSION}
REFINE_VERSION = "refine-v1"

#: Structured output for the JSON style with a served model: an object wrapping the list, since OpenAI's
#: strict mode needs an object at the root; :func:`~equal.extract.parse.parse_pairs` reads ``{"pairs": [...]}``
#: as well as a bare list, so the prompt text (and its version) stays the same with and without it.
PAIRS_FORMAT = ResponseFormat.from_schema("qa_pairs", {
    "type": "object",
    "properties": {"pairs": {"type": "array", "items": {
        "type": "object",
        "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
        "required": ["question", "answer"],
        "additionalProperties": False,
    }}},
    "required": ["pairs"],
    "additionalProperties": False,
})

#: About 750 tokens of English: leaves room for the instructions and a 512-token answer in 2k tokens.
DEFAULT_MAX_DOC_CHARS = 3000

_TRUNCATION_MARK = "\n[...]"

_SYSTEM = (
    "You turn documents into question-answer pairs for training an assistant. "
    "You use only facts stated in the document."
)

_FORMAT = '[{"question": "...", "answer": "..."}]'

_EXTRACT_RULES = (
    "Write at most {max_pairs} question-answer pairs based only on the document above.\n"
    "Rules:\n"
    "- Each question must be understandable without the document; name the subject instead of saying "
    '"the document" or "the text".\n'
    "- Each answer must be correct according to the document. When the document shows a solution, "
    "steps or code, include them in the answer.\n"
    "- Reply with only a JSON list like " + _FORMAT + " and no other text."
)

_LINES_SYSTEM = "You write exam questions with answers from a text."
_LINES_RULES = (
    "Write up to {max_pairs} questions that this text answers, each followed by its answer, "
    "using only the text. Use the format:\nQuestion: ...\nAnswer: ..."
)

_REFINE_RULES = (
    "Correct these draft question-answer pairs using only the document above.\n"
    "- Fix the format.\n"
    "- Fill in missing answers from the document.\n"
    "- Correct answers that disagree with the document.\n"
    "- Remove pairs the document does not support.\n"
    "Reply with only the corrected JSON list like " + _FORMAT + " and no other text."
)


def truncate_text(text: str, max_chars: int) -> str:
    """Cut ``text`` to at most ``max_chars`` characters on a natural boundary.

    The cut is made at the last paragraph break, else sentence end, else space that falls in the last
    fifth of the budget; failing all three, at ``max_chars`` exactly. A marker ``"\\n[...]"`` is appended
    to a cut text so the model sees that the document continues (the marker is not counted in the
    budget).

    Parameters
    ----------
    text : str
        The text.
    max_chars : int
        Budget, >= 1.

    Returns
    -------
    str
        ``text.strip()`` when it fits, else the cut text plus the marker.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars={max_chars} must be >= 1.")
    text = text.strip()
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    floor = int(max_chars * 0.8)
    for sep in ("\n\n", ". ", "\n", " "):
        cut = head.rfind(sep, floor)
        if cut > 0:
            # Keep the full stop of a sentence boundary, drop the whitespace of the others.
            head = head[: cut + 1] if sep == ". " else head[:cut]
            break
    return head.rstrip() + _TRUNCATION_MARK


def _check_max_pairs(max_pairs: int) -> None:
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1:
        raise ValueError(f"max_pairs={max_pairs!r} must be an int >= 1.")


def _check_style(style: str) -> None:
    if style not in PROMPT_STYLES:
        raise ValueError(f"style={style!r} must be one of {', '.join(PROMPT_STYLES)}.")


def extract_instructions(*, max_pairs: int = 3, style: str = "json") -> str:
    """Return the extraction prompt without the document (system text and rules).

    Used by validation to recognise answers that merely copy the instructions.
    """
    _check_max_pairs(max_pairs)
    _check_style(style)
    if style == "lines":
        return _LINES_SYSTEM + "\n" + _LINES_RULES.replace("{max_pairs}", str(max_pairs))
    return _SYSTEM + "\n" + _EXTRACT_RULES.replace("{max_pairs}", str(max_pairs))


def refine_instructions() -> str:
    """Return the refinement prompt without the document and drafts."""
    return _SYSTEM + "\n" + _REFINE_RULES


def build_extract_messages(
    doc_text: str, *, max_pairs: int = 3, max_doc_chars: int = DEFAULT_MAX_DOC_CHARS, style: str = "json"
) -> list[Message]:
    """Build the chat request that asks for QA pairs from one document.

    ``style="json"`` (:data:`PROMPT_VERSION`) asks for a JSON list and suits instruction-following models;
    ``style="lines"`` (:data:`PROMPT_LINES_VERSION`) asks for ``Question:``/``Answer:`` lines, which the
    bundled 135M model follows where it fails at JSON (measured on the example corpus: no parseable JSON
    from 8 documents, pairs from most documents with lines). Both are parsed by
    :func:`equal.extract.parse.parse_pairs`.

    Parameters
    ----------
    doc_text : str
        The document; cut to ``max_doc_chars`` with :func:`truncate_text`.
    max_pairs : int, default=3
        Most pairs to ask for.
    max_doc_chars : int, default=3000
        Character budget of the document inside the prompt.

    Returns
    -------
    list of dict
        ``[{"role": "system", ...}, {"role": "user", ...}]``.
    """
    _check_max_pairs(max_pairs)
    _check_style(style)
    doc = truncate_text(doc_text, max_doc_chars)
    if style == "lines":
        user = "Text:\n" + doc + "\n\n" + _LINES_RULES.replace("{max_pairs}", str(max_pairs))
        return [{"role": "system", "content": _LINES_SYSTEM}, {"role": "user", "content": user}]
    user = "Document:\n<<<\n" + doc + "\n>>>\n\n" + _EXTRACT_RULES.replace("{max_pairs}", str(max_pairs))
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def build_refine_messages(
    doc_text: str,
    pairs: Sequence[tuple[str, str]],
    *,
    max_doc_chars: int = DEFAULT_MAX_DOC_CHARS,
) -> list[Message]:
    """Build the chat request that corrects draft pairs against their document (:data:`REFINE_VERSION`).

    Parameters
    ----------
    doc_text : str
        The document the drafts came from; cut to ``max_doc_chars``.
    pairs : sequence of (str, str)
        Draft ``(question, answer)`` pairs; an answer may be empty (the model is asked to fill it in).
    max_doc_chars : int, default=3000
        Character budget of the document inside the prompt.

    Returns
    -------
    list of dict
        ``[{"role": "system", ...}, {"role": "user", ...}]``.
    """
    doc = truncate_text(doc_text, max_doc_chars)
    drafts = json.dumps([{"question": q, "answer": a} for q, a in pairs], ensure_ascii=False, indent=1)
    user = "Document:\n<<<\n" + doc + "\n>>>\n\nDraft pairs:\n" + drafts + "\n\n" + _REFINE_RULES
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]
