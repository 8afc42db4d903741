"""The run directory of ``equal extract``: file names, the committed state, and resume.

Commit protocol
---------------
``qa.jsonl`` and ``rounds.jsonl`` are append-only. A round first appends its rows, then writes
``state.json`` (a :class:`~equal.pipeline.state.RunState`) atomically (temp file, fsync, rename); that rename
is the commit. The state records the byte length of both logs at the commit, so on resume anything past
those offsets (rows of a round that was interrupted before its commit, or half a line) is cut away and the
round is redone. Redoing it
costs no LLM request: every completion was stored in ``llm_cache.sqlite`` the moment it arrived.

A directory written by an older ``equal`` (its state in ``bandit.json``) is refused with a one-line message:
its settings and state do not map onto today's one to one, and ``--force`` restarts it keeping its LLM cache.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from equal.config import ExtractConfig, load_toml, to_toml
from equal.data.io import atomic_write_json, atomic_write_text
from equal.errors import ConfigError, DataError
from equal.pipeline.state import RunState

__all__ = ["RunDir"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory (see DESIGN.md, 'Run directory')."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "run.toml"

    @property
    def documents(self) -> Path:
        return self.root / "documents.parquet"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    @property
    def clusters(self) -> Path:
        return self.root / "clusters.parquet"

    @property
    def setup_done(self) -> Path:
        return self.root / "setup.json"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def legacy_state(self) -> Path:
        """Where ``equal`` before the loop-as-parts kept the state (a plain dict)."""
        return self.root / "bandit.json"

    @property
    def qa(self) -> Path:
        return self.root / "qa.jsonl"

    @property
    def rounds(self) -> Path:
        return self.root / "rounds.jsonl"

    @property
    def llm_cache(self) -> Path:
        return self.root / "llm_cache.sqlite"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def prepare(self, config: ExtractConfig, *, force: bool = False) -> bool:
        """Create or reopen the directory for ``config``; return True when resuming.

        A directory made with other result-changing settings is refused unless ``force`` or unless that
        run stopped before its setup was done; then its run state is discarded but ``llm_cache.sqlite``
        is kept, so requests already paid for are served from it and never sent again. ``force`` with the
        same settings restarts the run the same way (so requests whose cached answer is not a real one are
        asked again).
        """
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--out {self.root} is a file; the run directory must be a folder (or not exist)")
        self.root.mkdir(parents=True, exist_ok=True)
        started = self.state.exists() or self.setup_done.exists()
        if self.legacy_state.exists() and not force:
            raise ConfigError(
                f"{self.root} holds a run of an older equal (bandit.json); use a new --out directory, "
                "or --force to restart it (the LLM cache is kept)"
            )
        if self.config.exists() and not self.legacy_state.exists():
            changed = self._changed(config)
            if not changed and not force:
                # settings that do not change results (concurrency, batch size) may differ
                atomic_write_text(self.config, to_toml(config))
                return self.state.exists()
            if not changed:
                # --force with the same settings restarts from the LLM cache: every answer is served from
                # it again, and what it does not hold as a real answer (an empty one stored by an older
                # version, a failure) is asked again
                logger.warning("restarting %s (--force); answers already paid for come from its LLM cache",
                               self.root)
            # A run that stopped before its setup finished (a bad corpus line, say) has nothing to lose
            # but its LLM cache, which is kept anyway: retrying with corrected settings needs no --force.
            if started and not force:
                raise ConfigError(
                    f"{self.root} holds a run with other settings ({', '.join(changed)}); "
                    "use a new --out directory, or --force to restart this one (the LLM cache is kept)"
                )
            elif changed:
                logger.warning("restarting %s with new settings (%s)", self.root, ", ".join(changed))
        self._discard_state()
        atomic_write_text(self.config, to_toml(config))
        return False

    def _changed(self, config: ExtractConfig) -> list[str]:
        try:
            old = load_toml(self.config)
        except ConfigError:  # written by another version: nothing in it can be compared
            return ["run.toml"]
        return old.changed_keys(config)

    def _discard_state(self) -> None:
        for path in (self.documents, self.clusters, self.setup_done, self.state, self.legacy_state, self.qa,
                     self.rounds, self.ledger, self.report, self.summary):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.embeddings, ignore_errors=True)

    def truncate_logs(self, state: RunState) -> None:
        """Cut ``qa.jsonl`` and ``rounds.jsonl`` back to the lengths recorded at the last commit."""
        for path, committed in ((self.qa, state.qa_bytes), (self.rounds, state.rounds_bytes)):
            size = path.stat().st_size if path.exists() else 0
            if size > committed:
                logger.info("%s: dropping %d bytes written after the last commit", path.name, size - committed)
                with open(path, "r+b") as fh:
                    fh.truncate(committed)
                    fh.flush()
                    os.fsync(fh.fileno())
            elif size < committed:
                raise ConfigError(f"{path} is shorter than its committed length; the run directory was edited")

    def commit(self, state: RunState) -> RunState:
        """Record the current log lengths in ``state`` and write it atomically: the round's commit point.

        Returns the state as committed (with the log lengths).
        """
        state = dataclasses.replace(
            state,
            qa_bytes=self.qa.stat().st_size if self.qa.exists() else 0,
            rounds_bytes=self.rounds.stat().st_size if self.rounds.exists() else 0,
        )
        atomic_write_json(self.state, state.to_dict())
        return state

    def read_state(self) -> RunState:
        """The last committed state."""
        try:
            data = json.loads(self.state.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read the committed state: {exc}", path=str(self.state)) from exc
        return RunState.from_dict(data, path=str(self.state))
