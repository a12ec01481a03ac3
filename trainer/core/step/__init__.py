"""One training step, built once per run and driven by the training loop a stretch of steps at
a time. Read in this order:

- reference.py: train_batch, the step's math (network, loss, penalty, optimizer), plainly.
- state.py: Step, what every step shares (its state, masks, scalars) and the loop's interface.
- batch.py: steps called per batch (a stretch of one); PlainStep calls train_batch.
- flat.py: FlatStep and VelocityStep, train_batch rearranged over flat buffers for speed.
- stretch.py: steps that run many steps per call, their shared bookkeeping;
  compiled.py (train_batch traced by jax) and fused.py (numba's whole-step kernel).
- select.py: select_step, the one place that chooses among them.
"""

from trainer.core.step.batch import BatchStep, PlainStep
from trainer.core.step.compiled import CompiledStep
from trainer.core.step.flat import GEMM_ACC_MIN, FlatStep, VelocityStep
from trainer.core.step.fused import FusedStep, unsupported
from trainer.core.step.reference import train_batch
from trainer.core.step.select import Choice, batch_step_class, make_step, select_step
from trainer.core.step.state import Divergence, Rates, State, Step
from trainer.core.step.stretch import StretchStep

__all__ = ["GEMM_ACC_MIN", "BatchStep", "Choice", "CompiledStep", "Divergence", "FlatStep",
           "FusedStep", "PlainStep", "Rates", "State", "Step", "StretchStep", "VelocityStep",
           "batch_step_class", "make_step", "select_step", "train_batch", "unsupported"]
