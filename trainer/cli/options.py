"""Command-line options shared by several `trainer` commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trainer.data.datasets import EMNIST_SPLITS, NAMES

Opt = typer.Option
BackendOpt = Annotated[str, Opt(help="numpy | numba | array-api-strict | torch | cupy | jax")]
# sweep's: the backends, or auto (the fastest here for the config, run/auto.py)
TrainBackendOpt = Annotated[str, Opt(help="numpy | numba | array-api-strict | torch | cupy | "
                                          "jax | auto (the fastest here for the config)")]
DeviceOpt = Annotated[str | None, Opt(help="device of the backend, e.g. cuda:0")]
DataDirOpt = Annotated[Path | None, Opt(help="folder with the four IDX files")]
DATASET_HELP = ", ".join(n for n in NAMES if not n.startswith("emnist-")) + \
    ", emnist-{" + ", ".join(EMNIST_SPLITS) + "}"


def _dataset_name(value: str | None) -> str | None:
    """An empty --dataset is a mistake (a script's unset variable), not a quiet MNIST."""
    if value is not None and not value.strip():
        raise typer.BadParameter(f"give a dataset's name: one of {DATASET_HELP}")
    return value


# None: MNIST, or (evaluate, --resume) the dataset the run was trained on
DatasetOpt = Annotated[str | None, Opt(
    metavar="NAME", autocompletion=lambda: list(NAMES), callback=_dataset_name,
    help=f"{DATASET_HELP} (default mnist; fetched if not cached; with --data-dir: how to read "
         f"that folder)")]
# train's and sweep's overrides of config keys
EpochsOpt = Annotated[int | None, Opt(min=1, help="override epochs")]
BatchSizeOpt = Annotated[int | None, Opt(min=1, help="override batch_size")]
LearningRateOpt = Annotated[float | None, Opt(help="override learning_rate")]
MomentumOpt = Annotated[float | None, Opt(help="override momentum")]
DtypeOpt = Annotated[str | None, Opt(help="float32 | float64")]
# a run, for every command that takes one: read through trainer.run.catalog.resolve_run
RUN_HELP = "a run: its directory, its id from `trainer runs`, or latest"
RunArg = Annotated[str, typer.Argument(metavar="RUN", help=RUN_HELP, show_default=False)]
