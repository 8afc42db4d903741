"""QA records, prompts, tolerant parsing, validation, the LLM extractor (with canned outputs) and rules."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable, Sequence

import pytest

from equal.data.qa import QAPair, qa_id
from equal.data.records import Document
from equal.errors import DataError, LLMError
from equal.extract import (
    DROP_REASONS,
    PROMPT_VERSION,
    REFINE_VERSION,
    RULES_VERSION,
    ExtractionResult,
    Extractor,
    LLMExtractor,
    RuleExtractor,
    build_extract_messages,
    build_refine_messages,
    extract_instructions,
    find_pairs,
    parse_pairs,
    truncate_text,
    validate_pair,
)
from equal.llm.base import LLM, Completion, GenerationParams

# ====================================================================================================
# QAPair


def test_qapair_id_is_content_hash_independent_of_provenance() -> None:
    a = QAPair("What is 2 + 2?", "4", doc_id="d1", cluster=3, round=1, model="m")
    b = QAPair("What is 2 + 2?", "4", doc_id="d9", chunk=2)
    assert a.id == b.id == qa_id("What is 2 + 2?", "4")
    assert len(a.id) == 16 and int(a.id, 16) >= 0
    assert QAPair("What is 2 + 2?", "5", doc_id="d1").id != a.id
    # No separator ambiguity: moving a line break between question and answer changes the id.
    assert qa_id("a\nb", "c") != qa_id("a", "b\nc")
    assert QAPair("q?", "a", doc_id="d", id="custom").id == "custom"


def test_qapair_messages_record_roundtrip() -> None:
    p = QAPair("Why is the sky blue?", "Rayleigh scattering.", doc_id="doc#c2", chunk=2, cluster=7, round=4,
               model="smol", prompt_version=PROMPT_VERSION)
    assert p.render_text() == "Why is the sky blue?\nRayleigh scattering."
    assert p.to_messages() == [
        {"role": "user", "content": "Why is the sky blue?"},
        {"role": "assistant", "content": "Rayleigh scattering."},
    ]
    record = p.to_record()
    assert set(record) == {"messages", "id", "doc_id", "chunk", "cluster", "round", "model", "prompt_version",
                           "extractor"}
    back = QAPair.from_record(json.loads(json.dumps(record)))
    assert back == p
    minimal = QAPair.from_record({"messages": record["messages"], "doc_id": "x"})
    assert (minimal.chunk, minimal.cluster, minimal.round, minimal.extractor) == (0, -1, -1, "llm")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.answer = "changed"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"doc_id": "d"}, "messages"),
        ({"messages": [{"role": "user", "content": "q"}], "doc_id": "d"}, "messages"),
        ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}],
          "doc_id": "d"}, "messages"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 3}], "doc_id": "d"},
         "messages"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "doc_id"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
          "doc_id": "d", "round": "1"}, "round"),
    ],
)
def test_qapair_from_record_errors(record: dict, field: str) -> None:
    with pytest.raises(DataError, match=r"qa\.jsonl:12: ") as info:
        QAPair.from_record(record, path="qa.jsonl", line=12)
    assert info.value.field == field


def test_qapair_type_checks() -> None:
    with pytest.raises(TypeError, match=r"QAPair\.answer"):
        QAPair("q", None, doc_id="d")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"QAPair\.cluster"):
        QAPair("q", "a", doc_id="d", cluster=1.5)  # type: ignore[arg-type]


# ====================================================================================================
# prompts

_DOC = (
    "The mitochondrion is an organelle found in most eukaryotic cells. It produces adenosine triphosphate "
    "(ATP), the main energy carrier of the cell, through oxidative phosphorylation."
)


def test_extract_prompt_contains_document_and_rules() -> None:
    messages = build_extract_messages(_DOC, max_pairs=4)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert _DOC in user
    assert "at most 4 question-answer pairs" in user
    assert '{"question": "...", "answer": "..."}' in user
    assert "only" in user and "JSON" in user
    assert PROMPT_VERSION == "qa-v1" and REFINE_VERSION == "refine-v1"
    # The instructions alone (used to detect echoed prompts) are the prompt without the document.
    instructions = extract_instructions(max_pairs=4)
    assert _DOC not in instructions
    assert "at most 4 question-answer pairs" in instructions
    with pytest.raises(ValueError, match="max_pairs"):
        build_extract_messages(_DOC, max_pairs=0)


def test_prompt_truncates_long_documents_on_a_boundary() -> None:
    paragraph = "Sentence number {i} says something about the topic. "
    doc = "\n\n".join("".join(paragraph.format(i=10 * p + i) for i in range(10)) for p in range(30))
    cut = truncate_text(doc, 1000)
    assert len(cut) <= 1000 + len("\n[...]") and cut.endswith("\n[...]")
    body = cut[: -len("\n[...]")]
    assert doc.startswith(body)
    assert body.endswith(".")  # cut after a full sentence or paragraph, not mid-word
    assert truncate_text("short  ", 1000) == "short"
    user = build_extract_messages(doc, max_doc_chars=1000)[1]["content"]
    assert len(user) < 1000 + len(extract_instructions()) + 100
    with pytest.raises(ValueError, match="max_chars"):
        truncate_text(doc, 0)


def test_refine_prompt_contains_document_and_drafts() -> None:
    messages = build_refine_messages(_DOC, [("What does the mitochondrion produce?", ""), ("Q2?", "A2")])
    user = messages[1]["content"]
    assert _DOC in user
    assert json.loads(user[user.index("[") : user.index("]") + 1]) == [
        {"question": "What does the mitochondrion produce?", "answer": ""},
        {"question": "Q2?", "answer": "A2"},
    ]
    assert "missing answers" in user and "does not support" in user


# ====================================================================================================
# parsing: a corpus of realistic messy model outputs

PARSE_CASES: list[tuple[str, str, list[tuple[str, str]]]] = [
    (
        "fenced json with prose around",
        'Sure! Here are the question-answer pairs:\n\n```json\n[\n  {\n    "question": "What does the '
        'mitochondrion produce?",\n    "answer": "It produces ATP through oxidative phosphorylation."\n'
        "  }\n]\n```\n\nLet me know if you need more!",
        [("What does the mitochondrion produce?", "It produces ATP through oxidative phosphorylation.")],
    ),
    (
        "bare list, trailing commas",
        '[{"question": "What is 2 + 2?", "answer": "4",}, {"question": "What is 3 * 3?", "answer": "9",},]',
        [("What is 2 + 2?", "4"), ("What is 3 * 3?", "9")],
    ),
    (
        "object wrapping the list",
        '{"qa_pairs": [{"Question": "Who wrote Hamlet?", "Answer": "William Shakespeare."}], "count": 1}',
        [("Who wrote Hamlet?", "William Shakespeare.")],
    ),
    (
        "truncated inside the second object: only the complete one is kept",
        '```json\n[{"question": "What is an organelle?", "answer": "A specialised structure in a cell."},\n'
        ' {"question": "What is ATP?", "answer": "Adenosine tri',
        [("What is an organelle?", "A specialised structure in a cell.")],
    ),
    (
        "truncated after a complete answer string: both strings complete, kept",
        '[{"q": "What is ATP?", "a": "The energy carrier of the cell."',
        [("What is ATP?", "The energy carrier of the cell.")],
    ),
    (
        "truncated right after a question: no answer was written, dropped",
        '[{"question": "What is 1 + 1?", "answer": "2"}, {"question": "What is ATP?",',
        [("What is 1 + 1?", "2")],
    ),
    (
        "python repr with single quotes and an apostrophe",
        "[{'question': \"What's the capital of France?\", 'answer': 'Paris'}, "
        "{'question': 'What's the capital of Peru?', 'answer': 'Lima'}]",
        [("What's the capital of France?", "Paris"), ("What's the capital of Peru?", "Lima")],
    ),
    (
        "json lines, instruction/input/output keys, numeric answer",
        '{"instruction": "Translate to English.", "input": "Bonjour", "output": "Hello"}\n'
        '{"instruction": "What is 6 times 7?", "output": 42}',
        [("Translate to English.\n\nBonjour", "Hello"), ("What is 6 times 7?", "42")],
    ),
    (
        "missing commas, unquoted keys, python literals",
        '[{question: "Is water wet?", answer: True}\n {question: "Is 7 prime?" answer: "Yes, 7 is prime."}]',
        [("Is water wet?", "true"), ("Is 7 prime?", "Yes, 7 is prime.")],
    ),
    (
        "latex backslashes left unescaped, a real newline escape and a unicode escape",
        '[{"question": "What is $\\frac{1}{2} \\times 6$?", "answer": "Step 1:\\n$\\frac{6}{2} = 3$, '
        'caf\\u00e9"}]',
        [("What is $\\frac{1}{2} \\times 6$?", "Step 1:\n$\\frac{6}{2} = 3$, café")],
    ),
    (
        "unescaped quotes inside a string",
        '[{"question": "What does the "print" function do?", "answer": "It writes text to stdout."}]',
        [('What does the "print" function do?', "It writes text to stdout.")],
    ),
    (
        "prose with a stray bracket before the JSON; the list repeated (deduplicated)",
        'Here [see below] are the pairs:\n[{"question": "Why is the sky blue?", "answer": "Rayleigh '
        'scattering."}]\n[{"question": "Why is the sky blue?", "answer": "Rayleigh scattering."}]',
        [("Why is the sky blue?", "Rayleigh scattering.")],
    ),
    (
        "Q:/A: lines with bold and numbering",
        "**Q1:** What is the boiling point of water at sea level?\n**A1:** 100 degrees Celsius.\n\n"
        "**Q2:** What is its freezing point?\n**A2:** 0 degrees Celsius.\n",
        [("What is the boiling point of water at sea level?", "100 degrees Celsius."),
         ("What is its freezing point?", "0 degrees Celsius.")],
    ),
    (
        "Question:/Answer: blocks, multi-line answer",
        "1. Question: How do you make a script executable on Unix?\nAnswer: Run chmod +x script.py\n"
        "and start the file with a #! line.\n\n2. Question: What does chmod 755 do?\n"
        "Answer: It sets rwxr-xr-x.",
        [("How do you make a script executable on Unix?",
          "Run chmod +x script.py\nand start the file with a #! line."),
         ("What does chmod 755 do?", "It sets rwxr-xr-x.")],
    ),
    (
        "Q and A on one line",
        "Q: What is 2+2? A: 4\nQ: What is 3+3? A: 6",
        [("What is 2+2?", "4"), ("What is 3+3?", "6")],
    ),
    (
        "degenerate repetition (as SmolLM2-135M wrote it): a question with no answer",
        "Question: How to make a Python script executable on Unix?\n\nQuestion:\n\nQuestion:\n\nQuestion:\n\n"
        "Question:\n\nQuestion:",
        [("How to make a Python script executable on Unix?", "")],
    ),
    ("refusal", "I'm sorry, but I can't help with that request.", []),
    ("numbers only", "The answer is [1, 2, 3] and {4}.", []),
    ("broken json without pairs", '{"note": "nothing to extract", "pairs": [', []),
    ("empty", "   \n", []),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES])
def test_parse_pairs_corpus(text: str, expected: list[tuple[str, str]]) -> None:
    assert parse_pairs(text) == expected


def test_parse_pairs_truncated_text_form_drops_last_pair() -> None:
    text = "Q: What is ATP?\nA: The energy carrier.\nQ: What makes ATP?\nA: Mitochondria produce it by oxid"
    assert parse_pairs(text) == [("What is ATP?", "The energy carrier."),
                                 ("What makes ATP?", "Mitochondria produce it by oxid")]
    assert parse_pairs(text, truncated=True) == [("What is ATP?", "The energy carrier.")]
    assert parse_pairs(None) == []


def test_parse_pairs_pathological_inputs() -> None:
    # Deep nesting and unbalanced brackets end in [] (depth and restart limits), not a RecursionError.
    nasty = ["{" * 5000, "[" * 5000 + '"', '{"a": ' * 3000, "[{" * 2000 + "'", "x[" * 4000]
    for text in nasty:
        assert parse_pairs(text) == []
    deep = "[" * 30 + '{"question": "Deep enough?", "answer": "Yes."}' + "]" * 30
    assert parse_pairs(deep) == [("Deep enough?", "Yes.")]


def test_parse_pairs_every_truncation_of_valid_json() -> None:
    # Property: json.dumps output (escapes, quotes, emoji as surrogate pairs, LaTeX, brackets inside
    # strings) parses exactly, and cut at ANY character it yields a prefix of the pairs, never a cut
    # string, and every object closed before the cut.
    rng = random.Random(0)
    alphabet = [*"abcXYZ 0129.,:;?!'\"\\/{}[]\n\té€😀", "\\frac", "\\times", "e.g.", " and "]

    def text_of(k: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(k)).strip() or "x"

    for _ in range(60):
        pairs = [(text_of(rng.randint(1, 20)), text_of(rng.randint(1, 20))) for _ in range(rng.randint(1, 3))]
        pairs = list(dict.fromkeys(pairs))
        parts = [json.dumps({"question": q, "answer": a}, ensure_ascii=rng.random() < 0.5) for q, a in pairs]
        text = "[" + ", ".join(parts) + "]"
        closed_at = [len("[" + ", ".join(parts[: k + 1])) for k in range(len(parts))]
        assert parse_pairs(text) == pairs
        for cut in range(len(text)):
            got = parse_pairs(text[:cut])
            assert got == pairs[: len(got)], text[:cut]
            assert len(got) >= sum(end <= cut for end in closed_at), text[:cut]


# ====================================================================================================
# validation

_INSTRUCTIONS = extract_instructions(max_pairs=3)


@pytest.mark.parametrize(
    ("question", "answer", "reason"),
    [
        ("   ", "Paris", "empty_question"),
        ("What is the capital of France?", "", "empty_answer"),
        ("What is the capital of France?", "...", "placeholder"),
        ("<question>", "Paris", "placeholder"),
        ("Question 1", "Paris", "placeholder"),
        ("What is the capital of France?", "your answer here", "placeholder"),
        ("Capital?", "Paris", None),
        ("Why?", "Because.", "question_too_short"),
        ("What is x?" * 500, "x", "question_too_long"),
        ("What is the capital of France?", "Paris " * 1000, "answer_too_long"),
        ("What is the capital of France?", "what is the capital of France", "answer_repeats_question"),
        ("What should each answer contain?",
         "Each answer must be correct according to the document.", "copies_prompt"),
        ("What does the mitochondrion do?", _DOC, "copies_document"),
        ("What does the mitochondrion produce?", "ATP, through oxidative phosphorylation.", None),
        ("What is 17 * 3?", "51", None),
    ],
)
def test_validate_pair_reasons(question: str, answer: str, reason: str | None) -> None:
    got = validate_pair(question, answer, doc_text=_DOC, prompt_text=_INSTRUCTIONS, min_chars=8,
                        max_chars=4000)
    assert got == reason
    assert got is None or got in DROP_REASONS


def test_validate_pair_checks_are_optional_and_params_checked() -> None:
    assert validate_pair("What does the mitochondrion do?", _DOC) is None  # no document given
    echo = "Each answer must be correct according to the document."
    assert validate_pair("Repeat the rules?", echo) is None
    short_doc = "Paris is the capital of France."
    assert validate_pair("What is the capital of France?", short_doc, doc_text=short_doc) is None
    with pytest.raises(ValueError, match="max_chars"):
        validate_pair("q", "a", min_chars=10, max_chars=5)


# ====================================================================================================
# LLMExtractor against canned completions.
#
# TEST DOUBLE: ScriptedLLM returns fixed completion texts chosen by the document in the request. It stands
# in for the model's *output* only; the units under test are prompting, parsing, validation and provenance.
# The real bundled model is exercised by the LLM backend tests.


class ScriptedLLM:
    """Test double: replies to each request with ``script(user_message)`` (a Completion)."""

    def __init__(self, script: Callable[[str], Completion], *, model: str = "scripted-test-double") -> None:
        self._script = script
        self._model = model
        self.calls: list[list[list[dict[str, str]]]] = []

    @property
    def model(self) -> str:
        return self._model

    def generate(
        self, requests: Sequence[Sequence[dict[str, str]]], params: GenerationParams
    ) -> list[Completion]:
        self.calls.append([list(r) for r in requests])
        return [self._script(r[-1]["content"]) for r in requests]


def _ok(text: str, finish: str = "stop") -> Completion:
    return Completion(text=text, tokens_in=100, tokens_out=40, finish_reason=finish)


_FAILED = Completion(text=None, error="HTTP 503: upstream unavailable")

DOC_A = Document("a", "Water boils at 100 degrees Celsius at sea level and freezes at 0 degrees Celsius.",
                 {"chunk": 2, "parent_id": "p"})
DOC_B = Document("b", "Paris is the capital and largest city of France.", {})
DOC_C = Document("c", "Lorem ipsum dolor sit amet, consectetur adipiscing elit.", {})

GOOD_A = (
    '```json\n[{"question": "At what temperature does water boil at sea level?", "answer": "100 degrees '
    'Celsius."}, {"question": "At what temperature does water freeze?", "answer": "0 degrees Celsius."}]\n```'
)


def _script(table: dict[str, Completion]) -> Callable[[str], Completion]:
    def reply(user: str) -> Completion:
        for key, completion in table.items():
            if key in user:
                return completion
        raise AssertionError(f"unexpected request: {user[:80]!r}")

    return reply


def test_llm_extractor_provenance_failures_and_garbage() -> None:
    llm = ScriptedLLM(_script({"Water boils": _ok(GOOD_A), "Paris is": _FAILED, "Lorem": _ok("I cannot.")}))
    assert isinstance(llm, LLM)
    extractor = LLMExtractor(llm, max_pairs=3)
    assert isinstance(extractor, Extractor)
    result = extractor.extract([DOC_A, DOC_B, DOC_C], cluster=[5, 6, 7], round=3)
    assert isinstance(result, ExtractionResult)

    assert len(llm.calls) == 1 and len(llm.calls[0]) == 3  # one batched call
    assert DOC_A.text in llm.calls[0][0][-1]["content"]
    assert [p.question for p in result.pairs] == [
        "At what temperature does water boil at sea level?", "At what temperature does water freeze?"]
    for p in result.pairs:
        assert (p.doc_id, p.chunk, p.cluster, p.round) == ("a", 2, 5, 3)
        assert (p.model, p.prompt_version, p.extractor) == ("scripted-test-double", PROMPT_VERSION, "llm")
        assert p.id == qa_id(p.question, p.answer)
    # A failed request is not an empty answer: the document is reported, no pair, no drop counted.
    assert result.failed_docs == ["b"]
    assert result.drops == {"no_pairs_parsed": 1}
    assert len(result.completions) == 3 and not result.completions[1].ok
    assert result.refine_failed == []


def test_llm_extractor_counts_drops_by_reason() -> None:
    messy = json.dumps([
        {"question": "At what temperature does water boil at sea level?", "answer": "100 degrees Celsius."},
        {"question": "At what temperature does water boil at sea level?", "answer": "100 C."},
        {"question": "...", "answer": "..."},
        {"question": "What must each answer be?", "answer": "Each answer must be correct according to the "
                                                            "document."},
        {"question": "At what temperature does water freeze?", "answer": ""},
        {"question": "Where does water boil at 100 degrees?", "answer": "At sea level."},
        {"question": "What happens at 0 degrees Celsius?", "answer": "Water freezes."},
    ])
    llm = ScriptedLLM(_script({"Water boils": _ok(messy)}))
    result = LLMExtractor(llm, max_pairs=2).extract([DOC_A])
    assert [p.answer for p in result.pairs] == ["100 degrees Celsius.", "At sea level."]
    assert result.drops == {"duplicate": 1, "placeholder": 1, "copies_prompt": 1, "empty_answer": 1,
                            "over_max_pairs": 1}
    assert result.pairs[0].cluster == -1 and result.pairs[0].round == -1


def test_llm_extractor_truncated_output() -> None:
    text = "Q: At what temperature does water boil?\nA: 100 degrees Celsius.\nQ: And freeze?\nA: At 0 deg"
    llm = ScriptedLLM(_script({"Water boils": _ok(text, finish="length")}))
    result = LLMExtractor(llm).extract([DOC_A])
    assert [p.answer for p in result.pairs] == ["100 degrees Celsius."]


def test_llm_extractor_refinement() -> None:
    drafts = '[{"question": "At what temperature does water boil at sea level?", "answer": ""}]'
    refined = '[{"question": "At what temperature does water boil at sea level?", "answer": "At 100 °C."}]'
    first_only = '[{"question": "What is the capital of France?", "answer": "Paris."}]'

    def reply(user: str) -> Completion:
        if "Draft pairs:" in user:
            if "Water boils" in user:
                return _ok(refined)
            if "Paris is" in user:
                return _FAILED  # refinement fails: keep the validated drafts
            return _ok("```json\n[]\n```")  # refinement judges nothing supported
        if "Water boils" in user:
            return _ok(drafts)
        if "Paris is" in user:
            return _ok(first_only)
        return _ok('[{"question": "What does lorem ipsum mean?", "answer": "It is the capital of Mars."}]')

    llm = ScriptedLLM(reply)
    extractor = LLMExtractor(llm, refine=True)
    assert extractor.prompt_version == "qa-v1+refine-v1"
    result = extractor.extract([DOC_A, DOC_B, DOC_C])
    assert len(llm.calls) == 2 and len(llm.calls[1]) == 3
    assert "At what temperature does water boil at sea level?" in llm.calls[1][0][-1]["content"]
    by_doc = {p.doc_id: p for p in result.pairs}
    assert by_doc["a"].answer == "At 100 °C." and by_doc["a"].prompt_version == "qa-v1+refine-v1"
    assert by_doc["b"].answer == "Paris." and by_doc["b"].prompt_version == PROMPT_VERSION
    assert "c" not in by_doc
    assert result.refine_failed == ["b"]
    assert result.drops == {"refine_removed": 1}
    assert len(result.completions) == 6


def test_llm_extractor_checks() -> None:
    class Short(ScriptedLLM):
        def generate(self, requests: Sequence[Sequence[dict[str, str]]],
                     params: GenerationParams) -> list[Completion]:
            return []

    with pytest.raises(LLMError, match="returned 0 completions for 1 requests"):
        LLMExtractor(Short(lambda u: _ok(""))).extract([DOC_A])
    with pytest.raises(ValueError, match="max_pairs"):
        LLMExtractor(ScriptedLLM(lambda u: _ok("")), max_pairs=0)
    with pytest.raises(ValueError, match="cluster has 1 values"):
        LLMExtractor(ScriptedLLM(lambda u: _ok(""))).extract([DOC_A, DOC_B], cluster=[1])
    empty = LLMExtractor(ScriptedLLM(lambda u: _ok(""))).extract([])
    assert (empty.pairs, empty.completions, empty.drops, empty.failed_docs) == ([], [], {}, [])


# ====================================================================================================
# rules

PYTHON_FAQ_RST = """\
:tocdepth: 2

