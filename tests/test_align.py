"""``equal align`` and ``equal extract --warmup-docs``: the loss, the mined rows, training, resume, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from equal.align import AlignConfig, AlignExample, align, info_nce_reference, mine_rows, read_align_data
from equal.errors import ConfigError, DataError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytest.importorskip("sentence_transformers")
pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def st_model() -> object:
    from sentence_transformers import SentenceTransformer

    from equal.embed.sentence_transformer import default_model_path

    model = SentenceTransformer(str(default_model_path()), device="cpu", local_files_only=True)
    model.max_seq_length = 64  # mining cost, not what is tested
    return model


@pytest.fixture(scope="module")
def faq_examples() -> list[AlignExample]:
    """Documents of the example corpus with the pairs the rule extractor finds in them (FAQs and maths)."""
    from equal.align import examples_from_pairs
    from equal.data import read_documents
    from equal.extract import RuleExtractor

    docs = [d for d in read_documents(EXAMPLES / "corpus.jsonl", text_field="text", id_field="id").items
            if d.id.startswith(("pyfaq", "debfaq", "champ"))]
    pairs = RuleExtractor().extract(docs).pairs
    return examples_from_pairs({d.id: d.text for d in docs}, pairs)


# ------------------------------------------------------------------------------------------------ the loss


def test_loss_equals_hand_computed_info_nce(rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from equal.align import InfoNCELoss

    b, k, d, tau = 4, 2, 8, 0.02
    anchors = rng.normal(size=(b, d))
    cols = [rng.normal(size=(b, d)) for _ in range(1 + k)]  # positives, negative_1, negative_2
    # rows 0 and 1 are the same document; row 2's first negative is a pair of document 0
    labels = np.array([[0, 5, 6], [0, 7, 8], [1, 0, 9], [2, 3, 4]])
    doc_of_row = labels[:, 0]
    emb = [torch.tensor(anchors)] + [torch.tensor(c) for c in cols]
    loss = InfoNCELoss(None, scale=1 / tau)
    got = float(loss.compute_loss_from_embeddings(emb, torch.tensor(labels)))
    owners = np.concatenate([doc_of_row, labels[:, 1], labels[:, 2]])
    want = info_nce_reference(anchors, np.concatenate(cols), owners, doc_of_row, tau)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    # by hand for anchor 3 (no collision): -log softmax over all 12 candidates, at column 3
    a = anchors[3] / np.linalg.norm(anchors[3])
    c = np.concatenate(cols)
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    logits = c @ a / tau
    by_hand_3 = -(logits[3] - np.log(np.exp(logits - logits.max()).sum()) - logits.max())
    rows_loss = []
    for i in range(b):
        keep = [j for j in range(len(owners)) if j == i or owners[j] != doc_of_row[i]]
        ai = anchors[i] / np.linalg.norm(anchors[i])
        li = c[keep] @ ai / tau
        rows_loss.append(-(float(c[i] @ ai) / tau - np.log(np.exp(li - li.max()).sum()) - li.max()))
    np.testing.assert_allclose(rows_loss[3], by_hand_3, rtol=1e-12)
    np.testing.assert_allclose(got, np.mean(rows_loss), rtol=1e-10)
    # the mask matters here (a collision), and without one the loss is sentence-transformers' own
    plain = MultipleNegativesRankingLoss(None, scale=1 / tau)
    assert abs(float(plain.compute_loss_from_embeddings(emb, None)) - got) > 1e-6
    distinct = np.array([[0, 4, 5], [1, 6, 7], [2, 8, 9], [3, 10, 11]])
    np.testing.assert_allclose(float(loss.compute_loss_from_embeddings(emb, torch.tensor(distinct))),
                               float(plain.compute_loss_from_embeddings(emb, None)), rtol=1e-10)


# ------------------------------------------------------------------------------------------------ the data


def test_mined_negatives_are_other_documents_pairs(st_model: object, faq_examples: list[AlignExample]) -> None:
    ex = faq_examples[:16]
    rows = mine_rows(ex, st_model, hard_negatives=5, negative_range=(2, 200), seed=0)
    assert rows.hard_negatives == 5 and len(rows) == sum(len(e.pairs) for e in ex)
    own = {e.document: set(e.pairs) for e in ex}
    owner = {t: g for g, e in enumerate(ex) for t in e.pairs}
    for i, anchor in enumerate(rows.columns["anchor"]):
        negs = [rows.columns[f"negative_{j}"][i] for j in range(1, 6)]
        assert not own[anchor] & set(negs)
        assert rows.columns["positive"][i] in own[anchor]
        assert rows.columns["label"][i][1:] == [owner[t] for t in negs]
    again = mine_rows(ex, st_model, hard_negatives=5, negative_range=(2, 200), seed=0)
    assert again.columns == rows.columns
    other = mine_rows(ex, st_model, hard_negatives=5, negative_range=(2, 200), seed=1)
    assert other.columns["negative_1"] != rows.columns["negative_1"]
    # ranks 0-1 are skipped: the most similar other-document pair is never drawn
    first = mine_rows(ex, st_model, hard_negatives=1, negative_range=(0, 1), seed=0)
    top = {a: n for a, n in zip(first.columns["anchor"], first.columns["negative_1"], strict=True)}
    assert all(top[a] not in row for a, *row in zip(rows.columns["anchor"],
               *(rows.columns[f"negative_{j}"] for j in range(1, 6)), strict=True))
    # few documents: k is lowered so that no row is dropped
    small = mine_rows(ex[:4], st_model, hard_negatives=15, negative_range=(1, 200), seed=0)
    assert len(small) == sum(len(e.pairs) for e in ex[:4]) and 1 <= small.hard_negatives < 15


def test_read_align_data_jsonl_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"document": "d1", "pairs": ["q\na", {"question": "q2", "answer": "a2"}]}) + "\n"
                    + json.dumps({"document": "d2", "pairs": [{"messages": [
                        {"role": "user", "content": "u"}, {"role": "assistant", "content": "v"}]}]}) + "\n")
    ex = read_align_data(path)
    assert [(e.document, e.pairs) for e in ex] == [("d1", ("q\na", "q2\na2")), ("d2", ("u\nv",))]
    path.write_text(json.dumps({"document": "d1", "pairs": []}) + "\n")
    with pytest.raises(DataError, match=r'pairs\.jsonl:1: field "pairs"'):
        read_align_data(path)
    assert read_align_data(path, skip_invalid=True) == []
    with pytest.raises(DataError, match="at least two"):
        align([AlignExample("d", ("p",))], tmp_path / "out")


# ------------------------------------------------------------------------------------------------ training


class _Stop(Exception):
    pass


def _embed(model_dir: str | Path | None, texts: list[str]) -> np.ndarray:
    from equal.embed import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(model_dir, max_length=64).encode(texts)


def test_align_raises_held_out_similarity_and_resumes(faq_examples: list[AlignExample], tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    order = rng.permutation(len(faq_examples))
    train = [faq_examples[i] for i in order[:48]]
    held = [faq_examples[i] for i in order[48:64]]
    # τ = 0.1, not EQUAL's 0.02: FAQ pairs are close to their documents, and at 0.02 the loss underflows to 0
    config = AlignConfig(max_steps=3, batch_size=8, hard_negatives=1, max_length=64, temperature=0.1, lr=1e-4,
                         save_steps=2, seed=0)
    ref = align(train, tmp_path / "ref", config)
    assert ref.steps == 3 and [s for s, _ in ref.loss_curve] == list(range(1, 4))
    assert (tmp_path / "ref" / "modules.json").is_file() and not (tmp_path / "ref" / "checkpoints").exists()
    record = json.loads((tmp_path / "ref" / "align.json").read_text())
    assert record["finished"] and record["data"]["hard_negatives"] == 1 and record["config"]["temperature"] == 0.1

    docs = [e.document for e in held]
    own = [e.pairs[0] for e in held]

    def similarities(model_dir: str | Path | None) -> tuple[float, float]:
        """Mean cosine of each held-out document to its own pair, and to the other documents' pairs."""
        s = _embed(model_dir, docs) @ _embed(model_dir, own).T
        return float(np.mean(np.diag(s))), float((s.sum() - np.trace(s)) / (s.size - len(s)))

    (own_0, other_0), (own_1, other_1) = similarities(None), similarities(tmp_path / "ref")
    assert own_1 > own_0 + 0.003, (own_0, own_1)
    assert own_1 - other_1 > own_0 - other_0 + 0.01, (own_0 - other_0, own_1 - other_1)

    # stopped after the step-2 checkpoint, then resumed: the same steps, losses and weights
    def stop(p: object) -> None:
        if getattr(p, "step", 0) == 3:  # the last step: only checkpoint-2 is on disk
            raise _Stop

    with pytest.raises(_Stop):
        align(train, tmp_path / "victim", config, on_progress=stop)
    assert (tmp_path / "victim" / "checkpoints" / "checkpoint-2").is_dir()
    assert not json.loads((tmp_path / "victim" / "align.json").read_text())["finished"]
    done = align(train, tmp_path / "victim", config)
    assert done.resumed and done.steps == 3
    np.testing.assert_allclose([v for _, v in done.loss_curve], [v for _, v in ref.loss_curve], rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(_embed(tmp_path / "victim", own[:5]), _embed(tmp_path / "ref", own[:5]), atol=1e-5)
    # finished: returned at once; other settings refused without --force
    assert align(train, tmp_path / "ref", config).steps == 3
    with pytest.raises(ConfigError, match="other settings"):
        align(train, tmp_path / "ref", AlignConfig(max_steps=5, batch_size=8, hard_negatives=1, max_length=64))


# ------------------------------------------------------------------------------------------------ --warmup-docs


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    rows = [json.loads(line) for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines()]
    take = {"champ": 12, "python-faq": 12, "debian-faq": 8, "manpages": 8}
    picked = []
    for row in rows:
        if take.get(row["source"], 0) > 0:
            take[row["source"]] -= 1
            picked.append(row)
    folder = tmp_path_factory.mktemp("warm")
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in picked))
    (folder / "target.jsonl").write_text("".join((EXAMPLES / "target.jsonl").read_text().splitlines(True)[:30]))
    return folder / "corpus.jsonl", folder / "target.jsonl"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:KMeans is training")  # 40 documents in 4 clusters: small on purpose
