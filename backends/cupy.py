"""CuPy on a CUDA GPU; `--device N` picks the card."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from . import Backend, Kernels


def load(device: str | None = None) -> Backend:
    try:
        import cupy
        from array_api_compat import cupy as xp
    except ImportError as e:
        raise ImportError(
            f"cupy is not installed ({e}); pip install 'trainer[cuda12]' or 'trainer[cuda13]'"
        ) from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError: no driver, driver too old, no device
        raise ImportError(f"cupy {cupy.__version__} cannot use CUDA: {e}") from e
    if count == 0:
        raise ImportError(f"cupy {cupy.__version__} sees no CUDA device")
    index = int(str(device).removeprefix("cuda:")) if device not in (None, "cuda") else 0
    if not 0 <= index < count:
        raise ImportError(f"no CUDA device {index}: this machine has {count}")
    dev = cupy.cuda.Device(index)
    dev.use()
    name = cupy.cuda.runtime.getDeviceProperties(index)["name"]

    def asarray(a: Any) -> Any:
        with dev:
            return cupy.asarray(a)

    def memory() -> tuple[int, int]:
        with dev:
            cupy.get_default_memory_pool().free_all_blocks()  # CuPy's cached blocks are free
            return cupy.cuda.runtime.memGetInfo()

    with dev:
        kernels = _kernels(cupy)
    return Backend(
        name="cupy", xp=xp, device=dev,
        device_name=name.decode() if isinstance(name, bytes) else str(name),
        version=cupy.__version__, asarray=asarray, to_numpy=cupy.asnumpy,
        synchronize=dev.synchronize, on_host=False, memory=memory,
        devices=tuple(f"cuda:{i}" for i in range(count)), kernels=kernels,
    )


def _kernels(cupy: Any) -> Kernels:
    """numpy-style buffer kernels, plus one fused sigmoid and cuBLAS's GEMM with beta."""
    import cupy.cublas

    from . import ndkernels

    # activations.sigmoid in one kernel launch instead of four: at batch 32 a step is bound by
    # launches, not FLOPs
    sigmoid = cupy.ElementwiseKernel("T z", "T y", "y = (T)0.5 * tanh((T)0.5 * z) + (T)0.5",
                                     "trainer_sigmoid")
    generic = ndkernels.make(cupy).activate

    def activate(name: str, z: Any) -> Any | None:
        return sigmoid(z, z) if name == "sigmoid" else generic(name, z)

    def gemm_acc(a: Any, b: Any, out: Any, alpha: float, beta: float) -> Any:
        return cupy.cublas.gemm("N", "N", a, b, out=out, alpha=alpha, beta=beta)

    kernels = ndkernels.make(cupy, activate=activate, gemm_acc=gemm_acc)
    why = _gemm_acc_fails(cupy, gemm_acc)
    if why is not None:
        kernels = replace(kernels.without("gemm_acc"), dropped=(("gemm_acc", why),))
    return kernels


def _gemm_acc_fails(cupy: Any, gemm_acc: Any) -> str | None:
    """Why gemm_acc cannot be used (None: it works). Checks the layouts the step uses (a
    transposed view times a C-contiguous array or a transposed view, the latter for transposed
    logits) against cupy's matmul, in float32 and float64."""
    try:
        for dtype, rtol in ((cupy.float32, 1e-5), (cupy.float64, 1e-12)):
            a = cupy.arange(15, dtype=dtype).reshape(5, 3) / 7
            b = cupy.arange(20, dtype=dtype).reshape(5, 4) / 9
            for right in (b, cupy.ascontiguousarray(b.T).T):
                out = cupy.ones((3, 4), dtype=dtype)
                want = 0.5 * out - 2.0 * (a.T @ right)
                got = gemm_acc(a.T, right, out, -2.0, 0.5)
                if not bool(cupy.allclose(got, want, rtol=rtol)):
                    return f"{cupy.dtype(dtype).name} self-test: cuBLAS's result differs"
        return None
    except Exception as e:  # an old cupy without cupy.cublas.gemm, or a cuBLAS error
        return f"self-test failed: {type(e).__name__}: {e}"
