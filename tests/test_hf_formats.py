"""Hugging Face formats in and out: save_to_disk and Hub-layout folders as inputs, GSM8K and TRL records,
``equal export --format hf`` and ``--card`` (read back with the real ``datasets``), ``--keep-fields``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from equal.config import ExtractConfig
from equal.data import read_documents, read_sft, to_messages
from equal.data.sft import detect_format, from_messages
from equal.errors import DataError

datasets = pytest.importorskip("datasets")
datasets.disable_progress_bars()

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"d{i}", "text": f"Document {i}: how to add {i} and {i + 1}; the sum is {2 * i + 1}.",
             "license": "CC-BY-4.0" if i % 2 else "MIT", "source": f"src{i % 3}"} for i in range(n)]


# ------------------------------------------------------------------------------------------- reading


def test_dataset_folder_is_a_corpus_with_row_errors_and_skips(tmp_path: Path) -> None:
    rows = _rows(6)
    rows[3]["text"] = None  # a null text: the error names the Arrow file, the row and the field
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match=r"data-00000-of-00001\.arrow: row 4: field \"text\": expected a string, "
                                        r"got null"):
        read_documents(tmp_path / "ds")
    res = read_documents(tmp_path / "ds", skip_invalid=True, keep_fields=("license", "missing"))
    assert [d.id for d in res.items] == ["d0", "d1", "d2", "d4", "d5"]
    assert res.skipped == 1 and "row 4" in res.errors[0]
    assert [d.text for d in res.items] == [r["text"] for r in rows if r["text"] is not None]
    assert res.items[1].meta["fields"] == {"license": "CC-BY-4.0", "missing": None}
    assert res.items[1].meta["row"] == 1 and res.items[1].meta["source"].endswith(".arrow")


def test_dataset_dict_needs_a_known_split(tmp_path: Path) -> None:
    rows = _rows(5)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:4]),
                          "test": datasets.Dataset.from_list(rows[4:])}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"several splits \(train, test\).*--split"):
        read_documents(tmp_path / "dd")
    with pytest.raises(DataError, match=r"no split 'dev'; the splits are train, test"):
        read_documents(tmp_path / "dd", split="dev")
    assert [d.id for d in read_documents(tmp_path / "dd", split="test").items] == ["d4"]
    assert [d.id for d in read_documents(tmp_path / "dd" / "train").items] == ["d0", "d1", "d2", "d3"]
    with pytest.raises(DataError, match="not a Hugging Face dataset folder"):
        read_documents(EXAMPLES / "corpus.jsonl", split="train")


def test_hub_layout_reads_one_split_and_not_the_card(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    rows = _rows(7)
    pq.write_table(pa.Table.from_pylist(rows[:3]), hub / "data" / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[3:5]), hub / "data" / "train-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[5:]), hub / "data" / "test-00000-of-00001.parquet")
    (hub / "README.md").write_text("---\nlicense: mit\n---\n# A card, not a document\n")
    with pytest.raises(DataError, match=r"several splits \(test, train\)"):
        read_documents(hub)
    assert [d.id for d in read_documents(hub, split="train").items] == ["d0", "d1", "d2", "d3", "d4"]
    # a card at the top of a plain folder is not a document either; other Markdown files are
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "README.md").write_text("---\npretty_name: x\n---\nHello\n")
    (plain / "notes.md").write_text("A real document.\n")
    assert [d.text for d in read_documents(plain).items] == ["A real document.\n"]


def test_gsm8k_question_answer_targets(tmp_path: Path) -> None:
    path = tmp_path / "gsm8k.jsonl"
    path.write_text(json.dumps({"question": "What is 2+3?", "answer": "2+3=5\n#### 5"}) + "\n"
                    + json.dumps({"question": "What is 1+1?"}) + "\n")
    with pytest.raises(DataError, match=r"gsm8k\.jsonl:2: field \"answer\": missing"):
        read_sft(path)
    res = read_sft(path, skip_invalid=True)
    assert res.format == "qa" and res.skipped == 1
    assert to_messages(res.records[0]) == [{"role": "user", "content": "What is 2+3?"},
                                           {"role": "assistant", "content": "2+3=5\n#### 5"}]
    assert from_messages(to_messages(res.records[0]), "qa") == res.records[0]
    # a save_to_disk GSM8K target is an SFT target of the extraction run
    from equal.config import DataConfig
    from equal.pipeline.setup import read_target, target_format

    datasets.Dataset.from_list(res.records).save_to_disk(str(tmp_path / "t"))
    cfg = DataConfig(corpus="unused", target=str(tmp_path / "t"))
    assert target_format(cfg) == "sft"
    assert read_target(cfg) == ["What is 2+3?\n2+3=5\n#### 5"]


def test_trl_prompt_completion_plain_and_conversational(tmp_path: Path) -> None:
    plain = {"prompt": "Say hi.", "completion": "Hi!"}
    conv = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}],
            "completion": [{"role": "assistant", "content": "Hi!"}]}
    assert detect_format(plain) == detect_format(conv) == "prompt_completion"
    assert to_messages(plain) == [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]
    assert to_messages(conv) == [*conv["prompt"], *conv["completion"]]
    assert from_messages(to_messages(conv), "prompt_completion") == conv
    assert from_messages(to_messages(plain), "prompt_completion") == plain
    bad = {"prompt": "x", "completion": [{"role": "user", "content": "y"}]}
    only_prompt = {"prompt": "x"}
    path = tmp_path / "trl.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (plain, bad, only_prompt, conv)))
    with pytest.raises(DataError, match=r"trl\.jsonl:2: field \"completion\[0\]\.role\": must be 'assistant'"):
        read_sft(path)
    res = read_sft(path, skip_invalid=True)
    assert res.records == [plain, conv] and res.skipped == 2
    assert "prompt-only" in res.errors[1]
    # TRL's own Parquet round trip (a Dataset of conversational records) reads back the same
    datasets.Dataset.from_list([conv]).to_parquet(str(tmp_path / "trl.parquet"))
    assert to_messages(read_sft(tmp_path / "trl.parquet").records[0]) == to_messages(conv)


# ---------------------------------------------------------------------------------- extract and export


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExtractConfig]:
    """One small rules-extractor run: DatasetDict corpus (--split), save_to_disk GSM8K target, kept fields."""
    from equal.embed import get_embedder
    from equal.pipeline.extract import run_extract

    root = tmp_path_factory.mktemp("hf")
    rows = [json.loads(line) for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines()][:40]
    for i, r in enumerate(rows):
        r["license"] = "CC-BY-4.0" if i % 2 else "MIT"
        r["text"] = r["text"][:400]  # short documents: the embedding is most of the run's time
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:3])}).save_to_disk(str(root / "corpus"))
    target = [json.loads(line) for line in (EXAMPLES / "target.jsonl").read_text().splitlines()][:30]
    qa = [{"question": t["messages"][0]["content"], "answer": t["messages"][1]["content"]} for t in target][:20]
    datasets.Dataset.from_list(qa).save_to_disk(str(root / "target"))
    cfg = ExtractConfig.from_flat(corpus=str(root / "corpus"), target=str(root / "target"), split="train",
                                  extractor="rules", budget_docs=12, clusters=4, clusters_per_round=2,
                                  docs_per_cluster=3, seed=1, keep_fields="license,source")
    run_extract(cfg, root / "run", embedder=get_embedder("minilm"))
    return root / "run", cfg


def test_kept_fields_reach_qa_jsonl_and_not_the_fingerprint(hf_run: tuple[Path, ExtractConfig]) -> None:
    run, cfg = hf_run
    corpus = {r["id"]: r for r in (json.loads(x) for x in (EXAMPLES / "corpus.jsonl").read_text().splitlines())}
    records = [json.loads(line) for line in (run / "qa.jsonl").read_text().splitlines()]
    assert records
    for rec in records:
        parent = rec["doc_id"].split("#c")[0]
        assert rec["fields"]["source"] == corpus[parent]["source"]
        assert rec["fields"]["license"] in ("MIT", "CC-BY-4.0")
    assert cfg.fingerprint() == cfg.replace(keep_fields="license").fingerprint()
    assert cfg.fingerprint() != cfg.replace(split="test").fingerprint()


def test_export_hf_save_to_disk_round_trip(hf_run: tuple[Path, ExtractConfig], tmp_path: Path) -> None:
    from equal.pipeline.extract import export_run

    run, _ = hf_run
    records = [json.loads(line) for line in (run / "qa.jsonl").read_text().splitlines()]
    assert export_run(run, tmp_path / "hf", "hf") == len(records)
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert ds.to_list() == records
    # the export is itself an input: a pool for select/diversity, with its provenance
    assert read_sft(tmp_path / "hf").records == records
    # rewriting replaces an earlier export; a folder of other files is never deleted
    assert export_run(run, tmp_path / "hf", "hf") == len(records)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not a Hugging Face dataset"):
        export_run(run, tmp_path / "other", "hf")
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_export_card_loads_with_load_dataset(hf_run: tuple[Path, ExtractConfig], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from equal.cli import main

    run, _ = hf_run
    records = [json.loads(line) for line in (run / "qa.jsonl").read_text().splitlines()]
    out = tmp_path / "hub"
    monkeypatch.setattr(sys, "argv", ["equal", "export", str(run), "--card", "--out", str(out), "--json"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 0
    assert json.loads(capsys.readouterr().out) == {"run": str(run), "output": str(out), "format": "messages",
                                                   "card": True, "records": len(records)}
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "README.md", "data/train-00000-of-00001.parquet"]
    assert datasets.config.HF_HUB_OFFLINE  # conftest: offline, so this is the local folder, read as the Hub would
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert list(ds) == ["train"] and ds["train"].to_list() == records
    card = (out / "README.md").read_text()
    front = card.split("---\n")[1]
    licences = {r["fields"]["license"].lower() for r in records}
    assert all(f'- "{x}"' in front for x in licences) or f'license: "{licences.pop()}"' in front
    assert '- "n<1K"' in front and "- question-answering" in front and "config_name: default" in front
    assert f"| pairs | {len(records)} |" in card and "| strategy | `equal` |" in card
    assert 'split = "train"' in card and "## Strategy and cost" in card
    # the card folder is an input again (Hub layout: data/train-*.parquet; the card is skipped)
    assert len(read_sft(out).records) == len(records)
    # a file name for a folder output is a usage error (exit 2), not a silently renamed output
    monkeypatch.setattr(sys, "argv", ["equal", "export", str(run), "--card", "--out", str(tmp_path / "x.parquet")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "writes a folder" in capsys.readouterr().err


def test_card_licences_and_size_categories(tmp_path: Path) -> None:
    from equal.pipeline.card import dataset_card, size_category

    assert [size_category(n) for n in (0, 999, 1000, 9_999, 10_000, 999_999, 1_000_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M"]
    records = [{"fields": {"license": "Apache-2.0"}}, {"fields": {"license": "Apache-2.0"}},
               {"fields": {"license": "Our Own Terms"}}, {"fields": {"license": None}}]
    card = dataset_card(tmp_path, records)  # not a run directory: the card says what it can
    front = card.split("---\n")[1]
    assert 'license:\n- "apache-2.0"\n- "other"\nlicense_name: "our-own-terms"\n' in front
    assert "| Apache-2.0 | 2 |" in card and "| Our Own Terms | 1 |" in card and "| unknown | 1 |" in card