def test_warmup_extract_kill_9_then_resume(tiny_corpus: tuple[Path, Path], tmp_path: Path) -> None:
    corpus, target = tiny_corpus
    args = ["--corpus", str(corpus), "--target", str(target), "--extractor", "rules", "--budget-docs", "24",
            "--warmup-docs", "16", "--warmup-hard-negatives", "1", "--warmup-batch-size", "8",
            "--warmup-temperature", "0.1", "--clusters", "4", "--clusters-per-round", "2",
            "--docs-per-cluster", "2", "--seed", "3", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "equal.cli", "extract"]
    from equal.config import ExtractConfig
    from equal.pipeline.extract import run_extract

    # the reference in this process (same settings as the command line below)
    cfg = ExtractConfig.from_flat(corpus=str(corpus), target=str(target), extractor="rules", budget_docs=24,
                                  warmup_docs=16, warmup_hard_negatives=1, warmup_batch_size=8,
                                  warmup_temperature=0.1, clusters=4, clusters_per_round=2, docs_per_cluster=2,
                                  seed=3)
    a = run_extract(cfg, tmp_path / "ref").to_dict()
    warm = json.loads((tmp_path / "ref" / "warmup" / "extract.json").read_text())
    assert a["documents_read"] == 24 and len(warm["rows"]) == 16
    rounds = [json.loads(line) for line in (tmp_path / "ref" / "rounds.jsonl").read_text().splitlines()]
    read = [d for r in rounds for d in r["documents"]]
    assert len(read) == 8 and not set(read) & set(warm["documents"])  # the bandit never rereads a warm-up doc
    qa = [json.loads(line) for line in (tmp_path / "ref" / "qa.jsonl").read_text().splitlines()]
    assert sum(r["round"] == -1 for r in qa) == warm["pairs"] > 0
    setup = json.loads((tmp_path / "ref" / "setup.json").read_text())
    from equal.embed.base import fingerprint_dir

    # `equal align RUN` reads the run's pairs joined to their documents
    examples = read_align_data(tmp_path / "ref")
    by_doc: dict[str, set[str]] = {}
    for r in qa:
        by_doc.setdefault(r["doc_id"], set()).add(r["messages"][0]["content"] + "\n" + r["messages"][1]["content"])
    assert {e.doc_id: set(e.pairs) for e in examples} == by_doc
    # documents and target embedded with the aligned encoder
    assert f"fp={fingerprint_dir(tmp_path / 'ref' / 'warmup' / 'model')}" in setup["embedder"]

    victim = tmp_path / "victim"
    proc = subprocess.Popen([*cmd, *args, "--out", str(victim)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    marker = victim / "warmup" / "extract.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not marker.exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # while aligning: the warm-up's pairs are committed, the model is not
    proc.wait()
    assert not (victim / "state.json").exists()
    done = subprocess.run([*cmd, *args, "--out", str(victim)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    b = json.loads(done.stdout)
    for key in ("documents_read", "pairs", "rounds", "ot_distance"):
        assert a[key] == b[key], key
    assert (tmp_path / "ref" / "qa.jsonl").read_bytes() == (victim / "qa.jsonl").read_bytes()


def test_cli_align_usage_error_and_json(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"document": f"document number {i} about topic {i}",
                                        "pairs": [f"what is topic {i}?\ntopic {i}"]}) + "\n" for i in range(4)))
    cmd = [sys.executable, "-m", "equal.cli", "align", str(path), "--out", str(tmp_path / "m")]
    bad = subprocess.run([*cmd, "--negative-range", "5-2"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "negative_range" in bad.stderr and not (tmp_path / "m").exists()
    ok = subprocess.run([*cmd, "--max-steps", "1", "--batch-size", "4", "--hard-negatives", "1", "--json"],
                        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert out["steps"] == 1 and out["data"]["documents"] == 4 and out["config"]["temperature"] == 0.02
    from equal.embed import get_embedder

    assert get_embedder(f"st:{tmp_path / 'm'}").encode(["x"]).shape == (1, 384)


def test_warmup_settings_are_validated() -> None:
    from equal.config import ExtractConfig

    base = {"corpus": "c.jsonl", "target": "t.jsonl", "budget_docs": 10}
    with pytest.raises(ConfigError, match=r"embed\.warmup_docs=10: must be < run\.budget_docs=10"):
        ExtractConfig.from_flat(**base, warmup_docs=10)
    with pytest.raises(ConfigError, match=r"embed\.warmup_negative_range='9-3'"):
        ExtractConfig.from_flat(**base, warmup_docs=4, warmup_negative_range="9-3")
    with pytest.raises(ConfigError, match=r"embed\.warmup_batch_size=1"):
        ExtractConfig.from_flat(**base, warmup_docs=4, warmup_batch_size=1)
    cfg = ExtractConfig.from_flat(**base, warmup_docs=4)
    assert cfg.embed.warmup_docs == 4 and cfg.to_dict()["embed"]["warmup_negative_range"] == "2-200"
    with pytest.raises(ConfigError, match=r"align\.temperature=0"):
        AlignConfig(temperature=0)
