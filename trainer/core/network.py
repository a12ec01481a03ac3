"""The MLP: host-side initialisation, forward and backward passes by hand, in the array API.

Parameters are a flat list [W0, b0, W1, b1, ...] with W of shape (fan_in, fan_out), so a layer is
`a @ W + b`. Nothing here imports numpy for math: `xp` comes from the arrays. `forward` serves
prediction; `forward` + `backward` are also the training step's own math (trainer/core/step/
reference.py), checked against finite differences; the fast steps are tested against them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from trainer.core.activations import ACTIVATIONS

Array = Any
HE_FAMILY = {"relu", "leaky_relu"}


def init_params(sizes: Sequence[int], activations: Sequence[str], init: str,
                rng: np.random.Generator, dtype: str) -> list[np.ndarray]:
    """Weights drawn on the host so that every backend starts from the same numbers."""
    params: list[np.ndarray] = []
    for fan_in, fan_out, act in zip(sizes[:-1], sizes[1:], activations, strict=True):
        scheme = init if init != "auto" else ("he" if act in HE_FAMILY else "xavier")
        if scheme == "he":
            w = rng.normal(0.0, math.sqrt(2.0 / fan_in), (fan_in, fan_out))
        elif scheme == "xavier":
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            w = rng.uniform(-limit, limit, (fan_in, fan_out))
        else:  # "uniform": U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the classic LeCun-style default
            limit = 1.0 / math.sqrt(fan_in)
            w = rng.uniform(-limit, limit, (fan_in, fan_out))
        params += [w.astype(dtype), np.zeros(fan_out, dtype=dtype)]
    return params


def forward(params: Sequence[Array], activations: Sequence[str], x: Array,
            masks: Sequence[Array | None] | None = None) -> tuple[list[Array], Array]:
    """Outputs of every layer, input first ([x, a1, ..., aL]), and the last pre-activation.

    `masks[i]`, when given and not None, multiplies the input of connection i (x for i = 0, the
    output of layer i after it): dropout's inverted multipliers. The outputs returned are the
    layers' own, before any mask.
    """
    outs = [x]
    z = x
    for i, act in enumerate(activations):
        a = outs[-1] if masks is None or masks[i] is None else outs[-1] * masks[i]
        z = a @ params[2 * i] + params[2 * i + 1]
        outs.append(ACTIVATIONS[act][0](z))
    return outs, z


def backward(params: Sequence[Array], activations: Sequence[str], outs: Sequence[Array],
             delta: Array, masks: Sequence[Array | None] | None = None) -> list[Array]:
    """Gradients [dW0, db0, ...] given `delta`, the loss gradient w.r.t. the last pre-activation,
    and `forward`'s outputs and masks."""
    xp = array_namespace(delta)
    grads: list[Array] = [None] * len(params)
    for i in range(len(activations) - 1, -1, -1):
        mask = None if masks is None else masks[i]
        a = outs[i] if mask is None else outs[i] * mask
        grads[2 * i] = xp.matrix_transpose(a) @ delta
        grads[2 * i + 1] = xp.sum(delta, axis=0)
        if i > 0:
            g = delta @ xp.matrix_transpose(params[2 * i])
            if mask is not None:
                g = g * mask
            delta = ACTIVATIONS[activations[i - 1]][1](outs[i], g)
    return grads


def predict(params: Sequence[Array], activations: Sequence[str], x: Array, chunk: int = 1024,
            on_chunk: Callable[[int, int], None] | None = None) -> Array:
    """Predicted class per row, in chunks to bound memory; `on_chunk(done, total)` after each.

    Chunks of 1,024 rows: after an epoch of training, 5,000 rows of the recipes' network in one
    chunk took a median of 119 ms (its activations fresh memory), in chunks of 1,024 38 ms
    (scripts/bench_eval_chunk.py, BENCHMARKS.md)."""
    xp, n = array_namespace(x), x.shape[0]
    preds = []
    for i in range(0, n, chunk):
        preds.append(xp.argmax(forward(params, activations, x[i:min(i + chunk, n), ...])[1],
                               axis=1))
        if on_chunk is not None:
            on_chunk(min(i + chunk, n), n)
    return xp.concat(preds) if len(preds) > 1 else preds[0]
