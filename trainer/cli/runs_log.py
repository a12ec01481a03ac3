"""`trainer runs log RUN_OR_GROUP... --to mlflow|tensorboard`: finished runs, sent afterwards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trainer.cli.console import cli_errors, console, shown
from trainer.cli.options import Opt
from trainer.cli.track import targets, warn
from trainer.errors import UsageError
from trainer.track.mlflow_run import Server
from trainer.track.send import resolve, to_mlflow, to_tensorboard


def log_cmd(
    paths: Annotated[list[Path], typer.Argument(
        metavar="RUN_OR_GROUP...", help="run directories, batch groups or sweep directories")],
    to: Annotated[str, Opt("--to", help="mlflow (MLFLOW_TRACKING_URI, default "
                                        "sqlite:///runs/mlflow.db) or tensorboard")],
) -> None:
    """Log finished runs (trained offline, or before --log) from their run directories: the
    same params, metrics and artifacts as a live run. A run MLflow has already is matched by
    its run id and not sent again."""
    with cli_errors():
        if to not in ("mlflow", "tensorboard"):
            raise UsageError(f"--to {to!r}: choose mlflow or tensorboard")
        (target,) = targets([to])
        resolved = [resolve(p) for p in paths]  # every path checked before anything is sent
        server = Server() if target == "mlflow" else None
        for item in resolved:
            for why in item.skipped:
                warn(f"skipped: {why}")
            report = lambda line: console.print(shown(line), soft_wrap=True)  # noqa: E731
            if server is not None:
                to_mlflow(item, report, server)
            else:
                to_tensorboard(item, report)
