"""An epoch's running loss and correct count, as the steps add them up: on the device between
its reads (RunningSums), or already on the host (ReadSums)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer.backends import Backend

Array = Any


# On a device a step's loss is read (a wait for the device) every this many steps, to look for
# divergence; on the host every step's is read, which costs nothing there.
DEVICE_LOSS_CHECK = 50


class RunningSums:
    """An epoch's running loss and correct count, wherever they are cheapest to keep: Python
    floats on a host backend, float64 device scalars on a device (float64 so that both report
    the same sums: float32 ones drift in the 5th digit over an epoch)."""

    def __init__(self, backend: Backend | None, like: Array, loss: float = 0.0,
                 correct: float = 0.0) -> None:
        """(backend None: on the host, as a host backend's.)"""
        self.backend, self.every_step = backend, backend is None or backend.on_host
        self.accumulate = None if backend is None else backend.kernels.accumulate
        if self.every_step:
            self.loss, self.correct = float(loss), float(correct)
        elif self.accumulate:  # one pair, both added in one pass
            self.pair = backend.xp.asarray([loss, correct], dtype=backend.xp.float64,
                                           device=like.device)
        else:
            xp = backend.xp
            self.loss = xp.asarray(loss, dtype=xp.float64, device=like.device)
            self.correct = xp.asarray(correct, dtype=xp.float64, device=like.device)

    def add(self, loss: Array, correct: Array, done: int, last: bool) -> float | None:
        """Add a step's figures (`done`: steps done this epoch); its loss as a float when it
        was read (every step on the host), else None."""
        if self.every_step:
            value = float(loss)
            self.loss += value
            self.correct += float(correct)
            return value
        if self.accumulate:
            self.accumulate(self.pair, loss, correct)
        else:
            self.loss += loss
            self.correct += correct
        if last or done % DEVICE_LOSS_CHECK == 0:
            return float(self.backend.to_numpy(loss))
        return None

    def values(self) -> tuple[float, float]:
        """(summed loss, correct count) as floats: on a device, a wait for its work."""
        if self.every_step:
            return self.loss, self.correct
        to_numpy = self.backend.to_numpy
        if self.accumulate:
            loss, correct = (float(v) for v in to_numpy(self.pair))
            return loss, correct
        return float(to_numpy(self.loss)), float(to_numpy(self.correct))


@dataclass
class ReadSums:
    """An epoch's running figures already read back to the host: a compiled step's, after each
    stretch of steps (it adds them up on the device, in float64, as RunningSums would)."""

    loss: float
    correct: float
    every_step: bool = True  # every step's loss has been looked at, on the device

    def values(self) -> tuple[float, float]:
        return self.loss, self.correct
