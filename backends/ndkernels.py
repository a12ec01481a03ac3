"""Kernels for array libraries with NumPy's API (numpy, cupy): write into buffers, in place.

They implement the optional Kernels described in backends/__init__.py with `out=` arguments
and ndarray methods, which the array API standard does not have; each names the reference
function it mirrors. The training step falls back to plain array-API code for any kernel a
backend does not offer, and the tests compare both.
"""

from __future__ import annotations

from typing import Any

from . import Kernel, Kernels


def make(nx: Any, **overrides: Kernel | None) -> Kernels:
    """The kernels for module `nx` (numpy or cupy); `overrides` replace or add (None: drop)."""

    def matmul(a: Any, b: Any, out: Any) -> Any:
        return nx.matmul(a, b, out=out)

    def take(x: Any, idx: Any, out: Any) -> Any:
        return nx.take(x, idx, axis=0, out=out)

    def sum0(x: Any, out: Any) -> Any:
        return nx.sum(x, axis=0, out=out)

    def activate(name: str, z: Any) -> Any | None:
        """activations.py's activation `name` applied to z in place (None: not offered)."""
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

    def activate_grad(name: str, a: Any, g: Any, tmp: Any, mask: Any = None) -> Any | None:
        """activations.py's `<name>_backward(a, g * mask)`, in place in g (None: not offered,
        and g untouched)."""
        if name not in ("sigmoid", "tanh", "relu", "identity"):
            return None
        if mask is not None:
            g *= mask
        if name == "sigmoid":  # a (1 - a), which stays accurate where a is close to 1
            nx.subtract(1.0, a, out=tmp)
            tmp *= a
            g *= tmp
        elif name == "tanh":
            nx.multiply(a, a, out=tmp)
            nx.subtract(1.0, tmp, out=tmp)
            g *= tmp
        elif name == "relu":
            nx.greater(a, 0.0, out=tmp)
            g *= tmp
        return g

    # 0..n-1 for softmax_xent_t, by batch size and device; the device by its name, since a
    # cupy.cuda.Device defines == but no hash
    aranges: dict[tuple[int, str], Any] = {}

    def softmax_xent_t(logits_t: Any, bias: Any, y_all: Any, idx: Any, scale: float,
                       bias_grad: Any) -> tuple[Any, Any, Any]:
        """losses.loss_and_delta's cross-entropy and metrics.hits, fused: (summed cross-entropy,
        correct count, scale * (softmax - onehot(labels))), overwriting logits_t (C-contiguous:
        the step's own buffer) after adding the bias column; the labels are y_all[idx], and
        the bias's gradient (the delta summed over the samples) goes into bias_grad.

        Classes run along axis 0, one column per sample: the reductions over classes are then
        a few passes over whole rows (over a short axis 1 NumPy loops row by row, 20x slower
        at batch 512). The summed cross-entropy -sum(log softmax[label]) is
        sum(log s) - sum(shifted[label]), s the columns' sums of exp: the labels pick one
        element per column, so no one-hot targets are gathered or multiplied.
        """
        if not logits_t.flags.c_contiguous:
            raise ValueError("softmax_xent_t needs C-contiguous logits")
        logits_t += nx.reshape(bias, (-1, 1))
        labels = nx.take(y_all, idx)
        n = logits_t.shape[1]
        flat = logits_t.reshape(-1)  # a view
        key = (n, str(logits_t.device))
        columns = aranges.get(key)
        if columns is None:
            columns = aranges[key] = nx.arange(n, dtype=labels.dtype)
        true = labels * n  # where each sample's true class sits in flat
        true += columns
        logits_t -= logits_t.max(axis=0)
        shifted = flat[true]
        # a sample is right when its true class has the largest output (ties: measure zero)
        correct = nx.count_nonzero(shifted == 0.0)
        nx.exp(logits_t, out=logits_t)
        s = logits_t.sum(axis=0)
        loss = nx.log(s).sum() - shifted.sum()
        logits_t /= s
        flat[true] -= 1.0
        logits_t *= scale
        column_sums(logits_t.T, bias_grad)
        return loss, correct, logits_t

    # the bias gradient with the backend's own sum0 (numpy's is a BLAS product)
    column_sums = overrides.get("sum0") or sum0
    kernels: dict[str, Kernel | None] = {
        "matmul": matmul, "take": take, "sum0": sum0, "activate": activate,
        "activate_grad": activate_grad, "softmax_xent_t": softmax_xent_t}
    return Kernels(**(kernels | overrides))
