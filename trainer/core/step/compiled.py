"""The compiled step: the step's math (reference.train_batch) traced once by a backend that
compiles whole functions (Backend.compiler: jax), and run as loops of steps on the device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from trainer.backends import Compiler
from trainer.core import optim
from trainer.core.augment import Shifter, offsets, shift
from trainer.core.config import Config
from trainer.core.dropout import keep_mask, step_key
from trainer.core.elastic import ElasticWarp
from trainer.core.losses import diverged_on_device
from trainer.core.step.reference import train_batch
from trainer.core.step.state import Rates, State
from trainer.core.step.stretch import StretchStep

Array = Any


class CompiledStep(StretchStep):
    """reference.train_batch, traced once by the backend's compiler and run as a loop over
    consecutive batches on the device (Backend.compiler: jax): no step pays Python's dispatch
    of its ~40 array operations, only each stretch of steps pays one call.

    Each step's scalars (Rates) and dropout keys are worked out on the host per epoch, as the
    other steps do per call, and handed to the device as tables. Every step of a full batch
    runs in the same compiled loop body wherever a stretch starts.
    """

    kind = "compiled"

    def __init__(self, config: Config, xp: Any, params: Sequence[Array],
                 velocities: Sequence[Array], compiler: Compiler) -> None:
        super().__init__(config, xp, params, velocities)
        self.compiler = compiler
        # the state (argument 0) is donated: its buffers become the new state's
        self._loop = compiler.jit(self._steps, static_argnums=(6,), donate_argnums=(0,))
        self._epoch: tuple[Array, ...] = ()
        # the augmentations, set by the training loop: traced into the loop's body
        self.warp: ElasticWarp | None = None
        self.shifter: Shifter | None = None

    def augment_with(self, warp: ElasticWarp | None, shifter: Shifter | None) -> None:
        """Traced into the loop's body, one by one (warped first, then shifted)."""
        self.warp = warp
        self.shifter = shifter

    def _begin(self, x_all: Array, y_all: Array, perm: Array, rates: Sequence[Rates],
               first_global: int) -> None:
        """StretchStep._begin: each step's scalars and dropout keys as tables for the device."""
        c = self.config
        rows = []
        for r in rates:
            a = r.adam or optim.AdamRates(0.0, 1.0, None)
            rows.append((r.scale, r.penalty, a.step, a.bias2, 1.0 if a.decay is None
                         else a.decay))
        keys = [[step_key(c.seed, first_global + i, layer) for layer in range(len(self.acts))]
                for i in range(len(rates))]
        shifts = ((self.shifter.table, self.shifter.shifts) if self.shifter is not None
                  else ())
        # the epoch's warp key as an array: one compiled loop for every epoch
        warp_key = (self.xp.asarray(self.warp.current_key(), dtype=self.xp.int64)
                    if self.warp is not None else None)
        # Python floats rounded to the weights' dtype here, as the other steps' are where
        # they meet an array
        self._epoch = (x_all, y_all, perm,
                       self.xp.asarray(np.asarray(rows, dtype=np.dtype(c.dtype))),
                       self.xp.asarray(np.asarray(keys, dtype=np.int64)), warp_key, *shifts)

    def _stretch(self, first: int, count: int, batch: int, loss_sum: float, correct: float
                 ) -> tuple[float, float, int | None, float]:
        """StretchStep._stretch: one call of the compiled loop."""
        state = (self.params, self.velocities, self.second)
        state, sums, broke, last = self._loop(state, self._epoch, first, count, loss_sum,
                                              correct, batch)
        for mine, new in zip((self.params, self.velocities, self.second), state, strict=True):
            mine[:] = new
        loss_sum, correct = (float(v) for v in np.asarray(sums))
        broke = int(broke)
        return loss_sum, correct, None if broke < 0 else broke, float(last)

    def _steps(self, state: State, epoch: tuple[Array, ...], first: Array, count: Array,
               loss_sum: Array, correct: Array, batch: int) -> tuple[State, Array, Array, Array]:
        """What `_stretch` compiles: a loop over the steps, each one train_batch."""
        xp, c, k = self.xp, self.config, self.compiler
        x_all, y_all, perm, rates, keys, warp_key, *shifts = epoch
        starts = offsets(xp, batch, shifts[0].shape[1]) if shifts else None
        counters = {width: xp.reshape(xp.arange(batch * width, dtype=xp.int64), (batch, width))
                    for width, p in zip(c.sizes, self.dropouts, strict=False) if p}

        def step(carry: tuple) -> tuple:
            i, state, sums, _, last = carry
            idx = k.dynamic_slice(perm, i * c.batch_size, batch)
            x = xp.take(x_all, idx, axis=0)
            if self.warp is not None:  # warped first, then shifted (augment.chain's order)
                x = self.warp.warp(x, idx, warp_key)
            if shifts:
                x = shift(x, idx, *shifts, self.shifter.background, starts)
            onehot = xp.take(self._eye, xp.take(y_all, idx), axis=0)
            masks = ([keep_mask(xp, counters[width], keys[i, layer], p, x.dtype) if p else None
                      for layer, (width, p) in enumerate(zip(c.sizes, self.dropouts,
                                                             strict=False))]
                     if self.dropping else None)
            r = rates[i]
            adam = optim.AdamRates(r[2], r[3], r[4] if c.weight_decay and c.optimizer ==
                                   "adamw" else None) if self.adam else None
            state, loss, hit = train_batch(c, state, x, onehot, masks, Rates(r[0], r[1], adam))
            loss64 = xp.astype(loss, xp.float64)
            sums = sums + xp.stack([loss64, xp.astype(hit, xp.float64)])
            broke = diverged_on_device(xp, loss64 / batch, c.loss)
            return i + 1, state, sums, xp.where(broke, i, -1), loss64

        def going(carry: tuple) -> Array:
            return (carry[0] < first + count) & (carry[3] < 0)

        sums = xp.stack([xp.asarray(loss_sum, dtype=xp.float64),
                         xp.asarray(correct, dtype=xp.float64)])
        start = (xp.asarray(first), state, sums, xp.asarray(-1), xp.asarray(0.0, dtype=xp.float64))
        _, state, sums, broke, last = k.while_loop(going, step, start)
        return state, sums, broke, last
