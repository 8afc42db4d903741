from pathlib import Path

import pytest

from equal.config import ExtractConfig, load_toml, to_toml
from equal.errors import ConfigError
from equal.pipeline.rundir import RunDir


def _config(**kw: object) -> ExtractConfig:
    base: dict[str, object] = {"corpus": "c.jsonl", "target": "t.jsonl", "budget_docs": 10}
    base.update(kw)
    return ExtractConfig(**base)  # type: ignore[arg-type]


def test_toml_round_trip(tmp_path: Path) -> None:
    cfg = _config(strategy="random", seed=7, alpha=0.001, base_url=None)
    path = tmp_path / "run.toml"
    path.write_text(to_toml(cfg))
    assert load_toml(path) == cfg
    assert "[bandit]" in path.read_text()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"strategy": "greedy"}, "run.strategy='greedy'"),
        ({"clusters": 0}, "cluster.clusters=0"),
        ({"budget_docs": None}, "budget"),
        ({"llm": "openai"}, "base-url"),
        ({"near_dup_threshold": 1.5}, "extract.near_dup_threshold"),
    ],
)
def test_invalid_settings_name_their_key(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _config(**kw)


def test_all_strategy_needs_no_budget() -> None:
    assert _config(strategy="all", budget_docs=None).budget_docs is None


def test_fingerprint_ignores_speed_settings() -> None:
    a = _config()
    assert a.fingerprint() == _config(concurrency=32, batch_size=2).fingerprint()
    assert a.fingerprint() != _config(seed=1).fingerprint()
    assert a.changed_keys(_config(seed=1, clusters=5)) == ["run.seed", "cluster.clusters"]


def test_rundir_refuses_changed_config_unless_forced(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert run.prepare(_config()) is False
    run.commit({"round": 0})
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
    run.commit({"round": 1})
    with open(run.qa, "a") as fh:
        fh.write('{"a": 2}\n{"a": 3')
    state = {"qa_bytes": len('{"a": 1}\n'), "rounds_bytes": 0}
    run.truncate_logs(state)
    assert run.qa.read_text() == '{"a": 1}\n'