=========================
Library and Extension FAQ
=========================

.. only:: html

   .. contents::

General Library Questions
=========================

How do I read a file?
---------------------

Use :func:`open` and iterate over the file object, or call its
:meth:`~io.TextIOBase.read` method::

   with open("data.txt") as f:
       text = f.read()

See :ref:`the tutorial <tut-files>` for more.


Is there an equivalent to C's onexit() in Python?
-------------------------------------------------

The :mod:`atexit` module provides a register function that is similar to C's
:c:func:`onexit`.


Threads
=======

How do I get a single keypress at a time?
-----------------------------------------

For Unix variants there are several solutions.

.. XXX this doesn't work out of the box, some IO expert needs to check why

   Here's a solution without curses::

   import termios

Use ``curses`` for a portable solution.
"""


def test_rules_python_faq_rest() -> None:
    pairs = find_pairs(PYTHON_FAQ_RST)
    assert [q for q, _ in pairs] == [
        "How do I read a file?",
        "Is there an equivalent to C's onexit() in Python?",
        "How do I get a single keypress at a time?",
    ]
    read = pairs[0][1]
    assert read.startswith("Use open and iterate over the file object, or call its\nread method:")
    assert 'with open("data.txt") as f:' in read and "See the tutorial for more." in read
    assert ":func:" not in read and "Threads" not in pairs[1][1] and "====" not in pairs[1][1]
    assert pairs[1][1] == "The atexit module provides a register function that is similar to C's\nonexit."
    keypress = pairs[2][1]
    assert "termios" not in keypress  # the reST comment block is not rendered text
    assert keypress == ("For Unix variants there are several solutions.\n\n"
                        "Use `curses` for a portable solution.")


MARKDOWN_FAQ = """\
# Frequently asked questions

