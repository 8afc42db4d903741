"""Settings of `equal extract`: sections, TOML, recipes and --set, the fingerprint, the run directory, the CLI."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from equal.config import (
    PART_ALIASES,
    ExtractConfig,
    flat_settings,
    load_toml,
    parse_value,
    resolve_config,
    to_toml,
)
from equal.errors import ConfigError
from equal.pipeline.rundir import RunDir
from equal.pipeline.state import RunState

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "equal-paper.toml"


def _config(**kw: object) -> ExtractConfig:
    base: dict[str, object] = {"corpus": "c.jsonl", "target": "t.jsonl", "budget_docs": 10}
    base.update(kw)
    return ExtractConfig.from_flat(**base)


def test_toml_round_trip(tmp_path: Path) -> None:
    cfg = _config(strategy="random", seed=7, alpha=0.001, base_url=None, filters=("exact", "decontam"))
    path = tmp_path / "run.toml"
    path.write_text(to_toml(cfg))
    assert load_toml(path) == cfg
    text = path.read_text()
    assert "[bandit]" in text and "[bandit.ucb]\nalpha = 0.001" in text and "[filters.decontam]\nngram = 13" in text
    # the chosen parts' settings are resolved: defaults filled in
    assert _config().bandit.params == {"ucb": {"alpha": "decay", "credit": "uniform", "tau": 0.2}}
    assert _config().filters.params["near"] == {"threshold": 0.8, "num_perm": 128, "ngram": 5}


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"strategy": "greedy"}, "run.strategy='greedy'"),
        ({"clusters": 0}, "cluster.clusters=0"),
        ({"budget_docs": None}, "budget"),
        ({"llm": "openai"}, "base-url"),
        ({"near_dup_threshold": 1.5}, r"filters\.near: threshold=1\.5"),
        ({"alpha": -1.0}, r"bandit\.ucb: alpha=-1\.0"),
        ({"policy": "exp3", "alpha": 0.1}, r"bandit\.ucb: settings given for a policy that is not chosen"),
        ({"policy": "greedy"}, r"bandit\.policy: unknown policy 'greedy'"),
        ({"filters": ("exact", "fuzzy")}, r"filters\.filters: unknown filter 'fuzzy'"),
        ({"doc_order": "shuffled"}, r"sampler\.doc_order='shuffled'"),
    ],
)
def test_invalid_settings_name_their_key(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _config(**kw)


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"bandit\.alhpa: unknown setting"):
        ExtractConfig.from_dict({"data": {"corpus": "c", "target": "t"}, "run": {"budget_docs": 1},
                                 "bandit": {"alhpa": 1}})
    with pytest.raises(ConfigError, match=r"bandit\.ucb: unknown setting\(s\) beta"):
        ExtractConfig.from_dict({"data": {"corpus": "c", "target": "t"}, "run": {"budget_docs": 1},
                                 "bandit": {"ucb": {"beta": 1}}})


def test_all_strategy_needs_no_budget() -> None:
    assert _config(strategy="all", budget_docs=None).run.budget_docs is None


def test_fingerprint_ignores_speed_settings() -> None:
    a = _config()
    assert a.fingerprint() == _config(concurrency=32, batch_size=2).fingerprint()
    assert a.fingerprint() != _config(seed=1).fingerprint()
    assert a.changed_keys(_config(seed=1, clusters=5)) == ["run.seed", "cluster.clusters"]
    assert a.changed_keys(_config(alpha=0.5)) == ["bandit.ucb.alpha"]
    # giving a part's default explicitly changes nothing
    assert a.fingerprint() == _config(alpha="decay", near_dup_threshold=0.8).fingerprint()


def test_resolve_config_recipe_then_options_then_set(tmp_path: Path) -> None:
    cfg = resolve_config(RECIPE, {"corpus": "c.jsonl", "target": "t.jsonl", "clusters": 30},
                         ["bandit.docs_per_cluster=4", "reward.ot.offset=0.1", 'filters.filters=["exact"]'])
    assert cfg.cluster.clusters == 30 and cfg.cluster.diagonal_covariance and cfg.cluster.cluster_order == "kmeans"
    assert cfg.bandit.docs_per_cluster == 4
    assert cfg.bandit.params == {"ucb": {"alpha": 0.001, "credit": "uniform", "tau": 0.2}}
    assert cfg.part_config("reward").offset == 0.1 and cfg.filters.filters == ("exact",)
    assert resolve_config(None, {"corpus": "c", "target": "t", "budget_docs": 3, "filters": "exact, near"}
                          ).filters.filters == ("exact", "near")
    with pytest.raises(ConfigError, match=r"--alpha 0\.5 and --set bandit\.ucb\.alpha=0\.1 disagree"):
        resolve_config(None, {"corpus": "c", "target": "t", "budget_docs": 3, "alpha": 0.5},
                       ["bandit.ucb.alpha=0.1"])
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        resolve_config(None, {"corpus": "c", "target": "t", "budget_docs": 3}, ["clusters"])
    with pytest.raises(ConfigError, match=r"data\.corpus: missing"):
        resolve_config(RECIPE, {})
    assert parse_value("0.5") == 0.5 and parse_value("true") is True and parse_value("decay") == "decay"


def test_rundir_refuses_changed_config_unless_forced(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert run.prepare(_config()) is False
    run.commit(RunState())
    assert run.prepare(_config(concurrency=3)) is True  # same results: resumes
    with pytest.raises(ConfigError, match=r"run\.seed"):
        run.prepare(_config(seed=3))
    (run.root / "llm_cache.sqlite").write_bytes(b"paid for")
    assert run.prepare(_config(seed=3), force=True) is False
    assert not run.state.exists()
    assert (run.root / "llm_cache.sqlite").read_bytes() == b"paid for"


def test_truncate_logs_cuts_uncommitted_rows(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.qa.write_text('{"a": 1}\n')
    state = run.commit(RunState(round=1))
    assert state.qa_bytes == len('{"a": 1}\n')
    with open(run.qa, "a") as fh:
        fh.write('{"a": 2}\n{"a": 3')
    run.truncate_logs(state)
    assert run.qa.read_text() == '{"a": 1}\n'


def test_run_state_round_trip(tmp_path: Path) -> None:
    from equal.llm import Completion, Ledger

    ledger = Ledger()
    ledger.add([Completion("x", tokens_in=5, tokens_out=2), Completion(None, error="boom"),
                Completion("y", tokens_in=9, tokens_out=9, cached=True)])
    state = RunState(round=2, cursors=(1, 0, 3), documents_read=4, pairs=3, tokens_used=25,
                     policy={"policy": "ucb"}, ledger=ledger, drops={"exact": 1})
    ledger.add([Completion("z", tokens_in=1)])  # the state holds its own copy
    run = RunDir(tmp_path)
    committed = run.commit(state)
    back = run.read_state()
    assert back == committed and back.ledger.requests == 3 and back.ledger.failed == 1 and back.ledger.cached == 1
    assert back.ledger.tokens_in == 5  # the cached answer cost nothing this time
    run.state.write_text(json.dumps({"round": 1}))
    with pytest.raises(Exception, match=r"state\.json: not an equal run state"):
        run.read_state()


# ----------------------------------------------------------------------------------------------- the CLI


def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    from equal.cli import main

    monkeypatch.setattr(sys, "argv", ["equal", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_cli_options_are_the_config_settings(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import typer

    from equal.cli import app

    command = typer.main.get_command(app).commands["extract"]  # type: ignore[attr-defined]
    options = {p.name: p for p in command.params}
    for name, (_section, f, _t) in flat_settings().items():
        assert name in options, name
        assert options[name].default is None  # not given: the recipe's value or the config default applies
        if f.default is not dataclasses.MISSING and f.default is not None:
            shown = ",".join(f.default) if isinstance(f.default, tuple) else f.default
            assert f"(default: {shown})" in options[name].help
    assert set(PART_ALIASES) <= set(options)
    code, out, _ = _cli(monkeypatch, capsys, "extract", "--help")
    assert code == 0
    for panel in ("Recipe", "Data", "Run", "Cluster", "Bandit", "Sampler", "Reward", "Filters", "Llm"):
        assert f"─ {panel} " in out, panel


def test_cli_usage_errors_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                 tmp_path: Path) -> None:
    base = ["extract", "--corpus", "c.jsonl", "--target", "t.jsonl", "--out", tmp_path / "r"]
    code, _, err = _cli(monkeypatch, capsys, *base, "--budget-docs", "4", "--alpha", "0.5",
                        "--set", "bandit.ucb.alpha=0.1")
    assert code == 2 and "disagree" in err
    code, _, err = _cli(monkeypatch, capsys, *base, "--budget-docs", "4", "--policy", "exp3", "--alpha", "0.5")
    assert code == 2 and "not chosen" in err
    code, _, err = _cli(monkeypatch, capsys, *base)
    assert code == 2 and "budget" in err
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_cli_runtime_errors_are_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    code, out, err = _cli(monkeypatch, capsys, "extract", "--corpus", "c.jsonl", "--target", "t.jsonl",
                          "--budget-docs", "4", "--out", tmp_path / "file", "--json")
    # an --out that cannot be a run directory is a wrong option value: a usage error
    assert code == 2 and out == "" and err.count("\n") == 1 and "is a file" in err
    code, _, err = _cli(monkeypatch, capsys, "-v", "extract", "--corpus", "c.jsonl", "--target", "t.jsonl",
                        "--budget-docs", "4", "--out", tmp_path / "file")
    assert code == 2 and "Traceback" in err and err.rstrip().endswith("(or not exist)")
