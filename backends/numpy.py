"""NumPy: the reference backend, on the CPU."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from array_api_compat import numpy as xp

from backends import Backend, nop, numpy_blas


def load(device: str | None = None) -> Backend:
    if device not in (None, "cpu"):
        raise ImportError(f"numpy runs on the CPU only, not on device {device!r}")
    return Backend(
        name="numpy", xp=xp, device="cpu", device_name="cpu", version=np.__version__,
        asarray=np.ascontiguousarray, to_numpy=np.asarray, sync=nop, devices=("cpu",),
        kernels=_kernels(),
    )


def _kernels() -> dict[str, Callable[..., np.ndarray]]:
    kernels = {"matmul": _matmul, "take": _take, "sum0": _sum0, "activate": _activate,
               "softmax_xent": _softmax_xent}
    gemm_acc = numpy_blas.load()
    if gemm_acc is not None:
        kernels["gemm_acc"] = gemm_acc
    return kernels


def _matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    return np.matmul(a, b, out=out)


def _take(x: np.ndarray, idx: np.ndarray, out: np.ndarray) -> np.ndarray:
    # mode="clip" skips the bounds check (the indices are a permutation): with mode="raise"
    # and out=, numpy gathers into a temporary first, which makes it 50% slower
    return np.take(x, idx, axis=0, out=out, mode="clip")


def _sum0(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    return np.add.reduce(x, axis=0, out=out)  # np.sum's wrapper doubles the cost here


def _activate(name: str, z: np.ndarray) -> np.ndarray | None:
    """The activation applied to z in place (None: not offered here, use the generic one)."""
    if name == "sigmoid":  # 0.5 * (tanh(z / 2) + 1): stable for any z, no temporaries
        z *= 0.5
        np.tanh(z, out=z)
        z *= 0.5
        z += 0.5
    elif name == "relu":
        np.maximum(z, 0, out=z)
    elif name == "tanh":
        np.tanh(z, out=z)
    elif name != "identity":
        return None
    return z


def _softmax_xent(logits: np.ndarray, t: np.ndarray,
                  scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(summed cross-entropy, correct count, scale * (softmax - t)), overwriting `logits`.

    The same formulas as trainer/step.py's generic path, with ndarray methods (np.max and
    np.sum cost twice as much on small arrays) and in-place arithmetic.
    """
    logits -= logits.max(axis=1, keepdims=True)
    correct = np.multiply(t, logits == 0.0).sum()
    e = np.exp(logits)
    s = e.sum(axis=1, keepdims=True)
    logits -= np.log(s)  # now log-softmax
    loss = -np.multiply(t, logits).sum()
    e /= s
    e -= t
    e *= scale
    return loss, correct, e
