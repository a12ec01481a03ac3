"""Activation functions and their backward passes, written once against the array API.

Each backward takes the activation's output `a` (what the forward pass keeps) and the gradient
`g` with respect to `a`, and returns the gradient with respect to the pre-activation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from array_api_compat import array_namespace

Array = Any
LEAKY_SLOPE = 0.01


def sigmoid(z: Array) -> Array:
    xp = array_namespace(z)
    # exp of a large positive number overflows; tanh form is exact and stable in both directions
    return 0.5 * (xp.tanh(0.5 * z) + 1.0)


def sigmoid_backward(a: Array, g: Array) -> Array:
    return g * a * (1.0 - a)


def relu(z: Array) -> Array:
    xp = array_namespace(z)
    return xp.maximum(z, 0.0)


def relu_backward(a: Array, g: Array) -> Array:
    xp = array_namespace(a, g)
    return xp.where(a > 0.0, g, 0.0)


def leaky_relu(z: Array) -> Array:
    xp = array_namespace(z)
    return xp.where(z > 0.0, z, LEAKY_SLOPE * z)


def leaky_relu_backward(a: Array, g: Array) -> Array:
    xp = array_namespace(a, g)
    return xp.where(a > 0.0, g, LEAKY_SLOPE * g)


def tanh(z: Array) -> Array:
    return array_namespace(z).tanh(z)


def tanh_backward(a: Array, g: Array) -> Array:
    return g * (1.0 - a * a)


def softmax(z: Array) -> Array:
    xp = array_namespace(z)
    e = xp.exp(z - xp.max(z, axis=1, keepdims=True))
    return e / xp.sum(e, axis=1, keepdims=True)


def softmax_backward(a: Array, g: Array) -> Array:
    # Jacobian-vector product of softmax: a * (g - <g, a>), row by row
    xp = array_namespace(a, g)
    return a * (g - xp.sum(g * a, axis=1, keepdims=True))


def identity(z: Array) -> Array:
    return z


def identity_backward(a: Array, g: Array) -> Array:
    return g


ACTIVATIONS: dict[str, tuple[Callable[[Array], Array], Callable[[Array, Array], Array]]] = {
    "sigmoid": (sigmoid, sigmoid_backward),
    "relu": (relu, relu_backward),
    "leaky_relu": (leaky_relu, leaky_relu_backward),
    "tanh": (tanh, tanh_backward),
    "softmax": (softmax, softmax_backward),
    "identity": (identity, identity_backward),
}

# Spellings accepted in configs (case-insensitive), mapped to the canonical names above.
ALIASES = {"leakyrelu": "leaky_relu", "leaky-relu": "leaky_relu", "linear": "identity",
           "none": "identity"}


def canonical(name: str) -> str | None:
    """The canonical activation name for a config spelling, or None if unknown."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    return key if key in ACTIVATIONS else None
