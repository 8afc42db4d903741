"""Prompts the user controls: a template file, few-shot target examples, chunk size and overlap as settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from equal.config import ExtractConfig
from equal.errors import ConfigError
from equal.extract import LLMExtractor
from equal.extract.prompts import (
    build_extract_messages,
    extract_instructions,
    load_prompt_template,
    render_examples,
    select_examples,
)
from equal.llm import GenerationParams, cache_key
from equal.pipeline.factory import _extractor

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DOC = "The Eiffel Tower is 330 metres tall.\n\nIt was finished in 1889 for the World's Fair in Paris."
P = GenerationParams(max_tokens=8, seed=0)


class _Doc:
    def __init__(self, id: str, text: str) -> None:
        self.id, self.text, self.meta = id, text, {}


def _config(**kw: object) -> ExtractConfig:
    return ExtractConfig.from_flat(corpus=str(EXAMPLES / "corpus.jsonl"), target=str(EXAMPLES / "target.jsonl"),
                                   budget_docs=4, **kw)


def _template(tmp_path: Path, text: str, name: str = "prompt.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- templates


def test_template_placeholders_are_filled(tmp_path: Path) -> None:
    path = _template(tmp_path, "Passage:\n{document}\n\nSee:\n{examples}\n\nWrite {n_pairs} pairs. JSON {{like}} this.")
    text = load_prompt_template(path, need_examples=True)
    msgs = build_extract_messages(DOC, max_pairs=2, template=text, examples=["Q one\nA one", "Q two\nA two"])
    assert msgs[0]["role"] == "system" and msgs[1]["role"] == "user"
    assert msgs[1]["content"] == ("Passage:\n" + DOC + "\n\nSee:\nExample 1:\nQ one\nA one\n\nExample 2:\nQ two\nA two"
                                  "\n\nWrite 2 pairs. JSON {like} this.")
    # the instructions validation compares answers with: the template without document and examples
    assert "Write 3 pairs. JSON {like} this." in extract_instructions(max_pairs=3, template=text)


@pytest.mark.parametrize(("text", "needle"), [
    ("Doc: {document}\nThen {doc} again", "unknown placeholder {doc}"),
    ("line one\nline two {n_pairs} {0}", "unknown placeholder {0}"),
    ("Write {n_pairs} pairs.", "missing placeholder {document}"),
    ("{document} with a lone } brace", "literal braces"),
    ("{document:>10}", "takes no format spec"),
])
def test_template_errors_name_the_file_and_placeholder(tmp_path: Path, text: str, needle: str) -> None:
    path = _template(tmp_path, text, "my-template.txt")
    with pytest.raises(ConfigError, match=r"my-template\.txt") as info:
        load_prompt_template(path)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_template_error_gives_the_line(tmp_path: Path) -> None:
    path = _template(tmp_path, "{document}\nsecond\nthird {pairs}\n")
    with pytest.raises(ConfigError, match=r"prompt.txt:3: unknown placeholder \{pairs\}"):
        load_prompt_template(path)


def test_config_validates_the_template(tmp_path: Path) -> None:
    no_examples = _template(tmp_path, "{document}\nWrite {n_pairs} pairs.")
    assert _config(prompt_template=str(no_examples)).extract.prompt_template == str(no_examples)
    with pytest.raises(ConfigError, match=r"prompt.txt: missing placeholder \{examples\}"):
        _config(prompt_template=str(no_examples), few_shot=2)
    with pytest.raises(ConfigError, match=r"nope\.txt: cannot read"):
        _config(prompt_template=str(tmp_path / "nope.txt"))
    with pytest.raises(ConfigError, match=r"extract\.few_shot"):
        _config(few_shot=-1)


# ----------------------------------------------------------------------------------------------- few-shot


def test_default_prompt_is_unchanged_without_few_shot() -> None:
    """few_shot 0 and no template: the messages of the built-in prompt, byte for byte (caches stay valid)."""
    rules = ("Write at most 3 question-answer pairs based only on the document above.\nRules:\n- Each question "
             "must be understandable without the document; name the subject instead of saying \"the document\" or "
             "\"the text\".\n- Each answer must be correct according to the document. When the document shows a "
             "solution, steps or code, include them in the answer.\n- Reply with only a JSON list like "
             '[{"question": "...", "answer": "..."}] and no other text.')
    assert build_extract_messages(DOC) == [
        {"role": "system", "content": "You turn documents into question-answer pairs for training an assistant. "
                                      "You use only facts stated in the document."},
        {"role": "user", "content": "Document:\n<<<\n" + DOC + "\n>>>\n\n" + rules},
    ]
    lines = build_extract_messages(DOC, style="lines")
    assert lines[1]["content"] == ("Text:\n" + DOC + "\n\nWrite up to 3 questions that this text answers, each "
                                   "followed by its answer, using only the text. Use the format:\nQuestion: ...\n"
                                   "Answer: ...")


def test_select_examples_is_seeded() -> None:
    texts = [f"example {i}" for i in range(20)]
    a = select_examples(texts, 3, seed=5)
    assert a == select_examples(texts, 3, seed=5) and len(set(a)) == 3 and set(a) <= set(texts)
    assert a != select_examples(texts, 3, seed=6)
    assert select_examples(texts, 50, seed=0) != texts and sorted(select_examples(texts, 50, seed=0)) == sorted(texts)
    assert select_examples(texts, 0) == []
    long = render_examples(["x" * 5000])
    assert long.startswith("Example 1:\n") and len(long) < 700


def test_few_shot_changes_the_prompt_and_the_cache_key(tmp_path: Path) -> None:
    from equal.pipeline.setup import read_target

    plain = _extractor(_config(), lambda: None)
    shots = _extractor(_config(few_shot=2), lambda: None)
    other_seed = _extractor(_config(few_shot=2, seed=9), lambda: None)
    assert len(shots.examples) == 2 and plain.examples == ()
    docs = [_Doc("d1", DOC)]
    (m0,), (m2,), (m9,) = (e.extract_requests(docs) for e in (plain, shots, other_seed))
    assert m0 == build_extract_messages(DOC, style="lines")  # the local model's default style, unchanged
    assert m2[1]["content"].startswith("Text:\n" + DOC) and "Example 2:\n" in m2[1]["content"]
    # the examples are target records (their rendered text), in the prompt between the text and the rules
    assert set(shots.examples) <= set(read_target(_config().data))
    for ex in shots.examples:
        assert ex.split("\n")[0][:80] in m2[1]["content"]
    assert m2[1]["content"].index("Example 1:") < m2[1]["content"].index("Write up to 3 questions")
    keys = {cache_key("m", m, P) for m in (m0, m2, m9)}
    assert len(keys) == 3  # few-shot examples (and which ones) are part of the request's cache key
    assert plain.prompt_version == "qa-lines-v1" and shots.prompt_version == "qa-lines-v1+fewshot2"
    # and part of the run's fingerprint: a run directory refuses to resume with other few-shot settings
    assert _config().fingerprint() != _config(few_shot=2).fingerprint()
    assert "extract.few_shot" in _config().changed_keys(_config(few_shot=2))


def test_template_reaches_the_extractor_and_the_pairs(tmp_path: Path) -> None:
    path = _template(tmp_path, "Read this:\n{document}\nExamples:\n{examples}\nAsk {n_pairs} questions.\n")
    ex = _extractor(_config(prompt_template=str(path), few_shot=1, max_pairs=2), lambda: None)
    (msgs,) = ex.extract_requests([_Doc("d1", DOC)])
    assert msgs[1]["content"].startswith("Read this:\n" + DOC + "\nExamples:\nExample 1:\n")
    assert msgs[1]["content"].endswith("\nAsk 2 questions.\n")
    assert ex.prompt_version.startswith("template-") and ex.prompt_version.endswith("+fewshot1")
    default = LLMExtractor(None, prompt_style="lines")  # type: ignore[arg-type]
    assert cache_key("m", msgs, P) != cache_key("m", default.extract_requests([_Doc("d1", DOC)])[0], P)


# ----------------------------------------------------------------------------------------------- chunking


def test_chunk_size_and_overlap_are_settings_in_the_fingerprint(tmp_path: Path) -> None:
    from equal.data import chunk_documents, read_documents
    from equal.pipeline.setup import read_corpus

    corpus = tmp_path / "c.jsonl"
    words = " ".join(f"w{i}." for i in range(600))
    corpus.write_text(json.dumps({"id": "long", "text": words}) + "\n")
    base = dict(corpus=str(corpus), target=str(EXAMPLES / "target.jsonl"), budget_docs=2, chunk_tokens=64)
    plain, lapped = ExtractConfig.from_flat(**base), ExtractConfig.from_flat(**base, chunk_overlap=16)
    a, b = read_corpus(plain)[0], read_corpus(lapped)[0]
    items = read_documents(str(corpus)).items
    assert [d.text for d in b] == [d.text for d in chunk_documents(items, 64, overlap=16)]
    assert len(b) > len(a) > 1
    assert b[1].text.split()[0] in b[0].text  # the second chunk starts inside the first
    assert plain.fingerprint() != lapped.fingerprint()
    assert plain.changed_keys(lapped) == ["data.chunk_overlap"]
    assert "data.chunk_tokens" in plain.changed_keys(ExtractConfig.from_flat(**{**base, "chunk_tokens": 128}))
    with pytest.raises(ConfigError, match=r"data.chunk_overlap=64: must be < data.chunk_tokens=64"):
        ExtractConfig.from_flat(**base, chunk_overlap=64)
