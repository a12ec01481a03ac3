"""What the commands show: live progress (training, fetching), the confusion matrix and
per-class table."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from trainer.cli.console import err_console, quiet_control_echo, shown
from trainer.core.metrics import ClassMetrics, Report
from trainer.data.dataset import Dataset, load_dataset
from trainer.data.fetch import FetchProgress
from trainer.run.results import EpochStats, StepInfo

REFRESH_SECONDS = 0.25  # device reads for the display: four a second at most, never every step


def epoch_line(s: EpochStats, epochs: int, show_lr: bool = False) -> str:
    """One epoch's figures in one line of at most 80 characters: loss, then the training,
    validation and test accuracy (each where there is one)."""
    line = f"epoch {s.epoch:>3}/{epochs}  loss {s.loss:.4f}"
    line += f"  train {s.train_accuracy:7.2%}"
    if s.val_accuracy is not None:
        line += f"  val {s.val_accuracy:7.2%}"
    if s.test_accuracy is not None:
        line += f"  test {s.test_accuracy:7.2%}"
    if show_lr and s.learning_rate is not None:
        line += f"  lr {s.learning_rate:.3g}"
    return line + f"  {s.seconds:6.2f} s"


def _rate(samples_per_second: float) -> str:
    """A training speed in a few characters: `950/s`, `138k/s`."""
    if samples_per_second >= 10_000:
        return f"{samples_per_second / 1000:,.0f}k/s"
    return f"{samples_per_second:,.0f}/s"


def held_out(s: EpochStats) -> str:
    """The epoch's accuracy on held-out images: validation if there is a split, else test."""
    if s.val_accuracy is not None:
        return f"val acc {s.val_accuracy:6.2%}"
    return f"test acc {s.test_accuracy:6.2%}" if s.test_accuracy is not None else ""


# while the bars are live: notices waiting to be printed between two steps (a signal handler
# printing in the middle of the bars' own drawing loses its line and doubles the bars)
_pending: list[str] | None = None


def notice(text: str) -> None:
    """A line for the user on stderr, now, or between two steps while the bars are live.

    Called from a signal handler, which runs between two bytecodes of whatever the main thread
    was doing: perhaps importing a module (rich imports its emoji table on first use: a handler
    printing through rich then found it half-initialized, and the run died with an ImportError
    instead of checkpointing) or writing to sys.stderr (a second write into its buffer raises).
    So the line goes straight to file descriptor 2, with nothing imported or buffered."""
    if _pending is not None:
        _pending.append(text)
        return
    with contextlib.suppress(OSError):  # no stderr to write to: the stop itself still happens
        os.write(2, f"\n{text}\n".encode(errors="replace"))  # after the terminal's ^C


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
        # 80 columns hold every column but the bar at its narrowest (about 70 characters);
        # the bar takes what is left, so a wider terminal gets a longer bar
        self.progress = Progress(
            TextColumn("{task.description:>9}"), BarColumn(bar_width=None),
            MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[figures]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=False, disable=not self.live, expand=True)
        self.epoch_task = self.progress.add_task("epochs", total=epochs, rate="", figures="")
        self.batch_task = self.progress.add_task("epoch 1", total=1, rate="", figures="")

    def __enter__(self) -> TrainProgress:
        global _pending
        self._echo = quiet_control_echo() if self.live else contextlib.nullcontext()
        self._echo.__enter__()
        self.progress.__enter__()
        if self.live:
            _pending = []
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        global _pending
        self._flush()
        _pending = None
        self.progress.__exit__(kind, value, tb)
        self._echo.__exit__(None, None, None)

    def _flush(self) -> None:
        while _pending:
            self.progress.console.print(_pending.pop(0), soft_wrap=True, highlight=False)

    def on_step(self, info: StepInfo) -> None:
        if not self.live:
            return
        if _pending:
            self._flush()
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
        rate = _rate((info.seen - seen0) / (now - t0)) if now > t0 else ""
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


def confusion_table(report: Report, class_names: list[str], width: int = 80) -> Table | None:
    """The confusion matrix as a table that fits `width` columns: headed by the classes'
    names, else (long names: Fashion-MNIST's) by their numbers with the rows saying which
    name each number is; None if even that is too wide (EMNIST's 26 to 62 classes)."""
    count_width = len(str(int(report.confusion.max(initial=0))))
    names = [shown(n) for n in class_names]  # names come from files: plain text, never markup
    numbered = [str(i) for i in range(len(names))]
    rows = [f"{i} {n}" for i, n in enumerate(names)]
    for headers, labels in ((names, names), (numbered, rows)):
        cell = max(count_width, *(len(h) for h in headers))
        if max(6, *(len(r) for r in labels)) + 4 + len(headers) * (cell + 3) <= width:
            break
    else:
        return None
    table = Table(title="Confusion matrix (rows: actual, columns: predicted)")
    table.add_column("actual", justify="right", style="bold")
    for header in headers:
        table.add_column(header, justify="right")
    for i, label in enumerate(labels):
        cells = [f"[bold green]{n}[/]" if i == j else (f"[red]{n}[/]" if n else "[dim]0[/]")
                 for j, n in enumerate(report.confusion[i].tolist())]
        table.add_row(label, *cells)
    return table


