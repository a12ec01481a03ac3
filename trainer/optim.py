"""SGD with momentum (neural-net-rs's rule: v = m*v - lr*g; w += v), Nesterov as an option.

Updates are in place (the array API's in-place operators) so the hot loop allocates little.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from array_api_compat import array_namespace

Array = Any


def add_regularization(grads: list[Array], params: Sequence[Array], kind: str | None,
                       rate: float) -> None:
    """Add the L1 (rate * sign(w)) or L2 (rate * w) penalty gradient to the weight gradients."""
    if kind is None or rate == 0.0:
        return
    for i in range(0, len(params), 2):  # weights only, not biases
        w = params[i]
        grads[i] = grads[i] + (rate * array_namespace(w).sign(w) if kind == "L1" else rate * w)


def sgd_step(params: Sequence[Array], velocities: Sequence[Array], grads: Sequence[Array],
             lr: float, momentum: float, nesterov: bool) -> None:
    for w, v, g in zip(params, velocities, grads, strict=True):
        v *= momentum
        v -= lr * g
        if nesterov:  # look-ahead form: w += m*v_new - lr*g
            w += momentum * v - lr * g
        else:
            w += v
