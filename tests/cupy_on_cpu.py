"""A stand-in for CuPy on the CPU, for tests: a `cupy` namespace whose kernel classes are
tests/cuda_on_cpu.py's (the CUDA source compiled by the system's C++ compiler), NumPy for the
rest and for cuBLAS's gemm, and a Backend with backends/cupy.py's own kernels built on it."""

from __future__ import annotations

import os
import sys
import types
from typing import Any

import numpy as np
from cuda_on_cpu import CompileError, ElementwiseKernel, RawKernel


def _gemm(transa: str, transb: str, a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None,
          alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """cupy.cublas.gemm for transa = transb = "N": out = alpha a @ b + beta out (cuBLAS reads
    no `out` where beta is 0)."""
    if (transa, transb) != ("N", "N"):
        raise ValueError("only gemm('N', 'N', ...) is stood in for")
    product = alpha * (a @ b)
    if out is None:
        return product
    out[...] = product + beta * out if beta else product
    return out


def namespace() -> types.ModuleType:
    """A stand-in for the `cupy` module: these kernel classes, NumPy for everything else, and
    `cublas.gemm` in NumPy (cuBLAS is not emulated)."""
    module = types.ModuleType("cupy")
    module.__dict__.update(ElementwiseKernel=ElementwiseKernel, RawKernel=RawKernel,
                           __getattr__=lambda name: getattr(np, name))
    module.cublas = types.ModuleType("cupy.cublas")
    module.cublas.gemm = _gemm
    return module


def unavailable() -> str | None:
    """Why kernels cannot be compiled and run here (None: they can): no compiler, or one
    without C++20's std::barrier."""
    try:
        RawKernel('extern "C" __global__ void cuda_on_cpu_probe(int* out) {\n'
                  "  __syncthreads();\n  if (threadIdx.x == 1) out[0] = 1;\n}\n",
                  "cuda_on_cpu_probe")((1,), (2,), (np.zeros(1, np.int32),))
    except (CompileError, OSError) as e:
        return str(e)
    return None


def standin_or_skip() -> Any:
    """standin_backend(), or a skip saying why it cannot run here (under $CI, where .ci/run
    installs g++, a failure)."""
    import pytest

    why = unavailable()
    if why is not None:
        message = f"the CUDA kernels cannot run on the CPU here: {why}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return standin_backend()


def standin_backend() -> Any:
    """A stand-in for the CuPy backend on NumPy arrays: backends/cupy.py's own kernels (its
    wrappers around the spec's kernels, and its gemm_acc self-test) built on namespace(), so
    the CUDA kernels run here, called as the CuPy step calls them."""
    from array_api_compat import numpy as xp

    from trainer.backends import Backend, nop
    from trainer.backends import cupy as cupy_backend

    fake = namespace()
    saved = {name: sys.modules.get(name) for name in ("cupy", "cupy.cublas")}
    sys.modules.update({"cupy": fake, "cupy.cublas": fake.cublas})  # its `import cupy.cublas`
    try:
        kernels = cupy_backend._kernels(fake)
    finally:
        for name, module in saved.items():
            if module is None:
                del sys.modules[name]
            else:
                sys.modules[name] = module
    return Backend(name="cupy-on-cpu", xp=xp, device="cpu", device_name="CUDA on the CPU",
                   version=np.__version__, asarray=np.array, to_numpy=np.array,
                   synchronize=nop, on_host=False, kernels=kernels)
