"""What a training run produces and reports: per-epoch figures, the result, stop reasons."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainer.core.config import Config
from trainer.core.metrics import Report

# (DEVICE_LOSS_CHECK and RunningSums moved to core/step/sums.py; importable from here too)
from trainer.core.step.sums import DEVICE_LOSS_CHECK, ReadSums, RunningSums  # noqa: F401
from trainer.data.dataset import InputScaling
from trainer.errors import TrainerError
from trainer.run.checkpoint import LoopState

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
class Callbacks:
    """Everything that ties a training run to the outside, in one object; each part optional.

    `on_step` runs after every step, so it must be cheap (StepInfo.running() reads the device:
    call it now and then); `stop_requested` is asked after every step and epoch, and returns a
    signal number once the run should stop (it then checkpoints and raises Interrupted);
    `checkpoint` receives the state to save after every epoch, and every `checkpoint_every`
    steps.
    """

    on_step: Callable[[StepInfo], None] | None = None
    on_epoch: Callable[[EpochStats], None] | None = None
    on_test_chunk: Callable[[int, int], None] | None = None  # (images done, total) at the end
    stop_requested: Callable[[], int | None] | None = None
    checkpoint: Callable[[LoopState], None] | None = None
    checkpoint_every: int | None = None


@dataclass(frozen=True)
class Engine:
    """How a run computes, not what: the same figures either way (the BLAS's thread count only
    changes the last bits, through the order of its sums)."""

    fast: bool = True  # the backend's kernels; False: the plain reference step, for checking
    # threads of the CPU BLAS: "auto" picks (see train.auto_blas_threads), None leaves them
    blas_threads: int | str | None = "auto"
    # a thread gathering the next batches, where the backend can and the BLAS leaves a core free
    # (sweeps running several workers turn it off: their cores are taken)
    prefetch: bool = True


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
    """What an on_step callback sees. `running()` reads the device: call it now and then."""

    epoch: int
    step: int  # 1-based, within the epoch
    steps: int
    seen: int  # training samples processed this epoch
    sums: RunningSums | ReadSums

    def running(self) -> tuple[float, float]:
        """(mean loss, accuracy) over this epoch so far."""
        loss, correct = self.sums.values()
        return loss / self.seen, correct / self.seen


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
