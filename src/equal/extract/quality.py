"""Rule-based quality check of a QA pair: does the answer say something, and is the pair a sensible size?

:func:`quality_reason` runs after extraction, on pairs from any extractor. It first applies the parse-time
checks of :func:`~equal.extract.parse.validate_pair` that need no document (empty sides, template
placeholders such as ``"N/A"`` or ``"..."``, an answer equal to its question; one definition of each, in
``parse.py``), then the rules only a quality filter needs:

``stub_answer``
    The answer announces or points to content that is not there: it ends with a colon (``"The answer
    is:"``, ``"You can do it as follows:"``), is only a lead-in (``"The answer is"``, ``"Here is the
    solution"``), points elsewhere (``"See above"``, ``"Refer to the document"``) or declines (``"I don't
    know"``, ``"The text does not say"``).
``no_new_information``
    Fewer than ``min_new_words`` of the answer's content words are absent from the question (content words:
    :func:`content_words`, lowercase word tokens without English function words, plural ``-s`` removed), so
    the answer only restates the question. ``yes``/``no``/``true``/``false`` count as content: they carry
    the answer to a yes/no question.
``question_too_short`` / ``question_too_long`` / ``answer_too_short`` / ``answer_too_long``
    Outside the :class:`QualityConfig` bounds, in characters or in words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from equal.errors import ConfigError
from equal.extract.parse import DROP_REASONS, normalize_for_compare, validate_pair

__all__ = ["QUALITY_REASONS", "QualityConfig", "content_words", "quality_reason"]

#: Every reason :func:`quality_reason` can return (the parse-time reasons it shares come first).
QUALITY_REASONS = (
    *(r for r in DROP_REASONS if r not in ("copies_prompt", "copies_document")),
    "answer_too_short",
    "stub_answer",
    "no_new_information",
)

# English function words: they carry no content of their own, so an answer made of the question's content
# words plus these adds nothing. Kept short on purpose: a missed function word only makes the rule milder.
_STOPWORD_TEXT = """
a an the this that these those it its they them their there here is are was were be been being am
do does did done doing have has had having will would shall should can could may might must
of in on at to for from by with without about into onto over under between through during before after
above below up down out off than then so as if or and but nor not also too very just only
what which who whom whose when where why how whether
i me my we us our you your he him his she her one ones some any all each every both either neither
such same other another more most much many few less least own
answer answers question questions following follows
don doesn didn isn aren wasn weren t s ll ve re d
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_ANSWER_WORDS = frozenset({"yes", "no", "true", "false"})

# Lead-ins and pointers that are a whole answer only when nothing follows them (matched on
# normalize_for_compare text, so punctuation and case do not matter).
_STUB_RE = re.compile(
    r"^(?:"
    # A bare noun ("Output") may be a real answer; with a determiner or verb it is only a lead-in.
    r"(?=.*\b(?:the|my|our|your|is|are|was|be|found|follows|following|below|here)\b)"
    r"(?:(?:so |thus |therefore )?(?:the |my |our |your )?(?:final |correct |short |full )?"
    r"(?:answer|solution|response|result|output|explanation|reason|steps?)"
    r"(?: (?:is|are|was|would be|will be|can be found))?(?: as follows| the following| below| here)?)"
    r"|(?:here (?:is|are|s)(?: the| an| a| my)?(?: answer| solution| explanation| example| code| steps?)?)"
    r"|(?:(?:please )?(?:see|refer to|check|read|consult)(?: the)?"
    r"(?: above| below| document| text| passage| article| context| source| documentation| previous answer)"
    r"(?: above| below)?)"
    r"|(?:as (?:stated|mentioned|described|explained|shown|given|noted) (?:above|below|before|earlier"
    r"|in the (?:text|document|passage|article|context)))"
    r"|(?:i (?:do not|don t|dont) know|i m not sure|not sure|unknown|no answer|not (?:mentioned|stated|given"
    r"|specified)(?: in the (?:text|document|passage|article|context))?)"
    r"|(?:the (?:text|document|passage|article|context) does not (?:say|mention|specify|state|tell))"
    r")$"
)
_WORD_RE = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class QualityConfig:
    """Bounds and thresholds of :func:`quality_reason`.

    Attributes
    ----------
    min_question_chars : int, default=8
        Shortest question, in characters (the parse-time default of ``validate_pair``).
    max_question_chars : int, default=2000
    min_answer_chars : int, default=1
        Answers may be very short: ``"4"`` answers an arithmetic question.
    max_answer_chars : int, default=4000
    min_question_words : int, default=2
    max_question_words : int or None, default=None
        None: no bound in words.
    min_answer_words : int, default=1
    max_answer_words : int or None, default=None
    min_new_words : int, default=1
        Content words the answer must have that the question lacks (0 turns ``no_new_information`` off).
    """

    min_question_chars: int = 8
    max_question_chars: int = 2000
    min_answer_chars: int = 1
    max_answer_chars: int = 4000
    min_question_words: int = 2
    max_question_words: int | None = None
    min_answer_words: int = 1
    max_answer_words: int | None = None
    min_new_words: int = 1

    def __post_init__(self) -> None:
        for name in ("min_question_chars", "max_question_chars", "min_answer_chars", "max_answer_chars",
                     "min_question_words", "max_question_words", "min_answer_words", "max_answer_words",
                     "min_new_words"):
            value = getattr(self, name)
            if value is None and name.startswith("max_") and name.endswith("_words"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"quality.{name}={value!r} must be an integer >= 0.")
        for side, unit in (("question", "chars"), ("answer", "chars"), ("question", "words"),
                           ("answer", "words")):
            lo, hi = getattr(self, f"min_{side}_{unit}"), getattr(self, f"max_{side}_{unit}")
            if hi is not None and hi < max(lo, 1):
                raise ConfigError(f"quality.max_{side}_{unit}={hi} must be >= max(min_{side}_{unit}={lo}, 1).")


