"""Kernels for array libraries with NumPy's API (numpy, cupy): write into buffers, in place.

They implement the optional kernels described in backends/__init__.py with `out=` arguments
and ndarray methods, which the array API standard does not have. trainer/step.py falls back to
plain array-API code for any kernel a backend does not offer, and the tests compare both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Kernel = Callable[..., Any]


def make(nx: Any, **overrides: Kernel | None) -> dict[str, Kernel]:
    """The kernels for module `nx` (numpy or cupy); `overrides` replace or add (None: drop)."""

    def matmul(a: Any, b: Any, out: Any) -> Any:
        return nx.matmul(a, b, out=out)

    def take(x: Any, idx: Any, out: Any) -> Any:
        return nx.take(x, idx, axis=0, out=out)

    def sum0(x: Any, out: Any) -> Any:
        return nx.sum(x, axis=0, out=out)

    def activate(name: str, z: Any) -> Any | None:
        """The activation applied to z in place (None: not offered, use the generic one)."""
        if name == "sigmoid":  # 0.5 * (tanh(z / 2) + 1): stable for any z, no temporaries
            z *= 0.5
            nx.tanh(z, out=z)
            z *= 0.5
            z += 0.5
        elif name == "relu":
            nx.maximum(z, 0, out=z)
        elif name == "tanh":
            nx.tanh(z, out=z)
        elif name != "identity":
            return None
        return z

    def softmax_xent(logits: Any, t: Any, scale: float) -> tuple[Any, Any, Any]:
        """(summed cross-entropy, correct count, scale * (softmax - t)), overwriting logits.

        trainer/step.py's generic formulas, with ndarray methods (np.max and np.sum cost twice
        as much on small arrays) and in-place arithmetic.
        """
        logits -= logits.max(axis=1, keepdims=True)
        correct = nx.multiply(t, logits == 0.0).sum()
        e = nx.exp(logits)
        s = e.sum(axis=1, keepdims=True)
        logits -= nx.log(s)  # now the log-softmax
        loss = -nx.multiply(t, logits).sum()
        e /= s
        e -= t
        e *= scale
        return loss, correct, e

    kernels: dict[str, Kernel] = {"matmul": matmul, "take": take, "sum0": sum0,
                                  "activate": activate, "softmax_xent": softmax_xent}
    for name, kernel in overrides.items():
        if kernel is None:
            kernels.pop(name, None)
        else:
            kernels[name] = kernel
    return kernels
