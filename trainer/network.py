"""The MLP: host-side initialisation, forward and backward passes by hand, in the array API.

Parameters are a flat list [W0, b0, W1, b1, ...] with W of shape (fan_in, fan_out), so a layer is
`a @ W + b`. Nothing here imports numpy for math: `xp` comes from the arrays. `forward` serves
prediction; `forward` + `backward` are also the plain reference that tests check against finite
differences and that trainer/step.py (the same math, arranged for speed) is tested against.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from trainer.activations import ACTIVATIONS

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


def forward(params: Sequence[Array], activations: Sequence[str],
            x: Array) -> tuple[list[Array], Array]:
    """Outputs of every layer, input first ([x, a1, ..., aL]), and the last pre-activation."""
    outs = [x]
    z = x
    for i, act in enumerate(activations):
        z = outs[-1] @ params[2 * i] + params[2 * i + 1]
        outs.append(ACTIVATIONS[act][0](z))
    return outs, z


def backward(params: Sequence[Array], activations: Sequence[str], outs: Sequence[Array],
             delta: Array) -> list[Array]:
    """Gradients [dW0, db0, ...] given `delta`, the loss gradient w.r.t. the last pre-activation."""
    xp = array_namespace(delta)
    grads: list[Array] = [None] * len(params)
    for i in range(len(activations) - 1, -1, -1):
        grads[2 * i] = xp.matrix_transpose(outs[i]) @ delta
        grads[2 * i + 1] = xp.sum(delta, axis=0)
        if i > 0:
            g = delta @ xp.matrix_transpose(params[2 * i])
            delta = ACTIVATIONS[activations[i - 1]][1](outs[i], g)
    return grads


def predict(params: Sequence[Array], activations: Sequence[str], x: Array, chunk: int = 8192,
            on_chunk: Callable[[int, int], None] | None = None) -> Array:
    """Predicted class per row, in chunks to bound memory; `on_chunk(done, total)` after each."""
    xp, n = array_namespace(x), x.shape[0]
    preds = []
    for i in range(0, n, chunk):
        preds.append(xp.argmax(forward(params, activations, x[i:min(i + chunk, n), ...])[1],
                               axis=1))
        if on_chunk is not None:
            on_chunk(min(i + chunk, n), n)
    return xp.concat(preds) if len(preds) > 1 else preds[0]
