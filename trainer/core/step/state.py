"""What every training step shares: its state (weights, velocities or Adam's moments, the step
count), the dropout masks, its scalars for a step, export and restore; and the interface the
training loop drives every step through (begin_epoch, then run per stretch of steps)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from array_api_compat import device

from trainer.core import optim
from trainer.core.augment import Shifter, chain
from trainer.core.buffers import flatten
from trainer.core.config import Config
from trainer.core.dropout import keep_mask, step_key
from trainer.core.elastic import ElasticWarp
from trainer.core.step.sums import ReadSums, RunningSums

Array = Any
# a step's state: (weights, velocities or Adam's first moments, Adam's second moments)
State = tuple[Sequence[Array], Sequence[Array], Sequence[Array]]


@dataclass(frozen=True)
class Rates:
    """A step's scalars: Python floats for a step called per batch, arrays in the weights'
    dtype inside a compiled step (one row of a table worked out on the host)."""

    scale: Any  # the output delta's factor (Step.scale)
    penalty: Any  # scale * regularization_rate: what the penalty's gradient is multiplied by
    adam: optim.AdamRates | None  # Adam's, for Adam and AdamW


class Divergence(NamedTuple):
    """The step (0-based, in its epoch) after which the loss said that training diverged, and
    that step's summed loss."""

    step: int
    loss: float


