"""CuPy on a CUDA GPU; `--device N` picks the card."""

from __future__ import annotations

from typing import Any

from backends import Backend


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

    with dev:
        kernels = _kernels(cupy)
    return Backend(
        name="cupy", xp=xp, device=dev,
        device_name=name.decode() if isinstance(name, bytes) else str(name),
        version=cupy.__version__, asarray=asarray, to_numpy=cupy.asnumpy,
        sync=cupy.cuda.Device(index).synchronize,
        devices=tuple(f"cuda:{i}" for i in range(count)), kernels=kernels,
    )


def _kernels(cupy: Any) -> dict[str, Any]:
    """numpy-style buffer kernels, plus one fused sigmoid and cuBLAS's GEMM with beta."""
    import cupy.cublas

    from backends import ndkernels

    # one kernel launch instead of four: at batch 32 a step is bound by launches, not FLOPs
    sigmoid = cupy.ElementwiseKernel("T z", "T y", "y = (T)0.5 * tanh((T)0.5 * z) + (T)0.5",
                                     "trainer_sigmoid")
    generic = ndkernels.make(cupy)["activate"]

    def activate(name: str, z: Any) -> Any | None:
        return sigmoid(z, z) if name == "sigmoid" else generic(name, z)

    def gemm_acc(a: Any, b: Any, out: Any, alpha: float, beta: float) -> Any:
        return cupy.cublas.gemm("N", "N", a, b, out=out, alpha=alpha, beta=beta)

    kernels = ndkernels.make(cupy, activate=activate, gemm_acc=gemm_acc)
    if not _gemm_acc_works(cupy, gemm_acc):
        del kernels["gemm_acc"]
    return kernels


def _gemm_acc_works(cupy: Any, gemm_acc: Any) -> bool:
    """Check the layouts the step uses (a transposed view times a C-contiguous array or a
    transposed view, the latter for transposed logits) against cupy's matmul first."""
    try:
        a = cupy.arange(15, dtype=cupy.float32).reshape(5, 3) / 7
        b = cupy.arange(20, dtype=cupy.float32).reshape(5, 4) / 9
        for right in (b, cupy.ascontiguousarray(b.T).T):
            out = cupy.ones((3, 4), dtype=cupy.float32)
            want = 0.5 * out - 2.0 * (a.T @ right)
            if not bool(cupy.allclose(gemm_acc(a.T, right, out, -2.0, 0.5), want, rtol=1e-5)):
                return False
        return True
    except Exception:  # an old cupy without cupy.cublas.gemm, or a cuBLAS error
        return False
