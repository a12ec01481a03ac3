"""Losses with their gradient w.r.t. the last pre-activation, summed over the batch.

Cross-entropy is fused with its softmax output (gradient p - y, loss from a log-softmax of the
logits so it stays finite when a probability underflows); MSE = 0.5 * sum((a - y)^2) works with
any output activation by going through that activation's backward pass.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import array_namespace

from trainer.core.activations import ACTIVATIONS

Array = Any


def loss_and_delta(loss: str, out_activation: str, logits: Array, out: Array,
                   onehot: Array) -> tuple[Array, Array]:
    """(loss summed over the batch, gradient of that sum w.r.t. the logits)."""
    xp = array_namespace(out, onehot)
    if loss == "cross_entropy":
        return -xp.sum(onehot * log_softmax(logits)), out - onehot
    diff = out - onehot
    return 0.5 * xp.sum(diff * diff), ACTIVATIONS[out_activation][1](out, diff)


def log_softmax(z: Array) -> Array:
    xp = array_namespace(z)
    shifted = z - xp.max(z, axis=1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))


# A mean cross-entropy above this many nats per sample means the network gives the true class
# p < e^-1000 on average: the logits are thousands apart the wrong way, the weights have blown
# up, and training does not come back from there (an untrained network scores ln k, 2.3 nats
# for 10 classes).
DIVERGED_NATS = 1000.0


def divergence_bound(loss: str) -> float:
    """The mean loss above which training has diverged: DIVERGED_NATS for cross-entropy; none
    (infinity) for MSE, which is bounded by its outputs."""
    return DIVERGED_NATS if loss == "cross_entropy" else math.inf


def diverged(mean: float, loss: str) -> bool:
    """Whether a mean loss (over a batch or an epoch) says that training diverged: it is not
    finite, or it is above divergence_bound. The one definition: the training loop stops on
    it, the benchmark marks its rows with it; a compiled step asks diverged_on_device, a fused
    kernel is handed the bound (backends/fused_args.py)."""
    return not math.isfinite(mean) or mean > divergence_bound(loss)


def diverged_on_device(xp: Any, mean: Array, loss: str) -> Array:
    """`diverged` on a device scalar, as a boolean array (inside a compiled loop)."""
    return ~xp.isfinite(mean) | (mean > divergence_bound(loss))


def untrained_loss(loss: str, classes: int) -> float | None:
    """The mean loss of a network that knows nothing: ln k for cross-entropy (every class at
    p = 1/k); None for MSE, whose value depends on the output activation."""
    return math.log(classes) if loss == "cross_entropy" else None