class Step:
    """A training step's state and the loop's interface to it. The loop calls `begin_epoch`
    with the epoch's data, batch order and learning rates, then `run` for each stretch of at
    most `stretch` steps (which it cuts where a checkpoint is due or the partial last batch
    starts), reading `sums` between stretches, and `end_epoch` when the epoch ends or fails.
    A per-batch step (batch.py) runs stretches of one; a stretch step (stretch.py) runs many
    in one call."""

    kind = ""  # what select.py calls it: plain, flat, velocity, compiled or fused
    stretch = 1  # the most steps the next `run` should take

    def __init__(self, config: Config, xp: Any, params: Sequence[Array],
                 velocities: Sequence[Array]) -> None:
        self.config, self.xp = config, xp
        self.params, self.velocities = list(params), list(velocities)
        self.acts = config.activations
        self.dropouts = config.dropouts  # (config's properties build their lists anew)
        self.dropping = any(self.dropouts)  # no mask bookkeeping in the hot loop without it
        self.regularized = bool(config.regularization_type and config.regularization_rate)
        self.adam = config.optimizer in ("adam", "adamw")
        # Adam's second moments, laid out like the velocities (its first moments)
        self.second: list[Array] = [xp.zeros_like(v) for v in self.velocities] if self.adam else []
        self.global_step = 0  # steps taken: the dropout masks' counter and Adam's t
        self.augment: Callable[[Array, Array], Array] | None = None  # see augment_with
        self.hash_kernel: Callable[[Array], Array] | None = None
        self.keep_mask_kernel: Callable[..., Array] | None = None
        self.in_place = False  # the state is views of flat buffers (see _flatten)
        self.sums: RunningSums | ReadSums = ReadSums(0.0, 0.0)  # the epoch's, so far
        first = self.params[0]  # row c of the identity: class c's one-hot target
        self._eye = xp.eye(config.sizes[-1], dtype=first.dtype, device=first.device)
        self._counters: dict[tuple[int, int], Array] = {}

    # --- the loop's interface ---------------------------------------------------------------

    def begin_epoch(self, x_all: Array, y_all: Array, perm: Array, lrs: Sequence[float],
                    done: int, loss_sum: float, correct: float) -> None:
        """Get ready for an epoch whose `done` first steps are done, with those steps' summed
        loss and correct count: its training data (x_all inputs, y_all integer labels), batch
        order (rows of x_all) and each step's learning rate."""
        raise NotImplementedError

    def run(self, first: int, count: int) -> Divergence | None:
        """Train steps first .. first + count - 1 of the epoch (0-based; all on full batches,
        or the last, partial one alone), adding their figures to `sums`; stop after a step
        whose loss says that training diverged, and return it."""
        raise NotImplementedError

    def end_epoch(self) -> None:
        """The epoch is over (or failed): let go of what begin_epoch started."""

    def augment_with(self, warp: ElasticWarp | None, shifter: Shifter | None) -> None:
        """Augment each batch's inputs: warped first, then shifted (either may be None)."""
        self.augment = chain(warp, shifter)

    # --- the math's scalars and masks --------------------------------------------------------

    def scale(self, lr: float, n: int) -> float:
        """What the output delta is multiplied by: SGD folds -lr into it, a mean loss 1/n."""
        scale = 1.0 if self.adam else -lr
        return scale / n if self.config.loss_reduction == "mean" else scale

    def adam_rates(self, lr: float, global_step: int) -> optim.AdamRates:
        """Adam's scalars for the step after `global_step` steps."""
        c = self.config
        return optim.adam_rates(lr, global_step + 1, c.beta1, c.beta2,
                                c.weight_decay if c.optimizer == "adamw" else 0.0)

    def rates(self, lr: float, n: int, global_step: int) -> Rates:
        """A step's scalars, from its learning rate, batch size and number."""
        scale = self.scale(lr, n)
        return Rates(scale, scale * self.config.regularization_rate,
                     self.adam_rates(lr, global_step) if self.adam else None)

    def mask(self, layer: int, shape: tuple[int, int], like: Array) -> Array | None:
        """Dropout's multipliers for the input of connection `layer` (`shape`, `like`'s dtype
        and device), or None where that layer has no dropout."""
        p = self.dropouts[layer]
        if not p:
            return None
        if shape not in self._counters:
            self._counters[shape] = self.xp.reshape(
                self.xp.arange(shape[0] * shape[1], dtype=self.xp.int64, device=device(like)),
                shape)
        key = step_key(self.config.seed, self.global_step, layer)
        if self.keep_mask_kernel is not None:
            return self.keep_mask_kernel(self._counters[shape], key, p, like.dtype)
        return keep_mask(self.xp, self._counters[shape], key, p, like.dtype, self.hash_kernel)

    # --- the state: flat buffers, export, restore --------------------------------------------

    def _flatten(self, order: Sequence[int]) -> None:
        """Keep the weights, velocities and second moments as views of one flat buffer each,
        laid out in `order`: one call of an update rule then covers every layer."""
        xp = self.xp
        self.flat_params, self.params = flatten(xp, self.params, order)
        self.flat_velocities, self.velocities = flatten(xp, self.velocities, order)
        if self.adam:
            self.flat_second, self.second = flatten(xp, self.second, order)
        self.in_place = True

    def export(self, to_numpy: Callable[[Array], Any]) -> tuple[list, list, list]:
        """Host copies of (weights, velocities or first moments, second moments)."""
        def copy(arrays: Sequence[Array]) -> list:
            return [np.array(to_numpy(a)) for a in arrays]
        return copy(self.params), copy(self.velocities), copy(self.second)

    def restore(self, asarray: Callable[[Any], Array], params: Sequence[Any],
                velocities: Sequence[Any], second: Sequence[Any], global_step: int) -> None:
        """Put exported state back, in place (the flat buffers keep their views)."""
        for mine, theirs in ((self.params, params), (self.velocities, velocities),
                             (self.second, second)):
            if len(mine) != len(theirs):
                raise ValueError(f"expected {len(mine)} arrays, got {len(theirs)}")
            self._write(mine, [asarray(np.array(h, order="C")) for h in theirs])
        self.global_step = global_step

    def load_params(self, params: Sequence[Array]) -> None:
        """Make `params` (arrays on this step's device) the weights."""
        self._write(self.params, [self.xp.asarray(p, copy=True) for p in params])

    def _write(self, mine: list[Array], values: Sequence[Array]) -> None:
        """Put `values` in the place of the arrays of `mine`, a list of the step's state."""
        for a, v in zip(mine, values, strict=True):
            if tuple(a.shape) != tuple(v.shape):
                raise ValueError(f"expected an array of shape {tuple(a.shape)}, got "
                                 f"{tuple(v.shape)}")
        if self.in_place:  # views of the flat buffers: written through
            for a, v in zip(mine, values, strict=True):
                a[...] = v
        else:
            mine[:] = values  # (the same list: whoever holds it sees the new arrays)