## How do I install the package?

Run `pip install equal`.

### On Windows

Use `py -m pip install equal`.

## Why is extraction slow?

The local model runs on the CPU.

```python
# Is this a heading? No, a comment in a code block.
model.generate(batch)
```

## Changelog

Nothing here is a question.
"""


def test_rules_markdown_faq() -> None:
    pairs = find_pairs(MARKDOWN_FAQ)
    assert [q for q, _ in pairs] == ["How do I install the package?", "Why is extraction slow?"]
    assert pairs[0][1] == "Run `pip install equal`.\n\n### On Windows\n\nUse `py -m pip install equal`."
    assert pairs[1][1].startswith("The local model runs on the CPU.") and pairs[1][1].endswith("```")
    assert "Changelog" not in pairs[1][1]


NBSP = "\u00a0"
DEBIAN_FAQ = f"""\
Table of Contents

1. Definitions and overview

    1.1. What is this FAQ?
    1.2. What is Debian GNU/Linux?

Chapter 1. Definitions and overview

1.1.{NBSP}What is this FAQ?

    This document gives frequently asked questions (with their
    answers!) about the Debian distribution.

3.1.{NBSP}Which Debian distribution (stable/testing/unstable) is better
for me?

    The answer is a bit complicated. It really depends on what you
{NBSP}{NBSP}{NBSP} intend to do.

      * If security or stability are at all important for you:
        install stable. period.

