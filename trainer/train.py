"""The training loop: one explicit loop over epochs and batches, plus small helpers."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from array_api_compat import array_namespace

import backends
from backends import Backend
from trainer.config import Config
from trainer.data import Dataset, InputScaling
from trainer.errors import ConfigError, TrainerError, UsageError
from trainer.losses import loss_and_delta
from trainer.network import backward, forward, init_params, predict
from trainer.optim import add_regularization, sgd_step

Array = Any


class DivergedError(TrainerError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    loss: float  # mean loss per training sample
    train_accuracy: float
    seconds: float


@dataclass
class TrainResult:
    config: Config
    backend: str
    device: str
    scaling: InputScaling
    params: list[np.ndarray]  # on the host: [W0, b0, W1, b1, ...]
    history: list[EpochStats] = field(default_factory=list)
    train_accuracy: float = math.nan
    test_accuracy: float = math.nan
    test_labels: np.ndarray | None = None
    test_predictions: np.ndarray | None = None
    total_seconds: float = 0.0


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


def train_step(config: Config, params: Sequence[Array], velocities: Sequence[Array],
               x: Array, target: Array, labels: Array) -> tuple[Array, Array]:
    """One SGD step on a batch, in place; returns (summed loss, correct count) as device scalars."""
    xp = array_namespace(x)
    acts = config.activations
    outs, logits = forward(params, acts, x)
    loss, delta = loss_and_delta(config.loss, acts[-1], logits, outs[-1], target)
    if config.loss_reduction == "mean":
        delta = delta / x.shape[0]
    grads = backward(params, acts, outs, delta)
    add_regularization(grads, params, config.regularization_type, config.regularization_rate)
    sgd_step(params, velocities, grads, config.learning_rate, config.momentum, config.nesterov)
    correct = xp.sum(xp.astype(xp.argmax(outs[-1], axis=1) == labels, outs[-1].dtype))
    return loss, correct


def train(config: Config, data: Dataset, backend: Backend | str = "numpy", *,
          device: str | None = None, limit_train: int | None = None,
          limit_test: int | None = None,
          on_epoch: Callable[[EpochStats], None] | None = None) -> TrainResult:
    """Train `config` on `data` with `backend`, then evaluate on the test set."""
    check_shapes(config, data)
    be = load_backend(backend, device)
    xp, dtype = be.xp, getattr(be.xp, config.dtype)
    scaling = InputScaling.fit(data.train_images, config.input_scaling)
    n_train = min(limit_train or len(data.train_labels), len(data.train_labels))
    n_test = min(limit_test or len(data.test_labels), len(data.test_labels))

    x_train = be.asarray(scaling.apply(data.train_images[:n_train], dtype=config.dtype))
    y_train = be.asarray(data.train_labels[:n_train].astype(np.int64))
    t_train = onehot(xp, y_train, data.num_classes, dtype)

    init_rng, shuffle_rng = np.random.default_rng(config.seed).spawn(2)
    host = init_params(config.sizes, config.activations, config.init, init_rng, config.dtype)
    params = [be.asarray(p) for p in host]
    velocities = [be.asarray(np.zeros_like(p)) for p in host]

    result = TrainResult(config, be.name, be.device_name, scaling, host)
    start = time.perf_counter()
    bs = config.batch_size
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        perm = be.asarray(shuffle_rng.permutation(n_train))
        loss_sum = xp.zeros((), dtype=dtype, device=x_train.device)
        correct = xp.zeros((), dtype=dtype, device=x_train.device)
        for s in range(0, n_train, bs):
            idx = perm[s:min(s + bs, n_train)]
            loss, ok = train_step(config, params, velocities, xp.take(x_train, idx, axis=0),
                                  xp.take(t_train, idx, axis=0), xp.take(y_train, idx, axis=0))
            loss_sum += loss
            correct += ok
        loss_mean = float(be.to_numpy(loss_sum)) / n_train
        stats = EpochStats(epoch, loss_mean, float(be.to_numpy(correct)) / n_train,
                           time.perf_counter() - t0)
        if not math.isfinite(loss_mean):
            raise DivergedError(
                f"training diverged in epoch {epoch}: the loss is {loss_mean} at learning rate "
                f"{config.learning_rate}; try a smaller learning_rate or batch_size")
        result.history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    be.sync()
    result.total_seconds = time.perf_counter() - start

    acts = config.activations
    train_pred = be.to_numpy(predict(params, acts, x_train))
    result.train_accuracy = float(np.mean(train_pred == data.train_labels[:n_train]))
    x_test = be.asarray(scaling.apply(data.test_images[:n_test], dtype=config.dtype))
    result.test_predictions = be.to_numpy(predict(params, acts, x_test)).astype(np.int64)
    result.test_labels = data.test_labels[:n_test].astype(np.int64)
    result.test_accuracy = float(np.mean(result.test_predictions == result.test_labels))
    result.params = [np.asarray(be.to_numpy(p)) for p in params]
    return result
