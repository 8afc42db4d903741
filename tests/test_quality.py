"""Quality rules on hand-written good and junk pairs."""

from __future__ import annotations

import pytest

from equal.errors import ConfigError
from equal.extract import QUALITY_REASONS, QualityConfig, content_words, quality_reason, validate_pair

CFG = QualityConfig()

GOOD = [
    ("How to set bounds on a matplotlib axis?", "Call ax.set_xlim(0, 10) and ax.set_ylim(-1, 1)."),
    ("What is 2 + 2?", "4"),
    ("Is 7 a prime number?", "Yes."),
    ("Is 7 a prime number?", "Yes, 7 is prime."),  # restates, but "yes" is the information
    ("Why are Python strings immutable?", "Immutability lets the interpreter allocate them once and share them."),
    ("What does a failed ls print to?", "Standard error"),
    ("Who wrote Hamlet?", "William Shakespeare"),
    ("How do I sort a list in Python?", "Use sorted(xs) for a new list or xs.sort() in place."),
    ("Quelle est la capitale de la France ?", "Paris."),
]

JUNK = [
    ("How to set bounds …?", "The answer is:", "stub_answer"),  # the example
    ("How to set bounds on an axis?", "The answer is:", "stub_answer"),
    ("How do I install the package?", "You can do it as follows:", "stub_answer"),
    ("Why does Python use indentation?", "See above.", "stub_answer"),
    ("What does the FAQ say about tabs?", "Refer to the document.", "stub_answer"),
    ("Who wrote Hamlet?", "I don't know.", "stub_answer"),
    ("Who designed the language?", "The text does not say.", "stub_answer"),
    ("Who designed the language?", "Here is the answer", "stub_answer"),
    ("Who designed the language?", "The final answer is", "stub_answer"),
    ("How to set bounds?", "Set the bounds.", "no_new_information"),
    ("What is the capital of France?", "The capital of France.", "no_new_information"),
    ("How do I set the bounds of an axis?", "How do you set the axis bounds?", "no_new_information"),
    ("Who wrote Hamlet?", "N/A", "placeholder"),  # parse-time rules apply too
    ("Who wrote Hamlet?", "...", "placeholder"),
    ("Who wrote Hamlet?", "", "empty_answer"),
    ("Who wrote Hamlet?", "who wrote hamlet", "answer_repeats_question"),
    ("Why?", "Because the interpreter needs it.", "question_too_short"),
]


@pytest.mark.parametrize(("question", "answer"), GOOD)
def test_good_pairs_are_kept(question: str, answer: str) -> None:
    assert quality_reason(question, answer, config=CFG) is None


@pytest.mark.parametrize(("question", "answer", "reason"), JUNK)
def test_junk_pairs_are_dropped_with_their_reason(question: str, answer: str, reason: str) -> None:
    assert quality_reason(question, answer, config=CFG) == reason
    assert reason in QUALITY_REASONS


def test_parse_time_rules_are_the_same_rules() -> None:
    # Whatever validate_pair drops (without a document) quality_reason drops for the same reason.
    for q, a, _ in JUNK:
        parse_reason = validate_pair(q, a)
        if parse_reason is not None:
            assert quality_reason(q, a, config=CFG) == parse_reason


def test_length_bounds_in_chars_and_words() -> None:
    q, a = "What does the function return?", "It returns the sum of both arguments."
    assert quality_reason(q, a, config=CFG) is None
    assert quality_reason(q, a, config=QualityConfig(max_answer_chars=10)) == "answer_too_long"
    assert quality_reason(q, a, config=QualityConfig(min_answer_chars=100)) == "answer_too_short"
    assert quality_reason(q, a, config=QualityConfig(max_answer_words=3)) == "answer_too_long"
    assert quality_reason(q, a, config=QualityConfig(min_answer_words=10)) == "answer_too_short"
    assert quality_reason(q, a, config=QualityConfig(max_question_chars=10)) == "question_too_long"
    assert quality_reason(q, a, config=QualityConfig(max_question_words=3)) == "question_too_long"
    assert quality_reason(q, a, config=QualityConfig(min_question_words=6)) == "question_too_short"
    assert quality_reason(q, a, config=QualityConfig(min_question_chars=40)) == "question_too_short"
    # exactly at a bound is inside it
    assert quality_reason(q, a, config=QualityConfig(max_answer_words=7, min_answer_words=7)) is None


def test_min_new_words() -> None:
    q, a = "What is the capital of France?", "Paris is the capital."
    assert content_words(a) - content_words(q) == {"paris"}
    assert quality_reason(q, a, config=QualityConfig(min_new_words=1)) is None
    assert quality_reason(q, a, config=QualityConfig(min_new_words=2)) == "no_new_information"
    assert quality_reason("How to set bounds?", "Set the bounds.", config=QualityConfig(min_new_words=0)) is None


def test_content_words() -> None:
    assert content_words("How do I set the bounds of an axis?") == {"set", "bound", "axis"}
    assert content_words("Yes, it is.") == {"yes"}
    assert content_words("The answer is:") == set()


@pytest.mark.parametrize(("field", "value"), [
    ("min_question_chars", -1), ("max_answer_chars", 0), ("min_new_words", 1.5), ("min_answer_words", True),
    ("max_question_words", 0),
])
def test_config_validation_names_the_key(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"quality.{field}"):
        QualityConfig(**{field: value})  # type: ignore[arg-type]


def test_config_max_below_min_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_answer_words=2 must be >= max"):
        QualityConfig(min_answer_words=3, max_answer_words=2)
    assert QualityConfig(max_question_words=None).max_question_words is None
