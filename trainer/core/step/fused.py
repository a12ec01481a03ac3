"""The fused step: stretches of whole training steps run by one call of a backend's compiled
kernel on host arrays (Backend.fused: the numba backend's backends/numba_step.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from trainer.backends.fused_args import HIDDEN, IDENTITY, FusedArgs
from trainer.core.buffers import aligned_empty
from trainer.core.config import Config
from trainer.core.losses import divergence_bound
from trainer.core.step.state import Rates
from trainer.core.step.stretch import StretchStep

Array = Any


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
    """The state in flat host buffers, trained a stretch at a time by the backend's fused
    kernel: the same math as reference.train_batch (tests/test_numba_step.py). A stretch's
    steps run one after the other in the kernel whatever the stretch's length."""

    kind = "fused"

    def __init__(self, config: Config, xp: Any, params: Sequence[Array],
                 velocities: Sequence[Array], kernel: Callable[..., Any]) -> None:
        super().__init__(config, xp, params, velocities)
        self.kernel = kernel
        self._flatten(range(len(self.params)))  # in their natural order
        sizes, bs, like = config.sizes, config.batch_size, self.flat_params
        empty = np.empty(0)
        # the epoch's fields (x_all .. scales) are set by _begin
        self.args = FusedArgs(
            x_all=empty, labels_all=empty, perm=empty.astype(np.int64), scales=empty,
            batch_size=bs, sizes=np.asarray(sizes, dtype=np.int64),
            acts=np.asarray([HIDDEN[a] for a in self.acts[:-1]] + [IDENTITY], dtype=np.int64),
            w=self.flat_params, v=self.flat_velocities,
            offsets=np.cumsum([0] + [int(np.prod(p.shape)) for p in self.params[:-1]],
                              dtype=np.int64),
            momentum=float(config.momentum),
            xbuf=aligned_empty(xp, (bs * sizes[0],), like),
            hbuf=aligned_empty(xp, (bs * sum(sizes[1:]),), like),
            dbuf=aligned_empty(xp, (2 * bs * max(sizes[1:-1], default=1),), like),
            labels=np.empty(bs, dtype=np.int64), sums=np.zeros(2, dtype=np.float64),
            bound=divergence_bound(config.loss))
        self._ready = False

    def _begin(self, x_all: Array, y_all: Array, perm: Array, rates: Sequence[Rates],
               first_global: int) -> None:
        """StretchStep._begin: each step's delta factor, in the weights' dtype."""
        self.args = self.args._replace(
            x_all=x_all, labels_all=y_all, perm=np.ascontiguousarray(perm, dtype=np.int64),
            scales=np.asarray([r.scale for r in rates], dtype=self.flat_params.dtype))
        self._ready = True

    def _stretch(self, first: int, count: int, batch: int, loss_sum: float, correct: float
                 ) -> tuple[float, float, int | None, float]:
        if not self._ready:
            raise RuntimeError("begin_epoch first")
        sums = self.args.sums
        sums[:] = (loss_sum, correct)
        broke, last = self.kernel(self.args, first, count, batch)
        return float(sums[0]), float(sums[1]), None if broke < 0 else int(broke), float(last)
