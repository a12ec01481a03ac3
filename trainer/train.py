"""The training loop: one explicit loop over epochs and batches, plus small helpers."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

import backends
from backends import Backend
from trainer.augment import Shifter
from trainer.config import Config
from trainer.data import Dataset, InputScaling
from trainer.errors import ConfigError, TrainerError, UsageError
from trainer.metrics import Report, confusion_matrix, report
from trainer.network import init_params, predict
from trainer.schedule import learning_rate
from trainer.step import TrainStep

Array = Any
CPU_BLAS_BACKENDS = ("numpy", "array-api-strict")  # they compute with numpy's BLAS
SMALL_GEMM_MACS = 10_000_000  # batch x largest fan_in x fan_out: below it 1 BLAS thread is faster


class DivergedError(TrainerError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    loss: float  # mean loss per training sample
    train_accuracy: float  # running accuracy over the epoch's batches, as neural-net-rs reports
    test_accuracy: float | None  # shown (never used to choose) when there is no validation split
    seconds: float
    val_accuracy: float | None = None  # on the validation split, if the config has one
    learning_rate: float | None = None  # at the epoch's last step


@dataclass
class StepInfo:
    """What a step hook sees. `running()` reads the device, so hooks call it only now and then."""

    epoch: int
    step: int  # 1-based, within the epoch
    steps: int
    seen: int  # training samples processed this epoch
    _backend: Backend
    _loss: Array
    _correct: Array

    def running(self) -> tuple[float, float]:
        """(mean loss, accuracy) over this epoch so far: one device-to-host read."""
        loss = float(self._backend.to_numpy(self._loss))
        return loss / self.seen, float(self._backend.to_numpy(self._correct)) / self.seen


@dataclass
class TrainResult:
    config: Config
    backend: str
    device: str
    scaling: InputScaling
    params: list[np.ndarray]  # on the host: [W0, b0, W1, b1, ...]
    history: list[EpochStats] = field(default_factory=list)
    train_accuracy: float = math.nan  # the trained network evaluated on the training set
    test_report: Report | None = None
    test_predictions: np.ndarray | None = None
    total_seconds: float = 0.0
    train_samples: int = 0
    blas_threads: int | None = None  # what the CPU BLAS was limited to (None: its default)
    validation_samples: int = 0
    best_epoch: int | None = None  # the epoch whose weights were kept (validation split)
    stopped_early: bool = False

    @property
    def test_accuracy(self) -> float:
        return self.test_report.accuracy if self.test_report else math.nan

    def best(self) -> EpochStats | None:
        """The epoch whose weights were kept, else the best one by validation (or test) accuracy."""
        if self.best_epoch is not None:
            return self.history[self.best_epoch - 1]
        key = "val_accuracy" if self.validation_samples else "test_accuracy"
        return max(self.history, key=lambda h: getattr(h, key) or 0.0, default=None)


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


def onehot(xp: Any, labels: Array, classes: int, dtype: Any) -> Array:
    return xp.astype(labels[:, None] == xp.arange(classes, device=labels.device)[None, :], dtype)


def evaluate(params: Sequence[Array], activations: Sequence[str], x: Array, labels: Array,
             num_classes: int, to_numpy: Callable[[Array], Any],
             on_chunk: Callable[[int, int], None] | None = None) -> tuple[Report, np.ndarray]:
    """The report and the predictions for `x`: computed on the device, read back once each."""
    pred = predict(params, activations, x, on_chunk=on_chunk)
    cm = to_numpy(confusion_matrix(labels, pred, num_classes))
    return report(cm), np.asarray(to_numpy(pred)).astype(np.int64)


def train(config: Config, data: Dataset, backend: Backend | str = "numpy", *,
          device: str | None = None, limit_train: int | None = None,
          limit_test: int | None = None,
          on_epoch: Callable[[EpochStats], None] | None = None,
          on_step: Callable[[StepInfo], None] | None = None,
          on_test_chunk: Callable[[int, int], None] | None = None,
          fast: bool = True, blas_threads: int | str | None = "auto") -> TrainResult:
    """Train `config` on `data` with `backend`, then evaluate on the test set.

    `on_step` is called after every step (cheaply: it gets device scalars it may read when it
    likes), `on_epoch` after every epoch with that epoch's figures, `on_test_chunk(done, total)`
    during the final test evaluation. `fast=False` trains without the backend's kernels (the
    plain array-API path), for checking that both agree. `blas_threads` limits the threads of
    the CPU BLAS ("auto": see `auto_blas_threads`; None: leave them alone).
    """
    check_shapes(config, data)
    be = load_backend(backend, device)
    if blas_threads == "auto":
        blas_threads = auto_blas_threads(config, be)
    with threadpool_limits(limits=blas_threads, user_api="blas"):
        return _train(config, data, be, limit_train, limit_test, on_epoch, on_step,
                      on_test_chunk, fast, blas_threads)


def auto_blas_threads(config: Config, be: Backend) -> int | None:
    """One BLAS thread when every GEMM of a step is small, else the BLAS's own choice.

    At neural-net-rs's batch of 32 a weight GEMM is ~3 MFLOP: waking a second thread for each of
    the ~5 GEMMs of a step costs more than it saves (measured with `trainer bench`).
    """
    if be.name not in CPU_BLAS_BACKENDS:
        return None
    largest = max(a * b for a, b in zip(config.sizes[:-1], config.sizes[1:], strict=True))
    return 1 if config.batch_size * largest < SMALL_GEMM_MACS else None


def _train(config: Config, data: Dataset, be: Backend, limit_train: int | None,
           limit_test: int | None, on_epoch: Callable[[EpochStats], None] | None,
           on_step: Callable[[StepInfo], None] | None,
           on_test_chunk: Callable[[int, int], None] | None, fast: bool,
           blas_threads: int | None) -> TrainResult:
    xp, dtype = be.xp, getattr(be.xp, config.dtype)
    scaling = InputScaling.fit(data.train_images, config.input_scaling)
    data = data.limit(limit_train, limit_test)
    classes, acts = data.num_classes, config.activations
    # children 0 and 1 are what runs without these features always used: adding streams keeps
    # every earlier result reproducible
    init_rng, shuffle_rng, augment_rng, split_rng = np.random.default_rng(config.seed).spawn(4)
    train_idx, val_idx = split(config, len(data.train_labels), split_rng)
    n_train = len(train_idx)

    def on_device(images: np.ndarray, labels: np.ndarray) -> tuple[Array, Array]:
        return (be.asarray(scaling.apply(images, dtype=config.dtype)),
                be.asarray(labels.astype(np.int64)))

    x_train, y_train = on_device(data.train_images[train_idx], data.train_labels[train_idx])
    t_train = onehot(xp, y_train, classes, dtype)
    x_val, y_val = on_device(data.train_images[val_idx], data.train_labels[val_idx])
    x_test, y_test = on_device(data.test_images, data.test_labels)

    host = init_params(config.sizes, acts, config.init, init_rng, config.dtype)
    params = [be.asarray(p) for p in host]
    velocities = [be.asarray(np.zeros_like(p)) for p in host]
    step_fn = TrainStep(config, xp, params, velocities, be.kernels if fast else None)
    params = step_fn.params  # the step may have moved them into one flat buffer
    if config.augment.shift:
        blank = float(scaling.apply(np.zeros((1, 1, 1), np.uint8), dtype=np.float64)[0, 0])
        step_fn.augment = Shifter(xp, be.asarray, data.train_images.shape[1:3],
                                  config.augment.shift, blank, dtype)

    result = TrainResult(config, be.name, be.device_name, scaling, host, train_samples=n_train,
                         blas_threads=blas_threads, validation_samples=len(val_idx))
    best: tuple[float, int, list[Array]] | None = None  # (val accuracy, epoch, weights)
    start = time.perf_counter()
    bs = config.batch_size
    steps = -(-n_train // bs)
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        perm = be.asarray(shuffle_rng.permutation(n_train))
        if step_fn.augment is not None:
            step_fn.augment.new_epoch(augment_rng, n_train)
        loss_sum = xp.zeros((), dtype=dtype, device=x_train.device)
        correct = xp.zeros((), dtype=dtype, device=x_train.device)
        for step in range(steps):
            lo, hi = step * bs, min(step * bs + bs, n_train)
            lr = learning_rate(config, epoch, step, steps)
            loss, ok = step_fn(x_train, t_train, perm[lo:hi], lr)
            loss_sum += loss
            correct += ok
            if on_step is not None:
                on_step(StepInfo(epoch, step + 1, steps, hi, be, loss_sum, correct))
        loss_mean = float(be.to_numpy(loss_sum)) / n_train  # waits for the epoch's work
        seconds = time.perf_counter() - t0
        if not math.isfinite(loss_mean):
            raise DivergedError(
                f"training diverged in epoch {epoch}: the loss is {loss_mean} at learning rate "
                f"{lr:g}; try a smaller learning_rate or batch_size")
        # the test set only shows progress when there is no validation split to do that
        val_acc = (evaluate(params, acts, x_val, y_val, classes, be.to_numpy)[0].accuracy
                   if len(val_idx) else None)
        test_acc = (None if len(val_idx) else
                    evaluate(params, acts, x_test, y_test, classes, be.to_numpy)[0].accuracy)
        stats = EpochStats(epoch, loss_mean, float(be.to_numpy(correct)) / n_train, test_acc,
                           seconds, val_acc, lr)
        result.history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
        if val_acc is not None and (best is None or val_acc > best[0]):
            best = (val_acc, epoch, [xp.asarray(p, copy=True) for p in params])
        if (best and config.early_stopping_patience
                and epoch - best[1] >= config.early_stopping_patience):
            result.stopped_early = True
            break
    result.total_seconds = time.perf_counter() - start
    if best is not None and config.restore_best_weights:
        for p, saved in zip(params, best[2], strict=True):
            p[...] = saved
        result.best_epoch = best[1]

    result.train_accuracy = evaluate(params, acts, x_train, y_train, classes,
                                     be.to_numpy)[0].accuracy
    result.test_report, result.test_predictions = evaluate(
        params, acts, x_test, y_test, classes, be.to_numpy, on_chunk=on_test_chunk)
    result.params = [np.array(be.to_numpy(p)) for p in params]  # copies, not views
    return result


def split(config: Config, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) indices: a seeded random share held out, both in data order."""
    n_val = config.validation_size(n)
    if n_val == 0:
        return np.arange(n), np.arange(0)
    if n_val >= n:
        raise ConfigError(f"validation_split {config.validation_split:g} leaves no training "
                          f"images out of {n}")
    order = rng.permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
