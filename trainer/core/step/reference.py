"""The training step's math, as a reader should first meet it: network.forward and backward,
losses.loss_and_delta, the penalty and optim's rules, one array at a time, in array-API
operations only. PlainStep (batch.py) calls it per batch, CompiledStep (compiled.py) traces it;
the fast steps rearrange it and are tested against it (tests/test_step.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trainer.core import optim
from trainer.core.config import Config
from trainer.core.losses import loss_and_delta
from trainer.core.metrics import hits
from trainer.core.network import backward, forward
from trainer.core.step.state import Rates, State

Array = Any


def train_batch(config: Config, state: State, x: Array, onehot: Array,
                masks: Sequence[Array | None] | None, rates: Rates
                ) -> tuple[State, Array, Array]:
    """One step on the batch `x` (its one-hot targets `onehot`, dropout's multipliers `masks`)
    at the step's scalars `rates`. Returns (new state, summed loss, correct count). On a
    mutable backend the state is updated in place (and returned); on an immutable one it is a
    new state, which makes this a pure function that a compiler can trace."""
    c, acts = config, config.activations
    params, velocities, second = (list(arrays) for arrays in state)
    outs, logits = forward(params, acts, x, masks)
    loss, delta = loss_and_delta(c.loss, acts[-1], logits, outs[-1], onehot)
    correct = hits(logits if c.loss == "cross_entropy" else outs[-1], onehot)
    grads = backward(params, acts, outs, delta * rates.scale, masks)
    if c.regularization_type and c.regularization_rate:
        for i in range(0, len(grads), 2):
            grads[i] = optim.add_penalty(grads[i], params[i], c.regularization_type, 1.0,
                                         rates.penalty)
    for j, g in enumerate(grads):
        if rates.adam is not None:
            params[j], velocities[j], second[j] = optim.adam(
                params[j], velocities[j], second[j], g, rates.adam, beta1=c.beta1,
                beta2=c.beta2, epsilon=c.epsilon)
        else:
            params[j], velocities[j] = optim.sgd(params[j], velocities[j], g, c.momentum,
                                                 c.nesterov)
    return (params, velocities, second), loss, correct
