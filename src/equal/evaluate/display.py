"""What ``equal evaluate`` shows: a progress bar and the results table (rich, on stderr).

This is the command line's display layer, kept beside the job it draws; library functions never call it.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from equal.evaluate._run import EvalResult

__all__ = ["EvaluateProgress", "results_table"]

_STAGES = {"generate": "generating", "score": "scoring", "execute": "running tests"}


class EvaluateProgress:
    """A rich progress bar per stage (generate, score, execute), shown only on a terminal."""

    def __init__(self, *, enabled: bool = True) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> EvaluateProgress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("ETA"), TimeRemainingColumn(), console=self.console)
            self._progress.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self._progress is None:
            return
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(_STAGES.get(stage, stage), total=total)
        self._progress.update(self._tasks[stage], completed=done, total=total)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, float) for v in value):
        return f"[{value[0]:.4f}, {value[1]:.4f}]"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "–"
    return "–" if value is None else str(value)


def results_table(result: EvalResult) -> Any:
    """A rich Table of the aggregate (plus model, task and where the results were written)."""
    from rich.table import Table

    table = Table(title=f"equal evaluate · {result.metric}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("model", result.model_name or result.model or "predictions")
    table.add_row("task", f"{result.task} ({result.task_kind}, {len(result.examples)} examples"
                          + (f", {result.skipped} skipped)" if result.skipped else ")"))
    for key, value in result.aggregate.items():
        if key in ("examples", "problems") or (key in ("unpredicted", "failed", "truncated") and not value):
            continue
        table.add_row(key, _fmt(value))
    if result.llm is not None:
        table.add_row("requests", f"{result.llm.get('sent', 0)} sent, {result.llm.get('hits', 0)} from the cache")
    table.add_row("seconds", f"{result.seconds:.1f}")
    if result.out:
        table.add_row("results", result.out)
    return table
