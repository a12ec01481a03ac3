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


def diverged(mean: float, loss: str) -> bool:
    """Whether a mean loss (over a batch or an epoch) says that training diverged: it is not
    finite, or it is a cross-entropy above DIVERGED_NATS. The one definition: the training loop
    stops on it, the benchmark marks its rows with it."""
    return not math.isfinite(mean) or (loss == "cross_entropy" and mean > DIVERGED_NATS)


def untrained_loss(loss: str, classes: int) -> float | None:
    """The mean loss of a network that knows nothing: ln k for cross-entropy (every class at
    p = 1/k); None for MSE, whose value depends on the output activation."""
    return math.log(classes) if loss == "cross_entropy" else None
