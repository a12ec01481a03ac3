"""Losses with their gradient w.r.t. the last pre-activation, summed over the batch.

Cross-entropy is fused with its softmax output (gradient p - y, loss from a log-softmax of the
logits so it stays finite when a probability underflows); MSE = 0.5 * sum((a - y)^2) works with
any output activation by going through that activation's backward pass.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace

from trainer.activations import ACTIVATIONS

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
