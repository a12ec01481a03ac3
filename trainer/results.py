"""What a training run produces and reports: per-epoch figures, the result, stop reasons."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backends import Backend
from trainer.checkpoint import LoopState
from trainer.config import Config
from trainer.data import InputScaling
from trainer.errors import TrainerError
from trainer.metrics import Report

Array = Any


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
    _loss: Array | float  # running sums: device arrays, or host floats on the CPU
    _correct: Array | float

    def running(self) -> tuple[float, float]:
        """(mean loss, accuracy) over this epoch so far: one device-to-host read."""
        be = self._backend
        return host_value(be, self._loss) / self.seen, host_value(be, self._correct) / self.seen


def host_value(be: Backend, x: Array | float) -> float:
    """A running sum as a Python float: the loop keeps them on the host on the CPU."""
    return x if isinstance(x, float) else float(be.to_numpy(x))


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
