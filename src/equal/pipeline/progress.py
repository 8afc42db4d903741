"""Progress display of ``equal extract`` (rich, on stderr, only when it is a terminal)."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from equal.pipeline.extract import ExtractSummary, RoundInfo

__all__ = ["ExtractProgress"]


class ExtractProgress:
    """A rich progress bar over documents read, with round, pairs, reward, tokens and ETA."""

    def __init__(self, *, enabled: bool = True) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> ExtractProgress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=self.console, transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("setup", total=None, info="")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)

    def status(self, message: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=message)
        elif self.enabled:
            self.console.log(message)

    def round(self, info: RoundInfo) -> None:
        if self._progress is None:
            return
        reward = "–" if info.reward is None else f"{info.reward:+.3f}"
        ot = "–" if info.ot_distance is None else f"{info.ot_distance:.4f}"
        self._progress.update(
            self._task, description=f"round {info.round + 1}", completed=info.documents_read,
            total=info.budget_docs,
            info=f"docs · {info.pairs} pairs · reward {reward} · OT {ot} · {info.tokens} tokens",
        )

    def print_summary(self, summary: ExtractSummary) -> None:
        """The one-screen closing summary (to stderr, so stdout stays clean)."""
        from rich.table import Table

        table = Table(title=f"equal extract · {summary.strategy}", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        ot = "–" if summary.ot_distance is None else f"{summary.ot_distance:.4f}"
        rows = [
            ("run", summary.run + (" (resumed)" if summary.resumed else "")),
            ("rounds", str(summary.rounds)),
            ("documents read", f"{summary.documents_read} of {summary.documents_total} "
                               f"in {summary.clusters} clusters"),
            ("pairs kept", str(summary.pairs)),
            ("dropped", ", ".join(f"{k} {v}" for k, v in summary.drops.items()) or "none"),
            ("LLM requests", f"{summary.llm_requests} ({summary.llm_cache_hits} from cache)"),
            ("tokens in / out", f"{summary.tokens_in} / {summary.tokens_out}"),
            ("OT distance to target", ot),
            ("time", f"{summary.seconds:.1f} s"),
            ("dataset", summary.dataset),
            ("report", summary.report),
        ]
        for k, v in rows:
            table.add_row(k, v)
        Console = type(self.console)
        Console(file=sys.stderr).print(table)
