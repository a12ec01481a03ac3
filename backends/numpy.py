"""NumPy: the reference backend, on the CPU."""

from __future__ import annotations

import functools

import numpy as np
from array_api_compat import numpy as xp

from . import HASH32_MULTIPLIER, Backend, ndkernels, nop, numpy_blas
from .numpy_elastic import ElasticKernel
from .prefetch import Prefetch


def load(device: str | None = None) -> Backend:
    if device not in (None, "cpu"):
        raise ImportError(f"numpy runs on the CPU only, not on device {device!r}")
    kernels = ndkernels.make(np, take=_take, sum0=_sum0, gemm_acc=numpy_blas.load(),
                             axpy=numpy_blas.load_axpy(), hash32=_hash32, prefetch=Prefetch,
                             elastic=ElasticKernel, sgd_update=_sgd_update)
    return Backend(
        name="numpy", xp=xp, device="cpu", device_name="cpu", version=np.__version__,
        asarray=np.ascontiguousarray, to_numpy=np.asarray, synchronize=nop, on_host=True,
        host_blas=True, devices=("cpu",), kernels=kernels,
    )


def _take(x: np.ndarray, idx: np.ndarray, out: np.ndarray) -> np.ndarray:
    # mode="clip" skips the bounds check (the indices are a permutation): with mode="raise"
    # and out=, numpy gathers into a temporary first, which makes it 50% slower
    return np.take(x, idx, axis=0, out=out, mode="clip")


# elements per chunk of the update: a chunk of w, v, g and the scratch (1 MB in float32) stays
# in the L2 cache through the rule's five passes
CHUNK = 1 << 16


def _sgd_update(w: np.ndarray, v: np.ndarray, g: np.ndarray, m: float, nesterov: bool,
                rest: int) -> None:
    """optim.sgd over the flat buffers (below `rest` v is already updated: VelocityStep), a
    chunk at a time: the rule's very operations, so the same bits, but each chunk comes from
    memory once instead of once per pass (BENCHMARKS.md, by a since retired A/B script: epochs of
    configs/mnist-99.json, 1.3 million weights, 0.93x the time)."""
    scratch = _scratch(w.dtype)  # made once: nothing allocated per step
    for lo in range(0, w.shape[0], CHUNK):
        hi = min(lo + CHUNK, w.shape[0])
        wc, vc, gc = w[lo:hi], v[lo:hi], g[lo:hi]
        if hi > rest:  # optim.momentum
            vm, gm = v[max(lo, rest):hi], g[max(lo, rest):hi]
            np.multiply(vm, m, out=vm)
            np.add(vm, gm, out=vm)
        if nesterov:  # w += m * v + g
            step = scratch[:hi - lo]
            np.multiply(vc, m, out=step)
            np.add(step, gc, out=step)
            np.add(wc, step, out=wc)
        else:
            np.add(wc, vc, out=wc)


@functools.cache
def _scratch(dtype: np.dtype) -> np.ndarray:
    """_sgd_update's work chunk (one per dtype; a process trains one step at a time)."""
    return np.empty(CHUNK, dtype=dtype)


def _sum0(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Column sums as ones @ x: one BLAS matrix-vector product, 3x faster than np.add.reduce
    over axis 0 at batch 512 (which adds row by row)."""
    return np.matmul(_ones(x.shape[0], x.dtype), x, out=out)


@functools.cache
def _ones(n: int, dtype: np.dtype) -> np.ndarray:
    ones = np.ones(n, dtype=dtype)
    ones.flags.writeable = False
    return ones


def _hash32(x: np.ndarray) -> np.ndarray:
    """trainer/core/dropout.py's hash32 in unsigned 32-bit arithmetic (wrapping = its
    masking)."""
    x = x.astype(np.uint32)
    for _ in range(2):
        x ^= x >> 16
        x *= np.uint32(HASH32_MULTIPLIER)
    x ^= x >> 16
    return x
