"""Command-line options shared by several `trainer` commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Opt = typer.Option
BackendOpt = Annotated[str, Opt(help="numpy | array-api-strict | torch | cupy | jax")]
DeviceOpt = Annotated[str | None, Opt(help="device of the backend, e.g. cuda:0")]
DataDirOpt = Annotated[Path | None, Opt(help="folder with the four IDX files")]
# train's and sweep's overrides of config keys
EpochsOpt = Annotated[int | None, Opt(min=1, help="override epochs")]
BatchSizeOpt = Annotated[int | None, Opt(min=1, help="override batch_size")]
LearningRateOpt = Annotated[float | None, Opt(help="override learning_rate")]
MomentumOpt = Annotated[float | None, Opt(help="override momentum")]
DtypeOpt = Annotated[str | None, Opt(help="float32 | float64")]
