"""`train()`: the public entry point of a training run, and the checks around it."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from trainer import backends
from trainer.backends import Backend
from trainer.core.config import Config
from trainer.data.dataset import Dataset, check_split
from trainer.errors import ConfigError, UsageError
from trainer.run.checkpoint import LoopState
from trainer.run.loop import Run
from trainer.run.results import Callbacks, Engine, TrainResult

SMALL_GEMM_MACS = 10_000_000  # batch x largest fan_in x fan_out: below it 1 BLAS thread is faster


def load_backend(name: str, device: str | None = None) -> Backend:
    """backends.load, with its refusals as usage errors (exit 2, one message)."""
    try:
        return backends.load(name, device)
    except ValueError as e:
        raise UsageError(str(e)) from None
    except ImportError as e:
        raise UsageError(f"backend {name!r} is not available: {e}") from None


def check_shapes(config: Config, data: Dataset) -> None:
    """The first layer must take the images' pixels and the last give one output per class."""
    if config.sizes[0] != data.input_size:
        shape = "x".join(map(str, data.image_shape))
        raise ConfigError(f"layers[0].nodes is {config.sizes[0]}, but the data's images have "
                          f"{shape} = {data.input_size} pixels: set it to {data.input_size}")
    if config.sizes[-1] != data.num_classes:
        raise ConfigError(f"layers[{len(config.sizes) - 1}].nodes is {config.sizes[-1]}, but "
                          f"{data.describe()} has {data.num_classes} classes: set it to "
                          f"{data.num_classes}")


def check_data(config: Config, data: Dataset, limit_train: int | None = None,
               limit_test: int | None = None) -> None:
    """What `train` refuses about this data (shapes, the validation split of the images it
    trains on, a run without a test set and without a split to show progress on); callers that
    write something first (a run directory, a sweep) call it up front."""
    check_shapes(config, data)
    check_split(config, min(limit_train or len(data.train_labels), len(data.train_labels)))
    if limit_test == 0 and not config.validation_split:
        raise ConfigError("training without the test set needs a validation_split")


EVAL_CHUNK = 8192  # rows network.predict evaluates at a time


def memory_needed(config: Config, data: Dataset, limit_train: int | None = None,
                  limit_test: int | None = None) -> tuple[int, int]:
    """About how many bytes a run holds at its peak, and its parameter count: the weights
    (with velocities, gradients, Adam's second moments, the best epoch's copy, two host
    copies), the data as floats (on the device, and once on the host on the way), and a
    batch's and an evaluation chunk's activations."""
    item = 4 if config.dtype == "float32" else 8
    sizes = config.sizes
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    copies = (3 + (config.optimizer in ("adam", "adamw")) + bool(config.validation_split)
              + 2)
    n_train = min(limit_train or len(data.train_labels), len(data.train_labels))
    n_test = 0 if limit_test == 0 else min(  # 0: the test set is never touched (sweeps)
        len(data.test_labels) if limit_test is None else limit_test, len(data.test_labels))
    rows = 2 * (n_train + n_test) * sizes[0]
    activations = 4 * config.batch_size * sum(sizes) + 2 * EVAL_CHUNK * max(sizes)
    return item * (copies * params + rows + activations), params


def available_memory(backend: Backend) -> tuple[int, str] | None:
    """(bytes free, where) on the backend's device, else the host's; None if unknown."""
    if backend.memory is not None:
        try:
            return backend.memory()[0], f"{backend.device_name}'s memory"
        except Exception:  # a driver that cannot say: no check rather than a false refusal
            return None
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024, "the host's available memory"
    except (OSError, KeyError, ValueError):
        return None


def check_memory(config: Config, data: Dataset, backend: Backend,
                 limit_train: int | None = None, limit_test: int | None = None) -> None:
    """Refuse (exit 2) a run that cannot fit, before anything is allocated or written."""
    needed, params = memory_needed(config, data, limit_train, limit_test)
    free = available_memory(backend)
    if free is not None and needed > free[0]:
        raise ConfigError(f"this network needs about {needed / 2**30:,.1f} GiB ({params:,} "
                          f"parameters in {config.dtype}, their optimizer state, the data and "
                          f"a batch's activations), more than {free[1]} ({free[0] / 2**30:,.1f} "
                          f"GiB): choose fewer or smaller layers, or a smaller --batch-size")


def train(config: Config, data: Dataset, backend: Backend | str = "numpy", *,
          limit_train: int | None = None, limit_test: int | None = None,
          resume: LoopState | None = None, callbacks: Callbacks | None = None,
          engine: Engine | None = None) -> TrainResult:
    """Train `config` on `data` with `backend` (a name: its default device), then evaluate on
    the test set.

    `limit_train` / `limit_test`: the first N images only (`limit_test=0`: the test set is never
    touched, as in sweeps; the run then needs a validation split to show progress on).
    `resume`: a checkpoint's state, to continue exactly where it stopped. `callbacks`: progress,
    stop requests and checkpoints (see Callbacks). `engine`: how to compute (see Engine).
    """
    check_data(config, data, limit_train, limit_test)
    if isinstance(backend, str):
        backend = load_backend(backend)
    check_memory(config, data, backend, limit_train, limit_test)
    engine = engine or Engine()
    blas_threads = engine.blas_threads
    if blas_threads == "auto":
        blas_threads = auto_blas_threads(config, backend)
    # overflow on the way to a NaN is reported once, as a divergence, not as numpy warnings
    with backend.scope(), threadpool_limits(limits=blas_threads, user_api="blas"), \
            np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        run = Run(config, data.limit(limit_train, limit_test), backend, engine, blas_threads,
                  callbacks or Callbacks(), resume)
        for epoch in range(run.state.epoch, config.epochs + 1):
            if run.end_epoch(run.epoch(epoch)):
                break
        return run.finish()


def auto_blas_threads(config: Config, backend: Backend) -> int | None:
    """One BLAS thread when every GEMM of a step is small, else the BLAS's own choice (None).

    At neural-net-rs's batch of 32 a weight GEMM is ~3 MFLOP: waking a second thread for each of
    the ~5 GEMMs of a step costs more than it saves (measured with `trainer bench`).
    """
    if not backend.host_blas:
        return None
    largest = max(a * b for a, b in zip(config.sizes[:-1], config.sizes[1:], strict=True))
    return 1 if config.batch_size * largest < SMALL_GEMM_MACS else None