16.2.{NBSP}Feedback

    Comments on this FAQ are welcome.
"""


def test_rules_debian_faq_numbered() -> None:
    pairs = find_pairs(DEBIAN_FAQ)
    assert [q for q, _ in pairs] == [
        "What is this FAQ?",
        "Which Debian distribution (stable/testing/unstable) is better for me?",
    ]
    assert pairs[0][1] == ("This document gives frequently asked questions (with their\n"
                           "answers!) about the Debian distribution.")
    assert pairs[1][1] == (
        "The answer is a bit complicated. It really depends on what you\nintend to do.\n\n"
        "  * If security or stability are at all important for you:\n    install stable. period."
    )


def test_rules_qa_lines_and_problem_solution() -> None:
    qa = "Interview notes\n\nQ: What is your name?\nA: Ada Lovelace.\n\nQuestion: What did you write?\n" \
         "Answer: The first published algorithm for a machine.\n"
    assert find_pairs(qa) == [("What is your name?", "Ada Lovelace."),
                              ("What did you write?", "The first published algorithm for a machine.")]
    math = (
        "Chapter 2. Quadratics\n\nExample usage: the formula below.\n\n"
        "**Problem 1.** Find all real $x$ with $x^2 - 5x + 6 = 0$.\n\n"
        "**Solution.** Factor: $(x-2)(x-3) = 0$, so $x = 2$ or $x = 3$.\n\n"
        "Exercise 2.3: Show that $x^2 + 1 > 0$ for all real $x$.\n\n"
        "Proof. $x^2 \\ge 0$, hence $x^2 + 1 \\ge 1 > 0$.\n\n"
        "Problem 3. Left as an exercise.\n"
    )
    assert find_pairs(math) == [
        ("Find all real $x$ with $x^2 - 5x + 6 = 0$.", "Factor: $(x-2)(x-3) = 0$, so $x = 2$ or $x = 3$."),
        ("Show that $x^2 + 1 > 0$ for all real $x$.", "$x^2 \\ge 0$, hence $x^2 + 1 \\ge 1 > 0$."),
    ]


def test_rules_structured_records() -> None:
    assert find_pairs("ignored", {"question": "What is 2+2?", "answer": "4"}) == [("What is 2+2?", "4")]
    stack = json.dumps({
        "title": "How do I reverse a list in Python?",
        "body": "<p>I have <code>xs = [1, 2, 3]</code>.</p>",
        "answers": [
            {"body": "<p>Use a loop.</p>", "is_accepted": False},
            {"body": "<p>Use <code>xs[::-1]</code> or <code>xs.reverse()</code> &amp; done.</p>",
             "is_accepted": True},
        ],
    })
    assert find_pairs(stack) == [("How do I reverse a list in Python?\n\nI have `xs = [1, 2, 3]`.",
                                  "Use `xs[::-1]` or `xs.reverse()` & done.")]
    accepted = {"title": "Why does 0.1 + 0.2 != 0.3?", "accepted_answer": {"body": "Binary floating point."}}
    assert find_pairs("", accepted) == [("Why does 0.1 + 0.2 != 0.3?", "Binary floating point.")]
    math = {"problem": "Compute 3!.", "solution": "$3! = 6$."}
    assert find_pairs("", math) == [("Compute 3!.", "$3! = 6$.")]
    assert find_pairs("", {"title": "A web page", "body": "no answer here"}) == []
    unanswered = {"title": "Unanswered?", "answers": [{"body": "x", "is_accepted": False}]}
    assert find_pairs(json.dumps(unanswered)) == []


def test_rule_extractor_interface() -> None:
    docs = [
        Document("faq", PYTHON_FAQ_RST, {"chunk": 1}),
        Document("prose", "Plain prose without any questions in it. It just states facts.", {}),
        Document("rec", "", {"question": "Why?", "answer": "Because."}),
    ]
    result = RuleExtractor().extract(docs, cluster=4, round=0)
    assert isinstance(RuleExtractor(), Extractor)
    assert len(result.pairs) == 3
    p = result.pairs[0]
    assert (p.doc_id, p.chunk, p.cluster, p.round) == ("faq", 1, 4, 0)
    assert (p.model, p.prompt_version, p.extractor) == ("", RULES_VERSION, "rules")
    assert result.drops == {"no_pairs_parsed": 1, "question_too_short": 1}
    assert result.completions == [] and result.failed_docs == []
    capped = RuleExtractor(max_pairs=1).extract(docs[:1])
    assert len(capped.pairs) == 1 and capped.drops == {"over_max_pairs": 2}


def test_title_question_documents() -> None:
    from equal.extract.rules import find_pairs, pairs_from_title

    text = "How do I read a file?\n\nUse open() in a with block:\n\n   with open(p) as f:\n       data = f.read()\n"
    assert pairs_from_title(text) == [("How do I read a file?", text.split("\n\n", 1)[1].strip())]
    assert find_pairs(text)[0][0] == "How do I read a file?"
    assert pairs_from_title("A title\n\nbody") == []
    assert pairs_from_title("Is this a question?") == []  # no answer
    assert pairs_from_title("Two line?\ntitle\n\nbody") == []


def test_lines_prompt_style() -> None:
    from equal.extract.prompts import PROMPT_LINES_VERSION, build_extract_messages, extract_instructions

    msgs = build_extract_messages("Water boils at 100 C.", max_pairs=2, style="lines")
    assert "Question: ...\nAnswer: ..." in msgs[1]["content"] and "Water boils" in msgs[1]["content"]
    assert "2 questions" in extract_instructions(max_pairs=2, style="lines")
    assert PROMPT_LINES_VERSION == "qa-lines-v1"
    with pytest.raises(ValueError, match="style"):
        build_extract_messages("x", style="xml")
