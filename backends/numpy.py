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
                             elastic=ElasticKernel)
    return Backend(
        name="numpy", xp=xp, device="cpu", device_name="cpu", version=np.__version__,
        asarray=np.ascontiguousarray, to_numpy=np.asarray, synchronize=nop, on_host=True,
        host_blas=True, devices=("cpu",), kernels=kernels,
    )


def _take(x: np.ndarray, idx: np.ndarray, out: np.ndarray) -> np.ndarray:
    # mode="clip" skips the bounds check (the indices are a permutation): with mode="raise"
    # and out=, numpy gathers into a temporary first, which makes it 50% slower
    return np.take(x, idx, axis=0, out=out, mode="clip")


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
