"""Versioned prompts for QA extraction and refinement.

The prompts are deliberately short: the bundled local model (SmolLM2-135M-Instruct) has a 2k-token
context, which must hold the instructions, the document and the answer. Documents are therefore cut to a
character budget (:func:`truncate_text`) on a paragraph, sentence or word boundary.

Changing the wording of a prompt changes what the model returns, so every change must bump its version:
the version is stored with every pair (``QAPair.prompt_version``) and enters the request cache key via
the messages.

The user controls the request two ways (``[extract]`` settings): a template file (``prompt_template``) that
replaces the user turn, with the placeholders ``{document}``, ``{n_pairs}`` and ``{examples}``
(:func:`load_prompt_template`; ``{{`` and ``}}`` are literal braces), and ``few_shot`` seeded target examples
(:func:`select_examples`, :func:`render_examples`) shown in the prompt. Both change the messages, hence the
request-cache key, and the version (:func:`prompt_version`); with neither, the built-in prompts are sent
byte for byte as before, so existing caches stay valid.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Sequence
from pathlib import Path

from equal.errors import ConfigError
from equal.llm.base import Message, ResponseFormat

__all__ = [
    "DEFAULT_MAX_DOC_CHARS",
    "EXAMPLE_MAX_CHARS",
    "PAIRS_FORMAT",
    "PLACEHOLDERS",
    "PROMPT_LINES_VERSION",
    "PROMPT_STYLES",
    "PROMPT_VERSION",
    "REFINE_VERSION",
    "build_extract_messages",
    "build_refine_messages",
    "extract_instructions",
    "load_prompt_template",
    "prompt_version",
    "refine_instructions",
    "render_examples",
    "select_examples",
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

#: Placeholders of a prompt template (``[extract] prompt_template``).
PLACEHOLDERS = ("document", "n_pairs", "examples")

#: Character budget of one few-shot example in the prompt (the bundled model's context is 2k tokens).
EXAMPLE_MAX_CHARS = 600

_EXAMPLES_INTRO = "Examples of the kind of question-answer pairs wanted (follow their style, not their facts):\n"

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


def _placeholder_line(text: str, field_name: str) -> int:
    """1-based line of the first ``{field_name`` in ``text`` (for error messages)."""
    at = text.find("{" + field_name)
    return text.count("\n", 0, max(at, 0)) + 1


def load_prompt_template(path: str | Path, *, need_examples: bool = False) -> str:
    """Read and check a prompt template file (``[extract] prompt_template``).

    The file is the user turn of the extraction request; ``{document}`` (required), ``{n_pairs}`` and
    ``{examples}`` are replaced, ``{{`` and ``}}`` stand for literal braces.

    Parameters
    ----------
    path : str or Path
        The template file (UTF-8).
    need_examples : bool, default=False
        ``extract.few_shot > 0``: the template must then place ``{examples}``.

    Returns
    -------
    str
        The template text.

    Raises
    ------
    ConfigError
        The file cannot be read, a placeholder is unknown or malformed (named with its line), or
        ``{document}`` (or, with ``need_examples``, ``{examples}``) is missing.
    """
    where = f"extract.prompt_template {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read the template: {exc}") from None
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:  # a lone "{" or "}"
        raise ConfigError(f"{where}: {exc} (write {{{{ and }}}} for literal braces)") from None
    allowed = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
    found: set[str] = set()
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            raise ConfigError(f"{where}:{_placeholder_line(text, name)}: unknown placeholder {{{name}}} "
                              f"(allowed: {allowed}; write {{{{ and }}}} for literal braces)")
        if spec or conversion:
            raise ConfigError(f"{where}:{_placeholder_line(text, name)}: placeholder {{{name}}} takes no "
                              f"format spec or conversion")
        found.add(name)
    if "document" not in found:
        raise ConfigError(f"{where}: missing placeholder {{document}} (where the document goes)")
    if need_examples and "examples" not in found:
        raise ConfigError(f"{where}: missing placeholder {{examples}} (extract.few_shot > 0 shows target "
                          "examples there)")
    return text


def select_examples(texts: Sequence[str], n: int, *, seed: int = 0) -> list[str]:
    """``n`` target examples for the prompt: a seeded sample without replacement, in sampled order.

    Parameters
    ----------
    texts : sequence of str
        The target examples (``read_target``).
    n : int
        How many (all of them when there are fewer).
    seed : int, default=0
        The run's seed: the same seed shows the same examples, so requests (and their cache keys) repeat.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n={n!r} must be an int >= 0.")
    if n == 0 or not texts:
        return []
    from equal._validation import as_generator

    rows = as_generator(seed).choice(len(texts), size=min(n, len(texts)), replace=False)
    return [texts[int(i)] for i in rows]


def render_examples(examples: Sequence[str]) -> str:
    """The ``{examples}`` text: ``Example 1:`` and the example (cut to :data:`EXAMPLE_MAX_CHARS`), and so on."""
    return "\n\n".join(f"Example {i}:\n{truncate_text(e, EXAMPLE_MAX_CHARS)}" for i, e in enumerate(examples, 1))


def prompt_version(style: str = "json", *, template: str | None = None, n_examples: int = 0) -> str:
    """Version stored with the pairs: the style's (``qa-v1``), or ``template-<sha256[:12]>`` for a template
    file, plus ``+fewshot<N>`` when examples are shown."""
    _check_style(style)
    base = PROMPT_STYLES[style] if template is None else (
        "template-" + hashlib.sha256(template.encode()).hexdigest()[:12])
    return base + (f"+fewshot{n_examples}" if n_examples else "")


def _fill(template: str, doc: str, max_pairs: int, examples: Sequence[str]) -> str:
    return template.format(document=doc, n_pairs=max_pairs, examples=render_examples(examples))


def extract_instructions(*, max_pairs: int = 3, style: str = "json", template: str | None = None) -> str:
    """Return the extraction prompt without the document (system text and rules).

    Used by validation to recognise answers that merely copy the instructions. With a ``template``: its
    text with the document and examples left empty.
    """
    _check_max_pairs(max_pairs)
    _check_style(style)
    if template is not None:
        system = _LINES_SYSTEM if style == "lines" else _SYSTEM
        return system + "\n" + _fill(template, "", max_pairs, [])
    if style == "lines":
        return _LINES_SYSTEM + "\n" + _LINES_RULES.replace("{max_pairs}", str(max_pairs))
    return _SYSTEM + "\n" + _EXTRACT_RULES.replace("{max_pairs}", str(max_pairs))


def refine_instructions() -> str:
    """Return the refinement prompt without the document and drafts."""
    return _SYSTEM + "\n" + _REFINE_RULES


def build_extract_messages(
    doc_text: str, *, max_pairs: int = 3, max_doc_chars: int = DEFAULT_MAX_DOC_CHARS, style: str = "json",
    template: str | None = None, examples: Sequence[str] = (),
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
    style : {"json", "lines"}, default="json"
        Also picks the system turn, which a template keeps.
    template : str, optional
        A checked template (:func:`load_prompt_template`): the user turn, with ``{document}``,
        ``{n_pairs}`` and ``{examples}`` filled in.
    examples : sequence of str, default=()
        Few-shot target examples (:func:`select_examples`); without a template they go between the document
        and the rules. None and no template: the built-in prompt, unchanged.

    Returns
    -------
    list of dict
        ``[{"role": "system", ...}, {"role": "user", ...}]``.
    """
    _check_max_pairs(max_pairs)
    _check_style(style)
    doc = truncate_text(doc_text, max_doc_chars)
    system = _LINES_SYSTEM if style == "lines" else _SYSTEM
    if template is not None:
        return [{"role": "system", "content": system},
                {"role": "user", "content": _fill(template, doc, max_pairs, examples)}]
    shown = _EXAMPLES_INTRO + render_examples(examples) + "\n\n" if examples else ""
    if style == "lines":
        user = "Text:\n" + doc + "\n\n" + shown + _LINES_RULES.replace("{max_pairs}", str(max_pairs))
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]
    user = ("Document:\n<<<\n" + doc + "\n>>>\n\n" + shown
            + _EXTRACT_RULES.replace("{max_pairs}", str(max_pairs)))
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


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
