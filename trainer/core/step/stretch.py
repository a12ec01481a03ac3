"""Steps that train a stretch of consecutive steps in one call: CompiledStep (compiled.py, the
plain step traced whole by a backend's compiler) and FusedStep (fused.py, a backend's
whole-step kernel). What they share is here, once: each step's batch size and scalars worked
out per epoch on the host, the stretches' length, the step count and the sums read back."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from trainer.core.step.state import Divergence, Rates, Step
from trainer.core.step.sums import ReadSums

Array = Any
# a stretch between two looks from the host: long enough that the call costs nothing next to
# it, short enough for the bars, Ctrl-C and the loss checks
STRETCH_SECONDS = 0.25
FIRST_STRETCH = 16  # steps: the first stretch may also compile, and measures a step's time


class StretchStep(Step):
    """Step's interface for a step whose `run` is one call over many steps. A subclass does
    `_begin(x_all, y_all, perm, rates, first_global)` with each step's Rates (its batch size
    in them) and `_stretch(first, count, batch, loss_sum, correct)`. Every step of a stretch
    runs the same way wherever the stretch starts, so where the loop cuts them (bars,
    checkpoints, a resume) changes no bit."""

    stretch = FIRST_STRETCH

    def begin_epoch(self, x_all: Array, y_all: Array, perm: Array, lrs: Sequence[float],
                    done: int, loss_sum: float, correct: float) -> None:
        size, n = self.config.batch_size, perm.shape[0]
        self._rows = n
        first = self.global_step - done  # the global step of the epoch's first step
        rates = [self.rates(lr, min(size, n - i * size), first + i) for i, lr in enumerate(lrs)]
        self._begin(x_all, y_all, perm, rates, first)
        self.sums, self.stretch = ReadSums(loss_sum, correct), FIRST_STRETCH

    def run(self, first: int, count: int) -> Divergence | None:
        size = self.config.batch_size
        started = time.perf_counter()
        loss, correct, broke, last = self._stretch(first, count,
                                                   min(size, self._rows - first * size),
                                                   self.sums.loss, self.sums.correct)
        self.global_step += count if broke is None else broke - first + 1
        self.sums = ReadSums(loss, correct)
        # a stretch of the same length again lasts about as long (the first one compiles)
        self.stretch = max(1, int(count * STRETCH_SECONDS / (time.perf_counter() - started)))
        return None if broke is None else Divergence(broke, last)

    def _begin(self, x_all: Array, y_all: Array, perm: Array, rates: Sequence[Rates],
               first_global: int) -> None:
        """Keep the epoch's data, batch order and each step's scalars (step i's global step
        is first_global + i) as the stretches need them."""
        raise NotImplementedError

    def _stretch(self, first: int, count: int, batch: int, loss_sum: float, correct: float
                 ) -> tuple[float, float, int | None, float]:
        """Steps first .. first + count - 1, each on `batch` rows, stopping after a step whose
        loss says that training diverged: the epoch's (summed loss, correct count) so far, the
        given ones added, the diverged step (or None) and the last step's summed loss."""
        raise NotImplementedError
