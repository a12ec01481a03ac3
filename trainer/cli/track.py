"""`--log tensorboard|mlflow` for `trainer train` and `trainer sweep`: the option, the
trackers' warnings on stderr, and their closing note."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

from trainer.cli.console import err_console, shown
from trainer.cli.options import Opt
from trainer.core.config import Config
from trainer.track import Tracking, log_targets

LogOpt = Annotated[list[str] | None, Opt(
    "--log", metavar="TARGET", help="also log to tensorboard (event files in the run directory) "
    "or mlflow (MLFLOW_TRACKING_URI, default sqlite:///runs/mlflow.db); repeatable; "
    "TRAINER_LOG=tensorboard,mlflow does the same")]


def targets(values: list[str] | None) -> tuple[str, ...]:
    """--log's targets, else TRAINER_LOG's; UsageError (exit 2) naming the pip command."""
    return log_targets(values, os.environ.get("TRAINER_LOG"))


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {shown(message)}", soft_wrap=True)


@contextlib.contextmanager
def tracking(chosen: tuple[str, ...]) -> Iterator[Tracking | None]:
    """A Tracking for the command (None without --log); at the end, whatever happened, what
    could not be logged and how to send it later."""
    if not chosen:
        yield None
        return
    session = Tracking(chosen, warn)
    try:
        yield session
    finally:
        for note in session.close():
            warn(note)


@contextlib.contextmanager
def tracked_run(chosen: tuple[str, ...], path: Path, name: str, config: Config,
                samples: int) -> Iterator[Callable[[Any], None] | None]:
    """A single run's on_epoch logger (None without --log), finished from its run directory
    at the end (interrupted: left open for --resume)."""
    with tracking(chosen) as session:
        if session is None:
            yield None
            return
        run = session.run(path, name, config, samples)
        try:
            yield run.on_epoch
        finally:
            run.finish()


def chain(*callbacks: Callable[[Any], None] | None) -> Callable[[Any], None]:
    """One on_epoch callback calling each given one in turn."""
    given = [c for c in callbacks if c is not None]

    def call(stats: Any) -> None:
        for callback in given:
            callback(stats)
    return call
