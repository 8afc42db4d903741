"""Terminal rendering of ``equal train`` for the command line: a rich progress bar and a one-screen summary.

Used only by ``equal.cli``; the library reports progress through ``on_progress`` callbacks and never prints.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from equal.train._config import TrainProgress, TrainResult

__all__ = ["TrainProgressBar"]


class TrainProgressBar:
    """Context manager: a stderr progress bar (loss, tokens/s, ETA), off when disabled or not a terminal."""

    def __init__(self, *, enabled: bool = True) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> TrainProgressBar:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
                TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=True,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("train", total=None, loss="–", tps="–")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)
            self._progress = None

    def update(self, p: TrainProgress) -> None:
        """``on_progress`` callback of :func:`equal.train.train`."""
        if self._progress is None:
            return
        self._progress.update(self._task, total=p.max_steps, completed=p.step, loss=f"{p.loss:.4f}",
                              tps=f"{p.tokens_per_second:,.0f}")

    def print_summary(self, r: TrainResult) -> None:
        """One screen: what was trained on what, the numbers, and where the files are."""
        from rich.table import Table

        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        c, d = r.config, r.data
        what = f"{c.method} (r={c.lora_r}, alpha={c.lora_alpha})" if c.method == "lora" else "full fine-tune"
        first = r.loss_curve[0][1] if r.loss_curve else float("nan")
        rows = [
            ("model", f"{c.model} ({r.base_model_dir})"),
            ("method", f"{what}, lr {c.lr:g}, batch {c.batch_size}×{c.grad_accum}, max length {c.max_length}"),
            ("data", f"{d['records']} records from {d['path'] or 'memory'} (skipped {d['skipped']}, "
                     f"truncated {d['truncated']})"),
            ("steps", f"{r.steps}{' (resumed)' if r.resumed else ''} on {r.device}"),
            ("loss", f"{first:.4f} → {r.final_loss:.4f}"),
            ("tokens", f"{r.tokens_seen:,} in {r.seconds:.1f} s "
                       f"({r.tokens_seen / r.seconds if r.seconds else 0:,.0f} tok/s)"),
            ("FLOPs", f"{r.train_flops:.3g}"),
            ("weights", r.weights + (f", merged: {r.merged}" if r.merged else "")),
            ("report", f"{r.out}/report.html"),
        ]
        for k, v in rows:
            table.add_row(k, v)
        self.console.print(table)
