"""`train()`: the public entry point of a training run, and the checks around it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

import backends
from backends import Backend
from trainer.config import Config
from trainer.data import Dataset
from trainer.errors import ConfigError, UsageError
from trainer.loop import (  # noqa: F401 (re-exported: the API's names live here)
    DEVICE_LOSS_CHECK,
    Run,
    check_loss,
    check_split,
    evaluate,
    split,
)
from trainer.results import (  # noqa: F401 (re-exported)
    DivergedError,
    EpochStats,
    Interrupted,
    RunHooks,
    StepInfo,
    TrainResult,
)

Array = Any
CPU_BLAS_BACKENDS = ("numpy", "array-api-strict")  # they compute with numpy's BLAS
SMALL_GEMM_MACS = 10_000_000  # batch x largest fan_in x fan_out: below it 1 BLAS thread is faster


def load_backend(backend: Backend | str, device: str | None = None) -> Backend:
    if isinstance(backend, Backend):
        return backend
    try:
        return backends.load(backend, device)
    except ValueError as e:
        raise UsageError(str(e)) from None
    except ImportError as e:
        raise UsageError(f"backend {backend!r} is not available: {e}") from None


def check_shapes(config: Config, data: Dataset) -> None:
    """The first layer must take the images' pixels and the last give one output per class."""
    pixels = int(np.prod(data.train_images.shape[1:]))
    if config.sizes[0] != pixels:
        shape = "x".join(map(str, data.train_images.shape[1:]))
        raise ConfigError(f"layers[0].nodes is {config.sizes[0]}, but the data's images have "
                          f"{shape} = {pixels} pixels: set it to {pixels}")
    if config.sizes[-1] != data.num_classes:
        raise ConfigError(f"layers[{len(config.sizes) - 1}].nodes is {config.sizes[-1]}, but the "
                          f"data has {data.num_classes} classes: set it to {data.num_classes}")


def check_data(config: Config, data: Dataset, limit_train: int | None = None) -> None:
    """What `train` would refuse about this data (shapes, the validation split of the images it
    trains on), checked up front: before a run directory or a sweep exists."""
    check_shapes(config, data)
    check_split(config, min(limit_train or len(data.train_labels), len(data.train_labels)))


def train(config: Config, data: Dataset, backend: Backend | str = "numpy", *,
          device: str | None = None, limit_train: int | None = None,
          limit_test: int | None = None,
          on_epoch: Callable[[EpochStats], None] | None = None,
          on_step: Callable[[StepInfo], None] | None = None,
          on_test_chunk: Callable[[int, int], None] | None = None,
          fast: bool = True, blas_threads: int | str | None = "auto",
          hooks: RunHooks | None = None, test: bool = True,
          prefetch: bool = True) -> TrainResult:
    """Train `config` on `data` with `backend`, then evaluate on the test set.

    `on_step` is called after every step (cheaply: it gets the running sums, on the device
    except on the CPU, which it may read when it likes), `on_epoch` after every epoch with that
    epoch's figures, `on_test_chunk(done, total)` during the final test evaluation.
    `fast=False` trains without the backend's kernels (the plain array-API path), for checking
    that both agree. `blas_threads` limits the threads of the CPU BLAS ("auto": see
    `auto_blas_threads`; None: leave them alone). `test=False` never touches the test set
    (sweeps): it needs a validation split to report progress. `prefetch`: let a thread gather
    the next batches where the backend can and the BLAS leaves a core free (sweeps running
    several workers turn it off: their cores are taken).
    """
    if not test and not config.validation_split:
        raise ConfigError("training without the test set needs a validation_split")
    check_shapes(config, data)
    be = load_backend(backend, device)
    if blas_threads == "auto":
        blas_threads = auto_blas_threads(config, be)
    # overflow on the way to a NaN is reported once, by check_loss, not as numpy warnings
    with threadpool_limits(limits=blas_threads, user_api="blas"), \
            np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        run = Run(config, (data if test else data.limit(None, 0)).limit(limit_train, limit_test),
                  be, fast, blas_threads, hooks or RunHooks(), prefetch)
        for epoch in range(run.state.epoch, config.epochs + 1):
            if run.end_epoch(run.epoch(epoch, on_step), on_epoch):
                break
        return run.finish(on_test_chunk)


def auto_blas_threads(config: Config, be: Backend) -> int | None:
    """One BLAS thread when every GEMM of a step is small, else the BLAS's own choice.

    At neural-net-rs's batch of 32 a weight GEMM is ~3 MFLOP: waking a second thread for each of
    the ~5 GEMMs of a step costs more than it saves (measured with `trainer bench`).
    """
    if be.name not in CPU_BLAS_BACKENDS:
        return None
    largest = max(a * b for a, b in zip(config.sizes[:-1], config.sizes[1:], strict=True))
    return 1 if config.batch_size * largest < SMALL_GEMM_MACS else None
