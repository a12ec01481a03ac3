"""The training loop: one explicit loop over epochs and batches, plus small helpers."""

from __future__ import annotations

import dataclasses
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
from trainer.checkpoint import LoopState
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


DEVICE_LOSS_CHECK = 50  # on a GPU, look at the loss every this many steps (a sync each time)
DIVERGED_CROSS_ENTROPY = 1000.0  # nats per image


class DivergedError(TrainerError):
    """The loss became NaN or infinite."""

    def __init__(self, message: str, epoch: int, step: int) -> None:
        super().__init__(message)
        self.epoch, self.step = epoch, step


class Interrupted(TrainerError):
    """A stop was requested (Ctrl-C, SIGTERM): the checkpoint is written, training can resume."""

    def __init__(self, signal: int, epoch: int, step: int) -> None:
        super().__init__(f"stopped by signal {signal} in epoch {epoch} after step {step}")
        self.signal, self.epoch, self.step = signal, epoch, step
        self.exit_code = 128 + signal


@dataclass
class RunHooks:
    """What ties a training run to the outside: checkpoints, resuming, stop requests."""

    checkpoint: Callable[[LoopState], None] | None = None
    checkpoint_every: int | None = None  # also every this many steps, not only per epoch
    resume: LoopState | None = None
    stop_requested: Callable[[], int | None] | None = None  # a signal number once asked to stop
    run: dict[str, Any] = field(default_factory=dict)  # recorded in checkpoints as is


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
          fast: bool = True, blas_threads: int | str | None = "auto",
          hooks: RunHooks | None = None, test: bool = True) -> TrainResult:
    """Train `config` on `data` with `backend`, then evaluate on the test set.

    `on_step` is called after every step (cheaply: it gets device scalars it may read when it
    likes), `on_epoch` after every epoch with that epoch's figures, `on_test_chunk(done, total)`
    during the final test evaluation. `fast=False` trains without the backend's kernels (the
    plain array-API path), for checking that both agree. `blas_threads` limits the threads of
    the CPU BLAS ("auto": see `auto_blas_threads`; None: leave them alone). `test=False`
    never touches the test set (sweeps): it needs a validation split to report progress.
    """
    if not test and not config.validation_split:
        raise ConfigError("training without the test set needs a validation_split")
    check_shapes(config, data)
    be = load_backend(backend, device)
    if blas_threads == "auto":
        blas_threads = auto_blas_threads(config, be)
    # overflow on the way to a NaN is reported once, by check_finite, not as numpy warnings
    with threadpool_limits(limits=blas_threads, user_api="blas"), \
            np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _train(config, data if test else data.limit(None, 0), be, limit_train,
                      limit_test, on_epoch, on_step, on_test_chunk, fast, blas_threads,
                      hooks or RunHooks())


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
           blas_threads: int | None, hooks: RunHooks) -> TrainResult:
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
    shifter = None
    if config.augment.shift:
        blank = float(scaling.apply(np.zeros((1, 1, 1), np.uint8), dtype=np.float64)[0, 0])
        shifter = step_fn.augment = Shifter(xp, be.asarray, data.train_images.shape[1:3],
                                            config.augment.shift, blank, dtype)

    result = TrainResult(config, be.name, be.device_name, scaling, host, train_samples=n_train,
                         blas_threads=blas_threads, validation_samples=len(val_idx))
    rngs = {"shuffle": shuffle_rng, "augment": augment_rng}
    state = hooks.resume or LoopState()
    if hooks.resume is not None:  # continue exactly where the checkpoint left off
        step_fn.restore(be.asarray, state.params, state.velocities, state.second,
                        state.global_step)
        for name, rng in rngs.items():
            rng.bit_generator.state = state.rng[name]
        result.history = [EpochStats(**h) for h in state.history]
    best_params = [be.asarray(p) for p in state.best_params] or None
    host_loss = be.device_name == "cpu"  # reading the loss every step costs nothing there

    def snapshot(epoch: int, step: int, loss_sum: Any, correct: Any, seconds: float) -> LoopState:
        p, v, s2 = step_fn.export(be.to_numpy)
        return LoopState(
            epoch=epoch, step=step, global_step=step_fn.global_step, params=p, velocities=v,
            second=s2, perm=state.perm if step else None,
            shift_ids=state.shift_ids if step else None,
            loss_sum=float(be.to_numpy(loss_sum)) if step else 0.0,
            correct=float(be.to_numpy(correct)) if step else 0.0, epoch_seconds=seconds,
            elapsed=elapsed(), rng={k: r.bit_generator.state for k, r in rngs.items()},
            history=[dataclasses.asdict(h) for h in result.history],
            best_accuracy=state.best_accuracy, best_epoch=state.best_epoch,
            best_params=[np.array(be.to_numpy(b)) for b in best_params or []], run=hooks.run)

    start = time.perf_counter() - state.elapsed

    def elapsed() -> float:
        return time.perf_counter() - start

    bs = config.batch_size
    steps = -(-n_train // bs)
    for epoch in range(state.epoch, config.epochs + 1):
        if state.step == 0:  # a fresh epoch: draw its batch order and shifts
            state.perm = shuffle_rng.permutation(n_train)
            state.shift_ids = shifter.draw(augment_rng, n_train) if shifter else None
            state.loss_sum = state.correct = state.epoch_seconds = 0.0
        t0 = time.perf_counter() - state.epoch_seconds
        perm = be.asarray(state.perm)
        if shifter is not None:
            shifter.use(state.shift_ids)
        loss_sum = xp.asarray(state.loss_sum, dtype=dtype, device=x_train.device)
        correct = xp.asarray(state.correct, dtype=dtype, device=x_train.device)
        for step in range(state.step, steps):
            lo, hi = step * bs, min(step * bs + bs, n_train)
            lr = learning_rate(config, epoch, step, steps)
            loss, ok = step_fn(x_train, t_train, perm[lo:hi], lr)
            loss_sum += loss
            correct += ok
            if host_loss or (step + 1) % DEVICE_LOSS_CHECK == 0 or step + 1 == steps:
                check_loss(config, loss, hi - lo, be, epoch, step + 1, steps, lr, host_loss)
            if on_step is not None:
                on_step(StepInfo(epoch, step + 1, steps, hi, be, loss_sum, correct))
            signal = hooks.stop_requested() if hooks.stop_requested else None
            every = hooks.checkpoint_every
            if hooks.checkpoint and step + 1 < steps and (
                    signal or (every and step_fn.global_step % every == 0)):
                hooks.checkpoint(snapshot(epoch, step + 1, loss_sum, correct,
                                          time.perf_counter() - t0))
            if signal:
                raise Interrupted(signal, epoch, step + 1)
        loss_mean = float(be.to_numpy(loss_sum)) / n_train  # waits for the epoch's work
        seconds = time.perf_counter() - t0
        # the test set only shows progress when there is no validation split to do that
        val_acc = (evaluate(params, acts, x_val, y_val, classes, be.to_numpy)[0].accuracy
                   if len(val_idx) else None)
        test_acc = (None if len(val_idx) else
                    evaluate(params, acts, x_test, y_test, classes, be.to_numpy)[0].accuracy)
        stats = EpochStats(epoch, loss_mean, float(be.to_numpy(correct)) / n_train, test_acc,
                           seconds, val_acc, lr)
        result.history.append(stats)
        if val_acc is not None and (state.best_accuracy is None or val_acc > state.best_accuracy):
            state.best_accuracy, state.best_epoch = val_acc, epoch
            best_params = [xp.asarray(p, copy=True) for p in params]
        state.step = 0
        stop_early = bool(state.best_epoch and config.early_stopping_patience
                          and epoch - state.best_epoch >= config.early_stopping_patience)
        if hooks.checkpoint:
            hooks.checkpoint(snapshot(epoch + 1, 0, loss_sum, correct, 0.0))
        if on_epoch is not None:
            on_epoch(stats)
        signal = hooks.stop_requested() if hooks.stop_requested else None
        if signal and epoch < config.epochs and not stop_early:
            raise Interrupted(signal, epoch + 1, 0)
        if stop_early:
            result.stopped_early = True
            break
    result.total_seconds = elapsed()
    if best_params is not None and config.restore_best_weights:
        for p, saved in zip(params, best_params, strict=True):
            p[...] = saved
        result.best_epoch = state.best_epoch

    result.train_accuracy = evaluate(params, acts, x_train, y_train, classes,
                                     be.to_numpy)[0].accuracy
    if len(data.test_labels):
        result.test_report, result.test_predictions = evaluate(
            params, acts, x_test, y_test, classes, be.to_numpy, on_chunk=on_test_chunk)
    result.params = [np.array(be.to_numpy(p)) for p in params]  # copies, not views
    return result


def check_loss(config: Config, loss: Array, n: int, be: Backend, epoch: int, step: int,
               steps: int, lr: float, every_step: bool) -> None:
    """Stop on a non-finite loss, or a cross-entropy no working network has (see below)."""
    value = float(be.to_numpy(loss))
    # A mean cross-entropy of 1000 nats means p(true class) < e^-1000 on average: the logits
    # are thousands apart, i.e. the weights have blown up (an untrained net is at ~ln 10 = 2.3)
    exploded = config.loss == "cross_entropy" and value / n > DIVERGED_CROSS_ENTROPY
    if math.isfinite(value) and not exploded:
        return
    where = f"step {step}/{steps}" if every_step else f"by step {step}/{steps}"
    what = f"{value}" if not math.isfinite(value) else f"{value / n:.3g} per image"
    raise DivergedError(
        f"training diverged in epoch {epoch}, {where}: the loss is {what} at learning rate "
        f"{lr:g}. Try a smaller learning_rate (or batch_size, since gradients are summed over "
        f"the batch), or \"loss_reduction\": \"mean\"", epoch, step)


def check_split(config: Config, n: int) -> None:
    if config.validation_size(n) >= n:
        raise ConfigError(f"validation_split {config.validation_split:g} leaves no training "
                          f"images out of {n}")


def split(config: Config, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) indices: a seeded random share held out, both in data order."""
    check_split(config, n)
    n_val = config.validation_size(n)
    if n_val == 0:
        return np.arange(n), np.arange(0)
    order = rng.permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
