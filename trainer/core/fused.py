"""The fused step: stretches of whole training steps run by one call of a backend's compiled
kernel on host arrays (Backend.fused: the numba backend's backends/numba_step.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from trainer.core.buffers import aligned_empty, flatten
from trainer.core.config import Config
from trainer.core.losses import DIVERGED_NATS
from trainer.core.step import FlatStep, StretchStep

Array = Any
HIDDEN = {"identity": 0, "sigmoid": 1, "tanh": 2, "relu": 3}  # the kernel's activation codes


def unsupported(config: Config) -> str | None:
    """Why a fused kernel cannot train `config` (None: it can). It does the default config's
    kind of network: sigmoid, tanh, ReLU or identity hidden layers, softmax with cross-entropy,
    SGD with plain momentum, no dropout, penalty or augmentation."""
    acts = config.activations
    why = [
        (acts[-1] != "softmax" or config.loss != "cross_entropy",
         "its output is not softmax with cross-entropy"),
        (any(a not in HIDDEN for a in acts[:-1]),
         "a hidden layer's activation is not sigmoid, tanh, relu or identity"),
        (config.optimizer != "sgd", f"its optimizer is {config.optimizer}, not sgd"),
        (config.nesterov, "it uses Nesterov momentum"),
        (any(config.dropouts), "it has dropout"),
        (bool(config.regularization_type and config.regularization_rate), "it has a penalty"),
        (bool(config.augment.shift or config.augment.warps), "it augments its images"),
    ]
    return next((reason for bad, reason in why if bad), None)


class FusedStep(StretchStep):
    """Step's state in flat host buffers, trained a stretch at a time by the backend's fused
    kernel (StretchStep's begin_epoch, then run per stretch): the same math as PlainStep
    (tests/test_numba_step.py).

    A stretch's steps run one after the other in the kernel whatever the stretch's length, so
    where the stretches are cut (bars, checkpoints, a resume) changes no bit.
    """

    def __init__(self, config: Config, xp: Any, params: Sequence[Array],
                 velocities: Sequence[Array], kernel: Callable[..., Any]) -> None:
        super().__init__(config, xp, params, velocities)
        self.kernel = kernel
        natural = range(len(self.params))
        self.flat_params, self.params = flatten(xp, self.params, natural)
        self.flat_velocities, self.velocities = flatten(xp, self.velocities, natural)
        sizes = config.sizes
        self.offsets = np.cumsum([0] + [int(np.prod(p.shape)) for p in self.params[:-1]],
                                 dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.codes = np.asarray([HIDDEN[a] for a in self.acts[:-1]] + [0], dtype=np.int64)
        bs, like = config.batch_size, self.flat_params
        # the batch's rows, every layer's output, the gradient flowing down (two halves, one
        # per layer in turn) and the labels
        self.buffers = (aligned_empty(xp, (bs * sizes[0],), like),
                        aligned_empty(xp, (bs * sum(sizes[1:]),), like),
                        aligned_empty(xp, (2 * bs * max(sizes[1:-1], default=1),), like),
                        np.empty(bs, dtype=np.int64))
        self._epoch: tuple[Array, Array, Array, np.ndarray] | None = None

    _write = FlatStep._write  # in place: the state is views of the flat buffers

    def begin_epoch(self, x_all: Array, y_all: Array, perm: Array, lrs: Sequence[float],
                    done: int) -> None:
        """Get ready for an epoch: its data, batch order and each step's learning rate, from
        which each step's delta factor (Step._scale) in the weights' dtype."""
        size, n = self.config.batch_size, perm.shape[0]
        scales = [self._scale(lr, min(size, n - i * size)) for i, lr in enumerate(lrs)]
        self._epoch = (x_all, y_all, np.ascontiguousarray(perm, dtype=np.int64),
                       np.asarray(scales, dtype=self.flat_params.dtype))

    def run(self, first: int, count: int, loss_sum: float, correct: float
            ) -> tuple[float, float, int | None, float]:
        if self._epoch is None:
            raise RuntimeError("begin_epoch first")
        x_all, y_all, perm, scales = self._epoch
        size = self.config.batch_size
        batch = min(size, perm.shape[0] - first * size)
        sums = np.asarray([loss_sum, correct], dtype=np.float64)
        broke, last = self.kernel(
            x_all, y_all, perm, scales, first, count, batch, size, self.sizes, self.codes,
            self.flat_params, self.flat_velocities, self.offsets,
            float(self.config.momentum), *self.buffers, sums, DIVERGED_NATS, True)
        self.global_step += count if broke < 0 else broke - first + 1
        return float(sums[0]), float(sums[1]), None if broke < 0 else int(broke), float(last)
