"""Steps called once per batch, from Python: the loop's stretches are one step long for them.
PlainStep is reference.train_batch per call; FlatStep and VelocityStep (flat.py) rearrange it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from trainer.backends import Backend, Kernel, Kernels
from trainer.core.config import Config
from trainer.core.losses import diverged
from trainer.core.step.reference import train_batch
from trainer.core.step.state import Divergence, Step
from trainer.core.step.sums import RunningSums

Array = Any


class BatchStep(Step):
    """A step that trains one batch per call:

        step(x_all, y_all, idx, lr, x=None) -> (summed loss, correct count)

    trains on rows `idx` of x_all (inputs) and y_all (integer labels) at rate `lr`; `x`, when
    given, is x_all's rows `idx` already gathered (by a prefetching thread), which the step only
    reads. Both results are device scalars: nothing is read back there. `run` calls it for each
    step of a stretch and adds its figures to RunningSums, which reads the loss back every
    step on the host and now and then on a device.
    """

    def __init__(self, config: Config, xp: Any, params: Sequence[Array],
                 velocities: Sequence[Array], kernels: Kernels | None = None) -> None:
        """(`kernels`: the backend's, for the fast steps; the plain step uses none.)"""
        super().__init__(config, xp, params, velocities)
        self.backend: Backend | None = None  # where the sums live (None: the host)
        # (x, perm, batch_size, first_step) -> the batches' rows gathered ahead, in a thread
        self.prefetch: Kernel | None = None
        self._epoch: tuple[Array, Array, Array, Sequence[float], int] | None = None
        self._prefetching: Any = None  # the prefetch kernel's iterable, closed at the end
        self._ahead: Iterator[Array] | None = None

    def __call__(self, x_all: Array, y_all: Array, idx: Array, lr: float,
                 x: Array | None = None) -> tuple[Array, Array]:
        raise NotImplementedError

    def begin_epoch(self, x_all: Array, y_all: Array, perm: Array, lrs: Sequence[float],
                    done: int, loss_sum: float, correct: float) -> None:
        self.sums = RunningSums(self.backend, x_all, loss_sum, correct)
        self._epoch = (x_all, y_all, perm, lrs, perm.shape[0])
        self._prefetching = (self.prefetch(x_all, perm, self.config.batch_size, done)
                             if self.prefetch is not None else None)
        self._ahead = iter(self._prefetching) if self._prefetching is not None else None

    def run(self, first: int, count: int) -> Divergence | None:
        if self._epoch is None:
            raise RuntimeError("begin_epoch first")
        x_all, y_all, perm, lrs, n = self._epoch
        size, steps, ahead = self.config.batch_size, len(lrs), self._ahead
        for s in range(first, first + count):
            lo, hi = s * size, min(s * size + size, n)
            x = next(ahead) if ahead is not None else None
            loss, correct = self(x_all, y_all, perm[lo:hi], lrs[s], x)
            value = self.sums.add(loss, correct, s + 1, s + 1 == steps)
            if value is not None and diverged(value / (hi - lo), self.config.loss):
                return Divergence(s, value)
        return None

    def end_epoch(self) -> None:
        if self._prefetching is not None:
            self._prefetching.close()
        self._epoch = self._prefetching = self._ahead = None


class PlainStep(BatchStep):
    """The reference: reference.train_batch, one array at a time, on any backend."""

    kind = "plain"

    def __call__(self, x_all: Array, y_all: Array, idx: Array, lr: float,
                 x: Array | None = None) -> tuple[Array, Array]:
        xp, c = self.xp, self.config
        x = xp.take(x_all, idx, axis=0) if x is None else x
        if self.augment is not None:
            x = self.augment(x, idx)
        onehot = xp.take(self._eye, xp.take(y_all, idx), axis=0)
        n = idx.shape[0]
        masks = ([self.mask(i, (n, c.sizes[i]), x) for i in range(len(self.acts))]
                 if self.dropping else None)
        state, loss, correct = train_batch(
            c, (self.params, self.velocities, self.second), x, onehot, masks,
            self.rates(lr, n, self.global_step))
        for mine, new in zip((self.params, self.velocities, self.second), state, strict=True):
            mine[:] = new  # the same arrays on a mutable backend
        self.global_step += 1
        return loss, correct