def _stem(word: str) -> str:
    # Plural -s only: "bounds" and "bound" are one word; anything cleverer needs a real stemmer.
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def content_words(text: str) -> set[str]:
    """The content words of ``text``: lowercase word tokens, English function words removed, plural -s cut.

    Examples
    --------
    >>> sorted(content_words("How do I set the bounds of an axis?"))
    ['axis', 'bound', 'set']
    """
    words = _WORD_RE.findall(normalize_for_compare(text))
    return {_stem(w) for w in words if w in _ANSWER_WORDS or w not in _STOPWORDS}


def _is_stub(answer: str) -> bool:
    if answer.rstrip().endswith(":"):
        return True  # announces content that never came ("The answer is:")
    return bool(_STUB_RE.match(normalize_for_compare(answer)))


def quality_reason(question: str, answer: str, *, config: QualityConfig) -> str | None:
    """Return why a pair fails the quality rules (a short snake_case name), or None to keep it.

    Checks, in order (the first failing one is returned; every reason is in :data:`QUALITY_REASONS`): the
    document-free checks of :func:`~equal.extract.parse.validate_pair` (``empty_question``,
    ``empty_answer``, ``placeholder``, ``question_too_short``, ``question_too_long``, ``answer_too_long``,
    ``answer_repeats_question``), the length bounds of ``config`` in characters, then in words, then
    ``stub_answer`` and ``no_new_information`` (see the module docstring).

    Parameters
    ----------
    question, answer : str
        The pair.
    config : QualityConfig
        Bounds and thresholds.

    Returns
    -------
    str or None

    Examples
    --------
    >>> cfg = QualityConfig()
    >>> quality_reason("How to set bounds on an axis?", "The answer is:", config=cfg)
    'stub_answer'
    >>> quality_reason("What is 2 + 2?", "4", config=cfg) is None
    True
    """
    reason = validate_pair(question, answer, min_chars=config.min_question_chars,
                           max_chars=max(config.max_question_chars, config.max_answer_chars))
    if reason is not None:
        return reason
    q, a = question.strip(), answer.strip()
    if len(q) > config.max_question_chars:
        return "question_too_long"
    if len(a) < config.min_answer_chars:
        return "answer_too_short"
    if len(a) > config.max_answer_chars:
        return "answer_too_long"
    nq, na = len(_WORD_RE.findall(q)), len(_WORD_RE.findall(a))
    if nq < config.min_question_words:
        return "question_too_short"
    if config.max_question_words is not None and nq > config.max_question_words:
        return "question_too_long"
    if na < config.min_answer_words:
        return "answer_too_short"
    if config.max_answer_words is not None and na > config.max_answer_words:
        return "answer_too_long"
    if _is_stub(a):
        return "stub_answer"
    if config.min_new_words and len(content_words(a) - content_words(q)) < config.min_new_words:
        return "no_new_information"
    return None
