"""What the command line draws for the long jobs: ``equal extract``, ``equal train``, ``equal evaluate``.

Rich, on stderr, only when it is a terminal. The library reports progress through callbacks and never prints;
this module is the display layer the CLI puts on those callbacks.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TYPE_CHECKING, Any

from equal.pipeline.extract import ExtractSummary, RoundInfo, RoundStart

if TYPE_CHECKING:  # annotations only: `equal extract` need not import the training stack
    from equal.evaluate import EvalResult
    from equal.train import TrainProgress, TrainResult

__all__ = ["EvaluateProgress", "ExtractProgress", "TrainProgressBar", "results_table"]


class ExtractProgress:
    """What ``equal extract`` shows while it runs, on stderr.

    On a terminal, one rich bar whose label follows the phase (reading, embedding, clustering, warm-up,
    ``round r/R``, writing): while embedding it advances per batch with an ETA; inside a round it counts the
    documents read against the budget and shows the completions done / total of the round and the tokens per
    second. With no terminal, or with ``bars=False`` (``-v``), one log line per phase and per round instead.
    On Ctrl-C it says how to resume: the exact command, rerun (every completion already received is cached).

    Parameters
    ----------
    enabled : bool, default=True
        False shows nothing (``--json``).
    bars : bool, default=True
        False: log lines even on a terminal.
    command : str, optional
        The command that resumes the run (default: this process's ``equal`` command line).
    stream : file, optional
        Where the log lines go (default ``sys.stderr``).
    console : rich.console.Console, optional
        Where the bars are drawn (default: stderr); bars only when it is a terminal.
    """

    def __init__(self, *, enabled: bool = True, bars: bool = True, command: str | None = None,
                 stream: Any = None, console: Any = None) -> None:
        from rich.console import Console

        self.console = console if console is not None else Console(stderr=True)
        self.enabled = enabled
        self.bars = enabled and bars and self.console.is_terminal
        self.lines = enabled and not self.bars
        self.command = command if command is not None else _command_line()
        self._stream = stream
        self._progress: Any = None
        self._task: Any = None
        self._phase = "starting"
        self._round: tuple[int, int | None] | None = None  # (0-based round, expected rounds)
        self._llm = ""  # "completions d/t · n tok/s" of the current round

    def __enter__(self) -> ExtractProgress:
        if self.bars:
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
            self._new_task("starting")
        return self

    def _new_task(self, description: str, total: float | None = None, completed: float = 0, info: str = "") -> None:
        # one task per phase, so each phase has its own total, elapsed time and ETA
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(description, total=total, completed=completed, info=info)
        self._progress.refresh()  # a phase change is drawn now, not at the next 10 Hz tick

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)
            self._progress = None
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt) and self.enabled:
            self._write(f"interrupted during {self._phase}: every completion already received is kept in the "
                        f"run's LLM cache, and every committed round in the run. Resume with:\n  {self.command}")

    # ------------------------------------------------------------------ callbacks of run_extract
    def status(self, message: str) -> None:
        """A phase begins (``on_status``)."""
        self._phase, self._round, self._llm = message, None, ""
        if self._progress is not None:
            self._new_task(message)
        elif self.lines:
            self._write(message)

    def embed(self, done: int, total: int) -> None:
        """A batch of the corpus is embedded (``on_embed``): the bar advances, with its ETA."""
        if self._progress is not None:
            self._progress.update(self._task, total=total, completed=done, info="texts")

    def round_start(self, start: RoundStart) -> None:
        """A round begins (``on_round_start``): the label becomes ``round r/R``."""
        in_rounds = self._round is not None
        self._round, self._llm = (start.round, start.rounds), ""
        self._phase = _round_label(start.round, start.rounds)
        if self._progress is None:
            return
        info = f"docs · sending {start.documents} documents"
        if in_rounds:  # the rounds share one task: its ETA is the whole loop's
            self._progress.update(self._task, description=self._phase, completed=start.documents_read, info=info)
        else:
            self._new_task(self._phase, total=start.budget_docs, completed=start.documents_read, info=info)

    def llm(self, p: Any) -> None:
        """A completion arrived (``on_llm``, an :class:`equal.llm.cache.LLMProgress`)."""
        rate = p.tokens_out / p.seconds if p.seconds > 0 else 0.0
        self._llm = f"completions {p.done}/{p.total}" + (f" · {rate:,.0f} tok/s" if p.tokens_out else "")
        if self._progress is not None:
            self._progress.update(self._task, info=f"docs · {self._llm}")

    def round(self, info: RoundInfo) -> None:
        """A round is committed (``on_round``)."""
        rounds = self._round[1] if self._round is not None else None
        label = _round_label(info.round, rounds)
        reward = "–" if info.reward is None else f"{info.reward:+.3f}"
        ot = "–" if info.ot_distance is None else f"{info.ot_distance:.4f}"
        what = f"{info.pairs} pairs · reward {reward} · OT {ot} · {info.tokens} tokens"
        if self._progress is not None:
            self._progress.update(self._task, description=label, completed=info.documents_read,
                                  total=info.budget_docs, info=f"docs · {what}")
            self._progress.refresh()
        elif self.lines:
            budget = "" if info.budget_docs is None else f" of {info.budget_docs}"
            llm = f" · {self._llm}" if self._llm else ""
            self._write(f"{label}: {info.documents_read}{budget} documents read · {what}{llm}")

    def _write(self, line: str) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        stream.write(f"equal extract: {line}\n")
        stream.flush()

    def print_summary(self, summary: ExtractSummary) -> None:
        """The one-screen closing summary (to stderr, so stdout stays clean)."""
        from rich.table import Table

        from equal.report.cost import format_flops, format_money

        table = Table(title=f"equal extract · {summary.strategy}", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        ot = "–" if summary.ot_distance is None else f"{summary.ot_distance:.4f}"
        rows = [
            ("run", summary.run + (" (resumed)" if summary.resumed else "")),
            ("rounds", str(summary.rounds)),
            _read_row(summary),
            ("pairs kept", str(summary.pairs)),
            ("dropped", ", ".join(f"{k} {v}" for k, v in summary.drops.items()) or "none"),
            ("LLM requests", f"{summary.llm_requests} ({summary.llm_cache_hits} from cache"
                             + (f", {summary.llm_failed} failed: "
                                + ", ".join(f"{k} {v}" for k, v in summary.llm_failures.items())
                                if summary.llm_failed else "") + ")"),
            ("tokens in / out", f"{summary.tokens_in} / {summary.tokens_out}"
                                + (" (some estimated: the server sent no usage)" if summary.tokens_estimated else "")),
            # money and FLOPs (n/a without [llm] price_in / price_out, or a model size): equal.report.cost
            ("money · FLOPs", f"{format_money(summary.est_cost)} ({format_money(summary.cost_per_pair)} per pair)"
                              f" · {format_flops(summary.est_flops)}"),
            ("OT distance to target", ot),
            ("time", f"{summary.seconds:.1f} s"),
            ("dataset", summary.dataset),
            ("report", summary.report),
        ]
        for k, v in rows:
            table.add_row(k, v)
        Console = type(self.console)
        Console(file=sys.stderr).print(table)


def _round_label(r: int, rounds: int | None) -> str:
    return f"round {r + 1}/{rounds}" if rounds else f"round {r + 1}"


def _command_line() -> str:
    """This process's command as the user would type it again (``equal extract ...``), shell-quoted."""
    import shlex

    return shlex.join(["equal", *sys.argv[1:]])


def _read_row(summary: Any) -> tuple[str, str]:
    """What the budget counted: documents, or the chunks of longer documents when the corpus was chunked."""
    chunked = summary.source_documents and summary.source_documents != summary.documents_total
    unit, of = ("chunks", f" (of {summary.source_documents} documents)") if chunked else ("documents", "")
    skipped = f"; {summary.skipped_rows} invalid rows skipped" if summary.skipped_rows else ""
    return (f"{unit} read", f"{summary.documents_read} of {summary.documents_total}{of} "
                            f"in {summary.clusters} clusters{skipped}")


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