TOP_CONFUSIONS = 10


def confusions_table(report: Report, class_names: list[str]) -> Table:
    """The most frequent mistakes (actual, predicted, count): the matrix's largest cells off
    its diagonal, for when the whole matrix cannot fit."""
    off = report.confusion.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None, kind="stable")[::-1][:TOP_CONFUSIONS]
    table = Table(title=f"Most frequent confusions (of {len(class_names)} classes)")
    for col in ("actual", "predicted", "count", "share of actual"):
        table.add_column(col, justify="right")
    totals = report.confusion.sum(axis=1)
    for flat in order:
        i, j = divmod(int(flat), len(class_names))
        if off[i, j] == 0:
            break
        table.add_row(shown(class_names[i]), shown(class_names[j]), str(int(off[i, j])),
                      f"{off[i, j] / max(int(totals[i]), 1):.1%}")
    return table


def class_table(report: Report, class_names: list[str]) -> Table:
    """Precision, recall (a class's share of its images recognised: what neural-net-rs
    called its accuracy, so not repeated as a column of its own), F1 and support."""
    table = Table(title="Per-class metrics")
    for col in ("class", "precision", "recall", "F1", "support"):
        table.add_column(col, justify="right")

    def row(name: str, m: ClassMetrics) -> list[str]:
        return [name, f"{m.precision:.2%}", f"{m.recall:.2%}", f"{m.f1:.4f}", str(m.support)]

    for name, m in zip(class_names, report.per_class, strict=True):
        table.add_row(*row(shown(name), m))
    table.add_section()
    table.add_row(*row("macro avg", report.macro))
    table.add_row(*row("weighted avg", report.weighted))
    return table


def print_report(console: Console, report: Report, class_names: list[str]) -> None:
    table = confusion_table(report, class_names, console.width)
    n = len(class_names)
    if table is not None:
        console.print(table)
    elif int(report.confusion.sum()) == int(report.confusion.trace()):
        console.print(f"The {n} x {n} confusion matrix (too wide to show here) has no mistakes.")
    else:
        console.print(f"The {n} x {n} confusion matrix is too wide to show here (it is in the "
                      f"run's metrics.json and confusion.svg, and in --json): its largest "
                      f"mistakes are", soft_wrap=True)
        console.print(confusions_table(report, class_names))
    console.print(class_table(report, class_names))
    total = int(report.confusion.sum())
    correct = int(report.confusion.trace())
    console.print(f"Overall accuracy: {report.accuracy:.2%} ({correct}/{total})", style="bold")


class _DownloadOnly(ProgressColumn):
    """Shown only for downloads: the pip and convert steps have no byte count to show."""

    def render(self, task: Task) -> RenderableType:
        return super().render(task) if task.fields.get("download") else Text("")


class _Bytes(_DownloadOnly, DownloadColumn):
    pass


class _Speed(_DownloadOnly, TransferSpeedColumn):
    pass


class FetchBars:
    """A fetch's steps as bars on stderr (the FetchProgress the CLI hands to the data layer);
    nothing is drawn until a fetch starts a step."""

    def __init__(self) -> None:
        self._bars: Progress | None = None

    def start(self, description: str, total: int | None = None, download: bool = False) -> Any:
        if self._bars is None:
            self._bars = Progress(TextColumn("{task.description}"), BarColumn(), _Bytes(),
                                  _Speed(), TimeElapsedColumn(), console=err_console)
            self._bars.start()
        return self._bars.add_task(shown(description), total=total, download=download)

    def advance(self, task: Any, amount: int) -> None:
        if self._bars is not None:
            self._bars.advance(task, amount)

    def done(self, task: Any) -> None:
        if self._bars is not None:
            self._bars.update(task, total=1, completed=1)

    def note(self, message: str) -> None:
        (self._bars.console if self._bars else err_console).print(shown(message), soft_wrap=True)

    def close(self) -> None:
        if self._bars is not None:
            self._bars.stop()


@contextlib.contextmanager
def fetch_progress(show: bool) -> Iterator[FetchProgress | None]:
    """Bars for a fetch that may happen inside the block, or None (`show` False: silent)."""
    if not show:
        yield None
        return
    bars = FetchBars()
    try:
        yield bars
    finally:
        bars.close()


def load_data(data_dir: Path | None, show: bool, dataset: str = "mnist") -> Dataset:
    """`load_dataset`, drawing the fetch's bars on stderr if it has to fetch (and `show`)."""
    with fetch_progress(show) as progress:
        return load_dataset(data_dir, dataset=dataset, progress=progress)
