"""The fused step: stretches of whole training steps run by one call of a backend's compiled
kernel on host arrays (Backend.fused: the numba backend's backends/numba_step.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from trainer.backends.fused_args import (
    ADAM,
    HIDDEN,
    IDENTITY,
    L1,
    L2,
    MOMENTUM,
    NESTEROV,
    NO_PENALTY,
    FusedArgs,
)
from trainer.core.activations import LEAKY_SLOPE
from trainer.core.buffers import aligned_empty
from trainer.core.config import Config
from trainer.core.dropout import step_key
from trainer.core.losses import divergence_bound
from trainer.core.step.state import Rates
from trainer.core.step.stretch import StretchStep

Array = Any


def unsupported(config: Config) -> str | None:
    """Why a fused kernel cannot train `config` (None: it can). It does multilayer perceptrons
    with sigmoid, tanh, ReLU, leaky ReLU or identity hidden layers and a softmax output with
    cross-entropy, with dropout, a penalty and any update rule; augmented batches are made
    outside it."""
    acts = config.activations
    why = [
        (acts[-1] != "softmax" or config.loss != "cross_entropy",
         "its output is not softmax with cross-entropy"),
        (any(a not in HIDDEN for a in acts[:-1]),
         "a hidden layer's activation is not sigmoid, tanh, relu, leaky_relu or identity"),
    ]
    return next((reason for bad, reason in why if bad), None)


class FusedStep(StretchStep):
    """The state in flat host buffers, trained a stretch at a time by the backend's fused
    kernel: the same math as reference.train_batch (tests/test_numba_step.py). A stretch's
    steps run one after the other in the kernel whatever the stretch's length; with an
    augmentation each step's batch is gathered and augmented here (by the backend's kernels,
    as on NumPy), then trained by the kernel alone."""

    kind = "fused"

    def __init__(self, config: Config, xp: Any, params: Sequence[Array],
                 velocities: Sequence[Array], kernel: Callable[..., Any]) -> None:
        super().__init__(config, xp, params, velocities)
        self.kernel = kernel
        self._flatten(range(len(self.params)))  # in their natural order
        c, sizes, bs, like = config, config.sizes, config.batch_size, self.flat_params
        rule = ADAM if self.adam else NESTEROV if c.nesterov else MOMENTUM
        empty = np.empty(0, dtype=like.dtype)
        drops = self.dropouts[:len(self.acts)]  # each connection's input's
        inputs = bs * sum(sizes[:-1]) if self.dropping else 0
        # the epoch's fields (x_all .. keys) are set by _begin
        self.args = FusedArgs(
            x_all=empty, labels_all=empty, perm=empty.astype(np.int64), scales=empty,
            penalties=empty, adam_steps=empty, adam_bias2=empty, adam_decay=empty,
            keys=np.zeros((0, len(self.acts)), dtype=np.int64),
            batch_size=bs, sizes=np.asarray(sizes, dtype=np.int64),
            acts=np.asarray([HIDDEN[a] for a in self.acts[:-1]] + [IDENTITY], dtype=np.int64),
            thresholds=np.asarray([int(p * 2**32) for p in drops], dtype=np.int64),
            keeps=np.asarray([1.0 / (1.0 - p) if p else 0.0 for p in drops], dtype=like.dtype),
            update=rule,
            penalty=({"L2": L2, "L1": L1}[c.regularization_type] if self.regularized
                     else NO_PENALTY),
            decay=c.optimizer == "adamw" and bool(c.weight_decay),
            momentum=float(c.momentum), beta1=float(c.beta1), beta2=float(c.beta2),
            epsilon=float(c.epsilon), slope=LEAKY_SLOPE,
            w=self.flat_params, v=self.flat_velocities,
            s2=self.flat_second if self.adam else empty,
            g=aligned_empty(xp, like.shape, like) if rule != MOMENTUM else empty,
            offsets=np.cumsum([0] + [int(np.prod(p.shape)) for p in self.params[:-1]],
                              dtype=np.int64),
            xbuf=aligned_empty(xp, (bs * sizes[0],), like),
            hbuf=aligned_empty(xp, (bs * sum(sizes[1:]),), like),
            dbuf=aligned_empty(xp, (2 * bs * max(sizes[1:-1], default=1),), like),
            ibuf=aligned_empty(xp, (inputs,), like), mbuf=aligned_empty(xp, (inputs,), like),
            labels=np.empty(bs, dtype=np.int64), sums=np.zeros(2, dtype=np.float64),
            bound=divergence_bound(c.loss))
        self._ready = False

    def _begin(self, x_all: Array, y_all: Array, perm: Array, rates: Sequence[Rates],
               first_global: int) -> None:
        """StretchStep._begin: each step's scalars in the weights' dtype, and its dropout
        keys."""
        dtype, seed, layers = self.flat_params.dtype, self.config.seed, len(self.acts)

        def column(values: Sequence[float]) -> np.ndarray:
            return np.asarray(values, dtype=dtype)

        adam = [r.adam for r in rates] if self.adam else []
        self.args = self.args._replace(
            x_all=x_all, labels_all=y_all, perm=np.ascontiguousarray(perm, dtype=np.int64),
            scales=column([r.scale for r in rates]),
            penalties=column([r.penalty for r in rates]),
            adam_steps=column([a.step for a in adam]),
            adam_bias2=column([a.bias2 for a in adam]),
            adam_decay=column([a.decay or 1.0 for a in adam]),
            keys=np.asarray([[step_key(seed, first_global + s, i) if self.dropping else 0
                              for i in range(layers)] for s in range(len(rates))],
                            dtype=np.int64).reshape(len(rates), layers))
        self._ready = True

    def _stretch(self, first: int, count: int, batch: int, loss_sum: float, correct: float
                 ) -> tuple[float, float, int | None, float]:
        if not self._ready:
            raise RuntimeError("begin_epoch first")
        args = self.args
        args.sums[:] = (loss_sum, correct)
        if self.augment is None:
            broke, last = self.kernel(args, first, count, batch, False)
        else:
            broke, last = self._augmented(first, count, batch)
        sums = args.sums
        return float(sums[0]), float(sums[1]), None if broke < 0 else int(broke), float(last)

    def _augmented(self, first: int, count: int, batch: int) -> tuple[int, float]:
        """The kernel a step at a time, each step's batch gathered and augmented just before.
        (Augmenting the next batch in a thread while the kernel trains was 1.08x slower on the
        2-core CPU: its small GEMMs and the kernel's big ones fight over the BLAS's threads.)"""
        args = self.args
        for s in range(first, first + count):
            self._gather(s, batch)
            broke, last = self.kernel(args, s, 1, batch, True)
            if broke >= 0:
                break
        return broke, last

    def _gather(self, s: int, batch: int) -> None:
        """Step s's batch, augmented, into the kernel's input buffer, and its labels."""
        args = self.args
        rows = args.perm[s * args.batch_size:s * args.batch_size + batch]
        gathered = args.xbuf[:batch * args.x_all.shape[1]].reshape(batch, -1)
        np.take(args.x_all, rows, axis=0, out=gathered)  # into the buffer: no allocation
        gathered[...] = self.augment(gathered, rows)  # (the augmentation's own buffer)
        np.take(args.labels_all, rows, out=args.labels[:batch])
