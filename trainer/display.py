"""What `train` and `evaluate` show: live progress, the confusion matrix and per-class table."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from trainer.metrics import ClassMetrics, Report
from trainer.train import EpochStats, StepInfo

REFRESH_SECONDS = 0.25  # device reads for the display: four a second at most, never every step


def epoch_line(s: EpochStats, epochs: int, show_lr: bool = False) -> str:
    line = f"epoch {s.epoch:>3}/{epochs}  loss {s.loss:.4f}"
    line += f"  train accuracy {s.train_accuracy:7.2%}"
    if s.val_accuracy is not None:
        line += f"  validation accuracy {s.val_accuracy:7.2%}"
    if s.test_accuracy is not None:
        line += f"  test accuracy {s.test_accuracy:7.2%}"
    if show_lr and s.learning_rate is not None:
        line += f"  lr {s.learning_rate:.3g}"
    return line + f"  {s.seconds:6.2f} s"


def held_out(s: EpochStats) -> str:
    """The epoch's accuracy on held-out images: validation if there is a split, else test."""
    if s.val_accuracy is not None:
        return f"val acc {s.val_accuracy:6.2%}"
    return f"test acc {s.test_accuracy:6.2%}" if s.test_accuracy is not None else ""


class TrainProgress:
    """Rich bars over epochs and over the current epoch's batches, or plain lines per epoch.

    Use as a context manager and pass `on_step` / `on_epoch` to `train`. The running loss and
    accuracy are read from the device at most every REFRESH_SECONDS.
    """

    def __init__(self, console: Console, epochs: int, live: bool, silent: bool = False,
                 show_lr: bool = False) -> None:
        self.console, self.epochs, self.show_lr = console, epochs, show_lr
        self.live, self.silent = live and not silent, silent
        self._next = 0.0
        self._epoch: int | None = None  # the epoch of the last step seen
        self._first = (0.0, 0)  # (time, samples) at the epoch's first step seen, for samples/s
        self._test_task: TaskID | None = None
        self.progress = Progress(
            TextColumn("{task.description:>11}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[figures]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=console, transient=False, disable=not self.live)
        self.epoch_task = self.progress.add_task("epochs", total=epochs, rate="", figures="")
        self.batch_task = self.progress.add_task("epoch 1", total=1, rate="", figures="")

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.progress.__exit__(kind, value, tb)

    def on_step(self, info: StepInfo) -> None:
        if not self.live:
            return
        now = time.perf_counter()
        if info.epoch != self._epoch:  # a new epoch, or the middle of one after --resume
            self._epoch = info.epoch
            self._first = (now, info.seen)
            self.progress.reset(self.batch_task, total=info.steps,
                                description=f"epoch {info.epoch}")
            self.progress.update(self.epoch_task, completed=info.epoch - 1)
        if now < self._next and info.step != info.steps:
            return
        self._next = now + REFRESH_SECONDS
        loss, acc = info.running()
        t0, seen0 = self._first
        rate = f"{(info.seen - seen0) / (now - t0):,.0f} samples/s" if now > t0 else ""
        self.progress.update(self.batch_task, completed=info.step, rate=rate,
                             figures=f"loss {loss:.4f} acc {acc:6.2%}")

    def on_test_chunk(self, done: int, total: int) -> None:
        """Progress of the final test evaluation, as a third bar."""
        if not self.live:
            return
        if self._test_task is None:
            self._test_task = self.progress.add_task("test", total=total, rate="", figures="")
        self.progress.update(self._test_task, completed=done)

    def on_epoch(self, s: EpochStats) -> None:
        if self.silent:
            return
        if self.live:
            self.progress.update(self.epoch_task, completed=s.epoch, figures=held_out(s))
        self.console.print(epoch_line(s, self.epochs, self.show_lr), highlight=False,
                           soft_wrap=True)


def confusion_table(report: Report, class_names: list[str]) -> Table:
    table = Table(title="Confusion matrix (rows: actual, columns: predicted)")
    table.add_column("actual", justify="right", style="bold")
    for name in class_names:
        table.add_column(name, justify="right")
    for i, name in enumerate(class_names):
        cells = [f"[bold green]{n}[/]" if i == j else (f"[red]{n}[/]" if n else "[dim]0[/]")
                 for j, n in enumerate(report.confusion[i].tolist())]
        table.add_row(name, *cells)
    return table


def class_table(report: Report, class_names: list[str]) -> Table:
    table = Table(title="Per-class metrics")
    for col in ("class", "accuracy", "precision", "recall", "F1", "support"):
        table.add_column(col, justify="right")

    def row(name: str, m: ClassMetrics, accuracy: str) -> list[str]:
        return [name, accuracy, f"{m.precision:.2%}", f"{m.recall:.2%}", f"{m.f1:.4f}",
                str(m.support)]

    for name, m in zip(class_names, report.per_class, strict=True):
        table.add_row(*row(name, m, f"{m.recall:.2%}"))
    table.add_section()
    table.add_row(*row("macro avg", report.macro, ""))
    table.add_row(*row("weighted avg", report.weighted, ""))
    return table


def print_report(console: Console, report: Report, class_names: list[str]) -> None:
    console.print(confusion_table(report, class_names))
    console.print(class_table(report, class_names))
    total = int(report.confusion.sum())
    correct = int(report.confusion.trace())
    console.print(f"Overall accuracy: {report.accuracy:.2%} ({correct}/{total})", style="bold")
