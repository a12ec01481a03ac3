"""numba: NumPy arrays on the CPU, with each stretch of training steps compiled whole by numba
(numba_step.py) where the config is one that kernel covers; any other config trains exactly as
on the numpy backend (its kernels and steps). The elastic warp and the shifts are
its own kernels (numba_elastic.py), with numpy's bits."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from . import Backend
from . import numpy as numpy_backend


def load(device: str | None = None) -> Backend:
    try:
        import numba
    except ImportError as e:
        raise ImportError(f"numba is not installed ({e}); python -m pip install "
                          f"\".[numba]\" in the trainer checkout") from e
    if _kernel("float32") is None:
        raise ImportError("numpy's BLAS offers no 64-bit-integer CBLAS GEMM for numba to call")
    from .numba_elastic import ElasticKernel, ShiftKernel

    base = numpy_backend.load(device)
    # numpy's kernels, but the elastic warp and the shifts compiled (numba_elastic.py: the
    # same bits)
    kernels = dataclasses.replace(base.kernels, elastic=ElasticKernel, shift=ShiftKernel)
    return dataclasses.replace(base, name="numba", version=numba.__version__, kernels=kernels,
                               fused=_kernel)


@functools.cache
def _kernel(dtype: str) -> Callable[..., Any] | None:
    """The stretch kernel for `dtype`, made once per process (compiled on its first call)."""
    from . import numba_step

    return numba_step.make_kernel(np.dtype(dtype))
