"""The update rules, written once: momentum SGD (and Nesterov's), Adam and AdamW, and the L1/L2
penalties. Each works in place on arrays of any array-API library, one layer's arrays or one
flat buffer holding every layer's: the plain step calls them per array, the fast steps once.

Sign convention. The steps fold -lr into SGD's gradient (the output delta is scaled, so every
weight gradient comes out already scaled): `g` here is -lr * dL/dw, and momentum is

    v = m v + g;  w += v            (the textbook v = m v - lr dL/dw, w += v)

Nesterov's look-ahead moves w by m v + g instead. Adam's `g` is dL/dw itself.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace

Array = Any


def momentum(v: Array, g: Array, m: float) -> None:
    """v = m v + g, in place: the velocity of momentum SGD."""
    v *= m
    v += g


def sgd(w: Array, v: Array, g: Array, m: float, nesterov: bool = False) -> None:
    """One momentum SGD update of w (g = -lr * gradient): v = m v + g; w += v, or Nesterov's
    w += m v + g."""
    momentum(v, g, m)
    if nesterov:
        w += m * v + g
    else:
        w += v


def adam(w: Array, first: Array, second: Array, g: Array, *, lr: float, t: int, beta1: float,
         beta2: float, epsilon: float, weight_decay: float = 0.0) -> None:
    """One Adam update with bias correction at step t (1-based); weight_decay > 0 is AdamW's
    decoupled decay (w shrinks by lr * weight_decay, apart from the gradient)."""
    xp = array_namespace(w, g)
    first *= beta1
    first += (1 - beta1) * g
    second *= beta2
    second += (1 - beta2) * (g * g)
    if weight_decay:
        w *= 1 - lr * weight_decay
    denom = xp.sqrt(second / (1 - beta2 ** t)) + epsilon
    w -= (lr / (1 - beta1 ** t)) * (first / denom)


def add_penalty(grad: Array, w: Array, kind: str | None, rate: float, scale: float) -> None:
    """grad += scale * d(penalty)/dw, in place: L2's penalty rate/2 * sum(w^2) has gradient
    rate * w, L1's rate * sum(|w|) has rate * sign(w) (neural-net-rs's definitions)."""
    if kind is None or not rate:
        return
    xp = array_namespace(w)
    grad += (scale * rate) * (w if kind == "L2" else xp.sign(w))
