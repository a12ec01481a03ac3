"""The update rules, written once: momentum SGD (and Nesterov's), Adam and AdamW, and the L1/L2
penalties. Each works in place on arrays of any array-API library, one layer's arrays or one
flat buffer holding every layer's: the plain step calls them per array, the fast steps once.

Sign convention. The steps fold -lr into SGD's gradient (the output delta is scaled, so every
weight gradient comes out already scaled): `g` here is -lr * dL/dw, and momentum is

    v = m v + g;  w += v            (the textbook v = m v - lr dL/dw, w += v)

Nesterov's look-ahead moves w by m v + g instead. Adam's `g` is dL/dw itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from array_api_compat import array_namespace

Array = Any


def momentum(v: Array, g: Array, m: float) -> Array:
    """v = m v + g, in place: the velocity of momentum SGD. Like every rule here it returns
    what it updated: the same array on a mutable backend, a new one on an immutable one (JAX,
    where `v *= m` binds a new array), so that one code serves both."""
    v *= m
    v += g
    return v


def sgd(w: Array, v: Array, g: Array, m: float, nesterov: bool = False) -> tuple[Array, Array]:
    """One momentum SGD update of w (g = -lr * gradient): v = m v + g; w += v, or Nesterov's
    w += m v + g. Returns (w, v)."""
    v = momentum(v, g, m)
    if nesterov:
        w += m * v + g
    else:
        w += v
    return w, v


@dataclass(frozen=True)
class AdamRates:
    """The scalars of one Adam step, worked out on the host in float64 (a compiled step is
    handed them per step, in the weights' dtype: the same rounding as Python floats get)."""

    step: float  # lr / (1 - beta1^t): the bias-corrected step size
    bias2: float  # 1 - beta2^t: the second moment's bias correction
    decay: float | None  # 1 - lr * weight_decay, AdamW's shrink of w; None without decay


def adam_rates(lr: float, t: int, beta1: float, beta2: float,
               weight_decay: float = 0.0) -> AdamRates:
    """Adam's scalars at step t (1-based)."""
    return AdamRates(lr / (1 - beta1 ** t), 1 - beta2 ** t,
                     1 - lr * weight_decay if weight_decay else None)


def adam(w: Array, first: Array, second: Array, g: Array, rates: AdamRates, *, beta1: float,
         beta2: float, epsilon: float) -> tuple[Array, Array, Array]:
    """One Adam update with bias correction (`rates` from adam_rates); a decay in the rates is
    AdamW's decoupled weight decay (w shrinks by lr * weight_decay, apart from the gradient).
    Returns (w, first, second)."""
    xp = array_namespace(w, g)
    first *= beta1
    first += (1 - beta1) * g
    second *= beta2
    second += (1 - beta2) * (g * g)
    if rates.decay is not None:
        w *= rates.decay
    denom = xp.sqrt(second / rates.bias2) + epsilon
    w -= rates.step * (first / denom)
    return w, first, second


def add_penalty(grad: Array, w: Array, kind: str | None, rate: float, scale: float) -> Array:
    """grad += scale * d(penalty)/dw, in place: L2's penalty rate/2 * sum(w^2) has gradient
    rate * w, L1's rate * sum(|w|) has rate * sign(w) (neural-net-rs's definitions). Returns
    grad."""
    if kind is None or not rate:
        return grad
    xp = array_namespace(w)
    grad += (scale * rate) * (w if kind == "L2" else xp.sign(w))
    return grad
